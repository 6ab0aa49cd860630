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
    fn reset_forgets_every_event() {
        let mut queue = EventQueue::default();
        queue.in_flight(Some(TIMER));
        queue.request(Event::exception(GP, None));
        queue.clear();
        assert_eq!(queue.next_entry(), None);
    }
}
