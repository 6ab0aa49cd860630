//! The emulator against a fake guest memory (with real page tables) and a fake device that
//! records every access. Encodings were checked with GNU `as` + `objdump`; each byte
//! array carries its AT&T assembly in a comment.

use super::ops::{AF, CF, DF, OF, PF, SF, ZF};
use super::paging::tests::{FakeMemory, long_mode};
use super::paging::{PF_FETCH, PF_PRESENT, PF_WRITE};
use super::*;
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

/// The local APIC page, the device of most tests.
const APIC: u64 = 0xFEE0_0000;
/// Where test code lives (linear = physical in every harness).
const CODE: u64 = 0x1_0000;
/// Ordinary guest RAM for the memory side of MOVS.
const DATA: u64 = 0x2_0000;
/// The 4-level tables: PML4, PDPT, PD, and the PT that maps the first 2 MiB with 4 KiB
/// pages.
const PML4: u64 = 0x1000;
const PT: u64 = 0x4000;
const RAM_SIZE: usize = 0x20_0000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Event {
    Read { gpa: u64, size: u8 },
    Write { gpa: u64, size: u8, value: u64 },
}

/// A device that answers reads from `values` (0 elsewhere) and records every access.
#[derive(Default)]
pub(super) struct FakeMmio {
    pub events: Vec<Event>,
    pub values: BTreeMap<u64, u64>,
}

impl Mmio for FakeMmio {
    fn read(&mut self, gpa: u64, size: u8) -> u64 {
        self.events.push(Event::Read { gpa, size });
        self.values.get(&gpa).copied().unwrap_or(0)
    }

    fn write(&mut self, gpa: u64, size: u8, value: u64) {
        self.events.push(Event::Write { gpa, size, value });
    }
}

pub(super) struct Harness {
    pub cpu: CpuState,
    pub regs: Regs,
    pub mem: FakeMemory,
    pub mmio: FakeMmio,
}

impl Harness {
    /// 64-bit code under 4-level paging: the first 2 MiB identity-mapped with 4 KiB pages
    /// (PT at 0x4000), the rest of the first GiB with 2 MiB pages, GiB 1..4 with 1 GiB
    /// pages. All entries user, writable; NXE and CR0.WP on.
    pub fn long64(code: &[u8]) -> Self {
        let mut mem = FakeMemory::new(RAM_SIZE);
        let flags = 0b111; // present, writable, user
        mem.put_u64(PML4, 0x2000 | flags);
        mem.put_u64(0x2000, 0x3000 | flags);
        for gib in 1..4u64 {
            mem.put_u64(0x2000 + gib * 8, (gib << 30) | flags | 0x80);
        }
        mem.put_u64(0x3000, PT | flags);
        for entry in 1..512u64 {
            mem.put_u64(0x3000 + entry * 8, (entry << 21) | flags | 0x80);
        }
        for entry in 0..512u64 {
            mem.put_u64(PT + entry * 8, (entry << 12) | flags);
        }
        let cpu = CpuState {
            control: long_mode(PML4, false),
            segments: SegmentBases::default(),
            code_size: CodeSize::Bits64,
        };
        Self::with(cpu, mem, code, CODE)
    }

    /// 32-bit flat protected mode, paging off.
    pub fn flat32(code: &[u8]) -> Self {
        let cpu = CpuState {
            control: ControlRegs { cr0: 1, ..ControlRegs::default() },
            segments: SegmentBases::default(),
            code_size: CodeSize::Bits32,
        };
        Self::with(cpu, FakeMemory::new(RAM_SIZE), code, CODE)
    }

    /// Real mode with every segment at `segment << 4`, code at IP 0x100.
    pub fn real16(segment: u64, code: &[u8]) -> Self {
        let base = segment << 4;
        let segments = SegmentBases { es: base, cs: base, ss: base, ds: base, fs: base, gs: base };
        let cpu = CpuState { control: ControlRegs::default(), segments, code_size: CodeSize::Bits16 };
        let mut harness = Self::with(cpu, FakeMemory::new(RAM_SIZE), &[], 0x100);
        harness.mem.write(base + 0x100, code).unwrap();
        harness
    }

    fn with(cpu: CpuState, mut mem: FakeMemory, code: &[u8], rip: u64) -> Self {
        mem.write(rip, code).unwrap();
        let regs = Regs { rip, rflags: 0x2, ..Regs::default() };
        Self { cpu, regs, mem, mmio: FakeMmio::default() }
    }

    pub fn run(&mut self, fault_gpa: u64) -> Result<Emulated, EmulationError> {
        emulate_mmio(&self.cpu, &mut self.regs, fault_gpa, &mut self.mem, &mut self.mmio)
    }

    /// Map linear page `page` (in the first 2 MiB) to `frame`, with `flags`.
    pub fn map_4k(&mut self, page: u64, frame: u64, flags: u64) {
        self.mem.put_u64(PT + (page >> 12) * 8, frame | flags);
    }
}

fn write(gpa: u64, size: u8, value: u64) -> Event {
    Event::Write { gpa, size, value }
}

fn read(gpa: u64, size: u8) -> Event {
    Event::Read { gpa, size }
}

#[test]
fn mov_register_to_device_writes_and_advances_rip() {
    // mov %ecx,0x20(%rax)
    let mut h = Harness::long64(&[0x89, 0x48, 0x20]);
    h.regs.gpr[Regs::RAX] = APIC;
    h.regs.gpr[Regs::RCX] = 0x1234_5678_9ABC_DEF0;
    // DS's base does not count in 64-bit code.
    h.cpu.segments.ds = 0x1000;
    assert_eq!(h.run(APIC + 0x20), Ok(Emulated::Completed));
    assert_eq!(h.mmio.events, vec![write(APIC + 0x20, 4, 0x9ABC_DEF0)]);
    assert_eq!(h.regs.rip, CODE + 3);
}

#[test]
fn mov_moffs_forms_in_32bit_code() {
    // mov 0xfee00020,%eax
    let mut h = Harness::flat32(&[0xA1, 0x20, 0x00, 0xE0, 0xFE]);
    h.regs.gpr[Regs::RAX] = 0xFFFF_FFFF_FFFF_FFFF;
    h.mmio.values.insert(APIC + 0x20, 0x0500_0000);
    assert_eq!(h.run(APIC + 0x20), Ok(Emulated::Completed));
    assert_eq!(h.regs.gpr[Regs::RAX], 0x0500_0000);
    assert_eq!(h.regs.rip, CODE + 5);
    // mov %eax,0xfee000b0 (the EOI write)
    let mut h = Harness::flat32(&[0xA3, 0xB0, 0x00, 0xE0, 0xFE]);
    assert_eq!(h.run(APIC + 0xB0), Ok(Emulated::Completed));
    assert_eq!(h.mmio.events, vec![write(APIC + 0xB0, 4, 0)]);
}

#[test]
fn mov_moffs_64bit_absolute_address() {
    // movabs 0xfee00020,%eax
    let mut h = Harness::long64(&[0xA1, 0x20, 0x00, 0xE0, 0xFE, 0, 0, 0, 0]);
    h.mmio.values.insert(APIC + 0x20, 0x42);
    assert_eq!(h.run(APIC + 0x20), Ok(Emulated::Completed));
    assert_eq!(h.regs.gpr[Regs::RAX], 0x42);
    assert_eq!(h.regs.rip, CODE + 9);
}

#[test]
fn mov_immediate_and_64bit_and_high_byte_stores() {
    // movl $0x12345678,0x20(%rax)
    let mut h = Harness::long64(&[0xC7, 0x40, 0x20, 0x78, 0x56, 0x34, 0x12]);
    h.regs.gpr[Regs::RAX] = APIC;
    assert_eq!(h.run(APIC), Ok(Emulated::Completed));
    assert_eq!(h.mmio.events, vec![write(APIC + 0x20, 4, 0x1234_5678)]);
    // movq %rax,(%rbx)
    let mut h = Harness::long64(&[0x48, 0x89, 0x03]);
    h.regs.gpr[Regs::RAX] = 0x1122_3344_5566_7788;
    h.regs.gpr[Regs::RBX] = APIC + 8;
    assert_eq!(h.run(APIC + 8), Ok(Emulated::Completed));
    assert_eq!(h.mmio.events, vec![write(APIC + 8, 8, 0x1122_3344_5566_7788)]);
    // mov %ah,(%rbx)
    let mut h = Harness::long64(&[0x88, 0x23]);
    h.regs.gpr[Regs::RAX] = 0xBEEF;
    h.regs.gpr[Regs::RBX] = APIC + 1;
    assert_eq!(h.run(APIC + 1), Ok(Emulated::Completed));
    assert_eq!(h.mmio.events, vec![write(APIC + 1, 1, 0xBE)]);
}

#[test]
fn linux_fixmap_accesses_through_a_high_kernel_mapping() {
    // Linux reaches the xAPIC through its fixmap: APIC_BASE = 0xffffffffff5fc000, mapped
    // by PML4[511] -> PDPT[511] -> PD[0x1FA] -> PT[0x1FC] -> 0xFEE00000.
    // mov 0xffffffffff5fc020,%eax ; mov %eax,0xffffffffff5fc0b0
    let mut h = Harness::long64(&[0x8B, 0x04, 0x25, 0x20, 0xC0, 0x5F, 0xFF]);
    h.mem.write(CODE + 7, &[0x89, 0x04, 0x25, 0xB0, 0xC0, 0x5F, 0xFF]).unwrap();
    let flags = 0b011; // present, writable, supervisor
    h.mem.put_u64(PML4 + 511 * 8, 0x5000 | flags);
    h.mem.put_u64(0x5000 + 511 * 8, 0x6000 | flags);
    h.mem.put_u64(0x6000 + 0x1FA * 8, 0x7000 | flags);
    h.mem.put_u64(0x7000 + 0x1FC * 8, APIC | flags | 1 << 63);
    h.mmio.values.insert(APIC + 0x20, 0x0100_0000);
    assert_eq!(h.run(APIC + 0x20), Ok(Emulated::Completed));
    assert_eq!(h.regs.gpr[Regs::RAX], 0x0100_0000);
    assert_eq!(h.run(APIC + 0xB0), Ok(Emulated::Completed));
    assert_eq!(h.mmio.events, vec![read(APIC + 0x20, 4), write(APIC + 0xB0, 4, 0x0100_0000)]);
    assert_eq!(h.regs.rip, CODE + 14);
    // The same access from user mode faults: the pages are supervisor-only.
    h.cpu.control.cpl = 3;
    h.regs.rip = CODE;
    assert_eq!(
        h.run(APIC + 0x20),
        Err(EmulationError::PageFault {
            error_code: PF_PRESENT | super::paging::PF_USER,
            linear: 0xFFFF_FFFF_FF5F_C020
        })
    );
}

#[test]
fn movzx_movsx_movsxd_extend_device_values() {
    // movzbl (%rbx),%eax
    let mut h = Harness::long64(&[0x0F, 0xB6, 0x03]);
    h.regs.gpr[Regs::RAX] = u64::MAX;
    h.regs.gpr[Regs::RBX] = APIC;
    h.mmio.values.insert(APIC, 0x85);
    assert_eq!(h.run(APIC), Ok(Emulated::Completed));
    assert_eq!(h.mmio.events, vec![read(APIC, 1)]);
    assert_eq!(h.regs.gpr[Regs::RAX], 0x85);
    // movsbl (%rbx),%eax: sign-extended to 32 bits, the upper half zeroed.
    let mut h = Harness::long64(&[0x0F, 0xBE, 0x03]);
    h.regs.gpr[Regs::RBX] = APIC;
    h.mmio.values.insert(APIC, 0x85);
    assert_eq!(h.run(APIC), Ok(Emulated::Completed));
    assert_eq!(h.regs.gpr[Regs::RAX], 0xFFFF_FF85);
    // movswq (%rbx),%rax
    let mut h = Harness::long64(&[0x48, 0x0F, 0xBF, 0x03]);
    h.regs.gpr[Regs::RBX] = APIC;
    h.mmio.values.insert(APIC, 0x8001);
    assert_eq!(h.run(APIC), Ok(Emulated::Completed));
    assert_eq!(h.regs.gpr[Regs::RAX], 0xFFFF_FFFF_FFFF_8001);
    // movslq (%rbx),%rax
    let mut h = Harness::long64(&[0x48, 0x63, 0x03]);
    h.regs.gpr[Regs::RBX] = APIC;
    h.mmio.values.insert(APIC, 0x8000_0000);
    assert_eq!(h.run(APIC), Ok(Emulated::Completed));
    assert_eq!(h.regs.gpr[Regs::RAX], 0xFFFF_FFFF_8000_0000);
    assert_eq!(h.regs.rip, CODE + 3);
}

#[test]
fn or_immediate_reads_then_writes_and_sets_logic_flags() {
    // orl $0x100,(%rdi)
    let mut h = Harness::long64(&[0x81, 0x0F, 0x00, 0x01, 0x00, 0x00]);
    h.regs.gpr[Regs::RDI] = APIC + 0xF0;
    h.regs.rflags = 0x2 | CF | OF | AF;
    h.mmio.values.insert(APIC + 0xF0, 0xFF);
    assert_eq!(h.run(APIC + 0xF0), Ok(Emulated::Completed));
    assert_eq!(h.mmio.events, vec![read(APIC + 0xF0, 4), write(APIC + 0xF0, 4, 0x1FF)]);
    // 0x1FF: low byte 0xFF has even parity; CF, OF cleared, AF cleared.
    assert_eq!(h.regs.rflags, 0x2 | PF);
    assert_eq!(h.regs.rip, CODE + 6);
}

#[test]
fn and_to_memory_and_xor_to_register() {
    // and %eax,(%rdi)
    let mut h = Harness::long64(&[0x21, 0x07]);
    h.regs.gpr[Regs::RDI] = APIC;
    h.regs.gpr[Regs::RAX] = 0xF0F0;
    h.mmio.values.insert(APIC, 0x0F0F);
    assert_eq!(h.run(APIC), Ok(Emulated::Completed));
    assert_eq!(h.mmio.events, vec![read(APIC, 4), write(APIC, 4, 0)]);
    assert_eq!(h.regs.rflags, 0x2 | ZF | PF);
    // xor (%rdi),%eax: the register is the destination, the device only read.
    let mut h = Harness::long64(&[0x33, 0x07]);
    h.regs.gpr[Regs::RDI] = APIC;
    h.regs.gpr[Regs::RAX] = 0xFFFF_FFFF_0000_0001;
    h.mmio.values.insert(APIC, 0x8000_0000);
    assert_eq!(h.run(APIC), Ok(Emulated::Completed));
    assert_eq!(h.mmio.events, vec![read(APIC, 4)]);
    assert_eq!(h.regs.gpr[Regs::RAX], 0x8000_0001);
    assert_eq!(h.regs.rflags, 0x2 | SF);
}

#[test]
fn add_sets_carry_zero_aux_and_overflow_sign() {
    // add %ecx,(%rdi): 0xFFFFFFFF + 1 = 0
    let mut h = Harness::long64(&[0x01, 0x0F]);
    h.regs.gpr[Regs::RDI] = APIC;
    h.regs.gpr[Regs::RCX] = 1;
    h.mmio.values.insert(APIC, 0xFFFF_FFFF);
    assert_eq!(h.run(APIC), Ok(Emulated::Completed));
    assert_eq!(h.mmio.events, vec![read(APIC, 4), write(APIC, 4, 0)]);
    assert_eq!(h.regs.rflags, 0x2 | CF | ZF | PF | AF);
    // addb $0x1,(%rdi): 0x7F + 1 = 0x80, signed overflow
    let mut h = Harness::long64(&[0x80, 0x07, 0x01]);
    h.regs.gpr[Regs::RDI] = APIC;
    h.mmio.values.insert(APIC, 0x7F);
    assert_eq!(h.run(APIC), Ok(Emulated::Completed));
    assert_eq!(h.mmio.events, vec![read(APIC, 1), write(APIC, 1, 0x80)]);
    assert_eq!(h.regs.rflags, 0x2 | OF | SF | AF);
}

#[test]
fn sub_sets_borrow_and_overflow() {
    // sub %ecx,(%rdi): 0 - 1 = 0xFFFFFFFF
    let mut h = Harness::long64(&[0x29, 0x0F]);
    h.regs.gpr[Regs::RDI] = APIC;
    h.regs.gpr[Regs::RCX] = 1;
    assert_eq!(h.run(APIC), Ok(Emulated::Completed));
    assert_eq!(h.mmio.events, vec![read(APIC, 4), write(APIC, 4, 0xFFFF_FFFF)]);
    assert_eq!(h.regs.rflags, 0x2 | CF | SF | PF | AF);
    // subw $0x1,(%rdi): 0x8000 - 1 = 0x7FFF
    let mut h = Harness::long64(&[0x66, 0x83, 0x2F, 0x01]);
    h.regs.gpr[Regs::RDI] = APIC;
    h.mmio.values.insert(APIC, 0x8000);
    assert_eq!(h.run(APIC), Ok(Emulated::Completed));
    assert_eq!(h.mmio.events, vec![read(APIC, 2), write(APIC, 2, 0x7FFF)]);
    assert_eq!(h.regs.rflags, 0x2 | OF | PF | AF);
}

#[test]
fn test_and_cmp_only_read_and_set_flags() {
    // testb $0x80,(%rdi)
    let mut h = Harness::long64(&[0xF6, 0x07, 0x80]);
    h.regs.gpr[Regs::RDI] = APIC;
    h.regs.rflags = 0x2 | ZF | CF;
    h.mmio.values.insert(APIC, 0x81);
    assert_eq!(h.run(APIC), Ok(Emulated::Completed));
    assert_eq!(h.mmio.events, vec![read(APIC, 1)]);
    assert_eq!(h.regs.rflags, 0x2 | SF);
    // cmp %eax,(%rdi): equal
    let mut h = Harness::long64(&[0x39, 0x07]);
    h.regs.gpr[Regs::RDI] = APIC;
    h.regs.gpr[Regs::RAX] = 5;
    h.mmio.values.insert(APIC, 5);
    assert_eq!(h.run(APIC), Ok(Emulated::Completed));
    assert_eq!(h.mmio.events, vec![read(APIC, 4)]);
    assert_eq!(h.regs.rflags, 0x2 | ZF | PF);
    assert_eq!(h.regs.gpr[Regs::RAX], 5);
}

#[test]
fn rep_stosd_runs_one_iteration_per_exit() {
    // rep stos %eax,%es:(%rdi)
    let mut h = Harness::long64(&[0xF3, 0xAB]);
    h.regs.gpr[Regs::RAX] = 0xAB;
    h.regs.gpr[Regs::RCX] = 4;
    h.regs.gpr[Regs::RDI] = APIC + 0x10;
    for i in 0..4u64 {
        let expected = if i < 3 { Emulated::IterationDone } else { Emulated::Completed };
        assert_eq!(h.run(APIC + 0x10 + 4 * i), Ok(expected));
        assert_eq!(h.regs.rip, if i < 3 { CODE } else { CODE + 2 });
    }
    let writes: Vec<Event> = (0..4).map(|i| write(APIC + 0x10 + 4 * i, 4, 0xAB)).collect();
    assert_eq!(h.mmio.events, writes);
    assert_eq!(h.regs.gpr[Regs::RCX], 0);
    assert_eq!(h.regs.gpr[Regs::RDI], APIC + 0x20);
}

#[test]
fn movs_copies_guest_memory_to_device_in_both_directions_of_df() {
    // movsl %ds:(%rsi),%es:(%rdi)
    let mut h = Harness::long64(&[0xA5]);
    h.mem.put_u32(DATA, 0xDEAD_BEEF);
    h.regs.gpr[Regs::RSI] = DATA;
    h.regs.gpr[Regs::RDI] = APIC + 0x300;
    assert_eq!(h.run(APIC + 0x300), Ok(Emulated::Completed));
    assert_eq!(h.mmio.events, vec![write(APIC + 0x300, 4, 0xDEAD_BEEF)]);
    assert_eq!((h.regs.gpr[Regs::RSI], h.regs.gpr[Regs::RDI]), (DATA + 4, APIC + 0x304));
    assert_eq!(h.regs.rip, CODE + 1);
    // Device to memory, DF = 1.
    let mut h = Harness::long64(&[0xA5]);
    h.regs.rflags |= DF;
    h.mmio.values.insert(APIC + 0x30, 0x5001_0014);
    h.regs.gpr[Regs::RSI] = APIC + 0x30;
    h.regs.gpr[Regs::RDI] = DATA + 8;
    assert_eq!(h.run(APIC + 0x30), Ok(Emulated::Completed));
    assert_eq!(h.mmio.events, vec![read(APIC + 0x30, 4)]);
    assert_eq!(&h.mem.bytes[DATA as usize + 8..DATA as usize + 12], &0x5001_0014u32.to_le_bytes());
    assert_eq!((h.regs.gpr[Regs::RSI], h.regs.gpr[Regs::RDI]), (APIC + 0x2C, DATA + 4));
}

#[test]
fn rep_movsb_with_32bit_addresses_updates_ecx_esi_edi() {
    // 0x67 + rep movsb: ECX/ESI/EDI are used and written, the upper halves zeroed.
    let mut h = Harness::long64(&[0x67, 0xF3, 0xA4]);
    h.mem.bytes[DATA as usize] = 0x7E;
    h.regs.gpr[Regs::RCX] = 0xFFFF_0000_0000_0002;
    h.regs.gpr[Regs::RSI] = 0xFFFF_0000_0000_0000 | DATA;
    h.regs.gpr[Regs::RDI] = 0xFFFF_0000_0000_0000 | APIC;
    assert_eq!(h.run(APIC), Ok(Emulated::IterationDone));
    assert_eq!(h.mmio.events, vec![write(APIC, 1, 0x7E)]);
    assert_eq!(h.regs.gpr[Regs::RCX], 1);
    assert_eq!(h.regs.gpr[Regs::RSI], DATA + 1);
    assert_eq!(h.regs.gpr[Regs::RDI], APIC + 1);
    assert_eq!(h.regs.rip, CODE);
}

#[test]
fn real_mode_base_index_displacement_with_segment_base() {
    // .code16: mov %ax,0x4(%bx,%si) with DS = 0x9000
    let mut h = Harness::real16(0x9000, &[0x89, 0x40, 0x04]);
    h.regs.gpr[Regs::RAX] = 0xA5A5;
    h.regs.gpr[Regs::RBX] = 0x100;
    h.regs.gpr[Regs::RSI] = 0x20;
    assert_eq!(h.run(0x9_0124), Ok(Emulated::Completed));
    assert_eq!(h.mmio.events, vec![write(0x9_0124, 2, 0xA5A5)]);
    assert_eq!(h.regs.rip, 0x103);
    // The offset wraps at 64 KiB: 0xFFF0 + 0x20 + 4 = 0x14.
    let mut h = Harness::real16(0x9000, &[0x89, 0x40, 0x04]);
    h.regs.gpr[Regs::RBX] = 0xFFF0;
    h.regs.gpr[Regs::RSI] = 0x20;
    assert_eq!(h.run(0x9_0014), Ok(Emulated::Completed));
    assert_eq!(h.mmio.events, vec![write(0x9_0014, 2, 0)]);
}

#[test]
fn rip_relative_operand_is_relative_to_the_next_instruction() {
    // mov 0x100(%rip),%eax at CODE: the operand is CODE + 6 + 0x100. (The fake device
    // claims that page; which page is a device is the VM's business.)
    let mut h = Harness::long64(&[0x8B, 0x05, 0x00, 0x01, 0x00, 0x00]);
    h.mmio.values.insert(CODE + 0x106, 7);
    assert_eq!(h.run(CODE + 0x106), Ok(Emulated::Completed));
    assert_eq!(h.mmio.events, vec![read(CODE + 0x106, 4)]);
    assert_eq!(h.regs.gpr[Regs::RAX], 7);
}

#[test]
fn fs_gs_bases_count_in_64bit_code_and_address_size_override_truncates() {
    // mov %gs:0x10(%rax),%ecx
    let mut h = Harness::long64(&[0x65, 0x8B, 0x48, 0x10]);
    h.cpu.segments.gs = APIC;
    h.regs.gpr[Regs::RAX] = 0x10;
    h.mmio.values.insert(APIC + 0x20, 3);
    assert_eq!(h.run(APIC + 0x20), Ok(Emulated::Completed));
    assert_eq!(h.regs.gpr[Regs::RCX], 3);
    // mov %ecx,(%eax): only EAX forms the address.
    let mut h = Harness::long64(&[0x67, 0x89, 0x08]);
    h.regs.gpr[Regs::RAX] = 0xFFFF_FFFF_0000_0000 | (APIC + 0x30);
    assert_eq!(h.run(APIC + 0x30), Ok(Emulated::Completed));
    assert_eq!(h.mmio.events, vec![write(APIC + 0x30, 4, 0)]);
}

#[test]
fn instruction_straddling_a_page_is_fetched_from_both_frames() {
    // mov %ecx,0x20(%rax) with 0x89 0x48 at the end of page 0x10000 and 0x20 at the start
    // of page 0x11000, which maps to frame 0x30000.
    let mut h = Harness::long64(&[]);
    h.regs.rip = 0x1_0FFE;
    h.mem.write(0x1_0FFE, &[0x89, 0x48]).unwrap();
    h.map_4k(0x1_1000, 0x3_0000, 0b111);
    h.mem.write(0x3_0000, &[0x20]).unwrap();
    h.regs.gpr[Regs::RAX] = APIC;
    assert_eq!(h.run(APIC + 0x20), Ok(Emulated::Completed));
    assert_eq!(h.mmio.events, vec![write(APIC + 0x20, 4, 0)]);
    assert_eq!(h.regs.rip, 0x1_1001);
}

#[test]
fn fetch_fault_on_second_page_matters_only_when_its_bytes_are_needed() {
    let mut h = Harness::long64(&[]);
    h.map_4k(0x1_1000, 0x1_1000, 0); // not present
    // A 3-byte instruction with 2 bytes on the first page: #PF on the second.
    h.regs.rip = 0x1_0FFE;
    h.mem.write(0x1_0FFE, &[0x89, 0x48]).unwrap();
    let before = h.regs;
    assert_eq!(h.run(APIC + 0x20), Err(EmulationError::PageFault { error_code: PF_FETCH, linear: 0x1_1000 }));
    assert_eq!(h.regs, before);
    // A 1-byte instruction (movsl) at the last byte: decoded without the second page.
    h.regs.rip = 0x1_0FFF;
    h.mem.write(0x1_0FFF, &[0xA5]).unwrap();
    h.regs.gpr[Regs::RSI] = DATA;
    h.regs.gpr[Regs::RDI] = APIC;
    assert_eq!(h.run(APIC), Ok(Emulated::Completed));
}

#[test]
fn data_page_fault_and_wrong_frame_leave_everything_unchanged() {
    // mov %ecx,(%rax) to a read-only page: #PF with P and W.
    let mut h = Harness::long64(&[0x89, 0x08]);
    h.map_4k(0x5000, 0x5000, 0b101);
    h.regs.gpr[Regs::RAX] = 0x5010;
    let before = h.regs;
    assert_eq!(
        h.run(0x5010),
        Err(EmulationError::PageFault { error_code: PF_PRESENT | PF_WRITE, linear: 0x5010 })
    );
    assert_eq!(h.regs, before);
    assert!(h.mmio.events.is_empty());
    // The operand is in another frame than the one that faulted.
    h.regs.gpr[Regs::RAX] = APIC + 0x1000;
    assert_eq!(h.run(APIC), Err(EmulationError::GpaMismatch { fault_gpa: APIC, operand_gpa: APIC + 0x1000 }));
    assert!(h.mmio.events.is_empty());
    // A non-canonical operand is #GP.
    h.regs.gpr[Regs::RAX] = 0x8000_0000_0000_0000;
    assert_eq!(h.run(APIC), Err(EmulationError::GeneralProtection));
}

#[test]
fn unsupported_and_invalid_instructions_report_their_bytes() {
    // ud2
    let mut h = Harness::long64(&[0x0F, 0x0B, 0x90]);
    let Err(EmulationError::Unsupported { bytes, len }) = h.run(APIC) else { panic!("ud2 emulated") };
    assert_eq!(&bytes[..usize::from(len)], &[0x0F, 0x0B]);
    // xchg %eax,(%rdi): decodable, not emulated.
    let mut h = Harness::long64(&[0x87, 0x07]);
    let Err(EmulationError::Unsupported { bytes, len }) = h.run(APIC) else { panic!("xchg emulated") };
    assert_eq!(&bytes[..usize::from(len)], &[0x87, 0x07]);
    // 0x06 (push %es) does not exist in 64-bit code: every fetched byte is reported.
    let mut h = Harness::long64(&[0x06, 0x01]);
    let Err(EmulationError::Unsupported { bytes, len }) = h.run(APIC) else { panic!("0x06 decoded") };
    assert_eq!((bytes[0], bytes[1], usize::from(len)), (0x06, 0x01, MAX_INSTRUCTION_LEN));
    assert!(h.mmio.events.is_empty());
}

/// xorshift64*, so the no-panic loop is reproducible.
pub(super) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    let mut emulated = 0;
    for round in 0..12_000 {
        let code: Vec<u8> = (0..MAX_INSTRUCTION_LEN).map(|_| rng.next() as u8).collect();
        let mut h = match round % 3 {
            0 => Harness::long64(&code),
            1 => Harness::flat32(&code),
            _ => Harness::real16(rng.next() & 0xFFFF, &code),
        };
        for gpr in &mut h.regs.gpr {
            // Mostly small addresses (some inside RAM, some the device), sometimes anything.
            *gpr = match rng.next() % 4 {
                0 => APIC + (rng.next() & 0xFFF),
                1 => rng.next() & 0x1F_FFFF,
                2 => rng.next(),
                _ => rng.next() & 0xF,
            };
        }
        h.regs.rflags = 0x2 | (rng.next() & DF);
        let fault = if rng.next().is_multiple_of(2) { APIC } else { rng.next() & 0x1F_F000 };
        emulated += usize::from(h.run(fault).is_ok());
    }
    // Random bytes do hit the emulated forms now and then.
    assert!(emulated > 0);
}

#[test]
fn register_numbering_matches_the_hardware() {
    assert_eq!(gpr(Register::SPL), Some(Gpr { index: Regs::RSP, size: 1, is_high_byte: false }));
    assert_eq!(gpr(Register::BH), Some(Gpr { index: Regs::RBX, size: 1, is_high_byte: true }));
    assert_eq!(gpr(Register::R15L), Some(Gpr { index: 15, size: 1, is_high_byte: false }));
    assert_eq!(gpr(Register::DI), Some(Gpr { index: Regs::RDI, size: 2, is_high_byte: false }));
    assert_eq!(gpr(Register::R8D), Some(Gpr { index: 8, size: 4, is_high_byte: false }));
    assert_eq!(gpr(Register::RBP), Some(Gpr { index: Regs::RBP, size: 8, is_high_byte: false }));
    assert_eq!(gpr(Register::RIP), None);
    assert_eq!(gpr(Register::ES), None);
}

#[test]
fn emulated_forms_with_random_operands_keep_the_invariants() {
    // Opcodes of the emulated forms (one- and two-byte), behind random prefixes and before
    // random ModRM/SIB/displacement/immediate bytes. Whatever happens: a success touches
    // the faulting frame and otherwise only addresses that are not RAM (the other side of
    // a MOVS); an error leaves the registers unchanged and the device untouched.
    const OPCODES: &[&[u8]] = &[
        &[0x88],
        &[0x89],
        &[0x8A],
        &[0x8B],
        &[0xC6],
        &[0xC7],
        &[0xA0],
        &[0xA1],
        &[0xA2],
        &[0xA3],
        &[0x80],
        &[0x81],
        &[0x83],
        &[0x00],
        &[0x01],
        &[0x02],
        &[0x03],
        &[0x08],
        &[0x09],
        &[0x0B],
        &[0x20],
        &[0x21],
        &[0x23],
        &[0x28],
        &[0x29],
        &[0x2B],
        &[0x30],
        &[0x31],
        &[0x33],
        &[0x38],
        &[0x39],
        &[0x3B],
        &[0x84],
        &[0x85],
        &[0xF6],
        &[0xF7],
        &[0xA4],
        &[0xA5],
        &[0xAA],
        &[0xAB],
        &[0x63],
        &[0x0F, 0xB6],
        &[0x0F, 0xB7],
        &[0x0F, 0xBE],
        &[0x0F, 0xBF],
    ];
    const PREFIXES: &[u8] = &[0x66, 0x67, 0xF3, 0xF2, 0x2E, 0x3E, 0x26, 0x64, 0x65, 0x48, 0x41, 0x4C];
    let mut rng = Rng(0x5EED_0000_0000_0001);
    let mut emulated = 0;
    for round in 0..20_000u32 {
        let mut code = Vec::new();
        for _ in 0..rng.next() % 3 {
            code.push(PREFIXES[(rng.next() % PREFIXES.len() as u64) as usize]);
        }
        code.extend_from_slice(OPCODES[(rng.next() % OPCODES.len() as u64) as usize]);
        while code.len() < MAX_INSTRUCTION_LEN {
            code.push(rng.next() as u8);
        }
        let mut h = match round % 3 {
            0 => Harness::long64(&code),
            1 => Harness::flat32(&code),
            _ => Harness::real16(0x1000, &code),
        };
        for gpr in &mut h.regs.gpr {
            *gpr = match rng.next() % 3 {
                0 => APIC + (rng.next() & 0xFF),
                1 => rng.next() & 0xFF,
                _ => rng.next(),
            };
        }
        h.regs.rflags = 0x2 | (rng.next() & DF);
        let fault = APIC + (rng.next() & 0xFFF);
        let before = h.regs;
        match h.run(fault) {
            Ok(_) => {
                emulated += 1;
                let gpas: Vec<u64> = h
                    .mmio
                    .events
                    .iter()
                    .map(|event| match *event {
                        Event::Read { gpa, .. } | Event::Write { gpa, .. } => gpa,
                    })
                    .collect();
                let in_frame = |gpa: &u64| gpa / 4096 == fault / 4096;
                let is_ram = |gpa: &u64| *gpa < RAM_SIZE as u64;
                // Only a REP string instruction with a zero count touches nothing.
                let has_rep = code[..4].iter().any(|&byte| byte == 0xF3 || byte == 0xF2);
                assert!(gpas.iter().any(in_frame) || (gpas.is_empty() && has_rep), "{code:02x?}");
                assert!(gpas.iter().all(|gpa| in_frame(gpa) || !is_ram(gpa)), "{code:02x?}");
            }
            Err(_) => {
                assert_eq!(h.regs, before, "{code:02x?}");
                assert!(h.mmio.events.is_empty(), "{code:02x?}");
            }
        }
    }
    assert!(emulated > 1000, "only {emulated} emulated");
}
