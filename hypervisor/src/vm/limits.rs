//! Host limits on what VMs may ask for, from the command line with defaults:
//! `max_vms=`, `max_vcpus=` (per VM), `max_slots=` (per VM, slot 0 included) and
//! `console_kib=` (each VM's console ring). They bound the heap the control plane can be
//! made to spend: every VM holds its console ring and vCPU state on the heap, every slot a
//! little. `/v1/info` shows them.

use super::MAX_VCPUS;
use crate::devices::CONSOLE_RING_BYTES;
use alloc::format;
use alloc::string::String;

/// The bounds each limit may be set within.
pub const MAX_VMS_RANGE: (u32, u32) = (1, 1024);
pub const MAX_SLOTS_RANGE: (u32, u32) = (1, 512);
pub const CONSOLE_KIB_RANGE: (u32, u32) = (4, 1024);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostLimits {
    /// VMs at once.
    pub max_vms: u32,
    /// vCPUs per VM (at most [`MAX_VCPUS`]).
    pub max_vcpus: u32,
    /// Memory slots per VM, slot 0 (the VM's RAM) included.
    pub max_slots: u32,
    /// Bytes each VM's console ring keeps.
    pub console_ring_bytes: usize,
}

impl Default for HostLimits {
    fn default() -> Self {
        Self { max_vms: 64, max_vcpus: MAX_VCPUS, max_slots: 32, console_ring_bytes: CONSOLE_RING_BYTES }
    }
}

impl HostLimits {
    /// The limits from `value(key)` (the command line's `key=` value); a missing key keeps
    /// its default, a bad value is an error that names the key and its range.
    pub fn from_values<'a>(value: impl Fn(&str) -> Option<&'a str>) -> Result<Self, String> {
        let defaults = Self::default();
        let get = |key: &str, (min, max): (u32, u32), default: u32| -> Result<u32, String> {
            match value(key) {
                None => Ok(default),
                Some(text) => text
                    .parse::<u32>()
                    .ok()
                    .filter(|v| (min..=max).contains(v))
                    .ok_or_else(|| format!("{key}= must be a number from {min} to {max}, not {text:?}")),
            }
        };
        Ok(Self {
            max_vms: get("max_vms", MAX_VMS_RANGE, defaults.max_vms)?,
            max_vcpus: get("max_vcpus", (1, MAX_VCPUS), defaults.max_vcpus)?,
            max_slots: get("max_slots", MAX_SLOTS_RANGE, defaults.max_slots)?,
            console_ring_bytes: get("console_kib", CONSOLE_KIB_RANGE, (CONSOLE_RING_BYTES / 1024) as u32)?
                as usize
                * 1024,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &[(&'static str, &'static str)]) -> Result<HostLimits, String> {
        HostLimits::from_values(|key| line.iter().find(|(k, _)| *k == key).map(|(_, v)| *v))
    }

    #[test]
    fn missing_keys_keep_their_defaults() {
        assert_eq!(parse(&[]), Ok(HostLimits::default()));
        assert_eq!(HostLimits::default().console_ring_bytes, 64 * 1024);
    }

    #[test]
    fn values_are_read_and_bounded() {
        let limits =
            parse(&[("max_vms", "4"), ("max_vcpus", "2"), ("max_slots", "3"), ("console_kib", "16")])
                .unwrap();
        assert_eq!(
            limits,
            HostLimits { max_vms: 4, max_vcpus: 2, max_slots: 3, console_ring_bytes: 16 * 1024 }
        );
        for bad in [("max_vms", "0"), ("max_vcpus", "65"), ("max_slots", "x"), ("console_kib", "2048")] {
            let e = parse(&[bad]).unwrap_err();
            assert!(e.starts_with(bad.0), "{e}");
        }
    }
}
