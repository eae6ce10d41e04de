//! A bounded local cache of segment ranges fetched from the object store.
//!
//! Segments are cached in fixed 1 MiB blocks, one file each, evicted least
//! recently used first once the configured size is exceeded. Blocks hold
//! plain object bytes; every record read out of them is still verified
//! against its crc32c, so a damaged cache file surfaces as a checksum error
//! and is dropped rather than served.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// Size of one cached block.
pub const BLOCK_BYTES: u64 = 1 << 20;

pub(crate) struct BlockCache {
    dir: PathBuf,
    capacity_bytes: u64,
    index: Mutex<Index>,
}

#[derive(Default)]
struct Index {
    /// (segment, block) -> (bytes, last-use tick)
    blocks: HashMap<(u64, u64), (u64, u64)>,
    /// last-use tick -> (segment, block)
    by_age: BTreeMap<u64, (u64, u64)>,
    used_bytes: u64,
    tick: u64,
}

impl Index {
    fn touch(&mut self, key: (u64, u64)) {
        self.tick += 1;
        let tick = self.tick;
        if let Some((_, old)) = self.blocks.get_mut(&key) {
            self.by_age.remove(old);
            *old = tick;
            self.by_age.insert(tick, key);
        }
    }
}

fn file_name(segment_id: u64, block: u64) -> String {
    format!("{segment_id:016x}-{block:08x}.blk")
}

impl BlockCache {
    pub fn open(dir: PathBuf, capacity_bytes: u64) -> Result<Self> {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut index = Index::default();
        // Rebuild the index from what a previous run left; age by file name
        // order (unknown use order), which is as good as any after a restart.
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .filter_map(|e| e.ok())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let parsed = name.strip_suffix(".blk").and_then(|stem| {
                let (seg, block) = stem.split_once('-')?;
                Some((
                    u64::from_str_radix(seg, 16).ok()?,
                    u64::from_str_radix(block, 16).ok()?,
                ))
            });
            let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
            match parsed {
                Some(key) if len > 0 && len <= BLOCK_BYTES => {
                    index.tick += 1;
                    index.blocks.insert(key, (len, index.tick));
                    index.by_age.insert(index.tick, key);
                    index.used_bytes += len;
                }
                _ => {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let cache = BlockCache {
            dir,
            capacity_bytes,
            index: Mutex::new(index),
        };
        cache.evict();
        Ok(cache)
    }

    pub fn get(&self, segment_id: u64, block: u64) -> Option<Vec<u8>> {
        let key = (segment_id, block);
        if !self.index.lock().blocks.contains_key(&key) {
            return None;
        }
        match std::fs::read(self.dir.join(file_name(segment_id, block))) {
            Ok(bytes) => {
                self.index.lock().touch(key);
                Some(bytes)
            }
            Err(_) => {
                self.forget(segment_id, block);
                None
            }
        }
    }

    pub fn contains(&self, segment_id: u64, block: u64) -> bool {
        self.index.lock().blocks.contains_key(&(segment_id, block))
    }

    /// Stores a block. A failure to write the cache is not an error for the
    /// read that fetched it: it is logged and the block simply isn't cached.
    pub fn put(&self, segment_id: u64, block: u64, bytes: &[u8]) {
        if bytes.is_empty() || bytes.len() as u64 > BLOCK_BYTES || self.capacity_bytes == 0 {
            return;
        }
        let path = self.dir.join(file_name(segment_id, block));
        let tmp = path.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &path)) {
            tracing::warn!("cache write {} failed: {e}", path.display());
            return;
        }
        {
            let mut idx = self.index.lock();
            idx.tick += 1;
            let tick = idx.tick;
            if let Some((len, old)) = idx
                .blocks
                .insert((segment_id, block), (bytes.len() as u64, tick))
            {
                idx.by_age.remove(&old);
                idx.used_bytes -= len;
            }
            idx.by_age.insert(tick, (segment_id, block));
            idx.used_bytes += bytes.len() as u64;
        }
        self.evict();
    }

    /// Drops a block (it failed verification, or its segment is gone).
    pub fn forget(&self, segment_id: u64, block: u64) {
        let mut idx = self.index.lock();
        if let Some((len, tick)) = idx.blocks.remove(&(segment_id, block)) {
            idx.by_age.remove(&tick);
            idx.used_bytes -= len;
        }
        drop(idx);
        let _ = std::fs::remove_file(self.dir.join(file_name(segment_id, block)));
    }

    pub fn used_bytes(&self) -> u64 {
        self.index.lock().used_bytes
    }

    fn evict(&self) {
        loop {
            let victim = {
                let mut idx = self.index.lock();
                if idx.used_bytes <= self.capacity_bytes {
                    return;
                }
                let Some((&tick, &key)) = idx.by_age.iter().next() else {
                    return;
                };
                idx.by_age.remove(&tick);
                if let Some((len, _)) = idx.blocks.remove(&key) {
                    idx.used_bytes -= len;
                }
                key
            };
            let _ = std::fs::remove_file(self.dir.join(file_name(victim.0, victim.1)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_bounded_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let c = BlockCache::open(dir.path().to_path_buf(), 3 * 1000).unwrap();
        for b in 0..3 {
            c.put(1, b, &[b as u8; 1000]);
        }
        assert!(c.get(1, 0).is_some()); // 0 is now most recent
        c.put(1, 3, &[3; 1000]); // evicts 1 (least recent)
        assert!(c.contains(1, 0) && !c.contains(1, 1) && c.contains(1, 3));
        assert!(c.used_bytes() <= 3000);
        drop(c);
        let c = BlockCache::open(dir.path().to_path_buf(), 3 * 1000).unwrap();
        assert_eq!(c.get(1, 3).unwrap(), vec![3; 1000]);
        assert_eq!(c.used_bytes(), 3000);
    }
}
