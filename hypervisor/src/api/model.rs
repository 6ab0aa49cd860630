//! The API's resources as Rust types: request bodies (`Deserialize`, unknown fields
//! rejected), responses (`Serialize`), and the validated path and query parameters the
//! router hands to the [`ApiHandler`](super::ApiHandler). Conversions to the VM layer's
//! own types (`VmConfig`, `SlotSpec`, `ImageFormat`) live here so a handler over
//! [`crate::vm::Vm`] is a thin layer.

use super::error::ApiError;
use crate::addr::Gpa;
use crate::loader::{BootProtocol, ImageFormat, LoadPlan};
use crate::memslot::{AsId, SlotFlags, SlotId, SlotSpec};
pub use crate::vm::Action;
use crate::vm::{VmConfig, VmState};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};

/// Longest VM id.
pub const VM_ID_MAX_LEN: usize = 64;

/// A VM's name in the API: 1 to 64 of `[a-zA-Z0-9_-]`, chosen by the user at creation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmId(String);

impl VmId {
    /// Checks `id` against the id rules (400 otherwise).
    pub fn parse(id: &str) -> Result<Self, ApiError> {
        let valid = !id.is_empty()
            && id.len() <= VM_ID_MAX_LEN
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(String::from(id)))
        } else {
            Err(ApiError::BadRequest(format!(
                "invalid VM id: use 1 to {VM_ID_MAX_LEN} characters from [a-zA-Z0-9_-]"
            )))
        }
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How vCPUs 1 and up start (README, "Kernel command line", `aps=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApStart {
    /// Every vCPU at the image's entry, its index in `esi` (Taproot's own guests).
    #[default]
    Entry,
    /// vCPU 0 at the entry; the others wait for INIT-SIPI-SIPI from it, as on a PC (what
    /// an operating system booted through PVH or multiboot expects; a `format=bzimage`
    /// kernel always starts its APs so).
    Sipi,
}

/// `PUT /v1/vms/{id}`: `{"vcpus": 2, "memory_mib": 128}`, optionally `"aps": "sipi"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmCreate {
    pub vcpus: u32,
    pub memory_mib: u64,
    #[serde(default)]
    pub aps: ApStart,
}

impl VmCreate {
    /// The VM layer's configuration; [`VmConfig::validate`] checks the ranges.
    #[must_use]
    pub fn config(&self) -> VmConfig {
        VmConfig {
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            console_bytes: crate::devices::CONSOLE_RING_BYTES,
        }
    }
}

/// A VM's lifecycle state as the API shows it: [`VmState`] without its data (the exit
/// status and crash reason are fields of [`VmInfo`] of their own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmStatus {
    Created,
    Running,
    Paused,
    Stopping,
    Exited,
    Crashed,
    Stopped,
}

impl VmStatus {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            VmStatus::Created => "created",
            VmStatus::Running => "running",
            VmStatus::Paused => "paused",
            VmStatus::Stopping => "stopping",
            VmStatus::Exited => "exited",
            VmStatus::Crashed => "crashed",
            VmStatus::Stopped => "stopped",
        }
    }

    /// No more console output will come (until a `reset`).
    #[must_use]
    pub fn is_final(self) -> bool {
        matches!(self, VmStatus::Exited | VmStatus::Crashed | VmStatus::Stopped)
    }

    #[must_use]
    pub fn of(state: &VmState) -> Self {
        match state {
            VmState::Created => VmStatus::Created,
            VmState::Running => VmStatus::Running,
            VmState::Paused => VmStatus::Paused,
            VmState::Stopping => VmStatus::Stopping,
            VmState::Exited { .. } => VmStatus::Exited,
            VmState::Crashed { .. } => VmStatus::Crashed,
            VmState::Stopped => VmStatus::Stopped,
        }
    }
}

/// `GET /v1/vms/{id}` and the answer of create and action requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    pub id: String,
    pub state: VmStatus,
    /// The guest's exit status, once `exited`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<u32>,
    /// Why the guest crashed, once `crashed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash_reason: Option<String>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub image_loaded: bool,
    pub memslots: Vec<MemslotInfo>,
}

impl VmInfo {
    /// Sets `state`, `exit_status` and `crash_reason` from the VM layer's state.
    pub fn set_state(&mut self, state: &VmState) {
        self.state = VmStatus::of(state);
        self.exit_status = match state {
            VmState::Exited { status } => Some(*status),
            _ => None,
        };
        self.crash_reason = match state {
            VmState::Crashed { reason } => Some(reason.clone()),
            _ => None,
        };
    }
}

/// `GET /v1/vms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmList {
    pub vms: Vec<VmInfo>,
}

/// `PUT /v1/vms/{id}/memslots/{slot}`: a memory slot's placement and flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemslotSpec {
    /// Guest-physical base, a multiple of 4 KiB.
    pub guest_address: u64,
    /// Bytes, a multiple of 4 KiB.
    pub size: u64,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub dirty_log: bool,
    /// 0: the normal address space; 1: the alternate (SMRAM-like) one.
    #[serde(default)]
    pub address_space: u8,
}

impl MemslotSpec {
    /// The address space, or 400 for anything but 0 and 1.
    pub fn as_id(&self) -> Result<AsId, ApiError> {
        match self.address_space {
            0 => Ok(AsId::Normal),
            1 => Ok(AsId::Alternate),
            n => Err(ApiError::BadRequest(format!(
                "address_space must be 0 (normal) or 1 (alternate), not {n}"
            ))),
        }
    }

    /// The MMU's slot request for slot number `slot`.
    pub fn to_slot_spec(&self, slot: u32) -> Result<SlotSpec, ApiError> {
        Ok(SlotSpec {
            id: SlotId(slot),
            as_id: self.as_id()?,
            base: Gpa::new(self.guest_address),
            size: self.size,
            flags: SlotFlags { read_only: self.read_only, dirty_log: self.dirty_log },
        })
    }
}

/// A slot as listed in [`VmInfo`] and answered by a slot `PUT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemslotInfo {
    pub slot: u32,
    pub guest_address: u64,
    pub size: u64,
    pub read_only: bool,
    pub dirty_log: bool,
    pub address_space: u8,
}

impl MemslotInfo {
    #[must_use]
    pub fn new(slot: u32, spec: &MemslotSpec) -> Self {
        Self {
            slot,
            guest_address: spec.guest_address,
            size: spec.size,
            read_only: spec.read_only,
            dirty_log: spec.dirty_log,
            address_space: spec.address_space,
        }
    }

    /// A slot as the MMU holds it (see [`crate::vm::Vm::memslots`]).
    #[must_use]
    pub fn of(spec: &SlotSpec) -> Self {
        Self {
            slot: spec.id.0,
            guest_address: spec.base.raw(),
            size: spec.size,
            read_only: spec.flags.read_only,
            dirty_log: spec.flags.dirty_log,
            address_space: spec.as_id as u8,
        }
    }
}

/// `POST /v1/vms/{id}/actions`: `{"action": "start"}`. What each action does, and in
/// which states, is [`crate::vm::lifecycle`]'s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    pub action: Action,
}

/// `GET /v1/info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HypervisorInfo {
    /// Taproot's version (the crate version).
    pub version: String,
    pub cpus: u32,
    /// `svm`, `vmx`, or `none` (no VM can run).
    pub backend: String,
    /// The backend's features (`npt`, `ept`, `vpid`, ...).
    pub features: Vec<String>,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
    /// Guest memory the VMs' slots cover. It is allocated on first touch, so this may
    /// exceed `memory_free_bytes` (overcommit): a VM that then finds no frame crashes.
    pub memory_assigned_bytes: u64,
    /// The most guest memory all VMs together may be assigned: what the host can back,
    /// times the overcommit ratio ([`crate::vm::commit`]). A create or slot beyond it
    /// answers 503.
    pub memory_commit_limit_bytes: u64,
    /// `overcommit=` from the command line, in percent (100: no overcommit).
    pub overcommit_percent: u32,
    pub vms: u32,
    /// Each CPU's hardware tag numbering (SVM ASIDs, VMX VPIDs); empty without a backend.
    pub cpu_tags: Vec<CpuTagInfo>,
    /// What VMs may ask for ([`crate::vm::limits`]).
    pub limits: VmLimits,
    /// The API server's sockets and what admission did ([`super::admission`]).
    pub connections: ConnectionCounters,
}

/// One CPU's hardware tags: a vCPU takes a tag of the CPU it enters on; when the CPU has
/// handed out every number up to `max_tag`, its generation goes up and its TLB is flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuTagInfo {
    pub cpu: u32,
    /// The largest tag handed out (0: untagged, the TLB is flushed at every entry).
    pub max_tag: u32,
    /// 0 before the first entry on the CPU, then 1 plus the rollovers.
    pub generation: u64,
    /// Flushes of the numbering: one per generation, or one per tag handed out where the
    /// CPU cannot flush every tag at once.
    pub flushes: u64,
}

/// `GET /v1/info` `limits`: the host's limits on VMs, from the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmLimits {
    pub max_vms: u32,
    pub max_vcpus: u32,
    /// Memory slots per VM, slot 0 included.
    pub max_slots: u32,
    pub console_ring_bytes: u64,
}

impl VmLimits {
    #[must_use]
    pub fn of(limits: &crate::vm::limits::HostLimits) -> Self {
        Self {
            max_vms: limits.max_vms,
            max_vcpus: limits.max_vcpus,
            max_slots: limits.max_slots,
            console_ring_bytes: limits.console_ring_bytes as u64,
        }
    }
}

/// `GET /v1/info` `connections`: the API server's sockets now, and counts since boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionCounters {
    /// Sockets on the API port.
    pub sockets_total: u32,
    /// Sockets listening for a new connection.
    pub sockets_listening: u32,
    /// Sockets carrying a connection or closing one (`sockets_total` less the listening).
    pub sockets_in_use: u32,
    /// Unauthenticated connections aborted to keep sockets listening or a peer under its
    /// cap.
    pub connections_evicted: u64,
    /// Connections closed by a deadline: a request or first head too slow, idle too long,
    /// or a socket stuck closing (smoltcp's own timeout on a silent peer is not counted).
    pub deadlines_hit: u64,
}

/// `PUT /v1/vms/{id}/image`: how to read the uploaded bytes (from the query string).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRequest {
    pub format: ImageFormat,
    /// The guest's command line (PVH, multiboot and bzImage; empty for flat binaries).
    pub cmdline: String,
}

/// What a streamed upload is: `PUT /v1/vms/{id}/image` or `PUT /v1/vms/{id}/initrd`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UploadRequest {
    Image(ImageRequest),
    /// The initrd, raw bytes: kept by the VM and placed by its image (`vm::initrd`).
    Initrd,
}

/// The answer to a completed upload: the JSON of the one that was uploaded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Uploaded {
    Image(ImageLoaded),
    Initrd(InitrdLoaded),
}

/// The answer to a completed initrd upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitrdLoaded {
    /// Bytes received.
    pub bytes: u64,
    /// Where the initrd is in guest memory; `null` until an image is loaded, which places it.
    pub guest_address: Option<u64>,
}

/// The answer to `POST /v1/vms/{id}/console`: how many of the body's bytes the guest's
/// UART took, from the first; the client sends the rest again later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleAccepted {
    pub accepted: usize,
}

/// The answer to a completed image upload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageLoaded {
    /// Bytes received.
    pub bytes: u64,
    /// `flat`, `pvh`, `multiboot1` or `linux`.
    pub protocol: String,
    /// Gpa of the first instruction.
    pub entry: u64,
    /// Loadable segments copied into guest memory.
    pub segments: u32,
    /// Where the image placed the VM's initrd, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_address: Option<u64>,
}

impl ImageLoaded {
    #[must_use]
    pub fn from_plan(bytes: u64, plan: &LoadPlan) -> Self {
        let protocol = match plan.protocol {
            BootProtocol::Flat => "flat",
            BootProtocol::Pvh => "pvh",
            BootProtocol::Multiboot1 => "multiboot1",
            BootProtocol::Linux => "linux",
        };
        Self {
            bytes,
            protocol: String::from(protocol),
            entry: plan.entry.mode.entry_gpa().raw(),
            segments: u32::try_from(plan.segments.len()).unwrap_or(u32::MAX),
            initrd_address: None,
        }
    }
}

/// What one console read copied (like [`crate::devices::ConsoleRead`], plus the VM's
/// state, which tells a follower whether more output can come).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsoleRead {
    /// Bytes copied into the caller's buffer.
    pub len: usize,
    /// Bytes between the requested offset and the oldest byte still kept, lost to the
    /// reader.
    pub missed: u64,
    /// Offset to ask for next.
    pub next_offset: u64,
    pub state: VmStatus,
}

impl ConsoleRead {
    /// A console ring's read, with the state of its VM.
    pub fn new(read: crate::devices::ConsoleRead, state: VmStatus) -> Self {
        Self { len: read.len, missed: read.missed, next_offset: read.next_offset, state }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ap_start_defaults_to_the_entry_and_takes_only_its_two_names() {
        let parse = |body: &str| serde_json::from_str::<VmCreate>(body);
        assert_eq!(parse(r#"{"vcpus": 2, "memory_mib": 64}"#).unwrap().aps, ApStart::Entry);
        assert_eq!(parse(r#"{"vcpus": 2, "memory_mib": 64, "aps": "sipi"}"#).unwrap().aps, ApStart::Sipi);
        assert_eq!(parse(r#"{"vcpus": 2, "memory_mib": 64, "aps": "entry"}"#).unwrap().aps, ApStart::Entry);
        assert!(parse(r#"{"vcpus": 2, "memory_mib": 64, "aps": "SIPI"}"#).is_err());
        assert!(parse(r#"{"vcpus": 2, "memory_mib": 64, "aps": 1}"#).is_err());
    }

    #[test]
    fn a_slot_listed_from_the_mmu_reads_as_it_was_asked_for() {
        for (address_space, read_only, dirty_log) in [(0, false, false), (1, true, false), (0, false, true)] {
            let spec = MemslotSpec {
                guest_address: 0x1_0000_0000,
                size: 0x20_0000,
                read_only,
                dirty_log,
                address_space,
            };
            let held = spec.to_slot_spec(7).unwrap();
            assert_eq!(MemslotInfo::of(&held), MemslotInfo::new(7, &spec));
        }
    }
}
