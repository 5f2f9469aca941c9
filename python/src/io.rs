//! The buffer protocol both ways: reading into a caller's buffer
//! (`readinto`) with the GIL released, and filling the view of a buffer
//! we export.

use std::ffi::c_int;

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyBufferError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;

use crate::errors::to_py;

/// Calls `read` with the bytes of the writable, C-contiguous buffer `b`
/// (a `bytearray`, a `memoryview`, a numpy array, …), the GIL released;
/// returns what it read. An error of the core inside the `io::Error` is
/// raised as its class.
pub fn readinto(
    py: Python<'_>,
    b: &Bound<'_, PyAny>,
    read: impl FnOnce(&mut [u8]) -> std::io::Result<usize> + Send,
) -> PyResult<usize> {
    let buf = PyUntypedBuffer::get(b)?;
    if buf.readonly() {
        return Err(PyBufferError::new_err("readinto needs a writable buffer"));
    }
    if !buf.is_c_contiguous() {
        return Err(PyValueError::new_err(
            "readinto needs a C-contiguous buffer",
        ));
    }
    let (ptr, len) = (buf.buf_ptr() as usize, buf.len_bytes());
    let res = py.detach(move || {
        let dst: &mut [u8] = if len == 0 {
            &mut []
        } else {
            // SAFETY: `buf` holds an export of a writable, contiguous buffer
            // of `len` bytes at `ptr` for the whole call, which pins its
            // memory (a bytearray cannot resize while exported), so the
            // slice stays valid. The GIL is released meanwhile, so another
            // Python thread could write the same buffer at the same time:
            // the race CPython's own `FileIO.readinto` has, and the
            // caller's to avoid (the bytes would be garbage, never memory
            // outside the buffer).
            unsafe { std::slice::from_raw_parts_mut(ptr as *mut u8, len) }
        };
        read(dst)
    });
    drop(buf);
    res.map_err(|e| io_err(py, &e))
}

/// An `io::Error` from a core reader as its Python exception.
pub fn io_err(py: Python<'_>, e: &std::io::Error) -> PyErr {
    match e
        .get_ref()
        .and_then(|x| x.downcast_ref::<shmfetch::Error>())
    {
        Some(inner) => to_py(py, inner.clone()),
        None if e.kind() == std::io::ErrorKind::InvalidInput => {
            PyValueError::new_err(e.to_string())
        }
        None => to_py(py, shmfetch::Error::io("read", e)),
    }
}

/// Fills `view` for a one-dimensional byte buffer of `len` bytes at `ptr`,
/// owned by `owner` (which the view keeps alive).
///
/// # Safety
/// `view` must be the valid, non-null `Py_buffer` CPython passed to
/// `__getbuffer__`; `ptr..ptr + len` must stay valid (and, when `writable`,
/// writable by Python) until the matching `__releasebuffer__`.
pub unsafe fn fill_view(
    view: *mut ffi::Py_buffer,
    flags: c_int,
    owner: Bound<'_, PyAny>,
    ptr: *mut u8,
    len: usize,
    writable: bool,
) {
    // SAFETY: the caller's contract: `view` is valid; the format is a
    // static C string, never freed; shape and strides point into the view.
    unsafe {
        (*view).obj = owner.into_ptr();
        (*view).buf = ptr.cast();
        (*view).len = len as ffi::Py_ssize_t;
        (*view).readonly = c_int::from(!writable);
        (*view).itemsize = 1;
        (*view).format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT {
            c"B".as_ptr().cast_mut()
        } else {
            std::ptr::null_mut()
        };
        (*view).ndim = 1;
        (*view).shape = if flags & ffi::PyBUF_ND == ffi::PyBUF_ND {
            &raw mut (*view).len
        } else {
            std::ptr::null_mut()
        };
        (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
            &raw mut (*view).itemsize
        } else {
            std::ptr::null_mut()
        };
        (*view).suboffsets = std::ptr::null_mut();
        (*view).internal = std::ptr::null_mut();
    }
}
