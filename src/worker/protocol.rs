//! Messages between the coordinator and a worker.
//!
//! Each message is one `SOCK_SEQPACKET` datagram holding a JSON document, so
//! message boundaries come from the socket and a dead peer reads as EOF.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::range::ByteRange;
use crate::source::SourceSpec;

/// Largest message either side sends (a task with a long URL and token, or
/// an error with the server's message, is far below this).
pub const MAX_MESSAGE: usize = 64 * 1024;

/// One range to fetch into one place of one segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Chosen by the submitter; echoed in the [`Outcome`].
    pub id: u64,
    /// The object.
    pub source: SourceSpec,
    /// Size seen at HEAD; a range of an object of another size is an error.
    pub expected_size: u64,
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
    /// Attempts per range for retryable errors (1 = no retry).
    pub attempts: u32,
}

/// What a worker reports for a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The task's id.
    pub id: u64,
    /// Bytes written, or why not.
    pub result: std::result::Result<u64, Error>,
    /// Attempts made.
    pub attempts: u32,
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
