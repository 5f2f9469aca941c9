//! Messages between the coordinator and a worker.
//!
//! One message per `SOCK_SEQPACKET` datagram (message boundaries come from
//! the socket, a dead peer reads as EOF), a tag byte first:
//!
//! * coordinator → worker
//!   * `O` + JSON [`Open`], with the download's doorbell attached
//!     (`SCM_RIGHTS`): the per-download constants, sent once per worker;
//!   * `T` + 16 bytes [`TaskRecord`]: "claim slot `slot` at generation
//!     `generation` of download `download`" — the range itself is in the slot;
//!   * `C` + 8 bytes: the download is over, forget it (unmap, close);
//!   * `A` + JSON [`LookupAnswer`]: the addresses of a name a worker asked
//!     for (or why there are none).
//! * worker → coordinator
//!   * `ready` once, when its set-up after the fork is done;
//!   * `D`: done with the last task, send the next (the result is in the
//!     slot table, not here);
//!   * `X` + JSON [`Error`]: the task could not even reach its slot (the
//!     table cannot be mapped); the supervisor records the failure in the
//!     slot on the worker's behalf;
//!   * `W` + JSON [`RetryNotice`]: the current task's range failed and is
//!     retried after a backoff; the coordinator logs it (a worker never
//!     logs) and keeps the worker busy — sleeping in backoff is alive;
//!   * `R` + JSON [`Lookup`]: resolve this `host:port` for me (a worker
//!     never calls `getaddrinfo`; see [`crate::worker::child`]). The worker
//!     blocks for the `A` with the same id, keeping any other message that
//!     arrives meanwhile for after its task.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::source::http::ResolvedHost;
use crate::source::retry::RetryConfig;
use crate::source::{ObjectMeta, SourceSpec};

/// Largest message either side sends (an open message with a long URL and
/// token, or an error with the server's message, is far below this).
pub(crate) const MAX_MESSAGE: usize = 64 * 1024;

/// What a worker sends once, when its set-up after the fork is done.
pub(crate) const READY: &[u8] = b"ready";

/// How long a new worker may take to report [`READY`].
pub(crate) const READY_TIMEOUT_MS: u16 = 10_000;

/// Where a test may make a worker kill itself (`SIGKILL`), to prove that no
/// instant of a worker's death delivers wrong bytes. Each download carries
/// a number of kill tokens in its slot table; a worker at the point takes
/// one, if any is left, and dies.
#[cfg(feature = "test-support")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KillPoint {
    /// Right after claiming the slot (`Writing`), before any byte.
    AfterClaim,
    /// After the first bytes of the range were written.
    MidWrite,
    /// After publishing `Ready`/`Failed`, before telling the pool.
    AfterPublish,
    /// After telling the pool it is done.
    AfterReport,
}

/// The constants of one download, sent once to each worker that serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Open {
    /// Chosen by the pool; tasks name it.
    pub download: u64,
    /// The object.
    pub source: SourceSpec,
    /// What the HEAD said; a range of another size or version is an error.
    pub expected: ObjectMeta,
    /// How ranges are retried.
    pub retry: RetryConfig,
    /// Directory of the segments.
    pub shm_dir: PathBuf,
    /// The slot table (for a ring, also the slots' bytes).
    pub table: String,
    /// The data segment of a lane table (`read_all`), written with `pwrite`.
    pub data: Option<String>,
    /// The host names the download contacts first (the URL's host, the
    /// AIStore gateway), resolved by the coordinator: a worker never
    /// resolves a name itself. [`crate::worker::WorkerPool`] fills it when
    /// left empty.
    #[serde(default)]
    pub addrs: Vec<ResolvedHost>,
    /// Set for an upload: the slots hold parts to send there, instead of
    /// ranges to fetch from `source` (which names the destination).
    #[serde(default)]
    pub upload: Option<UploadTarget>,
    /// Test hook: where workers of this download die.
    #[cfg(feature = "test-support")]
    pub kill: Option<KillPoint>,
}

/// Where an upload's parts go. A part is the bytes of a ring slot; its
/// range is its place in the object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum UploadTarget {
    /// `pwrite` at the range's offset into this file (created by the
    /// coordinator).
    File {
        /// The file (a temporary name until the upload completes).
        path: PathBuf,
    },
    /// Part `range.start / part_size + 1` of an AIStore multipart upload of
    /// the download's `source`.
    AisPart {
        /// The upload id the gateway gave.
        upload_id: String,
        /// Every part but the last has this size.
        part_size: u64,
    },
    /// `PUT` to the URL that came with the task (a presigned S3
    /// `UploadPart`), with `Content-MD5`.
    UrlPart,
}

/// One task: a slot of a download, at a generation (an upload's task may
/// also carry the URL its part goes to: [`encode_task`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TaskRecord {
    /// The download.
    pub download: u64,
    /// The slot to claim.
    pub slot: u32,
    /// The generation it must still be assigned at.
    pub generation: u32,
}

/// A worker's request to resolve a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lookup {
    /// Chosen by the worker; the answer repeats it.
    pub id: u64,
    /// The host name (lower case, not an IP literal).
    pub host: String,
    /// The port.
    pub port: u16,
}

/// A worker's report that its task's range failed and will be retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RetryNotice {
    /// The attempt that failed (1-based).
    pub attempt: u32,
    /// The backoff before the next attempt, in milliseconds.
    pub delay_ms: u64,
    /// Why the attempt failed.
    pub cause: String,
}

/// The coordinator's answer to a [`Lookup`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LookupAnswer {
    /// The request's id.
    pub id: u64,
    /// The addresses, or why there are none.
    pub result: std::result::Result<Vec<SocketAddr>, String>,
}

/// A decoded coordinator → worker message.
#[derive(Debug)]
pub(crate) enum ToWorker {
    /// [`Open`] (boxed: it is by far the largest).
    Open(Box<Open>),
    /// [`TaskRecord`], and the URL an upload's part goes to.
    Task(TaskRecord, Option<String>),
    /// Forget these downloads.
    Close(Vec<u64>),
    /// [`LookupAnswer`].
    Answer(LookupAnswer),
}

/// Done with the last task.
pub(crate) const DONE: &[u8] = b"D";

impl TaskRecord {
    /// `T` + download, slot, generation (little-endian).
    pub(crate) fn encode(&self) -> [u8; 17] {
        let mut b = [0u8; 17];
        b[0] = b'T';
        b[1..9].copy_from_slice(&self.download.to_le_bytes());
        b[9..13].copy_from_slice(&self.slot.to_le_bytes());
        b[13..17].copy_from_slice(&self.generation.to_le_bytes());
        b
    }
}

/// `T` + the record + the URL of an upload's part, if any (UTF-8, the rest
/// of the datagram).
pub(crate) fn encode_task(rec: &TaskRecord, url: Option<&str>) -> Result<Vec<u8>> {
    let mut b = rec.encode().to_vec();
    if let Some(u) = url {
        b.extend_from_slice(u.as_bytes());
    }
    if b.len() > MAX_MESSAGE {
        return Err(Error::Pool(format!(
            "a task of {} bytes is too large",
            b.len()
        )));
    }
    Ok(b)
}

/// `O` + JSON.
pub(crate) fn encode_open(open: &Open) -> Result<Vec<u8>> {
    tagged(b'O', open)
}

/// `C` + downloads (little-endian u64s): the downloads are over. A busy
/// worker's closes are held back and sent as one message when it is idle,
/// so the dispatcher never fills the socket of a worker that is not reading.
pub(crate) fn encode_close(downloads: &[u64]) -> Vec<u8> {
    let mut b = Vec::with_capacity(1 + 8 * downloads.len());
    b.push(b'C');
    for d in downloads {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b
}

/// `R` + JSON.
pub(crate) fn encode_lookup(lookup: &Lookup) -> Result<Vec<u8>> {
    tagged(b'R', lookup)
}

/// `W` + JSON.
pub(crate) fn encode_retry(notice: &RetryNotice) -> Result<Vec<u8>> {
    tagged(b'W', notice)
}

/// `A` + JSON.
pub(crate) fn encode_answer(answer: &LookupAnswer) -> Result<Vec<u8>> {
    tagged(b'A', answer)
}

/// `X` + JSON error.
pub(crate) fn encode_failure(err: &Error) -> Vec<u8> {
    tagged(b'X', err).unwrap_or_else(|_| b"X".to_vec())
}

fn tagged<T: Serialize>(tag: u8, msg: &T) -> Result<Vec<u8>> {
    let mut v = vec![tag];
    serde_json::to_writer(&mut v, msg)
        .map_err(|e| Error::Pool(format!("encoding message: {e}")))?;
    if v.len() > MAX_MESSAGE {
        return Err(Error::Pool(format!(
            "message of {} bytes is too large",
            v.len()
        )));
    }
    Ok(v)
}

fn bad(what: &str) -> Error {
    Error::Pool(format!("malformed message: {what}"))
}

fn le_u64(b: &[u8]) -> Result<u64> {
    b.try_into()
        .map(u64::from_le_bytes)
        .map_err(|_| bad("length"))
}

fn le_u32(b: &[u8]) -> Result<u32> {
    b.try_into()
        .map(u32::from_le_bytes)
        .map_err(|_| bad("length"))
}

/// Decodes a coordinator → worker message.
pub(crate) fn decode_to_worker(b: &[u8]) -> Result<ToWorker> {
    match b.split_first() {
        Some((b'O', json)) => serde_json::from_slice(json)
            .map(|o| ToWorker::Open(Box::new(o)))
            .map_err(|e| bad(&e.to_string())),
        Some((b'T', rest)) if rest.len() >= 16 => {
            let rec = TaskRecord {
                download: le_u64(&rest[0..8])?,
                slot: le_u32(&rest[8..12])?,
                generation: le_u32(&rest[12..16])?,
            };
            let url = match &rest[16..] {
                [] => None,
                u => Some(
                    std::str::from_utf8(u)
                        .map_err(|_| bad("task URL"))?
                        .to_string(),
                ),
            };
            Ok(ToWorker::Task(rec, url))
        }
        Some((b'C', rest)) if !rest.is_empty() && rest.len().is_multiple_of(8) => Ok(
            ToWorker::Close(rest.chunks_exact(8).map(le_u64).collect::<Result<_>>()?),
        ),
        Some((b'A', json)) => serde_json::from_slice(json)
            .map(ToWorker::Answer)
            .map_err(|e| bad(&e.to_string())),
        _ => Err(bad("unknown tag")),
    }
}

/// A decoded worker → coordinator message.
#[derive(Debug, PartialEq)]
pub(crate) enum FromWorker {
    /// Done with the last task.
    Done,
    /// The last task could not reach its slot.
    Failed(Error),
    /// Resolve a name.
    Lookup(Lookup),
    /// The current task is retrying its range.
    Retrying(RetryNotice),
}

/// Decodes a worker → coordinator message.
pub(crate) fn decode_from_worker(b: &[u8]) -> Result<FromWorker> {
    match b.split_first() {
        Some((b'D', [])) => Ok(FromWorker::Done),
        Some((b'X', json)) => Ok(FromWorker::Failed(
            serde_json::from_slice(json)
                .unwrap_or_else(|_| Error::Pool("a worker could not start its task".into())),
        )),
        Some((b'R', json)) => serde_json::from_slice(json)
            .map(FromWorker::Lookup)
            .map_err(|e| bad(&e.to_string())),
        Some((b'W', json)) => serde_json::from_slice(json)
            .map(FromWorker::Retrying)
            .map_err(|e| bad(&e.to_string())),
        _ => Err(bad("unknown tag")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let t = TaskRecord {
            download: u64::MAX - 3,
            slot: 7,
            generation: 1 << 31,
        };
        match decode_to_worker(&t.encode()).unwrap() {
            ToWorker::Task(d, None) => assert_eq!(d, t),
            other => panic!("{other:?}"),
        }
        let url = "http://s3.example/b/k?partNumber=3&uploadId=x%2By";
        match decode_to_worker(&encode_task(&t, Some(url)).unwrap()).unwrap() {
            ToWorker::Task(d, Some(u)) => assert_eq!((d, u.as_str()), (t, url)),
            other => panic!("{other:?}"),
        }
        match decode_to_worker(&encode_close(&[42, 7])).unwrap() {
            ToWorker::Close(ids) if ids == [42, 7] => {}
            other => panic!("{other:?}"),
        }
        let e = Error::Pool("x".into());
        assert_eq!(
            decode_from_worker(&encode_failure(&e)).unwrap(),
            FromWorker::Failed(e)
        );
        assert_eq!(decode_from_worker(DONE).unwrap(), FromWorker::Done);
        let w = RetryNotice {
            attempt: 2,
            delay_ms: 1500,
            cause: "transport error: Connection refused".into(),
        };
        assert_eq!(
            decode_from_worker(&encode_retry(&w).unwrap()).unwrap(),
            FromWorker::Retrying(w)
        );
        let l = Lookup {
            id: 9,
            host: "gw.example".into(),
            port: 51080,
        };
        assert_eq!(
            decode_from_worker(&encode_lookup(&l).unwrap()).unwrap(),
            FromWorker::Lookup(l)
        );
        for result in [
            Ok(vec![
                "127.0.0.1:80".parse().unwrap(),
                "[::1]:80".parse().unwrap(),
            ]),
            Err("no such host".to_string()),
        ] {
            let a = LookupAnswer { id: 9, result };
            match decode_to_worker(&encode_answer(&a).unwrap()).unwrap() {
                ToWorker::Answer(b) => assert_eq!(b, a),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn open_without_addresses_decodes() {
        // An `O` message without the field (from an older coordinator)
        // still decodes, with no addresses.
        let open = Open {
            download: 1,
            source: SourceSpec::Http {
                url: "http://gw.example/o".into(),
            },
            expected: ObjectMeta::default(),
            retry: RetryConfig::default(),
            shm_dir: "/dev/shm".into(),
            table: "t".into(),
            data: None,
            addrs: vec![ResolvedHost {
                host: "gw.example".into(),
                port: 80,
                addrs: vec!["10.0.0.1:80".parse().unwrap()],
            }],
            upload: None,
            #[cfg(feature = "test-support")]
            kill: None,
        };
        let bytes = encode_open(&open).unwrap();
        match decode_to_worker(&bytes).unwrap() {
            ToWorker::Open(o) => assert_eq!(*o, open),
            other => panic!("{other:?}"),
        }
        let mut v: serde_json::Value = serde_json::from_slice(&bytes[1..]).unwrap();
        v.as_object_mut().unwrap().remove("addrs");
        let bytes = [b"O".as_slice(), v.to_string().as_bytes()].concat();
        match decode_to_worker(&bytes).unwrap() {
            ToWorker::Open(o) => assert_eq!(
                *o,
                Open {
                    addrs: vec![],
                    ..open
                }
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_is_an_error() {
        for b in [&b""[..], b"T123", b"Q", b"C1", b"A{}", b"A"] {
            assert!(decode_to_worker(b).is_err());
        }
        assert!(decode_from_worker(b"D1").is_err());
        assert!(decode_from_worker(b"R{\"id\":1}").is_err());
    }
}
