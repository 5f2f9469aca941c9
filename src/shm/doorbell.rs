//! The one doorbell of a download: an `eventfd` the consumer sleeps on.
//!
//! A slot's state lives only in its table word; the doorbell carries no
//! information, it only says "some word of this table may have changed".
//! Workers ring it after every publish, the supervisor after every change
//! it makes. The consumer's loop is: look at the words it waits for; if
//! nothing is done, sleep on the doorbell (`poll`, or tokio's `AsyncFd`),
//! drain it, look again. The counter of an eventfd means a ring that lands
//! between the look and the sleep is never lost.
//!
//! The eventfd reaches the workers with the download's open message
//! (`SCM_RIGHTS`); [`send_with_fd`]/[`recv_with_fds`] are that passing.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use crate::error::{Error, Result};

/// How long a waiter spins on the slot word before it sleeps on the
/// doorbell: about the cost of one sleep and wake-up on a busy machine.
pub(crate) const SPIN_BUDGET: std::time::Duration = std::time::Duration::from_micros(20);

/// A download's doorbell (non-blocking, close-on-exec eventfd).
#[derive(Debug)]
pub(crate) struct Doorbell {
    fd: EventFd,
}

impl Doorbell {
    /// A new doorbell.
    pub(crate) fn new() -> Result<Doorbell> {
        let fd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| Error::shm("creating the download's eventfd", e))?;
        Ok(Doorbell { fd })
    }

    /// Wakes the consumer (any process holding the eventfd may ring).
    pub(crate) fn ring(&self) {
        ring_fd(self.fd.as_fd());
    }

    /// Resets the counter; returns whether it had been rung.
    pub(crate) fn drain(&self) -> bool {
        matches!(self.fd.read(), Ok(n) if n > 0)
    }

    /// Waits until `done()` holds: first a short spin of at most
    /// [`SPIN_BUDGET`] (a hand-off that lands within microseconds costs no
    /// sleep and wake-up), then sleeping on the doorbell between looks.
    pub(crate) fn wait_until(&self, mut done: impl FnMut() -> bool) {
        let start = std::time::Instant::now();
        let mut spins = 0u32;
        while !done() {
            spins += 1;
            if spins.is_multiple_of(64) && start.elapsed() >= SPIN_BUDGET {
                self.wait();
                // a spurious wake-up (or one for another slot) looks again
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// Sleeps until the doorbell is rung (or a signal interrupts), then
    /// drains it.
    pub(crate) fn wait(&self) {
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::NONE);
        self.drain();
    }

    /// Sleeps until the doorbell is rung or `at_most` has passed (or a
    /// signal interrupts), then drains it. For a consumer that also
    /// reports progress between rings; everything else waits with
    /// [`Doorbell::wait`], with no timeout.
    pub(crate) fn wait_at_most(&self, at_most: std::time::Duration) {
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(at_most).unwrap_or(PollTimeout::MAX);
        let _ = poll(&mut fds, timeout);
        self.drain();
    }

    /// Registers a second descriptor of the eventfd with tokio's reactor
    /// (which owns what it watches). Must run inside a runtime.
    #[cfg(feature = "tokio")]
    pub(crate) fn register_async(&self) -> Result<tokio::io::unix::AsyncFd<OwnedFd>> {
        let fd = self
            .fd
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| Error::io("duplicating the download's eventfd", &e))?;
        // SAFETY: an OwnedFd stays open, on the same open file description,
        // and returns the same raw fd for as long as the AsyncFd owns it.
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }
        .map_err(|e| {
            Error::io(
                "registering the download's doorbell with tokio",
                &e.into_parts().1,
            )
        })
    }

    /// The descriptor (to pass to workers, or to register with a reactor).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Rings the doorbell behind `fd` (a worker's copy of the eventfd).
pub(crate) fn ring_fd(fd: BorrowedFd<'_>) {
    // EAGAIN only when the counter is at its maximum: rung already.
    let _ = nix::unistd::write(fd, &1u64.to_ne_bytes());
}

/// Sends `payload` on the `SOCK_SEQPACKET` socket `sock`, with `fd`
/// attached (`SCM_RIGHTS`) when given.
pub(crate) fn send_with_fd(sock: RawFd, payload: &[u8], fd: Option<BorrowedFd<'_>>) -> Result<()> {
    let iov = [IoSlice::new(payload)];
    let raw = fd.map(|f| [f.as_raw_fd()]);
    let cmsg: Vec<ControlMessage> = raw
        .as_ref()
        .map(|r| ControlMessage::ScmRights(r))
        .into_iter()
        .collect();
    sendmsg::<()>(sock, &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
        .map(|_| ())
        .map_err(|e| Error::Pool(format!("sending to worker: {e}")))
}

/// Receives one message from `sock` into `buf`, with any descriptors
/// attached to it. `Ok(None)` is end of file (the peer is gone).
pub(crate) fn recv_with_fds(
    sock: RawFd,
    buf: &mut [u8],
    flags: MsgFlags,
) -> std::result::Result<Option<(usize, Vec<OwnedFd>)>, Errno> {
    let mut cmsg_buf = nix::cmsg_space!([RawFd; 2]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        sock,
        &mut iov,
        Some(&mut cmsg_buf),
        flags | MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for r in raw {
                    // SAFETY: SCM_RIGHTS installed this descriptor in our
                    // table just now; nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(r) });
                }
            }
        }
    }
    let n = msg.bytes;
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    Ok(Some((n, fds)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_before_the_wait_is_not_lost() {
        let d = Doorbell::new().unwrap();
        assert!(!d.drain());
        d.ring();
        d.wait(); // returns at once
        assert!(!d.drain());
    }

    #[test]
    fn the_fd_crosses_a_socket_and_rings_from_there() {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let d = Doorbell::new().unwrap();
        send_with_fd(a.as_raw_fd(), b"open", Some(d.fd())).unwrap();
        let mut buf = [0u8; 16];
        let (n, fds) = recv_with_fds(b.as_raw_fd(), &mut buf, MsgFlags::empty())
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"open");
        assert_eq!(fds.len(), 1);
        ring_fd(fds[0].as_fd());
        assert!(d.drain());
    }
}
