//! SIGINT, SIGTERM and SIGHUP end a benchmark without leaving anything
//! behind: this process's segments and rings are unlinked, its workers die
//! with it (`PR_SET_PDEATHSIG`), and it exits 128 + signo.
//!
//! As in `shmfetch` (`bin/shmfetch/interrupt.rs`), the signals are blocked
//! before any thread exists and one ordinary thread waits for them with
//! `sigwait`; the bench has no part file, bar or upload to look after.

use nix::sys::signal::{SigSet, Signal};

/// Blocks the three signals in this thread (every later thread inherits
/// that) and starts the thread that handles them. Call first in `main`.
pub fn install() -> anyhow::Result<()> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()?;
    std::thread::Builder::new()
        .name("bench-signal".into())
        .spawn(move || {
            loop {
                if let Ok(sig) = set.wait() {
                    shmfetch::shm::remove_own_segments();
                    // SAFETY: _exit ends the process at once without
                    // running destructors or atexit handlers, which other
                    // threads may be in the middle of.
                    unsafe { libc::_exit(128 + sig as i32) }
                }
            }
        })?;
    Ok(())
}
