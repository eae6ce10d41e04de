//! What the disk under the backends did during a run: bytes written per
//! second, how busy it was, how large its writes were and how many it had
//! in flight, from `/proc/diskstats`.
//!
//! Why: the backends take turns on one disk, and a 128 KiB write job is
//! bound by that disk, not by the backend's CPU. Whether a backend's writes
//! cost the disk more than another's (a log writing into newly allocated
//! blocks against qcow2 overwriting its own, on a file system mounted with
//! `discard`) only shows beside the IOPS: same utilisation, fewer bytes.

/// Cumulative counters of one block device (`Documentation/admin-guide/
/// iostats.rst`: field 5 writes completed, field 7 sectors written, field
/// 10 milliseconds spent doing I/O, field 11 the weighted milliseconds:
/// each millisecond times the requests in flight during it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskCounters {
    pub writes: u64,
    pub sectors_written: u64,
    pub io_ticks_ms: u64,
    pub weighted_ticks_ms: u64,
}

/// The disk over one run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DiskUse {
    pub write_bytes_per_s: f64,
    /// Share of the run's wall time the disk had I/O in flight (iostat's
    /// `%util`); above ~90% a virtual disk is saturated.
    pub util_pct: f64,
    /// Mean size of the disk's write requests, as the block layer sent
    /// them (after merging and splitting); `None` without writes.
    pub write_bytes_avg: Option<f64>,
    /// Mean requests in flight over the run (iostat's `aqu-sz`): a disk
    /// whose latency does not grow with depth serves more the deeper it is
    /// kept.
    pub queue_avg: f64,
}

/// Sectors in diskstats are 512 bytes whatever the device's block size.
const DISKSTATS_SECTOR_BYTES: u64 = 512;

/// The counters of `device` (a name as in `/proc/diskstats`, e.g. `vda`,
/// `nvme0n1p2`, `dm-0`) in `diskstats` text; `None` if it is not there or
/// the line is malformed.
pub fn parse_diskstats(diskstats: &str, device: &str) -> Option<DiskCounters> {
    diskstats.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // major minor name, then at least the 11 original counters.
        if fields.len() < 14 || fields[2] != device {
            return None;
        }
        Some(DiskCounters {
            writes: fields[7].parse().ok()?,
            sectors_written: fields[9].parse().ok()?,
            io_ticks_ms: fields[12].parse().ok()?,
            weighted_ticks_ms: fields[13].parse().ok()?,
        })
    })
}

/// The counters of `device` now.
pub fn read(device: &str) -> Option<DiskCounters> {
    let text = std::fs::read_to_string("/proc/diskstats").ok()?;
    parse_diskstats(&text, device)
}

/// What the disk did between two readings `elapsed_s` seconds apart;
/// `None` if the counters went backwards (the device was replaced) or no
/// time passed.
pub fn disk_use(before: DiskCounters, after: DiskCounters, elapsed_s: f64) -> Option<DiskUse> {
    if elapsed_s <= 0.0 {
        return None;
    }
    let sectors = after.sectors_written.checked_sub(before.sectors_written)?;
    let ticks_ms = after.io_ticks_ms.checked_sub(before.io_ticks_ms)?;
    let writes = after.writes.checked_sub(before.writes)?;
    let weighted_ms = after
        .weighted_ticks_ms
        .checked_sub(before.weighted_ticks_ms)?;
    let bytes = sectors.saturating_mul(DISKSTATS_SECTOR_BYTES);
    Some(DiskUse {
        write_bytes_per_s: bytes as f64 / elapsed_s,
        util_pct: (ticks_ms as f64 / 10.0 / elapsed_s).min(100.0),
        write_bytes_avg: (writes > 0).then(|| bytes as f64 / writes as f64),
        queue_avg: weighted_ms as f64 / 1000.0 / elapsed_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
 253       0 vda 2283517 41178 205417070 1190461 19433385 3470366 1970343216 43398117 0 6118732 45036012 0 0 0 0 1174 447433
 253       1 vda1 2283000 41178 205400000 1190000 19433000 3470000 1970000000 43398000 0 6118000 45036000 0 0 0 0 0 0
   7       0 loop0 10 0 20 1 0 0 0
";

    #[test]
    fn finds_the_named_device_only() {
        assert_eq!(
            parse_diskstats(SAMPLE, "vda"),
            Some(DiskCounters {
                writes: 19_433_385,
                sectors_written: 1_970_343_216,
                io_ticks_ms: 6_118_732,
                weighted_ticks_ms: 45_036_012,
            })
        );
        assert_eq!(
            parse_diskstats(SAMPLE, "vda1").map(|c| c.io_ticks_ms),
            Some(6_118_000)
        );
        // A prefix is not a match, and a short line is no counters.
        assert_eq!(parse_diskstats(SAMPLE, "vd"), None);
        assert_eq!(parse_diskstats(SAMPLE, "loop0"), None);
        assert_eq!(parse_diskstats("8 0 sda x y", "sda"), None);
    }

    #[test]
    fn rates_over_a_run() {
        let before = DiskCounters {
            writes: 10,
            sectors_written: 1_000,
            io_ticks_ms: 500,
            weighted_ticks_ms: 700,
        };
        let after = DiskCounters {
            writes: 10 + 32_000,
            sectors_written: 1_000 + 4 * 2048 * 1000, // 4000 MiB
            io_ticks_ms: 500 + 1800,
            weighted_ticks_ms: 700 + 9000,
        };
        let u = disk_use(before, after, 2.0).unwrap();
        assert_eq!(u.write_bytes_per_s, 2000.0 * 1024.0 * 1024.0);
        assert_eq!(u.util_pct, 90.0);
        assert_eq!(u.write_bytes_avg, Some(128.0 * 1024.0));
        assert_eq!(u.queue_avg, 4.5);
        let no_writes = DiskCounters {
            writes: before.writes,
            ..after
        };
        assert_eq!(
            disk_use(before, no_writes, 2.0).unwrap().write_bytes_avg,
            None
        );
        // Backwards counters or no time: no figure.
        assert!(disk_use(after, before, 2.0).is_none());
        assert!(disk_use(before, after, 0.0).is_none());
        // Busy time is capped at the wall time.
        let busy = DiskCounters {
            io_ticks_ms: 500 + 5000,
            ..after
        };
        assert_eq!(disk_use(before, busy, 2.0).unwrap().util_pct, 100.0);
    }

    #[test]
    fn reads_this_machine() {
        // Every Linux has /proc/diskstats; a device that does not exist has
        // no counters.
        assert!(std::fs::read_to_string("/proc/diskstats").is_ok());
        assert!(read("no-such-disk-xyz").is_none());
    }
}
