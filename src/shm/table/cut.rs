//! Cutting a range short while its worker writes it: the *limit word* of
//! a record.
//!
//! When a `read_all` has no range left to start and a worker goes idle,
//! the consumer hands it the second half of the largest range still being
//! written (a `create_iter` ring: of the earliest chunk in flight, whose
//! rest goes to the slot's piece record, into the same slot's memory).
//! For that the writer must stop at the new boundary, and the
//! consumer must know, without asking it, that no byte past the boundary
//! was or will be written by it. Both parties change one word, so every
//! step is a compare-and-swap and the two orders of any race are both
//! safe:
//!
//! ```text
//!   limit word = reserved (high 32 bits) | limit (low 32 bits), in CUT_UNITs
//!                from the range's start; limit NO_LIMIT = the range's end
//!
//!   writer, before receiving bytes up to `upto`: reserve
//!       allowed = min(upto, end of limit); reserved := max(reserved, ⌈allowed⌉)
//!       writes only up to `allowed`; stops once a write was cut short
//!   consumer, to cut at `at` (units):            cut
//!       only if reserved < at < end of limit;    limit := at
//!   claim (the writer of a re-run):              reserved := 0, limit kept
//!   assign (the consumer, slot Empty):           (0, NO_LIMIT)
//! ```
//!
//! A reservation that wins covers every byte its writer then writes, and a
//! cut that wins lies above every reservation made before it, so the
//! writer's bytes and the cut-off piece never overlap; a cut that loses
//! the race (the writer reserved past it) is refused and the consumer
//! tries again with fresher numbers. A writer that published `Ready`
//! reserved its whole range, so a cut never succeeds on a finished range.
//! A re-run of a dead writer's range (the supervisor rule) keeps the cut:
//! it fetches the range up to its limit.
//!
//! Like the slot word, the steps are generic over the cell ([`WordCell`]),
//! so the model check could run them on shuttle's atomics.

use super::WordCell;

/// Granularity of reservations and cuts (bytes). A cut lies on a whole
/// unit from the range's start, so the pieces stay page-aligned in the
/// object-sized segment (chunks start on whole MiB).
pub(crate) const CUT_UNIT: u64 = 64 * 1024;

/// `limit` value of a range that was never cut: it ends where it ends.
const NO_LIMIT: u32 = u32::MAX;

/// A decoded limit word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limit {
    /// Units from the range's start its writer may have written (rounded up).
    reserved: u32,
    /// Units from the range's start where the writer must stop, or
    /// [`NO_LIMIT`].
    limit: u32,
}

impl Limit {
    /// The word of a range just assigned. (A zeroed word is *not* this:
    /// it reads as cut at 0; `assign` always stores this one.)
    pub(crate) const FRESH: Limit = Limit {
        reserved: 0,
        limit: NO_LIMIT,
    };

    pub(crate) fn pack(self) -> u64 {
        (u64::from(self.reserved) << 32) | u64::from(self.limit)
    }

    pub(crate) fn unpack(v: u64) -> Limit {
        Limit {
            reserved: (v >> 32) as u32,
            limit: v as u32,
        }
    }

    /// Where a range of `len` bytes ends under this limit (bytes from its
    /// start).
    pub(crate) fn end(self, len: u64) -> u64 {
        if self.limit == NO_LIMIT {
            len
        } else {
            len.min(u64::from(self.limit) * CUT_UNIT)
        }
    }
}

/// Where the range of `len` bytes whose limit word is `cell` ends now
/// (bytes from its start): `len`, or its cut.
pub(crate) fn end(cell: &impl WordCell, len: u64) -> u64 {
    Limit::unpack(cell.load_word()).end(len)
}

/// Whole units covering `bytes` (at most `NO_LIMIT - 1`: a range so long
/// that its reservation saturates can only be cut below it).
fn units_up(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(CUT_UNIT))
        .unwrap_or(NO_LIMIT - 1)
        .min(NO_LIMIT - 1)
}

/// Writer: reserves the bytes of its range of `len` bytes up to `upto`
/// (from the range's start) before writing them. Returns how far it may
/// write: `upto`, or less when the range was cut (then it stops there).
pub(crate) fn reserve(cell: &impl WordCell, len: u64, upto: u64) -> u64 {
    loop {
        let v = cell.load_word();
        let l = Limit::unpack(v);
        let allowed = upto.min(l.end(len));
        let need = units_up(allowed);
        if need <= l.reserved {
            return allowed;
        }
        let to = Limit {
            reserved: need,
            ..l
        };
        if cell.cas_word(v, to.pack()) {
            return allowed;
        }
    }
}

/// Writer of a (re-)claimed range: nothing of it is written by this claim
/// yet; a cut made before stays.
pub(crate) fn restart(cell: &impl WordCell) {
    loop {
        let v = cell.load_word();
        let to = Limit {
            reserved: 0,
            ..Limit::unpack(v)
        };
        if cell.cas_word(v, to.pack()) {
            return;
        }
    }
}

/// Consumer: cuts the range of `len` bytes at `at` units from its start.
/// Returns where the range ended before (bytes from its start): the piece
/// `at × CUT_UNIT .. that` is now nobody's. `None` when the writer has
/// reserved up to or past `at`, or `at` is not inside the range's limit.
pub(crate) fn cut(cell: &impl WordCell, len: u64, at: u32) -> Option<u64> {
    loop {
        let v = cell.load_word();
        let l = Limit::unpack(v);
        let end = l.end(len);
        if at == NO_LIMIT || at <= l.reserved || u64::from(at) * CUT_UNIT >= end {
            return None;
        }
        let to = Limit { limit: at, ..l };
        if cell.cas_word(v, to.pack()) {
            return Some(end);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::sync::{Arc, Barrier};

    use super::*;

    const U: u64 = CUT_UNIT;

    fn cell() -> AtomicU64 {
        AtomicU64::new(Limit::FRESH.pack())
    }

    #[test]
    fn an_uncut_range_is_written_whole() {
        let c = cell();
        let len = 10 * U + 123;
        assert_eq!(reserve(&c, len, 3 * U + 5), 3 * U + 5);
        assert_eq!(reserve(&c, len, len + 1000), len);
        assert_eq!(Limit::unpack(c.load_word()).end(len), len);
    }

    #[test]
    fn a_cut_stops_the_writer_at_the_boundary() {
        let c = cell();
        let len = 16 * U;
        assert_eq!(reserve(&c, len, U / 2), U / 2);
        assert_eq!(cut(&c, len, 8), Some(len));
        assert_eq!(reserve(&c, len, 7 * U + 1), 7 * U + 1);
        assert_eq!(reserve(&c, len, 9 * U), 8 * U, "writes stop at the cut");
        assert_eq!(Limit::unpack(c.load_word()).end(len), 8 * U);
        // The cut-off piece can be cut again by its own writer's cell, but
        // this one cannot be cut below what was reserved.
        assert_eq!(cut(&c, len, 8), None);
        assert_eq!(cut(&c, len, 7), None);
    }

    #[test]
    fn a_cut_below_the_reservation_or_outside_the_range_is_refused() {
        let c = cell();
        let len = 4 * U + 7;
        assert_eq!(reserve(&c, len, 2 * U + 1), 2 * U + 1);
        assert_eq!(cut(&c, len, 3), None, "unit 3 is reserved (2U+1 rounds up)");
        assert_eq!(cut(&c, len, 5), None, "5U is past the end");
        assert_eq!(cut(&c, len, NO_LIMIT), None);
        assert_eq!(cut(&c, len, 4), Some(len));
        // A finished range reserved all of it: nothing to cut.
        let d = cell();
        assert_eq!(reserve(&d, len, len), len);
        assert_eq!(cut(&d, len, 4), None);
    }

    #[test]
    fn a_rerun_keeps_the_cut_and_writes_from_its_start() {
        let c = cell();
        let len = 8 * U;
        reserve(&c, len, 3 * U);
        assert_eq!(cut(&c, len, 5), Some(len));
        restart(&c);
        assert_eq!(Limit::unpack(c.load_word()).reserved, 0);
        // The re-run may be cut below the dead writer's reservation now.
        assert_eq!(cut(&c, len, 2), Some(5 * U));
        assert_eq!(reserve(&c, len, len), 2 * U);
    }

    #[test]
    fn huge_ranges_saturate_without_wrapping() {
        let c = cell();
        let len = u64::MAX / 2;
        assert_eq!(reserve(&c, len, len), len);
        assert_eq!(cut(&c, len, NO_LIMIT - 1), None);
    }

    /// A writer and a cutter race on one word from many threads' worth of
    /// interleavings: the bytes the writer was allowed and the piece the
    /// cut took never overlap, and together they are the whole range.
    #[test]
    fn racing_writer_and_cutter_never_overlap() {
        for round in 0..2000u32 {
            let c = Arc::new(cell());
            let len = 64 * U;
            let go = Arc::new(Barrier::new(2));
            let writer = {
                let (c, go) = (Arc::clone(&c), Arc::clone(&go));
                std::thread::spawn(move || {
                    go.wait();
                    let mut filled = 0;
                    while filled < len {
                        let want = (filled + 3 * U + 17).min(len);
                        let allowed = reserve(&*c, len, want);
                        filled = allowed;
                        if allowed < want {
                            break;
                        }
                    }
                    filled
                })
            };
            go.wait();
            let at = 1 + round % 63;
            let stolen = cut(&*c, len, at).map(|end| (u64::from(at) * U, end));
            let written = writer.join().unwrap();
            match stolen {
                Some((from, to)) => {
                    assert_eq!(to, len);
                    assert_eq!(written, from, "writer stops exactly at the cut");
                }
                None => assert_eq!(written, len),
            }
        }
    }
}
