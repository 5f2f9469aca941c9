//! Test support, also used by the benchmark binary (`shmfetch serve` has a
//! server of its own, without fault injection).
//!
//! * [`content`] — deterministic object bytes `f(seed, offset)`, so any
//!   range can be checked on its own, and their sha256.
//! * [`server`] — a loopback server speaking the AIStore object API: a
//!   gateway that checks the bearer token and redirects (301 GET, 307
//!   HEAD and writes) to one of several targets, which answer HEAD, ranged
//!   GET (206, 416), PUT, DELETE, rename and multipart uploads, and AIS
//!   JSON errors; or S3's (reads and writes); faults can be scripted per
//!   request.

pub mod content;
#[cfg(feature = "test-support")]
pub mod handoff {
    //! The slot hand-off between two real processes (criterion bench).
    pub use crate::shm::handoff::HandOff;
}
pub mod server;

/// A segment created and owned (locked) by this process, as the library
/// creates them, for tests of cleanup and ownership. Unlinked on drop.
#[cfg(feature = "test-support")]
#[derive(Debug)]
pub struct OwnedSegment(crate::shm::Segment);

#[cfg(feature = "test-support")]
impl OwnedSegment {
    /// A reserved segment of `len` bytes in `dir`.
    ///
    /// # Errors
    /// As the library's segment creation.
    pub fn create(dir: &std::path::Path, len: u64) -> crate::Result<OwnedSegment> {
        crate::shm::Segment::create(dir, len).map(OwnedSegment)
    }

    /// An unreserved segment (filled with `pwrite`, like `read_all`'s).
    ///
    /// # Errors
    /// As the library's segment creation.
    pub fn create_unreserved(dir: &std::path::Path, len: u64) -> crate::Result<OwnedSegment> {
        crate::shm::Segment::create_unreserved(dir, len).map(OwnedSegment)
    }

    /// The segment's name.
    pub fn name(&self) -> &str {
        self.0.name()
    }

    /// Its directory.
    pub fn dir(&self) -> &std::path::Path {
        self.0.dir()
    }
}
