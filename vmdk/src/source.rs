//! Positional reads over whatever holds a VMDK's bytes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use crate::VmdkError;

/// Positional reads over whatever holds the bytes: a file, or a member
/// inside an OVA's tar. `&self` so several threads can read at once.
pub trait Source: Send + Sync {
    fn len_bytes(&self) -> u64;
    /// Fills `buf` from `offset`; an error (UnexpectedEof) if the source
    /// ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// A file read with `pread`; its length is taken once at open (the files
/// are not expected to change while imported).
#[derive(Debug)]
pub struct FileSource {
    file: File,
    len_bytes: u64,
}

impl FileSource {
    pub fn open(path: &Path) -> Result<FileSource, VmdkError> {
        let shown = path.display().to_string();
        let file = File::open(path).map_err(|source| VmdkError::Io {
            file: shown.clone(),
            op: "opening".to_string(),
            source,
        })?;
        FileSource::new(file).map_err(|source| VmdkError::Io {
            file: shown,
            op: "reading its length".to_string(),
            source,
        })
    }

    pub fn new(file: File) -> io::Result<FileSource> {
        let len_bytes = file.metadata()?.len();
        Ok(FileSource { file, len_bytes })
    }
}

impl Source for FileSource {
    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

/// A byte range of another source (a member of a tar).
pub struct SliceSource {
    inner: Arc<dyn Source>,
    start: u64,
    len_bytes: u64,
}

impl SliceSource {
    /// `start..start+len_bytes` of `inner`; the range is clamped to what
    /// `inner` holds so reads past it fail as end-of-file.
    pub fn new(inner: Arc<dyn Source>, start: u64, len_bytes: u64) -> SliceSource {
        let total = inner.len_bytes();
        let start = start.min(total);
        let len_bytes = len_bytes.min(total - start);
        SliceSource {
            inner,
            start,
            len_bytes,
        }
    }
}

impl Source for SliceSource {
    fn len_bytes(&self) -> u64 {
        self.len_bytes
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        match end {
            Some(end) if end <= self.len_bytes => {
                self.inner.read_exact_at(buf, self.start + offset)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the member",
            )),
        }
    }
}

/// Bytes in memory (tests, the fuzz target).
#[derive(Debug, Clone)]
pub struct MemSource(pub Vec<u8>);

impl Source for MemSource {
    fn len_bytes(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start.checked_add(buf.len()) {
            Some(end) if end <= self.0.len() => {
                buf.copy_from_slice(&self.0[start..end]);
                Ok(())
            }
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the buffer",
            )),
        }
    }
}
