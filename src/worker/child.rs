//! The worker process.
//!
//! # Fork safety
//!
//! Workers are forked by the pool's dispatcher thread while other threads of
//! the process (the test harness, the caller's own) may hold locks. After
//! `fork` only the forking thread exists in the child, so any lock another
//! thread held stays locked forever. The child therefore:
//!
//! 1. never reads the environment (std's env lock) — everything it needs
//!    (the HTTP client's configuration including proxy settings, the
//!    sources, timeouts) was prepared in the parent and arrives as the
//!    forked memory image or in task messages;
//! 2. never prints and never emits `tracing`/`log` events (stdio locks,
//!    subscriber locks, the callsite registry): it turns the `log` crate off
//!    with an atomic store and reports everything through its socket;
//! 3. never unwinds into the caller's code: the loop runs under
//!    `catch_unwind` and the process ends with `_exit`, so no destructor or
//!    atexit handler of the parent's state runs;
//! 4. relies on one lock being safe: glibc's `malloc`, which glibc's `fork`
//!    takes before forking and re-initialises in the child;
//! 5. closes every inherited descriptor except its socket and stdio
//!    (`close_range`), so other pools' sockets do not stay open in it (their
//!    coordinators would otherwise miss the EOF that signals a dead worker);
//! 6. asks the kernel to kill it when the dispatcher thread ends
//!    (`PR_SET_PDEATHSIG`), then checks the parent did not die before that.
//!
//! The stress test `fork_from_many_threads` creates and uses many pools from
//! many threads at once, with other threads allocating, logging and setting
//! up HTTP clients meanwhile.
//!
//! # The task loop
//!
//! Receive a message. `Open`: remember the download's constants, map its
//! slot table, keep its doorbell. `Task (download, slot, generation)`: claim the
//! slot by compare-and-swap (`Assigned(generation)` → `Writing(generation, pid)`; a lost
//! claim writes nothing), fetch the range the slot names straight into the
//! ring slot or (lanes) the data segment with `pwrite`, publish `Ready` or
//! `Failed` in the slot word, ring the doorbell, tell the pool `D`one.
//! `Close`: forget the download (unmap, close). Nothing is polled on a
//! timer.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::{MsgFlags, send};

use crate::error::{Error, Result};
use crate::shm::{SlotTable, open_for_write, recv_with_fds, ring_fd};
use crate::source::retry::{FetchStats, fetch_range};
use crate::source::sink::{FileSink, RangeSink, SliceSink};
use crate::source::{HttpClient, ObjectSource};
use crate::worker::protocol::{
    DONE, MAX_MESSAGE, Open, READY, TaskRecord, ToWorker, decode_to_worker, encode_failure,
};

/// Downloads a worker keeps open at once; the pool closes finished ones,
/// this only bounds what a misbehaving coordinator could make it hold.
const MAX_OPEN: usize = 4096;

/// Runs the worker: never returns.
pub(crate) fn run(sock: OwnedFd, http: ureq::config::Config, parent: libc::pid_t) -> ! {
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
            for fd in lo..hi.min(4096) {
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
    /// The data segment of a lane table, opened for `pwrite`.
    data: Option<OwnedFd>,
    source: Option<Box<dyn ObjectSource>>,
}

fn serve(sock: OwnedFd, http: ureq::config::Config) {
    let client = HttpClient::from_config(http); // built after the fork
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
        let (n, mut fds) = match recv_with_fds(sock.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(Some(m)) => m,
            Ok(None) => return, // coordinator closed the socket
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        };
        let Ok(msg) = decode_to_worker(&buf[..n]) else {
            return; // a coordinator that speaks nonsense is not ours
        };
        match msg {
            ToWorker::Open(open) => {
                let Some(doorbell) = fds.pop() else { return };
                if downloads.len() + unopened.len() >= MAX_OPEN {
                    return;
                }
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
            ToWorker::Close(id) => {
                downloads.remove(&id);
                unopened.remove(&id);
            }
            ToWorker::Task(task) => {
                let reply = match downloads.get_mut(&task.download) {
                    Some(dl) => {
                        run_task(dl, task, pid, &client, &mut scratch);
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

/// Maps a download's slot table and opens its data segment.
fn open_download(open: Open, doorbell: OwnedFd) -> Result<Download> {
    let table = SlotTable::open(&open.shm_dir, &open.table)?;
    // The data segment must hold every byte the table may name (checked
    // once here, and per range by the claim).
    let data = match &open.data {
        Some(name) => Some(open_for_write(&open.shm_dir, name, 0, table.data_len())?),
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
) {
    let Ok(mut claim) = dl.table.claim(task.slot, task.generation, pid) else {
        // Not ours (any more): a bad range was already published as
        // Failed by `claim`; otherwise there is nothing to do.
        ring_fd(dl.doorbell.as_fd());
        return;
    };
    #[cfg(feature = "test-support")]
    maybe_die(dl, crate::worker::protocol::KillPoint::AfterClaim);
    let range = claim.range();
    let (result, stats) = fetch_claimed(dl, &mut claim, client, scratch);
    let result = result.map(|()| range.len());
    dl.table
        .publish(claim, &result, stats.attempts, stats.resumed_bytes);
    ring_fd(dl.doorbell.as_fd());
    #[cfg(feature = "test-support")]
    maybe_die(dl, crate::worker::protocol::KillPoint::AfterPublish);
}

fn fetch_claimed(
    dl: &mut Download,
    claim: &mut crate::shm::Claim,
    client: &HttpClient,
    scratch: &mut Vec<u8>,
) -> (Result<()>, FetchStats) {
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
    let fetch = |sink: &mut dyn RangeSink| {
        let mut sink = KillSink {
            inner: sink,
            armed: kill_mid,
            table,
        };
        fetch_range(
            src,
            range,
            &mut sink,
            &dl.open.expected,
            &dl.open.retry,
            &mut std::thread::sleep,
        )
    };
    if table.is_ring() {
        // Straight into the ring slot the claim makes ours.
        fetch(&mut SliceSink::new(table.slot_mut(claim)))
    } else {
        // A lane: pwrite into the data segment (no mapping, no page faults,
        // no zeroing of pages about to be overwritten).
        let Some(fd) = &dl.data else {
            return (
                Err(Error::Pool(format!(
                    "data segment {:?} could not be opened",
                    dl.open.data
                ))),
                FetchStats::default(),
            );
        };
        let offset = table.data_offset_of(claim);
        fetch(&mut FileSink::new(
            fd.as_fd(),
            offset,
            range.len() as usize,
            scratch,
            &dl.open.shm_dir,
        ))
    }
}

/// Passes bytes through; with the `MidWrite` test hook armed, dies after
/// the first bytes were written.
struct KillSink<'a, 's> {
    inner: &'a mut dyn RangeSink,
    armed: bool,
    #[allow(dead_code)] // read only with the test-support hook
    table: &'s SlotTable,
}

impl RangeSink for KillSink<'_, '_> {
    fn filled(&self) -> usize {
        self.inner.filled()
    }
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }
    fn next_buf(&mut self, max: usize) -> &mut [u8] {
        self.inner.next_buf(max)
    }
    fn commit(&mut self, n: usize) -> Result<()> {
        self.inner.commit(n)?;
        #[cfg(feature = "test-support")]
        if self.armed && self.table.take_kill() {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
        self.armed = false;
        Ok(())
    }
}
