//! cowstore: a log-structured copy-on-write block store.
//!
//! A [`Store`] is a local directory. Each [`Volume`] is a virtual disk whose
//! writes append checksummed records to the volume's log; an extent map sends
//! each guest sector range to the record holding its bytes. Because the map
//! is a persistent B-tree, a [`Snapshot`] (and a clone made from one) costs
//! O(1) and shares all data with its source. Sealed log segments are
//! immutable, which is what the object storage tier will upload.
//!
//! ```no_run
//! # fn main() -> Result<(), cowstore::Error> {
//! use cowstore::{Store, StoreConfig};
//! let store = Store::open_or_create("/var/lib/cowstore", StoreConfig::default())?;
//! let vol = store.create_volume("vm1-root", 1 << 30)?;
//! futures::executor::block_on(async {
//!     vol.write(0, &[7u8; 4096]).await?;
//!     vol.flush().await
//! })?;
//! store.create_snapshot("vm1-root", "vm1-root@monday")?;
//! let clone = store.clone_snapshot("vm1-root@monday", "vm1-test")?;
//! # let _ = clone;
//! store.close()
//! # }
//! ```
//!
//! Data flows one way: `Volume` (this crate's API) -> log append + extent map
//! (`volume`, `extent_map`, `record`) -> segment files (`segment`, `io`) ->
//! durable metadata (`checkpoint`, `catalog`). `recovery` rebuilds the state
//! after a crash; `gc` reclaims space.

mod catalog;
mod checkpoint;
mod checksum;
mod drop_behind;
mod error;
pub mod extent_map;
pub mod gc;
mod inflight;
pub mod inspect;
mod io;
pub mod limits;
mod local_ring;
mod log_buf;
mod log_writer;
mod pool;
pub mod record;
mod recovery;
mod remote;
mod ring;
pub mod segment;
mod snapshot;
mod stage_clock;
mod store;
pub mod tier;
mod volume;

pub use error::{Error, Result};
pub use gc::{GcMode, GcReport};
pub use inspect::{ByteRange, ObjectKind, SpaceUsage, VerifyError, VerifyReport};
pub use io::{with_inline_io, IoBackendChoice};
pub use local_ring::{block_on, readable, Readable};
pub use pool::free_percent;
pub use recovery::RecoveryStats;
pub use remote::ObjectGcReport;
pub use snapshot::Snapshot;
pub use stage_clock::{StageTotals, WriteStages};
pub use store::{SnapshotInfo, Store, StoreConfig, VolumeInfo};
pub use tier::manifest::{SegmentRef, SnapshotManifest, VolumeManifest};
pub use tier::{Durability, TierConfig, TierStats};
pub use volume::Volume;
