//! Per-CPU GDT and TSS. The double-fault handler runs on its own stack (IST), so a kernel
//! stack overflow still produces a diagnosis.

use alloc::boxed::Box;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use x86_64::structures::tss::TaskStateSegment;

/// IST slot (0-based in the TSS array, 1-based in the IDT entry) of the double-fault stack.
pub const DOUBLE_FAULT_IST_INDEX: u16 = 0;
const IST_STACK_SIZE: usize = 16 * 1024;

/// Builds and loads this CPU's GDT and TSS. FS and GS are left alone (GS holds the per-CPU
/// base).
pub fn init_cpu() {
    let ist_stack: &'static mut [u8] = Box::leak(alloc::vec![0u8; IST_STACK_SIZE].into_boxed_slice());
    let ist_top = VirtAddr::from_ptr(ist_stack.as_ptr_range().end).align_down(16u64);
    let mut tss = TaskStateSegment::new();
    tss.interrupt_stack_table[DOUBLE_FAULT_IST_INDEX as usize] = ist_top;
    let tss: &'static TaskStateSegment = Box::leak(Box::new(tss));

    let gdt: &'static mut GlobalDescriptorTable = Box::leak(Box::new(GlobalDescriptorTable::new()));
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tss_selector = gdt.append(Descriptor::tss_segment(tss));
    let gdt: &'static GlobalDescriptorTable = gdt;
    gdt.load();
    // SAFETY: the selectors index the GDT just loaded, whose descriptors are a 64-bit code
    // segment, a data segment and a present TSS; all live forever (leaked).
    unsafe {
        CS::set_reg(code);
        SS::set_reg(data);
        DS::set_reg(data);
        ES::set_reg(data);
        load_tss(tss_selector);
    }
}
