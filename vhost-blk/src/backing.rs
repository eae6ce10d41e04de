//! Checks that a file a frontend hands over holds the range it is about to
//! be mapped for.
//!
//! Guest memory regions (SET_MEM_TABLE, ADD_MEM_REG) and the inflight
//! region (SET_INFLIGHT_FD) arrive as file descriptors with an offset and a
//! length chosen by the frontend. `mmap` of a file succeeds past its end;
//! the first access to such a page raises SIGBUS, which kills the daemon and
//! with it every other volume it serves. So a regular file (a memfd, a
//! hugetlbfs or tmpfs file) must hold `offset + len` bytes before it is
//! mapped, and the message is refused otherwise. Other kinds of file (a
//! device such as /dev/dax) have no size to check and are left to `mmap`.
//!
//! What this does not cover: a frontend that shrinks the file after the
//! check. It could equally write anything into guest memory; the daemon
//! trusts a frontend not to sabotage its own mapping, only not to be
//! exactly right about sizes.

use std::fs::File;

/// A file too short for the mapping asked of it.
#[derive(Debug, thiserror::Error)]
pub enum BackingError {
    #[error("cannot stat the file: {0}")]
    Stat(std::io::Error),
    #[error("offset {offset_bytes} + length {len_bytes} overflows")]
    Overflow { offset_bytes: u64, len_bytes: u64 },
    #[error(
        "the file holds {file_bytes} bytes, a mapping of {len_bytes} at offset {offset_bytes} \
         needs {need_bytes}"
    )]
    Short {
        file_bytes: u64,
        offset_bytes: u64,
        len_bytes: u64,
        need_bytes: u64,
    },
}

/// Fails unless `file`, if it is a regular file, holds at least
/// `offset_bytes + len_bytes` bytes.
pub fn check_holds(file: &File, offset_bytes: u64, len_bytes: u64) -> Result<(), BackingError> {
    let need_bytes = offset_bytes
        .checked_add(len_bytes)
        .ok_or(BackingError::Overflow {
            offset_bytes,
            len_bytes,
        })?;
    let meta = file.metadata().map_err(BackingError::Stat)?;
    if !meta.file_type().is_file() {
        return Ok(());
    }
    if meta.len() < need_bytes {
        return Err(BackingError::Short {
            file_bytes: meta.len(),
            offset_bytes,
            len_bytes,
            need_bytes,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(len: u64) -> File {
        crate::inflight::memfd(len).unwrap()
    }

    #[test]
    fn a_file_that_holds_the_range_passes() {
        let f = memfd(1 << 20);
        check_holds(&f, 0, 1 << 20).unwrap();
        check_holds(&f, 4096, (1 << 20) - 4096).unwrap();
        check_holds(&f, 1 << 20, 0).unwrap();
    }

    #[test]
    fn a_short_file_is_refused_with_its_sizes() {
        let f = memfd(64 << 10);
        match check_holds(&f, 4096, 64 << 10) {
            Err(BackingError::Short {
                file_bytes,
                need_bytes,
                ..
            }) => assert_eq!((file_bytes, need_bytes), (64 << 10, (64 << 10) + 4096)),
            other => panic!("expected Short, got {other:?}"),
        }
        assert!(matches!(
            check_holds(&memfd(0), 0, 4096),
            Err(BackingError::Short { .. })
        ));
    }

    #[test]
    fn an_overflowing_range_is_refused() {
        let f = memfd(4096);
        assert!(matches!(
            check_holds(&f, u64::MAX - 10, 4096),
            Err(BackingError::Overflow { .. })
        ));
    }

    #[test]
    fn a_device_has_no_size_to_check() {
        let f = File::open("/dev/zero").unwrap();
        check_holds(&f, 0, 1 << 30).unwrap();
    }
}
