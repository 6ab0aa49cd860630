//! The application interface, in the Hermit ABI: where `hermit-abi` declares a function
//! libos can provide (console write, allocation, clock, sleep, random, processor count,
//! exit), libos exports it under the Hermit name and signature. The `const` checks at the
//! bottom stop the build if a signature drifts from `hermit-abi`'s declaration.

use crate::{arch::x86_64::cpu, power, smp, time};
use core::alloc::Layout;
use hermit_abi as abi;

// Every export is `unsafe extern "C"`, as `hermit-abi` declares it.
//
// # Safety (all exports)
// Pointer arguments must be valid for the access the Hermit ABI describes for that
// function (`buf` readable/writable for `len` bytes, `tp` writable, `ptr` from `sys_alloc`
// with the same size and alignment).

/// The global allocator (`mm::heap`) is reached through `alloc::alloc`, like any Rust code.
struct Global;

impl Global {
    fn layout(size: usize, align: usize) -> Option<Layout> {
        Layout::from_size_align(size, align).ok().filter(|l| l.size() != 0)
    }
}

/// # Safety
/// See the module's safety contract: pointers valid as the Hermit ABI describes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_write(fd: i32, buf: *const u8, len: usize) -> isize {
    if fd != abi::STDOUT_FILENO && fd != abi::STDERR_FILENO {
        return -(abi::errno::EBADF as isize);
    }
    if buf.is_null() {
        return -(abi::errno::EFAULT as isize);
    }
    // SAFETY: the ABI contract: `buf` points to `len` readable bytes.
    let bytes = unsafe { core::slice::from_raw_parts(buf, len) };
    crate::drivers::serial::write_bytes(bytes);
    len as isize
}

/// # Safety
/// See the module's safety contract: pointers valid as the Hermit ABI describes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_alloc(size: usize, align: usize) -> *mut u8 {
    match Global::layout(size, align) {
        // SAFETY: the layout has a non-zero size.
        Some(layout) => unsafe { alloc::alloc::alloc(layout) },
        None => core::ptr::null_mut(),
    }
}

/// # Safety
/// See the module's safety contract: pointers valid as the Hermit ABI describes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    match Global::layout(size, align) {
        // SAFETY: the layout has a non-zero size.
        Some(layout) => unsafe { alloc::alloc::alloc_zeroed(layout) },
        None => core::ptr::null_mut(),
    }
}

/// # Safety
/// See the module's safety contract: pointers valid as the Hermit ABI describes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_malloc(size: usize, align: usize) -> *mut u8 {
    // SAFETY: same contract as ours.
    unsafe { sys_alloc(size, align) }
}

/// # Safety
/// See the module's safety contract: pointers valid as the Hermit ABI describes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_realloc(ptr: *mut u8, size: usize, align: usize, new_size: usize) -> *mut u8 {
    match Global::layout(size, align) {
        // SAFETY: the ABI contract: `ptr` came from `sys_alloc` with this size and align.
        Some(layout) if !ptr.is_null() && new_size != 0 => unsafe {
            alloc::alloc::realloc(ptr, layout, new_size)
        },
        _ => core::ptr::null_mut(),
    }
}

/// # Safety
/// See the module's safety contract: pointers valid as the Hermit ABI describes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_dealloc(ptr: *mut u8, size: usize, align: usize) {
    if let Some(layout) = Global::layout(size, align)
        && !ptr.is_null()
    {
        // SAFETY: the ABI contract: `ptr` came from `sys_alloc` with this layout.
        unsafe { alloc::alloc::dealloc(ptr, layout) }
    }
}

/// # Safety
/// See the module's safety contract: pointers valid as the Hermit ABI describes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_free(ptr: *mut u8, size: usize, align: usize) {
    // SAFETY: same contract as ours.
    unsafe { sys_dealloc(ptr, size, align) }
}

/// # Safety
/// See the module's safety contract: pointers valid as the Hermit ABI describes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_clock_gettime(clock_id: abi::clockid_t, tp: *mut abi::timespec) -> i32 {
    if tp.is_null() {
        return -abi::errno::EFAULT;
    }
    // There is no wall clock: CLOCK_REALTIME counts from boot, like CLOCK_MONOTONIC.
    if clock_id != abi::CLOCK_MONOTONIC && clock_id != abi::CLOCK_REALTIME {
        return -abi::errno::EINVAL;
    }
    let ns = time::now_ns();
    let value =
        abi::timespec { tv_sec: (ns / 1_000_000_000) as abi::time_t, tv_nsec: (ns % 1_000_000_000) as i32 };
    // SAFETY: the ABI contract: `tp` points to a writable timespec.
    unsafe { tp.write(value) };
    0
}

/// # Safety
/// See the module's safety contract: pointers valid as the Hermit ABI describes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_usleep(usecs: u64) {
    time::delay_us(usecs);
}

/// # Safety
/// See the module's safety contract: pointers valid as the Hermit ABI describes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_read_entropy(buf: *mut u8, len: usize, _flags: u32) -> isize {
    if buf.is_null() {
        return -(abi::errno::EFAULT as isize);
    }
    // SAFETY: the ABI contract: `buf` points to `len` writable bytes.
    let out = unsafe { core::slice::from_raw_parts_mut(buf, len) };
    for chunk in out.chunks_mut(8) {
        let Some(value) = cpu::rdrand() else {
            return -(abi::errno::ENOSYS as isize);
        };
        chunk.copy_from_slice(&value.to_le_bytes()[..chunk.len()]);
    }
    len as isize
}

/// # Safety
/// See the module's safety contract: pointers valid as the Hermit ABI describes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_get_processor_count() -> usize {
    smp::cpu_count()
}

/// # Safety
/// See the module's safety contract: pointers valid as the Hermit ABI describes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_available_parallelism() -> usize {
    smp::cpu_count()
}

/// # Safety
/// See the module's safety contract: pointers valid as the Hermit ABI describes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_exit(status: i32) -> ! {
    power::exit(status)
}

/// # Safety
/// See the module's safety contract: pointers valid as the Hermit ABI describes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sys_abort() -> ! {
    power::exit(134)
}

// Signature checks: each array holds `hermit-abi`'s declaration and our definition at one
// function-pointer type, so any drift is a type error.
const _: [unsafe extern "C" fn(i32, *const u8, usize) -> isize; 2] = [abi::write, sys_write];
const _: [unsafe extern "C" fn(usize, usize) -> *mut u8; 4] =
    [abi::alloc, sys_alloc, abi::alloc_zeroed, sys_alloc_zeroed];
const _: [unsafe extern "C" fn(usize, usize) -> *mut u8; 2] = [abi::malloc, sys_malloc];
const _: [unsafe extern "C" fn(*mut u8, usize, usize, usize) -> *mut u8; 2] = [abi::realloc, sys_realloc];
const _: [unsafe extern "C" fn(*mut u8, usize, usize); 4] = [abi::dealloc, sys_dealloc, abi::free, sys_free];
const _: [unsafe extern "C" fn(abi::clockid_t, *mut abi::timespec) -> i32; 2] =
    [abi::clock_gettime, sys_clock_gettime];
const _: [unsafe extern "C" fn(u64); 2] = [abi::usleep, sys_usleep];
const _: [unsafe extern "C" fn(*mut u8, usize, u32) -> isize; 2] = [abi::read_entropy, sys_read_entropy];
#[expect(deprecated, reason = "still declared by hermit-abi, so still exported and checked")]
const _: [unsafe extern "C" fn() -> usize; 2] = [abi::get_processor_count, sys_get_processor_count];
const _: [unsafe extern "C" fn() -> usize; 2] = [abi::available_parallelism, sys_available_parallelism];
const _: [unsafe extern "C" fn(i32) -> !; 2] = [abi::exit, sys_exit];
const _: [unsafe extern "C" fn() -> !; 2] = [abi::abort, sys_abort];
