//! What the guests compute, separate from the hardware so it is tested on the host.

use core::ops::Range;

/// Bytes in a page the guests split memory by.
pub const PAGE_SIZE: u64 = 4096;

/// The value of `key=value` in a space-separated command line, if present.
#[must_use]
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_ascii_whitespace().find_map(|word| {
        let (k, v) = word.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// `key=N` as a number (decimal, or hex with `0x`), if present and valid.
#[must_use]
pub fn cmdline_u64(cmdline: &str, key: &str) -> Option<u64> {
    let value = cmdline_value(cmdline, key)?;
    match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => value.parse().ok(),
    }
}

/// FNV-1a, 64-bit (Fowler, Noll, Vo): the checksum `bzboot` prints of its initrd, which
/// the test computes of the same file on the host.
#[must_use]
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01B3))
}

/// The pattern word memtouch writes at `addr`: splitmix64 of the address, so every word
/// differs and a word written to the wrong place (or a stale page) is caught.
#[must_use]
pub const fn pattern(addr: u64) -> u64 {
    let mut z = addr.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The checksum of the pattern over `range` (8-byte words): the wrapping sum of the words,
/// so shares computed by different vCPUs add up to the checksum of the whole, however
/// memory was split.
#[must_use]
pub fn pattern_checksum(range: Range<u64>) -> u64 {
    range.step_by(8).fold(0u64, |sum, addr| sum.wrapping_add(pattern(addr)))
}

/// vCPU `index` of `count`'s share of `region`: whole pages, contiguous, the last vCPU
/// taking the remainder. Empty when `count` is 0 or `index >= count`.
#[must_use]
pub fn share(region: Range<u64>, index: u32, count: u32) -> Range<u64> {
    if count == 0 || index >= count || region.end <= region.start {
        return region.start..region.start;
    }
    let pages = (region.end - region.start) / PAGE_SIZE;
    let per_vcpu = pages / u64::from(count);
    let start = region.start + u64::from(index) * per_vcpu * PAGE_SIZE;
    let end = if index + 1 == count { region.end } else { start + per_vcpu * PAGE_SIZE };
    start..end
}

/// Rounds `value` up to a multiple of `align` (a power of two).
#[must_use]
pub const fn align_up(value: u64, align: u64) -> u64 {
    (value + align - 1) & !(align - 1)
}

/// The first word in `words` (the pattern expected at address `base + 8 * i`) that does
/// not hold its pattern: `(address, expected, found)`.
#[must_use]
pub fn first_mismatch(base: u64, words: &[u64]) -> Option<(u64, u64, u64)> {
    words.iter().enumerate().find_map(|(i, &found)| {
        let addr = base + 8 * i as u64;
        let expected = pattern(addr);
        (found != expected).then_some((addr, expected, found))
    })
}

/// Cycles per iteration, in hundredths, if the measurement means anything (`cycles` from
/// an invariant TSC).
#[must_use]
pub fn per_iteration_x100(cycles: u64, iterations: u64) -> Option<u64> {
    (iterations > 0).then(|| cycles.saturating_mul(100) / iterations)
}

/// The sum of `bytes` is 0 mod 256 (every ACPI table's checksum rule, ACPI 6.5 §5.2.6).
#[must_use]
pub fn acpi_checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b)) == 0
}

/// The RSDP's signature (ACPI 6.5 §5.2.5.3).
pub const RSDP_SIGNATURE: &[u8; 8] = b"RSD PTR ";
/// Bytes of the RSDP the ACPI 1.0 checksum covers.
pub const RSDP_V1_LEN: usize = 20;

/// The offset of the first RSDP in `area` (on a 16-byte boundary, as the legacy scan
/// looks, ACPI 6.5 §5.2.5.1) whose first 20 bytes sum to 0.
#[must_use]
pub fn find_rsdp(area: &[u8]) -> Option<usize> {
    (0..area.len().saturating_sub(RSDP_V1_LEN - 1))
        .step_by(16)
        .find(|&at| area[at..].starts_with(RSDP_SIGNATURE) && acpi_checksum_ok(&area[at..at + RSDP_V1_LEN]))
}

/// Bytes of an ACPI table header (ACPI 6.5 §5.2.6); the length is the u32 at offset 4.
pub const SDT_HEADER_LEN: usize = 36;
/// The MADT's fixed fields after the header: local APIC address and flags.
const MADT_FIELDS_LEN: usize = 8;

/// Enabled processors in a MADT (ACPI 6.5 §5.2.12): Processor Local APIC (type 0) and
/// x2APIC (type 9) entries with the Enabled flag.
#[must_use]
pub fn madt_processor_count(madt: &[u8]) -> usize {
    let mut at = SDT_HEADER_LEN + MADT_FIELDS_LEN;
    let mut count = 0;
    while at + 2 <= madt.len() {
        let (kind, len) = (madt[at], usize::from(madt[at + 1]));
        if len < 2 || at + len > madt.len() {
            break;
        }
        let flags_at = match kind {
            0 => Some(at + 4),
            9 => Some(at + 8),
            _ => None,
        };
        if flags_at.is_some_and(|f| f < at + len && madt[f] & 1 != 0) {
            count += 1;
        }
        at += len;
    }
    count
}

/// A clock byte in the RTC's format: BCD unless register B's DM bit (2) says binary.
#[must_use]
pub const fn rtc_value(byte: u8, status_b: u8) -> u8 {
    if status_b & (1 << 2) != 0 { byte } else { (byte >> 4) * 10 + (byte & 0x0F) }
}

/// Whether `ticks` periodic timer interrupts, the last one `elapsed` TSC ticks after the
/// timer was armed with a period of `period` TSC ticks, match host time: never early
/// (tick n comes at least n periods after arming), and at least half the periods that
/// elapsed (expiries that pass while the vCPU waits coalesce into one interrupt; a halted
/// vCPU is woken at the host's next timer tick, 10 ms, half the guest's 20 ms period, so
/// even a wake late every time loses at most every other one).
#[must_use]
pub fn periodic_ticks_plausible(ticks: u64, elapsed: u64, period: u64) -> bool {
    let periods = elapsed / period.max(1);
    ticks <= periods && ticks * 2 >= periods
}

/// Console input gathered into lines (for `hello`'s echo mode): bytes up to a `\r` or
/// `\n`, at most `N` of them (a longer line is handed over in pieces of `N`).
pub struct LineBuffer<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Default for LineBuffer<N> {
    fn default() -> Self {
        Self { bytes: [0; N], len: 0 }
    }
}

impl<const N: usize> LineBuffer<N> {
    /// Takes one byte; returns the line it completes, if any (never an empty one).
    pub fn push(&mut self, byte: u8) -> Option<&[u8]> {
        let ends = matches!(byte, b'\r' | b'\n');
        if !ends {
            self.bytes[self.len] = byte;
            self.len += 1;
        }
        if (ends || self.len == N) && self.len > 0 {
            let len = core::mem::take(&mut self.len);
            return Some(&self.bytes[..len]);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;
    use std::vec::Vec;

    fn lines<const N: usize>(input: &[u8]) -> Vec<Vec<u8>> {
        let mut buffer = LineBuffer::<N>::default();
        input.iter().filter_map(|&b| buffer.push(b).map(<[u8]>::to_vec)).collect()
    }

    #[test]
    fn console_input_becomes_lines_without_their_ends_and_without_empty_ones() {
        assert_eq!(lines::<8>(b"pi"), Vec::<Vec<u8>>::new(), "not complete yet");
        assert_eq!(lines::<8>(b"ping\n"), [b"ping".to_vec()]);
        assert_eq!(lines::<8>(b"a\r\nb\n\n"), [b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(lines::<4>(b"abcdef\n"), [b"abcd".to_vec(), b"ef".to_vec()], "long lines in pieces");
        assert_eq!(lines::<4>(b"abcd\nx\n"), [b"abcd".to_vec(), b"x".to_vec()]);
    }

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xCBF2_9CE4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xAF63_DC4C_8601_EC8C);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_F739_67E8);
    }

    #[test]
    fn cmdline_values_are_found_by_key() {
        let line = "mib=64 iters=0x10  name=x=y";
        assert_eq!(cmdline_value(line, "mib"), Some("64"));
        assert_eq!(cmdline_u64(line, "mib"), Some(64));
        assert_eq!(cmdline_u64(line, "iters"), Some(16));
        assert_eq!(cmdline_value(line, "name"), Some("x=y"));
        assert_eq!(cmdline_u64(line, "name"), None);
        assert_eq!(cmdline_u64("", "mib"), None);
        assert_eq!(cmdline_u64("mib", "mib"), None);
        assert_eq!(cmdline_u64("xmib=3", "mib"), None);
    }

    #[test]
    fn shares_cover_the_region_exactly_once() {
        let region = 0x20_0000..0x20_0000 + 16 * 1024 * 1024 + 3 * PAGE_SIZE;
        for count in 1..=7 {
            let mut next = region.start;
            for index in 0..count {
                let s = share(region.clone(), index, count);
                assert_eq!(s.start, next);
                assert_eq!(s.start % PAGE_SIZE, 0);
                next = s.end;
            }
            assert_eq!(next, region.end);
        }
        assert!(share(region.clone(), 3, 3).is_empty());
        assert!(share(region, 0, 0).is_empty());
    }

    #[test]
    fn checksum_of_shares_adds_up_to_the_whole() {
        let region = 0x40_0000..0x40_0000 + 64 * PAGE_SIZE;
        let whole = pattern_checksum(region.clone());
        for count in [1, 2, 3, 5] {
            let sum = (0..count)
                .fold(0u64, |sum, i| sum.wrapping_add(pattern_checksum(share(region.clone(), i, count))));
            assert_eq!(sum, whole);
        }
    }

    #[test]
    fn mismatches_are_found_with_their_address() {
        let base = 0x10_0000u64;
        let mut words: [u64; 16] = core::array::from_fn(|i| pattern(base + 8 * i as u64));
        assert_eq!(first_mismatch(base, &words), None);
        words[5] = 0;
        assert_eq!(first_mismatch(base, &words), Some((base + 40, pattern(base + 40), 0)));
        // Neighbouring words differ, so a shifted copy is caught too.
        assert_ne!(pattern(base), pattern(base + 8));
    }

    #[test]
    fn small_helpers() {
        assert_eq!(align_up(0x10_0001, 0x20_0000), 0x20_0000);
        assert_eq!(align_up(0x20_0000, 0x20_0000), 0x20_0000);
        assert_eq!(per_iteration_x100(1234, 10), Some(12340));
        assert_eq!(per_iteration_x100(1, 0), None);
    }

    #[test]
    fn rsdp_is_found_on_a_16_byte_boundary_with_a_good_checksum() {
        let mut area = [0u8; 96];
        area[40..48].copy_from_slice(RSDP_SIGNATURE); // not on a boundary
        area[48..56].copy_from_slice(RSDP_SIGNATURE); // bad checksum
        area[57] = 1;
        area[64..72].copy_from_slice(RSDP_SIGNATURE);
        let sum = area[64..84].iter().fold(0u8, |s, &b| s.wrapping_add(b));
        area[72] = 0u8.wrapping_sub(sum);
        assert_eq!(find_rsdp(&area), Some(64));
        assert!(acpi_checksum_ok(&area[64..84]));
    }

    #[test]
    fn madt_counts_enabled_local_apics_and_x2apics() {
        let mut madt = [0u8; SDT_HEADER_LEN + MADT_FIELDS_LEN].to_vec();
        madt.extend_from_slice(&[0, 8, 0, 0, 1, 0, 0, 0]); // enabled local APIC
        madt.extend_from_slice(&[0, 8, 1, 1, 0, 0, 0, 0]); // disabled
        madt.extend_from_slice(&[1, 12, 0, 0, 0, 0, 0xC0, 0xFE, 0, 0, 0, 0]); // I/O APIC
        madt.extend_from_slice(&[9, 16, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0]); // x2APIC
        madt.extend_from_slice(&[0, 0]); // a zero length ends the walk
        assert_eq!(madt_processor_count(&madt), 2);
    }

    #[test]
    fn rtc_bytes_are_bcd_unless_binary() {
        assert_eq!(rtc_value(0x59, 0x02), 59);
        assert_eq!(rtc_value(59, 0x06), 59);
    }

    #[test]
    fn periodic_ticks_are_never_early_and_lose_at_most_half() {
        assert!(periodic_ticks_plausible(10, 10 * 1000, 1000));
        assert!(periodic_ticks_plausible(10, 10 * 1000 + 999, 1000));
        assert!(!periodic_ticks_plausible(10, 9 * 1000 + 999, 1000), "the tenth tick came early");
        assert!(periodic_ticks_plausible(10, 20 * 1000, 1000));
        assert!(!periodic_ticks_plausible(10, 21 * 1000, 1000), "more than half lost");
    }
}
