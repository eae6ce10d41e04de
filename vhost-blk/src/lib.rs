//! vhost-user-blk backend serving cowstore volumes to any vhost-user frontend.
//!
//! Not built yet: see the vhost-blk issue. The engine API it will sit on is
//! `cowstore::Volume` (async read/write/flush/discard with many requests in flight).
