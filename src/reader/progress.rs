//! Progress of a `read_all` as its bytes arrive.
//!
//! Each slot record has a *received* counter next to its word: the worker
//! holding the claim stores how many bytes of the current range are in
//! place after every write (a plain atomic store, no syscall); assign and
//! claim reset it. It is only progress: whether a range is done is still
//! decided by the slot word alone ("one fact travels one path").
//!
//! The counter of a range can go *down*: a worker that dies mid-range
//! leaves its count behind, and the re-run (a new generation, another
//! worker) starts again from 0. So the coordinator reports, per lane, the
//! **most it has shown so far** for the lane's current range, and only
//! increases of it; when the lane is seen `Ready`, the rest of the range
//! (its length minus what was shown). Each range therefore adds up to
//! exactly its length — never more, never a negative step — and the sum
//! over a download is exactly the bytes asked for.

use crate::shm::SlotTable;

/// Per lane: bytes of its current range already reported.
#[derive(Debug, Default)]
pub(crate) struct Shown {
    lanes: Vec<u64>,
}

impl Shown {
    /// Bytes that arrived in lanes still in flight since the last look
    /// (increases of each lane's received count, capped at its range).
    pub(crate) fn arrived(&mut self, table: &SlotTable) -> u64 {
        let slots = table.slots() as usize;
        if self.lanes.len() < slots {
            self.lanes.resize(slots, 0);
        }
        let mut new = 0;
        for (lane, shown) in self.lanes.iter_mut().enumerate().take(slots) {
            if let Some(got) = table.received_in_flight(lane as u32)
                && got > *shown
            {
                new += got - *shown;
                *shown = got;
            }
        }
        new
    }

    /// Bytes of lane `lane`'s current range already reported: a cut must
    /// not go below them, or the range and its piece would report some
    /// bytes twice.
    pub(crate) fn of(&self, lane: u32) -> u64 {
        self.lanes.get(lane as usize).copied().unwrap_or(0)
    }

    /// The lane's range finished with `bytes`: what is left to report of
    /// it. The lane starts from 0 for its next range.
    pub(crate) fn finished(&mut self, lane: u32, bytes: u64) -> u64 {
        let shown = self
            .lanes
            .get_mut(lane as usize)
            .map(std::mem::take)
            .unwrap_or(0);
        bytes.saturating_sub(shown)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::range::ByteRange;

    #[test]
    fn a_range_rerun_from_its_start_is_not_counted_twice() {
        let t = SlotTable::create(Path::new("/dev/shm"), 2, 0, 0, 10_000).unwrap();
        let mut shown = Shown::default();
        let g = t
            .assign(
                0,
                ByteRange {
                    start: 0,
                    end: 1000,
                },
            )
            .unwrap();
        assert_eq!(shown.arrived(&t), 0, "assigned, nothing arrived");
        let c = t.claim(0, g, 5).unwrap();
        t.received(&c).set(600);
        assert_eq!(shown.arrived(&t), 600);
        assert_eq!(shown.arrived(&t), 0, "nothing new");
        // The worker dies; the range is re-run from 0 by another one.
        let g2 = t.reclaim(0, g).unwrap();
        assert_eq!(shown.arrived(&t), 0, "the dead worker's count stays");
        let c2 = t.claim(0, g2, 6).unwrap();
        assert_eq!(shown.arrived(&t), 0, "the new claim starts from 0");
        t.received(&c2).set(300);
        assert_eq!(shown.arrived(&t), 0, "below what was shown");
        t.received(&c2).set(900);
        assert_eq!(shown.arrived(&t), 300, "only what passes it");
        t.received(&c2).set(1000);
        assert!(t.publish(c2, &Ok(1000), 1, 0));
        assert_eq!(shown.arrived(&t), 0, "a Ready lane is the consumer's");
        assert_eq!(shown.finished(0, 1000), 100);
        // 600 + 300 + 100: the range's length, once.
        assert!(t.release(0));
        // The lane's next range starts from 0.
        let g = t
            .assign(
                0,
                ByteRange {
                    start: 1000,
                    end: 1500,
                },
            )
            .unwrap();
        let c = t.claim(0, g, 6).unwrap();
        t.received(&c).set(200);
        assert_eq!(shown.arrived(&t), 200);
        assert_eq!(shown.finished(0, 500), 300);
    }

    #[test]
    fn a_count_past_its_range_is_capped() {
        let t = SlotTable::create(Path::new("/dev/shm"), 1, 0, 0, 10_000).unwrap();
        let mut shown = Shown::default();
        let g = t
            .assign(
                0,
                ByteRange {
                    start: 10,
                    end: 110,
                },
            )
            .unwrap();
        let c = t.claim(0, g, 5).unwrap();
        t.received(&c).set(u64::MAX);
        assert_eq!(shown.arrived(&t), 100);
        assert_eq!(shown.finished(0, 100), 0);
    }
}
