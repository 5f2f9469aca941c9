//! PyTorch Distributed Checkpoint (DCP) support.
//!
//! A DCP load needs only some byte ranges of each `.distcp` file: one per
//! storage item it loads. [`range_group`] turns the sorted ranges of one
//! file into [`RangeGroup`]s — runs of items close enough (at most
//! `max_gap_size` apart) to fetch with one request — like the DCP-optimized
//! reader of the S3 connector for PyTorch.
//!
//! Status: the range planning is here; reading `.metadata`, the reader
//! kinds and fetching groups through the worker pool are the next steps
//! (issue "DCP on top").

pub mod pickle;
pub mod range_group;

pub use range_group::{DEFAULT_MAX_GAP_SIZE, ItemRange, MaxGap, RangeGroup, coalesce};
