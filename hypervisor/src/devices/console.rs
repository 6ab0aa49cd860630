//! A VM's console: a bounded ring of the bytes its UART sent, read from absolute offsets,
//! and the splitter that turns those bytes into printable lines.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt::Write;

/// Default capacity of a VM's console ring.
pub const CONSOLE_RING_BYTES: usize = 64 * 1024;

/// The bytes a VM wrote to its console. The byte written n-th (from 0) has absolute offset
/// n; the ring keeps the last `capacity` of them, and the older ones are dropped and
/// counted. Readers keep their own offset, so any number of them can follow the console,
/// and one that fell behind learns how many bytes it missed.
#[derive(Clone, Debug)]
pub struct ConsoleRing {
    buf: Vec<u8>,
    /// Bytes ever written: the offset of the next byte.
    written: u64,
}

/// What one [`ConsoleRing::read`] copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsoleRead {
    /// Bytes copied into the buffer.
    pub len: usize,
    /// Bytes between the requested offset and the oldest byte still kept, which the
    /// reader will never see.
    pub missed: u64,
    /// Offset to pass to the next read.
    pub next_offset: u64,
}

impl ConsoleRing {
    /// An empty ring keeping the last `capacity` bytes (at least 1).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self { buf: vec![0; capacity.max(1)], written: 0 }
    }

    /// [`ConsoleRing::new`], or `None` when the heap has no room for it (a VM's creation
    /// then answers 503 instead of ending the hypervisor).
    #[must_use]
    pub fn try_new(capacity: usize) -> Option<Self> {
        let mut buf = Vec::new();
        buf.try_reserve_exact(capacity.max(1)).ok()?;
        buf.resize(capacity.max(1), 0);
        Some(Self { buf, written: 0 })
    }

    #[must_use]
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Appends bytes, dropping the oldest ones beyond the capacity.
    pub fn push(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            let at = (self.written % self.buf.len() as u64) as usize;
            self.buf[at] = byte;
            self.written += 1;
        }
    }

    /// Offset of the next byte to be written (bytes written so far).
    #[must_use]
    pub fn end_offset(&self) -> u64 {
        self.written
    }

    /// Offset of the oldest byte still kept.
    #[must_use]
    pub fn start_offset(&self) -> u64 {
        self.written.saturating_sub(self.buf.len() as u64)
    }

    /// Bytes dropped because the ring was full.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.start_offset()
    }

    /// Copies bytes from absolute `offset` on into `out`. An offset older than the
    /// oldest kept byte starts there and reports the gap as `missed`; an offset beyond the
    /// end reads nothing.
    pub fn read(&self, offset: u64, out: &mut [u8]) -> ConsoleRead {
        let start = offset.max(self.start_offset()).min(self.written);
        let missed = start - offset.min(start);
        let len = ((self.written - start) as usize).min(out.len());
        for (i, slot) in out[..len].iter_mut().enumerate() {
            *slot = self.buf[((start + i as u64) % self.buf.len() as u64) as usize];
        }
        ConsoleRead { len, missed, next_offset: start + len as u64 }
    }
}

/// Longest line the splitter hands out; a longer one is cut into pieces of this size.
pub const MAX_LINE_BYTES: usize = 1024;

/// Turns console bytes into lines for the host's console (`[vm <id>] ` is the caller's
/// prefix). It follows a [`ConsoleRing`] through its own offset. Lines end at `\n`; a
/// `\r` before it is dropped; bytes a terminal would interpret (escape sequences, other
/// control characters) and invalid UTF-8 are shown escaped (`\x1b`), so a guest cannot
/// drive the host's terminal.
#[derive(Clone, Debug, Default)]
pub struct LineSplitter {
    offset: u64,
    partial: Vec<u8>,
    /// Bytes missed since the last line was handed out.
    missed: u64,
}

impl LineSplitter {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The next complete line from `ring`, if one has been written. A gap (the ring
    /// overwrote bytes this splitter had not read) comes out first as its own line.
    pub fn next_line(&mut self, ring: &ConsoleRing) -> Option<String> {
        let mut chunk = [0u8; 256];
        loop {
            if self.missed > 0 {
                let line = alloc::format!("[... {} console bytes dropped ...]", self.missed);
                self.missed = 0;
                return Some(line);
            }
            if let Some(newline) = self.partial.iter().position(|&b| b == b'\n') {
                let rest = self.partial.split_off(newline + 1);
                let mut line = core::mem::replace(&mut self.partial, rest);
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Some(printable(&line));
            }
            if self.partial.len() >= MAX_LINE_BYTES {
                let rest = self.partial.split_off(MAX_LINE_BYTES);
                let line = core::mem::replace(&mut self.partial, rest);
                return Some(printable(&line));
            }
            let want = (MAX_LINE_BYTES - self.partial.len()).min(chunk.len());
            let read = ring.read(self.offset, &mut chunk[..want]);
            self.offset = read.next_offset;
            if read.missed > 0 {
                // What was buffered belongs to the line the gap cut; show both halves.
                self.missed = read.missed;
                if !self.partial.is_empty() {
                    let line = core::mem::take(&mut self.partial);
                    self.partial.extend_from_slice(&chunk[..read.len]);
                    return Some(printable(&line));
                }
            }
            if read.len == 0 && self.missed == 0 {
                return None;
            }
            self.partial.extend_from_slice(&chunk[..read.len]);
        }
    }

    /// The unfinished last line, if any (when the VM has ended). Call after
    /// [`LineSplitter::next_line`] returned `None`.
    pub fn take_partial(&mut self) -> Option<String> {
        if self.partial.is_empty() {
            return None;
        }
        let line = core::mem::take(&mut self.partial);
        Some(printable(&line))
    }
}

/// `bytes` as text that is safe to print on a terminal: printable UTF-8 as it is, tabs
/// kept, everything else as `\xNN`.
fn printable(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c == '\t' || !c.is_control() {
                out.push(c);
            } else {
                // C0 and C1 control characters (U+0000-U+001F, U+007F-U+009F): the code point.
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
        }
        for &b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_last_bytes_and_counts_the_dropped() {
        let mut ring = ConsoleRing::new(8);
        ring.push(b"abcdef");
        let mut out = [0; 16];
        let r = ring.read(0, &mut out);
        assert_eq!((&out[..r.len], r.missed, r.next_offset), (&b"abcdef"[..], 0, 6));
        ring.push(b"ghijkl");
        assert_eq!((ring.dropped(), ring.start_offset(), ring.end_offset()), (4, 4, 12));
        // A reader at offset 2 fell behind: it missed 2 bytes and gets the kept 8.
        let r = ring.read(2, &mut out);
        assert_eq!((&out[..r.len], r.missed, r.next_offset), (&b"efghijkl"[..], 2, 12));
        // A reader that is up to date gets nothing; one beyond the end too.
        assert_eq!(ring.read(12, &mut out).len, 0);
        assert_eq!(ring.read(100, &mut out), ConsoleRead { len: 0, missed: 0, next_offset: 12 });
        // Small buffers read in pieces.
        let r = ring.read(6, &mut out[..3]);
        assert_eq!((&out[..r.len], r.next_offset), (&b"ghi"[..], 9));
    }

    #[test]
    fn splitter_yields_complete_lines_without_cr() {
        let mut ring = ConsoleRing::new(64);
        let mut lines = LineSplitter::new();
        ring.push(b"hello from taproot guest\r\nsecond");
        assert_eq!(lines.next_line(&ring).as_deref(), Some("hello from taproot guest"));
        assert_eq!(lines.next_line(&ring), None);
        ring.push(b" half\n");
        assert_eq!(lines.next_line(&ring).as_deref(), Some("second half"));
        ring.push(b"unfinished");
        assert_eq!(lines.next_line(&ring), None);
        assert_eq!(lines.take_partial().as_deref(), Some("unfinished"));
        assert_eq!(lines.take_partial(), None);
    }

    #[test]
    fn splitter_escapes_what_a_terminal_would_interpret() {
        let mut ring = ConsoleRing::new(64);
        let mut lines = LineSplitter::new();
        ring.push(b"\x1b[2Jred\ttab \xff\xc3\xa9\n");
        assert_eq!(lines.next_line(&ring).unwrap(), "\\x1b[2Jred\ttab \\xffé");
    }

    #[test]
    fn splitter_cuts_long_lines_and_reports_gaps() {
        let mut ring = ConsoleRing::new(4096);
        let mut lines = LineSplitter::new();
        ring.push(&[b'a'; MAX_LINE_BYTES + 10]);
        ring.push(b"\n");
        assert_eq!(lines.next_line(&ring).unwrap().len(), MAX_LINE_BYTES);
        assert_eq!(lines.next_line(&ring).unwrap(), "a".repeat(10));

        let mut ring = ConsoleRing::new(16);
        let mut lines = LineSplitter::new();
        ring.push(b"0123456789\nABCDEFGHIJ\nxyz\n");
        // 10 bytes were overwritten before the splitter read anything.
        assert_eq!(lines.next_line(&ring).unwrap(), "[... 10 console bytes dropped ...]");
        // The kept bytes start with the end of the cut line "0123456789".
        assert_eq!(lines.next_line(&ring).unwrap(), "");
        assert_eq!(lines.next_line(&ring).unwrap(), "ABCDEFGHIJ");
        assert_eq!(lines.next_line(&ring).unwrap(), "xyz");
        assert_eq!(lines.next_line(&ring), None);
    }
}
