use super::*;

/// 32-bit protected mode, paging off, PAE on, LME set: one MOV to CR0 from long mode.
const READY_FOR_LONG_MODE: ControlRegs =
    ControlRegs { cr0: CR0_PE | 0x10, cr3: 0x1000, cr4: CR4_PAE, efer: EFER_LME, cs_long: false };
const LONG_MODE: ControlRegs = ControlRegs {
    cr0: CR0_PE | CR0_PG | 0x10,
    cr3: 0x1000,
    cr4: CR4_PAE,
    efer: EFER_LME | EFER_LMA,
    cs_long: true,
};
/// What VMX lets a CR4 hold on a typical CPU (FIXED1), less VMXE and SMXE.
const ALLOWED_CR4: u64 = 0x3727FF & !CR4_VMXE & !CR4_SMXE;

#[test]
fn setting_pg_with_lme_activates_long_mode_and_clearing_it_leaves() {
    let on = mov_to_cr0(&READY_FOR_LONG_MODE, CR0_PE | CR0_NE | CR0_PG).unwrap();
    assert!(on.regs.is_long_mode());
    assert_eq!(on.regs.efer, EFER_LME | EFER_LMA);
    assert!(!on.load_pdptes, "long mode takes no PDPTEs");
    let compat = ControlRegs { cs_long: false, ..on.regs };
    let off = mov_to_cr0(&compat, CR0_PE | CR0_NE).unwrap();
    assert_eq!(off.regs.efer, EFER_LME, "LMA goes, LME stays");
}

#[test]
fn long_mode_needs_pae_and_is_not_left_from_64_bit_code() {
    let no_pae = ControlRegs { cr4: 0, ..READY_FOR_LONG_MODE };
    assert_eq!(mov_to_cr0(&no_pae, CR0_PE | CR0_PG), Err(Gp));
    assert_eq!(mov_to_cr0(&LONG_MODE, CR0_PE), Err(Gp), "paging off from 64-bit code");
    assert_eq!(mov_to_cr4(&LONG_MODE, 0, ALLOWED_CR4), Err(Gp), "PAE cleared in long mode");
    assert_eq!(mov_to_cr4(&LONG_MODE, CR4_PAE | CR4_LA57, ALLOWED_CR4 | CR4_LA57), Err(Gp));
}

#[test]
fn reserved_and_inconsistent_cr0_values_fault() {
    let protected = ControlRegs { cr0: CR0_PE, ..ControlRegs::default() };
    assert_eq!(mov_to_cr0(&protected, CR0_PE | (1 << 32)), Err(Gp), "bits 63:32");
    assert_eq!(mov_to_cr0(&protected, CR0_PE | CR0_NW), Err(Gp), "NW without CD");
    assert_eq!(mov_to_cr0(&protected, CR0_PG), Err(Gp), "PG without PE");
    let ok = mov_to_cr0(&protected, CR0_PE | CR0_CD | CR0_NW | CR0_NE).unwrap();
    assert_eq!(ok.regs.cr0, CR0_PE | CR0_CD | CR0_NW | CR0_NE);
    assert_eq!(ok.regs.efer, 0);
}

#[test]
fn reserved_cr4_bits_and_vmxe_fault() {
    let regs = ControlRegs { cr0: CR0_PE, ..ControlRegs::default() };
    assert_eq!(mov_to_cr4(&regs, CR4_VMXE, ALLOWED_CR4), Err(Gp), "no guest is offered VMX");
    assert_eq!(mov_to_cr4(&regs, 1 << 31, ALLOWED_CR4), Err(Gp));
    assert_eq!(mov_to_cr4(&regs, CR4_PAE | CR4_PGE, ALLOWED_CR4).unwrap().regs.cr4, CR4_PAE | CR4_PGE);
}

#[test]
fn pcide_needs_long_mode_and_a_cr3_without_pcid() {
    let regs = ControlRegs { cr0: CR0_PE, ..ControlRegs::default() };
    assert_eq!(mov_to_cr4(&regs, CR4_PCIDE, ALLOWED_CR4), Err(Gp));
    let tagged = ControlRegs { cr3: 0x1005, ..LONG_MODE };
    assert_eq!(mov_to_cr4(&tagged, CR4_PAE | CR4_PCIDE, ALLOWED_CR4), Err(Gp));
    assert!(mov_to_cr4(&LONG_MODE, CR4_PAE | CR4_PCIDE, ALLOWED_CR4).is_ok());
    let with_pcid = ControlRegs { cr4: CR4_PAE | CR4_PCIDE, cs_long: false, ..LONG_MODE };
    assert_eq!(mov_to_cr0(&with_pcid, CR0_PE), Err(Gp), "paging off with PCIDs on");
}

#[test]
fn pae_paging_outside_long_mode_loads_the_pdptes() {
    let pae = ControlRegs { cr0: CR0_PE, cr3: 0x2000, cr4: CR4_PAE, efer: 0, cs_long: false };
    let on = mov_to_cr0(&pae, CR0_PE | CR0_PG).unwrap();
    assert!(on.load_pdptes && on.regs.is_pae_paging());
    let paging = on.regs;
    assert!(!mov_to_cr0(&paging, CR0_PE | CR0_PG | CR0_NE).unwrap().load_pdptes, "NE is no PDPTE bit");
    assert!(mov_to_cr4(&paging, CR4_PAE | CR4_PGE, ALLOWED_CR4).unwrap().load_pdptes);
    let legacy = ControlRegs { cr0: CR0_PE | CR0_PG, cr4: 0, ..pae };
    assert!(mov_to_cr4(&legacy, CR4_PAE, ALLOWED_CR4).unwrap().load_pdptes, "PAE turned on under paging");
}

#[test]
fn efer_writes_keep_lma_and_refuse_reserved_bits_and_lme_changes_under_paging() {
    let real = ControlRegs::default();
    assert_eq!(wrmsr_efer(&real, EFER_LME | EFER_SCE), Ok(EFER_LME | EFER_SCE));
    assert_eq!(wrmsr_efer(&real, EFER_LMA), Ok(0), "LMA is read-only");
    assert_eq!(wrmsr_efer(&real, 1 << 12), Err(Gp), "SVME: no guest is offered SVM");
    assert_eq!(wrmsr_efer(&real, 1 << 2), Err(Gp));
    assert_eq!(wrmsr_efer(&LONG_MODE, EFER_SCE), Err(Gp), "LME cleared under paging");
    assert_eq!(wrmsr_efer(&LONG_MODE, EFER_LME | EFER_NXE), Ok(EFER_LME | EFER_LMA | EFER_NXE));
}

#[test]
fn pdptes_with_reserved_bits_are_refused_only_when_present() {
    assert!(pdpte_valid(0, 36));
    assert!(pdpte_valid(0x1234_5001, 36));
    assert!(!pdpte_valid(0x1234_5003, 36), "bit 1");
    assert!(!pdpte_valid(0x1234_5081, 36), "bit 7");
    assert!(!pdpte_valid(0x10_0000_0001, 36), "above MAXPHYADDR");
    assert!(pdpte_valid(0xFFFF_FFFF_FFFF_FFFE, 36), "not present: anything goes");
    assert_eq!(pdpt_address(0x1234_5678), 0x1234_5660);
}
