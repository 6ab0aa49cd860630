//! An in-memory [`ApiHandler`] with the real lifecycle rules (it asks
//! [`crate::vm::lifecycle`], as the image's registry does), for tests and for trying the
//! API without hardware. Images are validated by the real loader
//! ([`crate::loader::plan`]); consoles are real [`ConsoleRing`]s. Every call is recorded
//! in [`MockHypervisor::calls`], so a test can check, for example, that an aborted upload
//! reached [`ApiHandler::abort_image`].

use super::error::ApiError;
use super::handler::ApiHandler;
use super::model::{
    Action, ConnectionCounters, ConsoleAccepted, ConsoleRead, CpuTagInfo, HypervisorInfo, ImageLoaded,
    InitrdLoaded, MemslotInfo, MemslotSpec, UploadRequest, Uploaded, VmCreate, VmId, VmInfo, VmLimits,
    VmStatus,
};
use crate::devices::ConsoleRing;
use crate::loader::{self, GuestConfig, LoadError, LoadPlan};
use crate::vm::{ExitStats, RAM_SLOT, VmState, VmStats, lifecycle};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use hashbrown::HashMap;

/// One mock VM.
pub struct MockVm {
    pub config: VmCreate,
    pub state: VmState,
    pub slots: BTreeMap<u32, MemslotSpec>,
    /// The loaded image's bytes (as a stand-in for guest memory).
    pub image: Option<Vec<u8>>,
    /// The image's plan, which places the initrd, and the initrd, as `vm::Vm` keeps them.
    pub plan: Option<LoadPlan>,
    pub initrd: Option<Vec<u8>>,
    pub console: ConsoleRing,
    /// Bytes typed at the console that the guest has not read yet (at most
    /// [`MOCK_CONSOLE_FIFO`], as the UART's receive FIFO).
    pub console_input: Vec<u8>,
    /// An upload is in flight.
    pub is_uploading: bool,
}

/// Bytes a mock VM's console input holds before it refuses more (the 16550's FIFO).
pub const MOCK_CONSOLE_FIFO: usize = 16;

/// The in-memory hypervisor.
pub struct MockHypervisor {
    pub vms: HashMap<VmId, MockVm>,
    /// Memory left for new VMs (503 beyond).
    pub free_memory_mib: u64,
    pub total_memory_mib: u64,
    /// Console capacity of new VMs.
    pub console_bytes: usize,
    /// Test hook: an image chunk at or beyond this upload offset fails with 503.
    pub fail_chunk_at: Option<u64>,
    /// Every handler call, as `"name id ..."`.
    pub calls: Vec<String>,
}

/// An upload in flight: the bytes so far.
pub struct MockUpload {
    vm: VmId,
    request: UploadRequest,
    bytes: Vec<u8>,
}

impl Default for MockHypervisor {
    fn default() -> Self {
        Self::new(1024)
    }
}

impl MockHypervisor {
    /// A hypervisor with `memory_mib` for its VMs.
    #[must_use]
    pub fn new(memory_mib: u64) -> Self {
        Self {
            vms: HashMap::new(),
            free_memory_mib: memory_mib,
            total_memory_mib: memory_mib,
            console_bytes: 4096,
            fail_chunk_at: None,
            calls: Vec::new(),
        }
    }

    /// The guest of VM `id` writes `bytes` to its console.
    pub fn write_console(&mut self, id: &str, bytes: &[u8]) {
        if let Some(vm) = VmId::parse(id).ok().and_then(|id| self.vms.get_mut(&id)) {
            vm.console.push(bytes);
        }
    }

    /// The guest of VM `id` reads everything typed at its console so far.
    pub fn read_console_input(&mut self, id: &str) -> Vec<u8> {
        let vm = VmId::parse(id).ok().and_then(|id| self.vms.get_mut(&id));
        vm.map(|vm| core::mem::take(&mut vm.console_input)).unwrap_or_default()
    }

    /// The guest of VM `id` exits with `status` (a running or paused VM only).
    pub fn guest_exits(&mut self, id: &str, status: u32) {
        if let Some(vm) = VmId::parse(id).ok().and_then(|id| self.vms.get_mut(&id))
            && matches!(vm.state, VmState::Running | VmState::Paused)
        {
            vm.state = VmState::Exited { status };
        }
    }

    fn get(&self, id: &VmId) -> Result<&MockVm, ApiError> {
        self.vms.get(id).ok_or_else(|| ApiError::unknown_vm(id.as_str()))
    }

    fn get_mut(&mut self, id: &VmId) -> Result<&mut MockVm, ApiError> {
        self.vms.get_mut(id).ok_or_else(|| ApiError::unknown_vm(id.as_str()))
    }

    fn info_of(id: &VmId, vm: &MockVm) -> VmInfo {
        let mut info = VmInfo {
            id: id.to_string(),
            state: VmStatus::Created,
            exit_status: None,
            crash_reason: None,
            vcpus: vm.config.vcpus,
            memory_mib: vm.config.memory_mib,
            image_loaded: vm.image.is_some(),
            memslots: vm.slots.iter().map(|(slot, spec)| MemslotInfo::new(*slot, spec)).collect(),
        };
        info.set_state(&vm.state);
        info
    }

    fn record(&mut self, call: String) {
        self.calls.push(call);
    }
}

impl ApiHandler for MockHypervisor {
    type Upload = MockUpload;

    fn info(&mut self) -> Result<HypervisorInfo, ApiError> {
        self.record("info".into());
        Ok(HypervisorInfo {
            version: String::from(env!("CARGO_PKG_VERSION")),
            cpus: 2,
            backend: "mock".into(),
            features: alloc::vec!["npt".into()],
            memory_total_bytes: self.total_memory_mib << 20,
            memory_free_bytes: self.free_memory_mib << 20,
            memory_assigned_bytes: self.vms.values().flat_map(|vm| vm.slots.values()).map(|s| s.size).sum(),
            memory_commit_limit_bytes: self.total_memory_mib << 20,
            overcommit_percent: 100,
            limits: VmLimits::of(&crate::vm::limits::HostLimits::default()),
            vms: u32::try_from(self.vms.len()).unwrap_or(u32::MAX),
            cpu_tags: alloc::vec![CpuTagInfo { cpu: 0, max_tag: 15, generation: 1, flushes: 1 }],
            connections: ConnectionCounters::default(),
        })
    }

    fn create_vm(&mut self, id: &VmId, config: &VmCreate) -> Result<VmInfo, ApiError> {
        self.record(format!("create_vm {id}"));
        if self.vms.contains_key(id) {
            return Err(ApiError::Conflict(format!(
                "a VM with id `{id}` exists; delete it first or choose another id"
            )));
        }
        config.config().validate()?;
        if config.memory_mib > self.free_memory_mib {
            return Err(ApiError::Unavailable(format!(
                "out of memory: {} MiB asked, {} MiB free; delete a VM or ask for less",
                config.memory_mib, self.free_memory_mib
            )));
        }
        self.free_memory_mib -= config.memory_mib;
        let ram = MemslotSpec {
            guest_address: 0,
            size: config.memory_mib << 20,
            read_only: false,
            dirty_log: false,
            address_space: 0,
        };
        let vm = MockVm {
            config: *config,
            state: VmState::Created,
            slots: BTreeMap::from([(RAM_SLOT.0, ram)]),
            image: None,
            plan: None,
            initrd: None,
            console: ConsoleRing::new(self.console_bytes),
            console_input: Vec::new(),
            is_uploading: false,
        };
        let info = Self::info_of(id, &vm);
        self.vms.insert(id.clone(), vm);
        Ok(info)
    }

    fn vm(&mut self, id: &VmId) -> Result<VmInfo, ApiError> {
        self.record(format!("vm {id}"));
        Ok(Self::info_of(id, self.get(id)?))
    }

    fn list_vms(&mut self) -> Result<Vec<VmInfo>, ApiError> {
        self.record("list_vms".into());
        let mut vms: Vec<_> = self.vms.iter().collect();
        vms.sort_unstable_by(|a, b| a.0.cmp(b.0));
        Ok(vms.into_iter().map(|(id, vm)| Self::info_of(id, vm)).collect())
    }

    fn delete_vm(&mut self, id: &VmId) -> Result<(), ApiError> {
        self.record(format!("delete_vm {id}"));
        let vm = self.get(id)?;
        if vm.is_uploading {
            return Err(ApiError::Conflict(
                "an image upload to this VM is in progress; retry after it ends".into(),
            ));
        }
        let memory = vm.config.memory_mib;
        self.vms.remove(id);
        self.free_memory_mib += memory;
        Ok(())
    }

    fn put_memslot(&mut self, id: &VmId, slot: u32, spec: &MemslotSpec) -> Result<MemslotInfo, ApiError> {
        self.record(format!("put_memslot {id} {slot}"));
        let vm = self.get_mut(id)?;
        lifecycle::check_slot_change(&vm.state, "add a memory slot to")?;
        if spec.size == 0 || !spec.size.is_multiple_of(4096) || !spec.guest_address.is_multiple_of(4096) {
            return Err(crate::memslot::SlotError::Misaligned.into());
        }
        let end =
            spec.guest_address.checked_add(spec.size).ok_or(crate::memslot::SlotError::BeyondAddressWidth)?;
        if vm.slots.contains_key(&slot) {
            return Err(crate::memslot::SlotError::DuplicateId.into());
        }
        for (other, o) in &vm.slots {
            if o.address_space == spec.address_space
                && spec.guest_address < o.guest_address + o.size
                && o.guest_address < end
            {
                return Err(
                    crate::memslot::SlotError::Overlap { with: crate::memslot::SlotId(*other) }.into()
                );
            }
        }
        vm.slots.insert(slot, *spec);
        Ok(MemslotInfo::new(slot, spec))
    }

    fn delete_memslot(&mut self, id: &VmId, slot: u32) -> Result<(), ApiError> {
        self.record(format!("delete_memslot {id} {slot}"));
        let vm = self.get_mut(id)?;
        lifecycle::check_slot_change(&vm.state, "delete a memory slot of")?;
        vm.slots.remove(&slot).map(|_| ()).ok_or_else(|| ApiError::unknown_slot(id.as_str(), slot))
    }

    fn begin_image(
        &mut self,
        id: &VmId,
        request: &UploadRequest,
        total_len: u64,
    ) -> Result<MockUpload, ApiError> {
        self.record(format!("begin_image {id} {total_len}"));
        let vm = self.get_mut(id)?;
        lifecycle::check_image_load(&vm.state)?;
        if vm.is_uploading {
            return Err(ApiError::Conflict(
                "another image upload to this VM is in progress; wait for it".into(),
            ));
        }
        let memory = vm.config.memory_mib << 20;
        if total_len > memory {
            return Err(ApiError::PayloadTooLarge(format!(
                "the image is {total_len} bytes, larger than the VM's memory ({memory} bytes)"
            )));
        }
        if matches!(request, UploadRequest::Image(_)) {
            // As `vm::Vm::begin_staging`: the upload streams over guest memory, so the VM
            // has no image from now on until it loads.
            vm.image = None;
            vm.plan = None;
        }
        vm.is_uploading = true;
        Ok(MockUpload { vm: id.clone(), request: request.clone(), bytes: Vec::new() })
    }

    fn image_chunk(&mut self, upload: &mut MockUpload, offset: u64, bytes: &[u8]) -> Result<(), ApiError> {
        self.record(format!("image_chunk {} {offset} {}", upload.vm, bytes.len()));
        if offset != upload.bytes.len() as u64 {
            return Err(ApiError::Internal(format!("chunk at {offset}, expected {}", upload.bytes.len())));
        }
        if self.fail_chunk_at.is_some_and(|at| offset + bytes.len() as u64 > at) {
            return Err(ApiError::Unavailable("out of memory while loading the image; retry later".into()));
        }
        upload.bytes.extend_from_slice(bytes);
        Ok(())
    }

    fn finish_image(&mut self, upload: MockUpload) -> Result<Uploaded, ApiError> {
        self.record(format!("finish_image {}", upload.vm));
        let vm = self.get_mut(&upload.vm)?;
        vm.is_uploading = false;
        let bytes = upload.bytes.len() as u64;
        let initrd_error = |e: LoadError| ApiError::BadImage(format!("initrd: {e}"));
        let UploadRequest::Image(request) = upload.request else {
            let guest_address = match &vm.plan {
                Some(plan) => Some(plan.clone().place_initrd(bytes).map_err(initrd_error)?.raw()),
                None if bytes == 0 => return Err(initrd_error(LoadError::InitrdEmpty)),
                None => None,
            };
            vm.initrd = Some(upload.bytes);
            return Ok(Uploaded::Initrd(InitrdLoaded { bytes, guest_address }));
        };
        let config =
            GuestConfig { mem_size: vm.config.memory_mib << 20, cmdline: &request.cmdline, rsdp: None };
        let mut plan = loader::plan(&upload.bytes, request.format, &config)?;
        let mut loaded = ImageLoaded::from_plan(bytes, &plan);
        if let Some(initrd) = &vm.initrd {
            loaded.initrd_address = Some(plan.place_initrd(initrd.len() as u64).map_err(initrd_error)?.raw());
        }
        vm.image = Some(upload.bytes);
        vm.plan = Some(plan);
        Ok(Uploaded::Image(loaded))
    }

    fn abort_image(&mut self, upload: MockUpload) {
        self.record(format!("abort_image {}", upload.vm));
        if let Some(vm) = self.vms.get_mut(&upload.vm) {
            vm.is_uploading = false;
        }
    }

    fn action(&mut self, id: &VmId, action: Action) -> Result<VmInfo, ApiError> {
        self.record(format!("action {id} {}", action.name()));
        let vm = self.get_mut(id)?;
        if vm.is_uploading {
            return Err(ApiError::Conflict("an image upload to this VM is in progress; wait for it".into()));
        }
        vm.state = lifecycle::transition(&vm.state, action, vm.image.is_some())?;
        let info = Self::info_of(id, vm);
        // The mock has no vCPUs to wait for: a stop answers `stopping`, as the image's
        // does, and every later request sees the VM `stopped`.
        if let Some(next) = lifecycle::vcpus_left(&vm.state).filter(|_| vm.state == VmState::Stopping) {
            vm.state = next;
        }
        Ok(info)
    }

    fn read_console(&mut self, id: &VmId, offset: u64, out: &mut [u8]) -> Result<ConsoleRead, ApiError> {
        let vm = self.get(id)?;
        Ok(ConsoleRead::new(vm.console.read(offset, out), VmStatus::of(&vm.state)))
    }

    fn console_input(&mut self, id: &VmId, bytes: &[u8]) -> Result<ConsoleAccepted, ApiError> {
        self.record(format!("console_input {id} {}", bytes.len()));
        let vm = self.get_mut(id)?;
        lifecycle::check_console_input(&vm.state)?;
        let accepted = MOCK_CONSOLE_FIFO.saturating_sub(vm.console_input.len()).min(bytes.len());
        vm.console_input.extend_from_slice(&bytes[..accepted]);
        Ok(ConsoleAccepted { accepted })
    }

    /// Zeros but for the I/O exits: one per console byte, as a guest writing its serial
    /// port takes.
    fn stats(&mut self, id: &VmId) -> Result<VmStats, ApiError> {
        self.record(format!("stats {id}"));
        let vm = self.get(id)?;
        let exits = ExitStats { io: vm.console.end_offset(), ..ExitStats::default() };
        Ok(VmStats { exits, ..VmStats::default() })
    }
}
