//! Recycled `read_all` segments: a pool keeps the segments of buffers its
//! users dropped and hands them to its next `read_all`, so their pages are
//! not freed, allocated and mapped again for every download. Rings of
//! `create_iter` are kept the same way for the next ring of the same size
//! (see `SlotTable::keep_for_reuse`).
//!
//! Only a segment every process is done writing comes back: one whose
//! download published every range `Ready` (each worker closes its
//! descriptor before publishing) and was closed, and whose buffer was then
//! dropped. A download that fails or is abandoned drops its segment
//! (unlinked) instead, since a worker may still be writing a range of it.
//! A kept segment stays a [`Segment`]: locked, listed as this process's own
//! (so `remove_own_segments`, `gc` and the orphan cleanup see it as any
//! other), unlinked when the cache goes with its pool.

use std::borrow::Borrow;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{Error, Result};
use crate::shm::Segment;

/// Most segments one cache keeps, whatever their size.
const MAX_KEPT: usize = 4;

/// A pool's kept segments, at most `max_bytes` in all (and never more
/// than a quarter of a directory's size in that directory).
#[derive(Debug)]
pub(crate) struct SegmentCache {
    max_bytes: u64,
    kept: Mutex<Kept>,
    reused: AtomicU64,
}

/// What a cache keeps, oldest first.
#[derive(Debug, Default)]
struct Kept {
    /// Segments of dropped `read_all` buffers.
    buffers: Vec<Segment>,
    /// Rings whose iterator finished. A ring's old table may still hold
    /// its `Arc` (until the dispatcher lets go of the download); it is
    /// handed out only once it does not.
    rings: Vec<Arc<Segment>>,
}

impl Kept {
    fn bytes(&self) -> u64 {
        let b: u64 = self.buffers.iter().map(|s| s.len() as u64).sum();
        b + self.rings.iter().map(|s| s.len() as u64).sum::<u64>()
    }
}

/// Removes the oldest of `v` while the cache holds more than `max_bytes`
/// (`total` now) or more than [`MAX_KEPT`] of them, keeping the newest;
/// returns them, to be dropped outside the lock.
fn evict<S: Borrow<Segment>>(v: &mut Vec<S>, mut total: u64, max_bytes: u64) -> Vec<S> {
    let mut evicted = Vec::new();
    while v.len() > 1 && (total > max_bytes || v.len() > MAX_KEPT) {
        let old = v.remove(0);
        total -= old.borrow().len() as u64;
        evicted.push(old);
    }
    evicted
}

/// Removes and returns the members of `v` in `dir`.
fn take_in<S: Borrow<Segment>>(v: &mut Vec<S>, dir: &Path) -> Vec<S> {
    let (gone, stay) = std::mem::take(v)
        .into_iter()
        .partition(|s| s.borrow().dir() == dir);
    *v = stay;
    gone
}

impl SegmentCache {
    pub(crate) fn new(max_bytes: u64) -> SegmentCache {
        SegmentCache {
            max_bytes,
            kept: Mutex::new(Kept::default()),
            reused: AtomicU64::new(0),
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A kept segment in `dir`, the closest in size, resized to `len`
    /// bytes, and how many of its first bytes have their pages already (a
    /// kept buffer was written whole; growing adds a hole); `None` when
    /// there is none (or it cannot be resized: it is then dropped).
    pub(crate) fn take(&self, dir: &Path, len: u64) -> Option<(Segment, u64)> {
        if len == 0 {
            return None;
        }
        let mut seg = {
            let mut kept = self.kept();
            let i = kept
                .buffers
                .iter()
                .enumerate()
                .filter(|(_, s)| s.dir() == dir)
                .min_by_key(|(_, s)| (s.len() as u64).abs_diff(len))?
                .0;
            kept.buffers.swap_remove(i)
        };
        let allocated = (seg.len() as u64).min(len);
        match seg.resize(len) {
            Ok(()) => {
                self.reused.fetch_add(1, Ordering::Relaxed);
                Some((seg, allocated))
            }
            Err(e) => {
                tracing::debug!(segment = seg.name(), error = %e, "not recycling a segment");
                None
            }
        }
    }

    /// Keeps `seg` for a later [`SegmentCache::take`], evicting the oldest
    /// kept segments beyond the bound. Call only with a segment no process
    /// can write any more (see the module's comment).
    pub(crate) fn put(&self, seg: Segment) {
        let len = seg.len() as u64;
        if len == 0 || len > self.limit(seg.dir()) {
            return;
        }
        let evicted = {
            let mut kept = self.kept();
            kept.buffers.push(seg);
            let total = kept.bytes();
            evict(&mut kept.buffers, total, self.max_bytes)
        };
        // Unlinked and unmapped outside the lock.
        drop(evicted);
    }

    /// Keeps a finished ring's segment for a later ring of its size
    /// ([`SegmentCache::take_ring`]), evicting the oldest kept rings beyond
    /// the bound. Returns whether it was kept. Call only once no worker may
    /// write it any more.
    pub(crate) fn put_ring(&self, seg: Arc<Segment>) -> bool {
        let len = seg.len() as u64;
        if self.max_bytes == 0 || len == 0 || len > self.limit(seg.dir()) {
            return false;
        }
        let evicted = {
            let mut kept = self.kept();
            kept.rings.push(seg);
            let total = kept.bytes();
            evict(&mut kept.rings, total, self.max_bytes)
        };
        drop(evicted);
        true
    }

    /// A kept ring segment in `dir` of exactly `len` bytes whose old table
    /// is gone (this cache holds its only reference); `None` otherwise.
    pub(crate) fn take_ring(&self, dir: &Path, len: u64) -> Option<Segment> {
        let seg = {
            let mut kept = self.kept();
            let i = kept.rings.iter().position(|s| {
                s.dir() == dir && s.len() as u64 == len && Arc::strong_count(s) == 1
            })?;
            Arc::try_unwrap(kept.rings.swap_remove(i)).ok()?
        };
        self.reused.fetch_add(1, Ordering::Relaxed);
        Some(seg)
    }

    /// Drops every kept segment in `dir` (to make room there). Returns
    /// whether there was one.
    pub(crate) fn clear(&self, dir: &Path) -> bool {
        let (buffers, rings) = {
            let mut kept = self.kept();
            (
                take_in(&mut kept.buffers, dir),
                take_in(&mut kept.rings, dir),
            )
        };
        !buffers.is_empty() || !rings.is_empty()
    }

    /// `create()` a new segment in `dir`; when the directory is full, drops
    /// the segments kept there and tries once more. What this pool keeps
    /// never makes a download of its own fail for want of room.
    pub(crate) fn create_making_room(
        &self,
        dir: &Path,
        create: impl Fn() -> Result<Segment>,
    ) -> Result<Segment> {
        match create() {
            Err(Error::ShmNoSpace { .. }) if self.clear(dir) => create(),
            r => r,
        }
    }

    /// Segments handed out again so far.
    pub(crate) fn reused(&self) -> u64 {
        self.reused.load(Ordering::Relaxed)
    }

    /// The most bytes kept in `dir`: `max_bytes`, and at most a quarter of
    /// the directory's size (a small `/dev/shm`, e.g. a container's 64 MiB,
    /// is left to the downloads).
    fn limit(&self, dir: &Path) -> u64 {
        let size = match nix::sys::statvfs::statvfs(dir) {
            #[allow(clippy::unnecessary_cast)] // the field types differ between targets
            Ok(s) => s.blocks() as u64 * s.fragment_size() as u64,
            Err(_) => 0,
        };
        self.max_bytes.min(size / 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_kept_segment_is_resized_keeps_its_name_and_goes_with_the_cache() {
        let d = tempfile::tempdir().unwrap();
        let cache = SegmentCache::new(1 << 20);
        let seg = Segment::create_unreserved(d.path(), 3 * 4096 + 5).unwrap();
        let name = seg.name().to_string();
        cache.put(seg);
        assert!(cache.take(Path::new("/elsewhere"), 100).is_none());
        for len in [100, 5 * 4096 + 1, 4096] {
            let before = std::fs::metadata(d.path().join(&name)).unwrap().len();
            let (seg, allocated) = cache.take(d.path(), len).unwrap();
            assert_eq!((seg.name(), seg.len() as u64), (name.as_str(), len));
            assert_eq!(allocated, before.min(len));
            assert_eq!(std::fs::metadata(d.path().join(&name)).unwrap().len(), len);
            // SAFETY: no other process knows this segment.
            unsafe { std::ptr::write_bytes(seg.as_ptr(), 7, seg.len()) };
            cache.put(seg);
        }
        assert_eq!(cache.reused(), 3);
        assert_eq!(names(d.path()), vec![name]);
        drop(cache);
        assert!(names(d.path()).is_empty(), "unlinked with the cache");
    }

    #[test]
    fn the_cache_keeps_at_most_its_bound() {
        let d = tempfile::tempdir().unwrap();
        let cache = SegmentCache::new(10_000);
        for _ in 0..3 {
            cache.put(Segment::create_unreserved(d.path(), 4096).unwrap());
        }
        assert_eq!(names(d.path()).len(), 2, "the oldest went");
        cache.put(Segment::create_unreserved(d.path(), 20_000).unwrap());
        assert_eq!(
            names(d.path()).len(),
            2,
            "one larger than the bound is not kept"
        );
        assert!(cache.clear(d.path()));
        assert!(names(d.path()).is_empty());
    }
}
