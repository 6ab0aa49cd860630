//! Instruction emulation for device accesses that exit without decode assist.
//!
//! A guest access to a device page (the local APIC at 0xFEE00000, the I/O APIC at
//! 0xFEC00000) exits as a nested page fault outside every memory slot. Neither backend
//! says what the instruction was (QEMU TCG's SVM gives no decode assist; VMX gives only
//! the guest-physical address), so the VM calls [`emulate_mmio`], which:
//!
//! 1. fetches up to 15 bytes at CS:RIP through the guest's own paging ([`paging`]; an
//!    instruction may straddle two pages, and a fault on the second page matters only if
//!    the instruction needs its bytes),
//! 2. decodes them with `iced-x86` in the CPU's current code size ([`CodeSize`]),
//! 3. computes the memory operand's linear address (base + index * scale + displacement,
//!    RIP-relative, the address-size override, the segment base: all six in 16- and
//!    32-bit code, only FS and GS in 64-bit code), translates it and checks that it lies
//!    in the 4 KiB frame of the faulting guest-physical address (anything else means the
//!    guest's code or tables changed since the exit: [`EmulationError::GpaMismatch`]),
//! 4. performs the access through [`Mmio`] and writes back registers and the status
//!    flags ([`ops`]), and advances RIP.
//!
//! Emulated: MOV (r/m <- r, r <- r/m, r/m <- imm, the moffs forms), MOVZX, MOVSX, MOVSXD,
//! ADD, SUB, AND, OR, XOR, CMP, TEST with one memory operand, STOS and MOVS, operand sizes
//! 1, 2, 4 and 8. STOS and MOVS with a REP prefix run one iteration per call: RCX, RSI and
//! RDI are updated and RIP stays on the instruction until RCX reaches 0
//! ([`Emulated::IterationDone`]), so the guest re-executes it and the next iteration
//! exits again, with interrupts deliverable in between as on hardware. The other side of
//! MOVS goes through [`GuestMemory`] (or [`Mmio`] when it is not RAM either).
//!
//! On any error the registers are unchanged and no device was accessed. The VM maps the
//! error to what the guest sees: [`EmulationError::PageFault`] injects #PF,
//! [`EmulationError::GeneralProtection`] #GP(0), [`EmulationError::Unsupported`] #UD or
//! ends the VM with the bytes in the reason. No byte sequence panics.
//!
//! How the VM drives it, on a nested page fault outside every slot:
//! 1. fill a [`CpuState`] from the vCPU (CR0, CR3, CR4, EFER, CPL = SS.DPL, the six
//!    segment bases, [`CodeSize::from_cs`] from EFER.LMA, CS.L, CS.D) and a [`Regs`] from
//!    the backend's general registers plus RSP, RIP and RFLAGS (RSP lives in the
//!    VMCS/VMCB, and `[rsp + 8]` is a valid device operand);
//! 2. call [`emulate_mmio`] with the faulting guest-physical address, its guest memory and
//!    a [`Mmio`] that routes addresses to the device models;
//! 3. on `Ok`, copy RIP, RFLAGS and the registers back; on `PageFault` inject #PF with
//!    that error code and CR2; on `GeneralProtection` inject #GP(0); on `GpaMismatch`
//!    re-enter unchanged; on `Unsupported` inject #UD or end the VM with the bytes; on
//!    `NotRam` end the VM.
//!
//! Not modelled: segment limits and access rights (the guest's own segments are trusted,
//! only their bases are used), alignment checks, RFLAGS.TF single-step traps after an
//! emulated instruction, LOCK atomicity (a locked read-modify-write is a read and a write
//! through [`Mmio`]; the VM keeps other vCPUs off the device model in between).
//!
//! String port I/O (INS/OUTS), which exits with the port already decoded, is in
//! [`string_io`].

pub mod ops;
pub mod paging;
pub mod string_io;

use iced_x86::{
    Code, Decoder, DecoderError, DecoderOptions, Instruction, MemorySize, Mnemonic, OpKind, Register,
};

use ops::{AluOp, DF, RF};
use paging::{Access, PAGE_SIZE};
pub use paging::{AccessError, ControlRegs, GuestMemory, NotRam, TranslateError};

/// The longest x86 instruction (SDM vol. 2 2.3.11).
pub const MAX_INSTRUCTION_LEN: usize = 15;

/// The device side of an emulated access: the VM routes `gpa` to the LAPIC or I/O APIC
/// model. `size` is 1, 2, 4 or 8; a read returns the value in the low `size` bytes.
pub trait Mmio {
    fn read(&mut self, gpa: u64, size: u8) -> u64;
    fn write(&mut self, gpa: u64, size: u8, value: u64);
}

/// The general registers in the hardware's numbering (RAX = 0 .. R15 = 15, the order of
/// ModRM's register fields), RIP and RFLAGS. The VM copies them from and back to the
/// backend's registers around an emulation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    pub gpr: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
}

impl Regs {
    pub const RAX: usize = 0;
    pub const RCX: usize = 1;
    pub const RDX: usize = 2;
    pub const RBX: usize = 3;
    pub const RSP: usize = 4;
    pub const RBP: usize = 5;
    pub const RSI: usize = 6;
    pub const RDI: usize = 7;
}

/// The code size the CPU decodes in (SDM vol. 3A 5.2.1): from CS.L and CS.D.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeSize {
    Bits16,
    Bits32,
    Bits64,
}

impl CodeSize {
    /// The code size of a CS descriptor: `cs_l` only counts in IA-32e mode (EFER.LMA).
    pub fn from_cs(is_long_mode: bool, cs_l: bool, cs_d: bool) -> Self {
        match (is_long_mode && cs_l, cs_d) {
            (true, _) => Self::Bits64,
            (false, true) => Self::Bits32,
            (false, false) => Self::Bits16,
        }
    }

    fn bits(self) -> u32 {
        match self {
            Self::Bits16 => 16,
            Self::Bits32 => 32,
            Self::Bits64 => 64,
        }
    }

    /// The default address size in bytes, and the one the 0x67 prefix selects.
    fn address_size(self, has_override: bool) -> u8 {
        match (self, has_override) {
            (Self::Bits16, false) | (Self::Bits32, true) => 2,
            (Self::Bits16, true) | (Self::Bits32, false) | (Self::Bits64, true) => 4,
            (Self::Bits64, false) => 8,
        }
    }
}

/// The segment bases the VM reads from the vCPU (the hidden part of each segment register).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentBases {
    pub es: u64,
    pub cs: u64,
    pub ss: u64,
    pub ds: u64,
    pub fs: u64,
    pub gs: u64,
}

/// Everything about the vCPU the emulation reads but does not change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuState {
    pub control: ControlRegs,
    pub segments: SegmentBases,
    pub code_size: CodeSize,
}

impl CpuState {
    /// The linear address of `offset` in segment `segment` (SDM vol. 3A 3.4.4, 3.4.4.1:
    /// in 64-bit code only FS and GS have a base; elsewhere linear addresses are 32 bits).
    pub fn linear(&self, segment: Segment, offset: u64) -> u64 {
        let s = &self.segments;
        let base = match segment {
            Segment::Es => s.es,
            Segment::Cs => s.cs,
            Segment::Ss => s.ss,
            Segment::Ds => s.ds,
            Segment::Fs => s.fs,
            Segment::Gs => s.gs,
        };
        match self.code_size {
            CodeSize::Bits64 => match segment {
                Segment::Fs | Segment::Gs => base.wrapping_add(offset),
                _ => offset,
            },
            CodeSize::Bits16 | CodeSize::Bits32 => base.wrapping_add(offset) & 0xFFFF_FFFF,
        }
    }
}

/// A segment register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    Es,
    Cs,
    Ss,
    Ds,
    Fs,
    Gs,
}

impl Segment {
    fn from_iced(register: Register) -> Option<Self> {
        Some(match register {
            Register::ES => Self::Es,
            Register::CS => Self::Cs,
            Register::SS => Self::Ss,
            Register::DS => Self::Ds,
            Register::FS => Self::Fs,
            Register::GS => Self::Gs,
            _ => return None,
        })
    }
}

/// A successful emulation: registers and flags are written back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emulated {
    /// The instruction completed and RIP points past it.
    Completed,
    /// One iteration of a REP string instruction ran; RCX is not yet 0, so RIP still
    /// points at the instruction and the guest re-executes it.
    IterationDone,
}

/// Why an instruction was not emulated, and what the VM does about it. The registers are
/// unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmulationError {
    /// Not an instruction this emulator handles (or not an instruction at all): inject #UD
    /// or end the VM with `bytes[..len]` in the reason.
    Unsupported { bytes: [u8; MAX_INSTRUCTION_LEN], len: u8 },
    /// Inject #PF with this error code and CR2 = `linear`.
    PageFault { error_code: u32, linear: u64 },
    /// Inject #GP(0) (a non-canonical address).
    GeneralProtection,
    /// The instruction's operands do not touch the faulting frame: the guest changed its
    /// code or tables since the exit. Re-entering the guest retries the instruction.
    GpaMismatch { fault_gpa: u64, operand_gpa: u64 },
    /// A page table, the instruction or an operand lies at a guest-physical address that
    /// is neither RAM nor the faulting device page: end the VM.
    NotRam { gpa: u64 },
}

impl From<TranslateError> for EmulationError {
    fn from(error: TranslateError) -> Self {
        match error {
            TranslateError::PageFault { error_code, linear } => Self::PageFault { error_code, linear },
            TranslateError::GeneralProtection => Self::GeneralProtection,
            TranslateError::TableNotRam { gpa } => Self::NotRam { gpa },
        }
    }
}

impl From<AccessError> for EmulationError {
    fn from(error: AccessError) -> Self {
        match error {
            AccessError::Translate(error) => error.into(),
            AccessError::NotRam { gpa } => Self::NotRam { gpa },
        }
    }
}

/// Emulate the instruction at CS:RIP, whose access to guest-physical `fault_gpa` exited.
pub fn emulate_mmio(
    cpu: &CpuState,
    regs: &mut Regs,
    fault_gpa: u64,
    mem: &mut impl GuestMemory,
    mmio: &mut impl Mmio,
) -> Result<Emulated, EmulationError> {
    let fetched = fetch(cpu, regs, mem)?;
    let instruction = fetched.decode(cpu, regs.rip)?;
    let unsupported = fetched.unsupported(instruction.len());
    let mut emulation = Emulation {
        cpu,
        next: *regs,
        instruction: &instruction,
        address_size: cpu.code_size.address_size(has_address_size_prefix(&fetched, cpu.code_size)),
        fault_gpa,
        unsupported,
    };
    let outcome = emulation.run(mem, mmio)?;
    let mut next = emulation.next;
    if outcome == Emulated::Completed {
        next.rip = advance_ip(regs.rip, instruction.len(), cpu.code_size);
        next.rflags &= !RF;
    }
    *regs = next;
    Ok(outcome)
}

/// RIP after an instruction of `len` bytes, wrapping as IP/EIP do in 16- and 32-bit code.
pub fn advance_ip(rip: u64, len: usize, code_size: CodeSize) -> u64 {
    let next = rip.wrapping_add(len as u64);
    match code_size {
        CodeSize::Bits16 => next & 0xFFFF,
        CodeSize::Bits32 => next & 0xFFFF_FFFF,
        CodeSize::Bits64 => next,
    }
}

/// The bytes fetched at RIP, and the fault that cut the fetch short, if any.
struct Fetched {
    bytes: [u8; MAX_INSTRUCTION_LEN],
    len: usize,
    fault: Option<EmulationError>,
}

/// Fetch up to 15 bytes at CS:RIP, page by page.
fn fetch(cpu: &CpuState, regs: &Regs, mem: &impl GuestMemory) -> Result<Fetched, EmulationError> {
    let linear = cpu.linear(Segment::Cs, regs.rip);
    let mut fetched = Fetched { bytes: [0; MAX_INSTRUCTION_LEN], len: 0, fault: None };
    while fetched.len < MAX_INSTRUCTION_LEN {
        let at = cpu.linear(Segment::Cs, regs.rip.wrapping_add(fetched.len as u64));
        let to_page_end = (PAGE_SIZE - (at & (PAGE_SIZE - 1))) as usize;
        let chunk = to_page_end.min(MAX_INSTRUCTION_LEN - fetched.len);
        let buf = &mut fetched.bytes[fetched.len..fetched.len + chunk];
        match paging::read_linear(&cpu.control, mem, at, buf, Access::Fetch) {
            Ok(()) => fetched.len += chunk,
            Err(error) if at != linear => {
                fetched.fault = Some(error.into());
                break;
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(fetched)
}

impl Fetched {
    /// Decode the fetched bytes; running out of bytes where the fetch faulted reports the
    /// fault, as the processor would on fetching the rest.
    fn decode(&self, cpu: &CpuState, rip: u64) -> Result<Instruction, EmulationError> {
        let bits = cpu.code_size.bits();
        let mut decoder = Decoder::with_ip(bits, &self.bytes[..self.len], rip, DecoderOptions::NONE);
        let instruction = decoder.decode();
        match (decoder.last_error(), self.fault) {
            (DecoderError::None, _) => Ok(instruction),
            (DecoderError::NoMoreBytes, Some(fault)) => Err(fault),
            _ => Err(self.unsupported(self.len)),
        }
    }

    fn unsupported(&self, len: usize) -> EmulationError {
        let len = len.min(self.len);
        let mut bytes = [0; MAX_INSTRUCTION_LEN];
        bytes[..len].copy_from_slice(&self.bytes[..len]);
        EmulationError::Unsupported { bytes, len: len as u8 }
    }
}

/// Whether the instruction carries the 0x67 address-size prefix among its legacy prefixes
/// (SDM vol. 2 2.1.1; in 64-bit code REX bytes may sit between them).
fn has_address_size_prefix(fetched: &Fetched, code_size: CodeSize) -> bool {
    for &byte in &fetched.bytes[..fetched.len] {
        match byte {
            0x67 => return true,
            0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 | 0x66 | 0xF0 | 0xF2 | 0xF3 => {}
            0x40..=0x4F if code_size == CodeSize::Bits64 => {}
            _ => return false,
        }
    }
    false
}

/// Where a memory operand lies: its linear and guest-physical address.
#[derive(Clone, Copy)]
struct Place {
    linear: u64,
    gpa: u64,
}

/// One emulation in progress: the decoded instruction and the registers it produces.
struct Emulation<'a> {
    cpu: &'a CpuState,
    /// The registers after the instruction; copied back only on success.
    next: Regs,
    instruction: &'a Instruction,
    /// 2, 4 or 8 bytes.
    address_size: u8,
    fault_gpa: u64,
    unsupported: EmulationError,
}

impl Emulation<'_> {
    fn run(&mut self, mem: &mut impl GuestMemory, mmio: &mut impl Mmio) -> Result<Emulated, EmulationError> {
        let instruction = self.instruction;
        let kinds = (instruction.op0_kind(), instruction.op1_kind());
        match instruction.code() {
            Code::Stosb_m8_AL | Code::Stosw_m16_AX | Code::Stosd_m32_EAX | Code::Stosq_m64_RAX => {
                return self.string(StringOp::Stos, mem, mmio);
            }
            Code::Movsb_m8_m8 | Code::Movsw_m16_m16 | Code::Movsd_m32_m32 | Code::Movsq_m64_m64 => {
                return self.string(StringOp::Movs, mem, mmio);
            }
            _ => {}
        }
        if instruction.op_count() != 2 {
            return Err(self.unsupported);
        }
        let alu = match instruction.mnemonic() {
            Mnemonic::Mov => None,
            Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd => {
                return self.extend(instruction.mnemonic() != Mnemonic::Movzx, mem, mmio);
            }
            Mnemonic::Add => Some((AluOp::Add, true)),
            Mnemonic::Sub => Some((AluOp::Sub, true)),
            Mnemonic::And => Some((AluOp::And, true)),
            Mnemonic::Or => Some((AluOp::Or, true)),
            Mnemonic::Xor => Some((AluOp::Xor, true)),
            Mnemonic::Cmp => Some((AluOp::Sub, false)),
            Mnemonic::Test => Some((AluOp::And, false)),
            _ => return Err(self.unsupported),
        };
        let size = memory_size(instruction).ok_or(self.unsupported)?;
        match kinds {
            (OpKind::Memory, source) => {
                let value = self.source_value(source, size)?;
                let access = match alu {
                    Some((_, false)) => Access::Read,
                    _ => Access::Write,
                };
                let place = self.device_operand(mem, size, access)?;
                match alu {
                    None => mmio.write(place.gpa, size, value),
                    Some((op, writes)) => {
                        let old = mmio.read(place.gpa, size);
                        let (result, flags) = ops::alu(op, old, value, size);
                        if writes {
                            mmio.write(place.gpa, size, result);
                        }
                        self.next.rflags = ops::with_status_flags(self.next.rflags, flags);
                    }
                }
            }
            (OpKind::Register, OpKind::Memory) => {
                let target = instruction.op0_register();
                if register_size(target) != Some(size) {
                    return Err(self.unsupported);
                }
                let place = self.device_operand(mem, size, Access::Read)?;
                let value = mmio.read(place.gpa, size);
                match alu {
                    None => self.set_register(target, value),
                    Some((op, writes)) => {
                        let (result, flags) = ops::alu(op, self.register(target), value, size);
                        if writes {
                            self.set_register(target, result);
                        }
                        self.next.rflags = ops::with_status_flags(self.next.rflags, flags);
                    }
                }
            }
            _ => return Err(self.unsupported),
        }
        Ok(Emulated::Completed)
    }

    /// The register or immediate source operand of a store or an ALU op on memory.
    fn source_value(&self, kind: OpKind, size: u8) -> Result<u64, EmulationError> {
        let value = match kind {
            OpKind::Register => {
                let register = self.instruction.op1_register();
                if register_size(register) != Some(size) {
                    return Err(self.unsupported);
                }
                self.register(register)
            }
            OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64 => self.instruction.immediate(1),
            _ => return Err(self.unsupported),
        };
        Ok(value & ops::size_mask(size))
    }

    /// MOVZX, MOVSX, MOVSXD: load a narrower device operand into a register.
    fn extend(
        &mut self,
        is_signed: bool,
        mem: &mut impl GuestMemory,
        mmio: &mut impl Mmio,
    ) -> Result<Emulated, EmulationError> {
        let instruction = self.instruction;
        if (instruction.op0_kind(), instruction.op1_kind()) != (OpKind::Register, OpKind::Memory) {
            return Err(self.unsupported);
        }
        let size = memory_size(instruction).ok_or(self.unsupported)?;
        let target = instruction.op0_register();
        register_size(target).ok_or(self.unsupported)?;
        let place = self.device_operand(mem, size, Access::Read)?;
        let value = mmio.read(place.gpa, size) & ops::size_mask(size);
        let value = if is_signed { ops::sign_extend(value, size) } else { value };
        self.set_register(target, value);
        Ok(Emulated::Completed)
    }

    /// Locate the instruction's explicit memory operand, which must be the device access.
    fn device_operand(
        &self,
        mem: &impl GuestMemory,
        size: u8,
        access: Access,
    ) -> Result<Place, EmulationError> {
        let offset = self.effective_address()?;
        let segment = Segment::from_iced(self.instruction.memory_segment()).ok_or(self.unsupported)?;
        let place = self.place(mem, segment, offset, access)?;
        self.check_device(place, size)?;
        Ok(place)
    }

    /// base + index * scale + displacement, truncated to the address size (SDM vol. 1
    /// 3.7.5); RIP-relative operands come from iced as the absolute target.
    fn effective_address(&self) -> Result<u64, EmulationError> {
        let instruction = self.instruction;
        let base = instruction.memory_base();
        let mut address = instruction.memory_displacement64();
        if base != Register::RIP && base != Register::EIP {
            if base != Register::None {
                address = address.wrapping_add(self.gpr_operand(base)?);
            }
            let index = instruction.memory_index();
            if index != Register::None {
                let scale = u64::from(instruction.memory_index_scale());
                address = address.wrapping_add(self.gpr_operand(index)?.wrapping_mul(scale));
            }
        }
        Ok(address & ops::size_mask(self.address_size))
    }

    /// A base or index register's value; vector (VSIB) indexes are not emulated.
    fn gpr_operand(&self, register: Register) -> Result<u64, EmulationError> {
        register_size(register).ok_or(self.unsupported)?;
        Ok(self.register(register))
    }

    fn place(
        &self,
        mem: &impl GuestMemory,
        segment: Segment,
        offset: u64,
        access: Access,
    ) -> Result<Place, EmulationError> {
        let linear = self.cpu.linear(segment, offset);
        let gpa = paging::translate(&self.cpu.control, mem, linear, access)?;
        Ok(Place { linear, gpa })
    }

    /// Whether `place` is in the faulting frame.
    fn is_device(&self, place: Place) -> bool {
        place.gpa / PAGE_SIZE == self.fault_gpa / PAGE_SIZE
    }

    /// A device operand must be in the faulting frame and must not run past its page.
    fn check_device(&self, place: Place, size: u8) -> Result<(), EmulationError> {
        if !self.is_device(place) {
            return Err(EmulationError::GpaMismatch { fault_gpa: self.fault_gpa, operand_gpa: place.gpa });
        }
        if (place.linear & (PAGE_SIZE - 1)) + u64::from(size) > PAGE_SIZE {
            return Err(self.unsupported);
        }
        Ok(())
    }

    fn register(&self, register: Register) -> u64 {
        read_register(&self.next, register)
    }

    fn set_register(&mut self, register: Register, value: u64) {
        write_register(&mut self.next, register, value);
    }

    /// One iteration of STOS or MOVS (SDM vol. 2 "STOS", "MOVS", "REP").
    fn string(
        &mut self,
        op: StringOp,
        mem: &mut impl GuestMemory,
        mmio: &mut impl Mmio,
    ) -> Result<Emulated, EmulationError> {
        let instruction = self.instruction;
        let size = memory_size(instruction).ok_or(self.unsupported)?;
        let is_rep = instruction.has_rep_prefix() || instruction.has_repne_prefix();
        let counter = StringRegs { address_size: self.address_size };
        if is_rep && counter.get(&self.next, Regs::RCX) == 0 {
            return Ok(Emulated::Completed);
        }
        let destination_offset = counter.get(&self.next, Regs::RDI);
        match op {
            StringOp::Stos => {
                let destination = self.place(mem, Segment::Es, destination_offset, Access::Write)?;
                self.check_device(destination, size)?;
                let value = self.next.gpr[Regs::RAX] & ops::size_mask(size);
                mmio.write(destination.gpa, size, value);
            }
            StringOp::Movs => {
                let segment = Segment::from_iced(instruction.memory_segment()).ok_or(self.unsupported)?;
                let source_offset = counter.get(&self.next, Regs::RSI);
                let source = self.place(mem, segment, source_offset, Access::Read)?;
                let destination = self.place(mem, Segment::Es, destination_offset, Access::Write)?;
                let (device, memory, memory_access) = if self.is_device(source) {
                    (source, destination, Access::Write)
                } else {
                    (destination, source, Access::Read)
                };
                self.check_device(device, size)?;
                // The memory side may straddle a page: its second page must translate too
                // before the device is touched.
                if !self.fits_page(memory, size) {
                    let last = memory.linear.wrapping_add(u64::from(size) - 1);
                    paging::translate(&self.cpu.control, mem, last, memory_access)?;
                }
                let value = self.load(source, size, mem, mmio)?;
                self.store(destination, size, value, mem, mmio)?;
                counter.step(&mut self.next, Regs::RSI, size);
            }
        }
        counter.step(&mut self.next, Regs::RDI, size);
        if !is_rep {
            return Ok(Emulated::Completed);
        }
        let remaining = counter.get(&self.next, Regs::RCX).wrapping_sub(1);
        counter.set(&mut self.next, Regs::RCX, remaining);
        Ok(if remaining & ops::size_mask(self.address_size) == 0 {
            Emulated::Completed
        } else {
            Emulated::IterationDone
        })
    }

    /// Read a MOVS source: the device, guest RAM, or another device page.
    fn load(
        &self,
        place: Place,
        size: u8,
        mem: &impl GuestMemory,
        mmio: &mut impl Mmio,
    ) -> Result<u64, EmulationError> {
        if self.is_device(place) {
            return Ok(mmio.read(place.gpa, size));
        }
        let mut bytes = [0u8; 8];
        let buf = &mut bytes[..usize::from(size)];
        match paging::read_linear(&self.cpu.control, mem, place.linear, buf, Access::Read) {
            Ok(()) => Ok(u64::from_le_bytes(bytes)),
            Err(AccessError::NotRam { .. }) if self.fits_page(place, size) => Ok(mmio.read(place.gpa, size)),
            Err(error) => Err(error.into()),
        }
    }

    /// Write a MOVS destination: the device, guest RAM, or another device page.
    fn store(
        &self,
        place: Place,
        size: u8,
        value: u64,
        mem: &mut impl GuestMemory,
        mmio: &mut impl Mmio,
    ) -> Result<(), EmulationError> {
        if self.is_device(place) {
            mmio.write(place.gpa, size, value);
            return Ok(());
        }
        let bytes = value.to_le_bytes();
        match paging::write_linear(&self.cpu.control, mem, place.linear, &bytes[..usize::from(size)]) {
            Ok(()) => Ok(()),
            Err(AccessError::NotRam { .. }) if self.fits_page(place, size) => {
                mmio.write(place.gpa, size, value);
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    fn fits_page(&self, place: Place, size: u8) -> bool {
        (place.linear & (PAGE_SIZE - 1)) + u64::from(size) <= PAGE_SIZE
    }
}

#[derive(Clone, Copy)]
enum StringOp {
    Stos,
    Movs,
}

/// RCX, RSI and RDI as a string instruction of one address size sees them (SDM vol. 1
/// 3.3.7): 2 bytes use and update only the low 16 bits, 4 bytes the low 32 with the upper
/// half zeroed (as every 32-bit register write in 64-bit mode), 8 bytes all.
#[derive(Clone, Copy)]
pub(crate) struct StringRegs {
    pub address_size: u8,
}

impl StringRegs {
    pub fn get(self, regs: &Regs, index: usize) -> u64 {
        regs.gpr[index] & ops::size_mask(self.address_size)
    }

    pub fn set(self, regs: &mut Regs, index: usize, value: u64) {
        let mask = ops::size_mask(self.address_size);
        regs.gpr[index] = match self.address_size {
            2 => (regs.gpr[index] & !mask) | (value & mask),
            _ => value & mask,
        };
    }

    /// Advance RSI or RDI by one element of `size` bytes, backwards when RFLAGS.DF is set.
    pub fn step(self, regs: &mut Regs, index: usize, size: u8) {
        let delta = u64::from(size);
        let value = if regs.rflags & DF != 0 {
            self.get(regs, index).wrapping_sub(delta)
        } else {
            self.get(regs, index).wrapping_add(delta)
        };
        self.set(regs, index, value);
    }
}

/// The size in bytes of the instruction's memory operand, if it is 1, 2, 4 or 8. (iced's
/// own size tables need its `instr_info` feature, which the image does not build.)
fn memory_size(instruction: &Instruction) -> Option<u8> {
    match instruction.memory_size() {
        MemorySize::UInt8 | MemorySize::Int8 => Some(1),
        MemorySize::UInt16 | MemorySize::Int16 => Some(2),
        MemorySize::UInt32 | MemorySize::Int32 => Some(4),
        MemorySize::UInt64 | MemorySize::Int64 => Some(8),
        _ => None,
    }
}

/// A general register as [`Regs`] holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Gpr {
    /// Index into [`Regs::gpr`].
    index: usize,
    /// 1, 2, 4 or 8 bytes.
    size: u8,
    /// AH, CH, DH, BH: bits 15:8 of RAX, RCX, RDX, RBX.
    is_high_byte: bool,
}

// iced numbers its general registers in four runs of 16 in hardware order, except that the
// byte run is AL..BL, AH..BH, SPL..DIL, R8L..R15L (iced-x86 1.22 `Register`).
const _: () = assert!(Register::AL as u32 == 1 && Register::AH as u32 == 5);
const _: () = assert!(Register::SPL as u32 == 9 && Register::R15L as u32 == 20);
const _: () = assert!(Register::AX as u32 == 21 && Register::R15W as u32 == 36);
const _: () = assert!(Register::EAX as u32 == 37 && Register::R15D as u32 == 52);
const _: () = assert!(Register::RAX as u32 == 53 && Register::R15 as u32 == 68);

/// The general register `register` names, `None` for any other register (iced's own
/// register tables need its `instr_info` feature).
fn gpr(register: Register) -> Option<Gpr> {
    let number = register as u32;
    let (index, size, is_high_byte) = match number {
        1..=4 => (number - 1, 1, false),
        5..=8 => (number - 5, 1, true),
        9..=20 => (number - 5, 1, false),
        21..=36 => (number - 21, 2, false),
        37..=52 => (number - 37, 4, false),
        53..=68 => (number - 53, 8, false),
        _ => return None,
    };
    Some(Gpr { index: index as usize, size, is_high_byte })
}

/// The size of a general register, `None` for any other register.
fn register_size(register: Register) -> Option<u8> {
    gpr(register).map(|gpr| gpr.size)
}

/// A general register's value (0 for any other register; callers check with
/// [`register_size`] first).
fn read_register(regs: &Regs, register: Register) -> u64 {
    let Some(gpr) = gpr(register) else { return 0 };
    let full = regs.gpr[gpr.index];
    if gpr.is_high_byte {
        return (full >> 8) & 0xFF;
    }
    full & ops::size_mask(gpr.size)
}

/// Write a general register as the processor does (SDM vol. 1 3.4.1.1): 8- and 16-bit
/// writes keep the other bits, 32-bit writes zero the upper half.
fn write_register(regs: &mut Regs, register: Register, value: u64) {
    let Some(gpr) = gpr(register) else { return };
    let slot = &mut regs.gpr[gpr.index];
    *slot = match (gpr.size, gpr.is_high_byte) {
        (_, true) => (*slot & !0xFF00) | ((value & 0xFF) << 8),
        (1, false) => (*slot & !0xFF) | (value & 0xFF),
        (2, false) => (*slot & !0xFFFF) | (value & 0xFFFF),
        (4, false) => value & 0xFFFF_FFFF,
        _ => value,
    };
}

#[cfg(test)]
mod tests;
