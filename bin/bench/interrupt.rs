//! SIGINT, SIGTERM and SIGHUP end a benchmark without leaving anything
//! behind: this process's segments and rings are unlinked, its workers die
//! with it (`PR_SET_PDEATHSIG`), and it exits 128 + signo. The signal
//! thread is `shmfetch`'s (`bin/signals.rs`); the bench has no part file,
//! bar or upload to look after.

use nix::sys::signal::Signal;

#[path = "../signals.rs"]
mod signals;

/// Starts the signal thread. Call first in `main`.
pub fn install() -> anyhow::Result<()> {
    signals::install(on_signal)
}

fn on_signal(sig: Signal) -> ! {
    shmfetch::shm::remove_own_segments();
    // SAFETY: _exit ends the process at once without running destructors
    // or atexit handlers, which other threads may be in the middle of.
    unsafe { libc::_exit(128 + sig as i32) }
}
