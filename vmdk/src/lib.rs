//! VMDK (and OVA) reading and writing. Being built: see the CLI issue.
