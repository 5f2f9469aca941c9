//! SIGINT, SIGTERM and SIGHUP: leave nothing behind, exit 128 + signo.
//!
//! [`install`] blocks the three signals in the main thread before any other
//! thread exists (so every thread inherits the blocked set) and starts one
//! thread that waits for them with `sigwait`. On a signal that thread, an
//! ordinary thread and not a signal handler, takes the process's exit lock
//! for good, clears the progress bar, unlinks this process's shared-memory
//! segments, removes the registered part file and `_exit`s: the workers die
//! with the process (`PR_SET_PDEATHSIG`). The main thread takes the same
//! lock to create or rename the part file and to print its final message and
//! exit, so a signal during the rename leaves either the complete output or
//! nothing, and an error caused by the cleanup is never printed.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use indicatif::ProgressBar;
use nix::sys::signal::Signal;

/// What the signal thread cleans up, behind the exit lock.
struct State {
    /// The hidden part file being written, if any.
    part: Option<PathBuf>,
    /// The progress bar on the terminal, if any.
    bar: Option<ProgressBar>,
    /// An upload in progress, aborted before exiting.
    upload: Option<shmfetch::store::AbortHandle>,
}

static STATE: Mutex<State> = Mutex::new(State {
    part: None,
    bar: None,
    upload: None,
});

fn lock() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(PoisonError::into_inner)
}

#[path = "../signals.rs"]
mod signals;

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread and starts the thread
/// that handles them. Call first thing in `main`, before any thread starts.
pub fn install() -> anyhow::Result<()> {
    signals::install(on_signal)
}

/// How long an interrupted upload's abort may take before we exit anyway.
const ABORT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Writes a line to stderr, ignoring errors (the signal path).
fn eprintln_quiet(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn on_signal(sig: Signal) -> ! {
    // Never released: the main thread can no longer create, rename or
    // print an error caused by what follows.
    let state = lock();
    if let Some(bar) = &state.bar {
        bar.finish_and_clear();
    }
    if let Some(up) = state.upload.clone() {
        // The temporary file or the multipart upload goes: nothing is left
        // at the destination for storage to keep (and bill). Not forever:
        // an unreachable store must not keep Ctrl-C from ending us.
        let (tx, rx) = std::sync::mpsc::channel();
        let _ = std::thread::Builder::new()
            .name("shmfetch-abort".into())
            .spawn(move || {
                let r = up.abort();
                let _ = tx.send(r);
            });
        match rx.recv_timeout(ABORT_DEADLINE) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln_quiet(&format!("shmfetch: could not abort the upload: {e}")),
            Err(_) => eprintln_quiet(&format!(
                "shmfetch: the upload could not be aborted within {} s; the bucket's lifecycle rule for incomplete multipart uploads will remove it",
                ABORT_DEADLINE.as_secs()
            )),
        }
    }
    shmfetch::shm::remove_own_segments();
    if let Some(part) = &state.part {
        let _ = std::fs::remove_file(part);
    }
    // SAFETY: _exit ends the process at once without running destructors
    // or atexit handlers, which other threads may be in the middle of (the
    // same use as a worker's exit in `src/worker/child.rs`).
    unsafe { libc::_exit(128 + sig as i32) }
}

/// Runs `create` (which creates the part file `part`) with `part`
/// registered for removal on a signal; unregisters it if `create` fails.
pub fn create_part<T, E>(part: &Path, create: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let mut s = lock();
    s.part = Some(part.to_path_buf());
    let r = create();
    if r.is_err() {
        s.part = None;
    }
    r
}

/// Runs `finish` (which renames the part file into place, or removes it)
/// and unregisters the part file if `finish` succeeds.
pub fn finish_part<T, E>(finish: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let mut s = lock();
    let r = finish();
    if r.is_ok() {
        s.part = None;
    }
    r
}

/// Registers a part file that code outside this module creates and renames
/// (`dcp export`'s writer), for the signal thread to remove (`None`: none).
/// Unlike [`create_part`], the lock is not held while the file is written.
pub fn watch_part(part: Option<std::path::PathBuf>) {
    lock().part = part;
}

/// Registers the upload the signal thread aborts (`None`: none).
pub fn watch_upload(up: Option<shmfetch::store::AbortHandle>) {
    lock().upload = up;
}

/// Registers the progress bar the signal thread clears (`None`: none).
pub fn set_bar(bar: Option<ProgressBar>) {
    lock().bar = bar;
}

/// The progress bar on the terminal, if any (log lines are written around
/// it: see `main::LogWriter`).
pub fn bar() -> Option<ProgressBar> {
    lock().bar.clone()
}

/// Runs `report` (which prints the outcome and returns the exit status) and
/// exits with that status, unless a signal is being handled: then the
/// signal's exit wins and `report` never runs.
pub fn exit(report: impl FnOnce() -> i32) -> ! {
    let _state = lock();
    let code = report();
    std::process::exit(code)
}
