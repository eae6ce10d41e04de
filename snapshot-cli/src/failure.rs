//! Exit codes: scripts tell a typo from a missing volume from a corrupt disk.

use std::process::ExitCode;

/// What kind of failure ended the command; each has its own exit code
/// (documented in `cowsnap --help`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Internal,
    Usage,
    NotFound,
    Integrity,
    Conflict,
    Aborted,
}

impl Failure {
    pub fn exit_code(self) -> ExitCode {
        ExitCode::from(match self {
            Failure::Internal => 1,
            Failure::Usage => 2,
            Failure::NotFound => 3,
            Failure::Integrity => 4,
            Failure::Conflict => 5,
            Failure::Aborted => 6,
        })
    }
}

/// An error the CLI raises itself with a known kind (wrapped in anyhow).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Classified {
    pub kind: Failure,
    pub message: String,
}

pub fn usage(message: impl Into<String>) -> anyhow::Error {
    Classified {
        kind: Failure::Usage,
        message: message.into(),
    }
    .into()
}

pub fn not_found(message: impl Into<String>) -> anyhow::Error {
    Classified {
        kind: Failure::NotFound,
        message: message.into(),
    }
    .into()
}

pub fn integrity(message: impl Into<String>) -> anyhow::Error {
    Classified {
        kind: Failure::Integrity,
        message: message.into(),
    }
    .into()
}

pub fn conflict(message: impl Into<String>) -> anyhow::Error {
    Classified {
        kind: Failure::Conflict,
        message: message.into(),
    }
    .into()
}

pub fn aborted(message: impl Into<String>) -> anyhow::Error {
    Classified {
        kind: Failure::Aborted,
        message: message.into(),
    }
    .into()
}

fn classify_store(e: &cowstore::Error) -> Failure {
    use cowstore::Error as E;
    match e {
        E::VolumeNotFound(_)
        | E::SnapshotNotFound(_)
        | E::NotFound(_)
        | E::NotAStore(_)
        | E::ObjectNotFound(_) => Failure::NotFound,
        E::AlreadyExists(_) | E::StoreExists(_) | E::LeaseHeld { .. } => Failure::Conflict,
        E::Catalog(_) if is_lock_error(e) => Failure::Conflict,
        E::InvalidName { .. }
        | E::InvalidSize { .. }
        | E::Unaligned { .. }
        | E::OutOfRange { .. }
        | E::TooLarge { .. }
        | E::Shrink { .. }
        | E::ReadOnly { .. }
        | E::Unrelated { .. }
        | E::NoTier
        | E::Config(_) => Failure::Usage,
        E::Io { .. }
        | E::Checksum { .. }
        | E::CorruptExtent { .. }
        | E::SegmentMissing { .. }
        | E::CorruptSegment { .. }
        | E::CorruptCheckpoint { .. }
        | E::CatalogCorrupt { .. }
        | E::ManifestCorrupt { .. }
        | E::ObjectStore(_) => Failure::Integrity,
        _ => Failure::Internal,
    }
}

/// The kind of the first error in the chain that has one.
pub fn classify(err: &anyhow::Error) -> Failure {
    for cause in err.chain() {
        if let Some(c) = cause.downcast_ref::<Classified>() {
            return c.kind;
        }
        if let Some(e) = cause.downcast_ref::<cowstore::Error>() {
            return classify_store(e);
        }
        if let Some(e) = cause.downcast_ref::<vmdk::VmdkError>() {
            return match e {
                vmdk::VmdkError::Io { source, .. }
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Failure::NotFound
                }
                _ => Failure::Integrity,
            };
        }
        if let Some(e) = cause.downcast_ref::<std::io::Error>() {
            return match e.kind() {
                std::io::ErrorKind::NotFound => Failure::NotFound,
                std::io::ErrorKind::AlreadyExists => Failure::Conflict,
                _ => Failure::Integrity,
            };
        }
    }
    Failure::Internal
}

/// The catalog is locked by another process (a running cowstored, another
/// cowsnap).
pub fn is_lock_error(e: &cowstore::Error) -> bool {
    matches!(e, cowstore::Error::Catalog(_)) && e.to_string().contains("could not acquire lock")
}
