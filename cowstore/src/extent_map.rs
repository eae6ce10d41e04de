//! The extent map: guest sector ranges -> where their bytes live in the log.
//!
//! A persistent ordered map (`imbl::OrdMap`, a B-tree with structural
//! sharing) keyed by first sector. Cloning it is O(1): that is how a snapshot
//! freezes a volume's view without copying it, and how a clone starts from a
//! snapshot. Writes after a snapshot copy only the B-tree nodes they touch.
//!
//! Invariants (checked by `check_invariants` in tests):
//! - extents never overlap;
//! - every extent has `len_sectors > 0` and lies inside its record's data
//!   (`skip_sectors + len_sectors <= record_sectors`);
//! - unmapped sectors read as zeroes (discard, write-zeroes and all-zero
//!   writes simply unmap).

use imbl::OrdMap;

/// Where one mapped run of sectors lives: a slice of one log record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Segment holding the record.
    pub segment_id: u64,
    /// Byte offset of the record header inside the segment.
    pub record_offset: u32,
    /// Payload bytes stored after the header (compressed or not).
    pub stored_len: u32,
    /// crc32c of the stored payload; checked on every read.
    pub payload_crc: u32,
    /// Sectors of this run.
    pub len_sectors: u32,
    /// Sectors of the record's data before this run (runs split by
    /// overwrites point into the middle of a record).
    pub skip_sectors: u8,
    /// Sectors of data the whole record holds (1..=128).
    pub record_sectors: u8,
    /// Record flags (compression).
    pub flags: u8,
}

impl Extent {
    /// The same extent with its first `n` sectors cut off.
    fn advance(mut self, n: u32) -> Self {
        debug_assert!(n < self.len_sectors);
        self.skip_sectors += n as u8;
        self.len_sectors -= n;
        self
    }

    /// Identity of the record this extent reads from.
    pub fn record_key(&self) -> (u64, u32) {
        (self.segment_id, self.record_offset)
    }
}

/// One piece of a lookup: `len_sectors` at `lba`, mapped or a hole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub lba: u64,
    pub len_sectors: u64,
    pub extent: Option<Extent>,
}

#[derive(Clone, Debug, Default)]
pub struct ExtentMap {
    map: OrdMap<u64, Extent>,
}

impl ExtentMap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, Extent)> + '_ {
        self.map.iter().map(|(k, v)| (*k, *v))
    }

    /// Maps `[lba, lba + extent.len_sectors)` to `extent`, shadowing whatever
    /// was there.
    pub fn insert(&mut self, lba: u64, extent: Extent) {
        debug_assert!(extent.len_sectors > 0);
        self.punch(lba, lba + u64::from(extent.len_sectors));
        self.map.insert(lba, extent);
    }

    /// Unmaps `[start, end)`, splitting extents that straddle either edge.
    pub fn punch(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // An extent starting before `start` may reach into the range.
        let before = self.map.range(..start).next_back().map(|(k, v)| (*k, *v));
        if let Some((k, e)) = before {
            let e_end = k + u64::from(e.len_sectors);
            if e_end > start {
                let mut left = e;
                left.len_sectors = (start - k) as u32;
                self.map.insert(k, left);
                if e_end > end {
                    self.map.insert(end, e.advance((end - k) as u32));
                    return;
                }
            }
        }
        let inside: Vec<(u64, Extent)> =
            self.map.range(start..end).map(|(k, v)| (*k, *v)).collect();
        for (k, e) in inside {
            self.map.remove(&k);
            let e_end = k + u64::from(e.len_sectors);
            if e_end > end {
                self.map.insert(end, e.advance((end - k) as u32));
            }
        }
    }

    /// Describes `[start, end)` as consecutive pieces, holes included.
    pub fn lookup(&self, start: u64, end: u64) -> Vec<Piece> {
        let mut pieces = Vec::new();
        let mut cursor = start;
        let push_hole = |pieces: &mut Vec<Piece>, from: u64, to: u64| {
            if to > from {
                pieces.push(Piece {
                    lba: from,
                    len_sectors: to - from,
                    extent: None,
                });
            }
        };
        if let Some((k, e)) = self.map.range(..start).next_back() {
            let e_end = k + u64::from(e.len_sectors);
            if e_end > start {
                let cut = e.advance((start - k) as u32);
                let take_end = e_end.min(end);
                let mut piece_ext = cut;
                piece_ext.len_sectors = (take_end - start) as u32;
                pieces.push(Piece {
                    lba: start,
                    len_sectors: take_end - start,
                    extent: Some(piece_ext),
                });
                cursor = take_end;
            }
        }
        for (k, e) in self.map.range(start..end) {
            push_hole(&mut pieces, cursor, *k);
            let e_end = (k + u64::from(e.len_sectors)).min(end);
            let mut piece_ext = *e;
            piece_ext.len_sectors = (e_end - k) as u32;
            pieces.push(Piece {
                lba: *k,
                len_sectors: e_end - k,
                extent: Some(piece_ext),
            });
            cursor = e_end;
        }
        push_hole(&mut pieces, cursor, end);
        pieces
    }

    /// Replaces the location of every extent reading from record `from`
    /// with record `to` (the cleaner moved it). Returns how many changed.
    pub fn relocate(&mut self, moves: &std::collections::HashMap<(u64, u32), (u64, u32)>) -> usize {
        let changed: Vec<(u64, Extent)> = self
            .map
            .iter()
            .filter_map(|(k, e)| {
                moves.get(&e.record_key()).map(|&(seg, off)| {
                    let mut moved = *e;
                    moved.segment_id = seg;
                    moved.record_offset = off;
                    (*k, moved)
                })
            })
            .collect();
        let n = changed.len();
        for (k, e) in changed {
            self.map.insert(k, e);
        }
        n
    }

    /// Panics if an invariant is broken. For tests and debug assertions.
    pub fn check_invariants(&self) {
        let mut prev_end = 0u64;
        for (k, e) in self.map.iter() {
            assert!(e.len_sectors > 0, "empty extent at {k}");
            assert!(*k >= prev_end, "overlap at {k}");
            assert!(
                u32::from(e.skip_sectors) + e.len_sectors <= u32::from(e.record_sectors),
                "extent at {k} runs past its record"
            );
            prev_end = k + u64::from(e.len_sectors);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(tag: u64, sectors: u32) -> Extent {
        Extent {
            segment_id: tag,
            record_offset: 0,
            stored_len: sectors * 512,
            payload_crc: 0,
            len_sectors: sectors,
            skip_sectors: 0,
            record_sectors: sectors as u8,
            flags: 0,
        }
    }

    /// Flattens the map to one tag-and-sector-within-record per sector, the
    /// model every map test compares with.
    fn flatten(m: &ExtentMap, n: u64) -> Vec<Option<(u64, u32)>> {
        let mut v = vec![None; n as usize];
        for p in m.lookup(0, n) {
            if let Some(e) = p.extent {
                for i in 0..p.len_sectors {
                    v[(p.lba + i) as usize] =
                        Some((e.segment_id, u32::from(e.skip_sectors) + i as u32));
                }
            }
        }
        v
    }

    /// Every placement of a second extent relative to a first (before,
    /// touching, overlapping either edge, inside, covering, after) splits and
    /// shadows exactly like a per-sector model.
    #[test]
    fn splits_at_every_boundary() {
        const N: u64 = 40;
        for a_start in [8u64] {
            let a_len = 16u32;
            for b_start in 0..N - 1 {
                for b_len in 1..=(N - b_start).min(30) as u32 {
                    let mut m = ExtentMap::new();
                    m.insert(a_start, ext(1, a_len));
                    m.insert(b_start, ext(2, b_len));
                    m.check_invariants();
                    let mut model = vec![None; N as usize];
                    for i in 0..a_len {
                        model[(a_start + u64::from(i)) as usize] = Some((1, i));
                    }
                    for i in 0..b_len {
                        model[(b_start + u64::from(i)) as usize] = Some((2, i));
                    }
                    assert_eq!(
                        flatten(&m, N),
                        model,
                        "a@{a_start}+{a_len} b@{b_start}+{b_len}"
                    );
                    // Punch the same range again: it becomes a hole.
                    m.punch(b_start, b_start + u64::from(b_len));
                    m.check_invariants();
                    for i in 0..b_len {
                        model[(b_start + u64::from(i)) as usize] = None;
                    }
                    assert_eq!(flatten(&m, N), model);
                }
            }
        }
    }

    #[test]
    fn lookup_pieces_cover_range_exactly() {
        let mut m = ExtentMap::new();
        m.insert(10, ext(1, 10));
        m.insert(30, ext(2, 5));
        let pieces = m.lookup(5, 33);
        let total: u64 = pieces.iter().map(|p| p.len_sectors).sum();
        assert_eq!(total, 28);
        let mut at = 5;
        for p in &pieces {
            assert_eq!(p.lba, at);
            at += p.len_sectors;
        }
        assert_eq!(pieces[0].extent, None);
        assert_eq!(pieces[1].extent.unwrap().segment_id, 1);
        assert_eq!(pieces[3].extent.unwrap().len_sectors, 3);
        // A lookup starting inside an extent gets the skip right.
        let inner = m.lookup(13, 15);
        assert_eq!(inner.len(), 1);
        assert_eq!(inner[0].extent.unwrap().skip_sectors, 3);
        assert_eq!(inner[0].extent.unwrap().len_sectors, 2);
    }

    #[test]
    fn clone_is_isolated() {
        let mut m = ExtentMap::new();
        m.insert(0, ext(1, 8));
        let frozen = m.clone();
        m.insert(4, ext(2, 8));
        assert_eq!(frozen.len(), 1);
        assert_eq!(frozen.lookup(0, 8)[0].extent.unwrap().segment_id, 1);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn relocate_moves_all_pieces_of_a_record() {
        let mut m = ExtentMap::new();
        m.insert(0, ext(1, 16));
        m.insert(4, ext(2, 2)); // splits record 1 into two pieces
        let moves = [((1u64, 0u32), (9u64, 100u32))].into_iter().collect();
        assert_eq!(m.relocate(&moves), 2);
        let v = flatten(&m, 16);
        assert_eq!(v[0], Some((9, 0)));
        assert_eq!(v[15], Some((9, 15)));
        assert_eq!(v[4], Some((2, 0)));
    }
}
