//! The COM1 console, through the `uart_16550` crate.
//!
//! The UART is programmed fully (8N1, FIFO, divisor): Bochs's UART sends 5-bit characters
//! until the line control register is written. Output waits for the transmit-holding
//! register to be empty, so nothing is lost when an emulator drains slowly.

use core::fmt;
use spin::Mutex;
use uart_16550::backend::PioBackend;
use uart_16550::{Config, Uart16550};

/// The standard I/O base of COM1.
const COM1_PORT: u16 = 0x3F8;

static CONSOLE: Mutex<Option<Uart16550<PioBackend>>> = Mutex::new(None);

/// Programs COM1. Safe to call more than once; the second call reprograms the port.
pub fn init() {
    // SAFETY: 0x3F8..0x3FF is COM1 on every PC-compatible machine Taproot boots on, and
    // nothing else in the image drives those ports; `CONSOLE` serialises all access.
    let uart = unsafe { Uart16550::new_port(COM1_PORT) };
    let Ok(mut uart) = uart else { return };
    let config = Config { check_cts_before_sending: false, ..Config::default() };
    if uart.init(config).is_ok() {
        *CONSOLE.lock() = Some(uart);
    }
}

/// Writes bytes to the console, waiting for room in the UART (after any NMI report that
/// had to wait for the console).
pub fn write_bytes(bytes: &[u8]) {
    crate::arch::x86_64::interrupts::report_deferred_nmis();
    if let Some(uart) = CONSOLE.lock().as_mut() {
        send(uart, bytes);
    }
}

/// Writes without waiting for the console lock: for exception and panic reports, which
/// may interrupt a CPU that holds it. Output of two CPUs can interleave; it is not lost.
pub fn write_bytes_unlocked(bytes: &[u8]) {
    // SAFETY: port I/O to COM1's data and status registers has no memory effects; a torn
    // interleaving with a lock holder garbles characters at worst.
    let mut uart = match unsafe { Uart16550::new_port(COM1_PORT) } {
        Ok(uart) => uart,
        Err(_) => return,
    };
    send(&mut uart, bytes);
}

fn send(uart: &mut Uart16550<PioBackend>, bytes: &[u8]) {
    for &b in bytes {
        if b == b'\n' {
            uart.send_bytes_exact(b"\r");
        }
        uart.send_bytes_exact(&[b]);
    }
}

/// COM1's line status register and its "transmitter empty" bit (16550 datasheet, LSR bit 6).
const LSR_PORT: u16 = COM1_PORT + 5;
const LSR_TRANSMITTER_EMPTY: u8 = 1 << 6;
/// Give up waiting after this many polls (a UART that never drains must not hang power-off).
const DRAIN_POLLS: u32 = 1_000_000;

/// Waits until the UART has sent every queued byte: an emulator that powers off when told
/// would otherwise drop the tail of the last line.
pub fn drain() {
    let mut lsr = x86_64::instructions::port::PortReadOnly::<u8>::new(LSR_PORT);
    for _ in 0..DRAIN_POLLS {
        // SAFETY: reading COM1's line status register has no side effects.
        if unsafe { lsr.read() } & LSR_TRANSMITTER_EMPTY != 0 {
            return;
        }
        core::hint::spin_loop();
    }
}

/// A `fmt::Write` sink on the console; holds the lock for one `write_fmt`.
pub struct ConsoleWriter;

impl fmt::Write for ConsoleWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes(s.as_bytes());
        Ok(())
    }
}

/// Like [`ConsoleWriter`] but never blocks on the lock.
pub struct EmergencyWriter;

impl fmt::Write for EmergencyWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_bytes_unlocked(s.as_bytes());
        Ok(())
    }
}

/// Formats one message atomically with respect to other console users (after any NMI
/// report that had to wait for the console).
pub fn print(args: fmt::Arguments) {
    crate::arch::x86_64::interrupts::report_deferred_nmis();
    print_now(args);
}

/// [`print`] without the deferred NMI reports (for their own printing).
pub(crate) fn print_now(args: fmt::Arguments) {
    let mut guard = CONSOLE.lock();
    if let Some(uart) = guard.as_mut() {
        let mut w = LockedWriter(uart);
        let _ = fmt::write(&mut w, args);
    }
}

/// Like [`print`] for a context that must not wait on the lock for long (an NMI handler,
/// which may have interrupted the lock's holder on its own CPU): tries while `keep_trying`
/// says so, and returns whether it printed.
pub fn try_print(args: fmt::Arguments, mut keep_trying: impl FnMut() -> bool) -> bool {
    while keep_trying() {
        if let Some(mut guard) = CONSOLE.try_lock() {
            if let Some(uart) = guard.as_mut() {
                let _ = fmt::write(&mut LockedWriter(uart), args);
            }
            return true;
        }
        core::hint::spin_loop();
    }
    false
}

/// Runs `f` while holding the console lock (for `debug::nmi_while_console_held`).
pub(crate) fn with_console_held(f: impl FnOnce()) {
    let _guard = CONSOLE.lock();
    f();
}

struct LockedWriter<'a>(&'a mut Uart16550<PioBackend>);

impl fmt::Write for LockedWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        send(self.0, s.as_bytes());
        Ok(())
    }
}
