//! cowvisor: a binary-translation hypervisor that boots Linux guests on disks
//! served by cowstored over vhost-user-blk. Not built yet: see the hypervisor issue.
