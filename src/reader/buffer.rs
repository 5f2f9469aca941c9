//! `read_all`: the whole object in one shared segment.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Weak};

use crate::error::{Error, Result};
use crate::range::{ByteRange, ChunkPlan};
use crate::reader::progress::Shown;
use crate::reader::{ParallelReader, cut_point};
use crate::shm::{SealedSegment, Segment, SegmentCache, SlotTable, State};
use crate::worker::pool::DownloadHandle;

/// The whole object in one shared-memory segment, filled in place by the
/// workers. Derefs to `&[u8]` (and `&mut [u8]`) without copying. Dropping it gives the
/// segment back to its pool, which keeps a few for its next `read_all`s
/// (see [`crate::PoolConfig::recycle_bytes`]) and unlinks the others.
#[derive(Debug)]
pub struct ParallelBuffer {
    /// Always `Some` until dropped.
    seg: Option<SealedSegment>,
    worker_pids: Vec<i32>,
    recycle: Weak<SegmentCache>,
    /// Ranges asked of the workers: the planned ones and the pieces cut
    /// for idle workers (not the re-runs after a worker died).
    ranges: u64,
}

impl ParallelBuffer {
    /// Name of the segment (under `/dev/shm` unless configured otherwise).
    /// A later buffer of the same pool may have the same name (its segment
    /// recycled), never while this one lives.
    pub fn segment_name(&self) -> &str {
        self.seg.as_ref().map_or("", |s| s.name())
    }

    /// Pids of the processes that wrote the ranges.
    pub fn worker_pids(&self) -> &[i32] {
        &self.worker_pids
    }

    /// Copies the bytes into a new `Vec`.
    pub fn to_vec(&self) -> Vec<u8> {
        self.deref().to_vec()
    }

    /// Ranges the workers were asked for: one request each (the DCP
    /// readers' request counts).
    #[cfg_attr(not(feature = "dcp"), allow(dead_code))]
    pub(crate) fn ranges(&self) -> u64 {
        self.ranges
    }
}

impl Deref for ParallelBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.seg.as_deref().unwrap_or(&[])
    }
}

/// The bytes are the caller's: every worker is done with the segment and
/// no task names it, so changing them in place is safe (e.g. to decode
/// into them, or to hand PyTorch a writable tensor).
impl DerefMut for ParallelBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        match self.seg.as_deref_mut() {
            Some(s) => s,
            None => &mut [],
        }
    }
}

impl Drop for ParallelBuffer {
    fn drop(&mut self) {
        // Sealed: every worker is done with it, so the pool may hand it to
        // a new download (whose workers overwrite every byte of it).
        if let (Some(seg), Some(cache)) = (self.seg.take(), self.recycle.upgrade()) {
            cache.put(seg.into_inner());
        }
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
        self.read_range_reporting(ByteRange::new(0, self.size())?, None, None)
    }

    /// [`ParallelReader::read_all`], calling `progress` with the number of
    /// bytes that arrived since its last call, as they arrive (at least
    /// every ~100 ms while bytes come in, also within one large range).
    /// The increments add up to exactly the object's size once it returns
    /// `Ok`: a range resumed after a failure, or re-run from its start after
    /// a worker died, is never counted twice.
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
        self.read_range_reporting(range, None, None)
    }

    /// [`ParallelReader::read_range`] with a progress callback, called as
    /// for [`ParallelReader::read_all_with_progress`]; the increments add
    /// up to exactly `range.len()`.
    ///
    /// # Errors
    /// As [`ParallelReader::read_range`].
    pub fn read_range_with_progress(
        &self,
        range: ByteRange,
        progress: &mut dyn FnMut(u64),
    ) -> Result<ParallelBuffer> {
        self.read_range_reporting(range, Some(progress), None)
    }

    /// [`ParallelReader::read_range_with_progress`] that asks `go_on` at
    /// least every ~100 ms whether to continue. When it answers `false`
    /// the download is cancelled (queued ranges dropped, the segment freed)
    /// and the call returns [`Error::Cancelled`]. For callers that must
    /// react to something outside while waiting, e.g. Python's Ctrl-C.
    ///
    /// ```
    /// # fn main() -> shmfetch::Result<()> {
    /// use shmfetch::{ByteRange, Error, ParallelReader, SourceSpec};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("obj");
    /// # std::fs::write(&path, vec![1u8; 300_000]).unwrap();
    /// let reader = ParallelReader::builder(SourceSpec::Local { path }).workers(2).build()?;
    /// let all = ByteRange::new(0, reader.size())?;
    /// let buf = reader.read_range_cancellable(all, &mut |_| {}, &mut || true)?;
    /// assert_eq!(buf.len(), 300_000);
    /// let stopped = reader.read_range_cancellable(all, &mut |_| {}, &mut || false);
    /// assert!(matches!(stopped, Err(Error::Cancelled)));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::Cancelled`] when `go_on` said stop; otherwise as
    /// [`ParallelReader::read_range`].
    pub fn read_range_cancellable(
        &self,
        range: ByteRange,
        progress: &mut dyn FnMut(u64),
        go_on: &mut dyn FnMut() -> bool,
    ) -> Result<ParallelBuffer> {
        self.read_range_reporting(range, Some(progress), Some(go_on))
    }

    /// The blocking `read_range`. Without a callback it sleeps on the
    /// doorbell with no timeout; with one it wakes at least every
    /// `PROGRESS_TICK` to report the bytes of ranges still in flight.
    fn read_range_reporting(
        &self,
        range: ByteRange,
        mut progress: Option<&mut dyn FnMut(u64)>,
        mut go_on: Option<&mut dyn FnMut() -> bool>,
    ) -> Result<ParallelBuffer> {
        self.check_range(range)?;
        let _span =
            tracing::debug_span!("read_range", object = %self.source().display_name(), %range)
                .entered();
        let mut job = ReadAll::start(self, range)?;
        loop {
            // Asked first, so a caller that says stop is never overtaken by
            // a download that happens to finish before the first tick.
            if let Some(go_on) = go_on.as_deref_mut()
                && !go_on()
            {
                // Dropping the job cancels its queued ranges and drops its
                // segment (never recycled: a worker may still write it).
                drop(job);
                return Err(Error::Cancelled);
            }
            if let Some(done) = job.advance(progress.as_deref_mut().unwrap_or(&mut |_| {}))? {
                return Ok(done);
            }
            if progress.is_none() && go_on.is_none() {
                job.wait();
                continue;
            }
            job.wait_at_most(PROGRESS_TICK);
            if let Some(p) = progress.as_deref_mut() {
                job.report_arrived(p);
            }
        }
    }
}

impl ParallelReader {
    pub(crate) fn check_range(&self, range: ByteRange) -> Result<()> {
        let size = self.size();
        if range.end > size {
            return Err(Error::InvalidConfig(format!(
                "range {range} of {} is past its end ({size} bytes)",
                self.source().display_name()
            )));
        }
        Ok(())
    }
}

/// How often a `read_all` with a progress callback looks at the bytes of
/// the ranges in flight when no range finishes meanwhile.
const PROGRESS_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Fewest lanes of a `read_all` (when it has that many ranges).
const MIN_LANES: usize = 64;

/// One `read_range` in progress: the data segment, a lane table with up to
/// `max(4 × workers, 64)` ranges queued or in flight, and the ranges still to start. Both the
/// blocking and the async API drive it: [`ReadAll::advance`] consumes every
/// finished lane and starts the next ranges; in between, the caller sleeps
/// on the doorbell.
///
/// **Busy until the last byte**: once every planned range has started, a
/// worker that goes idle gets the second half of the largest range still
/// being written — that range's writer stops at the cut (the limit word,
/// `shm/table/cut.rs`) and the piece goes to a free lane. So the download
/// ends when its workers end together, not when the slowest stream ends
/// its last whole chunk.
pub(crate) struct ReadAll {
    /// Where the buffer's segment goes when the user drops it. A download
    /// that ends otherwise drops its segment (unlinked, never recycled): a
    /// worker may still be writing a range of it.
    recycle: Weak<SegmentCache>,
    seg: Option<Segment>,
    dl: Option<DownloadHandle>,
    chunks: ChunkPlan,
    next: u64,
    /// Bytes of the ranges delivered so far; the download is complete at
    /// `total` (ranges cut in two make a count of ranges useless).
    done: u64,
    total: u64,
    /// Lanes released with no planned range left for them: where the
    /// pieces cut off for idle workers go.
    free: Vec<u32>,
    /// Whether ranges may be cut for idle workers (not for a server that
    /// answers only whole-object GETs, nor for one worker).
    cut_for_idle: bool,
    pids: Vec<i32>,
    /// Bytes of each lane's range already reported as progress.
    shown: Shown,
    /// Ranges started so far (planned and cut pieces).
    ranges: u64,
}

/// The data segment of a `read_all` of `len` bytes in `dir`: a recycled
/// one of the pool's when it has one there, else a new one (after dropping
/// the kept ones when `dir` has no room for it); and how many of its first
/// bytes have their pages already (a recycled one's, up to its old size).
fn data_segment(cache: &SegmentCache, dir: &std::path::Path, len: u64) -> Result<(Segment, u64)> {
    if let Some(kept) = cache.take(dir, len) {
        return Ok(kept);
    }
    let seg = cache.create_making_room(dir, || Segment::create_unreserved(dir, len))?;
    Ok((seg, 0))
}

/// Gives each idle worker a piece of the work still in flight: for as many
/// workers as have no range of this download (`workers`, its share of the
/// pool's, less the lanes writing, queued, and `queued` about to be), the second half of the
/// largest range being written, cut at a whole [`crate::shm::CUT_UNIT`] and put in a
/// lane from `free`. Never below what `shown` reported of a range (a dead
/// writer's re-run counts from 0 again). Returns the pieces with their
/// lanes, to start.
fn cut_for_idle(
    table: &SlotTable,
    workers: usize,
    free: &mut Vec<u32>,
    queued: usize,
    shown: &Shown,
) -> Vec<(u32, ByteRange)> {
    let mut busy = queued;
    // (bytes left, lane, bytes in place) of each range being written.
    let mut writing = Vec::new();
    for lane in 0..table.slots() {
        match table.word(lane).map(|w| w.state) {
            Some(State::Assigned) => busy += 1,
            Some(State::Writing) => {
                busy += 1;
                let len = table.delivered_range(lane).map_or(0, |d| d.len());
                let got = table
                    .received_in_flight(lane)
                    .unwrap_or(0)
                    .max(shown.of(lane))
                    .min(len);
                writing.push((len - got, lane, got));
            }
            _ => {}
        }
    }
    let mut pieces = Vec::new();
    let mut idle = workers.saturating_sub(busy);
    while idle > 0 {
        // The lane the piece goes to, taken only once the cut is made.
        let Some(&to) = free.last() else {
            break;
        };
        writing.sort_unstable();
        let Some(&(left, lane, got)) = writing.last() else {
            break;
        };
        let Some(at) = cut_point(got, left) else {
            break;
        };
        match table.cut(lane, at) {
            Some(piece) => {
                free.pop();
                pieces.push((to, piece));
                if let Some(last) = writing.last_mut() {
                    *last = (at - got, lane, got);
                }
                idle -= 1;
            }
            // Its writer reserved past the cut, or just finished: look
            // again at the next wake-up.
            None => {
                writing.pop();
            }
        }
    }
    pieces
}

impl ReadAll {
    pub(crate) fn start(reader: &ParallelReader, range: ByteRange) -> Result<ReadAll> {
        // No up-front reservation of the data segment: workers write it
        // with pwrite, which allocates each page as it fills it (a full
        // /dev/shm is an ENOSPC error there, never a SIGBUS: workers do not
        // map it), and `create_unreserved` checked the room. Reserving
        // first would zero every page only to overwrite it, under the inode
        // lock the writers need (measured: 10-17% slower).
        let (seg, allocated) =
            data_segment(reader.pool().segments(), reader.shm_dir(), range.len())?;
        // A server without Range support: the whole range is one task, one
        // streaming GET (see `ObjectMeta::no_ranges`).
        let chunk_size = if reader.meta().no_ranges {
            range.len().max(1)
        } else {
            reader.chunk_size_now()
        };
        let chunks = ChunkPlan::new(range.start, range.end, chunk_size)?;
        let mut job = ReadAll {
            recycle: Arc::downgrade(reader.pool().segments()),
            seg: Some(seg),
            dl: None,
            chunks,
            next: 0,
            done: 0,
            total: range.len(),
            free: Vec::new(),
            cut_for_idle: !reader.meta().no_ranges && reader.pool().workers() > 1,
            pids: Vec::new(),
            shown: Shown::default(),
            ranges: 0,
        };
        if job.chunks.is_empty() {
            return Ok(job);
        }
        // Enough lanes that a worker that finishes finds its next task
        // already queued at the pool even when this thread is not scheduled
        // for a while (workers busy on every core): at least 64, four per
        // worker. A lane costs 64 bytes of record and 1 KiB of error box.
        let lanes = job
            .chunks
            .len()
            .min((4 * reader.pool().workers()).max(MIN_LANES) as u64) as u32;
        let table = SlotTable::create(reader.shm_dir(), lanes, 0, range.start, range.len())?;
        // Workers store straight into the pages that exist (one copy, no
        // zeroing to pay) and pwrite the rest (see `worker/child.rs`).
        table.set_data_allocated(allocated);
        let data = job.seg.as_ref().map(|s| s.name().to_string());
        let dl = reader.open_download(table, data.as_deref())?;
        let first: Vec<_> = (0..lanes)
            .filter_map(|lane| Some((lane, job.chunks.get(u64::from(lane))?)))
            .collect();
        dl.start_many(&first)?;
        job.ranges = first.len() as u64;
        job.next = u64::from(lanes);
        job.dl = Some(dl);
        Ok(job)
    }

    /// Takes every finished lane: a `Ready` one is counted and refilled, a
    /// `Failed` one ends the download with its error. Returns the buffer
    /// once every range is in.
    pub(crate) fn advance(
        &mut self,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Option<ParallelBuffer>> {
        if let Some(dl) = &self.dl {
            let table = dl.table();
            let mut refill = Vec::new();
            for lane in 0..table.slots() {
                match table.word(lane).map(|w| w.state) {
                    Some(State::Ready) => {
                        let r = table.result(lane);
                        let want = table.delivered_range(lane).map_or(0, |d| d.len());
                        if r.bytes != want {
                            return Err(Error::Pool(format!(
                                "lane {lane} was published with {} bytes of its {want}",
                                r.bytes
                            )));
                        }
                        dl.pool().count(&r);
                        let rest = self.shown.finished(lane, r.bytes);
                        if rest > 0 {
                            progress(rest);
                        }
                        let pid = r.pid as i32;
                        if !self.pids.contains(&pid) {
                            self.pids.push(pid);
                        }
                        self.done += want;
                        table.release(lane);
                        if let Some(r) = self.chunks.get(self.next) {
                            refill.push((lane, r));
                            self.next += 1;
                        } else {
                            self.free.push(lane);
                        }
                    }
                    Some(State::Failed) => {
                        let e = table.error(lane);
                        tracing::debug!(error = %e, "read_all failed");
                        return Err(e);
                    }
                    _ => {}
                }
            }
            if self.cut_for_idle && self.next >= self.chunks.len() {
                // Only the workers this download's share counts: one it
                // does not use is most likely busy with another download.
                let cuts = cut_for_idle(
                    table,
                    dl.pool().share(0),
                    &mut self.free,
                    refill.len(),
                    &self.shown,
                );
                dl.pool().count_cuts(cuts.len() as u64);
                refill.extend(cuts);
            }
            dl.start_many(&refill)?;
            self.ranges += refill.len() as u64;
        }
        if self.done < self.total {
            return Ok(None);
        }
        // Every range was published Ready; closing the download (dropping
        // the handle) means no task can name the segment again.
        self.dl = None;
        let seg = self
            .seg
            .take()
            .ok_or_else(|| Error::Pool("read_all finished twice".into()))?;
        Ok(Some(ParallelBuffer {
            seg: Some(SealedSegment::seal(seg)),
            worker_pids: std::mem::take(&mut self.pids),
            recycle: self.recycle.clone(),
            ranges: self.ranges,
        }))
    }

    /// Sleeps until a worker (or the supervisor) rings the doorbell. No
    /// spin first, unlike the ring's consumer: lanes are queued several per
    /// worker, so a wake-up's latency delays no worker, and spinning would
    /// take a core from them (measured: -27% chunks/s at 64 KiB chunks).
    pub(crate) fn wait(&self) {
        if let Some(dl) = &self.dl {
            dl.doorbell().wait();
        }
    }

    /// [`ReadAll::wait`], but for at most `at_most` (a consumer that
    /// reports progress in between).
    pub(crate) fn wait_at_most(&self, at_most: std::time::Duration) {
        if let Some(dl) = &self.dl {
            dl.doorbell().wait_at_most(at_most);
        }
    }

    /// Reports the bytes that arrived in ranges still in flight since the
    /// last call (see `reader/progress.rs`).
    pub(crate) fn report_arrived(&mut self, progress: &mut dyn FnMut(u64)) {
        if let Some(dl) = &self.dl {
            let new = self.shown.arrived(dl.table());
            if new > 0 {
                progress(new);
            }
        }
    }

    /// The doorbell to await (async).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn doorbell(&self) -> Option<&crate::shm::Doorbell> {
        self.dl.as_ref().map(|d| d.doorbell())
    }
}
