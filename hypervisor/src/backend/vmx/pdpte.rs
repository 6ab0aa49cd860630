//! The PDPTEs of a PAE guest, for the CR0/CR4 writes the backend carries out itself
//! (`cr`). With EPT, VM entry loads the four PDPTEs from the VMCS, not from guest memory
//! (SDM Vol. 3C §28.3.1.6), and the CPU reads them from memory only when the guest itself
//! executes the MOV; so a write the backend emulates that turns PAE paging on (or changes
//! a bit that reloads them) must read them and put them in the VMCS, as KVM's
//! `load_pdptrs` does. They are read through the vCPU's current EPT root, without the MMU
//! lock (`mmu::translate_unlocked`: the vCPU is between an exit and its report of
//! quiescence, so no table it can reach is freed under it). A frame freed concurrently (a
//! slot deleted while the guest ran) can only give the guest stale bytes, as a racing
//! write would on a real machine.

#![deny(unsafe_code)]

use crate::addr::Gpa;
use crate::backend::control_regs::{pdpt_address, pdpte_valid};
use crate::backend::host::DirectMap;
use crate::mmu::ept::Ept;
use crate::mmu::translate_unlocked;
use crate::pages::PageSource;

/// What reading the PDPTEs gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pdptes {
    Loaded([u64; 4]),
    /// One is present with reserved bits set: the write is a #GP (SDM Vol. 3A §4.4.1).
    Invalid,
    /// The page holding them is not in the EPT yet: the exit becomes a nested page fault
    /// there, and the guest executes its MOV again once the page is mapped.
    NotMapped(Gpa),
}

/// The PDPTEs of CR3 `cr3`, read through the EPT root of `eptp`.
pub fn read(eptp: u64, cr3: u64, phys_bits: u8) -> Pdptes {
    let gpa = Gpa::new(pdpt_address(cr3));
    let (root, levels) = Ept::root_of(eptp);
    let Some((frame, size)) = translate_unlocked::<Ept, _>(&DirectMap, root, levels, gpa) else {
        return Pdptes::NotMapped(gpa);
    };
    let mut bytes = [0u8; 32];
    DirectMap.read_frame(frame, size, gpa.raw() & (size.bytes() - 1), &mut bytes);
    let mut pdptes = [0u64; 4];
    for (pdpte, chunk) in pdptes.iter_mut().zip(bytes.chunks_exact(8)) {
        *pdpte = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
    }
    if pdptes.iter().all(|&pdpte| pdpte_valid(pdpte, phys_bits)) {
        Pdptes::Loaded(pdptes)
    } else {
        Pdptes::Invalid
    }
}
