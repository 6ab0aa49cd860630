//! The boot CPU's path from the 64-bit entry to the application's `main`.

use super::{acpi, apic, cpu, gdt, host_timer, interrupts, paging, percpu, pic, stack_guard};
use crate::bootinfo::{BootInfo, PhysRange, Protocol};
use crate::{cmdline, drivers::serial, logger, mm, power, smp, time};
use core::sync::atomic::Ordering;
use spin::Once;

unsafe extern "Rust" {
    /// Defined by the application through [`crate::entry!`].
    safe fn __libos_application_main() -> !;
}

unsafe extern "C" {
    static __image_start: u8;
    static __image_end: u8;
}

/// What the entry stubs (`start.rs`) pass to [`rust_start`] as `magic`: multiboot2's own
/// magic from `eax` at entry (specification §3.3), or our tag for the PVH entry.
pub(super) const MULTIBOOT2_BOOT_MAGIC: u32 = 0x36D7_6289;
pub(super) const PVH_BOOT_TAG: u32 = 0x5056_4800;

static BOOT_INFO: Once<BootInfo> = Once::new();

/// A copy of the RSDP from a multiboot2 tag: GRUB hands over a copy inside its boot
/// information, which is ordinary RAM that the frame allocator will reuse.
#[repr(C, align(16))]
struct RsdpCopy([u8; 64]);
static mut RSDP_COPY: RsdpCopy = RsdpCopy([0; 64]);

/// What the loader told us (available once the boot CPU reaches the application).
pub fn boot_info() -> &'static BootInfo {
    BOOT_INFO.get().expect("boot info is read before anything can ask for it")
}

/// Called by the 64-bit entry stub (`start.rs`) on the boot stack with interrupts off.
pub(super) extern "C" fn rust_start(magic: u32, info_addr: u32) -> ! {
    percpu::install(0, 0);
    stack_guard::install_boot(percpu::current());
    serial::init();
    // SAFETY: `magic`/`info_addr` come straight from the loader, as the entry stubs
    // received them; nothing has been allocated over the loader's structures yet.
    let info = BOOT_INFO.call_once(|| unsafe { read_loader_info(magic, info_addr) });
    power::set_exit_requested(cmdline::flag(info.cmdline(), "exit"));
    logger::init(cmdline::value(info.cmdline(), "log"));
    log::info!(
        "taproot {} booting via {}, command line \"{}\"",
        env!("CARGO_PKG_VERSION"),
        info.protocol.name(),
        info.cmdline()
    );

    let image = PhysRange::new(&raw const __image_start as u64, &raw const __image_end as u64);
    mm::init(info, image);
    paging::map_high_ram(info);
    gdt::init_cpu();
    interrupts::init_cpu();
    cpu::init_fpu();
    pic::disable();
    time::init();
    apic::init_cpu();
    percpu::current().apic_id.store(apic::id(), Ordering::Relaxed);
    log::info!("apic: mode={} id={}", apic::mode_name(), apic::id());
    apic::calibrate_timer();
    apic::init_one_shot_timer();
    host_timer::start();
    log::info!("time: TSC {} MHz, APIC timer {} kHz", time::tsc_hz() / 1_000_000, apic::timer_hz() / 1000);
    percpu::current().virt.call_once(cpu::detect_virt);
    percpu::current().online.store(true, Ordering::Release);

    let platform = acpi::discover(info.rsdp).unwrap_or_default();
    power::init(platform.pm1a_control_port, platform.s5_sleep_type);
    smp::start_aps(&platform.apic_ids);
    x86_64::instructions::interrupts::enable();
    __libos_application_main()
}

/// Copies what we need out of the loader's structures.
///
/// # Safety
/// `info_addr` must be the loader's boot information for the protocol named by `magic`,
/// still intact and identity mapped.
unsafe fn read_loader_info(magic: u32, info_addr: u32) -> BootInfo {
    match magic {
        PVH_BOOT_TAG => {
            let mut info = BootInfo::new(Protocol::Pvh);
            // SAFETY: per the PVH ABI, `ebx` held the start info's physical address.
            let Some(start) =
                (unsafe { pvh::start_info::StartInfo::from_ptr(info_addr as usize as *const _) })
            else {
                panic!("PVH entry without a valid start info at {info_addr:#x}");
            };
            if start.cmdline_paddr != 0 {
                // SAFETY: the loader gives a NUL-terminated string; we read at most
                // MAX_CMDLINE bytes of identity-mapped low memory.
                let bytes = unsafe {
                    core::slice::from_raw_parts(
                        start.cmdline_paddr as usize as *const u8,
                        crate::bootinfo::MAX_CMDLINE,
                    )
                };
                info.set_cmdline(bytes);
            }
            info.rsdp = (start.rsdp_paddr != 0).then_some(start.rsdp_paddr);
            if start.version >= 1 && start.memmap_paddr != 0 {
                // SAFETY: version 1 start infos carry a memory map of `memmap_entries`
                // entries at `memmap_paddr`.
                let map = unsafe {
                    core::slice::from_raw_parts(
                        start.memmap_paddr as usize as *const pvh::start_info::MemmapTableEntry,
                        start.memmap_entries as usize,
                    )
                };
                for entry in map.iter().filter(|e| e.ty == E820_RAM) {
                    if !info.add_ram(PhysRange::new(entry.addr, entry.addr + entry.size)) {
                        serial::write_bytes(b"taproot: memory map too long, ignoring the rest\n");
                    }
                }
            }
            info
        }
        MULTIBOOT2_BOOT_MAGIC => {
            let mut info = BootInfo::new(Protocol::Multiboot2);
            // SAFETY: per the multiboot2 specification, `ebx` held the boot information's
            // physical address.
            let mbi = unsafe {
                multiboot2::BootInformation::load(
                    info_addr as usize as *const multiboot2::BootInformationHeader,
                )
            };
            let Ok(mbi) = mbi else {
                panic!("multiboot2 entry with unreadable boot information at {info_addr:#x}");
            };
            if let Some(Ok(line)) = mbi.command_line_tag().map(|t| t.cmdline()) {
                info.set_cmdline(line.as_bytes());
            }
            if let Some(map) = mbi.memory_map_tag() {
                for area in map.memory_areas().iter().filter(|a| u32::from(a.typ()) == E820_RAM) {
                    let start = area.start_address();
                    if !info.add_ram(PhysRange::new(start, start + area.size())) {
                        serial::write_bytes(b"taproot: memory map too long, ignoring the rest\n");
                    }
                }
            }
            let rsdp_tag = mbi
                .rsdp_v2_tag()
                .map(|t| (t as *const _ as *const u8, size_of_val(t)))
                .or_else(|| mbi.rsdp_v1_tag().map(|t| (t as *const _ as *const u8, size_of_val(t))));
            if let Some((tag, tag_size)) = rsdp_tag {
                let len = tag_size.saturating_sub(MB2_TAG_HEADER_SIZE).min(64);
                // SAFETY: the tag is `tag_size` bytes of boot information: an 8-byte header
                // followed by the RSDP; the copy goes to a static nobody else touches.
                unsafe {
                    let dest = &raw mut RSDP_COPY as *mut u8;
                    core::ptr::copy_nonoverlapping(tag.add(MB2_TAG_HEADER_SIZE), dest, len);
                    info.rsdp = Some(dest as u64);
                }
            }
            info
        }
        _ => panic!("entered by an unknown loader (magic {magic:#x})"),
    }
}

/// E820 / multiboot2 memory type "available RAM".
const E820_RAM: u32 = 1;
/// Multiboot2 tag header: type and size, both u32 (specification §3.6).
const MB2_TAG_HEADER_SIZE: usize = 8;

/// Exit status when `exit=1` ends the machine after a panic.
const PANIC_EXIT_STATUS: i32 = 101;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    use core::fmt::Write;
    let _ = writeln!(serial::EmergencyWriter, "\ntaproot: PANIC on cpu {}: {}", percpu::current_cpu(), info);
    power::halt_or_exit(PANIC_EXIT_STATUS)
}
