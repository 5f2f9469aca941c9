//! The three ways to read a checkpoint's data file, chosen by
//! [`ReaderKind`], all behind [`DcpRead`] (`Read` + `Seek`).
//!
//! | kind | fetches | access |
//! |---|---|---|
//! | [`ReaderKind::Sequential`] (default) | the whole file once, by the worker pool | any |
//! | [`ReaderKind::RangeBased`] | one ranged request per read (through an 8 MiB buffer by default) | any |
//! | [`ReaderKind::DcpOptimized`] | the load plan's items, coalesced into groups, by the worker pool with the next group prefetched | the planned items, forward |

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::range_group::{ItemRange, MaxGap};
use crate::error::{Error, Result};

pub mod optimized;
pub mod range_based;
pub mod sequential;

pub use optimized::DcpOptimizedReader;
pub use range_based::RangeBasedReader;
pub use sequential::SequentialReader;

/// Default buffer of the range-based reader: 8 MiB.
pub const DEFAULT_BUFFER_SIZE: u64 = 8 << 20;

/// Which reader a checkpoint load uses for its data files.
///
/// ```
/// use shmfetch::dcp::{MaxGap, ReaderKind};
/// assert_eq!(ReaderKind::default().name(), "sequential");
/// assert_eq!(ReaderKind::range_based(8 << 20).unwrap().name(), "range_based");
/// assert_eq!(ReaderKind::dcp_optimized(0).unwrap().name(), "dcp_optimized");
/// // Settings are checked when the kind is made:
/// assert!(ReaderKind::range_based(-1).is_err());
/// assert!(ReaderKind::dcp_optimized(-5).is_err());
/// let unbounded = ReaderKind::DcpOptimized { max_gap: MaxGap::Unbounded };
/// assert_eq!(unbounded.to_string(), "dcp_optimized(max_gap_size=unbounded)");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReaderKind {
    /// Fetch each file whole (in parallel), then serve any access pattern.
    #[default]
    Sequential,
    /// One ranged request per read. Reads smaller than `buffer_size` fill
    /// a buffer of that size and later reads inside it are served from it;
    /// larger reads bypass it. `0` disables the buffer.
    RangeBased {
        /// Buffer size in bytes.
        buffer_size: u64,
    },
    /// Fetch only the planned items, coalescing those at most `max_gap`
    /// apart into one group.
    DcpOptimized {
        /// Largest gap bridged.
        max_gap: MaxGap,
    },
}

impl ReaderKind {
    /// A range-based kind with a `buffer_size`-byte buffer (`0`: none).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a negative size.
    pub fn range_based(buffer_size: i64) -> Result<ReaderKind> {
        let buffer_size = u64::try_from(buffer_size).map_err(|_| {
            Error::InvalidConfig(format!(
                "range_based buffer size must be >= 0 (0 disables the buffer), got {buffer_size}"
            ))
        })?;
        Ok(ReaderKind::RangeBased { buffer_size })
    }

    /// A dcp-optimized kind bridging gaps of at most `max_gap_size` bytes
    /// (`0`: touching items only). Use [`MaxGap::Unbounded`] directly for
    /// one group per file.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a negative size.
    pub fn dcp_optimized(max_gap_size: i64) -> Result<ReaderKind> {
        let max = u64::try_from(max_gap_size).map_err(|_| {
            Error::InvalidConfig(format!(
                "max_gap_size must be >= 0 (0 joins touching items only), got {max_gap_size}"
            ))
        })?;
        Ok(ReaderKind::DcpOptimized {
            max_gap: MaxGap::Bytes(max),
        })
    }

    /// Parses a kind's name (`sequential`, `range_based`, `dcp_optimized`;
    /// `-` may stand for `_`), with the settings given.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the known kinds.
    pub fn from_name(name: &str, buffer_size: u64, max_gap: MaxGap) -> Result<ReaderKind> {
        match name.replace('-', "_").as_str() {
            "sequential" => Ok(ReaderKind::Sequential),
            "range_based" => Ok(ReaderKind::RangeBased { buffer_size }),
            "dcp_optimized" => Ok(ReaderKind::DcpOptimized { max_gap }),
            _ => Err(Error::InvalidConfig(format!(
                "unknown reader kind {name:?}: use sequential, range_based or dcp_optimized"
            ))),
        }
    }

    /// `sequential`, `range_based` or `dcp_optimized`.
    pub fn name(&self) -> &'static str {
        match self {
            ReaderKind::Sequential => "sequential",
            ReaderKind::RangeBased { .. } => "range_based",
            ReaderKind::DcpOptimized { .. } => "dcp_optimized",
        }
    }
}

impl fmt::Display for ReaderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReaderKind::Sequential => f.write_str("sequential"),
            ReaderKind::RangeBased { buffer_size } => {
                write!(f, "range_based(buffer_size={buffer_size})")
            }
            ReaderKind::DcpOptimized {
                max_gap: MaxGap::Bytes(b),
            } => write!(f, "dcp_optimized(max_gap_size={b})"),
            ReaderKind::DcpOptimized {
                max_gap: MaxGap::Unbounded,
            } => f.write_str("dcp_optimized(max_gap_size=unbounded)"),
        }
    }
}

/// A data-file reader: `Read` + `Seek`, with its kind's name.
pub trait DcpRead: io::Read + io::Seek + Send + fmt::Debug {
    /// The kind's name (`sequential`, `range_based`, `dcp_optimized`).
    fn name(&self) -> &'static str;
}

/// Opens `reader`'s object with `kind`: the sequential and range-based
/// kinds read anything; the dcp-optimized kind reads `ranges` (sorted, not
/// overlapping) and nothing else. Fetches are added to `counter`.
///
/// # Errors
/// The source's errors; [`Error::InvalidRanges`] for bad ranges.
pub fn open_with_kind(
    kind: ReaderKind,
    reader: crate::reader::ParallelReader,
    ranges: &[ItemRange],
    counter: Arc<FetchCounter>,
) -> Result<Box<dyn DcpRead>> {
    Ok(match kind {
        ReaderKind::Sequential => Box::new(SequentialReader::new(reader, counter)),
        ReaderKind::RangeBased { buffer_size } => Box::new(RangeBasedReader::new(
            reader.open_source()?,
            reader.meta().clone(),
            reader.retry_config(),
            buffer_size,
            counter,
        )),
        ReaderKind::DcpOptimized { max_gap } => {
            Box::new(DcpOptimizedReader::new(reader, ranges, max_gap, counter)?)
        }
    })
}

/// Requests and bytes fetched, shared by every reader of one load.
#[derive(Debug, Default)]
pub struct FetchCounter {
    requests: AtomicU64,
    bytes: AtomicU64,
}

impl FetchCounter {
    /// A new shared counter.
    pub fn new() -> Arc<FetchCounter> {
        Arc::new(FetchCounter::default())
    }

    pub(crate) fn add(&self, requests: u64, bytes: u64) {
        self.requests.fetch_add(requests, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Range requests made (one per chunk a worker fetched, one per
    /// range-based read).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Bytes fetched.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Wraps a crate error for `Read`/`Seek`; [`from_io`] gets it back.
pub(crate) fn to_io(e: Error) -> io::Error {
    let kind = match &e {
        Error::UnsupportedAccess { .. } => io::ErrorKind::Unsupported,
        Error::InvalidConfig(_) => io::ErrorKind::InvalidInput,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

/// The crate error inside an `io::Error` from a reader, or an
/// [`Error::Io`] with `context`.
pub fn from_io(e: &io::Error, context: &str) -> Error {
    match e.get_ref().and_then(|x| x.downcast_ref::<Error>()) {
        Some(inner) => inner.clone(),
        None => Error::io(context, e),
    }
}

/// Checks every planned item lies inside the file of `size` bytes.
///
/// # Errors
/// [`Error::Checkpoint`] naming the file, the first item past its end and
/// the file's size.
pub(crate) fn check_within(file: &str, ranges: &[ItemRange], size: u64) -> Result<()> {
    match ranges.iter().find(|r| r.end > size) {
        Some(r) => Err(Error::checkpoint(
            file,
            format!(
                "item {} lies beyond the end of the file ({size} bytes)",
                r.interval()
            ),
        )),
        None => Ok(()),
    }
}

/// Shared `Seek` arithmetic: a new position from `to`, or an error for a
/// position before 0. `end` is `None` where the size is not offered.
pub(crate) fn seek_target(pos: u64, to: io::SeekFrom, end: Option<u64>) -> io::Result<u64> {
    let t = match to {
        io::SeekFrom::Start(p) => Some(p),
        io::SeekFrom::Current(d) => pos.checked_add_signed(d),
        io::SeekFrom::End(d) => match end {
            Some(e) => e.checked_add_signed(d),
            None => None,
        },
    };
    t.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before byte 0"))
}
