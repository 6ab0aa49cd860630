//! The legacy 8259 PICs: remapped away from the exception vectors, then masked. Taproot
//! takes interrupts only through the local APIC.

use super::vectors::{PIC1_BASE, PIC2_BASE};
use x86_64::instructions::port::Port;

const PIC1_COMMAND: u16 = 0x20;
const PIC1_DATA: u16 = 0x21;
const PIC2_COMMAND: u16 = 0xA0;
const PIC2_DATA: u16 = 0xA1;
/// ICW1: initialise, ICW4 follows. ICW4: 8086 mode.
const ICW1_INIT_ICW4: u8 = 0x11;
const ICW4_8086: u8 = 0x01;

/// Remaps both PICs to [`PIC1_BASE`] and [`PIC2_BASE`] (where a spurious 8259 interrupt
/// would land: never an exception vector) and masks every line.
pub fn disable() {
    let mut c1: Port<u8> = Port::new(PIC1_COMMAND);
    let mut d1: Port<u8> = Port::new(PIC1_DATA);
    let mut c2: Port<u8> = Port::new(PIC2_COMMAND);
    let mut d2: Port<u8> = Port::new(PIC2_DATA);
    // SAFETY: the standard 8259 initialisation sequence on the standard ports; runs once
    // on the boot CPU with interrupts off.
    unsafe {
        c1.write(ICW1_INIT_ICW4);
        c2.write(ICW1_INIT_ICW4);
        d1.write(PIC1_BASE);
        d2.write(PIC2_BASE);
        d1.write(4); // slave on IRQ2
        d2.write(2); // cascade identity
        d1.write(ICW4_8086);
        d2.write(ICW4_8086);
        d1.write(0xFF);
        d2.write(0xFF);
    }
}
