//! The ACPI fixed-hardware power-management registers of a VM (ACPI 6.5 §4.8.3,
//! "Fixed Hardware Registers"): the PM1a event block (status and enable), the PM1a control
//! block (sleep type and enable: S5 powers the VM off), the ACPI PM timer, and the reset
//! register at 0xCF9 named by the FADT. The ports are the FADT's: `firmware::acpi` takes
//! them from here.
//!
//! Layout: one 12-byte block at [`PM_BASE`] (0x600, the base QEMU's q35/ICH9 uses;
//! nothing else of the VM's platform sits there):
//!
//! | port  | len | register |
//! |-------|-----|----------|
//! | 0x600 | 2   | PM1a_STS (write 1 to clear) |
//! | 0x602 | 2   | PM1a_EN |
//! | 0x604 | 2   | PM1a_CNT |
//! | 0x608 | 4   | PM_TMR (32-bit, read-only) |
//!
//! There is no SMI command port (FADT SMI_CMD = 0): the platform is always in ACPI mode,
//! so SCI_EN reads 1 from reset. The SCI is level-triggered on ISA IRQ 9 (active high, as
//! the MADT's interrupt source override says). No GPE block exists.
//!
//! # The PM timer
//! It counts at [`PM_TIMER_HZ`] (3.579545 MHz) from the VM's time 0: the value at
//! `now_ns` is `floor(now_ns * 3_579_545 / 10^9) mod 2^32` (exact, in u128 arithmetic).
//! It is 32 bits wide ([`PM_TIMER_32_BIT`]: the FADT sets TMR_VAL_EXT). TMR_STS is set
//! each time bit 31 of the count changes (every 2^31 ticks, about 10 minutes).
//!
//! # How the VM drives it
//! One [`AcpiPm`] per VM. Port exits for [`is_acpi_pm_port`] go to [`AcpiPm::read`] /
//! [`AcpiPm::write`] with the VM's clock (nanoseconds since the VM started); a write
//! returns a [`PmEffect`]: `PowerOff` ends the VM in state `exited` with status 0,
//! `Reset` resets it. After every access and at [`AcpiPm::next_deadline`], drive ISA IRQ
//! 9 to [`AcpiPm::sci_level`]. [`AcpiPm::press_power_button`] is the ACPI shutdown
//! request a control plane can send (the guest's OSPM then powers off through S5).

use super::IoSize;

/// First port of the PM register block (a choice: the PMBASE QEMU's q35 machine uses).
pub const PM_BASE: u16 = 0x600;
/// PM1a event block: PM1_STS then PM1_EN, two bytes each (ACPI 6.5 §4.8.3.1, "PM1 Event
/// Grouping"). FADT PM1a_EVT_BLK / PM1_EVT_LEN.
pub const PM1A_EVT_BLK: u16 = PM_BASE;
pub const PM1_EVT_LEN: u8 = 4;
/// PM1a control block (ACPI 6.5 §4.8.3.2, "PM1 Control Grouping"). FADT PM1a_CNT_BLK /
/// PM1_CNT_LEN.
pub const PM1A_CNT_BLK: u16 = PM_BASE + 4;
pub const PM1_CNT_LEN: u8 = 2;
/// The PM timer (ACPI 6.5 §4.8.3.3, "Power Management Timer (PM_TMR)"). FADT PM_TMR_BLK /
/// PM_TMR_LEN.
pub const PM_TMR_BLK: u16 = PM_BASE + 8;
pub const PM_TMR_LEN: u8 = 4;
/// One past the last port of the block.
const PM_END: u16 = PM_TMR_BLK + PM_TMR_LEN as u16;

/// The PM timer's frequency (ACPI 6.5 §4.8.3.3: 3.579545 MHz).
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// The timer counts 32 bits (FADT flag TMR_VAL_EXT, ACPI 6.5 §5.2.9, the "Fixed ACPI
/// Description Table Fixed Feature Flags" table).
pub const PM_TIMER_32_BIT: bool = true;
const NS_PER_S: u128 = 1_000_000_000;
/// TMR_STS is set when this bit of the count changes (the timer's most significant bit).
const TIMER_MSB_SHIFT: u32 = if PM_TIMER_32_BIT { 31 } else { 23 };

/// The SCI's ISA interrupt (FADT SCI_INT, ACPI 6.5 §5.2.9; IRQ 9 as on PIIX4 and ICH9).
pub const SCI_IRQ: u8 = 9;

/// The reset register: the PCI-host reset control register of PIIX/ICH chipsets at I/O
/// port 0xCF9, named by the FADT's RESET_REG (ACPI 6.5 §4.8.3.6, "Reset Register").
pub const RESET_PORT: u16 = 0xCF9;
/// The value the FADT tells OSPM to write (RESET_VALUE): SYS_RST | RST_CPU.
pub const RESET_VALUE: u8 = 0x06;
/// Reset control register bits (Intel ICH9 datasheet, "RST_CNT—Reset Control Register",
/// I/O port CF9h; the same bits on PIIX3/PIIX4 "RC" register): a write with
/// RST_CPU set resets; SYS_RST (hard reset) and FULL_RST are kept and read back.
const RCR_SYS_RST: u8 = 1 << 1;
const RCR_RST_CPU: u8 = 1 << 2;
const RCR_FULL_RST: u8 = 1 << 3;

/// The SLP_TYP value of `\_S5` in the DSDT (its package {5, 5, 0, 0}, ACPI 6.5 §7.4.2
/// "\_Sx (System States)"): writing it with SLP_EN powers the VM off. Our choice: SLP_TYP
/// values are platform-defined.
pub const S5_SLP_TYP: u8 = 5;

/// PM1_STS bits (ACPI 6.5 §4.8.3.1.1, "PM1 Status Registers"), write 1 to clear.
mod sts {
    pub const TMR: u16 = 1 << 0;
    pub const BM: u16 = 1 << 4;
    pub const GBL: u16 = 1 << 5;
    pub const PWRBTN: u16 = 1 << 8;
    pub const SLPBTN: u16 = 1 << 9;
    pub const RTC: u16 = 1 << 10;
    pub const PCIEXP_WAKE: u16 = 1 << 14;
    pub const WAK: u16 = 1 << 15;
    /// The status bits that exist (the rest are reserved and read 0).
    pub const ALL: u16 = TMR | BM | GBL | PWRBTN | SLPBTN | RTC | PCIEXP_WAKE | WAK;
}

/// PM1_EN bits (ACPI 6.5 §4.8.3.1.2, "PM1 Enable Registers"); each enables the SCI for
/// the status bit at the same position.
mod en {
    pub const TMR: u16 = 1 << 0;
    pub const GBL: u16 = 1 << 5;
    pub const PWRBTN: u16 = 1 << 8;
    pub const SLPBTN: u16 = 1 << 9;
    pub const RTC: u16 = 1 << 10;
    pub const PCIEXP_WAKE_DIS: u16 = 1 << 14;
    pub const ALL: u16 = TMR | GBL | PWRBTN | SLPBTN | RTC | PCIEXP_WAKE_DIS;
    /// Enables whose status bit can raise the SCI.
    pub const SCI_SOURCES: u16 = TMR | GBL | PWRBTN | SLPBTN | RTC;
}

/// PM1_CNT bits (ACPI 6.5 §4.8.3.2.1, "PM1 Control Registers").
mod cnt {
    pub const SCI_EN: u16 = 1 << 0;
    pub const BM_RLD: u16 = 1 << 1;
    pub const SLP_TYP_SHIFT: u32 = 10;
    pub const SLP_TYP: u16 = 0b111 << SLP_TYP_SHIFT;
    /// Write-only, reads 0: enters the sleep state SLP_TYP names.
    pub const SLP_EN: u16 = 1 << 13;
    /// The bits that keep what is written (GBL_RLS, bit 2, is write-only and has no
    /// global lock to release here; the rest is reserved).
    pub const STORED: u16 = SCI_EN | BM_RLD | SLP_TYP;
}

/// What a write asks the VM to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmEffect {
    None,
    /// Sleep state S5 (soft off): end the VM, state `exited`, status 0.
    PowerOff,
    /// Reset the platform.
    Reset,
}

/// Whether `port` belongs to the PM block or the reset register.
#[must_use]
pub const fn is_acpi_pm_port(port: u16) -> bool {
    (port >= PM_BASE && port < PM_END) || port == RESET_PORT
}

/// The PM timer's count at `now_ns` (not yet reduced to its width).
fn timer_ticks(now_ns: u64) -> u128 {
    u128::from(now_ns) * u128::from(PM_TIMER_HZ) / NS_PER_S
}

/// The ACPI PM registers of one VM.
#[derive(Clone, Debug)]
pub struct AcpiPm {
    /// PM1_STS without TMR_STS (which is computed from the clock).
    status: u16,
    enable: u16,
    control: u16,
    /// How many times bit [`TIMER_MSB_SHIFT`] of the count had changed when the guest last
    /// cleared TMR_STS.
    timer_msb_acked: u128,
    reset_control: u8,
}

impl Default for AcpiPm {
    fn default() -> Self {
        Self::new()
    }
}

impl AcpiPm {
    /// The state at power-on: nothing pending or enabled, SCI_EN set.
    #[must_use]
    pub const fn new() -> Self {
        Self { status: 0, enable: 0, control: cnt::SCI_EN, timer_msb_acked: 0, reset_control: 0 }
    }

    /// The PM timer's register value at `now_ns`.
    #[must_use]
    pub fn timer(&self, now_ns: u64) -> u32 {
        let mask = if PM_TIMER_32_BIT { u32::MAX } else { 0x00FF_FFFF };
        (timer_ticks(now_ns) as u32) & mask
    }

    fn timer_msb_changes(now_ns: u64) -> u128 {
        timer_ticks(now_ns) >> TIMER_MSB_SHIFT
    }

    /// PM1_STS at `now_ns`.
    #[must_use]
    pub fn status(&self, now_ns: u64) -> u16 {
        let timer = if Self::timer_msb_changes(now_ns) > self.timer_msb_acked { sts::TMR } else { 0 };
        self.status | timer
    }

    /// The SCI line at `now_ns`: SCI_EN and an enabled status bit set.
    #[must_use]
    pub fn sci_level(&self, now_ns: u64) -> bool {
        self.control & cnt::SCI_EN != 0 && self.status(now_ns) & self.enable & en::SCI_SOURCES != 0
    }

    /// When [`Self::sci_level`] next rises by itself (the timer's MSB changing while
    /// TMR_EN is set), in the VM's nanoseconds; `None` if it cannot.
    #[must_use]
    pub fn next_deadline(&self, now_ns: u64) -> Option<u64> {
        if self.control & cnt::SCI_EN == 0 || self.enable & en::TMR == 0 || self.sci_level(now_ns) {
            return None;
        }
        // The first nanosecond whose tick count reaches the next MSB change:
        // ceil(ticks * 10^9 / HZ).
        let ticks = (self.timer_msb_acked + 1) << TIMER_MSB_SHIFT;
        let ns = (ticks * NS_PER_S).div_ceil(u128::from(PM_TIMER_HZ));
        u64::try_from(ns).ok()
    }

    /// The fixed power button was pressed (PWRBTN_STS, ACPI 6.5 §4.8.3.1.1): it is set; with
    /// PWRBTN_EN the SCI rises and OSPM shuts down.
    pub fn press_power_button(&mut self) {
        self.status |= sts::PWRBTN;
    }

    /// An IN of `size` bytes at `port`; bytes outside the registers read 0.
    pub fn read(&mut self, port: u16, size: IoSize, now_ns: u64) -> u32 {
        (0..u16::from(size.bytes())).fold(0, |value, i| {
            let byte = port.checked_add(i).map_or(0, |p| self.read_byte(p, now_ns));
            value | u32::from(byte) << (8 * i)
        })
    }

    /// An OUT of `size` bytes at `port` (the value's low bytes, one per port).
    pub fn write(&mut self, port: u16, size: IoSize, value: u32, now_ns: u64) -> PmEffect {
        if port == RESET_PORT {
            // The reset control register is one byte wide; a wider access at 0xCF9 is not
            // it (0xCF8 is the PCI configuration address register).
            return if size == IoSize::Byte { self.write_reset_control(value as u8) } else { PmEffect::None };
        }
        let mut effect = PmEffect::None;
        for i in 0..u16::from(size.bytes()) {
            let Some(p) = port.checked_add(i) else { break };
            let byte = (value >> (8 * i)) as u8;
            if let e @ (PmEffect::PowerOff | PmEffect::Reset) = self.write_byte(p, byte, now_ns) {
                effect = e;
            }
        }
        effect
    }

    fn read_byte(&self, port: u16, now_ns: u64) -> u8 {
        let (register, lane) = match port {
            RESET_PORT => return self.reset_control,
            p if (PM1A_EVT_BLK..PM1A_EVT_BLK + 2).contains(&p) => {
                (u32::from(self.status(now_ns)), p - PM1A_EVT_BLK)
            }
            p if (PM1A_EVT_BLK + 2..PM1A_CNT_BLK).contains(&p) => {
                (u32::from(self.enable), p - PM1A_EVT_BLK - 2)
            }
            p if (PM1A_CNT_BLK..PM1A_CNT_BLK + u16::from(PM1_CNT_LEN)).contains(&p) => {
                (u32::from(self.control), p - PM1A_CNT_BLK)
            }
            p if (PM_TMR_BLK..PM_END).contains(&p) => (self.timer(now_ns), p - PM_TMR_BLK),
            _ => return 0,
        };
        (register >> (8 * lane)) as u8
    }

    fn write_byte(&mut self, port: u16, byte: u8, now_ns: u64) -> PmEffect {
        match port {
            p if (PM1A_EVT_BLK..PM1A_EVT_BLK + 2).contains(&p) => {
                let clear = (u16::from(byte) << (8 * (p - PM1A_EVT_BLK))) & sts::ALL;
                self.status &= !clear;
                if clear & sts::TMR != 0 {
                    self.timer_msb_acked = Self::timer_msb_changes(now_ns);
                }
            }
            p if (PM1A_EVT_BLK + 2..PM1A_CNT_BLK).contains(&p) => {
                let shift = 8 * (p - PM1A_EVT_BLK - 2);
                let lane = 0xFF << shift;
                self.enable = (self.enable & !lane) | ((u16::from(byte) << shift) & lane & en::ALL);
            }
            p if (PM1A_CNT_BLK..PM1A_CNT_BLK + u16::from(PM1_CNT_LEN)).contains(&p) => {
                let shift = 8 * (p - PM1A_CNT_BLK);
                let written = u16::from(byte) << shift;
                let lane = 0xFF << shift;
                self.control = (self.control & !lane) | (written & lane & cnt::STORED);
                if written & cnt::SLP_EN != 0 {
                    let slp_typ = (written & cnt::SLP_TYP) >> cnt::SLP_TYP_SHIFT;
                    if slp_typ == u16::from(S5_SLP_TYP) {
                        return PmEffect::PowerOff;
                    }
                }
            }
            // The timer is read-only; other ports of the block are reserved.
            _ => {}
        }
        PmEffect::None
    }

    fn write_reset_control(&mut self, value: u8) -> PmEffect {
        if value & RCR_RST_CPU != 0 {
            self.reset_control = 0;
            return PmEffect::Reset;
        }
        self.reset_control = value & (RCR_SYS_RST | RCR_FULL_RST);
        PmEffect::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn cnt_value(slp_typ: u8, slp_en: bool) -> u32 {
        u32::from(cnt::SCI_EN)
            | u32::from(slp_typ) << cnt::SLP_TYP_SHIFT
            | if slp_en { u32::from(cnt::SLP_EN) } else { 0 }
    }

    #[test]
    fn sci_en_is_set_from_reset_and_sleep_enable_reads_zero() {
        let mut pm = AcpiPm::new();
        assert_eq!(pm.read(PM1A_CNT_BLK, IoSize::Word, 0), u32::from(cnt::SCI_EN));
        assert_eq!(pm.write(PM1A_CNT_BLK, IoSize::Word, cnt_value(3, true), 0), PmEffect::None);
        assert_eq!(pm.read(PM1A_CNT_BLK, IoSize::Word, 0), cnt_value(3, false), "SLP_TYP kept, SLP_EN not");
        pm.write(PM1A_CNT_BLK, IoSize::Word, 0xFFFF, 0);
        assert_eq!(pm.read(PM1A_CNT_BLK, IoSize::Word, 0), u32::from(cnt::STORED), "reserved bits read 0");
    }

    #[test]
    fn slp_en_with_the_s5_type_powers_off() {
        let mut pm = AcpiPm::new();
        // Linux writes the type first, then type and enable.
        assert_eq!(pm.write(PM1A_CNT_BLK, IoSize::Word, cnt_value(S5_SLP_TYP, false), 0), PmEffect::None);
        assert_eq!(pm.write(PM1A_CNT_BLK, IoSize::Word, cnt_value(S5_SLP_TYP, true), 0), PmEffect::PowerOff);
        // The high byte alone carries both fields.
        let high = cnt_value(S5_SLP_TYP, true) >> 8;
        assert_eq!(AcpiPm::new().write(PM1A_CNT_BLK + 1, IoSize::Byte, high, 0), PmEffect::PowerOff);
        // So does a dword at PM1_CNT (its upper bytes reach reserved ports).
        assert_eq!(
            AcpiPm::new().write(PM1A_CNT_BLK, IoSize::Dword, cnt_value(S5_SLP_TYP, true), 0),
            PmEffect::PowerOff
        );
    }

    #[test]
    fn other_sleep_types_are_ignored() {
        for slp_typ in (0..8).filter(|&t| t != S5_SLP_TYP) {
            let mut pm = AcpiPm::new();
            assert_eq!(pm.write(PM1A_CNT_BLK, IoSize::Word, cnt_value(slp_typ, true), 0), PmEffect::None);
        }
    }

    #[test]
    fn status_bits_are_write_one_to_clear() {
        let mut pm = AcpiPm::new();
        pm.press_power_button();
        assert_eq!(pm.read(PM1A_EVT_BLK, IoSize::Word, 0), u32::from(sts::PWRBTN));
        pm.write(PM1A_EVT_BLK, IoSize::Word, 0, 0);
        assert_eq!(pm.read(PM1A_EVT_BLK, IoSize::Word, 0), u32::from(sts::PWRBTN), "writing 0 keeps it");
        pm.write(PM1A_EVT_BLK, IoSize::Word, u32::from(sts::WAK | sts::TMR), 0);
        assert_eq!(pm.read(PM1A_EVT_BLK, IoSize::Word, 0), u32::from(sts::PWRBTN), "other bits keep it");
        pm.write(PM1A_EVT_BLK + 1, IoSize::Byte, u32::from(sts::PWRBTN >> 8), 0);
        assert_eq!(pm.read(PM1A_EVT_BLK, IoSize::Word, 0), 0);
    }

    #[test]
    fn enable_keeps_defined_bits_and_the_power_button_raises_the_sci() {
        let mut pm = AcpiPm::new();
        pm.write(PM1A_EVT_BLK + 2, IoSize::Word, 0xFFFF, 0);
        assert_eq!(pm.read(PM1A_EVT_BLK + 2, IoSize::Word, 0), u32::from(en::ALL));
        // One dword access covers both registers: status (W1C) low, enable high.
        pm.write(PM1A_EVT_BLK, IoSize::Dword, u32::from(en::PWRBTN) << 16, 0);
        assert_eq!(pm.read(PM1A_EVT_BLK, IoSize::Dword, 0), u32::from(en::PWRBTN) << 16);
        assert!(!pm.sci_level(0));
        pm.press_power_button();
        assert!(pm.sci_level(0));
        // SCI_EN clear masks the SCI.
        pm.write(PM1A_CNT_BLK, IoSize::Word, 0, 0);
        assert!(!pm.sci_level(0));
        pm.write(PM1A_CNT_BLK, IoSize::Word, u32::from(cnt::SCI_EN), 0);
        pm.write(PM1A_EVT_BLK, IoSize::Word, u32::from(sts::PWRBTN), 0);
        assert!(!pm.sci_level(0));
    }

    #[test]
    fn timer_counts_at_3_579545_mhz_rounding_down() {
        let mut pm = AcpiPm::new();
        assert_eq!(pm.read(PM_TMR_BLK, IoSize::Dword, 0), 0);
        assert_eq!(pm.read(PM_TMR_BLK, IoSize::Dword, SEC), 3_579_545);
        // One tick lasts 279.36... ns: 279 ns is still tick 0, 280 ns is tick 1.
        assert_eq!(pm.timer(279), 0);
        assert_eq!(pm.timer(280), 1);
        // 10 s + 1 ns: floor(35_795_450.000_003_58).
        assert_eq!(pm.timer(10 * SEC + 1), 35_795_450);
        // It wraps at 32 bits: 2^32 ticks take 1199.86 s.
        let wrap_ns = (1u128 << 32) * NS_PER_S / u128::from(PM_TIMER_HZ);
        let after_wrap = pm.timer(wrap_ns as u64 + 1_000);
        assert!(after_wrap < 3_600, "{after_wrap}");
        // Byte reads take their lane of the same value.
        let t = 1_234_567_891;
        let whole = pm.read(PM_TMR_BLK, IoSize::Dword, t);
        let bytes: u32 = (0..4).map(|i| pm.read(PM_TMR_BLK + i, IoSize::Byte, t) << (8 * i)).sum();
        assert_eq!(whole, bytes);
        // The timer is read-only.
        pm.write(PM_TMR_BLK, IoSize::Dword, 0, t);
        assert_eq!(pm.read(PM_TMR_BLK, IoSize::Dword, t), whole);
        // Extreme clocks do not overflow.
        assert_eq!(pm.timer(u64::MAX), (u128::from(u64::MAX) * 3_579_545 / NS_PER_S) as u32);
    }

    #[test]
    fn timer_status_sets_when_bit_31_changes_and_raises_the_sci_when_enabled() {
        let mut pm = AcpiPm::new();
        let flip = pm.next_deadline(0);
        assert_eq!(flip, None, "TMR_EN clear");
        pm.write(PM1A_EVT_BLK + 2, IoSize::Word, u32::from(en::TMR), 0);
        let flip = pm.next_deadline(0).expect("armed");
        assert_eq!(pm.timer(flip), 1 << 31, "the deadline is the first ns of the change");
        assert_eq!(pm.timer(flip - 1), (1 << 31) - 1);
        assert_eq!(pm.status(flip - 1) & sts::TMR, 0);
        assert!(!pm.sci_level(flip - 1));
        assert_eq!(pm.status(flip) & sts::TMR, sts::TMR);
        assert!(pm.sci_level(flip));
        assert_eq!(pm.next_deadline(flip), None, "already raised");
        pm.write(PM1A_EVT_BLK, IoSize::Word, u32::from(sts::TMR), flip + 5);
        assert!(!pm.sci_level(flip + 5));
        assert_eq!(pm.timer(pm.next_deadline(flip + 5).unwrap()), 0, "the next change is the wrap");
    }

    #[test]
    fn reset_register_resets_on_rst_cpu() {
        for value in [RESET_VALUE, 0x0E, 0x04] {
            assert_eq!(AcpiPm::new().write(RESET_PORT, IoSize::Byte, value.into(), 0), PmEffect::Reset);
        }
        let mut pm = AcpiPm::new();
        assert_eq!(pm.write(RESET_PORT, IoSize::Byte, 0x0A, 0), PmEffect::None);
        assert_eq!(pm.read(RESET_PORT, IoSize::Byte, 0), 0x0A, "SYS_RST and FULL_RST read back");
        // 0xCF8 is the PCI configuration address: a dword there is not the reset register.
        assert_eq!(pm.write(RESET_PORT, IoSize::Word, 0x0606, 0), PmEffect::None);
        assert!(!is_acpi_pm_port(0xCF8));
    }

    #[test]
    fn the_ports_are_the_fadt_blocks() {
        assert!((PM_BASE..PM_BASE + 12).all(is_acpi_pm_port));
        assert!(!is_acpi_pm_port(PM_BASE - 1) && !is_acpi_pm_port(PM_BASE + 12));
        for p in [0x20, 0x21, 0x40, 0x43, 0x61, 0x64, 0x70, 0x71, 0x80, 0xF4, 0x3F8, 0x4D0, 0x510, 0x511] {
            assert!(!is_acpi_pm_port(p), "{p:#x} belongs to another device");
        }
        // Reserved bytes of the block (0x606, 0x607) read 0 and ignore writes.
        let mut pm = AcpiPm::new();
        pm.write(0x606, IoSize::Word, 0xFFFF, 0);
        assert_eq!(pm.read(0x606, IoSize::Word, 0), 0);
    }

    #[test]
    fn no_access_panics() {
        let mut pm = AcpiPm::new();
        for port in [0, PM_BASE, PM_END - 1, u16::MAX - 1, u16::MAX, RESET_PORT] {
            for size in [IoSize::Byte, IoSize::Word, IoSize::Dword] {
                for value in [0, u32::MAX] {
                    for now in [0, u64::MAX] {
                        pm.read(port, size, now);
                        pm.write(port, size, value, now);
                        let _ = pm.next_deadline(now);
                    }
                }
            }
        }
    }
}
