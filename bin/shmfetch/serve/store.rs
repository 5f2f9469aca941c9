//! The served directory: `DIR/BUCKET/OBJECT` is `ais://BUCKET/OBJECT`.
//!
//! Names come from the network, so they are checked before they touch the
//! file system: a bucket is one path component, an object is relative
//! components none of which is empty, `.` or `..`. What a name resolves to
//! (symlinks followed) must still lie inside the directory, and must be a
//! regular file; nothing is listed or cached, so files added while serving
//! appear at once.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use percent_encoding::percent_decode_str;

/// Why a request path names no object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// Not `/v1/objects/BUCKET/OBJECT` at all.
    NotObjectPath,
    /// A bucket or object name that is refused; the message says why.
    BadName(String),
}

/// Splits `/v1/objects/<bucket>/<object>` (the raw, percent-encoded path)
/// into the decoded bucket and object names, both checked.
pub fn object_path(path: &str) -> Result<(String, String), PathError> {
    let rest = path
        .strip_prefix("/v1/objects/")
        .ok_or(PathError::NotObjectPath)?;
    let (b, o) = rest.split_once('/').ok_or(PathError::NotObjectPath)?;
    let decode = |s: &str, what: &str| {
        percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| PathError::BadName(format!("{what} name {s:?} is not UTF-8")))
    };
    let bucket = decode(b, "bucket")?;
    let object = decode(o, "object")?;
    check_bucket(&bucket)?;
    check_object(&object)?;
    Ok((bucket, object))
}

fn check_bucket(b: &str) -> Result<(), PathError> {
    let why = if b.is_empty() {
        "is empty"
    } else if b == "." || b == ".." {
        "is a relative path component"
    } else if b.contains('/') {
        "contains '/'"
    } else if b.contains('\0') {
        "contains NUL"
    } else {
        return Ok(());
    };
    Err(PathError::BadName(format!(
        "invalid bucket name {b:?}: it {why}"
    )))
}

fn check_object(o: &str) -> Result<(), PathError> {
    let why = if o.is_empty() {
        "it is empty"
    } else if o.starts_with('/') {
        "absolute paths are not allowed"
    } else if o.contains('\0') {
        "it contains NUL"
    } else if o.split('/').any(|c| c == "..") {
        "\"..\" path components are not allowed"
    } else if o.split('/').any(|c| c == "." || c.is_empty()) {
        "empty and \".\" path components are not allowed"
    } else {
        return Ok(());
    };
    Err(PathError::BadName(format!(
        "invalid object name {o:?}: {why}"
    )))
}

/// Why an object cannot be opened.
#[derive(Debug)]
pub enum Lookup {
    /// No such bucket directory.
    NoBucket,
    /// No such regular file in the bucket.
    NoObject,
    /// The name resolves (through a symlink) outside the served directory.
    Outside,
    /// Any other failure of the file system.
    Io(io::Error),
}

/// An opened object: the file, its size and its identity at open time.
#[derive(Debug)]
pub struct Object {
    pub file: File,
    pub size: u64,
    /// Changes whenever the file is replaced or modified (inode, mtime, size).
    pub etag: String,
    /// The modification time in nanoseconds, as `Ais-Version`.
    pub version: String,
}

/// The served directory, canonical.
#[derive(Debug, Clone)]
pub struct Root {
    dir: PathBuf,
}

impl Root {
    /// `dir`, which must be a directory.
    ///
    /// # Errors
    /// When `dir` does not exist or is not a directory.
    pub fn new(dir: &Path) -> io::Result<Root> {
        let dir = dir.canonicalize()?;
        if !dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", dir.display()),
            ));
        }
        Ok(Root { dir })
    }

    /// The directory served.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of buckets (subdirectories, symlinks not counted) right now.
    pub fn buckets(&self) -> io::Result<usize> {
        let mut n = 0;
        for e in std::fs::read_dir(&self.dir)? {
            if e?.file_type()?.is_dir() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Resolves `rel` (already checked) to a canonical path inside the root.
    fn resolve(&self, rel: &Path, missing: fn() -> Lookup) -> Result<(PathBuf, Metadata), Lookup> {
        let p = match self.dir.join(rel).canonicalize() {
            Ok(p) => p,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Err(missing());
            }
            Err(e) => return Err(Lookup::Io(e)),
        };
        if !p.starts_with(&self.dir) {
            return Err(Lookup::Outside);
        }
        let meta = std::fs::metadata(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => missing(),
            _ => Lookup::Io(e),
        })?;
        Ok((p, meta))
    }

    /// Checks that `bucket` is a directory in the root.
    pub fn bucket(&self, bucket: &str) -> Result<(), Lookup> {
        let (_, meta) = self.resolve(Path::new(bucket), || Lookup::NoBucket)?;
        if meta.is_dir() {
            Ok(())
        } else {
            Err(Lookup::NoBucket)
        }
    }

    /// Opens `bucket/object` for reading.
    pub fn open(&self, bucket: &str, object: &str) -> Result<Object, Lookup> {
        self.bucket(bucket)?;
        let (p, meta) = self.resolve(&Path::new(bucket).join(object), || Lookup::NoObject)?;
        if !meta.is_file() {
            return Err(Lookup::NoObject);
        }
        // O_NOFOLLOW: a symlink swapped in since `resolve` is refused;
        // O_NONBLOCK: a FIFO swapped in cannot hang the open.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&p)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => Lookup::NoObject,
                _ => Lookup::Io(e),
            })?;
        let meta = file.metadata().map_err(Lookup::Io)?;
        if !meta.is_file() {
            return Err(Lookup::NoObject);
        }
        let mtime_ns = meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128;
        Ok(Object {
            size: meta.len(),
            etag: format!("\"{:x}-{:x}-{:x}\"", meta.ino(), mtime_ns, meta.len()),
            version: mtime_ns.to_string(),
            file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_paths_are_decoded_and_checked() {
        assert_eq!(
            object_path("/v1/objects/b/a%20dir/x%3Fy"),
            Ok(("b".into(), "a dir/x?y".into()))
        );
        assert_eq!(object_path("/v1/objects/b"), Err(PathError::NotObjectPath));
        assert_eq!(object_path("/v1/other/b/o"), Err(PathError::NotObjectPath));
        for bad in [
            "/v1/objects/b/../x",
            "/v1/objects/b/a/../../x",
            "/v1/objects/b/%2e%2e/x",
            "/v1/objects/b/a%2F..%2Fx",
            "/v1/objects/b//etc/passwd",
            "/v1/objects/b/%2Fetc/passwd",
            "/v1/objects/b/a//b",
            "/v1/objects/b/./a",
            "/v1/objects/b/a/",
            "/v1/objects/b/",
            "/v1/objects/b/a%00",
            "/v1/objects/b/%ff",
            "/v1/objects/../o",
            "/v1/objects/%2e%2e/o",
            "/v1/objects//o",
        ] {
            assert!(
                matches!(object_path(bad), Err(PathError::BadName(_))),
                "{bad}: {:?}",
                object_path(bad)
            );
        }
    }

    #[test]
    fn symlinks_may_not_leave_the_root() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("b/sub")).unwrap();
        std::fs::write(dir.path().join("b/sub/o"), b"hello").unwrap();
        std::os::unix::fs::symlink(dir.path().join("b/sub/o"), dir.path().join("b/inside"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("b/out"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("evil")).unwrap();
        let root = Root::new(dir.path()).unwrap();
        assert_eq!(root.open("b", "sub/o").unwrap().size, 5);
        assert_eq!(root.open("b", "inside").unwrap().size, 5);
        assert!(matches!(root.open("b", "out"), Err(Lookup::Outside)));
        assert!(matches!(root.open("evil", "secret"), Err(Lookup::Outside)));
        assert!(matches!(root.open("b", "sub"), Err(Lookup::NoObject)));
        assert!(matches!(root.open("b", "nope"), Err(Lookup::NoObject)));
        assert!(matches!(root.open("b", "sub/o/x"), Err(Lookup::NoObject)));
        assert!(matches!(root.open("nob", "o"), Err(Lookup::NoBucket)));
        assert_eq!(root.buckets().unwrap(), 1);
    }
}
