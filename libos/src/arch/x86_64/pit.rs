//! The 8254 PIT, used once: channel 2 measures a known interval against the TSC.

use super::tsc;
use x86_64::instructions::port::Port;

/// The PIT's input clock (Intel 8254 datasheet; 1.193182 MHz on every PC).
const PIT_HZ: u64 = 1_193_182;
/// Channel 2 data port, the mode/command port, and the NMI status/control port (bit 0:
/// channel 2 gate, bit 1: speaker enable, bit 5: channel 2 output).
const PIT_CHANNEL2: u16 = 0x42;
const PIT_COMMAND: u16 = 0x43;
const NMI_STATUS_CONTROL: u16 = 0x61;
/// Channel 2, lobyte/hibyte access, mode 0 (interrupt on terminal count), binary.
const CHANNEL2_MODE0: u8 = 0b1011_0000;
const CALIBRATION_MS: u64 = 10;

/// Counts TSC ticks during 10 ms of PIT time and scales them to ticks per second.
pub fn measure_tsc_hz() -> u64 {
    let count = (PIT_HZ * CALIBRATION_MS / 1000) as u16;
    let mut control: Port<u8> = Port::new(NMI_STATUS_CONTROL);
    let mut command: Port<u8> = Port::new(PIT_COMMAND);
    let mut data: Port<u8> = Port::new(PIT_CHANNEL2);
    // SAFETY: the PIT and port 0x61 are standard PC devices owned by libos; this runs once
    // on the boot CPU before anything else could use channel 2.
    unsafe {
        let gate_on = (control.read() & !0b10) | 0b1;
        control.write(gate_on & !0b1);
        command.write(CHANNEL2_MODE0);
        data.write(count as u8);
        data.write((count >> 8) as u8);
        control.write(gate_on);
        let start = tsc::read();
        let mut spins: u64 = 0;
        while control.read() & 0x20 == 0 {
            spins += 1;
            if spins > 500_000_000 {
                // A PIT that never fires (should not happen): assume 1 GHz rather than hang.
                return 1_000_000_000;
            }
        }
        let ticks = tsc::read() - start;
        ticks * 1000 / CALIBRATION_MS
    }
}
