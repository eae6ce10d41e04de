//! The catalog: which volumes, snapshots and segments exist, in `sled`.
//!
//! The catalog holds names and relationships; the logs and checkpoints hold
//! the data maps. Where both could say something, the log wins: a snapshot
//! is durable once its marker record is flushed, and recovery re-adds a
//! catalog entry that was lost with an unflushed sled write.
//!
//! Trees (keys are big-endian u64 ids, values JSON):
//! - `volumes`: [`VolumeMeta`]; `snapshots`: [`SnapshotMeta`];
//! - `segments`: [`SegmentMeta`]; `liveness`: [`Liveness`] from the last GC;
//! - `names`: name -> `{"Volume": id}` or `{"Snapshot": id}` (one namespace).
//!
//! Store-wide settings live beside it in the `format` file.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::segment::SegmentKind;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMeta {
    pub id: u64,
    pub name: String,
    /// Size at creation; the live size comes from checkpoint and log.
    pub size_bytes: u64,
    /// For a clone: the snapshot it started from.
    pub parent_snapshot: Option<u64>,
    pub created_unix_s: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub id: u64,
    pub name: String,
    pub volume_id: u64,
    /// Name of the volume it was taken of (kept after the volume is gone).
    #[serde(default)]
    pub volume_name: String,
    /// Its manifest is in the object store.
    #[serde(default)]
    pub published: bool,
    /// Sequence number of the snapshot's marker record in the volume's log.
    pub seq: u64,
    pub size_bytes: u64,
    pub created_unix_s: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentMeta {
    pub id: u64,
    pub kind: SegmentKind,
    /// Owning volume for log segments, 0 for GC segments.
    pub volume_id: u64,
    pub chain_index: u64,
    /// Size of the object once uploaded to the object store.
    #[serde(default)]
    pub remote_bytes: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Liveness {
    pub live_bytes: u64,
    pub total_bytes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NameTarget {
    Volume(u64),
    Snapshot(u64),
}

/// Contents of the store's `format` file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub format_version: u32,
    pub segment_bytes: u64,
    /// Mixed into every id this store generates, so that stores sharing an
    /// object store bucket do not collide on segment and volume ids.
    #[serde(default)]
    pub id_salt: u64,
}

pub struct Catalog {
    db: sled::Db,
    id_salt: u64,
    pub volumes: sled::Tree,
    pub snapshots: sled::Tree,
    pub segments: sled::Tree,
    pub liveness: sled::Tree,
    names: sled::Tree,
}

fn key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

fn decode<T: DeserializeOwned>(k: &[u8], v: &[u8]) -> Result<T> {
    serde_json::from_slice(v).map_err(|e| Error::CatalogCorrupt {
        key: String::from_utf8_lossy(k).into_owned(),
        why: e.to_string(),
    })
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

impl Catalog {
    pub fn open(path: &std::path::Path, id_salt: u64) -> Result<Self> {
        // No background flusher: the engine flushes exactly where durability
        // matters (and a flusher thread would keep the database locked for a
        // moment after the store is dropped, racing a reopen).
        let config = sled::Config::new().path(path).flush_every_ms(None);
        // sled drops its file lock from its own I/O threads a moment after
        // the last handle goes: a reopen in the same process (tests, a
        // daemon restarting a store) may see the lock still held. Wait a
        // bounded time for it; another process holding it still fails.
        let mut attempts = 0;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock") && attempts < 100 =>
                {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        };
        Ok(Catalog {
            volumes: db.open_tree("volumes")?,
            snapshots: db.open_tree("snapshots")?,
            segments: db.open_tree("segments")?,
            liveness: db.open_tree("liveness")?,
            names: db.open_tree("names")?,
            db,
            id_salt,
        })
    }

    /// Makes every catalog change so far durable.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// A fresh id, unique across crashes, and (salted) unlikely to collide
    /// with another store's. 0 is reserved to mean "none".
    pub fn generate_id(&self) -> Result<u64> {
        loop {
            let id = (self.db.generate_id()? + 1) ^ self.id_salt;
            if id != 0 {
                return Ok(id);
            }
        }
    }

    /// Claims `name` for `target`; fails if the name is taken.
    pub fn claim_name(&self, name: &str, target: NameTarget) -> Result<()> {
        match self
            .names
            .compare_and_swap(name, None as Option<&[u8]>, Some(encode(&target)))?
        {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::AlreadyExists(name.to_string())),
        }
    }

    pub fn release_name(&self, name: &str) -> Result<()> {
        self.names.remove(name)?;
        Ok(())
    }

    pub fn lookup_name(&self, name: &str) -> Result<Option<NameTarget>> {
        match self.names.get(name)? {
            Some(v) => Ok(Some(decode(name.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    pub fn all_names(&self) -> Result<Vec<(String, NameTarget)>> {
        self.names
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((String::from_utf8_lossy(&k).into_owned(), decode(&k, &v)?))
            })
            .collect()
    }

    pub fn put<T: Serialize>(tree: &sled::Tree, id: u64, value: &T) -> Result<()> {
        tree.insert(key(id), encode(value))?;
        Ok(())
    }

    pub fn remove(tree: &sled::Tree, id: u64) -> Result<()> {
        tree.remove(key(id))?;
        Ok(())
    }

    pub fn all<T: DeserializeOwned>(tree: &sled::Tree) -> Result<Vec<T>> {
        tree.iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }
}
