//! Host implementations for tests, loom and the benchmark: a safe page arena, a recording
//! flush hook, and clocks. Nothing here dereferences an address: "physical" addresses are
//! indices into the arena, so a bug in the MMU shows up as a failed check, never as a stray
//! write.

use super::flush::{FlushScope, TlbFlush};
use super::stats::Clock;
use super::{Platform, TdpFormat};
use crate::addr::{Hpa, PAGE_SIZE, PageSize};
use crate::pages::{ENTRIES, PageSource};
use crate::sync::{AtomicU64, Ordering};
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::marker::PhantomData;
use core::sync::atomic::{AtomicU64 as PlainAtomicU64, Ordering as PlainOrdering};

/// Something that happened, in order, for tests that check ordering.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Event {
    Flush(FlushScope),
    Kick,
    TableFreed(Hpa),
    FrameFreed(Hpa),
}

#[derive(Default)]
pub struct EventLog {
    events: spin::Mutex<Vec<Event>>,
}

impl EventLog {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn push(&self, event: Event) {
        self.events.lock().push(event);
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().clone()
    }

    pub fn clear(&self) {
        self.events.lock().clear();
    }
}

#[derive(Clone, Copy, Debug)]
pub struct HostPagesConfig {
    pub tables: usize,
    pub frames_4k: usize,
    pub frames_2m: usize,
    pub frames_1g: usize,
}

impl Default for HostPagesConfig {
    fn default() -> Self {
        Self { tables: 1 << 16, frames_4k: 1 << 20, frames_2m: 1 << 12, frames_1g: 16 }
    }
}

const TABLE_BASE: u64 = 1 << 32;
const FRAME_BASES: [u64; 3] = [1 << 36, 1 << 38, 1 << 40];

struct TableState {
    free: Vec<u32>,
    used: Vec<bool>,
    next: usize,
}

#[derive(Default)]
struct FrameState {
    free: Vec<u32>,
    /// Per frame: `None` if free, `Some(bytes)` if allocated; bytes are created on first write.
    frames: Vec<Option<Option<Box<[u8]>>>>,
}

struct FrameClass {
    size: PageSize,
    base: u64,
    capacity: usize,
    state: spin::Mutex<FrameState>,
    in_use: PlainAtomicU64,
}

/// A page source over the host heap with fixed capacities (exceeding one is out-of-memory).
pub struct HostPages {
    tables: Box<[spin::Once<Box<[AtomicU64; ENTRIES]>>]>,
    table_state: spin::Mutex<TableState>,
    tables_in_use: PlainAtomicU64,
    classes: [FrameClass; 3],
    log: Option<Arc<EventLog>>,
}

impl HostPages {
    pub fn new(config: HostPagesConfig) -> Self {
        Self::build(config, None)
    }

    pub fn with_log(config: HostPagesConfig, log: Arc<EventLog>) -> Self {
        Self::build(config, Some(log))
    }

    fn build(config: HostPagesConfig, log: Option<Arc<EventLog>>) -> Self {
        let class = |i: usize, size, capacity| FrameClass {
            size,
            base: FRAME_BASES[i],
            capacity,
            state: spin::Mutex::new(FrameState::default()),
            in_use: PlainAtomicU64::new(0),
        };
        Self {
            tables: (0..config.tables).map(|_| spin::Once::new()).collect(),
            table_state: spin::Mutex::new(TableState { free: Vec::new(), used: Vec::new(), next: 0 }),
            tables_in_use: PlainAtomicU64::new(0),
            classes: [
                class(0, PageSize::Size4K, config.frames_4k),
                class(1, PageSize::Size2M, config.frames_2m),
                class(2, PageSize::Size1G, config.frames_1g),
            ],
            log,
        }
    }

    pub fn tables_in_use(&self) -> u64 {
        self.tables_in_use.load(PlainOrdering::SeqCst)
    }

    pub fn frames_in_use(&self, size: PageSize) -> u64 {
        self.class(size).in_use.load(PlainOrdering::SeqCst)
    }

    pub fn all_frames_in_use(&self) -> u64 {
        PageSize::ALL.iter().map(|&s| self.frames_in_use(s)).sum()
    }

    fn class(&self, size: PageSize) -> &FrameClass {
        &self.classes[size.level() as usize - 1]
    }

    fn table_index(&self, table: Hpa) -> usize {
        let offset = table.raw().checked_sub(TABLE_BASE).expect("not a table address");
        assert!(offset.is_multiple_of(PAGE_SIZE), "table address {table:?} is not page aligned");
        let index = (offset / PAGE_SIZE) as usize;
        assert!(index < self.tables.len(), "table address {table:?} out of the arena");
        index
    }

    fn frame_index(&self, frame: Hpa, size: PageSize) -> usize {
        let class = self.class(size);
        let offset = frame.raw().checked_sub(class.base).expect("not a frame address");
        assert!(offset.is_multiple_of(size.bytes()), "frame {frame:?} is not aligned to {size:?}");
        let index = (offset / size.bytes()) as usize;
        assert!(index < class.capacity, "frame {frame:?} out of the arena");
        index
    }

    /// Which frame `hpa` lies in, if any: (frame, size).
    pub fn frame_containing(&self, hpa: Hpa) -> Option<(Hpa, PageSize)> {
        self.classes.iter().find_map(|class| {
            let offset = hpa.raw().checked_sub(class.base)?;
            let index = offset / class.size.bytes();
            (index < class.capacity as u64)
                .then(|| (Hpa::new(class.base + index * class.size.bytes()), class.size))
        })
    }

    /// Whether `frame` is currently allocated.
    pub fn is_frame_allocated(&self, frame: Hpa, size: PageSize) -> bool {
        let index = self.frame_index(frame, size);
        self.class(size).state.lock().frames.get(index).is_some_and(Option::is_some)
    }
}

// SAFETY: no address from this arena is ever dereferenced: tables are `AtomicU64` arrays
// owned by the arena and found by index, frames are byte vectors found by index, so (1)-(5)
// of the contract hold trivially for memory safety: each `alloc_*` hands out an index not in
// use (checked against double frees), tables are zeroed before reuse, and addresses are
// below 2^42.
#[expect(unsafe_code, reason = "implements the PageSource contract, which this safe arena meets trivially")]
unsafe impl PageSource for HostPages {
    fn alloc_table(&self) -> Option<Hpa> {
        let (index, reused) = {
            let mut state = self.table_state.lock();
            // Under loom a fresh table each time: zeroing a reused one would be 512 modelled
            // stores.
            let recycled = if cfg!(loom) { None } else { state.free.pop() };
            match recycled {
                Some(i) => (i as usize, true),
                None if state.next < self.tables.len() => {
                    state.next += 1;
                    state.used.push(false);
                    (state.next - 1, false)
                }
                None => return None,
            }
        };
        {
            let mut state = self.table_state.lock();
            assert!(!state.used[index]);
            state.used[index] = true;
        }
        let table = self.tables[index].call_once(|| Box::new(core::array::from_fn(|_| AtomicU64::new(0))));
        if reused {
            for entry in table.iter() {
                entry.store(0, Ordering::Relaxed);
            }
        }
        self.tables_in_use.fetch_add(1, PlainOrdering::SeqCst);
        Some(Hpa::new(TABLE_BASE + index as u64 * PAGE_SIZE))
    }

    fn free_table(&self, table: Hpa) {
        let index = self.table_index(table);
        {
            let mut state = self.table_state.lock();
            assert!(state.used[index], "double free of table {table:?}");
            state.used[index] = false;
            state.free.push(index as u32);
        }
        self.tables_in_use.fetch_sub(1, PlainOrdering::SeqCst);
        if let Some(log) = &self.log {
            log.push(Event::TableFreed(table));
        }
    }

    fn table(&self, table: Hpa) -> &[AtomicU64; ENTRIES] {
        let index = self.table_index(table);
        self.tables[index].get().expect("table used before it was allocated")
    }

    fn alloc_frame(&self, size: PageSize) -> Option<Hpa> {
        let class = self.class(size);
        let mut state = class.state.lock();
        let index = match state.free.pop() {
            Some(i) => i as usize,
            None if state.frames.len() < class.capacity => {
                state.frames.push(None);
                state.frames.len() - 1
            }
            None => return None,
        };
        state.frames[index] = Some(None);
        class.in_use.fetch_add(1, PlainOrdering::SeqCst);
        Some(Hpa::new(class.base + index as u64 * size.bytes()))
    }

    fn free_frame(&self, frame: Hpa, size: PageSize) {
        let index = self.frame_index(frame, size);
        let class = self.class(size);
        {
            let mut state = class.state.lock();
            assert!(state.frames[index].take().is_some(), "double free of frame {frame:?}");
            state.free.push(index as u32);
        }
        class.in_use.fetch_sub(1, PlainOrdering::SeqCst);
        if let Some(log) = &self.log {
            log.push(Event::FrameFreed(frame));
        }
    }

    fn read_frame(&self, frame: Hpa, size: PageSize, offset: u64, buf: &mut [u8]) {
        let index = self.frame_index(frame, size);
        let state = self.class(size).state.lock();
        let bytes = state.frames[index].as_ref().expect("read of a free frame");
        match bytes {
            Some(bytes) => buf.copy_from_slice(&bytes[offset as usize..offset as usize + buf.len()]),
            None => buf.fill(0),
        }
    }

    fn write_frame(&self, frame: Hpa, size: PageSize, offset: u64, data: &[u8]) {
        let index = self.frame_index(frame, size);
        let mut state = self.class(size).state.lock();
        let bytes = state.frames[index].as_mut().expect("write to a free frame");
        let bytes = bytes.get_or_insert_with(|| vec![0u8; size.bytes() as usize].into_boxed_slice());
        bytes[offset as usize..offset as usize + data.len()].copy_from_slice(data);
    }
}

/// A flush hook that counts and, if given a log, records each call.
#[derive(Default)]
pub struct RecordingFlush {
    flushes: PlainAtomicU64,
    kicks: PlainAtomicU64,
    log: Option<Arc<EventLog>>,
}

impl RecordingFlush {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_log(log: Arc<EventLog>) -> Self {
        Self { log: Some(log), ..Self::default() }
    }

    pub fn flushes(&self) -> u64 {
        self.flushes.load(PlainOrdering::SeqCst)
    }

    pub fn kicks(&self) -> u64 {
        self.kicks.load(PlainOrdering::SeqCst)
    }
}

impl TlbFlush for RecordingFlush {
    fn flush(&self, scope: FlushScope) {
        self.flushes.fetch_add(1, PlainOrdering::SeqCst);
        if let Some(log) = &self.log {
            log.push(Event::Flush(scope));
        }
    }

    fn kick_all(&self) {
        self.kicks.fetch_add(1, PlainOrdering::SeqCst);
        if let Some(log) = &self.log {
            log.push(Event::Kick);
        }
    }
}

/// Wall-clock time from `std::time`.
#[cfg(any(test, feature = "std"))]
pub struct StdClock(std::time::Instant);

#[cfg(any(test, feature = "std"))]
impl Default for StdClock {
    fn default() -> Self {
        Self(std::time::Instant::now())
    }
}

#[cfg(any(test, feature = "std"))]
impl Clock for StdClock {
    fn now_ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// The host platform: format `F`, [`HostPages`], [`RecordingFlush`], clock `C`.
pub struct HostPlatform<F, C = super::NoClock>(PhantomData<fn() -> (F, C)>);

impl<F: TdpFormat, C: Clock> Platform for HostPlatform<F, C> {
    type Format = F;
    type Pages = HostPages;
    type Flush = RecordingFlush;
    type Clock = C;
}
