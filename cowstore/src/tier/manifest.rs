//! Manifests and leases: small JSON objects, each checksummed.
//!
//! A manifest is stored as `{"body": {...}, "crc32c": N}` where N is the
//! crc32c of the body's JSON bytes as written. A manifest names every object
//! needed to read what it describes; it is written only after all of them
//! are in the bucket, so its presence means they are there.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::error::{Error, Result};

pub const MANIFEST_FORMAT: u32 = 1;

/// One segment object a map references.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRef {
    pub id: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    pub format: u32,
    pub name: String,
    pub id: u64,
    pub volume_name: String,
    pub volume_id: u64,
    pub size_bytes: u64,
    pub seq: u64,
    pub created_unix_s: u64,
    /// Object key of the snapshot's checkpoint.
    pub checkpoint: String,
    pub segments: Vec<SegmentRef>,
    /// Bytes of segments this snapshot references that the volume's previous
    /// published snapshot did not: what this snapshot added to the bucket.
    pub added_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeManifest {
    pub format: u32,
    pub name: String,
    pub id: u64,
    pub size_bytes: u64,
    /// Sequence number the checkpoint covers.
    pub seq: u64,
    /// Object key of the volume's checkpoint at `seq`.
    pub checkpoint: String,
    pub segments: Vec<SegmentRef>,
    pub published_unix_s: u64,
    pub holder: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub volume: String,
    pub holder: String,
    pub acquired_unix_s: u64,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    body: serde_json::Value,
    crc32c: u32,
}

pub fn encode<T: Serialize>(body: &T) -> Vec<u8> {
    let value = serde_json::to_value(body).unwrap_or(serde_json::Value::Null);
    let body_bytes = serde_json::to_vec(&value).unwrap_or_default();
    let env = Envelope {
        crc32c: crate::checksum::crc32c(&body_bytes),
        body: value,
    };
    serde_json::to_vec_pretty(&env).unwrap_or_default()
}

pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    let bad = |why: String| Error::ManifestCorrupt {
        key: key.to_string(),
        why,
    };
    let env: Envelope = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let body_bytes = serde_json::to_vec(&env.body).map_err(|e| bad(e.to_string()))?;
    if crate::checksum::crc32c(&body_bytes) != env.crc32c {
        return Err(bad("checksum mismatch".into()));
    }
    serde_json::from_value(env.body).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper_detected() {
        let m = Lease {
            volume: "v".into(),
            holder: "host a".into(),
            acquired_unix_s: 5,
        };
        let bytes = encode(&m);
        assert_eq!(decode::<Lease>("k", &bytes).unwrap(), m);
        let tampered = String::from_utf8(bytes)
            .unwrap()
            .replace("host a", "host b");
        assert!(matches!(
            decode::<Lease>("k", tampered.as_bytes()),
            Err(Error::ManifestCorrupt { .. })
        ));
    }
}
