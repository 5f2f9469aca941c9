//! Worker processes: forked once, reused for any number of downloads.
//!
//! * [`protocol`] — the records that cross the process boundary (one JSON
//!   message per `SOCK_SEQPACKET` datagram; errors flattened to [`Error`]).
//! * [`child`] — the worker's side: set-up right after `fork`, a `ready`
//!   message, then a loop "receive task → GET the range straight into the
//!   segment (`pwrite` for `read_all`, the mapped slot for a ring) → set the
//!   slot's ready event → report".
//! * [`pool`] — the coordinator's side: a dispatcher thread that forks the
//!   workers, hands out queued tasks to idle workers, routes completions back
//!   to the reader that asked, notices a dead worker (socket EOF), reaps it,
//!   forks a replacement and re-runs its range.
//!
//! [`Error`]: crate::Error

pub(crate) mod child;
pub mod pool;
pub(crate) mod protocol;

pub use pool::{
    DEFAULT_MAX_CRASH_RETRIES, DEFAULT_MAX_DEATHS_PER_DOWNLOAD, DEFAULT_WORKERS, MAX_WORKERS,
    PoolConfig, PoolStats, WorkerPool,
};
#[cfg(feature = "test-support")]
pub use protocol::KillPoint;
