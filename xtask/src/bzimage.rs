//! Wraps a guest ELF into a bzImage (Linux boot protocol 2.15, `Documentation/arch/x86/
//! boot.rst`): a boot sector and one setup sector holding the setup header, then the
//! ELF's loadable bytes as the protected-mode kernel, flat from the lowest load address.
//! The guest-images runtime has its Linux 64-bit entry at that address + 0x200; the kernel
//! is not relocatable (it loads at 1 MiB, where the ELF is linked) and `init_size` covers
//! its `.bss`.

use taproot_guest_abi::boot::linux as bp;

/// The guests that are also built as bzImages: `<name>` is wrapped into `<name>.bzimage`.
pub const GUESTS: [&str; 1] = ["bzboot"];

/// Where a non-relocatable protected-mode kernel loads, and where the guests are linked.
const LOAD_GPA: u64 = 0x10_0000;
const SETUP_SECTS: u8 = 1;
const SECTOR: usize = 512;
const PT_LOAD: u32 = 1;

fn field<const N: usize>(elf: &[u8], at: usize) -> Result<[u8; N], String> {
    elf.get(at..at + N).and_then(|b| b.try_into().ok()).ok_or_else(|| format!("ELF truncated at {at:#x}"))
}
fn u16_at(elf: &[u8], at: usize) -> Result<u16, String> {
    field(elf, at).map(u16::from_le_bytes)
}
fn u32_at(elf: &[u8], at: usize) -> Result<u32, String> {
    field(elf, at).map(u32::from_le_bytes)
}
fn u64_at(elf: &[u8], at: usize) -> Result<u64, String> {
    field(elf, at).map(u64::from_le_bytes)
}

/// The bzImage of the ELF64 `elf`, whose loadable segments must start at 1 MiB.
pub fn from_elf(elf: &[u8]) -> Result<Vec<u8>, String> {
    if elf.get(..5) != Some(b"\x7fELF\x02".as_slice()) {
        return Err("not an ELF64".into());
    }
    let (phoff, phentsize, phnum) =
        (u64_at(elf, 0x20)? as usize, u16_at(elf, 0x36)? as usize, u16_at(elf, 0x38)?);
    let mut loads = Vec::new();
    for i in 0..usize::from(phnum) {
        let ph = phoff + i * phentsize;
        if u32_at(elf, ph)? == PT_LOAD {
            let (offset, paddr, filesz, memsz) = (
                u64_at(elf, ph + 8)?,
                u64_at(elf, ph + 0x18)?,
                u64_at(elf, ph + 0x20)?,
                u64_at(elf, ph + 0x28)?,
            );
            loads.push((offset as usize, paddr, filesz as usize, memsz));
        }
    }
    let start = loads.iter().map(|l| l.1).min().ok_or("the ELF has no loadable segment")?;
    if start != LOAD_GPA {
        return Err(format!("the ELF loads at {start:#x}, not at 1 MiB"));
    }
    let file_end = loads.iter().map(|&(_, paddr, filesz, _)| paddr + filesz as u64).max().unwrap_or(start);
    let mem_end = loads.iter().map(|&(_, paddr, _, memsz)| paddr + memsz).max().unwrap_or(start);
    let mut kernel = vec![0u8; (file_end - start) as usize];
    for &(offset, paddr, filesz, _) in &loads {
        let at = (paddr - start) as usize;
        let bytes = elf.get(offset..offset + filesz).ok_or("a segment lies outside the file")?;
        kernel[at..at + filesz].copy_from_slice(bytes);
    }
    let init_size = u32::try_from((mem_end - start).next_multiple_of(4096)).map_err(|_| "image too large")?;

    let mut out = vec![0u8; (usize::from(SETUP_SECTS) + 1) * SECTOR];
    let mut put = |at: usize, v: &[u8]| out[at..at + v.len()].copy_from_slice(v);
    put(bp::SETUP_SECTS, &[SETUP_SECTS]);
    put(bp::BOOT_FLAG, &bp::BOOT_FLAG_MAGIC.to_le_bytes());
    // jmp short over the header: the header ends at 0x202 + 0x66 = 0x268 (protocol 2.15).
    put(bp::JUMP_OFFSET - 1, &[0xEB, 0x66]);
    put(bp::HEADER, &bp::HEADER_MAGIC.to_le_bytes());
    put(bp::VERSION, &0x020Fu16.to_le_bytes());
    put(bp::LOADFLAGS, &[bp::LOADED_HIGH]);
    put(bp::CODE32_START, &(LOAD_GPA as u32).to_le_bytes());
    put(bp::INITRD_ADDR_MAX, &0x7FFF_FFFFu32.to_le_bytes());
    put(bp::KERNEL_ALIGNMENT, &0x20_0000u32.to_le_bytes());
    put(bp::XLOADFLAGS, &bp::XLF_KERNEL_64.to_le_bytes());
    put(bp::CMDLINE_SIZE, &2047u32.to_le_bytes());
    put(bp::PREF_ADDRESS, &LOAD_GPA.to_le_bytes());
    put(bp::INIT_SIZE, &init_size.to_le_bytes());
    out.extend_from_slice(&kernel);
    Ok(out)
}

/// Writes `<dir>/<name>.bzimage` for each of [`GUESTS`].
pub fn wrap_guests(dir: &std::path::Path) -> Result<(), String> {
    for name in GUESTS {
        let elf = std::fs::read(dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
        let image = from_elf(&elf).map_err(|e| format!("{name}: {e}"))?;
        std::fs::write(dir.join(format!("{name}.bzimage")), image).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ELF64 with one PT_LOAD of `data` at `paddr` (`memsz` bytes in memory).
    fn elf(paddr: u64, data: &[u8], memsz: u64) -> Vec<u8> {
        let mut out = vec![0u8; 0x78];
        out[..5].copy_from_slice(b"\x7fELF\x02");
        out[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        out[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        out[0x38..0x3A].copy_from_slice(&1u16.to_le_bytes());
        out[0x40..0x44].copy_from_slice(&PT_LOAD.to_le_bytes());
        out[0x48..0x50].copy_from_slice(&0x78u64.to_le_bytes());
        out[0x58..0x60].copy_from_slice(&paddr.to_le_bytes());
        out[0x60..0x68].copy_from_slice(&(data.len() as u64).to_le_bytes());
        out[0x68..0x70].copy_from_slice(&memsz.to_le_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn the_kernel_follows_one_setup_sector_and_init_size_covers_bss() {
        let image = from_elf(&elf(LOAD_GPA, &[1, 2, 3], 0x5001)).unwrap();
        assert_eq!(image.len(), 1024 + 3);
        assert_eq!(&image[1024..], &[1, 2, 3]);
        assert_eq!(u16_at(&image, bp::BOOT_FLAG).unwrap(), 0xAA55);
        assert_eq!(u32_at(&image, bp::HEADER).unwrap(), bp::HEADER_MAGIC);
        assert_eq!(u32_at(&image, bp::INIT_SIZE).unwrap(), 0x6000);
        assert_eq!(u16_at(&image, bp::XLOADFLAGS).unwrap(), bp::XLF_KERNEL_64);
        assert!(from_elf(&elf(0x20_0000, &[1], 1)).is_err(), "must load at 1 MiB");
        assert!(from_elf(b"\x7fELF\x01").is_err());
    }
}
