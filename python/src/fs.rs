//! The checkpoint file system (`CheckpointFs`) and its read and write
//! streams, for `shmfetch.dcp.FileSystem`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Mutex;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use shmfetch::dcp::{DcpRead, ItemRange, MaxGap, ReaderKind};
use shmfetch::store::{CheckpointFs, FsStream, StreamMode, Upload, UploadOptions};
use shmfetch::{ByteRange, Error};

use crate::errors::{OrRaise, invalid};
use crate::fork::Owned;
use crate::io::{io_err, readinto};
use crate::options::{Location, retry};
use crate::pool::PyPool;

/// A reader kind from its name and settings (``ReaderConstructor``'s).
/// `max_gap_size` None is unbounded.
pub fn reader_kind(
    py: Python<'_>,
    name: &str,
    buffer_size: i64,
    max_gap_size: Option<i64>,
) -> PyResult<ReaderKind> {
    Ok(match name {
        "range_based" => ReaderKind::range_based(buffer_size).or_raise(py)?,
        "dcp_optimized" => match max_gap_size {
            None => ReaderKind::DcpOptimized {
                max_gap: MaxGap::Unbounded,
            },
            Some(g) => ReaderKind::dcp_optimized(g).or_raise(py)?,
        },
        other => ReaderKind::from_name(other, 0, MaxGap::Unbounded).or_raise(py)?,
    })
}

/// Local paths, ``s3://`` and ``ais://`` behind one interface: the Rust
/// core of :class:`shmfetch.dcp.FileSystem` (use that).
#[pyclass(name = "_CheckpointFs", module = "shmfetch.dcp", frozen)]
pub struct PyFs {
    fs: Owned<CheckpointFs>,
    /// The same, with the sequential reader (for `.metadata`).
    sequential: Owned<CheckpointFs>,
    kind: ReaderKind,
}

impl PyFs {
    fn fs(&self, py: Python<'_>, sequential: bool) -> PyResult<&CheckpointFs> {
        let which = if sequential {
            &self.sequential
        } else {
            &self.fs
        };
        which.get(py, "FileSystem")
    }
}

#[pymethods]
impl PyFs {
    #[new]
    #[pyo3(signature = (reader = "sequential", buffer_size = 8 << 20, max_gap_size = Some(32 << 20), *, pool = None, workers = None, part_size = None, endpoint = None, region = None, endpoint_url = None, unsigned = false, addressing_style = None, attempts = None, retry_timeout = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        reader: &str,
        buffer_size: i64,
        max_gap_size: Option<i64>,
        pool: Option<&PyPool>,
        workers: Option<usize>,
        part_size: Option<u64>,
        endpoint: Option<String>,
        region: Option<String>,
        endpoint_url: Option<String>,
        unsigned: bool,
        addressing_style: Option<String>,
        attempts: Option<u32>,
        retry_timeout: Option<f64>,
    ) -> PyResult<PyFs> {
        let kind = reader_kind(py, reader, buffer_size, max_gap_size)?;
        let opts = Location {
            endpoint,
            region,
            endpoint_url,
            unsigned,
            addressing_style,
        }
        .options(py)?;
        let pool = crate::pool::choose(py, pool, workers)?;
        let mut upload = UploadOptions {
            retry: retry(py, attempts, retry_timeout)?,
            ..UploadOptions::default()
        };
        if let Some(p) = part_size {
            upload.part_size = p;
        }
        let base = CheckpointFs::new(pool, opts).with_upload(upload);
        Ok(PyFs {
            fs: Owned::new(base.clone().with_reader(kind)),
            sequential: Owned::new(base),
            kind,
        })
    }

    /// The reader kind's name: ``sequential``, ``range_based`` or ``dcp_optimized``.
    #[getter]
    fn reader_kind(&self) -> &'static str {
        self.kind.name()
    }

    /// The reader kind with its settings, e.g. ``dcp_optimized(max_gap_size=33554432)``.
    #[getter]
    fn reader_description(&self) -> String {
        self.kind.to_string()
    }

    /// Range requests made by this file system's readers so far.
    #[getter]
    fn requests(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(self.fs(py, false)?.counter().requests())
    }

    /// Bytes fetched by this file system's readers so far.
    #[getter]
    fn bytes_fetched(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(self.fs(py, false)?.counter().bytes())
    }

    /// Opens ``path`` to read. With ``ranges`` (sorted ``(start, end)``
    /// pairs) the dcp-optimized kind fetches only those; without, it
    /// refuses, as in Rust. ``sequential=True`` reads with the sequential
    /// kind whatever the file system's kind (``.metadata``).
    #[pyo3(signature = (path, ranges = None, sequential = false))]
    fn open_read(
        &self,
        py: Python<'_>,
        path: &str,
        ranges: Option<Vec<(u64, u64)>>,
        sequential: bool,
    ) -> PyResult<PyFileReader> {
        let fs = self.fs(py, sequential)?.clone();
        let path = path.to_string();
        let ranges: Vec<ItemRange> = match ranges {
            None => Vec::new(),
            Some(r) => r
                .into_iter()
                .map(|(s, e)| ByteRange::new(s, e))
                .collect::<shmfetch::Result<_>>()
                .or_raise(py)?,
        };
        let opened = py.detach(move || {
            if ranges.is_empty() {
                match fs.create_stream(&path, StreamMode::Read)? {
                    FsStream::Read(r) => Ok(r),
                    FsStream::Write(_) => Err(Error::InvalidConfig("opened for writing".into())),
                }
            } else {
                fs.open_ranges(&path, &ranges)
            }
        });
        Ok(PyFileReader {
            r: Mutex::new(Some(Owned::new(opened.or_raise(py)?))),
        })
    }

    /// Opens ``path`` to write: an upload through the worker pool, visible
    /// at ``path`` only once closed without error.
    fn open_write(&self, py: Python<'_>, path: &str) -> PyResult<PyFileWriter> {
        let fs = self.fs(py, false)?.clone();
        let path = path.to_string();
        let opened = py.detach(move || fs.create_stream(&path, StreamMode::Write));
        match opened.or_raise(py)? {
            FsStream::Write(up) => Ok(PyFileWriter {
                up: Mutex::new(Some(Owned::new(up))),
            }),
            FsStream::Read(_) => Err(invalid(py, "opened for reading")),
        }
    }

    /// Whether ``path`` exists (False only when it is not found).
    fn exists(&self, py: Python<'_>, path: &str) -> PyResult<bool> {
        let fs = self.fs(py, false)?;
        py.detach(|| fs.exists(path)).or_raise(py)
    }

    /// Removes ``path``.
    fn rm_file(&self, py: Python<'_>, path: &str) -> PyResult<()> {
        let fs = self.fs(py, false)?;
        py.detach(|| fs.rm_file(path)).or_raise(py)
    }

    /// Renames ``old`` to ``new`` (S3: copy, then delete; AIStore: rename-obj).
    fn rename(&self, py: Python<'_>, old: &str, new: &str) -> PyResult<()> {
        let fs = self.fs(py, false)?;
        py.detach(|| fs.rename(old, new)).or_raise(py)
    }

    /// Creates a local directory (and its parents); nothing on object stores.
    fn mkdir(&self, py: Python<'_>, path: &str) -> PyResult<()> {
        self.fs(py, false)?.mkdir(path).or_raise(py)
    }

    /// ``os.path.join(base, rel)``.
    fn concat_path(&self, py: Python<'_>, base: &str, rel: &str) -> PyResult<String> {
        Ok(self.fs(py, false)?.concat_path(base, rel))
    }

    /// The path as given.
    fn init_path(&self, py: Python<'_>, path: &str) -> PyResult<String> {
        Ok(self.fs(py, false)?.init_path(path))
    }

    /// Whether ``checkpoint_id`` names a location this file system serves.
    #[staticmethod]
    fn validate_checkpoint_id(checkpoint_id: &str) -> bool {
        CheckpointFs::validate_checkpoint_id(checkpoint_id)
    }
}

/// Largest `read(size)` allocated up front (straight into the `bytes`);
/// larger sizes grow with the data.
const DIRECT_READ_MAX: usize = 256 << 20;

/// A checkpoint file opened to read: ``read``/``readinto``/``seek``/``tell``
/// with the GIL released.
#[pyclass(name = "_FileReader", module = "shmfetch.dcp", frozen)]
pub struct PyFileReader {
    r: Mutex<Option<Owned<Box<dyn DcpRead>>>>,
}

impl PyFileReader {
    /// Runs `f` on the reader with the GIL released (the lock taken
    /// inside, so no thread holds it while waiting for the GIL).
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Box<dyn DcpRead>) -> std::io::Result<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| crate::fork::with_locked(&self.r, "file", f))
            .map_err(|e| io_err(py, &e))
    }
}

#[pymethods]
impl PyFileReader {
    /// The reader kind's name.
    #[getter]
    fn kind(&self, py: Python<'_>) -> PyResult<&'static str> {
        self.with(py, |r| Ok(r.name()))
    }

    /// Reads up to ``size`` bytes (all that is left when ``size`` is -1).
    /// The bytes are copied once, from shared memory into the new `bytes`.
    #[pyo3(signature = (size = -1))]
    fn read<'py>(&self, py: Python<'py>, size: Option<i64>) -> PyResult<Bound<'py, PyBytes>> {
        let size = size.unwrap_or(-1);
        if size < 0 {
            let out = self.with(py, |r| {
                let mut out = Vec::new();
                r.read_to_end(&mut out)?;
                Ok(out)
            })?;
            return Ok(PyBytes::new(py, &out));
        }
        let want = usize::try_from(size).unwrap_or(usize::MAX);
        if want > DIRECT_READ_MAX {
            // A size far past what is left must not allocate it up front:
            // grow with the bytes that arrive instead.
            let out = self.with(py, |r| {
                let mut out = Vec::new();
                r.take(want as u64).read_to_end(&mut out)?;
                Ok(out)
            })?;
            return Ok(PyBytes::new(py, &out));
        }
        let mut got = 0;
        let mut failed = None;
        // Straight into the new bytes object (nobody else can see it yet),
        // with the GIL released while the bytes move.
        let bytes = PyBytes::new_with(py, want, |dst| {
            match self.with(py, |r| {
                let mut n = 0;
                while n < dst.len() {
                    match r.read(&mut dst[n..])? {
                        0 => break,
                        k => n += k,
                    }
                }
                Ok(n)
            }) {
                Ok(n) => got = n,
                Err(e) => failed = Some(e),
            }
            Ok(())
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if got == want {
            Ok(bytes)
        } else {
            // The end of the file came first (rare: a read past the end).
            Ok(PyBytes::new(py, &bytes.as_bytes()[..got]))
        }
    }

    /// Reads into the writable buffer ``b``; returns the bytes read.
    fn readinto(&self, py: Python<'_>, b: &Bound<'_, PyAny>) -> PyResult<usize> {
        readinto(py, b, |dst| {
            crate::fork::with_locked(&self.r, "file", |r| {
                let mut got = 0;
                while got < dst.len() {
                    match r.read(&mut dst[got..])? {
                        0 => break,
                        n => got += n,
                    }
                }
                Ok(got)
            })
        })
    }

    /// Decodes the ``torch.save`` tensor item of ``length`` bytes at
    /// ``offset`` natively (no Python unpickling): ``(dtype name, shape,
    /// bytes in C order)``. The bytes come as a read-only buffer, copied
    /// once from shared memory; ``what`` names the item in errors.
    fn read_tensor(
        &self,
        py: Python<'_>,
        offset: u64,
        length: u64,
        what: &str,
    ) -> PyResult<(String, Vec<u64>, PyTensorBytes)> {
        let what = what.to_string();
        let t = self.with(py, move |r| {
            let view = shmfetch::dcp::item::ItemView::new(r, offset, length);
            shmfetch::dcp::item::decode_tensor_item(view, &what).map_err(std::io::Error::other)
        })?;
        Ok((
            t.dtype.name().to_string(),
            t.size,
            PyTensorBytes { bytes: t.bytes },
        ))
    }

    /// Moves to ``offset`` relative to ``whence`` (0 start, 1 current, 2 end).
    #[pyo3(signature = (offset, whence = 0))]
    fn seek(&self, py: Python<'_>, offset: i64, whence: i32) -> PyResult<u64> {
        let to =
            match whence {
                0 => SeekFrom::Start(u64::try_from(offset).map_err(|_| {
                    PyValueError::new_err(format!("negative seek position {offset}"))
                })?),
                1 => SeekFrom::Current(offset),
                2 => SeekFrom::End(offset),
                w => {
                    return Err(PyValueError::new_err(format!(
                        "invalid whence ({w}, should be 0, 1 or 2)"
                    )));
                }
            };
        self.with(py, |r| r.seek(to))
    }

    /// The current position.
    fn tell(&self, py: Python<'_>) -> PyResult<u64> {
        self.with(py, |r| r.stream_position())
    }

    /// Closes it (frees its shared memory).
    fn close(&self, py: Python<'_>) {
        // With the GIL released: another thread may hold the lock for a
        // whole fetch.
        py.detach(|| {
            let taken = self.r.lock().unwrap_or_else(|e| e.into_inner()).take();
            drop(taken);
        });
    }
}

/// A checkpoint file opened to write: an upload through the worker pool.
#[pyclass(name = "_FileWriter", module = "shmfetch.dcp", frozen)]
pub struct PyFileWriter {
    up: Mutex<Option<Owned<Box<Upload>>>>,
}

impl PyFileWriter {
    /// The upload, taken out (the lock is taken with the GIL released:
    /// another thread may hold it for a whole part's send).
    fn take(&self, py: Python<'_>) -> Option<Box<Upload>> {
        py.detach(|| {
            let taken = self.up.lock().unwrap_or_else(|e| e.into_inner()).take();
            taken.and_then(Owned::into_inner)
        })
    }
}

#[pymethods]
impl PyFileWriter {
    /// Writes all of ``b`` (any buffer); returns its length.
    fn write(&self, py: Python<'_>, b: &Bound<'_, PyAny>) -> PyResult<usize> {
        let buf = pyo3::buffer::PyUntypedBuffer::get(b)?;
        if !buf.is_c_contiguous() {
            return Err(PyValueError::new_err("write needs a C-contiguous buffer"));
        }
        let (ptr, len) = (buf.buf_ptr() as usize, buf.len_bytes());
        let res = py.detach(|| {
            let src: &[u8] = if len == 0 {
                &[]
            } else {
                // SAFETY: `buf` holds an export of a contiguous buffer of
                // `len` bytes at `ptr` until after this call, which keeps
                // it alive and in place.
                unsafe { std::slice::from_raw_parts(ptr as *const u8, len) }
            };
            crate::fork::with_locked(&self.up, "file", |up| up.write_all(src).map(|()| len))
        });
        drop(buf);
        res.map_err(|e| io_err(py, &e))
    }

    /// Bytes written so far (the position: writes only append).
    fn tell(&self, py: Python<'_>) -> PyResult<u64> {
        py.detach(|| crate::fork::with_locked(&self.up, "file", |u| Ok(u.written())))
            .map_err(|e| io_err(py, &e))
    }

    /// Sends the rest, waits for every part and completes the upload: the
    /// file exists from here on. Closing twice does nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let Some(up) = self.take(py) else {
            return Ok(());
        };
        py.detach(move || up.finish()).or_raise(py).map(|_| ())
    }

    /// Abandons the upload: nothing is stored, parts sent are deleted.
    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        let Some(up) = self.take(py) else {
            return Ok(());
        };
        py.detach(move || up.abort()).or_raise(py)
    }

    /// Whether it was closed or aborted.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        py.detach(|| self.up.lock().unwrap_or_else(|e| e.into_inner()).is_none())
    }
}

/// A decoded tensor's bytes (read-only buffer protocol), for
/// ``torch.frombuffer``.
#[pyclass(name = "_TensorBytes", module = "shmfetch.dcp", frozen)]
pub struct PyTensorBytes {
    bytes: Vec<u8>,
}

#[pymethods]
impl PyTensorBytes {
    fn __len__(&self) -> usize {
        self.bytes.len()
    }

    /// # Safety
    /// Called by CPython with a valid `view`.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: std::ffi::c_int,
    ) -> PyResult<()> {
        use pyo3::ffi;
        if view.is_null() {
            return Err(pyo3::exceptions::PyBufferError::new_err("view is null"));
        }
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(pyo3::exceptions::PyBufferError::new_err(
                "decoded tensor bytes are read-only",
            ));
        }
        let (ptr, len) = {
            let this = slf.get();
            (this.bytes.as_ptr().cast_mut(), this.bytes.len())
        };
        // SAFETY: `view` is valid (CPython's contract, checked non-null);
        // the bytes never change and live as long as the object, which the
        // view keeps alive; exported read-only, so nothing writes them.
        unsafe { crate::io::fill_view(view, flags, slf.into_any(), ptr, len, false) };
        Ok(())
    }

    /// # Safety
    /// Called by CPython once per successful `__getbuffer__`.
    unsafe fn __releasebuffer__(&self, _view: *mut pyo3::ffi::Py_buffer) {}
}
