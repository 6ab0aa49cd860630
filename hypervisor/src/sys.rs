//! The application's side of the Hermit ABI: safe wrappers over the `hermit-abi`
//! declarations that libos implements (see `libos::abi`).
#![allow(unsafe_code, reason = "calls across the Hermit ABI are `unsafe extern` calls")]

/// Writes to the console (file descriptor 1).
pub fn console_write(bytes: &[u8]) {
    // SAFETY: `bytes` is a valid slice for the duration of the call.
    unsafe { hermit_abi::write(hermit_abi::STDOUT_FILENO, bytes.as_ptr(), bytes.len()) };
}

/// Monotonic nanoseconds since boot.
pub fn now_ns() -> u64 {
    let mut ts = hermit_abi::timespec::default();
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { hermit_abi::clock_gettime(hermit_abi::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps (busy-waits) for `us` microseconds.
pub fn sleep_us(us: u64) {
    // SAFETY: no pointers are involved.
    unsafe { hermit_abi::usleep(us) }
}

/// Ends the machine with `status` (QEMU reports `status * 2 + 1`).
pub fn exit(status: i32) -> ! {
    // SAFETY: no pointers are involved; the call does not return.
    unsafe { hermit_abi::exit(status) }
}

/// Fills `buf` with random bytes from the CPU (RDRAND); false if it has none.
pub fn random(buf: &mut [u8]) -> bool {
    // SAFETY: `buf` is a valid, writable slice for the duration of the call.
    let n = unsafe { hermit_abi::read_entropy(buf.as_mut_ptr(), buf.len(), 0) };
    n == buf.len() as isize
}
