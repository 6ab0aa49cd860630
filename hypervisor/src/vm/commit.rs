//! Commit accounting for guest memory. Guest frames are allocated on first touch, so
//! nothing stops VMs from being promised more memory than the host has; a VM that then
//! finds no frame crashes. By default the promise is bounded: the memory assigned to all
//! VMs (every slot's size) may not exceed what the host can back, so creating a VM or
//! adding a slot beyond it is refused up front. `overcommit=<ratio>` on the command line
//! (e.g. `overcommit=1.5`) allows that many times more, explicitly.
//!
//! What the host can back: the frames free before the first VM, less a sixteenth kept
//! for what VMs need besides their memory (page tables, VMCBs/VMCSs, device state).

use core::fmt;

/// The largest overcommit ratio accepted, in percent.
pub const MAX_OVERCOMMIT_PERCENT: u32 = 1600;

/// How much guest memory may be assigned in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitLimit {
    /// Bytes the host can back (free frames before the first VM, less the reserve).
    pub backable_bytes: u64,
    /// The overcommit ratio in percent (100: none).
    pub overcommit_percent: u32,
}

/// A commit refused: the figures for the error message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitRefused {
    pub asked_bytes: u64,
    pub assigned_bytes: u64,
    pub limit_bytes: u64,
    pub overcommit_percent: u32,
}

impl fmt::Display for CommitRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} MiB asked, {} MiB already assigned to VMs, the limit is {} MiB (overcommit {}%); \
             delete a VM or a slot, ask for less, or boot with overcommit=<ratio> to promise more \
             memory than the host has (a VM that then finds no frame crashes)",
            self.asked_bytes >> 20,
            self.assigned_bytes >> 20,
            self.limit_bytes >> 20,
            self.overcommit_percent
        )
    }
}

impl CommitLimit {
    /// The limit for a host with `free_bytes` of free frames before any VM, overcommitted
    /// by `overcommit_percent` ([`parse_overcommit`]; 100 for none).
    #[must_use]
    pub fn new(free_bytes: u64, overcommit_percent: u32) -> Self {
        Self { backable_bytes: free_bytes - free_bytes / 16, overcommit_percent }
    }

    /// The most guest memory all VMs together may be assigned.
    #[must_use]
    pub fn limit_bytes(&self) -> u64 {
        let limit = u128::from(self.backable_bytes) * u128::from(self.overcommit_percent) / 100;
        u64::try_from(limit).unwrap_or(u64::MAX)
    }

    /// May `asked_bytes` more be assigned, with `assigned_bytes` assigned already?
    pub fn check(&self, assigned_bytes: u64, asked_bytes: u64) -> Result<(), CommitRefused> {
        let limit_bytes = self.limit_bytes();
        match assigned_bytes.checked_add(asked_bytes) {
            Some(total) if total <= limit_bytes => Ok(()),
            _ => Err(CommitRefused {
                asked_bytes,
                assigned_bytes,
                limit_bytes,
                overcommit_percent: self.overcommit_percent,
            }),
        }
    }
}

/// The `overcommit=` value from the command line, in percent.
pub fn parse_overcommit(text: &str) -> Result<u32, &'static str> {
    parse_percent(text)
        .filter(|p| (100..=MAX_OVERCOMMIT_PERCENT).contains(p))
        .ok_or("overcommit= must be a ratio from 1 to 16 with at most two decimals, e.g. 1.5")
}

/// `1`, `1.5`, `2.25` as percent; `None` for anything else.
fn parse_percent(text: &str) -> Option<u32> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (whole, hundredths) = match text.split_once('.') {
        None => (text, 0),
        Some((whole, fraction)) if digits(fraction) && fraction.len() <= 2 => {
            let scale = if fraction.len() == 1 { 10 } else { 1 };
            (whole, fraction.parse::<u32>().ok()? * scale)
        }
        Some(_) => return None,
    };
    if !digits(whole) {
        return None;
    }
    whole.parse::<u32>().ok()?.checked_mul(100)?.checked_add(hundredths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_parse_as_percent() {
        assert_eq!(parse_percent("1"), Some(100));
        assert_eq!(parse_percent("1.5"), Some(150));
        assert_eq!(parse_percent("2.25"), Some(225));
        assert_eq!(parse_percent("1.05"), Some(105));
        for bad in ["", ".5", "1.", "1.234", "-1", "x", "1e3", "99999999999"] {
            assert_eq!(parse_percent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn without_overcommit_the_limit_is_what_the_host_can_back() {
        let limit = CommitLimit::new(1600 << 20, 100);
        assert_eq!(limit.overcommit_percent, 100);
        assert_eq!(limit.limit_bytes(), 1500 << 20, "a sixteenth is kept back");
        assert_eq!(limit.check(1000 << 20, 500 << 20), Ok(()));
        let refused = limit.check(1000 << 20, 501 << 20).unwrap_err();
        assert_eq!(refused.limit_bytes, 1500 << 20);
        let message = alloc::format!("{refused}");
        assert!(
            message.contains("501 MiB asked, 1000 MiB already assigned") && message.contains("overcommit=")
        );
        assert!(limit.check(u64::MAX, 1).is_err(), "no overflow");
    }

    #[test]
    fn overcommit_allows_more_within_bounds() {
        let limit = CommitLimit::new(1600 << 20, parse_overcommit("2").unwrap());
        assert_eq!(limit.limit_bytes(), 3000 << 20);
        assert!(parse_overcommit("0.5").is_err(), "less than 1 is no overcommit");
        assert!(parse_overcommit("17").is_err());
        assert_eq!(parse_overcommit("16"), Ok(1600));
    }
}
