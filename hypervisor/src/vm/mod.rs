//! A VM: its memory (the TDP MMU and its slots), its device model, its vCPUs and its
//! lifecycle, independent of the backend (SVM or VMX) that runs it.
//!
//! Lifecycle, as an explicit state machine (Firecracker style): `Created` (memory and image
//! may change) → `Running` ⇄ `Paused` → (`Stopping` →) one of the final states
//! `Exited { status }`, `Crashed { reason }` or `Stopped`. Which host action is allowed in which state is decided
//! in one place, [`lifecycle::transition`]; every state change goes through [`Vm`]'s state
//! lock, and the two flags the vCPU loop reads without it (`stop`, `paused`) are derived
//! from the state there.
//!
//! The guest's platform (see [`platform`]): the port devices of `devices`, built at creation
//! from the vCPU count, the RAM size and the host's wall-clock time; the ACPI tables in
//! guest RAM at 0xE0000; ACPI power-off ends the VM `exited` with status 0, and a
//! guest-requested reset restarts every vCPU at the image's entry.

pub mod commit;
mod entry;
mod exits;
mod guest_ram;
mod initrd;
pub mod lifecycle;
pub mod limits;
mod mmio;
pub mod msr;
mod park;
mod platform;
mod run_queue;
mod staging;
mod stats;
mod string_io;
mod vcpu;

pub use exits::{ExitCounts, ExitReason, ExitStats};
pub use initrd::InitrdPlaced;
pub use lifecycle::{Action, VmState};
pub use run_queue::{RunQueue, Step};
pub use staging::{COPY_CHUNK, STAGING_LOWEST, StagedImage, staging_area};
pub use stats::{InterruptStats, VmStats};
pub use vcpu::{Runnable, Slice, VcpuEnd, VcpuRunner};

use crate::addr::Gpa;
pub use crate::backend::BackendError;
use crate::backend::{Backend, BackendVm, EntryMode, EntryState, GuestRegs};
use crate::cpuid;
use crate::devices::events::{Event, EventKind};
use crate::devices::lapic::LapicConfig;
use crate::devices::{PlatformConfig, PortBus};
use crate::loader::{self, GuestConfig, ImageFormat, ImageSource, LoadPlan};
use crate::memslot::{AsId, SlotFlags, SlotId, SlotSpec};
use crate::mmu::{Mmu, MmuConfig};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use spin::Mutex;

/// The largest VM the launcher accepts, and the most vCPUs.
pub const MAX_MEMORY_MIB: u64 = 16 * 1024;
pub const MAX_VCPUS: u32 = 64;
/// The slot that holds guest RAM from address 0.
pub const RAM_SLOT: SlotId = SlotId(0);
/// The frequency a guest's local APIC timer counts at, as CPUID 4000_0010h tells it: 1 GHz,
/// as under KVM (the LAPIC model, `devices::lapic`, takes it as `LapicConfig::bus_hz`).
pub const LAPIC_BUS_HZ: u64 = 1_000_000_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmError {
    InvalidConfig(String),
    Backend(BackendError),
    Memory(String),
    BadImage(String),
    WrongState {
        action: &'static str,
        state: &'static str,
    },
    NoImage,
    /// The image is larger than the VM can take (413).
    TooLarge(String),
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmError::InvalidConfig(e) => write!(f, "invalid VM configuration: {e}"),
            VmError::Backend(e) => write!(f, "virtualization backend: {e}"),
            VmError::Memory(e) => write!(f, "guest memory: {e}"),
            VmError::BadImage(e) => write!(f, "bad guest image: {e}"),
            VmError::WrongState { action, state } => write!(f, "cannot {action} a VM that is {state}"),
            VmError::NoImage => f.write_str("cannot start a VM without an image"),
            VmError::TooLarge(e) => f.write_str(e),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmConfig {
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Bytes the console ring keeps ([`crate::devices::CONSOLE_RING_BYTES`] unless the
    /// host's limits say otherwise).
    pub console_bytes: usize,
}

impl VmConfig {
    pub fn validate(&self) -> Result<(), VmError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(VmError::InvalidConfig(format!(
                "vcpus must be 1 to {MAX_VCPUS}, not {}",
                self.vcpus
            )));
        }
        if self.memory_mib == 0 || self.memory_mib > MAX_MEMORY_MIB {
            return Err(VmError::InvalidConfig(format!(
                "memory must be 1 to {MAX_MEMORY_MIB} MiB, not {}",
                self.memory_mib
            )));
        }
        Ok(())
    }
}

/// Receives each complete console line of a VM: `(vm id, line)`.
pub type ConsoleSink = fn(u32, &str);

pub struct Vm<B: Backend> {
    pub id: u32,
    pub config: VmConfig,
    pub mmu: Mmu<B::Platform>,
    pub(crate) backend: Arc<B::Vm>,
    pub(crate) devices: Mutex<PortBus>,
    /// The one record of the lifecycle; changed only by [`Vm::enter`].
    state: Mutex<VmState>,
    /// `state.ends_vcpus()` (stopping or ended), for the vCPU loop: every vCPU leaves its
    /// loop at its next exit.
    pub(crate) stop: AtomicBool,
    running_vcpus: AtomicUsize,
    entry: Mutex<Option<EntryState>>,
    pub(crate) exits: ExitCounts,
    /// What the guest's CPUID says, fixed for the VM's life.
    pub(crate) cpuid: cpuid::Policy,
    pub(crate) clock: fn() -> u64,
    /// Where complete console lines go as they are written (the image's launcher prints
    /// them); the console ring keeps every byte regardless.
    console_sink: Mutex<Option<ConsoleSink>>,
    /// Absolute time after which the VM is stopped (0: no limit).
    deadline_ns: AtomicU64,
    /// `state == Paused`, for the vCPU loop: vCPUs leave the guest and wait off their CPUs.
    paused: AtomicBool,
    /// When the VM started, and when its guest first wrote to the console (0: not yet).
    started_ns: AtomicU64,
    first_console_ns: AtomicU64,
    /// Guest-requested platform resets so far: each vCPU restarts at its entry when it
    /// sees the count change (see [`platform`]).
    platform_resets: AtomicU64,
    /// The RSDP's address when the ACPI tables are in guest RAM (for PVH's start info).
    rsdp: Option<Gpa>,
    /// Each vCPU's halt state (`park`), by index.
    parks: Vec<park::VcpuPark>,
    pub(crate) interrupt_counts: stats::InterruptCounts,
    /// Added to the host TSC to give the guest's, which reads 0 at the VM's creation: the
    /// same instant the LAPICs' `tsc_origin_ns` names.
    pub(crate) tsc_offset: u64,
    /// Whether the application processors (vCPUs 1 and up) start waiting for INIT-SIPI-SIPI
    /// from the boot vCPU, as on a PC, rather than at the image's entry.
    aps_wait_for_sipi: AtomicBool,
    /// The image's plan and the initrd (see [`initrd`]).
    boot_files: Mutex<initrd::BootFiles>,
}

/// The CPUID policy for `B` on this host.
fn cpuid_policy<B: Backend>() -> cpuid::Policy {
    let facts = cpuid::HostFacts {
        vendor: B::VENDOR,
        gib_pages: B::caps().max_page_size == crate::addr::PageSize::Size1G,
        tsc_hz: B::tsc_hz(),
        lapic_bus_hz: LAPIC_BUS_HZ,
    };
    cpuid::Policy::new(facts, B::host_cpuid)
}

impl<B: Backend> Vm<B> {
    /// Creates a VM with `config.memory_mib` of RAM from guest address 0, its platform
    /// devices (the RTC showing `unix_seconds`, the host's wall-clock time now) and its
    /// ACPI tables in RAM. On error nothing is left behind (the MMU and backend parts drop).
    pub fn create(
        id: u32,
        config: VmConfig,
        clock: fn() -> u64,
        unix_seconds: i64,
    ) -> Result<Arc<Self>, VmError> {
        config.validate()?;
        let backend = B::create_vm().map_err(VmError::Backend)?;
        let mmu_config = MmuConfig { max_page_size: B::caps().max_page_size, ..MmuConfig::default() };
        let mmu = Mmu::new(mmu_config, B::pages(), backend.clone(), B::clock());
        let spec = SlotSpec {
            id: RAM_SLOT,
            as_id: AsId::Normal,
            base: Gpa::new(0),
            size: config.memory_mib << 20,
            flags: SlotFlags::default(),
        };
        mmu.add_slot(spec).map_err(|e| VmError::Memory(format!("{e:?}")))?;
        let rsdp = platform::write_acpi_tables(&mmu, &config)?;
        // The guest TSC's origin, read together: the LAPIC timers convert guest TSC values
        // with `tsc_origin_ns`, the backends offset the TSC by `tsc_offset`.
        // The TSC is read first: the guest TSC then never runs ahead of the LAPICs' view
        // of it (a TSC deadline never fires early by the time between the two reads).
        let host_tsc = B::host_tsc();
        let now_ns = clock();
        let tsc_offset = 0u64.wrapping_sub(host_tsc);
        let cpuid = cpuid_policy::<B>();
        let platform = PlatformConfig {
            vcpus: config.vcpus as u16,
            ram_bytes: config.memory_mib << 20,
            unix_seconds,
            now_ns,
            // The guest TSC counts from the VM's creation (`tsc_offset`); x2APIC mode
            // exists where the CPUID policy offers it.
            lapic: LapicConfig {
                bus_hz: LAPIC_BUS_HZ,
                tsc_hz: B::tsc_hz(),
                tsc_origin_ns: now_ns,
                has_x2apic: cpuid.always_offers("x2apic"),
            },
        };
        let devices = PortBus::with_capacity(&platform, config.console_bytes, crate::devices::EVENT_LOG_LEN)
            .ok_or_else(|| {
                VmError::Memory(format!(
                    "no room on the heap for a {}-byte console ring",
                    config.console_bytes
                ))
            })?;
        Ok(Arc::new(Self {
            id,
            config,
            mmu,
            backend,
            devices: Mutex::new(devices),
            state: Mutex::new(VmState::Created),
            stop: AtomicBool::new(false),
            running_vcpus: AtomicUsize::new(0),
            entry: Mutex::new(None),
            exits: ExitCounts::default(),
            cpuid,
            clock,
            console_sink: Mutex::new(None),
            deadline_ns: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            started_ns: AtomicU64::new(0),
            first_console_ns: AtomicU64::new(0),
            platform_resets: AtomicU64::new(0),
            rsdp,
            parks: (0..config.vcpus).map(|_| park::VcpuPark::default()).collect(),
            interrupt_counts: stats::InterruptCounts::default(),
            tsc_offset,
            aps_wait_for_sipi: AtomicBool::new(false),
            boot_files: Mutex::new(initrd::BootFiles::default()),
        }))
    }

    pub fn state(&self) -> VmState {
        self.state.lock().clone()
    }

    pub fn memory_bytes(&self) -> u64 {
        self.config.memory_mib << 20
    }

    /// Validates `image` and copies it into guest memory, with the VM's initrd if it has
    /// one (see [`initrd`]). Only in `Created`; a bad image, or an initrd it cannot place,
    /// changes nothing (both are checked completely before the first byte is written).
    pub fn load_image(&self, image: &[u8], format: ImageFormat, cmdline: &str) -> Result<LoadPlan, VmError> {
        self.load_from(&image, format, cmdline, None)
    }

    /// [`Vm::load_image`] from any source; `staged`: the image is read from where an upload
    /// was staged in this VM's memory ([`staging`]: its segments must lie below it, and
    /// the area is zeroed once they are copied).
    fn load_from(
        &self,
        image: &dyn ImageSource,
        format: ImageFormat,
        cmdline: &str,
        staged: Option<&StagedImage>,
    ) -> Result<LoadPlan, VmError> {
        lifecycle::check_image_load(&self.state.lock())?;
        let config = GuestConfig { mem_size: self.memory_bytes(), cmdline, rsdp: self.rsdp };
        let bad = |e: loader::LoadError| VmError::BadImage(format!("{e}"));
        let mut plan = loader::plan_from(image, format, &config).map_err(bad)?;
        if self.rsdp.is_some() && platform::overlaps_acpi_tables(&plan) {
            // The image replaces the tables: point no guest at what is left of them.
            let config = GuestConfig { rsdp: None, ..config };
            plan = loader::plan_from(image, format, &config).map_err(bad)?;
        }
        if let Some(staged) = staged {
            staging::check_below_staging(&plan, staged)?;
        }
        let mut files = self.boot_files.lock();
        let initrd_gpa = match &files.initrd {
            Some(initrd) => Some(plan.place_initrd(initrd.len() as u64).map_err(initrd::initrd_error)?),
            None => None,
        };
        staging::place_segments(&self.mmu, image, &plan)?;
        if let Some(staged) = staged {
            self.clear_staging(staged)?;
        }
        match (&files.initrd, initrd_gpa) {
            (Some(initrd), Some(gpa)) => self.write_initrd(&plan, gpa, initrd)?,
            _ => {
                if let Some(info) = &plan.boot_info {
                    self.mmu
                        .write_guest(AsId::Normal, info.gpa, &info.bytes)
                        .map_err(|e| VmError::Memory(format!("{e:?}")))?;
                }
            }
        }
        files.plan = Some(plan.clone());
        files.initrd_gpa = initrd_gpa;
        drop(files);
        let mode = match plan.entry.mode {
            loader::EntryMode::RealMode16 { cs, ip } => EntryMode::Real16 { cs, ip },
            loader::EntryMode::Protected32 { eip } => EntryMode::Protected32 { eip },
            loader::EntryMode::Long64 { rip, cr3, gdt_base, gdt_limit } => {
                EntryMode::Long64 { rip, cr3, gdt_base, gdt_limit }
            }
        };
        let regs = GuestRegs {
            rax: plan.entry.eax as u64,
            rbx: plan.entry.ebx as u64,
            rsi: plan.entry.rsi,
            ..GuestRegs::default()
        };
        *self.entry.lock() = Some(EntryState { mode, regs });
        Ok(plan)
    }

    /// The entry state of vCPU `index`: the image's, plus the multi-vCPU convention of
    /// `taproot-guest-abi` (`esi` = index, `edi` = count), except in the Linux protocol's
    /// 64-bit entry, whose `rsi` is `boot_params`.
    pub fn entry_for(&self, index: u32) -> Option<EntryState> {
        let mut entry = (*self.entry.lock())?;
        if !matches!(entry.mode, EntryMode::Long64 { .. }) {
            entry.regs.rsi = index as u64;
            entry.regs.rdi = self.config.vcpus as u64;
        }
        Some(entry)
    }

    /// The one way the state changes: under the state lock, with the vCPU loop's flags
    /// derived from the new state. `stop` is raised before `paused` drops, so a paused VM
    /// that is stopped never enters the guest again.
    fn enter(&self, state: &mut VmState, next: VmState) {
        self.stop.store(next.ends_vcpus(), Ordering::SeqCst);
        self.paused.store(next == VmState::Paused, Ordering::SeqCst);
        *state = next;
    }

    /// Applies `action` as [`lifecycle::transition`] allows it, under the state lock.
    fn act(&self, action: Action) -> Result<(), VmError> {
        let mut state = self.state.lock();
        let next = lifecycle::transition(&state, action, self.has_image())?;
        self.enter(&mut state, next);
        Ok(())
    }

    /// `start`: moves `Created` → `Running` and creates every vCPU; the caller runs each
    /// with [`VcpuRunner`] on a CPU with the backend enabled.
    pub fn start(self: &Arc<Self>) -> Result<Vec<B::Vcpu>, VmError> {
        let mut state = self.state.lock();
        let next = lifecycle::transition(&state, Action::Start, self.has_image())?;
        let mut vcpus = Vec::new();
        for index in 0..self.config.vcpus {
            let entry = self.entry_for(index).ok_or(VmError::NoImage)?;
            vcpus.push(B::create_vcpu(&self.backend, &entry).map_err(VmError::Backend)?);
        }
        self.running_vcpus.store(vcpus.len(), Ordering::SeqCst);
        self.started_ns.store((self.clock)(), Ordering::Relaxed);
        self.enter(&mut state, next);
        Ok(vcpus)
    }

    /// Moves a running or paused VM to a final state (the first one wins) and asks every
    /// vCPU to leave the guest. The guest's own ends (exit, crash, time limit) come here;
    /// the host's `stop` is [`Vm::stop`], and wins over an end that comes while it is
    /// under way (the VM is `Stopping`).
    pub fn finish(&self, end: VmState) {
        debug_assert!(end.is_final());
        {
            let mut state = self.state.lock();
            if state.ends_vcpus() {
                return;
            }
            if let VmState::Crashed { reason } = &end {
                self.log_event(format!("crashed: {reason}"));
            }
            self.enter(&mut state, end);
        }
        self.kick_all();
    }

    /// How the application processors start (see README, "Kernel command line", `aps=`):
    /// `true`, they wait for INIT-SIPI-SIPI from the boot vCPU (what an operating system
    /// written for a PC expects); `false` (the default), every vCPU starts at the image's
    /// entry with its index in `esi` (Taproot's own guests). Takes effect at `start`.
    pub fn set_aps_wait_for_sipi(&self, wait: bool) {
        self.aps_wait_for_sipi.store(wait, Ordering::Relaxed);
    }

    /// Whether vCPUs 1 and up wait for INIT-SIPI-SIPI: as set, and always for a kernel
    /// loaded through Linux's boot protocol (its boot CPU starts the others; started at
    /// the 64-bit entry they would all run the boot path at once).
    pub fn aps_wait_for_sipi(&self) -> bool {
        let linux = self
            .boot_files
            .lock()
            .plan
            .as_ref()
            .is_some_and(|plan| plan.protocol == crate::loader::BootProtocol::Linux);
        linux || self.aps_wait_for_sipi.load(Ordering::Relaxed)
    }

    /// vCPU `index`'s halt state.
    pub(crate) fn park(&self, index: u32) -> &park::VcpuPark {
        &self.parks[index as usize]
    }

    /// `stop`: ends a running or paused VM from the host side. It returns at once with the
    /// VM `Stopping`; the VM is `Stopped` when its last vCPU has left its loop.
    pub fn stop(&self) -> Result<(), VmError> {
        self.act(Action::Stop)?;
        self.kick_all();
        Ok(())
    }

    /// `pause`: holds every vCPU outside the guest until [`Vm::resume`].
    pub fn pause(&self) -> Result<(), VmError> {
        self.act(Action::Pause)?;
        self.kick_all();
        Ok(())
    }

    /// `resume`: lets the vCPUs of a paused VM enter the guest again (the scheduler finds
    /// them at its next tick).
    pub fn resume(&self) -> Result<(), VmError> {
        self.act(Action::Resume)
    }

    /// Whether the VM is paused: the vCPU loop's lock-free view of the state.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Every vCPU leaves the guest soon, and every halted one looks at the VM again (a
    /// pause, stop or reset concerns them too).
    fn kick_all(&self) {
        self.backend.kick_all();
        self.wake_vcpus(self.all_vcpus());
    }

    fn all_vcpus(&self) -> crate::devices::irqchip::VcpuMask {
        let mut all = crate::devices::irqchip::VcpuMask::EMPTY;
        for v in 0..self.config.vcpus {
            all.insert(v);
        }
        all
    }

    /// `reset`, once the VM has ended and its vCPUs have left their loops (a running or
    /// paused VM is stopped first, with [`Vm::stop`]): back to `Created`, keeping memory,
    /// slots and the loaded image, so it can be started again or given a new image; the
    /// platform's devices return to their power-on state (`PortBus::reset_platform`).
    pub fn reset_to_created(&self) -> Result<(), VmError> {
        if self.running_vcpus() != 0 {
            return Err(VmError::WrongState { action: "reset", state: "still stopping" });
        }
        let mut state = self.state.lock();
        if !state.is_final() {
            // Allowed by the lifecycle, but its vCPUs must be stopped first.
            return Err(VmError::WrongState { action: "reset", state: state.name() });
        }
        let next = lifecycle::transition(&state, Action::Reset, self.has_image())?;
        self.enter(&mut state, next);
        // The platform's devices power on again, as for a reset the guest asks for.
        self.devices.lock().reset_platform();
        // Their timers and pending events changed under every vCPU's cached view.
        self.parks.iter().for_each(park::VcpuPark::call_attention);
        self.first_console_ns.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// A platform reset the guest asked for by writing `port` (see [`platform`]): the
    /// devices reset now, every vCPU restarts at its entry at the top of its loop.
    pub(crate) fn reset_platform(&self, port: u16) {
        self.devices.lock().reset_platform();
        self.log_event(format!("the guest reset the platform (port {port:#x})"));
        self.platform_resets.fetch_add(1, Ordering::SeqCst);
        self.kick_all();
    }

    /// Wakes (if halted) or kicks (if in the guest) each vCPU in `mask`, so that an
    /// interrupt an access just made pending is taken now rather than at the next host
    /// tick. Call it after dropping the device lock: this is the waker's side of
    /// `park`'s protocol (the interrupt state changed first, then the flag, then the kick).
    pub(crate) fn wake_vcpus(&self, mask: crate::devices::irqchip::VcpuMask) {
        if mask.is_empty() {
            return;
        }
        let me = B::current_cpu();
        for v in mask.iter() {
            let Some(park) = self.parks.get(v as usize) else { continue };
            let (cpu, _) = park.wake();
            if cpu != me {
                B::kick_cpu(cpu);
            }
        }
    }

    /// How many platform resets the guest has asked for.
    pub(crate) fn platform_resets(&self) -> u64 {
        self.platform_resets.load(Ordering::SeqCst)
    }

    /// Whether an image has been loaded (the VM can start).
    pub fn has_image(&self) -> bool {
        self.entry.lock().is_some()
    }

    /// Console bytes from absolute `offset` into `out`.
    pub fn read_console(&self, offset: u64, out: &mut [u8]) -> crate::devices::console::ConsoleRead {
        self.devices.lock().console().read(offset, out)
    }

    /// Bytes typed at the console, for COM1's receive FIFO: returns how many it took
    /// (fewer than offered while the guest has not read what is there: the caller keeps
    /// the rest). Refused in a final state ([`lifecycle::check_console_input`]). The
    /// receive interrupt's vCPUs are woken after the device lock is dropped.
    pub fn console_input(&self, bytes: &[u8]) -> Result<usize, VmError> {
        let input = {
            // State, then devices: the order `finish` takes them in.
            let state = self.state.lock();
            lifecycle::check_console_input(&state)?;
            self.devices.lock().console_input(bytes)
        };
        self.wake_vcpus(input.wake);
        Ok(input.taken)
    }

    /// A vCPU has left its loop. After the last, a stopping VM is stopped, and one whose
    /// vCPUs all halted is stopped too ([`lifecycle::vcpus_left`]).
    pub(crate) fn vcpu_ended(&self) {
        if self.running_vcpus.fetch_sub(1, Ordering::SeqCst) == 1 {
            let mut state = self.state.lock();
            if let Some(next) = lifecycle::vcpus_left(&state) {
                self.enter(&mut state, next);
            }
        }
    }

    /// How many vCPUs are still in their run loop.
    pub fn running_vcpus(&self) -> usize {
        self.running_vcpus.load(Ordering::SeqCst)
    }

    /// Adds a note (a crash with registers, a stop) to the VM's event log.
    pub fn log_event(&self, text: String) {
        let now = (self.clock)();
        self.devices.lock().events_mut().push(now, EventKind::Note(text));
    }

    /// The events still in the log (oldest first) and how many older ones were dropped.
    pub fn events(&self) -> (Vec<Event>, u64) {
        let devices = self.devices.lock();
        (devices.events().iter().cloned().collect(), devices.events().dropped())
    }

    /// Sends each complete console line to `sink` as the guest writes it.
    pub fn set_console_sink(&self, sink: ConsoleSink) {
        *self.console_sink.lock() = Some(sink);
    }

    /// Stops the VM once the clock passes `deadline_ns` (checked at every exit; the host
    /// timer guarantees exits even from a guest that loops without any).
    pub fn set_deadline(&self, deadline_ns: u64) {
        self.deadline_ns.store(deadline_ns, Ordering::Relaxed);
    }

    /// Stops the VM if its time limit passed; returns whether it did.
    pub(crate) fn check_deadline(&self) -> bool {
        let deadline = self.deadline_ns.load(Ordering::Relaxed);
        let passed = deadline != 0 && (self.clock)() > deadline;
        if passed {
            self.log_event("stopped: its time limit passed".into());
            self.finish(VmState::Stopped);
        }
        passed
    }

    /// The host time at which [`Vm::set_deadline`] stops the VM, if set: a halted vCPU
    /// blocks no longer than that, so a guest halted for good still meets its limit.
    pub(crate) fn time_limit(&self) -> Option<u64> {
        Some(self.deadline_ns.load(Ordering::Relaxed)).filter(|&deadline| deadline != 0)
    }

    /// Records the first console output (boot-time measurement) and passes new complete
    /// lines to the sink.
    pub(crate) fn console_written(&self) {
        if self.first_console_ns.load(Ordering::Relaxed) == 0 {
            let _ = self.first_console_ns.compare_exchange(
                0,
                (self.clock)(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        self.pump_console();
    }

    /// Passes new complete console lines to the sink.
    pub(crate) fn pump_console(&self) {
        let Some(sink) = *self.console_sink.lock() else { return };
        let mut devices = self.devices.lock();
        while let Some(line) = devices.next_console_line() {
            sink(self.id, &line);
        }
    }

    /// Passes what is left of the console, including an unfinished last line, to the sink.
    pub fn flush_console(&self) {
        self.pump_console();
        let Some(sink) = *self.console_sink.lock() else { return };
        if let Some(rest) = self.devices.lock().take_partial_console_line() {
            sink(self.id, &rest);
        }
    }

    /// The memory slots, by id, as the MMU holds them: the one record of them.
    pub fn memslots(&self) -> Vec<SlotSpec> {
        let mut slots: Vec<SlotSpec> = self
            .mmu
            .slots()
            .into_iter()
            .map(|(id, as_id, base, size, flags)| SlotSpec { id, as_id, base, size, flags })
            .collect();
        slots.sort_by_key(|slot| slot.id);
        slots
    }

    /// Frees the VM's memory and page tables. Its vCPUs must have ended.
    pub fn destroy(self) {
        self.mmu.destroy();
    }

    /// The VM's counters now: the MMU's, the exits by reason, the backend's flushes,
    /// unknown ports and boot timing.
    pub fn stats(&self) -> VmStats {
        let unknown = self.devices.lock().unknown_ports().total();
        let first_console = self.first_console_ns.load(Ordering::Relaxed);
        let start_to_first_console_ns = if first_console == 0 {
            0
        } else {
            first_console.saturating_sub(self.started_ns.load(Ordering::Relaxed))
        };
        let sources = self.devices.lock().irqchip().snapshot();
        let halted = self.parks.iter().filter(|park| park.is_halted()).count() as u64;
        VmStats {
            interrupts: self.interrupt_counts.snapshot(sources, halted),
            mmu: self.mmu.stats(),
            exits: self.exits.snapshot(),
            tlb_flushes: self.backend.flushes(),
            unknown_port_reads: unknown.reads,
            unknown_port_writes: unknown.writes,
            start_to_first_console_ns,
        }
    }
}
