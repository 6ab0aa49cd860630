//! The VM registry behind the control plane: [`ApiHandler`] over [`Vm`]. The lifecycle
//! rules are [`lifecycle`]'s and the memory slots the MMU's: the registry keeps neither,
//! only which VM has which id and which uploads are in flight.
//!
//! Every call returns promptly (the API server polls the network between calls). `stop`
//! answers with the VM `stopping`; `delete` takes the VM out of the registry at once and
//! leaves it in `retiring` until its vCPUs have left their loops, when [`Manager::reap`]
//! (called by the server at every poll) destroys it. Only `reset` of a running VM waits
//! for its vCPUs, at most a host timer period per vCPU (running them itself when they
//! share its CPU), and gives up with 409 after [`STOP_TIMEOUT_NS`].

use super::sched;
use alloc::boxed::Box;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use hashbrown::HashMap;
use hypervisor::api::ApiError;
use hypervisor::api::ApiHandler;
use hypervisor::api::model::{
    ApStart, ConnectionCounters, ConsoleAccepted, ConsoleRead, CpuTagInfo, HypervisorInfo, ImageLoaded,
    InitrdLoaded, MemslotInfo, MemslotSpec, UploadRequest, Uploaded, VmCreate, VmId, VmInfo, VmLimits,
    VmStatus,
};
use hypervisor::backend::Backend;
use hypervisor::memslot::SlotId;
use hypervisor::vm::commit::CommitLimit;
use hypervisor::vm::limits::HostLimits;
use hypervisor::vm::{
    Action, STAGING_LOWEST, StagedImage, VcpuRunner, Vm, VmConfig, VmError, VmStats, lifecycle,
};

/// How long a reset waits for vCPUs to leave their loops.
const STOP_TIMEOUT_NS: u64 = 2_000_000_000;

struct Entry<B: Backend> {
    vm: Arc<Vm<B>>,
    uploading: bool,
}

/// An upload in flight.
pub struct Upload {
    id: VmId,
    request: UploadRequest,
    body: UploadBody,
    /// Bytes received so far.
    received: u64,
    /// What it holds of the upload budget (an initrd's Content-Length; 0 for an image).
    reserved: u64,
}

/// Where an upload's bytes go as they arrive.
enum UploadBody {
    /// An image streams into the VM's own memory ([`hypervisor::vm::StagedImage`]): the
    /// heap it takes is bounded whatever its size.
    Staged(StagedImage),
    /// An initrd is kept on the heap: the VM places it again whenever a new image moves it.
    /// So is an image for a VM too small to stage one (at most [`STAGING_LOWEST`] bytes).
    Heap(Vec<u8>),
}

/// Initrds are held whole on the heap (the VM keeps one to place it again under a new
/// image), and the heap is an eighth of RAM. A heap allocation that fails ends the
/// hypervisor, so initrd uploads in flight together may hold at most this share of it,
/// reserved up front from their Content-Length: the network stack and everything else keep
/// the rest. Images stream into guest memory and hold none of it.
fn upload_budget() -> u64 {
    libos::mm::heap::total_bytes() / 2
}

/// What a VM costs the heap besides its console ring, estimated from above: its device
/// models, its event log once full ([`hypervisor::devices::EVENT_LOG_LEN`] notes), the MMU
/// and backend bookkeeping.
const VM_HEAP_BYTES: u64 = 256 * 1024;
/// What each vCPU costs the heap once started: its runner, MMU view, MSRs and local APIC.
const VCPU_HEAP_BYTES: u64 = 16 * 1024;
/// A slot's bookkeeping per 4 KiB page at most: one backing word per chunk (chunks are
/// 4 KiB at worst) and a dirty bit.
const SLOT_HEAP_BYTES_PER_PAGE: u64 = 8 + 1;

/// Heap kept free whatever VMs and uploads ask for: the network stack, the API's
/// connections (README, "Heap budget") and everything else the hypervisor allocates
/// without asking live in it.
fn heap_reserve() -> u64 {
    libos::mm::heap::total_bytes() / 4
}

/// Refuses (503) work whose heap cost, `need` bytes estimated from above, would leave the
/// heap below [`heap_reserve`]: every allocation a request makes is checked here first, or
/// is fallible itself, so no request can make the hypervisor run out of heap.
fn heap_room(need: u64, what: &str) -> Result<(), ApiError> {
    let free = libos::mm::heap::free_bytes();
    let reserve = heap_reserve();
    if free.saturating_sub(reserve) >= need {
        return Ok(());
    }
    Err(ApiError::Unavailable(format!(
        "{what} needs up to {need} bytes of the hypervisor's heap, which has {free} free of which {reserve} \
         stay for the network and the API; delete a VM or a slot, or retry when uploads are done"
    )))
}

/// Reserves the heap for an initrd of `total_len` bytes, within the upload budget of which
/// `in_flight` bytes are held.
fn heap_upload(total_len: u64, budget: u64, in_flight: u64) -> Result<Vec<u8>, ApiError> {
    if total_len > budget {
        return Err(ApiError::PayloadTooLarge(format!(
            "the initrd is {total_len} bytes; this host holds at most {budget} bytes of initrd uploads \
             (half its heap, which is an eighth of its RAM): give it more memory or upload less"
        )));
    }
    if in_flight + total_len > budget {
        return Err(ApiError::Unavailable(format!(
            "other uploads in flight hold {in_flight} of the {budget} bytes this host stages; \
             retry when they are done"
        )));
    }
    heap_room(total_len, "the upload")?;
    let mut bytes = Vec::new();
    if bytes.try_reserve_exact(usize::try_from(total_len).unwrap_or(usize::MAX)).is_err() {
        return Err(ApiError::Unavailable(format!(
            "no room on the heap for a {total_len}-byte initrd now; retry later"
        )));
    }
    Ok(bytes)
}

pub struct Manager<B: Backend> {
    /// By id: every request looks its VM up here (a `hashbrown` map: no ordering is needed
    /// but the listing's, which sorts).
    vms: HashMap<String, Entry<B>>,
    /// Deleted VMs whose vCPUs are still leaving their loops: their memory is still
    /// assigned until [`Manager::reap`] destroys them.
    retiring: Vec<Arc<Vm<B>>>,
    next_vm_number: u32,
    next_cpu: usize,
    /// Why VMs cannot run here, if they cannot (no VMX/SVM, or turning it on failed).
    virt: Result<(), String>,
    /// Bytes reserved by uploads in flight (see [`upload_budget`]).
    uploading_bytes: u64,
    /// How much guest memory all VMs may be assigned ([`hypervisor::vm::commit`]).
    commit: CommitLimit,
    /// What VMs may ask for ([`hypervisor::vm::limits`]).
    limits: HostLimits,
    /// The API server's socket counters, which it updates as it polls (`/v1/info` shows
    /// them).
    pub connections: ConnectionCounters,
}

impl<B: Backend> Manager<B> {
    pub fn new(virt: Result<(), String>, commit: CommitLimit, limits: HostLimits) -> Self {
        Self {
            vms: HashMap::new(),
            retiring: Vec::new(),
            next_vm_number: 1,
            next_cpu: 0,
            virt,
            uploading_bytes: 0,
            commit,
            limits,
            connections: ConnectionCounters::default(),
        }
    }

    /// Guest memory the VMs' slots cover, deleted VMs not yet destroyed included.
    fn assigned_bytes(&self) -> u64 {
        let vms = self.vms.values().map(|e| &e.vm).chain(&self.retiring);
        vms.flat_map(|vm| vm.memslots()).map(|s| s.size).sum()
    }

    /// Destroys the deleted VMs whose vCPUs have all left their loops (no scheduler queue
    /// holds them any more), returning their memory to the host.
    pub fn reap(&mut self) {
        let mut index = 0;
        while index < self.retiring.len() {
            let vm = &self.retiring[index];
            if vm.running_vcpus() > 0 || Arc::strong_count(vm) > 1 {
                index += 1;
                continue;
            }
            match Arc::try_unwrap(self.retiring.swap_remove(index)) {
                Ok(vm) => vm.destroy(),
                // Referenced again since the look (cannot happen: only the registry adds
                // references); it stays for the next round.
                Err(vm) => {
                    self.retiring.push(vm);
                    index += 1;
                }
            }
        }
    }

    /// Refuses (503, with the figures) `asked` more bytes of guest memory beyond the
    /// commit limit.
    fn commit(&self, asked: u64) -> Result<(), ApiError> {
        self.commit.check(self.assigned_bytes(), asked).map_err(|e| ApiError::Unavailable(e.to_string()))
    }

    fn entry(&self, id: &VmId) -> Result<&Entry<B>, ApiError> {
        self.vms.get(id.as_str()).ok_or_else(|| not_found(id))
    }

    fn entry_mut(&mut self, id: &VmId) -> Result<&mut Entry<B>, ApiError> {
        self.vms.get_mut(id.as_str()).ok_or_else(|| not_found(id))
    }

    fn info_of(id: &str, entry: &Entry<B>) -> VmInfo {
        let mut info = VmInfo {
            id: id.to_string(),
            state: VmStatus::Created,
            exit_status: None,
            crash_reason: None,
            vcpus: entry.vm.config.vcpus,
            memory_mib: entry.vm.config.memory_mib,
            image_loaded: entry.vm.has_image(),
            memslots: entry.vm.memslots().iter().map(MemslotInfo::of).collect(),
        };
        info.set_state(&entry.vm.state());
        info
    }

    /// Stops `vm` and waits until no vCPU runs it and no scheduler queue holds it: until
    /// only the `held` references of the registry and the caller remain. Where vCPUs share
    /// this CPU, it runs them a tick at a time meanwhile, so that they can leave.
    fn stop_and_wait(vm: &Arc<Vm<B>>, held: usize) -> Result<(), ApiError> {
        // Refused unless the VM is running or paused; in any other state no vCPU enters it.
        let _ = vm.stop();
        let deadline = libos::time::now_ns().saturating_add(STOP_TIMEOUT_NS);
        let busy = || vm.running_vcpus() > 0 || Arc::strong_count(vm) > held;
        let run_here = sched::runs_vcpus_here();
        while busy() && libos::time::now_ns() < deadline {
            if run_here {
                sched::run_one_tick();
            } else {
                core::hint::spin_loop();
            }
        }
        if busy() {
            return Err(ApiError::Conflict("the VM's vCPUs are still stopping; retry in a moment".into()));
        }
        Ok(())
    }
}

fn not_found(id: &VmId) -> ApiError {
    ApiError::NotFound(format!("no VM {id}; GET /v1/vms lists them"))
}

impl<B: Backend> ApiHandler for Manager<B> {
    type Upload = Upload;

    fn info(&mut self) -> Result<HypervisorInfo, ApiError> {
        let backend = hypervisor::backend::choice::choose();
        let features = backend.caps().features;
        Ok(HypervisorInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            cpus: libos::smp::cpu_count() as u32,
            backend: backend.name().into(),
            features: features.split(',').filter(|f| *f != "-").map(String::from).collect(),
            memory_total_bytes: libos::mm::frame::total_bytes(),
            memory_free_bytes: libos::mm::frame::free_bytes(),
            memory_assigned_bytes: self.assigned_bytes(),
            memory_commit_limit_bytes: self.commit.limit_bytes(),
            overcommit_percent: self.commit.overcommit_percent,
            vms: self.vms.len() as u32,
            cpu_tags: if self.virt.is_ok() {
                B::tag_stats()
                    .into_iter()
                    .map(|t| CpuTagInfo {
                        cpu: t.cpu,
                        max_tag: t.max_tag,
                        generation: t.generation,
                        flushes: t.flushes,
                    })
                    .collect()
            } else {
                Vec::new()
            },
            limits: VmLimits::of(&self.limits),
            connections: self.connections,
        })
    }

    fn create_vm(&mut self, id: &VmId, config: &VmCreate) -> Result<VmInfo, ApiError> {
        let aps_wait_for_sipi = config.aps == ApStart::Sipi;
        if let Err(e) = &self.virt {
            return Err(ApiError::Unavailable(format!("{e}: no VM can run")));
        }
        if self.vms.contains_key(id.as_str()) {
            return Err(ApiError::Conflict(format!("VM {id} exists; DELETE it first or choose another id")));
        }
        let limits = self.limits;
        if self.vms.len() >= limits.max_vms as usize {
            return Err(ApiError::Unavailable(format!(
                "this host runs at most {} VMs (max_vms= on its command line); delete one first",
                limits.max_vms
            )));
        }
        if config.vcpus > limits.max_vcpus {
            return Err(ApiError::BadRequest(format!(
                "vcpus must be 1 to {} on this host (max_vcpus= on its command line), not {}",
                limits.max_vcpus, config.vcpus
            )));
        }
        let config = VmConfig { console_bytes: limits.console_ring_bytes, ..config.config() };
        config.validate()?;
        let vcpus = u64::from(config.vcpus);
        heap_room(config.console_bytes as u64 + VM_HEAP_BYTES + vcpus * VCPU_HEAP_BYTES, "a VM")?;
        if self.vms.try_reserve(1).is_err() {
            return Err(ApiError::Unavailable("no room on the heap for another VM now; retry later".into()));
        }
        let free = libos::mm::frame::free_bytes();
        if config.memory_mib << 20 > free {
            return Err(ApiError::Unavailable(format!(
                "{} MiB asked, {} MiB free; delete a VM or ask for less",
                config.memory_mib,
                free >> 20
            )));
        }
        self.commit(config.memory_mib << 20)?;
        let vm = Vm::<B>::create(
            self.next_vm_number,
            config,
            libos::time::now_ns,
            libos::time::unix_seconds_now(),
        )?;
        vm.set_aps_wait_for_sipi(aps_wait_for_sipi);
        self.next_vm_number = self.next_vm_number.wrapping_add(1);
        let entry = Entry { vm, uploading: false };
        let info = Self::info_of(id.as_str(), &entry);
        self.vms.insert(id.as_str().into(), entry);
        Ok(info)
    }

    fn vm(&mut self, id: &VmId) -> Result<VmInfo, ApiError> {
        Ok(Self::info_of(id.as_str(), self.entry(id)?))
    }

    fn list_vms(&mut self) -> Result<Vec<VmInfo>, ApiError> {
        let mut vms: Vec<_> = self.vms.iter().collect();
        vms.sort_unstable_by(|a, b| a.0.cmp(b.0));
        Ok(vms.into_iter().map(|(id, entry)| Self::info_of(id, entry)).collect())
    }

    fn delete_vm(&mut self, id: &VmId) -> Result<(), ApiError> {
        let entry = self.entry(id)?;
        if entry.uploading {
            return Err(ApiError::Conflict("an image upload to this VM is in progress; wait for it".into()));
        }
        if self.retiring.try_reserve(1).is_err() {
            return Err(ApiError::Unavailable("no room on the heap to delete a VM now; retry later".into()));
        }
        let entry = self.vms.remove(id.as_str()).ok_or_else(|| not_found(id))?;
        // Refused unless it runs or is paused; otherwise no vCPU enters it again.
        let _ = entry.vm.stop();
        self.retiring.push(entry.vm);
        self.reap();
        Ok(())
    }

    fn put_memslot(&mut self, id: &VmId, slot: u32, spec: &MemslotSpec) -> Result<MemslotInfo, ApiError> {
        let entry = self.entry(id)?;
        lifecycle::check_slot_change(&entry.vm.state(), "add a memory slot to")?;
        if entry.vm.memslots().iter().any(|s| s.id == SlotId(slot)) {
            return Err(ApiError::Conflict(format!("slot {slot} exists; DELETE it first")));
        }
        let max_slots = self.limits.max_slots;
        if entry.vm.memslots().len() >= max_slots as usize {
            return Err(ApiError::Unavailable(format!(
                "a VM has at most {max_slots} memory slots on this host (max_slots= on its command \
                 line); delete one first"
            )));
        }
        let slot_spec = spec.to_slot_spec(slot)?;
        heap_room((spec.size / 4096).saturating_mul(SLOT_HEAP_BYTES_PER_PAGE), "the slot")?;
        self.commit(spec.size)?;
        entry.vm.mmu.add_slot(slot_spec)?;
        Ok(MemslotInfo::new(slot, spec))
    }

    fn delete_memslot(&mut self, id: &VmId, slot: u32) -> Result<(), ApiError> {
        let vm = &self.entry(id)?.vm;
        lifecycle::check_slot_change(&vm.state(), "delete a memory slot of")?;
        vm.mmu.delete_slot(SlotId(slot))?;
        Ok(())
    }

    fn begin_image(
        &mut self,
        id: &VmId,
        request: &UploadRequest,
        total_len: u64,
    ) -> Result<Upload, ApiError> {
        let budget = upload_budget();
        let in_flight = self.uploading_bytes;
        let entry = self.entry_mut(id)?;
        if entry.uploading {
            return Err(ApiError::Conflict("another image upload to this VM is in progress".into()));
        }
        lifecycle::check_image_load(&entry.vm.state())?;
        if total_len > entry.vm.memory_bytes() {
            return Err(ApiError::PayloadTooLarge(format!(
                "the image is {total_len} bytes, the VM has {} MiB of memory",
                entry.vm.config.memory_mib
            )));
        }
        let (body, reserved) = match request {
            UploadRequest::Image(_) => match entry.vm.begin_staging(total_len) {
                Ok(staged) => (UploadBody::Staged(staged), 0),
                // A VM whose RAM ends below the staging floor (a real-mode guest in 1 MiB)
                // cannot stage; its image is no larger than its RAM, under the floor, and
                // is held on the heap within the upload budget, as every image once was.
                Err(VmError::TooLarge(_)) if total_len <= STAGING_LOWEST => {
                    (UploadBody::Heap(heap_upload(total_len, budget, in_flight)?), total_len)
                }
                Err(e) => return Err(e.into()),
            },
            UploadRequest::Initrd => {
                (UploadBody::Heap(heap_upload(total_len, budget, in_flight)?), total_len)
            }
        };
        entry.uploading = true;
        self.uploading_bytes += reserved;
        Ok(Upload { id: id.clone(), request: request.clone(), body, received: 0, reserved })
    }

    fn image_chunk(&mut self, upload: &mut Upload, offset: u64, bytes: &[u8]) -> Result<(), ApiError> {
        if offset != upload.received {
            return Err(ApiError::Internal(format!("image chunk at {offset}, expected {}", upload.received)));
        }
        match &mut upload.body {
            UploadBody::Staged(staged) => self.entry(&upload.id)?.vm.stage_chunk(staged, offset, bytes)?,
            UploadBody::Heap(held) => {
                if held.len() as u64 + bytes.len() as u64 > upload.reserved {
                    // The connection enforces Content-Length; growing past the reservation
                    // would allocate on the heap unchecked.
                    return Err(ApiError::Internal("image chunk beyond the announced length".into()));
                }
                held.extend_from_slice(bytes);
            }
        }
        upload.received += bytes.len() as u64;
        Ok(())
    }

    fn finish_image(&mut self, upload: Upload) -> Result<Uploaded, ApiError> {
        self.uploading_bytes -= upload.reserved;
        let entry = self.entry_mut(&upload.id)?;
        entry.uploading = false;
        let bytes = upload.received;
        match (upload.request, upload.body) {
            (UploadRequest::Image(request), UploadBody::Staged(staged)) => {
                let plan = entry.vm.load_staged(&staged, request.format, &request.cmdline)?;
                let mut loaded = ImageLoaded::from_plan(bytes, &plan);
                loaded.initrd_address = entry.vm.initrd_gpa().map(|gpa| gpa.raw());
                Ok(Uploaded::Image(loaded))
            }
            (UploadRequest::Image(request), UploadBody::Heap(image)) => {
                let plan = entry.vm.load_image(&image, request.format, &request.cmdline)?;
                let mut loaded = ImageLoaded::from_plan(bytes, &plan);
                loaded.initrd_address = entry.vm.initrd_gpa().map(|gpa| gpa.raw());
                Ok(Uploaded::Image(loaded))
            }
            (UploadRequest::Initrd, UploadBody::Heap(initrd)) => {
                let placed = entry.vm.set_initrd(initrd)?;
                Ok(Uploaded::Initrd(InitrdLoaded { bytes, guest_address: placed.gpa.map(|gpa| gpa.raw()) }))
            }
            (UploadRequest::Initrd, UploadBody::Staged(staged)) => {
                entry.vm.discard_staged(&staged);
                Err(ApiError::Internal("an initrd upload was staged as an image".into()))
            }
        }
    }

    fn abort_image(&mut self, upload: Upload) {
        self.uploading_bytes -= upload.reserved;
        if let Ok(entry) = self.entry_mut(&upload.id) {
            entry.uploading = false;
            if let UploadBody::Staged(staged) = &upload.body {
                entry.vm.discard_staged(staged);
            }
        }
    }

    fn action(&mut self, id: &VmId, action: Action) -> Result<VmInfo, ApiError> {
        let entry = self.entry(id)?;
        if entry.uploading {
            return Err(ApiError::Conflict("an image upload to this VM is in progress; wait for it".into()));
        }
        let vm = entry.vm.clone();
        match action {
            Action::Start => {
                heap_room(u64::from(vm.config.vcpus) * VCPU_HEAP_BYTES, "starting the VM")?;
                let vcpus = vm.start()?;
                let cpus = sched::vcpu_cpus();
                for (index, vcpu) in vcpus.into_iter().enumerate() {
                    let cpu = cpus.start + self.next_cpu.wrapping_add(index) % cpus.len();
                    sched::submit(cpu, Box::new(VcpuRunner::new(&vm, index as u32, vcpu)));
                }
                self.next_cpu = self.next_cpu.wrapping_add(1);
            }
            Action::Pause => vm.pause()?,
            Action::Resume => vm.resume()?,
            Action::Stop => vm.stop()?,
            Action::Reset => {
                // Asked before anything stops, so a refused reset changes nothing.
                lifecycle::transition(&vm.state(), Action::Reset, vm.has_image())?;
                Self::stop_and_wait(&vm, 2)?;
                vm.reset_to_created()?;
            }
        }
        Ok(Self::info_of(id.as_str(), self.entry(id)?))
    }

    fn read_console(&mut self, id: &VmId, offset: u64, out: &mut [u8]) -> Result<ConsoleRead, ApiError> {
        let entry = self.entry(id)?;
        let read = entry.vm.read_console(offset, out);
        Ok(ConsoleRead::new(read, Self::info_of(id.as_str(), entry).state))
    }

    fn console_input(&mut self, id: &VmId, bytes: &[u8]) -> Result<ConsoleAccepted, ApiError> {
        Ok(ConsoleAccepted { accepted: self.entry(id)?.vm.console_input(bytes)? })
    }

    fn stats(&mut self, id: &VmId) -> Result<VmStats, ApiError> {
        Ok(self.entry(id)?.vm.stats())
    }
}
