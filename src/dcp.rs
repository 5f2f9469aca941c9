//! PyTorch Distributed Checkpoint (DCP) support, without Python.
//!
//! - [`metadata`]: the `.metadata` pickle, decoded safely (`pickle`) into
//!   the state dict (dtypes, shapes, chunks) and the storage items (file,
//!   offset, length).
//! - [`range_group`]: coalescing one file's item ranges into groups fetched
//!   with one request each (`max_gap_size`).
//! - [`readers`]: the three reader kinds behind `Read` + `Seek`
//!   (sequential, range-based, dcp-optimized).
//! - [`checkpoint`]: a checkpoint directory (AIStore, HTTP, local), the
//!   storage reader that injects the load plan's ranges, and loading full
//!   tensors.
//! - [`item`] and [`layout`]: decoding a storage item (a `torch.save` zip)
//!   into C-order bytes and assembling chunks.
//! - [`export`]: writing full tensors to a `.safetensors` file as they
//!   arrive.
//! - [`prefix`]: the S3 connector's prefix strategies, where a writer puts
//!   each rank's files.

pub mod checkpoint;
pub mod dtype;
pub mod export;
pub mod item;
pub mod layout;
pub mod metadata;
pub(crate) mod pickle;
pub mod prefix;
pub mod range_group;
pub mod readers;

pub use checkpoint::{Checkpoint, METADATA_FILE, StorageReader, load_tensors, plan};
pub use dtype::DType;
pub use export::{ExportReport, SafetensorsWriter, export_safetensors};
pub use metadata::{ChunkMeta, Entry, Metadata, StorageItem, TensorMeta};
pub use prefix::PrefixStrategy;
pub use range_group::{DEFAULT_MAX_GAP_SIZE, ItemRange, MaxGap, RangeGroup, coalesce};
pub use readers::{DEFAULT_BUFFER_SIZE, DcpRead, FetchCounter, ReaderKind};
