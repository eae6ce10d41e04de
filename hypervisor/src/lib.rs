//! cowvisor: an RV64GC machine that runs Linux guests without hardware
//! virtualization. Today: decoder ([`decode`]), the reference interpreter
//! ([`cpu`], with a decoded-block cache) and a JIT to x86-64 ([`jit`]) with soft-float
//! F/D ([`fpu`]), a user-mode ELF harness
//! ([`user`], what the conformance suite runs) and a QEMU-virt-compatible
//! machine ([`machine`]) with virtio-mmio disks on vhost-user-blk backends
//! ([`virtio`]). See docs/cowvisor.md.

pub mod bus;
pub mod cpu;
pub mod decode;
pub mod devices;
pub mod elf;
pub mod fpu;
pub mod jit;
pub mod machine;
pub mod user;
pub mod virtio;
