//! The uncompressed kernel (`vmlinux`) inside a bzImage, for `format=pvh`.
//!
//! A bzImage is the real-mode setup (`setup_sects` + 1 sectors of 512 bytes) followed by
//! the protected-mode part, which holds the compressed kernel ELF at the setup header's
//! `payload_offset`, `payload_length` bytes long (boot protocol 2.08+,
//! Documentation/arch/x86/boot.rst). The payload ends with the uncompressed size as a
//! little-endian u32 (`size_append` in the kernel's Makefile.lib), which the result must
//! match. The compression is told by its magic bytes; Debian 12's kernels use LZ4 in
//! its legacy frame (`lz4 -l`).

use std::io::Read;

/// Setup header fields (Documentation/arch/x86/boot.rst, "The real-mode kernel header").
const SETUP_SECTS: usize = 0x1f1;
const HEADER_MAGIC: usize = 0x202;
const HEADER_MAGIC_VALUE: &[u8; 4] = b"HdrS";
const PROTOCOL_VERSION: usize = 0x206;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;
/// The first protocol version with `payload_offset` and `payload_length`.
const PAYLOAD_PROTOCOL: u16 = 0x208;
const SECTOR: usize = 512;

/// `XEN_ELFNOTE_PHYS32_ENTRY` (Xen's public/elfnote.h): a note of owner "Xen" whose
/// descriptor is the 32-bit physical PVH entry point.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u64 = 18;
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

/// The compressions the kernel can build its payload with (`CONFIG_KERNEL_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Xz,
    Zstd,
    /// The legacy LZ4 frame: magic, then blocks of (le32 size, LZ4 block).
    Lz4Legacy,
    Bzip2,
    Lzma,
    Lzo,
    /// `CONFIG_KERNEL_UNCOMPRESSED`: the ELF itself.
    None,
}

/// Magic numbers of each format, from each format's specification (and lib/decompress.c).
const MAGICS: [(&[u8], Compression); 8] = [
    (&[0x1f, 0x8b], Compression::Gzip),
    (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], Compression::Xz),
    (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
    (&[0x02, 0x21, 0x4c, 0x18], Compression::Lz4Legacy),
    (b"BZh", Compression::Bzip2),
    (&[0x5d, 0x00, 0x00], Compression::Lzma),
    (&[0x89, b'L', b'Z', b'O'], Compression::Lzo),
    (ELF_MAGIC, Compression::None),
];

/// The compression `payload` starts with.
pub fn detect(payload: &[u8]) -> Option<Compression> {
    MAGICS.iter().find(|(magic, _)| payload.starts_with(magic)).map(|&(_, c)| c)
}

fn le16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn le32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// The compressed payload of a bzImage.
pub fn payload(bzimage: &[u8]) -> Result<&[u8], String> {
    if bzimage.get(HEADER_MAGIC..HEADER_MAGIC + 4) != Some(HEADER_MAGIC_VALUE) {
        return Err("not a bzImage: no HdrS setup header".into());
    }
    let version = le16(bzimage, PROTOCOL_VERSION).unwrap_or(0);
    if version < PAYLOAD_PROTOCOL {
        return Err(format!("boot protocol {version:#x} predates payload_offset (2.08)"));
    }
    let setup_sects = match bzimage[SETUP_SECTS] {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * SECTOR + le32(bzimage, PAYLOAD_OFFSET).unwrap_or(0) as usize;
    let len = le32(bzimage, PAYLOAD_LENGTH).unwrap_or(0) as usize;
    bzimage.get(start..start + len).ok_or_else(|| {
        format!("payload {start:#x}+{len:#x} lies outside the {:#x}-byte bzImage", bzimage.len())
    })
}

/// The legacy LZ4 frame: after the magic, blocks each of a le32 compressed size and an
/// LZ4 block of at most 8 MiB uncompressed (lib/decompress_unlz4.c); a repeated magic
/// starts another frame.
fn lz4_legacy(mut input: &[u8], size: usize) -> Result<Vec<u8>, String> {
    const MAGIC: u32 = 0x184c_2102;
    const BLOCK: usize = 8 << 20;
    let mut out = vec![0u8; size];
    let mut written = 0;
    while input.len() >= 4 {
        let word = le32(input, 0).unwrap_or(0);
        input = &input[4..];
        if word == MAGIC {
            continue;
        }
        let block = input.get(..word as usize).ok_or("an LZ4 block runs past the payload")?;
        input = &input[block.len()..];
        let room = (size - written).min(BLOCK);
        written += lz4_flex::block::decompress_into(block, &mut out[written..written + room])
            .map_err(|e| format!("LZ4 block at output {written:#x}: {e}"))?;
    }
    out.truncate(written);
    Ok(out)
}

fn read_all(mut reader: impl Read, size: usize, what: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(size);
    reader.read_to_end(&mut out).map_err(|e| format!("{what}: {e}"))?;
    Ok(out)
}

/// Decompresses a payload: the compressed stream, then its le32 uncompressed size.
pub fn decompress(payload: &[u8]) -> Result<(Compression, Vec<u8>), String> {
    let compression = detect(payload).ok_or_else(|| {
        format!("unknown payload compression (first bytes {:02x?})", &payload[..payload.len().min(8)])
    })?;
    if compression == Compression::None {
        return Ok((compression, payload.to_vec()));
    }
    let split = payload.len().checked_sub(4).ok_or("the payload is shorter than its size field")?;
    let (stream, size) = (&payload[..split], le32(payload, split).unwrap_or(0) as usize);
    let out = match compression {
        Compression::Gzip => read_all(flate2::read::GzDecoder::new(stream), size, "gzip")?,
        Compression::Xz => read_all(xz2::read::XzDecoder::new(stream), size, "xz")?,
        Compression::Zstd => {
            let mut stream = stream;
            let decoder =
                ruzstd::decoding::StreamingDecoder::new(&mut stream).map_err(|e| format!("zstd: {e}"))?;
            read_all(decoder, size, "zstd")?
        }
        Compression::Lz4Legacy => lz4_legacy(stream, size)?,
        other => return Err(format!("{other:?} payloads are not supported (Debian's kernels use LZ4)")),
    };
    if out.len() != size {
        return Err(format!("{compression:?}: {} bytes out where the payload says {size}", out.len()));
    }
    Ok((compression, out))
}

/// The PVH entry point of an ELF kernel: its `XEN_ELFNOTE_PHYS32_ENTRY` note.
pub fn pvh_entry(vmlinux: &[u8]) -> Result<u32, String> {
    use elf::endian::LittleEndian;
    let file =
        elf::ElfBytes::<LittleEndian>::minimal_parse(vmlinux).map_err(|e| format!("not an ELF: {e}"))?;
    let segments = file.segments().ok_or("an ELF without program headers")?;
    for segment in segments.iter().filter(|s| s.p_type == elf::abi::PT_NOTE) {
        let notes = file.segment_data_as_notes(&segment).map_err(|e| format!("PT_NOTE: {e}"))?;
        for note in notes {
            if let elf::note::Note::Unknown(any) = note
                && any.n_type == XEN_ELFNOTE_PHYS32_ENTRY
                && any.name_str().is_ok_and(|name| name == "Xen")
                && let Some(entry) = le32(any.desc, 0)
            {
                return Ok(entry);
            }
        }
    }
    Err("the ELF has no XEN_ELFNOTE_PHYS32_ENTRY note: the kernel was built without CONFIG_PVH".into())
}

/// What [`extract`] found.
pub struct Vmlinux {
    pub compression: Compression,
    pub elf: Vec<u8>,
    pub pvh_entry: u32,
}

/// The uncompressed ELF of a bzImage, checked to carry a PVH entry.
pub fn extract(bzimage: &[u8]) -> Result<Vmlinux, String> {
    let (compression, elf) = decompress(payload(bzimage)?)?;
    if !elf.starts_with(ELF_MAGIC) {
        return Err(format!("the {compression:?} payload is not an ELF"));
    }
    let pvh_entry = pvh_entry(&elf)?;
    Ok(Vmlinux { compression, elf, pvh_entry })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn each_compression_is_told_by_its_magic() {
        let cases: [(&[u8], Option<Compression>); 9] = [
            (&[0x1f, 0x8b, 0x08, 0x00], Some(Compression::Gzip)),
            (b"\xfd7zXZ\x00\x00\x01", Some(Compression::Xz)),
            (&[0x28, 0xb5, 0x2f, 0xfd, 0x64], Some(Compression::Zstd)),
            (&[0x02, 0x21, 0x4c, 0x18, 0x11, 0xc1], Some(Compression::Lz4Legacy)),
            (b"BZh91AY", Some(Compression::Bzip2)),
            (&[0x5d, 0x00, 0x00, 0x80], Some(Compression::Lzma)),
            (b"\x89LZO\x00", Some(Compression::Lzo)),
            (b"\x7fELF\x02\x01", Some(Compression::None)),
            (b"\x00\x00\x00\x00", None),
        ];
        for (bytes, expected) in cases {
            assert_eq!(detect(bytes), expected, "{bytes:02x?}");
        }
        // Too short to hold a whole magic.
        assert_eq!(detect(&[0xfd, b'7']), None);
    }

    /// A payload as the kernel builds one: the stream, then the le32 uncompressed size.
    fn with_size(mut stream: Vec<u8>, size: usize) -> Vec<u8> {
        stream.extend_from_slice(&u32::try_from(size).unwrap().to_le_bytes());
        stream
    }

    fn sample_elf() -> Vec<u8> {
        let mut elf = b"\x7fELF".to_vec();
        elf.extend((0..20_000u32).flat_map(|i| (i % 251).to_le_bytes()));
        elf
    }

    #[test]
    fn gzip_and_zstd_and_xz_payloads_round_trip() {
        let data = sample_elf();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&data).unwrap();
        let gz = with_size(gz.finish().unwrap(), data.len());
        assert_eq!(decompress(&gz).unwrap(), (Compression::Gzip, data.clone()));

        // As the kernel's scripts/xz_wrap.sh: the x86 BCJ filter before LZMA2, CRC32.
        let mut filters = xz2::stream::Filters::new();
        filters.x86().lzma2(&xz2::stream::LzmaOptions::new_preset(6).unwrap());
        let stream = xz2::stream::Stream::new_stream_encoder(&filters, xz2::stream::Check::Crc32).unwrap();
        let mut xz = xz2::write::XzEncoder::new_stream(Vec::new(), stream);
        xz.write_all(&data).unwrap();
        let xz = with_size(xz.finish().unwrap(), data.len());
        assert_eq!(decompress(&xz).unwrap(), (Compression::Xz, data.clone()));

        let zst = ruzstd::encoding::compress_to_vec(&data[..], ruzstd::encoding::CompressionLevel::Fastest);
        let zst = with_size(zst, data.len());
        assert_eq!(decompress(&zst).unwrap(), (Compression::Zstd, data.clone()));

        // A size field that does not match is an error, not a short kernel.
        let wrong = with_size(gz[..gz.len() - 4].to_vec(), data.len() + 1);
        assert!(decompress(&wrong).unwrap_err().contains("payload says"));
    }

    #[test]
    fn legacy_lz4_frames_of_several_blocks_decompress() {
        let data = sample_elf();
        let (first, second) = data.split_at(30_000);
        let mut frame = 0x184c_2102u32.to_le_bytes().to_vec();
        for part in [first, second] {
            let block = lz4_flex::block::compress(part);
            frame.extend_from_slice(&u32::try_from(block.len()).unwrap().to_le_bytes());
            frame.extend_from_slice(&block);
        }
        let payload = with_size(frame.clone(), data.len());
        assert_eq!(decompress(&payload).unwrap(), (Compression::Lz4Legacy, data.clone()));
        // A block cut short is refused.
        let cut = with_size(frame[..frame.len() - 10].to_vec(), data.len());
        assert!(decompress(&cut).is_err());
    }

    #[test]
    fn the_payload_is_found_through_the_setup_header() {
        let mut image = vec![0u8; 3 * SECTOR + 100];
        image[SETUP_SECTS] = 2;
        image[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(HEADER_MAGIC_VALUE);
        image[PROTOCOL_VERSION..PROTOCOL_VERSION + 2].copy_from_slice(&0x20fu16.to_le_bytes());
        image[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&10u32.to_le_bytes());
        image[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&5u32.to_le_bytes());
        image[3 * SECTOR + 10..3 * SECTOR + 15].copy_from_slice(b"\x1f\x8bxyz");
        assert_eq!(payload(&image).unwrap(), b"\x1f\x8bxyz");
        // setup_sects 0 means 4.
        let mut old = image.clone();
        old[SETUP_SECTS] = 0;
        old.resize(5 * SECTOR + 100, 0);
        old[5 * SECTOR + 10..5 * SECTOR + 15].copy_from_slice(b"BZh91");
        assert_eq!(payload(&old).unwrap(), b"BZh91");
        // Past the end, an old protocol, no header: clear errors.
        image[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&500u32.to_le_bytes());
        assert!(payload(&image).unwrap_err().contains("outside"));
        image[PROTOCOL_VERSION..PROTOCOL_VERSION + 2].copy_from_slice(&0x207u16.to_le_bytes());
        assert!(payload(&image).unwrap_err().contains("2.08"));
        image[HEADER_MAGIC] = 0;
        assert!(payload(&image).unwrap_err().contains("HdrS"));
    }

    /// A minimal ELF64 with one PT_NOTE segment holding `note_type` of owner `owner`.
    fn elf_with_note(owner: &[u8], note_type: u32, desc: u32) -> Vec<u8> {
        let mut note = Vec::new();
        note.extend_from_slice(&u32::try_from(owner.len() + 1).unwrap().to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&note_type.to_le_bytes());
        note.extend_from_slice(owner);
        note.push(0);
        while note.len() % 4 != 0 {
            note.push(0);
        }
        note.extend_from_slice(&desc.to_le_bytes());
        let (ehsize, phentsize) = (64u16, 56u16);
        let note_at = u64::from(ehsize + phentsize);
        let mut elf = Vec::new();
        elf.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
        elf.extend_from_slice(&[0; 8]);
        elf.extend_from_slice(&2u16.to_le_bytes()); // e_type EXEC
        elf.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine x86-64
        elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
        elf.extend_from_slice(&0x100_0000u64.to_le_bytes()); // e_entry
        elf.extend_from_slice(&u64::from(ehsize).to_le_bytes()); // e_phoff
        elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
        elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        for half in [ehsize, phentsize, 1, 64, 0, 0] {
            elf.extend_from_slice(&half.to_le_bytes()); // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
        }
        elf.extend_from_slice(&elf::abi::PT_NOTE.to_le_bytes());
        elf.extend_from_slice(&4u32.to_le_bytes()); // p_flags R
        for word in [note_at, 0, 0, note.len() as u64, note.len() as u64, 4] {
            elf.extend_from_slice(&word.to_le_bytes()); // offset, vaddr, paddr, filesz, memsz, align
        }
        elf.extend_from_slice(&note);
        elf
    }

    #[test]
    fn the_pvh_note_gives_the_entry() {
        let phys32 = u32::try_from(XEN_ELFNOTE_PHYS32_ENTRY).unwrap();
        assert_eq!(pvh_entry(&elf_with_note(b"Xen", phys32, 0x0100_0abc)), Ok(0x0100_0abc));
        // The same type from another owner, or another Xen note: no PVH entry.
        assert!(pvh_entry(&elf_with_note(b"GNU", phys32, 1)).unwrap_err().contains("CONFIG_PVH"));
        assert!(pvh_entry(&elf_with_note(b"Xen", 17, 1)).is_err());
        assert!(pvh_entry(b"MZ not an elf").is_err());
    }
}
