//! Worker processes: forked once, reused for any number of downloads.
//!
//! * `protocol` — what crosses the process boundary: per download, its
//!   constants once (`Open`, with the doorbell's eventfd attached); then
//!   16-byte task records `(download, slot, generation)`; a worker answers
//!   only "done". Results and errors live in the download's slot table.
//! * `child` — the worker's side: set-up right after `fork`, a `ready`
//!   message, then a loop "receive task → claim the slot (CAS) → GET the
//!   range the slot names straight into shared memory (`pwrite` for
//!   `read_all`, the mapped slot for a ring) → publish Ready/Failed in the
//!   slot word → ring the doorbell → report done".
//! * [`pool`] — the coordinator's side: a dispatcher thread that forks the
//!   workers, hands out tasks to idle workers, notices a dead worker from
//!   the kernel (socket EOF), reaps it, applies the supervisor rule to the
//!   task it held (re-run only if its slot says it was not delivered) and
//!   forks a replacement.

pub(crate) mod child;
pub(crate) mod part;
pub mod pool;
pub(crate) mod protocol;

pub use pool::{
    DEFAULT_MAX_CRASH_RETRIES, DEFAULT_MAX_DEATHS_PER_DOWNLOAD, DEFAULT_WORKERS, MAX_WORKERS,
    PoolConfig, PoolStats, RECYCLE_BYTES, WorkerPool,
};
#[cfg(feature = "test-support")]
pub use protocol::KillPoint;
