//! The local APIC's register map and bit layouts, named once with their manual sections
//! (Intel SDM vol. 3A, chapter 11 "Advanced Programmable Interrupt Controller"), and the
//! decoding of an xAPIC page offset or an x2APIC MSR index into a [`Reg`].

/// IA32_APIC_BASE (SDM vol. 3A 11.4.4, Figure 11-5; 11.12.1 for EXTD).
pub const IA32_APIC_BASE: u32 = 0x1B;
/// IA32_TSC_DEADLINE (SDM vol. 3A 11.5.4.1).
pub const IA32_TSC_DEADLINE: u32 = 0x6E0;
/// The x2APIC register MSRs (SDM vol. 3A 11.12.1.2, Table 11-6): MSR 0x800 + offset / 16.
pub const X2APIC_MSRS: core::ops::RangeInclusive<u32> = 0x800..=0x8FF;
/// Size of the xAPIC MMIO page.
pub const XAPIC_PAGE_BYTES: u32 = 0x1000;
/// The architectural APIC base address (SDM vol. 3A 11.4.1); Taproot does not relocate it.
pub const DEFAULT_APIC_BASE: u64 = 0xFEE0_0000;

/// IA32_APIC_BASE bits: BSP flag (8), x2APIC enable EXTD (10), global enable EN (11).
pub const APIC_BASE_BSP: u64 = 1 << 8;
pub const APIC_BASE_EXTD: u64 = 1 << 10;
pub const APIC_BASE_EN: u64 = 1 << 11;
/// IA32_APIC_BASE reserved bits: 0-7, 9, and 52-63 (above the largest MAXPHYADDR).
pub const APIC_BASE_RESERVED: u64 = 0x2FF | (0xFFF << 52);

/// Local APIC version register (SDM vol. 3A 11.4.8, Figure 11-7): an integrated APIC
/// (0x14, as KVM reports), bits 23:16 the highest LVT index (six entries, no CMCI),
/// bit 24 (EOI-broadcast suppression) clear.
pub const VERSION: u32 = 0x14 | ((LVT_COUNT as u32 - 1) << 16);

/// The LVT entries this model has (SDM vol. 3A 11.5.1, Figure 11-8), in register order
/// from 0x320. The CMCI entry (0x2F0) is not offered.
pub const LVT_COUNT: usize = 6;

/// Common LVT and ICR fields (SDM vol. 3A 11.5.1, 11.6.1).
pub const VECTOR_MASK: u32 = 0xFF;
pub const DELIVERY_MODE_MASK: u32 = 0b111 << 8;
pub const DELIVERY_STATUS: u32 = 1 << 12;
pub const LVT_POLARITY: u32 = 1 << 13;
pub const LVT_REMOTE_IRR: u32 = 1 << 14;
pub const LVT_LEVEL_TRIGGERED: u32 = 1 << 15;
pub const LVT_MASKED: u32 = 1 << 16;
/// LVT timer mode, bits 18:17 (SDM vol. 3A 11.5.1): 00 one-shot, 01 periodic,
/// 10 TSC-deadline, 11 reserved.
pub const LVT_TIMER_MODE_SHIFT: u32 = 17;
pub const LVT_TIMER_MODE_MASK: u32 = 0b11 << LVT_TIMER_MODE_SHIFT;

/// ICR low fields (SDM vol. 3A 11.6.1, Figure 11-12): destination mode (11), level
/// (14: assert), trigger (15), destination shorthand (19:18).
pub const ICR_LOGICAL: u32 = 1 << 11;
pub const ICR_LEVEL_ASSERT: u32 = 1 << 14;
pub const ICR_LEVEL_TRIGGERED: u32 = 1 << 15;
pub const ICR_SHORTHAND_SHIFT: u32 = 18;
pub const ICR_SHORTHAND_SELF: u32 = 0b01 << ICR_SHORTHAND_SHIFT;
/// The ICR low bits software may set: vector, delivery mode, destination mode, level,
/// trigger, shorthand. x2APIC reserves the rest except delivery status (SDM vol. 3A
/// 11.12.9, Figure 11-30: bits 13, 17:16 and 31:20).
pub const ICR_LOW_WRITABLE: u32 = 0x000C_CFFF;
/// xAPIC: the destination field is ICR bits 63:56 (ICR high 31:24).
pub const XAPIC_DESTINATION_SHIFT: u32 = 24;

/// SVR (SDM vol. 3A 11.9, Figure 11-23): spurious vector, APIC software enable (8),
/// focus processor checking (9). Bit 12 (EOI-broadcast suppression) is not offered.
pub const SVR_ENABLE: u32 = 1 << 8;
pub const SVR_WRITABLE: u32 = 0x3FF;
/// SVR after power-up or INIT (SDM vol. 3A 11.4.7.1).
pub const SVR_RESET: u32 = 0xFF;

/// DFR (SDM vol. 3A 11.6.2.2, Figure 11-14): model in bits 31:28 (1111 flat, 0000
/// cluster), bits 27:0 read as ones. All ones after reset.
pub const DFR_MODEL_SHIFT: u32 = 28;
pub const DFR_MODEL_FLAT: u32 = 0xF;
pub const DFR_MODEL_CLUSTER: u32 = 0x0;
pub const DFR_RESERVED_ONES: u32 = 0x0FFF_FFFF;

/// The xAPIC ID and LDR live in bits 31:24 (SDM vol. 3A 11.4.6, 11.6.2.2).
pub const XAPIC_ID_SHIFT: u32 = 24;
pub const XAPIC_ID_FIELD: u32 = 0xFF << XAPIC_ID_SHIFT;

/// ESR bits (SDM vol. 3A 11.5.3, Figure 11-9): send and receive illegal vector.
pub const ESR_SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
pub const ESR_RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;

/// Vectors 0-15 are illegal for fixed interrupts (SDM vol. 3A 11.5.2).
pub const FIRST_LEGAL_VECTOR: u8 = 16;

/// Divide configuration: bits 0, 1 and 3 (SDM vol. 3A 11.5.4, Figure 11-10).
pub const DIVIDE_CONFIG_WRITABLE: u32 = 0b1011;

/// Broadcast destinations (SDM vol. 3A 11.6.2.1; x2APIC 11.12.10).
pub const XAPIC_BROADCAST: u32 = 0xFF;
pub const X2APIC_BROADCAST: u32 = 0xFFFF_FFFF;

/// One LVT entry (its index is its position from 0x320).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lvt {
    Timer,
    Thermal,
    PerformanceCounter,
    Lint0,
    Lint1,
    Error,
}

impl Lvt {
    const ALL: [Self; LVT_COUNT] =
        [Self::Timer, Self::Thermal, Self::PerformanceCounter, Self::Lint0, Self::Lint1, Self::Error];

    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The bits software may set (SDM vol. 3A 11.5.1, Figure 11-8): the timer has a mode
    /// and no delivery mode, the error entry only a vector and the mask, LINT0/LINT1 add
    /// polarity and trigger mode.
    #[must_use]
    pub const fn writable(self) -> u32 {
        match self {
            Self::Timer => VECTOR_MASK | LVT_MASKED | LVT_TIMER_MODE_MASK,
            Self::Thermal | Self::PerformanceCounter => VECTOR_MASK | DELIVERY_MODE_MASK | LVT_MASKED,
            Self::Lint0 | Self::Lint1 => {
                VECTOR_MASK | DELIVERY_MODE_MASK | LVT_POLARITY | LVT_LEVEL_TRIGGERED | LVT_MASKED
            }
            Self::Error => VECTOR_MASK | LVT_MASKED,
        }
    }

    /// Read-only status bits a write may carry back (a read-modify-write) without a #GP in
    /// x2APIC mode: delivery status, and remote IRR on LINT0/LINT1.
    #[must_use]
    pub const fn read_only(self) -> u32 {
        match self {
            Self::Lint0 | Self::Lint1 => DELIVERY_STATUS | LVT_REMOTE_IRR,
            _ => DELIVERY_STATUS,
        }
    }
}

/// A register of the local APIC, by its xAPIC offset (SDM vol. 3A 11.4.1, Table 11-1;
/// x2APIC 11.12.1.2, Table 11-6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    Id,
    Version,
    Tpr,
    /// Arbitration priority (xAPIC only; reads 0 here).
    Apr,
    Ppr,
    Eoi,
    /// Remote read (xAPIC only, obsolete; reads 0).
    Rrd,
    Ldr,
    /// xAPIC only.
    Dfr,
    Svr,
    /// ISR, TMR and IRR: eight 32-bit registers each (bits 0-255).
    Isr(usize),
    Tmr(usize),
    Irr(usize),
    Esr,
    /// Not offered (the version register counts six LVT entries): reads 0.
    LvtCmci,
    IcrLow,
    /// xAPIC only; x2APIC has a 64-bit ICR at 0x830.
    IcrHigh,
    Lvt(Lvt),
    InitialCount,
    CurrentCount,
    DivideConfig,
    /// x2APIC only (0x83F).
    SelfIpi,
}

impl Reg {
    /// The register at a 16-byte aligned offset of the page, if any.
    #[must_use]
    pub fn at(offset: u32) -> Option<Self> {
        if !offset.is_multiple_of(16) {
            return None;
        }
        let index = (offset / 16) as usize;
        Some(match offset {
            0x020 => Self::Id,
            0x030 => Self::Version,
            0x080 => Self::Tpr,
            0x090 => Self::Apr,
            0x0A0 => Self::Ppr,
            0x0B0 => Self::Eoi,
            0x0C0 => Self::Rrd,
            0x0D0 => Self::Ldr,
            0x0E0 => Self::Dfr,
            0x0F0 => Self::Svr,
            0x100..=0x170 => Self::Isr(index - 0x10),
            0x180..=0x1F0 => Self::Tmr(index - 0x18),
            0x200..=0x270 => Self::Irr(index - 0x20),
            0x280 => Self::Esr,
            0x2F0 => Self::LvtCmci,
            0x300 => Self::IcrLow,
            0x310 => Self::IcrHigh,
            0x320..=0x370 => Self::Lvt(Lvt::ALL[index - 0x32]),
            0x380 => Self::InitialCount,
            0x390 => Self::CurrentCount,
            0x3E0 => Self::DivideConfig,
            0x3F0 => Self::SelfIpi,
            _ => return None,
        })
    }

    /// The register an x2APIC MSR names, if any (0x830 is the whole 64-bit ICR).
    #[must_use]
    pub fn at_msr(index: u32) -> Option<Self> {
        if !X2APIC_MSRS.contains(&index) {
            return None;
        }
        Self::at((index - X2APIC_MSRS.start()) * 16)
    }
}
