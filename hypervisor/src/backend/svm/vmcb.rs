//! The VMCB layout: every field Taproot uses, defined once (AMD64 APM Vol. 2, Appendix B
//! "Layout of VMCB", Tables B-1 control area and B-2 state save area), and a typed view of
//! one 4 KiB VMCB page.
#![allow(unsafe_code, reason = "the VMCB is a hardware-defined page reached by physical address")]

use crate::backend::host::Frames;

/// Control area offsets (APM Vol. 2, Table B-1).
pub mod control {
    pub const INTERCEPT_CR: usize = 0x000;
    pub const INTERCEPT_EXCEPTIONS: usize = 0x008;
    pub const INTERCEPT_MISC1: usize = 0x00C;
    pub const INTERCEPT_MISC2: usize = 0x010;
    pub const IOPM_BASE_PA: usize = 0x040;
    pub const MSRPM_BASE_PA: usize = 0x048;
    pub const TSC_OFFSET: usize = 0x050;
    pub const GUEST_ASID: usize = 0x058;
    pub const TLB_CONTROL: usize = 0x05C;
    pub const VINTR: usize = 0x060;
    pub const INTERRUPT_SHADOW: usize = 0x068;
    pub const EXIT_CODE: usize = 0x070;
    pub const EXIT_INFO1: usize = 0x078;
    pub const EXIT_INFO2: usize = 0x080;
    pub const EXIT_INT_INFO: usize = 0x088;
    pub const NESTED_CONTROL: usize = 0x090;
    pub const EVENT_INJECTION: usize = 0x0A8;
    pub const NESTED_CR3: usize = 0x0B0;
    pub const CLEAN_BITS: usize = 0x0C0;
    pub const NEXT_RIP: usize = 0x0C8;
}

/// State save area offsets, from the start of the VMCB (APM Vol. 2, Table B-2; the area
/// starts at 0x400).
pub mod save {
    pub const ES: usize = 0x400;
    pub const CS: usize = 0x410;
    pub const SS: usize = 0x420;
    pub const DS: usize = 0x430;
    pub const FS: usize = 0x440;
    pub const GS: usize = 0x450;
    pub const GDTR: usize = 0x460;
    pub const LDTR: usize = 0x470;
    pub const IDTR: usize = 0x480;
    pub const TR: usize = 0x490;
    pub const CPL: usize = 0x4CB;
    pub const EFER: usize = 0x4D0;
    pub const CR4: usize = 0x548;
    pub const CR3: usize = 0x550;
    pub const CR0: usize = 0x558;
    pub const DR7: usize = 0x560;
    pub const DR6: usize = 0x568;
    pub const RFLAGS: usize = 0x570;
    pub const RIP: usize = 0x578;
    pub const RSP: usize = 0x5D8;
    pub const RAX: usize = 0x5F8;
    pub const CR2: usize = 0x640;
    pub const G_PAT: usize = 0x668;
}

/// INTERCEPT_MISC1 bits (APM Vol. 2, Table B-1, offset 0x00C).
pub mod misc1 {
    pub const INTR: u32 = 1 << 0;
    pub const NMI: u32 = 1 << 1;
    pub const SMI: u32 = 1 << 2;
    pub const INIT: u32 = 1 << 3;
    /// A virtual interrupt (V_IRQ) the guest can take now: the interrupt window.
    pub const VINTR: u32 = 1 << 4;
    /// IRET: the end of the guest's NMI handler, the SVM NMI window (as KVM does).
    pub const IRET: u32 = 1 << 20;
    pub const CPUID: u32 = 1 << 18;
    pub const INVD: u32 = 1 << 22;
    pub const HLT: u32 = 1 << 24;
    pub const IOIO_PROT: u32 = 1 << 27;
    pub const MSR_PROT: u32 = 1 << 28;
    pub const SHUTDOWN: u32 = 1 << 31;
}

/// INTERCEPT_MISC2 bits (offset 0x010). VMRUN must be intercepted or VMRUN fails (APM
/// Vol. 2 §15.5.1, consistency checks).
pub mod misc2 {
    pub const VMRUN: u32 = 1 << 0;
    pub const VMMCALL: u32 = 1 << 1;
    pub const VMLOAD: u32 = 1 << 2;
    pub const VMSAVE: u32 = 1 << 3;
    pub const STGI: u32 = 1 << 4;
    pub const CLGI: u32 = 1 << 5;
    pub const SKINIT: u32 = 1 << 6;
    pub const XSETBV: u32 = 1 << 13;
}

/// NESTED_CONTROL bit 0: enable nested paging (APM Vol. 2 §15.25.3).
pub const NP_ENABLE: u64 = 1 << 0;
/// VINTR control bit 24: virtualize interrupt masking, so the guest's RFLAGS.IF masks only
/// virtual interrupts and physical ones still reach the host (APM Vol. 2 §15.21.1).
pub const V_INTR_MASKING: u64 = 1 << 24;
/// VINTR bit 8 V_IRQ (a virtual interrupt is pending), bits 19:16 V_INTR_PRIO, bit 20
/// V_IGN_TPR (deliver it whatever V_TPR says): with the VINTR intercept, the interrupt
/// window (APM Vol. 2 §15.21.4, Table B-1 offset 0x60).
pub const V_IRQ: u64 = 1 << 8;
pub const V_INTR_PRIO_MASK: u64 = 0xF << 16;
pub const V_IGN_TPR: u64 = 1 << 20;
/// INTERRUPT_SHADOW bit 0: the guest is in an STI / MOV SS shadow (APM Vol. 2 §15.21.5).
pub const INTERRUPT_SHADOW_ACTIVE: u64 = 1 << 0;
/// RFLAGS.IF (APM Vol. 2 §3.1.6).
pub const RFLAGS_IF: u64 = 1 << 9;
/// TLB_CONTROL values (APM Vol. 2 §15.16.1).
pub const TLB_CONTROL_NOTHING: u8 = 0;
pub const TLB_CONTROL_FLUSH_ALL: u8 = 1;
pub const TLB_CONTROL_FLUSH_ASID: u8 = 3;
/// EVENTINJ and EXITINTINFO (APM Vol. 2 §15.20, §15.7.2): the interruption information of
/// `backend::events` in bits 31:0, the error code in bits 63:32.
pub const EVENT_ERROR_CODE_SHIFT: u64 = 32;
/// EFER.SVME, which must be set in the guest's EFER too (APM Vol. 2 §15.5.1).
pub const EFER_SVME: u64 = 1 << 12;
/// The power-on PAT (APM Vol. 2 §7.8.2).
pub const DEFAULT_PAT: u64 = 0x0007_0406_0007_0406;

/// Exit codes (APM Vol. 2, Appendix C "SVM Intercept Exit Codes").
pub mod exit_code {
    pub const EXCEPTION_BASE: u64 = 0x40;
    /// #DB and #AC (EXCEPTION_BASE + vector).
    pub const DB: u64 = EXCEPTION_BASE + 1;
    pub const AC: u64 = EXCEPTION_BASE + 17;
    pub const INTR: u64 = 0x60;
    pub const NMI: u64 = 0x61;
    pub const SMI: u64 = 0x62;
    pub const INIT: u64 = 0x63;
    pub const VINTR: u64 = 0x64;
    pub const CPUID: u64 = 0x72;
    pub const IRET: u64 = 0x74;
    pub const HLT: u64 = 0x78;
    pub const IOIO: u64 = 0x7B;
    pub const MSR: u64 = 0x7C;
    pub const SHUTDOWN: u64 = 0x7F;
    pub const VMRUN: u64 = 0x80;
    pub const VMMCALL: u64 = 0x81;
    pub const XSETBV: u64 = 0x8D;
    pub const NPF: u64 = 0x400;
    /// VMEXIT_INVALID: the guest state failed VMRUN's consistency checks.
    pub const INVALID: u64 = u64::MAX;
    /// The same, as QEMU TCG stores it (zero-extended from 32 bits).
    pub const INVALID_32: u64 = u32::MAX as u64;
}

/// IOIO exit information 1 (APM Vol. 2 §15.10.2, Figure 15-2).
pub mod ioio {
    pub const TYPE_IN: u64 = 1 << 0;
    pub const STRING: u64 = 1 << 2;
    pub const REP: u64 = 1 << 3;
    pub const SIZE8: u64 = 1 << 4;
    pub const SIZE16: u64 = 1 << 5;
    pub const SIZE32: u64 = 1 << 6;
    /// The address size, one-hot (A16, A32, A64); QEMU TCG leaves all three clear.
    pub const ADDR16: u64 = 1 << 7;
    pub const ADDR32: u64 = 1 << 8;
    pub const ADDR64: u64 = 1 << 9;
    pub const PORT_SHIFT: u64 = 16;
}

/// Nested page fault exit information 1: the #PF-style error code (APM Vol. 2 §15.25.6).
pub mod npf {
    pub const WRITE: u64 = 1 << 1;
    /// A reserved bit was set in a nested page table entry.
    pub const RESERVED: u64 = 1 << 3;
    pub const EXECUTE: u64 = 1 << 4;
}

/// A segment register in the state save area: selector, packed attributes (descriptor bits
/// 40-47 and 52-55), limit, base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub selector: u16,
    pub attrib: u16,
    pub limit: u32,
    pub base: u64,
}

impl Segment {
    /// Present, DPL 0, code, execute/read, accessed; 16-bit, byte granular (real mode).
    pub const fn real_mode_code(selector: u16) -> Self {
        Self { selector, attrib: 0x09B, limit: 0xFFFF, base: (selector as u64) << 4 }
    }
    /// Present, DPL 0, data, read/write, accessed; 16-bit (real mode).
    pub const fn real_mode_data(selector: u16) -> Self {
        Self { selector, attrib: 0x093, limit: 0xFFFF, base: (selector as u64) << 4 }
    }
    /// Flat 4 GiB 32-bit code (G=1, D=1).
    pub const FLAT32_CODE: Self = Self { selector: 0x08, attrib: 0xC9B, limit: 0xFFFF_FFFF, base: 0 };
    /// Flat 4 GiB 32-bit data (G=1, B=1).
    pub const FLAT32_DATA: Self = Self { selector: 0x10, attrib: 0xC93, limit: 0xFFFF_FFFF, base: 0 };
    /// A busy 32-bit TSS, required by VMRUN even when the guest never uses it.
    pub const TSS: Self = Self { selector: 0, attrib: 0x08B, limit: 0xFFFF, base: 0 };
    pub const LDT: Self = Self { selector: 0, attrib: 0x082, limit: 0xFFFF, base: 0 };
    /// A descriptor-table register (GDTR/IDTR): only limit and base matter.
    pub const fn table(limit: u32, base: u64) -> Self {
        Self { selector: 0, attrib: 0, limit, base }
    }
}

/// One VMCB page, owned by its vCPU.
pub struct Vmcb {
    page: Frames,
}

impl Vmcb {
    /// `page` is one zeroed frame (a zeroed VMCB has every intercept and field off).
    pub fn new(page: Frames) -> Self {
        Self { page }
    }

    pub fn phys(&self) -> u64 {
        self.page.phys()
    }

    fn ptr<T>(&self, offset: usize) -> *mut T {
        debug_assert!(offset + size_of::<T>() <= 4096 && offset.is_multiple_of(align_of::<T>()));
        (self.page.phys() as usize + offset) as *mut T
    }

    pub fn read64(&self, offset: usize) -> u64 {
        // SAFETY: the page is a frame this value owns, identity mapped (`Frames`); the
        // offset is in range and aligned. The processor writes the VMCB only while this vCPU runs, never while we
        // read it (VMRUN and this code run on the same CPU, one after the other).
        unsafe { self.ptr::<u64>(offset).read_volatile() }
    }

    pub fn write64(&mut self, offset: usize, value: u64) {
        // SAFETY: as in `read64`.
        unsafe { self.ptr::<u64>(offset).write_volatile(value) }
    }

    pub fn write32(&mut self, offset: usize, value: u32) {
        // SAFETY: as in `read64`.
        unsafe { self.ptr::<u32>(offset).write_volatile(value) }
    }

    pub fn read32(&self, offset: usize) -> u32 {
        // SAFETY: as in `read64`.
        unsafe { self.ptr::<u32>(offset).read_volatile() }
    }

    pub fn read8(&self, offset: usize) -> u8 {
        // SAFETY: as in `read64`.
        unsafe { self.ptr::<u8>(offset).read_volatile() }
    }

    pub fn write8(&mut self, offset: usize, value: u8) {
        // SAFETY: as in `read64`.
        unsafe { self.ptr::<u8>(offset).write_volatile(value) }
    }

    pub fn write_segment(&mut self, offset: usize, seg: Segment) {
        // SAFETY: as in `read64`; a segment is selector (u16), attrib (u16), limit (u32),
        // base (u64) at `offset`, 16-byte aligned.
        unsafe {
            self.ptr::<u16>(offset).write_volatile(seg.selector);
            self.ptr::<u16>(offset + 2).write_volatile(seg.attrib);
            self.ptr::<u32>(offset + 4).write_volatile(seg.limit);
            self.ptr::<u64>(offset + 8).write_volatile(seg.base);
        }
    }

    pub fn read_segment(&self, offset: usize) -> Segment {
        // SAFETY: as in `write_segment`.
        unsafe {
            Segment {
                selector: self.ptr::<u16>(offset).read_volatile(),
                attrib: self.ptr::<u16>(offset + 2).read_volatile(),
                limit: self.ptr::<u32>(offset + 4).read_volatile(),
                base: self.ptr::<u64>(offset + 8).read_volatile(),
            }
        }
    }
}
