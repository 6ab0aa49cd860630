//! What a VM entry must flush of the nested (TDP) translations, decided once for both
//! backends and host-tested, since both emulators flush everything at every world switch
//! and would hide a missing flush.
//!
//! The rule: a vCPU flushes the translations of the root it is about to enter with when
//! 1. the MMU asked it to (`backend::vcpu_set`: a zap, a reset), or
//! 2. that root is not the one its last entry used on this CPU ([`RootTracker`]): an
//!    address-space switch, a cached root loaded again, a root whose table served another
//!    VM (or another root of this VM) on this CPU before. KVM flushes every newly loaded
//!    root for the same reason ("the provenance of the root is unknown", `kvm_mmu_load`).
//!
//! Why flushing only the entered root is enough. VMX tags guest-physical translations with
//! the EPTP's table address (EP4TA, SDM Vol. 3C §29.4.1), shared by every vCPU that uses
//! that root on the CPU; a root is used by a vCPU only after that vCPU flushed it on that
//! CPU (point 2), and every vCPU of the VM flushes its current root when the MMU asks
//! (point 1). So a translation cached under a root is either flushed before a later entry
//! with that root or was created after the last flush the MMU asked for. SVM tags every
//! translation with the ASID (APM Vol. 2 §15.16), not with nCR3: the vCPU's ASID is its
//! own on this CPU (`backend::tags`), so "this root" is "this ASID", and a fresh ASID has
//! nothing cached at all.
//!
//! VM destroy. When a VM goes, its vCPUs are gone first, so the MMU's final flush
//! (`Mmu`'s drop: zap, flush the VM, then free frames and tables) reaches no vCPU of it;
//! what they cached stays in the TLBs of the CPUs they ran on. It is unreachable before
//! any of those frames or tables can serve a guest again: on VMX it is tagged with the
//! VM's EPTPs, and any later entry with such an EPTP (a root table reused by any VM)
//! flushes it first, by point 2 (KVM relies on the same flush-on-load to skip the flush
//! when it frees a root); on SVM it is tagged with ASIDs the CPU hands to no other vCPU
//! until its generation rolls over with a flush of every ASID (`backend::tags`). The
//! host's own accesses never use guest-tagged translations. The model test
//! (`no_entry_reaches_translations_of_an_older_or_other_root`) destroys vCPUs and reuses
//! their root tables for new ones.
//!
//! How it is encoded ([`FlushOffer`], from the CPU's capabilities): one root's
//! translations with INVEPT single-context of the new EPTP or SVM flush-by-ASID; where
//! that does not exist, a fresh tag where the tag covers nested translations (SVM: a new
//! ASID), else everything on this CPU (INVEPT all-context, TLB_CONTROL flush-all). The
//! all-context form is never preferred: it throws away every other VM's translations on
//! the CPU.

use super::tags::{TagDecision, TagFlush};

/// What the CPU can flush of the nested translations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushOffer {
    /// One root's translations on this CPU: INVEPT single-context (IA32_VMX_EPT_VPID_CAP
    /// bits 20 and 25), SVM flush-by-ASID (CPUID Fn8000_000A EDX bit 6).
    pub root: bool,
    /// Every root's on this CPU: INVEPT all-context (bits 20 and 26); SVM always.
    pub all: bool,
    /// The vCPU's tag also tags its nested translations (SVM ASIDs; VMX VPIDs do not,
    /// SDM Vol. 3C §29.4.1): a fresh tag has none cached, and taking one is a flush.
    pub tag_covers_tdp: bool,
}

impl FlushOffer {
    /// Whether nested translations can be flushed at all (a backend refuses to run
    /// otherwise).
    pub const fn can_flush(&self) -> bool {
        self.root || self.all || self.tag_covers_tdp
    }
}

/// The nested-translation flush an entry runs, besides the tag's own ([`TagFlush`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TdpFlush {
    None,
    /// The translations of the root being entered (INVEPT single-context of the new EPTP;
    /// SVM flush-by-ASID of the vCPU's ASID).
    Root,
    /// Every nested translation on this CPU (INVEPT all-context; TLB_CONTROL flush-all).
    All,
}

/// An entry's flushes: the tag it runs under (with the tag's own flush) and the nested
/// translations to drop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryFlush {
    pub tag: TagDecision,
    pub tdp: TdpFlush,
}

/// What the CPU's tag numbering answered: the decision, and whether the tag is fresh
/// ([`super::tags::VcpuTag::is_fresh_since`]).
pub type TagChoice = (TagDecision, bool);

/// The flushes of one entry. `stale` says the entered root's translations on this CPU
/// must go ([`RootTracker::on_entry`]); `choose_tag` is the CPU's tag numbering
/// (`CpuTags::on_entry`), told whether the vCPU must drop its tag first
/// ([`super::tags::VcpuTag::forget`]).
pub fn entry_flush(stale: bool, offer: FlushOffer, choose_tag: impl FnOnce(bool) -> TagChoice) -> EntryFlush {
    let drop_tag = stale && offer.tag_covers_tdp && !offer.root;
    let (tag, fresh) = choose_tag(drop_tag);
    let fresh_tag_covers = offer.tag_covers_tdp && fresh;
    let tdp = if !stale || fresh_tag_covers {
        TdpFlush::None
    } else if offer.root {
        TdpFlush::Root
    } else {
        TdpFlush::All
    };
    EntryFlush { tag, tdp }
}

/// The root (EPTP / nCR3) a vCPU's last entry used, and on which CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RootTracker {
    last: Option<(usize, u64)>,
}

impl RootTracker {
    /// Records an entry with `root` on `cpu`; returns whether that root's translations on
    /// this CPU must be flushed first: the MMU `requested` it, or the vCPU did not enter
    /// with this root on this CPU last time.
    pub fn on_entry(&mut self, cpu: usize, root: u64, requested: bool) -> bool {
        let changed = self.last != Some((cpu, root));
        self.last = Some((cpu, root));
        requested || changed
    }

    /// Forgets the last root: the next entry flushes whatever it enters with.
    pub fn forget(&mut self) {
        self.last = None;
    }
}

/// Whether a TLB_CONTROL-style single value covers both flushes: the larger of the two.
/// `Root` and `ThisTag` both mean "the vCPU's tag" where the tag covers nested
/// translations (SVM).
pub fn combined(tdp: TdpFlush, tag: TagFlush) -> TdpFlush {
    match (tdp, tag) {
        (TdpFlush::All, _) | (_, TagFlush::All) => TdpFlush::All,
        (TdpFlush::Root, _) | (_, TagFlush::ThisTag) => TdpFlush::Root,
        (TdpFlush::None, TagFlush::None) => TdpFlush::None,
    }
}

#[cfg(test)]
mod tests;
