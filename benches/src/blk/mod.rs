//! The vhost-blk benchmarks (scripts/bench-blk, docs/performance.md, section
//! "vhost-blk: host-side and in-guest figures").
//!
//! - [`jobs`]: the fio-like jobs, identical on the host and in the guest.
//! - [`client`]: a vhost-user-blk client on the `blkio` crate (libblkio's
//!   `virtio-blk-vhost-user` driver) that runs a job against a socket, as
//!   fio would against a disk: `iodepth` requests in flight, random or
//!   sequential offsets over a region, latency of every request.
//! - [`disk`]: bytes written and utilisation of the disk under the
//!   backends during each run, from `/proc/diskstats`.
//! - [`stages`]: where cowstored's write time went during each run (the
//!   encode of its writes' data, its direct appends), from its control
//!   socket.
//! - [`report`]: fio-style JSON and text output, the parser of fio's own JSON
//!   (the in-guest runs), and the table of medians and ratios.
//!
//! The binaries `blk-client` (host side) and `blk-guest` (fio in a QEMU
//! guest) include this folder with `#[path]`, so the library crate (and the
//! criterion bench) do not depend on blkio.

pub mod client;
pub mod disk;
pub mod jobs;
pub mod report;
pub mod stages;
