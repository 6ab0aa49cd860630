//! The two interfaces to one register file (SDM vol. 3A 11.4.1 for the xAPIC page, 11.12.1
//! for the x2APIC MSRs): their access rules, the register reads and writes they share,
//! and what a write sets off (an IPI from the ICR, an EOI).

use super::regs::*;
use super::{ApicMode, Gp, Lapic, LapicEffect};
use crate::devices::irq::{DeliveryMode, DestinationMode, InterruptMessage, Shorthand, Trigger};

impl Lapic {
    /// A 32-bit read at `offset` in the xAPIC page. Unaligned offsets, holes and
    /// write-only registers read 0, as does the whole page outside xAPIC mode.
    #[must_use]
    pub fn read_mmio(&self, offset: u32, now_ns: u64) -> u32 {
        match Reg::at(offset) {
            Some(Reg::SelfIpi) | None => 0,
            Some(_) if self.mode() != ApicMode::XApic => 0,
            Some(reg) => self.read_reg(reg, now_ns),
        }
    }

    /// A 32-bit write at `offset` in the xAPIC page. Read-only registers, holes and
    /// reserved bits are ignored, as is the whole page outside xAPIC mode.
    pub fn write_mmio(&mut self, offset: u32, value: u32, now_ns: u64) -> LapicEffect {
        match Reg::at(offset) {
            Some(Reg::SelfIpi) | None => LapicEffect::None,
            Some(_) if self.mode() != ApicMode::XApic => LapicEffect::None,
            Some(reg) => self.write_reg(reg, value, now_ns),
        }
    }

    /// RDMSR of an x2APIC register (SDM vol. 3A 11.12.1.2, Table 11-6). #GP outside
    /// x2APIC mode, for registers x2APIC does not have and for write-only ones.
    pub fn read_msr(&self, index: u32, now_ns: u64) -> Result<u64, Gp> {
        if self.mode() != ApicMode::X2Apic {
            return Err(Gp);
        }
        match Reg::at_msr(index).ok_or(Gp)? {
            Reg::Apr | Reg::Rrd | Reg::Dfr | Reg::IcrHigh | Reg::LvtCmci | Reg::Eoi | Reg::SelfIpi => Err(Gp),
            Reg::IcrLow => Ok(u64::from(self.icr_high) << 32 | u64::from(self.icr_low)),
            reg => Ok(u64::from(self.read_reg(reg, now_ns))),
        }
    }

    /// WRMSR of an x2APIC register. #GP outside x2APIC mode, for registers x2APIC does
    /// not have, read-only ones, and any reserved bit set (SDM vol. 3A 11.12.1.3): bits
    /// 63:32 of every register but the ICR, any bit of EOI and ESR.
    pub fn write_msr(&mut self, index: u32, value: u64, now_ns: u64) -> Result<LapicEffect, Gp> {
        if self.mode() != ApicMode::X2Apic {
            return Err(Gp);
        }
        let reg = Reg::at_msr(index).ok_or(Gp)?;
        let (low, high) = (value as u32, (value >> 32) as u32);
        if high != 0 && reg != Reg::IcrLow {
            return Err(Gp);
        }
        let (writable, ignored) = match reg {
            Reg::Tpr | Reg::SelfIpi => (VECTOR_MASK, 0),
            Reg::Eoi | Reg::Esr => (0, 0),
            Reg::Svr => (SVR_WRITABLE, 0),
            Reg::IcrLow => (ICR_LOW_WRITABLE, DELIVERY_STATUS),
            Reg::Lvt(lvt) => (lvt.writable(), lvt.read_only()),
            Reg::InitialCount => (!0, 0),
            Reg::DivideConfig => (DIVIDE_CONFIG_WRITABLE, 0),
            // Read-only in x2APIC mode.
            Reg::Id
            | Reg::Version
            | Reg::Ppr
            | Reg::Ldr
            | Reg::Isr(_)
            | Reg::Tmr(_)
            | Reg::Irr(_)
            | Reg::CurrentCount
            // Absent in x2APIC mode (CMCI: not offered).
            | Reg::Apr
            | Reg::Rrd
            | Reg::Dfr
            | Reg::IcrHigh
            | Reg::LvtCmci => return Err(Gp),
        };
        if low & !(writable | ignored) != 0 {
            return Err(Gp);
        }
        if reg == Reg::IcrLow {
            self.icr_high = high;
        }
        Ok(self.write_reg(reg, low, now_ns))
    }

    fn read_reg(&self, reg: Reg, now_ns: u64) -> u32 {
        let x2apic = self.mode() == ApicMode::X2Apic;
        match reg {
            Reg::Id if x2apic => self.initial_id,
            Reg::Id => u32::from(self.xapic_id) << XAPIC_ID_SHIFT,
            Reg::Version => VERSION,
            Reg::Tpr => u32::from(self.tpr),
            Reg::Ppr => u32::from(self.ppr()),
            Reg::Ldr if x2apic => self.x2apic_ldr(),
            Reg::Ldr => self.ldr,
            Reg::Dfr => self.dfr,
            Reg::Svr => self.svr,
            Reg::Isr(i) => self.isr.0[i],
            Reg::Tmr(i) => self.tmr.0[i],
            Reg::Irr(i) => self.irr.0[i],
            Reg::Esr => self.esr,
            Reg::IcrLow => self.icr_low,
            Reg::IcrHigh => self.icr_high,
            Reg::Lvt(lvt) => self.lvt[lvt.index()],
            Reg::InitialCount => self.timer.initial_count(),
            Reg::CurrentCount => self.timer.current_count(self.timer_mode(), &self.clock, now_ns),
            Reg::DivideConfig => self.timer.divide_config(),
            Reg::Apr | Reg::Eoi | Reg::Rrd | Reg::LvtCmci | Reg::SelfIpi => 0,
        }
    }

    /// A write both interfaces share; the x2APIC checks have been made, the xAPIC masks
    /// are applied here.
    fn write_reg(&mut self, reg: Reg, value: u32, now_ns: u64) -> LapicEffect {
        match reg {
            Reg::Id => self.xapic_id = (value >> XAPIC_ID_SHIFT) as u8,
            Reg::Tpr => self.tpr = value as u8,
            Reg::Eoi => return self.end_of_interrupt(),
            Reg::Ldr => self.ldr = value & XAPIC_ID_FIELD,
            Reg::Dfr => self.dfr = value | DFR_RESERVED_ONES,
            Reg::Svr => {
                self.svr = value & SVR_WRITABLE;
                if !self.is_software_enabled() {
                    // Software disable masks every LVT entry (SDM vol. 3A 11.4.7.2).
                    self.lvt.iter_mut().for_each(|entry| *entry |= LVT_MASKED);
                }
            }
            // Any write latches the errors seen since the last one (SDM vol. 3A 11.5.3).
            Reg::Esr => self.esr = core::mem::take(&mut self.esr_pending),
            Reg::IcrLow => {
                // Delivery is instant: the delivery status bit always reads idle.
                self.icr_low = value & ICR_LOW_WRITABLE;
                let destination = if self.mode() == ApicMode::X2Apic {
                    self.icr_high
                } else {
                    self.icr_high >> XAPIC_DESTINATION_SHIFT
                };
                return self.send_ipi(self.icr_low, destination);
            }
            Reg::IcrHigh => self.icr_high = value & XAPIC_ID_FIELD,
            Reg::Lvt(lvt) => {
                self.tick(now_ns);
                let old_mode = self.timer_mode();
                let forced = if self.is_software_enabled() { 0 } else { LVT_MASKED };
                self.lvt[lvt.index()] = value & lvt.writable() | forced;
                self.timer.change_mode(old_mode, self.timer_mode());
            }
            Reg::InitialCount => {
                self.tick(now_ns);
                self.timer.set_initial_count(self.timer_mode(), value, now_ns);
            }
            Reg::DivideConfig => {
                self.tick(now_ns);
                self.timer.set_divide_config(self.timer_mode(), value, &self.clock, now_ns);
            }
            Reg::SelfIpi => {
                let self_ipi = value & VECTOR_MASK | ICR_SHORTHAND_SELF;
                return self.send_ipi(self_ipi, self.initial_id);
            }
            Reg::Version
            | Reg::Apr
            | Reg::Ppr
            | Reg::Rrd
            | Reg::Isr(_)
            | Reg::Tmr(_)
            | Reg::Irr(_)
            | Reg::LvtCmci
            | Reg::CurrentCount => {}
        }
        LapicEffect::None
    }

    /// EOI (SDM vol. 3A 11.8.5): retires the highest in-service vector.
    fn end_of_interrupt(&mut self) -> LapicEffect {
        let Some(vector) = self.isr.highest() else { return LapicEffect::None };
        self.isr.set(vector, false);
        LapicEffect::Eoi { vector, level: self.tmr.get(vector) }
    }

    /// The IPI an ICR write sends (SDM vol. 3A 11.6.1). Reserved delivery modes (011 and
    /// 111 in the ICR), SMIs and fixed vectors below 16 (a send error) send nothing.
    fn send_ipi(&mut self, icr_low: u32, destination: u32) -> LapicEffect {
        let delivery = match DeliveryMode::from_bits((icr_low >> 8) as u8) {
            None | Some(DeliveryMode::ExtInt | DeliveryMode::Smi) => return LapicEffect::None,
            Some(mode) => mode,
        };
        let vector = icr_low as u8;
        if matches!(delivery, DeliveryMode::Fixed | DeliveryMode::LowestPriority)
            && vector < FIRST_LEGAL_VECTOR
        {
            self.record_error(ESR_SEND_ILLEGAL_VECTOR);
            return LapicEffect::None;
        }
        let trigger = if icr_low & ICR_LEVEL_TRIGGERED != 0 { Trigger::Level } else { Trigger::Edge };
        LapicEffect::Ipi(InterruptMessage {
            vector,
            delivery,
            destination_mode: if icr_low & ICR_LOGICAL != 0 {
                DestinationMode::Logical
            } else {
                DestinationMode::Physical
            },
            destination,
            shorthand: match (icr_low >> ICR_SHORTHAND_SHIFT) & 0b11 {
                0b00 => Shorthand::None,
                0b01 => Shorthand::ToSelf,
                0b10 => Shorthand::AllIncludingSelf,
                _ => Shorthand::AllExcludingSelf,
            },
            trigger,
            // Only an INIT level de-assert (level 0, level triggered) carries no assert;
            // edge-triggered IPIs need not set the level bit (Linux does not).
            assert: trigger == Trigger::Edge || icr_low & ICR_LEVEL_ASSERT != 0,
        })
    }
}
