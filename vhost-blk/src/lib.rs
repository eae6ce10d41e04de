//! vhost-user-blk backend serving cowstore volumes to any vhost-user frontend
//! (QEMU, cloud-hypervisor, crosvm, cowvisor), and the pieces of the
//! `cowstored` daemon.
//!
//! Data flows: guest ring -> [`device`] (pop chains, batch) -> [`request`]
//! (parse untrusted descriptors into a typed request) -> [`export::Target`]
//! (`cowstore::Volume` or read-only `cowstore::Snapshot`) -> used ring.
//! [`server`] runs one vhost-user socket per export, [`connection`] speaks
//! the vhost-user protocol on it, [`inflight`] tracks taken-but-unfinished
//! chains so a restarted daemon resubmits them; [`control`] is the daemon's
//! control socket (attach, detach, stats, the snapshot barrier), and
//! [`cleaner`] the background segment cleaner that gives space back.

pub mod backing;
pub mod cleaner;
pub mod connection;
pub mod control;
pub mod device;
pub mod export;
pub mod inflight;
pub mod poll;
pub mod request;
pub mod server;

pub use control::{ControlClient, Daemon};
pub use export::{Export, Target};
