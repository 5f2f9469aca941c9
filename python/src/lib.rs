//! The extension module `shmfetch._shmfetch`: the Rust core's readers,
//! pools, checkpoint file system and prefix strategies for Python. The
//! public Python API is the `shmfetch` package around it.
//!
//! `unsafe` here is the buffer protocol (handing CPython a pointer into a
//! shared segment, and writing into a caller's buffer in `readinto`), each
//! block with its reasoning.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![deny(clippy::unwrap_used, clippy::expect_used)]

use pyo3::prelude::*;

mod errors;
mod fork;
mod fs;
mod io;
mod options;
mod pool;
mod prefix;
mod reader;

#[pymodule]
fn _shmfetch(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<pool::PyPool>()?;
    m.add_class::<reader::PyReader>()?;
    m.add_class::<reader::PyBuf>()?;
    m.add_class::<reader::PyChunkIter>()?;
    m.add_class::<reader::PyRawStream>()?;
    m.add_class::<fs::PyFs>()?;
    m.add_class::<fs::PyFileReader>()?;
    m.add_class::<fs::PyFileWriter>()?;
    m.add_class::<fs::PyTensorBytes>()?;
    m.add_class::<prefix::PyPrefix>()?;
    m.add_function(wrap_pyfunction!(pool::py_default_pool, m)?)?;
    m.add_function(wrap_pyfunction!(pool::close_default_pools, m)?)?;
    m.add("DEFAULT_WORKERS", shmfetch::worker::DEFAULT_WORKERS)?;
    m.add("MAX_WORKERS", shmfetch::worker::MAX_WORKERS)?;
    m.add("DEFAULT_CHUNK_SIZE", shmfetch::reader::DEFAULT_CHUNK_SIZE)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
