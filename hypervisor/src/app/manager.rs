//! The VM registry behind the control plane: [`ApiHandler`] over [`Vm`]. The lifecycle
//! rules are [`lifecycle`]'s and the memory slots the MMU's: the registry keeps neither,
//! only which VM has which id and which uploads are in flight.
//!
//! Every call returns promptly (the API server polls the network between calls); the only
//! waits are for vCPUs to leave their loops on stop/delete/reset, which takes at most one
//! host timer period per vCPU.

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
    ConnectionCounters, ConsoleAccepted, ConsoleRead, CpuTagInfo, HypervisorInfo, ImageLoaded, ImageRequest,
    MemslotInfo, MemslotSpec, VmCreate, VmId, VmInfo, VmLimits, VmStatus,
};
use hypervisor::backend::Backend;
use hypervisor::memslot::SlotId;
use hypervisor::vm::commit::CommitLimit;
use hypervisor::vm::limits::HostLimits;
use hypervisor::vm::{Action, VcpuRunner, Vm, VmConfig, VmStats, lifecycle};

/// How long stop, delete and reset wait for vCPUs to leave their loops.
const STOP_TIMEOUT_NS: u64 = 2_000_000_000;

struct Entry<B: Backend> {
    vm: Arc<Vm<B>>,
    uploading: bool,
}

/// An image upload in flight: the bytes received so far (the loader needs the whole image
/// to validate it before it writes guest memory, so it is held once, here).
pub struct Upload {
    id: VmId,
    request: ImageRequest,
    bytes: Vec<u8>,
    /// What it holds of the upload budget (its Content-Length).
    reserved: u64,
}

/// Uploads are staged whole on the heap (the loader checks the entire image before any of
/// it reaches guest memory), and the heap is an eighth of RAM. A heap allocation that fails
/// ends the hypervisor, so uploads in flight together may hold at most this share of it,
/// reserved up front from their Content-Length: the network stack and everything else keep
/// the rest.
fn upload_budget() -> u64 {
    libos::mm::heap::total_bytes() / 2
}

pub struct Manager<B: Backend> {
    /// By id: every request looks its VM up here (a `hashbrown` map: no ordering is needed
    /// but the listing's, which sorts).
    vms: HashMap<String, Entry<B>>,
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
            next_vm_number: 1,
            next_cpu: 0,
            virt,
            uploading_bytes: 0,
            commit,
            limits,
            connections: ConnectionCounters::default(),
        }
    }

    /// Guest memory the VMs' slots cover.
    fn assigned_bytes(&self) -> u64 {
        self.vms.values().flat_map(|e| e.vm.memslots()).map(|s| s.size).sum()
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
    /// only the `held` references of the registry and the caller remain.
    fn stop_and_wait(vm: &Arc<Vm<B>>, held: usize) -> Result<(), ApiError> {
        // Refused unless the VM is running or paused; in any other state no vCPU runs it.
        let _ = vm.stop();
        let deadline = libos::time::now_ns() + STOP_TIMEOUT_NS;
        let busy = || vm.running_vcpus() > 0 || Arc::strong_count(vm) > held;
        while busy() && libos::time::now_ns() < deadline {
            core::hint::spin_loop();
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
        self.next_vm_number += 1;
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
        Self::stop_and_wait(&entry.vm, 1)?;
        let entry = self.vms.remove(id.as_str()).expect("looked up above");
        match Arc::try_unwrap(entry.vm) {
            Ok(vm) => vm.destroy(),
            Err(_) => return Err(ApiError::Internal("VM still referenced after its vCPUs ended".into())),
        }
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

    fn begin_image(&mut self, id: &VmId, request: &ImageRequest, total_len: u64) -> Result<Upload, ApiError> {
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
        if total_len > budget {
            return Err(ApiError::PayloadTooLarge(format!(
                "the image is {total_len} bytes; this host stages at most {budget} bytes of uploads \
                 (half its heap, which is an eighth of its RAM): give it more memory or upload less"
            )));
        }
        if in_flight + total_len > budget {
            return Err(ApiError::Unavailable(format!(
                "other uploads in flight hold {in_flight} of the {budget} bytes this host stages; \
                 retry when they are done"
            )));
        }
        let mut bytes = Vec::new();
        if bytes.try_reserve_exact(total_len as usize).is_err() {
            return Err(ApiError::Unavailable(format!(
                "no room on the heap for a {total_len}-byte image now; retry later"
            )));
        }
        entry.uploading = true;
        self.uploading_bytes += total_len;
        Ok(Upload { id: id.clone(), request: request.clone(), bytes, reserved: total_len })
    }

    fn image_chunk(&mut self, upload: &mut Upload, offset: u64, bytes: &[u8]) -> Result<(), ApiError> {
        if offset != upload.bytes.len() as u64 {
            return Err(ApiError::Internal(format!(
                "image chunk at {offset}, expected {}",
                upload.bytes.len()
            )));
        }
        if upload.bytes.len() as u64 + bytes.len() as u64 > upload.reserved {
            // The connection enforces Content-Length; growing past the reservation would
            // allocate on the heap unchecked.
            return Err(ApiError::Internal("image chunk beyond the announced length".into()));
        }
        upload.bytes.extend_from_slice(bytes);
        Ok(())
    }

    fn finish_image(&mut self, upload: Upload) -> Result<ImageLoaded, ApiError> {
        self.uploading_bytes -= upload.reserved;
        let entry = self.entry_mut(&upload.id)?;
        entry.uploading = false;
        let plan = entry.vm.load_image(&upload.bytes, upload.request.format, &upload.request.cmdline)?;
        Ok(ImageLoaded::from_plan(upload.bytes.len() as u64, &plan))
    }

    fn abort_image(&mut self, upload: Upload) {
        self.uploading_bytes -= upload.reserved;
        if let Ok(entry) = self.entry_mut(&upload.id) {
            entry.uploading = false;
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
                let vcpus = vm.start()?;
                let cpus = sched::vcpu_cpus();
                for (index, vcpu) in vcpus.into_iter().enumerate() {
                    let cpu = cpus.start + (self.next_cpu + index) % cpus.len();
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
