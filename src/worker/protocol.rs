//! Messages between the coordinator and a worker.
//!
//! Each message is one `SOCK_SEQPACKET` datagram holding a JSON document, so
//! message boundaries come from the socket and a dead peer reads as EOF.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::range::ByteRange;
use crate::source::retry::RetryConfig;
use crate::source::{ObjectMeta, SourceSpec};

/// Largest message either side sends (a task with a long URL and token, or
/// an error with the server's message, is far below this).
pub const MAX_MESSAGE: usize = 64 * 1024;

/// What a worker sends once, when its set-up after the fork is done.
pub const READY: &[u8] = b"ready";

/// How long a new worker may take to report [`READY`].
pub const READY_TIMEOUT_MS: u16 = 10_000;

/// One range to fetch into one place of one segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Chosen by the submitter; echoed in the [`Outcome`].
    pub id: u64,
    /// The object.
    pub source: SourceSpec,
    /// What the HEAD said; a range of another size or version is an error.
    pub expected: ObjectMeta,
    /// Bytes to fetch.
    pub range: ByteRange,
    /// Directory of the segment.
    pub shm_dir: PathBuf,
    /// Segment name.
    pub segment: String,
    /// Where in the segment `range.start` goes.
    pub seg_offset: u64,
    /// Segment offset of the slot's ready-event word, for ring slots.
    pub event_offset: Option<u64>,
    /// How the range is retried.
    pub retry: RetryConfig,
}

/// What a worker reports for a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The task's id.
    pub id: u64,
    /// Bytes written, or why not.
    pub result: std::result::Result<u64, Error>,
    /// Requests made.
    pub attempts: u32,
    /// Bytes kept from failed attempts (resumed, not fetched again).
    pub resumed_bytes: u64,
}

/// Encodes a message.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>> {
    let v = serde_json::to_vec(msg).map_err(|e| Error::Pool(format!("encoding message: {e}")))?;
    if v.len() > MAX_MESSAGE {
        return Err(Error::Pool(format!(
            "message of {} bytes is too large",
            v.len()
        )));
    }
    Ok(v)
}

/// Decodes a message.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Pool(format!("decoding message: {e}")))
}
