//! Uploads through the worker pool: a write stream fills shared-memory
//! parts (the slots of a ring) and the workers send them in parallel.
//!
//! * S3: a multipart upload. The coordinator starts it, presigns each
//!   part's `UploadPart` URL, and completes it with the parts' ETags; the
//!   workers `PUT` the parts (with `Content-MD5`). An object smaller than
//!   one part is one `PutObject`.
//! * AIStore: its own multipart upload (`mpt-upload`), parts `PUT` through
//!   the gateway's redirect by the workers; a cluster without it gets one
//!   streamed `PUT` instead.
//! * Local files: the workers `pwrite` the parts into a temporary file
//!   next to the destination, renamed into place when complete.
//!
//! Memory is bounded by `workers × part_size` (the ring). Each part is
//! retried like a ranged GET, and a dead worker's part is sent again (the
//! supervisor rule). An upload dropped or failed before
//! [`Upload::finish`] is aborted: no multipart upload, temporary file or
//! partial object is left behind.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
#[cfg(feature = "s3")]
use std::time::Duration;

use crate::error::{Error, Result};
use crate::range::ByteRange;
use crate::shm::{DEFAULT_SHM_DIR, SlotTable, State};
use crate::source::aistore::write::{AisWriter, MptStart};
use crate::source::retry::RetryConfig;
use crate::source::{ObjectMeta, SourceSpec};
use crate::worker::WorkerPool;
use crate::worker::pool::DownloadHandle;
use crate::worker::protocol::{Open, UploadTarget};

/// Part size when none is asked for.
pub const DEFAULT_PART_SIZE: u64 = 8 << 20;

/// S3's smallest part (all but the last).
pub const MIN_S3_PART_SIZE: u64 = 5 << 20;

/// S3's and AIStore's largest part.
pub const MAX_PART_SIZE: u64 = 5 << 30;

/// S3's most parts of one upload (an upload that would need more fails
/// when it gets there: give a part size of at least size / 10,000).
pub const MAX_PARTS: u64 = 10_000;

/// How long a presigned part URL is valid (a part is sent within
/// seconds of being presigned; retries included, well within this).
#[cfg(feature = "s3")]
const PART_URL_TTL: Duration = Duration::from_secs(3600);

/// Settings of an [`Upload`].
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Bytes per part (the last may be shorter). S3 needs at least
    /// [`MIN_S3_PART_SIZE`].
    pub part_size: u64,
    /// How a failed part is retried.
    pub retry: RetryConfig,
    /// Where the parts' shared memory lives.
    pub shm_dir: PathBuf,
    /// Test hook: where workers die, and how many.
    #[cfg(feature = "test-support")]
    #[doc(hidden)]
    pub kill: Option<(crate::worker::KillPoint, u32)>,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            part_size: DEFAULT_PART_SIZE,
            retry: RetryConfig::default(),
            shm_dir: PathBuf::from(DEFAULT_SHM_DIR),
            #[cfg(feature = "test-support")]
            kill: None,
        }
    }
}

/// What a finished upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSummary {
    /// Bytes stored.
    pub bytes: u64,
    /// Parts sent by the workers (0 for an object sent in one request).
    pub parts: u32,
    /// Requests beyond the first, over all parts.
    pub retries: u64,
}

/// The destination's side of an upload, in the coordinator.
enum Backend {
    File {
        path: PathBuf,
        tmp: PathBuf,
    },
    #[cfg(feature = "s3")]
    S3 {
        dest: crate::source::s3::ops::S3Dest,
        upload_id: Option<String>,
    },
    Ais {
        writer: AisWriter,
        upload_id: Option<String>,
        /// The cluster has no multipart upload: one streamed PUT, fed
        /// part by part from the coordinator.
        stream: Option<StreamedPut>,
    },
}

/// A single `PUT` whose body arrives part by part (AIStore without
/// multipart upload).
struct StreamedPut {
    /// Parts of the body; `None` ends it. Dropping the sender without
    /// `None` fails the PUT (the body is cut, nothing is stored).
    tx: Option<crossbeam_channel::Sender<Option<Vec<u8>>>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

struct ChannelReader {
    rx: crossbeam_channel::Receiver<Option<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
    /// The end was received: every later read is the end too.
    ended: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Some(b)) => {
                    self.buf = b;
                    self.pos = 0;
                }
                Ok(None) => {
                    self.ended = true;
                    return Ok(0);
                }
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::BrokenPipe,
                        "the upload was abandoned",
                    ));
                }
            }
        }
        let n = (self.buf.len() - self.pos).min(out.len());
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// What must be undone if the process stops mid-upload: the temporary file
/// or the multipart upload started so far.
#[derive(Debug, Clone, Default)]
enum Undo {
    #[default]
    Nothing,
    File(PathBuf),
    #[cfg(feature = "s3")]
    S3(crate::source::s3::ops::S3Dest, String),
    Ais(AisWriter, String),
}

/// Aborts an [`Upload`] from another thread (a signal handler's thread,
/// before the process exits): removes its temporary file or aborts its
/// multipart upload. Parts still in flight then fail.
#[derive(Debug, Clone, Default)]
pub struct AbortHandle(std::sync::Arc<std::sync::Mutex<Undo>>);

impl AbortHandle {
    fn set(&self, undo: Undo) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = undo;
    }

    /// Undoes what the upload stored so far (once; later calls do nothing).
    ///
    /// # Errors
    /// When the destination could not be told.
    pub fn abort(&self) -> Result<()> {
        // Held for the whole abort: a second caller (the upload itself, or
        // a signal's thread) waits for it instead of finding nothing to do
        // and exiting while the abort is still on its way.
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let undo = std::mem::take(&mut *guard);
        match undo {
            Undo::Nothing => Ok(()),
            Undo::File(tmp) => match std::fs::remove_file(&tmp) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io(format!("removing {}", tmp.display()), &e)),
            },
            #[cfg(feature = "s3")]
            Undo::S3(dest, id) => dest.abort_multipart(&id),
            Undo::Ais(writer, id) => writer.mpt_abort(&id),
        }
    }
}

/// A write stream to an object: bytes written are sent in parts by the
/// pool's workers. Call [`Upload::finish`] to complete it; dropping it
/// unfinished aborts it.
///
/// ```
/// # fn main() -> shmfetch::Result<()> {
/// use std::io::Write;
/// use shmfetch::{SourceSpec, WorkerPool};
/// use shmfetch::store::{Upload, UploadOptions};
/// # let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("out.bin");
/// let pool = WorkerPool::new(2)?;
/// let opts = UploadOptions { part_size: 1 << 20, ..Default::default() };
/// let mut up = Upload::new(&pool, SourceSpec::Local { path: path.clone() }, opts)?;
/// up.write_all(&vec![7u8; 3 << 20]).unwrap();
/// let summary = up.finish()?;
/// assert_eq!((summary.bytes, summary.parts), (3 << 20, 3));
/// assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 3 << 20]);
/// # Ok(())
/// # }
/// ```
pub struct Upload {
    name: String,
    dest: SourceSpec,
    pool: WorkerPool,
    opts: UploadOptions,
    backend: Backend,
    /// The ring, until the first part is handed to the workers.
    table: Option<SlotTable>,
    dl: Option<DownloadHandle>,
    slots: u32,
    /// The slot being filled, and how much of it is.
    cur: u32,
    filled: usize,
    /// Bytes handed to the workers (or the streamed PUT) so far.
    submitted: u64,
    /// Parts in flight, oldest first: (slot, part number, length).
    in_flight: VecDeque<(u32, u32, u64)>,
    /// ETags of finished parts, by part number − 1.
    etags: Vec<String>,
    /// Bytes of finished parts.
    done_bytes: u64,
    retries: u64,
    finished: bool,
    undo: AbortHandle,
    /// The first error: once a part failed, the upload can only fail
    /// (every later write and `finish` return it).
    failed: Option<Error>,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("dest", &self.name)
            .field("submitted", &self.submitted)
            .finish_non_exhaustive()
    }
}

impl Upload {
    /// Starts an upload to `dest` (a local path, `s3://` or `ais://`).
    /// Nothing is visible at `dest` before [`Upload::finish`] succeeds.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a part size the destination cannot
    /// take; [`Error::InvalidSource`] for a destination that cannot be
    /// written (plain HTTP); shared-memory and file errors.
    pub fn new(pool: &WorkerPool, dest: SourceSpec, opts: UploadOptions) -> Result<Upload> {
        let name = dest.display_name();
        if opts.part_size == 0 || opts.part_size > MAX_PART_SIZE {
            return Err(Error::InvalidConfig(format!(
                "part size must be between 1 byte and {MAX_PART_SIZE} bytes, got {}",
                opts.part_size
            )));
        }
        opts.retry.validate()?;
        let backend = match &dest {
            SourceSpec::Local { path } => {
                let tmp = temp_path(path)?;
                if let Some(dir) = tmp.parent()
                    && !dir.is_dir()
                {
                    return Err(Error::InvalidSource {
                        url: path.display().to_string(),
                        reason: format!("directory {} does not exist", dir.display()),
                    });
                }
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&tmp)
                    .map_err(|e| Error::io(format!("creating {}", tmp.display()), &e))?;
                Backend::File {
                    path: path.clone(),
                    tmp,
                }
            }
            #[cfg(feature = "s3")]
            SourceSpec::S3 {
                bucket,
                key,
                config,
                ..
            } => {
                if opts.part_size < MIN_S3_PART_SIZE {
                    return Err(Error::InvalidConfig(format!(
                        "S3 parts must be at least {MIN_S3_PART_SIZE} bytes (5 MiB), got {}",
                        opts.part_size
                    )));
                }
                Backend::S3 {
                    dest: crate::source::s3::ops::S3Dest::new(bucket, key, config)?,
                    upload_id: None,
                }
            }
            SourceSpec::AiStore { .. } => Backend::Ais {
                writer: AisWriter::new(crate::source::HttpClient::default(), &dest)?,
                upload_id: None,
                stream: None,
            },
            other => {
                return Err(Error::InvalidSource {
                    url: other.display_name(),
                    reason: "cannot upload here: give a local path, s3://BUCKET/KEY or \
                             ais://BUCKET/OBJECT"
                        .into(),
                });
            }
        };
        let undo = AbortHandle::default();
        if let Backend::File { tmp, .. } = &backend {
            undo.set(Undo::File(tmp.clone()));
        }
        let slots = u32::try_from(pool.workers()).unwrap_or(u32::MAX).max(1);
        let table = match SlotTable::create(&opts.shm_dir, slots, opts.part_size, 0, 0) {
            Ok(t) => t,
            Err(e) => {
                let _ = undo.abort();
                return Err(e);
            }
        };
        Ok(Upload {
            name,
            dest,
            pool: pool.clone(),
            opts,
            backend,
            table: Some(table),
            dl: None,
            slots,
            cur: 0,
            filled: 0,
            submitted: 0,
            in_flight: VecDeque::new(),
            etags: Vec::new(),
            done_bytes: 0,
            retries: 0,
            finished: false,
            undo,
            failed: None,
        })
    }

    /// A handle that aborts this upload from another thread (e.g. when the
    /// process is interrupted).
    pub fn abort_handle(&self) -> AbortHandle {
        self.undo.clone()
    }

    /// The destination's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes accepted so far (written, not necessarily sent).
    pub fn written(&self) -> u64 {
        self.submitted + self.filled as u64
    }

    /// Bytes stored at the destination so far, counting parts in flight by
    /// what their workers have sent (progress only).
    pub fn sent(&self) -> u64 {
        let in_flight: u64 = match (&self.dl, &self.table) {
            (Some(dl), _) => self
                .in_flight
                .iter()
                .filter_map(|&(slot, _, _)| dl.table().received_in_flight(slot))
                .sum(),
            _ => 0,
        };
        self.done_bytes + in_flight
    }

    fn table(&self) -> Result<&SlotTable> {
        match (&self.dl, &self.table) {
            (Some(dl), _) => Ok(dl.table()),
            (None, Some(t)) => Ok(t),
            (None, None) => Err(Error::Pool("the upload's ring is gone".into())),
        }
    }

    /// Takes up to one part's worth of bytes from `read` into the current
    /// slot; returns how many (0 at the end of `read`).
    fn take(&mut self, read: &mut dyn FnMut(&mut [u8]) -> std::io::Result<usize>) -> Result<usize> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.take_inner(read);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
        }
        r
    }

    fn take_inner(
        &mut self,
        read: &mut dyn FnMut(&mut [u8]) -> std::io::Result<usize>,
    ) -> Result<usize> {
        if self.finished {
            return Err(Error::Pool("the upload is already finished".into()));
        }
        self.make_room()?;
        let (cur, filled, part) = (self.cur, self.filled, self.opts.part_size as usize);
        let n = self
            .table()?
            .fill_empty(cur, |slot| read(&mut slot[filled..part]))
            .ok_or_else(|| Error::Pool("the upload's next slot is not free".into()))?
            .map_err(|e| Error::io(format!("reading what to upload to {}", self.name), &e))?;
        self.filled += n;
        if self.filled == part {
            self.submit_current()?;
        }
        Ok(n)
    }

    /// Reads `r` to its end into the upload; returns the bytes read. The
    /// bytes go straight from `read(2)` into the parts' shared memory.
    ///
    /// # Errors
    /// Read errors of `r`; a part that failed for good.
    pub fn fill_from(&mut self, r: &mut dyn Read) -> Result<u64> {
        let mut total = 0u64;
        loop {
            let n = self.take(&mut |buf| loop {
                match r.read(buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    other => return other,
                }
            })?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    }

    /// Makes sure the current slot is free to fill: waits for the part in
    /// it (if any) and records its result.
    fn make_room(&mut self) -> Result<()> {
        if self.filled > 0 {
            return Ok(());
        }
        // Parts in flight fill the slots before `cur` in ring order: `cur`
        // is free unless every slot is in flight.
        while self.in_flight.len() >= self.slots as usize {
            self.collect_oldest()?;
        }
        Ok(())
    }

    /// Waits for the oldest part in flight and records its result.
    fn collect_oldest(&mut self) -> Result<()> {
        let Some((slot, part, len)) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let Some(dl) = &self.dl else {
            return Err(Error::Pool("parts in flight without a download".into()));
        };
        let table = dl.table();
        dl.doorbell()
            .wait_until(|| table.word(slot).is_none_or(|w| w.state.is_done()));
        let w = table
            .word(slot)
            .ok_or_else(|| Error::Pool(format!("slot {slot} out of range")))?;
        let result = table.result(slot);
        self.pool.count(&result);
        self.retries += u64::from(result.attempts.saturating_sub(1));
        if w.state != State::Ready {
            let e = table.error(slot);
            table.release(slot);
            return Err(e);
        }
        let etag = table.note(slot, w.generation).unwrap_or_default();
        table.release(slot);
        let i = (part - 1) as usize;
        if self.etags.len() <= i {
            self.etags.resize(i + 1, String::new());
        }
        self.etags[i] = etag;
        self.done_bytes += len;
        Ok(())
    }

    /// Hands the current slot's bytes to the workers as the next part.
    fn submit_current(&mut self) -> Result<()> {
        let len = self.filled as u64;
        #[cfg(feature = "s3")]
        let limit = match self.backend {
            Backend::S3 { .. } => MAX_PARTS,
            _ => u64::from(u32::MAX),
        };
        #[cfg(not(feature = "s3"))]
        let limit = u64::from(u32::MAX);
        let part = u32::try_from(self.submitted / self.opts.part_size + 1)
            .ok()
            .filter(|p| u64::from(*p) <= limit)
            .ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "{} needs more than {limit} parts of {} bytes: use a larger part size",
                    self.name, self.opts.part_size
                ))
            })?;
        let range = ByteRange {
            start: self.submitted,
            end: self.submitted + len,
        };
        let url = self.start_backend(part)?;
        // AIStore without multipart upload: the bytes go to the streamed
        // PUT, in order, from here.
        if let Backend::Ais {
            stream: Some(s), ..
        } = &mut self.backend
        {
            let bytes = self
                .table
                .as_ref()
                .and_then(|t| t.fill_empty(self.cur, |b| b[..len as usize].to_vec()))
                .ok_or_else(|| Error::Pool("the upload's slot is not free".into()))?;
            let sent = s.tx.as_ref().is_some_and(|tx| tx.send(Some(bytes)).is_ok());
            if !sent {
                return Err(s
                    .end()
                    .err()
                    .unwrap_or_else(|| Error::Pool("the streamed PUT stopped early".into())));
            }
            self.submitted += len;
            self.done_bytes += len;
            self.filled = 0;
            return Ok(());
        }
        if self.dl.is_none() {
            // The first part: the workers learn where parts go.
            let Some(table) = self.table.take() else {
                return Err(Error::Pool("the upload's ring is gone".into()));
            };
            let target = self.target()?;
            let open = Open {
                download: 0,
                source: self.dest.clone(),
                expected: ObjectMeta::default(),
                retry: self.opts.retry,
                shm_dir: self.opts.shm_dir.clone(),
                table: table.name().to_string(),
                data: None,
                addrs: Vec::new(),
                upload: Some(target),
                #[cfg(feature = "test-support")]
                kill: self.opts.kill.map(|(p, _)| p),
            };
            let dl = self.pool.open_download(open, table)?;
            #[cfg(feature = "test-support")]
            if let Some((_, n)) = self.opts.kill {
                dl.arm_kills(n);
            }
            self.dl = Some(dl);
        }
        let Some(dl) = &self.dl else {
            return Err(Error::Pool("the upload's ring is gone".into()));
        };
        dl.start_part(self.cur, range, url)?;
        self.in_flight.push_back((self.cur, part, len));
        self.submitted += len;
        self.filled = 0;
        self.cur = (self.cur + 1) % self.slots;
        Ok(())
    }

    /// Starts the multipart upload at the first part; returns the URL
    /// part `part` goes to, when parts have their own.
    fn start_backend(&mut self, part: u32) -> Result<Option<String>> {
        #[cfg(not(feature = "s3"))]
        let _ = part;
        match &mut self.backend {
            Backend::File { .. } => Ok(None),
            #[cfg(feature = "s3")]
            Backend::S3 { dest, upload_id } => {
                if upload_id.is_none() {
                    let id = dest.create_multipart()?;
                    self.undo.set(Undo::S3(dest.clone(), id.clone()));
                    *upload_id = Some(id);
                }
                let id = upload_id.as_deref().unwrap_or_default();
                Ok(Some(
                    dest.presign_part(id, part, PART_URL_TTL)?
                        .expose()
                        .to_string(),
                ))
            }
            Backend::Ais {
                writer,
                upload_id,
                stream,
            } => {
                if upload_id.is_none() && stream.is_none() {
                    match writer.mpt_create()? {
                        MptStart::Upload(id) => {
                            self.undo.set(Undo::Ais(writer.clone(), id.clone()));
                            *upload_id = Some(id);
                        }
                        MptStart::Unsupported => {
                            tracing::info!(
                                target: "shmfetch",
                                object = %self.name,
                                "the cluster has no multipart upload: sending one streamed PUT"
                            );
                            *stream = Some(StreamedPut::start(writer.clone())?);
                        }
                    }
                }
                Ok(None)
            }
        }
    }

    fn target(&self) -> Result<UploadTarget> {
        Ok(match &self.backend {
            Backend::File { tmp, .. } => UploadTarget::File { path: tmp.clone() },
            #[cfg(feature = "s3")]
            Backend::S3 { .. } => UploadTarget::UrlPart,
            Backend::Ais { upload_id, .. } => UploadTarget::AisPart {
                upload_id: upload_id.clone().unwrap_or_default(),
                part_size: self.opts.part_size,
            },
        })
    }

    /// Sends what is left, waits for every part and completes the upload:
    /// only now is the object visible at its destination.
    ///
    /// # Errors
    /// The first part that failed for good, or the completion's error; the
    /// upload is then aborted.
    pub fn finish(mut self) -> Result<UploadSummary> {
        let r = self.finish_inner();
        if r.is_ok() {
            self.undo.set(Undo::Nothing);
        }
        if r.is_err()
            && let Err(e) = self.abort_inner()
        {
            tracing::warn!(target: "shmfetch", object = %self.name, error = %e, "could not abort the failed upload");
        }
        self.finished = true;
        r
    }

    fn finish_inner(&mut self) -> Result<UploadSummary> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let total = self.written();
        let small = self.dl.is_none() && self.submitted == 0;
        if small && !matches!(self.backend, Backend::File { .. }) {
            // Smaller than a part: one request from here.
            let len = self.filled;
            let cur = self.cur;
            let bytes = self
                .table()?
                .fill_empty(cur, |b| b[..len].to_vec())
                .ok_or_else(|| Error::Pool("the upload's slot is not free".into()))?;
            self.filled = 0;
            put_single(&self.dest, &bytes)?;
            self.done_bytes = total;
            return Ok(UploadSummary {
                bytes: total,
                parts: 0,
                retries: 0,
            });
        }
        if self.filled > 0 {
            self.submit_current()?;
        }
        while !self.in_flight.is_empty() {
            self.collect_oldest()?;
        }
        let parts = u32::try_from(self.etags.len()).unwrap_or(u32::MAX);
        // Every part sent, and named by its server: never complete with a
        // part missing.
        let streamed = matches!(
            self.backend,
            Backend::Ais {
                stream: Some(_),
                ..
            }
        );
        if !streamed && self.done_bytes != total {
            return Err(Error::Pool(format!(
                "{}: {} of {total} bytes were stored; not completing",
                self.name, self.done_bytes
            )));
        }
        #[cfg(feature = "s3")]
        if matches!(self.backend, Backend::S3 { .. }) && self.etags.iter().any(String::is_empty) {
            return Err(Error::Pool(format!(
                "{}: a part has no ETag; not completing",
                self.name
            )));
        }
        match &mut self.backend {
            Backend::File { path, tmp } => {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&*tmp)
                    .map_err(|e| Error::io(format!("opening {}", tmp.display()), &e))?;
                f.sync_all()
                    .map_err(|e| Error::io(format!("syncing {}", tmp.display()), &e))?;
                std::fs::rename(&*tmp, &*path).map_err(|e| {
                    Error::io(
                        format!("renaming {} to {}", tmp.display(), path.display()),
                        &e,
                    )
                })?;
                // The rename itself is durable once the directory is.
                if let Some(dir) = tmp.parent() {
                    std::fs::File::open(dir)
                        .and_then(|d| d.sync_all())
                        .map_err(|e| Error::io(format!("syncing {}", dir.display()), &e))?;
                }
            }
            #[cfg(feature = "s3")]
            Backend::S3 { dest, upload_id } => {
                if let Some(id) = upload_id.take()
                    && let Err(e) = dest.complete_multipart(&id, std::mem::take(&mut self.etags))
                {
                    *upload_id = Some(id);
                    return Err(e);
                }
            }
            Backend::Ais {
                writer,
                upload_id,
                stream,
            } => {
                if let Some(mut s) = stream.take() {
                    s.end()?;
                } else if let Some(id) = upload_id.take() {
                    let list: Vec<(u32, String)> = std::mem::take(&mut self.etags)
                        .into_iter()
                        .enumerate()
                        .map(|(i, e)| (i as u32 + 1, e))
                        .collect();
                    if let Err(e) = writer.mpt_complete(&id, &list) {
                        *upload_id = Some(id);
                        return Err(e);
                    }
                }
            }
        }
        Ok(UploadSummary {
            bytes: total,
            parts,
            retries: self.retries,
        })
    }

    /// Gives the upload up: parts in flight are cancelled and whatever the
    /// destination holds of it is removed.
    ///
    /// # Errors
    /// When the destination could not be told (the multipart upload may
    /// then be left for the bucket's lifecycle rules to remove).
    pub fn abort(mut self) -> Result<()> {
        self.finished = true;
        self.abort_inner()
    }

    fn abort_inner(&mut self) -> Result<()> {
        // Cancel the tasks first: no part is sent after the abort.
        self.dl = None;
        self.in_flight.clear();
        match &mut self.backend {
            Backend::File { .. } => {}
            #[cfg(feature = "s3")]
            Backend::S3 { upload_id, .. } => *upload_id = None,
            Backend::Ais {
                upload_id, stream, ..
            } => {
                *upload_id = None;
                if let Some(mut s) = stream.take() {
                    // Ending the body early fails the PUT: nothing stored.
                    s.tx = None;
                    s.poison();
                }
            }
        }
        // The temporary file, or the multipart upload (one path, shared
        // with a signal's thread: see `AbortHandle`).
        self.undo.abort()
    }
}

impl StreamedPut {
    fn start(writer: AisWriter) -> Result<StreamedPut> {
        // A part or two ahead of the PUT, no more (memory stays bounded).
        let (tx, rx) = crossbeam_channel::bounded(2);
        let thread = std::thread::Builder::new()
            .name("shmfetch-put".into())
            .spawn(move || {
                let mut body = ChannelReader {
                    rx,
                    buf: Vec::new(),
                    pos: 0,
                    ended: false,
                };
                writer.put_whole(&mut body, None)
            })
            .map_err(|e| Error::Pool(format!("starting the PUT's thread: {e}")))?;
        Ok(StreamedPut {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Ends the body and waits for the PUT's answer.
    fn end(&mut self) -> Result<()> {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(None);
        }
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(Error::Pool("the streamed PUT panicked".into()))),
            None => Ok(()),
        }
    }

    /// Lets the PUT's thread end without waiting for it.
    fn poison(&mut self) {
        self.thread = None;
    }
}

impl Write for Upload {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut src = buf;
        self.take(&mut |slot| {
            let n = slot.len().min(src.len());
            slot[..n].copy_from_slice(&src[..n]);
            src = &src[n..];
            Ok(n)
        })
        .map_err(std::io::Error::other)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.finished
            && let Err(e) = self.abort_inner()
        {
            tracing::warn!(target: "shmfetch", object = %self.name, error = %e, "could not abort the upload");
        }
    }
}

/// Stores `bytes` at `dest` with one request from this process (no
/// workers, no parts): the single stream that [`Upload`] is measured
/// against, and the simplest way to store a small object.
///
/// # Errors
/// The destination's errors.
pub fn put_single(dest: &SourceSpec, bytes: &[u8]) -> Result<()> {
    let name = dest.display_name();
    match dest {
        SourceSpec::Local { path } => {
            let tmp = temp_path(path)?;
            let r = std::fs::write(&tmp, bytes)
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| Error::io(format!("writing {name}"), &e));
            if r.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            r
        }
        #[cfg(feature = "s3")]
        SourceSpec::S3 {
            bucket,
            key,
            config,
            ..
        } => {
            let d = crate::source::s3::ops::S3Dest::new(bucket, key, config)?;
            let url = d.presign_put(PART_URL_TTL)?;
            let public = config.object_url(bucket, key);
            let endpoint = config.endpoint_display();
            let classify = |r| crate::source::s3::classify_s3(bucket, &endpoint, &public, r);
            crate::source::http::put_bytes(
                &crate::source::HttpClient::default(),
                url.expose(),
                &public,
                &[],
                &name,
                ByteRange {
                    start: 0,
                    end: bytes.len() as u64,
                },
                bytes,
                &mut |_| {},
                &classify,
            )
            .map(drop)
        }
        SourceSpec::AiStore { .. } => AisWriter::new(crate::source::HttpClient::default(), dest)?
            .put_whole(&mut &bytes[..], Some(bytes.len() as u64)),
        other => Err(Error::InvalidSource {
            url: other.display_name(),
            reason: "cannot upload here: give a local path, s3://BUCKET/KEY or ais://BUCKET/OBJECT"
                .into(),
        }),
    }
}

/// A new, unused name for the temporary file next to `path`.
fn temp_path(path: &Path) -> Result<PathBuf> {
    let file = path.file_name().ok_or_else(|| Error::InvalidSource {
        url: path.display().to_string(),
        reason: "not a file name".into(),
    })?;
    // Absolute: workers forked before a chdir of this process would
    // resolve a relative name elsewhere.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = std::path::absolute(&dir)
        .map_err(|e| Error::io(format!("resolving {}", dir.display()), &e))?;
    let mut name = std::ffi::OsString::from(".");
    name.push(file);
    name.push(format!(
        ".shmfetch-{}-{:08x}.part",
        std::process::id(),
        rand::random::<u32>()
    ));
    Ok(dir.join(name))
}
