//! Guest RAM as the instruction emulator reads and writes it ([`GuestMemory`]): by
//! guest-physical address, through the VM's memory slots in the vCPU's address space
//! (`Mmu::read_guest` / `write_guest`, which allocate untouched backing as the guest's own
//! first touch would). Unlike the hypervisor's own loads, a write on the guest's behalf
//! respects read-only slots: it fails, whole, like a store the hardware would refuse.

use crate::addr::Gpa;
use crate::emulate::{GuestMemory, NotRam};
use crate::memslot::AsId;
use crate::mmu::{Mmu, Platform};
use alloc::vec::Vec;

/// One emulation's view of guest RAM.
pub(crate) struct GuestRam<'a, P: Platform> {
    mmu: &'a Mmu<P>,
    as_id: AsId,
    /// The writable slots of `as_id` (base, size), read at the first write: most
    /// emulations never write RAM.
    writable: Option<Vec<(u64, u64)>>,
}

impl<'a, P: Platform> GuestRam<'a, P> {
    pub(crate) fn new(mmu: &'a Mmu<P>, as_id: AsId) -> Self {
        Self { mmu, as_id, writable: None }
    }

    fn is_writable(&mut self, gpa: u64, len: u64) -> bool {
        let (mmu, as_id) = (self.mmu, self.as_id);
        let slots = self.writable.get_or_insert_with(|| {
            mmu.slots()
                .into_iter()
                .filter(|&(_, slot_as, _, _, flags)| slot_as == as_id && !flags.read_only)
                .map(|(_, _, base, size, _)| (base.raw(), size))
                .collect()
        });
        covered(slots, gpa, len)
    }
}

/// Whether `[gpa, gpa + len)` lies in the union of `ranges` (base, size), which do not
/// overlap (slots never do).
fn covered(ranges: &[(u64, u64)], gpa: u64, len: u64) -> bool {
    let mut at = gpa;
    let Some(end) = gpa.checked_add(len) else { return false };
    while at < end {
        match ranges.iter().find(|&&(base, size)| base <= at && at - base < size) {
            Some(&(base, size)) => at = base + size,
            None => return false,
        }
    }
    true
}

impl<P: Platform> GuestMemory for GuestRam<'_, P> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), NotRam> {
        self.mmu.read_guest(self.as_id, Gpa::new(gpa), buf).map_err(|_| NotRam)
    }

    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), NotRam> {
        if !self.is_writable(gpa, data.len() as u64) {
            return Err(NotRam);
        }
        self.mmu.write_guest(self.as_id, Gpa::new(gpa), data).map_err(|_| NotRam)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memslot::{SlotFlags, SlotId, SlotSpec};
    use crate::mmu::MmuConfig;
    use crate::mmu::ept::Ept;
    use crate::mmu::host::{HostPages, HostPagesConfig, HostPlatform, RecordingFlush};
    use alloc::sync::Arc;

    type Host = HostPlatform<Ept>;

    /// RAM at [0, 64 KiB), ROM at [64 KiB, 128 KiB).
    fn mmu() -> Mmu<Host> {
        let pages = HostPages::new(HostPagesConfig { tables: 64, frames_4k: 64, frames_2m: 0, frames_1g: 0 });
        let mmu = Mmu::new(
            MmuConfig::default(),
            Arc::new(pages),
            Arc::new(RecordingFlush::new()),
            Default::default(),
        );
        for (id, base, read_only) in [(0, 0, false), (1, 0x1_0000, true)] {
            let flags = SlotFlags { read_only, ..SlotFlags::default() };
            let spec =
                SlotSpec { id: SlotId(id), as_id: AsId::Normal, base: Gpa::new(base), size: 0x1_0000, flags };
            mmu.add_slot(spec).unwrap();
        }
        mmu
    }

    #[test]
    fn guest_writes_respect_read_only_slots_and_fail_whole() {
        let mmu = mmu();
        mmu.write_guest(AsId::Normal, Gpa::new(0x1_0000), b"rom!").unwrap();
        let mut ram = GuestRam::new(&mmu, AsId::Normal);
        ram.write(0x100, b"ram").unwrap();
        let mut buf = [0u8; 3];
        ram.read(0x100, &mut buf).unwrap();
        assert_eq!(&buf, b"ram");
        assert_eq!(ram.write(0x1_0000, b"xx"), Err(NotRam), "ROM");
        assert_eq!(ram.write(0xFFFE, b"abcd"), Err(NotRam), "runs into ROM");
        let mut buf = [0u8; 6];
        ram.read(0xFFFE, &mut buf).unwrap();
        assert_eq!(&buf, b"\0\0rom!", "nothing of the refused writes landed");
        assert_eq!(ram.read(0x2_0000, &mut [0u8; 1]), Err(NotRam), "no slot");
    }

    #[test]
    fn a_write_must_lie_in_writable_slots_all_along() {
        let slots = [(0, 0x1000), (0x1000, 0x1000), (0x4000, 0x1000)];
        assert!(covered(&slots, 0xFF8, 16), "across two adjacent slots");
        assert!(!covered(&slots, 0x1FF8, 16), "runs into the hole at 0x2000");
        assert!(!covered(&slots, 0x3000, 1));
        assert!(covered(&slots, 0x4FFF, 1));
        assert!(!covered(&slots, u64::MAX, 2), "wraps");
    }
}
