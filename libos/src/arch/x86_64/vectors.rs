//! Every interrupt vector libos programs or names, in one place. Vectors 0-31 are the
//! CPU's exceptions (Intel SDM Vol. 3A §6.3.1, Table 6-1); the rest are ours to assign.
//! `interrupts` installs a stub for each of them.

/// #DF: `interrupts` runs it on its own IST stack (`gdt::DOUBLE_FAULT_IST_INDEX`).
pub const DOUBLE_FAULT: u8 = 8;
/// #PF: `interrupts` adds CR2 to its diagnosis.
pub const PAGE_FAULT: u8 = 14;

/// Local APIC timer: `apic` programs it into the LVT timer entry; `interrupts` counts the
/// tick and checks the stack canary.
pub const TIMER: u8 = 0x20;
/// Where `pic` remaps the two 8259s before masking them, away from the exceptions.
pub const PIC1_BASE: u8 = 0xE0;
pub const PIC2_BASE: u8 = 0xE8;
/// Spurious interrupts of the masked 8259s (IRQ7 and IRQ15 after remapping): `interrupts`
/// ignores them (no EOI).
pub const PIC1_SPURIOUS: u8 = PIC1_BASE + 7;
pub const PIC2_SPURIOUS: u8 = PIC2_BASE + 7;
/// Inter-processor "wake up and look at your work queue": sent by `smp::kick` and
/// `smp::run_on`; `interrupts` only acknowledges it.
pub const WAKE: u8 = 0xF0;
/// Local APIC spurious-interrupt vector (low nibble all ones, as old APICs require): `apic`
/// writes it into the SVR; `interrupts` ignores it (no EOI).
pub const APIC_SPURIOUS: u8 = 0xFF;

const _: () = assert!(TIMER >= 32 && PIC1_BASE >= 32, "0-31 are the CPU's exceptions");
const _: () = assert!(PIC2_BASE == PIC1_BASE + 8, "each 8259 takes eight vectors");
const _: () = assert!(TIMER < PIC1_BASE && PIC2_BASE + 8 <= WAKE && WAKE < APIC_SPURIOUS, "no sharing");
const _: () = assert!(APIC_SPURIOUS & 0xF == 0xF, "old APICs hardwire the low nibble");
