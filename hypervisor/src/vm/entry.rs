//! The entry path: what the vCPU loop asks the VM's interrupt controllers before each
//! entry, and what a HLT does.
//!
//! Before each entry ([`prepare`]): the common entry (nothing pending, no window wanted,
//! no timer due) takes no lock: the vCPU's attention flag is clear and its cached timer
//! deadline has not passed (`vm::park`, "The entry's attention", has the protocol and why
//! no event is missed). Otherwise it looks under the VM's device lock ([`look`]): timers
//! whose deadline has passed fire (`PortBus::tick`: the LAPIC timers, and the platform's on
//! vCPU 0), and the next deadline goes to the host CPU (`Backend::set_host_deadline`: its
//! timer interrupts the running guest then, the exit comes back here and the expiry is
//! injected); the irqchip picks at most one event for what the guest can take now
//! (`Irqchip::entry_events` with the backend's `openings`), which the backend injects
//! through its `EventQueue`; and the backend asks for an interrupt or NMI window exit for
//! whatever stays pending, which keeps the attention set. The vCPUs an access made an
//! interrupt pending for are woken or kicked after the lock is dropped (`Vm::wake_vcpus`,
//! which also calls their attention); a vCPU's own accesses to the devices call its own
//! ([`devices_accessed`], [`ports_accessed`]).
//!
//! HLT ([`halt`]): the vCPU stays in the guest's sense halted until the irqchip says an
//! event wakes it (`Irqchip::wakes_from_halt`: an interrupt the guest would take with its
//! RFLAGS.IF, an NMI, INIT, SIPI). Until then its runner leaves the CPU
//! (`Slice::Blocked`) until its next timer deadline or a wake (`vm::park`).

use super::Vm;
use super::exits::VcpuContext;
use super::park::VcpuPark;
use crate::backend::events::Windows;
use crate::backend::{Backend, BackendVcpu};
use crate::devices::PortBus;
use crate::devices::irqchip::{EntryEvents, Openings, VcpuMask};

/// Fires the timer expiries due at `now_ns` if `vcpu`'s are due (the other vCPUs' fire on
/// their own entries or halts; their wakes go into the returned mask), and caches `vcpu`'s
/// next deadline in its park. The one place the VM ticks its devices' clocks.
fn tick_timers(devices: &mut PortBus, park: &VcpuPark, vcpu: u32, now_ns: fn() -> u64) -> VcpuMask {
    let Some(deadline) = devices.next_deadline(vcpu) else {
        park.set_deadline(None);
        return VcpuMask::EMPTY;
    };
    let now = now_ns();
    if deadline > now {
        park.set_deadline(Some(deadline));
        return VcpuMask::EMPTY;
    }
    let wake = devices.tick(now);
    park.set_deadline(devices.next_deadline(vcpu));
    wake
}

/// The vCPUs of `mask` other than `vcpu` (which is running here and needs no wake).
pub(crate) fn others(mask: VcpuMask, vcpu: u32) -> VcpuMask {
    if mask.is_empty() {
        // The common case: no walk over the mask's bits.
        return mask;
    }
    let mut rest = VcpuMask::EMPTY;
    for v in mask.iter().filter(|&v| v != vcpu) {
        rest.insert(v);
    }
    rest
}

/// After vCPU `vcpu`'s own access to its LAPIC or the I/O APIC (MSR, xAPIC or I/O APIC
/// page): its next entry looks (a TPR or EOI write may unmask a pending vector, a
/// self-IPI or a timer write names no other vCPU), and the others in `wake` are woken.
pub(crate) fn devices_accessed<B: Backend>(vm: &Vm<B>, vcpu: u32, wake: VcpuMask) {
    vm.park(vcpu).call_attention();
    vm.wake_vcpus(others(wake, vcpu));
}

/// After vCPU `vcpu`'s port accesses: as [`devices_accessed`], and vCPU 0 looks too (the
/// platform's timers run on its deadline, and a port write may have moved them earlier).
pub(crate) fn ports_accessed<B: Backend>(vm: &Vm<B>, vcpu: u32, wake: VcpuMask) {
    vm.park(0).call_attention();
    devices_accessed(vm, vcpu, wake);
}

/// What [`prepare`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Prepared {
    /// Enter the guest, with the host CPU interrupted by `host_deadline` at the latest:
    /// the vCPU's next timer deadline, so its timer fires on time while the guest runs
    /// (`Backend::set_host_deadline`).
    Enter { host_deadline: Option<u64> },
    /// An INIT arrived (taken, the LAPIC reset): do not enter; the vCPU goes to its INIT
    /// state.
    Init,
}

/// What one look under the lock found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Look {
    /// An INIT was taken (the LAPIC reset).
    init: bool,
    events: EntryEvents,
    /// The vCPUs a timer expiry made an interrupt pending for (`vcpu` included).
    wake: VcpuMask,
}

/// The entry's look under the device lock, for `vcpu` whose attention was taken (or whose
/// deadline passed): fire due timers, take an INIT (a start-up IPI to a running vCPU is
/// discarded, SDM Vol. 3A §9.4.4), pick the event to inject (`openings` is read only when
/// something is pending). Calls the attention again while something stays pending (a
/// window, or more after the injected event): the next entry looks too.
fn look(
    devices: &mut PortBus,
    park: &VcpuPark,
    vcpu: u32,
    openings: impl FnOnce() -> Openings,
    now_ns: fn() -> u64,
) -> Look {
    let wake = tick_timers(devices, park, vcpu, now_ns);
    let chip = devices.irqchip_mut();
    if chip.take_init(vcpu) {
        // The vCPU restarts or waits for a SIPI; whatever comes next looks afresh.
        park.call_attention();
        return Look { init: true, events: EntryEvents::default(), wake };
    }
    let _ = chip.take_sipi(vcpu);
    // Anything pending at all (what would wake a halted vCPU with IF set)? Only then is
    // the guest's state read.
    if !chip.wakes_from_halt(vcpu, true) {
        return Look { init: false, events: EntryEvents::default(), wake };
    }
    let events = chip.entry_events(vcpu, openings());
    if events.interrupt_window || events.nmi_window || chip.wakes_from_halt(vcpu, true) {
        park.call_attention();
    }
    Look { init: false, events, wake }
}

/// Whether the entry must look under the lock: its attention was called or its timer
/// deadline passed. The clear comes before the look (`vm::park`, "The entry's attention").
fn must_look(park: &VcpuPark, now_ns: fn() -> u64) -> bool {
    // Both evaluated: a taken attention must lead to a look, not be lost to `||`.
    let attention = park.take_attention();
    attention || park.deadline_due(now_ns)
}

/// Just before an entry: nothing to do unless the vCPU's attention is called or its timer
/// deadline passed; then [`look`], inject what it picked, ask for the windows the rest needs.
pub(crate) fn prepare<B: Backend>(cx: &mut VcpuContext<'_, B>) -> Prepared {
    let park = cx.vm.park(cx.index);
    if !must_look(park, cx.vm.clock) {
        // The cached deadline has not passed (or there is none): the host timer's.
        return Prepared::Enter { host_deadline: park.deadline() };
    }
    let vcpu = &*cx.vcpu;
    let look = look(&mut cx.vm.devices.lock(), park, cx.index, || vcpu.openings(), cx.vm.clock);
    cx.vm.wake_vcpus(others(look.wake, cx.index));
    if look.init {
        return Prepared::Init;
    }
    if let Some(injection) = look.events.inject {
        cx.vm.interrupt_counts.injected(injection);
        cx.vcpu.inject(injection);
    }
    cx.vcpu.set_windows(Windows { interrupt: look.events.interrupt_window, nmi: look.events.nmi_window });
    // A deadline that has passed already (a PIT edge still pending) is delivered by this
    // entry or its interrupt window: asking the host timer for it would only interrupt the
    // guest again at once, at every entry until the guest takes it.
    let now = (cx.vm.clock)();
    Prepared::Enter { host_deadline: park.deadline().filter(|&deadline| deadline > now) }
}

/// An AP waiting for a start-up IPI looks whether one came: `Some(vector)`, it starts
/// there; `None`, it blocks until woken (an INIT meanwhile resets its LAPIC and it keeps
/// waiting). The sleeper's side of `vm::park`'s protocol, as [`halt`].
pub(crate) fn wait_for_sipi<B: Backend>(vm: &Vm<B>, index: u32) -> Option<u8> {
    let park = vm.park(index);
    park.going_to_sleep();
    let mut devices = vm.devices.lock();
    let chip = devices.irqchip_mut();
    let _ = chip.take_init(index);
    let sipi = chip.take_sipi(index);
    if sipi.is_some() {
        // The vCPU starts: its first entry looks.
        park.call_attention();
    }
    sipi
}

/// A halted vCPU (HLT done, RIP past it) looks whether it wakes: `None` if it runs on,
/// else `Some(until)`: it blocks until that host time (its next timer deadline, if any)
/// or a wake. Follows the sleeper's side of `vm::park`'s protocol.
pub(crate) fn halt<B: Backend>(vm: &Vm<B>, index: u32, vcpu: &B::Vcpu) -> Option<Option<u64>> {
    let park = vm.park(index);
    park.going_to_sleep();
    let (awake, until, wake) = {
        let mut devices = vm.devices.lock();
        let wake = tick_timers(&mut devices, park, index, vm.clock);
        let awake = devices.irqchip().wakes_from_halt(index, vcpu.interrupts_enabled());
        (awake, devices.next_deadline(index), wake)
    };
    if awake {
        // What woke it (perhaps its own timer, in no one's wake) is its next entry's.
        park.call_attention();
    }
    vm.wake_vcpus(others(wake, index));
    (!awake).then_some(until)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::PlatformConfig;
    use crate::devices::irq::{DeliveryMode, InterruptMessage};
    use crate::devices::irqchip::Injection;
    use crate::devices::lapic::LapicConfig;
    use spin::Mutex;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    const OPEN: Openings = Openings { interrupt: true, nmi: true };
    const CLOSED: Openings = Openings { interrupt: false, nmi: false };
    // xAPIC page offsets (SDM vol. 3A Table 11-1).
    const LAPIC_EOI: u32 = 0xB0;
    const LAPIC_SVR: u32 = 0xF0;
    const LAPIC_LVT_TIMER: u32 = 0x320;
    const LAPIC_INITIAL_COUNT: u32 = 0x380;
    /// SVR: software-enabled, spurious vector 0xFF.
    const SVR_ENABLED: u32 = 0x1FF;
    /// The time the tests' timers never reach, or pass.
    fn never() -> u64 {
        0
    }
    fn late() -> u64 {
        u64::MAX - 1
    }

    fn bus() -> PortBus {
        let mut bus = PortBus::new(&PlatformConfig {
            vcpus: 2,
            ram_bytes: 1 << 20,
            unix_seconds: 0,
            now_ns: 0,
            lapic: LapicConfig {
                bus_hz: 1_000_000_000,
                tsc_hz: 1_000_000_000,
                tsc_origin_ns: 0,
                has_x2apic: true,
            },
        });
        for v in 0..2 {
            let _ = bus.irqchip_mut().lapic_mmio_write(v, LAPIC_SVR, SVR_ENABLED, 0);
        }
        bus
    }

    /// `prepare` for vCPU 1 with the guest open, then the guest's handler: an EOI, an own
    /// LAPIC access (`devices_accessed`). Returns whether it looked, and what it injected.
    fn entry(devices: &Mutex<PortBus>, park: &VcpuPark) -> (bool, Option<Injection>) {
        if !must_look(park, never) {
            return (false, None);
        }
        let look = look(&mut devices.lock(), park, 1, || OPEN, never);
        if look.events.inject.is_some() {
            let _ = devices.lock().irqchip_mut().lapic_mmio_write(1, LAPIC_EOI, 0, 0);
            park.call_attention();
        }
        (true, look.events.inject)
    }

    /// Another vCPU's IPIs to vCPU 1 race its entries, many times: each vector sent is
    /// injected exactly once, none is left pending, and the entries without news take no
    /// lock.
    #[test]
    fn deliveries_racing_entries_are_each_injected_once() {
        const VECTORS: core::ops::Range<u8> = 0x20..0xF0;
        for _ in 0..100 {
            let devices = Arc::new(Mutex::new(bus()));
            let park = Arc::new(VcpuPark::default());
            let sent = Arc::new(AtomicBool::new(false));
            let sender = {
                let (devices, park, sent) = (devices.clone(), park.clone(), sent.clone());
                std::thread::spawn(move || {
                    for vector in VECTORS {
                        let targets = devices
                            .lock()
                            .irqchip_mut()
                            .deliver(&InterruptMessage::fixed(vector, 1), Some(0));
                        // `Vm::wake_vcpus`, after the lock is dropped.
                        targets.iter().for_each(|_| {
                            let _ = park.wake();
                        });
                    }
                    sent.store(true, Ordering::SeqCst);
                })
            };
            let mut injected = [0u32; 256];
            let mut after_sent = 0;
            // Once all are sent, one entry per vector still pending is enough.
            while after_sent <= VECTORS.len() {
                let sent = sent.load(Ordering::SeqCst);
                if let (_, Some(Injection::Interrupt(vector))) = entry(&devices, &park) {
                    injected[usize::from(vector)] += 1;
                }
                after_sent += usize::from(sent);
            }
            sender.join().unwrap();
            for vector in 0..=255u8 {
                let expected = u32::from(VECTORS.contains(&vector));
                assert_eq!(injected[usize::from(vector)], expected, "vector {vector:#x}");
            }
            assert_eq!(entry(&devices, &park).1, None);
            assert_eq!(entry(&devices, &park), (false, None), "nothing is pending: no look");
        }
    }

    #[test]
    fn a_wanted_window_keeps_the_entry_looking() {
        let devices = Mutex::new(bus());
        let park = VcpuPark::default();
        let _ = devices.lock().irqchip_mut().deliver(&InterruptMessage::fixed(0x40, 1), None);
        for _ in 0..3 {
            assert!(must_look(&park, never));
            let look = look(&mut devices.lock(), &park, 1, || CLOSED, never);
            assert!(look.events.interrupt_window && look.events.inject.is_none());
        }
        assert!(must_look(&park, never));
        let look = look(&mut devices.lock(), &park, 1, || OPEN, never);
        assert_eq!(look.events.inject, Some(Injection::Interrupt(0x40)));
        assert!(!must_look(&park, never), "nothing else pending: the next entry takes no lock");
    }

    #[test]
    fn an_nmi_and_an_interrupt_take_two_looks() {
        let devices = Mutex::new(bus());
        let park = VcpuPark::default();
        let nmi = InterruptMessage { delivery: DeliveryMode::Nmi, ..InterruptMessage::fixed(0, 1) };
        let _ = devices.lock().irqchip_mut().deliver(&nmi, None);
        let _ = devices.lock().irqchip_mut().deliver(&InterruptMessage::fixed(0x40, 1), None);
        assert!(must_look(&park, never));
        assert_eq!(look(&mut devices.lock(), &park, 1, || OPEN, never).events.inject, Some(Injection::Nmi));
        assert!(must_look(&park, never), "the interrupt is still pending: the next entry looks");
        let look = look(&mut devices.lock(), &park, 1, || OPEN, never);
        assert_eq!(look.events.inject, Some(Injection::Interrupt(0x40)));
        assert!(!must_look(&park, never));
    }

    #[test]
    fn an_armed_timer_is_one_compare_with_the_clock() {
        let devices = Mutex::new(bus());
        let park = VcpuPark::default();
        {
            let mut bus = devices.lock();
            let chip = bus.irqchip_mut();
            let _ = chip.lapic_mmio_write(1, LAPIC_LVT_TIMER, 0x30, 0);
            let _ = chip.lapic_mmio_write(1, LAPIC_INITIAL_COUNT, 1000, 0);
        }
        // The vCPU's own access called its attention; its look caches the deadline.
        park.call_attention();
        assert!(park.take_attention());
        let _ = look(&mut devices.lock(), &park, 1, || OPEN, never);
        assert!(!park.take_attention());
        assert!(!park.deadline_due(never), "not yet: the entry takes no lock");
        assert!(park.deadline_due(late), "passed: the entry looks");
        let look = look(&mut devices.lock(), &park, 1, || OPEN, late);
        assert_eq!(look.events.inject, Some(Injection::Interrupt(0x30)));
        assert!(!park.deadline_due(late), "one-shot, fired: no deadline left");
    }
}
