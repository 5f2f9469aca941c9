//! Named shared-memory segments and the mappings workers make of them.
//!
//! Ownership is observable from the segment itself: its owner holds an
//! exclusive `flock` on it from before it gets its name until after the name
//! is gone.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, Flock, FlockArg, OFlag, RenameFlags};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use nix::sys::stat::Mode;

use crate::error::{Error, Result};

/// Where segments live unless configured otherwise.
pub const DEFAULT_SHM_DIR: &str = "/dev/shm";

/// Every segment this crate creates starts with this, followed by
/// `<owner pid>-<random hex>`.
pub const SEGMENT_PREFIX: &str = "shmfetch-";

/// A segment is created under this hidden name (followed by the same
/// `<pid>-<hex>` as its final name) and renamed to its final name only once
/// its owner holds its lock.
pub const TEMP_PREFIX: &str = ".shmfetch-new-";

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
            // Someone else holds the lock of our fresh file: leave it.
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
            // Someone removed the temporary: try a new name.
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
    /// # Errors
    /// [`Error::ShmNoSpace`] when `dir` has no room for `len` bytes (the
    /// partial segment is removed); [`Error::Shm`] for other OS failures.
    pub fn create(dir: &Path, len: u64) -> Result<Segment> {
        Segment::create_inner(dir, len, true)
    }

    /// Creates a segment of `len` bytes whose space is *not* reserved, for
    /// segments that workers fill with `pwrite` (which allocates each page
    /// and reports a full tmpfs as `ENOSPC`, never SIGBUS) and never map.
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
        let (name, lock) = create_locked(dir)?;
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

    /// Whether the segment is 0 bytes long.
    pub fn is_empty(&self) -> bool {
        self.len == 0
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
    pub unsafe fn slice(&self, offset: usize, len: usize) -> &[u8] {
        if len == 0 || offset.checked_add(len).is_none_or(|end| end > self.len) {
            return &[];
        }
        // SAFETY: in bounds of a live mapping (checked above); the caller
        // guarantees no concurrent writer.
        unsafe { std::slice::from_raw_parts(self.as_ptr().add(offset), len) }
    }

    /// The bytes `[offset, offset + len)` for writing, from this process.
    ///
    /// # Safety
    /// No other reference to those bytes may exist, and no other process
    /// may touch them, while the returned slice lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, offset: usize, len: usize) -> &mut [u8] {
        if len == 0 || offset.checked_add(len).is_none_or(|end| end > self.len) {
            return &mut [];
        }
        // SAFETY: in bounds (checked above); exclusivity is the caller's
        // contract.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr().add(offset), len) }
    }

    /// Whether the segment's file still exists.
    pub fn exists(&self) -> bool {
        self.dir.join(&self.name).exists()
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
        if let Err(e) = unlink_in(&self.dir, &self.name) {
            tracing::warn!(segment = %self.name, error = %e, "could not unlink shared-memory segment");
        }
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
/// unlinks, never locks (the lock is the owner's). Keeps the descriptor,
/// so it can tell when the owner has unlinked the segment
/// ([`Mapping::is_unlinked`]).
#[derive(Debug)]
pub struct Mapping {
    fd: OwnedFd,
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
            fd,
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

    /// The bytes `[seg_offset, seg_offset + len)` of the segment, if this
    /// mapping covers them.
    pub fn window_mut(&mut self, seg_offset: u64, len: usize) -> Option<&mut [u8]> {
        let rel = seg_offset.checked_sub(self.start)? as usize;
        if rel.checked_add(len)? > self.map_len {
            return None;
        }
        // SAFETY: in bounds of our live mapping (checked above); &mut self
        // makes this the only reference from this process, and the
        // coordinator gives each range to one worker at a time.
        Some(unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(rel), len) })
    }

    /// A pointer to byte `seg_offset` of the segment, if this mapping
    /// covers it (used to reach a ready-event word).
    pub fn ptr_at(&self, seg_offset: u64) -> Option<*mut u8> {
        let rel = seg_offset.checked_sub(self.start)? as usize;
        if rel >= self.map_len {
            return None;
        }
        // SAFETY: in bounds of our mapping (checked above).
        Some(unsafe { self.base.as_ptr().add(rel) })
    }

    /// Whether the owner has unlinked the segment (its memory then lives
    /// only as long as mappings like this one).
    pub fn is_unlinked(&self) -> bool {
        nix::sys::stat::fstat(self.fd.as_fd())
            .map(|st| st.st_nlink == 0)
            .unwrap_or(true)
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

/// Removes segments in `dir` whose owner process no longer exists (the pid
/// is part of the name). Returns the names removed.
pub fn remove_orphans(dir: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return removed;
    };
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(SEGMENT_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
            .map(|_| true)
            .unwrap_or_else(|e| e != Errno::ESRCH);
        if !alive && unlink_in(dir, &name).is_ok() {
            removed.push(name);
        }
    }
    removed
}
