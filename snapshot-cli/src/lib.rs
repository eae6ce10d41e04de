//! cowsnap, the operator CLI: VMDK import/export, volumes, snapshots, group
//! snapshots. Not built yet: see the CLI issue.
