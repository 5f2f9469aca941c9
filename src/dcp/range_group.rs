//! Coalescing item ranges into range groups.
//!
//! Input: the byte ranges of the items one file must deliver, sorted by
//! start. Output: groups, each one request, each holding the items it
//! covers. Two neighbours share a group when the gap between them is at
//! most `max_gap_size` bytes: fetching a small gap costs less than a second
//! request, a large one more.
//!
//! * `MaxGap::Bytes(0)` joins touching ranges but never bridges a gap;
//! * `MaxGap::Unbounded` joins everything into one group;
//! * zero-length ranges are dropped (they need no byte);
//! * unsorted or overlapping ranges are an error naming both ranges, and so
//!   is a list without any byte to fetch.

use crate::error::{Error, Result};
use crate::range::ByteRange;

/// Default largest gap bridged inside one group: 32 MiB, the S3 connector's
/// default — below it, one longer request beats two requests.
pub const DEFAULT_MAX_GAP_SIZE: u64 = 32 << 20;

/// The byte range of one storage item in a file: `[start, end)`. The
/// crate's one range type; messages about items name them in interval
/// notation ([`ByteRange::interval`]).
pub type ItemRange = ByteRange;

/// Ranges fetched with one request: `[start, end)` covers every item in
/// `items` (sorted, disjoint) and the gaps between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeGroup {
    /// First byte (the first item's start).
    pub start: u64,
    /// One past the last byte (the last item's end).
    pub end: u64,
    /// The items inside, in order.
    pub items: Vec<ItemRange>,
}

impl RangeGroup {
    /// Bytes the request fetches.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the group fetches nothing (never true for groups made by
    /// [`coalesce`]).
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Bytes fetched that no item needs.
    pub fn gap_bytes(&self) -> u64 {
        self.len() - self.items.iter().map(ItemRange::len).sum::<u64>()
    }
}

/// The largest gap bridged inside one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxGap {
    /// At most this many bytes (0: touching ranges only).
    Bytes(u64),
    /// Any gap: one group per file.
    Unbounded,
}

impl Default for MaxGap {
    fn default() -> Self {
        MaxGap::Bytes(DEFAULT_MAX_GAP_SIZE)
    }
}

impl MaxGap {
    fn bridges(&self, gap: u64) -> bool {
        match self {
            MaxGap::Bytes(max) => gap <= *max,
            MaxGap::Unbounded => true,
        }
    }
}

/// Coalesces `ranges` (sorted by start, not overlapping) into groups.
///
/// # Errors
/// [`Error::InvalidRanges`] naming both ranges when one starts before the
/// previous one ends (unsorted or overlapping), or when no range has a byte.
///
/// ```
/// use shmfetch::dcp::{coalesce, ItemRange, MaxGap};
/// let r = |s, e| ItemRange { start: s, end: e };
/// let groups = coalesce(&[r(0, 10), r(12, 20), r(100, 110)], MaxGap::Bytes(5)).unwrap();
/// assert_eq!(groups.len(), 2);
/// assert_eq!((groups[0].start, groups[0].end), (0, 20));
/// assert_eq!(groups[0].gap_bytes(), 2);
/// assert_eq!(groups[1].items, vec![r(100, 110)]);
/// ```
pub fn coalesce(ranges: &[ItemRange], max_gap: MaxGap) -> Result<Vec<RangeGroup>> {
    let mut groups: Vec<RangeGroup> = Vec::new();
    let mut prev: Option<ItemRange> = None;
    for &r in ranges {
        if r.end < r.start {
            return Err(Error::InvalidRanges(format!(
                "range {} ends before it starts",
                r.interval()
            )));
        }
        if r.is_empty() {
            continue; // needs no byte, so it can neither overlap nor move `prev`
        }
        if let Some(p) = prev
            && r.start < p.end
        {
            let what = if r.start < p.start {
                "unsorted"
            } else {
                "overlapping"
            };
            return Err(Error::InvalidRanges(format!(
                "{what} ranges: {} starts before {} ends (sort ranges by start; items must not overlap)",
                r.interval(),
                p.interval()
            )));
        }
        prev = Some(r);
        match groups.last_mut() {
            Some(g) if max_gap.bridges(r.start - g.end) => {
                g.end = r.end;
                g.items.push(r);
            }
            _ => groups.push(RangeGroup {
                start: r.start,
                end: r.end,
                items: vec![r],
            }),
        }
    }
    if groups.is_empty() {
        return Err(Error::InvalidRanges(format!(
            "none of the {} range(s) holds a byte: nothing to fetch",
            ranges.len()
        )));
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(s: u64, e: u64) -> ItemRange {
        ItemRange { start: s, end: e }
    }

    #[test]
    fn zero_gap_joins_touching_but_not_gaps() {
        let g = coalesce(&[r(0, 10), r(10, 20), r(21, 30)], MaxGap::Bytes(0)).unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].start, g[0].end, g[0].items.len()), (0, 20, 2));
        assert_eq!((g[1].start, g[1].end), (21, 30));
    }

    #[test]
    fn unbounded_joins_everything_and_default_is_32_mib() {
        let g = coalesce(&[r(0, 1), r(1 << 40, (1 << 40) + 1)], MaxGap::Unbounded).unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].gap_bytes(), (1 << 40) - 1);
        let g = coalesce(
            &[r(0, 1), r(1 + (32 << 20), 2 + (32 << 20))],
            MaxGap::default(),
        )
        .unwrap();
        assert_eq!(g.len(), 1, "a gap of exactly 32 MiB is bridged");
        let g = coalesce(
            &[r(0, 1), r(2 + (32 << 20), 3 + (32 << 20))],
            MaxGap::default(),
        )
        .unwrap();
        assert_eq!(g.len(), 2);
    }

    #[test]
    fn empty_ranges_are_dropped_and_all_empty_is_an_error() {
        let g = coalesce(&[r(5, 5), r(5, 9), r(9, 9), r(7, 7)], MaxGap::Bytes(0)).unwrap();
        assert_eq!(
            g,
            vec![RangeGroup {
                start: 5,
                end: 9,
                items: vec![r(5, 9)]
            }]
        );
        let e = coalesce(&[r(3, 3), r(4, 4)], MaxGap::Unbounded).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidRanges(m) if m.contains("nothing to fetch")),
            "{e}"
        );
        assert!(coalesce(&[], MaxGap::Unbounded).is_err());
    }

    #[test]
    fn unsorted_and_overlapping_name_both_ranges() {
        let e = coalesce(&[r(10, 20), r(0, 5)], MaxGap::Unbounded)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unsorted") && e.contains("[0, 5)") && e.contains("[10, 20)"),
            "{e}"
        );
        let e = coalesce(&[r(0, 10), r(5, 15)], MaxGap::Unbounded)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("overlapping") && e.contains("[5, 15)") && e.contains("[0, 10)"),
            "{e}"
        );
        let e = coalesce(&[r(0, 1), r(9, 4)], MaxGap::Unbounded).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidRanges(m) if m.contains("[9, 4) ends before it starts")),
            "{e}"
        );
        assert!(ItemRange::new(5, 4).is_err());
    }

    proptest! {
        /// Random sorted, disjoint items: groups are sorted, disjoint and
        /// separated by more than max_gap; every item with a byte is in
        /// exactly one group, inside it; slicing a file by the groups gives
        /// back each item's bytes.
        #[test]
        fn groups_cover_items_exactly(
            gaps_lens in proptest::collection::vec((0u64..200, 0u64..50), 1..60),
            max in prop_oneof![Just(None), (0u64..150).prop_map(Some)],
        ) {
            let mut ranges = Vec::new();
            let mut pos = 0;
            for (gap, len) in gaps_lens {
                pos += gap;
                ranges.push(r(pos, pos + len));
                pos += len;
            }
            let max_gap = max.map(MaxGap::Bytes).unwrap_or(MaxGap::Unbounded);
            let file: Vec<u8> = (0..pos + 1).map(|i| (i * 31 % 251) as u8).collect();
            match coalesce(&ranges, max_gap) {
                Err(_) => prop_assert!(ranges.iter().all(|x| x.is_empty())),
                Ok(groups) => {
                    for w in groups.windows(2) {
                        prop_assert!(w[0].end < w[1].start);
                        if let Some(m) = max {
                            prop_assert!(w[1].start - w[0].end > m);
                        } else {
                            prop_assert!(false, "unbounded makes one group");
                        }
                    }
                    let mut seen = 0;
                    for item in ranges.iter().filter(|x| !x.is_empty()) {
                        let owners: Vec<_> = groups.iter().filter(|g| g.items.contains(item)).collect();
                        prop_assert_eq!(owners.len(), 1);
                        let g = owners[0];
                        prop_assert!(g.start <= item.start && item.end <= g.end);
                        // One request's bytes, sliced back to the item.
                        let fetched = &file[g.start as usize..g.end as usize];
                        let sliced = &fetched[(item.start - g.start) as usize..(item.end - g.start) as usize];
                        prop_assert_eq!(sliced, &file[item.start as usize..item.end as usize]);
                        seen += 1;
                    }
                    prop_assert_eq!(seen, groups.iter().map(|g| g.items.len()).sum::<usize>());
                }
            }
        }
    }
}
