//! End-to-end suites for cowstore: each test drives real processes (a crash
//! victim killed with SIGKILL, later QEMU guests and S3 servers).

pub mod crash;
