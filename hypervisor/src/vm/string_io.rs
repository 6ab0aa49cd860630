//! INS and OUTS exits: the elements move between guest memory (through the guest's paging)
//! and the same port bus IN and OUT reach (`emulate::string_io`).
//!
//! The backend reports the port, size, direction and REP; where it cannot report the
//! address size or OUTS's segment (`backend::StringIoExit`), they are read from the
//! instruction at RIP. The device lock is taken for each element's port access only. A
//! REP runs at most `MAX_ELEMENTS_PER_EXIT` elements per exit and then lets the guest
//! re-execute the rest, so the loop sees stops, pauses and host interrupts in between.
//!
//! A port access with an effect (the exit port, ACPI power-off, a reset) is the last one
//! the instruction makes: later elements read all ones and write nothing, and the effect
//! is carried out as for OUT once the registers are written back. A fault on an element
//! (#PF, #GP) leaves the elements before it done, as the CPU does; the rest of the
//! outcomes are those of an MMIO emulation (`mmio::resolve`).

use super::exits::{self, Flow, VcpuContext};
use super::guest_ram::GuestRam;
use super::mmio::{self, Operation, Resolution};
use crate::backend::{Backend, BackendVcpu, IoExit};
use crate::devices::irqchip::VcpuMask;
use crate::devices::{IoEffect, PortBus};
use crate::emulate::Segment;
use crate::emulate::string_io::{self, Direction, Ports, StringIo};
use spin::Mutex;
use taproot_guest_abi::port::COM1_BASE;

/// The port side of one INS/OUTS: the VM's port bus, locked per access.
struct BusPorts<'a> {
    devices: &'a Mutex<PortBus>,
    now_ns: u64,
    /// The first access with an effect, and its port.
    effect: Option<(u16, IoEffect)>,
    wrote_console: bool,
    /// The vCPUs the accesses made an interrupt pending for (woken after the last one).
    wake: VcpuMask,
}

impl Ports for BusPorts<'_> {
    fn read(&mut self, port: u16, size: u8) -> u32 {
        if self.effect.is_some() {
            return u32::MAX;
        }
        let result = self.devices.lock().read(port, size, self.now_ns);
        self.effect = result.effect.map(|effect| (port, effect));
        self.wake = self.wake.union(result.wake);
        result.value
    }

    fn write(&mut self, port: u16, size: u8, value: u32) {
        if self.effect.is_some() {
            return;
        }
        let result = self.devices.lock().write(port, size, value, self.now_ns);
        self.effect = result.effect.map(|effect| (port, effect));
        self.wake = self.wake.union(result.wake);
        self.wrote_console |= port == COM1_BASE;
    }
}

/// An INS or OUTS exit.
pub(crate) fn handle<B: Backend>(cx: &mut VcpuContext<'_, B>, io: IoExit) -> Flow {
    let cpu = cx.vcpu.emulation_cpu();
    let before = mmio::regs_of(&*cx.vcpu);
    let mut regs = before;
    let mut ram = GuestRam::new(&cx.vm.mmu, cx.as_id);
    let what = Operation::StringIo { port: io.port };
    let direction = if io.is_in { Direction::In } else { Direction::Out };
    let (address_size, segment) = match (io.string.address_size, io.string.segment, direction) {
        (Some(size), Some(segment), _) => (size, segment),
        (Some(size), None, Direction::In) => (size, Segment::Es),
        _ => match string_io::decode_operands(&cpu, &regs, &ram) {
            Ok(operands) => operands,
            Err(error) => return mmio::apply(cx, mmio::resolve(Err(error), before.rip, what)),
        },
    };
    let string = StringIo {
        port: io.port,
        size: io.size,
        direction,
        is_rep: io.string.is_rep,
        address_size,
        segment,
        instruction_len: io.next_rip.wrapping_sub(before.rip) as u8,
    };
    let mut ports = BusPorts {
        devices: &cx.vm.devices,
        now_ns: (cx.vm.clock)(),
        effect: None,
        wrote_console: false,
        wake: VcpuMask::EMPTY,
    };
    let result = string_io::emulate_string_io(&cpu, &mut regs, &string, &mut ram, &mut ports);
    // Also after a fault: the elements before it are done (RCX, RSI, RDI say so).
    mmio::write_back(cx.vcpu, &before, &regs);
    if ports.wrote_console {
        cx.vm.console_written();
    }
    super::entry::ports_accessed(cx.vm, cx.index, ports.wake);
    match mmio::resolve(result, before.rip, what) {
        Resolution::Resume => match ports.effect {
            Some((port, effect)) => exits::port_outcome(cx, port, Some(effect)),
            None => Flow::Continue,
        },
        other => mmio::apply(cx, other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::PlatformConfig;
    use crate::devices::lapic::LapicConfig;
    use taproot_guest_abi::port::DEBUG_EXIT as EXIT;

    fn bus() -> Mutex<PortBus> {
        Mutex::new(PortBus::new(&PlatformConfig {
            vcpus: 1,
            ram_bytes: 1 << 20,
            unix_seconds: 0,
            now_ns: 0,
            lapic: LapicConfig { bus_hz: 1, tsc_hz: 1, tsc_origin_ns: 0, has_x2apic: false },
        }))
    }

    #[test]
    fn rep_outsb_to_com1_reaches_the_console_in_order() {
        let devices = bus();
        let mut ports = BusPorts {
            devices: &devices,
            now_ns: 0,
            effect: None,
            wrote_console: false,
            wake: VcpuMask::EMPTY,
        };
        for &byte in b"hi\n" {
            ports.write(COM1_BASE, 1, u32::from(byte));
        }
        assert!(ports.wrote_console);
        assert_eq!(devices.lock().next_console_line().as_deref(), Some("hi"));
    }

    #[test]
    fn an_effect_ends_the_string_at_that_element() {
        let devices = bus();
        let mut ports = BusPorts {
            devices: &devices,
            now_ns: 0,
            effect: None,
            wrote_console: false,
            wake: VcpuMask::EMPTY,
        };
        ports.write(EXIT, 4, 7);
        ports.write(COM1_BASE, 1, u32::from(b'x'));
        assert_eq!(ports.read(COM1_BASE, 1), u32::MAX);
        assert_eq!(ports.effect, Some((EXIT, IoEffect::Exit(7))));
        assert!(!ports.wrote_console, "nothing after the exit port");
    }
}
