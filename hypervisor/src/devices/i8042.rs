//! The smallest i8042 (PS/2 keyboard controller) a PC guest needs: no keyboard or mouse,
//! a status register that always says "nothing to read, ready for a command", and the
//! controller's CPU-reset line, which is how many kernels reboot. An unanswered port
//! would read 0xFF, "both buffers full", on which drivers spin; with this status Linux's
//! i8042 probe sends its first command, times out waiting for the answer and gives up.
//!
//! Reference: IBM PC AT Technical Reference, "Keyboard Controller": the status register
//! at port 0x64, the data port 0x60, and the command set (0xF0-0xFF: pulse output port).
//!
//! # How the VM drives it
//! One [`I8042`] per VM. Port exits for [`is_i8042_port`] go to [`I8042::read`] /
//! [`I8042::write`]; a write returning [`PmEffect::Reset`] resets the VM (as the reset
//! register at 0xCF9 does, see `acpi_pm`).

use super::IoSize;
use super::acpi_pm::PmEffect;

/// Data port: output buffer (read) and input buffer for data bytes (write).
pub const DATA_PORT: u16 = 0x60;
/// Status register (read) and command port (write).
pub const COMMAND_PORT: u16 = 0x64;

/// Status register bits: output buffer full (bit 0) and input buffer full (bit 1) are
/// always clear; the system flag (bit 2) is set, as after the power-on self-test.
const STATUS_SYSTEM_FLAG: u8 = 1 << 2;
/// Commands 0xF0-0xFF pulse the output-port lines whose bit in the command's low nibble
/// is 0; line 0 is the CPU reset (0xFE pulses only it).
const COMMAND_PULSE_OUTPUT_PORT: u8 = 0xF0;
const OUTPUT_PORT_RESET_LINE: u8 = 1 << 0;

/// Whether `port` is one of the controller's two ports.
#[must_use]
pub const fn is_i8042_port(port: u16) -> bool {
    port == DATA_PORT || port == COMMAND_PORT
}

/// The keyboard controller of one VM: it keeps no state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct I8042;

impl I8042 {
    #[must_use]
    pub const fn new() -> Self {
        Self
    }

    /// An IN: the status register at [`COMMAND_PORT`]; the empty output buffer (0) at
    /// [`DATA_PORT`] and elsewhere.
    pub fn read(&mut self, port: u16, _size: IoSize) -> u32 {
        if port == COMMAND_PORT { u32::from(STATUS_SYSTEM_FLAG) } else { 0 }
    }

    /// An OUT: a pulse command that pulls the reset line resets; every other command and
    /// every data byte is accepted and ignored.
    pub fn write(&mut self, port: u16, _size: IoSize, value: u32) -> PmEffect {
        let command = value as u8;
        let pulses_reset =
            command & 0xF0 == COMMAND_PULSE_OUTPUT_PORT && command & OUTPUT_PORT_RESET_LINE == 0;
        if port == COMMAND_PORT && pulses_reset { PmEffect::Reset } else { PmEffect::None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_says_both_buffers_are_empty() {
        let mut kbc = I8042::new();
        let status = kbc.read(COMMAND_PORT, IoSize::Byte);
        assert_eq!(status & 0b11, 0, "OBF and IBF clear");
        assert_eq!(status, 0x04);
        assert_eq!(kbc.read(DATA_PORT, IoSize::Byte), 0);
    }

    #[test]
    fn command_0xfe_resets() {
        assert_eq!(I8042::new().write(COMMAND_PORT, IoSize::Byte, 0xFE), PmEffect::Reset);
        // Other pulse commands that include line 0 reset too; those that leave it do not.
        assert_eq!(I8042::new().write(COMMAND_PORT, IoSize::Byte, 0xF0), PmEffect::Reset);
        assert_eq!(I8042::new().write(COMMAND_PORT, IoSize::Byte, 0xFF), PmEffect::None);
        assert_eq!(I8042::new().write(COMMAND_PORT, IoSize::Byte, 0xFD), PmEffect::None);
    }

    #[test]
    fn other_commands_and_data_writes_are_ignored() {
        let mut kbc = I8042::new();
        for value in [0x20, 0x60, 0xAA, 0xAD, 0xD1] {
            assert_eq!(kbc.write(COMMAND_PORT, IoSize::Byte, value), PmEffect::None);
        }
        assert_eq!(kbc.write(DATA_PORT, IoSize::Byte, 0xFE), PmEffect::None, "0xFE as data is no command");
        assert_eq!(kbc.read(COMMAND_PORT, IoSize::Byte), 0x04);
    }
}
