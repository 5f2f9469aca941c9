//! Objects that hold worker processes or shared memory belong to the
//! process that made them. After `os.fork()` the child has copies of the
//! Python objects but not the parent's threads; using them there would
//! signal the parent's workers or unlink the parent's segments. The child
//! gets a clear error instead, and dropping such an object in the child
//! forgets it rather than tearing down the parent's resources.

use std::io;
use std::sync::Mutex;

use pyo3::prelude::*;

use crate::errors::to_py;

/// `T`, usable only in the process that created it.
pub struct Owned<T> {
    pid: u32,
    /// `Some` until dropped.
    inner: Option<T>,
}

impl<T> Owned<T> {
    pub fn new(inner: T) -> Owned<T> {
        Owned {
            pid: std::process::id(),
            inner: Some(inner),
        }
    }

    /// Whether this process created it.
    pub fn is_ours(&self) -> bool {
        self.pid == std::process::id()
    }

    /// The value, or `PoolError` in a forked child.
    pub fn get(&self, py: Python<'_>, what: &str) -> PyResult<&T> {
        self.check(py, what)?;
        self.inner
            .as_ref()
            .ok_or_else(|| to_py(py, shmfetch::Error::Pool(format!("this {what} is gone"))))
    }

    /// The value, mutably, or `PoolError` in a forked child.
    pub fn get_mut(&mut self, py: Python<'_>, what: &str) -> PyResult<&mut T> {
        self.check(py, what)?;
        self.inner
            .as_mut()
            .ok_or_else(|| to_py(py, shmfetch::Error::Pool(format!("this {what} is gone"))))
    }

    /// The value, to consume it; `None` in a forked child (the copy is
    /// forgotten).
    pub fn into_inner(mut self) -> Option<T> {
        if self.is_ours() {
            self.inner.take()
        } else {
            None
        }
    }

    /// The value, for code that checked [`Owned::is_ours`] itself.
    /// (`None` only while being dropped).
    pub fn inner_mut(&mut self) -> Option<&mut T> {
        self.inner.as_mut()
    }

    fn check(&self, py: Python<'_>, what: &str) -> PyResult<()> {
        if self.is_ours() {
            return Ok(());
        }
        Err(to_py(
            py,
            shmfetch::Error::Pool(format!(
                "this {what} was created in process {} and cannot be used after os.fork() \
                 (this is process {}): its worker processes and shared memory belong to the \
                 parent; create a new one in the child",
                self.pid,
                std::process::id()
            )),
        ))
    }
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        if !self.is_ours() {
            // In a forked child: the parent owns what it refers to (its
            // workers, its segments); tearing it down here would hurt the
            // parent. Leak the copy instead.
            std::mem::forget(self.inner.take());
        }
    }
}

/// Runs `f` on the value an object keeps in `slot` (`None` once closed),
/// as an I/O call: a closed object is an `InvalidInput` error (Python's
/// `ValueError`), one from before a fork an error naming that. The lock is
/// taken here, so call it with the GIL released.
pub fn with_locked<T, R>(
    slot: &Mutex<Option<Owned<T>>>,
    what: &str,
    f: impl FnOnce(&mut T) -> io::Result<R>,
) -> io::Result<R> {
    let closed = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("I/O operation on a closed {what}"),
        )
    };
    let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
    let owned = guard.as_mut().ok_or_else(closed)?;
    if !owned.is_ours() {
        return Err(io::Error::other(format!(
            "this {what} was opened in another process (before os.fork())"
        )));
    }
    f(owned.inner_mut().ok_or_else(closed)?)
}
