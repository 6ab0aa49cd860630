//! The direct map. The boot stub identity-maps [0, 4 GiB) with 2 MiB pages; RAM above
//! 4 GiB is added here, with 1 GiB pages when the CPU has them.

use crate::bootinfo::BootInfo;
use crate::mm::{frame, phys_to_virt};

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const HUGE: u64 = 1 << 7;
const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
const GIB: u64 = 1 << 30;
const MIB2: u64 = 2 << 20;
const BOOT_MAPPED_END: u64 = 4 * GIB;

unsafe extern "C" {
    static boot_pml4: u8;
}

fn table(phys: u64) -> *mut u64 {
    phys_to_virt(phys) as *mut u64
}

/// Returns the table that `entry_ptr` points to, allocating it if absent.
///
/// # Safety
/// `entry_ptr` must point into a live page table of the active hierarchy, and the caller
/// must be the only writer of that hierarchy (boot CPU, before SMP).
unsafe fn next_table(entry_ptr: *mut u64) -> Option<*mut u64> {
    // SAFETY: the caller guarantees `entry_ptr` is valid and unshared.
    unsafe {
        if *entry_ptr & PRESENT == 0 {
            let phys = frame::alloc_zeroed(1)?;
            *entry_ptr = phys | PRESENT | WRITABLE;
        }
        Some(table(*entry_ptr & ADDR_MASK))
    }
}

/// Maps all RAM above 4 GiB. Runs on the boot CPU before the APs start, which then load
/// the same CR3.
pub fn map_high_ram(info: &BootInfo) {
    let use_1g = super::cpu::has_1g_pages();
    // `boot_pml4` is the active PML4 (set by the boot stub); we are the only CPU running
    // and nothing else edits page tables yet.
    let pml4 = &raw const boot_pml4 as *mut u64;
    for range in info.ram() {
        let start = range.start.max(BOOT_MAPPED_END);
        if start >= range.end {
            continue;
        }
        let mut addr = start / MIB2 * MIB2;
        while addr < range.end {
            // SAFETY: see above; indices are masked to 0..512.
            unsafe {
                let Some(pdpt) = next_table(pml4.add(((addr >> 39) & 511) as usize)) else {
                    log::error!("paging: out of frames mapping {addr:#x}");
                    return;
                };
                let pdpte = pdpt.add(((addr >> 30) & 511) as usize);
                if use_1g && addr.is_multiple_of(GIB) && range.end - addr >= GIB {
                    *pdpte = addr | PRESENT | WRITABLE | HUGE;
                    addr += GIB;
                    continue;
                }
                let Some(pd) = next_table(pdpte) else {
                    log::error!("paging: out of frames mapping {addr:#x}");
                    return;
                };
                *pd.add(((addr >> 21) & 511) as usize) = addr | PRESENT | WRITABLE | HUGE;
                addr += MIB2;
            }
        }
    }
    x86_64::instructions::tlb::flush_all();
}

/// The physical address of the kernel's PML4 (for the AP trampoline).
pub fn kernel_pml4() -> u64 {
    &raw const boot_pml4 as u64
}
