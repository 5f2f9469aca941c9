//! `ParallelReader` and what it hands out: `Buffer` (the shared segment
//! of `read_all`, or one ring slot of `create_iter`, through the buffer
//! protocol), `ChunkIterator` and the raw stream behind `stream()`.

use std::ffi::c_int;
use std::sync::Mutex;

use pyo3::exceptions::{PyBufferError, PyStopIteration};
use pyo3::ffi;
use pyo3::prelude::*;
use shmfetch::{
    ByteRange, Chunk, ChunkIter, ChunkReader, ParallelBuffer, ParallelReader, SourceSpec,
};

use crate::errors::{OrRaise, invalid};
use crate::fork::Owned;
use crate::options::{Location, retry};
use crate::pool::PyPool;

/// Reads one object with a pool of worker processes, each fetching
/// disjoint byte ranges straight into shared memory (``/dev/shm``).
///
/// ``location`` is ``ais://bucket/object`` (gateway from ``endpoint`` or
/// ``AIS_ENDPOINT``), ``s3://bucket/key`` (``region``, ``endpoint_url``,
/// ``unsigned``, ``addressing_style``, else the AWS environment and
/// profile), an ``http(s)://`` URL or a local path.
///
/// ``attempts`` and ``retry_timeout`` (seconds) bound the retries of a
/// failed range; ``direct=True`` reads AIStore objects straight from their
/// target; ``shm_dir`` is the tmpfs for the buffers (default ``/dev/shm``).
///
/// Without ``pool`` the reader uses the module's default pool of
/// ``workers`` workers (see :func:`shmfetch.default_pool`). Creating the
/// reader sends one HEAD; bytes move only in :meth:`read_all`,
/// :meth:`create_iter` and :meth:`stream`, with the GIL released.
///
/// >>> r = shmfetch.ParallelReader("ais://bucket/obj", workers=8)
/// >>> with r.read_all() as buf:            # no copy: the shared segment
/// ...     a = numpy.frombuffer(buf, dtype=numpy.uint8)
/// >>> for chunk in r.create_iter(offset=0):  # in order, one ring slot each
/// ...     consume(memoryview(chunk))
#[pyclass(name = "ParallelReader", module = "shmfetch", frozen)]
pub struct PyReader {
    reader: Owned<ParallelReader>,
}

impl PyReader {
    fn get(&self, py: Python<'_>) -> PyResult<ParallelReader> {
        self.reader.get(py, "ParallelReader").cloned()
    }
}

#[pymethods]
impl PyReader {
    #[new]
    #[pyo3(signature = (location, workers = None, chunk_size = None, pool = None, endpoint = None, *, region = None, endpoint_url = None, unsigned = false, addressing_style = None, attempts = None, retry_timeout = None, direct = false, shm_dir = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        location: &str,
        workers: Option<usize>,
        chunk_size: Option<u64>,
        pool: Option<&PyPool>,
        endpoint: Option<String>,
        region: Option<String>,
        endpoint_url: Option<String>,
        unsigned: bool,
        addressing_style: Option<String>,
        attempts: Option<u32>,
        retry_timeout: Option<f64>,
        direct: bool,
        shm_dir: Option<std::path::PathBuf>,
    ) -> PyResult<PyReader> {
        let opts = Location {
            endpoint,
            region,
            endpoint_url,
            unsigned,
            addressing_style,
        }
        .options(py)?;
        let spec = SourceSpec::parse_with(location, &opts).or_raise(py)?;
        let pool = crate::pool::choose(py, pool, workers)?;
        let mut b = ParallelReader::builder(spec)
            .pool(pool)
            .retry(retry(py, attempts, retry_timeout)?)
            .direct(direct);
        if let Some(c) = chunk_size {
            b = b.chunk_size(c);
        }
        if let Some(d) = shm_dir {
            b = b.shm_dir(d);
        }
        let reader = py.detach(|| b.build()).or_raise(py)?;
        Ok(PyReader {
            reader: Owned::new(reader),
        })
    }

    /// Size of the object in bytes.
    #[getter]
    fn size(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(self.get(py)?.size())
    }

    /// Bytes per range request (a small object is split among the
    /// workers; a ``read_all`` beside other downloads splits it less).
    #[getter]
    fn chunk_size(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(self.get(py)?.chunk_size())
    }

    /// Number of worker processes of the reader's pool.
    #[getter]
    fn workers(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.get(py)?.pool().workers())
    }

    /// The object's name, e.g. ``ais://bucket/obj``.
    #[getter]
    fn location(&self, py: Python<'_>) -> PyResult<String> {
        Ok(self.get(py)?.source().display_name())
    }

    /// The object's ETag (or version), if the server sent one.
    #[getter]
    fn etag(&self, py: Python<'_>) -> PyResult<Option<String>> {
        Ok(self.get(py)?.meta().etag.clone())
    }

    /// Fetches the whole object into one shared-memory segment and returns
    /// it as a :class:`Buffer` (buffer protocol, writable): no copy.
    ///
    /// Release it with ``with`` or :meth:`Buffer.release`; the memory goes
    /// back once it is released and no view (numpy array, tensor,
    /// memoryview) of it remains. Ctrl-C stops the download and raises
    /// ``KeyboardInterrupt``.
    fn read_all(&self, py: Python<'_>) -> PyResult<PyBuf> {
        let reader = self.get(py)?;
        let size = reader.size();
        let range = ByteRange::new(0, size).or_raise(py)?;
        read_range(py, &reader, range)
    }

    /// Fetches ``length`` bytes from ``offset`` (to the end when
    /// ``length`` is None) into one shared segment; as :meth:`read_all`.
    #[pyo3(signature = (offset, length = None))]
    fn read_range(&self, py: Python<'_>, offset: u64, length: Option<u64>) -> PyResult<PyBuf> {
        let reader = self.get(py)?;
        let end = match length {
            Some(l) => offset
                .checked_add(l)
                .ok_or_else(|| invalid(py, format!("offset {offset} + length {l} overflows")))?,
            None => reader.size(),
        };
        if offset > end {
            return Err(invalid(
                py,
                format!(
                    "offset {offset} is past the end of the object ({} bytes)",
                    reader.size()
                ),
            ));
        }
        let range = ByteRange::new(offset, end).or_raise(py)?;
        read_range(py, &reader, range)
    }

    /// Streams the object from ``offset`` in order: an iterator of
    /// :class:`Buffer` chunks, each one ring slot of shared memory (no
    /// copy), valid until released. The ring has ``workers`` slots, so
    /// memory stays ``workers × chunk_size``; a chunk still held (by a view
    /// of it, too) keeps its slot, and holding ``workers`` chunks at once
    /// is an error.
    #[pyo3(signature = (offset = 0))]
    fn create_iter(&self, py: Python<'_>, offset: u64) -> PyResult<PyChunkIter> {
        let reader = self.get(py)?;
        let it = py.detach(|| reader.create_iter(offset)).or_raise(py)?;
        Ok(PyChunkIter {
            it: Mutex::new(Some(Owned::new(it))),
        })
    }

    /// The object from ``offset`` as a file: an ``io.RawIOBase`` whose
    /// ``readinto`` copies from the ring (see :meth:`create_iter`) into the
    /// caller's buffer with the GIL released. Wrap it in
    /// ``io.BufferedReader`` for small reads; close it (or use ``with``)
    /// to stop the download.
    #[pyo3(signature = (offset = 0))]
    fn stream(&self, py: Python<'_>, offset: u64) -> PyResult<Py<PyAny>> {
        let reader = self.get(py)?;
        let r = py.detach(|| reader.stream(offset)).or_raise(py)?;
        let raw = PyRawStream {
            r: Mutex::new(Some(Owned::new(r))),
        };
        let cls = py.import("shmfetch._io")?.getattr("ObjectStream")?;
        Ok(cls.call1((raw,))?.unbind())
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        match self.get(py) {
            Ok(r) => format!(
                "ParallelReader({:?}, size={}, chunk_size={}, workers={})",
                r.source().display_name(),
                r.size(),
                r.chunk_size(),
                r.pool().workers()
            ),
            Err(_) => "ParallelReader(<from another process>)".to_string(),
        }
    }
}

/// `read_range` with the GIL released, waking every ~100 ms to let Python
/// handle signals: Ctrl-C cancels the download (its segment is freed).
fn read_range(py: Python<'_>, reader: &ParallelReader, range: ByteRange) -> PyResult<PyBuf> {
    let mut pending: Option<PyErr> = None;
    let res = py.detach(|| {
        reader.read_range_cancellable(range, &mut |_| {}, &mut || match Python::attach(|py| {
            py.check_signals()
        }) {
            Ok(()) => true,
            Err(e) => {
                pending = Some(e);
                false
            }
        })
    });
    match res {
        Ok(buf) => Ok(PyBuf::new(Held::Whole(buf), range.start)),
        Err(e) => Err(pending
            .take()
            .unwrap_or_else(|| crate::errors::to_py(py, e))),
    }
}

/// What a [`PyBuf`] exposes.
enum Held {
    /// A `read_all`/`read_range` segment.
    Whole(ParallelBuffer),
    /// One ring slot of `create_iter`.
    Chunk(Chunk),
}

impl Held {
    fn bytes(&self) -> &[u8] {
        match self {
            Held::Whole(b) => b,
            Held::Chunk(c) => c,
        }
    }

    /// Where views point, and whether they may write: a `read_all` buffer
    /// is the caller's alone (writable); a ring slot is shared with the
    /// download (read-only).
    fn view(&mut self) -> (*mut u8, bool) {
        match self {
            Held::Whole(b) => (b.as_mut_ptr(), true),
            Held::Chunk(c) => (c.as_ptr().cast_mut(), false),
        }
    }
}

struct BufState {
    held: Option<Owned<Held>>,
    /// Views handed out through the buffer protocol and not yet released.
    exports: usize,
    /// `release()` was called while views were out: drop at the last one.
    release_pending: bool,
}

/// Bytes in shared memory, exposed through the buffer protocol without a
/// copy: ``numpy.frombuffer(buf, dtype=numpy.uint8)``,
/// ``torch.frombuffer(buf, dtype=torch.uint8)``, ``memoryview(buf)``.
///
/// A ``read_all`` buffer is writable: the workers are done with it and the
/// bytes are the caller's. A chunk of ``create_iter`` is read-only (its
/// ring slot is refilled once released); copy it to modify. Use it as a context
/// manager, or call :meth:`release`, to give the memory back: it goes once
/// released and once no view of it remains (views keep it valid, never
/// dangling).
#[pyclass(name = "Buffer", module = "shmfetch", frozen)]
pub struct PyBuf {
    state: Mutex<BufState>,
    /// Offset of the first byte in the object.
    offset: u64,
    len: usize,
    address: usize,
}

impl PyBuf {
    fn new(held: Held, offset: u64) -> PyBuf {
        let bytes = held.bytes();
        let (len, address) = (bytes.len(), bytes.as_ptr() as usize);
        PyBuf {
            state: Mutex::new(BufState {
                held: Some(Owned::new(held)),
                exports: 0,
                release_pending: false,
            }),
            offset,
            len,
            address,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BufState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl PyBuf {
    /// Offset of the first byte in the object.
    #[getter]
    fn offset(&self) -> u64 {
        self.offset
    }

    /// Address of the first byte in this process (where views point).
    #[getter]
    fn address(&self) -> usize {
        self.address
    }

    /// Name of the shared-memory segment holding the bytes.
    #[getter]
    fn segment_name(&self, py: Python<'_>) -> PyResult<Option<String>> {
        let st = self.lock();
        let Some(h) = &st.held else { return Ok(None) };
        Ok(match h.get(py, "Buffer")? {
            Held::Whole(b) => Some(b.segment_name().to_string()),
            Held::Chunk(_) => None,
        })
    }

    /// Whether :meth:`release` was called (or the block of ``with`` left).
    #[getter]
    fn released(&self) -> bool {
        let st = self.lock();
        st.held.is_none() || st.release_pending
    }

    /// Gives the memory back now, or, while views of it exist, as soon as
    /// the last one is gone. Calling it again does nothing.
    fn release(&self) {
        let dropped = {
            let mut st = self.lock();
            if st.exports == 0 {
                st.held.take()
            } else {
                st.release_pending = true;
                None
            }
        };
        drop(dropped);
    }

    fn __len__(&self) -> usize {
        self.len
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(&self, _t: Py<PyAny>, _v: Py<PyAny>, _tb: Py<PyAny>) {
        self.release();
    }

    fn __repr__(&self) -> String {
        format!(
            "Buffer(offset={}, len={}{})",
            self.offset,
            self.len,
            if self.released() { ", released" } else { "" }
        )
    }

    /// # Safety
    /// Called by CPython with a valid `view`.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("view is null"));
        }
        let this = slf.get();
        let mut st = this.lock();
        if st.release_pending {
            return Err(PyBufferError::new_err("the Buffer was released"));
        }
        let (ptr, writable) = match &mut st.held {
            Some(h) => h.get_mut(slf.py(), "Buffer")?.view(),
            None => return Err(PyBufferError::new_err("the Buffer was released")),
        };
        if !writable && flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err(
                "a chunk of create_iter is read-only (its ring slot is refilled once it is \
                 released); copy it to modify: bytearray(chunk)",
            ));
        }
        st.exports += 1;
        drop(st);
        let len = this.len;
        // SAFETY: `view` is valid (CPython's contract, checked non-null);
        // the bytes stay mapped while this export lives: `release` defers
        // dropping them until `exports` is back to 0, and the view keeps
        // the Buffer itself alive. A chunk's slot is exported read-only.
        unsafe { crate::io::fill_view(view, flags, slf.into_any(), ptr, len, writable) };
        Ok(())
    }

    /// # Safety
    /// Called by CPython once per successful `__getbuffer__`.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        let dropped = {
            let mut st = self.lock();
            st.exports = st.exports.saturating_sub(1);
            if st.exports == 0 && st.release_pending {
                st.held.take()
            } else {
                None
            }
        };
        drop(dropped);
    }
}

/// The chunks of :meth:`ParallelReader.create_iter`, in order.
#[pyclass(name = "ChunkIterator", module = "shmfetch", frozen)]
pub struct PyChunkIter {
    it: Mutex<Option<Owned<ChunkIter>>>,
}

#[pymethods]
impl PyChunkIter {
    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<PyBuf> {
        // The lock is taken and released with the GIL released, so a
        // thread waiting here never holds the GIL another thread needs.
        let next = py.detach(|| {
            let mut guard = self.it.lock().unwrap_or_else(|e| e.into_inner());
            match guard.as_mut() {
                None => Ok(None),
                Some(owned) if !owned.is_ours() => Err(()),
                Some(owned) => Ok(owned.inner_mut().and_then(|it| it.next())),
            }
        });
        match next {
            Err(()) => {
                // Raises the fork error.
                let guard = self.it.lock().unwrap_or_else(|e| e.into_inner());
                match guard.as_ref() {
                    Some(o) => o.get(py, "chunk iterator").map(|_| ()),
                    None => Ok(()),
                }?;
                Err(PyStopIteration::new_err(()))
            }
            Ok(None) => {
                self.close(py);
                Err(PyStopIteration::new_err(()))
            }
            Ok(Some(Ok(chunk))) => {
                let offset = chunk.offset();
                Ok(PyBuf::new(Held::Chunk(chunk), offset))
            }
            Ok(Some(Err(e))) => {
                self.close(py);
                Err(crate::errors::to_py(py, e))
            }
        }
    }

    /// Stops the download: queued ranges are cancelled and the ring is
    /// freed once no chunk of it is held.
    fn close(&self, py: Python<'_>) {
        // With the GIL released: another thread may hold the lock for a
        // whole chunk's wait.
        py.detach(|| {
            let taken = self.it.lock().unwrap_or_else(|e| e.into_inner()).take();
            drop(taken);
        });
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(&self, py: Python<'_>, _t: Py<PyAny>, _v: Py<PyAny>, _tb: Py<PyAny>) {
        self.close(py);
    }
}

/// The object as a byte stream (wrapped by ``ParallelReader.stream()`` in
/// an ``io.RawIOBase``).
#[pyclass(name = "_RawStream", module = "shmfetch", frozen)]
pub struct PyRawStream {
    r: Mutex<Option<Owned<ChunkReader>>>,
}

#[pymethods]
impl PyRawStream {
    /// Reads up to ``len(b)`` bytes into the writable buffer ``b``; 0 at
    /// the end.
    fn readinto(&self, py: Python<'_>, b: &Bound<'_, PyAny>) -> PyResult<usize> {
        crate::io::readinto(py, b, |dst| {
            crate::fork::with_locked(&self.r, "stream", |r| std::io::Read::read(r, dst))
        })
    }

    fn close(&self, py: Python<'_>) {
        py.detach(|| {
            let taken = self.r.lock().unwrap_or_else(|e| e.into_inner()).take();
            drop(taken);
        });
    }

    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        py.detach(|| self.r.lock().unwrap_or_else(|e| e.into_inner()).is_none())
    }
}
