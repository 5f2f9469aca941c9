//! POSIX shared memory: named segments in `/dev/shm`, the slot table that
//! is the one record of each download's ranges, and its doorbell.
//!
//! This module owns every raw pointer of the crate. A `Segment` is created
//! exclusive (`O_CREAT | O_EXCL`), mode `0600`, under a hidden temporary
//! name, locked with an exclusive `flock` that its owner holds for the
//! segment's whole life, then renamed (never replacing) to
//! `shmfetch-<owner pid>-<random>`; it is unlinked when its owner drops it.
//! [`remove_orphans`] removes exactly the segments whose lock it can take,
//! so a live owner in another PID namespace keeps its segments; the first
//! segment a process creates in a directory cleans that directory
//! ([`remove_orphans_once`]). Workers open segments but never lock them. A
//! full `/dev/shm` is an [`Error::ShmNoSpace`], never a `SIGBUS`: segments
//! that workers map (slot tables and rings) have their space reserved with
//! `posix_fallocate` at creation; `read_all` data segments are checked
//! against the free space and filled with `pwrite` (`open_for_write`),
//! which reports `ENOSPC`, except where their pages exist already (a
//! recycled segment, written whole): those ranges workers map and store
//! into, which needs no room.
//!
//! The slot table (`SlotTable`, see `table.rs` for the layout, the state
//! machine and the supervisor rule) is the only truth about a range: a
//! worker claims a slot by compare-and-swap, writes, and publishes `Ready`
//! or `Failed` in the slot word; the consumer reads only that word and
//! sleeps on the download's `Doorbell` (an eventfd) in between.
//!
//! [`Error::ShmNoSpace`]: crate::Error::ShmNoSpace

mod doorbell;
#[cfg(feature = "test-support")]
pub(crate) mod handoff;
mod recycle;
mod sealed;
mod segment;
mod table;

pub(crate) use doorbell::{Doorbell, recv_with_fds, ring_fd, send_with_fd};
pub(crate) use recycle::SegmentCache;
pub(crate) use sealed::SealedSegment;
pub use segment::{
    DEFAULT_SHM_DIR, SEGMENT_PREFIX, TEMP_MIN_AGE, TEMP_PREFIX, remove_orphans,
    remove_orphans_once, remove_own_segments, try_remove_orphans,
};
pub(crate) use segment::{Mapping, Segment, open_for_write};
pub(crate) use table::{CUT_UNIT, Claim, Limiter, Received, SlotResult, SlotTable, State};
