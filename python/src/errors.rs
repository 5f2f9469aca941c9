//! The core's errors as Python exceptions: one class per variant, defined
//! in `shmfetch/_errors.py` (so they can also derive from `ValueError`,
//! `FileNotFoundError`, …), with the core's message unchanged.

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyType;
use shmfetch::Error;

/// The Python class (in `shmfetch._errors`) of a core error. A range that
/// failed is raised as what made it fail.
fn class_name(e: &Error) -> &'static str {
    match e.root() {
        Error::InvalidConfig(_) => "InvalidConfig",
        Error::InvalidSource { .. } => "InvalidSource",
        Error::BucketNotFound { .. } => "BucketNotFound",
        Error::ObjectNotFound { .. } => "ObjectNotFound",
        Error::AccessDenied { .. } => "AccessDenied",
        Error::Http { .. } => "HttpError",
        Error::RangeMismatch { .. } => "RangeMismatch",
        Error::ShortRead { .. } => "ShortRead",
        Error::ObjectChanged { .. } => "ObjectChanged",
        Error::Transport { .. } => "TransportError",
        Error::Io { .. } => "IoError",
        Error::Shm { .. } => "ShmError",
        Error::ShmNoSpace { .. } => "ShmNoSpace",
        Error::InvalidRanges(_) => "InvalidRanges",
        Error::Pickle { .. } => "PickleError",
        Error::Checkpoint { .. } => "CheckpointError",
        Error::UnsupportedAccess { .. } => "UnsupportedAccess",
        Error::WorkerCrashed { .. } => "WorkerCrashed",
        Error::Pool(_) => "PoolError",
        _ => "Error",
    }
}

/// The exception for `e`.
pub fn to_py(py: Python<'_>, e: Error) -> PyErr {
    let msg = e.to_string();
    let class = py
        .import("shmfetch._errors")
        .and_then(|m| m.getattr(class_name(&e)))
        .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
    match class {
        Ok(class) => PyErr::from_type(class, msg),
        // The package is broken (the module is missing): still say what
        // went wrong.
        Err(_) => PyRuntimeError::new_err(msg),
    }
}

/// `?` for core results inside binding code that holds the GIL.
pub trait OrRaise<T> {
    /// The value, or the error raised as its Python class.
    fn or_raise(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> OrRaise<T> for shmfetch::Result<T> {
    fn or_raise(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, e))
    }
}

/// An `InvalidConfig` raised from binding code (a bad keyword argument).
pub fn invalid(py: Python<'_>, msg: impl Into<String>) -> PyErr {
    to_py(py, Error::InvalidConfig(msg.into()))
}
