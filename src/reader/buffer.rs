//! `read_all`: the whole object in one shared segment.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::range::{ByteRange, split_into_chunks};
use crate::reader::ParallelReader;
use crate::shm::Segment;
use crate::worker::pool::JobGroup;
use crate::worker::protocol::Task;

/// The whole object in one shared-memory segment, filled in place by the
/// workers. Derefs to `&[u8]` without copying; dropping it unlinks the
/// segment.
#[derive(Debug)]
pub struct ParallelBuffer {
    seg: Segment,
    worker_pids: Vec<i32>,
}

impl ParallelBuffer {
    /// Name of the segment (under `/dev/shm` unless configured otherwise).
    pub fn segment_name(&self) -> &str {
        self.seg.name()
    }

    /// Pids of the processes that wrote the ranges.
    pub fn worker_pids(&self) -> &[i32] {
        &self.worker_pids
    }

    /// Copies the bytes into a new `Vec`.
    pub fn to_vec(&self) -> Vec<u8> {
        self.deref().to_vec()
    }
}

impl Deref for ParallelBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: every range has completed (read_all returns the buffer
        // only then) and no worker writes to this segment again.
        unsafe { self.seg.slice(0, self.seg.len()) }
    }
}

impl AsRef<[u8]> for ParallelBuffer {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl ParallelReader {
    /// Fetches the whole object into one shared segment.
    ///
    /// # Errors
    /// [`Error::ShmNoSpace`] when `/dev/shm` cannot hold the object; the
    /// first range error (after retries), naming the object and range. No
    /// segment is left behind on error.
    pub fn read_all(&self) -> Result<ParallelBuffer> {
        self.read_all_with_progress(&mut |_| {})
    }

    /// [`ParallelReader::read_all`], calling `progress` with the number of
    /// bytes of each completed range.
    ///
    /// # Errors
    /// As [`ParallelReader::read_all`].
    pub fn read_all_with_progress(&self, progress: &mut dyn FnMut(u64)) -> Result<ParallelBuffer> {
        self.read_range_with_progress(ByteRange::new(0, self.size())?, progress)
    }

    /// Fetches `range` of the object into one shared segment (byte 0 of the
    /// buffer is `range.start`), split into chunks fetched by the workers.
    ///
    /// ```
    /// # fn main() -> shmfetch::Result<()> {
    /// use shmfetch::{ByteRange, ParallelReader, SourceSpec};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("obj");
    /// # std::fs::write(&path, (0..10_000u32).map(|i| i as u8).collect::<Vec<_>>()).unwrap();
    /// let reader = ParallelReader::builder(SourceSpec::Local { path }).workers(2).build()?;
    /// let part = reader.read_range(ByteRange::new(1000, 1300)?)?;
    /// assert_eq!(part.len(), 300);
    /// assert_eq!(part[0], (1000u32 % 256) as u8);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a range past the end of the object;
    /// otherwise as [`ParallelReader::read_all`].
    pub fn read_range(&self, range: ByteRange) -> Result<ParallelBuffer> {
        self.read_range_with_progress(range, &mut |_| {})
    }

    /// [`ParallelReader::read_range`] with a progress callback.
    ///
    /// # Errors
    /// As [`ParallelReader::read_range`].
    pub fn read_range_with_progress(
        &self,
        range: ByteRange,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ParallelBuffer> {
        let size = self.size();
        if range.end > size {
            return Err(Error::InvalidConfig(format!(
                "range {range} of {} is past its end ({size} bytes)",
                self.source().display_name()
            )));
        }
        let _span =
            tracing::debug_span!("read_range", object = %self.source().display_name(), %range)
                .entered();
        let seg = Segment::create_unreserved(self.shm_dir(), range.len())?;
        let chunks: Vec<ByteRange> = split_into_chunks(range.start, range.end, self.chunk_size())?;
        let n = chunks.len();
        let (tx, rx) = crossbeam_channel::unbounded();
        let group = Arc::new(JobGroup::default());
        // No up-front reservation here: workers write the segment's file
        // with pwrite, which allocates each page as it fills it (a full
        // /dev/shm is an ENOSPC error there, never a SIGBUS: workers do not
        // map read_all segments), and `create_unreserved` checked the room.
        // Reserving first would zero every page only to overwrite it, under
        // the inode lock the writers need (measured: 10-17% slower).
        let tasks: Vec<Task> = chunks
            .iter()
            .enumerate()
            .map(|(i, r)| Task {
                id: i as u64,
                source: self.source().clone(),
                expected: self.meta().clone(),
                range: *r,
                shm_dir: seg.dir().to_path_buf(),
                segment: seg.name().to_string(),
                seg_offset: r.start - range.start,
                event_offset: None,
                retry: self.retry_config(),
            })
            .collect();
        self.pool().submit(tasks, &tx, &group)?;
        drop(tx);
        let mut pids = Vec::new();
        let mut done = 0;
        while done < n {
            let c = match rx.recv_timeout(Duration::from_secs(3600)) {
                Ok(c) => c,
                Err(_) => {
                    group.cancel.store(true, Ordering::Relaxed);
                    return Err(Error::Pool("worker pool stopped answering".into()));
                }
            };
            match c.result {
                Ok(bytes) => {
                    done += 1;
                    progress(bytes);
                    if !pids.contains(&c.pid) {
                        pids.push(c.pid);
                    }
                }
                Err(e) => {
                    group.cancel.store(true, Ordering::Relaxed);
                    tracing::error!(error = %e, "read_all failed");
                    return Err(e);
                }
            }
        }
        Ok(ParallelBuffer {
            seg,
            worker_pids: pids,
        })
    }
}
