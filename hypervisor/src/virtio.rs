//! Disks: virtio-blk devices on the virtio-mmio transport (version 2 only,
//! virtio 1.2 section 4.2.2) whose device side is a vhost-user-blk backend
//! (cowstored, qemu-storage-daemon) reached over a unix socket.
//!
//! cowvisor is only the transport and the vhost-user frontend: the backend
//! reads the virtqueues and the buffers straight out of guest RAM (a shared
//! memfd passed with SET_MEM_TABLE), a guest QueueNotify becomes a write to
//! the kick eventfd, and the backend's call eventfd becomes the device's
//! PLIC line (polled by the run loop between slices). Config space reads are
//! served from a copy of the backend's config (GET_CONFIG at connect and at
//! every device reset), so a guest reading config in a loop costs neither
//! cowvisor nor the backend more than a memory read.
//!
//! Guest addresses are untrusted: the rings must lie wholly inside RAM
//! before their addresses (translated to this process's mapping, as
//! vhost-user expects) go to the backend; a bad ring puts the device in
//! DEVICE_NEEDS_RESET instead. Buffer addresses inside descriptors are the
//! backend's to check against the memory table.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use thiserror::Error;
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::bus::Ram;

/// First virtio-mmio slot (QEMU virt); slot n is at BASE + n * SLOT_SIZE.
pub const BASE: u64 = 0x1000_1000;
pub const SLOT_SIZE: u64 = 0x1000;
/// QEMU virt has 8 slots.
pub const MAX_SLOTS: usize = 8;
/// PLIC source of slot n is FIRST_IRQ + n (QEMU virt: 1..=8).
pub const FIRST_IRQ: u32 = 1;
/// Queue size offered to the driver (QEMU's vhost-user-blk default).
pub const QUEUE_NUM_MAX: u32 = 128;
/// Config space bytes asked of the backend (virtio 1.2 virtio_blk_config
/// through write_zeroes_may_unmap and padding); shorter answers are tried
/// when a backend serves less.
const CONFIG_LENS: [u32; 4] = [60, 40, 36, 8];

const MAGIC: u32 = 0x7472_6976; // "virt"
const VENDOR: u32 = 0x554d_4551; // "QEMU", as QEMU's devices say
const DEVICE_ID_BLOCK: u32 = 2;

// Device status bits (virtio 1.2 2.1).
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_NEEDS_RESET: u32 = 0x40;

const INT_USED_BUFFER: u32 = 1;
const INT_CONFIG_CHANGE: u32 = 2;

/// Feature bits passed through from the backend to the driver: the
/// virtio-blk ones this transport can carry (not MQ: one queue; not
/// CONFIG_WCE: config writes are not forwarded), indirect descriptors,
/// event index and VERSION_1. Packed rings, ACCESS_PLATFORM and the rest are
/// withheld.
const PASSED_FEATURES: u64 = (1 << 1) // SIZE_MAX
    | (1 << 2) // SEG_MAX
    | (1 << 4) // GEOMETRY
    | (1 << 5) // RO
    | (1 << 6) // BLK_SIZE
    | (1 << 9) // FLUSH
    | (1 << 10) // TOPOLOGY
    | (1 << 13) // DISCARD
    | (1 << 14) // WRITE_ZEROES
    | (1 << 28) // RING_INDIRECT_DESC
    | (1 << 29) // RING_EVENT_IDX
    | VERSION_1;
const VERSION_1: u64 = 1 << 32;
const EVENT_IDX: u64 = 1 << 29;
/// VHOST_USER_F_PROTOCOL_FEATURES, a vhost-user bit in the feature word.
const PROTOCOL_FEATURES: u64 = 1 << 30;

#[derive(Debug, Error)]
pub enum VirtioError {
    #[error("vhost-user {}: {what}: {source}", path.display())]
    Vhost {
        path: PathBuf,
        what: &'static str,
        source: vhost::Error,
    },
    #[error("vhost-user {}: {msg}", path.display())]
    Backend { path: PathBuf, msg: String },
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("guest RAM is not a shared memfd (vhost-user needs one)")]
    NotShared,
    #[error("at most {MAX_SLOTS} disks")]
    TooMany,
}

/// The vhost-user connection of one disk.
pub struct VhostUserBlk {
    path: PathBuf,
    frontend: Frontend,
    /// Virtio features the backend offers (incl. vhost-user bit 30).
    backend_features: u64,
    config_len: u32,
    /// The backend's config space as of the last connect or device reset.
    config_cache: Vec<u8>,
    kick: EventFd,
    call: EventFd,
    /// Guest-physical RAM base, its length, and its address in this process.
    ram_base: u64,
    ram_len: u64,
    ram_host: u64,
}

impl VhostUserBlk {
    /// Connects to the backend at `path`, negotiates the protocol, sends the
    /// memory table (all of `ram`) and reads the config space length.
    pub fn connect(path: &Path, ram: &Ram) -> Result<Self, VirtioError> {
        let shared = ram.bytes.shared().ok_or(VirtioError::NotShared)?;
        let err = |what: &'static str| {
            let path = path.to_path_buf();
            move |source| VirtioError::Vhost { path, what, source }
        };
        let mut frontend = Frontend::connect(path, 1).map_err(err("connect"))?;
        frontend.set_owner().map_err(err("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(err("GET_FEATURES"))?;
        if backend_features & VERSION_1 == 0 {
            return Err(VirtioError::Backend {
                path: path.to_path_buf(),
                msg: "backend does not offer VIRTIO_F_VERSION_1".into(),
            });
        }
        if backend_features & PROTOCOL_FEATURES == 0 {
            return Err(VirtioError::Backend {
                path: path.to_path_buf(),
                msg: "backend offers no protocol features (GET_CONFIG needs them)".into(),
            });
        }
        let offered = frontend
            .get_protocol_features()
            .map_err(err("GET_PROTOCOL_FEATURES"))?;
        if !offered.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(VirtioError::Backend {
                path: path.to_path_buf(),
                msg: "backend lacks the CONFIG protocol feature".into(),
            });
        }
        let acked =
            offered & (VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::REPLY_ACK);
        frontend
            .set_protocol_features(acked)
            .map_err(err("SET_PROTOCOL_FEATURES"))?;
        if acked.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // Every request without a reply of its own is then acknowledged,
            // so a backend's refusal surfaces at the request that caused it.
            frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: ram.base,
            memory_size: shared.len() as u64,
            userspace_addr: shared.host_addr(),
            mmap_offset: 0,
            mmap_handle: shared.fd().as_raw_fd(),
        };
        frontend
            .set_mem_table(&[region])
            .map_err(err("SET_MEM_TABLE"))?;
        let mut blk = Self {
            path: path.to_path_buf(),
            frontend,
            backend_features,
            config_len: 0,
            config_cache: Vec::new(),
            kick: EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?,
            call: EventFd::new(EFD_NONBLOCK).map_err(VirtioError::EventFd)?,
            ram_base: ram.base,
            ram_len: shared.len() as u64,
            ram_host: shared.host_addr(),
        };
        let mut last = None;
        for len in CONFIG_LENS {
            match blk.read_config_raw(len) {
                Ok(data) => {
                    blk.config_len = len;
                    blk.config_cache = data;
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        if blk.config_len == 0 {
            return Err(last.unwrap_or(VirtioError::Backend {
                path: path.to_path_buf(),
                msg: "no config space".into(),
            }));
        }
        Ok(blk)
    }

    fn read_config_raw(&mut self, len: u32) -> Result<Vec<u8>, VirtioError> {
        let buf = vec![0u8; len as usize];
        let (_, data) = self
            .frontend
            .get_config(0, len, VhostUserConfigFlags::empty(), &buf)
            .map_err(|source| VirtioError::Vhost {
                path: self.path.clone(),
                what: "GET_CONFIG",
                source,
            })?;
        Ok(data)
    }

    /// The backend's config space as it is now.
    pub fn config(&mut self) -> Result<Vec<u8>, VirtioError> {
        self.read_config_raw(self.config_len)
    }

    /// Host address of guest-physical `[gpa, gpa+len)`, when wholly in RAM.
    fn host_addr(&self, gpa: u64, len: u64) -> Option<u64> {
        let off = gpa.checked_sub(self.ram_base)?;
        (off.checked_add(len)? <= self.ram_len).then_some(self.ram_host + off)
    }

    fn vhost<T>(&self, what: &'static str, r: vhost::Result<T>) -> Result<T, VirtioError> {
        r.map_err(|source| VirtioError::Vhost {
            path: self.path.clone(),
            what,
            source,
        })
    }

    /// Starts queue 0 with the driver's features and ring addresses.
    fn start(&mut self, features: u64, q: &Queue) -> Result<(), VirtioError> {
        let proto = self.backend_features & PROTOCOL_FEATURES;
        let r = self.frontend.set_features(features | proto);
        self.vhost("SET_FEATURES", r)?;
        let r = self.frontend.set_vring_num(0, q.num as u16);
        self.vhost("SET_VRING_NUM", r)?;
        let num = u64::from(q.num);
        let bad = || VirtioError::Backend {
            path: self.path.clone(),
            msg: "ring outside RAM".into(),
        };
        let cfg = VringConfigData {
            queue_max_size: QUEUE_NUM_MAX as u16,
            queue_size: q.num as u16,
            flags: 0,
            desc_table_addr: self.host_addr(q.desc, 16 * num).ok_or_else(bad)?,
            used_ring_addr: self.host_addr(q.device, 6 + 8 * num).ok_or_else(bad)?,
            avail_ring_addr: self.host_addr(q.driver, 6 + 2 * num).ok_or_else(bad)?,
            log_addr: None,
        };
        let r = self.frontend.set_vring_addr(0, &cfg);
        self.vhost("SET_VRING_ADDR", r)?;
        let r = self.frontend.set_vring_base(0, 0);
        self.vhost("SET_VRING_BASE", r)?;
        let r = self.frontend.set_vring_call(0, &self.call);
        self.vhost("SET_VRING_CALL", r)?;
        let r = self.frontend.set_vring_kick(0, &self.kick);
        self.vhost("SET_VRING_KICK", r)?;
        if proto != 0 {
            let r = self.frontend.set_vring_enable(0, true);
            self.vhost("SET_VRING_ENABLE", r)?;
        }
        Ok(())
    }

    /// Stops queue 0 (GET_VRING_BASE stops a vhost-user ring).
    fn stop(&mut self) -> Result<(), VirtioError> {
        if self.backend_features & PROTOCOL_FEATURES != 0 {
            let r = self.frontend.set_vring_enable(0, false);
            self.vhost("SET_VRING_ENABLE", r)?;
        }
        let r = self.frontend.get_vring_base(0);
        self.vhost("GET_VRING_BASE", r).map(|_| ())
    }
}

/// Queue registers as the driver programmed them.
#[derive(Debug, Default, Clone)]
struct Queue {
    num: u32,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

/// One virtio-mmio slot holding a vhost-user-blk disk.
pub struct VirtioMmio {
    pub slot: usize,
    blk: VhostUserBlk,
    device_features_sel: u32,
    driver_features: u64,
    driver_features_sel: u32,
    queue_sel: u32,
    queue: Queue,
    interrupt_status: u32,
    status: u32,
    started: bool,
    /// Backend completion signals taken and guest kicks forwarded (reports).
    calls: u64,
    kicks: u64,
    /// Times the device went to DEVICE_NEEDS_RESET (reports).
    failures: u64,
}

fn set_half(word: &mut u64, high: bool, value: u32) {
    if high {
        *word = (*word & 0xffff_ffff) | (u64::from(value) << 32);
    } else {
        *word = (*word & !0xffff_ffff) | u64::from(value);
    }
}

impl VirtioMmio {
    pub fn new(slot: usize, blk: VhostUserBlk) -> Result<Self, VirtioError> {
        if slot >= MAX_SLOTS {
            return Err(VirtioError::TooMany);
        }
        Ok(Self {
            slot,
            blk,
            device_features_sel: 0,
            driver_features: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            queue: Queue::default(),
            interrupt_status: 0,
            status: 0,
            started: false,
            calls: 0,
            kicks: 0,
            failures: 0,
        })
    }

    pub fn base(&self) -> u64 {
        BASE + self.slot as u64 * SLOT_SIZE
    }

    pub fn irq(&self) -> u32 {
        FIRST_IRQ + self.slot as u32
    }

    /// The features offered to the driver.
    fn device_features(&self) -> u64 {
        self.blk.backend_features & PASSED_FEATURES
    }

    /// Level of the PLIC line.
    pub fn irq_level(&self) -> bool {
        self.interrupt_status != 0
    }

    /// Takes a pending backend call (used buffers) into InterruptStatus;
    /// true when the line changed.
    pub fn poll_call(&mut self) -> bool {
        if self.blk.call.read().is_err() {
            return false;
        }
        self.calls += 1;
        if self.interrupt_status & INT_USED_BUFFER == 0 {
            self.interrupt_status |= INT_USED_BUFFER;
            return true;
        }
        false
    }

    /// Backend completion signals taken so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// The call eventfd, for a wait in poll(2) while the machine idles.
    pub fn call_fd(&self) -> i32 {
        self.blk.call.as_raw_fd()
    }

    /// Requests the driver made available that the backend has not yet
    /// completed (avail.idx != used.idx in guest RAM).
    pub fn in_flight(&self, ram: &Ram) -> bool {
        if !self.started {
            return false;
        }
        let avail = ram.load(self.queue.driver.wrapping_add(2), 2);
        let used = ram.load(self.queue.device.wrapping_add(2), 2);
        matches!((avail, used), (Some(a), Some(u)) if a != u)
    }

    /// One line of transport and ring state, for stop reports.
    pub fn describe(&self, ram: &Ram) -> String {
        let q = &self.queue;
        let num = u64::from(q.num);
        let rd = |a: u64| ram.load(a, 2).map_or("-".to_string(), |v| v.to_string());
        format!(
            "disk {} ({}): status {:#x} int {:#x} started {} num {} avail.idx {} used.idx {} \
             used_event {} avail_event {} avail.flags {} used.flags {} calls {} kicks {} \
             failures {}",
            self.slot,
            self.blk.path.display(),
            self.status,
            self.interrupt_status,
            self.started,
            q.num,
            rd(q.driver.wrapping_add(2)),
            rd(q.device.wrapping_add(2)),
            rd(q.driver.wrapping_add(4 + 2 * num)),
            rd(q.device.wrapping_add(4 + 8 * num)),
            rd(q.driver),
            rd(q.device),
            self.calls,
            self.kicks,
            self.failures,
        )
    }

    fn fail(&mut self, why: &str) {
        /// A guest repeating its mistake gets this many messages.
        const MAX_MESSAGES: u64 = 8;
        self.failures += 1;
        if self.failures <= MAX_MESSAGES {
            eprintln!(
                "cowvisor: virtio disk {} ({}): {why}; device needs reset{}",
                self.slot,
                self.blk.path.display(),
                if self.failures == MAX_MESSAGES {
                    " (further failures are counted, not printed)"
                } else {
                    ""
                }
            );
        }
        self.status |= STATUS_NEEDS_RESET;
        self.interrupt_status |= INT_CONFIG_CHANGE;
    }

    /// Reads a register or config bytes; None for accesses the transport
    /// does not define (the machine reports them as faults). Never talks to
    /// the backend: config comes from the copy taken at the last reset.
    pub fn load(&mut self, off: u64, size: u8) -> Option<u64> {
        if off >= 0x100 {
            let start = usize::try_from(off - 0x100).ok()?;
            let end = start.checked_add(usize::from(size))?;
            // Beyond the backend's config (or straddling its end): zero bytes.
            let mut v = [0u8; 8];
            for (i, byte) in v.iter_mut().take(end - start).enumerate() {
                *byte = self.blk.config_cache.get(start + i).copied().unwrap_or(0);
            }
            return Some(u64::from_le_bytes(v));
        }
        if size != 4 {
            return None;
        }
        let q = &self.queue;
        let qsel0 = self.queue_sel == 0;
        let v: u32 = match off {
            0x000 => MAGIC,
            0x004 => 2,
            0x008 => DEVICE_ID_BLOCK,
            0x00c => VENDOR,
            0x010 => match self.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            0x034 if qsel0 => QUEUE_NUM_MAX,
            0x038 if qsel0 => q.num,
            0x044 => u32::from(qsel0 && q.ready),
            0x060 => self.interrupt_status,
            0x070 => self.status,
            0x080 if qsel0 => q.desc as u32,
            0x084 if qsel0 => (q.desc >> 32) as u32,
            0x090 if qsel0 => q.driver as u32,
            0x094 if qsel0 => (q.driver >> 32) as u32,
            0x0a0 if qsel0 => q.device as u32,
            0x0a4 if qsel0 => (q.device >> 32) as u32,
            // Shared memory regions: none (length reads as all ones).
            0x0b0 | 0x0b4 => u32::MAX,
            0x0fc => 0, // ConfigGeneration: the config never changes under the driver
            _ => 0,
        };
        Some(u64::from(v))
    }

    pub fn store(&mut self, off: u64, size: u8, value: u64) -> Option<()> {
        if off >= 0x100 {
            // Config writes (only CONFIG_WCE's writeback, withheld) are dropped.
            return Some(());
        }
        if size != 4 {
            return None;
        }
        let v = value as u32;
        let qsel0 = self.queue_sel == 0;
        let writable = !self.started;
        match off {
            0x014 => self.device_features_sel = v,
            0x020 => {
                match self.driver_features_sel {
                    0 => set_half(&mut self.driver_features, false, v),
                    1 => set_half(&mut self.driver_features, true, v),
                    _ => {}
                };
            }
            0x024 => self.driver_features_sel = v,
            0x030 => self.queue_sel = v,
            0x038 if qsel0 && writable => self.queue.num = v,
            0x044 if qsel0 && writable => self.queue.ready = v & 1 != 0,
            // Kick (queue 0 only): the backend reads the ring itself.
            0x050 if v == 0 && self.started => {
                self.kicks += 1;
                if let Err(e) = self.blk.kick.write(1) {
                    self.fail(&format!("kick: {e}"));
                }
            }
            0x064 => self.interrupt_status &= !v,
            0x070 => self.set_status(v),
            0x080 if qsel0 && writable => set_half(&mut self.queue.desc, false, v),
            0x084 if qsel0 && writable => set_half(&mut self.queue.desc, true, v),
            0x090 if qsel0 && writable => set_half(&mut self.queue.driver, false, v),
            0x094 if qsel0 && writable => set_half(&mut self.queue.driver, true, v),
            0x0a0 if qsel0 && writable => set_half(&mut self.queue.device, false, v),
            0x0a4 if qsel0 && writable => set_half(&mut self.queue.device, true, v),
            _ => {}
        }
        Some(())
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let mut v = v;
        if v & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            // Only features we offered, and VERSION_1 (no legacy drivers).
            let f = self.driver_features;
            if f & !self.device_features() != 0 || f & VERSION_1 == 0 {
                v &= !STATUS_FEATURES_OK;
            }
        }
        let starting = v & STATUS_DRIVER_OK != 0 && self.status & STATUS_DRIVER_OK == 0;
        self.status = v | (self.status & STATUS_NEEDS_RESET);
        if starting && self.status & STATUS_NEEDS_RESET == 0 {
            self.start();
        }
    }

    fn start(&mut self) {
        let q = self.queue.clone();
        if !q.ready {
            return;
        }
        if q.num == 0 || q.num > QUEUE_NUM_MAX || !q.num.is_power_of_two() {
            return self.fail(&format!(
                "queue size {} is not a power of two <= 128",
                q.num
            ));
        }
        let num = u64::from(q.num);
        let event = if self.driver_features & EVENT_IDX != 0 {
            2
        } else {
            0
        };
        let rings = [
            ("descriptor table", q.desc, 16 * num, 16),
            ("available ring", q.driver, 4 + 2 * num + event, 2),
            ("used ring", q.device, 4 + 8 * num + event, 4),
        ];
        for (what, addr, len, align) in rings {
            if addr % align != 0 || self.blk.host_addr(addr, len).is_none() {
                return self.fail(&format!(
                    "{what} at {addr:#x} ({len} bytes) is misaligned or outside RAM"
                ));
            }
        }
        let features = self.driver_features;
        match self.blk.start(features, &q) {
            Ok(()) => self.started = true,
            Err(e) => self.fail(&format!("starting the queue: {e}")),
        }
    }

    fn reset(&mut self) {
        let was_used = self.status != 0;
        if self.started {
            if let Err(e) = self.blk.stop() {
                eprintln!(
                    "cowvisor: virtio disk {}: stopping the queue: {e}",
                    self.slot
                );
            }
            // A call the backend made before it stopped belongs to the old ring.
            let _ = self.blk.call.read();
        }
        self.started = false;
        self.status = 0;
        self.interrupt_status = 0;
        // The driver reads config after a reset (probe): take a fresh copy,
        // so a volume resized while the guest runs shows at its next probe.
        // (Not on a reset of a device already reset: a guest writing 0 in a
        // loop costs the backend nothing.)
        if was_used {
            match self.blk.config() {
                Ok(c) => self.blk.config_cache = c,
                Err(e) => self.fail(&format!("config read: {e}")),
            }
        }
        self.queue = Queue::default();
        self.driver_features = 0;
        self.driver_features_sel = 0;
        self.device_features_sel = 0;
        self.queue_sel = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_half_sets_one_half() {
        let mut w = 0x1111_2222_3333_4444u64;
        set_half(&mut w, false, 0xaaaa_bbbb);
        assert_eq!(w, 0x1111_2222_aaaa_bbbb);
        set_half(&mut w, true, 0xcccc_dddd);
        assert_eq!(w, 0xcccc_dddd_aaaa_bbbb);
    }

    #[test]
    fn heap_ram_cannot_back_a_disk() {
        let ram = Ram::new(0x8000_0000, 1 << 20);
        let r = VhostUserBlk::connect(Path::new("/nonexistent.sock"), &ram);
        assert!(matches!(r, Err(VirtioError::NotShared)));
    }
}
