//! The guest's own address translation, walked in software: linear address to
//! guest-physical, through the page tables the guest's CR3 names, with the permission
//! checks the processor makes (Intel SDM vol. 3A ch. 4, "Paging").
//!
//! The emulator needs this because an MMIO exit tells the hypervisor only the faulting
//! guest-physical address: the instruction bytes at RIP, and the other operand of a string
//! instruction, live at guest-linear addresses.
//!
//! Modes ([`PagingMode`], chosen from CR0.PG, CR4.PAE, EFER.LMA and CR4.LA57 as in SDM
//! 4.1.1): paging off (linear is physical), 32-bit (4 KiB pages, 4 MiB pages with CR4.PSE
//! and PSE-36 high bits), PAE (the 4 PDPTEs, 2 MiB pages) and 4- and 5-level paging
//! (2 MiB and 1 GiB pages). Each access checks present, write (CR0.WP for supervisor
//! writes), user/supervisor (CPL 3 is a user access) and execute-disable (EFER.NXE); a
//! failure is a page-fault error code for the VM to inject with CR2 = the linear address
//! (SDM 4.7).
//!
//! Not modelled, on purpose: accessed and dirty bits are not set (the walk only reads);
//! PAE's PDPTEs are read from memory at each walk instead of the copies the processor
//! loads with CR3; SMEP, SMAP and protection keys are not checked; reserved-bit checks
//! cover only XD without EFER.NXE and a page-size bit in a PML4E/PML5E.

/// CR0.WP: supervisor writes honour read-only pages (SDM 2.5).
const CR0_WP: u64 = 1 << 16;
/// CR0.PG: paging enabled (SDM 2.5).
const CR0_PG: u64 = 1 << 31;
/// CR4.PSE: 4 MiB pages in 32-bit paging (SDM 2.5).
const CR4_PSE: u64 = 1 << 4;
/// CR4.PAE: 64-bit entries (SDM 2.5).
const CR4_PAE: u64 = 1 << 5;
/// CR4.LA57: 5-level paging in long mode (SDM 2.5).
const CR4_LA57: u64 = 1 << 12;
/// CR4.SMEP: only used for the I/D bit of the error code (SDM 4.7).
const CR4_SMEP: u64 = 1 << 20;
/// EFER.LMA: long mode active (SDM 2.2.1).
const EFER_LMA: u64 = 1 << 10;
/// EFER.NXE: the XD bit of paging entries is honoured (SDM 2.2.1).
const EFER_NXE: u64 = 1 << 11;

/// Paging-entry bits (SDM 4.3 tables 4-4..4-10, 4.4, 4.5).
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
const PTE_PAGE_SIZE: u64 = 1 << 7;
const PTE_XD: u64 = 1 << 63;
/// Bits 51:12 of a 64-bit entry: the physical address of the next table or the page.
const PTE_ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

/// Page-fault error code bits (SDM 4.7, figure 4-12).
pub const PF_PRESENT: u32 = 1 << 0;
pub const PF_WRITE: u32 = 1 << 1;
pub const PF_USER: u32 = 1 << 2;
pub const PF_RESERVED: u32 = 1 << 3;
pub const PF_FETCH: u32 = 1 << 4;

/// Bytes in a 4 KiB page, the unit in which a multi-byte access is split.
pub const PAGE_SIZE: u64 = 4096;

/// The guest-physical memory the walk reads page tables from, and the emulator reads and
/// writes ordinary (non-device) operands in. The VM implements it over its memory slots.
pub trait GuestMemory {
    /// Fill `buf` from guest-physical `gpa`; `Err` when any of it is not guest RAM.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), NotRam>;
    /// Store `data` at guest-physical `gpa`; `Err` when any of it is not writable guest RAM
    /// (nothing is written then).
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), NotRam>;
}

/// A guest-physical range that is not guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotRam;

/// The control registers and privilege level a translation depends on, as the VM reads
/// them from the vCPU at the exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlRegs {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// Current privilege level (CS.RPL / SS.DPL), 0..=3; 3 makes every access a user access.
    pub cpl: u8,
}

/// The paging mode the control registers select (SDM 4.1.1, table 4-1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagingMode {
    /// CR0.PG = 0: linear addresses are physical.
    Off,
    /// 32-bit paging: two levels of 4-byte entries.
    Bits32,
    /// PAE paging: 4 PDPTEs, then two levels of 8-byte entries.
    Pae,
    /// 4-level paging (IA-32e mode).
    Level4,
    /// 5-level paging (IA-32e mode, CR4.LA57).
    Level5,
}

impl ControlRegs {
    pub fn paging_mode(&self) -> PagingMode {
        if self.cr0 & CR0_PG == 0 {
            PagingMode::Off
        } else if self.cr4 & CR4_PAE == 0 {
            PagingMode::Bits32
        } else if self.efer & EFER_LMA == 0 {
            PagingMode::Pae
        } else if self.cr4 & CR4_LA57 == 0 {
            PagingMode::Level4
        } else {
            PagingMode::Level5
        }
    }

    fn is_user(&self) -> bool {
        self.cpl == 3
    }

    fn is_nx_enabled(&self) -> bool {
        self.efer & EFER_NXE != 0
    }
}

/// What an access does with the bytes, which decides the permission checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Fetch,
}

/// Why a translation failed: what the VM injects, or a table outside guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TranslateError {
    /// Inject #PF with this error code and CR2 = `linear`.
    PageFault { error_code: u32, linear: u64 },
    /// A non-canonical address in IA-32e mode: inject #GP(0).
    GeneralProtection,
    /// A paging-structure entry lies outside guest RAM (the VM ends the guest: real
    /// hardware would read a device or open bus there).
    TableNotRam { gpa: u64 },
}

/// Translate one linear address for `access`.
pub fn translate(
    regs: &ControlRegs,
    mem: &impl GuestMemory,
    linear: u64,
    access: Access,
) -> Result<u64, TranslateError> {
    let mode = regs.paging_mode();
    match mode {
        PagingMode::Off => Ok(linear),
        PagingMode::Bits32 => walk_32bit(regs, mem, linear as u32, access),
        PagingMode::Pae => {
            let linear = linear & 0xFFFF_FFFF;
            // The PDPT: 4 entries at CR3[31:5]; a PDPTE carries no access rights.
            let pdpte = read_entry::<8>(mem, (regs.cr3 & 0xFFFF_FFE0) + (linear >> 30) * 8)?;
            if pdpte & PTE_PRESENT == 0 {
                return Err(not_present(regs, mode, linear, access));
            }
            let walk = Walk { regs, mode, linear, access };
            walk.descend(mem, pdpte & PTE_ADDR_MASK, 2)
        }
        PagingMode::Level4 | PagingMode::Level5 => {
            let (bits, levels) = if mode == PagingMode::Level4 { (48, 4) } else { (57, 5) };
            if !is_canonical(linear, bits) {
                return Err(TranslateError::GeneralProtection);
            }
            let walk = Walk { regs, mode, linear, access };
            walk.descend(mem, regs.cr3 & PTE_ADDR_MASK, levels)
        }
    }
}

/// The permissions gathered down a walk (SDM 4.6: a page is writable or user-accessible
/// only if every level says so, and execute-disabled if any level says so).
struct Rights {
    is_writable: bool,
    is_user: bool,
    is_execute_disabled: bool,
}

impl Rights {
    const ALL: Self = Self { is_writable: true, is_user: true, is_execute_disabled: false };

    fn narrow(&mut self, entry: u64, honours_xd: bool) {
        self.is_writable &= entry & PTE_WRITABLE != 0;
        self.is_user &= entry & PTE_USER != 0;
        self.is_execute_disabled |= honours_xd && entry & PTE_XD != 0;
    }
}

/// The error code of a fault on `access`, without the P and RSVD bits (SDM 4.7).
fn base_error_code(regs: &ControlRegs, mode: PagingMode, access: Access) -> u32 {
    let mut code = 0;
    if access == Access::Write {
        code |= PF_WRITE;
    }
    if regs.is_user() {
        code |= PF_USER;
    }
    let reports_fetch = (regs.is_nx_enabled() && mode != PagingMode::Bits32) || regs.cr4 & CR4_SMEP != 0;
    if access == Access::Fetch && reports_fetch {
        code |= PF_FETCH;
    }
    code
}

fn not_present(regs: &ControlRegs, mode: PagingMode, linear: u64, access: Access) -> TranslateError {
    TranslateError::PageFault { error_code: base_error_code(regs, mode, access), linear }
}

fn reserved(regs: &ControlRegs, mode: PagingMode, linear: u64, access: Access) -> TranslateError {
    let error_code = base_error_code(regs, mode, access) | PF_PRESENT | PF_RESERVED;
    TranslateError::PageFault { error_code, linear }
}

/// Check `rights` against `access` (SDM 4.6) and return the physical address on success.
fn check(
    regs: &ControlRegs,
    mode: PagingMode,
    rights: &Rights,
    linear: u64,
    access: Access,
    phys: u64,
) -> Result<u64, TranslateError> {
    let is_denied = (regs.is_user() && !rights.is_user)
        || (access == Access::Write && !rights.is_writable && (regs.is_user() || regs.cr0 & CR0_WP != 0))
        || (access == Access::Fetch && rights.is_execute_disabled);
    if is_denied {
        let error_code = base_error_code(regs, mode, access) | PF_PRESENT;
        return Err(TranslateError::PageFault { error_code, linear });
    }
    Ok(phys)
}

fn read_entry<const N: usize>(mem: &impl GuestMemory, gpa: u64) -> Result<u64, TranslateError> {
    let mut bytes = [0u8; 8];
    mem.read(gpa, &mut bytes[..N]).map_err(|NotRam| TranslateError::TableNotRam { gpa })?;
    Ok(u64::from_le_bytes(bytes))
}

/// 32-bit paging (SDM 4.3): a page directory of 1024 4-byte entries at CR3[31:12], each
/// a page table or (CR4.PSE, PS = 1) a 4 MiB page whose PDE bits 20:13 give physical
/// address bits 39:32 (PSE-36).
fn walk_32bit(
    regs: &ControlRegs,
    mem: &impl GuestMemory,
    linear: u32,
    access: Access,
) -> Result<u64, TranslateError> {
    let mode = PagingMode::Bits32;
    let linear64 = u64::from(linear);
    let directory = regs.cr3 & 0xFFFF_F000;
    let pde = read_entry::<4>(mem, directory + u64::from(linear >> 22) * 4)?;
    if pde & PTE_PRESENT == 0 {
        return Err(not_present(regs, mode, linear64, access));
    }
    let mut rights = Rights::ALL;
    rights.narrow(pde, false);
    if pde & PTE_PAGE_SIZE != 0 && regs.cr4 & CR4_PSE != 0 {
        let high = ((pde >> 13) & 0xFF) << 32;
        let phys = high | (pde & 0xFFC0_0000) | (linear64 & 0x3F_FFFF);
        return check(regs, mode, &rights, linear64, access, phys);
    }
    let table = pde & 0xFFFF_F000;
    let pte = read_entry::<4>(mem, table + u64::from((linear >> 12) & 0x3FF) * 4)?;
    if pte & PTE_PRESENT == 0 {
        return Err(not_present(regs, mode, linear64, access));
    }
    rights.narrow(pte, false);
    let phys = (pte & 0xFFFF_F000) | (linear64 & 0xFFF);
    check(regs, mode, &rights, linear64, access, phys)
}

/// One translation through 8-byte entries (PAE, 4-level, 5-level paging).
struct Walk<'a> {
    regs: &'a ControlRegs,
    mode: PagingMode,
    linear: u64,
    access: Access,
}

impl Walk<'_> {
    /// Walk `levels` levels of 512 8-byte entries starting at `table` (SDM 4.4, 4.5): 9
    /// linear-address bits per level; a PS bit at the PD level maps 2 MiB, at the PDPT level
    /// (IA-32e only) 1 GiB.
    fn descend(&self, mem: &impl GuestMemory, mut table: u64, levels: u32) -> Result<u64, TranslateError> {
        let Self { regs, mode, linear, access } = *self;
        let honours_xd = regs.is_nx_enabled();
        let mut rights = Rights::ALL;
        for level in (1..=levels).rev() {
            let shift = 12 + 9 * (level - 1);
            let entry = read_entry::<8>(mem, table + ((linear >> shift) & 0x1FF) * 8)?;
            if entry & PTE_PRESENT == 0 {
                return Err(not_present(regs, mode, linear, access));
            }
            if entry & PTE_XD != 0 && !honours_xd {
                return Err(reserved(regs, mode, linear, access));
            }
            rights.narrow(entry, honours_xd);
            if level > 1 && entry & PTE_PAGE_SIZE != 0 {
                // PS is reserved in PML5Es and PML4Es.
                if level > 3 {
                    return Err(reserved(regs, mode, linear, access));
                }
                let page_mask = (1u64 << shift) - 1;
                let phys = (entry & PTE_ADDR_MASK & !page_mask) | (linear & page_mask);
                return check(regs, mode, &rights, linear, access, phys);
            }
            table = entry & PTE_ADDR_MASK;
        }
        // `table` now holds the 4 KiB page frame from the PTE.
        check(regs, mode, &rights, linear, access, table | (linear & 0xFFF))
    }
}

/// Whether `linear` is canonical for `bits` implemented linear-address bits (SDM 3.3.7.1).
pub fn is_canonical(linear: u64, bits: u32) -> bool {
    let shift = 64 - bits;
    (((linear << shift) as i64) >> shift) as u64 == linear
}

/// Read `buf.len()` bytes at `linear`, translating each 4 KiB page on its own (an access
/// may straddle pages mapped to unrelated frames).
pub fn read_linear(
    regs: &ControlRegs,
    mem: &impl GuestMemory,
    linear: u64,
    buf: &mut [u8],
    access: Access,
) -> Result<(), AccessError> {
    let mut done = 0;
    while done < buf.len() {
        let at = linear.wrapping_add(done as u64);
        let chunk = chunk_len(at, buf.len() - done);
        let gpa = translate(regs, mem, at, access).map_err(AccessError::Translate)?;
        mem.read(gpa, &mut buf[done..done + chunk]).map_err(|NotRam| AccessError::NotRam { gpa })?;
        done += chunk;
    }
    Ok(())
}

/// Write `data` at `linear`. Every page is translated before the first byte is written,
/// so a fault on a later page leaves memory unchanged.
pub fn write_linear(
    regs: &ControlRegs,
    mem: &mut impl GuestMemory,
    linear: u64,
    data: &[u8],
) -> Result<(), AccessError> {
    for pass_writes in [false, true] {
        let mut done = 0;
        while done < data.len() {
            let at = linear.wrapping_add(done as u64);
            let chunk = chunk_len(at, data.len() - done);
            let gpa = translate(regs, mem, at, Access::Write).map_err(AccessError::Translate)?;
            if pass_writes {
                let bytes = &data[done..done + chunk];
                mem.write(gpa, bytes).map_err(|NotRam| AccessError::NotRam { gpa })?;
            }
            done += chunk;
        }
    }
    Ok(())
}

/// Why a linear read or write failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessError {
    Translate(TranslateError),
    /// The page translated to a guest-physical address that is not RAM.
    NotRam {
        gpa: u64,
    },
}

/// Bytes from `linear` to the end of its page, at most `remaining`.
fn chunk_len(linear: u64, remaining: usize) -> usize {
    let to_page_end = PAGE_SIZE - (linear & (PAGE_SIZE - 1));
    remaining.min(to_page_end as usize)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    /// Guest RAM as one vector from guest-physical 0; everything above is not RAM.
    pub(crate) struct FakeMemory {
        pub bytes: Vec<u8>,
    }

    impl FakeMemory {
        pub fn new(size: usize) -> Self {
            Self { bytes: vec![0; size] }
        }

        pub fn put_u32(&mut self, gpa: u64, value: u32) {
            self.write(gpa, &value.to_le_bytes()).unwrap();
        }

        pub fn put_u64(&mut self, gpa: u64, value: u64) {
            self.write(gpa, &value.to_le_bytes()).unwrap();
        }

        fn range(&self, gpa: u64, len: usize) -> Result<core::ops::Range<usize>, NotRam> {
            let start = usize::try_from(gpa).map_err(|_| NotRam)?;
            let end = start.checked_add(len).ok_or(NotRam)?;
            if end > self.bytes.len() {
                return Err(NotRam);
            }
            Ok(start..end)
        }
    }

    impl GuestMemory for FakeMemory {
        fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), NotRam> {
            let range = self.range(gpa, buf.len())?;
            buf.copy_from_slice(&self.bytes[range]);
            Ok(())
        }

        fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), NotRam> {
            let range = self.range(gpa, data.len())?;
            self.bytes[range].copy_from_slice(data);
            Ok(())
        }
    }

    const P: u64 = PTE_PRESENT;
    const W: u64 = PTE_WRITABLE;
    const U: u64 = PTE_USER;
    const PS: u64 = PTE_PAGE_SIZE;

    /// Long-mode registers (4-level unless `la57`), CR0.WP set, NXE set, CPL 0.
    pub(crate) fn long_mode(cr3: u64, la57: bool) -> ControlRegs {
        ControlRegs {
            cr0: CR0_PG | CR0_WP | 1,
            cr3,
            cr4: CR4_PAE | if la57 { CR4_LA57 } else { 0 },
            efer: EFER_LMA | (1 << 8) | EFER_NXE,
            cpl: 0,
        }
    }

    /// 4-level tables at 0x1000 (PML4), 0x2000 (PDPT), 0x3000 (PD), 0x4000 (PT) mapping
    /// linear 0x40_0000.. (PD entry 2) through the PT, plus a 2 MiB page at linear 0
    /// (PD entry 0 -> 0x60_0000) and a 1 GiB page at linear 1 GiB (PDPT entry 1 ->
    /// 0x8000_0000).
    fn four_level() -> FakeMemory {
        let mut mem = FakeMemory::new(0x10_0000);
        mem.put_u64(0x1000, 0x2000 | P | W | U);
        mem.put_u64(0x2000, 0x3000 | P | W | U);
        mem.put_u64(0x2008, 0x8000_0000 | P | W | U | PS);
        mem.put_u64(0x3000, 0x60_0000 | P | W | U | PS);
        mem.put_u64(0x3010, 0x4000 | P | W | U);
        // PT entry 0: writable page at 0x7000; entry 1: read-only; entry 2: not present;
        // entry 3: execute-disabled; entry 4: supervisor-only.
        mem.put_u64(0x4000, 0x7000 | P | W | U);
        mem.put_u64(0x4008, 0x8000 | P | U);
        mem.put_u64(0x4018, 0x9000 | P | W | U | PTE_XD);
        mem.put_u64(0x4020, 0xA000 | P | W);
        mem
    }

    #[test]
    fn paging_off_is_identity() {
        let mem = FakeMemory::new(0);
        let regs = ControlRegs::default();
        assert_eq!(translate(&regs, &mem, 0xFEE0_0020, Access::Write), Ok(0xFEE0_0020));
    }

    #[test]
    fn four_level_maps_4k_2m_and_1g_pages() {
        let mem = four_level();
        let regs = long_mode(0x1000, false);
        assert_eq!(translate(&regs, &mem, 0x40_0123, Access::Read), Ok(0x7123));
        assert_eq!(translate(&regs, &mem, 0x1_2345, Access::Write), Ok(0x61_2345));
        assert_eq!(translate(&regs, &mem, 0x4012_3456, Access::Fetch), Ok(0x8012_3456));
    }

    #[test]
    fn not_present_entry_faults_with_p_clear() {
        let mem = four_level();
        let regs = long_mode(0x1000, false);
        assert_eq!(
            translate(&regs, &mem, 0x40_2010, Access::Read),
            Err(TranslateError::PageFault { error_code: 0, linear: 0x40_2010 })
        );
        // A missing PML4 entry, written from user mode.
        let user = ControlRegs { cpl: 3, ..regs };
        assert_eq!(
            translate(&user, &mem, 0x80_0000_0000, Access::Write),
            Err(TranslateError::PageFault { error_code: PF_WRITE | PF_USER, linear: 0x80_0000_0000 })
        );
    }

    #[test]
    fn write_to_read_only_page_faults_only_with_wp_or_from_user() {
        let mem = four_level();
        let regs = long_mode(0x1000, false);
        assert_eq!(
            translate(&regs, &mem, 0x40_1000, Access::Write),
            Err(TranslateError::PageFault { error_code: PF_PRESENT | PF_WRITE, linear: 0x40_1000 })
        );
        let no_wp = ControlRegs { cr0: regs.cr0 & !CR0_WP, ..regs };
        assert_eq!(translate(&no_wp, &mem, 0x40_1000, Access::Write), Ok(0x8000));
        let user = ControlRegs { cpl: 3, ..no_wp };
        assert_eq!(
            translate(&user, &mem, 0x40_1000, Access::Write),
            Err(TranslateError::PageFault { error_code: PF_PRESENT | PF_WRITE | PF_USER, linear: 0x40_1000 })
        );
        assert_eq!(translate(&regs, &mem, 0x40_1000, Access::Read), Ok(0x8000));
    }

    #[test]
    fn fetch_from_execute_disabled_page_faults_with_id_bit() {
        let mem = four_level();
        let regs = long_mode(0x1000, false);
        assert_eq!(
            translate(&regs, &mem, 0x40_3000, Access::Fetch),
            Err(TranslateError::PageFault { error_code: PF_PRESENT | PF_FETCH, linear: 0x40_3000 })
        );
        assert_eq!(translate(&regs, &mem, 0x40_3000, Access::Read), Ok(0x9000));
        // Without NXE the XD bit is reserved.
        let no_nx = ControlRegs { efer: regs.efer & !EFER_NXE, ..regs };
        assert_eq!(
            translate(&no_nx, &mem, 0x40_3000, Access::Read),
            Err(TranslateError::PageFault { error_code: PF_PRESENT | PF_RESERVED, linear: 0x40_3000 })
        );
    }

    #[test]
    fn user_access_to_supervisor_page_faults() {
        let mem = four_level();
        let user = ControlRegs { cpl: 3, ..long_mode(0x1000, false) };
        assert_eq!(
            translate(&user, &mem, 0x40_4000, Access::Read),
            Err(TranslateError::PageFault { error_code: PF_PRESENT | PF_USER, linear: 0x40_4000 })
        );
        assert_eq!(translate(&long_mode(0x1000, false), &mem, 0x40_4000, Access::Read), Ok(0xA000));
    }

    #[test]
    fn non_canonical_address_is_general_protection() {
        let mem = four_level();
        let regs = long_mode(0x1000, false);
        assert_eq!(
            translate(&regs, &mem, 0x0000_8000_0000_0000, Access::Read),
            Err(TranslateError::GeneralProtection)
        );
        assert!(is_canonical(0xFFFF_8000_0000_0000, 48));
        assert!(is_canonical(0x00FF_0000_0000_0000, 57));
        assert!(!is_canonical(0x0100_0000_0000_0000, 57));
    }

    #[test]
    fn five_level_adds_a_pml5() {
        let mut mem = four_level();
        // PML5 at 0x5000, entry 1 (linear bit 48) -> the 4-level PML4 at 0x1000.
        mem.put_u64(0x5008, 0x1000 | P | W | U);
        let regs = long_mode(0x5000, true);
        assert_eq!(translate(&regs, &mem, 0x1_0000_0040_0123, Access::Read), Ok(0x7123));
        // PML5 entry 0 is empty.
        assert_eq!(
            translate(&regs, &mem, 0x40_0000, Access::Read),
            Err(TranslateError::PageFault { error_code: 0, linear: 0x40_0000 })
        );
    }

    #[test]
    fn pae_walks_pdpte_then_2m_and_4k_pages() {
        let mut mem = FakeMemory::new(0x10_0000);
        // PDPT at 0x1020 (32-byte aligned), entry 3 (linear 0xC000_0000) -> PD at 0x3000.
        mem.put_u64(0x1020 + 3 * 8, 0x3000 | P);
        // PD entry 0x1F7 (linear 0xFEE0_0000) -> a 2 MiB page at 0xFEE0_0000.
        mem.put_u64(0x3000 + 0x1F7 * 8, 0xFEE0_0000 | P | W | PS);
        // PD entry 1 -> PT at 0x4000, PT entry 5 -> 0x9000 read-only, execute-disabled.
        mem.put_u64(0x3008, 0x4000 | P | W);
        mem.put_u64(0x4028, 0x9000 | P | PTE_XD);
        let regs =
            ControlRegs { cr0: CR0_PG | CR0_WP | 1, cr3: 0x1020, cr4: CR4_PAE, efer: EFER_NXE, cpl: 0 };
        assert_eq!(regs.paging_mode(), PagingMode::Pae);
        assert_eq!(translate(&regs, &mem, 0xFEE0_0020, Access::Write), Ok(0xFEE0_0020));
        assert_eq!(translate(&regs, &mem, 0xC020_5004, Access::Read), Ok(0x9004));
        assert_eq!(
            translate(&regs, &mem, 0xC020_5004, Access::Fetch),
            Err(TranslateError::PageFault { error_code: PF_PRESENT | PF_FETCH, linear: 0xC020_5004 })
        );
        // PDPTE 0 is not present.
        assert_eq!(
            translate(&regs, &mem, 0x1000, Access::Read),
            Err(TranslateError::PageFault { error_code: 0, linear: 0x1000 })
        );
    }

    #[test]
    fn bits32_maps_4k_pages_and_4m_pages_with_pse() {
        let mut mem = FakeMemory::new(0x10_0000);
        // PD at 0x2000: entry 0x3FB (linear 0xFEC0_0000) -> a 4 MiB page at 0xFEC0_0000 with
        // PSE-36 bits giving physical bit 32; entry 1 -> PT at 0x3000.
        mem.put_u32(0x2000 + 0x3FB * 4, (0xFEC0_0000 | P | W | PS | (1 << 13)) as u32);
        mem.put_u32(0x2004, (0x3000 | P | W) as u32);
        mem.put_u32(0x3000 + 7 * 4, (0x5000 | P) as u32);
        let regs = ControlRegs { cr0: CR0_PG | 1, cr3: 0x2000, cr4: CR4_PSE, efer: 0, cpl: 0 };
        assert_eq!(regs.paging_mode(), PagingMode::Bits32);
        assert_eq!(translate(&regs, &mem, 0xFEC0_0010, Access::Read), Ok(0x1_FEC0_0010));
        assert_eq!(translate(&regs, &mem, 0x40_7ABC, Access::Read), Ok(0x5ABC));
        // Read-only without CR0.WP: supervisor writes go through.
        assert_eq!(translate(&regs, &mem, 0x40_7ABC, Access::Write), Ok(0x5ABC));
        let wp = ControlRegs { cr0: regs.cr0 | CR0_WP, ..regs };
        assert_eq!(
            translate(&wp, &mem, 0x40_7ABC, Access::Write),
            Err(TranslateError::PageFault { error_code: PF_PRESENT | PF_WRITE, linear: 0x40_7ABC })
        );
        // No I/D bit in 32-bit paging (no NX there).
        assert_eq!(
            translate(&regs, &mem, 0x80_0000, Access::Fetch),
            Err(TranslateError::PageFault { error_code: 0, linear: 0x80_0000 })
        );
        // Without CR4.PSE the PS bit is ignored and the PDE names a page table.
        let no_pse = ControlRegs { cr4: 0, ..regs };
        assert!(translate(&no_pse, &mem, 0xFEC0_0010, Access::Read).is_err());
    }

    #[test]
    fn table_outside_ram_is_reported() {
        let mem = FakeMemory::new(0x2000);
        let regs = long_mode(0x10_0000, false);
        assert_eq!(
            translate(&regs, &mem, 0, Access::Read),
            Err(TranslateError::TableNotRam { gpa: 0x10_0000 })
        );
    }

    #[test]
    fn linear_access_straddling_pages_uses_both_translations() {
        let mut mem = four_level();
        mem.bytes[0x7FFE] = 0xAA;
        mem.bytes[0x7FFF] = 0xBB;
        mem.bytes[0x8000] = 0xCC;
        let regs = long_mode(0x1000, false);
        let mut buf = [0u8; 3];
        read_linear(&regs, &mem, 0x40_0FFE, &mut buf, Access::Read).unwrap();
        assert_eq!(buf, [0xAA, 0xBB, 0xCC]);
        // The second page is read-only: the write faults there and changes nothing.
        let result = write_linear(&regs, &mut mem, 0x40_0FFE, &[1, 2, 3]);
        assert_eq!(
            result,
            Err(AccessError::Translate(TranslateError::PageFault {
                error_code: PF_PRESENT | PF_WRITE,
                linear: 0x40_1000
            }))
        );
        assert_eq!(&mem.bytes[0x7FFE..0x8001], &[0xAA, 0xBB, 0xCC]);
    }
}
