//! [`CheckpointFs`]: what a DCP save or load runs on, over local files,
//! AIStore and S3 (modelled on the S3 connector for PyTorch's
//! `S3FileSystem`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::dcp::{DcpRead, FetchCounter, ItemRange, ReaderKind};
use crate::error::{Error, Result};
use crate::reader::ParallelReader;
use crate::source::aistore::write::AisWriter;
use crate::source::{HttpClient, SourceOptions, SourceSpec};
use crate::store::upload::{Upload, UploadOptions};
use crate::worker::WorkerPool;

/// How [`CheckpointFs::create_stream`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamMode {
    /// `rb`: read, with the file system's reader kind.
    Read,
    /// `wb`: write, through an [`Upload`].
    Write,
}

impl std::str::FromStr for StreamMode {
    type Err = Error;

    /// `rb` or `wb`, as the connector takes them.
    fn from_str(s: &str) -> Result<StreamMode> {
        match s {
            "rb" => Ok(StreamMode::Read),
            "wb" => Ok(StreamMode::Write),
            other => Err(Error::InvalidConfig(format!(
                "invalid mode={other:?}: create_stream only supports rb (read mode) & wb (write mode)"
            ))),
        }
    }
}

/// An open file of a [`CheckpointFs`].
#[derive(Debug)]
pub enum FsStream {
    /// A reader of the kind the file system was made with.
    Read(Box<dyn DcpRead>),
    /// A write stream; [`Upload::finish`] makes the file visible.
    Write(Box<Upload>),
}

/// Attempts of the delete that ends an S3 rename (the copy is not
/// retried), as the connector makes them.
const RENAME_DELETE_ATTEMPTS: u32 = 3;
/// Longest wait between them.
const RENAME_DELETE_MAX_WAIT: Duration = Duration::from_secs(5);

/// The checkpoint file system: local paths, `s3://BUCKET/KEY` and
/// `ais://BUCKET/OBJECT` (endpoint and token from [`SourceOptions`]).
///
/// ```
/// # fn main() -> shmfetch::Result<()> {
/// use std::io::{Read, Write};
/// use shmfetch::WorkerPool;
/// use shmfetch::source::SourceOptions;
/// use shmfetch::store::{CheckpointFs, FsStream};
/// # let dir = tempfile::tempdir().unwrap();
/// let fs = CheckpointFs::new(WorkerPool::new(2)?, SourceOptions::default());
/// let base = dir.path().to_str().unwrap();
/// let tmp = fs.concat_path(base, ".metadata.tmp");
/// let FsStream::Write(mut w) = fs.create_stream(&tmp, "wb".parse()?)? else { unreachable!() };
/// w.write_all(b"hello").unwrap();
/// w.finish()?;
/// let meta = fs.concat_path(base, ".metadata");
/// fs.rename(&tmp, &meta)?;
/// assert!(fs.exists(&meta)? && !fs.exists(&tmp)?);
/// let FsStream::Read(mut r) = fs.create_stream(&meta, "rb".parse()?)? else { unreachable!() };
/// let mut s = String::new();
/// r.read_to_string(&mut s).unwrap();
/// assert_eq!(s, "hello");
/// fs.rm_file(&meta)?;
/// assert!(!fs.exists(&meta)?);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct CheckpointFs {
    pool: WorkerPool,
    opts: SourceOptions,
    kind: ReaderKind,
    upload: UploadOptions,
    counter: Arc<FetchCounter>,
}

/// Where a path lives.
enum Place {
    Local(PathBuf),
    S3 {
        bucket: String,
        key: String,
        spec: SourceSpec,
    },
    Ais {
        bucket: String,
        object: String,
        spec: SourceSpec,
    },
}

impl CheckpointFs {
    /// A file system on `pool`, with the sequential reader and 8 MiB parts.
    pub fn new(pool: WorkerPool, opts: SourceOptions) -> CheckpointFs {
        CheckpointFs {
            pool,
            opts,
            kind: ReaderKind::Sequential,
            upload: UploadOptions::default(),
            counter: FetchCounter::new(),
        }
    }

    /// Reads with `kind` (the dcp-optimized kind needs ranges: see
    /// [`CheckpointFs::open_ranges`]).
    pub fn with_reader(mut self, kind: ReaderKind) -> CheckpointFs {
        self.kind = kind;
        self
    }

    /// Writes with these upload settings (part size, retries).
    pub fn with_upload(mut self, opts: UploadOptions) -> CheckpointFs {
        self.upload = opts;
        self
    }

    /// Requests and bytes fetched by this file system's readers.
    pub fn counter(&self) -> &Arc<FetchCounter> {
        &self.counter
    }

    /// Whether `id` names a checkpoint this file system can hold: a local
    /// path, `s3://BUCKET[/…]` or `ais://BUCKET[/…]` with a bucket.
    pub fn validate_checkpoint_id(id: &str) -> bool {
        match id.split_once("://") {
            None => !id.is_empty(),
            Some((scheme, rest)) => {
                let bucket = rest.split('/').next().unwrap_or("");
                match scheme.to_ascii_lowercase().as_str() {
                    "s3" | "ais" => !bucket.is_empty(),
                    "file" => true,
                    _ => false,
                }
            }
        }
    }

    /// `base` joined with `rel` as Python's `os.path.join` does: an
    /// absolute `rel` replaces `base`.
    pub fn concat_path(&self, base: &str, rel: &str) -> String {
        if rel.starts_with('/') || base.is_empty() {
            rel.to_string()
        } else if base.ends_with('/') {
            format!("{base}{rel}")
        } else {
            format!("{base}/{rel}")
        }
    }

    /// The path itself (object stores have nothing to prepare).
    pub fn init_path(&self, path: &str) -> String {
        path.to_string()
    }

    /// Creates a local directory (and its parents); nothing on object
    /// stores, which have no directories.
    ///
    /// # Errors
    /// The local file system's error.
    pub fn mkdir(&self, path: &str) -> Result<()> {
        // A checkpoint directory on an object store is a prefix (`ckpt/`,
        // a bucket's root): not an object name, and nothing to create.
        let lower = path.to_ascii_lowercase();
        if lower.starts_with("s3://") || lower.starts_with("ais://") {
            return Ok(());
        }
        match self.place(path)? {
            Place::Local(p) => std::fs::create_dir_all(&p)
                .map_err(|e| Error::io(format!("creating directory {}", p.display()), &e)),
            _ => Ok(()),
        }
    }

    fn place(&self, path: &str) -> Result<Place> {
        let spec = SourceSpec::parse_with(path, &self.opts)?;
        Ok(match spec {
            SourceSpec::Local { path } => Place::Local(path),
            SourceSpec::S3 {
                ref bucket,
                ref key,
                ..
            } => Place::S3 {
                bucket: bucket.clone(),
                key: key.clone(),
                spec,
            },
            SourceSpec::AiStore {
                ref bucket,
                ref object,
                ..
            } => Place::Ais {
                bucket: bucket.clone(),
                object: object.clone(),
                spec,
            },
            other => {
                return Err(Error::InvalidSource {
                    url: other.display_name(),
                    reason: "a checkpoint file system holds local paths, s3:// and ais:// objects"
                        .into(),
                });
            }
        })
    }

    /// Opens `path` to read (`rb`) with the file system's reader kind, or
    /// to write (`wb`).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for the dcp-optimized kind (it needs the
    /// load plan's ranges: [`CheckpointFs::open_ranges`]); the source's
    /// errors.
    pub fn create_stream(&self, path: &str, mode: StreamMode) -> Result<FsStream> {
        match mode {
            StreamMode::Write => {
                let spec = SourceSpec::parse_with(path, &self.opts)?;
                Ok(FsStream::Write(Box::new(Upload::new(
                    &self.pool,
                    spec,
                    self.upload.clone(),
                )?)))
            }
            StreamMode::Read => {
                if matches!(self.kind, ReaderKind::DcpOptimized { .. }) {
                    return Err(Error::InvalidConfig(format!(
                        "no ranges for {path}: the dcp_optimized reader reads only the items of a \
                         load plan; open it with open_ranges, or use the sequential reader"
                    )));
                }
                self.open_ranges(path, &[]).map(FsStream::Read)
            }
        }
    }

    /// Opens `path` to read `ranges` with the file system's reader kind
    /// (the other kinds read anything, and ignore them).
    ///
    /// # Errors
    /// [`Error::InvalidRanges`] for unsorted or overlapping ranges; the
    /// source's errors.
    pub fn open_ranges(&self, path: &str, ranges: &[ItemRange]) -> Result<Box<dyn DcpRead>> {
        let spec = SourceSpec::parse_with(path, &self.opts)?;
        let reader = ParallelReader::builder(spec)
            .pool(self.pool.clone())
            .retry(self.upload.retry)
            .build()?;
        crate::dcp::readers::open_with_kind(self.kind, reader, ranges, Arc::clone(&self.counter))
    }

    /// Whether `path` exists: not found is `false`; no access, no bucket
    /// or a server error is an error, never `false`.
    ///
    /// # Errors
    /// As above.
    pub fn exists(&self, path: &str) -> Result<bool> {
        match self.place(path)? {
            Place::Local(p) => match std::fs::metadata(&p) {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(Error::io(format!("looking at {}", p.display()), &e)),
            },
            Place::S3 { bucket, key, spec } => s3_dest(&bucket, &key, &spec)?.exists(),
            Place::Ais { spec, .. } => AisWriter::new(HttpClient::default(), &spec)?.exists(),
        }
    }

    /// Removes `path` (S3 answers the same whether it existed or not).
    ///
    /// # Errors
    /// The store's error.
    pub fn rm_file(&self, path: &str) -> Result<()> {
        match self.place(path)? {
            Place::Local(p) => std::fs::remove_file(&p)
                .map_err(|e| Error::io(format!("removing {}", p.display()), &e)),
            Place::S3 { bucket, key, spec } => s3_dest(&bucket, &key, &spec)?.delete(),
            Place::Ais { spec, .. } => AisWriter::new(HttpClient::default(), &spec)?.delete(),
        }
    }

    /// Renames `old` to `new` in the same bucket (or local file system):
    /// `rename(2)`; S3 `CopyObject` then `DeleteObject` (only the delete is
    /// retried: 3 attempts, jittered exponential waits of at most 5 s);
    /// AIStore's own object rename.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] across buckets or stores; the store's error.
    pub fn rename(&self, old: &str, new: &str) -> Result<()> {
        match (self.place(old)?, self.place(new)?) {
            (Place::Local(a), Place::Local(b)) => std::fs::rename(&a, &b)
                .map_err(|e| Error::io(format!("renaming {} to {}", a.display(), b.display()), &e)),
            (
                Place::S3 {
                    bucket: b1,
                    key: k1,
                    spec,
                },
                Place::S3 {
                    bucket: b2,
                    key: k2,
                    ..
                },
            ) => {
                if b1 != b2 {
                    return Err(cross_bucket(old, new));
                }
                let src = s3_dest(&b1, &k1, &spec)?;
                src.copy_to(&k2)?;
                let mut attempt = 0u32;
                loop {
                    attempt += 1;
                    match src.delete() {
                        Ok(()) => return Ok(()),
                        Err(e) if attempt >= RENAME_DELETE_ATTEMPTS => return Err(e),
                        Err(e) => {
                            let cap = Duration::from_secs(1 << (attempt - 1).min(8))
                                .min(RENAME_DELETE_MAX_WAIT);
                            let wait = cap.mul_f64(rand::random::<f64>());
                            tracing::warn!(target: "shmfetch", object = old, error = %e, attempt, "rename: deleting the old name failed, retrying");
                            std::thread::sleep(wait);
                        }
                    }
                }
            }
            (
                Place::Ais {
                    bucket: b1, spec, ..
                },
                Place::Ais {
                    bucket: b2,
                    object: o2,
                    ..
                },
            ) => {
                if b1 != b2 {
                    return Err(cross_bucket(old, new));
                }
                AisWriter::new(HttpClient::default(), &spec)?.rename(&o2)
            }
            _ => Err(Error::InvalidConfig(format!(
                "cannot rename {old} to {new}: a rename stays on one store"
            ))),
        }
    }
}

fn cross_bucket(old: &str, new: &str) -> Error {
    Error::InvalidConfig(format!(
        "cannot rename {old} to {new}: a rename stays in one bucket"
    ))
}

#[cfg(feature = "s3")]
fn s3_dest(bucket: &str, key: &str, spec: &SourceSpec) -> Result<crate::source::s3::ops::S3Dest> {
    let SourceSpec::S3 { config, .. } = spec else {
        return Err(Error::Pool("not an S3 object".into()));
    };
    crate::source::s3::ops::S3Dest::new(bucket, key, config)
}

/// Without the `s3` feature there is no S3 object to act on.
#[cfg(not(feature = "s3"))]
enum NoS3 {}

#[cfg(not(feature = "s3"))]
impl NoS3 {
    fn exists(&self) -> Result<bool> {
        match *self {}
    }
    fn delete(&self) -> Result<()> {
        match *self {}
    }
    fn copy_to(&self, _to: &str) -> Result<()> {
        match *self {}
    }
}

#[cfg(not(feature = "s3"))]
fn s3_dest(bucket: &str, key: &str, _spec: &SourceSpec) -> Result<NoS3> {
    Err(Error::InvalidSource {
        url: format!("s3://{bucket}/{key}"),
        reason: "S3 needs the `s3` cargo feature".into(),
    })
}
