//! The interrupt lines of the port devices, as the bus last passed them to the irqchip:
//! each device's line is re-evaluated after every access to it and every tick, and only
//! a change of level reaches [`Irqchip::set_irq`] (so a level-triggered pin sees one
//! assertion per interrupt, and an edge-triggered input one rising edge).
//!
//! The PIT is not here: its output is a train of edges, counted by the PIT model and
//! passed on with [`Irqchip::pit_expired`].

use super::irqchip::{Irqchip, VcpuMask};

/// A device's ISA interrupt line (the numbers the MADT and the DSDT give the guest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IsaLine {
    /// COM1: IRQ 4.
    Uart,
    /// The CMOS RTC: IRQ 8.
    Rtc,
    /// The ACPI SCI: IRQ 9 (level-triggered, active high).
    Sci,
}

impl IsaLine {
    const ALL: [Self; 3] = [Self::Uart, Self::Rtc, Self::Sci];

    /// The ISA IRQ the line is wired to.
    #[must_use]
    pub const fn irq(self) -> u8 {
        match self {
            Self::Uart => 4,
            Self::Rtc => 8,
            Self::Sci => super::acpi_pm::SCI_IRQ,
        }
    }
}

/// The level each line had when last passed on (all low at creation, as the irqchip's
/// inputs are).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqLines {
    high: [bool; IsaLine::ALL.len()],
}

impl IrqLines {
    /// `line` is at `level` now: passes a change on to `chip`, returning the vCPUs to wake.
    pub fn set(&mut self, chip: &mut Irqchip, line: IsaLine, level: bool) -> VcpuMask {
        let last = &mut self.high[line as usize];
        if *last == level {
            return VcpuMask::EMPTY;
        }
        *last = level;
        chip.set_irq(line.irq(), level)
    }

    /// The level last passed on for `line`.
    #[must_use]
    pub fn is_high(&self, line: IsaLine) -> bool {
        self.high[line as usize]
    }
}
