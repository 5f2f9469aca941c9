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

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{MsgFlags, recv, send};

use crate::error::{Error, Result};
use crate::shm::{Mapping, SlotEvents, SlotState, open_for_write};
use crate::source::retry::{FetchStats, fetch_range};
use crate::source::sink::{FileSink, RangeSink, SliceSink};
use crate::source::{HttpClient, ObjectSource, SourceSpec};
use crate::worker::protocol::{MAX_MESSAGE, Outcome, READY, Task, decode, encode};

/// The fd number the worker's socket is moved to.
const SOCKET_FD: i32 = 3;

/// How often an idle worker checks whether its cached ring was unlinked.
const IDLE_CHECK_MS: u16 = 100;

/// Sources kept open per worker (their connections are reused).
const SOURCE_CACHE: usize = 8;

/// Runs the worker: never returns.
pub(crate) fn run(sock: OwnedFd, http: ureq::config::Config, parent: libc::pid_t) -> ! {
    let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        setup(sock, parent).map(|sock| serve(sock, http))
    })) {
        Ok(Ok(())) => 0,
        Ok(Err(())) => 2,
        Err(_) => 101,
    };
    // SAFETY: _exit is async-signal-safe and ends the process without
    // running the parent's destructors or atexit handlers.
    unsafe { libc::_exit(code) }
}

fn setup(sock: OwnedFd, parent: libc::pid_t) -> std::result::Result<OwnedFd, ()> {
    // SAFETY: plain syscalls on our own process, with valid arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        if libc::getppid() != parent {
            libc::_exit(0); // the coordinator is already gone
        }
        libc::prctl(libc::PR_SET_NAME, c"shmfetch-wrk".as_ptr(), 0, 0, 0);
        // Default signal handling and no blocked signals, whatever the
        // forking thread had; SIGPIPE ignored so a closed socket is an error.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        libc::signal(libc::SIGINT, libc::SIG_IGN); // the coordinator decides
    }
    log::set_max_level(log::LevelFilter::Off);
    let raw = sock.as_raw_fd();
    let sock = if raw != SOCKET_FD {
        // SAFETY: dup2 onto fd 3; whatever was there is replaced (and would
        // be closed below anyway). The OwnedFd we build owns fd 3 only.
        let r = unsafe { libc::dup2(raw, SOCKET_FD) };
        if r != SOCKET_FD {
            return Err(());
        }
        drop(sock);
        // SAFETY: fd 3 is open (dup2 succeeded) and owned by nothing else.
        unsafe { OwnedFd::from_raw_fd(SOCKET_FD) }
    } else {
        sock
    };
    // SAFETY: closes descriptors this process inherited; none of them is
    // used again by the child (it never returns into the caller's code).
    let r = unsafe { libc::syscall(libc::SYS_close_range, SOCKET_FD + 1, u32::MAX, 0) };
    if r != 0 {
        for fd in SOCKET_FD + 1..4096 {
            // SAFETY: as above, one descriptor at a time.
            unsafe { libc::close(fd) };
        }
    }
    Ok(sock)
}

fn serve(sock: OwnedFd, http: ureq::config::Config) {
    let client = HttpClient::from_config(http); // built after the fork
    if send(sock.as_raw_fd(), READY, MsgFlags::MSG_NOSIGNAL).is_err() {
        return;
    }
    let mut sources: Vec<(SourceSpec, Box<dyn ObjectSource>)> = Vec::new();
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut rings = RingCache::default();
    let mut scratch = Vec::new();
    loop {
        // While idle, let go of a ring whose owner is done with it.
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(IDLE_CHECK_MS)) {
            Ok(0) => {
                rings.drop_if_unlinked();
                continue;
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
        let n = match recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(0) => return, // coordinator closed the socket
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        };
        let task: Task = match decode(&buf[..n]) {
            Ok(t) => t,
            Err(_) => return,
        };
        let (result, stats) = execute(&task, &client, &mut sources, &mut rings, &mut scratch);
        let out = Outcome {
            id: task.id,
            result,
            attempts: stats.attempts,
            resumed_bytes: stats.resumed_bytes,
        };
        let Ok(msg) = encode(&out) else { return };
        if send(sock.as_raw_fd(), &msg, MsgFlags::MSG_NOSIGNAL).is_err() {
            return;
        }
    }
}

fn source_for<'a>(
    spec: &SourceSpec,
    client: &HttpClient,
    cache: &'a mut Vec<(SourceSpec, Box<dyn ObjectSource>)>,
) -> Result<&'a dyn ObjectSource> {
    let idx = match cache.iter().position(|(s, _)| s == spec) {
        Some(i) => i,
        None => {
            let src = spec.open(client)?;
            if cache.len() >= SOURCE_CACHE {
                cache.remove(0);
            }
            cache.push((spec.clone(), src));
            cache.len() - 1
        }
    };
    Ok(cache[idx].1.as_ref())
}

/// The ring segment a worker keeps mapped between tasks, so refilling a
/// slot takes no page faults. Dropped when a task names another segment,
/// or while idle once the owner has unlinked it, so no memory lingers.
#[derive(Default)]
struct RingCache {
    current: Option<(String, Mapping)>,
}

impl RingCache {
    fn get(&mut self, task: &Task) -> Result<&mut Mapping> {
        let fresh = match &self.current {
            Some((name, m)) => name != &task.segment || m.is_unlinked(),
            None => true,
        };
        if fresh {
            self.current = None; // unmap the old ring first
            let m = Mapping::open_whole(&task.shm_dir, &task.segment)?;
            self.current = Some((task.segment.clone(), m));
        }
        match &mut self.current {
            Some((_, m)) => Ok(m),
            None => Err(Error::Pool("ring mapping missing".into())),
        }
    }

    fn drop_if_unlinked(&mut self) {
        if self.current.as_ref().is_some_and(|(_, m)| m.is_unlinked()) {
            self.current = None;
        }
    }
}

fn execute(
    task: &Task,
    client: &HttpClient,
    cache: &mut Vec<(SourceSpec, Box<dyn ObjectSource>)>,
    rings: &mut RingCache,
    scratch: &mut Vec<u8>,
) -> (std::result::Result<u64, Error>, FetchStats) {
    let len = task.range.len() as usize;
    let src = match source_for(&task.source, client, cache) {
        Ok(s) => s,
        Err(e) => return (Err(e), FetchStats::default()),
    };
    let fetch = |sink: &mut dyn RangeSink| {
        fetch_range(
            src,
            task.range,
            sink,
            &task.expected,
            &task.retry,
            &mut std::thread::sleep,
        )
    };
    let (result, stats) = match task.event_offset {
        // read_all: write the segment's file with pwrite (no mapping, no
        // page faults, no zeroing of pages about to be overwritten).
        None => match open_for_write(&task.shm_dir, &task.segment, task.seg_offset, len as u64) {
            Err(e) => (Err(e), FetchStats::default()),
            Ok(fd) => fetch(&mut FileSink::new(
                fd.as_fd(),
                task.seg_offset,
                len,
                scratch,
                &task.shm_dir,
            )),
        },
        // A ring slot: straight into the cached ring mapping, then the
        // slot's ready event.
        Some(ev) => {
            let map = match rings.get(task) {
                Ok(m) => m,
                Err(e) => return (Err(e), FetchStats::default()),
            };
            // SAFETY: the word lies inside `map`, which outlives `events`
            // (both live until the end of this arm); the ring layout aligns
            // event words to 64 bytes.
            let events = map.ptr_at(ev).map(|p| unsafe { SlotEvents::new(p, 1) });
            let r = match map.window_mut(task.seg_offset, len) {
                None => (
                    Err(Error::Pool(format!(
                        "range {} outside segment {}",
                        task.range, task.segment
                    ))),
                    FetchStats::default(),
                ),
                Some(window) => fetch(&mut SliceSink::new(window)),
            };
            if let Some(ev) = events {
                ev.set(
                    0,
                    if r.0.is_ok() {
                        SlotState::Ready
                    } else {
                        SlotState::Failed
                    },
                );
            }
            r
        }
    };
    (result.map(|()| len as u64), stats)
}
