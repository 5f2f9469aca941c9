//! Decoding one storage item: a `torch.save` zip archive inside a byte
//! range of a data file.
//!
//! [`ItemView`] shows the item's range of a [`Read`] + [`Seek`] file as a
//! standalone stream (zip offsets are relative to the item start), so the
//! archive is parsed through whichever reader kind is in use — the same
//! access pattern `torch.load` makes on a DCP reader. The `zip` crate reads
//! the central directory (entries are STORED with data descriptors, and the
//! archive ends in ZIP64 records); `data.pkl` goes through the safe pickle
//! decoder, and the storage record is turned into C-order bytes by
//! [`layout::to_c_order`].

use std::io::{self, Read, Seek, SeekFrom};

use super::dtype::DType;
use super::layout;
use super::pickle::{self, Value};
use crate::error::{Error, Result};

/// Largest `data.pkl` accepted (a tensor's is a few hundred bytes).
const MAX_PICKLE: u64 = 16 << 20;

/// The globals an item's `data.pkl` may name when it holds one tensor.
pub fn item_globals() -> Vec<String> {
    let mut g: Vec<String> = [
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "collections.OrderedDict",
        "torch.UntypedStorage",
        "torch.storage.UntypedStorage",
    ]
    .map(String::from)
    .to_vec();
    g.extend(DType::globals());
    g
}

/// The bytes `[start, start + len)` of `inner` as a stream of its own:
/// positions and `SeekFrom::End` are relative to the item.
#[derive(Debug)]
pub struct ItemView<R> {
    inner: R,
    start: u64,
    len: u64,
    pos: u64,
}

impl<R: Read + Seek> ItemView<R> {
    /// A view of `len` bytes of `inner` from `start`.
    pub fn new(inner: R, start: u64, len: u64) -> ItemView<R> {
        ItemView {
            inner,
            start,
            len,
            pos: 0,
        }
    }
}

impl<R: Read + Seek> Read for ItemView<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        let at = self
            .start
            .checked_add(self.pos)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "item offset overflows"))?;
        self.inner.seek(SeekFrom::Start(at))?;
        let got = self.inner.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl<R: Read + Seek> Seek for ItemView<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
        };
        let target = target.ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "seek before the item start")
        })?;
        self.pos = target;
        Ok(target)
    }
}

/// What an item's `data.pkl` says about its tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedTensor {
    /// Element type (from the storage class).
    pub dtype: DType,
    /// The storage record's key (`data/<key>`).
    pub key: String,
    /// Storage length in elements.
    pub storage_numel: u64,
    /// Offset into the storage, in elements.
    pub storage_offset: u64,
    /// Shape.
    pub size: Vec<u64>,
    /// Stride, in elements.
    pub stride: Vec<u64>,
}

/// Reads a tensor item through `r` (positioned relative to the item, e.g.
/// an [`ItemView`]) and returns the chunk's C-order little-endian bytes,
/// checking its dtype and shape against what `.metadata` promised.
///
/// # Errors
/// [`Error::Checkpoint`] naming `what` for anything that is not a
/// `torch.save` archive of one tensor of that dtype and shape (a corrupt or
/// truncated zip, a missing record, a big-endian archive, a compressed
/// record, a mismatch); [`Error::Pickle`] for a bad `data.pkl`; the
/// reader's own errors (e.g. [`Error::UnsupportedAccess`]).
pub fn read_tensor_item<R: Read + Seek>(
    r: R,
    what: &str,
    dtype: DType,
    sizes: &[u64],
) -> Result<Vec<u8>> {
    decode(r, what, Some((dtype, sizes))).map(|t| t.bytes)
}

/// A tensor item decoded: its element type, shape and C-order
/// little-endian bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedTensor {
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub size: Vec<u64>,
    /// The elements in C order.
    pub bytes: Vec<u8>,
}

/// Reads a tensor item through `r` (as [`read_tensor_item`]) whatever its
/// dtype and shape, for callers that check them against a tensor of
/// their own (e.g. a load plan's target).
///
/// # Errors
/// As [`read_tensor_item`], but for the dtype and shape checks.
pub fn decode_tensor_item<R: Read + Seek>(r: R, what: &str) -> Result<DecodedTensor> {
    decode(r, what, None)
}

fn decode<R: Read + Seek>(
    r: R,
    what: &str,
    expect: Option<(DType, &[u64])>,
) -> Result<DecodedTensor> {
    let bad = |d: String| Error::checkpoint(what, d);
    let mut zip =
        zip::ZipArchive::new(r).map_err(|e| zip_err(e, what, "not a torch.save archive"))?;
    let prefix = {
        let first = zip
            .file_names()
            .next()
            .ok_or_else(|| bad("empty archive".into()))?
            .map_err(|e| zip_err(e, what, "entry name"))?;
        match first.split_once('/') {
            Some((p, _)) => p.to_string(),
            None => return Err(bad(format!("entry {first:?} has no top directory"))),
        }
    };
    if let Ok(order) = read_record(&mut zip, &format!("{prefix}/byteorder"), 64, what)
        && order != b"little"
    {
        return Err(bad(format!(
            "byteorder is {:?}; only little-endian archives are supported",
            String::from_utf8_lossy(&order)
        )));
    }
    let pkl = read_record(&mut zip, &format!("{prefix}/data.pkl"), MAX_PICKLE, what)?;
    let globals = item_globals();
    let allowed: Vec<&str> = globals.iter().map(String::as_str).collect();
    let saved = saved_tensor(&pickle::decode(&pkl, &allowed)?, what)?;
    if let Some((dtype, sizes)) = expect {
        if saved.dtype != dtype {
            return Err(bad(format!(
                "holds {} but .metadata says {dtype}",
                saved.dtype
            )));
        }
        if saved.size != sizes {
            return Err(bad(format!(
                "holds shape {:?} but .metadata says {sizes:?}",
                saved.size
            )));
        }
    }
    let dtype = saved.dtype;
    let elem = dtype.size() as u64;
    let want = saved
        .storage_numel
        .checked_mul(elem)
        .ok_or_else(|| bad("storage size overflows".into()))?;
    let storage = read_record(
        &mut zip,
        &format!("{prefix}/data/{}", saved.key),
        want,
        what,
    )?;
    if storage.len() as u64 != want {
        return Err(bad(format!(
            "record data/{} has {} bytes, its storage needs {want}",
            saved.key,
            storage.len()
        )));
    }
    let bytes = layout::into_c_order(
        storage,
        dtype.size(),
        &saved.size,
        &saved.stride,
        saved.storage_offset,
        what,
    )?;
    Ok(DecodedTensor {
        dtype,
        size: saved.size,
        bytes,
    })
}

fn zip_err(e: zip::result::ZipError, what: &str, doing: &str) -> Error {
    // A reader error (e.g. an unsupported access) travels inside io::Error.
    if let zip::result::ZipError::Io(io) = &e
        && let Some(inner) = io.get_ref().and_then(|x| x.downcast_ref::<Error>())
    {
        return inner.clone();
    }
    Error::checkpoint(what, format!("{doing}: {e}"))
}

/// One record's bytes (at most `max`, else an error).
fn read_record<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    max: u64,
    what: &str,
) -> Result<Vec<u8>> {
    let mut f = zip
        .by_name(name)
        .map_err(|e| zip_err(e, what, &format!("record {name}")))?;
    if f.compression() != zip::CompressionMethod::Stored {
        return Err(Error::checkpoint(
            what,
            format!(
                "record {name} is compressed ({:?}); torch.save stores records",
                f.compression()
            ),
        ));
    }
    if f.size() > max {
        return Err(Error::checkpoint(
            what,
            format!(
                "record {name} has {} bytes, more than the {max} expected",
                f.size()
            ),
        ));
    }
    // The size is the archive's claim: reserve at most 1 MiB up front and
    // let the bytes that really arrive grow the buffer.
    let mut out = Vec::with_capacity(f.size().min(1 << 20) as usize);
    f.read_to_end(&mut out).map_err(|e| {
        match e.get_ref().and_then(|x| x.downcast_ref::<Error>()) {
            Some(inner) => inner.clone(),
            None => Error::checkpoint(what, format!("reading record {name}: {e}")),
        }
    })?;
    Ok(out)
}

/// Interprets `_rebuild_tensor_v2(storage, offset, size, stride, ...)`
/// (legacy dtypes: the storage class names the dtype) and
/// `_rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks,
/// dtype, ...)` (newer dtypes such as float8: an `UntypedStorage` counted in
/// bytes, the dtype given as an argument).
fn saved_tensor(v: &Value, what: &str) -> Result<SavedTensor> {
    let bad = |d: String| Error::checkpoint(what, d);
    let Value::Object { callable, args, .. } = v else {
        return Err(bad(format!(
            "data.pkl is not a tensor (a bytes item?): {}",
            short(v)
        )));
    };
    let v3 = match callable.class_name().as_deref() {
        Some("torch._utils._rebuild_tensor_v2") => false,
        Some("torch._utils._rebuild_tensor_v3") => true,
        other => {
            return Err(bad(format!(
                "data.pkl rebuilds with {other:?}, not a plain tensor"
            )));
        }
    };
    let a = args
        .as_seq()
        .filter(|a| a.len() >= if v3 { 7 } else { 4 })
        .ok_or_else(|| bad("too few arguments to rebuild the tensor".into()))?;
    let Value::PersistentId(pid) = &a[0] else {
        return Err(bad("tensor storage is not a persistent id".into()));
    };
    let p = pid
        .as_seq()
        .filter(|p| p.len() >= 5 && p[0].as_str() == Some("storage"))
        .ok_or_else(|| {
            bad(format!(
                "storage id is not ('storage', class, key, location, numel): {}",
                pid.brief()
            ))
        })?;
    let class = p[1].class_name().unwrap_or_default();
    let nonneg = |v: &Value, name: &str| -> Result<u64> {
        v.as_int()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| {
                bad(format!(
                    "{name} is not a non-negative integer: {}",
                    v.brief()
                ))
            })
    };
    let count = nonneg(&p[4], "storage size")?;
    let (dtype, storage_numel) = if class.ends_with("UntypedStorage") {
        let dname = a
            .get(6)
            .and_then(Value::class_name)
            .ok_or_else(|| bad("an UntypedStorage tensor without its dtype".into()))?;
        let dtype = DType::from_torch_name(&dname)
            .ok_or_else(|| bad(format!("unsupported dtype {dname}")))?;
        // Untyped storages are counted in bytes.
        (dtype, count / dtype.size() as u64)
    } else {
        let dtype = DType::from_storage_class(&class)
            .ok_or_else(|| bad(format!("unsupported storage class {class:?}")))?;
        (dtype, count)
    };
    let key = p[2]
        .as_str()
        .filter(|k| !k.is_empty() && !k.contains('/') && !k.contains(".."))
        .ok_or_else(|| bad(format!("bad storage key {}", p[2].brief())))?
        .to_string();
    let list = |v: &Value, name: &str| -> Result<Vec<u64>> {
        v.as_seq()
            .ok_or_else(|| bad(format!("{name} is not a tuple: {}", v.brief())))?
            .iter()
            .map(|x| nonneg(x, name))
            .collect()
    };
    Ok(SavedTensor {
        dtype,
        key,
        storage_numel,
        storage_offset: nonneg(&a[1], "storage offset")?,
        size: list(&a[2], "size")?,
        stride: list(&a[3], "stride")?,
    })
}

fn short(v: &Value) -> String {
    v.brief()
}
