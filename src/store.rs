//! The checkpoint file system over local files, AIStore and S3, and
//! uploads through the worker pool.
//!
//! * [`Upload`] — a write stream whose parts the workers send in parallel
//!   from shared memory (S3 and AIStore multipart uploads, `pwrite` for
//!   local files); aborted unless finished.
//! * [`CheckpointFs`] (feature `dcp`) — the operations a DCP save or load
//!   runs on, with the semantics of the S3 connector for PyTorch's
//!   `S3FileSystem`: `create_stream` (read with a reader kind, write with
//!   an [`Upload`]), `exists`, `rm_file`, `rename`, `mkdir`, path joins.

#[cfg(feature = "dcp")]
mod fs;
pub mod upload;

#[cfg(feature = "dcp")]
pub use fs::{CheckpointFs, FsStream, StreamMode};
pub use upload::{
    AbortHandle, DEFAULT_PART_SIZE, MAX_PART_SIZE, MAX_PARTS, MIN_S3_PART_SIZE, Upload,
    UploadOptions, UploadSummary, put_single,
};
