//! Devices of the QEMU-'virt'-compatible machine: CLINT, PLIC, NS16550A UART
//! and the SiFive test finisher (poweroff/reset).

use std::io::Write;

/// Core-local interruptor: software interrupts and the machine timer.
#[derive(Debug)]
pub struct Clint {
    pub msip: Vec<bool>,
    pub mtimecmp: Vec<u64>,
}

impl Clint {
    pub const BASE: u64 = 0x200_0000;
    pub const SIZE: u64 = 0x1_0000;

    pub fn new(harts: usize) -> Self {
        Self {
            msip: vec![false; harts],
            mtimecmp: vec![u64::MAX; harts],
        }
    }

    /// Reads at `off`; `mtime` is the machine's current time.
    pub fn load(&self, off: u64, size: u8, mtime: u64) -> Option<u64> {
        let (reg, shift) = match off {
            0..=0x3fff => {
                let h = usize::try_from(off / 4).ok()?;
                return Some(u64::from(*self.msip.get(h)?));
            }
            0x4000..=0xbff7 => {
                let h = usize::try_from((off - 0x4000) / 8).ok()?;
                (*self.mtimecmp.get(h)?, (off & 7) * 8)
            }
            0xbff8..=0xbfff => (mtime, (off & 7) * 8),
            _ => return None,
        };
        Some(truncate(reg >> shift, size))
    }

    /// Writes at `off`. Writes to mtime are ignored (time is virtual and
    /// monotonic); returns whether interrupt state may have changed.
    pub fn store(&mut self, off: u64, size: u8, value: u64) -> Option<()> {
        match off {
            0..=0x3fff => {
                let h = usize::try_from(off / 4).ok()?;
                *self.msip.get_mut(h)? = value & 1 != 0;
            }
            0x4000..=0xbff7 => {
                let h = usize::try_from((off - 0x4000) / 8).ok()?;
                let cmp = self.mtimecmp.get_mut(h)?;
                *cmp = merge(*cmp, (off & 7) * 8, size, value);
            }
            0xbff8..=0xbfff => {}
            _ => return None,
        }
        Some(())
    }
}

fn truncate(v: u64, size: u8) -> u64 {
    if size >= 8 {
        v
    } else {
        v & ((1u64 << (8 * u32::from(size))) - 1)
    }
}

/// Replaces `size` bytes at bit offset `shift` of `old` with `value`.
fn merge(old: u64, shift: u64, size: u8, value: u64) -> u64 {
    let mask = if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * u32::from(size))) - 1
    } << shift;
    (old & !mask) | ((value << shift) & mask)
}

/// Platform-level interrupt controller: 31 sources, two contexts per hart
/// (M then S), level-triggered like QEMU's.
#[derive(Debug)]
pub struct Plic {
    priority: [u32; 32],
    pending: u32,
    /// Sources claimed and not yet completed; they do not pend again until then.
    claimed: u32,
    enable: Vec<u32>,
    threshold: Vec<u32>,
    /// Claims answered per source (index 0: claims that found nothing),
    /// for stop reports.
    pub claims: [u64; 32],
}

impl Plic {
    pub const BASE: u64 = 0xc00_0000;
    pub const SIZE: u64 = 0x60_0000;
    pub const SOURCES: u32 = 31;

    pub fn new(harts: usize) -> Self {
        Self {
            priority: [0; 32],
            pending: 0,
            claimed: 0,
            enable: vec![0; 2 * harts],
            threshold: vec![0; 2 * harts],
            claims: [0; 32],
        }
    }

    /// Device interrupt lines (bit n = source n). Level-triggered: a source
    /// is pending while its line is high, except between its claim and its
    /// completion. A line that drops before the claim is never delivered,
    /// so drivers see no spurious interrupts.
    pub fn set_lines(&mut self, lines: u32) {
        self.pending = lines & !self.claimed & !1;
    }

    fn best(&self, ctx: usize) -> Option<u32> {
        let cand = self.pending & self.enable[ctx];
        let mut best: Option<(u32, u32)> = None;
        for src in 1..=Self::SOURCES {
            if cand & (1 << src) != 0 {
                let p = self.priority[src as usize];
                if p > self.threshold[ctx] && best.is_none_or(|(_, bp)| p > bp) {
                    best = Some((src, p));
                }
            }
        }
        best.map(|(s, _)| s)
    }

    /// Sources pending now and sources claimed but not completed (bit n =
    /// source n), for stop reports.
    pub fn pending(&self) -> u32 {
        self.pending
    }
    pub fn claimed(&self) -> u32 {
        self.claimed
    }

    /// Whether context `ctx` has an interrupt to take.
    pub fn irq(&self, ctx: usize) -> bool {
        ctx < self.enable.len() && self.best(ctx).is_some()
    }

    pub fn load(&mut self, off: u64) -> Option<u64> {
        Some(u64::from(match off {
            0..=0x7f => self.priority[(off / 4) as usize],
            0x1000 => self.pending,
            0x1004..=0x107f => 0,
            0x2000..=0x1f_ffff => {
                let ctx = usize::try_from((off - 0x2000) / 0x80).ok()?;
                if (off - 0x2000) & 0x7f == 0 {
                    *self.enable.get(ctx)?
                } else {
                    0
                }
            }
            0x20_0000..=0x5f_ffff => {
                let ctx = usize::try_from((off - 0x20_0000) / 0x1000).ok()?;
                match off & 0xfff {
                    0 => *self.threshold.get(ctx)?,
                    4 => {
                        let _ = self.threshold.get(ctx)?;
                        match self.best(ctx) {
                            Some(src) => {
                                self.pending &= !(1 << src);
                                self.claimed |= 1 << src;
                                self.claims[src as usize] += 1;
                                src
                            }
                            None => {
                                self.claims[0] += 1;
                                0
                            }
                        }
                    }
                    _ => 0,
                }
            }
            _ => return None,
        }))
    }

    pub fn store(&mut self, off: u64, value: u64) -> Option<()> {
        let v = value as u32;
        match off {
            0..=0x7f => {
                if off >= 4 {
                    self.priority[(off / 4) as usize] = v & 7;
                }
            }
            0x1000..=0x107f => {}
            0x2000..=0x1f_ffff => {
                let ctx = usize::try_from((off - 0x2000) / 0x80).ok()?;
                if (off - 0x2000) & 0x7f == 0 {
                    *self.enable.get_mut(ctx)? = v & !1;
                }
            }
            0x20_0000..=0x5f_ffff => {
                let ctx = usize::try_from((off - 0x20_0000) / 0x1000).ok()?;
                match off & 0xfff {
                    0 => *self.threshold.get_mut(ctx)? = v & 7,
                    4 => {
                        let _ = self.threshold.get(ctx)?;
                        if (1..=Self::SOURCES).contains(&v) {
                            self.claimed &= !(1 << v);
                        }
                    }
                    _ => {}
                }
            }
            _ => return None,
        }
        Some(())
    }
}

/// NS16550A UART: transmit goes straight to the console sink; nothing is
/// received yet (the guest sees an idle line).
pub struct Uart {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    /// THR-empty interrupt pending (set when the transmitter empties or
    /// THRE interrupts get enabled; cleared by reading IIR).
    thre_ip: bool,
    out: Box<dyn Write + Send>,
    /// Everything transmitted, kept when `capture` is on (tests, reports).
    pub captured: Vec<u8>,
    pub capture: bool,
    /// Console input, fed by a reader thread; None when there is none.
    input: Option<std::sync::mpsc::Receiver<u8>>,
    /// Received bytes not yet read by the guest (bounded by RX_BUFFER_BYTES;
    /// the reader thread waits in the channel beyond that).
    rx: std::collections::VecDeque<u8>,
    /// Bytes written since the last flush (a prompt has no newline).
    unflushed: bool,
}

/// Receive buffer of the UART model (a real 16550's FIFO holds 16).
const RX_BUFFER_BYTES: usize = 4096;

impl std::fmt::Debug for Uart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uart")
            .field("ier", &self.ier)
            .field("lcr", &self.lcr)
            .field("thre_ip", &self.thre_ip)
            .field("rx", &self.rx.len())
            .finish()
    }
}

/// Bytes of console output kept in memory at most (the tail is kept).
const CAPTURE_LIMIT_BYTES: usize = 4 << 20;

impl Uart {
    pub const BASE: u64 = 0x1000_0000;
    pub const SIZE: u64 = 0x100;
    pub const IRQ: u32 = 10;

    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            ier: 0,
            lcr: 0,
            mcr: 0,
            scr: 0,
            dll: 0,
            dlm: 0,
            thre_ip: false,
            out,
            captured: Vec::new(),
            capture: false,
            input: None,
            rx: std::collections::VecDeque::new(),
            unflushed: false,
        }
    }

    /// Connects console input: bytes sent on the channel arrive on the line.
    pub fn set_input(&mut self, input: std::sync::mpsc::Receiver<u8>) {
        self.input = Some(input);
    }

    /// True while an input source is connected (it may deliver more bytes).
    pub fn input_open(&self) -> bool {
        self.input.is_some()
    }

    /// Moves arrived input into the receive buffer.
    pub fn poll_input(&mut self) {
        let Some(rx) = &self.input else { return };
        while self.rx.len() < RX_BUFFER_BYTES {
            match rx.try_recv() {
                Ok(b) => self.rx.push_back(b),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.input = None;
                    break;
                }
            }
        }
    }

    fn rx_irq(&self) -> bool {
        self.ier & 1 != 0 && !self.rx.is_empty()
    }

    pub fn irq(&self) -> bool {
        self.rx_irq() || (self.ier & 2 != 0 && self.thre_ip)
    }

    pub fn load(&mut self, off: u64) -> Option<u64> {
        let dlab = self.lcr & 0x80 != 0;
        Some(u64::from(match off {
            0 if dlab => self.dll,
            0 => self.rx.pop_front().unwrap_or(0),
            1 if dlab => self.dlm,
            1 => self.ier,
            2 => {
                // FIFOs enabled (0xc0); by priority: received data (0x4),
                // THR empty (0x2, cleared by this read), none (0x1).
                if self.rx_irq() {
                    0xc4
                } else if self.irq() {
                    self.thre_ip = false;
                    0xc2
                } else {
                    0xc1
                }
            }
            3 => self.lcr,
            4 => self.mcr,
            // THR empty, transmitter empty, data ready when input waits.
            5 => 0x60 | u8::from(!self.rx.is_empty()),
            6 => 0xb0, // DCD, DSR, CTS
            7 => self.scr,
            _ => return None,
        }))
    }

    pub fn store(&mut self, off: u64, value: u64) -> Option<()> {
        let v = value as u8;
        let dlab = self.lcr & 0x80 != 0;
        match off {
            0 if dlab => self.dll = v,
            0 => {
                // Console output is best effort: a closed stdout must not
                // stop the guest.
                let _ = self.out.write_all(&[v]);
                if v == b'\n' {
                    let _ = self.out.flush();
                    self.unflushed = false;
                } else {
                    self.unflushed = true;
                }
                if self.capture {
                    if self.captured.len() >= CAPTURE_LIMIT_BYTES {
                        self.captured.drain(..CAPTURE_LIMIT_BYTES / 2);
                    }
                    self.captured.push(v);
                }
                self.thre_ip = true;
            }
            1 if dlab => self.dlm = v,
            1 => {
                if v & 2 != 0 && self.ier & 2 == 0 {
                    self.thre_ip = true;
                }
                self.ier = v & 0x0f;
            }
            2 => {}
            3 => self.lcr = v,
            4 => self.mcr = v,
            5 | 6 => {}
            7 => self.scr = v,
            _ => return None,
        }
        Some(())
    }

    pub fn flush(&mut self) {
        let _ = self.out.flush();
        self.unflushed = false;
    }

    /// Flushes output that is not newline-terminated yet (prompts).
    pub fn flush_partial(&mut self) {
        if self.unflushed {
            self.flush();
        }
    }
}

/// What the guest asked for through the test finisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// Poweroff with status (0x5555 -> 0, 0x3333 -> code from the upper half).
    Off(u32),
    Reset,
}

/// The SiFive test device at 0x100000 (QEMU virt's poweroff/reset).
#[derive(Debug, Default)]
pub struct TestFinisher;

impl TestFinisher {
    pub const BASE: u64 = 0x10_0000;
    pub const SIZE: u64 = 0x1000;

    pub fn store(&self, off: u64, value: u64) -> Option<Option<Power>> {
        if off != 0 {
            return Some(None);
        }
        let v = value as u32;
        Some(match v & 0xffff {
            0x5555 => Some(Power::Off(0)),
            0x3333 => Some(Power::Off((v >> 16).max(1))),
            0x7777 => Some(Power::Reset),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plic_claim_complete_cycle() {
        let mut p = Plic::new(1);
        p.store(4 * 10, 1).unwrap(); // priority of source 10
        p.store(0x2080, 1 << 10).unwrap(); // enable for context 1 (S)
        p.set_lines(1 << 10);
        assert!(p.irq(1));
        assert!(!p.irq(0));
        assert_eq!(p.load(0x20_1004).unwrap(), 10); // claim
        assert!(!p.irq(1));
        p.set_lines(1 << 10); // line still high: not re-pended while claimed
        assert!(!p.irq(1));
        p.store(0x20_1004, 10).unwrap(); // complete
        p.set_lines(1 << 10);
        assert!(p.irq(1));
        p.set_lines(0); // the line dropped before a claim: nothing to take
        assert!(!p.irq(1));
        assert_eq!(p.load(0x20_1004).unwrap(), 0);
        p.set_lines(1 << 10);
        p.store(0x20_1000, 1).unwrap(); // threshold masks priority 1
        assert!(!p.irq(1));
    }

    #[test]
    fn clint_timer_compare_halves() {
        let mut c = Clint::new(2);
        c.store(0x4008, 4, 0x1234).unwrap();
        c.store(0x400c, 4, 0).unwrap();
        assert_eq!(c.mtimecmp[1], 0x1234);
        assert_eq!(c.load(0xbff8, 8, 99).unwrap(), 99);
        assert_eq!(c.load(0xbffc, 4, 1 << 33).unwrap(), 2);
    }

    #[test]
    fn finisher_codes() {
        let t = TestFinisher;
        assert_eq!(t.store(0, 0x5555).unwrap(), Some(Power::Off(0)));
        assert_eq!(t.store(0, (3 << 16) | 0x3333).unwrap(), Some(Power::Off(3)));
        assert_eq!(t.store(0, 0x7777).unwrap(), Some(Power::Reset));
        assert_eq!(t.store(0, 0x1234).unwrap(), None);
    }
}
