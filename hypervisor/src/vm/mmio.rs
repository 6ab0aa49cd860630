//! Guest accesses to device pages: a nested page fault outside every memory slot is
//! routed here, and the instruction that made it is emulated (`emulate`) against the
//! device model.
//!
//! Routing ([`Device::at`]): the faulting vCPU's own xAPIC page at 0xFEE00000 (only while
//! its local APIC is in xAPIC mode) goes to its local APIC, the I/O APIC's page at
//! 0xFEC00000 to the I/O APIC; anything else ends the VM as before ("outside every memory
//! slot and device"). A fault while the vCPU was delivering an event (a stack push or an
//! IDT read that hit a device page: the instruction at RIP did not make it) ends the VM
//! too, as KVM reports it to its user as an internal error.
//!
//! The registers are 32 bits wide and 16-byte aligned; other access sizes, as KVM's models
//! take them ([`read`], [`write`]): a read of any size takes its bytes from the aligned
//! dwords it covers; a local APIC write reaches the register only as a 4-byte store at its
//! 16-byte-aligned offset (others are dropped; SDM vol. 3A 11.4.1 requires 32-bit
//! accesses); an I/O APIC write at a 4-byte-aligned offset writes its value zero-extended
//! (8 bytes: the low 4). An operand on another page that is neither RAM nor a device (the
//! far side of a MOVS) is open bus: reads return all ones, writes are dropped.
//!
//! Locking: the device lock (`Vm::devices`) is taken at the instruction's first device
//! access and held until the instruction is done, so a read-modify-write (`or [mem], imm`)
//! is atomic towards the other vCPUs; the page walks and the fetch before it run without
//! it. The vCPUs the accesses made an interrupt pending for are woken after it is dropped
//! ([`Vm::wake_vcpus`]).
//!
//! Outcomes ([`resolve`], as `emulate`'s module doc asks): done -> registers written back;
//! #PF and #GP -> injected; a guest that changed its code or tables since the exit -> the
//! instruction runs again; an instruction the emulator does not handle -> the VM ends
//! `crashed` with the instruction's bytes. Not #UD: the instruction is a valid one the
//! guest meant (an `xchg` or `fxsave` on the APIC page); a #UD would make the guest believe
//! its CPU lacks it and fail somewhere unrelated, while the crash reason names the gap in
//! the emulator for whoever runs the VM. Page tables, instruction or operand outside RAM
//! -> the VM ends `crashed`.

use super::exits::{ExitReason, Flow, VcpuContext};
use super::guest_ram::GuestRam;
use super::{Vm, VmState};
use crate::addr::Gpa;
use crate::backend::{Backend, BackendVcpu, GuestRegs};
use crate::devices::PortBus;
use crate::devices::irqchip::{Irqchip, VcpuMask};
use crate::emulate::{self, Emulated, EmulationError, Mmio, Regs};
use crate::mmu::Access;
use alloc::format;
use alloc::string::String;
use core::fmt::{self, Write};
use spin::{Mutex, MutexGuard};

/// Bytes in a device page; offsets within it address the registers.
const PAGE_BYTES: u64 = 0x1000;

/// The device a guest-physical address outside every slot reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Device {
    /// The accessing vCPU's own local APIC.
    Lapic,
    IoApic,
}

impl Device {
    /// The device at `gpa` for vCPU `vcpu`, if any.
    pub(crate) fn at(chip: &Irqchip, vcpu: u32, gpa: u64) -> Option<Self> {
        if chip.is_lapic_mmio(vcpu, gpa) {
            Some(Self::Lapic)
        } else if Irqchip::is_ioapic_mmio(gpa) {
            Some(Self::IoApic)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Lapic => "the local APIC",
            Self::IoApic => "the I/O APIC",
        }
    }
}

/// A `size`-byte read at `gpa` by vCPU `vcpu`: the device's aligned dwords, byte by byte;
/// all ones where no device is.
pub(crate) fn read(chip: &mut Irqchip, vcpu: u32, gpa: u64, size: u8, now_ns: u64) -> u64 {
    let Some(device) = Device::at(chip, vcpu, gpa) else { return emulate::ops::size_mask(size) };
    let offset = gpa % PAGE_BYTES;
    let end = (offset + u64::from(size)).min(PAGE_BYTES);
    let mut value = 0u64;
    let mut dword_at = offset & !3;
    while dword_at < end {
        let dword = match device {
            Device::Lapic => chip.lapic_mmio_read(vcpu, dword_at as u32, now_ns),
            Device::IoApic => chip.ioapic_mmio_read(dword_at),
        };
        for byte_at in dword_at.max(offset)..(dword_at + 4).min(end) {
            let byte = u64::from(dword.to_le_bytes()[(byte_at - dword_at) as usize]);
            value |= byte << (8 * (byte_at - offset));
        }
        dword_at += 4;
    }
    value
}

/// A `size`-byte write of `value` at `gpa` by vCPU `vcpu`, with the size rules of the
/// module doc. Returns the vCPUs to wake.
pub(crate) fn write(chip: &mut Irqchip, vcpu: u32, gpa: u64, size: u8, value: u64, now_ns: u64) -> VcpuMask {
    let offset = gpa % PAGE_BYTES;
    match Device::at(chip, vcpu, gpa) {
        Some(Device::Lapic) if size == 4 && offset.is_multiple_of(16) => {
            chip.lapic_mmio_write(vcpu, offset as u32, value as u32, now_ns)
        }
        Some(Device::IoApic) if offset.is_multiple_of(4) => {
            chip.ioapic_mmio_write(offset, (value & emulate::ops::size_mask(size.min(4))) as u32)
        }
        _ => VcpuMask::EMPTY,
    }
}

/// The emulator's device side for one instruction: takes the device lock at the first
/// access and keeps it until [`DeviceAccess::finish`].
struct DeviceAccess<'a> {
    devices: &'a Mutex<PortBus>,
    guard: Option<MutexGuard<'a, PortBus>>,
    vcpu: u32,
    now_ns: u64,
    woken: VcpuMask,
}

impl<'a> DeviceAccess<'a> {
    fn new(devices: &'a Mutex<PortBus>, vcpu: u32, now_ns: u64) -> Self {
        Self { devices, guard: None, vcpu, now_ns, woken: VcpuMask::EMPTY }
    }

    fn chip(&mut self) -> &mut Irqchip {
        let devices = self.devices;
        self.guard.get_or_insert_with(|| devices.lock()).irqchip_mut()
    }

    /// Drops the lock; the vCPUs to wake.
    fn finish(self) -> VcpuMask {
        self.woken
    }
}

impl Mmio for DeviceAccess<'_> {
    fn read(&mut self, gpa: u64, size: u8) -> u64 {
        let (vcpu, now_ns) = (self.vcpu, self.now_ns);
        read(self.chip(), vcpu, gpa, size, now_ns)
    }

    fn write(&mut self, gpa: u64, size: u8, value: u64) {
        let (vcpu, now_ns) = (self.vcpu, self.now_ns);
        let woken = write(self.chip(), vcpu, gpa, size, value, now_ns);
        self.woken = self.woken.union(woken);
    }
}

/// What the emulated instruction was doing, for crash reasons (formatted only then).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Operation {
    Mmio { device: Device, gpa: u64 },
    StringIo { port: u16 },
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Mmio { device, gpa } => write!(f, "accessing {} at {gpa:#x}", device.name()),
            Self::StringIo { port } => write!(f, "doing string I/O on port {port:#x}"),
        }
    }
}

/// What the VM does with an emulation's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Resolution {
    /// Done (or one REP iteration done): write the registers back and re-enter.
    Resume,
    InjectPageFault {
        error_code: u32,
        linear: u64,
    },
    InjectGeneralProtection,
    /// The guest changed its code or tables since the exit: re-enter unchanged.
    Retry,
    /// An instruction the emulator does not handle: end the VM with this reason.
    Unsupported(String),
    /// Anything else that ends the VM.
    Crash(String),
}

/// Maps an emulation's result to what the VM does.
pub(crate) fn resolve(result: Result<Emulated, EmulationError>, rip: u64, what: Operation) -> Resolution {
    match result {
        Ok(_) => Resolution::Resume,
        Err(EmulationError::PageFault { error_code, linear }) => {
            Resolution::InjectPageFault { error_code, linear }
        }
        Err(EmulationError::GeneralProtection) => Resolution::InjectGeneralProtection,
        Err(EmulationError::GpaMismatch { .. }) => Resolution::Retry,
        Err(EmulationError::Unsupported { bytes, len }) => Resolution::Unsupported(format!(
            "the instruction at rip {rip:#x} ({}) {what} cannot be emulated",
            hex_bytes(&bytes[..usize::from(len).min(bytes.len())])
        )),
        Err(EmulationError::NotRam { gpa }) => Resolution::Crash(format!(
            "emulating the instruction at rip {rip:#x} {what}: guest address {gpa:#x} (a page table, \
             the instruction or an operand) is not RAM"
        )),
    }
}

/// `bytes` as "0f ae 00", or "no bytes".
fn hex_bytes(bytes: &[u8]) -> String {
    let mut text = String::new();
    for (i, byte) in bytes.iter().enumerate() {
        let _ = write!(text, "{}{byte:02x}", if i == 0 { "" } else { " " });
    }
    if text.is_empty() {
        text.push_str("no bytes");
    }
    text
}

/// The emulator's registers from the vCPU's.
pub(crate) fn regs_of(vcpu: &impl BackendVcpu) -> Regs {
    let g = vcpu.regs();
    let gpr = [
        g.rax,
        g.rcx,
        g.rdx,
        g.rbx,
        vcpu.rsp(),
        g.rbp,
        g.rsi,
        g.rdi,
        g.r8,
        g.r9,
        g.r10,
        g.r11,
        g.r12,
        g.r13,
        g.r14,
        g.r15,
    ];
    Regs { gpr, rip: vcpu.rip(), rflags: vcpu.rflags() }
}

/// Copies the emulator's registers back into the vCPU (only what changed reaches the
/// VMCB/VMCS).
pub(crate) fn write_back(vcpu: &mut impl BackendVcpu, before: &Regs, after: &Regs) {
    if before == after {
        return;
    }
    let [rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8, r9, r10, r11, r12, r13, r14, r15] = after.gpr;
    *vcpu.regs_mut() = GuestRegs { rax, rbx, rcx, rdx, rsi, rdi, rbp, r8, r9, r10, r11, r12, r13, r14, r15 };
    if rsp != before.gpr[Regs::RSP] {
        vcpu.set_rsp(rsp);
    }
    if after.rip != before.rip {
        vcpu.set_rip(after.rip);
    }
    if after.rflags != before.rflags {
        vcpu.set_rflags(after.rflags);
    }
}

/// Carries out `resolution` on the vCPU after the registers were written back.
pub(crate) fn apply<B: Backend>(cx: &mut VcpuContext<'_, B>, resolution: Resolution) -> Flow {
    match resolution {
        Resolution::Resume | Resolution::Retry => Flow::Continue,
        Resolution::InjectPageFault { error_code, linear } => {
            cx.vcpu.inject_page_fault(error_code, linear);
            Flow::Continue
        }
        Resolution::InjectGeneralProtection => {
            cx.vcpu.inject_general_protection();
            Flow::Continue
        }
        Resolution::Unsupported(reason) => {
            cx.vm.exits.add(ExitReason::EmulationFailed);
            Flow::Finish(VmState::Crashed { reason })
        }
        Resolution::Crash(reason) => Flow::Finish(VmState::Crashed { reason }),
    }
}

/// A nested page fault at `gpa` outside every memory slot.
pub(crate) fn handle<B: Backend>(cx: &mut VcpuContext<'_, B>, gpa: Gpa, access: Access) -> Flow {
    let vm: &Vm<B> = cx.vm;
    let device = Device::at(vm.devices.lock().irqchip(), cx.index, gpa.raw());
    let Some(device) = device else {
        let reason =
            format!("{access:?} at guest address {:#x}, outside every memory slot and device", gpa.raw());
        return Flow::Finish(VmState::Crashed { reason });
    };
    let what = Operation::Mmio { device, gpa: gpa.raw() };
    if cx.vcpu.is_delivering_event() {
        let reason = format!("the delivery of an interrupt or exception on vcpu {} ended {what}", cx.index);
        return Flow::Finish(VmState::Crashed { reason });
    }
    let cpu = cx.vcpu.emulation_cpu();
    let before = regs_of(&*cx.vcpu);
    let mut regs = before;
    let mut ram = GuestRam::new(&vm.mmu, cx.as_id);
    let mut devices = DeviceAccess::new(&vm.devices, cx.index, (vm.clock)());
    let result = emulate::emulate_mmio(&cpu, &mut regs, gpa.raw(), &mut ram, &mut devices);
    super::entry::devices_accessed(vm, cx.index, devices.finish());
    if result.is_ok() {
        vm.exits.add(ExitReason::MmioEmulated);
    }
    write_back(cx.vcpu, &before, &regs);
    apply(cx, resolve(result, before.rip, what))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::lapic::LapicConfig;
    use crate::emulate::MAX_INSTRUCTION_LEN;

    const LAPIC: u64 = 0xFEE0_0000;
    const IOAPIC: u64 = 0xFEC0_0000;
    const CONFIG: LapicConfig =
        LapicConfig { bus_hz: 1_000_000_000, tsc_hz: 1_000_000_000, tsc_origin_ns: 0, has_x2apic: true };
    /// LAPIC registers: version, TPR, SVR (SDM vol. 3A Table 11-1).
    const VERSION: u64 = 0x30;
    const TPR: u64 = 0x80;
    const IOWIN: u64 = 0x10;

    fn chip() -> Irqchip {
        Irqchip::new(2, CONFIG)
    }

    #[test]
    fn each_vcpu_reaches_its_own_lapic_and_everyone_the_ioapic() {
        let chip = chip();
        assert_eq!(Device::at(&chip, 0, LAPIC + 0x20), Some(Device::Lapic));
        assert_eq!(Device::at(&chip, 1, LAPIC + 0xFFF), Some(Device::Lapic));
        assert_eq!(Device::at(&chip, 0, IOAPIC + 0x10), Some(Device::IoApic));
        assert_eq!(Device::at(&chip, 0, LAPIC + 0x1000), None);
        assert_eq!(Device::at(&chip, 0, 0xFED0_0000), None, "no HPET");
        let mut chip = chip;
        const IA32_APIC_BASE: u32 = 0x1B;
        let base = chip.msr_read(1, IA32_APIC_BASE, 0).unwrap();
        chip.msr_write(1, IA32_APIC_BASE, base | (1 << 10), 0).unwrap();
        assert_eq!(Device::at(&chip, 1, LAPIC + 0x20), None, "x2APIC mode: not the APIC's page");
        assert_eq!(Device::at(&chip, 0, LAPIC + 0x20), Some(Device::Lapic));
    }

    #[test]
    fn lapic_writes_reach_the_register_only_as_aligned_dwords() {
        let mut chip = chip();
        let _ = write(&mut chip, 0, LAPIC + TPR, 4, 0x20, 0);
        assert_eq!(read(&mut chip, 0, LAPIC + TPR, 4, 0), 0x20);
        for (at, size) in [(TPR, 1), (TPR, 2), (TPR, 8), (TPR + 4, 4), (TPR + 1, 4)] {
            let _ = write(&mut chip, 0, LAPIC + at, size, 0xFF, 0);
            assert_eq!(read(&mut chip, 0, LAPIC + TPR, 4, 0), 0x20, "{size} bytes at {at:#x} dropped");
        }
        assert_eq!(read(&mut chip, 1, LAPIC + TPR, 4, 0), 0, "vCPU 1's TPR is its own");
    }

    #[test]
    fn narrow_and_wide_reads_take_bytes_of_the_aligned_dwords() {
        let mut chip = chip();
        let version = read(&mut chip, 0, LAPIC + VERSION, 4, 0);
        assert_ne!(version, 0);
        assert_eq!(read(&mut chip, 0, LAPIC + VERSION, 1, 0), version & 0xFF);
        assert_eq!(read(&mut chip, 0, LAPIC + VERSION + 2, 2, 0), version >> 16);
        assert_eq!(read(&mut chip, 0, LAPIC + VERSION + 1, 2, 0), (version >> 8) & 0xFFFF);
        assert_eq!(read(&mut chip, 0, LAPIC + VERSION, 8, 0), version, "the upper dword is reserved: 0");
        assert_eq!(read(&mut chip, 0, 0xFED0_0000, 4, 0), 0xFFFF_FFFF, "open bus");
    }

    #[test]
    fn ioapic_takes_narrow_and_wide_writes_zero_extended() {
        let mut chip = chip();
        // IOREGSEL = 1 (version) with a byte store, then IOWIN.
        let _ = write(&mut chip, 0, IOAPIC, 1, 0x1FF01, 0);
        assert_eq!(read(&mut chip, 0, IOAPIC, 4, 0), 1);
        assert_eq!(read(&mut chip, 0, IOAPIC + IOWIN, 4, 0), 0x0017_0020, "version 0x20, 24 pins");
        let _ = write(&mut chip, 0, IOAPIC, 8, 0xFFFF_FFFF_0000_0000, 0);
        assert_eq!(read(&mut chip, 0, IOAPIC, 4, 0), 0, "ID selected: the low dword of the quadword");
        let _ = write(&mut chip, 0, IOAPIC + 1, 1, 1, 0);
        assert_eq!(read(&mut chip, 0, IOAPIC, 4, 0), 0, "unaligned: dropped");
    }

    fn unsupported(code: &[u8]) -> Result<Emulated, EmulationError> {
        let mut bytes = [0; MAX_INSTRUCTION_LEN];
        bytes[..code.len()].copy_from_slice(code);
        Err(EmulationError::Unsupported { bytes, len: code.len() as u8 })
    }

    #[test]
    fn every_emulation_error_has_its_outcome() {
        let what = Operation::Mmio { device: Device::Lapic, gpa: LAPIC + 0x30 };
        assert_eq!(resolve(Ok(Emulated::Completed), 0, what), Resolution::Resume);
        assert_eq!(resolve(Ok(Emulated::IterationDone), 0, what), Resolution::Resume);
        assert_eq!(
            resolve(Err(EmulationError::PageFault { error_code: 2, linear: 0x1000 }), 0, what),
            Resolution::InjectPageFault { error_code: 2, linear: 0x1000 }
        );
        assert_eq!(
            resolve(Err(EmulationError::GeneralProtection), 0, what),
            Resolution::InjectGeneralProtection
        );
        assert_eq!(
            resolve(Err(EmulationError::GpaMismatch { fault_gpa: LAPIC, operand_gpa: 0 }), 0, what),
            Resolution::Retry
        );
        assert_eq!(
            resolve(unsupported(&[0x87, 0x04, 0x25]), 0x1234, what),
            Resolution::Unsupported(
                "the instruction at rip 0x1234 (87 04 25) accessing the local APIC at 0xfee00030 cannot be \
                 emulated"
                    .into()
            )
        );
        let what = Operation::StringIo { port: 0x3F8 };
        let Resolution::Crash(reason) = resolve(Err(EmulationError::NotRam { gpa: 0xFED0_0000 }), 0, what)
        else {
            panic!("not RAM ends the VM");
        };
        assert!(reason.contains("0xfed00000") && reason.contains("not RAM"), "{reason}");
        assert!(reason.contains("doing string I/O on port 0x3f8"), "{reason}");
        assert_eq!(hex_bytes(&[]), "no bytes");
    }

    /// The emulator and the device models together: `or dword [rbx], imm` on the TPR reads
    /// and writes it once each, and the flags follow.
    #[test]
    fn read_modify_write_through_the_device_access_updates_the_register() {
        let devices = Mutex::new(PortBus::new(&crate::devices::PlatformConfig {
            vcpus: 1,
            ram_bytes: 1 << 20,
            unix_seconds: 0,
            now_ns: 0,
            lapic: CONFIG,
        }));
        let mut access = DeviceAccess::new(&devices, 0, 0);
        Mmio::write(&mut access, LAPIC + TPR, 4, 0x10);
        let old = Mmio::read(&mut access, LAPIC + TPR, 4);
        Mmio::write(&mut access, LAPIC + TPR, 4, old | 0x20);
        assert!(devices.try_lock().is_none(), "held until the instruction is done");
        assert_eq!(access.finish(), VcpuMask::EMPTY);
        assert_eq!(devices.lock().irqchip_mut().lapic_mmio_read(0, TPR as u32, 0), 0x30);
    }
}
