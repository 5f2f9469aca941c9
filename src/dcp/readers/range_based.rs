//! The range-based reader: one ranged request per read, through a buffer.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

use super::{DcpRead, FetchCounter, seek_target, to_io};
use crate::range::ByteRange;
use crate::source::retry::{RetryConfig, fetch_range};
use crate::source::sink::SliceSink;
use crate::source::{ObjectMeta, ObjectSource};

/// Reads one file with a ranged GET per read, in this process (no
/// workers). Reads smaller than the buffer fill it from the read position
/// (so later small reads nearby cost nothing); reads at least as large go
/// straight to the caller's buffer; a read that starts inside the buffer
/// takes what the buffer has and fetches only the rest.
pub struct RangeBasedReader {
    source: Box<dyn ObjectSource>,
    meta: ObjectMeta,
    retry: RetryConfig,
    buffer_size: u64,
    buf: Vec<u8>,
    buf_start: u64,
    pos: u64,
    counter: Arc<FetchCounter>,
}

impl std::fmt::Debug for RangeBasedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeBasedReader")
            .field("object", &self.source.name())
            .field("size", &self.meta.size)
            .field("buffer_size", &self.buffer_size)
            .field("pos", &self.pos)
            .finish()
    }
}

impl RangeBasedReader {
    /// A reader of `source` (described by `meta`) with a `buffer_size`
    /// buffer (`0`: none); fetches are added to `counter`.
    pub fn new(
        source: Box<dyn ObjectSource>,
        meta: ObjectMeta,
        retry: RetryConfig,
        buffer_size: u64,
        counter: Arc<FetchCounter>,
    ) -> RangeBasedReader {
        RangeBasedReader {
            source,
            meta,
            retry,
            buffer_size,
            buf: Vec::new(),
            buf_start: 0,
            pos: 0,
            counter,
        }
    }

    fn fetch(&self, start: u64, out: &mut [u8]) -> io::Result<()> {
        let range = ByteRange {
            start,
            end: start + out.len() as u64,
        };
        let (r, stats) = fetch_range(
            self.source.as_ref(),
            range,
            &mut SliceSink::new(out),
            &self.meta,
            &self.retry,
            &mut |b| crate::source::retry::warn_and_sleep(self.source.name(), b),
        );
        self.counter.add(stats.attempts as u64, range.len());
        r.map_err(to_io)
    }
}

impl Read for RangeBasedReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let size = self.meta.size;
        let want = (out.len() as u64).min(size.saturating_sub(self.pos)) as usize;
        let mut done = 0;
        while done < want {
            let pos = self.pos + done as u64;
            let buf_end = self.buf_start + self.buf.len() as u64;
            if pos >= self.buf_start && pos < buf_end {
                // Served (partly) from the buffer.
                let from = (pos - self.buf_start) as usize;
                let n = (want - done).min(self.buf.len() - from);
                out[done..done + n].copy_from_slice(&self.buf[from..from + n]);
                done += n;
            } else if (want - done) as u64 >= self.buffer_size {
                // Large: straight into the caller's buffer.
                self.fetch(pos, &mut out[done..want])?;
                done = want;
            } else {
                // Small: refill the buffer from here.
                let len = self.buffer_size.min(size - pos) as usize;
                let mut buf = std::mem::take(&mut self.buf);
                buf.resize(len, 0);
                let r = self.fetch(pos, &mut buf);
                self.buf = buf;
                self.buf_start = pos;
                if let Err(e) = r {
                    self.buf.clear();
                    return Err(e);
                }
            }
        }
        self.pos += want as u64;
        Ok(want)
    }
}

impl Seek for RangeBasedReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = seek_target(self.pos, to, Some(self.meta.size))?;
        Ok(self.pos)
    }
}

impl DcpRead for RangeBasedReader {
    fn name(&self) -> &'static str {
        "range_based"
    }
}
