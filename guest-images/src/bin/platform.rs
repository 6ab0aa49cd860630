//! `platform`: reads the PC platform a VM offers through its ports and firmware tables,
//! then powers off through ACPI. It prints (vCPU 0; the others halt):
//! - `platform: fw_cfg signature QEMU cpus N` (fw_cfg 0x510/0x511, keys 0x0000 and 0x0005);
//! - `platform: rtc YYYY-MM-DD hh:mm:ss` (CMOS RTC 0x70/0x71, UIP waited out, BCD or
//!   binary and 12/24 h per register B);
//! - `platform: rsdp at 0x... (start info|scan) madt processors N` (the RSDP from
//!   `hvm_start_info.rsdp_paddr` or the 0xE0000-0xFFFFF scan, checksums checked, then the
//!   XSDT's MADT);
//!
//! and then writes S5 to PM1a_CNT (port 0x604: SLP_TYP 5, SLP_EN). A check that fails prints
//! `platform: FAIL ...` and exits 1 through the exit port.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
guest_images::guest_main!(guest);

#[cfg(target_os = "none")]
mod platform {
    use guest_images::logic::{SDT_HEADER_LEN, acpi_checksum_ok, find_rsdp, madt_processor_count, rtc_value};
    use guest_images::println;
    use guest_images::rt::{inb, outb, outw};

    const FW_CFG_SELECTOR: u16 = 0x510;
    const FW_CFG_DATA: u16 = 0x511;
    const RTC_INDEX: u16 = 0x70;
    const RTC_DATA: u16 = 0x71;
    const PM1A_CNT: u16 = 0x604;
    const SLP_TYP_S5: u16 = 5;
    const SLP_EN: u16 = 1 << 13;
    const BIOS_AREA: core::ops::Range<u64> = 0xE_0000..0x10_0000;

    /// `len` bytes of guest-physical (identity-mapped) memory.
    fn phys(addr: u64, len: usize) -> &'static [u8] {
        // SAFETY: the runtime identity-maps the first 4 GiB and guest memory is never
        // unmapped; the ACPI tables the caller reads lie in RAM below 1 MiB.
        unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
    }

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
    }

    fn u64_at(bytes: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
    }

    fn fw_cfg_item<const N: usize>(key: u16) -> [u8; N] {
        outw(FW_CFG_SELECTOR, key);
        core::array::from_fn(|_| inb(FW_CFG_DATA))
    }

    pub fn fw_cfg() -> ([u8; 4], u16) {
        (fw_cfg_item::<4>(0x0000), u16::from_le_bytes(fw_cfg_item::<2>(0x0005)))
    }

    fn rtc_register(index: u8) -> u8 {
        outb(RTC_INDEX, index);
        inb(RTC_DATA)
    }

    /// (year, month, day, hour, minute, second).
    pub fn rtc() -> (u32, u8, u8, u8, u8, u8) {
        while rtc_register(0x0A) & 0x80 != 0 {
            core::hint::spin_loop();
        }
        let b = rtc_register(0x0B);
        let value = |index| rtc_value(rtc_register(index), b);
        let hour_byte = rtc_register(0x04);
        let mut hour = rtc_value(hour_byte & 0x7F, b);
        if b & 0x02 == 0 {
            hour = hour % 12 + if hour_byte & 0x80 != 0 { 12 } else { 0 };
        }
        let year = u32::from(value(0x32)) * 100 + u32::from(value(0x09));
        (year, value(0x08), value(0x07), hour, value(0x02), value(0x00))
    }

    /// The RSDP's address and where it came from.
    pub fn rsdp(boot: &guest_images::rt::Boot) -> Option<(u64, &'static str)> {
        if let Some(addr) = boot.rsdp_paddr() {
            return Some((addr, "start info"));
        }
        let area = phys(BIOS_AREA.start, (BIOS_AREA.end - BIOS_AREA.start) as usize);
        find_rsdp(area).map(|at| (BIOS_AREA.start + at as u64, "scan"))
    }

    /// The MADT's processor count, through the RSDP's XSDT; `Err` says what is wrong.
    pub fn madt_processors(rsdp: u64) -> Result<usize, &'static str> {
        let head = phys(rsdp, 36);
        if &head[..8] != b"RSD PTR " || !acpi_checksum_ok(&head[..20]) {
            return Err("RSDP signature or checksum");
        }
        if head[15] < 2 || !acpi_checksum_ok(&head[..u32_at(head, 20) as usize]) {
            return Err("RSDP revision or extended checksum");
        }
        let xsdt_addr = u64_at(head, 24);
        let xsdt = phys(xsdt_addr, u32_at(phys(xsdt_addr, SDT_HEADER_LEN), 4) as usize);
        if &xsdt[..4] != b"XSDT" || !acpi_checksum_ok(xsdt) {
            return Err("XSDT signature or checksum");
        }
        for entry in xsdt[SDT_HEADER_LEN..].chunks_exact(8) {
            let addr = u64::from_le_bytes(entry.try_into().expect("8 bytes"));
            let table = phys(addr, u32_at(phys(addr, SDT_HEADER_LEN), 4) as usize);
            if &table[..4] == b"APIC" {
                return if acpi_checksum_ok(table) {
                    Ok(madt_processor_count(table))
                } else {
                    Err("MADT checksum")
                };
            }
        }
        Err("no MADT in the XSDT")
    }

    pub fn power_off() {
        outw(PM1A_CNT, SLP_TYP_S5 << 10 | SLP_EN);
    }

    pub fn fail(what: &str) -> u32 {
        println!("platform: FAIL {what}");
        1
    }
}

#[cfg(target_os = "none")]
fn guest(boot: &guest_images::rt::Boot) -> u32 {
    use guest_images::println;
    if boot.vcpu_index != 0 {
        guest_images::rt::halt_forever();
    }
    let (signature, cpus) = platform::fw_cfg();
    let Ok(signature) = core::str::from_utf8(&signature) else { return platform::fail("fw_cfg signature") };
    println!("platform: fw_cfg signature {signature} cpus {cpus}");
    let (year, month, day, hour, minute, second) = platform::rtc();
    println!("platform: rtc {year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}");
    let Some((rsdp, source)) = platform::rsdp(boot) else { return platform::fail("no RSDP") };
    match platform::madt_processors(rsdp) {
        Ok(n) => println!("platform: rsdp at {rsdp:#x} ({source}) madt processors {n}"),
        Err(e) => return platform::fail(e),
    }
    platform::power_off();
    platform::fail("still running after the ACPI power-off")
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "platform is a bare-metal guest: cargo build -p guest-images --target x86_64-unknown-none --release"
    );
}
