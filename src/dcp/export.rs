//! Exporting a checkpoint's tensors to a `.safetensors` file, written as
//! the tensors arrive.
//!
//! The header (names, dtypes, shapes, byte offsets) is known from
//! `.metadata` before any tensor is fetched, so it is written first (built
//! and serialised by the `safetensors` crate's own `Metadata`) and each
//! tensor is written at its offset when it is complete: memory holds one
//! tensor at a time, not the whole export. The file is written under a
//! temporary name and renamed into place by [`SafetensorsWriter::finish`];
//! dropping the writer earlier removes it.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Metadata as StMetadata, TensorInfo};

use super::checkpoint::{Checkpoint, StorageReader, load_tensors, plan};
use super::dtype::DType;
use super::metadata::{Entry, Metadata};
use super::readers::ReaderKind;
use crate::error::{Error, Result};

/// What [`export_safetensors`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExportReport {
    /// Tensors written.
    pub tensors: usize,
    /// Bytes of tensor data written.
    pub tensor_bytes: u64,
    /// Bytes items (Python objects) left out: safetensors holds tensors only.
    pub skipped_bytes_items: Vec<String>,
    /// Range requests made (`.metadata` included).
    pub requests: u64,
    /// Bytes fetched (`.metadata` included).
    pub bytes_fetched: u64,
    /// Bytes of all storage items in the checkpoint.
    pub checkpoint_bytes: u64,
}

/// Loads the tensors `only` (all when empty) of `ckpt` with `kind` and
/// writes them, full and in C order, to the safetensors file `dest` (under a
/// temporary name until complete). `md` is the checkpoint's metadata
/// ([`Checkpoint::metadata`]). `progress` is called with each tensor's name
/// and size as it is written.
///
/// The output is a function of the checkpoint's contents and `only`
/// alone: the header's `__metadata__` is `{"format": "pt"}` (no location),
/// so the same checkpoint exported twice, from anywhere, gives the same
/// bytes.
///
/// # Errors
/// [`Error::InvalidConfig`] for an unknown FQN or a bytes item in `only`,
/// or a `dest` that [`check_destination`] refuses (before anything is
/// fetched); fetch, decode and write errors. Nothing is left at `dest` on
/// error.
pub fn export_safetensors(
    ckpt: &Checkpoint,
    md: &Metadata,
    kind: ReaderKind,
    only: &[String],
    dest: &Path,
    progress: &mut dyn FnMut(&str, u64),
) -> Result<ExportReport> {
    check_destination(dest)?;
    let items = plan(md, only)?;
    let chosen: Vec<(String, DType, Vec<u64>)> = md
        .tensors()
        .filter(|(f, _)| only.is_empty() || only.iter().any(|o| o == f))
        .map(|(f, t)| (f.to_string(), t.dtype, t.size.clone()))
        .collect();
    let skipped: Vec<String> = md
        .state_dict
        .iter()
        .filter(|(_, e)| matches!(e, Entry::Bytes))
        .map(|(f, _)| f.clone())
        .filter(|f| only.is_empty() || only.contains(f))
        .collect();
    let mut info = HashMap::new();
    info.insert("format".to_string(), "pt".to_string());
    let mut w = SafetensorsWriter::create(dest, &chosen, info)?;
    let storage = StorageReader::new(ckpt, kind, &items);
    let mut tensor_bytes = 0;
    load_tensors(&storage, md, &items, &mut |fqn, _meta, bytes| {
        w.write(fqn, &bytes)?;
        tensor_bytes += bytes.len() as u64;
        progress(fqn, bytes.len() as u64);
        Ok(())
    })?;
    w.finish()?;
    Ok(ExportReport {
        tensors: chosen.len(),
        tensor_bytes,
        skipped_bytes_items: skipped,
        requests: ckpt.counter().requests(),
        bytes_fetched: ckpt.counter().bytes(),
        checkpoint_bytes: md.stored_bytes(),
    })
}

/// Checks that `dest` can name the file an export writes: not an existing
/// directory, and in a directory that exists. Cheap, and meant to run
/// before anything is fetched.
///
/// # Errors
/// [`Error::InvalidConfig`] saying which.
pub fn check_destination(dest: &Path) -> Result<()> {
    let shown = dest.display();
    if dest.is_dir() {
        return Err(Error::InvalidConfig(format!(
            "output {shown} is a directory: name the file to write (e.g. {})",
            dest.join("model.safetensors").display()
        )));
    }
    if dest.file_name().is_none() {
        return Err(Error::InvalidConfig(format!(
            "output {shown} does not name a file"
        )));
    }
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        return Err(Error::InvalidConfig(format!(
            "the directory of output {shown} ({}) does not exist",
            dir.display()
        )));
    }
    Ok(())
}

/// The hidden file an export to `dest` is written to before it is renamed
/// into place: `.NAME.shmfetch-part-PID` beside `dest` (a CLI removes it
/// when interrupted; `shmfetch gc DIR` removes those of dead processes).
///
/// # Errors
/// [`Error::InvalidConfig`] when `dest` has no file name.
pub fn part_path(dest: &Path) -> Result<PathBuf> {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .ok_or_else(|| Error::InvalidConfig(format!("{} has no file name", dest.display())))?;
    Ok(dir.join(format!(
        ".{}.shmfetch-part-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// A `.safetensors` file being filled.
#[derive(Debug)]
pub struct SafetensorsWriter {
    file: File,
    tmp: PathBuf,
    dest: PathBuf,
    /// name → (absolute file offset, length, written)
    slots: HashMap<String, (u64, u64, bool)>,
    finished: bool,
}

impl SafetensorsWriter {
    /// Creates `dest` (as a temporary file next to it) for `tensors`
    /// (name, dtype, shape), with `metadata` in the header's
    /// `__metadata__`.
    ///
    /// The header is deterministic: tensors in the crate's order (larger
    /// elements first, then by name) and `__metadata__` with sorted keys.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be created; [`Error::InvalidConfig`]
    /// when `dest` is refused by [`check_destination`], a tensor's size
    /// overflows, or the crate refuses the header (a duplicate name).
    pub fn create(
        dest: &Path,
        tensors: &[(String, DType, Vec<u64>)],
        metadata: HashMap<String, String>,
    ) -> Result<SafetensorsWriter> {
        // The crate's own order: larger elements first (keeps alignment),
        // then by name.
        let mut order: Vec<&(String, DType, Vec<u64>)> = tensors.iter().collect();
        order.sort_by(|a, b| b.1.size().cmp(&a.1.size()).then(a.0.cmp(&b.0)));
        check_destination(dest)?;
        let mut infos = Vec::with_capacity(order.len());
        let mut at = 0usize;
        for (name, dtype, shape) in order {
            let too_big = || Error::InvalidConfig(format!("{name}: size {shape:?} overflows"));
            let len = shape
                .iter()
                .try_fold(dtype.size() as u64, |n, d| n.checked_mul(*d))
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(too_big)?;
            let end = at.checked_add(len).ok_or_else(too_big)?;
            let dims = shape
                .iter()
                .map(|d| usize::try_from(*d).map_err(|_| too_big()))
                .collect::<Result<_>>()?;
            infos.push((
                name.clone(),
                TensorInfo {
                    dtype: dtype.safetensors(),
                    shape: dims,
                    data_offsets: (at, end),
                },
            ));
            at = end;
        }
        let header_err =
            |e: &dyn std::fmt::Display| Error::InvalidConfig(format!("safetensors header: {e}"));
        // The crate keeps `__metadata__` in a HashMap, whose order changes
        // from run to run: serialise the tensors with the crate, and the
        // metadata ourselves with sorted keys.
        let meta = StMetadata::new(None, infos.clone()).map_err(|e| header_err(&e))?;
        let mut json = serde_json::to_value(&meta).map_err(|e| header_err(&e))?;
        let sorted: BTreeMap<String, String> = metadata.into_iter().collect();
        if let serde_json::Value::Object(m) = &mut json
            && !sorted.is_empty()
        {
            let v = serde_json::to_value(sorted).map_err(|e| header_err(&e))?;
            m.insert("__metadata__".to_string(), v);
        }
        let mut header = serde_json::to_vec(&json).map_err(|e| header_err(&e))?;
        // Pad so the data starts 8-byte aligned, as the format asks.
        header.resize(header.len().next_multiple_of(8), b' ');
        let data_start = 8 + header.len() as u64;
        let io = |ctx: String| move |e: std::io::Error| Error::io(ctx, &e);
        let tmp = part_path(dest)?;
        let file = File::create(&tmp).map_err(io(format!("creating {}", tmp.display())))?;
        let w = SafetensorsWriter {
            file,
            tmp,
            dest: dest.to_path_buf(),
            slots: infos
                .iter()
                .map(|(n, i)| {
                    let (s, e) = i.data_offsets;
                    (n.clone(), (data_start + s as u64, (e - s) as u64, e == s))
                })
                .collect(),
            finished: false,
        };
        let ctx = format!("writing {}", w.tmp.display());
        w.file
            .set_len(data_start + at as u64)
            .map_err(io(ctx.clone()))?;
        w.file
            .write_all_at(&(header.len() as u64).to_le_bytes(), 0)
            .map_err(io(ctx.clone()))?;
        w.file.write_all_at(&header, 8).map_err(io(ctx))?;
        Ok(w)
    }

    /// Writes tensor `name`'s C-order bytes.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a name not in the header or bytes of the
    /// wrong length; [`Error::Io`] when writing fails.
    pub fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let slot = self
            .slots
            .get_mut(name)
            .ok_or_else(|| Error::InvalidConfig(format!("{name} is not in the header")))?;
        if bytes.len() as u64 != slot.1 {
            return Err(Error::InvalidConfig(format!(
                "{name}: {} bytes, the header says {}",
                bytes.len(),
                slot.1
            )));
        }
        self.file
            .write_all_at(bytes, slot.0)
            .map_err(|e| Error::io(format!("writing {}", self.tmp.display()), &e))?;
        slot.2 = true;
        Ok(())
    }

    /// Checks every tensor was written, syncs and renames the file into
    /// place.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming a tensor never written; [`Error::Io`].
    pub fn finish(mut self) -> Result<()> {
        if let Some((n, _)) = self.slots.iter().find(|(_, s)| !s.2) {
            return Err(Error::InvalidConfig(format!("{n} was never written")));
        }
        let ctx = format!("finishing {}", self.dest.display());
        self.file.sync_all().map_err(|e| Error::io(&ctx, &e))?;
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io(&ctx, &e))?;
        self.finished = true;
        Ok(())
    }
}

impl Drop for SafetensorsWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_crate_reader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let tensors = vec![
            ("b".to_string(), DType::BF16, vec![2, 3]),
            ("a".to_string(), DType::I64, vec![]),
            ("e".to_string(), DType::Bool, vec![0, 4]),
        ];
        let mut w = SafetensorsWriter::create(&path, &tensors, HashMap::new()).unwrap();
        w.write("b", &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])
            .unwrap();
        assert!(w.write("b", &[1]).is_err());
        assert!(w.write("zzz", &[]).is_err());
        w.write("a", &7i64.to_le_bytes()).unwrap();
        w.finish().unwrap();
        let data = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&data).unwrap();
        let b = st.tensor("b").unwrap();
        assert_eq!(b.dtype(), safetensors::Dtype::BF16);
        assert_eq!(b.shape(), &[2, 3]);
        assert_eq!(b.data(), &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(st.tensor("a").unwrap().data(), &7i64.to_le_bytes());
        assert_eq!(st.tensor("e").unwrap().shape(), &[0, 4]);
        // Only the file itself is left.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn unfinished_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let tensors = vec![("x".to_string(), DType::F32, vec![1])];
        let w = SafetensorsWriter::create(&path, &tensors, HashMap::new()).unwrap();
        let e = SafetensorsWriter::finish(w).unwrap_err();
        assert!(e.to_string().contains("x was never written"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
