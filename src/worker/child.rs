//! The worker process.
//!
//! # Fork safety
//!
//! The rule: **a worker touches no lock that another thread of the parent
//! may hold.** Workers are forked by the pool's dispatcher thread while
//! other threads of the process (the test harness, the caller's own) run
//! on; after `fork` only the forking thread exists in the child, so a lock
//! another thread held at that instant stays locked forever, and the first
//! worker to take it hangs. Everything a worker needs that would take such
//! a lock — reading the environment, resolving a host name (`getaddrinfo`
//! takes resolver and NSS locks), building the TLS client configuration,
//! logging — is therefore done by the coordinator, before the fork or on
//! the worker's behalf, and handed over as the forked memory image or in
//! messages. In particular:
//!
//! 1. it never reads the environment (std's env lock): the HTTP client's
//!    configuration including proxy settings, the sources and timeouts
//!    were prepared in the parent;
//! 2. it never resolves a name: IP literals are parsed; the hosts a
//!    download contacts first (the URL's, the AIStore gateway) arrive
//!    resolved in its `Open` message; any other name (a target named in a
//!    redirect, a proxy) it asks its coordinator for (`R`, answered by `A`
//!    from a thread of the parent). A process-global flag set first thing
//!    after the fork makes any client without that link fail a lookup
//!    instead of calling `getaddrinfo`;
//! 3. its TLS client configuration (root store, crypto provider, and the
//!    RNG and CPU-feature state a handshake initialises once per process)
//!    was built in the parent (`WorkerHttp::prepare`), not lazily at its
//!    first HTTPS connection;
//! 4. it never prints and never emits `tracing`/`log` events (stdio locks,
//!    subscriber locks, the callsite registry): it turns the `log` crate off
//!    with an atomic store and reports everything through its socket;
//! 5. it never unwinds into the caller's code: the loop runs under
//!    `catch_unwind` and the process ends with `_exit`, so no destructor or
//!    atexit handler of the parent's state runs;
//! 6. it relies on one lock being safe: glibc's `malloc`, which glibc's
//!    `fork` takes before forking and re-initialises in the child (locks
//!    the worker creates itself after the fork are its own);
//! 7. it closes every inherited descriptor except its socket and stdio
//!    (`close_range`), so other pools' sockets do not stay open in it (their
//!    coordinators would otherwise miss the EOF that signals a dead worker);
//! 8. it asks the kernel to kill it when the dispatcher thread ends
//!    (`PR_SET_PDEATHSIG`), then checks the parent did not die before that.
//!
//! The stress tests in `tests/it/fork_stress.rs` create and use many pools
//! from many threads at once, with other threads resolving names,
//! allocating, logging and setting up HTTP clients meanwhile, and download
//! from servers addressed by name.
//!
//! # The task loop
//!
//! Receive a message. `Open`: remember the download's constants and the
//! addresses that came with it, map its slot table, keep its doorbell.
//! `Task (download, slot, generation)`: claim the slot by compare-and-swap
//! (`Assigned(generation)` → `Writing(generation, pid)`; a lost claim
//! writes nothing), fetch the range the slot names straight into the
//! ring slot or (lanes) the data segment with `pwrite`, publish `Ready` or
//! `Failed` in the slot word, ring the doorbell, tell the pool `D`one.
//! `Close`: forget the download (unmap, close). A stray `A`nswer (to a
//! lookup that gave up waiting) is dropped. While a task waits for the
//! answer to a name lookup, whatever else arrives is kept and handled,
//! in order, before the next message is read. Nothing is polled on a
//! timer.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{MsgFlags, send};

use crate::error::{Error, Result};
use crate::shm::{Limiter, Mapping, Received, SlotTable, open_for_write, recv_with_fds, ring_fd};
use crate::source::http::{NameSource, ResolvedHost, WorkerHttp, forbid_name_lookups};
use crate::source::retry::{Backoff, FetchStats, fetch_range};
use crate::source::sink::{FileSink, RangeSink, SliceSink};
use crate::source::{HttpClient, ObjectSource};
use crate::worker::protocol::{
    DONE, Lookup, MAX_MESSAGE, Open, READY, RetryNotice, TaskRecord, ToWorker, decode_to_worker,
    encode_failure, encode_lookup, encode_retry,
};

/// Downloads a worker keeps open at once; the pool closes finished ones,
/// this only bounds what a misbehaving coordinator could make it hold.
const MAX_OPEN: usize = 4096;

/// How long a worker uses an address it was given before asking its
/// coordinator again (names may move; a long stream outlives many DNS
/// TTLs).
const NAME_TTL: Duration = Duration::from_secs(60);

/// Runs the worker: never returns.
pub(crate) fn run(sock: OwnedFd, http: WorkerHttp, parent: libc::pid_t) -> ! {
    // First of all: no `getaddrinfo` in this process, ever.
    forbid_name_lookups();
    let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        setup(&sock, parent).map(|()| serve(sock, http))
    })) {
        Ok(Ok(())) => 0,
        Ok(Err(())) => 2,
        Err(_) => 101,
    };
    // SAFETY: _exit is async-signal-safe and ends the process without
    // running the parent's destructors or atexit handlers.
    unsafe { libc::_exit(code) }
}

fn setup(sock: &OwnedFd, parent: libc::pid_t) -> std::result::Result<(), ()> {
    use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|_| ())?;
    if nix::unistd::getppid().as_raw() != parent {
        return Err(()); // the coordinator is already gone
    }
    let _ = nix::sys::prctl::set_name(c"shmfetch-wrk");
    // No blocked signals, whatever the forking thread had.
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None).map_err(|_| ())?;
    // SAFETY: setting dispositions to SIG_IGN/SIG_DFL installs no handler
    // code; nix has no safe wrapper for it. SIGPIPE ignored so a closed
    // socket is an error; SIGINT ignored: the coordinator decides.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    log::set_max_level(log::LevelFilter::Off);
    // Close every inherited descriptor but stdio and our socket.
    let keep = sock.as_raw_fd() as u32;
    for (lo, hi) in [(3, keep.saturating_sub(1)), (keep + 1, u32::MAX)] {
        if lo > hi {
            continue;
        }
        // SAFETY: closes descriptors this process inherited; none of them
        // is used again by the child (it never returns into the caller's
        // code). close_range has no nix wrapper.
        let r = unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0) };
        if r != 0 {
            for fd in lo..=hi.min(65_535) {
                // SAFETY: as above, one descriptor at a time.
                unsafe { libc::close(fd as i32) };
            }
        }
    }
    Ok(())
}

/// What a worker holds for one open download.
struct Download {
    open: Open,
    table: SlotTable,
    doorbell: OwnedFd,
    /// The data segment of a lane table (opened per range, see
    /// `fetch_claimed`).
    data: Option<String>,
    source: Option<Box<dyn ObjectSource>>,
}

fn serve(sock: OwnedFd, http: WorkerHttp) {
    let Ok(names) = WorkerNames::new(&sock) else {
        return;
    };
    let names = Arc::new(names);
    // Built after the fork, from what the parent prepared.
    let client: HttpClient = http.client(Arc::clone(&names) as Arc<dyn NameSource>);
    if send(sock.as_raw_fd(), READY, MsgFlags::MSG_NOSIGNAL).is_err() {
        return;
    }
    let pid = std::process::id();
    let mut downloads: HashMap<u64, Download> = HashMap::new();
    // Why a download could not be opened, reported with each of its tasks.
    let mut unopened: HashMap<u64, Error> = HashMap::new();
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut scratch = Vec::new();
    loop {
        // Messages that came while a name lookup waited for its answer
        // go first, in order.
        let (n, mut fds) = match names.take_deferred() {
            Some((bytes, fds)) => {
                buf[..bytes.len()].copy_from_slice(&bytes);
                (bytes.len(), fds)
            }
            None => match recv_with_fds(sock.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(Some(m)) => m,
                Ok(None) => return, // coordinator closed the socket
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            },
        };
        let Ok(msg) = decode_to_worker(&buf[..n]) else {
            return; // a coordinator that speaks nonsense is not ours
        };
        match msg {
            ToWorker::Open(open) => {
                let Some(doorbell) = fds.pop() else { return };
                // A renewed `O` of an open download (a fresh presigned URL):
                // only its source changes; the backend is rebuilt at the
                // next task.
                if let Some(dl) = downloads.get_mut(&open.download) {
                    dl.open.source = open.source;
                    dl.source = None;
                    continue;
                }
                if downloads.len() + unopened.len() >= MAX_OPEN {
                    return;
                }
                names.learn(&open.addrs);
                // Mapping can fail (the owner already gave up): the tasks of
                // this download then report why, one by one.
                let id = open.download;
                match open_download(*open, doorbell) {
                    Ok(dl) => {
                        downloads.insert(id, dl);
                    }
                    Err(e) => {
                        unopened.insert(id, e);
                    }
                }
            }
            ToWorker::Close(ids) => {
                for id in ids {
                    downloads.remove(&id);
                    unopened.remove(&id);
                }
            }
            // The answer to a lookup that gave up waiting for it.
            ToWorker::Answer(_) => {}
            ToWorker::Task(task, url) => {
                let reply = match downloads.get_mut(&task.download) {
                    Some(dl) if dl.open.upload.is_some() => {
                        run_part(dl, task, url.as_deref(), pid, &client, sock.as_raw_fd());
                        DONE.to_vec()
                    }
                    Some(dl) => {
                        run_task(dl, task, pid, &client, &mut scratch, sock.as_raw_fd());
                        DONE.to_vec()
                    }
                    None => encode_failure(&unopened.get(&task.download).cloned().unwrap_or_else(
                        || {
                            Error::Pool(format!(
                                "worker {pid} was sent a task of download {} it does not know",
                                task.download
                            ))
                        },
                    )),
                };
                if send(sock.as_raw_fd(), &reply, MsgFlags::MSG_NOSIGNAL).is_err() {
                    return;
                }
                #[cfg(feature = "test-support")]
                if let Some(dl) = downloads.get(&task.download) {
                    maybe_die(dl, crate::worker::protocol::KillPoint::AfterReport);
                }
            }
        }
    }
}

/// The worker's names: the addresses its coordinator handed over (with
/// each download, and in answer to lookups), and the link to ask for
/// more. Used from the worker's one thread only (the mutex is for the
/// `Sync` that ureq's resolver must be; it is never contended).
#[derive(Debug)]
struct WorkerNames {
    /// The worker's socket (a duplicate: the task loop owns the original).
    sock: OwnedFd,
    state: Mutex<NameState>,
}

#[derive(Debug, Default)]
struct NameState {
    /// `(host, port)` → addresses, and when they were handed over.
    known: HashMap<(String, u16), (Vec<SocketAddr>, Instant)>,
    /// Coordinator messages received while waiting for an answer, with
    /// their descriptors, for the task loop.
    deferred: VecDeque<(Vec<u8>, Vec<OwnedFd>)>,
    /// Id of the last lookup sent.
    last_id: u64,
}

/// Names a worker remembers at most (expired ones go first, then all).
const MAX_KNOWN: usize = 256;

impl NameState {
    fn remember(&mut self, key: (String, u16), addrs: Vec<SocketAddr>, now: Instant) {
        if self.known.len() >= MAX_KNOWN {
            self.known
                .retain(|_, (_, at)| now.duration_since(*at) < NAME_TTL);
            if self.known.len() >= MAX_KNOWN {
                self.known.clear();
            }
        }
        self.known.insert(key, (addrs, now));
    }
}

impl WorkerNames {
    fn new(sock: &OwnedFd) -> io::Result<WorkerNames> {
        Ok(WorkerNames {
            sock: sock.try_clone()?,
            state: Mutex::new(NameState::default()),
        })
    }

    fn state(&self) -> MutexGuard<'_, NameState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers addresses the coordinator resolved.
    fn learn(&self, hosts: &[ResolvedHost]) {
        let now = Instant::now();
        let mut st = self.state();
        for h in hosts.iter().filter(|h| !h.addrs.is_empty()) {
            st.remember((h.host.to_ascii_lowercase(), h.port), h.addrs.clone(), now);
        }
    }

    /// The next message the task loop must handle before reading more.
    fn take_deferred(&self) -> Option<(Vec<u8>, Vec<OwnedFd>)> {
        self.state().deferred.pop_front()
    }

    /// Sends `R` and waits up to `wait` for the `A` with the same id;
    /// other messages are kept for the task loop, stale answers dropped.
    fn ask(&self, host: &str, port: u16, wait: Duration) -> io::Result<Vec<SocketAddr>> {
        let id = {
            let mut st = self.state();
            st.last_id += 1;
            st.last_id
        };
        let request = encode_lookup(&Lookup {
            id,
            host: host.to_string(),
            port,
        })
        .map_err(io::Error::other)?;
        send(self.sock.as_raw_fd(), &request, MsgFlags::MSG_NOSIGNAL)?;
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the coordinator did not resolve {host}:{port} within {wait:?}"),
                ));
            }
            let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(e.into()),
            }
            let (n, fds) =
                match recv_with_fds(self.sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                    Ok(Some(m)) => m,
                    Ok(None) => {
                        return Err(io::Error::new(
                            io::ErrorKind::BrokenPipe,
                            format!("the coordinator went away while resolving {host}:{port}"),
                        ));
                    }
                    Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                };
            if buf[..n].first() != Some(&b'A') {
                // A `C`lose (or anything else): after the task.
                self.state().deferred.push_back((buf[..n].to_vec(), fds));
                continue;
            }
            match decode_to_worker(&buf[..n]) {
                Ok(ToWorker::Answer(a)) if a.id == id => {
                    return match a.result {
                        Ok(addrs) if !addrs.is_empty() => {
                            self.state().remember(
                                (host.to_string(), port),
                                addrs.clone(),
                                Instant::now(),
                            );
                            Ok(addrs)
                        }
                        Ok(_) => Err(io::Error::new(
                            io::ErrorKind::NotFound,
                            format!("{host}:{port} has no address"),
                        )),
                        Err(msg) => Err(io::Error::new(io::ErrorKind::NotFound, msg)),
                    };
                }
                // An answer to an earlier lookup that timed out.
                _ => continue,
            }
        }
    }
}

impl NameSource for WorkerNames {
    fn lookup(&self, host: &str, port: u16, wait: Duration) -> io::Result<Vec<SocketAddr>> {
        let key = (host.to_ascii_lowercase(), port);
        if let Some((addrs, at)) = self.state().known.get(&key)
            && at.elapsed() < NAME_TTL
        {
            return Ok(addrs.clone());
        }
        self.ask(&key.0, port, wait)
    }
}

/// Maps a download's slot table and opens its data segment.
fn open_download(open: Open, doorbell: OwnedFd) -> Result<Download> {
    let table = SlotTable::open(&open.shm_dir, &open.table)?;
    // The data segment must hold every byte the table may name (checked
    // once here, and per range by the claim and the open for it).
    let data = match &open.data {
        Some(name) => {
            drop(open_for_write(&open.shm_dir, name, 0, table.data_len())?);
            Some(name.clone())
        }
        None => None,
    };
    Ok(Download {
        open,
        table,
        doorbell,
        data,
        source: None,
    })
}

/// Test hook: dies here if this download's kill point is `at` and a kill
/// token is left.
#[cfg(feature = "test-support")]
fn maybe_die(dl: &Download, at: crate::worker::protocol::KillPoint) {
    if dl.open.kill == Some(at) && dl.table.take_kill() {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// Claims the task's slot, fetches its range, publishes the result and
/// rings the doorbell. A lost claim does nothing.
fn run_task(
    dl: &mut Download,
    task: TaskRecord,
    pid: u32,
    client: &HttpClient,
    scratch: &mut Vec<u8>,
    sock: RawFd,
) {
    let Ok(mut claim) = dl.table.claim(task.slot, task.generation, pid) else {
        // Not ours (any more): a bad range was already published as
        // Failed by `claim`; otherwise there is nothing to do.
        ring_fd(dl.doorbell.as_fd());
        return;
    };
    if dl.table.has_pieces() {
        // A ring's consumer cuts only ranges being written: it wants to
        // know when one starts while a worker is idle.
        ring_fd(dl.doorbell.as_fd());
    }
    #[cfg(feature = "test-support")]
    maybe_die(dl, crate::worker::protocol::KillPoint::AfterClaim);
    let (result, stats) = fetch_claimed(dl, &mut claim, client, scratch, sock);
    dl.table
        .publish(claim, &result, stats.attempts, stats.resumed_bytes);
    ring_fd(dl.doorbell.as_fd());
    #[cfg(feature = "test-support")]
    maybe_die(dl, crate::worker::protocol::KillPoint::AfterPublish);
}

/// Claims an upload's task, sends the part in its slot, publishes the
/// result (the part's `ETag` as the slot's note) and rings the doorbell.
fn run_part(
    dl: &mut Download,
    task: TaskRecord,
    url: Option<&str>,
    pid: u32,
    client: &HttpClient,
    sock: RawFd,
) {
    let Ok(mut claim) = dl.table.claim(task.slot, task.generation, pid) else {
        ring_fd(dl.doorbell.as_fd());
        return;
    };
    #[cfg(feature = "test-support")]
    maybe_die(dl, crate::worker::protocol::KillPoint::AfterClaim);
    #[cfg(feature = "test-support")]
    let mut kill_mid = dl.open.kill == Some(crate::worker::protocol::KillPoint::MidWrite);
    let Some(target) = dl.open.upload.clone() else {
        return;
    };
    let range = claim.range();
    let key = claim.key();
    let table = &dl.table;
    let received = table.received(&claim);
    let (result, attempts) = {
        let bytes = table.slot_bytes(&mut claim);
        crate::worker::part::send_part(
            &crate::worker::part::Part {
                dest: &dl.open.source,
                target: &target,
                url,
                range,
                bytes,
            },
            client,
            &dl.open.retry,
            &mut |n| {
                received.set(n as u64);
                // Test hook: die with part of the part sent.
                #[cfg(feature = "test-support")]
                if kill_mid && n < bytes.len() && table.take_kill() {
                    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
                }
                #[cfg(feature = "test-support")]
                {
                    kill_mid = false;
                }
            },
            &mut |b: &Backoff<'_>| {
                report_retry(sock, b);
                std::thread::sleep(b.delay);
                table.holds(key)
            },
        )
    };
    match result {
        Ok(etag) => table.publish_note(claim, range.len(), attempts, &etag),
        Err(e) => table.publish(claim, &Err(e), attempts, 0),
    };
    ring_fd(dl.doorbell.as_fd());
    #[cfg(feature = "test-support")]
    maybe_die(dl, crate::worker::protocol::KillPoint::AfterPublish);
}

/// Fetches the claimed range; returns the bytes delivered: the range's
/// length, or less when the consumer cut it short meanwhile (the rest
/// went to another worker).
fn fetch_claimed(
    dl: &mut Download,
    claim: &mut crate::shm::Claim,
    client: &HttpClient,
    scratch: &mut Vec<u8>,
    sock: RawFd,
) -> (Result<u64>, FetchStats) {
    let range = claim.range();
    if dl.source.is_none() {
        match dl.open.source.open(client) {
            Ok(s) => dl.source = Some(s),
            Err(e) => return (Err(e), FetchStats::default()),
        }
    }
    let Some(src) = dl.source.as_deref() else {
        return (
            Err(Error::Pool("source missing".into())),
            FetchStats::default(),
        );
    };
    #[cfg(feature = "test-support")]
    let kill_mid = dl.open.kill == Some(crate::worker::protocol::KillPoint::MidWrite);
    #[cfg(not(feature = "test-support"))]
    let kill_mid = false;
    let table = &dl.table;
    let key = claim.key();
    let received = table.received(claim);
    let limiter = table.limiter(claim);
    let fetch = |sink: &mut dyn RangeSink| {
        let mut sink = SlotSink {
            inner: sink,
            armed: kill_mid,
            table,
            received,
            limiter,
        };
        let (r, stats) = fetch_range(
            src,
            range,
            &mut sink,
            &dl.open.expected,
            &dl.open.retry,
            &mut |b: &Backoff<'_>| {
                report_retry(sock, b);
                std::thread::sleep(b.delay);
                // A download its consumer dropped fails its slots in
                // flight: no point retrying for the rest of the budget.
                table.holds(key)
            },
        );
        (r.map(|()| sink.filled() as u64), stats)
    };
    if table.is_ring() {
        // Straight into the ring slot the claim makes ours.
        fetch(&mut SliceSink::new(table.slot_mut(claim)))
    } else {
        // A lane: pwrite into the data segment (no mapping, no page faults,
        // no zeroing of pages about to be overwritten). Opened for this
        // range only and closed before the range is published, so the
        // consumer always holds the segment's last reference: freeing its
        // pages happens when the user drops the buffer, never inside a
        // worker's next task (measured: -9% for back-to-back read_all of
        // 1 GiB when workers kept it open until the download closed).
        let Some(name) = &dl.data else {
            return (
                Err(Error::Pool("the download has no data segment".into())),
                FetchStats::default(),
            );
        };
        let offset = table.data_offset_of(claim);
        let len = range.len() as usize;
        if len > 0 && offset.saturating_add(range.len()) <= table.data_allocated() {
            // A recycled segment's pages exist: store straight into them
            // through a mapping of the range (one copy, where pwrite makes
            // two; nothing to zero, no room needed, so never a SIGBUS).
            // Unmapped when this returns, before the range is published.
            // A mapping that cannot be made (no address space, the map
            // count limit) leaves the pwrite below.
            if let Ok(mut map) = Mapping::open_window(&dl.open.shm_dir, name, offset, len)
                && let Some(bytes) = map.bytes_mut(offset, len)
            {
                return fetch(&mut SliceSink::new(bytes));
            }
        }
        let fd = match open_for_write(&dl.open.shm_dir, name, offset, range.len()) {
            Ok(fd) => fd,
            Err(e) => return (Err(e), FetchStats::default()),
        };
        fetch(&mut FileSink::new(
            fd.as_fd(),
            offset,
            range.len() as usize,
            scratch,
            &dl.open.shm_dir,
        ))
    }
}

/// Tells the coordinator that a range failed and is retried after a
/// backoff (it logs the warning: a worker never logs). Never blocks: a
/// notice that does not fit in the socket's buffer is dropped. The worker
/// stays busy with its task meanwhile; the dispatcher knows it is alive.
fn report_retry(sock: RawFd, b: &Backoff<'_>) {
    let notice = RetryNotice {
        attempt: b.attempt,
        delay_ms: u64::try_from(b.delay.as_millis()).unwrap_or(u64::MAX),
        cause: b.cause.to_string(),
    };
    if let Ok(msg) = encode_retry(&notice) {
        let _ = send(sock, &msg, MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT);
    }
}

/// The most a [`SlotSink`] reserves (and hands out) at a time: as much as
/// a lane's scratch buffer takes, four cut units.
const RESERVE_AHEAD: usize = crate::source::sink::FILE_SINK_SCRATCH;

/// The sink a claimed slot's bytes go through: before handing out space
/// for the next bytes, reserves it in the slot's limit word and hands out
/// only what the reservation allows (a range cut short stops at the cut:
/// see `shm/table/cut.rs`; a ring slot's space *is* the shared memory, so
/// the reservation must come before the source writes into it);
/// after, stores in the slot's received counter how many are in place
/// (progress, not a syscall). With the `MidWrite` test hook armed, dies
/// after the first bytes were written.
struct SlotSink<'a, 's> {
    inner: &'a mut dyn RangeSink,
    armed: bool,
    #[allow(dead_code)] // read only with the test-support hook
    table: &'s SlotTable,
    received: Received<'s>,
    limiter: Limiter<'s>,
}

impl RangeSink for SlotSink<'_, '_> {
    fn filled(&self) -> usize {
        self.inner.filled()
    }
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }
    fn next_buf(&mut self, max: usize) -> &mut [u8] {
        // Sources ask for the whole rest of the range; reserving that would
        // leave nothing to cut. One read rarely brings more than this.
        let max = max.min(RESERVE_AHEAD);
        let filled = self.inner.filled() as u64;
        let allowed = self.limiter.reserve(filled.saturating_add(max as u64));
        let take = allowed.saturating_sub(filled).min(max as u64) as usize;
        self.inner.next_buf(take)
    }
    fn cut_short(&self) -> bool {
        self.inner.remaining() > 0 && self.inner.filled() as u64 >= self.limiter.end()
    }
    fn commit(&mut self, n: usize) -> Result<()> {
        let filled = self.inner.filled() as u64;
        let allowed = self.limiter.reserve(filled + n as u64);
        let take = allowed.saturating_sub(filled) as usize;
        if take > 0 {
            self.inner.commit(take.min(n))?;
            self.received.set(self.inner.filled() as u64);
        }
        // Also when this write ended exactly at a cut: the source must not
        // wait for bytes nobody needs (the cut range is the slow one).
        if self.cut_short() {
            return Err(Error::Pool(format!(
                "range cut at {allowed} bytes: the rest went to another worker"
            )));
        }
        #[cfg(feature = "test-support")]
        if self.armed && self.table.take_kill() {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
        self.armed = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, recv, socketpair};

    use super::*;
    use crate::worker::protocol::{
        FromWorker, LookupAnswer, decode_from_worker, encode_answer, encode_close,
    };

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Reads the worker's next `R` from the coordinator's end.
    fn read_lookup(coord: &OwnedFd) -> Lookup {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let n = recv(coord.as_raw_fd(), &mut buf, MsgFlags::empty()).unwrap();
        match decode_from_worker(&buf[..n]).unwrap() {
            FromWorker::Lookup(l) => l,
            other => panic!("{other:?}"),
        }
    }

    fn answer(coord: &OwnedFd, id: u64, result: std::result::Result<Vec<SocketAddr>, String>) {
        let msg = encode_answer(&LookupAnswer { id, result }).unwrap();
        send(coord.as_raw_fd(), &msg, MsgFlags::MSG_NOSIGNAL).unwrap();
    }

    fn nothing_sent(coord: &OwnedFd) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            recv(coord.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT),
            Err(nix::errno::Errno::EAGAIN)
        )
    }

    /// Review of the range-cutting change: a write that ended exactly at
    /// a cut was taken without complaint, so the worker read on (and
    /// waited on the slow stream, or failed the range) for bytes that were
    /// another worker's.
    #[test]
    fn a_write_ending_exactly_at_a_cut_stops_the_source() {
        use crate::range::ByteRange;
        use crate::shm::CUT_UNIT;
        use crate::source::sink::SliceSink;

        let len = 4 * CUT_UNIT;
        let t = SlotTable::create(std::path::Path::new("/dev/shm"), 1, 0, 0, len).unwrap();
        let g = t.assign(0, ByteRange { start: 0, end: len }).unwrap();
        let claim = t.claim(0, g, 7).unwrap();
        let mut buf = vec![0u8; len as usize];
        let mut inner = SliceSink::new(&mut buf);
        let mut sink = SlotSink {
            inner: &mut inner,
            armed: false,
            table: &t,
            received: t.received(&claim),
            limiter: t.limiter(&claim),
        };
        sink.next_buf(CUT_UNIT as usize);
        sink.commit(CUT_UNIT as usize).unwrap();
        assert!(!sink.cut_short());
        let piece = t.cut(0, 2 * CUT_UNIT).expect("cut above the reservation");
        assert_eq!(
            piece,
            ByteRange {
                start: 2 * CUT_UNIT,
                end: len
            }
        );
        sink.next_buf(CUT_UNIT as usize);
        assert!(
            sink.commit(CUT_UNIT as usize).is_err(),
            "the source must stop"
        );
        assert!(sink.cut_short());
        assert_eq!(sink.filled() as u64, 2 * CUT_UNIT);
        // A write past the cut is cut too, and writes nothing more.
        sink.next_buf(CUT_UNIT as usize);
        assert!(sink.commit(CUT_UNIT as usize).is_err());
        assert_eq!(sink.filled() as u64, 2 * CUT_UNIT);
    }

    #[test]
    fn handed_over_addresses_need_no_round_trip() {
        let (coord, worker) = pair();
        let names = WorkerNames::new(&worker).unwrap();
        names.learn(&[ResolvedHost {
            host: "GW.example".into(),
            port: 51080,
            addrs: vec![addr("10.1.2.3:51080")],
        }]);
        let got = names
            .lookup("gw.example", 51080, Duration::from_secs(1))
            .unwrap();
        assert_eq!(got, vec![addr("10.1.2.3:51080")]);
        assert!(nothing_sent(&coord), "a known name was asked for");
    }

    #[test]
    fn unknown_name_is_asked_for_and_other_messages_wait() {
        let (coord, worker) = pair();
        let names = WorkerNames::new(&worker).unwrap();
        let peer = std::thread::spawn(move || {
            let l = read_lookup(&coord);
            assert_eq!((l.host.as_str(), l.port), ("target-1", 8081));
            // A close for some download, and a stale answer, before the
            // answer the worker waits for.
            send(
                coord.as_raw_fd(),
                &encode_close(&[7]),
                MsgFlags::MSG_NOSIGNAL,
            )
            .unwrap();
            answer(
                &coord,
                l.id.wrapping_sub(1),
                Ok(vec![addr("10.9.9.9:8081")]),
            );
            answer(&coord, l.id, Ok(vec![addr("10.0.0.7:8081")]));
            coord
        });
        let got = names
            .lookup("Target-1", 8081, Duration::from_secs(10))
            .unwrap();
        assert_eq!(got, vec![addr("10.0.0.7:8081")]);
        let coord = peer.join().unwrap();
        // The close is kept for the task loop, the stale answer dropped.
        let (bytes, fds) = names.take_deferred().expect("close kept");
        assert!(fds.is_empty());
        assert!(matches!(
            decode_to_worker(&bytes).unwrap(),
            ToWorker::Close(ids) if ids == [7]
        ));
        assert!(names.take_deferred().is_none());
        // Now known: no second request.
        let again = names
            .lookup("target-1", 8081, Duration::from_secs(1))
            .unwrap();
        assert_eq!(again, got);
        assert!(nothing_sent(&coord));
    }

    #[test]
    fn lookup_errors_time_out_and_coordinator_loss() {
        let (coord, worker) = pair();
        let names = WorkerNames::new(&worker).unwrap();
        // The coordinator says no.
        let peer = std::thread::spawn(move || {
            let l = read_lookup(&coord);
            answer(&coord, l.id, Err("no such host".into()));
            coord
        });
        let e = names
            .lookup("nowhere", 80, Duration::from_secs(10))
            .unwrap_err();
        assert!(e.to_string().contains("no such host"), "{e}");
        let coord = peer.join().unwrap();
        // No answer in time.
        let t0 = Instant::now();
        let e = names
            .lookup("slow", 80, Duration::from_millis(200))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        // Its late answer is dropped by the next lookup, which gets its own.
        let late = read_lookup(&coord);
        answer(&coord, late.id, Ok(vec![addr("10.0.0.1:80")]));
        let peer = std::thread::spawn(move || {
            let l = read_lookup(&coord);
            assert_eq!(l.host, "slow");
            answer(&coord, l.id, Ok(vec![addr("10.0.0.2:80")]));
            coord
        });
        assert_eq!(
            names.lookup("slow", 80, Duration::from_secs(10)).unwrap(),
            vec![addr("10.0.0.2:80")]
        );
        // The coordinator goes away while a lookup waits.
        drop(peer.join().unwrap());
        let e = names
            .lookup("other", 80, Duration::from_secs(10))
            .unwrap_err();
        assert_ne!(e.kind(), io::ErrorKind::TimedOut, "{e}");
    }
}
