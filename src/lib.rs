//! # shmfetch
//!
//! Download one large object as fast as the storage allows: a coordinator
//! forks worker processes once, each fetches disjoint byte ranges (HTTP
//! `Range` GETs, or `pread` for local files) straight into POSIX shared
//! memory in `/dev/shm`.
//!
//! * [`ParallelReader::read_all`] fills one object-sized segment and hands it
//!   back without a copy ([`ParallelBuffer`] derefs to `&[u8]`).
//! * [`ParallelReader::create_iter`] streams the object in order through a
//!   ring of `workers` slots with a cross-process ready event per slot
//!   ([`Chunk`] derefs to the slot's memory); [`ParallelReader::stream`] is
//!   the same as an [`std::io::Read`].
//! * Sources ([`SourceSpec`]): AIStore (`ais://bucket/object` with
//!   `AIS_ENDPOINT`), any HTTP(S) server that honours `Range`, local files.
//!
//! ```
//! # fn main() -> shmfetch::Result<()> {
//! use shmfetch::{ParallelReader, SourceSpec, WorkerPool};
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("obj");
//! # std::fs::write(&path, vec![42u8; 1 << 20]).unwrap();
//! // One pool, reused by any number of readers (also at the same time).
//! let pool = WorkerPool::new(4)?;
//! let reader = ParallelReader::builder(SourceSpec::Local { path })
//!     .pool(pool.clone())
//!     .chunk_size(256 * 1024)
//!     .build()?;
//! let buf = reader.read_all()?;
//! assert!(buf.iter().all(|&b| b == 42));
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![deny(clippy::unwrap_used, clippy::expect_used)]

#[cfg(feature = "dcp")]
pub mod dcp;
pub mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod range;
pub mod reader;
pub mod shm;
pub mod source;
pub mod store;
#[cfg(feature = "test-server")]
pub mod testing;
pub mod worker;

pub use error::{Error, Result};
pub use range::ByteRange;
#[cfg(feature = "tokio")]
pub use reader::ChunkStream;
pub use reader::{
    Chunk, ChunkIter, ChunkReader, ParallelBuffer, ParallelReader, ParallelReaderBuilder,
};
pub use source::{ObjectMeta, ObjectSource, SourceOptions, SourceSpec};
pub use worker::{PoolConfig, WorkerPool};
