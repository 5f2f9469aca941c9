//! The async facade (feature `tokio`): [`ParallelReader::read_all_async`]
//! and [`ChunkStream`], an ordered `Stream` of chunks.
//!
//! Both drive the same state machines as the blocking calls and sleep on
//! the same doorbell: its eventfd is registered with tokio's reactor
//! (`AsyncFd`), so a download in flight parks no runtime thread — 64 of
//! them run on a current-thread runtime.

use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::io::unix::AsyncFd;

use crate::error::{Error, Result};
use crate::range::ByteRange;
use crate::reader::buffer::ReadAll;
use crate::reader::{Chunk, ChunkIter, ParallelBuffer, ParallelReader};
use crate::shm::Doorbell;

fn register(d: &Doorbell) -> Result<AsyncFd<OwnedFd>> {
    d.register_async()
}

impl ParallelReader {
    /// [`ParallelReader::read_all`] for async code: awaits the workers
    /// without blocking a runtime thread.
    ///
    /// ```
    /// # fn main() -> shmfetch::Result<()> {
    /// # use shmfetch::{ParallelReader, SourceSpec};
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let path = dir.path().join("obj");
    /// # std::fs::write(&path, vec![5u8; 100_000]).unwrap();
    /// let reader = ParallelReader::builder(SourceSpec::Local { path }).workers(2).build()?;
    /// let rt = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
    /// let buf = rt.block_on(reader.read_all_async())?;
    /// assert_eq!(&buf[..], &vec![5u8; 100_000][..]);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// As [`ParallelReader::read_all`].
    pub async fn read_all_async(&self) -> Result<ParallelBuffer> {
        self.read_range_async(ByteRange::new(0, self.size())?).await
    }

    /// [`ParallelReader::read_range`] for async code.
    ///
    /// # Errors
    /// As [`ParallelReader::read_range`].
    pub async fn read_range_async(&self, range: ByteRange) -> Result<ParallelBuffer> {
        self.check_range(range)?;
        let mut job = ReadAll::start(self, range)?;
        let afd = match job.doorbell() {
            Some(d) => Some(register(d)?),
            None => None,
        };
        loop {
            if let Some(done) = job.advance(&mut |_| {})? {
                return Ok(done);
            }
            let Some(afd) = &afd else {
                return Err(Error::Pool("download without a doorbell".into()));
            };
            let mut guard = afd
                .readable()
                .await
                .map_err(|e| Error::io("waiting for the doorbell", &e))?;
            // Clear first, then drain, then look: a ring after the clear is
            // a new edge; one before it is seen by `advance`.
            guard.clear_ready();
            if let Some(d) = job.doorbell() {
                d.drain();
            }
        }
    }

    /// The object from `offset` as an ordered [`Stream`] of [`Chunk`]s,
    /// through the same ring as [`ParallelReader::create_iter`]. Owned: it
    /// can be moved into a spawned task.
    ///
    /// # Errors
    /// As [`ParallelReader::create_iter`].
    pub fn chunk_stream(&self, offset: u64) -> Result<ChunkStream> {
        Ok(ChunkStream {
            iter: self.create_iter(offset)?,
            afd: None,
        })
    }
}

/// An ordered stream of the object's chunks (feature `tokio`). Created by
/// [`ParallelReader::chunk_stream`]; each chunk is its ring slot, freed when
/// dropped.
#[derive(Debug)]
pub struct ChunkStream {
    iter: ChunkIter,
    afd: Option<AsyncFd<OwnedFd>>,
}

impl Stream for ChunkStream {
    type Item = Result<Chunk>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Chunk>>> {
        let this = self.get_mut();
        loop {
            match this.iter.try_next() {
                None => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(Some(c))) => return Poll::Ready(Some(Ok(c))),
                Some(Ok(None)) => {}
            }
            if this.afd.is_none() {
                // Registered on first use, inside the runtime.
                let Some(d) = this.iter.doorbell() else {
                    return Poll::Ready(None);
                };
                match register(d) {
                    Ok(a) => this.afd = Some(a),
                    Err(e) => return Poll::Ready(Some(Err(e))),
                }
            }
            let Some(afd) = &this.afd else {
                return Poll::Ready(None);
            };
            match afd.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Some(Err(Error::io("waiting for the doorbell", &e))));
                }
                Poll::Ready(Ok(mut guard)) => {
                    guard.clear_ready();
                    if let Some(d) = this.iter.doorbell() {
                        d.drain();
                    }
                }
            }
        }
    }
}
