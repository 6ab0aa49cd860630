//! Events into the guest at VM entry: the one in flight at the last exit, re-injected, and
//! the ones the exit handling asked for (host-tested; both backends use it).
//!
//! An exit can interrupt the delivery of an event (an exception, interrupt or NMI that
//! the CPU was vectoring through the guest's IDT/IVT): typically a nested page fault on
//! the guest's stack or IDT page, which Taproot maps lazily on first touch. The CPU then
//! reports the event as in flight (SVM EXITINTINFO, APM Vol. 2 §15.7.2; VMX IDT-vectoring
//! information, SDM Vol. 3C §28.2.4) and forgets it: unless the next entry injects it
//! again, it is lost (an external interrupt or #GP that never arrives, an RDMSR that runs
//! twice).
//!
//! The protocol, per vCPU: after each exit the backend hands the in-flight event, if any,
//! to [`EventQueue::in_flight`]; the exit handling (the backend's own or the VM layer's)
//! calls [`EventQueue::request`] for an event it wants delivered; just before the next
//! entry [`EventQueue::next_entry`] says which one event to inject (an entry injects at
//! most one). The event in flight goes first: the CPU had already started delivering it,
//! and an event newly requested at an exit during its delivery (a reflected #DB or #AC)
//! waits, in order, for a later entry. KVM instead merges a fault during delivery with
//! the event in flight (#DF for two contributory exceptions); Taproot requests events
//! only at instruction exits (where nothing is in flight) and for the reflected #DB/#AC,
//! so "in flight first" loses nothing and never needs that merge.
//!
//! Both formats share the low 32 bits: vector 7:0, type 10:8, error code valid 11, valid
//! 31 (SVM EVENTINJ/EXITINTINFO, APM Vol. 2 §15.20; VMX interruption information, SDM
//! Vol. 3C §25.8.3 and §25.9.2); the backends encode the rest (error code, instruction
//! length) in their own fields.

use crate::devices::irqchip::{Injection, Openings};

/// Bit 31 of either format: the event is valid.
pub const VALID: u32 = 1 << 31;
/// Bit 11: an error code is delivered with the event.
pub const ERROR_CODE_VALID: u32 = 1 << 11;
/// Bits 10:8, and the type both formats give exceptions (SVM "exception", VMX "hardware
/// exception").
pub const TYPE_SHIFT: u32 = 8;
pub const TYPE_MASK: u32 = 0x7;
pub const TYPE_EXCEPTION: u32 = 3;
/// The type of a software interrupt (INT n) in both formats.
pub const TYPE_SOFTWARE_INTERRUPT: u32 = 4;
/// The types of an external interrupt and of an NMI, the same in both formats (SVM
/// EVENTINJ "INTR" 0 and "NMI" 2, APM Vol. 2 §15.20; VMX SDM Vol. 3C §25.8.3).
pub const TYPE_EXTERNAL_INTERRUPT: u32 = 0;
pub const TYPE_NMI: u32 = 2;
/// The NMI's vector (both formats want it in the vector field).
const NMI_VECTOR: u32 = 2;

/// One event to deliver to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// The interruption information, [`VALID`] set.
    pub info: u32,
    /// Delivered only with [`ERROR_CODE_VALID`] in `info`.
    pub error_code: u32,
    /// The length of the instruction that raised a software interrupt or exception (VMX
    /// needs it to inject one; 0 otherwise).
    pub instruction_len: u32,
}

impl Event {
    /// The event an interruption information field describes, if its valid bit is set.
    pub fn from_info(info: u32, error_code: u32, instruction_len: u32) -> Option<Self> {
        (info & VALID != 0).then_some(Self { info, error_code, instruction_len })
    }

    /// Exception `vector`, with `error_code` if given.
    pub fn exception(vector: u8, error_code: Option<u32>) -> Self {
        let info = VALID | (TYPE_EXCEPTION << TYPE_SHIFT) | vector as u32;
        match error_code {
            Some(code) => Self { info: info | ERROR_CODE_VALID, error_code: code, instruction_len: 0 },
            None => Self { info, error_code: 0, instruction_len: 0 },
        }
    }

    /// The event an irqchip injection is: an external interrupt with its vector, or an
    /// NMI. Neither has an error code.
    pub fn of_injection(injection: Injection) -> Self {
        let info = match injection {
            Injection::Interrupt(vector) => VALID | (TYPE_EXTERNAL_INTERRUPT << TYPE_SHIFT) | vector as u32,
            Injection::Nmi => VALID | (TYPE_NMI << TYPE_SHIFT) | NMI_VECTOR,
        };
        Self { info, error_code: 0, instruction_len: 0 }
    }

    pub fn is_nmi(&self) -> bool {
        self.kind() == TYPE_NMI
    }

    pub fn vector(&self) -> u8 {
        self.info as u8
    }

    /// The type field (bits 10:8).
    pub fn kind(&self) -> u32 {
        (self.info >> TYPE_SHIFT) & TYPE_MASK
    }

    pub fn has_error_code(&self) -> bool {
        self.info & ERROR_CODE_VALID != 0
    }
}

/// How many requested events can wait behind events in flight. One exit requests at most
/// one event and an entry with nothing in flight injects one of the waiting, so two
/// suffice (one from before the exit that interrupted a delivery, one from that exit).
const WAITING: usize = 2;

/// One vCPU's events between an exit and the next entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventQueue {
    in_flight: Option<Event>,
    /// Requested events not injected yet, oldest first.
    waiting: [Option<Event>; WAITING],
}

impl EventQueue {
    /// After an exit: the event whose delivery the exit interrupted, if any.
    pub fn in_flight(&mut self, event: Option<Event>) {
        self.in_flight = event;
    }

    /// An event the exit handling wants delivered. The same event already waiting is not
    /// queued twice (a reflected exception that recurs while an event in flight is
    /// re-delivered), and if the queue is full (never, by [`WAITING`]'s reasoning) the
    /// older requests keep their place.
    pub fn request(&mut self, event: Event) {
        if self.waiting.contains(&Some(event)) {
            return;
        }
        if let Some(free) = self.waiting.iter_mut().find(|slot| slot.is_none()) {
            *free = Some(event);
        }
    }

    /// Just before an entry: the event to inject now, if any. The one in flight first,
    /// then the oldest request; the rest wait for later entries.
    pub fn next_entry(&mut self) -> Option<Event> {
        if let Some(event) = self.in_flight.take() {
            return Some(event);
        }
        let next = self.waiting[0].take();
        self.waiting.rotate_left(1);
        next
    }

    /// Whether nothing is in flight or waiting: only then may the entry path offer the
    /// guest a new interrupt or NMI (one entry injects one event, and an event waiting
    /// here goes first).
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_none() && self.waiting.iter().all(Option::is_none)
    }

    /// Forgets everything (vCPU reset).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Whether the last exit interrupted an event's delivery (which the next entry
    /// re-injects): the exit then reports the delivery's access, not the instruction's.
    #[must_use]
    pub fn has_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }
}

/// What a guest can take at the next entry, from what the backend reads of its state:
/// `interrupts_enabled` (RFLAGS.IF), `shadow` (the STI / MOV SS interrupt shadow: VMX
/// interruptibility bits 0-1, SVM INTERRUPT_SHADOW), `nmi_blocked` (an NMI handler is
/// running: VMX blocking by NMI, SVM the backend's own record until IRET) and the vCPU's
/// [`EventQueue`]. The shadow blocks NMIs too (some CPUs block NMIs after STI, and VMX
/// entry refuses an NMI injected under MOV SS blocking, SDM Vol. 3C §27.3.1.5).
pub fn openings(interrupts_enabled: bool, shadow: bool, nmi_blocked: bool, queue: &EventQueue) -> Openings {
    let free = queue.is_idle() && !shadow;
    Openings { interrupt: free && interrupts_enabled, nmi: free && !nmi_blocked }
}

/// NMI blocking as a backend records it where the CPU keeps none visible (SVM without
/// vNMI): from the injection of an NMI until the guest has executed the IRET that ends its
/// handler. The IRET intercept exits *before* the IRET runs (as in KVM's
/// `iret_interception`), so blocking lasts until the guest's RIP has moved past it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NmiBlocking {
    /// An NMI was injected and its handler has not reached IRET.
    in_handler: bool,
    /// The RIP of the IRET that ends the handler: blocked until the guest moves past it.
    iret_rip: Option<u64>,
}

impl NmiBlocking {
    /// Whether the NMI handler runs (the IRET intercept must stay on to see its end).
    pub fn in_handler(&self) -> bool {
        self.in_handler
    }

    /// An NMI is being injected at this entry.
    pub fn injected(&mut self) {
        self.in_handler = true;
    }

    /// The IRET intercept: the handler's IRET at `rip` runs next.
    pub fn iret(&mut self, rip: u64) {
        self.in_handler = false;
        self.iret_rip = Some(rip);
    }

    /// After an exit with the guest at `rip`: an IRET whose RIP has been left has run.
    pub fn exited_at(&mut self, rip: u64) {
        if self.iret_rip.is_some_and(|at| at != rip) {
            self.iret_rip = None;
        }
    }

    /// Whether the IRET that ends the handler has exited but not run yet: intercepting
    /// IRET again would exit at the same IRET forever; the next exit after it runs (at
    /// the latest the host's timer tick) unblocks NMIs instead. (KVM single-steps over it.)
    pub fn iret_pending(&self) -> bool {
        self.iret_rip.is_some()
    }

    /// Whether NMIs are blocked now.
    pub fn blocked(&self) -> bool {
        self.in_handler || self.iret_rip.is_some()
    }
}

/// The exits the next entry asks for, so that a pending event is injected as soon as the
/// guest can take it: VMX "interrupt-window exiting" / "NMI-window exiting" (SDM Vol. 3C
/// §25.6.2), SVM a virtual interrupt with the VINTR intercept / the IRET intercept (APM
/// Vol. 2 §15.21.4, §15.9).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Windows {
    pub interrupt: bool,
    pub nmi: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    const GP: u8 = 13;
    const PF: u8 = 14;
    const DB: u8 = 1;
    /// An external interrupt (type 0) with vector 0x20.
    const TIMER: Event = Event { info: VALID | 0x20, error_code: 0, instruction_len: 0 };

    #[test]
    fn nothing_in_flight_or_requested_injects_nothing() {
        let mut queue = EventQueue::default();
        queue.in_flight(None);
        assert_eq!(queue.next_entry(), None);
    }

    #[test]
    fn invalid_interruption_information_is_no_event() {
        assert_eq!(Event::from_info(0x0000_0B0D, 0, 0), None);
        let event = Event::from_info(VALID | ERROR_CODE_VALID | (3 << 8) | 14, 2, 0).unwrap();
        assert_eq!((event.vector(), event.kind(), event.has_error_code()), (PF, TYPE_EXCEPTION, true));
    }

    #[test]
    fn event_in_flight_is_injected_again_with_its_error_code() {
        let mut queue = EventQueue::default();
        let gp = Event::exception(GP, Some(0));
        queue.in_flight(Some(gp));
        assert_eq!(queue.next_entry(), Some(gp));
        // Delivered: the next exit reports nothing in flight.
        queue.in_flight(None);
        assert_eq!(queue.next_entry(), None);
    }

    #[test]
    fn event_in_flight_survives_repeated_exits_during_its_delivery() {
        let mut queue = EventQueue::default();
        let gp = Event::exception(GP, None);
        queue.request(gp);
        assert_eq!(queue.next_entry(), Some(gp));
        for _ in 0..3 {
            // Each delivery attempt faults on another unmapped page.
            queue.in_flight(Some(gp));
            assert_eq!(queue.next_entry(), Some(gp));
        }
    }

    #[test]
    fn request_without_event_in_flight_is_injected_at_once() {
        let mut queue = EventQueue::default();
        queue.in_flight(None);
        queue.request(Event::exception(GP, Some(0)));
        assert_eq!(queue.next_entry(), Some(Event::exception(GP, Some(0))));
        assert_eq!(queue.next_entry(), None);
    }

    #[test]
    fn event_in_flight_goes_before_a_new_request_which_waits() {
        let mut queue = EventQueue::default();
        let db = Event::exception(DB, None);
        queue.in_flight(Some(TIMER));
        queue.request(db);
        assert_eq!(queue.next_entry(), Some(TIMER));
        queue.in_flight(None);
        assert_eq!(queue.next_entry(), Some(db));
        queue.in_flight(None);
        assert_eq!(queue.next_entry(), None);
    }

    #[test]
    fn waiting_requests_go_oldest_first_after_every_event_in_flight() {
        let mut queue = EventQueue::default();
        let db = Event::exception(DB, None);
        let ac = Event::exception(17, Some(0));
        queue.in_flight(Some(TIMER));
        queue.request(db);
        assert_eq!(queue.next_entry(), Some(TIMER));
        // The delivery is interrupted again, and this exit requests another event.
        queue.in_flight(Some(TIMER));
        queue.request(ac);
        assert_eq!(queue.next_entry(), Some(TIMER));
        queue.in_flight(None);
        assert_eq!(queue.next_entry(), Some(db));
        queue.in_flight(None);
        assert_eq!(queue.next_entry(), Some(ac));
        queue.in_flight(None);
        assert_eq!(queue.next_entry(), None);
    }

    #[test]
    fn a_recurring_request_waits_once() {
        let mut queue = EventQueue::default();
        let db = Event::exception(DB, None);
        for _ in 0..5 {
            queue.in_flight(Some(TIMER));
            queue.request(db);
            assert_eq!(queue.next_entry(), Some(TIMER));
        }
        queue.in_flight(None);
        assert_eq!(queue.next_entry(), Some(db));
        assert_eq!(queue.next_entry(), None);
    }

    #[test]
    fn an_injection_is_an_external_interrupt_or_an_nmi_without_error_code() {
        let irq = Event::of_injection(Injection::Interrupt(0x31));
        assert_eq!((irq.info, irq.has_error_code(), irq.is_nmi()), (VALID | 0x31, false, false));
        let nmi = Event::of_injection(Injection::Nmi);
        assert_eq!((nmi.info, nmi.vector(), nmi.is_nmi()), (VALID | (2 << 8) | 2, 2, true));
    }

    #[test]
    fn the_guest_is_open_only_with_if_no_shadow_and_nothing_in_flight() {
        let idle = EventQueue::default();
        assert_eq!(openings(true, false, false, &idle), Openings { interrupt: true, nmi: true });
        assert_eq!(openings(false, false, false, &idle), Openings { interrupt: false, nmi: true }, "IF=0");
        assert_eq!(openings(true, true, false, &idle), Openings::default(), "STI shadow blocks both");
        assert_eq!(
            openings(true, false, true, &idle),
            Openings { interrupt: true, nmi: false },
            "in an NMI handler"
        );
        let mut busy = EventQueue::default();
        busy.in_flight(Some(TIMER));
        assert_eq!(openings(true, false, false, &busy), Openings::default(), "an event in flight goes first");
        let mut requested = EventQueue::default();
        requested.request(Event::exception(GP, Some(0)));
        assert_eq!(
            openings(true, false, false, &requested),
            Openings::default(),
            "a requested #GP goes first"
        );
        assert!(!requested.is_idle());
        let _ = requested.next_entry();
        assert!(requested.is_idle());
    }

    #[test]
    fn nmis_stay_blocked_from_injection_until_the_guest_moved_past_its_iret() {
        let mut nmi = NmiBlocking::default();
        assert!(!nmi.blocked());
        nmi.injected();
        nmi.exited_at(0x2000);
        assert!(nmi.blocked(), "the handler runs");
        nmi.iret(0x2040);
        nmi.exited_at(0x2040);
        assert!(nmi.blocked(), "the IRET has not run yet");
        assert!(nmi.iret_pending() && !nmi.in_handler(), "no IRET intercept now");
        nmi.exited_at(0x1000);
        assert!(!nmi.blocked(), "back in the interrupted code");
        nmi.exited_at(0x2040);
        assert!(!nmi.blocked(), "a later visit to the same RIP is not the IRET again");
    }

    #[test]
    fn reset_forgets_every_event() {
        let mut queue = EventQueue::default();
        queue.in_flight(Some(TIMER));
        queue.request(Event::exception(GP, None));
        queue.clear();
        assert_eq!(queue.next_entry(), None);
    }
}
