//! A VM's event log: timestamped, bounded (the oldest entries are dropped and counted),
//! each entry with an absolute sequence number so a reader can follow it.

use alloc::collections::VecDeque;
use alloc::string::String;
use core::fmt;

/// Default number of events a VM keeps.
pub const EVENT_LOG_LEN: usize = 1024;

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A write to the debug port 0x80 (boot-time measurement from inside the guest).
    DebugPort { value: u32 },
    /// A `LOG_EVENT` hypercall.
    Hypercall { vcpu: u32, value: u64 },
    /// Something the hypervisor notes: a crash with registers, a stop, ...
    Note(String),
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DebugPort { value } => write!(f, "port 0x80 <- {value:#x}"),
            Self::Hypercall { vcpu, value } => write!(f, "vcpu {vcpu} event {value:#x}"),
            Self::Note(text) => f.write_str(text),
        }
    }
}

/// One entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Number of the event since the VM was created (0, 1, ...), dropped ones included.
    pub seq: u64,
    /// When it happened, in the caller's clock (nanoseconds since boot in the image).
    pub time_ns: u64,
    pub kind: EventKind,
}

/// The bounded log.
#[derive(Clone, Debug)]
pub struct EventLog {
    events: VecDeque<Event>,
    capacity: usize,
    next_seq: u64,
}

impl EventLog {
    /// An empty log keeping the last `capacity` events (at least 1).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self { events: VecDeque::with_capacity(capacity.min(64)), capacity, next_seq: 0 }
    }

    pub fn push(&mut self, time_ns: u64, kind: EventKind) {
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(Event { seq: self.next_seq, time_ns, kind });
        self.next_seq += 1;
    }

    /// Events dropped because the log was full.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.next_seq - self.events.len() as u64
    }

    /// Events ever logged.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.next_seq
    }

    /// The kept events, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Event> {
        self.events.iter()
    }

    /// The kept events with `seq >= from`, oldest first, and how many events between
    /// `from` and the oldest kept one were dropped.
    pub fn since(&self, from: u64) -> (u64, impl Iterator<Item = &Event>) {
        let missed = self.dropped().saturating_sub(from);
        (missed, self.events.iter().filter(move |e| e.seq >= from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn log_drops_the_oldest_and_counts_them() {
        let mut log = EventLog::new(3);
        for value in 0..5 {
            log.push(100 + u64::from(value), EventKind::DebugPort { value });
        }
        assert_eq!((log.dropped(), log.total()), (2, 5));
        let kept: Vec<_> = log.iter().map(|e| (e.seq, e.time_ns)).collect();
        assert_eq!(kept, [(2, 102), (3, 103), (4, 104)]);
        let (missed, rest) = log.since(1);
        assert_eq!((missed, rest.count()), (1, 3));
        let (missed, rest) = log.since(4);
        assert_eq!((missed, rest.map(|e| e.seq).collect::<Vec<_>>()), (0, [4].to_vec()));
        assert_eq!(alloc::format!("{}", EventKind::DebugPort { value: 0x42 }), "port 0x80 <- 0x42");
    }
}
