//! The sequential reader: the whole file, fetched once by the worker pool.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

use super::{DcpRead, FetchCounter, seek_target, to_io};
use crate::reader::{ParallelBuffer, ParallelReader};

/// Reads one file by fetching all of it (in parallel, into shared memory)
/// on the first read; any access pattern works after that, `SeekFrom::End`
/// included.
#[derive(Debug)]
pub struct SequentialReader {
    reader: ParallelReader,
    data: Option<ParallelBuffer>,
    pos: u64,
    counter: Arc<FetchCounter>,
}

impl SequentialReader {
    /// A reader of `reader`'s object; fetches are added to `counter`.
    pub fn new(reader: ParallelReader, counter: Arc<FetchCounter>) -> SequentialReader {
        SequentialReader {
            reader,
            data: None,
            pos: 0,
            counter,
        }
    }

    fn data(&mut self) -> io::Result<&ParallelBuffer> {
        if self.data.is_none() {
            let buf = self.reader.read_all().map_err(to_io)?;
            self.counter.add(buf.ranges(), self.reader.size());
            self.data = Some(buf);
        }
        self.data
            .as_ref()
            .ok_or_else(|| io::Error::other("buffer missing after fetch"))
    }
}

impl Read for SequentialReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.pos >= self.reader.size() {
            return Ok(0);
        }
        let pos = self.pos as usize;
        let data = self.data()?;
        let n = buf.len().min(data.len() - pos);
        buf[..n].copy_from_slice(&data[pos..pos + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for SequentialReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = seek_target(self.pos, to, Some(self.reader.size()))?;
        Ok(self.pos)
    }
}

impl DcpRead for SequentialReader {
    fn name(&self) -> &'static str {
        "sequential"
    }
}
