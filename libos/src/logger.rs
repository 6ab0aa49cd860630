//! The `log` backend: one console line per record, with the monotonic time and the CPU.

use crate::arch::x86_64::percpu;
use crate::{drivers::serial, time};
use log::{LevelFilter, Log, Metadata, Record};

struct ConsoleLogger;

static LOGGER: ConsoleLogger = ConsoleLogger;

impl Log for ConsoleLogger {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        let ns = time::now_ns();
        serial::print(format_args!(
            "[{:>5}.{:06}] cpu{} {:<5} {}\n",
            ns / 1_000_000_000,
            (ns / 1_000) % 1_000_000,
            percpu::current_cpu(),
            record.level(),
            record.args()
        ));
    }

    fn flush(&self) {}
}

/// Installs the logger; `level` comes from the command line (`log=debug`), info otherwise.
pub fn init(level: Option<&str>) {
    let filter = match level {
        Some("off") => LevelFilter::Off,
        Some("error") => LevelFilter::Error,
        Some("warn") => LevelFilter::Warn,
        Some("debug") => LevelFilter::Debug,
        Some("trace") => LevelFilter::Trace,
        _ => LevelFilter::Info,
    };
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(filter);
}
