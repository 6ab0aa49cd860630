//! What a PC's firmware leaves for the operating system, built by the hypervisor for each
//! VM: the ACPI tables ([`acpi`]). Plain data: the VM writes the bytes into guest memory.

pub mod acpi;
