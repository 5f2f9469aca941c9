//! A segment whose writers are all done: its bytes belong to its owner.

use std::ops::{Deref, DerefMut};

use crate::shm::segment::Segment;

/// A segment every worker has finished writing (each of its ranges was
/// published `Ready` in its slot table, and the table is gone, so no task
/// can name it again). Derefs to its bytes; unlinked on drop.
#[derive(Debug)]
pub(crate) struct SealedSegment(Segment);

impl SealedSegment {
    /// Seals `seg`. Call only once no process will write it again: every
    /// range of its download was published and the download is closed.
    pub(crate) fn seal(seg: Segment) -> SealedSegment {
        SealedSegment(seg)
    }

    /// The segment again, for [`crate::shm::SegmentCache::put`]: its
    /// writers are still all done, and the cache hands it only to a new
    /// download, whose workers overwrite every byte before it is sealed again.
    pub(crate) fn into_inner(self) -> Segment {
        self.0
    }

    /// The segment's name.
    pub(crate) fn name(&self) -> &str {
        self.0.name()
    }
}

impl Deref for SealedSegment {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: sealed segments have no writer left (see `seal`), and the
        // mapping lives as long as `self`.
        unsafe { self.0.slice(0, self.0.len()) }
    }
}

impl DerefMut for SealedSegment {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: sealed segments have no writer left and no task names
        // them (see `seal`): this process's owner is their only user.
        unsafe { self.0.as_mut_slice() }
    }
}
