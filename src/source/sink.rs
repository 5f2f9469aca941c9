//! Where a range's bytes go while they arrive.
//!
//! [`SliceSink`] fills a caller's buffer (a ring slot, a `Vec`).
//! [`FileSink`] writes into the shared-memory segment's file with `pwrite`
//! through a small, cache-resident scratch buffer. For `read_all` that is
//! cheaper than writing through a mapping: tmpfs leaves reserved pages
//! un-zeroed until first use, a store through a mapping makes the kernel
//! zero each page first (a third of all CPU time in a profile of
//! `read-all -w 8`), while a whole-page `pwrite` marks it up to date without
//! zeroing — and the worker needs no mapping, hence no page faults. (A
//! recycled segment's pages exist, so there workers store into them
//! through a mapping with a [`SliceSink`]: one copy instead of two.)

use std::os::fd::BorrowedFd;
use std::path::Path;

use crate::error::{Error, Result};

/// Receives the bytes of one range, in order.
pub trait RangeSink {
    /// Bytes of the range already delivered.
    fn filled(&self) -> usize;
    /// Total bytes the range holds.
    fn capacity(&self) -> usize;
    /// Space for the next bytes, at most `max` long (never empty while
    /// `filled() < capacity()`).
    fn next_buf(&mut self, max: usize) -> &mut [u8];
    /// The first `n` bytes of the last [`RangeSink::next_buf`] are data.
    ///
    /// # Errors
    /// Writing them out failed.
    fn commit(&mut self, n: usize) -> Result<()>;
    /// Bytes still missing.
    fn remaining(&self) -> usize {
        self.capacity() - self.filled()
    }
    /// Whether the range was cut short while it arrived: the sink holds
    /// every byte it still needs although [`RangeSink::remaining`] is not
    /// 0 (a range whose rest went to an idle worker). Its
    /// [`RangeSink::commit`] then fails, to stop the source reading on,
    /// and that error is no failure of the range. Never for a sink that
    /// is not cut (the default).
    fn cut_short(&self) -> bool {
        false
    }
}

/// Fills a buffer of exactly the range's length.
#[derive(Debug)]
pub struct SliceSink<'a> {
    buf: &'a mut [u8],
    filled: usize,
}

impl<'a> SliceSink<'a> {
    /// A sink over `buf`.
    pub fn new(buf: &'a mut [u8]) -> SliceSink<'a> {
        SliceSink { buf, filled: 0 }
    }
}

impl RangeSink for SliceSink<'_> {
    fn filled(&self) -> usize {
        self.filled
    }
    fn capacity(&self) -> usize {
        self.buf.len()
    }
    fn next_buf(&mut self, max: usize) -> &mut [u8] {
        let end = self.filled + max.min(self.buf.len() - self.filled);
        &mut self.buf[self.filled..end]
    }
    fn commit(&mut self, n: usize) -> Result<()> {
        self.filled = (self.filled + n).min(self.buf.len());
        Ok(())
    }
}

/// Scratch size of a [`FileSink`]: fits in L2, so the copy into it and the
/// `pwrite` out of it stay in cache.
pub const FILE_SINK_SCRATCH: usize = 256 * 1024;

/// Writes the range at `offset` of a file (the segment) with `pwrite`.
/// A write that finds no room is [`Error::ShmNoSpace`].
/// A write that finds no room is [`Error::ShmNoSpace`].
#[derive(Debug)]
pub struct FileSink<'a> {
    fd: BorrowedFd<'a>,
    offset: u64,
    len: usize,
    filled: usize,
    scratch: &'a mut Vec<u8>,
    dir: &'a Path,
}

impl<'a> FileSink<'a> {
    /// A sink for `len` bytes at `offset` of `fd` (a segment in `dir`),
    /// staging through `scratch`.
    pub fn new(
        fd: BorrowedFd<'a>,
        offset: u64,
        len: usize,
        scratch: &'a mut Vec<u8>,
        dir: &'a Path,
    ) -> FileSink<'a> {
        if scratch.len() < FILE_SINK_SCRATCH {
            scratch.resize(FILE_SINK_SCRATCH, 0);
        }
        FileSink {
            fd,
            offset,
            len,
            filled: 0,
            scratch,
            dir,
        }
    }
}

impl RangeSink for FileSink<'_> {
    fn filled(&self) -> usize {
        self.filled
    }
    fn capacity(&self) -> usize {
        self.len
    }
    fn next_buf(&mut self, max: usize) -> &mut [u8] {
        let n = max.min(self.len - self.filled).min(self.scratch.len());
        &mut self.scratch[..n]
    }
    fn commit(&mut self, n: usize) -> Result<()> {
        let mut done = 0;
        while done < n {
            let at = self.offset + (self.filled + done) as u64;
            let r = nix::sys::uio::pwrite(self.fd, &self.scratch[done..n], at as libc::off_t);
            let written = match r {
                Ok(w) => w,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::ENOSPC) => {
                    let size = nix::sys::stat::fstat(self.fd)
                        .map(|s| s.st_size as u64)
                        .unwrap_or(0);
                    let free = nix::sys::statvfs::statvfs(self.dir)
                        .map(|s| s.blocks_available() * s.fragment_size())
                        .unwrap_or(0);
                    return Err(Error::ShmNoSpace {
                        dir: self.dir.display().to_string(),
                        needed: size,
                        free,
                    });
                }
                Err(e) => {
                    return Err(Error::io(
                        format!("writing {} bytes at {at} of the segment", n - done),
                        &std::io::Error::from(e),
                    ));
                }
            };
            done += written;
        }
        self.filled += n;
        Ok(())
    }
}
