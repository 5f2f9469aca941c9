//! The signal thread both binaries use: SIGINT, SIGTERM and SIGHUP are
//! blocked before any other thread exists (so every thread inherits the
//! blocked set) and one ordinary thread, not a signal handler, waits for
//! them with `sigwait` and runs the binary's cleanup, which ends the
//! process.

use nix::sys::signal::{SigSet, Signal};

/// Blocks the three signals in this thread and starts the thread that
/// passes each one to `on_signal`. Call first thing in `main`.
pub fn install(on_signal: fn(Signal) -> !) -> anyhow::Result<()> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()?;
    std::thread::Builder::new()
        .name("shmfetch-signal".into())
        .spawn(move || {
            loop {
                if let Ok(sig) = set.wait() {
                    on_signal(sig);
                }
            }
        })?;
    Ok(())
}
