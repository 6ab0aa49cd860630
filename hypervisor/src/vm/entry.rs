//! The entry path: what the vCPU loop asks the VM's interrupt controllers before each
//! entry, and what a HLT does.
//!
//! Before each entry ([`prepare`]): timers whose deadline has passed fire
//! (`PortBus::tick`: the LAPIC timers, and the platform's on vCPU 0), and the next
//! deadline goes to the host CPU (`Backend::set_host_deadline`: its timer interrupts the
//! running guest then, the exit comes back here and the expiry is injected); the irqchip picks at most one event for what the guest can take now
//! (`Irqchip::entry_events` with the backend's `openings`), which the backend injects
//! through its `EventQueue`; and the backend asks for an interrupt or NMI window exit for
//! whatever stays pending. The lock is the VM's device lock, taken once per entry; the
//! vCPUs an access made an interrupt pending for are woken or kicked after it is dropped
//! (`Vm::wake_vcpus`).
//!
//! HLT ([`halt`]): the vCPU stays in the guest's sense halted until the irqchip says an
//! event wakes it (`Irqchip::wakes_from_halt`: an interrupt the guest would take with its
//! RFLAGS.IF, an NMI, INIT, SIPI). Until then its runner leaves the CPU
//! (`Slice::Blocked`) until its next timer deadline or a wake (`vm::park`).

use super::Vm;
use super::exits::VcpuContext;
use crate::backend::events::Windows;
use crate::backend::{Backend, BackendVcpu};
use crate::devices::PortBus;
use crate::devices::irqchip::{EntryEvents, VcpuMask};

/// Fires the timer expiries due at `now_ns` if `vcpu`'s are due (the other vCPUs' fire on
/// their own entries or halts; their wakes go into the returned mask), and says `vcpu`'s
/// next deadline after that. The one place the VM ticks its devices' clocks.
fn tick_timers(devices: &mut PortBus, vcpu: u32, now_ns: &dyn Fn() -> u64) -> (VcpuMask, Option<u64>) {
    let Some(deadline) = next_deadline(devices, vcpu) else { return (VcpuMask::EMPTY, None) };
    let now = now_ns();
    if deadline > now {
        return (VcpuMask::EMPTY, Some(deadline));
    }
    let wake = devices.tick(now);
    (wake, next_deadline(devices, vcpu))
}

/// The earliest host time at which the VM's timers have something for `vcpu`: its LAPIC
/// timer and, for vCPU 0, the platform's (PIT, RTC, PM timer: `PortBus::next_deadline`).
fn next_deadline(devices: &PortBus, vcpu: u32) -> Option<u64> {
    devices.next_deadline(vcpu)
}

/// The vCPUs of `mask` other than `vcpu` (which is running here and needs no wake).
pub(crate) fn others(mask: VcpuMask, vcpu: u32) -> VcpuMask {
    if mask.is_empty() {
        // The common case, on every entry: no walk over the mask's bits.
        return mask;
    }
    let mut rest = VcpuMask::EMPTY;
    for v in mask.iter().filter(|&v| v != vcpu) {
        rest.insert(v);
    }
    rest
}

/// What [`prepare`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Prepared {
    /// Enter the guest, with the host CPU interrupted by `host_deadline` at the latest:
    /// the vCPU's next timer deadline, so its timer fires on time while the guest runs.
    Enter { host_deadline: Option<u64> },
    /// An INIT arrived (taken, the LAPIC reset): do not enter; the vCPU goes to its INIT
    /// state.
    Init,
}

/// Just before an entry: fire due timers, take an INIT (a start-up IPI to a running vCPU
/// is discarded, SDM Vol. 3A §9.4.4), inject what the guest can take, ask for the windows
/// the rest needs.
pub(crate) fn prepare<B: Backend>(cx: &mut VcpuContext<'_, B>) -> Prepared {
    let (events, wake, host_deadline) = {
        let mut devices = cx.vm.devices.lock();
        let (wake, next) = tick_timers(&mut devices, cx.index, &cx.vm.clock);
        // A deadline that has passed already (a PIT edge still pending) is delivered by
        // this entry or its interrupt window: asking the host timer for it would only
        // interrupt the guest again at once, at every entry until the guest takes it.
        let host_deadline = next.filter(|&deadline| deadline > (cx.vm.clock)());
        let chip = devices.irqchip_mut();
        if chip.take_init(cx.index) {
            drop(devices);
            cx.vm.wake_vcpus(others(wake, cx.index));
            return Prepared::Init;
        }
        let _ = chip.take_sipi(cx.index);
        // Anything pending at all (what would wake a halted vCPU with IF set)? Only then
        // is the guest's state read (the common entry has nothing to deliver).
        let events = if chip.wakes_from_halt(cx.index, true) {
            chip.entry_events(cx.index, cx.vcpu.openings())
        } else {
            EntryEvents::default()
        };
        (events, wake, host_deadline)
    };
    if let Some(injection) = events.inject {
        cx.vm.interrupt_counts.injected(injection);
        cx.vcpu.inject(injection);
    }
    cx.vcpu.set_windows(Windows { interrupt: events.interrupt_window, nmi: events.nmi_window });
    cx.vm.wake_vcpus(others(wake, cx.index));
    Prepared::Enter { host_deadline }
}

/// An AP waiting for a start-up IPI looks whether one came: `Some(vector)`, it starts
/// there; `None`, it blocks until woken (an INIT meanwhile resets its LAPIC and it keeps
/// waiting). The sleeper's side of `vm::park`'s protocol, as [`halt`].
pub(crate) fn wait_for_sipi<B: Backend>(vm: &Vm<B>, index: u32) -> Option<u8> {
    vm.park(index).going_to_sleep();
    let mut devices = vm.devices.lock();
    let chip = devices.irqchip_mut();
    let _ = chip.take_init(index);
    chip.take_sipi(index)
}

/// A halted vCPU (HLT done, RIP past it) looks whether it wakes: `None` if it runs on,
/// else `Some(until)`: it blocks until that host time (its next timer deadline, if any)
/// or a wake. Follows the sleeper's side of `vm::park`'s protocol.
pub(crate) fn halt<B: Backend>(vm: &Vm<B>, index: u32, vcpu: &B::Vcpu) -> Option<Option<u64>> {
    vm.park(index).going_to_sleep();
    let (awake, until, wake) = {
        let mut devices = vm.devices.lock();
        let (wake, until) = tick_timers(&mut devices, index, &vm.clock);
        let awake = devices.irqchip().wakes_from_halt(index, vcpu.interrupts_enabled());
        (awake, until, wake)
    };
    vm.wake_vcpus(others(wake, index));
    (!awake).then_some(until)
}
