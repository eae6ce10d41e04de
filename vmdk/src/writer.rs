//! streamOptimized writer in VMware's layout, to any `Write` (no seeking):
//!
//! ```text
//! header (gdOffset = "at end") | descriptor | padding to 64 KiB
//! for each grain table: its grains (marker + deflate, sector-padded),
//!                       then a GT marker and the table
//! GD marker + grain directory | footer marker + footer header | EOS marker
//! ```
//!
//! Tables with no stored grain are left out (directory entry 0), as the
//! format allows, so a large, mostly empty disk stays small.

use std::io::Write;

use flate2::{Compress, Compression, FlushCompress, Status};

use crate::sparse::{
    Header, COMPRESSION_DEFLATE, FLAG_COMPRESSED, FLAG_MARKERS, FLAG_VALID_NEWLINE_TEST, GD_AT_END,
    MARKER_EOS, MARKER_FOOTER, MARKER_GD, MARKER_GT,
};
use crate::{limits, VmdkError, GRAIN_BYTES, SECTOR_BYTES};

const GTES_PER_GT: u64 = 512;
const GRAIN_SECTORS: u64 = GRAIN_BYTES / SECTOR_BYTES;
/// Grains compressed together (on all cores) before being written in order.
const BATCH_GRAINS: usize = 64;
/// Where the first grain goes: header + descriptor, rounded to a grain as
/// VMware does.
const OVERHEAD_SECTORS: u64 = GRAIN_SECTORS;

/// Writes a streamOptimized VMDK (VMware's layout: grain tables and
/// directory after the data, footer, end-of-stream marker) to `out`. Feed
/// grains in ascending order; all-zero grains are skipped.
pub struct StreamOptimizedWriter<W: Write> {
    out: W,
    capacity_sectors: u64,
    /// Sectors written so far (the output is always sector-aligned).
    pos_sectors: u64,
    /// Sector of each grain table written; 0 for tables left out.
    gd: Vec<u32>,
    /// The table being filled and its index.
    cur_gt: Option<(u64, Vec<u32>)>,
    /// The lowest grain index the next call may write.
    next_grain: u64,
    /// Grains waiting to be compressed: (grain index, one grain of data).
    pending: Vec<(u64, Vec<u8>)>,
    level: Compression,
    header: Header,
}

fn marker(val: u64, kind: u32) -> [u8; 512] {
    let mut m = [0u8; 512];
    m[0..8].copy_from_slice(&val.to_le_bytes());
    // size (bytes 8..12) is 0 for metadata markers
    m[12..16].copy_from_slice(&kind.to_le_bytes());
    m
}

fn writer_err(why: impl Into<String>) -> VmdkError {
    VmdkError::Writer { why: why.into() }
}

impl<W: Write> StreamOptimizedWriter<W> {
    /// Starts a disk of `capacity_bytes` (rounded up to a sector) and
    /// writes the header and descriptor. The descriptor names the extent
    /// "disk.vmdk"; see [`Self::with_name`].
    pub fn new(out: W, capacity_bytes: u64) -> Result<Self, VmdkError> {
        Self::with_name(out, capacity_bytes, "disk.vmdk")
    }

    /// Like [`Self::new`], naming the extent `file_name` in the embedded
    /// descriptor (readers ignore it; VMware shows it).
    pub fn with_name(mut out: W, capacity_bytes: u64, file_name: &str) -> Result<Self, VmdkError> {
        if capacity_bytes > limits::MAX_CAPACITY_BYTES {
            return Err(writer_err(format!(
                "capacity {capacity_bytes} bytes is over the limit of {} bytes",
                limits::MAX_CAPACITY_BYTES
            )));
        }
        if file_name.contains(['"', '\n', '\r', '\0']) {
            return Err(writer_err(format!(
                "extent name {file_name:?} cannot be quoted in a descriptor"
            )));
        }
        let capacity_sectors = capacity_bytes.div_ceil(SECTOR_BYTES);
        let grains = capacity_sectors.div_ceil(GRAIN_SECTORS);
        let gd_entries = grains.div_ceil(GTES_PER_GT);
        let descriptor = descriptor_text(capacity_sectors, file_name);
        let descriptor_sectors = (descriptor.len() as u64).div_ceil(SECTOR_BYTES).max(1);
        if 1 + descriptor_sectors > OVERHEAD_SECTORS {
            return Err(writer_err("extent name too long for the descriptor area"));
        }
        let header = Header {
            version: 3,
            flags: FLAG_VALID_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS,
            capacity_sectors,
            grain_sectors: GRAIN_SECTORS,
            descriptor_offset: 1,
            descriptor_size: descriptor_sectors,
            gtes_per_gt: GTES_PER_GT as u32,
            rgd_offset: 0,
            gd_offset: GD_AT_END,
            overhead: OVERHEAD_SECTORS,
            compress_algorithm: COMPRESSION_DEFLATE,
        };
        let mut head = vec![0u8; (OVERHEAD_SECTORS * SECTOR_BYTES) as usize];
        head[..512].copy_from_slice(&header.encode());
        head[512..512 + descriptor.len()].copy_from_slice(descriptor.as_bytes());
        out.write_all(&head).map_err(VmdkError::WriterIo)?;
        Ok(StreamOptimizedWriter {
            out,
            capacity_sectors,
            pos_sectors: OVERHEAD_SECTORS,
            gd: vec![0; gd_entries as usize],
            cur_gt: None,
            next_grain: 0,
            pending: Vec::with_capacity(BATCH_GRAINS),
            level: Compression::fast(),
            header,
        })
    }

    /// Deflate level 0..=9 (default 1: import and export speed matter more
    /// than a few percent of size).
    pub fn set_compression_level(&mut self, level: u32) {
        self.level = Compression::new(level.min(9));
    }

    /// Adds the grain at `offset_bytes` (a multiple of [`GRAIN_BYTES`],
    /// above every grain written before). `data` is at most a grain; a
    /// shorter one (the disk's last grain) is padded with zeros.
    pub fn write_grain(&mut self, offset_bytes: u64, data: &[u8]) -> Result<(), VmdkError> {
        if offset_bytes % GRAIN_BYTES != 0 {
            return Err(writer_err(format!(
                "grain offset {offset_bytes} is not a multiple of {GRAIN_BYTES}"
            )));
        }
        if data.is_empty() || data.len() as u64 > GRAIN_BYTES {
            return Err(writer_err(format!(
                "grain at {offset_bytes}: {} bytes (must be 1 to {GRAIN_BYTES})",
                data.len()
            )));
        }
        let end = offset_bytes + data.len() as u64;
        if end > self.capacity_sectors * SECTOR_BYTES {
            return Err(writer_err(format!(
                "grain at {offset_bytes} + {} bytes is past the capacity ({} bytes)",
                data.len(),
                self.capacity_sectors * SECTOR_BYTES
            )));
        }
        let grain = offset_bytes / GRAIN_BYTES;
        if grain < self.next_grain {
            return Err(writer_err(format!(
                "grain at {offset_bytes} is not above the previous one (grains must come in ascending order)"
            )));
        }
        self.next_grain = grain + 1;
        if data.iter().all(|&b| b == 0) {
            return Ok(());
        }
        let mut g = vec![0u8; GRAIN_BYTES as usize];
        g[..data.len()].copy_from_slice(data);
        self.pending.push((grain, g));
        if self.pending.len() >= BATCH_GRAINS {
            self.flush_batch()?;
        }
        Ok(())
    }

    /// Compresses the pending grains on all cores, then writes them in
    /// order, closing grain tables as their last grain goes by.
    fn flush_batch(&mut self) -> Result<(), VmdkError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let level = self.level;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = pending.len().div_ceil(threads).max(1);
        let compressed: Vec<Result<Vec<u8>, VmdkError>> = if pending.len() < 4 || threads == 1 {
            pending.iter().map(|(_, d)| deflate(d, level)).collect()
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = pending
                    .chunks(per)
                    .map(|group| {
                        s.spawn(move || {
                            group
                                .iter()
                                .map(|(_, d)| deflate(d, level))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| {
                        h.join().unwrap_or_else(|_| {
                            vec![Err(writer_err("a compression thread panicked"))]
                        })
                    })
                    .collect()
            })
        };
        let mut buf: Vec<u8> = Vec::with_capacity(pending.len() * (GRAIN_BYTES as usize / 2));
        for ((grain, _), c) in pending.iter().zip(compressed) {
            let c = c?;
            let gt_index = grain / GTES_PER_GT;
            if self.cur_gt.as_ref().is_some_and(|(i, _)| *i != gt_index) {
                self.close_table(&mut buf)?;
            }
            let (_, table) = self
                .cur_gt
                .get_or_insert_with(|| (gt_index, vec![0u32; GTES_PER_GT as usize]));
            let sector = u32::try_from(self.pos_sectors).map_err(|_| {
                writer_err("output passed 2 TiB, which grain table entries cannot address")
            })?;
            table[(grain % GTES_PER_GT) as usize] = sector;
            let start = buf.len();
            buf.extend_from_slice(&(grain * GRAIN_SECTORS).to_le_bytes());
            buf.extend_from_slice(&(c.len() as u32).to_le_bytes());
            buf.extend_from_slice(&c);
            pad_to_sector(&mut buf);
            self.pos_sectors += (buf.len() - start) as u64 / SECTOR_BYTES;
        }
        self.out.write_all(&buf).map_err(VmdkError::WriterIo)
    }

    /// Appends the current table (marker, then the table) to `buf`.
    fn close_table(&mut self, buf: &mut Vec<u8>) -> Result<(), VmdkError> {
        let Some((index, table)) = self.cur_gt.take() else {
            return Ok(());
        };
        let table_sectors = GTES_PER_GT * 4 / SECTOR_BYTES;
        buf.extend_from_slice(&marker(table_sectors, MARKER_GT));
        self.pos_sectors += 1;
        self.gd[index as usize] = u32::try_from(self.pos_sectors).map_err(|_| {
            writer_err("output passed 2 TiB, which the grain directory cannot address")
        })?;
        for e in table {
            buf.extend_from_slice(&e.to_le_bytes());
        }
        self.pos_sectors += table_sectors;
        Ok(())
    }

    /// Writes the last grains, the last table, the directory, the footer and
    /// the end-of-stream marker; returns the output (not flushed further
    /// than `Write::flush`).
    pub fn finish(mut self) -> Result<W, VmdkError> {
        self.flush_batch()?;
        let mut buf = Vec::new();
        self.close_table(&mut buf)?;
        let gd_bytes = self.gd.len() as u64 * 4;
        let gd_sectors = gd_bytes.div_ceil(SECTOR_BYTES).max(1);
        buf.extend_from_slice(&marker(gd_sectors, MARKER_GD));
        self.pos_sectors += 1;
        let gd_offset = self.pos_sectors;
        let start = buf.len();
        for e in &self.gd {
            buf.extend_from_slice(&e.to_le_bytes());
        }
        buf.resize(start + (gd_sectors * SECTOR_BYTES) as usize, 0);
        self.pos_sectors += gd_sectors;
        buf.extend_from_slice(&marker(1, MARKER_FOOTER));
        let footer = Header {
            gd_offset,
            ..self.header
        };
        buf.extend_from_slice(&footer.encode());
        buf.extend_from_slice(&marker(0, MARKER_EOS));
        self.out.write_all(&buf).map_err(VmdkError::WriterIo)?;
        self.out.flush().map_err(VmdkError::WriterIo)?;
        Ok(self.out)
    }
}

fn pad_to_sector(buf: &mut Vec<u8>) {
    let n = buf.len().next_multiple_of(SECTOR_BYTES as usize);
    buf.resize(n, 0);
}

/// zlib-wrapped deflate of one grain (what VMware and qemu write).
fn deflate(data: &[u8], level: Compression) -> Result<Vec<u8>, VmdkError> {
    let mut c = Compress::new(level, true);
    let mut out = Vec::with_capacity(limits::max_compressed_grain_bytes(GRAIN_BYTES) as usize);
    match c.compress_vec(data, &mut out, FlushCompress::Finish) {
        Ok(Status::StreamEnd) => Ok(out),
        Ok(_) => Err(writer_err("deflate did not finish a grain in its bound")),
        Err(e) => Err(writer_err(format!("deflate: {e}"))),
    }
}

fn descriptor_text(capacity_sectors: u64, file_name: &str) -> String {
    let cid = {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let x = (t ^ capacity_sectors.rotate_left(17)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let c = (x >> 32) as u32;
        if c == u32::MAX {
            1
        } else {
            c
        }
    };
    let cylinders = (capacity_sectors / (255 * 63)).clamp(1, 65535);
    format!(
        "# Disk DescriptorFile\n\
         version=1\n\
         encoding=\"UTF-8\"\n\
         CID={cid:08x}\n\
         parentCID=ffffffff\n\
         createType=\"streamOptimized\"\n\
         \n\
         # Extent description\n\
         RW {capacity_sectors} SPARSE \"{file_name}\"\n\
         \n\
         # The Disk Data Base\n\
         #DDB\n\
         \n\
         ddb.virtualHWVersion = \"4\"\n\
         ddb.geometry.cylinders = \"{cylinders}\"\n\
         ddb.geometry.heads = \"255\"\n\
         ddb.geometry.sectors = \"63\"\n\
         ddb.adapterType = \"lsilogic\"\n"
    )
}
