//! Half-open byte ranges, chunking, and the HTTP `Range`/`Content-Range`
//! headers (the one place that renders and parses them), plus size parsing
//! for the command line (`8MiB`, `64M`, `1048576`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A half-open byte range `[start, end)` of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl ByteRange {
    /// Creates `[start, end)`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if `end < start`.
    pub fn new(start: u64, end: u64) -> Result<Self> {
        if end < start {
            return Err(Error::InvalidConfig(format!(
                "range end {end} is before its start {start}"
            )));
        }
        Ok(ByteRange { start, end })
    }

    /// Number of bytes in the range.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the range holds no byte.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// The value of an HTTP `Range` header for this (non-empty) range.
    pub fn to_header(&self) -> String {
        format!("bytes={}-{}", self.start, self.end.saturating_sub(1))
    }

    /// The `Content-Range` value a server should send for this range of an
    /// object of `total` bytes.
    pub fn to_content_range(&self, total: u64) -> String {
        format!(
            "bytes {}-{}/{}",
            self.start,
            self.end.saturating_sub(1),
            total
        )
    }
}

impl ByteRange {
    /// The range in interval notation, `[start, end)` (what the DCP
    /// planner's messages name items by).
    pub fn interval(&self) -> String {
        format!("[{}, {})", self.start, self.end)
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            write!(f, "bytes [{0}, {0}) (empty)", self.start)
        } else {
            write!(f, "bytes {}-{}", self.start, self.end - 1)
        }
    }
}

/// Splits `[offset, size)` into consecutive ranges of `chunk_size` bytes, the
/// last one ragged. Empty when `offset == size`.
///
/// # Errors
/// [`Error::InvalidConfig`] if `chunk_size` is 0 or `offset > size`.
///
/// ```
/// use shmfetch::range::{split_into_chunks, ByteRange};
/// let chunks = split_into_chunks(0, 10, 4).unwrap();
/// assert_eq!(chunks, vec![
///     ByteRange { start: 0, end: 4 },
///     ByteRange { start: 4, end: 8 },
///     ByteRange { start: 8, end: 10 },
/// ]);
/// ```
pub fn split_into_chunks(offset: u64, size: u64, chunk_size: u64) -> Result<Vec<ByteRange>> {
    let plan = ChunkPlan::new(offset, size, chunk_size)?;
    Ok((0..plan.len()).filter_map(|k| plan.get(k)).collect())
}

/// The chunk ranges of `[offset, size)`, computed on demand: chunk `k` is
/// `[offset + k·chunk_size, min(offset + (k+1)·chunk_size, size))`. Holds
/// three numbers whatever the count, so planning never allocates per range
/// (a `Vec` of every range of a large object at a tiny chunk size once
/// asked for tens of GiB).
///
/// ```
/// use shmfetch::range::{ByteRange, ChunkPlan};
/// let plan = ChunkPlan::new(2, 10, 4).unwrap();
/// assert_eq!(plan.len(), 2);
/// assert_eq!(plan.get(1), Some(ByteRange { start: 6, end: 10 }));
/// assert_eq!(plan.get(2), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlan {
    offset: u64,
    size: u64,
    chunk_size: u64,
}

impl ChunkPlan {
    /// Plans `[offset, size)` in chunks of `chunk_size` bytes.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] if `chunk_size` is 0 or `offset > size`.
    pub fn new(offset: u64, size: u64, chunk_size: u64) -> Result<ChunkPlan> {
        if chunk_size == 0 {
            return Err(Error::InvalidConfig(
                "chunk size must be at least 1 byte".into(),
            ));
        }
        if offset > size {
            return Err(Error::InvalidConfig(format!(
                "offset {offset} is past the end of the object ({size} bytes)"
            )));
        }
        Ok(ChunkPlan {
            offset,
            size,
            chunk_size,
        })
    }

    /// Number of chunks.
    pub fn len(&self) -> u64 {
        (self.size - self.offset).div_ceil(self.chunk_size)
    }

    /// Whether there is no chunk (`offset == size`).
    pub fn is_empty(&self) -> bool {
        self.offset == self.size
    }

    /// Chunk `k`, if there is one.
    pub fn get(&self, k: u64) -> Option<ByteRange> {
        if k >= self.len() {
            return None;
        }
        let start = self.offset + k * self.chunk_size;
        let end = start.saturating_add(self.chunk_size).min(self.size);
        Some(ByteRange { start, end })
    }
}

/// A parsed `Content-Range: bytes a-b/total` header (`total` may be `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    /// The range the body holds.
    pub range: ByteRange,
    /// The object's full size, when the server gave it.
    pub total: Option<u64>,
}

/// Parses a `Content-Range` header value of the `bytes a-b/total` form.
///
/// Returns `None` for anything else (including the `bytes */total` form that
/// comes with a 416).
pub fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    let start: u64 = a.trim().parse().ok()?;
    let last: u64 = b.trim().parse().ok()?;
    if last < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some(ContentRange {
        range: ByteRange {
            start,
            end: last.checked_add(1)?,
        },
        total,
    })
}

/// The `Content-Range` value of a 416 answer: `bytes */total`.
pub fn unsatisfied_content_range(total: u64) -> String {
    format!("bytes */{total}")
}

/// Why a request's `Range` header cannot be served; every case is a 416.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequestError {
    /// Not one `bytes=` spec: no `bytes=`, not numbers, end before start.
    /// The 416 carries no `Content-Range`.
    Malformed,
    /// Several ranges (`bytes=0-1,5-9`), which AIStore does not serve
    /// (`ErrUnsupp`). The 416 carries no `Content-Range`.
    MultiRange,
    /// Well formed, but starts at or past the end (any range of an empty
    /// object, and `bytes=-0`). The 416 carries `Content-Range: bytes */size`
    /// ([`unsatisfied_content_range`]).
    NotSatisfiable,
}

impl RangeRequestError {
    /// The `Content-Range` the 416 carries for an object of `size` bytes:
    /// `bytes */size` when the range is well formed but past the end, none
    /// otherwise.
    pub fn content_range(&self, size: u64) -> Option<String> {
        match self {
            RangeRequestError::NotSatisfiable => Some(unsatisfied_content_range(size)),
            RangeRequestError::Malformed | RangeRequestError::MultiRange => None,
        }
    }

    /// The AIStore error code (`tcode`, empty when AIStore sends none) and
    /// message a 416 carries for the request header `header` of an object
    /// of `size` bytes — what both our servers answer, as AIStore does.
    pub fn aistore_error(&self, header: &str, size: u64) -> (&'static str, String) {
        match self {
            RangeRequestError::NotSatisfiable => (
                "ErrRangeNotSatisfiable",
                format!("size={size}: not satisfiable range [{header}]"),
            ),
            RangeRequestError::MultiRange => (
                "ErrUnsupp",
                format!("cannot multi-range read {header:?} - operation not supported"),
            ),
            RangeRequestError::Malformed => ("", format!("invalid range {header:?}")),
        }
    }
}

impl fmt::Display for RangeRequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RangeRequestError::Malformed => "malformed range",
            RangeRequestError::MultiRange => "multi-range read is not supported",
            RangeRequestError::NotSatisfiable => "not satisfiable range",
        })
    }
}

/// Parses a request's `Range` header value (`bytes=a-b`, `bytes=a-` or
/// `bytes=-n`) against an object of `size` bytes, the way an AIStore target
/// does: an end past the object is clamped to its last byte, a suffix
/// longer than the object is the whole object.
///
/// # Errors
/// The [`RangeRequestError`] that says which 416 to answer.
///
/// ```
/// use shmfetch::range::{parse_range_header, ByteRange, RangeRequestError};
/// assert_eq!(parse_range_header("bytes=5-9", 100), Ok(ByteRange { start: 5, end: 10 }));
/// assert_eq!(parse_range_header("bytes=-10", 100), Ok(ByteRange { start: 90, end: 100 }));
/// assert_eq!(parse_range_header("bytes=90-", 100), Ok(ByteRange { start: 90, end: 100 }));
/// assert_eq!(parse_range_header("bytes=100-", 100), Err(RangeRequestError::NotSatisfiable));
/// ```
pub fn parse_range_header(
    value: &str,
    size: u64,
) -> std::result::Result<ByteRange, RangeRequestError> {
    use RangeRequestError::{Malformed, MultiRange, NotSatisfiable};
    let v = value.trim();
    // The unit is case-insensitive (RFC 9110 §14.1).
    let spec = match v.get(..6) {
        Some(unit) if unit.eq_ignore_ascii_case("bytes=") => &v[6..],
        _ => return Err(Malformed),
    };
    if spec.contains(',') {
        return Err(MultiRange);
    }
    // Digits only: `str::parse` would also take a sign.
    let num = |s: &str| -> std::result::Result<u64, RangeRequestError> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Malformed);
        }
        s.parse().map_err(|_| Malformed)
    };
    let (a, b) = spec.split_once('-').ok_or(Malformed)?;
    let (start, end) = if a.trim().is_empty() {
        let n = num(b)?;
        if n == 0 {
            return Err(NotSatisfiable);
        }
        (size.saturating_sub(n), size)
    } else {
        let start = num(a)?;
        let end = if b.trim().is_empty() {
            size
        } else {
            let last = num(b)?;
            if last < start {
                return Err(Malformed);
            }
            last.saturating_add(1).min(size)
        };
        (start, end)
    };
    if start >= size {
        return Err(NotSatisfiable);
    }
    Ok(ByteRange { start, end })
}

/// A byte count in binary units for messages: `4 GiB`, `1.5 MiB`,
/// `999 bytes` (the inverse of [`parse_size`] for whole units).
pub fn format_size(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut unit = 0;
    let mut div = 1024u64;
    while unit + 1 < UNITS.len() && n / div >= 1024 {
        unit += 1;
        div *= 1024;
    }
    if n.is_multiple_of(div) {
        format!("{} {}", n / div, UNITS[unit])
    } else {
        format!("{:.1} {}", n as f64 / div as f64, UNITS[unit])
    }
}

/// Parses a size such as `8MiB`, `64M`, `1.5GiB`, `4k` or `1048576`.
///
/// Units are powers of 1024 (`K`/`KiB`, `M`/`MiB`, `G`/`GiB`, `T`/`TiB`,
/// case-insensitive, optional `B`); a bare number is bytes.
///
/// # Errors
/// [`Error::InvalidConfig`] naming the input when it is not a size.
///
/// ```
/// use shmfetch::range::parse_size;
/// assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
/// assert_eq!(parse_size("64M").unwrap(), 64 << 20);
/// assert_eq!(parse_size("4096").unwrap(), 4096);
/// assert!(parse_size("lots").is_err());
/// ```
pub fn parse_size(s: &str) -> Result<u64> {
    let bad = || Error::InvalidConfig(format!("{s:?} is not a size (try 8MiB, 64M, 1048576)"));
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(bad());
    }
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(bad);
    }
    let f: f64 = num.parse().map_err(|_| bad())?;
    let v = f * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(v.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_round_trip() {
        let r = ByteRange { start: 5, end: 10 };
        assert_eq!(r.to_header(), "bytes=5-9");
        let cr = parse_content_range(&r.to_content_range(100)).unwrap();
        assert_eq!(cr.range, r);
        assert_eq!(cr.total, Some(100));
    }

    #[test]
    fn content_range_rejects_garbage() {
        for v in [
            "",
            "bytes */10",
            "bytes 5-4/10",
            "items 0-1/2",
            "bytes 0-x/2",
            "bytes 0-1",
        ] {
            assert_eq!(parse_content_range(v), None, "{v}");
        }
        assert_eq!(parse_content_range("bytes 0-1/*").unwrap().total, None);
    }

    #[test]
    fn request_ranges_in_their_three_forms() {
        let p = parse_range_header;
        let r = |start, end| Ok(ByteRange { start, end });
        assert_eq!(p("bytes=0-0", 10), r(0, 1));
        assert_eq!(p("bytes=2-5", 10), r(2, 6));
        assert_eq!(p(" Bytes=2-5 ", 10), r(2, 6), "unit is case-insensitive");
        // An end past the object is clamped.
        assert_eq!(p("bytes=5-1000", 10), r(5, 10));
        assert_eq!(p(&format!("bytes=5-{}", u64::MAX), 10), r(5, 10));
        // Open-ended.
        assert_eq!(p("bytes=7-", 10), r(7, 10));
        assert_eq!(p("bytes=0-", 10), r(0, 10));
        // Suffix: the last n bytes, the whole object when n is larger.
        assert_eq!(p("bytes=-3", 10), r(7, 10));
        assert_eq!(p("bytes=-10", 10), r(0, 10));
        assert_eq!(p("bytes=-99", 10), r(0, 10));
        // Rendered by to_header, parsed back.
        let x = ByteRange { start: 3, end: 8 };
        assert_eq!(p(&x.to_header(), 10), Ok(x));
    }

    #[test]
    fn request_ranges_refused() {
        use RangeRequestError::*;
        let p = parse_range_header;
        for v in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "items=0-1",
            "bytes 0-1",
            "bytes=a-b",
            "bytes=1-x",
            "bytes=+1-2",
            "bytes=1-+2",
            "bytes=--1",
            "bytes=1--2",
            "bytes=5-4",
            "bytes=0x1-2",
            "bytes=99999999999999999999-",
            "bytes=1-2-3",
        ] {
            assert_eq!(p(v, 10), Err(Malformed), "{v:?}");
        }
        assert_eq!(p("bytes=0-1,5-6", 10), Err(MultiRange));
        assert_eq!(p("bytes=0-1, 5-", 10), Err(MultiRange));
        // Past the end, and anything on an empty object: 416 with `bytes */size`.
        assert_eq!(p("bytes=10-", 10), Err(NotSatisfiable));
        assert_eq!(p("bytes=10-20", 10), Err(NotSatisfiable));
        assert_eq!(p("bytes=0-0", 0), Err(NotSatisfiable));
        assert_eq!(p("bytes=-5", 0), Err(NotSatisfiable));
        assert_eq!(p("bytes=-0", 10), Err(NotSatisfiable));
        assert_eq!(unsatisfied_content_range(10), "bytes */10");
        assert_eq!(
            NotSatisfiable.content_range(10).as_deref(),
            Some("bytes */10")
        );
        assert_eq!(Malformed.content_range(10), None);
        assert_eq!(MultiRange.content_range(10), None);
        assert_eq!(parse_content_range(&unsatisfied_content_range(10)), None);
    }

    #[test]
    fn chunk_errors() {
        assert!(ChunkPlan::new(0, 10, 0).is_err());
        assert!(ChunkPlan::new(11, 10, 4).is_err());
        // Planning 2^64 - 1 one-byte chunks costs nothing.
        let plan = ChunkPlan::new(0, u64::MAX, 1).unwrap();
        assert_eq!(plan.len(), u64::MAX);
        assert_eq!(
            plan.get(u64::MAX - 1),
            Some(ByteRange {
                start: u64::MAX - 1,
                end: u64::MAX
            })
        );
        assert!(split_into_chunks(0, 10, 0).is_err());
        assert!(split_into_chunks(11, 10, 4).is_err());
        assert!(split_into_chunks(10, 10, 4).unwrap().is_empty());
        assert!(split_into_chunks(0, 0, 4).unwrap().is_empty());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1.5KiB").unwrap(), 1536);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert!(parse_size("").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("99999999999999999999T").is_err());
    }

    proptest! {
        #[test]
        fn chunks_tile_without_overlap(size in 0u64..10_000, offset_frac in 0.0f64..=1.0, chunk in 1u64..3000) {
            let offset = (size as f64 * offset_frac) as u64;
            let chunks = split_into_chunks(offset, size, chunk).unwrap();
            let mut pos = offset;
            for c in &chunks {
                prop_assert_eq!(c.start, pos);
                prop_assert!(!c.is_empty() && c.len() <= chunk);
                pos = c.end;
            }
            prop_assert_eq!(pos, size);
            let plan = ChunkPlan::new(offset, size, chunk).unwrap();
            prop_assert_eq!(plan.len(), chunks.len() as u64);
            prop_assert_eq!(plan.is_empty(), chunks.is_empty());
        }

        #[test]
        fn request_range_round_trip(start in 0u64..1 << 40, len in 1u64..1 << 30, extra in 0u64..1000) {
            let r = ByteRange { start, end: start + len };
            prop_assert_eq!(parse_range_header(&r.to_header(), r.end + extra), Ok(r));
            // Past the end: clamped.
            prop_assert_eq!(
                parse_range_header(&r.to_header(), start + 1),
                Ok(ByteRange { start, end: start + 1 })
            );
        }

        #[test]
        fn header_render_parse(start in 0u64..u64::MAX / 2, len in 1u64..1 << 40, extra in 0u64..1000) {
            let r = ByteRange { start, end: start + len };
            let cr = parse_content_range(&r.to_content_range(r.end + extra)).unwrap();
            prop_assert_eq!(cr.range, r);
            prop_assert_eq!(cr.total, Some(r.end + extra));
        }
    }
}
