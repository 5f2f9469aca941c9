//! `create_iter`: the object streamed in order through a ring of slots.
//!
//! The ring is a slot table whose slots hold their bytes (see
//! [`crate::shm`]): chunk *k* goes to slot *k* mod slots; a slot is
//! assigned its next chunk only once the consumer released the previous
//! one, so memory stays `slots × chunk_size`. The consumer reads only the
//! slot words and sleeps on the download's doorbell in between.
//!
//! **Busy until the last byte, in order**: a worker whose chunk is done
//! while the consumer still waits for an earlier one would sit idle until
//! the consumer frees a slot. Instead, the consumer cuts the earliest chunk
//! in flight with at least 2 MiB left at half of what is left, and the
//! rest goes to the slot's piece record: the idle worker writes it into the
//! same slot's memory, past the cut (the limit word keeps the two writers
//! apart, as for `read_all`'s lanes). The chunk is taken once both are
//! `Ready`; memory stays `slots × chunk_size`.

use std::io::Read;
use std::ops::Deref;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::range::{ByteRange, ChunkPlan};
use crate::reader::{MIN_CUT_PIECE, ParallelReader, cut_point};
use crate::shm::{SlotTable, State};
use crate::worker::pool::DownloadHandle;

/// Iterator over the chunks of an object, in order. Created by
/// [`ParallelReader::create_iter`].
///
/// Owned: it holds its own handle to the reader, so it can move into
/// another thread. Each item is a [`Chunk`] over its ring slot; the slot is
/// refilled once the chunk is dropped. Holding more than `slots` chunks at
/// once is an error (the next chunk would have nowhere to go).
pub struct ChunkIter {
    dl: Option<Arc<DownloadHandle>>,
    chunks: ChunkPlan,
    /// A server without Range support: this process reads the one
    /// streaming GET into the ring itself (see [`StreamFill`]).
    stream: Option<StreamFill>,
    slots: usize,
    next_submit: u64,
    next_yield: u64,
    done: bool,
    /// Whether chunks in flight may be cut for idle workers (not for one
    /// worker, nor for a server without `Range`).
    cut: bool,
    /// Records in flight, and of them writing, at the last look for a cut:
    /// a worker that finishes one (fewer in flight), or that starts one
    /// while others are idle (a new candidate), is worth waking up for.
    seen: InFlight,
}

/// How a [`ChunkIter`] of an object whose server ignores `Range`
/// ([`crate::ObjectMeta::no_ranges`]) fills the ring: the consumer's
/// thread claims each slot as a worker would (`Assigned` → `Writing` with
/// its own pid → `Ready`/`Failed`) and reads the next chunk of one
/// whole-object GET into it. A retry starts a new GET and skips the bytes
/// already delivered.
struct StreamFill {
    source: Box<dyn crate::source::ObjectSource>,
    meta: crate::source::ObjectMeta,
    retry: crate::source::retry::RetryConfig,
}

impl std::fmt::Debug for ChunkIter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkIter")
            .field("chunks", &self.chunks.len())
            .field("stream", &self.stream.is_some())
            .field("slots", &self.slots)
            .field("next", &self.next_yield)
            .finish()
    }
}

impl ParallelReader {
    /// Streams the object from `offset` in chunks, in order, through a ring
    /// of `min(workers, chunks)` shared-memory slots.
    ///
    /// The iterator holds its own clone of the reader: it is `Send` and
    /// `'static`, so it can move into a thread or outlive `self`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `offset` is past the end;
    /// [`Error::ShmNoSpace`]/[`Error::Shm`] when the ring cannot be created.
    /// Range errors come from the iterator, at the chunk they concern.
    pub fn create_iter(&self, offset: u64) -> Result<ChunkIter> {
        let chunks = ChunkPlan::new(offset, self.size(), self.chunk_size())?;
        let slots = (self.pool().workers() as u64).min(chunks.len()) as usize;
        let workers = self.pool().workers();
        // Chunks in flight are cut for idle workers (each slot then has a
        // piece record): not for one worker, nor for a server without
        // Range, nor for chunks too small to be worth a second request.
        let cut = !self.meta().no_ranges && workers > 1 && self.chunk_size() >= 2 * MIN_CUT_PIECE;
        let dl = if slots == 0 {
            None
        } else {
            let table = SlotTable::create_ring(
                self.pool().segments(),
                self.shm_dir(),
                slots as u32,
                self.chunk_size(),
                cut,
            )?;
            Some(Arc::new(self.open_download(table, None)?))
        };
        tracing::debug!(object = %self.source().display_name(), offset, chunks = chunks.len(), slots, "create_iter");
        let stream = match (&dl, self.meta().no_ranges) {
            (Some(_), true) => Some(StreamFill {
                source: self.open_source()?,
                meta: self.meta().clone(),
                retry: self.retry_config(),
            }),
            _ => None,
        };
        let mut it = ChunkIter {
            dl,
            chunks,
            cut: cut && stream.is_none(),
            stream,
            slots,
            next_submit: 0,
            next_yield: 0,
            done: false,
            seen: InFlight::default(),
        };
        it.top_up()?;
        Ok(it)
    }

    /// An [`std::io::Read`] over the object from `offset`, backed by
    /// [`ParallelReader::create_iter`].
    ///
    /// ```
    /// # fn main() -> shmfetch::Result<()> {
    /// # use shmfetch::{ParallelReader, SourceSpec};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("obj");
    /// # std::fs::write(&path, vec![7u8; 150_000]).unwrap();
    /// let reader = ParallelReader::builder(SourceSpec::Local { path }).workers(2).chunk_size(64 << 10).build()?;
    /// let mut out = Vec::new();
    /// std::io::copy(&mut reader.stream(0)?, &mut out).unwrap();
    /// assert_eq!(out, vec![7u8; 150_000]);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`ParallelReader::create_iter`].
    pub fn stream(&self, offset: u64) -> Result<ChunkReader> {
        Ok(ChunkReader {
            iter: self.create_iter(offset)?,
            current: None,
            pos: 0,
        })
    }
}

impl ChunkIter {
    /// Number of ring slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Name of the ring's segment, if the range is not empty.
    pub fn segment_name(&self) -> Option<&str> {
        self.dl.as_ref().map(|d| d.table().name())
    }

    /// Assigns every chunk whose slot is free, up to `slots` ahead.
    fn top_up(&mut self) -> Result<()> {
        let Some(dl) = &self.dl else {
            return Ok(());
        };
        if self.stream.is_some() {
            return Ok(()); // filled in `try_next`, in order
        }
        while self.next_submit < self.chunks.len()
            && self.next_submit < self.next_yield + self.slots as u64
        {
            let k = self.next_submit;
            let slot = (k % self.slots as u64) as u32;
            if dl.table().word(slot).map(|w| w.state) != Some(State::Empty) {
                break; // the consumer still holds the previous chunk of this slot
            }
            let Some(range) = self.chunks.get(k) else {
                break;
            };
            dl.start(slot, range)?;
            self.next_submit += 1;
        }
        Ok(())
    }

    /// Stream mode: reads chunk `next_yield` into its slot in this thread,
    /// if the slot is free; the slot then reads `Ready` or `Failed` like
    /// one a worker filled.
    fn fill_from_stream(&mut self) -> Result<()> {
        let (Some(dl), Some(fill)) = (&self.dl, &self.stream) else {
            return Ok(());
        };
        let k = self.next_yield;
        if k < self.next_submit {
            return Ok(()); // already filled
        }
        let slot = (k % self.slots as u64) as u32;
        if dl.table().word(slot).map(|w| w.state) != Some(State::Empty) {
            return Ok(()); // still held: reported by `try_next`
        }
        let Some(range) = self.chunks.get(k) else {
            return Ok(());
        };
        let table = dl.table();
        let generation = table.assign(slot, range)?;
        let mut claim = table.claim(slot, generation, std::process::id())?;
        let name = fill.source.name().to_string();
        let (result, stats) = crate::source::retry::fetch_range(
            fill.source.as_ref(),
            range,
            &mut crate::source::sink::SliceSink::new(table.slot_mut(&mut claim)),
            &fill.meta,
            &fill.retry,
            &mut |b| crate::source::retry::warn_and_sleep(&name, b),
        );
        table.publish(
            claim,
            &result.map(|()| range.len()),
            stats.attempts,
            stats.resumed_bytes,
        );
        self.next_submit = k + 1;
        Ok(())
    }

    /// Gives each idle worker (this download's share of the pool's workers,
    /// less this ring's records in flight) the second half of what is left of the earliest chunk in
    /// flight that has at least `2 × MIN_CUT_PIECE` left and was not cut
    /// yet, in its slot's piece record.
    fn cut_for_idle(&mut self) -> Result<()> {
        let Some(dl) = &self.dl else {
            return Ok(());
        };
        let table = dl.table();
        let seen = InFlight::of(table);
        let mut busy = seen.records;
        let mut cuts = 0;
        let mut k = self.next_yield;
        // Only the workers of this download's share count: one it does not
        // use is most likely busy with another download.
        let workers = dl.pool().share(0);
        while self.cut && busy < workers && k < self.next_submit {
            let slot = (k % self.slots as u64) as u32;
            k += 1;
            let Some(piece) = table.piece_of(slot) else {
                continue;
            };
            let state = |s| table.word(s).map(|w| w.state);
            if state(slot) != Some(State::Writing) || state(piece) != Some(State::Empty) {
                continue; // not being written, or cut already
            }
            let len = table.delivered_range(slot).map_or(0, |d| d.len());
            let got = table.received_in_flight(slot).unwrap_or(0).min(len);
            let Some(at) = cut_point(got, len - got) else {
                continue;
            };
            // None: its writer reserved past the cut meanwhile, or just
            // finished.
            if let Some(rest) = table.cut(slot, at) {
                dl.start(piece, rest)?;
                busy += 1;
                cuts += 1;
            }
        }
        if cuts > 0 {
            dl.pool().count_cuts(cuts);
        }
        self.seen = InFlight {
            records: busy,
            ..seen
        };
        Ok(())
    }

    fn fail(&mut self, e: Error) -> Option<Result<Chunk>> {
        self.done = true;
        self.dl = None; // cancels the queued ranges
        Some(Err(e))
    }

    /// The next chunk if its slot is finished: `Ok(None)` when it is still
    /// in flight (then sleep on the doorbell and ask again).
    pub(crate) fn try_next(&mut self) -> Option<Result<Option<Chunk>>> {
        if self.done || self.next_yield >= self.chunks.len() {
            return None;
        }
        let dl = Arc::clone(self.dl.as_ref()?);
        if let Err(e) = self
            .top_up()
            .and_then(|()| self.fill_from_stream())
            .and_then(|()| self.cut_for_idle())
        {
            return self.fail(e).map(|r| r.map(Some));
        }
        let k = self.next_yield;
        let slot = (k % self.slots as u64) as u32;
        if k >= self.next_submit {
            let e = Error::InvalidConfig(format!(
                "chunk {} is still held: drop chunks before asking for more than {} ahead",
                k - self.slots as u64,
                self.slots
            ));
            return self.fail(e).map(|r| r.map(Some));
        }
        let table = dl.table();
        let Some(word) = table.word(slot) else {
            let e = Error::Pool(format!("slot {slot} missing"));
            return self.fail(e).map(|r| r.map(Some));
        };
        // The rest of a cut chunk failed for good: the chunk fails now,
        // whatever its slow first half still does.
        if let Some(Some(rest)) = table.rest_of(slot)
            && rest.word.state == State::Failed
        {
            let e = table.error(rest.piece);
            return self.fail(e).map(|r| r.map(Some));
        }
        match word.state {
            State::Ready => {}
            State::Failed => {
                let e = table.error(slot);
                return self.fail(e).map(|r| r.map(Some));
            }
            _ => return Some(Ok(None)),
        }
        // The rest of a chunk that was cut, in the slot's piece record.
        let piece = match table.rest_of(slot) {
            None => {
                let e = Error::Pool(format!("slot {slot} is not a ring slot"));
                return self.fail(e).map(|r| r.map(Some));
            }
            Some(None) => None,
            Some(Some(rest)) => match rest.word.state {
                State::Ready if rest.ready => Some(rest.piece),
                State::Assigned | State::Writing => return Some(Ok(None)),
                State::Failed => {
                    let e = table.error(rest.piece);
                    return self.fail(e).map(|r| r.map(Some));
                }
                State::Ready | State::Empty => {
                    let e = Error::Pool(format!(
                        "chunk {k} was cut, and its rest is not in piece record {}: {:?} {:?} with {} bytes",
                        rest.piece,
                        rest.word.state,
                        table.range(rest.piece),
                        table.result(rest.piece).bytes,
                    ));
                    return self.fail(e).map(|r| r.map(Some));
                }
            },
        };
        let own = table.result(slot);
        let want = table.delivered_range(slot).map_or(0, |d| d.len());
        if own.bytes != want {
            let e = Error::Pool(format!(
                "slot {slot} was published with {} bytes of its {want}",
                own.bytes
            ));
            return self.fail(e).map(|r| r.map(Some));
        }
        dl.pool().count(&own);
        if let Some(p) = piece {
            dl.pool().count(&table.result(p));
        }
        let Some(range) = self.chunks.get(k) else {
            let e = Error::Pool(format!("chunk {k} is not in the plan"));
            return self.fail(e).map(|r| r.map(Some));
        };
        self.next_yield += 1;
        // Start the next range into any slot already free.
        if let Err(e) = self.top_up() {
            return self.fail(e).map(|r| r.map(Some));
        }
        if self.next_yield >= self.chunks.len() {
            // Every range is in: no share of the workers for this ring
            // while its consumer still holds chunks.
            dl.retire();
        }
        Some(Ok(Some(Chunk {
            dl,
            slot,
            piece,
            generation: word.generation,
            range,
        })))
    }

    /// The doorbell to sleep on between [`ChunkIter::try_next`] calls.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn doorbell(&self) -> Option<&crate::shm::Doorbell> {
        self.dl.as_ref().map(|d| d.doorbell())
    }
}

impl Iterator for ChunkIter {
    type Item = Result<Chunk>;

    fn next(&mut self) -> Option<Result<Chunk>> {
        loop {
            match self.try_next()? {
                Ok(Some(c)) => return Some(Ok(c)),
                Ok(None) => {
                    if let Some(dl) = &self.dl {
                        let slot = (self.next_yield % self.slots as u64) as u32;
                        let table = dl.table();
                        // Until the next chunk is in (or failed), or a worker
                        // finished a range (it may be idle now) or claimed
                        // one while others were idle (something to cut):
                        // see cut_for_idle.
                        let seen = self.seen;
                        let idle = self.cut && seen.records < dl.pool().share(0);
                        dl.doorbell().wait_until(|| {
                            let now = InFlight::of(table);
                            chunk_done(table, slot)
                                || now.records < seen.records
                                || (idle && now.writing > seen.writing)
                        });
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// How many records of a ring hold a range queued or being written, and
/// how many of them are being written.
#[derive(Debug, Clone, Copy, Default)]
struct InFlight {
    records: usize,
    writing: usize,
}

impl InFlight {
    fn of(table: &SlotTable) -> InFlight {
        let mut n = InFlight::default();
        for s in 0..table.slots() {
            match table.word(s).map(|w| w.state) {
                Some(State::Assigned) => n.records += 1,
                Some(State::Writing) => {
                    n.records += 1;
                    n.writing += 1;
                }
                _ => {}
            }
        }
        n
    }
}

/// Whether there is news of ring slot `slot`'s chunk: both its writers
/// are done (its own and, for a chunk that was cut, its piece's), or
/// either failed.
fn chunk_done(table: &SlotTable, slot: u32) -> bool {
    let Some(word) = table.word(slot) else {
        return true;
    };
    let rest = table.rest_of(slot).flatten().map(|r| r.word.state);
    if word.state == State::Failed || rest == Some(State::Failed) {
        return true;
    }
    word.state.is_done() && rest.is_none_or(|r| r.is_done() || r == State::Empty)
}

/// One chunk of the object, in its ring slot (no copy). Dropping it frees
/// the slot for the next range.
pub struct Chunk {
    dl: Arc<DownloadHandle>,
    slot: u32,
    /// The piece record holding the chunk's rest, when it was cut.
    piece: Option<u32>,
    generation: u32,
    range: ByteRange,
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunk")
            .field("range", &self.range)
            .field("slot", &self.slot)
            .finish()
    }
}

impl Chunk {
    /// Offset of the chunk's first byte in the object.
    pub fn offset(&self) -> u64 {
        self.range.start
    }

    /// The chunk's range of the object.
    pub fn range(&self) -> ByteRange {
        self.range
    }

    /// The ring slot holding it.
    pub fn slot(&self) -> usize {
        self.slot as usize
    }
}

impl Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // The slot stays Ready(generation) until this chunk is dropped: only its
        // consumer (this guard) releases it, and no worker may write a slot
        // it has not claimed from Assigned.
        let bytes = self.dl.table().ready_bytes(self.slot, self.generation);
        debug_assert!(bytes.is_some(), "chunk's slot is not Ready");
        bytes.unwrap_or_default()
    }
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // The piece first: once the slot reads Empty, the consumer may
        // assign its next chunk, whose piece record must be free.
        if let Some(p) = self.piece {
            self.dl.table().release(p);
        }
        self.dl.table().release(self.slot);
    }
}

/// [`std::io::Read`] over a [`ChunkIter`]. Created by
/// [`ParallelReader::stream`].
#[derive(Debug)]
pub struct ChunkReader {
    iter: ChunkIter,
    current: Option<Chunk>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some(c) = &self.current {
                if self.pos < c.len() {
                    let n = buf.len().min(c.len() - self.pos);
                    buf[..n].copy_from_slice(&c[self.pos..self.pos + n]);
                    self.pos += n;
                    return Ok(n);
                }
                self.current = None; // frees the slot
            }
            match self.iter.next() {
                None => return Ok(0),
                Some(Ok(c)) => {
                    self.current = Some(c);
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(std::io::Error::other(e)),
            }
        }
    }
}
