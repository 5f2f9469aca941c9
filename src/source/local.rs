//! Local files, read with `pread` (`FileExt::read_exact_at`).

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use crate::error::{Error, Result};
use crate::range::ByteRange;
use crate::source::{ObjectMeta, ObjectSource};

/// A local file as an object.
#[derive(Debug)]
pub struct LocalFile {
    name: String,
    file: File,
}

impl LocalFile {
    /// Opens `path` for reading.
    ///
    /// # Errors
    /// [`Error::ObjectNotFound`] when it does not exist, [`Error::Io`] otherwise.
    pub fn open(path: &Path) -> Result<LocalFile> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::ObjectNotFound {
                object: name.clone(),
                message: e.to_string(),
            },
            _ => Error::io(format!("opening {name}"), &e),
        })?;
        let md = file
            .metadata()
            .map_err(|e| Error::io(format!("stat {name}"), &e))?;
        if md.is_dir() {
            return Err(Error::InvalidSource {
                url: name,
                reason: "is a directory".into(),
            });
        }
        Ok(LocalFile { name, file })
    }
}

impl ObjectSource for LocalFile {
    fn name(&self) -> &str {
        &self.name
    }

    fn meta(&self) -> Result<ObjectMeta> {
        let md = self
            .file
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", self.name), &e))?;
        Ok(ObjectMeta {
            size: md.len(),
            chunk_hint: None,
            etag: Some(format!(
                "{}-{}",
                md.ino(),
                md.mtime_nsec() + md.mtime() * 1_000_000_000
            )),
            version: None,
        })
    }

    fn read_range(
        &self,
        range: ByteRange,
        buf: &mut [u8],
        expected: &ObjectMeta,
        received: &mut usize,
    ) -> Result<()> {
        *received = 0;
        let now = self.meta()?;
        if expected.etag.is_some() && now.etag != expected.etag {
            return Err(Error::ObjectChanged {
                object: self.name.clone(),
                detail: "the file was modified (inode or mtime changed)".into(),
            });
        }
        let expected_size = expected.size;
        if buf.len() as u64 != range.len() {
            return Err(Error::InvalidConfig(format!(
                "buffer of {} bytes for {range}",
                buf.len()
            )));
        }
        let size = self
            .file
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", self.name), &e))?
            .len();
        if size != expected_size {
            return Err(Error::ObjectChanged {
                object: self.name.clone(),
                detail: format!("size was {expected_size} bytes, is now {size}"),
            });
        }
        let mut done = 0usize;
        while done < buf.len() {
            match self
                .file
                .read_at(&mut buf[done..], range.start + done as u64)
            {
                Ok(0) => {
                    return Err(Error::ShortRead {
                        object: self.name.clone(),
                        range,
                        got: done as u64,
                        expected: range.len(),
                    });
                }
                Ok(n) => {
                    done += n;
                    *received = done;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(format!("reading {} {range}", self.name), &e)),
            }
        }
        Ok(())
    }
}
