//! The crate's one public error type.
//!
//! Variants are grouped by what the caller does next: fix the input
//! ([`Error::InvalidConfig`], [`Error::InvalidSource`]), fix the name or the
//! credentials ([`Error::BucketNotFound`], [`Error::ObjectNotFound`],
//! [`Error::AccessDenied`]), retry later ([`Error::Http`] with a 5xx,
//! [`Error::Transport`], [`Error::ShortRead`]), or look at the machine
//! ([`Error::Shm`], [`Error::ShmNoSpace`], [`Error::WorkerCrashed`]).
//!
//! Errors raised inside a worker process travel to the coordinator over the
//! worker's socket, so every variant is plain data (serialisable); causes from
//! outside the crate are kept as their message and, for OS errors, their errno.

use serde::{Deserialize, Serialize};

use crate::range::ByteRange;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while fetching an object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Error {
    /// A worker count, chunk size, offset or other setting that makes no sense.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// A source URL or path that cannot be used.
    #[error("invalid source {url:?}: {reason}")]
    InvalidSource {
        /// What the user gave.
        url: String,
        /// Why it cannot be used.
        reason: String,
    },

    /// The bucket does not exist (AIStore answers this at the gateway).
    #[error("bucket {bucket} does not exist (endpoint {endpoint}){}", fmt_message(.message))]
    BucketNotFound {
        /// Bucket as `ais://name`.
        bucket: String,
        /// Endpoint that was asked.
        endpoint: String,
        /// Server's message.
        message: String,
    },

    /// The object (or file) does not exist.
    #[error("object {object} does not exist{}", fmt_message(.message))]
    ObjectNotFound {
        /// Object as the user named it.
        object: String,
        /// Server's (or OS's) message.
        message: String,
    },

    /// 401/403: the token is missing, invalid, or lacks the permission.
    #[error(
        "access denied to {object} (HTTP {status}){}{}",
        fmt_message(.message),
        token_hint(.object)
    )]
    AccessDenied {
        /// Object as the user named it.
        object: String,
        /// 401 or 403.
        status: u16,
        /// Server's message.
        message: String,
    },

    /// Any other unexpected HTTP status.
    #[error("HTTP {status} from {url} for {object}{}{}", fmt_range(.range), fmt_message(.message))]
    Http {
        /// Object as the user named it.
        object: String,
        /// Range asked for, if any.
        range: Option<ByteRange>,
        /// Status received.
        status: u16,
        /// URL that answered (after redirects).
        url: String,
        /// Server's message (AIS JSON `message`, or the start of the body).
        message: String,
    },

    /// The server answered a range request with something other than that
    /// range: 200 with the whole object, a wrong `Content-Range`, a wrong
    /// `Content-Length`. Nothing was written to the buffer.
    #[error("bad response to {object} {range}: {detail}")]
    RangeMismatch {
        /// Object as the user named it.
        object: String,
        /// Range asked for.
        range: ByteRange,
        /// What came back.
        detail: String,
    },

    /// The body ended before the range was complete.
    #[error("short read of {object} {range}: got {got} of {expected} bytes")]
    ShortRead {
        /// Object as the user named it.
        object: String,
        /// Range asked for.
        range: ByteRange,
        /// Bytes received.
        got: u64,
        /// Bytes expected.
        expected: u64,
    },

    /// Size or version changed between the HEAD and a later range.
    #[error("object {object} changed while being read: {detail}")]
    ObjectChanged {
        /// Object as the user named it.
        object: String,
        /// What differs.
        detail: String,
    },

    /// Connection refused, reset, timed out, DNS failure, TLS failure.
    #[error("transport error for {object}{}: {message}", fmt_range(.range))]
    Transport {
        /// Object as the user named it.
        object: String,
        /// Range being fetched, if any.
        range: Option<ByteRange>,
        /// Underlying cause.
        message: String,
    },

    /// Local I/O failed (reading a local source, writing the output).
    #[error("{context}: {message}")]
    Io {
        /// What was being done.
        context: String,
        /// OS error message.
        message: String,
        /// errno, when the OS gave one.
        errno: Option<i32>,
    },

    /// A shared-memory operation failed.
    #[error("shared memory: {context}: {message}")]
    Shm {
        /// What was being done (with the segment name).
        context: String,
        /// OS error message.
        message: String,
        /// errno.
        errno: i32,
    },

    /// `/dev/shm` (or the configured directory) has no room for the segment.
    #[error(
        "not enough room in {dir} for a {} segment ({needed} bytes; {} free); \
         use create_iter/--mode stream (memory stays workers x chunk_size) or free space in {dir}",
        crate::range::format_size(*.needed),
        crate::range::format_size(*.free)
    )]
    ShmNoSpace {
        /// Directory of the segments.
        dir: String,
        /// Bytes needed.
        needed: u64,
        /// Bytes free when it failed.
        free: u64,
    },

    /// A range could not be fetched: names the attempts made and the last
    /// cause ([`Error::root`] gives the cause itself).
    #[error(
        "fetching {object} {range} failed after {attempts} attempt(s) in {elapsed_ms} ms: {cause}"
    )]
    RangeFailed {
        /// Object as the user named it.
        object: String,
        /// Range asked for.
        range: ByteRange,
        /// Requests made.
        attempts: u32,
        /// Time spent on this range.
        elapsed_ms: u64,
        /// The last error.
        cause: Box<Error>,
    },

    /// Byte ranges that cannot be coalesced: unsorted, overlapping, or none
    /// with any byte.
    #[error("invalid byte ranges: {0}")]
    InvalidRanges(String),

    /// A pickle (DCP `.metadata`, an item's `data.pkl`) that cannot be
    /// decoded: truncated, malformed, or naming a global we do not allow.
    #[error("pickle: {detail} (at byte {offset})")]
    Pickle {
        /// Byte offset of the opcode that failed.
        offset: u64,
        /// What is wrong.
        detail: String,
    },

    /// A DCP checkpoint whose structure is not what `dcp.save` writes: a
    /// `.metadata` missing a field, an item that is not a valid archive, a
    /// storage item outside its file, an unknown dtype.
    #[error("checkpoint: {what}: {detail}")]
    Checkpoint {
        /// What was being read (`.metadata`, an item with its file and range).
        what: String,
        /// What is wrong.
        detail: String,
    },

    /// A read that a DCP reader kind does not serve (the dcp-optimized
    /// reader reads the planned items forward only; `SeekFrom::End` is not
    /// supported).
    #[error(
        "{reader} reader of {file}: {detail}; use the sequential reader for other access patterns"
    )]
    UnsupportedAccess {
        /// The reader kind's name.
        reader: String,
        /// The file being read.
        file: String,
        /// The access asked for and the reader's position (current item).
        detail: String,
    },

    /// A worker process died and its work could not be completed.
    #[error("worker process {pid} died ({detail}){}", fmt_range(.range))]
    WorkerCrashed {
        /// The worker's pid.
        pid: i32,
        /// Exit status or signal.
        detail: String,
        /// Range it was fetching, if any.
        range: Option<ByteRange>,
    },

    /// The caller asked to stop (see
    /// [`crate::ParallelReader::read_range_cancellable`]).
    #[error("cancelled by the caller")]
    Cancelled,

    /// The worker pool could not start or is gone.
    #[error("worker pool: {0}")]
    Pool(String),
}

/// `": message"`, or nothing for an empty message (a body-less 404).
fn fmt_message(message: &str) -> String {
    if message.trim().is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

/// The token hint of an access denied: only AIStore takes our token.
fn token_hint(object: &str) -> &'static str {
    if object.starts_with("ais://") {
        "; set AIS_AUTHN_TOKEN or AIS_AUTHN_TOKEN_FILE"
    } else if object.starts_with("s3://") {
        "; check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, \
         AWS_PROFILE), the region (--region) and the bucket policy, or try --no-sign-request \
         for a public bucket"
    } else {
        ""
    }
}

fn fmt_range(range: &Option<ByteRange>) -> String {
    match range {
        Some(r) => format!(" {r}"),
        None => String::new(),
    }
}

impl Error {
    /// Builds an [`Error::Io`] from an [`std::io::Error`] with context.
    pub fn io(context: impl Into<String>, err: &std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            message: err.to_string(),
            errno: err.raw_os_error(),
        }
    }

    /// Builds an [`Error::Checkpoint`].
    pub fn checkpoint(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Checkpoint {
            what: what.into(),
            detail: detail.into(),
        }
    }

    /// Builds an [`Error::Shm`] from an errno with context.
    pub fn shm(context: impl Into<String>, errno: nix::errno::Errno) -> Self {
        Error::Shm {
            context: context.into(),
            message: errno.desc().to_string(),
            errno: errno as i32,
        }
    }

    /// The underlying error: the cause of a [`Error::RangeFailed`], else
    /// the error itself.
    pub fn root(&self) -> &Error {
        match self {
            Error::RangeFailed { cause, .. } => cause.root(),
            e => e,
        }
    }

    /// Whether trying the same range again may succeed: transport errors,
    /// short reads, 408/429 and 5xx statuses but 501 (AIStore's "not
    /// supported": asking again gets the same answer), and a crashed
    /// worker.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport { .. } | Error::ShortRead { .. } | Error::WorkerCrashed { .. } => true,
            Error::Http { status, .. } => {
                *status == 408 || *status == 429 || (*status >= 500 && *status != 501)
            }
            _ => false,
        }
    }
}
