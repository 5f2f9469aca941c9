//! Local files, read with `pread` (`FileExt::read_exact_at`).

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use crate::error::{Error, Result};
use crate::range::ByteRange;
use crate::source::sink::RangeSink;
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
            no_ranges: false,
        })
    }

    fn read_range(
        &self,
        range: ByteRange,
        sink: &mut dyn RangeSink,
        expected: &ObjectMeta,
    ) -> Result<()> {
        if sink.remaining() as u64 != range.len() {
            return Err(Error::InvalidConfig(format!(
                "sink of {} bytes for {range}",
                sink.remaining()
            )));
        }
        let now = self.meta()?;
        if expected.etag.is_some() && now.etag != expected.etag {
            return Err(Error::ObjectChanged {
                object: self.name.clone(),
                detail: "the file was modified (inode or mtime changed)".into(),
            });
        }
        if now.size != expected.size {
            return Err(Error::ObjectChanged {
                object: self.name.clone(),
                detail: format!("size was {} bytes, is now {}", expected.size, now.size),
            });
        }
        let mut done = 0u64;
        while done < range.len() {
            let buf = sink.next_buf((range.len() - done).min(1 << 20) as usize);
            match self.file.read_at(buf, range.start + done) {
                Ok(0) => {
                    return Err(Error::ShortRead {
                        object: self.name.clone(),
                        range,
                        got: done,
                        expected: range.len(),
                    });
                }
                Ok(n) => {
                    sink.commit(n)?;
                    done += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(format!("reading {} {range}", self.name), &e)),
            }
        }
        Ok(())
    }
}
