//! [`ParallelReader`]: one object, fetched by the worker pool into shared
//! memory.
//!
//! * [`ParallelReader::read_all`] creates one segment of the object's size;
//!   the object is split into `chunk_size` ranges, each written in place by
//!   some worker; the returned [`ParallelBuffer`] derefs to the segment.
//!   Up to `max(4 × workers, 64)` ranges are queued or in flight, each in a *lane* of a small
//!   slot table (the record of which range is where, and whether it is
//!   done).
//! * [`ParallelReader::create_iter`] creates a ring of
//!   `min(workers, chunks)` slots of `chunk_size` bytes; chunk *k* goes to
//!   slot *k* mod slots; at most one range per slot is in flight; chunks are
//!   yielded in order as guards over the slot's memory, and a slot is reused
//!   once its guard is dropped. Memory stays `slots × chunk_size`.
//! * [`ParallelReader::stream`] wraps the iterator in [`std::io::Read`].

#[cfg(feature = "tokio")]
mod asynch;
mod buffer;
mod iter;
mod progress;

use std::path::PathBuf;
use std::sync::Arc;

#[cfg(feature = "tokio")]
pub use asynch::ChunkStream;
pub use buffer::ParallelBuffer;
pub use iter::{Chunk, ChunkIter, ChunkReader};

use crate::error::{Error, Result};
use crate::shm::DEFAULT_SHM_DIR;
use crate::source::retry::RetryConfig;
use crate::source::{HttpClient, HttpConfig, ObjectMeta, ObjectSource, SourceSpec};
use crate::worker::protocol::Open;
use crate::worker::{PoolConfig, WorkerPool};

/// Chunk size when neither the caller nor the server says: large enough that
/// per-request overhead is small, small enough that many workers share even
/// a modest object (the AIStore SDKs use the same).
pub const DEFAULT_CHUNK_SIZE: u64 = 8 << 20;

pub use crate::source::retry::DEFAULT_ATTEMPTS;

/// Largest chunk size accepted (one slot must fit in memory comfortably).
pub const MAX_CHUNK_SIZE: u64 = 1 << 32;

/// Smallest chunk size accepted: each range is one request (and one task
/// through the pool), so smaller chunks only add overhead; `--chunk-size 1`
/// once asked for a plan of 36 GiB.
pub const MIN_CHUNK_SIZE: u64 = 64 << 10;

/// Most ranges one download is split into. A larger object with an
/// explicit chunk size is refused with the smallest chunk size that
/// fits; with a chunk size taken from the server or the default, the chunk
/// grows until it fits.
pub const MAX_RANGES: u64 = 1 << 20;

/// Builds a [`ParallelReader`].
#[derive(Debug)]
pub struct ParallelReaderBuilder {
    source: SourceSpec,
    workers: Option<usize>,
    chunk_size: Option<u64>,
    retry: RetryConfig,
    http: HttpConfig,
    pool: Option<WorkerPool>,
    shm_dir: PathBuf,
    min_chunk_size: u64,
    #[cfg(feature = "test-support")]
    kill: Option<(crate::worker::KillPoint, u32)>,
}

impl ParallelReaderBuilder {
    /// Test hook (feature `test-support`): accepts chunk sizes below
    /// [`MIN_CHUNK_SIZE`] (down to 1 byte), so that small test objects
    /// still span many ranges.
    #[cfg(feature = "test-support")]
    pub fn allow_small_chunks(mut self) -> Self {
        self.min_chunk_size = 1;
        self
    }

    /// Test hook (feature `test-support`): in every download of this
    /// reader, the first `times` workers to reach `point` kill themselves
    /// there (`SIGKILL`).
    #[cfg(feature = "test-support")]
    pub fn kill_workers_at(mut self, point: crate::worker::KillPoint, times: u32) -> Self {
        self.kill = Some((point, times));
        self
    }

    /// Number of workers of the pool the reader creates (ignored when a pool
    /// is given). Default [`crate::worker::DEFAULT_WORKERS`].
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// Chunk size: explicit value, else the server's hint, else
    /// [`DEFAULT_CHUNK_SIZE`]. Without an explicit value, an object smaller
    /// than `workers` such chunks is shared among the workers instead
    /// (`size / workers`, at least 1 MiB), so a small object is not one
    /// range for one worker while the others wait. While other downloads
    /// have ranges queued or in flight on the pool, a `read_all` splits it
    /// only among the workers they leave (down to one range when each
    /// worker has a download of its own: many small objects at once are
    /// fastest one request each).
    pub fn chunk_size(mut self, bytes: u64) -> Self {
        self.chunk_size = Some(bytes);
        self
    }

    /// Attempts per range for retryable errors (≥ 1). Default
    /// [`DEFAULT_ATTEMPTS`]: no count limit, the retry policy's total time
    /// ([`RetryConfig::max_elapsed`]) decides.
    pub fn attempts(mut self, n: u32) -> Self {
        self.retry.attempts = n;
        self
    }

    /// The whole retry policy (attempts, backoff, total time). Default
    /// [`RetryConfig::default`]: retries for up to 2 minutes, backoff
    /// capped at 10 s.
    pub fn retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }

    /// Connect/read timeouts and redirects of the workers' HTTP clients
    /// (used when the reader forks its own pool; a shared pool keeps its
    /// own settings).
    pub fn http(mut self, http: HttpConfig) -> Self {
        self.http = http;
        self
    }

    /// Shares an existing pool instead of forking a new one.
    pub fn pool(mut self, pool: WorkerPool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Directory of the segments (a tmpfs). Default `/dev/shm`.
    pub fn shm_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.shm_dir = dir.into();
        self
    }

    /// AIStore only (no effect on other sources): read the ranges straight
    /// from the target that holds the object, found by AIStore's placement
    /// in the cluster map, instead of through the gateway and a redirect
    /// per request (the Python SDK's `get_reader(direct=True)`). A target
    /// that refuses (403 when the cluster requires proxy mediation, 404 on
    /// a stale map) makes the reads go through the gateway. Off by default.
    pub fn direct(mut self, on: bool) -> Self {
        if let SourceSpec::AiStore { direct, .. } = &mut self.source {
            *direct = on;
        }
        self
    }

    /// HEADs the object, validates the settings and starts (or joins) the
    /// worker pool.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a chunk size below [`MIN_CHUNK_SIZE`]
    /// or above [`MAX_CHUNK_SIZE`], one that splits the object into more
    /// than [`MAX_RANGES`] ranges, a zero worker count or attempts; the
    /// source's errors (not found, access denied, transport);
    /// [`Error::Pool`] when the workers cannot start.
    pub fn build(self) -> Result<ParallelReader> {
        if let Some(c) = self.chunk_size
            && c < self.min_chunk_size.max(1)
        {
            return Err(Error::InvalidConfig(format!(
                "chunk size {c} bytes is below the minimum of {} bytes ({} KiB): \
                 every chunk is one request; use a chunk size of 64KiB or more \
                 (the default is {} MiB)",
                self.min_chunk_size,
                self.min_chunk_size >> 10,
                DEFAULT_CHUNK_SIZE >> 20
            )));
        }
        if let Some(c) = self.chunk_size
            && c > MAX_CHUNK_SIZE
        {
            return Err(Error::InvalidConfig(format!(
                "chunk size {c} is larger than the maximum {MAX_CHUNK_SIZE}"
            )));
        }
        self.retry.validate()?;
        if let Some(w) = self.workers
            && (w == 0 || w > crate::worker::MAX_WORKERS)
        {
            return Err(Error::InvalidConfig(format!(
                "workers must be between 1 and {}, got {w}",
                crate::worker::MAX_WORKERS
            )));
        }
        // In AIStore's direct mode the HEAD, too, goes to the target.
        let head_source = match &self.source {
            SourceSpec::AiStore { direct: true, .. } => self.source.for_workers()?,
            _ => self.source.clone(),
        };
        let meta = if self.http == HttpConfig::default() {
            // One client per process for HEADs, so readers created in a
            // row reuse its connections. Workers never use it: each builds
            // its own after the fork.
            static HEAD_CLIENT: std::sync::OnceLock<HttpClient> = std::sync::OnceLock::new();
            let client = HEAD_CLIENT.get_or_init(HttpClient::default);
            let src = head_source.open(client)?;
            crate::source::retry::call(src.name(), &self.retry, || src.meta())?
        } else {
            let src = head_source.open(&HttpClient::new(&self.http))?;
            crate::source::retry::call(src.name(), &self.retry, || src.meta())?
        };
        let workers = match &self.pool {
            Some(p) => p.workers(),
            None => self.workers.unwrap_or(crate::worker::DEFAULT_WORKERS),
        };
        let chunking = chunk_size_for(
            meta.size,
            self.chunk_size,
            meta.chunk_hint
                .filter(|h| (self.min_chunk_size..=MAX_CHUNK_SIZE).contains(h)),
            workers,
        )?;
        let pool = match self.pool {
            Some(p) => p,
            None => WorkerPool::with_config(PoolConfig {
                workers,
                http: self.http.clone(),
                ..PoolConfig::default()
            })?,
        };
        tracing::debug!(object = %self.source.display_name(), size = meta.size, chunk_size = chunking.chunk, workers = pool.workers(), "reader ready");
        Ok(ParallelReader {
            inner: Arc::new(ReaderInner {
                source: self.source,
                meta,
                chunking,
                retry: self.retry,
                pool,
                shm_dir: self.shm_dir,
                #[cfg(feature = "test-support")]
                kill: self.kill,
            }),
        })
    }
}

/// Smallest chunk a small object is split into for its workers to share it
/// (see [`chunk_size_for`]): below this, a range's request costs more than
/// its bytes.
const SMALL_OBJECT_MIN_CHUNK: u64 = 1 << 20;

/// A range is cut for an idle worker only while at least twice this is
/// left of it (each half about this much): a new request costs a few
/// milliseconds (a redirect, a first byte), which a smaller piece would
/// not repay on a stream of ~100 MiB/s.
pub(crate) const MIN_CUT_PIECE: u64 = 1024 * 1024;

/// Where to cut a range being written for an idle worker, `left` bytes of
/// it still missing past the `got` in place: half of what is left, on a
/// whole [`crate::shm::CUT_UNIT`] from the range's start; `None` while
/// less than `2 × MIN_CUT_PIECE` is left (both `read_all`'s lanes and
/// `create_iter`'s ring cut this way).
pub(crate) fn cut_point(got: u64, left: u64) -> Option<u64> {
    (left >= 2 * MIN_CUT_PIECE).then(|| (got + left / 2).next_multiple_of(crate::shm::CUT_UNIT))
}

/// How a reader splits its object: `chunk` is [`ParallelReader::chunk_size`];
/// `small_of`, for an object split into shares because it is too small
/// to give every worker a whole chunk, the chunk it was shrunk from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chunking {
    chunk: u64,
    small_of: Option<u64>,
}

/// The chunk size for an object of `size` bytes read by `workers`: the
/// explicit one, which must not make more than [`MAX_RANGES`] ranges, else
/// the hint or the default, grown to a whole MiB multiple that does not.
/// An object too small to give every worker a whole chunk of that size is
/// shared among them instead (see [`small_object_share`]) — so a 4 MiB
/// object is 4 ranges of 1 MiB, not one range for one worker while the
/// others wait.
fn chunk_size_for(
    size: u64,
    explicit: Option<u64>,
    hint: Option<u64>,
    workers: usize,
) -> Result<Chunking> {
    let fewest = size.div_ceil(MAX_RANGES).max(1);
    if let Some(c) = explicit {
        let ranges = size.div_ceil(c);
        if ranges > MAX_RANGES {
            return Err(Error::InvalidConfig(format!(
                "chunk size {c} bytes would split the {size}-byte object into {ranges} ranges, \
                 more than the limit of {MAX_RANGES}; use a chunk size of at least {fewest} bytes"
            )));
        }
        return Ok(Chunking {
            chunk: c,
            small_of: None,
        });
    }
    let c = hint.unwrap_or(DEFAULT_CHUNK_SIZE);
    if let Some(share) = small_object_share(size, c, workers) {
        return Ok(Chunking {
            chunk: share,
            small_of: Some(c),
        });
    }
    let chunk = if c >= fewest {
        c
    } else {
        fewest
            .div_ceil(1 << 20)
            .saturating_mul(1 << 20)
            .min(MAX_CHUNK_SIZE)
    };
    Ok(Chunking {
        chunk,
        small_of: None,
    })
}

/// The share of each of `workers` in an object of `size` bytes too small
/// to give each a whole `chunk`: `size / workers` (whole 64 KiB), down to
/// [`SMALL_OBJECT_MIN_CHUNK`]; `None` when it is not that small (or there
/// is one worker).
fn small_object_share(size: u64, chunk: u64, workers: usize) -> Option<u64> {
    let workers = workers.max(1) as u64;
    (workers > 1 && size > SMALL_OBJECT_MIN_CHUNK && size < chunk.saturating_mul(workers)).then(
        || {
            let share = size.div_ceil(workers).div_ceil(64 << 10) * (64 << 10);
            share.max(SMALL_OBJECT_MIN_CHUNK).min(chunk)
        },
    )
}

/// Reads one object in parallel into shared memory.
///
/// ```
/// # fn main() -> shmfetch::Result<()> {
/// use shmfetch::{ParallelReader, SourceSpec};
/// # let dir = tempfile::tempdir().unwrap();
/// # let path = dir.path().join("obj");
/// # std::fs::write(&path, (0..100_000u32).map(|i| i as u8).collect::<Vec<_>>()).unwrap();
/// let reader = ParallelReader::builder(SourceSpec::Local { path })
///     .workers(4)
///     .chunk_size(64 * 1024)
///     .build()?;
///
/// // Everything at once, in one shared segment (no copy):
/// let buf = reader.read_all()?;
/// assert_eq!(buf.len(), 100_000);
/// assert_eq!(buf[1000], (1000u32 % 256) as u8);
///
/// // Or streamed in order through a ring of `workers` slots:
/// let mut total = 0;
/// for chunk in reader.create_iter(0)? {
///     let chunk = chunk?;
///     assert_eq!(chunk[0], (chunk.offset() % 256) as u8);
///     total += chunk.len();
/// }
/// assert_eq!(total, 100_000);
/// # Ok(())
/// # }
/// ```
///
/// Cheap to clone (the clones share one HEAD's answer and one pool), `Send`
/// and `Sync`: iterators and streams hold their own clone, so they can move
/// into another thread or task.
#[derive(Debug, Clone)]
pub struct ParallelReader {
    inner: Arc<ReaderInner>,
}

#[derive(Debug)]
struct ReaderInner {
    source: SourceSpec,
    meta: ObjectMeta,
    chunking: Chunking,
    retry: RetryConfig,
    pool: WorkerPool,
    shm_dir: PathBuf,
    #[cfg(feature = "test-support")]
    kill: Option<(crate::worker::KillPoint, u32)>,
}

impl ParallelReader {
    /// Starts building a reader of `source`.
    pub fn builder(source: SourceSpec) -> ParallelReaderBuilder {
        ParallelReaderBuilder {
            source,
            workers: None,
            chunk_size: None,
            retry: RetryConfig::default(),
            http: HttpConfig::default(),
            pool: None,
            shm_dir: PathBuf::from(DEFAULT_SHM_DIR),
            min_chunk_size: MIN_CHUNK_SIZE,
            #[cfg(feature = "test-support")]
            kill: None,
        }
    }

    /// What the HEAD said.
    pub fn meta(&self) -> &ObjectMeta {
        &self.inner.meta
    }

    /// Object size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.meta.size
    }

    /// The chunk size in use (for an object split among the workers
    /// because it is small, while the pool serves no other download; see
    /// [`ParallelReaderBuilder::chunk_size`]).
    pub fn chunk_size(&self) -> u64 {
        self.inner.chunking.chunk
    }

    /// The chunk size for a `read_all` starting now: a small object's
    /// share among the workers the pool's other downloads leave it
    /// ([`WorkerPool::share`]): one range when every worker has a download
    /// of its own, since splitting it would only add requests.
    pub(crate) fn chunk_size_now(&self) -> u64 {
        let Chunking { chunk, small_of } = self.inner.chunking;
        match small_of {
            Some(whole) => {
                small_object_share(self.size(), whole, self.pool().share(1)).unwrap_or(whole)
            }
            None => chunk,
        }
    }

    /// The pool doing the work.
    pub fn pool(&self) -> &WorkerPool {
        &self.inner.pool
    }

    /// The object.
    pub fn source(&self) -> &SourceSpec {
        &self.inner.source
    }

    pub(crate) fn retry_config(&self) -> RetryConfig {
        self.inner.retry
    }

    pub(crate) fn shm_dir(&self) -> &std::path::Path {
        &self.inner.shm_dir
    }

    /// Registers a download of this object with the pool: its slot table
    /// and, for `read_all`, its data segment.
    pub(crate) fn open_download(
        &self,
        table: crate::shm::SlotTable,
        data: Option<&str>,
    ) -> Result<crate::worker::pool::DownloadHandle> {
        let open = Open {
            download: 0, // the pool assigns it
            source: self.inner.source.for_workers()?,
            expected: self.inner.meta.clone(),
            retry: self.inner.retry,
            shm_dir: self.inner.shm_dir.clone(),
            table: table.name().to_string(),
            data: data.map(str::to_string),
            addrs: Vec::new(), // resolved by WorkerPool::open_download
            upload: None,
            #[cfg(feature = "test-support")]
            kill: self.inner.kill.map(|(p, _)| p),
        };
        let dl = self.inner.pool.open_download(open, table)?;
        #[cfg(feature = "test-support")]
        if let Some((_, n)) = self.inner.kill {
            dl.arm_kills(n);
        }
        Ok(dl)
    }

    /// Opens the source in this process (for single-stream use).
    ///
    /// # Errors
    /// As [`SourceSpec::open`].
    pub fn open_source(&self) -> Result<Box<dyn ObjectSource>> {
        self.inner.source.open(&HttpClient::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn an_explicit_chunk_size_is_kept_whatever_the_object() {
        assert_eq!(
            chunk_size_for(4 * MIB, Some(8 * MIB), None, 8)
                .unwrap()
                .chunk,
            8 * MIB
        );
        assert_eq!(chunk_size_for(10, Some(MIB), None, 8).unwrap().chunk, MIB);
    }

    #[test]
    fn a_small_object_is_shared_by_the_workers_down_to_the_floor() {
        // 64 MiB over 8 workers: one default chunk each.
        assert_eq!(
            chunk_size_for(64 * MIB, None, None, 8).unwrap().chunk,
            8 * MIB
        );
        assert_eq!(
            chunk_size_for(32 * MIB, None, None, 8).unwrap().chunk,
            4 * MIB
        );
        assert_eq!(chunk_size_for(8 * MIB, None, None, 8).unwrap().chunk, MIB);
        assert_eq!(chunk_size_for(4 * MIB, None, None, 8).unwrap().chunk, MIB);
        // One range either way: the default stays.
        assert_eq!(chunk_size_for(100, None, None, 8).unwrap().chunk, 8 * MIB);
        assert_eq!(chunk_size_for(MIB, None, None, 8).unwrap().chunk, 8 * MIB);
        // Whole 64 KiB: 10 MiB + 1 over 4 workers.
        let c = chunk_size_for(10 * MIB + 1, None, None, 4).unwrap().chunk;
        assert_eq!(c % (64 << 10), 0);
        assert!(c * 4 > 10 * MIB && (c - (64 << 10)) * 4 <= 10 * MIB);
        // The server's hint is an upper bound too.
        assert_eq!(
            chunk_size_for(4 * MIB, None, Some(2 * MIB), 8)
                .unwrap()
                .chunk,
            MIB
        );
        assert_eq!(
            chunk_size_for(4 * MIB, None, Some(512 << 10), 8)
                .unwrap()
                .chunk,
            512 << 10
        );
        // One worker: nobody to share with.
        assert_eq!(
            chunk_size_for(4 * MIB, None, None, 1).unwrap().chunk,
            8 * MIB
        );
    }

    #[test]
    fn a_huge_object_grows_the_default_chunk_to_fit_the_range_limit() {
        let size = 16 * MIB * MAX_RANGES;
        let c = chunk_size_for(size, None, None, 8).unwrap().chunk;
        assert!(size.div_ceil(c) <= MAX_RANGES);
        assert!(chunk_size_for(size, Some(MIB), None, 8).is_err());
    }
}
