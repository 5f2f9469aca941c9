//! The slot table: the one record of what each slot of a download holds.
//!
//! A table is a shared-memory segment laid out as (layout version 5):
//!
//! ```text
//! 0      Header (128 bytes, #[repr(C)]): magic, version, slots, slot_len,
//!        data_offset, total_len, data_base, data_len, test hook, pieces,
//!        data_allocated (lane tables: the data segment's bytes with pages)
//! 128    slots × Record (64 bytes each, one cache line): the slot word
//!        (state | pid-or-code | generation), the range, the result, the
//!        received counter (progress only), the limit word (see [`cut`])
//! ...    slots × error box (1 KiB each): the JSON of a slot's error
//! page   ring data (rings only): slot i at data_offset + i × slot_len
//!        for each of the first `slots - pieces` slots
//! ```
//!
//! A *ring* (`create_iter`) keeps each slot's bytes in the table segment; a
//! *lane table* (`read_all`) has no data area: slot *i* carries one range at
//! a time whose bytes go to `range.start - data_base` of a separate data
//! segment.
//!
//! A ring made for `create_iter` has as many *piece* records as data
//! slots, after them: piece `d + i` has no bytes of its own but writes the
//! tail of data slot *i*'s range when the consumer cut that range for an
//! idle worker (see [`cut`]), at its offset from the slot's range start.
//! The consumer takes the chunk once both records are `Ready`, and
//! releases the piece before the slot.
//!
//! # The slot state machine
//!
//! ```text
//!  Empty(g) ──assign──► Assigned(g) ──claim (CAS, worker)──► Writing(g, pid)
//!     ▲                    │  ▲                                │      │
//!     │        dead worker:│  └──────── reclaim (supervisor) ◄─┘      │
//!     │        reclaim → Assigned(g+1), re-run                        │
//!     │                                                  publish (CAS, same pid)
//!     └──release (consumer)── Ready(g, pid) | Failed(g, code) ◄───────┘
//!                             (Empty(g+1))
//! ```
//!
//! * Only the consumer (the process that owns the table) assigns and
//!   releases; a worker writes a slot's bytes only between a successful
//!   claim of `Assigned(g)` and its publish, and may publish only from its
//!   own `Writing(g, pid)`.
//! * **The supervisor rule** for a worker that died holding task
//!   `(slot, g)`: if the word is `Assigned(g)` or `Writing(g, _)`, the range
//!   was not delivered — the slot goes to `Assigned(g+1)` and the range is
//!   re-run (or, past the crash budget, `Failed(g)` with `WorkerCrashed`);
//!   anything else (`Ready`/`Failed`, or another generation: the slot was
//!   already delivered and reused) means the task is done and is never run
//!   again.
//! * The consumer reads only the word (acquire): `Ready` makes the bytes and
//!   the result fields visible, `Failed` the error box. Every transition is a
//!   compare-and-swap, so two parties can never both win one step.
//!
//! The transitions themselves are pure functions on [`Word`] (which word a
//! step expects, which it leaves), and the load/compare-and-swap sequence
//! of each step lives in [`step`], generic over the cell holding the word
//! ([`WordCell`]). [`SlotTable`] runs the steps on its shared-memory
//! `AtomicU64`s; the model check in `table/model.rs` runs the very same
//! steps on shuttle's atomics, with a consumer, workers that die at every
//! point of a task, and the supervisor applying the rule above. (The
//! limit word of [`cut`] is checked by its own tests, with threads racing
//! on it, not by the model.)
//!
//! # Progress
//!
//! Next to the word, each record has a *received* counter: the claim's
//! holder stores how many bytes of the range are in place as they arrive
//! ([`Received::set`], one relaxed store per write, no syscall); assign and
//! claim reset it to 0. It carries no state — a consumer decides that a
//! range is done from the word only — and may go down when a dead
//! worker's range is re-run from its start (see `reader/progress.rs` for
//! how the coordinator reports it without counting twice).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::range::ByteRange;
use crate::shm::recycle::SegmentCache;
use crate::shm::segment::{Mapping, Segment};

const MAGIC: u64 = u64::from_le_bytes(*b"SHMFTBL\0");
/// Layout version of the table; a worker refuses any other.
pub(crate) const LAYOUT_VERSION: u32 = 5;
const HEADER_LEN: usize = 128;
const RECORD_LEN: usize = 64;
/// Bytes of a slot's error box (the JSON of an [`Error`]).
pub(crate) const ERROR_BOX: usize = 1024;
const PAGE: u64 = 4096;

#[repr(C)]
struct Header {
    magic: u64,
    version: u32,
    slots: u32,
    slot_len: u64,
    data_offset: u64,
    total_len: u64,
    data_base: u64,
    data_len: u64,
    /// Test hook: how many workers may still kill themselves (see
    /// `KillPoint`); always 0 outside tests.
    kill_tokens: AtomicU32,
    /// How many of the `slots` records (the last ones) are a ring's piece
    /// records, with no data slot of their own.
    pieces: u32,
    /// Lane tables: how many of the data segment's first bytes have their
    /// pages already (a recycled segment), set by the owner before the
    /// table is shared.
    data_allocated: AtomicU64,
}

#[repr(C, align(64))]
struct Record {
    word: AtomicU64,
    range_start: AtomicU64,
    range_end: AtomicU64,
    bytes: AtomicU64,
    resumed: AtomicU64,
    attempts: AtomicU32,
    error_len: AtomicU32,
    /// Progress only: bytes of the current range in place (written by the
    /// claim's holder, reset by assign and claim).
    received: AtomicU64,
    /// The limit word: how far its writer reserved, where it must
    /// stop (see [`cut`]).
    limit: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_LEN);
const _: () = assert!(std::mem::size_of::<Record>() == RECORD_LEN);
const _: () = assert!(std::mem::offset_of!(Record, word) == 0);
const _: () = assert!(std::mem::offset_of!(Record, received) == 48);

/// The state part of a slot word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Nothing in it; the next range may be assigned.
    Empty,
    /// A range is assigned and queued for a worker.
    Assigned,
    /// A worker (`aux` = its pid) claimed it and is writing.
    Writing,
    /// The bytes are complete (`aux` = the writer's pid).
    Ready,
    /// The range failed for good; the error is in the slot's box.
    Failed,
}

impl State {
    fn code(self) -> u64 {
        match self {
            State::Empty => 0,
            State::Assigned => 1,
            State::Writing => 2,
            State::Ready => 3,
            State::Failed => 4,
        }
    }

    fn from_code(c: u64) -> Option<State> {
        Some(match c {
            0 => State::Empty,
            1 => State::Assigned,
            2 => State::Writing,
            3 => State::Ready,
            4 => State::Failed,
            _ => return None,
        })
    }

    /// Whether the slot's range is finished (delivered or failed).
    pub(crate) fn is_done(self) -> bool {
        matches!(self, State::Ready | State::Failed)
    }
}

/// A decoded slot word: state, pid (or code) and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Word {
    pub state: State,
    pub aux: u32,
    pub generation: u32,
}

const AUX_MASK: u64 = 0xff_ffff;

impl Word {
    fn pack(self) -> u64 {
        (u64::from(self.generation) << 32)
            | ((u64::from(self.aux) & AUX_MASK) << 8)
            | self.state.code()
    }

    fn unpack(v: u64) -> Word {
        Word {
            // An unknown state code cannot be written by this crate; read it
            // as Failed so nobody trusts the slot.
            state: State::from_code(v & 0xff).unwrap_or(State::Failed),
            aux: ((v >> 8) & AUX_MASK) as u32,
            generation: (v >> 32) as u32,
        }
    }

    fn new(state: State, aux: u32, generation: u32) -> Word {
        Word {
            state,
            aux,
            generation,
        }
    }

    // The transitions of the state machine as pure functions: each says
    // what a step expects to find and what it leaves.

    /// Consumer's assign: `Empty(g)` → `Assigned(g)`; `None` from any other
    /// state.
    fn assigned(self) -> Option<Word> {
        (self.state == State::Empty).then(|| Word::new(State::Assigned, 0, self.generation))
    }

    /// Consumer's release: `Ready(g, _)`/`Failed(g, _)` → `Empty(g+1)`;
    /// `None` when the slot is not finished.
    fn released(self) -> Option<Word> {
        self.state
            .is_done()
            .then(|| Word::new(State::Empty, 0, self.generation.wrapping_add(1)))
    }

    /// Worker's claim of task `generation`: `Assigned(generation)` →
    /// `Writing(generation, pid)`, as (expected, new).
    fn claim_step(generation: u32, pid: u32) -> (Word, Word) {
        (
            Word::new(State::Assigned, 0, generation),
            Word::new(State::Writing, pid, generation),
        )
    }

    /// Worker's publish: its own `Writing(generation, pid)` →
    /// `Ready(generation, pid)` (`ok`) or `Failed(generation, pid)`, as
    /// (expected, new).
    fn publish_step(generation: u32, pid: u32, ok: bool) -> (Word, Word) {
        let to = if ok { State::Ready } else { State::Failed };
        (
            Word::new(State::Writing, pid, generation),
            Word::new(to, pid, generation),
        )
    }

    /// The supervisor rule's test: whether the task `generation` of this
    /// slot is still undelivered (`Assigned(generation)` or
    /// `Writing(generation, _)`). Anything else — finished, emptied, or
    /// another generation (the slot was delivered and reused) — means the
    /// task is done and must never run again.
    pub(crate) fn in_flight(self, generation: u32) -> bool {
        self.generation == generation && matches!(self.state, State::Assigned | State::Writing)
    }

    /// Supervisor's reclaim of task `generation` whose worker died:
    /// `Assigned(generation)`/`Writing(generation, _)` → `Assigned(generation+1)`;
    /// `None` when the task is done.
    fn reclaimed(self, generation: u32) -> Option<Word> {
        self.in_flight(generation)
            .then(|| Word::new(State::Assigned, 0, generation.wrapping_add(1)))
    }

    /// Supervisor's fail of task `generation`: `Assigned(generation)`/
    /// `Writing(generation, _)` → `Failed(generation)` (code 0); `None` when
    /// the task is done.
    fn failed(self, generation: u32) -> Option<Word> {
        self.in_flight(generation)
            .then(|| Word::new(State::Failed, 0, generation))
    }
}

/// Where a slot word lives: the table's shared-memory `AtomicU64`, or the
/// model check's atomic. The orderings are part of the contract.
pub(crate) trait WordCell {
    /// The packed word, read with acquire ordering.
    fn load_word(&self) -> u64;
    /// Replaces the packed word `from` by `to` (acq-rel on success,
    /// acquire on failure); whether it did.
    fn cas_word(&self, from: u64, to: u64) -> bool;
}

impl WordCell for AtomicU64 {
    fn load_word(&self) -> u64 {
        self.load(Ordering::Acquire)
    }

    fn cas_word(&self, from: u64, to: u64) -> bool {
        self.compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// The steps of the state machine on one slot word: the loads and
/// compare-and-swaps that [`SlotTable`] performs, shared with the model
/// check. Side effects that must be visible with the new word (the range,
/// the error box) run in the `before` closures, between the load and the
/// compare-and-swap that publishes them.
pub(crate) mod step {
    use super::{State, Word, WordCell};

    /// The current word.
    pub(crate) fn word(cell: &impl WordCell) -> Word {
        Word::unpack(cell.load_word())
    }

    fn cas(cell: &impl WordCell, from: Word, to: Word) -> bool {
        cell.cas_word(from.pack(), to.pack())
    }

    /// Why an assign did not happen.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum AssignRefused {
        /// The slot is in this state, not `Empty`.
        NotEmpty(State),
        /// The word changed between the load and the compare-and-swap.
        Raced,
    }

    /// Consumer: `Empty(g)` → `Assigned(g)`, running `before` (which
    /// records the range) once `Empty` was seen; returns `g`.
    pub(crate) fn assign(
        cell: &impl WordCell,
        before: impl FnOnce(),
    ) -> Result<u32, AssignRefused> {
        let w = word(cell);
        let to = w.assigned().ok_or(AssignRefused::NotEmpty(w.state))?;
        before();
        if cas(cell, w, to) {
            Ok(w.generation)
        } else {
            Err(AssignRefused::Raced)
        }
    }

    /// Consumer: `Ready`/`Failed(g)` → `Empty(g+1)`.
    pub(crate) fn release(cell: &impl WordCell) -> bool {
        let w = word(cell);
        w.released().is_some_and(|to| cas(cell, w, to))
    }

    /// Worker: `Assigned(generation)` → `Writing(generation, pid)`.
    pub(crate) fn claim(cell: &impl WordCell, generation: u32, pid: u32) -> bool {
        let (from, to) = Word::claim_step(generation, pid);
        cas(cell, from, to)
    }

    /// Worker: its own `Writing(generation, pid)` → `Ready`/`Failed`.
    pub(crate) fn publish(cell: &impl WordCell, generation: u32, pid: u32, ok: bool) -> bool {
        let (from, to) = Word::publish_step(generation, pid, ok);
        cas(cell, from, to)
    }

    /// Supervisor: the task `generation`'s worker is dead (reaped); if the
    /// task is in flight, `Assigned(generation+1)` and the generation to
    /// re-run with; `None`: done, never run again.
    pub(crate) fn reclaim(cell: &impl WordCell, generation: u32) -> Option<u32> {
        let w = word(cell);
        let to = w.reclaimed(generation)?;
        cas(cell, w, to).then_some(to.generation)
    }

    /// Supervisor: `Failed(generation)` if the task is in flight, running
    /// `before` (which writes the error box) once that was seen.
    pub(crate) fn fail(cell: &impl WordCell, generation: u32, before: impl FnOnce()) -> bool {
        let w = word(cell);
        let Some(to) = w.failed(generation) else {
            return false;
        };
        before();
        cas(cell, w, to)
    }
}

/// What a finished slot reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct SlotResult {
    /// Bytes written.
    pub bytes: u64,
    /// Requests made.
    pub attempts: u32,
    /// Bytes kept from failed attempts.
    pub resumed: u64,
    /// The writer's pid.
    pub pid: u32,
}

/// The piece record holding the rest of a ring slot's cut range (see
/// [`SlotTable::rest_of`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rest {
    /// Its record.
    pub(crate) piece: u32,
    /// Its word.
    pub(crate) word: Word,
    /// Whether it is `Ready` with exactly the rest of the range.
    pub(crate) ready: bool,
}

/// A worker's claim on a slot: only its holder may write the slot's bytes
/// and publish its result.
#[derive(Debug)]
pub(crate) struct Claim {
    slot: u32,
    generation: u32,
    pid: u32,
    range: ByteRange,
    /// Rings: where in its data slot the range's bytes go (0, or a
    /// piece's offset from the cut range's start).
    at: u64,
}

impl Claim {
    /// The range to fetch.
    pub(crate) fn range(&self) -> ByteRange {
        self.range
    }

    /// Slot, generation and pid, for [`SlotTable::holds`].
    pub(crate) fn key(&self) -> (u32, u32, u32) {
        (self.slot, self.generation, self.pid)
    }
}

/// The received counter of a claimed slot, for its holder to report how
/// many bytes of the range are in place (progress only; see the module's
/// "Progress").
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received<'a>(Option<&'a AtomicU64>);

impl Received<'_> {
    /// Bytes of the range now in place (a relaxed store: the count is
    /// advisory, ordered with nothing; the word's publish orders the data).
    pub(crate) fn set(&self, bytes: u64) {
        if let Some(c) = self.0 {
            c.store(bytes, Ordering::Relaxed);
        }
    }
}

/// A writer's check before it receives bytes (see [`cut`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limiter<'a> {
    word: Option<&'a AtomicU64>,
    len: u64,
}

impl Limiter<'_> {
    /// Reserves the range's bytes up to `upto` (from its start) and
    /// returns how far the writer may write: `upto`, or less when the
    /// range was cut (the writer stops there; the rest is another's).
    pub(crate) fn reserve(&self, upto: u64) -> u64 {
        match self.word {
            Some(w) => cut::reserve(w, self.len, upto),
            None => upto,
        }
    }

    /// Where the range ends now (bytes from its start): its length, or the
    /// cut.
    pub(crate) fn end(&self) -> u64 {
        match self.word {
            Some(w) => cut::end(w, self.len),
            None => self.len,
        }
    }
}

/// What keeps the table's memory alive (dropped: unmapped, and unlinked by
/// its owner).
enum Backing {
    Owned(Segment),
    /// A ring's segment, which its pool's `SegmentCache` may keep for a
    /// later ring (see [`SlotTable::keep_for_reuse`]).
    Kept(Arc<Segment>),
    #[allow(dead_code)] // held for its Drop
    Mapped(Mapping),
}

/// A slot table, either created by the consumer ([`SlotTable::create`]) or
/// mapped by a worker ([`SlotTable::open`]).
pub(crate) struct SlotTable {
    backing: Backing,
    name: String,
    base: *mut u8,
    len: usize,
    slots: u32,
    /// The last `pieces` records are a ring's piece records.
    pieces: u32,
    slot_len: u64,
    data_offset: u64,
    data_base: u64,
    data_len: u64,
}

// SAFETY: the table's memory is shared memory accessed through atomics (the
// header's constant fields are written once before the table is shared);
// slot bytes are accessed under the state machine's exclusivity rules.
unsafe impl Send for SlotTable {}
// SAFETY: as above.
unsafe impl Sync for SlotTable {}

impl std::fmt::Debug for SlotTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotTable")
            .field("slots", &self.slots)
            .field("slot_len", &self.slot_len)
            .finish()
    }
}

/// Offsets of a table of `slots` records, the last `pieces` of them piece
/// records: (error boxes, data, end). `None` when it does not add up (no
/// data slot, a lane table with pieces, too large).
fn layout(slots: u32, pieces: u32, slot_len: u64) -> Option<(u64, u64, u64)> {
    let data_slots = slots.checked_sub(pieces).filter(|d| *d > 0)?;
    if pieces > 0 && (slot_len == 0 || pieces > data_slots) {
        return None;
    }
    let errors = HEADER_LEN as u64 + u64::from(slots) * RECORD_LEN as u64;
    let errors_end = errors + u64::from(slots) * ERROR_BOX as u64;
    let data_offset = errors_end.div_ceil(PAGE) * PAGE;
    let total = data_offset.checked_add(u64::from(data_slots).checked_mul(slot_len)?)?;
    Some((errors, data_offset, total))
}

/// Bytes of a table of `slots` records (`pieces` of them piece records)
/// with data slots of `slot_len` bytes.
fn table_len(slots: u32, pieces: u32, slot_len: u64) -> Result<u64> {
    if slots == 0 {
        return Err(Error::InvalidConfig("a slot table needs a slot".into()));
    }
    layout(slots, pieces, slot_len)
        .map(|(_, _, total)| total)
        .ok_or_else(|| {
            Error::InvalidConfig(format!("{slots} slots of {slot_len} bytes are too large"))
        })
}

impl SlotTable {
    /// Creates a table of `slots` slots in `dir`: a ring when `slot_len > 0`
    /// (the slots' bytes live in the table), else a lane table whose ranges
    /// go to a data segment of `data_len` bytes holding the object from
    /// `data_base`. The whole segment is reserved (a full tmpfs is
    /// [`Error::ShmNoSpace`] here, never a SIGBUS later).
    pub(crate) fn create(
        dir: &Path,
        slots: u32,
        slot_len: u64,
        data_base: u64,
        data_len: u64,
    ) -> Result<SlotTable> {
        let total = table_len(slots, 0, slot_len)?;
        let seg = Segment::create(dir, total)?;
        SlotTable::init(seg, (slots, 0), slot_len, data_base, data_len, false)
    }

    /// A ring of `data_slots` slots of `slot_len` bytes, with a piece
    /// record for each when `pieces` (so `2 × data_slots` records), in a
    /// segment `rings` kept from an earlier ring of the same size when it
    /// has one: its pages are allocated already, so neither this process
    /// nor the workers wait for the kernel to allocate and zero them again.
    pub(crate) fn create_ring(
        rings: &SegmentCache,
        dir: &Path,
        data_slots: u32,
        slot_len: u64,
        pieces: bool,
    ) -> Result<SlotTable> {
        let pieces = if pieces { data_slots } else { 0 };
        let slots = data_slots
            .checked_add(pieces)
            .ok_or_else(|| Error::InvalidConfig(format!("{data_slots} ring slots")))?;
        let total = table_len(slots, pieces, slot_len)?;
        let seg = match rings.take_ring(dir, total) {
            Some(seg) => seg,
            None => rings.create_making_room(dir, || Segment::create(dir, total))?,
        };
        SlotTable::init(seg, (slots, pieces), slot_len, 0, 0, true)
    }

    /// Writes a fresh header and zeroed records (every slot `Empty` at
    /// generation 0, empty error boxes) into `seg`, which no other process
    /// may be using. A `reusable` table's segment may go to its pool's
    /// cache when it ends ([`SlotTable::keep_for_reuse`]).
    fn init(
        seg: Segment,
        (slots, pieces): (u32, u32),
        slot_len: u64,
        data_base: u64,
        data_len: u64,
        reusable: bool,
    ) -> Result<SlotTable> {
        let (_, data_offset, total) = layout(slots, pieces, slot_len).ok_or_else(|| {
            Error::InvalidConfig(format!("{slots} slots of {slot_len} bytes are too large"))
        })?;
        if seg.len() as u64 != total {
            return Err(Error::Shm {
                context: format!("slot table {}", seg.name()),
                message: format!("segment of {} bytes for a table of {total}", seg.len()),
                errno: libc::EINVAL,
            });
        }
        let base = seg.as_ptr();
        if reusable {
            // A recycled ring's records still hold its last download's
            // words and errors (a fresh segment reads as zeros already).
            // SAFETY: the segment is `total` bytes long and mapped; header,
            // records and error boxes end at `data_offset <= total`. Nobody
            // else uses it: it is fresh, or a kept ring whose every slot was
            // released and whose old table is gone
            // (`SegmentCache::take_ring`).
            unsafe { std::ptr::write_bytes(base, 0, data_offset as usize) };
        }
        let header = Header {
            magic: MAGIC,
            version: LAYOUT_VERSION,
            slots,
            slot_len,
            data_offset,
            total_len: total,
            data_base,
            data_len,
            kill_tokens: AtomicU32::new(0),
            pieces,
            data_allocated: AtomicU64::new(0),
        };
        // SAFETY: the segment is at least HEADER_LEN bytes long,
        // page-aligned, and not shared with any process; records are zeroed
        // (Empty, generation 0).
        unsafe { std::ptr::write(base.cast::<Header>(), header) };
        Ok(SlotTable {
            name: seg.name().to_string(),
            backing: if reusable {
                Backing::Kept(Arc::new(seg))
            } else {
                Backing::Owned(seg)
            },
            base,
            len: total as usize,
            slots,
            pieces,
            slot_len,
            data_offset,
            data_base,
            data_len,
        })
    }

    /// Maps the table `name` in `dir` (a worker's side), checking its
    /// magic, version and every offset against the segment's real size.
    pub(crate) fn open(dir: &Path, name: &str) -> Result<SlotTable> {
        let map = Mapping::open_whole(dir, name)?;
        let bad = |why: &str| Error::Shm {
            context: format!("slot table {name}"),
            message: why.to_string(),
            errno: libc::EINVAL,
        };
        let (base, len) = (map.base(), map.len());
        if map.start() != 0 || len < HEADER_LEN || !(base as usize).is_multiple_of(64) {
            return Err(bad("too small or misaligned"));
        }
        // SAFETY: the mapping is at least HEADER_LEN bytes and 64-aligned;
        // the header's plain fields were written before the table was shared
        // and are never written again.
        let h = unsafe { &*base.cast::<Header>() };
        if h.magic != MAGIC {
            return Err(bad("bad magic (not a shmfetch slot table)"));
        }
        if h.version != LAYOUT_VERSION {
            return Err(bad(&format!(
                "layout version {} (this worker speaks {LAYOUT_VERSION})",
                h.version
            )));
        }
        match layout(h.slots, h.pieces, h.slot_len) {
            Some((_, d, t))
                if h.slots > 0 && d == h.data_offset && t == h.total_len && t <= len as u64 => {}
            _ => return Err(bad("header does not match the segment")),
        }
        Ok(SlotTable {
            name: name.to_string(),
            slots: h.slots,
            pieces: h.pieces,
            slot_len: h.slot_len,
            data_offset: h.data_offset,
            data_base: h.data_base,
            data_len: h.data_len,
            backing: Backing::Mapped(map),
            base,
            len,
        })
    }

    /// The segment's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Owner: removes the table's name now (the download is over); the
    /// memory lives on for whoever still maps it.
    pub(crate) fn unlink(&self) {
        match &self.backing {
            Backing::Owned(seg) => seg.unlink(),
            Backing::Kept(seg) => seg.unlink(),
            Backing::Mapped(_) => {}
        }
    }

    /// Owner of a ring: when every slot is `Empty` (each range delivered
    /// and released, none assigned, so no worker holds or may claim one),
    /// hands the segment to `rings` for a later ring of the same size and
    /// returns `true`. The cache gives it out only once this table is gone.
    /// Otherwise (a lane table, a slot still in use) returns `false`.
    pub(crate) fn keep_for_reuse(&self, rings: &SegmentCache) -> bool {
        let Backing::Kept(seg) = &self.backing else {
            return false;
        };
        let all_empty =
            (0..self.slots).all(|s| self.word(s).is_some_and(|w| w.state == State::Empty));
        all_empty && rings.put_ring(Arc::clone(seg))
    }

    /// Number of slots (records, piece records included).
    pub(crate) fn slots(&self) -> u32 {
        self.slots
    }

    /// Number of slots with bytes of their own: the ring's data slots
    /// (all of a lane table's slots). Piece record of data slot `i`:
    /// `data_slots() + i`, when the table has piece records.
    pub(crate) fn data_slots(&self) -> u32 {
        self.slots - self.pieces
    }

    /// Whether the table has piece records (a `create_iter` ring).
    pub(crate) fn has_pieces(&self) -> bool {
        self.pieces > 0
    }

    /// The piece record of ring slot `slot`, if the table has one.
    pub(crate) fn piece_of(&self, slot: u32) -> Option<u32> {
        (slot < self.pieces).then(|| self.data_slots() + slot)
    }

    /// Bytes of the data segment a lane table writes to.
    pub(crate) fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Owner, before the table is shared: the first `n` bytes of the data
    /// segment have their pages (a recycled segment written whole).
    pub(crate) fn set_data_allocated(&self, n: u64) {
        self.header()
            .data_allocated
            .store(n.min(self.data_len), Ordering::Relaxed);
    }

    /// How many of the data segment's first bytes have their pages, so a
    /// worker may store into them through a mapping: no page to allocate
    /// or zero, and no room needed (never a SIGBUS).
    pub(crate) fn data_allocated(&self) -> u64 {
        self.header()
            .data_allocated
            .load(Ordering::Relaxed)
            .min(self.data_len)
    }

    /// Whether slot bytes live in the table (a ring).
    pub(crate) fn is_ring(&self) -> bool {
        self.slot_len > 0
    }

    fn header(&self) -> &Header {
        // SAFETY: validated at create/open: the mapping holds a header.
        unsafe { &*self.base.cast::<Header>() }
    }

    fn record(&self, slot: u32) -> Option<&Record> {
        if slot >= self.slots {
            return None;
        }
        let off = HEADER_LEN + slot as usize * RECORD_LEN;
        // SAFETY: slot < slots, so the record lies inside the validated
        // layout; records are 64-aligned (the base is page-aligned) and only
        // accessed through atomics.
        Some(unsafe { &*self.base.add(off).cast::<Record>() })
    }

    fn error_box(&self, slot: u32) -> *mut u8 {
        let off = HEADER_LEN + self.slots as usize * RECORD_LEN + slot as usize * ERROR_BOX;
        // SAFETY: in bounds of the validated layout (slot < slots checked by
        // every caller through `record`).
        unsafe { self.base.add(off) }
    }

    /// The current word of `slot` (acquire: a `Ready`/`Failed` seen here
    /// makes the slot's bytes and result visible).
    pub(crate) fn word(&self, slot: u32) -> Option<Word> {
        self.record(slot).map(|r| step::word(&r.word))
    }

    /// Consumer: puts `range` into an `Empty` slot; returns its generation.
    pub(crate) fn assign(&self, slot: u32, range: ByteRange) -> Result<u32> {
        let rec = self
            .record(slot)
            .ok_or_else(|| Error::Pool(format!("slot {slot} out of range")))?;
        step::assign(&rec.word, || {
            rec.range_start.store(range.start, Ordering::Relaxed);
            rec.range_end.store(range.end, Ordering::Relaxed);
            rec.bytes.store(0, Ordering::Relaxed);
            rec.resumed.store(0, Ordering::Relaxed);
            rec.attempts.store(0, Ordering::Relaxed);
            rec.error_len.store(0, Ordering::Relaxed);
            rec.received.store(0, Ordering::Relaxed);
            rec.limit.store(Limit::FRESH.pack(), Ordering::Relaxed);
        })
        .map_err(|refused| match refused {
            step::AssignRefused::NotEmpty(state) => {
                Error::Pool(format!("slot {slot} is {state:?}, not Empty"))
            }
            step::AssignRefused::Raced => {
                Error::Pool(format!("slot {slot} changed while assigning"))
            }
        })
    }

    /// Consumer: frees a finished slot (`Ready`/`Failed` → `Empty(g+1)`).
    pub(crate) fn release(&self, slot: u32) -> bool {
        self.record(slot).is_some_and(|r| step::release(&r.word))
    }

    /// The result of a finished slot.
    pub(crate) fn result(&self, slot: u32) -> SlotResult {
        match (self.record(slot), self.word(slot)) {
            (Some(r), Some(w)) => SlotResult {
                bytes: r.bytes.load(Ordering::Relaxed),
                attempts: r.attempts.load(Ordering::Relaxed),
                resumed: r.resumed.load(Ordering::Relaxed),
                pid: w.aux,
            },
            _ => SlotResult::default(),
        }
    }

    /// Consumer: how many bytes of its range a slot holding an undelivered
    /// range (`Assigned`/`Writing`) has received so far, at most the
    /// range's length (up to its cut, if it was cut); `None` in any other
    /// state. Progress only: it may go
    /// down when a dead worker's range is re-run.
    pub(crate) fn received_in_flight(&self, slot: u32) -> Option<u64> {
        let rec = self.record(slot)?;
        let w = step::word(&rec.word);
        if !matches!(w.state, State::Assigned | State::Writing) {
            return None;
        }
        let len = self.delivered_range(slot)?.len();
        Some(rec.received.load(Ordering::Relaxed).min(len))
    }

    /// The range recorded in `slot`.
    pub(crate) fn range(&self, slot: u32) -> Option<ByteRange> {
        self.record(slot).map(|r| ByteRange {
            start: r.range_start.load(Ordering::Relaxed),
            end: r.range_end.load(Ordering::Relaxed),
        })
    }

    /// The error of a `Failed` slot.
    pub(crate) fn error(&self, slot: u32) -> Error {
        let Some(rec) = self.record(slot) else {
            return Error::Pool(format!("slot {slot} out of range"));
        };
        let n = (rec.error_len.load(Ordering::Relaxed) as usize).min(ERROR_BOX);
        // SAFETY: the box lies inside the layout; its writer finished before
        // publishing Failed (release), which the caller observed (acquire),
        // and nobody writes it again until the slot is reassigned.
        let bytes = unsafe { std::slice::from_raw_parts(self.error_box(slot), n) };
        serde_json::from_slice(bytes).unwrap_or_else(|_| {
            Error::Pool(format!(
                "slot {slot} failed: {}",
                String::from_utf8_lossy(bytes)
            ))
        })
    }

    fn write_error(&self, slot: u32, rec: &Record, err: &Error) {
        let mut json = serde_json::to_vec(err).unwrap_or_default();
        if json.len() > ERROR_BOX {
            let mut msg = err.to_string();
            msg.truncate(ERROR_BOX / 2);
            json = serde_json::to_vec(&Error::Pool(msg)).unwrap_or_default();
            json.truncate(ERROR_BOX);
        }
        // SAFETY: the caller is the slot's only writer (it holds the claim,
        // or the claimant is dead); the box is ERROR_BOX bytes inside the
        // layout and json is at most that long.
        unsafe { std::ptr::copy_nonoverlapping(json.as_ptr(), self.error_box(slot), json.len()) };
        rec.error_len.store(json.len() as u32, Ordering::Relaxed);
    }

    /// Worker: claims `Assigned(generation)` of `slot` as `Writing(generation, pid)`.
    /// Fails (and nothing may be written) when the slot is in any other
    /// state, or when its recorded range does not fit the table.
    pub(crate) fn claim(&self, slot: u32, generation: u32, pid: u32) -> Result<Claim> {
        let rec = self
            .record(slot)
            .ok_or_else(|| Error::Pool(format!("task for slot {slot} of {} slots", self.slots)))?;
        if !step::claim(&rec.word, generation, pid) {
            return Err(Error::Pool(format!(
                "slot {slot} generation {generation} is no longer assigned ({:?})",
                self.word(slot)
            )));
        }
        // A dead claimant's count goes: this claim counts from 0, and has
        // reserved nothing yet (a cut made meanwhile stays).
        rec.received.store(0, Ordering::Relaxed);
        cut::restart(&rec.limit);
        // The range was written before the Assigned store that our CAS
        // observed (acquire); a lane re-run after its range was cut
        // fetches it up to the cut.
        let mut range = ByteRange {
            start: rec.range_start.load(Ordering::Relaxed),
            end: rec.range_end.load(Ordering::Relaxed),
        };
        if range.start <= range.end {
            range.end = range.start + cut::end(&rec.limit, range.len());
        }
        // Where the bytes go: a piece writes into its data slot at its
        // offset from that slot's range start, and only exactly the rest
        // of that range past its cut (the slot's range and cut stay put
        // while the piece is assigned: a slot is cut once, and the
        // consumer releases the piece first).
        let at = match slot.checked_sub(self.data_slots()) {
            Some(of) => {
                let whole = self.range(of);
                let delivered = self.delivered_range(of);
                let in_use = self.word(of).is_some_and(|w| w.state != State::Empty);
                match (whole, delivered) {
                    (Some(whole), Some(d))
                        if in_use
                            && d.end < whole.end
                            && range
                                == (ByteRange {
                                    start: d.end,
                                    end: whole.end,
                                }) =>
                    {
                        range.start.checked_sub(whole.start)
                    }
                    _ => None,
                }
            }
            None => Some(0),
        };
        let fits = range.start <= range.end
            && at.is_some()
            && if self.is_ring() {
                at.and_then(|a| a.checked_add(range.len()))
                    .is_some_and(|end| end <= self.slot_len)
            } else {
                range.start >= self.data_base && range.end - self.data_base <= self.data_len
            };
        let claim = Claim {
            slot,
            generation,
            pid,
            range,
            at: at.unwrap_or(0),
        };
        if !fits {
            let err = Error::Pool(format!(
                "slot {slot} holds range {}..{} that does not fit its table",
                range.start, range.end
            ));
            self.publish(claim, &Err(err.clone()), 0, 0);
            return Err(err);
        }
        Ok(claim)
    }

    /// Worker: the claimed slot's received counter.
    pub(crate) fn received(&self, claim: &Claim) -> Received<'_> {
        Received(self.record(claim.slot).map(|r| &r.received))
    }

    /// Worker: what a writer asks before writing, to learn whether its
    /// range was cut short.
    pub(crate) fn limiter(&self, claim: &Claim) -> Limiter<'_> {
        Limiter {
            word: self.record(claim.slot).map(|r| &r.limit),
            len: claim.range.len(),
        }
    }

    /// Consumer: cuts the range a worker is writing in `slot` (a lane, or
    /// a ring's data slot) at `at` bytes from its start (a multiple of
    /// [`CUT_UNIT`]) and returns the piece cut off, now nobody's: the
    /// caller assigns it to another lane, or to the slot's piece record.
    /// `None` when the slot is not `Writing`, or its writer has reserved up
    /// to or past `at`, or `at` is not inside its range, or the slot is a
    /// piece record (never cut again).
    pub(crate) fn cut(&self, slot: u32, at: u64) -> Option<ByteRange> {
        let rec = self.record(slot)?;
        if slot >= self.data_slots()
            || (self.is_ring() && !self.has_pieces())
            || !at.is_multiple_of(CUT_UNIT)
        {
            return None;
        }
        if step::word(&rec.word).state != State::Writing {
            return None;
        }
        let range = self.range(slot)?;
        let units = u32::try_from(at / CUT_UNIT).ok()?;
        let end = cut::cut(&rec.limit, range.len(), units)?;
        Some(ByteRange {
            start: range.start + at,
            end: range.start + end,
        })
    }

    /// Consumer: the part of `slot`'s range (a lane, or a ring's data
    /// slot) its worker delivers: all of it, or up to where it was cut.
    pub(crate) fn delivered_range(&self, slot: u32) -> Option<ByteRange> {
        let rec = self.record(slot)?;
        let r = self.range(slot)?;
        Some(ByteRange {
            start: r.start,
            end: r.start + cut::end(&rec.limit, r.len()),
        })
    }

    /// Where a lane's bytes go in the data segment.
    pub(crate) fn data_offset_of(&self, claim: &Claim) -> u64 {
        claim.range.start - self.data_base
    }

    /// Worker: the ring slot's bytes for the claimed range.
    // The exclusivity comes from the claim (won by CAS, borrowed mutably),
    // not from &mut self: the table is shared by design.
    #[allow(clippy::mut_from_ref)]
    pub(crate) fn slot_mut<'a>(&'a self, claim: &'a mut Claim) -> &'a mut [u8] {
        if !self.is_ring() || claim.slot >= self.slots {
            return &mut [];
        }
        let data_slot = claim
            .slot
            .checked_sub(self.data_slots())
            .unwrap_or(claim.slot);
        let off = self.data_offset as usize
            + data_slot as usize * self.slot_len as usize
            + claim.at as usize;
        let len = claim.range.len() as usize;
        debug_assert!(off + len <= self.len);
        // SAFETY: in bounds (claim checked at + len ≤ slot_len, the layout
        // was validated against the mapping); the claim (Writing(g, our
        // pid), won by CAS and borrowed mutably here) makes us the writer of
        // these bytes, and no consumer reads them before Ready. A data
        // slot's range and its piece share the slot's bytes but not one
        // byte of them: the slot's writer writes only what it reserved
        // before the cut (the limit word, see `cut`, checked before each
        // write by the sink), the piece only what lies past the cut.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(off), len) }
    }

    /// Worker: the ring slot's bytes for the claimed range, to read (an
    /// upload's part, put there by the consumer before it assigned the
    /// slot).
    pub(crate) fn slot_bytes<'a>(&'a self, claim: &'a mut Claim) -> &'a [u8] {
        self.slot_mut(claim)
    }

    /// Consumer: lets `fill` write the bytes of an `Empty` ring slot (an
    /// upload's next part) and returns what it returns; `None` when the
    /// slot is not `Empty` or the table is not a ring.
    pub(crate) fn fill_empty<R>(&self, slot: u32, fill: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        let w = self.word(slot)?;
        if !self.is_ring() || slot >= self.data_slots() || w.state != State::Empty {
            return None;
        }
        let off = self.data_offset as usize + slot as usize * self.slot_len as usize;
        let len = usize::try_from(self.slot_len).ok()?;
        // SAFETY: in bounds of the layout (slot < data_slots, checked
        // above); an Empty slot is written by nobody but its consumer — workers
        // write or read only slots they claimed from Assigned, which only
        // the consumer makes — and the consumer is the caller, which
        // holds the slice only for the duration of `fill`.
        let bytes = unsafe { std::slice::from_raw_parts_mut(self.base.add(off), len) };
        Some(fill(bytes))
    }

    /// Worker: like [`SlotTable::publish`] with success, also leaving a
    /// short text in the slot's box for the consumer (an uploaded part's
    /// `ETag`); at most [`ERROR_BOX`] bytes.
    pub(crate) fn publish_note(&self, claim: Claim, bytes: u64, attempts: u32, note: &str) -> bool {
        let Some(rec) = self.record(claim.slot) else {
            return false;
        };
        if Word::unpack(rec.word.load(Ordering::Acquire))
            != Word::new(State::Writing, claim.pid, claim.generation)
        {
            return false;
        }
        let n = note.len().min(ERROR_BOX);
        // SAFETY: we hold the claim (checked above), which makes us the
        // slot's only writer; the box is ERROR_BOX bytes inside the layout
        // and n is at most that.
        unsafe { std::ptr::copy_nonoverlapping(note.as_ptr(), self.error_box(claim.slot), n) };
        rec.error_len.store(n as u32, Ordering::Relaxed);
        rec.attempts.store(attempts, Ordering::Relaxed);
        rec.resumed.store(0, Ordering::Relaxed);
        rec.bytes.store(bytes, Ordering::Relaxed);
        step::publish(&rec.word, claim.generation, claim.pid, true)
    }

    /// Consumer: the note a `Ready(generation)` slot was published with
    /// ([`SlotTable::publish_note`]); empty when none.
    pub(crate) fn note(&self, slot: u32, generation: u32) -> Option<String> {
        let w = self.word(slot)?;
        if w.state != State::Ready || w.generation != generation {
            return None;
        }
        let rec = self.record(slot)?;
        let n = (rec.error_len.load(Ordering::Relaxed) as usize).min(ERROR_BOX);
        // SAFETY: the box lies inside the layout; its writer finished before
        // publishing Ready (release), observed above (acquire), and nobody
        // writes it again until the consumer (the caller) reassigns it.
        let bytes = unsafe { std::slice::from_raw_parts(self.error_box(slot), n) };
        Some(String::from_utf8_lossy(bytes).into_owned())
    }

    /// Worker: publishes the claimed slot's result (`Ready` or `Failed`,
    /// only from our own `Writing(g, pid)`).
    pub(crate) fn publish(
        &self,
        claim: Claim,
        result: &Result<u64>,
        attempts: u32,
        resumed: u64,
    ) -> bool {
        let Some(rec) = self.record(claim.slot) else {
            return false;
        };
        // Only the holder of the claim writes the record: a claim taken from
        // us (we were presumed dead) leaves the next generation's record
        // alone.
        if Word::unpack(rec.word.load(Ordering::Acquire))
            != Word::new(State::Writing, claim.pid, claim.generation)
        {
            return false;
        }
        rec.attempts.store(attempts, Ordering::Relaxed);
        rec.resumed.store(resumed, Ordering::Relaxed);
        match result {
            Ok(n) => rec.bytes.store(*n, Ordering::Relaxed),
            Err(e) => self.write_error(claim.slot, rec, e),
        }
        step::publish(&rec.word, claim.generation, claim.pid, result.is_ok())
    }

    /// Worker: whether the claim `key` ([`Claim::key`]) still holds, that
    /// is the slot is still `Writing(generation, pid)` (a consumer that
    /// closes its download fails its slots in flight).
    pub(crate) fn holds(&self, (slot, generation, pid): (u32, u32, u32)) -> bool {
        self.word(slot) == Some(Word::new(State::Writing, pid, generation))
    }

    /// Supervisor: the worker holding `(slot, generation)` died. If the range was
    /// not delivered (`Assigned(generation)`/`Writing(generation, _)`), moves the slot to
    /// `Assigned(generation+1)` and returns the new generation to re-run with;
    /// `None` means the task is done and must not run again.
    pub(crate) fn reclaim(&self, slot: u32, generation: u32) -> Option<u32> {
        step::reclaim(&self.record(slot)?.word, generation)
    }

    /// Supervisor: fails `(slot, generation)` with `err` if it is still in flight
    /// (its worker is dead, never started it, or the pool is going away).
    pub(crate) fn fail(&self, slot: u32, generation: u32, err: &Error) -> bool {
        let Some(rec) = self.record(slot) else {
            return false;
        };
        step::fail(&rec.word, generation, || self.write_error(slot, rec, err))
    }

    /// Consumer: the bytes of a ring slot holding `Ready(generation)`, or `None`
    /// when it does not. A slot whose range was cut needs its piece
    /// `Ready` too, holding the rest of the range.
    pub(crate) fn ready_bytes(&self, slot: u32, generation: u32) -> Option<&[u8]> {
        let w = self.word(slot)?;
        if !self.is_ring()
            || slot >= self.data_slots()
            || w.state != State::Ready
            || w.generation != generation
        {
            return None;
        }
        let r = self.range(slot)?;
        if self.rest_of(slot)?.is_some_and(|rest| !rest.ready) {
            return None;
        }
        let off = self.data_offset as usize + slot as usize * self.slot_len as usize;
        let len = usize::try_from(r.len())
            .ok()
            .filter(|l| *l as u64 <= self.slot_len)?;
        // SAFETY: in bounds of the layout; Ready(generation) means the writer
        // published (release, observed above with acquire) — and the
        // piece's writer, for a range that was cut — and no process may
        // write the slot until its consumer releases it (the piece first,
        // then the slot) — the caller is that consumer and holds the slot
        // while the slice lives.
        Some(unsafe { std::slice::from_raw_parts(self.base.add(off), len) })
    }

    /// Consumer: where the rest of ring slot `slot`'s range is, once its
    /// own writer is done: `Some(None)` when the range was not cut,
    /// `Some(Some(rest))` when it was (the piece record, and whether it
    /// holds exactly the rest, `Ready`), `None` when the slot is not a
    /// data slot.
    pub(crate) fn rest_of(&self, slot: u32) -> Option<Option<Rest>> {
        let whole = self.range(slot).filter(|_| slot < self.data_slots())?;
        let delivered = self.delivered_range(slot)?;
        if delivered.end >= whole.end {
            return Some(None);
        }
        let piece = self.piece_of(slot)?;
        let word = self.word(piece)?;
        let ready = word.state == State::Ready
            && self.range(piece)
                == Some(ByteRange {
                    start: delivered.end,
                    end: whole.end,
                })
            && self.result(piece).bytes == whole.end - delivered.end;
        Some(Some(Rest { piece, word, ready }))
    }

    #[cfg(feature = "test-support")]
    /// Test hook: lets `n` more workers kill themselves at their kill point.
    pub(crate) fn arm_kills(&self, n: u32) {
        self.header().kill_tokens.store(n, Ordering::Release);
    }

    #[cfg(feature = "test-support")]
    /// Test hook: takes one kill token, if any is left.
    pub(crate) fn take_kill(&self) -> bool {
        self.header()
            .kill_tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| t.checked_sub(1))
            .is_ok()
    }
}

mod cut;
#[cfg(test)]
mod model;

pub(crate) use cut::CUT_UNIT;
use cut::Limit;

#[cfg(test)]
mod tests {
    use super::*;

    fn table(slots: u32, slot_len: u64) -> SlotTable {
        SlotTable::create(Path::new("/dev/shm"), slots, slot_len, 0, 0).unwrap()
    }

    #[test]
    fn word_round_trips() {
        for state in [
            State::Empty,
            State::Assigned,
            State::Writing,
            State::Ready,
            State::Failed,
        ] {
            let w = Word::new(state, 4_194_303, u32::MAX);
            assert_eq!(Word::unpack(w.pack()), w);
        }
    }

    #[test]
    fn only_an_undelivered_task_of_its_own_generation_is_in_flight() {
        for state in [
            State::Empty,
            State::Assigned,
            State::Writing,
            State::Ready,
            State::Failed,
        ] {
            for generation in [4, 5] {
                let w = Word::new(state, 7, generation);
                let in_flight =
                    generation == 4 && matches!(state, State::Assigned | State::Writing);
                assert_eq!(w.in_flight(4), in_flight, "{w:?}");
                let rerun = in_flight.then(|| Word::new(State::Assigned, 0, 5));
                assert_eq!(w.reclaimed(4), rerun, "{w:?}");
                let failed = in_flight.then(|| Word::new(State::Failed, 0, 4));
                assert_eq!(w.failed(4), failed, "{w:?}");
            }
        }
    }

    #[test]
    fn a_slot_goes_round_and_a_stale_claim_writes_nothing() {
        let t = table(2, 4096);
        let g = t.assign(1, ByteRange { start: 10, end: 20 }).unwrap();
        assert_eq!(g, 0);
        let mut c = t.claim(1, g, 77).unwrap();
        assert_eq!(c.range(), ByteRange { start: 10, end: 20 });
        t.slot_mut(&mut c).copy_from_slice(&[9; 10]);
        // A second claim of the same generation fails.
        assert!(t.claim(1, g, 78).is_err());
        assert!(t.publish(c, &Ok(10), 1, 0));
        assert_eq!(t.ready_bytes(1, g).unwrap(), &[9; 10]);
        assert_eq!(t.result(1).pid, 77);
        // Done: a dead worker's task is not re-run.
        assert_eq!(t.reclaim(1, g), None);
        assert!(t.release(1));
        assert_eq!(t.word(1).unwrap(), Word::new(State::Empty, 0, 1));
        // The old generation cannot be claimed after reuse.
        let g2 = t.assign(1, ByteRange { start: 0, end: 5 }).unwrap();
        assert_eq!(g2, 1);
        assert!(t.claim(1, g, 79).is_err());
    }

    /// A ring's data slot cut for an idle worker: its writer stops at the
    /// cut, the piece record writes the rest into the same slot's memory,
    /// and the chunk reads as ready only once both are published.
    #[test]
    fn a_cut_ring_slot_is_finished_by_its_piece_in_the_same_memory() {
        let cache = SegmentCache::new(0);
        let len = 4 * CUT_UNIT;
        let t = SlotTable::create_ring(&cache, Path::new("/dev/shm"), 2, len, true).unwrap();
        assert_eq!((t.slots(), t.data_slots(), t.piece_of(1)), (4, 2, Some(3)));
        // Chunk at 1000 of the object, in data slot 1.
        let whole = ByteRange {
            start: 1000,
            end: 1000 + len,
        };
        let g = t.assign(1, whole).unwrap();
        let mut own = t.claim(1, g, 10).unwrap();
        let limiter = t.limiter(&own);
        assert_eq!(limiter.reserve(CUT_UNIT), CUT_UNIT);
        // Not past what the writer reserved; a piece record is never cut.
        assert_eq!(t.cut(1, CUT_UNIT), None);
        let rest = t.cut(1, 2 * CUT_UNIT).unwrap();
        assert_eq!(
            rest,
            ByteRange {
                start: 1000 + 2 * CUT_UNIT,
                end: whole.end
            }
        );
        assert!(!t.rest_of(1).unwrap().unwrap().ready);
        // The writer may go on only up to the cut.
        assert_eq!(limiter.reserve(len), 2 * CUT_UNIT);
        let n = (2 * CUT_UNIT) as usize;
        t.slot_mut(&mut own)[..n].fill(1);
        let pg = t.assign(3, rest).unwrap();
        let mut piece = t.claim(3, pg, 11).unwrap();
        // A piece is never cut again, though it is being written.
        assert_eq!(t.cut(3, CUT_UNIT), None);
        assert!(t.rest_of(3).is_none(), "a piece has no rest");
        assert_eq!(t.slot_mut(&mut piece).len(), n);
        t.slot_mut(&mut piece).fill(2);
        assert!(t.publish(own, &Ok(2 * CUT_UNIT), 1, 0));
        assert_eq!(
            t.ready_bytes(1, g),
            None,
            "the piece is still being written"
        );
        assert!(t.publish(piece, &Ok(2 * CUT_UNIT), 1, 0));
        let bytes = t.ready_bytes(1, g).unwrap();
        assert_eq!(bytes.len(), len as usize);
        assert!(bytes[..n].iter().all(|b| *b == 1));
        assert!(bytes[n..].iter().all(|b| *b == 2));
        // Slot 0 was untouched; piece records have no bytes of their own.
        assert_eq!(t.ready_bytes(3, pg), None);
        assert_eq!(t.fill_empty(2, |b| b.len()), None);
        assert_eq!(t.fill_empty(0, |b| b.iter().all(|x| *x == 0)), Some(true));
    }

    /// A piece record is claimed only for exactly the rest of its data
    /// slot's cut range: not for bytes before the cut or past the range's
    /// end, even where they would fit in the slot's memory, and not while
    /// the slot was never cut.
    #[test]
    fn a_piece_that_is_not_the_rest_of_its_slots_cut_range_is_refused() {
        let cache = SegmentCache::new(0);
        let len = 4 * CUT_UNIT;
        let t = SlotTable::create_ring(&cache, Path::new("/dev/shm"), 1, len, true).unwrap();
        let r = |start: u64, end: u64| ByteRange { start, end };
        let (a, b) = (5000, 5000 + 3 * CUT_UNIT);
        let g0 = t.assign(0, r(a, b)).unwrap();
        let _writer = t.claim(0, g0, 2).unwrap();
        let refused = |bad: ByteRange| {
            let g = t.assign(1, bad).unwrap();
            assert!(t.claim(1, g, 3).is_err(), "{bad:?}");
            assert_eq!(t.word(1).unwrap().state, State::Failed, "{bad:?}");
            assert!(t.release(1));
        };
        // Not cut: no piece at all, even one inside the range.
        refused(r(a + CUT_UNIT, b));
        let rest = t.cut(0, CUT_UNIT).unwrap();
        assert_eq!(rest, r(a + CUT_UNIT, b));
        // Past the slot's memory; before the cut; short of the range's
        // end; past it (inside the slot's memory).
        for bad in [
            r(a - 1000, a),
            r(a + CUT_UNIT - 1, b),
            r(a + CUT_UNIT, b - 1),
            r(a + CUT_UNIT, b + 1),
            r(a + CUT_UNIT + 4096, b),
        ] {
            refused(bad);
        }
        let g = t.assign(1, rest).unwrap();
        let mut c = t.claim(1, g, 3).unwrap();
        assert_eq!(t.slot_mut(&mut c).len(), (2 * CUT_UNIT) as usize);
    }

    #[test]
    fn a_dead_writer_is_reclaimed_with_a_new_generation() {
        let t = table(1, 64);
        let g = t.assign(0, ByteRange { start: 0, end: 64 }).unwrap();
        let c = t.claim(0, g, 5).unwrap();
        let g2 = t.reclaim(0, g).unwrap();
        assert_eq!(g2, g + 1);
        // The dead claim can no longer publish.
        assert!(!t.publish(c, &Ok(64), 1, 0));
        let c2 = t.claim(0, g2, 6).unwrap();
        assert!(t.publish(c2, &Err(Error::Pool("boom".into())), 3, 7));
        assert_eq!(t.error(0), Error::Pool("boom".into()));
        assert_eq!(t.result(0).attempts, 3);
    }

    #[test]
    fn ranges_that_do_not_fit_are_refused() {
        let t = table(1, 16);
        let g = t.assign(0, ByteRange { start: 0, end: 17 }).unwrap();
        assert!(t.claim(0, g, 1).is_err());
        assert_eq!(t.word(0).unwrap().state, State::Failed);
        let lanes = SlotTable::create(Path::new("/dev/shm"), 1, 0, 100, 50).unwrap();
        let g = lanes
            .assign(
                0,
                ByteRange {
                    start: 99,
                    end: 120,
                },
            )
            .unwrap();
        assert!(lanes.claim(0, g, 1).is_err());
        assert!(lanes.release(0));
        let g = lanes
            .assign(
                0,
                ByteRange {
                    start: 120,
                    end: 150,
                },
            )
            .unwrap();
        let c = lanes.claim(0, g, 1).unwrap();
        assert_eq!(lanes.data_offset_of(&c), 20);
    }

    #[test]
    fn a_worker_mapping_sees_the_owners_table() {
        let t = table(3, 100);
        let w = SlotTable::open(Path::new("/dev/shm"), t.name()).unwrap();
        assert_eq!(w.slots(), 3);
        let g = t.assign(2, ByteRange { start: 0, end: 100 }).unwrap();
        let mut c = w.claim(2, g, 9).unwrap();
        w.slot_mut(&mut c).fill(3);
        assert!(w.publish(c, &Ok(100), 1, 0));
        assert_eq!(t.ready_bytes(2, g).unwrap(), &[3u8; 100][..]);
    }

    #[test]
    fn the_received_count_restarts_with_each_assign_and_claim() {
        let t = table(1, 100);
        let w = SlotTable::open(Path::new("/dev/shm"), t.name()).unwrap();
        let g = t.assign(0, ByteRange { start: 0, end: 100 }).unwrap();
        assert_eq!(t.received_in_flight(0), Some(0));
        let c = w.claim(0, g, 5).unwrap();
        w.received(&c).set(40);
        assert_eq!(t.received_in_flight(0), Some(40), "seen across mappings");
        // Dead writer: its count stays until the re-run claims the slot.
        let g2 = t.reclaim(0, g).unwrap();
        assert_eq!(t.received_in_flight(0), Some(40));
        let mut c2 = w.claim(0, g2, 6).unwrap();
        assert_eq!(t.received_in_flight(0), Some(0));
        w.received(&c2).set(1000);
        assert_eq!(t.received_in_flight(0), Some(100), "capped at the range");
        w.slot_mut(&mut c2).fill(1);
        assert!(w.publish(c2, &Ok(100), 1, 0));
        assert_eq!(t.received_in_flight(0), None, "done: the word decides");
        assert!(t.release(0));
        assert_eq!(t.received_in_flight(0), None);
        t.assign(
            0,
            ByteRange {
                start: 100,
                end: 150,
            },
        )
        .unwrap();
        assert_eq!(t.received_in_flight(0), Some(0), "a new range from 0");
    }

    #[test]
    fn a_table_of_the_previous_layout_version_is_refused() {
        use std::os::unix::fs::FileExt;
        let t = table(1, 64);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(Path::new("/dev/shm").join(t.name()))
            .unwrap();
        f.write_all_at(
            &2u32.to_ne_bytes(),
            std::mem::offset_of!(Header, version) as u64,
        )
        .unwrap();
        let e = SlotTable::open(Path::new("/dev/shm"), t.name()).unwrap_err();
        assert!(
            e.to_string().contains("layout version 2"),
            "a worker must not read a record of another layout: {e}"
        );
    }

    #[test]
    fn an_error_too_large_for_its_box_is_shortened() {
        let t = table(1, 1);
        let g = t.assign(0, ByteRange { start: 0, end: 1 }).unwrap();
        let c = t.claim(0, g, 1).unwrap();
        assert!(t.publish(c, &Err(Error::Pool("x".repeat(5000))), 1, 0));
        match t.error(0) {
            Error::Pool(m) => assert!(m.len() < ERROR_BOX),
            e => panic!("{e:?}"),
        }
    }
}
