//! The coordinator's side of the worker processes.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, recv, send, socketpair};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use crate::error::{Error, Result};
use crate::source::{HttpClient, HttpConfig};
use crate::worker::child;
use crate::worker::protocol::{
    MAX_MESSAGE, Outcome, READY, READY_TIMEOUT_MS, Task, decode, encode,
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
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            workers: DEFAULT_WORKERS,
            http: HttpConfig::default(),
            max_crash_retries: DEFAULT_MAX_CRASH_RETRIES,
            max_deaths_per_download: DEFAULT_MAX_DEATHS_PER_DOWNLOAD,
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
}

#[derive(Debug, Default)]
struct Counters {
    ranges: AtomicU64,
    retries: AtomicU64,
    resumed_bytes: AtomicU64,
    worker_deaths: AtomicU64,
}

/// Shared by the tasks of one download: cancellation, and the worker
/// deaths it has suffered.
#[derive(Debug, Default)]
pub(crate) struct JobGroup {
    /// Set when the download is abandoned: its queued tasks are dropped.
    pub cancel: AtomicBool,
    deaths: AtomicU32,
}

/// What the pool reports for each submitted task.
#[derive(Debug, Clone)]
pub(crate) struct Completion {
    pub id: u64,
    pub result: std::result::Result<u64, Error>,
    pub pid: i32,
}

struct Job {
    task: Task,
    reply: Sender<Completion>,
    group: Arc<JobGroup>,
    crashes: u32,
}

enum Command {
    Submit(Vec<Job>),
    Shutdown,
}

struct Inner {
    cmd: Sender<Command>,
    wake: Mutex<UnixStream>,
    thread: Mutex<Option<JoinHandle<()>>>,
    pids: Arc<Mutex<Vec<i32>>>,
    counters: Arc<Counters>,
    workers: usize,
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
                        d.run();
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
        }
    }

    /// Queues `tasks`; each one's [`Completion`] goes to `reply`. Tasks still
    /// queued when the group is cancelled are dropped without a reply.
    pub(crate) fn submit(
        &self,
        tasks: Vec<Task>,
        reply: &Sender<Completion>,
        group: &Arc<JobGroup>,
    ) -> Result<()> {
        if tasks.is_empty() {
            return Ok(());
        }
        let jobs = tasks
            .into_iter()
            .map(|task| Job {
                task,
                reply: reply.clone(),
                group: Arc::clone(group),
                crashes: 0,
            })
            .collect();
        self.inner
            .cmd
            .send(Command::Submit(jobs))
            .map_err(|_| Error::Pool("the worker pool has shut down".into()))?;
        self.inner.wake();
        Ok(())
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

/// Waits for a new worker's [`READY`] message.
fn wait_ready(sock: &OwnedFd) -> std::result::Result<(), String> {
    let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(READY_TIMEOUT_MS)) {
        Ok(0) => return Err(format!("no ready message in {READY_TIMEOUT_MS} ms")),
        Ok(_) => {}
        Err(e) => return Err(format!("poll: {e}")),
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
}

struct Dispatcher {
    cfg: PoolConfig,
    cmd: Receiver<Command>,
    wake: UnixStream,
    pids: Arc<Mutex<Vec<i32>>>,
    counters: Arc<Counters>,
    workers: Vec<Worker>,
    queue: VecDeque<Job>,
    http: Option<ureq::config::Config>,
    /// Receive buffer for worker messages, reused for every completion.
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
        self.http = Some(HttpClient::prepare(&self.cfg.http));
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
                    let _ = waitpid(child, None);
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

    fn run(&mut self) {
        loop {
            // New commands.
            loop {
                match self.cmd.try_recv() {
                    Ok(Command::Submit(jobs)) => self.queue.extend(jobs),
                    Ok(Command::Shutdown) => return,
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => return,
                }
            }
            self.dispatch();
            if self.workers.is_empty() {
                self.fail_queue("no worker process is left");
                // Wait for a command only (shutdown).
            }
            let mut ready = Vec::new();
            let woken;
            {
                let mut fds = vec![PollFd::new(self.wake.as_fd(), PollFlags::POLLIN)];
                for w in &self.workers {
                    fds.push(PollFd::new(w.sock.as_fd(), PollFlags::POLLIN));
                }
                match poll(&mut fds, PollTimeout::from(500u16)) {
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
            if job.group.cancel.load(Ordering::Relaxed) {
                continue;
            }
            let msg = match encode(&job.task) {
                Ok(m) => m,
                Err(e) => {
                    let _ = job.reply.send(Completion {
                        id: job.task.id,
                        result: Err(e),
                        pid: 0,
                    });
                    continue;
                }
            };
            match send(
                self.workers[i].sock.as_raw_fd(),
                &msg,
                MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(_) => {
                    tracing::trace!(pid = self.workers[i].pid.as_raw(), range = %job.task.range, "task sent");
                    self.workers[i].busy = Some(job);
                    i += 1;
                }
                Err(_) => {
                    // The worker is gone; its death is handled when poll
                    // reports it. Put the job back.
                    self.queue.push_front(job);
                    self.replace_dead(i);
                }
            }
        }
    }

    fn on_readable(&mut self, i: usize) {
        if i >= self.workers.len() {
            return;
        }
        // Decode while the reused buffer is borrowed; act on the result after.
        let fd = self.workers[i].sock.as_raw_fd();
        let received = recv(fd, &mut self.rx_buf, MsgFlags::MSG_DONTWAIT)
            .map(|n| (n > 0).then(|| decode::<Outcome>(&self.rx_buf[..n])));
        match received {
            Ok(None) => self.replace_dead(i),
            Ok(Some(decoded)) => {
                let outcome: Outcome = match decoded {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::warn!(pid = self.workers[i].pid.as_raw(), error = %e, "bad message from worker");
                        self.replace_dead(i);
                        return;
                    }
                };
                let pid = self.workers[i].pid.as_raw();
                if let Some(job) = self.workers[i].busy.take() {
                    let c = &self.counters;
                    c.ranges.fetch_add(1, Ordering::Relaxed);
                    c.retries
                        .fetch_add(outcome.attempts.saturating_sub(1) as u64, Ordering::Relaxed);
                    c.resumed_bytes
                        .fetch_add(outcome.resumed_bytes, Ordering::Relaxed);
                    if outcome.attempts > 1 {
                        tracing::info!(pid, attempts = outcome.attempts, range = %job.task.range, "range needed retries");
                    }
                    let _ = job.reply.send(Completion {
                        id: outcome.id,
                        result: outcome.result,
                        pid,
                    });
                }
            }
            Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => self.replace_dead(i),
        }
    }

    /// Reaps worker `i`, re-queues its task (or fails it after too many
    /// crashes) and forks a replacement.
    fn replace_dead(&mut self, i: usize) {
        let w = self.workers.swap_remove(i);
        let _ = kill(w.pid, Signal::SIGKILL);
        let detail = match waitpid(w.pid, None) {
            Ok(WaitStatus::Exited(_, code)) => format!("exited with status {code}"),
            Ok(WaitStatus::Signaled(_, sig, _)) => format!("killed by {sig}"),
            Ok(other) => format!("{other:?}"),
            Err(e) => format!("waitpid: {e}"),
        };
        tracing::warn!(pid = w.pid.as_raw(), %detail, "worker process died");
        self.counters.worker_deaths.fetch_add(1, Ordering::Relaxed);
        if let Some(mut job) = w.busy {
            job.crashes += 1;
            let deaths = job.group.deaths.fetch_add(1, Ordering::Relaxed) + 1;
            if job.crashes > self.cfg.max_crash_retries || deaths > self.cfg.max_deaths_per_download
            {
                tracing::error!(pid = w.pid.as_raw(), range = %job.task.range, "giving up on range after worker deaths");
                let _ = job.reply.send(Completion {
                    id: job.task.id,
                    result: Err(Error::WorkerCrashed {
                        pid: w.pid.as_raw(),
                        detail: format!(
                            "{detail}; {} worker(s) died on this range, {deaths} in this download",
                            job.crashes
                        ),
                        range: Some(job.task.range),
                    }),
                    pid: w.pid.as_raw(),
                });
            } else {
                self.queue.push_front(job);
            }
        }
        drop(w.sock);
        match self.spawn() {
            Ok(nw) => self.workers.push(nw),
            Err(e) => tracing::error!(error = %e, "could not replace a dead worker"),
        }
        self.publish_pids();
    }

    fn fail_queue(&mut self, why: &str) {
        for job in self.queue.drain(..) {
            let _ = job.reply.send(Completion {
                id: job.task.id,
                result: Err(Error::Pool(why.to_string())),
                pid: 0,
            });
        }
    }

    fn shutdown(&mut self) {
        for w in self.workers.drain(..) {
            let _ = kill(w.pid, Signal::SIGKILL);
            let _ = waitpid(w.pid, None);
            drop(w.sock);
            if let Some(job) = w.busy {
                let _ = job.reply.send(Completion {
                    id: job.task.id,
                    result: Err(Error::Pool("the worker pool was shut down".into())),
                    pid: w.pid.as_raw(),
                });
            }
        }
        self.fail_queue("the worker pool was shut down");
        self.publish_pids();
    }
}
