//! Instruction emulation for device accesses that exit without decode assist.
//!
//! Today: the guest's own paging, walked in software ([`paging`]).

pub mod paging;
