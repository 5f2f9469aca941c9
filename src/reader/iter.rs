//! `create_iter`: the object streamed in order through a ring of slots.
//!
//! The ring is a slot table whose slots hold their bytes (see
//! [`crate::shm`]): chunk *k* goes to slot *k* mod slots; a slot is
//! assigned its next chunk only once the consumer released the previous
//! one, so memory stays `slots × chunk_size`. The consumer reads only the
//! slot word and sleeps on the download's doorbell in between.

use std::io::Read;
use std::ops::Deref;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::range::{ByteRange, ChunkPlan};
use crate::reader::ParallelReader;
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
        let dl = if slots == 0 {
            None
        } else {
            let table = SlotTable::create_ring(
                self.pool().segments(),
                self.shm_dir(),
                slots as u32,
                self.chunk_size(),
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
            stream,
            slots,
            next_submit: 0,
            next_yield: 0,
            done: false,
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
        if let Err(e) = self.top_up().and_then(|()| self.fill_from_stream()) {
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
        match word.state {
            State::Ready => {}
            State::Failed => {
                let e = table.error(slot);
                return self.fail(e).map(|r| r.map(Some));
            }
            _ => return Some(Ok(None)),
        }
        dl.pool().count(&table.result(slot));
        let Some(range) = self.chunks.get(k) else {
            let e = Error::Pool(format!("chunk {k} is not in the plan"));
            return self.fail(e).map(|r| r.map(Some));
        };
        self.next_yield += 1;
        // Start the next range into any slot already free.
        if let Err(e) = self.top_up() {
            return self.fail(e).map(|r| r.map(Some));
        }
        Some(Ok(Some(Chunk {
            dl,
            slot,
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
                        dl.doorbell()
                            .wait_until(|| table.word(slot).is_none_or(|w| w.state.is_done()));
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// One chunk of the object, in its ring slot (no copy). Dropping it frees
/// the slot for the next range.
pub struct Chunk {
    dl: Arc<DownloadHandle>,
    slot: u32,
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
