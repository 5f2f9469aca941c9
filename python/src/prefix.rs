//! The DCP writer's prefix strategies (the Rust implementations), for the
//! connector-compatible classes of `shmfetch.dcp`.

use pyo3::prelude::*;
use shmfetch::dcp::PrefixStrategy;

use crate::errors::OrRaise;

/// A prefix strategy: ``prefix(rank)`` is the storage prefix of that
/// rank's files. Built by the classes of :mod:`shmfetch.dcp` (use those).
#[pyclass(name = "_PrefixStrategy", module = "shmfetch.dcp", frozen)]
pub struct PyPrefix {
    inner: PrefixStrategy,
}

#[pymethods]
impl PyPrefix {
    /// ``__{rank}_``.
    #[staticmethod]
    fn default() -> PyPrefix {
        PyPrefix {
            inner: PrefixStrategy::default_strategy(),
        }
    }

    /// Rank modulo ``prefix_count`` in ``base`` (2 to 36), zero-padded to
    /// at least ``min_prefix_length`` digits, least significant first.
    #[staticmethod]
    #[pyo3(signature = (base, epoch, min_prefix_length, prefix_count))]
    fn numeric(
        py: Python<'_>,
        base: u32,
        epoch: Option<u64>,
        min_prefix_length: usize,
        prefix_count: usize,
    ) -> PyResult<PyPrefix> {
        let inner =
            PrefixStrategy::numeric(base, epoch, min_prefix_length, prefix_count).or_raise(py)?;
        Ok(PyPrefix { inner })
    }

    /// The given prefixes in turn.
    #[staticmethod]
    #[pyo3(signature = (prefixes, epoch))]
    fn round_robin(
        py: Python<'_>,
        prefixes: Vec<String>,
        epoch: Option<u64>,
    ) -> PyResult<PyPrefix> {
        let inner = PrefixStrategy::round_robin(prefixes, epoch).or_raise(py)?;
        Ok(PyPrefix { inner })
    }

    /// The prefix of ``rank``'s files.
    fn prefix(&self, rank: usize) -> String {
        self.inner.prefix(rank)
    }

    fn __repr__(&self) -> String {
        self.inner.to_string()
    }
}
