//! What the CPU's hardware virtualization offers, as its backend reads it once: the MMU
//! takes its largest page from here, the backends their flush and tag choices, the banner
//! and the API their feature list.

use crate::addr::PageSize;
use alloc::string::String;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Nested paging (NPT or EPT with 4-level walks and write-back tables), which
    /// Taproot requires.
    pub nested_paging: bool,
    /// The largest leaf the nested walk takes: NPT follows the host's paging (2 MiB, and
    /// 1 GiB with CPUID Page1GB), EPT says so in IA32_VMX_EPT_VPID_CAP.
    pub max_page_size: PageSize,
    /// How many hardware tags (SVM ASIDs, VMX VPIDs) there are, tag 0 being the host's;
    /// 0 when VMs cannot have their own.
    pub tags: u32,
    /// A TLB flush can be limited to one VM (SVM flush-by-ASID, VMX INVEPT
    /// single-context).
    pub flush_one_vm: bool,
    /// VMX INVEPT all-context (SVM's TLB_CONTROL "flush all" always exists).
    pub flush_all: bool,
    /// One tag's translations can be flushed (VMX INVVPID single-context).
    pub flush_tag: bool,
    /// Every tag's translations can be flushed at once (VMX INVVPID all-context; SVM's
    /// TLB_CONTROL "flush all" always exists).
    pub flush_all_tags: bool,
    /// SVM NRIP save (VMX always reports the exiting instruction's length).
    pub next_rip: bool,
    /// SVM virtual GIF.
    pub vgif: bool,
    /// EPT accessed and dirty bits.
    pub accessed_dirty: bool,
    /// The VMX-preemption timer.
    pub preemption_timer: bool,
    /// The firmware turned virtualization off (SVM's VM_CR.SVMDIS, VMX's
    /// IA32_FEATURE_CONTROL locked with VMX off).
    pub disabled_by_firmware: bool,
    /// The feature list of the boot banner and `/v1/info`: comma-separated, no spaces,
    /// `-` when there is none.
    pub features: String,
}

/// The largest leaf a nested walk may take when it offers 2 MiB leaves if `two_mb` and
/// 1 GiB leaves if `one_gb`: 1 GiB only together with 2 MiB, since the MMU uses every size
/// up to its largest (a CPU with 1 GiB EPT leaves but no 2 MiB ones would take each 2 MiB
/// leaf as a misconfiguration).
pub const fn largest_leaf(two_mb: bool, one_gb: bool) -> PageSize {
    match (two_mb, one_gb) {
        (true, true) => PageSize::Size1G,
        (true, false) => PageSize::Size2M,
        (false, _) => PageSize::Size4K,
    }
}

impl Caps {
    /// What the CPU offers for flushing nested translations (`backend::tlb`).
    pub const fn tdp_flush_offer(&self, tag_covers_tdp: bool) -> super::tlb::FlushOffer {
        super::tlb::FlushOffer { root: self.flush_one_vm, all: self.flush_all, tag_covers_tdp }
    }

    /// No hardware virtualization at all.
    pub fn none() -> Self {
        Self {
            nested_paging: false,
            max_page_size: PageSize::Size4K,
            tags: 0,
            flush_one_vm: false,
            flush_all: false,
            flush_tag: false,
            flush_all_tags: false,
            next_rip: false,
            vgif: false,
            accessed_dirty: false,
            preemption_timer: false,
            disabled_by_firmware: false,
            features: "-".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_leaf_is_1g_only_with_2m_leaves_too() {
        assert_eq!(largest_leaf(true, true), PageSize::Size1G);
        assert_eq!(largest_leaf(true, false), PageSize::Size2M);
        assert_eq!(largest_leaf(false, true), PageSize::Size4K);
        assert_eq!(largest_leaf(false, false), PageSize::Size4K);
    }
}
