//! The coordinator's side of the worker processes: the dispatcher thread
//! that forks them, hands out tasks, and supervises them.
//!
//! A download registers with `WorkerPool::open_download` (its slot table,
//! doorbell and constants) and submits `(slot, generation)` tasks. The
//! dispatcher sends each worker a download's constants once, then 16-byte
//! task records; a worker's result goes into the slot table, never through
//! the dispatcher. The dispatcher learns of a dead worker from its socket
//! (EOF, from the kernel) and applies the supervisor rule of
//! [`crate::shm`]'s slot table to the task it held: re-run it with a new
//! generation if the slot says it was not delivered, otherwise leave it.
//! It also resolves host names for the workers, which never call
//! `getaddrinfo` themselves (see the fork-safety notes in `child.rs`):
//! a download's first hosts when it registers, any other on request.
//! Nothing here waits on a timer.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, recv, send, socketpair};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use crate::error::{Error, Result};
use crate::shm::{Doorbell, SegmentCache, SlotResult, SlotTable, send_with_fd};
use crate::source::HttpConfig;
use crate::source::http::{WorkerHttp, lookup_host, resolve_source};
use crate::worker::child;
use crate::worker::protocol::{
    FromWorker, Lookup, LookupAnswer, MAX_MESSAGE, Open, READY, READY_TIMEOUT_MS, TaskRecord,
    decode_from_worker, encode_answer, encode_close, encode_open, encode_task,
};

/// Workers when none is asked for: enough parallel streams to saturate a
/// storage node from one client, few enough for a laptop.
pub const DEFAULT_WORKERS: usize = 8;

/// Most workers a pool may have.
pub const MAX_WORKERS: usize = 256;

/// How often one task may lose its worker before the download fails with
/// [`Error::WorkerCrashed`].
pub const DEFAULT_MAX_CRASH_RETRIES: u32 = 3;

/// How many worker deaths one download (one `read_all`, one iterator)
/// survives before it fails with [`Error::WorkerCrashed`]: enough for a
/// stray OOM kill or two, few enough that a crash loop ends quickly.
pub const DEFAULT_MAX_DEATHS_PER_DOWNLOAD: u32 = 8;

/// Settings of a [`WorkerPool`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Number of worker processes (1..=[`MAX_WORKERS`]).
    pub workers: usize,
    /// HTTP settings of every worker's client.
    pub http: HttpConfig,
    /// Re-runs of a task whose worker died.
    pub max_crash_retries: u32,
    /// Worker deaths one download survives.
    pub max_deaths_per_download: u32,
    /// Bytes of dropped `read_all` buffers the pool keeps, to hand their
    /// segments (pages allocated) to its next `read_all`s, and likewise of
    /// finished `create_iter` rings for its next ring of the same size; at
    /// most a quarter of the segment directory's size. Default 0: a
    /// dropped buffer's segment (a finished ring) is unlinked at once. A
    /// pool that serves many downloads in a row gains from
    /// [`RECYCLE_BYTES`] (kept segments stay in `/dev/shm` until the pool
    /// goes).
    pub recycle_bytes: u64,
}

/// A [`PoolConfig::recycle_bytes`] for pools that serve `read_all`s in a
/// row: enough for a few checkpoint shards.
pub const RECYCLE_BYTES: u64 = 4 << 30;

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            workers: DEFAULT_WORKERS,
            http: HttpConfig::default(),
            max_crash_retries: DEFAULT_MAX_CRASH_RETRIES,
            max_deaths_per_download: DEFAULT_MAX_DEATHS_PER_DOWNLOAD,
            recycle_bytes: 0,
        }
    }
}

/// Counters of a pool since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Ranges completed (successfully or not).
    pub ranges: u64,
    /// Requests beyond the first, over all ranges.
    pub retries: u64,
    /// Bytes kept from interrupted attempts instead of fetched again.
    pub resumed_bytes: u64,
    /// Worker processes that died and were replaced.
    pub worker_deaths: u64,
    /// `read_all` segments and `create_iter` rings handed out again
    /// instead of created (see [`PoolConfig::recycle_bytes`]).
    pub recycled_segments: u64,
    /// Ranges cut in two for a worker that had nothing left to do (a
    /// `read_all` lane, a `create_iter` chunk), the second half going to
    /// it. Each piece also counts in `ranges`.
    pub cut_ranges: u64,
}

#[derive(Debug, Default)]
struct Counters {
    ranges: AtomicU64,
    retries: AtomicU64,
    resumed_bytes: AtomicU64,
    worker_deaths: AtomicU64,
    cut_ranges: AtomicU64,
}

/// One download as the pool sees it: its slot table and doorbell, the
/// encoded constants sent once to each worker, and what its tasks suffered.
pub(crate) struct DownloadShared {
    id: u64,
    /// The object's name, for messages.
    name: String,
    /// The encoded constants, and how to renew them.
    open: Mutex<OpenMessage>,
    table: SlotTable,
    doorbell: Doorbell,
    /// Set when the download is abandoned: its queued tasks are dropped.
    cancel: AtomicBool,
    /// Worker deaths that cost this download a re-run.
    deaths: AtomicU32,
    /// Its tasks queued or on a worker; while there are any, it counts in
    /// the pool's `active` downloads.
    tasks: AtomicUsize,
    /// Whether it counts in `active` now: set by its first task, cleared by
    /// the drop of its last one or, earlier, by [`DownloadHandle::retire`]
    /// (the consumer saw its last range in; the worker's "done" reaches
    /// the dispatcher, which drops the task, a little later). Each clear
    /// after a set takes it out of `active` exactly once.
    counted: AtomicBool,
    /// The pool's count of downloads with tasks ([`WorkerPool::share`]).
    active: Arc<AtomicUsize>,
}

/// A download's `O` message as sent now, and when and how to renew it (an
/// S3 object's presigned URL expires: see [`SourceSpec::refresh_after`]).
struct OpenMessage {
    bytes: Arc<Vec<u8>>,
    /// Bumped by each renewal; a worker that was sent an older one gets
    /// the new one before its next task.
    version: u32,
    renew: Option<Renewal>,
}

/// When and how a download's `O` message is renewed. The new one is made
/// on a thread of its own (presigning may have to fetch credentials over
/// the network), never on the dispatcher; the dispatcher only swaps it in.
struct Renewal {
    at: Instant,
    every: Duration,
    open: Open,
    pending: Option<JoinHandle<Result<Vec<u8>>>>,
}

impl Renewal {
    /// A freshly presigned `O` message.
    fn make(open: &Open) -> Result<Vec<u8>> {
        let source = open.source.for_workers()?;
        encode_open(&Open {
            source,
            ..open.clone()
        })
    }
}

impl DownloadShared {
    /// The current `O` message and its version: a finished renewal is
    /// swapped in, a due one started.
    fn open_message(&self) -> (Arc<Vec<u8>>, u32) {
        let mut guard = match self.open.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(), // the message itself is intact
        };
        let m = &mut *guard;
        if let Some(r) = &mut m.renew {
            if r.pending.as_ref().is_some_and(|h| h.is_finished()) {
                let done = r.pending.take().map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::Pool("the renewal panicked".into())))
                });
                match done {
                    Some(Ok(bytes)) => {
                        m.bytes = Arc::new(bytes);
                        m.version = m.version.wrapping_add(1);
                        r.at = Instant::now() + r.every;
                        tracing::debug!(object = %self.name, "renewed the workers' presigned URL");
                    }
                    Some(Err(e)) => {
                        tracing::warn!(
                            target: "shmfetch",
                            object = %self.name,
                            error = %e,
                            "cannot renew the presigned URL; trying again soon"
                        );
                        r.at = Instant::now() + (r.every / 8).min(Duration::from_secs(60));
                    }
                    None => {}
                }
            } else if r.pending.is_none() && Instant::now() >= r.at {
                let open = r.open.clone();
                match std::thread::Builder::new()
                    .name("shmfetch-renew".into())
                    .spawn(move || Renewal::make(&open))
                {
                    Ok(h) => r.pending = Some(h),
                    Err(_) => r.at = Instant::now() + Duration::from_secs(1),
                }
            }
        }
        (Arc::clone(&m.bytes), m.version)
    }

    /// Takes the download out of the pool's active ones, if it is in.
    fn uncount(&self) {
        if self.counted.swap(false, Ordering::Relaxed) {
            self.active.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Fails the slot if it is still in flight at `generation`, and then
    /// wakes the consumer.
    fn fail(&self, slot: u32, generation: u32, err: &Error) {
        if self.table.fail(slot, generation, err) {
            self.doorbell.ring();
        }
    }
}

/// A download registered with a pool. Dropping it cancels its queued tasks
/// and tells the workers to forget it.
pub(crate) struct DownloadHandle {
    shared: Arc<DownloadShared>,
    pool: WorkerPool,
}

impl DownloadHandle {
    /// The download's slot table.
    pub(crate) fn table(&self) -> &SlotTable {
        &self.shared.table
    }

    /// The download's doorbell.
    pub(crate) fn doorbell(&self) -> &Doorbell {
        &self.shared.doorbell
    }

    /// The pool serving it.
    pub(crate) fn pool(&self) -> &WorkerPool {
        &self.pool
    }

    /// Assigns `range` to `slot` and queues the task.
    pub(crate) fn start(&self, slot: u32, range: crate::range::ByteRange) -> Result<()> {
        self.start_many(&[(slot, range)])
    }

    /// Assigns each `(slot, range)` and queues the tasks with one command
    /// (one wake-up of the dispatcher).
    pub(crate) fn start_many(&self, tasks: &[(u32, crate::range::ByteRange)]) -> Result<()> {
        if tasks.is_empty() {
            return Ok(());
        }
        let mut jobs = Vec::with_capacity(tasks.len());
        for &(slot, range) in tasks {
            let generation = self.shared.table.assign(slot, range)?;
            jobs.push(Job::new(&self.shared, slot, generation, None));
        }
        self.pool.send(Command::Submit(jobs))
    }

    /// Assigns an upload's part (`range` of the object, its bytes already
    /// in `slot`) and queues its task, with the URL the part goes to when
    /// each part has its own (a presigned S3 `UploadPart`).
    pub(crate) fn start_part(
        &self,
        slot: u32,
        range: crate::range::ByteRange,
        url: Option<String>,
    ) -> Result<()> {
        let generation = self.shared.table.assign(slot, range)?;
        self.pool.send(Command::Submit(vec![Job::new(
            &self.shared,
            slot,
            generation,
            url.map(Arc::from),
        )]))
    }

    /// Says the download has nothing left in flight (its consumer saw
    /// every range in), so it no longer takes a share of the workers
    /// ([`WorkerPool::share`]) even before the dispatcher hears the last
    /// worker's "done". A task started later counts it again.
    pub(crate) fn retire(&self) {
        self.shared.uncount();
    }

    /// Test hook: lets `n` workers of this download die at its kill point.
    #[cfg(feature = "test-support")]
    pub(crate) fn arm_kills(&self, n: u32) {
        self.shared.table.arm_kills(n);
    }
}

impl Drop for DownloadHandle {
    fn drop(&mut self) {
        self.retire();
        self.shared.cancel.store(true, Ordering::Relaxed);
        // Slots still in flight fail now: a worker in a retry backoff for
        // one of them sees its claim gone when it wakes up and stops,
        // instead of retrying for the rest of its time budget.
        let table = &self.shared.table;
        for slot in 0..table.slots() {
            if let Some(w) = table.word(slot)
                && w.in_flight(w.generation)
            {
                table.fail(
                    slot,
                    w.generation,
                    &Error::Pool("the download was closed".into()),
                );
            }
        }
        // A finished ring (every slot released) goes to the pool for the
        // next ring of its size. Otherwise the name goes now; a worker
        // still finishing a range of ours writes into memory nobody reads,
        // which goes with its mapping.
        if !table.keep_for_reuse(self.pool.segments()) {
            table.unlink();
        }
        let _ = self.pool.send(Command::Close(self.shared.id));
    }
}

struct Job {
    dl: Arc<DownloadShared>,
    slot: u32,
    generation: u32,
    crashes: u32,
    /// An upload part's own URL (a secret: never logged).
    url: Option<Arc<str>>,
}

/// A task that is dropped while its slot is still in flight at its
/// generation (queued or held when the dispatcher stops, even by a panic;
/// dropped with its cancelled download) fails its slot, so no consumer
/// waits for a range nobody will fetch. A finished or re-queued task's slot
/// is not in flight at its generation, and failing it is a no-op.
impl Drop for Job {
    fn drop(&mut self) {
        self.dl.fail(
            self.slot,
            self.generation,
            &Error::Pool("the worker pool stopped before this range was fetched".into()),
        );
        if self.dl.tasks.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.dl.uncount();
        }
    }
}

impl Job {
    /// A task for `slot` of `dl` at `generation`. While a download has
    /// any (queued, on a worker, or re-queued after a crash: the same
    /// `Job`), it counts as active at its pool; the count goes down when
    /// the last one is dropped, whichever thread drops it.
    fn new(dl: &Arc<DownloadShared>, slot: u32, generation: u32, url: Option<Arc<str>>) -> Job {
        if dl.tasks.fetch_add(1, Ordering::Relaxed) == 0
            && !dl.counted.swap(true, Ordering::Relaxed)
        {
            dl.active.fetch_add(1, Ordering::Relaxed);
        }
        Job {
            dl: Arc::clone(dl),
            slot,
            generation,
            crashes: 0,
            url,
        }
    }
}

enum Command {
    Submit(Vec<Job>),
    Close(u64),
    Shutdown,
}

struct Inner {
    cmd: Sender<Command>,
    wake: Mutex<UnixStream>,
    thread: Mutex<Option<JoinHandle<()>>>,
    pids: Arc<Mutex<Vec<i32>>>,
    counters: Arc<Counters>,
    workers: usize,
    next_download: AtomicU64,
    /// Downloads (and uploads) with a task queued or on a worker: how
    /// many share the workers now (see [`WorkerPool::share`]). Kept by
    /// the tasks themselves ([`Job::new`] and `Job`'s drop).
    active_downloads: Arc<AtomicUsize>,
    /// Segments of dropped `read_all` buffers, for the next ones.
    segments: Arc<SegmentCache>,
}

/// A set of forked worker processes, shared by any number of readers.
///
/// Cloning is cheap (the clones share the processes). The processes are
/// killed and reaped when the last clone and every reader using it are
/// dropped.
///
/// ```
/// use shmfetch::WorkerPool;
/// let pool = WorkerPool::new(2).unwrap();
/// assert_eq!(pool.worker_pids().len(), 2);
/// assert!(!pool.worker_pids().contains(&(std::process::id() as i32)));
/// ```
#[derive(Clone)]
pub struct WorkerPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("workers", &self.inner.workers)
            .field("pids", &self.worker_pids())
            .finish()
    }
}

impl WorkerPool {
    /// Forks `workers` processes with default settings.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for 0 or more than [`MAX_WORKERS`];
    /// [`Error::Pool`] when the processes cannot be started.
    pub fn new(workers: usize) -> Result<WorkerPool> {
        WorkerPool::with_config(PoolConfig {
            workers,
            ..PoolConfig::default()
        })
    }

    /// Forks the processes described by `cfg`.
    ///
    /// Also removes segments left in `/dev/shm` by dead processes.
    ///
    /// # Errors
    /// As [`WorkerPool::new`].
    pub fn with_config(cfg: PoolConfig) -> Result<WorkerPool> {
        if cfg.workers == 0 || cfg.workers > MAX_WORKERS {
            return Err(Error::InvalidConfig(format!(
                "workers must be between 1 and {MAX_WORKERS}, got {}",
                cfg.workers
            )));
        }
        let segments = Arc::new(SegmentCache::new(cfg.recycle_bytes));
        let removed = crate::shm::remove_orphans(std::path::Path::new(crate::shm::DEFAULT_SHM_DIR));
        if !removed.is_empty() {
            tracing::warn!(count = removed.len(), "removed segments of dead processes");
        }
        let (wake_rx, wake_tx) =
            UnixStream::pair().map_err(|e| Error::Pool(format!("creating wake-up socket: {e}")))?;
        wake_rx
            .set_nonblocking(true)
            .map_err(|e| Error::Pool(format!("wake-up socket: {e}")))?;
        wake_tx
            .set_nonblocking(true)
            .map_err(|e| Error::Pool(format!("wake-up socket: {e}")))?;
        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let pids = Arc::new(Mutex::new(Vec::new()));
        let pids2 = Arc::clone(&pids);
        let counters = Arc::new(Counters::default());
        let counters2 = Arc::clone(&counters);
        // The dispatcher thread forks every worker, so PR_SET_PDEATHSIG
        // (which fires when the *forking thread* ends) kills them exactly
        // when the pool goes away.
        let thread = std::thread::Builder::new()
            .name("shmfetch-pool".into())
            .spawn(move || {
                let mut d = Dispatcher::new(cfg, cmd_rx, wake_rx, pids2, counters2);
                match d.start() {
                    Ok(()) => {
                        let _ = ready_tx.send(Ok(()));
                        // Whatever ends the loop (even a panic), shutdown
                        // below fails every task still in flight, so no
                        // consumer waits for a slot nobody will fill.
                        let run = std::panic::AssertUnwindSafe(|| d.run());
                        if std::panic::catch_unwind(run).is_err() {
                            tracing::error!("worker pool dispatcher panicked; pool stops");
                        }
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
                d.shutdown();
            })
            .map_err(|e| Error::Pool(format!("starting dispatcher thread: {e}")))?;
        let workers = match ready_rx.recv() {
            Ok(Ok(())) => pids.lock().map(|p| p.len()).unwrap_or(0),
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(Error::Pool("dispatcher thread ended while starting".into()));
            }
        };
        Ok(WorkerPool {
            inner: Arc::new(Inner {
                cmd: cmd_tx,
                wake: Mutex::new(wake_tx),
                thread: Mutex::new(Some(thread)),
                pids,
                counters,
                workers,
                next_download: AtomicU64::new(1),
                active_downloads: Arc::new(AtomicUsize::new(0)),
                segments,
            }),
        })
    }

    /// Number of worker processes.
    pub fn workers(&self) -> usize {
        self.inner.workers
    }

    /// The pids of the live worker processes.
    pub fn worker_pids(&self) -> Vec<i32> {
        self.inner
            .pids
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    /// Counters since the pool started.
    pub fn stats(&self) -> PoolStats {
        let c = &self.inner.counters;
        PoolStats {
            ranges: c.ranges.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            resumed_bytes: c.resumed_bytes.load(Ordering::Relaxed),
            worker_deaths: c.worker_deaths.load(Ordering::Relaxed),
            recycled_segments: self.inner.segments.reused(),
            cut_ranges: c.cut_ranges.load(Ordering::Relaxed),
        }
    }

    /// The segments this pool keeps for its `read_all`s.
    pub(crate) fn segments(&self) -> &Arc<SegmentCache> {
        &self.inner.segments
    }

    /// Registers a download whose slots live in `table`. Unless `open`
    /// carries them, the addresses of the hosts the download contacts
    /// first are resolved here, in the caller's thread: workers never
    /// resolve names (see [`crate::worker::child`]).
    pub(crate) fn open_download(&self, open: Open, table: SlotTable) -> Result<DownloadHandle> {
        let id = self.inner.next_download.fetch_add(1, Ordering::Relaxed);
        let mut open = Open {
            download: id,
            ..open
        };
        if open.addrs.is_empty() {
            open.addrs = resolve_source(&open.source);
        }
        let name = open.source.display_name();
        // An upload's part URLs come with its tasks; only a download's
        // source URL is renewed.
        let renew = open
            .upload
            .is_none()
            .then(|| open.source.refresh_after())
            .flatten()
            .map(|every| Renewal {
                at: Instant::now() + every,
                every,
                open: open.clone(),
                pending: None,
            });
        let bytes = Arc::new(encode_open(&open)?);
        Ok(DownloadHandle {
            shared: Arc::new(DownloadShared {
                id,
                name,
                open: Mutex::new(OpenMessage {
                    bytes,
                    version: 0,
                    renew,
                }),
                table,
                doorbell: Doorbell::new()?,
                cancel: AtomicBool::new(false),
                deaths: AtomicU32::new(0),
                tasks: AtomicUsize::new(0),
                counted: AtomicBool::new(false),
                active: Arc::clone(&self.inner.active_downloads),
            }),
            pool: self.clone(),
        })
    }

    fn send(&self, cmd: Command) -> Result<()> {
        self.inner
            .cmd
            .send(cmd)
            .map_err(|_| Error::Pool("the worker pool has shut down".into()))?;
        self.inner.wake();
        Ok(())
    }

    /// Adds a finished slot's result to the pool's counters.
    pub(crate) fn count(&self, r: &SlotResult) {
        let c = &self.inner.counters;
        c.ranges.fetch_add(1, Ordering::Relaxed);
        c.retries
            .fetch_add(u64::from(r.attempts.saturating_sub(1)), Ordering::Relaxed);
        c.resumed_bytes.fetch_add(r.resumed, Ordering::Relaxed);
    }

    /// The workers one download may count on: all of them while it is the
    /// only one with work at the pool, else an even share (at least one)
    /// among the downloads with a range queued or being fetched, with
    /// `more` about to start counted in. A small object is split into this
    /// many ranges, and a range is cut only for a worker idle within this
    /// share: a worker the download does not use is most likely busy with
    /// another one. A download with nothing in flight (an iterator whose
    /// consumer holds its ring, an upload between parts) takes no share.
    pub(crate) fn share(&self, more: usize) -> usize {
        let active = self.inner.active_downloads.load(Ordering::Relaxed) + more;
        (self.inner.workers / active.max(1)).max(1)
    }

    /// Counts ranges cut in two for idle workers.
    pub(crate) fn count_cuts(&self, n: u64) {
        self.inner
            .counters
            .cut_ranges
            .fetch_add(n, Ordering::Relaxed);
    }
}

impl Inner {
    fn wake(&self) {
        if let Ok(mut w) = self.wake.lock() {
            let _ = w.write(&[1]); // a full buffer already means "wake up"
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.cmd.send(Command::Shutdown);
        self.wake();
        if let Ok(mut t) = self.thread.lock()
            && let Some(t) = t.take()
        {
            let _ = t.join();
        }
    }
}

/// Sends an idle worker the closes held back for it, as one message.
fn flush_closes(w: &mut Worker) {
    if w.closes.is_empty() {
        return;
    }
    // An error means the worker is gone: its EOF is handled by poll.
    let _ = send(
        w.sock.as_raw_fd(),
        &encode_close(&w.closes),
        MsgFlags::MSG_NOSIGNAL,
    );
    w.closes.clear();
}

/// Reaps `pid` (already sent SIGKILL), retrying when a signal interrupts:
/// the supervisor rule needs the process really gone.
fn reap(pid: Pid) -> nix::Result<WaitStatus> {
    loop {
        match waitpid(pid, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => return r,
        }
    }
}

/// Waits for a new worker's [`READY`] message.
fn wait_ready(sock: &OwnedFd) -> std::result::Result<(), String> {
    let deadline =
        std::time::Instant::now() + std::time::Duration::from_millis(READY_TIMEOUT_MS.into());
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => return Err(format!("no ready message in {READY_TIMEOUT_MS} ms")),
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("poll: {e}")),
        }
    }
    let mut buf = [0u8; 16];
    match recv(sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
        Ok(n) if &buf[..n] == READY => Ok(()),
        Ok(0) => Err("it exited during set-up".into()),
        Ok(_) => Err("unexpected first message".into()),
        Err(e) => Err(format!("recv: {e}")),
    }
}

struct Worker {
    pid: Pid,
    sock: OwnedFd,
    busy: Option<Job>,
    /// Downloads whose constants this worker has been sent, and which
    /// version of them.
    opened: HashMap<u64, u32>,
    /// Finished downloads to tell it about once it is idle (a busy worker
    /// does not read its socket; sending to it could fill it and block).
    closes: Vec<u64>,
}

struct Dispatcher {
    cfg: PoolConfig,
    cmd: Receiver<Command>,
    wake: UnixStream,
    pids: Arc<Mutex<Vec<i32>>>,
    counters: Arc<Counters>,
    workers: Vec<Worker>,
    queue: VecDeque<Job>,
    /// The workers' HTTP configuration and TLS connector, built before
    /// the first fork.
    http: Option<WorkerHttp>,
    /// Receive buffer for worker messages, reused for every message.
    rx_buf: Vec<u8>,
}

impl Dispatcher {
    fn new(
        cfg: PoolConfig,
        cmd: Receiver<Command>,
        wake: UnixStream,
        pids: Arc<Mutex<Vec<i32>>>,
        counters: Arc<Counters>,
    ) -> Dispatcher {
        Dispatcher {
            cfg,
            cmd,
            wake,
            pids,
            counters,
            workers: Vec::new(),
            queue: VecDeque::new(),
            http: None,
            rx_buf: vec![0u8; MAX_MESSAGE],
        }
    }

    fn start(&mut self) -> Result<()> {
        // Everything the child needs that reads the environment or
        // initialises global state is done here, before any fork.
        self.http = Some(WorkerHttp::prepare(&self.cfg.http));
        for _ in 0..self.cfg.workers {
            let w = self.spawn()?;
            self.workers.push(w);
        }
        self.publish_pids();
        Ok(())
    }

    fn spawn(&self) -> Result<Worker> {
        let http = self
            .http
            .clone()
            .ok_or_else(|| Error::Pool("HTTP configuration not prepared".into()))?;
        let (parent_sock, child_sock) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| Error::Pool(format!("socketpair: {e}")))?;
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the child only runs `child::run`, which follows the
        // fork-safety rules documented in `worker::child` and never returns.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                drop(parent_sock);
                child::run(child_sock, http, parent)
            }
            Ok(ForkResult::Parent { child }) => {
                drop(child_sock);
                // Hand out no work before the worker has set itself up.
                if let Err(e) = wait_ready(&parent_sock) {
                    let _ = kill(child, Signal::SIGKILL);
                    let _ = reap(child);
                    return Err(Error::Pool(format!(
                        "worker {} did not start: {e}",
                        child.as_raw()
                    )));
                }
                tracing::debug!(pid = child.as_raw(), "worker started");
                Ok(Worker {
                    pid: child,
                    sock: parent_sock,
                    busy: None,
                    opened: HashMap::new(),
                    closes: Vec::new(),
                })
            }
            Err(e) => Err(Error::Pool(format!("fork: {e}"))),
        }
    }

    fn publish_pids(&self) {
        if let Ok(mut p) = self.pids.lock() {
            *p = self.workers.iter().map(|w| w.pid.as_raw()).collect();
        }
    }

    /// Takes commands until `Shutdown` (or every pool handle is gone).
    /// Returns whether it was asked to stop.
    fn take_commands(&mut self) -> bool {
        loop {
            match self.cmd.try_recv() {
                Ok(Command::Submit(jobs)) => self.queue.extend(jobs),
                Ok(Command::Close(id)) => self.close(id),
                Ok(Command::Shutdown) => return true,
                Err(crossbeam_channel::TryRecvError::Empty) => return false,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return true,
            }
        }
    }

    fn run(&mut self) {
        loop {
            if self.take_commands() {
                return;
            }
            self.dispatch();
            if self.workers.is_empty() {
                self.fail_queue("no worker process is left");
            }
            let mut ready = Vec::new();
            let woken;
            {
                let mut fds = vec![PollFd::new(self.wake.as_fd(), PollFlags::POLLIN)];
                for w in &self.workers {
                    fds.push(PollFd::new(w.sock.as_fd(), PollFlags::POLLIN));
                }
                // No timeout: commands ring the wake socket, workers'
                // messages and deaths make their sockets readable.
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "poll failed; worker pool stops");
                        return;
                    }
                }
                woken = fds[0].revents().is_some_and(|r| !r.is_empty());
                for (i, fd) in fds.iter().enumerate().skip(1) {
                    if fd.revents().is_some_and(|r| !r.is_empty()) {
                        ready.push(i - 1);
                    }
                }
            }
            if woken {
                let mut sink = [0u8; 256];
                while matches!(self.wake.read(&mut sink), Ok(n) if n > 0) {}
            }
            // Highest index first: replacing a dead worker swaps the last
            // one into its place.
            for i in ready.into_iter().rev() {
                self.on_readable(i);
            }
        }
    }

    /// Sends queued tasks to idle workers, each download's constants first.
    fn dispatch(&mut self) {
        let mut i = 0;
        while i < self.workers.len() && !self.queue.is_empty() {
            if self.workers[i].busy.is_some() {
                i += 1;
                continue;
            }
            let Some(job) = self.queue.pop_front() else {
                break;
            };
            if job.dl.cancel.load(Ordering::Relaxed) {
                continue;
            }
            let rec = TaskRecord {
                download: job.dl.id,
                slot: job.slot,
                generation: job.generation,
            };
            let task = match encode_task(&rec, job.url.as_deref()) {
                Ok(t) => t,
                Err(e) => {
                    job.dl.fail(job.slot, job.generation, &e);
                    continue;
                }
            };
            let w = &mut self.workers[i];
            let fd = w.sock.as_raw_fd();
            let mut sent = Ok(());
            let (open, version) = job.dl.open_message();
            if w.opened.get(&job.dl.id) != Some(&version) {
                sent = send_with_fd(fd, &open, Some(job.dl.doorbell.fd()));
                if sent.is_ok() {
                    w.opened.insert(job.dl.id, version);
                }
            }
            if sent.is_ok() {
                sent = send(fd, &task, MsgFlags::MSG_NOSIGNAL)
                    .map(|_| ())
                    .map_err(|e| Error::Pool(format!("sending a task: {e}")));
            }
            match sent {
                Ok(()) => {
                    tracing::trace!(
                        pid = w.pid.as_raw(),
                        slot = job.slot,
                        generation = job.generation,
                        "task sent"
                    );
                    w.busy = Some(job);
                    i += 1;
                }
                Err(_) => {
                    // The worker is gone: put the job back, replace it.
                    self.queue.push_front(job);
                    self.replace_dead(i);
                }
            }
        }
    }

    /// Drops a finished download's queued tasks and tells the workers that
    /// know it to forget it.
    fn close(&mut self, id: u64) {
        self.queue.retain(|j| j.dl.id != id);
        for w in &mut self.workers {
            if w.opened.remove(&id).is_some() {
                w.closes.push(id);
                if w.busy.is_none() {
                    flush_closes(w);
                }
            }
        }
    }

    fn on_readable(&mut self, i: usize) {
        if i >= self.workers.len() {
            return;
        }
        let fd = self.workers[i].sock.as_raw_fd();
        let received = recv(fd, &mut self.rx_buf, MsgFlags::MSG_DONTWAIT)
            .map(|n| (n > 0).then(|| decode_from_worker(&self.rx_buf[..n])));
        match received {
            Ok(None) => self.replace_dead(i),
            Ok(Some(Ok(FromWorker::Done))) => {
                self.workers[i].busy = None;
                flush_closes(&mut self.workers[i]);
            }
            Ok(Some(Ok(FromWorker::Failed(e)))) => {
                // The worker could not reach the slot; record it there.
                if let Some(job) = self.workers[i].busy.take() {
                    job.dl.fail(job.slot, job.generation, &e);
                }
            }
            Ok(Some(Ok(FromWorker::Lookup(lookup)))) => self.answer_lookup(i, lookup),
            // Alive and still on its task, sleeping in backoff: say so.
            Ok(Some(Ok(FromWorker::Retrying(n)))) => {
                if let Some(job) = &self.workers[i].busy {
                    let range = job
                        .dl
                        .table
                        .range(job.slot)
                        .map(|r| r.to_string())
                        .unwrap_or_default();
                    tracing::warn!(
                        target: "shmfetch",
                        object = %job.dl.name,
                        %range,
                        attempt = n.attempt,
                        delay_ms = n.delay_ms,
                        cause = %n.cause,
                        "range failed, retrying after a backoff"
                    );
                }
            }
            Ok(Some(Err(e))) => {
                tracing::warn!(pid = self.workers[i].pid.as_raw(), error = %e, "bad message from worker");
                self.replace_dead(i);
            }
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => self.replace_dead(i),
        }
    }

    /// Resolves a name for worker `i` (which never calls `getaddrinfo`
    /// itself) on a short-lived thread, so that a slow DNS server holds up
    /// only the worker that asked, not the dispatch of everyone's tasks.
    /// The answer goes straight to the worker's socket (a duplicate); a
    /// worker that died meanwhile just does not read it.
    fn answer_lookup(&self, i: usize, lookup: Lookup) {
        let w = &self.workers[i];
        let id = lookup.id;
        let spawned = w.sock.try_clone().and_then(|sock| {
            std::thread::Builder::new()
                .name("shmfetch-dns".into())
                .spawn(move || {
                    let answer = LookupAnswer {
                        id: lookup.id,
                        result: lookup_host(&lookup.host, lookup.port),
                    };
                    if let Ok(msg) = encode_answer(&answer) {
                        let _ = send(
                            sock.as_raw_fd(),
                            &msg,
                            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                        );
                    }
                })
                .map(drop)
        });
        if let Err(e) = spawned {
            let answer = LookupAnswer {
                id,
                result: Err(format!("cannot resolve names now: {e}")),
            };
            if let Ok(msg) = encode_answer(&answer) {
                let _ = send(w.sock.as_raw_fd(), &msg, MsgFlags::MSG_NOSIGNAL);
            }
        }
    }

    /// Reaps worker `i`, applies the supervisor rule to the task it held
    /// and forks a replacement.
    fn replace_dead(&mut self, i: usize) {
        let w = self.workers.swap_remove(i);
        let _ = kill(w.pid, Signal::SIGKILL);
        let detail = match reap(w.pid) {
            Ok(WaitStatus::Exited(_, code)) => format!("exited with status {code}"),
            Ok(WaitStatus::Signaled(_, sig, _)) => format!("killed by {sig}"),
            Ok(other) => format!("{other:?}"),
            Err(e) => format!("waitpid: {e}"),
        };
        tracing::warn!(pid = w.pid.as_raw(), %detail, "worker process died");
        self.counters.worker_deaths.fetch_add(1, Ordering::Relaxed);
        // The process is reaped: it can write nothing more. Its slot word
        // now says whether the range was delivered.
        if let Some(job) = w.busy {
            self.supervise(job, w.pid.as_raw(), &detail);
        }
        drop(w.sock);
        match self.spawn() {
            Ok(nw) => self.workers.push(nw),
            Err(e) => tracing::error!(error = %e, "could not replace a dead worker"),
        }
        self.publish_pids();
    }

    /// The supervisor rule: `Assigned(g)`/`Writing(g, _)` → re-run with a
    /// new generation (or fail past the crash budget); anything else → the
    /// task is done and never runs again.
    fn supervise(&mut self, mut job: Job, pid: i32, detail: &str) {
        let dl = Arc::clone(&job.dl);
        // One test of the rule, shared with the table and its model check.
        let in_flight = dl
            .table
            .word(job.slot)
            .is_some_and(|w| w.in_flight(job.generation));
        if !in_flight || dl.cancel.load(Ordering::Relaxed) {
            dl.doorbell.ring();
            return;
        }
        job.crashes += 1;
        let deaths = dl.deaths.fetch_add(1, Ordering::Relaxed) + 1;
        if job.crashes > self.cfg.max_crash_retries || deaths > self.cfg.max_deaths_per_download {
            let range = dl.table.range(job.slot);
            tracing::debug!(
                pid,
                slot = job.slot,
                "giving up on range after worker deaths"
            );
            dl.fail(
                job.slot,
                job.generation,
                &Error::WorkerCrashed {
                    pid,
                    detail: format!(
                        "{detail}; {} worker(s) died on this range, {deaths} in this download",
                        job.crashes
                    ),
                    range,
                },
            );
            return;
        }
        match dl.table.reclaim(job.slot, job.generation) {
            Some(generation) => {
                job.generation = generation;
                self.queue.push_front(job);
            }
            None => dl.doorbell.ring(),
        }
    }

    fn fail_queue(&mut self, why: &str) {
        for job in self.queue.drain(..) {
            job.dl
                .fail(job.slot, job.generation, &Error::Pool(why.to_string()));
        }
    }

    fn shutdown(&mut self) {
        while let Ok(cmd) = self.cmd.try_recv() {
            if let Command::Submit(jobs) = cmd {
                self.queue.extend(jobs);
            }
        }
        for w in self.workers.drain(..) {
            let _ = kill(w.pid, Signal::SIGKILL);
            let _ = reap(w.pid);
            drop(w.sock);
            if let Some(job) = w.busy {
                job.dl.fail(
                    job.slot,
                    job.generation,
                    &Error::Pool("the worker pool was shut down".into()),
                );
            }
        }
        self.fail_queue("the worker pool was shut down");
        self.publish_pids();
    }
}

#[cfg(test)]
mod job_tests {
    use super::*;
    use crate::range::ByteRange;
    use crate::shm::State;

    fn download() -> Arc<DownloadShared> {
        let table = SlotTable::create(std::path::Path::new("/dev/shm"), 2, 64, 0, 0).unwrap();
        Arc::new(DownloadShared {
            id: 1,
            name: "o".into(),
            open: Mutex::new(OpenMessage {
                bytes: Arc::new(Vec::new()),
                version: 0,
                renew: None,
            }),
            table,
            doorbell: Doorbell::new().unwrap(),
            cancel: AtomicBool::new(false),
            deaths: AtomicU32::new(0),
            tasks: AtomicUsize::new(0),
            counted: AtomicBool::new(false),
            active: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// A download counts as active at its pool from its first task to the
    /// drop of its last, whichever thread drops it; one with no task
    /// (an iterator whose ring is full, an upload between parts) does not.
    #[test]
    fn a_download_is_active_while_it_has_tasks() {
        let dl = download();
        let job = |slot| Job::new(&dl, slot, 1, None);
        assert_eq!(dl.active.load(Ordering::Relaxed), 0);
        let a = job(0);
        let b = job(1);
        assert_eq!(dl.active.load(Ordering::Relaxed), 1);
        assert_eq!(dl.tasks.load(Ordering::Relaxed), 2);
        drop(a);
        assert_eq!(dl.active.load(Ordering::Relaxed), 1);
        std::thread::spawn(move || drop(b)).join().unwrap();
        assert_eq!(dl.active.load(Ordering::Relaxed), 0);
        let c = job(0);
        assert_eq!(dl.active.load(Ordering::Relaxed), 1);
        drop(c);
        assert_eq!(dl.active.load(Ordering::Relaxed), 0);
        // Uncounted early (the consumer saw the last range in), then the
        // last task goes: out once, not twice.
        let d = job(0);
        dl.uncount();
        assert_eq!(dl.active.load(Ordering::Relaxed), 0);
        drop(d);
        assert_eq!(dl.active.load(Ordering::Relaxed), 0);
        let e = job(1);
        assert_eq!(dl.active.load(Ordering::Relaxed), 1);
        drop(e);
        assert_eq!(dl.active.load(Ordering::Relaxed), 0);
    }

    /// A task lost by the dispatcher (dropped while queued, e.g. when it
    /// unwinds) fails its slot and wakes the consumer instead of leaving it
    /// waiting; a finished task's drop changes nothing.
    #[test]
    fn a_dropped_task_in_flight_fails_its_slot_and_a_finished_one_does_not() {
        let dl = download();
        let r = ByteRange { start: 0, end: 64 };
        let g0 = dl.table.assign(0, r).unwrap();
        let g1 = dl.table.assign(1, r).unwrap();
        // Slot 1's task finished before its job is dropped.
        let claim = dl.table.claim(1, g1, 7).unwrap();
        assert!(dl.table.publish(claim, &Ok(64), 1, 0));
        let job = |slot, generation| Job::new(&dl, slot, generation, None);
        drop(job(0, g0));
        drop(job(1, g1));
        assert_eq!(dl.table.word(0).unwrap().state, State::Failed);
        assert!(matches!(dl.table.error(0), Error::Pool(m) if m.contains("stopped")));
        assert_eq!(dl.table.word(1).unwrap().state, State::Ready);
        assert!(dl.doorbell.drain(), "the consumer was woken");
    }
}
