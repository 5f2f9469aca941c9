//! POSIX shared memory: named segments in `/dev/shm` and the per-slot ready
//! events that live inside them.
//!
//! This module owns every raw pointer of the crate. A [`Segment`] is created
//! exclusive (`O_CREAT | O_EXCL`), mode `0600`, under a hidden temporary
//! name, locked with an exclusive `flock` that its owner holds for the
//! segment's whole life, then renamed (never replacing) to
//! `shmfetch-<owner pid>-<random>`; it is unlinked when its owner drops it.
//! [`remove_orphans`] removes exactly the segments whose lock it can take,
//! so a live owner in another PID namespace keeps its segments; the first
//! segment a process creates in a directory cleans that directory
//! ([`remove_orphans_once`]). Workers open segments but never lock them. A
//! full `/dev/shm` is an [`Error::ShmNoSpace`], never a `SIGBUS`: segments
//! that workers map (rings) have their space reserved with `posix_fallocate`
//! at creation; `read_all` segments are checked against the free space and
//! filled with `pwrite` ([`open_for_write`]), which reports `ENOSPC`. A
//! worker keeps its mapping of a ring ([`Mapping::open_whole`]) across tasks.
//!
//! Ready events ([`SlotEvents`]) are `u32` futex words at the start of a ring
//! segment: the coordinator marks a slot `FILLING` before handing it to a
//! worker, the worker stores `READY` (or `FAILED`) with release ordering and
//! wakes waiters, the consumer waits with a timeout (`FUTEX_WAIT` without
//! `FUTEX_PRIVATE_FLAG`, so it works across processes).
//!
//! [`Error::ShmNoSpace`]: crate::Error::ShmNoSpace

mod event;
mod segment;

pub use event::{EVENT_STRIDE, SlotEvents, SlotState};
pub use segment::{
    DEFAULT_SHM_DIR, Mapping, SEGMENT_PREFIX, Segment, TEMP_MIN_AGE, TEMP_PREFIX, open_for_write,
    remove_orphans, remove_orphans_once, try_remove_orphans,
};
