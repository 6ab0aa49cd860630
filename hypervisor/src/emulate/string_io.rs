//! String port I/O: INS and OUTS, with or without REP, moving 1, 2 or 4 bytes per element
//! between an I/O port and guest memory (SDM vol. 2 "INS", "OUTS", "REP").
//!
//! Unlike an MMIO access, a port I/O exit comes decoded: both backends report the port,
//! the element size, the direction, REP, the address size and (for OUTS) the segment
//! (VMX: exit qualification and VM-exit instruction information; SVM: EXITINFO1), and
//! the instruction length. The VM fills a [`StringIo`] from them and calls
//! [`emulate_string_io`], which walks the guest's paging for each element.
//!
//! REP runs up to [`MAX_ELEMENTS_PER_EXIT`] elements per call; if RCX is still not 0
//! then, RIP stays on the instruction ([`Emulated::IterationDone`]) and the guest's
//! re-execution exits again, so one exit never holds the host CPU for long and
//! interrupts are taken in between. A fault on an element (#PF, #GP) leaves the elements
//! before it done, with RCX, RSI and RDI saying so, as the hardware does; the VM injects
//! the fault and the guest's handler resumes the instruction where it stopped.
//!
//! Not modelled: the I/O permission bitmap and IOPL checks (the backends intercept every
//! port anyway), segment limits, INS into a page that is not RAM (an error, not a device
//! write).

use super::paging::{self, Access};
use super::{CodeSize, CpuState, Emulated, EmulationError, Regs, Segment, StringRegs};

/// The most elements one call moves before it lets the guest re-execute the rest.
pub const MAX_ELEMENTS_PER_EXIT: u64 = 1024;

/// The port side: the VM routes `port` to its device models. `size` is 1, 2 or 4; a read
/// returns the value in the low `size` bytes.
pub trait Ports {
    fn read(&mut self, port: u16, size: u8) -> u32;
    fn write(&mut self, port: u16, size: u8, value: u32);
}

/// Which way the data moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// INS: port to ES:rDI.
    In,
    /// OUTS: segment:rSI to port.
    Out,
}

/// One INS/OUTS exit, as the backend decoded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StringIo {
    pub port: u16,
    /// Element size: 1, 2 or 4 bytes (other values are treated as 4).
    pub size: u8,
    pub direction: Direction,
    pub is_rep: bool,
    /// Address size: 2, 4 or 8 bytes; picks CX/ECX/RCX, SI/ESI/RSI, DI/EDI/RDI.
    pub address_size: u8,
    /// The segment OUTS reads from (DS unless overridden); INS always writes through ES.
    pub segment: Segment,
    /// Length of the instruction, to step RIP past it once it completes.
    pub instruction_len: u8,
}

/// Run an INS or OUTS exit: move the elements, update RCX/RSI/RDI, step RIP when done.
pub fn emulate_string_io(
    cpu: &CpuState,
    regs: &mut Regs,
    io: &StringIo,
    mem: &mut impl paging::GuestMemory,
    ports: &mut impl Ports,
) -> Result<Emulated, EmulationError> {
    let size = match io.size {
        1 | 2 => io.size,
        _ => 4,
    };
    let counter = StringRegs { address_size: io.address_size };
    let mut count = if io.is_rep { counter.get(regs, Regs::RCX) } else { 1 };
    let mut moved = 0;
    while count != 0 && moved < MAX_ELEMENTS_PER_EXIT {
        move_element(cpu, regs, io, size, counter, mem, ports)?;
        count -= 1;
        moved += 1;
        if io.is_rep {
            counter.set(regs, Regs::RCX, count);
        }
    }
    if count != 0 {
        return Ok(Emulated::IterationDone);
    }
    regs.rip = super::advance_ip(regs.rip, usize::from(io.instruction_len), cpu.code_size);
    regs.rflags &= !super::ops::RF;
    Ok(Emulated::Completed)
}

/// The address size and the segment OUTS reads from, read from the INS/OUTS at CS:RIP:
/// for backends whose exit does not report them (SVM without decode assists, which QEMU
/// TCG is; VMX without IA32_VMX_BASIC[54]). Anything but INS/OUTS there (the guest changed
/// its code since the exit) is [`EmulationError::Unsupported`].
pub fn decode_operands(
    cpu: &CpuState,
    regs: &Regs,
    mem: &impl paging::GuestMemory,
) -> Result<(u8, Segment), EmulationError> {
    let fetched = super::fetch(cpu, regs, mem)?;
    let instruction = fetched.decode(cpu, regs.rip)?;
    use iced_x86::Mnemonic::{Insb, Insd, Insw, Outsb, Outsd, Outsw};
    let segment = match instruction.mnemonic() {
        Insb | Insw | Insd => Segment::Es,
        Outsb | Outsw | Outsd => Segment::from_iced(instruction.memory_segment()).unwrap_or(Segment::Ds),
        _ => return Err(fetched.unsupported(instruction.len())),
    };
    let address_size = cpu.code_size.address_size(super::has_address_size_prefix(&fetched, cpu.code_size));
    Ok((address_size, segment))
}

/// Move one element and step RSI or RDI. On a fault nothing moved and `regs` is unchanged.
fn move_element(
    cpu: &CpuState,
    regs: &mut Regs,
    io: &StringIo,
    size: u8,
    counter: StringRegs,
    mem: &mut impl paging::GuestMemory,
    ports: &mut impl Ports,
) -> Result<(), EmulationError> {
    let len = usize::from(size);
    match io.direction {
        Direction::Out => {
            let linear = cpu.linear(io.segment, counter.get(regs, Regs::RSI));
            let mut bytes = [0u8; 4];
            paging::read_linear(&cpu.control, mem, linear, &mut bytes[..len], Access::Read)?;
            ports.write(io.port, size, u32::from_le_bytes(bytes));
            counter.step(regs, Regs::RSI, size);
        }
        Direction::In => {
            let linear = cpu.linear(Segment::Es, counter.get(regs, Regs::RDI));
            // Both ends of the element must be writable before the port is read.
            let last = linear.wrapping_add(u64::from(size) - 1);
            let last = if cpu.code_size == CodeSize::Bits64 { last } else { last & 0xFFFF_FFFF };
            paging::translate(&cpu.control, mem, linear, Access::Write)?;
            paging::translate(&cpu.control, mem, last, Access::Write)?;
            let value = ports.read(io.port, size);
            paging::write_linear(&cpu.control, mem, linear, &value.to_le_bytes()[..len])?;
            counter.step(regs, Regs::RDI, size);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::ops::DF;
    use super::super::paging::{GuestMemory, PF_PRESENT, PF_WRITE, tests::FakeMemory};
    use super::super::tests::Harness;
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    const DATA: u64 = 0x2_0000;
    const COM1: u16 = 0x3F8;

    /// Records writes; reads answer 1, 2, 3, ... in turn.
    #[derive(Default)]
    struct FakePorts {
        writes: Vec<(u16, u8, u32)>,
        reads: u32,
    }

    impl Ports for FakePorts {
        fn read(&mut self, _port: u16, _size: u8) -> u32 {
            self.reads += 1;
            self.reads
        }

        fn write(&mut self, port: u16, size: u8, value: u32) {
            self.writes.push((port, size, value));
        }
    }

    fn io(direction: Direction, size: u8) -> StringIo {
        StringIo {
            port: COM1,
            size,
            direction,
            is_rep: true,
            address_size: 8,
            segment: Segment::Ds,
            instruction_len: 2,
        }
    }

    fn run(h: &mut Harness, io: &StringIo, ports: &mut FakePorts) -> Result<Emulated, EmulationError> {
        emulate_string_io(&h.cpu, &mut h.regs, io, &mut h.mem, ports)
    }

    fn bytes(mem: &FakeMemory, at: u64, len: usize) -> &[u8] {
        &mem.bytes[at as usize..at as usize + len]
    }

    #[test]
    fn rep_outsb_forward_sends_bytes_in_order() {
        // rep outsb %ds:(%rsi),(%dx)
        let mut h = Harness::long64(&[0xF3, 0x6E]);
        h.mem.write(DATA, b"hello").unwrap();
        h.regs.gpr[Regs::RSI] = DATA;
        h.regs.gpr[Regs::RCX] = 5;
        let mut ports = FakePorts::default();
        assert_eq!(run(&mut h, &io(Direction::Out, 1), &mut ports), Ok(Emulated::Completed));
        let sent: Vec<u8> = ports.writes.iter().map(|&(_, _, value)| value as u8).collect();
        assert_eq!(sent, b"hello");
        assert!(ports.writes.iter().all(|&(port, size, _)| port == COM1 && size == 1));
        assert_eq!((h.regs.gpr[Regs::RSI], h.regs.gpr[Regs::RCX]), (DATA + 5, 0));
        assert_eq!(h.regs.rip, 0x1_0002);
    }

    #[test]
    fn rep_outsb_backward_with_df() {
        let mut h = Harness::long64(&[0xF3, 0x6E]);
        h.mem.write(DATA, b"hello").unwrap();
        h.regs.rflags |= DF;
        h.regs.gpr[Regs::RSI] = DATA + 4;
        h.regs.gpr[Regs::RCX] = 5;
        let mut ports = FakePorts::default();
        assert_eq!(run(&mut h, &io(Direction::Out, 1), &mut ports), Ok(Emulated::Completed));
        let sent: Vec<u8> = ports.writes.iter().map(|&(_, _, value)| value as u8).collect();
        assert_eq!(sent, b"olleh");
        assert_eq!(h.regs.gpr[Regs::RSI], DATA - 1);
    }

    #[test]
    fn rep_insb_forward_and_backward() {
        // rep insb (%dx),%es:(%rdi)
        let mut h = Harness::long64(&[0xF3, 0x6C]);
        h.regs.gpr[Regs::RDI] = DATA;
        h.regs.gpr[Regs::RCX] = 3;
        let mut ports = FakePorts::default();
        assert_eq!(run(&mut h, &io(Direction::In, 1), &mut ports), Ok(Emulated::Completed));
        assert_eq!(bytes(&h.mem, DATA, 3), &[1, 2, 3]);
        assert_eq!((h.regs.gpr[Regs::RDI], h.regs.gpr[Regs::RCX]), (DATA + 3, 0));

        let mut h = Harness::long64(&[0xF3, 0x6C]);
        h.regs.rflags |= DF;
        h.regs.gpr[Regs::RDI] = DATA + 2;
        h.regs.gpr[Regs::RCX] = 3;
        let mut ports = FakePorts::default();
        assert_eq!(run(&mut h, &io(Direction::In, 1), &mut ports), Ok(Emulated::Completed));
        assert_eq!(bytes(&h.mem, DATA, 3), &[3, 2, 1]);
        assert_eq!(h.regs.gpr[Regs::RDI], DATA - 1);
    }

    #[test]
    fn word_and_dword_elements_without_rep() {
        // outsw: one element, RCX untouched.
        let mut h = Harness::long64(&[0x66, 0x6F]);
        h.mem.write(DATA, &[0x34, 0x12]).unwrap();
        h.regs.gpr[Regs::RSI] = DATA;
        h.regs.gpr[Regs::RCX] = 9;
        let mut ports = FakePorts::default();
        let outsw = StringIo { is_rep: false, ..io(Direction::Out, 2) };
        assert_eq!(run(&mut h, &outsw, &mut ports), Ok(Emulated::Completed));
        assert_eq!(ports.writes, vec![(COM1, 2, 0x1234)]);
        assert_eq!((h.regs.gpr[Regs::RSI], h.regs.gpr[Regs::RCX]), (DATA + 2, 9));
        // insl
        let insl = StringIo { is_rep: false, instruction_len: 1, ..io(Direction::In, 4) };
        h.regs.gpr[Regs::RDI] = DATA + 0x10;
        assert_eq!(run(&mut h, &insl, &mut ports), Ok(Emulated::Completed));
        assert_eq!(bytes(&h.mem, DATA + 0x10, 4), &[1, 0, 0, 0]);
        assert_eq!(h.regs.gpr[Regs::RDI], DATA + 0x14);
    }

    #[test]
    fn real_mode_16bit_addresses_wrap_and_keep_upper_bits() {
        // rep outsb with DS = 0x2000 and SI wrapping from 0xFFFF to 0.
        let mut h = Harness::real16(0x2000, &[0xF3, 0x6E]);
        h.mem.write(0x2_FFFF, &[0xAA]).unwrap();
        h.mem.write(0x2_0000, &[0xBB]).unwrap();
        h.regs.gpr[Regs::RSI] = 0xFFFF;
        h.regs.gpr[Regs::RCX] = 0xABCD_0002;
        let mut ports = FakePorts::default();
        let outsb = StringIo { address_size: 2, ..io(Direction::Out, 1) };
        assert_eq!(run(&mut h, &outsb, &mut ports), Ok(Emulated::Completed));
        assert_eq!(ports.writes, vec![(COM1, 1, 0xAA), (COM1, 1, 0xBB)]);
        assert_eq!((h.regs.gpr[Regs::RSI], h.regs.gpr[Regs::RCX]), (1, 0xABCD_0000));
        assert_eq!(h.regs.rip, 0x102);
    }

    #[test]
    fn page_fault_keeps_the_elements_already_moved() {
        // rep insl into DATA + 0x0FF8: the third element lands on a read-only page.
        let mut h = Harness::long64(&[0xF3, 0x6D]);
        h.map_4k(DATA + 0x1000, DATA + 0x1000, 0b101);
        h.regs.gpr[Regs::RDI] = DATA + 0xFF8;
        h.regs.gpr[Regs::RCX] = 4;
        let mut ports = FakePorts::default();
        assert_eq!(
            run(&mut h, &io(Direction::In, 4), &mut ports),
            Err(EmulationError::PageFault { error_code: PF_PRESENT | PF_WRITE, linear: DATA + 0x1000 })
        );
        assert_eq!(ports.reads, 2);
        assert_eq!((h.regs.gpr[Regs::RDI], h.regs.gpr[Regs::RCX]), (DATA + 0x1000, 2));
        assert_eq!(h.regs.rip, 0x1_0000);
    }

    #[test]
    fn zero_count_only_steps_rip_and_long_strings_yield() {
        let mut h = Harness::long64(&[0xF3, 0x6E]);
        let mut ports = FakePorts::default();
        assert_eq!(run(&mut h, &io(Direction::Out, 1), &mut ports), Ok(Emulated::Completed));
        assert!(ports.writes.is_empty());
        assert_eq!(h.regs.rip, 0x1_0002);

        let mut h = Harness::long64(&[0xF3, 0x6C]);
        h.regs.gpr[Regs::RDI] = DATA;
        h.regs.gpr[Regs::RCX] = MAX_ELEMENTS_PER_EXIT + 3;
        assert_eq!(run(&mut h, &io(Direction::In, 1), &mut ports), Ok(Emulated::IterationDone));
        assert_eq!(h.regs.gpr[Regs::RCX], 3);
        assert_eq!(h.regs.rip, 0x1_0000);
        assert_eq!(run(&mut h, &io(Direction::In, 1), &mut ports), Ok(Emulated::Completed));
        assert_eq!(h.regs.gpr[Regs::RDI], DATA + MAX_ELEMENTS_PER_EXIT + 3);
    }

    #[test]
    fn operands_come_from_the_prefixes_when_the_exit_lacks_them() {
        // rep outsb %fs:(%rsi),(%dx): FS override, 64-bit addresses.
        let h = Harness::long64(&[0x64, 0xF3, 0x6E]);
        assert_eq!(decode_operands(&h.cpu, &h.regs, &h.mem), Ok((8, Segment::Fs)));
        // addr32 rep insw (%dx),%es:(%edi)
        let h = Harness::long64(&[0x67, 0xF3, 0x66, 0x6D]);
        assert_eq!(decode_operands(&h.cpu, &h.regs, &h.mem), Ok((4, Segment::Es)));
        // Real mode: outsb, DS and 16-bit addresses; with 0x67, 32-bit ones.
        let h = Harness::real16(0x1000, &[0x6E]);
        assert_eq!(decode_operands(&h.cpu, &h.regs, &h.mem), Ok((2, Segment::Ds)));
        let h = Harness::real16(0x1000, &[0x67, 0x26, 0x6E]);
        assert_eq!(decode_operands(&h.cpu, &h.regs, &h.mem), Ok((4, Segment::Es)));
        // Not a string I/O instruction any more: nothing to emulate.
        let h = Harness::long64(&[0x90]);
        assert!(matches!(
            decode_operands(&h.cpu, &h.regs, &h.mem),
            Err(EmulationError::Unsupported { len: 1, .. })
        ));
    }

    #[test]
    fn random_exits_never_panic() {
        let mut rng = super::super::tests::Rng(0x0DDB_A115_EED0);
        let mut ports = FakePorts::default();
        for round in 0..2_000u32 {
            let mut h =
                if round.is_multiple_of(2) { Harness::long64(&[]) } else { Harness::real16(0x1000, &[]) };
            for gpr in &mut h.regs.gpr {
                *gpr = if rng.next().is_multiple_of(2) { rng.next() } else { rng.next() & 0x1F_FFFF };
            }
            h.regs.gpr[Regs::RCX] &= 0x3FF;
            h.regs.rflags = 0x2 | (rng.next() & DF);
            let io = StringIo {
                port: rng.next() as u16,
                size: rng.next() as u8,
                direction: if rng.next().is_multiple_of(2) { Direction::In } else { Direction::Out },
                is_rep: rng.next().is_multiple_of(2),
                address_size: [2, 4, 8][(rng.next() % 3) as usize],
                segment: Segment::Ds,
                instruction_len: rng.next() as u8,
            };
            let _ = run(&mut h, &io, &mut ports);
        }
    }
}
