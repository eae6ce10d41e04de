//! VMDK (and OVA) reading and writing.
//!
//! Reads every layout `qemu-img` creates (monolithicSparse, monolithicFlat,
//! twoGbMaxExtentSparse, twoGbMaxExtentFlat, streamOptimized), ESXi flat
//! (`vmfs`) disks, VMware's streamOptimized layout (grain tables and the
//! directory after the data, footer, end-of-stream marker), delta disks
//! chained by `parentFileNameHint` ([`open_chain`]) and OVA archives
//! ([`ova::Ova`]). Writes streamOptimized in VMware's layout
//! ([`StreamOptimizedWriter`]).
//!
//! Everything read is untrusted: every size and count taken from a file is
//! checked against [`limits`] and against the length of the file before it
//! sizes an allocation or a loop, and every failure is a [`VmdkError`] naming
//! the file and what is wrong. See docs/architecture.md, "VMDK and OVA
//! formats".

mod descriptor;
pub mod ova;
mod source;
mod sparse;
mod writer;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use descriptor::{Descriptor, ExtentLine, ExtentType};
pub use source::{FileSource, MemSource, SliceSource, Source};
pub use writer::StreamOptimizedWriter;

use sparse::SparseExtent;

/// Bytes per VMDK sector: every offset and size in the format counts these.
pub const SECTOR_BYTES: u64 = 512;
/// The grain (allocation unit) the writer uses: VMware's and qemu-img's
/// default of 128 sectors.
pub const GRAIN_BYTES: u64 = 65536;

/// Bounds on everything read from a file. Each exists so that a hostile or
/// corrupt file cannot make us allocate, loop or recurse in proportion to a
/// number it chose.
pub mod limits {
    /// Descriptor text, embedded or separate. Real ones are a few hundred
    /// bytes per extent; a twoGbMaxExtent disk at VMware's 62 TiB maximum
    /// has ~31,000 extent lines of under 100 bytes.
    pub const MAX_DESCRIPTOR_BYTES: u64 = 4 << 20;
    /// Extents of one disk: 62 TiB in 2 GiB extents is 31,744.
    pub const MAX_EXTENTS: usize = 32 * 1024;
    /// Virtual disk size. VMware's maximum is 62 TiB; this leaves room.
    pub const MAX_CAPACITY_BYTES: u64 = 64 << 40;
    /// Grain size. VMware and qemu-img use 64 KiB; qemu accepts larger
    /// ones. A decompressed grain is held in memory, so this bounds that
    /// buffer (1 MiB).
    pub const MAX_GRAIN_SECTORS: u64 = 2048;
    /// Entries per grain table. VMware fixes 512 (qemu refuses more than
    /// 512 too); a little room for odd writers.
    pub const MAX_GTES_PER_GT: u64 = 4096;
    /// Grain directory entries: read whole at open (4 bytes each, 16 MiB).
    /// 64 TiB of 64 KiB grains in 512-entry tables needs 2 Mi entries.
    pub const MAX_GD_ENTRIES: u64 = 4 << 20;
    /// Grain table entries kept in memory for one extent (8 bytes each, so
    /// 256 MiB): enough for 2 TiB fully allocated with 64 KiB grains. Tables
    /// that are all zero are not kept.
    pub const MAX_LOADED_GT_ENTRIES: u64 = 32 << 20;
    /// Compressed grain payload: deflate can grow incompressible data by a
    /// few bytes per 64 KiB block; anything much past the grain is corrupt.
    pub fn max_compressed_grain_bytes(grain_bytes: u64) -> u64 {
        grain_bytes + grain_bytes / 8 + 4096
    }
    /// Delta disks in a parent chain. VMware allows 32 snapshots.
    pub const MAX_CHAIN_DEPTH: usize = 64;
    /// OVF descriptor (XML) read whole into memory.
    pub const MAX_OVF_BYTES: u64 = 16 << 20;
    /// Members of an OVA tar listed at open.
    pub const MAX_OVA_MEMBERS: usize = 4096;
    /// Disks and virtual systems described by one OVF.
    pub const MAX_OVF_ITEMS: usize = 4096;
}

/// One failure: every variant names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum VmdkError {
    #[error("{file}: {op}: {source}")]
    Io {
        file: String,
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not a VMDK: {why}")]
    NotVmdk { file: String, why: String },
    #[error("{file}: truncated: {what} (bytes {offset}..{end}) is past the end of the file ({file_len} bytes)")]
    Truncated {
        file: String,
        what: String,
        offset: u64,
        end: u64,
        file_len: u64,
    },
    #[error("{file}: bad sparse header: {why}")]
    BadHeader { file: String, why: String },
    #[error("{file}: bad descriptor: {why}")]
    BadDescriptor { file: String, why: String },
    #[error("{file}: unsupported: {what}")]
    Unsupported { file: String, what: String },
    #[error("{file}: {what} exceeds the limit ({value} > {limit})")]
    Limit {
        file: String,
        what: String,
        value: u64,
        limit: u64,
    },
    #[error("{file}: grain table {gt} entry {entry} points past the end of the file (offset {offset} > len {file_len})")]
    GrainPastEnd {
        file: String,
        gt: u64,
        entry: u64,
        offset: u64,
        file_len: u64,
    },
    #[error("{file}: {first} (bytes {first_start}..{first_end}) overlaps {second} (bytes {second_start}..{second_end})")]
    Overlap {
        file: String,
        first: String,
        first_start: u64,
        first_end: u64,
        second: String,
        second_start: u64,
        second_end: u64,
    },
    #[error("{file}: grain table {gt} entry {entry}: compressed grain at offset {offset}: {why}")]
    BadGrain {
        file: String,
        gt: u64,
        entry: u64,
        offset: u64,
        why: String,
    },
    #[error("{file}: footer: {why}")]
    BadFooter { file: String, why: String },
    #[error("{file}: extent {index} (\"{extent}\") is the descriptor file itself")]
    ExtentLoop {
        file: String,
        index: usize,
        extent: String,
    },
    #[error("{file}: parent chain loops back to {again}")]
    ChainLoop { file: String, again: String },
    #[error("{file}: parent chain is deeper than {limit} disks")]
    ChainTooDeep { file: String, limit: usize },
    #[error("{file}: parent {parent}: {why}")]
    BadParent {
        file: String,
        parent: String,
        why: String,
    },
    #[error(
        "{file}: read of {len} bytes at {offset} is past the end of the disk ({capacity} bytes)"
    )]
    OutOfRange {
        file: String,
        offset: u64,
        len: u64,
        capacity: u64,
    },
    #[error("{file}: OVA: {why}")]
    BadOva { file: String, why: String },
    #[error("{file}: OVF: {why}")]
    BadOvf { file: String, why: String },
    #[error("streamOptimized writer: {why}")]
    Writer { why: String },
    #[error("streamOptimized writer: write: {0}")]
    WriterIo(#[source] std::io::Error),
}

/// What a [`Run`] of a layer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// Bytes stored in this layer (may still happen to be zero).
    Data,
    /// Marked zero by metadata (zeroed grain GTE, ZERO extent): reads as
    /// zeros and hides the parent.
    Zero,
}

/// A range of a layer that the layer itself defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub offset_bytes: u64,
    pub len_bytes: u64,
    pub kind: RunKind,
}

/// Opens the files an extent line names. Given the name as written in the
/// descriptor; returns the bytes and the name to use in errors.
pub type ExtentResolver<'a> =
    dyn Fn(&str) -> Result<(Arc<dyn Source>, String), VmdkError> + Send + Sync + 'a;

enum ExtentKind {
    Sparse(SparseExtent),
    Flat {
        src: Arc<dyn Source>,
        file: String,
        offset_bytes: u64,
    },
    Zero,
}

struct Extent {
    start_bytes: u64,
    len_bytes: u64,
    kind: ExtentKind,
}

/// One opened VMDK layer: its descriptor and all its extents.
pub struct Disk {
    name: String,
    descriptor: Descriptor,
    capacity_bytes: u64,
    extents: Vec<Extent>,
    inflate_threads: usize,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("name", &self.name)
            .field("create_type", &self.descriptor.create_type)
            .field("capacity_bytes", &self.capacity_bytes)
            .field("extents", &self.extents.len())
            .finish()
    }
}

fn io_err(file: &str, op: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmdkError + '_ {
    let op = op.into();
    move |source| VmdkError::Io {
        file: file.to_string(),
        op,
        source,
    }
}

/// Reads `len` bytes at `offset` after checking they lie inside the source
/// (so the allocation is bounded by the real length, and a short file is a
/// `Truncated` error naming what was being read).
pub(crate) fn read_checked(
    src: &dyn Source,
    file: &str,
    what: &str,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, VmdkError> {
    let file_len = src.len_bytes();
    let end = offset.saturating_add(len);
    if end > file_len {
        return Err(VmdkError::Truncated {
            file: file.to_string(),
            what: what.to_string(),
            offset,
            end,
            file_len,
        });
    }
    let mut buf = vec![0u8; len as usize];
    src.read_exact_at(&mut buf, offset)
        .map_err(io_err(file, format!("reading {what}")))?;
    Ok(buf)
}

impl Disk {
    /// Opens a VMDK file: a sparse file with its descriptor embedded, or a
    /// descriptor whose extents are resolved relative to its folder.
    pub fn open(path: &Path) -> Result<Disk, VmdkError> {
        let name = path.display().to_string();
        let src: Arc<dyn Source> = Arc::new(FileSource::open(path)?);
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let own = std::fs::canonicalize(path).map_err(io_err(&name, "resolving its path"))?;
        let resolver = move |extent: &str| -> Result<(Arc<dyn Source>, String), VmdkError> {
            let p = dir.join(extent);
            let shown = p.display().to_string();
            let canon = std::fs::canonicalize(&p).map_err(io_err(&shown, "opening extent"))?;
            if canon == own {
                return Err(VmdkError::ExtentLoop {
                    file: own.display().to_string(),
                    index: 0,
                    extent: extent.to_string(),
                });
            }
            Ok((Arc::new(FileSource::open(&p)?) as Arc<dyn Source>, shown))
        };
        Disk::open_source(&name, src, &resolver)
    }

    /// Opens a VMDK held by `src` (e.g. a member of an OVA); `name` is used
    /// in errors and `resolver` opens the extent files a separate
    /// descriptor names.
    pub fn open_source(
        name: &str,
        src: Arc<dyn Source>,
        resolver: &ExtentResolver<'_>,
    ) -> Result<Disk, VmdkError> {
        let file_len = src.len_bytes();
        let mut magic = [0u8; 4];
        if file_len >= 4 {
            src.read_exact_at(&mut magic, 0)
                .map_err(io_err(name, "reading the magic"))?;
        }
        if magic == sparse::SPARSE_MAGIC.to_le_bytes() {
            return Disk::open_monolithic(name, src);
        }
        if &magic == b"COWD" {
            return Err(VmdkError::Unsupported {
                file: name.to_string(),
                what: "VMDK3 / ESX vmfsSparse (COWD) extents".to_string(),
            });
        }
        if file_len > limits::MAX_DESCRIPTOR_BYTES {
            return Err(VmdkError::NotVmdk {
                file: name.to_string(),
                why: format!(
                    "no sparse magic, and at {file_len} bytes too large to be a descriptor (limit {})",
                    limits::MAX_DESCRIPTOR_BYTES
                ),
            });
        }
        let text = read_checked(&*src, name, "descriptor", 0, file_len)?;
        let descriptor = Descriptor::parse(name, &text)?;
        if descriptor.extents.is_empty() {
            return Err(VmdkError::BadDescriptor {
                file: name.to_string(),
                why: "no extent lines".to_string(),
            });
        }
        let mut extents = Vec::with_capacity(descriptor.extents.len());
        let mut start_bytes = 0u64;
        for (index, line) in descriptor.extents.iter().enumerate() {
            let len_bytes = line.size_sectors * SECTOR_BYTES;
            let kind = match line.kind {
                ExtentType::Zero => ExtentKind::Zero,
                ExtentType::Flat | ExtentType::Vmfs => {
                    let (esrc, efile) = resolve(resolver, name, index, &line.file_name)?;
                    let offset_bytes = line.offset_sectors * SECTOR_BYTES;
                    let need = offset_bytes + len_bytes;
                    if esrc.len_bytes() < need {
                        return Err(VmdkError::Truncated {
                            file: efile,
                            what: format!(
                                "flat extent {index} ({} sectors at sector {})",
                                line.size_sectors, line.offset_sectors
                            ),
                            offset: offset_bytes,
                            end: need,
                            file_len: esrc.len_bytes(),
                        });
                    }
                    ExtentKind::Flat {
                        src: esrc,
                        file: efile,
                        offset_bytes,
                    }
                }
                ExtentType::Sparse => {
                    let (esrc, efile) = resolve(resolver, name, index, &line.file_name)?;
                    let sp = SparseExtent::open(&efile, esrc)?;
                    ExtentKind::Sparse(sp)
                }
            };
            extents.push(Extent {
                start_bytes,
                len_bytes,
                kind,
            });
            start_bytes += len_bytes;
        }
        Ok(Disk {
            name: name.to_string(),
            capacity_bytes: start_bytes,
            descriptor,
            extents,
            inflate_threads: default_inflate_threads(),
        })
    }

    /// A sparse file with its own header: the disk is this one extent; the
    /// embedded descriptor (if any) gives the create type and parent.
    fn open_monolithic(name: &str, src: Arc<dyn Source>) -> Result<Disk, VmdkError> {
        let sp = SparseExtent::open(name, src.clone())?;
        let (doff, dsize) = sp.descriptor_range_bytes();
        let descriptor = if dsize == 0 {
            Descriptor::implicit("monolithicSparse")
        } else {
            if dsize > limits::MAX_DESCRIPTOR_BYTES {
                return Err(VmdkError::Limit {
                    file: name.to_string(),
                    what: "embedded descriptor size".to_string(),
                    value: dsize,
                    limit: limits::MAX_DESCRIPTOR_BYTES,
                });
            }
            let text = read_checked(&*src, name, "embedded descriptor", doff, dsize)?;
            Descriptor::parse(name, &text)?
        };
        let capacity_bytes = sp.capacity_bytes();
        Ok(Disk {
            name: name.to_string(),
            descriptor,
            capacity_bytes,
            extents: vec![Extent {
                start_bytes: 0,
                len_bytes: capacity_bytes,
                kind: ExtentKind::Sparse(sp),
            }],
            inflate_threads: default_inflate_threads(),
        })
    }

    /// How many threads one `read_at` may use to inflate the compressed
    /// grains of a large range (default: the number of cores). Set 1 when
    /// the caller already reads from several threads at once.
    pub fn set_inflate_threads(&mut self, threads: usize) {
        self.inflate_threads = threads.max(1);
    }

    /// The name used in errors (the path, or the OVA member).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// `createType` from the descriptor ("monolithicSparse", "vmfs", ...).
    pub fn create_type(&self) -> &str {
        &self.descriptor.create_type
    }

    /// `parentFileNameHint`, for delta disks.
    pub fn parent_file_name_hint(&self) -> Option<&str> {
        self.descriptor.parent_file_name_hint.as_deref()
    }

    /// The parsed descriptor (CID, parentCID, extents, ddb entries).
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    /// Grain size of the first sparse extent, if any: a good unit for
    /// reading this disk.
    pub fn grain_bytes(&self) -> Option<u64> {
        self.extents.iter().find_map(|e| match &e.kind {
            ExtentKind::Sparse(sp) => Some(sp.grain_bytes()),
            _ => None,
        })
    }

    /// This layer's allocated runs in ascending order, from metadata only
    /// (no data is read). Unallocated space is not reported: for a delta
    /// layer it means "see the parent", for a base it reads as zeros.
    /// Adjacent runs of one kind are merged.
    pub fn runs(&self) -> Result<Vec<Run>, VmdkError> {
        let mut out: Vec<Run> = Vec::new();
        let mut push = |offset_bytes: u64, len_bytes: u64, kind: RunKind| {
            if len_bytes == 0 {
                return;
            }
            if let Some(last) = out.last_mut() {
                if last.kind == kind && last.offset_bytes + last.len_bytes == offset_bytes {
                    last.len_bytes += len_bytes;
                    return;
                }
            }
            out.push(Run {
                offset_bytes,
                len_bytes,
                kind,
            });
        };
        for e in &self.extents {
            match &e.kind {
                ExtentKind::Zero => push(e.start_bytes, e.len_bytes, RunKind::Zero),
                ExtentKind::Flat { .. } => push(e.start_bytes, e.len_bytes, RunKind::Data),
                ExtentKind::Sparse(sp) => sp.for_each_allocated(e.len_bytes, |off, len, kind| {
                    push(e.start_bytes + off, len, kind)
                }),
            }
        }
        Ok(out)
    }

    /// Reads `buf.len()` bytes of this layer at `offset_bytes`; space this
    /// layer does not hold reads as zeros. Safe to call from several threads
    /// at once; a range covering several compressed grains is decompressed
    /// on several threads.
    pub fn read_at(&self, buf: &mut [u8], offset_bytes: u64) -> Result<(), VmdkError> {
        let len = buf.len() as u64;
        let end = offset_bytes.saturating_add(len);
        if end > self.capacity_bytes {
            return Err(VmdkError::OutOfRange {
                file: self.name.clone(),
                offset: offset_bytes,
                len,
                capacity: self.capacity_bytes,
            });
        }
        // First extent whose end is past the offset.
        let mut i = self
            .extents
            .partition_point(|e| e.start_bytes + e.len_bytes <= offset_bytes);
        let mut done = 0usize;
        while done < buf.len() {
            let Some(e) = self.extents.get(i) else {
                // Unreachable while capacity == sum of extents; zero-fill
                // rather than panic if it ever is not.
                buf[done..].fill(0);
                break;
            };
            let pos = offset_bytes + done as u64;
            let in_ext = pos - e.start_bytes;
            let n = ((e.len_bytes - in_ext) as usize).min(buf.len() - done);
            let chunk = &mut buf[done..done + n];
            match &e.kind {
                ExtentKind::Zero => chunk.fill(0),
                ExtentKind::Flat {
                    src,
                    file,
                    offset_bytes: base,
                } => src.read_exact_at(chunk, base + in_ext).map_err(io_err(
                    file,
                    format!("reading flat extent at {}", base + in_ext),
                ))?,
                ExtentKind::Sparse(sp) => sp.read_at(chunk, in_ext, self.inflate_threads)?,
            }
            done += n;
            i += 1;
        }
        Ok(())
    }
}

fn default_inflate_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn resolve(
    resolver: &ExtentResolver<'_>,
    name: &str,
    index: usize,
    extent: &str,
) -> Result<(Arc<dyn Source>, String), VmdkError> {
    resolver(extent).map_err(|e| match e {
        VmdkError::ExtentLoop { file, extent, .. } => VmdkError::ExtentLoop {
            file: if file.is_empty() {
                name.to_string()
            } else {
                file
            },
            index,
            extent,
        },
        other => other,
    })
}

/// Opens a chain of delta disks by `parentFileNameHint` (relative hints are
/// taken from the child's folder; an absolute hint that does not exist, as
/// ESXi writes them, by its file name in the child's folder): the oldest
/// (base) first, the given file last. Each child's `parentCID` must match its parent's `CID`, or the
/// parent changed after the child was made and the chain would read wrong
/// data.
pub fn open_chain(path: &Path) -> Result<Vec<Disk>, VmdkError> {
    let mut chain: Vec<Disk> = Vec::new();
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut cur = path.to_path_buf();
    loop {
        let shown = cur.display().to_string();
        let canon = std::fs::canonicalize(&cur).map_err(io_err(&shown, "opening"))?;
        if let Some(child) = chain.last() {
            if !seen.insert(canon.clone()) {
                return Err(VmdkError::ChainLoop {
                    file: child.name.clone(),
                    again: shown,
                });
            }
            if chain.len() >= limits::MAX_CHAIN_DEPTH {
                return Err(VmdkError::ChainTooDeep {
                    file: path.display().to_string(),
                    limit: limits::MAX_CHAIN_DEPTH,
                });
            }
        } else {
            seen.insert(canon);
        }
        let disk = Disk::open(&cur)?;
        if let Some(child) = chain.last() {
            let want = child.descriptor.parent_cid;
            let have = disk.descriptor.cid;
            if let (Some(want), Some(have)) = (want, have) {
                if want != have {
                    return Err(VmdkError::BadParent {
                        file: child.name.clone(),
                        parent: disk.name.clone(),
                        why: format!(
                            "parentCID {want:08x} does not match the parent's CID {have:08x} (the parent changed after this delta was made)"
                        ),
                    });
                }
            }
        }
        let next = disk.parent_file_name_hint().map(|hint| {
            let dir = cur.parent().map(Path::to_path_buf).unwrap_or_default();
            let p = dir.join(hint);
            // ESXi writes absolute hints ("/vmfs/volumes/..."); a copied
            // chain has the parent beside the child.
            match Path::new(hint).file_name() {
                Some(base) if Path::new(hint).is_absolute() && !p.exists() => dir.join(base),
                _ => p,
            }
        });
        chain.push(disk);
        match next {
            Some(p) => cur = p,
            None => break,
        }
    }
    chain.reverse();
    Ok(chain)
}

#[cfg(test)]
mod tests {
    /// The CLI reads one disk from several threads and moves disks between
    /// threads.
    #[test]
    fn disk_and_ova_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<super::Disk>();
        check::<super::ova::Ova>();
        check::<super::StreamOptimizedWriter<std::fs::File>>();
    }
}
