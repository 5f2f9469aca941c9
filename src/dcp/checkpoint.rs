//! A checkpoint directory, its storage reader (range injection) and loading
//! full tensors.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use super::item::{ItemView, read_tensor_item};
use super::layout::place_chunk;
use super::metadata::{Entry, Metadata, StorageItem, TensorMeta};
use super::range_group::ItemRange;
use super::readers::{DcpRead, FetchCounter, ReaderKind, SequentialReader, check_within, from_io};
use crate::error::{Error, Result};
use crate::reader::ParallelReader;
use crate::source::retry::RetryConfig;
use crate::source::{SourceOptions, SourceSpec};
use crate::worker::WorkerPool;

/// Name of the metadata file in a checkpoint directory.
pub const METADATA_FILE: &str = ".metadata";

#[derive(Debug, Clone)]
enum Base {
    Local(PathBuf),
    /// `ais://bucket/prefix/` or `http(s)://…/`, ending in `/`.
    Url(String),
}

/// A checkpoint directory: `ais://bucket/prefix/`, an `http(s)://` URL
/// ending in `/`, or a local directory. Files are fetched through one
/// worker pool; every fetch is counted in [`Checkpoint::counter`].
///
/// ```no_run
/// # fn main() -> shmfetch::Result<()> {
/// use shmfetch::WorkerPool;
/// use shmfetch::dcp::{Checkpoint, ReaderKind, StorageReader};
/// let ckpt = Checkpoint::open("ais://ckpts/run-7/step-1000/", WorkerPool::new(8)?)?;
/// let md = ckpt.metadata()?;
/// // Load two tensors, fetching only their byte ranges:
/// let only = ["model.embed.weight".to_string(), "model.norm.weight".to_string()];
/// let plan = shmfetch::dcp::plan(&md, &only)?;
/// let storage = StorageReader::new(&ckpt, ReaderKind::dcp_optimized(32 << 20)?, &plan);
/// shmfetch::dcp::load_tensors(&storage, &md, &plan, &mut |fqn, meta, bytes| {
///     println!("{fqn}: {} {:?}, {} bytes", meta.dtype, meta.size, bytes.len());
///     Ok(())
/// })?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Checkpoint {
    location: String,
    base: Base,
    opts: SourceOptions,
    pool: WorkerPool,
    chunk_size: Option<u64>,
    retry: RetryConfig,
    counter: Arc<FetchCounter>,
}

impl Checkpoint {
    /// A checkpoint at `location`, with the AIStore endpoint and token from
    /// the environment.
    ///
    /// # Errors
    /// [`Error::InvalidSource`] for a location that is not a directory.
    pub fn open(location: &str, pool: WorkerPool) -> Result<Checkpoint> {
        Checkpoint::open_with(location, SourceOptions::from_env()?, pool)
    }

    /// [`Checkpoint::open`] with explicit AIStore options.
    ///
    /// # Errors
    /// As [`Checkpoint::open`].
    pub fn open_with(location: &str, opts: SourceOptions, pool: WorkerPool) -> Result<Checkpoint> {
        let bad = |reason: &str| Error::InvalidSource {
            url: location.to_string(),
            reason: reason.to_string(),
        };
        let base = match location.split_once("://") {
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("file") => {
                let u = url::Url::parse(location).map_err(|e| bad(&e.to_string()))?;
                Base::Local(u.to_file_path().map_err(|_| bad("not a local path"))?)
            }
            Some((scheme, _)) => {
                let http =
                    scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
                if http && !location.ends_with('/') {
                    return Err(bad(
                        "a checkpoint URL names a directory: end it with '/' (the files are URL + .metadata, URL + __0_0.distcp, ...)",
                    ));
                }
                // ais://bucket and ais://bucket/prefix name directories too.
                match location.ends_with('/') {
                    true => Base::Url(location.to_string()),
                    false => Base::Url(format!("{location}/")),
                }
            }
            None => {
                let p = PathBuf::from(location);
                if location.is_empty() {
                    return Err(bad("empty checkpoint location"));
                }
                if p.exists() && !p.is_dir() {
                    return Err(bad("not a directory"));
                }
                Base::Local(p)
            }
        };
        let ckpt = Checkpoint {
            location: location.to_string(),
            base,
            opts,
            pool,
            chunk_size: None,
            retry: RetryConfig::default(),
            counter: FetchCounter::new(),
        };
        ckpt.spec(METADATA_FILE)?; // scheme, bucket and endpoint checked now
        Ok(ckpt)
    }

    /// Sets the chunk size of the workers' range requests (default: the
    /// server's hint, else 8 MiB).
    pub fn with_chunk_size(mut self, bytes: u64) -> Checkpoint {
        self.chunk_size = Some(bytes);
        self
    }

    /// Sets the retry policy for every range.
    pub fn with_retry(mut self, retry: RetryConfig) -> Checkpoint {
        self.retry = retry;
        self
    }

    /// The location as given.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Requests and bytes fetched so far, by every reader of this checkpoint.
    pub fn counter(&self) -> &Arc<FetchCounter> {
        &self.counter
    }

    /// The worker pool.
    pub fn pool(&self) -> &WorkerPool {
        &self.pool
    }

    /// The source of the file `rel` (relative to the checkpoint).
    ///
    /// # Errors
    /// As [`SourceSpec::parse_with`].
    pub fn spec(&self, rel: &str) -> Result<SourceSpec> {
        match &self.base {
            Base::Local(dir) => Ok(SourceSpec::Local {
                path: dir.join(rel),
            }),
            Base::Url(base) => SourceSpec::parse_with(&format!("{base}{rel}"), &self.opts),
        }
    }

    /// HEADs `rel` and makes a parallel reader of it on the pool.
    ///
    /// # Errors
    /// The source's errors (not found, access, transport).
    pub fn parallel_reader(&self, rel: &str) -> Result<ParallelReader> {
        let mut b = ParallelReader::builder(self.spec(rel)?)
            .pool(self.pool.clone())
            .retry(self.retry);
        if let Some(c) = self.chunk_size {
            b = b.chunk_size(c);
        }
        b.build()
    }

    /// Reads and parses `.metadata` (with the sequential reader).
    ///
    /// # Errors
    /// [`Error::Checkpoint`] when there is no `.metadata` (not a DCP
    /// checkpoint directory) or it is malformed; [`Error::Pickle`]; fetch
    /// errors.
    pub fn metadata(&self) -> Result<Metadata> {
        let reader = self.parallel_reader(METADATA_FILE).map_err(|e| match e {
            Error::ObjectNotFound { object, message } => Error::checkpoint(
                &self.location,
                format!(
                    "{object} not found ({message}): is this a DCP checkpoint directory (dcp.save writes .metadata next to the __R_N.distcp files)?"
                ),
            ),
            e => e,
        })?;
        let mut r = SequentialReader::new(reader, self.counter.clone());
        let mut data = Vec::new();
        r.read_to_end(&mut data)
            .map_err(|e| from_io(&e, "reading .metadata"))?;
        Metadata::parse_file(&data, &self.file_name(METADATA_FILE))
    }

    /// The path or URL of the file `rel`, for messages.
    fn file_name(&self, rel: &str) -> String {
        match &self.base {
            Base::Local(dir) => dir.join(rel).display().to_string(),
            Base::Url(base) => format!("{base}{rel}"),
        }
    }
}

/// Opens data files with one reader kind, handing the dcp-optimized reader
/// the ranges of the load plan (like the S3 connector's storage reader:
/// items sorted by file and offset).
#[derive(Debug)]
pub struct StorageReader<'a> {
    ckpt: &'a Checkpoint,
    kind: ReaderKind,
    ranges: BTreeMap<String, Vec<ItemRange>>,
}

impl<'a> StorageReader<'a> {
    /// A storage reader of `ckpt` with `kind`, prepared for `plan`.
    pub fn new(ckpt: &'a Checkpoint, kind: ReaderKind, plan: &[&StorageItem]) -> StorageReader<'a> {
        let mut ranges: BTreeMap<String, Vec<ItemRange>> = BTreeMap::new();
        for it in plan {
            ranges
                .entry(it.relative_path.clone())
                .or_default()
                .push(ItemRange {
                    start: it.offset,
                    end: it.offset + it.length,
                });
        }
        for v in ranges.values_mut() {
            v.sort();
            v.dedup();
        }
        StorageReader { ckpt, kind, ranges }
    }

    /// The kind in use.
    pub fn kind(&self) -> ReaderKind {
        self.kind
    }

    /// The planned ranges of each file, sorted.
    pub fn ranges(&self) -> &BTreeMap<String, Vec<ItemRange>> {
        &self.ranges
    }

    /// Opens the data file `rel` with the kind's reader.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the dcp-optimized reader is asked for a
    /// file the plan has no items in; [`Error::Checkpoint`] when a planned
    /// item lies beyond the end of the file; the source's errors.
    pub fn open(&self, rel: &str) -> Result<Box<dyn DcpRead>> {
        let planned = self.ranges.get(rel).map(Vec::as_slice).unwrap_or(&[]);
        if planned.is_empty() && matches!(self.kind, ReaderKind::DcpOptimized { .. }) {
            return Err(Error::InvalidConfig(format!(
                "the dcp_optimized reader has no ranges for {rel}: it reads only the items of the load plan; \
                 add the items of this file to the plan, or read it with the sequential reader"
            )));
        }
        let reader = self.ckpt.parallel_reader(rel)?;
        check_within(&reader.source().display_name(), planned, reader.size())?;
        super::readers::open_with_kind(self.kind, reader, planned, self.ckpt.counter.clone())
    }
}

/// The storage items to load for the tensor FQNs `only` (every tensor when
/// `only` is empty), sorted by file and offset. Bytes items are not
/// included.
///
/// # Errors
/// [`Error::InvalidConfig`] naming an FQN the checkpoint does not have, or
/// one that is a bytes item.
pub fn plan<'m>(md: &'m Metadata, only: &[String]) -> Result<Vec<&'m StorageItem>> {
    for f in only {
        match md.state_dict.get(f) {
            None => {
                let close: Vec<&str> = md
                    .state_dict
                    .keys()
                    .filter(|k| k.contains(f.as_str()) || f.contains(k.as_str()))
                    .map(String::as_str)
                    .take(5)
                    .collect();
                return Err(Error::InvalidConfig(format!(
                    "the checkpoint has no FQN {f:?}{}; `shmfetch dcp ls` lists them",
                    if close.is_empty() {
                        String::new()
                    } else {
                        format!(" (similar: {})", close.join(", "))
                    }
                )));
            }
            Some(Entry::Bytes) => {
                return Err(Error::InvalidConfig(format!(
                    "{f:?} is a bytes item, not a tensor; fetch it with `shmfetch dcp get`"
                )));
            }
            Some(Entry::Tensor(_)) => {}
        }
    }
    let mut items: Vec<&StorageItem> = md
        .storage
        .iter()
        .filter(|s| matches!(md.state_dict.get(&s.fqn), Some(Entry::Tensor(_))))
        .filter(|s| only.is_empty() || only.contains(&s.fqn))
        .collect();
    items.sort_by(|a, b| (&a.relative_path, a.offset).cmp(&(&b.relative_path, b.offset)));
    Ok(items)
}

/// Called by [`load_tensors`] with each full tensor: FQN, metadata, C-order bytes.
pub type OnTensor<'a> = dyn FnMut(&str, &TensorMeta, Vec<u8>) -> Result<()> + 'a;

/// Loads the tensors of `items` (from [`plan`]) through `storage`, file by
/// file in offset order, and calls `on_tensor` with each full tensor's
/// C-order bytes as soon as all its planned chunks are in.
///
/// # Errors
/// Fetch errors, [`Error::Checkpoint`] for an item that does not decode,
/// [`Error::UnsupportedAccess`] from the reader, and `on_tensor`'s errors.
pub fn load_tensors(
    storage: &StorageReader<'_>,
    md: &Metadata,
    items: &[&StorageItem],
    on_tensor: &mut OnTensor<'_>,
) -> Result<()> {
    let mut by_file: BTreeMap<&str, Vec<&StorageItem>> = BTreeMap::new();
    let mut pending: HashMap<&str, (usize, Option<Vec<u8>>)> = HashMap::new();
    for it in items {
        by_file.entry(&it.relative_path).or_default().push(it);
        pending.entry(&it.fqn).or_insert((0, None)).0 += 1;
    }
    for list in by_file.values_mut() {
        list.sort_by_key(|i| i.offset);
    }
    let files: Vec<(&str, Vec<&StorageItem>)> = by_file.into_iter().collect();
    std::thread::scope(|scope| -> Result<()> {
        // Files are opened (HEAD, and for the dcp-optimized reader the first
        // group's fetch) up to OPEN_AHEAD files ahead of the one being read,
        // so their requests overlap instead of queueing behind each other.
        let mut opening = std::collections::VecDeque::new();
        for (i, (rel, list)) in files.iter().enumerate() {
            while opening.len() < OPEN_AHEAD && i + opening.len() < files.len() {
                let next = files[i + opening.len()].0;
                opening.push_back(scope.spawn(move || storage.open(next)));
            }
            let handle = opening
                .pop_front()
                .ok_or_else(|| Error::Pool("file reader was not opened".into()))?;
            let mut reader = handle
                .join()
                .map_err(|_| Error::Pool(format!("opening {rel} panicked")))??;
            load_file(&mut *reader, rel, list, md, &mut pending, on_tensor)?;
        }
        Ok(())
    })
}

/// A zeroed buffer of `n` bytes whose size comes from `.metadata` (a tensor
/// assembled from its chunks, an item read whole). `.metadata` is
/// untrusted: a size larger than this machine's memory (RAM + swap) would
/// abort the process in the allocator, so it is an error naming `what`
/// instead. (A smaller lie allocates lazily zeroed pages and fails when its
/// bytes are read.)
///
/// # Errors
/// [`Error::Checkpoint`] naming `what` when `n` exceeds RAM + swap.
pub fn zeroed_buffer(n: usize, what: &str) -> Result<Vec<u8>> {
    let limit = nix::sys::sysinfo::sysinfo()
        .map(|i| i.ram_total().saturating_add(i.swap_total()))
        .unwrap_or(u64::MAX);
    if n as u64 > limit {
        return Err(Error::checkpoint(
            what,
            format!(
                "{n} bytes are needed, more than this machine's memory ({limit} bytes of RAM and swap)"
            ),
        ));
    }
    Ok(vec![0u8; n])
}

/// Files opened ahead of the one being read by [`load_tensors`].
const OPEN_AHEAD: usize = 4;

fn load_file<'m>(
    reader: &mut dyn DcpRead,
    rel: &str,
    list: &[&'m StorageItem],
    md: &'m Metadata,
    pending: &mut HashMap<&'m str, (usize, Option<Vec<u8>>)>,
    on_tensor: &mut OnTensor<'_>,
) -> Result<()> {
    for it in list.iter().copied() {
        let Some(Entry::Tensor(meta)) = md.state_dict.get(&it.fqn) else {
            return Err(Error::InvalidConfig(format!("{} is not a tensor", it.fqn)));
        };
        let chunk = it
            .index
            .and_then(|i| meta.chunks.get(i))
            .ok_or_else(|| Error::checkpoint(it.label(), "no such chunk in .metadata"))?;
        let what = format!(
            "{} in {rel} [{}, {})",
            it.label(),
            it.offset,
            it.offset + it.length
        );
        let view = ItemView::new(&mut *reader, it.offset, it.length);
        let bytes = read_tensor_item(view, &what, meta.dtype, &chunk.sizes)?;
        let entry = pending
            .get_mut(it.fqn.as_str())
            .ok_or_else(|| Error::InvalidConfig(format!("{} not planned", it.fqn)))?;
        // A tensor stored as one chunk (most are): its chunk is the tensor,
        // handed on without assembling a copy.
        let whole = chunk.sizes == meta.size && chunk.offsets.iter().all(|o| *o == 0);
        if whole && entry.0 == 1 && entry.1.is_none() {
            entry.0 = 0;
            on_tensor(&it.fqn, meta, bytes)?;
            continue;
        }
        if entry.1.is_none() {
            // Metadata::parse checked the byte count fits; checked again
            // for metadata built by hand.
            let n = meta
                .size
                .iter()
                .try_fold(meta.dtype.size() as u64, |n, d| n.checked_mul(*d))
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| Error::checkpoint(&it.fqn, "tensor size overflows"))?;
            entry.1 = Some(zeroed_buffer(n, &it.fqn)?);
        }
        let full = entry.1.get_or_insert_with(Vec::new);
        place_chunk(
            full,
            &meta.size,
            &chunk.offsets,
            &chunk.sizes,
            &bytes,
            meta.dtype.size(),
            &what,
        )?;
        entry.0 -= 1;
        if entry.0 == 0 {
            let full = entry.1.take().unwrap_or_default();
            on_tensor(&it.fqn, meta, full)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod zeroed_buffer_tests {
    #[test]
    fn a_tensor_larger_than_memory_is_an_error_not_an_abort() {
        // A .metadata can claim any size; 2^62 bytes used to reach the
        // allocator (abort) once the tensor's first chunk was read.
        let e = super::zeroed_buffer(1 << 62, "model.huge").unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("model.huge") && m.contains("more than this machine's memory"),
            "{m}"
        );
        assert_eq!(
            super::zeroed_buffer(16, "model.small").unwrap(),
            vec![0u8; 16]
        );
    }
}
