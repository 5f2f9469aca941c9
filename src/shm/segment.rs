//! Named shared-memory segments and the mappings workers make of them.
//!
//! Ownership is observable from the segment itself: its owner holds an
//! exclusive `flock` on it from before it gets its name until after the name
//! is gone, so a segment whose lock can be taken has no owner, whatever pid
//! its name carries (pids mean nothing across PID namespaces, e.g. containers
//! sharing `/dev/shm`).

use std::collections::BTreeSet;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, Flock, FlockArg, OFlag, RenameFlags};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use nix::sys::stat::{FileStat, Mode, SFlag};

use crate::error::{Error, Result};

/// Where segments live unless configured otherwise.
pub const DEFAULT_SHM_DIR: &str = "/dev/shm";

/// Every segment this crate creates starts with this, followed by
/// `<owner pid>-<random hex>`. The pid is informational only: whether a
/// segment has a live owner is decided by its lock.
pub const SEGMENT_PREFIX: &str = "shmfetch-";

/// A segment is created under this hidden name (followed by the same
/// `<pid>-<hex>` as its final name) and renamed to its final name only once
/// its owner holds its lock.
pub const TEMP_PREFIX: &str = ".shmfetch-new-";

/// A hidden temporary left by an owner killed between creating it and
/// renaming it is removed only once it is at least this old, so a cleanup
/// never takes the lock of a segment that is still being created.
pub const TEMP_MIN_AGE: Duration = Duration::from_secs(60);

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p <= 0 { 4096 } else { p as usize }
}

/// Opens `name` in `dir` with a plain `open` of the path, for `/dev/shm`
/// too (that is all glibc's `shm_open` does), never following a symlink.
fn open_in(
    dir: &Path,
    name: &str,
    flags: OFlag,
    mode: Mode,
) -> std::result::Result<OwnedFd, Errno> {
    nix::fcntl::open(
        &dir.join(name),
        flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        mode,
    )
}

fn unlink_in(dir: &Path, name: &str) -> std::result::Result<(), Errno> {
    nix::unistd::unlink(&dir.join(name))
}

/// Gives the locked temporary `temp` its final name `name`, failing with
/// `EEXIST` when `name` is taken (never replacing it).
fn publish(dir: &Path, temp: &str, name: &str) -> std::result::Result<(), Errno> {
    let (from, to) = (dir.join(temp), dir.join(name));
    match nix::fcntl::renameat2(
        AT_FDCWD,
        &from,
        AT_FDCWD,
        &to,
        RenameFlags::RENAME_NOREPLACE,
    ) {
        // A filesystem without RENAME_NOREPLACE: a hard link fails on an
        // existing name just the same, then the temporary name goes.
        Err(Errno::EINVAL) => {
            nix::unistd::linkat(AT_FDCWD, &from, AT_FDCWD, &to, nix::fcntl::AtFlags::empty())?;
            let _ = nix::unistd::unlink(&from);
            Ok(())
        }
        r => r,
    }
}

/// Creates a new, empty segment file in `dir`, locked, under its final
/// name. The file is created (`O_CREAT | O_EXCL`, mode 0600) under a hidden
/// temporary name, locked, then renamed without replacing anything: no one
/// ever sees it under its final name without its lock held.
fn create_locked(dir: &Path) -> Result<(String, Flock<OwnedFd>)> {
    const ATTEMPTS: usize = 8;
    let mut last = Errno::EEXIST;
    for _ in 0..ATTEMPTS {
        let suffix = format!("{}-{:016x}", std::process::id(), rand::random::<u64>());
        let temp = format!("{TEMP_PREFIX}{suffix}");
        let name = format!("{SEGMENT_PREFIX}{suffix}");
        let ctx = |what: &str| format!("{what} segment {name} in {}", dir.display());
        let fd = match open_in(
            dir,
            &temp,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
            Mode::S_IRUSR | Mode::S_IWUSR,
        ) {
            Ok(fd) => fd,
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(Error::shm(ctx("creating"), e)),
        };
        let lock = match Flock::lock(fd, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            // Only a cleanup that found this file older than TEMP_MIN_AGE
            // (a clock jump) holds its lock, and it removes the file.
            Err((_, Errno::EWOULDBLOCK)) => {
                last = Errno::EWOULDBLOCK;
                continue;
            }
            Err((_, e)) => {
                let _ = unlink_in(dir, &temp);
                return Err(Error::shm(ctx("locking"), e));
            }
        };
        match publish(dir, &temp, &name) {
            Ok(()) => return Ok((name, lock)),
            Err(Errno::EEXIST) => {
                let _ = unlink_in(dir, &temp);
                last = Errno::EEXIST;
            }
            // A cleanup removed the temporary (see above): try a new name.
            Err(Errno::ENOENT) => last = Errno::ENOENT,
            Err(e) => {
                let _ = unlink_in(dir, &temp);
                return Err(Error::shm(ctx("naming"), e));
            }
        }
    }
    Err(Error::shm(
        format!(
            "creating a segment in {}: no free name in {ATTEMPTS} attempts",
            dir.display()
        ),
        last,
    ))
}

/// Held (shared) by every segment creation from before its file exists
/// until it is in [`LIVE`]; taken for good by [`remove_own_segments`], so no
/// creation is half done (or starts) while this process removes its own.
static CREATION: RwLock<()> = RwLock::new(());

/// The paths of this process's live segments: what [`remove_own_segments`]
/// unlinks. Names alone cannot say it (a pid means nothing across PID
/// namespaces sharing `/dev/shm`).
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Removes every segment this process owns, in any directory, for a
/// process that is about to end on a signal (its owners will never run
/// their drops). From then on a segment creation in this process blocks
/// for good, so none is missed: call it only right before exiting. Returns
/// the paths removed.
pub fn remove_own_segments() -> Vec<PathBuf> {
    std::mem::forget(CREATION.write().unwrap_or_else(PoisonError::into_inner));
    let live = std::mem::take(&mut *LIVE.lock().unwrap_or_else(PoisonError::into_inner));
    live.into_iter()
        .filter(|p| nix::unistd::unlink(p.as_path()).is_ok())
        .collect()
}

fn free_bytes(dir: &Path) -> u64 {
    match nix::sys::statvfs::statvfs(dir) {
        #[allow(clippy::unnecessary_cast)] // the field types differ between targets
        Ok(s) => s.blocks_available() as u64 * s.fragment_size() as u64,
        Err(_) => 0,
    }
}

/// A named shared-memory segment, mapped read-write into this process.
///
/// The process that created it owns it: it holds the segment's exclusive
/// `flock` for the segment's whole life (0-byte segments included) and
/// unlinks it on drop, before the lock goes. The memory stays valid for as
/// long as any mapping of it exists.
#[derive(Debug)]
pub struct Segment {
    name: String,
    dir: PathBuf,
    ptr: Option<NonNull<u8>>,
    len: usize,
    /// The descriptor, locked: the proof of ownership that cleanups test.
    lock: Flock<OwnedFd>,
}

// SAFETY: the mapping is plain shared memory; the Segment hands out access
// only through &self/&mut self methods whose callers synchronise writers
// (workers write disjoint ranges, readers wait for ready events).
unsafe impl Send for Segment {}
// SAFETY: as above; shared references only read, or write through atomics.
unsafe impl Sync for Segment {}

impl Segment {
    /// Creates a new segment of `len` bytes in `dir`, reserving its space.
    ///
    /// The first segment a process creates in a directory first removes the
    /// segments of dead owners there ([`remove_orphans_once`]).
    ///
    /// # Errors
    /// [`Error::ShmNoSpace`] when `dir` has no room for `len` bytes (the
    /// partial segment is removed); [`Error::Shm`] for other OS failures.
    pub fn create(dir: &Path, len: u64) -> Result<Segment> {
        Segment::create_inner(dir, len, true)
    }

    /// Creates a segment of `len` bytes whose space is *not* reserved, for
    /// segments that workers fill with `pwrite` (which allocates each page
    /// and reports a full tmpfs as `ENOSPC`, never SIGBUS); workers map only
    /// ranges whose pages exist (a recycled segment, written whole).
    /// Fails at once when `dir` has less than `len` bytes free.
    ///
    /// # Errors
    /// As [`Segment::create`].
    pub fn create_unreserved(dir: &Path, len: u64) -> Result<Segment> {
        Segment::create_inner(dir, len, false)
    }

    fn create_inner(dir: &Path, len: u64, reserve_all: bool) -> Result<Segment> {
        let len_usize = usize::try_from(len)
            .map_err(|_| Error::InvalidConfig(format!("segment of {len} bytes is too large")))?;
        // Before the free-space check: what dead owners left counts as used.
        remove_orphans_once(dir);
        if !reserve_all {
            let free = free_bytes(dir);
            if len > free {
                return Err(Error::ShmNoSpace {
                    dir: dir.display().to_string(),
                    needed: len,
                    free,
                });
            }
        }
        let creating = CREATION.read().unwrap_or_else(PoisonError::into_inner);
        let (name, lock) = create_locked(dir)?;
        LIVE.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(dir.join(&name));
        drop(creating);
        // From here on, dropping `seg` unlinks the file.
        let mut seg = Segment {
            name,
            dir: dir.to_path_buf(),
            ptr: None,
            len: len_usize,
            lock,
        };
        if len_usize == 0 {
            return Ok(seg);
        }
        nix::unistd::ftruncate(&*seg.lock, len as libc::off_t)
            .map_err(|e| Error::shm(format!("sizing segment {} to {len} bytes", seg.name), e))?;
        seg.ptr =
            Some(map(&seg.lock, 0, len_usize, false).map_err(|e| {
                Error::shm(format!("mapping segment {} ({len} bytes)", seg.name), e)
            })?);
        if reserve_all {
            seg.reserve(0, len)?;
        }
        Ok(seg)
    }

    /// Reserves `[offset, offset + len)` (`posix_fallocate`): on tmpfs this
    /// allocates the pages, so a full `/dev/shm` fails here and never with a
    /// SIGBUS when a worker stores through its mapping.
    ///
    /// # Errors
    /// [`Error::ShmNoSpace`] (with the whole segment's size as `needed`).
    fn reserve(&self, offset: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        match nix::fcntl::posix_fallocate(
            self.lock.as_fd(),
            offset as libc::off_t,
            len as libc::off_t,
        ) {
            Ok(()) => Ok(()),
            Err(Errno::ENOSPC) | Err(Errno::EFBIG) => Err(Error::ShmNoSpace {
                dir: self.dir.display().to_string(),
                needed: self.len as u64,
                free: free_bytes(&self.dir),
            }),
            Err(e) => Err(Error::shm(
                format!("reserving {len} bytes at {offset} of {}", self.name),
                e,
            )),
        }
    }

    /// The segment's name (the file name under its directory).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The directory the segment lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Base pointer of the mapping (dangling for an empty segment).
    pub fn as_ptr(&self) -> *mut u8 {
        match self.ptr {
            Some(p) => p.as_ptr(),
            None => NonNull::dangling().as_ptr(),
        }
    }

    /// The bytes `[offset, offset + len)` of the segment.
    ///
    /// # Safety
    /// No process may write those bytes while the returned slice lives.
    /// Panics are avoided by the caller checking bounds; out-of-bounds
    /// requests return an empty slice.
    pub(crate) unsafe fn slice(&self, offset: usize, len: usize) -> &[u8] {
        if len == 0 || offset.checked_add(len).is_none_or(|end| end > self.len) {
            return &[];
        }
        // SAFETY: in bounds of a live mapping (checked above); the caller
        // guarantees no concurrent writer.
        unsafe { std::slice::from_raw_parts(self.as_ptr().add(offset), len) }
    }

    /// The whole segment, writable.
    ///
    /// # Safety
    /// No other process may read or write the segment while the returned
    /// slice lives (`&mut self` rules out this process).
    pub(crate) unsafe fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: the whole live mapping; the caller guarantees no other
        // process uses it, `&mut self` that nothing here does.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr(), self.len) }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if let Some(p) = self.ptr.take() {
            // SAFETY: p/len come from our own successful mmap and nothing
            // borrowed from the segment outlives it (borrows are tied to &self).
            let _ = unsafe { munmap(p.cast(), self.len) };
        }
        // Unlinked while the lock is still held (it goes with the descriptor
        // when the fields drop): no cleanup ever sees this name unlocked.
        // ENOENT: already unlinked early (`Segment::unlink`), or by
        // `remove_own_segments`.
        // Unlinked before it leaves the list of live segments: a signal
        // between the two finds it still listed (and unlinks it again,
        // harmlessly), never unlisted but still there.
        let path = self.dir.join(&self.name);
        if let Err(e) = unlink_in(&self.dir, &self.name)
            && e != Errno::ENOENT
        {
            tracing::warn!(segment = %self.name, error = %e, "could not unlink shared-memory segment");
        }
        LIVE.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|p| *p != path);
    }
}

impl Segment {
    /// Gives the segment a new length (at least 1 byte), keeping its pages
    /// up to the shorter length and the page tables of the mapping that
    /// covers them (`mremap`): a recycled segment costs no page allocation,
    /// zeroing or first-touch fault for the bytes it already had. Pages past
    /// a shorter length are freed; bytes past the old length read as zeros
    /// until written (none is ever handed out unwritten: see
    /// [`crate::shm::SegmentCache`]).
    ///
    /// # Errors
    /// [`Error::ShmNoSpace`] when growing needs more than the directory has
    /// free; [`Error::Shm`] when the file or the mapping cannot be resized
    /// (the segment is then in no state to use: drop it).
    pub(crate) fn resize(&mut self, len: u64) -> Result<()> {
        let new = usize::try_from(len)
            .ok()
            .and_then(std::num::NonZeroUsize::new)
            .ok_or_else(|| {
                Error::InvalidConfig(format!("cannot resize a segment to {len} bytes"))
            })?;
        if new.get() == self.len {
            return Ok(());
        }
        let Some(p) = self.ptr else {
            return Err(Error::InvalidConfig(
                "cannot resize an empty segment".into(),
            ));
        };
        let ctx = |what: &str| format!("{what} segment {} to {len} bytes", self.name);
        let grow = new.get() > self.len;
        if grow {
            let free = free_bytes(&self.dir);
            let more = (new.get() - self.len) as u64;
            if more > free {
                return Err(Error::ShmNoSpace {
                    dir: self.dir.display().to_string(),
                    needed: more,
                    free,
                });
            }
            nix::unistd::ftruncate(&*self.lock, len as libc::off_t)
                .map_err(|e| Error::shm(ctx("growing"), e))?;
        }
        // SAFETY: remaps our own live mapping of `self.len` bytes; no
        // borrow of it lives (`&mut self`). On failure the old mapping
        // stays as it was.
        let q = unsafe {
            nix::sys::mman::mremap(
                p.cast(),
                self.len,
                new.get(),
                nix::sys::mman::MRemapFlags::MREMAP_MAYMOVE,
                None,
            )
        }
        .map_err(|e| Error::shm(ctx("remapping"), e))?;
        self.ptr = Some(q.cast());
        self.len = new.get();
        if !grow {
            nix::unistd::ftruncate(&*self.lock, len as libc::off_t)
                .map_err(|e| Error::shm(ctx("shrinking"), e))?;
        }
        Ok(())
    }

    /// Removes the segment's name now; the memory stays mapped until the
    /// segment is dropped (for processes still holding it).
    pub(crate) fn unlink(&self) {
        let _ = unlink_in(&self.dir, &self.name);
    }
}

fn map(
    fd: &OwnedFd,
    offset: usize,
    len: usize,
    populate: bool,
) -> std::result::Result<NonNull<u8>, Errno> {
    let nz = std::num::NonZeroUsize::new(len).ok_or(Errno::EINVAL)?;
    let mut flags = MapFlags::MAP_SHARED;
    if populate {
        // Pre-fault the page tables in one pass: on reserved tmpfs pages this
        // costs ~70 ms/GiB against ~280 ms/GiB of first-touch faults
        // (examples/segcost.rs).
        flags |= MapFlags::MAP_POPULATE;
    }
    // SAFETY: a fresh shared mapping of a file we hold open; no existing
    // Rust object aliases the new address range.
    let p = unsafe {
        mmap(
            None,
            nz,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            flags,
            fd,
            offset as libc::off_t,
        )?
    };
    Ok(p.cast())
}

/// A worker's mapping of (part of) someone else's segment: page-aligned
/// underneath, addressed in segment offsets. Unmapped on drop; never
/// unlinks, never locks (the lock is the owner's).
#[derive(Debug)]
pub struct Mapping {
    base: NonNull<u8>,
    /// Segment offset of `base`.
    start: u64,
    map_len: usize,
}

impl Mapping {
    /// Maps `[offset, offset + len)` of the segment `name` in `dir`, with
    /// its page tables pre-faulted (`MAP_POPULATE`).
    ///
    /// # Errors
    /// [`Error::Shm`] when the segment is gone, too small, or cannot be mapped.
    pub fn open_window(dir: &Path, name: &str, offset: u64, len: usize) -> Result<Mapping> {
        let ctx = || format!("mapping {len} bytes at {offset} of segment {name}");
        if len == 0 {
            return Err(Error::shm(ctx(), Errno::EINVAL));
        }
        let fd =
            open_in(dir, name, OFlag::O_RDWR, Mode::empty()).map_err(|e| Error::shm(ctx(), e))?;
        let st = nix::sys::stat::fstat(fd.as_fd()).map_err(|e| Error::shm(ctx(), e))?;
        let end = offset
            .checked_add(len as u64)
            .ok_or_else(|| Error::shm(ctx(), Errno::EINVAL))?;
        if end > st.st_size as u64 {
            return Err(Error::shm(ctx(), Errno::ERANGE));
        }
        let page = page_size() as u64;
        let start = offset / page * page;
        let map_len = (end - start) as usize;
        let base = map(&fd, start as usize, map_len, true).map_err(|e| Error::shm(ctx(), e))?;
        Ok(Mapping {
            base,
            start,
            map_len,
        })
    }

    /// Maps the whole segment `name` in `dir`.
    ///
    /// # Errors
    /// As [`Mapping::open_window`].
    pub fn open_whole(dir: &Path, name: &str) -> Result<Mapping> {
        let fd = open_in(dir, name, OFlag::O_RDWR, Mode::empty())
            .map_err(|e| Error::shm(format!("opening segment {name}"), e))?;
        let st = nix::sys::stat::fstat(fd.as_fd())
            .map_err(|e| Error::shm(format!("stat of segment {name}"), e))?;
        drop(fd);
        Mapping::open_window(dir, name, 0, st.st_size as usize)
    }

    /// Base address of the mapping (segment offset [`Mapping::start`]).
    pub(crate) fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Segment offset of the mapping's first byte.
    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    /// Bytes mapped.
    pub(crate) fn len(&self) -> usize {
        self.map_len
    }

    /// The segment's bytes `[offset, offset + len)`, which must lie inside
    /// the mapping (`None` otherwise). Which process may write them is the
    /// caller's business (a worker: the bytes of the range it claimed).
    pub(crate) fn bytes_mut(&mut self, offset: u64, len: usize) -> Option<&mut [u8]> {
        let rel = usize::try_from(offset.checked_sub(self.start)?).ok()?;
        if rel.checked_add(len)? > self.map_len {
            return None;
        }
        // SAFETY: inside our own live mapping (checked above), borrowed
        // mutably from it, so it is neither unmapped nor handed out twice
        // in this process while the slice lives.
        Some(unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(rel), len) })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: base/map_len come from our own mmap; the slices handed out
        // borrow &mut self and so are gone.
        let _ = unsafe { munmap(self.base.cast(), self.map_len) };
    }
}

/// Opens the segment `name` in `dir` for writing with `pwrite`, checking
/// that `[offset, offset + len)` lies inside it. Never locks it.
///
/// # Errors
/// [`Error::Shm`] when the segment is gone or too small.
pub fn open_for_write(dir: &Path, name: &str, offset: u64, len: u64) -> Result<OwnedFd> {
    let ctx = || format!("opening segment {name} to write {len} bytes at {offset}");
    let fd = open_in(dir, name, OFlag::O_RDWR, Mode::empty()).map_err(|e| Error::shm(ctx(), e))?;
    let st = nix::sys::stat::fstat(fd.as_fd()).map_err(|e| Error::shm(ctx(), e))?;
    match offset.checked_add(len) {
        Some(end) if end <= st.st_size as u64 => Ok(fd),
        _ => Err(Error::shm(ctx(), Errno::ERANGE)),
    }
}

/// Removes the segments in `dir` that have no owner, and the hidden
/// temporaries of creations cut short more than [`TEMP_MIN_AGE`] ago.
/// Returns the names removed; a directory that cannot be listed removes
/// nothing (see [`try_remove_orphans`]).
///
/// A segment has no owner when its lock can be taken: its owner holds an
/// exclusive `flock` for the segment's whole life, and the kernel drops it
/// when the owner dies, however it dies. The pid in the name is not looked
/// at, so a live owner in another PID namespace (a container sharing
/// `/dev/shm`) keeps its segments.
pub fn remove_orphans(dir: &Path) -> Vec<String> {
    try_remove_orphans(dir).unwrap_or_default()
}

/// As [`remove_orphans`], failing when `dir` cannot be listed.
///
/// # Errors
/// [`Error::Shm`] naming `dir` when it does not exist, is not a directory
/// or cannot be read.
pub fn try_remove_orphans(dir: &Path) -> Result<Vec<String>> {
    remove_unowned(dir, TEMP_MIN_AGE)
}

/// [`remove_orphans`] of `dir`, at most once per directory in this process
/// (later calls return nothing): segment creation calls it, so whatever
/// directory a reader uses is cleaned when it creates its first segment there.
pub fn remove_orphans_once(dir: &Path) -> Vec<String> {
    static CLEANED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
    let first = CLEANED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(dir.to_path_buf());
    if !first {
        return Vec::new();
    }
    let removed = remove_orphans(dir);
    if !removed.is_empty() {
        tracing::warn!(dir = %dir.display(), count = removed.len(), "removed segments of dead processes");
    }
    removed
}

fn remove_unowned(dir: &Path, temp_min_age: Duration) -> Result<Vec<String>> {
    let list_err = |e: std::io::Error| {
        Error::shm(
            format!("listing segment directory {}", dir.display()),
            Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        )
    };
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(list_err)? {
        let Ok(entry) = entry else { continue };
        let file_name = entry.file_name();
        // Our names are ASCII: anything else is not ours.
        let Some(name) = file_name.to_str() else {
            continue;
        };
        let min_age = if name.starts_with(TEMP_PREFIX) {
            Some(temp_min_age)
        } else if name.starts_with(SEGMENT_PREFIX) {
            None
        } else {
            continue;
        };
        if remove_if_unowned(dir, name, min_age) {
            removed.push(name.to_string());
        }
    }
    Ok(removed)
}

/// Unlinks `dir/name` if it is a regular file (not followed if a symlink)
/// whose lock can be taken, and, with `min_age`, whose status changed at
/// least that long ago. The lock is held across the unlink.
fn remove_if_unowned(dir: &Path, name: &str, min_age: Option<Duration>) -> bool {
    // O_NONBLOCK: never wait on a FIFO someone put here.
    let Ok(fd) = open_in(dir, name, OFlag::O_RDWR | OFlag::O_NONBLOCK, Mode::empty()) else {
        return false; // gone, a symlink (ELOOP), a directory, not ours to open
    };
    let Ok(st) = nix::sys::stat::fstat(fd.as_fd()) else {
        return false;
    };
    if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
        return false;
    }
    // Checked before locking, so a creation in progress never finds its
    // fresh temporary locked by us.
    if min_age.is_some_and(|age| !changed_before(&st, age)) {
        return false;
    }
    let lock = match Flock::lock(fd, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err(_) => return false, // EWOULDBLOCK: its owner is alive
    };
    // The name may have been unlinked by its owner (who then let go of the
    // lock) between our open and our lock: unlink only the file we locked.
    let same = nix::sys::stat::fstatat(
        AT_FDCWD,
        &dir.join(name),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .is_ok_and(|now| now.st_dev == st.st_dev && now.st_ino == st.st_ino);
    let removed = same && unlink_in(dir, name).is_ok();
    drop(lock);
    removed
}

fn changed_before(st: &FileStat, age: Duration) -> bool {
    let Ok(secs) = u64::try_from(st.st_ctime) else {
        return false;
    };
    let ctime =
        SystemTime::UNIX_EPOCH + Duration::new(secs, u32::try_from(st.st_ctime_nsec).unwrap_or(0));
    SystemTime::now()
        .duration_since(ctime)
        .is_ok_and(|d| d >= age)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locked(path: &Path) -> Flock<std::fs::File> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        Flock::lock(f, FlockArg::LockExclusiveNonblock).unwrap()
    }

    fn names(dir: &Path) -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn the_lock_decides_not_the_pid() {
        let d = tempfile::tempdir().unwrap();
        let me = std::process::id();
        // Named after a live pid (ours) but unlocked: no owner.
        let unowned = format!("{SEGMENT_PREFIX}{me}-00000000000000a1");
        std::fs::write(d.path().join(&unowned), b"x").unwrap();
        // Named after a pid that cannot exist, but locked: owned.
        let owned = format!("{SEGMENT_PREFIX}2147483647-00000000000000a2");
        std::fs::write(d.path().join(&owned), b"x").unwrap();
        let _lock = locked(&d.path().join(&owned));
        // Not ours: never touched.
        std::fs::write(d.path().join("other-file"), b"x").unwrap();
        assert_eq!(remove_orphans(d.path()), vec![unowned]);
        assert_eq!(names(d.path()), [owned, "other-file".to_string()].into());
    }

    #[test]
    fn symlinks_directories_and_fifos_are_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target");
        std::fs::write(&target, b"precious").unwrap();
        std::os::unix::fs::symlink(&target, d.path().join("shmfetch-1-link")).unwrap();
        std::fs::create_dir(d.path().join("shmfetch-1-dir")).unwrap();
        nix::unistd::mkfifo(&d.path().join("shmfetch-1-fifo"), Mode::S_IRUSR).unwrap();
        assert!(remove_orphans(d.path()).is_empty());
        assert_eq!(names(d.path()).len(), 4);
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    }

    #[test]
    fn temporaries_go_only_when_old_and_unlocked() {
        let d = tempfile::tempdir().unwrap();
        let fresh = format!("{TEMP_PREFIX}1-00000000000000b1");
        let held = format!("{TEMP_PREFIX}1-00000000000000b2");
        std::fs::write(d.path().join(&fresh), b"").unwrap();
        std::fs::write(d.path().join(&held), b"").unwrap();
        let _lock = locked(&d.path().join(&held));
        // Young: kept although unlocked (a creation may be about to lock it).
        assert!(remove_orphans(d.path()).is_empty());
        assert_eq!(names(d.path()).len(), 2);
        // Old enough (age 0 here): the unlocked one goes, the locked one stays.
        assert_eq!(
            remove_unowned(d.path(), Duration::ZERO).unwrap(),
            vec![fresh]
        );
        assert_eq!(names(d.path()), [held].into());
    }

    #[test]
    fn a_live_segment_of_any_size_keeps_its_lock() {
        let d = tempfile::tempdir().unwrap();
        let empty = Segment::create(d.path(), 0).unwrap();
        let ring = Segment::create(d.path(), 8192).unwrap();
        let plain = Segment::create_unreserved(d.path(), 4096).unwrap();
        assert!(remove_unowned(d.path(), Duration::ZERO).unwrap().is_empty());
        for s in [&empty, &ring, &plain] {
            assert!(s.dir.join(s.name()).exists(), "{}", s.name());
            assert!(s.name().starts_with(SEGMENT_PREFIX));
        }
        // No temporary is left behind by a creation.
        assert_eq!(names(d.path()).len(), 3);
        // Workers' opens leave the owner's lock alone.
        let m = Mapping::open_whole(d.path(), ring.name()).unwrap();
        let w = open_for_write(d.path(), plain.name(), 0, 4096).unwrap();
        assert!(remove_unowned(d.path(), Duration::ZERO).unwrap().is_empty());
        drop((empty, ring, plain, m, w));
        assert!(names(d.path()).is_empty(), "unlinked on drop");
        // And they are no locks themselves: an owner-less segment is an
        // orphan even while a worker still has it open and mapped.
        let orphan = format!("{SEGMENT_PREFIX}1-00000000000000a3");
        std::fs::write(d.path().join(&orphan), [0u8; 4096]).unwrap();
        let m = Mapping::open_whole(d.path(), &orphan).unwrap();
        let w = open_for_write(d.path(), &orphan, 0, 4096).unwrap();
        assert_eq!(remove_orphans(d.path()), vec![orphan]);
        drop((m, w));
    }

    #[test]
    fn the_first_segment_in_a_directory_cleans_it_once() {
        let d = tempfile::tempdir().unwrap();
        let orphan = d.path().join(format!("{SEGMENT_PREFIX}1-00000000000000c1"));
        std::fs::write(&orphan, b"left by a crash").unwrap();
        let s = Segment::create(d.path(), 16).unwrap();
        assert!(!orphan.exists(), "cleaned before the first segment");
        std::fs::write(&orphan, b"left by a crash").unwrap();
        let s2 = Segment::create(d.path(), 16).unwrap();
        assert!(orphan.exists(), "once per directory per process");
        assert_eq!(remove_orphans_once(d.path()), Vec::<String>::new());
        drop((s, s2));
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope");
        let e = try_remove_orphans(&missing).unwrap_err();
        assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}");
        assert!(remove_orphans(&missing).is_empty());
    }
}
