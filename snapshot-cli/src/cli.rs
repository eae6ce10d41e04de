//! The command line: every subcommand, its arguments and its help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::STORE_ENV;

const AFTER_HELP: &str = "\
The store is found from --store, else the COWSNAP_STORE environment variable,
else `store = \"...\"` in the config file ($COWSNAP_CONFIG, else
$XDG_CONFIG_HOME/cowsnap/config.toml, else ~/.config/cowsnap/config.toml).

Exit codes: 0 success, 1 internal error, 2 usage error (bad arguments, no store
configured), 3 not found (volume, snapshot, file, store), 4 I/O or integrity
failure (checksum mismatch, corrupt input, disk or object store error),
5 conflict (name already exists, store in use, lease held by another host),
6 timeout or abort (a group snapshot member failed; nothing was kept).";

/// cowsnap: import VMware disks, manage volumes and snapshots of a cowstore
/// store, take crash-consistent group snapshots, and export.
#[derive(Debug, Parser)]
#[command(name = "cowsnap", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Store directory (a local folder; its object storage tier, if any, is
    /// set by `cowsnap init --object-store`).
    #[arg(long, global = true, env = STORE_ENV, value_name = "DIR")]
    pub store: Option<PathBuf>,

    /// Machine-readable output: one JSON document on stdout.
    #[arg(long, global = true)]
    pub json: bool,

    /// More log output on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a store: a local folder, optionally tiered to object storage.
    Init(InitArgs),
    /// Import VMDK files (or an OVA) as volumes, one volume per disk.
    Import(ImportArgs),
    /// Write a volume or snapshot out as a raw image or a streamOptimized VMDK.
    Export(ExportArgs),
    /// Create, list, show, resize and remove volumes.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Create, list, show, remove and diff snapshots (and group snapshots).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Make a new writable volume from a snapshot, sharing its data.
    Clone(CloneArgs),
    /// Restore a snapshot (as a new volume, or in place) or a group snapshot
    /// (a new clone of every member).
    Restore(RestoreArgs),
    /// Reclaim space no volume or snapshot references any more.
    Gc,
    /// Read every extent of every volume and snapshot (or the named ones) and
    /// check its checksum. Reports; never repairs.
    Verify(VerifyArgs),
    /// Space used per volume and snapshot: mapped, exclusive and shared.
    Du,
    /// Fetch every byte of a volume from the object store into the local cache.
    Hydrate(HydrateArgs),
    /// Take the group snapshots a schedule file asks for and prune old ones
    /// by retention (keep N hourly, M daily). Run it from cron or a systemd
    /// timer, e.g. every 15 minutes.
    Schedule(ScheduleArgs),
}

#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// Schedule file (TOML; see docs/operations.md, "Scheduled group
    /// snapshots").
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Say what would be taken and removed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to create the store (default: the store found as usual).
    pub path: Option<PathBuf>,
    /// Keep sealed segments in this object store: s3://bucket/prefix (AWS_*
    /// environment variables give the endpoint and credentials) or
    /// file:///path.
    #[arg(long, value_name = "URL")]
    pub object_store: Option<String>,
    /// When a flush is durable: `local` (on local disk; segments upload in the
    /// background) or `remote` (once in the object store).
    #[arg(long, value_enum, default_value_t = DurabilityArg::Local, requires = "object_store")]
    pub durability: DurabilityArg,
    /// Local cache of object-store data, in bytes (suffixes K, M, G, T).
    #[arg(long, value_parser = parse_size, value_name = "SIZE", requires = "object_store")]
    pub cache_size: Option<u64>,
    /// Also write this store into the config file as the default.
    #[arg(long)]
    pub make_default: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DurabilityArg {
    Local,
    Remote,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// VMDK files (descriptor or single-file disks) or OVA files. When none is
    /// given, nothing is imported and the command says so.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Volume name (only with one VMDK; default: the file's name without
    /// `.vmdk`).
    #[arg(long)]
    pub name: Option<String>,
    /// Prefix for every volume name made.
    #[arg(long, default_value = "")]
    pub prefix: String,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ExportFormat {
    /// A raw image (sparse where the volume has holes).
    Raw,
    /// A streamOptimized VMDK in VMware's layout (what vSphere accepts).
    Vmdk,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Volume or snapshot to export.
    pub name: String,
    /// Output file (must not exist unless --force).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Output format (default: from the file's extension, else raw).
    #[arg(long, value_enum)]
    pub format: Option<ExportFormat>,
    /// Overwrite the output file if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create an empty volume.
    Create {
        name: String,
        /// Size in bytes (suffixes K, M, G, T; a multiple of 512).
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
    /// List volumes.
    List,
    /// Show one volume: size, space, snapshots.
    Show { name: String },
    /// Grow a volume (volumes never shrink).
    Resize {
        name: String,
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
    /// Remove a volume (its snapshots stay).
    Rm { name: String },
    /// Write a file's bytes into a volume at an offset (for operators
    /// patching a disk, and for tests).
    Write {
        name: String,
        /// Byte offset (a multiple of 512; suffixes K, M, G, T).
        #[arg(long, value_parser = parse_size, default_value = "0")]
        offset: u64,
        /// File whose bytes are written (its length rounded up to 512 with zeros).
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot one volume, or (with --group) several volumes at one
    /// crash-consistent cut, even across cowstored daemons.
    Create(SnapshotCreateArgs),
    /// List snapshots (and group snapshots).
    List,
    /// Show a snapshot or group snapshot.
    Show { name: String },
    /// Remove a snapshot, or a group snapshot with all its members.
    Rm { name: String },
    /// Changed ranges between two snapshots of one volume (or a snapshot and
    /// the volume's present state).
    Diff { from: String, to: String },
}

#[derive(Debug, Args)]
pub struct SnapshotCreateArgs {
    /// With --group: the members, each `VOLUME` (this store, offline) or
    /// `VOLUME@CONTROL_SOCKET` (served by the cowstored at that control
    /// socket). Without --group: one volume.
    #[arg(required = true, value_name = "VOLUME")]
    pub volumes: Vec<String>,
    /// Snapshot name (default: VOLUME@<UTC time>).
    #[arg(long)]
    pub name: Option<String>,
    /// Take a group snapshot named GROUP of every volume given.
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Longest the group barrier may hold guest I/O, in milliseconds; past
    /// it, the group aborts and every daemon resumes by itself.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
}

#[derive(Debug, Args)]
pub struct CloneArgs {
    /// Snapshot to clone.
    pub snapshot: String,
    /// Name of the new volume.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot or group snapshot to restore.
    pub name: String,
    /// Name of the new volume (one snapshot) or suffix of every new volume
    /// (group; default: `-restored-<UTC time>`).
    #[arg(long = "as", value_name = "NAME")]
    pub as_name: Option<String>,
    /// Roll the snapshot's own volume back to it instead of making a new one
    /// (the volume must not be served; its present state is lost).
    #[arg(long, conflicts_with = "as_name")]
    pub in_place: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Volumes or snapshots to check (default: all of them).
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct HydrateArgs {
    /// Volume to make fully local.
    pub name: String,
}

/// Parses `1048576`, `512K`, `10M`, `2G`, `1T` (binary units; `KiB`, `MB`...
/// accepted as the same).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (like 4096, 512K, 10G)"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        other => return Err(format!("unknown size unit {other:?} (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        assert!(parse_size("").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999T").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
