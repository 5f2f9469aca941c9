//! Per-slot ready events: `u32` futex words in shared memory.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The state of one ring slot, stored in its futex word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum SlotState {
    /// Free; nothing in flight.
    Empty = 0,
    /// Handed to a worker; bytes are being written.
    Filling = 1,
    /// The worker finished; the bytes are complete.
    Ready = 2,
    /// The worker gave up on this slot's range (the error comes separately).
    Failed = 3,
}

impl SlotState {
    fn from_u32(v: u32) -> SlotState {
        match v {
            0 => SlotState::Empty,
            1 => SlotState::Filling,
            2 => SlotState::Ready,
            _ => SlotState::Failed,
        }
    }
}

/// Byte size of one event word's cell (a cache line, so neighbouring slots
/// do not false-share).
pub const EVENT_STRIDE: usize = 64;

/// A view of `count` event words starting at `base` (inside a mapping of a
/// ring segment). Cheap to create; does not own the memory.
#[derive(Debug, Clone, Copy)]
pub struct SlotEvents {
    base: *mut u8,
    count: usize,
}

// SAFETY: the words are only accessed atomically.
unsafe impl Send for SlotEvents {}
// SAFETY: as above.
unsafe impl Sync for SlotEvents {}

impl SlotEvents {
    /// Bytes needed for `count` events.
    pub fn bytes_for(count: usize) -> usize {
        count * EVENT_STRIDE
    }

    /// Wraps `count` event words at `base`.
    ///
    /// # Safety
    /// `base` must be 4-byte aligned, point into a live shared mapping of at
    /// least `bytes_for(count)` bytes, and stay mapped while this view (or a
    /// copy) is used.
    pub unsafe fn new(base: *mut u8, count: usize) -> SlotEvents {
        SlotEvents { base, count }
    }

    fn word(&self, slot: usize) -> Option<&AtomicU32> {
        if slot >= self.count {
            return None;
        }
        // SAFETY: in bounds and aligned per `new`'s contract; AtomicU32 has
        // the layout of u32 and the memory is only accessed atomically.
        Some(unsafe { &*(self.base.add(slot * EVENT_STRIDE) as *const AtomicU32) })
    }

    /// Current state of `slot` (acquire: a `Ready` seen here makes the
    /// worker's bytes visible).
    pub fn get(&self, slot: usize) -> SlotState {
        self.word(slot)
            .map(|w| SlotState::from_u32(w.load(Ordering::Acquire)))
            .unwrap_or(SlotState::Failed)
    }

    /// Stores `state` (release) and wakes every waiter, in any process.
    pub fn set(&self, slot: usize, state: SlotState) {
        if let Some(w) = self.word(slot) {
            w.store(state as u32, Ordering::Release);
            // SAFETY: FUTEX_WAKE on a valid, aligned, mapped u32.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    w.as_ptr(),
                    libc::FUTEX_WAKE,
                    i32::MAX,
                    std::ptr::null::<libc::timespec>(),
                );
            }
        }
    }

    /// Waits until `slot` leaves `Filling` or `timeout` passes; returns the
    /// state seen last. Spurious wake-ups are absorbed.
    pub fn wait_while_filling(&self, slot: usize, timeout: Duration) -> SlotState {
        let Some(w) = self.word(slot) else {
            return SlotState::Failed;
        };
        let deadline = Instant::now() + timeout;
        loop {
            let v = w.load(Ordering::Acquire);
            if v != SlotState::Filling as u32 {
                return SlotState::from_u32(v);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return SlotState::Filling;
            }
            let ts = libc::timespec {
                tv_sec: left.as_secs() as libc::time_t,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            };
            // SAFETY: FUTEX_WAIT (shared, not private) on a valid, aligned,
            // mapped u32 with a valid relative timeout.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    w.as_ptr(),
                    libc::FUTEX_WAIT,
                    v,
                    &ts as *const libc::timespec,
                );
            }
        }
    }
}
