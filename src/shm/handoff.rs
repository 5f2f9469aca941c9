//! The slot hand-off between two real processes, for the criterion bench:
//! the consumer assigns a range to a one-slot ring; a forked helper claims
//! it (compare-and-swap), publishes `Ready` and rings the doorbell; the
//! consumer wakes from the doorbell, sees `Ready` and releases the slot —
//! the same table, words and eventfd the library's downloads use.

use std::os::fd::AsFd;

use crate::error::{Error, Result};
use crate::range::ByteRange;
use crate::shm::{Doorbell, SlotTable, State, ring_fd};

/// A consumer and a forked helper process sharing one slot.
#[derive(Debug)]
pub struct HandOff {
    table: SlotTable,
    doorbell: Doorbell,
    child: nix::unistd::Pid,
}

impl HandOff {
    /// Creates the one-slot ring in `/dev/shm` and forks the helper.
    ///
    /// # Errors
    /// When the ring or the process cannot be created.
    pub fn start() -> Result<HandOff> {
        let table = SlotTable::create(std::path::Path::new("/dev/shm"), 1, 64, 0, 0)?;
        let doorbell = Doorbell::new()?;
        // SAFETY: the child only spins on the shared slot word, writes the
        // eventfd and _exits (via `helper`); it takes no lock.
        match unsafe { nix::unistd::fork() } {
            Ok(nix::unistd::ForkResult::Child) => helper(&table, &doorbell),
            Ok(nix::unistd::ForkResult::Parent { child }) => Ok(HandOff {
                table,
                doorbell,
                child,
            }),
            Err(e) => Err(Error::Pool(format!("fork: {e}"))),
        }
    }

    /// One hand-off: assign → (helper claims, publishes Ready, rings) →
    /// wake → release.
    ///
    /// # Errors
    /// When the slot is not `Ready` after the wake-up.
    pub fn once(&self) -> Result<()> {
        self.table.assign(0, ByteRange { start: 0, end: 64 })?;
        self.doorbell
            .wait_until(|| self.table.word(0).is_none_or(|w| w.state.is_done()));
        match self.table.word(0).map(|w| w.state) {
            Some(State::Ready) => {}
            other => return Err(Error::Pool(format!("slot is {other:?}"))),
        }
        self.table.release(0);
        Ok(())
    }
}

fn helper(table: &SlotTable, doorbell: &Doorbell) -> ! {
    // Dies with the bench, however the bench ends.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
    let pid = std::process::id();
    while let Some(w) = table.word(0) {
        if w.state == State::Assigned {
            if let Ok(claim) = table.claim(0, w.generation, pid) {
                table.publish(claim, &Ok(64), 1, 0);
                ring_fd(doorbell.fd().as_fd());
            }
        } else if w.state == State::Failed {
            break; // the consumer's stop signal
        } else {
            std::hint::spin_loop();
        }
    }
    // SAFETY: ends the helper without running the parent's destructors.
    unsafe { libc::_exit(0) }
}

impl Drop for HandOff {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.child, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.child, None);
    }
}
