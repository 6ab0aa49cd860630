//! The words devices use to talk about interrupts: what a line is, and the message an
//! interrupt controller sends to a local APIC (an I/O APIC redirection entry, an MSI, an
//! inter-processor interrupt from an ICR write). Plain data; routing lives in the models.
//!
//! The path (ARCHITECTURE.md, "One interrupt path"): a device raises a line -> the I/O APIC
//! (or the 8259 pair) turns it into an [`InterruptMessage`] -> every local APIC the
//! destination names accepts it into IRR -> on the next entry the backend injects the
//! highest deliverable vector.

/// How an interrupt message is delivered (Intel SDM vol. 3A 11.6.1, "Interrupt Command
/// Register"; the same encoding in I/O APIC redirection entries and MSIs, 82093AA
/// datasheet 3.2.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    Init,
    StartUp,
    ExtInt,
}

impl DeliveryMode {
    /// Decodes the 3-bit field; 0b011 is reserved (`None`).
    #[must_use]
    pub const fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits & 0b111 {
            0b000 => Self::Fixed,
            0b001 => Self::LowestPriority,
            0b010 => Self::Smi,
            0b100 => Self::Nmi,
            0b101 => Self::Init,
            0b110 => Self::StartUp,
            0b111 => Self::ExtInt,
            _ => return None,
        })
    }

    #[must_use]
    pub const fn bits(self) -> u8 {
        match self {
            Self::Fixed => 0b000,
            Self::LowestPriority => 0b001,
            Self::Smi => 0b010,
            Self::Nmi => 0b100,
            Self::Init => 0b101,
            Self::StartUp => 0b110,
            Self::ExtInt => 0b111,
        }
    }
}

/// How the destination field is read (SDM vol. 3A 11.6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestinationMode {
    /// An APIC ID (0xFF / 0xFFFF_FFFF: broadcast).
    Physical,
    /// A bit set matched against each LAPIC's LDR (flat or cluster model, from its DFR;
    /// x2APIC: cluster in the upper 16 bits).
    Logical,
}

/// Edge or level triggered (a level interrupt sets TMR and its EOI is broadcast back to
/// the I/O APIC, which clears Remote IRR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Edge,
    Level,
}

/// The ICR's destination shorthand (SDM vol. 3A 11.6.1): only IPIs have one; an I/O APIC
/// message always has `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shorthand {
    None,
    ToSelf,
    AllIncludingSelf,
    AllExcludingSelf,
}

/// One interrupt on its way to local APICs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptMessage {
    pub vector: u8,
    pub delivery: DeliveryMode,
    pub destination_mode: DestinationMode,
    /// xAPIC: 8 bits; x2APIC: 32 bits.
    pub destination: u32,
    pub shorthand: Shorthand,
    pub trigger: Trigger,
    /// INIT level de-assert (an ICR write with level 0 and trigger level) carries `false`
    /// and is ignored by modern CPUs; everything else `true`.
    pub assert: bool,
}

impl InterruptMessage {
    /// A fixed, edge-triggered, physical-destination interrupt: the common case, for tests
    /// and simple devices.
    #[must_use]
    pub const fn fixed(vector: u8, destination: u32) -> Self {
        Self {
            vector,
            delivery: DeliveryMode::Fixed,
            destination_mode: DestinationMode::Physical,
            destination,
            shorthand: Shorthand::None,
            trigger: Trigger::Edge,
            assert: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_modes_round_trip_and_the_reserved_one_is_refused() {
        for bits in 0..8u8 {
            match DeliveryMode::from_bits(bits) {
                Some(mode) => assert_eq!(mode.bits(), bits),
                None => assert_eq!(bits, 0b011),
            }
        }
    }
}
