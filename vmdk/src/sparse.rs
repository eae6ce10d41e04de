//! Hosted sparse extents (`KDMV` header): monolithicSparse,
//! twoGbMaxExtentSparse extents, streamOptimized in qemu-img's layout (grain
//! directory near the start) and VMware's (grain tables and directory after
//! the data, found through the footer).
//!
//! Everything is validated at open: the header against [`crate::limits`],
//! every metadata range and grain against the file length, and no two of
//! them may overlap. After that, `runs` needs no I/O and `read_at` only
//! reads grains.

use std::sync::Arc;

use flate2::{Decompress, FlushDecompress, Status};

use crate::{limits, read_checked, RunKind, Source, VmdkError, SECTOR_BYTES};

/// "KDMV" read as a little-endian u32.
pub(crate) const SPARSE_MAGIC: u32 = 0x564d_444b;
/// `gdOffset` of a stream whose grain directory is found via the footer.
pub(crate) const GD_AT_END: u64 = u64::MAX;
pub(crate) const FLAG_VALID_NEWLINE_TEST: u32 = 1;
pub(crate) const FLAG_ZERO_GRAIN: u32 = 1 << 2;
pub(crate) const FLAG_COMPRESSED: u32 = 1 << 16;
pub(crate) const FLAG_MARKERS: u32 = 1 << 17;
pub(crate) const COMPRESSION_DEFLATE: u16 = 1;
pub(crate) const MARKER_EOS: u32 = 0;
pub(crate) const MARKER_GT: u32 = 1;
pub(crate) const MARKER_GD: u32 = 2;
pub(crate) const MARKER_FOOTER: u32 = 3;
/// Bytes before a compressed grain's data: lba (u64) and size (u32).
pub(crate) const GRAIN_MARKER_BYTES: u64 = 12;
/// A GTE of 1 means "reads as zeros" when FLAG_ZERO_GRAIN is set.
const GTE_ZERO: u32 = 1;

/// The 512-byte sparse extent header (also the footer of a stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub version: u32,
    pub flags: u32,
    pub capacity_sectors: u64,
    pub grain_sectors: u64,
    pub descriptor_offset: u64,
    pub descriptor_size: u64,
    pub gtes_per_gt: u32,
    pub rgd_offset: u64,
    pub gd_offset: u64,
    pub overhead: u64,
    pub compress_algorithm: u16,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl Header {
    /// Decodes 512 bytes; None without the magic.
    pub(crate) fn decode(b: &[u8; 512]) -> Option<Header> {
        if u32_at(b, 0) != SPARSE_MAGIC {
            return None;
        }
        Some(Header {
            version: u32_at(b, 4),
            flags: u32_at(b, 8),
            capacity_sectors: u64_at(b, 12),
            grain_sectors: u64_at(b, 20),
            descriptor_offset: u64_at(b, 28),
            descriptor_size: u64_at(b, 36),
            gtes_per_gt: u32_at(b, 44),
            rgd_offset: u64_at(b, 48),
            gd_offset: u64_at(b, 56),
            overhead: u64_at(b, 64),
            compress_algorithm: u16::from_le_bytes([b[77], b[78]]),
        })
    }

    pub(crate) fn encode(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..4].copy_from_slice(&SPARSE_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[12..20].copy_from_slice(&self.capacity_sectors.to_le_bytes());
        b[20..28].copy_from_slice(&self.grain_sectors.to_le_bytes());
        b[28..36].copy_from_slice(&self.descriptor_offset.to_le_bytes());
        b[36..44].copy_from_slice(&self.descriptor_size.to_le_bytes());
        b[44..48].copy_from_slice(&self.gtes_per_gt.to_le_bytes());
        b[48..56].copy_from_slice(&self.rgd_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.gd_offset.to_le_bytes());
        b[64..72].copy_from_slice(&self.overhead.to_le_bytes());
        b[72] = 0; // uncleanShutdown
                   // The newline-detection characters: a file that went
                   // through a text-mode transfer shows it here.
        b[73] = b'\n';
        b[74] = b' ';
        b[75] = b'\r';
        b[76] = b'\n';
        b[77..79].copy_from_slice(&self.compress_algorithm.to_le_bytes());
        b
    }
}

/// One grain table entry as kept in memory: the sector of the grain (0
/// unallocated, 1 zero with FLAG_ZERO_GRAIN) and, for compressed grains,
/// the size of the deflate data after the 12-byte grain marker (read and
/// checked at open).
#[derive(Debug, Clone, Copy, Default)]
struct Gte {
    sector: u32,
    compressed_bytes: u32,
}

/// What a metadata range is, for error messages.
#[derive(Debug, Clone, Copy)]
enum Meta {
    Header,
    Descriptor,
    Directory,
    Footer,
    Table(u64),
}

impl std::fmt::Display for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Meta::Header => write!(f, "the sparse header"),
            Meta::Descriptor => write!(f, "the embedded descriptor"),
            Meta::Directory => write!(f, "the grain directory"),
            Meta::Footer => write!(f, "the footer"),
            Meta::Table(i) => write!(f, "grain table {i}"),
        }
    }
}

pub(crate) struct SparseExtent {
    file: String,
    src: Arc<dyn Source>,
    header: Header,
    grain_bytes: u64,
    gtes_per_gt: u64,
    capacity_bytes: u64,
    compressed: bool,
    zero_flag: bool,
    /// Indexed by grain directory entry; None for absent or all-zero tables.
    tables: Vec<Option<Box<[Gte]>>>,
}

impl SparseExtent {
    pub(crate) fn open(file: &str, src: Arc<dyn Source>) -> Result<SparseExtent, VmdkError> {
        let file_len = src.len_bytes();
        let bad_header = |why: String| VmdkError::BadHeader {
            file: file.to_string(),
            why,
        };
        // The magic first, so a text file given as a SPARSE extent says so
        // rather than "truncated".
        let mut magic = [0u8; 4];
        if file_len < 4
            || src.read_exact_at(&mut magic, 0).is_err()
            || u32::from_le_bytes(magic) != SPARSE_MAGIC
        {
            return Err(VmdkError::NotVmdk {
                file: file.to_string(),
                why: "no KDMV magic at the start of a sparse extent".to_string(),
            });
        }
        let hb = read_checked(&*src, file, "sparse header", 0, 512)?;
        let mut hb512 = [0u8; 512];
        hb512.copy_from_slice(&hb);
        let Some(mut header) = Header::decode(&hb512) else {
            return Err(VmdkError::NotVmdk {
                file: file.to_string(),
                why: "no KDMV magic at the start of a sparse extent".to_string(),
            });
        };
        let mut metas: Vec<(u64, u64, Meta)> = vec![(0, 512, Meta::Header)];
        if header.gd_offset == GD_AT_END {
            // VMware's stream layout: the real header (with the directory's
            // offset) is a footer 1536 bytes before the end, between a
            // footer marker and the end-of-stream marker.
            let bad_footer = |why: &str| VmdkError::BadFooter {
                file: file.to_string(),
                why: why.to_string(),
            };
            if file_len < 512 + 1536 {
                return Err(bad_footer(
                    "the header says the grain directory is at the end, but the file is too short for a footer (truncated stream?)",
                ));
            }
            let tail = read_checked(&*src, file, "footer", file_len - 1536, 1536)?;
            if u32_at(&tail, 8) != 0 || u32_at(&tail, 12) != MARKER_FOOTER {
                return Err(bad_footer(
                    "no footer marker 1536 bytes before the end (truncated stream?)",
                ));
            }
            let mut fb = [0u8; 512];
            fb.copy_from_slice(&tail[512..1024]);
            let Some(footer) = Header::decode(&fb) else {
                return Err(bad_footer("no KDMV magic in the footer"));
            };
            if u64_at(&tail, 1024) != 0
                || u32_at(&tail, 1032) != 0
                || u32_at(&tail, 1036) != MARKER_EOS
            {
                return Err(bad_footer("no end-of-stream marker after the footer"));
            }
            if footer.gd_offset == GD_AT_END {
                return Err(bad_footer(
                    "the footer's grain directory offset is also \"at the end\"",
                ));
            }
            header = footer;
            metas.push((file_len - 1536, file_len, Meta::Footer));
        }
        if !(1..=3).contains(&header.version) {
            return Err(bad_header(format!(
                "version {} (known: 1 to 3)",
                header.version
            )));
        }
        let g = header.grain_sectors;
        if g == 0 || !g.is_power_of_two() {
            return Err(bad_header(format!(
                "grain size {g} sectors is not a power of two"
            )));
        }
        if g > limits::MAX_GRAIN_SECTORS {
            return Err(VmdkError::Limit {
                file: file.to_string(),
                what: "grain size in sectors".to_string(),
                value: g,
                limit: limits::MAX_GRAIN_SECTORS,
            });
        }
        if header.capacity_sectors > limits::MAX_CAPACITY_BYTES / SECTOR_BYTES {
            return Err(VmdkError::Limit {
                file: file.to_string(),
                what: "capacity in sectors".to_string(),
                value: header.capacity_sectors,
                limit: limits::MAX_CAPACITY_BYTES / SECTOR_BYTES,
            });
        }
        let gtes = u64::from(header.gtes_per_gt);
        if gtes == 0 || gtes > limits::MAX_GTES_PER_GT {
            return Err(bad_header(format!(
                "{gtes} entries per grain table (must be 1 to {})",
                limits::MAX_GTES_PER_GT
            )));
        }
        // qemu decides compression by the algorithm field, not the flag;
        // do the same so every file qemu reads, we read.
        let compressed = match header.compress_algorithm {
            0 => false,
            COMPRESSION_DEFLATE => true,
            other => {
                return Err(VmdkError::Unsupported {
                    file: file.to_string(),
                    what: format!("compression algorithm {other} (only 1, deflate)"),
                })
            }
        };
        let grain_bytes = g * SECTOR_BYTES;
        let capacity_bytes = header.capacity_sectors * SECTOR_BYTES;
        let grains = header.capacity_sectors.div_ceil(g);
        let gd_entries = grains.div_ceil(gtes);
        if gd_entries > limits::MAX_GD_ENTRIES {
            return Err(VmdkError::Limit {
                file: file.to_string(),
                what: "grain directory entries".to_string(),
                value: gd_entries,
                limit: limits::MAX_GD_ENTRIES,
            });
        }
        let check_in_file = |what: String, start: u64, len: u64| -> Result<(u64, u64), VmdkError> {
            let end = start.saturating_add(len);
            if end > file_len {
                return Err(VmdkError::Truncated {
                    file: file.to_string(),
                    what,
                    offset: start,
                    end,
                    file_len,
                });
            }
            Ok((start, end))
        };
        if header.descriptor_size != 0 {
            let (s, e) = check_in_file(
                "embedded descriptor".to_string(),
                header.descriptor_offset.saturating_mul(SECTOR_BYTES),
                header.descriptor_size.saturating_mul(SECTOR_BYTES),
            )?;
            metas.push((s, e, Meta::Descriptor));
        }
        let mut tables: Vec<Option<Box<[Gte]>>> = Vec::new();
        let mut gd: Vec<u32> = Vec::new();
        if gd_entries > 0 {
            let (s, e) = check_in_file(
                "grain directory".to_string(),
                header.gd_offset.saturating_mul(SECTOR_BYTES),
                gd_entries * 4,
            )?;
            if header.gd_offset == 0 {
                return Err(bad_header("grain directory offset is 0".to_string()));
            }
            metas.push((s, e, Meta::Directory));
            let raw = read_checked(&*src, file, "grain directory", s, e - s)?;
            gd = raw.chunks_exact(4).map(|c| u32_at(c, 0)).collect();
            tables.resize_with(gd.len(), || None);
        }
        let gt_bytes = gtes * 4;
        for (i, &sector) in gd.iter().enumerate() {
            if sector != 0 {
                let (s, e) = check_in_file(
                    format!("grain table {i}"),
                    u64::from(sector) * SECTOR_BYTES,
                    gt_bytes,
                )?;
                metas.push((s, e, Meta::Table(i as u64)));
            }
        }
        metas.sort_by_key(|m| (m.0, m.1));
        for w in metas.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(VmdkError::Overlap {
                    file: file.to_string(),
                    first: w[0].2.to_string(),
                    first_start: w[0].0,
                    first_end: w[0].1,
                    second: w[1].2.to_string(),
                    second_start: w[1].0,
                    second_end: w[1].1,
                });
            }
        }

        let mut ext = SparseExtent {
            file: file.to_string(),
            src: src.clone(),
            header,
            grain_bytes,
            gtes_per_gt: gtes,
            capacity_bytes,
            compressed,
            zero_flag: header.flags & FLAG_ZERO_GRAIN != 0,
            tables,
        };

        // Load the tables, check every grain lies in the file, and collect
        // (start sector, length in bytes) of every stored grain to check
        // that none overlaps another or the metadata.
        let mut loaded = 0u64;
        let mut raw = vec![0u8; gt_bytes as usize];
        let mut spans: Vec<(u32, u32)> = Vec::new();
        let mut marker = [0u8; GRAIN_MARKER_BYTES as usize];
        for (i, &sector) in gd.iter().enumerate() {
            if sector == 0 {
                continue;
            }
            src.read_exact_at(&mut raw, u64::from(sector) * SECTOR_BYTES)
                .map_err(|source| VmdkError::Io {
                    file: file.to_string(),
                    op: format!("reading grain table {i}"),
                    source,
                })?;
            let first_grain = i as u64 * gtes;
            let mut table = vec![Gte::default(); gtes as usize];
            let mut any = false;
            for (j, c) in raw.chunks_exact(4).enumerate() {
                let s = u32_at(c, 0);
                let grain = first_grain + j as u64;
                if s == 0 || grain >= grains {
                    continue; // entries past the capacity: ignored, as qemu does
                }
                any = true;
                if s == GTE_ZERO && ext.zero_flag {
                    table[j] = Gte {
                        sector: s,
                        compressed_bytes: 0,
                    };
                    continue;
                }
                let start = u64::from(s) * SECTOR_BYTES;
                let past_end = |end: u64| VmdkError::GrainPastEnd {
                    file: file.to_string(),
                    gt: i as u64,
                    entry: j as u64,
                    offset: end,
                    file_len,
                };
                let len = if compressed {
                    if start + GRAIN_MARKER_BYTES > file_len {
                        return Err(past_end(start + GRAIN_MARKER_BYTES));
                    }
                    src.read_exact_at(&mut marker, start)
                        .map_err(|source| VmdkError::Io {
                            file: file.to_string(),
                            op: format!("reading the grain marker of grain table {i} entry {j}"),
                            source,
                        })?;
                    let size = u64::from(u32_at(&marker, 8));
                    let bad = |why: String| VmdkError::BadGrain {
                        file: file.to_string(),
                        gt: i as u64,
                        entry: j as u64,
                        offset: start,
                        why,
                    };
                    if size == 0 {
                        return Err(bad("points at a metadata marker, not a grain".to_string()));
                    }
                    let max = limits::max_compressed_grain_bytes(grain_bytes);
                    if size > max {
                        return Err(bad(format!(
                            "compressed size {size} is more than a {grain_bytes}-byte grain can take (limit {max})"
                        )));
                    }
                    if start + GRAIN_MARKER_BYTES + size > file_len {
                        return Err(past_end(start + GRAIN_MARKER_BYTES + size));
                    }
                    table[j] = Gte {
                        sector: s,
                        compressed_bytes: size as u32,
                    };
                    GRAIN_MARKER_BYTES + size
                } else {
                    // The part of the grain inside the capacity must be in
                    // the file (qemu may not write the tail of a last,
                    // partial grain).
                    let len = grain_bytes.min(capacity_bytes - grain * grain_bytes);
                    if start + len > file_len {
                        return Err(past_end(start + len));
                    }
                    table[j] = Gte {
                        sector: s,
                        compressed_bytes: 0,
                    };
                    len
                };
                spans.push((s, len as u32));
            }
            if any {
                loaded += gtes;
                if loaded > limits::MAX_LOADED_GT_ENTRIES {
                    return Err(VmdkError::Limit {
                        file: file.to_string(),
                        what: "grain table entries in use".to_string(),
                        value: loaded,
                        limit: limits::MAX_LOADED_GT_ENTRIES,
                    });
                }
                ext.tables[i] = Some(table.into_boxed_slice());
            }
        }
        spans.sort_unstable();
        let span = |(s, l): (u32, u32)| {
            (
                u64::from(s) * SECTOR_BYTES,
                u64::from(s) * SECTOR_BYTES + u64::from(l),
            )
        };
        for w in spans.windows(2) {
            let (a, b) = (span(w[0]), span(w[1]));
            if b.0 < a.1 {
                return Err(VmdkError::Overlap {
                    file: file.to_string(),
                    first: ext.describe_grain(w[0].0),
                    first_start: a.0,
                    first_end: a.1,
                    second: ext.describe_grain(w[1].0),
                    second_start: b.0,
                    second_end: b.1,
                });
            }
        }
        for &(ms, me, what) in &metas {
            // The last grain starting before the end of this range.
            let k = spans.partition_point(|&(s, _)| u64::from(s) * SECTOR_BYTES < me);
            if k > 0 {
                let (gs, ge) = span(spans[k - 1]);
                if ge > ms {
                    return Err(VmdkError::Overlap {
                        file: file.to_string(),
                        first: ext.describe_grain(spans[k - 1].0),
                        first_start: gs,
                        first_end: ge,
                        second: what.to_string(),
                        second_start: ms,
                        second_end: me,
                    });
                }
            }
        }
        Ok(ext)
    }

    /// "grain table I entry J" for the grain at `sector` (error path only).
    fn describe_grain(&self, sector: u32) -> String {
        for (i, t) in self.tables.iter().enumerate() {
            if let Some(t) = t {
                if let Some(j) = t.iter().position(|e| e.sector == sector) {
                    return format!("the grain of grain table {i} entry {j}");
                }
            }
        }
        format!("the grain at sector {sector}")
    }

    pub(crate) fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    pub(crate) fn grain_bytes(&self) -> u64 {
        self.grain_bytes
    }

    /// (offset, length) in bytes of the embedded descriptor; length 0 if none.
    pub(crate) fn descriptor_range_bytes(&self) -> (u64, u64) {
        (
            self.header.descriptor_offset.saturating_mul(SECTOR_BYTES),
            self.header.descriptor_size.saturating_mul(SECTOR_BYTES),
        )
    }

    fn lookup(&self, grain: u64) -> Gte {
        let i = (grain / self.gtes_per_gt) as usize;
        let j = (grain % self.gtes_per_gt) as usize;
        match self.tables.get(i) {
            Some(Some(t)) => t[j],
            _ => Gte::default(),
        }
    }

    /// Calls `f(offset, len, kind)` for each allocated grain below
    /// `limit_bytes`, ascending.
    pub(crate) fn for_each_allocated(
        &self,
        limit_bytes: u64,
        mut f: impl FnMut(u64, u64, RunKind),
    ) {
        let limit = limit_bytes.min(self.capacity_bytes);
        for (i, t) in self.tables.iter().enumerate() {
            let Some(t) = t else { continue };
            for (j, e) in t.iter().enumerate() {
                if e.sector == 0 {
                    continue;
                }
                let off = (i as u64 * self.gtes_per_gt + j as u64) * self.grain_bytes;
                if off >= limit {
                    return;
                }
                let len = self.grain_bytes.min(limit - off);
                let kind = if self.zero_flag && e.sector == GTE_ZERO {
                    RunKind::Zero
                } else {
                    RunKind::Data
                };
                f(off, len, kind);
            }
        }
    }

    /// Reads `buf.len()` bytes at `offset` of this extent; unallocated and
    /// zero grains read as zeros.
    /// Uncompressed extents: grains that follow each other in the file too
    /// (qemu-img and VMware allocate them in order) are read with one
    /// `pread`, straight into the caller's buffer.
    fn read_plain(&self, buf: &mut [u8], offset: u64) -> Result<(), VmdkError> {
        let gb = self.grain_bytes;
        let is_data = |e: Gte| e.sector != 0 && !(self.zero_flag && e.sector == GTE_ZERO);
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let grain = pos / gb;
            let in_grain = pos % gb;
            let first = ((gb - in_grain) as usize).min(buf.len() - done);
            let e = self.lookup(grain);
            if !is_data(e) {
                buf[done..done + first].fill(0);
                done += first;
                continue;
            }
            let file_start = u64::from(e.sector) * SECTOR_BYTES + in_grain;
            let mut len = first;
            let mut g = grain;
            while done + len < buf.len() {
                let next = self.lookup(g + 1);
                if !is_data(next)
                    || u64::from(next.sector) * SECTOR_BYTES != file_start + len as u64
                {
                    break;
                }
                len += (gb as usize).min(buf.len() - done - len);
                g += 1;
            }
            // Only the part inside the capacity is stored (checked at open).
            let stored = self.capacity_bytes.saturating_sub(pos).min(len as u64) as usize;
            let (data, past) = buf[done..done + len].split_at_mut(stored);
            past.fill(0);
            self.src
                .read_exact_at(data, file_start)
                .map_err(|source| VmdkError::Io {
                    file: self.file.clone(),
                    op: format!("reading grains {grain}..={g}"),
                    source,
                })?;
            done += len;
        }
        Ok(())
    }

    /// `threads`: at most this many threads inflate compressed grains.
    pub(crate) fn read_at(
        &self,
        buf: &mut [u8],
        offset: u64,
        threads: usize,
    ) -> Result<(), VmdkError> {
        if !self.compressed {
            return self.read_plain(buf, offset);
        }
        // Split into per-grain pieces.
        let mut pieces: Vec<(u64, usize, &mut [u8])> = Vec::new();
        let mut rest = buf;
        let mut pos = offset;
        while !rest.is_empty() {
            let grain = pos / self.grain_bytes;
            let in_grain = (pos % self.grain_bytes) as usize;
            let n = (self.grain_bytes as usize - in_grain).min(rest.len());
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(n);
            pieces.push((grain, in_grain, head));
            rest = tail;
            pos += n as u64;
        }
        let compressed_pieces = if self.compressed {
            pieces
                .iter()
                .filter(|p| self.lookup(p.0).compressed_bytes != 0)
                .count()
        } else {
            0
        };
        // Inflating a 64 KiB grain takes ~100 us: spread a request of many
        // grains over the cores, keep small ones on this thread.
        const GRAINS_PER_THREAD: usize = 8;
        let workers = threads.min(compressed_pieces / GRAINS_PER_THREAD);
        if workers <= 1 {
            let mut scratch = Scratch::default();
            for (grain, in_grain, out) in pieces {
                self.read_piece(grain, in_grain, out, &mut scratch)?;
            }
            return Ok(());
        }
        let per = pieces.len().div_ceil(workers);
        std::thread::scope(|scope| {
            let handles: Vec<_> = pieces
                .chunks_mut(per)
                .map(|group| {
                    scope.spawn(move || -> Result<(), VmdkError> {
                        let mut scratch = Scratch::default();
                        for (grain, in_grain, out) in group.iter_mut() {
                            self.read_piece(*grain, *in_grain, out, &mut scratch)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            let mut result = Ok(());
            for h in handles {
                let r = h.join().unwrap_or_else(|_| {
                    Err(VmdkError::Unsupported {
                        file: self.file.clone(),
                        what: "a grain reader thread panicked".to_string(),
                    })
                });
                if result.is_ok() {
                    result = r;
                }
            }
            result
        })
    }

    fn read_piece(
        &self,
        grain: u64,
        in_grain: usize,
        out: &mut [u8],
        scratch: &mut Scratch,
    ) -> Result<(), VmdkError> {
        let e = self.lookup(grain);
        if e.sector == 0 || (self.zero_flag && e.sector == GTE_ZERO) {
            out.fill(0);
            return Ok(());
        }
        let start = u64::from(e.sector) * SECTOR_BYTES;
        if e.compressed_bytes == 0 {
            // Only the part inside the capacity is stored (checked at open).
            let pos = grain * self.grain_bytes + in_grain as u64;
            let stored = self
                .capacity_bytes
                .saturating_sub(pos)
                .min(out.len() as u64) as usize;
            let (data, past) = out.split_at_mut(stored);
            past.fill(0);
            return self
                .src
                .read_exact_at(data, start + in_grain as u64)
                .map_err(|source| VmdkError::Io {
                    file: self.file.clone(),
                    op: format!("reading grain {grain}"),
                    source,
                });
        }
        let gb = self.grain_bytes as usize;
        if in_grain == 0 && out.len() == gb {
            return self.inflate(
                grain,
                e,
                out,
                &mut scratch.compressed,
                &mut scratch.inflater,
            );
        }
        scratch.grain.resize(gb, 0);
        let Scratch {
            compressed,
            grain: whole,
            inflater,
        } = scratch;
        self.inflate(grain, e, whole, compressed, inflater)?;
        out.copy_from_slice(&whole[in_grain..in_grain + out.len()]);
        Ok(())
    }

    /// Inflates a compressed grain into `out` (one grain long); a stream
    /// shorter than a grain is zero-filled, a longer one is an error.
    fn inflate(
        &self,
        grain: u64,
        e: Gte,
        out: &mut [u8],
        cbuf: &mut Vec<u8>,
        inflater: &mut Option<Decompress>,
    ) -> Result<(), VmdkError> {
        let start = u64::from(e.sector) * SECTOR_BYTES;
        let bad = |why: String| VmdkError::BadGrain {
            file: self.file.clone(),
            gt: grain / self.gtes_per_gt,
            entry: grain % self.gtes_per_gt,
            offset: start,
            why,
        };
        cbuf.resize(e.compressed_bytes as usize, 0);
        self.src
            .read_exact_at(cbuf, start + GRAIN_MARKER_BYTES)
            .map_err(|source| VmdkError::Io {
                file: self.file.clone(),
                op: format!("reading compressed grain {grain}"),
                source,
            })?;
        // One inflater per thread, reset per grain: no state allocation per grain.
        let d = inflater.get_or_insert_with(|| Decompress::new(true));
        d.reset(true);
        match d.decompress(cbuf, out, FlushDecompress::Finish) {
            Ok(Status::StreamEnd) => {
                let n = d.total_out() as usize;
                out[n..].fill(0);
                Ok(())
            }
            Ok(_) if d.total_out() as usize == out.len() => Err(bad(format!(
                "inflates to more than a grain ({} bytes)",
                out.len()
            ))),
            Ok(_) => Err(bad("the deflate stream ends early".to_string())),
            Err(err) => Err(bad(format!("bad deflate stream: {err}"))),
        }
    }
}

/// Per-thread buffers of the grain reader.
#[derive(Default)]
struct Scratch {
    compressed: Vec<u8>,
    grain: Vec<u8>,
    inflater: Option<Decompress>,
}
