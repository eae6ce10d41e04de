//! Fuzzes virtio-blk request parsing over untrusted guest memory: the input
//! becomes the guest's memory (descriptor table, avail ring, headers,
//! segment lists), a split virtqueue is laid over it, and every chain the
//! queue yields is parsed. Parsing must never panic, and whatever it
//! accepts must lie inside guest memory and inside the device.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_blk::request::{parse, Limits, Request, SECTOR_BYTES};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

const MEM: usize = 64 << 10;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let n = data.len().min(MEM);
    mem.write_slice(&data[..n], GuestAddress(0)).unwrap();
    let limits = Limits {
        capacity_sectors: u64::from(data[0]) * 64 + 1,
        read_only: data[1] & 1 == 1,
        seg_max: u32::from(data[2] % 8) + 1,
        size_max: 64 << 10,
        max_io_bytes: 32 << 20,
        max_discard_seg: u32::from(data[3] % 4) + 1,
        max_discard_sectors: 1 << 16,
    };
    let mut q = Queue::new(16).unwrap();
    q.set_size(16);
    // Small offsets so that short inputs already reach the rings: descriptor
    // table at 0x10 (16 x 16 bytes), avail ring at 0x110, used at 0x140.
    q.set_desc_table_address(Some(0x10), Some(0));
    q.set_avail_ring_address(Some(0x110), Some(0));
    q.set_used_ring_address(Some(0x140), Some(0));
    q.set_ready(true);
    let Ok(iter) = q.iter(&mem) else { return };
    for chain in iter.take(32) {
        let descs: Vec<Descriptor> = chain.take(limits.max_descriptors() + 1).collect();
        if let Ok(p) = parse(&descs, &mem, &limits) {
            let check = |addr: GuestAddress, len: u32| {
                assert!(mem.check_range(addr, len as usize, vm_memory::Permissions::ReadWrite));
            };
            check(p.status, 1);
            match p.request {
                Request::Read { sector, len, data } | Request::Write { sector, len, data } => {
                    assert_eq!(u64::from(len) % SECTOR_BYTES, 0);
                    assert!(sector + u64::from(len) / SECTOR_BYTES <= limits.capacity_sectors);
                    for b in data {
                        check(b.addr, b.len);
                    }
                }
                Request::GetId { data } => check(data.addr, data.len),
                Request::Discard { ranges } | Request::WriteZeroes { ranges } => {
                    assert!(!limits.read_only);
                    for r in ranges {
                        assert!(r.sector + u64::from(r.sectors) <= limits.capacity_sectors);
                    }
                }
                Request::Flush => {}
            }
        }
    }
});
