//! `create_iter`: the object streamed in order through a ring of slots.
//!
//! Ring segment layout (version 1): `slots` ready-event words, 64 bytes
//! apart, at offset 0; slot data starts at the first page boundary after
//! them, slot *i* at `data_offset + i × chunk_size`.

use std::collections::HashMap;
use std::io::Read;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::error::{Error, Result};
use crate::range::{ByteRange, split_into_chunks};
use crate::reader::ParallelReader;
use crate::shm::{Segment, SlotEvents, SlotState};
use crate::worker::pool::{Completion, JobGroup};
use crate::worker::protocol::Task;

/// How long one wait on a slot's event lasts before the consumer checks for
/// errors reported outside the slot (a range given up after worker deaths).
const WAIT_TICK: Duration = Duration::from_millis(100);

const PAGE: u64 = 4096;

struct Ring {
    seg: Segment,
    events: SlotEvents,
    data_offset: u64,
    chunk_size: u64,
    held: Vec<AtomicBool>,
}

impl Ring {
    fn slot_offset(&self, slot: usize) -> u64 {
        self.data_offset + slot as u64 * self.chunk_size
    }
}

/// Iterator over the chunks of an object, in order. Created by
/// [`ParallelReader::create_iter`].
///
/// Each item is a [`Chunk`] that borrows its ring slot; the slot is refilled
/// once the chunk is dropped. Holding more than `slots` chunks at once is an
/// error (the next chunk would have nowhere to go).
pub struct ChunkIter<'r> {
    reader: &'r ParallelReader,
    ring: Option<Arc<Ring>>,
    chunks: Vec<ByteRange>,
    slots: usize,
    next_submit: usize,
    next_yield: usize,
    reply_tx: Sender<Completion>,
    reply_rx: Receiver<Completion>,
    group: Arc<JobGroup>,
    errors: HashMap<u64, Error>,
    done: bool,
}

impl std::fmt::Debug for ChunkIter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkIter")
            .field("chunks", &self.chunks.len())
            .field("slots", &self.slots)
            .field("next", &self.next_yield)
            .finish()
    }
}

impl ParallelReader {
    /// Streams the object from `offset` in chunks, in order, through a ring
    /// of `min(workers, chunks)` shared-memory slots.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `offset` is past the end;
    /// [`Error::ShmNoSpace`]/[`Error::Shm`] when the ring cannot be created.
    /// Range errors come from the iterator, at the chunk they concern.
    pub fn create_iter(&self, offset: u64) -> Result<ChunkIter<'_>> {
        let chunks = split_into_chunks(offset, self.size(), self.chunk_size())?;
        let slots = self.pool().workers().min(chunks.len());
        let (reply_tx, reply_rx) = crossbeam_channel::unbounded();
        let ring = if slots == 0 {
            None
        } else {
            let header = SlotEvents::bytes_for(slots) as u64;
            let data_offset = header.div_ceil(PAGE) * PAGE;
            let len = data_offset + slots as u64 * self.chunk_size();
            let seg = Segment::create(self.shm_dir(), len)?;
            // SAFETY: the event words are at the page-aligned start of the
            // segment, inside it, and the segment lives in the same Ring
            // as the view.
            let events = unsafe { SlotEvents::new(seg.as_ptr(), slots) };
            Some(Arc::new(Ring {
                seg,
                events,
                data_offset,
                chunk_size: self.chunk_size(),
                held: (0..slots).map(|_| AtomicBool::new(false)).collect(),
            }))
        };
        tracing::debug!(object = %self.source().display_name(), offset, chunks = chunks.len(), slots, "create_iter");
        let mut it = ChunkIter {
            reader: self,
            ring,
            chunks,
            slots,
            next_submit: 0,
            next_yield: 0,
            reply_tx,
            reply_rx,
            group: Arc::new(JobGroup::default()),
            errors: HashMap::new(),
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
    /// # std::fs::write(&path, vec![7u8; 50_000]).unwrap();
    /// let reader = ParallelReader::builder(SourceSpec::Local { path }).workers(2).chunk_size(4096).build()?;
    /// let mut out = Vec::new();
    /// std::io::copy(&mut reader.stream(0)?, &mut out).unwrap();
    /// assert_eq!(out, vec![7u8; 50_000]);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`ParallelReader::create_iter`].
    pub fn stream(&self, offset: u64) -> Result<ChunkReader<'_>> {
        Ok(ChunkReader {
            iter: self.create_iter(offset)?,
            current: None,
            pos: 0,
        })
    }
}

impl<'r> ChunkIter<'r> {
    /// Number of ring slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Name of the ring's segment, if the range is not empty.
    pub fn segment_name(&self) -> Option<&str> {
        self.ring.as_ref().map(|r| r.seg.name())
    }

    /// Submits every chunk whose slot is free, up to `slots` ahead.
    fn top_up(&mut self) -> Result<()> {
        let Some(ring) = self.ring.clone() else {
            return Ok(());
        };
        let mut tasks = Vec::new();
        while self.next_submit < self.chunks.len()
            && self.next_submit < self.next_yield + self.slots
        {
            let k = self.next_submit;
            let slot = k % self.slots;
            if ring.held[slot].load(Ordering::Acquire) {
                break; // the consumer still holds the previous chunk of this slot
            }
            let range = self.chunks[k];
            ring.events.set(slot, SlotState::Filling);
            tasks.push(Task {
                id: k as u64,
                source: self.reader.source().clone(),
                expected: self.reader.meta().clone(),
                range,
                shm_dir: ring.seg.dir().to_path_buf(),
                segment: ring.seg.name().to_string(),
                seg_offset: ring.slot_offset(slot),
                event_offset: Some((slot * crate::shm::EVENT_STRIDE) as u64),
                retry: self.reader.retry_config(),
            });
            self.next_submit += 1;
        }
        self.reader
            .pool()
            .submit(tasks, &self.reply_tx, &self.group)
    }

    fn drain_replies(&mut self) {
        while let Ok(c) = self.reply_rx.try_recv() {
            if let Err(e) = c.result {
                self.errors.insert(c.id, e);
            }
        }
    }

    fn fail(&mut self, e: Error) -> Option<Result<Chunk>> {
        self.done = true;
        self.group.cancel.store(true, Ordering::Relaxed);
        Some(Err(e))
    }
}

impl Iterator for ChunkIter<'_> {
    type Item = Result<Chunk>;

    fn next(&mut self) -> Option<Result<Chunk>> {
        if self.done || self.next_yield >= self.chunks.len() {
            return None;
        }
        let ring = self.ring.clone()?;
        if let Err(e) = self.top_up() {
            return self.fail(e);
        }
        let k = self.next_yield;
        let slot = k % self.slots;
        if k >= self.next_submit {
            return self.fail(Error::InvalidConfig(format!(
                "chunk {} is still held: drop chunks before asking for more than {} ahead",
                k - self.slots,
                self.slots
            )));
        }
        loop {
            match ring.events.wait_while_filling(slot, WAIT_TICK) {
                SlotState::Ready => break,
                SlotState::Filling => {
                    self.drain_replies();
                    if let Some(e) = self.errors.remove(&(k as u64)) {
                        return self.fail(e);
                    }
                }
                SlotState::Failed | SlotState::Empty => {
                    // The worker reports the error on its socket right
                    // after setting the event: wait for it.
                    loop {
                        self.drain_replies();
                        if let Some(e) = self.errors.remove(&(k as u64)) {
                            return self.fail(e);
                        }
                        match self.reply_rx.recv_timeout(Duration::from_secs(30)) {
                            Ok(c) => {
                                if let Err(e) = c.result {
                                    self.errors.insert(c.id, e);
                                }
                            }
                            Err(_) => {
                                return self.fail(Error::Pool(format!(
                                    "slot {slot} failed without a reported error"
                                )));
                            }
                        }
                    }
                }
            }
        }
        self.drain_replies();
        let range = self.chunks[k];
        ring.held[slot].store(true, Ordering::Release);
        self.next_yield += 1;
        // Start the next range into any slot already free.
        if let Err(e) = self.top_up() {
            return self.fail(e);
        }
        Some(Ok(Chunk { ring, slot, range }))
    }
}

impl Drop for ChunkIter<'_> {
    fn drop(&mut self) {
        self.group.cancel.store(true, Ordering::Relaxed);
    }
}

/// One chunk of the object, in its ring slot (no copy). Dropping it frees
/// the slot for the next range.
pub struct Chunk {
    ring: Arc<Ring>,
    slot: usize,
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
        self.slot
    }
}

impl Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the slot's event is Ready (the worker finished and will
        // not write again) and `held` keeps the iterator from handing the
        // slot to another range until this chunk is dropped.
        unsafe {
            self.ring.seg.slice(
                self.ring.slot_offset(self.slot) as usize,
                self.range.len() as usize,
            )
        }
    }
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.ring.events.set(self.slot, SlotState::Empty);
        self.ring.held[self.slot].store(false, Ordering::Release);
    }
}

/// [`std::io::Read`] over a [`ChunkIter`]. Created by
/// [`ParallelReader::stream`].
#[derive(Debug)]
pub struct ChunkReader<'r> {
    iter: ChunkIter<'r>,
    current: Option<Chunk>,
    pos: usize,
}

impl Read for ChunkReader<'_> {
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
