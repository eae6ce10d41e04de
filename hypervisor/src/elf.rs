//! Minimal ELF64 little-endian RISC-V loader: PT_LOAD segments only, for the
//! static test programs and bare-metal images.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ElfError {
    #[error("not an ELF64 little-endian RISC-V executable")]
    NotRiscv64,
    #[error("ELF header or program header table truncated")]
    Truncated,
    #[error("segment at {vaddr:#x} ({len} bytes) does not fit in guest memory")]
    OutOfMemory { vaddr: u64, len: u64 },
}

/// A loadable segment: file bytes copied to `paddr`, then zero-fill up to `mem_len`.
#[derive(Debug, Clone)]
pub struct Segment {
    pub paddr: u64,
    pub data: Vec<u8>,
    pub mem_len: u64,
}

#[derive(Debug, Clone)]
pub struct Image {
    pub entry: u64,
    pub segments: Vec<Segment>,
}

fn u16_at(b: &[u8], off: usize) -> Result<u16, ElfError> {
    let s = b.get(off..off + 2).ok_or(ElfError::Truncated)?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}
fn u32_at(b: &[u8], off: usize) -> Result<u32, ElfError> {
    let s = b.get(off..off + 4).ok_or(ElfError::Truncated)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}
fn u64_at(b: &[u8], off: usize) -> Result<u64, ElfError> {
    let s = b.get(off..off + 8).ok_or(ElfError::Truncated)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_le_bytes(a))
}

/// Parses the program headers; `use_paddr` picks p_paddr (bare metal) over p_vaddr.
pub fn parse(bytes: &[u8], use_paddr: bool) -> Result<Image, ElfError> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return Err(ElfError::NotRiscv64);
    }
    if u16_at(bytes, 18)? != 243 {
        return Err(ElfError::NotRiscv64);
    }
    let entry = u64_at(bytes, 24)?;
    let phoff = usize::try_from(u64_at(bytes, 32)?).map_err(|_| ElfError::Truncated)?;
    let phentsize = usize::from(u16_at(bytes, 54)?);
    let phnum = usize::from(u16_at(bytes, 56)?);
    let mut segments = Vec::new();
    for i in 0..phnum {
        let ph = phoff
            .checked_add(i.checked_mul(phentsize).ok_or(ElfError::Truncated)?)
            .ok_or(ElfError::Truncated)?;
        if u32_at(bytes, ph)? != 1 {
            continue; // not PT_LOAD
        }
        let offset = u64_at(bytes, ph + 8)?;
        let vaddr = u64_at(bytes, ph + 16)?;
        let paddr = u64_at(bytes, ph + 24)?;
        let filesz = u64_at(bytes, ph + 32)?;
        let memsz = u64_at(bytes, ph + 40)?;
        let start = usize::try_from(offset).map_err(|_| ElfError::Truncated)?;
        let end = start
            .checked_add(usize::try_from(filesz).map_err(|_| ElfError::Truncated)?)
            .ok_or(ElfError::Truncated)?;
        let data = bytes.get(start..end).ok_or(ElfError::Truncated)?.to_vec();
        segments.push(Segment {
            paddr: if use_paddr { paddr } else { vaddr },
            data,
            mem_len: memsz.max(filesz),
        });
    }
    Ok(Image { entry, segments })
}
