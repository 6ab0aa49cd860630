//! Register semantics of the local APIC against SDM vol. 3A chapter 11.

use super::timer::divisor;
use super::*;

const BUS_1GHZ: LapicConfig =
    LapicConfig { bus_hz: 1_000_000_000, tsc_hz: 1_000_000_000, tsc_origin_ns: 0, has_x2apic: true };

// xAPIC page offsets (SDM vol. 3A Table 11-1), spelled out so the tests check the map.
const ID: u32 = 0x20;
const VERSION_REG: u32 = 0x30;
const TPR: u32 = 0x80;
const PPR: u32 = 0xA0;
const EOI: u32 = 0xB0;
const LDR: u32 = 0xD0;
const DFR: u32 = 0xE0;
const SVR: u32 = 0xF0;
const ISR0: u32 = 0x100;
const TMR0: u32 = 0x180;
const IRR0: u32 = 0x200;
const ESR: u32 = 0x280;
const ICR_LOW: u32 = 0x300;
const ICR_HIGH: u32 = 0x310;
const LVT_TIMER: u32 = 0x320;
const LVT_LINT0: u32 = 0x350;
const LVT_LINT1: u32 = 0x360;
const LVT_ERROR: u32 = 0x370;
const INITIAL_COUNT: u32 = 0x380;
const CURRENT_COUNT: u32 = 0x390;
const DIVIDE: u32 = 0x3E0;
const DIVIDE_BY_1: u32 = 0b1011;
const PERIODIC: u32 = 0b01 << 17;
const TSC_DEADLINE_MODE: u32 = 0b10 << 17;
const MASKED: u32 = 1 << 16;

/// A software-enabled LAPIC in xAPIC mode.
fn enabled(id: u32, config: LapicConfig) -> Lapic {
    let mut lapic = Lapic::new(id, id == 0, config);
    assert_eq!(lapic.write_mmio(SVR, 0x1FF, 0), LapicEffect::None);
    lapic
}

fn x2apic(id: u32) -> Lapic {
    let mut lapic = Lapic::new(id, false, BUS_1GHZ);
    lapic.set_apic_base(lapic.apic_base() | APIC_BASE_EXTD).expect("xAPIC -> x2APIC is legal");
    assert_eq!(lapic.write_msr(0x80F, 0x1FF, 0), Ok(LapicEffect::None), "SVR");
    lapic
}

fn fixed(vector: u8, trigger: Trigger) -> InterruptMessage {
    InterruptMessage { trigger, ..InterruptMessage::fixed(vector, 0) }
}

/// A register write that asks nothing of the VM.
fn set(lapic: &mut Lapic, offset: u32, value: u32, now_ns: u64) {
    assert_eq!(lapic.write_mmio(offset, value, now_ns), LapicEffect::None, "write {value:#x} to {offset:#x}");
}

/// Injects the pending vector, as the backend would; returns it.
fn inject(lapic: &mut Lapic) -> Option<u8> {
    let vector = lapic.pending_vector()?;
    lapic.acknowledge(vector);
    Some(vector)
}

fn ipi(lapic: &mut Lapic, high: u32, low: u32) -> Option<InterruptMessage> {
    assert_eq!(lapic.write_mmio(ICR_HIGH, high, 0), LapicEffect::None);
    match lapic.write_mmio(ICR_LOW, low, 0) {
        LapicEffect::Ipi(message) => Some(message),
        LapicEffect::None => None,
        other => panic!("an ICR write answered {other:?}"),
    }
}

#[test]
fn power_on_and_init_states_match_the_sdm() {
    let mut lapic = Lapic::new(3, true, BUS_1GHZ);
    assert_eq!(lapic.apic_base(), 0xFEE0_0900, "base, EN, BSP");
    assert_eq!(Lapic::new(1, false, BUS_1GHZ).apic_base(), 0xFEE0_0800);
    assert_eq!(lapic.mode(), ApicMode::XApic);
    let expected = [
        (ID, 3 << 24),
        (VERSION_REG, 0x0005_0014),
        (TPR, 0),
        (PPR, 0),
        (LDR, 0),
        (DFR, 0xFFFF_FFFF),
        (SVR, 0xFF),
        (ESR, 0),
        (ICR_LOW, 0),
        (ICR_HIGH, 0),
        (INITIAL_COUNT, 0),
        (CURRENT_COUNT, 0),
        (DIVIDE, 0),
    ];
    let check = |lapic: &Lapic, id: u32| {
        for (offset, value) in expected {
            let value = if offset == ID { id << 24 } else { value };
            assert_eq!(lapic.read_mmio(offset, 0), value, "offset {offset:#x}");
        }
        for lvt in (0x320..=0x370).step_by(16) {
            assert_eq!(lapic.read_mmio(lvt, 0), MASKED, "LVT {lvt:#x}: all zero but the mask");
        }
        for i in 0..8 {
            for base in [ISR0, TMR0, IRR0] {
                assert_eq!(lapic.read_mmio(base + 16 * i, 0), 0);
            }
        }
    };
    check(&lapic, 3);

    // INIT: everything back but the (written) ID.
    set(&mut lapic, ID, 9 << 24, 0);
    for (offset, value) in [(TPR, 0x20), (LDR, 0x0100_0000), (DFR, 0), (SVR, 0x1FF), (LVT_TIMER, 0x40)] {
        set(&mut lapic, offset, value, 0);
    }
    set(&mut lapic, DIVIDE, DIVIDE_BY_1, 0);
    set(&mut lapic, INITIAL_COUNT, 100, 0);
    lapic.accept(&fixed(0x50, Trigger::Level));
    inject(&mut lapic);
    lapic.accept(&fixed(0x60, Trigger::Edge));
    lapic.reset();
    check(&lapic, 9);
    assert_eq!(lapic.next_deadline(), None);
    assert_eq!(lapic.apic_base(), 0xFEE0_0900, "INIT leaves IA32_APIC_BASE alone");
}

#[test]
fn tpr_blocks_vectors_of_its_priority_class_and_below() {
    let mut lapic = enabled(0, BUS_1GHZ);
    lapic.accept(&fixed(0x45, Trigger::Edge));
    set(&mut lapic, TPR, 0x40, 0);
    assert_eq!((lapic.pending_vector(), lapic.read_mmio(PPR, 0)), (None, 0x40), "same class is blocked");
    set(&mut lapic, TPR, 0x3F, 0);
    assert_eq!(lapic.pending_vector(), Some(0x45));
    set(&mut lapic, TPR, 0xFFF, 0);
    assert_eq!(lapic.read_mmio(TPR, 0), 0xFF, "TPR is 8 bits");
    assert_eq!(lapic.pending_vector(), None);
    lapic.set_tpr(0);
    assert_eq!(lapic.pending_vector(), Some(0x45));
}

#[test]
fn ppr_is_the_higher_of_tpr_and_the_in_service_class() {
    let mut lapic = enabled(0, BUS_1GHZ);
    lapic.accept(&fixed(0x61, Trigger::Edge));
    assert_eq!(inject(&mut lapic), Some(0x61));
    assert_eq!(lapic.read_mmio(ISR0 + 3 * 16, 0), 1 << 1, "vector 0x61 in ISR word 3");
    assert_eq!(lapic.read_mmio(PPR, 0), 0x60);
    set(&mut lapic, TPR, 0x2F, 0);
    assert_eq!(lapic.read_mmio(PPR, 0), 0x60);
    set(&mut lapic, TPR, 0x6A, 0);
    assert_eq!(lapic.read_mmio(PPR, 0), 0x6A, "equal class: TPR with its low bits");
    set(&mut lapic, TPR, 0x7A, 0);
    assert_eq!(lapic.read_mmio(PPR, 0), 0x7A);
}

#[test]
fn a_higher_class_nests_over_the_one_in_service_and_eoi_retires_the_highest() {
    let mut lapic = enabled(0, BUS_1GHZ);
    lapic.accept(&fixed(0x40, Trigger::Edge));
    assert_eq!(inject(&mut lapic), Some(0x40));
    lapic.accept(&fixed(0x30, Trigger::Edge));
    lapic.accept(&fixed(0x41, Trigger::Edge));
    assert_eq!(lapic.pending_vector(), None, "a lower and an equal class wait");
    lapic.accept(&fixed(0x80, Trigger::Edge));
    assert_eq!(inject(&mut lapic), Some(0x80), "a higher class interrupts the handler");
    assert_eq!(lapic.pending_vector(), None);
    assert_eq!(lapic.write_mmio(EOI, 0, 0), LapicEffect::Eoi { vector: 0x80, level: false });
    assert_eq!(lapic.pending_vector(), None, "0x40 still in service");
    assert_eq!(lapic.write_mmio(EOI, 0, 0), LapicEffect::Eoi { vector: 0x40, level: false });
    assert_eq!(inject(&mut lapic), Some(0x41));
    assert_eq!(lapic.write_mmio(EOI, 0, 0), LapicEffect::Eoi { vector: 0x41, level: false });
    assert_eq!(inject(&mut lapic), Some(0x30));
    assert_eq!(lapic.write_mmio(EOI, 0, 0), LapicEffect::Eoi { vector: 0x30, level: false });
    assert_eq!(lapic.write_mmio(EOI, 0, 0), LapicEffect::None, "nothing in service");
}

#[test]
fn level_triggered_eoi_reports_the_vector() {
    let mut lapic = enabled(0, BUS_1GHZ);
    lapic.accept(&fixed(0x51, Trigger::Level));
    assert_eq!(lapic.read_mmio(TMR0 + 2 * 16, 0), 1 << 17);
    assert_eq!(lapic.read_mmio(IRR0 + 2 * 16, 0), 1 << 17);
    assert_eq!(inject(&mut lapic), Some(0x51));
    assert_eq!(lapic.read_mmio(IRR0 + 2 * 16, 0), 0);
    assert_eq!(lapic.write_mmio(EOI, 0, 0), LapicEffect::Eoi { vector: 0x51, level: true });
    // The same vector edge triggered clears its TMR bit.
    lapic.accept(&fixed(0x51, Trigger::Edge));
    assert_eq!(lapic.read_mmio(TMR0 + 2 * 16, 0), 0);
    inject(&mut lapic);
    assert_eq!(lapic.write_mmio(EOI, 0, 0), LapicEffect::Eoi { vector: 0x51, level: false });
}

#[test]
fn software_disabled_lapic_drops_fixed_interrupts_but_takes_the_others() {
    let mut lapic = Lapic::new(0, true, BUS_1GHZ);
    lapic.accept(&fixed(0x40, Trigger::Edge));
    assert_eq!(lapic.pending_vector(), None);
    for (delivery, vector) in [(DeliveryMode::Nmi, 0), (DeliveryMode::Init, 0), (DeliveryMode::StartUp, 0x9A)]
    {
        lapic.accept(&InterruptMessage { delivery, ..InterruptMessage::fixed(vector, 0) });
    }
    lapic.accept(&InterruptMessage { delivery: DeliveryMode::ExtInt, ..InterruptMessage::fixed(0, 0) });
    assert_eq!(
        lapic.pending_events(),
        PendingEvents { nmi: true, init: true, sipi: Some(0x9A), ext_int: true }
    );
    assert!(lapic.take_nmi() && lapic.take_init() && lapic.take_ext_int());
    assert_eq!(lapic.take_sipi(), Some(0x9A));
    assert_eq!(lapic.pending_events(), PendingEvents::default());
    // An INIT level de-assert and an SMI do nothing.
    let deassert = InterruptMessage {
        delivery: DeliveryMode::Init,
        trigger: Trigger::Level,
        assert: false,
        ..InterruptMessage::fixed(0, 0)
    };
    lapic.accept(&deassert);
    lapic.accept(&InterruptMessage { delivery: DeliveryMode::Smi, ..InterruptMessage::fixed(0, 0) });
    assert_eq!(lapic.pending_events(), PendingEvents::default());
}

#[test]
fn software_disable_masks_every_lvt_and_keeps_them_masked() {
    let mut lapic = enabled(0, BUS_1GHZ);
    for lvt in (0x320..=0x370).step_by(16) {
        set(&mut lapic, lvt, 0x40, 0);
        assert_eq!(lapic.read_mmio(lvt, 0) & MASKED, 0);
    }
    set(&mut lapic, SVR, 0xFF, 0);
    for lvt in (0x320..=0x370).step_by(16) {
        assert_eq!(lapic.read_mmio(lvt, 0), MASKED | 0x40, "LVT {lvt:#x}");
    }
    set(&mut lapic, LVT_TIMER, 0x41, 0);
    assert_eq!(lapic.read_mmio(LVT_TIMER, 0), MASKED | 0x41, "cannot unmask while disabled");
    set(&mut lapic, SVR, 0x1FF, 0);
    assert_eq!(lapic.read_mmio(LVT_TIMER, 0), MASKED | 0x41, "enabling does not unmask");
    set(&mut lapic, LVT_TIMER, 0x41, 0);
    assert_eq!(lapic.read_mmio(LVT_TIMER, 0), 0x41);
    assert_eq!(lapic.read_mmio(SVR, 0), 0x1FF);
    set(&mut lapic, SVR, 0xFFFF_FFFF, 0);
    assert_eq!(lapic.read_mmio(SVR, 0), 0x3FF, "no EOI-broadcast suppression");
}

#[test]
fn icr_writes_produce_every_destination_kind_and_shorthand() {
    let mut lapic = enabled(0, BUS_1GHZ);
    let message = ipi(&mut lapic, 3 << 24, 0x40).expect("fixed IPI");
    assert_eq!(message, InterruptMessage::fixed(0x40, 3));
    assert_eq!(lapic.read_mmio(ICR_LOW, 0), 0x40, "delivery status idle at once");
    assert_eq!(lapic.read_mmio(ICR_HIGH, 0), 3 << 24);

    let logical = ipi(&mut lapic, 0x0C << 24, 1 << 11 | 0x41).expect("logical");
    assert_eq!((logical.destination_mode, logical.destination), (DestinationMode::Logical, 0x0C));
    let lowest = ipi(&mut lapic, 0, 0b001 << 8 | 0x42).expect("lowest priority");
    assert_eq!(lowest.delivery, DeliveryMode::LowestPriority);

    for (bits, shorthand) in [
        (0b00, Shorthand::None),
        (0b01, Shorthand::ToSelf),
        (0b10, Shorthand::AllIncludingSelf),
        (0b11, Shorthand::AllExcludingSelf),
    ] {
        let message = ipi(&mut lapic, 0, bits << 18 | 0x43).expect("shorthand");
        assert_eq!(message.shorthand, shorthand);
    }

    let nmi = ipi(&mut lapic, 1 << 24, 0b100 << 8).expect("NMI");
    assert_eq!((nmi.delivery, nmi.destination), (DeliveryMode::Nmi, 1));
    // INIT assert (level, asserted), INIT de-assert (level, not asserted), SIPI.
    let init = ipi(&mut lapic, 1 << 24, 0b11 << 14 | 0b101 << 8).expect("INIT");
    assert_eq!((init.delivery, init.trigger, init.assert), (DeliveryMode::Init, Trigger::Level, true));
    let deassert = ipi(&mut lapic, 0, 0b11 << 18 | 1 << 15 | 0b101 << 8).expect("INIT de-assert");
    assert_eq!((deassert.shorthand, deassert.assert), (Shorthand::AllExcludingSelf, false));
    let sipi = ipi(&mut lapic, 1 << 24, 0b110 << 8 | 0x9A).expect("SIPI");
    assert_eq!((sipi.delivery, sipi.vector), (DeliveryMode::StartUp, 0x9A));
    let level = ipi(&mut lapic, 0, 1 << 15 | 1 << 14 | 0x44).expect("level fixed");
    assert_eq!((level.trigger, level.assert), (Trigger::Level, true));

    // Reserved delivery modes, SMI and illegal vectors send nothing; the last is an error.
    for low in [0b011 << 8 | 0x40, 0b111 << 8 | 0x40, 0b010 << 8] {
        assert_eq!(ipi(&mut lapic, 0, low), None, "ICR low {low:#x}");
    }
    assert_eq!(ipi(&mut lapic, 0, 0x0F), None);
    set(&mut lapic, ESR, 0, 0);
    assert_eq!(lapic.read_mmio(ESR, 0), 1 << 5, "send illegal vector");
}

#[test]
fn physical_destinations_and_shorthands_match() {
    let lapic = enabled(3, BUS_1GHZ);
    let physical = |dest| lapic.matches_destination(dest, DestinationMode::Physical, Shorthand::None, false);
    assert!(physical(3) && physical(0xFF));
    assert!(!physical(4));
    assert!(lapic.matches_destination(9, DestinationMode::Physical, Shorthand::ToSelf, true));
    assert!(!lapic.matches_destination(3, DestinationMode::Physical, Shorthand::ToSelf, false));
    assert!(lapic.matches_destination(9, DestinationMode::Logical, Shorthand::AllIncludingSelf, true));
    assert!(!lapic.matches_destination(3, DestinationMode::Physical, Shorthand::AllExcludingSelf, true));
    assert!(lapic.matches_destination(9, DestinationMode::Physical, Shorthand::AllExcludingSelf, false));

    let x2 = x2apic(0x123);
    let physical = |dest| x2.matches_destination(dest, DestinationMode::Physical, Shorthand::None, false);
    assert!(physical(0x123) && physical(0xFFFF_FFFF));
    assert!(!physical(0x23) && !physical(0xFF));

    let mut disabled = enabled(3, BUS_1GHZ);
    disabled.set_apic_base(0).expect("disable");
    assert!(!disabled.matches_destination(3, DestinationMode::Physical, Shorthand::None, false));
    assert!(!disabled.matches_destination(0, DestinationMode::Physical, Shorthand::AllIncludingSelf, true));
}

#[test]
fn logical_destinations_match_in_flat_and_cluster_models() {
    let mut lapic = enabled(0, BUS_1GHZ);
    let logical = |lapic: &Lapic, dest| {
        lapic.matches_destination(dest, DestinationMode::Logical, Shorthand::None, false)
    };
    // Flat: a bit per APIC in LDR bits 31:24.
    set(&mut lapic, LDR, 0x04FF_FFFF, 0);
    assert_eq!(lapic.read_mmio(LDR, 0), 0x0400_0000);
    assert!(logical(&lapic, 0x04) && logical(&lapic, 0x06) && logical(&lapic, 0xFF));
    assert!(!logical(&lapic, 0x01) && !logical(&lapic, 0));
    // Cluster: cluster in bits 31:28, members in 27:24.
    set(&mut lapic, DFR, 0x0000_0000, 0);
    assert_eq!(lapic.read_mmio(DFR, 0), 0x0FFF_FFFF, "bits 27:0 read as ones");
    set(&mut lapic, LDR, 0x3200_0000, 0);
    assert!(logical(&lapic, 0x32) && logical(&lapic, 0x36) && logical(&lapic, 0xFF));
    assert!(!logical(&lapic, 0x22) && !logical(&lapic, 0x34));
    // Neither model: nothing matches but the broadcast.
    set(&mut lapic, DFR, 0x5000_0000, 0);
    assert!(!logical(&lapic, 0x32) && logical(&lapic, 0xFF));
}

#[test]
fn x2apic_logical_destination_derives_from_the_id() {
    let lapic = x2apic(0x35);
    assert_eq!(lapic.read_msr(0x80D, 0), Ok(0x0003_0020), "cluster 3, bit 5");
    let logical = |dest| lapic.matches_destination(dest, DestinationMode::Logical, Shorthand::None, false);
    assert!(logical(0x0003_0020) && logical(0x0003_FFFF) && logical(0xFFFF_FFFF));
    assert!(!logical(0x0002_0020) && !logical(0x0003_0010));
}

#[test]
fn x2apic_msrs_raise_gp_outside_x2apic_mode_and_where_the_sdm_says() {
    let mut lapic = enabled(1, BUS_1GHZ);
    assert_eq!(lapic.read_msr(0x802, 0), Err(Gp), "xAPIC mode");
    assert_eq!(lapic.write_msr(0x808, 0, 0), Err(Gp));

    let mut lapic = x2apic(1);
    assert_eq!(lapic.read_msr(0x802, 0), Ok(1));
    assert_eq!(lapic.read_msr(0x803, 0), Ok(0x0005_0014));
    // Registers x2APIC does not have, and write-only ones on read.
    for index in [0x800, 0x809, 0x80C, 0x80E, 0x82F, 0x831, 0x83A, 0x8FF, 0x80B, 0x83F, 0x7FF, 0x900] {
        assert_eq!(lapic.read_msr(index, 0), Err(Gp), "read {index:#x}");
    }
    // Read-only and absent registers on write.
    for index in [0x802, 0x803, 0x80A, 0x80D, 0x80E, 0x810, 0x818, 0x820, 0x831, 0x839, 0x809, 0x82F] {
        assert_eq!(lapic.write_msr(index, 0, 0), Err(Gp), "write {index:#x}");
    }
    // Reserved bits.
    for (index, value) in [
        (0x808, 1 << 32),
        (0x808, 0x100),
        (0x80B, 1),
        (0x828, 1),
        (0x80F, 1 << 12),
        (0x832, 1 << 19),
        (0x832, 0x700),
        (0x83E, 0b100),
        (0x83F, 0x100),
    ] {
        assert_eq!(lapic.write_msr(index, value, 0), Err(Gp), "write {value:#x} to {index:#x}");
    }
    assert_eq!(lapic.read_msr(0x808, 0), Ok(0), "a refused write changes nothing");
    // The same registers with legal values.
    assert_eq!(lapic.write_msr(0x808, 0x20, 0), Ok(LapicEffect::None));
    assert_eq!(lapic.write_msr(0x80B, 0, 0), Ok(LapicEffect::None));
    assert_eq!(lapic.write_msr(0x828, 0, 0), Ok(LapicEffect::None));
    // A read-modify-write carrying LINT0's remote IRR and delivery status bits is fine.
    assert_eq!(lapic.write_msr(0x835, 0x1_5700, 0), Ok(LapicEffect::None));
    assert_eq!(lapic.read_msr(0x835, 0), Ok(0x1_0700));
    assert_eq!(lapic.read_msr(0x808, 0), Ok(0x20));
    // The MMIO page is not the APIC's in x2APIC mode.
    assert_eq!(lapic.read_mmio(TPR, 0), 0);
    assert_eq!(lapic.write_mmio(TPR, 0x30, 0), LapicEffect::None);
    assert_eq!(lapic.read_msr(0x808, 0), Ok(0x20));
}

#[test]
fn x2apic_icr_is_one_64_bit_register_and_self_ipi_targets_self() {
    let mut lapic = x2apic(2);
    let icr = 0x1234_5678_u64 << 32 | 1 << 11 | 0x50;
    let Ok(LapicEffect::Ipi(message)) = lapic.write_msr(0x830, icr, 0) else { panic!("an IPI") };
    assert_eq!(
        (message.destination, message.destination_mode, message.vector),
        (0x1234_5678, DestinationMode::Logical, 0x50)
    );
    assert_eq!(lapic.read_msr(0x830, 0), Ok(icr));
    for reserved in [1 << 13, 1 << 16, 1 << 17, 1 << 20, 1 << 31] {
        assert_eq!(lapic.write_msr(0x830, reserved | 0x50, 0), Err(Gp), "bit {reserved:#x}");
    }
    assert!(matches!(lapic.write_msr(0x830, 1 << 12 | 0x50, 0), Ok(LapicEffect::Ipi(_))), "busy bit ignored");

    let Ok(LapicEffect::Ipi(message)) = lapic.write_msr(0x83F, 0x61, 0) else { panic!("a self IPI") };
    assert_eq!(
        (message.shorthand, message.vector, message.delivery),
        (Shorthand::ToSelf, 0x61, DeliveryMode::Fixed)
    );
    assert!(lapic.matches_destination(
        message.destination,
        message.destination_mode,
        message.shorthand,
        true
    ));
    lapic.accept(&message);
    assert_eq!(lapic.pending_vector(), Some(0x61));
}

#[test]
fn apic_base_transitions_follow_the_sdm() {
    let mut lapic = enabled(0x1_02, BUS_1GHZ);
    set(&mut lapic, TPR, 0x20, 0);
    assert_eq!(lapic.read_mmio(ID, 0), 0x02 << 24, "the xAPIC ID is the low byte");
    for value in [1 << 9, 1 << 52, 1 << 63, 0xFF, APIC_BASE_EN | APIC_BASE_EXTD] {
        assert_eq!(lapic.set_apic_base(lapic.apic_base() ^ value), Err(Gp), "{value:#x}");
    }
    let no_x2apic = LapicConfig { has_x2apic: false, ..BUS_1GHZ };
    assert_eq!(Lapic::new(0, true, no_x2apic).set_apic_base(0xFEE0_0D00), Err(Gp), "EXTD is reserved");

    // xAPIC -> x2APIC keeps the registers; the ID is the full one.
    assert_eq!(lapic.set_apic_base(0xFEE0_0C00), Ok(()));
    assert_eq!(
        (lapic.mode(), lapic.read_msr(0x802, 0), lapic.read_msr(0x808, 0)),
        (ApicMode::X2Apic, Ok(0x102), Ok(0x20))
    );
    assert_eq!(lapic.set_apic_base(0xFEE0_0800), Err(Gp), "x2APIC -> xAPIC");
    // x2APIC -> disabled resets the registers but not the ID.
    assert_eq!(lapic.set_apic_base(0), Ok(()));
    assert_eq!(
        (lapic.mode(), lapic.read_msr(0x808, 0), lapic.read_mmio(TPR, 0)),
        (ApicMode::Disabled, Err(Gp), 0)
    );
    assert_eq!(lapic.set_apic_base(0xFEE0_0C00), Err(Gp), "disabled -> x2APIC");
    lapic.accept(&fixed(0x40, Trigger::Edge));
    lapic.local_interrupt(Lvt::Lint0);
    lapic.local_interrupt(Lvt::Lint1);
    assert_eq!(lapic.pending_vector(), None);
    assert!(lapic.take_ext_int() && lapic.take_nmi(), "LINT0/LINT1 are INTR and NMI");
    // Disabled -> xAPIC: power-on registers, the same ID; another base is not taken.
    assert_eq!(lapic.set_apic_base(0x1234_5000 | APIC_BASE_EN), Ok(()));
    assert_eq!(lapic.apic_base(), 0xFEE0_0800);
    assert_eq!(
        (lapic.read_mmio(ID, 0), lapic.read_mmio(SVR, 0), lapic.read_mmio(TPR, 0)),
        (0x02 << 24, 0xFF, 0)
    );
}

#[test]
fn esr_latches_errors_on_write_and_raises_the_error_interrupt() {
    let mut lapic = enabled(0, BUS_1GHZ);
    set(&mut lapic, LVT_ERROR, 0xFE, 0);
    lapic.accept(&fixed(0x05, Trigger::Edge));
    assert_eq!(lapic.read_mmio(ESR, 0), 0, "not latched yet");
    assert_eq!(inject(&mut lapic), Some(0xFE), "the error interrupt");
    set(&mut lapic, ESR, 0, 0);
    assert_eq!(lapic.read_mmio(ESR, 0), 1 << 6, "receive illegal vector");
    set(&mut lapic, ESR, 0, 0);
    assert_eq!(lapic.read_mmio(ESR, 0), 0);
}

#[test]
fn lint0_and_lint1_deliver_as_their_lvt_entries_say() {
    let mut lapic = enabled(0, BUS_1GHZ);
    lapic.local_interrupt(Lvt::Lint0);
    assert_eq!(lapic.pending_events(), PendingEvents::default(), "masked at power-on");
    set(&mut lapic, LVT_LINT0, 0b111 << 8, 0);
    set(&mut lapic, LVT_LINT1, 0b100 << 8, 0);
    lapic.local_interrupt(Lvt::Lint0);
    lapic.local_interrupt(Lvt::Lint1);
    assert!(lapic.take_ext_int() && lapic.take_nmi());
    set(&mut lapic, LVT_LINT0, 1 << 15 | 0x70, 0);
    lapic.local_interrupt(Lvt::Lint0);
    assert_eq!(inject(&mut lapic), Some(0x70));
    assert_eq!(lapic.write_mmio(EOI, 0, 0), LapicEffect::Eoi { vector: 0x70, level: true });
}

#[test]
fn init_keeps_a_start_up_ipi_that_came_with_it() {
    let mut lapic = enabled(1, BUS_1GHZ);
    lapic.accept(&InterruptMessage { delivery: DeliveryMode::Init, ..InterruptMessage::fixed(0, 1) });
    lapic.accept(&InterruptMessage { delivery: DeliveryMode::StartUp, ..InterruptMessage::fixed(0x9A, 1) });
    lapic.accept(&InterruptMessage { delivery: DeliveryMode::Nmi, ..InterruptMessage::fixed(0, 1) });
    assert!(lapic.take_init());
    lapic.reset();
    assert_eq!(lapic.pending_events(), PendingEvents { sipi: Some(0x9A), ..PendingEvents::default() });
}

#[test]
fn divide_configuration_encodings_select_their_divisors() {
    // SDM vol. 3A Figure 11-10: bits 3,1:0; bit 2 is not part of the encoding.
    let table = [
        (0b0000, 2),
        (0b0001, 4),
        (0b0010, 8),
        (0b0011, 16),
        (0b1000, 32),
        (0b1001, 64),
        (0b1010, 128),
        (0b1011, 1),
    ];
    for (config, expected) in table {
        assert_eq!(divisor(config), expected, "{config:#06b}");
        assert_eq!(divisor(config | 0b0100), expected);
    }
    // Through the timer: one tick of a 1 GHz bus at each divisor.
    let mut lapic = enabled(0, BUS_1GHZ);
    set(&mut lapic, LVT_TIMER, 0x40, 0);
    for (config, expected) in table {
        set(&mut lapic, DIVIDE, config | 0xF0, 1000);
        assert_eq!(lapic.read_mmio(DIVIDE, 0), config);
        set(&mut lapic, INITIAL_COUNT, 1, 1000);
        assert_eq!(lapic.next_deadline(), Some(1000 + u64::from(expected)), "{config:#06b}");
    }
}

#[test]
fn one_shot_timer_fires_once_at_its_deadline() {
    // 100 MHz bus, divide by 2: 20 ns per count.
    let config = LapicConfig { bus_hz: 100_000_000, ..BUS_1GHZ };
    let mut lapic = enabled(0, config);
    set(&mut lapic, LVT_TIMER, 0x40, 0);
    set(&mut lapic, INITIAL_COUNT, 1000, 5000);
    assert_eq!(lapic.next_deadline(), Some(25_000));
    assert_eq!(lapic.tick(24_999), 0);
    assert_eq!(lapic.pending_vector(), None);
    assert_eq!(lapic.read_mmio(CURRENT_COUNT, 24_999), 1);
    assert_eq!(lapic.tick(25_000), 1);
    assert_eq!(inject(&mut lapic), Some(0x40));
    assert_eq!((lapic.tick(1_000_000), lapic.next_deadline()), (0, None));
    assert_eq!(lapic.read_mmio(CURRENT_COUNT, 1_000_000), 0);
    assert_eq!(lapic.read_mmio(INITIAL_COUNT, 0), 1000, "the initial count stays");
    assert_eq!(lapic.timer_expiries(), 1);
}

#[test]
fn periodic_timer_reloads_on_an_exact_grid() {
    // 3 MHz bus, divide by 1, count 7: a period of 7000/3 ns, which no integer holds.
    let config = LapicConfig { bus_hz: 3_000_000, ..BUS_1GHZ };
    let mut lapic = enabled(0, config);
    set(&mut lapic, DIVIDE, DIVIDE_BY_1, 0);
    set(&mut lapic, LVT_TIMER, PERIODIC | 0x40, 0);
    let start = 1_000;
    set(&mut lapic, INITIAL_COUNT, 7, start);
    let end = start + 1_000_000;
    let mut fired = 0u64;
    while let Some(deadline) = lapic.next_deadline().filter(|&d| d <= end) {
        fired += 1;
        // The k-th expiry, rounded up to the nanosecond, from the start (no drift).
        assert_eq!(deadline, start + (fired * 7000).div_ceil(3));
        assert_eq!(lapic.tick(deadline - 1), 0);
        assert_eq!(lapic.tick(deadline), 1);
        assert_eq!(inject(&mut lapic), Some(0x40));
        assert!(matches!(lapic.write_mmio(EOI, 0, deadline), LapicEffect::Eoi { vector: 0x40, .. }));
    }
    assert_eq!(fired, 3_000 / 7, "1 ms of a 3 MHz bus in periods of 7");

    // A caller late by many periods gets them counted, as one pending interrupt.
    let mut late = enabled(0, config);
    set(&mut late, DIVIDE, DIVIDE_BY_1, 0);
    set(&mut late, LVT_TIMER, PERIODIC | 0x40, 0);
    set(&mut late, INITIAL_COUNT, 7, start);
    assert_eq!(late.tick(end), 428);
    assert_eq!(inject(&mut late), Some(0x40));
    assert_eq!(late.pending_vector(), None);
    assert_eq!(late.next_deadline(), lapic.next_deadline(), "both on the same grid");
}

#[test]
fn masked_periodic_timer_fires_nothing_but_keeps_reloading() {
    let mut lapic = enabled(0, BUS_1GHZ);
    set(&mut lapic, DIVIDE, DIVIDE_BY_1, 0);
    set(&mut lapic, LVT_TIMER, MASKED | PERIODIC | 0x40, 0);
    set(&mut lapic, INITIAL_COUNT, 100, 0);
    assert_eq!(lapic.next_deadline(), None, "nothing to wake for");
    assert_eq!(lapic.tick(250), 2);
    assert_eq!(lapic.pending_vector(), None);
    assert_eq!(lapic.read_mmio(CURRENT_COUNT, 250), 50, "the count runs on");
    // Unmasking (a write that first brings the count up to date) continues the grid.
    set(&mut lapic, LVT_TIMER, PERIODIC | 0x40, 320);
    assert_eq!(lapic.pending_vector(), None, "the expiry at 300 was masked");
    assert_eq!(lapic.next_deadline(), Some(400));
    assert_eq!(lapic.tick(400), 1);
    assert_eq!(lapic.pending_vector(), Some(0x40));
    assert_eq!(lapic.timer_expiries(), 4);
}

#[test]
fn current_count_reads_back_mid_period() {
    let mut lapic = enabled(0, BUS_1GHZ);
    set(&mut lapic, DIVIDE, 0b0011, 0); // divide by 16: 16 ns per count
    set(&mut lapic, LVT_TIMER, PERIODIC | 0x40, 0);
    set(&mut lapic, INITIAL_COUNT, 1000, 2000);
    assert_eq!(lapic.read_mmio(CURRENT_COUNT, 2000), 1000);
    assert_eq!(lapic.read_mmio(CURRENT_COUNT, 2000 + 7999), 501, "499 whole counts elapsed");
    assert_eq!(lapic.read_mmio(CURRENT_COUNT, 2000 + 8000), 500);
    assert_eq!(lapic.read_mmio(CURRENT_COUNT, 2000 + 16_000), 1000, "reloaded at 0");
    assert_eq!(lapic.read_mmio(CURRENT_COUNT, 2000 + 24_000), 500, "even before the tick");
    assert_eq!(lapic.tick(2000 + 24_000), 1);
    assert_eq!(lapic.read_mmio(CURRENT_COUNT, 2000 + 24_000), 500);
    // Changing the divider continues from the current count at the new rate.
    set(&mut lapic, DIVIDE, DIVIDE_BY_1, 2000 + 24_000);
    assert_eq!(lapic.next_deadline(), Some(2000 + 24_000 + 500));
    assert_eq!(lapic.read_mmio(CURRENT_COUNT, 2000 + 24_100), 400);
}

#[test]
fn initial_count_zero_and_mode_switches_stop_the_timer() {
    let mut lapic = enabled(0, BUS_1GHZ);
    set(&mut lapic, LVT_TIMER, 0x40, 0);
    set(&mut lapic, INITIAL_COUNT, 100, 0);
    set(&mut lapic, INITIAL_COUNT, 0, 10);
    assert_eq!((lapic.next_deadline(), lapic.tick(1_000_000)), (None, 0));
    // One-shot -> periodic keeps the count; -> TSC-deadline disarms it.
    set(&mut lapic, INITIAL_COUNT, 100, 0);
    set(&mut lapic, LVT_TIMER, PERIODIC | 0x40, 10);
    assert_eq!(lapic.next_deadline(), Some(200));
    set(&mut lapic, LVT_TIMER, TSC_DEADLINE_MODE | 0x40, 20);
    assert_eq!(lapic.next_deadline(), None);
    assert_eq!((lapic.read_mmio(INITIAL_COUNT, 20), lapic.read_mmio(CURRENT_COUNT, 20)), (0, 0));
    set(&mut lapic, INITIAL_COUNT, 100, 30);
    assert_eq!((lapic.next_deadline(), lapic.read_mmio(INITIAL_COUNT, 30)), (None, 0), "ignored");
}

#[test]
fn tsc_deadline_fires_at_the_deadline_and_disarms() {
    // A 3 GHz TSC that read 0 at 1000 ns: TSC 10 is reached at 1000 + ceil(10/3) ns.
    let config = LapicConfig { tsc_hz: 3_000_000_000, tsc_origin_ns: 1000, ..BUS_1GHZ };
    let mut lapic = enabled(0, config);
    lapic.write_tsc_deadline(10, 0);
    assert_eq!(lapic.read_tsc_deadline(2000), 0, "ignored outside TSC-deadline mode");
    set(&mut lapic, LVT_TIMER, TSC_DEADLINE_MODE | 0xEF, 0);
    lapic.write_tsc_deadline(10, 0);
    assert_eq!((lapic.read_tsc_deadline(1003), lapic.next_deadline()), (10, Some(1004)));
    assert_eq!(lapic.read_tsc_deadline(1004), 0, "passed, though not delivered yet");
    assert_eq!(lapic.tick(1003), 0, "TSC 9");
    assert_eq!(lapic.tick(1004), 1, "TSC 12");
    assert_eq!((lapic.read_tsc_deadline(1004), lapic.next_deadline()), (0, None));
    assert_eq!(inject(&mut lapic), Some(0xEF));
    // A deadline already passed fires at the next tick; 0 disarms.
    lapic.write_tsc_deadline(5, 2000);
    assert_eq!(lapic.next_deadline(), Some(1002));
    assert_eq!(lapic.tick(2000), 1);
    lapic.write_tsc_deadline(1 << 40, 2000);
    lapic.write_tsc_deadline(0, 2000);
    assert_eq!(lapic.next_deadline(), None);
    // Leaving TSC-deadline mode disarms; coming back finds it disarmed.
    lapic.write_tsc_deadline(1 << 40, 2000);
    set(&mut lapic, LVT_TIMER, 0xEF, 2000);
    set(&mut lapic, LVT_TIMER, TSC_DEADLINE_MODE | 0xEF, 2000);
    assert_eq!(lapic.read_tsc_deadline(2000), 0);
    assert_eq!(lapic.next_deadline(), None);
    // Masked: nothing to wake for and nothing delivered, but the deadline still passes.
    set(&mut lapic, LVT_TIMER, MASKED | TSC_DEADLINE_MODE | 0xEF, 2000);
    lapic.write_tsc_deadline(1 << 20, 2000);
    assert_eq!(lapic.next_deadline(), None);
    let passed = 1000 + (1u64 << 20).div_ceil(3);
    assert_eq!((lapic.read_tsc_deadline(passed - 1), lapic.read_tsc_deadline(passed)), (1 << 20, 0));
    set(&mut lapic, LVT_TIMER, TSC_DEADLINE_MODE | 0xEF, passed + 10);
    assert_eq!((lapic.next_deadline(), lapic.pending_vector()), (None, None));
    assert_eq!(lapic.timer_expiries(), 3);
}

#[test]
fn every_register_offset_and_value_is_handled_without_panic() {
    let values = [0, !0, 0x5555_5555, 0xAAAA_AAAA, 0x0000_0F0F, 0x000C_4F10, 0x0004_0000, 1];
    let mut seed = 0x1234_5678_9ABC_DEF0_u64;
    let mut next = move || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        seed
    };
    // Clocks at their extremes too: the arithmetic saturates rather than overflow.
    let configs = [
        BUS_1GHZ,
        LapicConfig { bus_hz: 1, tsc_hz: 1, tsc_origin_ns: 0, has_x2apic: true },
        LapicConfig { bus_hz: 0, tsc_hz: 0, tsc_origin_ns: 5, has_x2apic: true },
        LapicConfig { bus_hz: u64::MAX, tsc_hz: u64::MAX, tsc_origin_ns: u64::MAX, has_x2apic: true },
    ];
    for (config, x2) in configs.into_iter().flat_map(|config| [(config, false), (config, true)]) {
        let mut lapic = enabled(7, config);
        if x2 {
            lapic.set_apic_base(lapic.apic_base() | APIC_BASE_EXTD).expect("x2APIC");
        }
        let mut now = 0u64;
        for offset in (0..XAPIC_PAGE_BYTES).step_by(4) {
            for value in values.into_iter().chain([next() as u32, next() as u32]) {
                // Mostly small steps, now and then a leap of up to 2^44 ns.
                now = now.saturating_add(if next() % 16 == 0 { next() >> 20 } else { next() % 1000 });
                let _ = lapic.read_mmio(offset, now);
                let _ = lapic.write_mmio(offset, value, now);
                let index = 0x800 + offset / 16;
                let _ = lapic.read_msr(index, now);
                let _ = lapic.write_msr(index, u64::from(value), now);
                let _ = lapic.write_msr(index, next(), now);
                lapic.write_tsc_deadline(next() >> (next() % 64), now);
                let _ = lapic.read_tsc_deadline(now);
                lapic.tick(now);
                let _ = lapic.next_deadline();
                while let Some(vector) = inject(&mut lapic) {
                    assert!(vector >= 16);
                    let _ = lapic.write_mmio(EOI, 0, now);
                    let _ = lapic.write_msr(0x80B, 0, now);
                }
            }
        }
        lapic.write_tsc_deadline(u64::MAX, now);
        lapic.tick(u64::MAX);
        let _ = (lapic.read_mmio(CURRENT_COUNT, u64::MAX), lapic.read_tsc_deadline(u64::MAX));
        let _ = lapic.set_apic_base(next());
        lapic.reset();
    }
}

#[test]
fn pic_interrupts_reach_lint0_only_as_extint_or_with_the_lapic_disabled() {
    let mut lapic = enabled(0, BUS_1GHZ);
    assert!(!lapic.accepts_pic_interrupts(), "LINT0 masked at power-on");
    lapic.set_virtual_wire();
    assert_eq!(lapic.read_mmio(LVT_LINT0, 0), 0x700, "ExtINT, unmasked");
    assert!(lapic.accepts_pic_interrupts());
    lapic.local_interrupt(Lvt::Lint0);
    assert!(lapic.take_ext_int());
    assert_eq!(lapic.local_interrupt_counts(), (0, 0), "an ExtINT is counted at its INTA, not here");
    set(&mut lapic, LVT_LINT0, 0x31, 0);
    assert!(!lapic.accepts_pic_interrupts(), "fixed mode");
    lapic.local_interrupt(Lvt::Lint0);
    assert_eq!(lapic.local_interrupt_counts(), (0, 1));
    assert_eq!(lapic.set_apic_base(0), Ok(()));
    assert!(lapic.accepts_pic_interrupts(), "globally disabled: LINT0 is INTR");
}
