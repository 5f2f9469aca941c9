//! A checkpoint's `.metadata`: which tensors it holds and where each
//! storage item lies.
//!
//! The file is one pickle (protocol 4) of
//! `torch.distributed.checkpoint.metadata.Metadata`. It is decoded with the
//! safe `pickle` decoder, allowing only the globals a
//! checkpoint uses ([`metadata_globals`]), and mapped onto plain structs.

use std::collections::BTreeMap;

use serde::Serialize;

use super::dtype::DType;
use super::pickle::{self, Value};
use crate::error::{Error, Result};

const M: &str = "torch.distributed.checkpoint.metadata";

/// The globals a `.metadata` pickle may name: the DCP dataclasses,
/// `torch.Size`, the dtypes, the layout and memory-format helpers, and the
/// path class of `storage_meta.checkpoint_id`. Anything else is refused.
pub fn metadata_globals() -> Vec<String> {
    let mut g: Vec<String> = [
        "Metadata",
        "MetadataIndex",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    ]
    .iter()
    .map(|n| format!("{M}.{n}"))
    .collect();
    g.extend(
        [
            "torch.distributed.checkpoint.filesystem._StorageInfo",
            "torch.Size",
            "torch.serialization._get_layout",
            "torch.strided",
            "pathlib.PosixPath",
            "pathlib.WindowsPath",
            "pathlib.PurePosixPath",
            "pathlib.PureWindowsPath",
            "collections.OrderedDict",
        ]
        .map(String::from),
    );
    g.extend(DType::globals());
    g
}

/// What `.metadata` says about a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metadata {
    /// The `version` field (`1.0.0` for current PyTorch), if present.
    pub version: Option<String>,
    /// Every FQN of the saved state dict, sorted.
    pub state_dict: BTreeMap<String, Entry>,
    /// Every storage item, in the order of the pickle.
    pub storage: Vec<StorageItem>,
}

/// One FQN of the state dict.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Entry {
    /// A tensor, stored as one or more chunks.
    Tensor(TensorMeta),
    /// A pickled Python object (stored as one `torch.save` archive).
    Bytes,
}

/// A tensor's dtype, full shape and chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TensorMeta {
    /// Element type.
    #[serde(serialize_with = "ser_dtype")]
    pub dtype: DType,
    /// Full shape (`[]` for a 0-d tensor).
    pub size: Vec<u64>,
    /// The chunks, each a separate storage item.
    pub chunks: Vec<ChunkMeta>,
}

fn ser_dtype<S: serde::Serializer>(d: &DType, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(d.name())
}

impl TensorMeta {
    /// Number of elements of the full tensor (saturating at `u64::MAX`;
    /// [`Metadata::parse`] refuses a tensor whose byte count overflows).
    pub fn numel(&self) -> u64 {
        self.size.iter().fold(1u64, |n, d| n.saturating_mul(*d))
    }

    /// Bytes of the full tensor (saturating, as [`TensorMeta::numel`]).
    pub fn nbytes(&self) -> u64 {
        self.numel().saturating_mul(self.dtype.size() as u64)
    }
}

/// Elements of `shape`, or `None` when the count overflows `u64`.
fn checked_numel(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |n, d| n.checked_mul(*d))
}

/// Where a chunk sits inside its tensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChunkMeta {
    /// Offset along each dimension.
    pub offsets: Vec<u64>,
    /// Size along each dimension.
    pub sizes: Vec<u64>,
}

/// One storage item: a byte range of one data file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StorageItem {
    /// The FQN it belongs to.
    pub fqn: String,
    /// For a tensor chunk, the chunk's offsets; `None` for a bytes item.
    pub chunk_offset: Option<Vec<u64>>,
    /// For a tensor chunk, its position in the tensor's chunks.
    pub index: Option<usize>,
    /// The data file, relative to the checkpoint directory.
    pub relative_path: String,
    /// First byte in the file.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

impl StorageItem {
    /// `fqn` plus the chunk offsets, for messages.
    pub fn label(&self) -> String {
        match &self.chunk_offset {
            Some(o) => format!("{} chunk {o:?}", self.fqn),
            None => self.fqn.clone(),
        }
    }
}

impl Metadata {
    /// Parses a `.metadata` file's bytes.
    ///
    /// # Errors
    /// [`Error::Pickle`] for a truncated or malformed pickle or a global not
    /// in [`metadata_globals`]; [`Error::Checkpoint`] when the object tree
    /// is not a DCP `Metadata` (a field missing or of the wrong type, an
    /// unknown dtype, a storage item with stream transforms).
    pub fn parse(data: &[u8]) -> Result<Metadata> {
        Metadata::parse_file(data, METADATA)
    }

    /// [`Metadata::parse`] of the file `name` (a path or URL): every error
    /// names it, and says whether the file is truncated or not DCP metadata
    /// at all.
    pub(crate) fn parse_file(data: &[u8], name: &str) -> Result<Metadata> {
        let globals = metadata_globals();
        let allowed: Vec<&str> = globals.iter().map(String::as_str).collect();
        let named = |e: Error| match e {
            Error::Pickle { offset, detail } => Error::Pickle {
                offset,
                detail: match detail.strip_prefix("truncated: ") {
                    Some(d) => format!(
                        "{name} is truncated at byte {} — not a complete DCP metadata pickle ({d})",
                        data.len()
                    ),
                    None => format!("{name} is not a DCP metadata pickle: {detail}"),
                },
            },
            Error::Checkpoint { what, detail } if what == METADATA => Error::Checkpoint {
                what: name.to_string(),
                detail,
            },
            e => e,
        };
        let root = pickle::decode(data, &allowed).map_err(named)?;
        from_value(&root).map_err(named)
    }

    /// The tensor FQNs.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &TensorMeta)> {
        self.state_dict.iter().filter_map(|(k, e)| match e {
            Entry::Tensor(t) => Some((k.as_str(), t)),
            Entry::Bytes => None,
        })
    }

    /// The storage items of `fqn`, in chunk order.
    pub fn items_of(&self, fqn: &str) -> Vec<&StorageItem> {
        let mut v: Vec<&StorageItem> = self.storage.iter().filter(|s| s.fqn == fqn).collect();
        v.sort_by_key(|s| s.index);
        v
    }

    /// Every data file the storage items name, sorted.
    pub fn files(&self) -> Vec<&str> {
        let mut f: Vec<&str> = self
            .storage
            .iter()
            .map(|s| s.relative_path.as_str())
            .collect();
        f.sort();
        f.dedup();
        f
    }

    /// Total bytes of the storage items (saturating).
    pub fn stored_bytes(&self) -> u64 {
        self.storage
            .iter()
            .fold(0u64, |n, s| n.saturating_add(s.length))
    }
}

/// What mapping errors name until [`Metadata::parse_file`] puts the file's
/// name in.
const METADATA: &str = ".metadata";

fn bad(detail: impl Into<String>) -> Error {
    Error::checkpoint(METADATA, detail)
}

/// The BUILD state of an object of class `…​.{class}`.
fn state_of<'a>(v: &'a Value, class: &str) -> Result<&'a Value> {
    match v {
        Value::Object { state: Some(s), .. }
            if v.class_name().is_some_and(|c| c.ends_with(class)) =>
        {
            Ok(s)
        }
        _ => Err(bad(format!(
            "expected a {class} object, found {}",
            describe(v)
        ))),
    }
}

fn describe(v: &Value) -> String {
    match v.class_name() {
        Some(c) => c,
        None => v.brief(),
    }
}

fn field<'a>(state: &'a Value, class: &str, key: &str) -> Result<&'a Value> {
    state
        .get(key)
        .ok_or_else(|| bad(format!("{class} has no field {key:?}")))
}

fn int(v: &Value, what: &str) -> Result<u64> {
    v.as_int()
        .and_then(|i| u64::try_from(i).ok())
        .ok_or_else(|| {
            bad(format!(
                "{what}: expected a non-negative integer, found {}",
                v.brief()
            ))
        })
}

/// A `torch.Size` (REDUCE(torch.Size, ([...],))) or a plain list/tuple.
pub(crate) fn size_of(v: &Value, what: &str) -> Result<Vec<u64>> {
    let seq = match v {
        Value::Object { args, .. } if v.class_name().as_deref() == Some("torch.Size") => args
            .as_seq()
            .and_then(|a| a.first())
            .and_then(Value::as_seq),
        other => other.as_seq(),
    };
    let seq = seq.ok_or_else(|| {
        bad(format!(
            "{what}: expected a torch.Size, found {}",
            v.brief()
        ))
    })?;
    seq.iter().map(|x| int(x, what)).collect()
}

fn dtype_of(v: &Value, fqn: &str) -> Result<DType> {
    let name = v
        .class_name()
        .ok_or_else(|| bad(format!("{fqn}: dtype is not a global: {}", v.brief())))?;
    DType::from_torch_name(&name).ok_or_else(|| bad(format!("{fqn}: unsupported dtype {name}")))
}

fn from_value(root: &Value) -> Result<Metadata> {
    let st = state_of(root, ".Metadata")?;
    let version = st.get("version").and_then(Value::as_str).map(String::from);
    let Value::Dict(sdm) = field(st, "Metadata", "state_dict_metadata")? else {
        return Err(bad("state_dict_metadata is not a dict"));
    };
    let mut state_dict = BTreeMap::new();
    for (k, v) in sdm {
        let fqn = k.as_str().ok_or_else(|| {
            bad(format!(
                "state_dict_metadata key is not a string: {}",
                k.brief()
            ))
        })?;
        state_dict.insert(fqn.to_string(), entry_of(fqn, v)?);
    }
    let Value::Dict(sd) = field(st, "Metadata", "storage_data")? else {
        return Err(bad(
            "storage_data is not a dict (a custom storage layer wrote it?)",
        ));
    };
    let storage = sd
        .iter()
        .map(|(k, v)| storage_item_of(k, v))
        .collect::<Result<Vec<_>>>()?;
    for s in &storage {
        match (state_dict.get(&s.fqn), &s.index) {
            (None, _) => {
                return Err(bad(format!(
                    "storage item {} names an FQN that is not in state_dict_metadata",
                    s.label()
                )));
            }
            (Some(Entry::Tensor(t)), Some(i)) if *i < t.chunks.len() => {
                let chunk = &t.chunks[*i];
                if s.chunk_offset.as_ref() != Some(&chunk.offsets) {
                    return Err(bad(format!(
                        "storage item {} does not match chunk {i} of its tensor (offsets {:?})",
                        s.label(),
                        chunk.offsets
                    )));
                }
                // The item is a torch.save archive holding at least the
                // chunk's bytes: a chunk larger than its item is a lie (and
                // trusting it would size buffers from .metadata alone).
                let need = checked_numel(&chunk.sizes)
                    .and_then(|n| n.checked_mul(t.dtype.size() as u64))
                    .ok_or_else(|| bad(format!("{}: chunk size overflows", s.label())))?;
                if need > s.length {
                    return Err(bad(format!(
                        "{}: the chunk needs {need} bytes of {} but its storage item has {} bytes",
                        s.label(),
                        t.dtype,
                        s.length
                    )));
                }
            }
            (Some(Entry::Tensor(_)), _) => {
                return Err(bad(format!(
                    "storage item {} has no valid chunk index",
                    s.label()
                )));
            }
            (Some(Entry::Bytes), _) => {}
        }
    }
    Ok(Metadata {
        version,
        state_dict,
        storage,
    })
}

fn entry_of(fqn: &str, v: &Value) -> Result<Entry> {
    let class = v.class_name().unwrap_or_default();
    if class.ends_with(".BytesStorageMetadata") {
        return Ok(Entry::Bytes);
    }
    let st = state_of(v, ".TensorStorageMetadata")?;
    let props = state_of(
        field(st, "TensorStorageMetadata", "properties")?,
        ".TensorProperties",
    )?;
    // TensorProperties pickles its state as a tuple (dtype, layout,
    // requires_grad, memory_format, pin_memory[, strides]); accept a dict too.
    let dtype_v = match props {
        Value::Tuple(t) => t.first(),
        d => d.get("dtype"),
    }
    .ok_or_else(|| bad(format!("{fqn}: TensorProperties has no dtype")))?;
    let dtype = dtype_of(dtype_v, fqn)?;
    let size = size_of(field(st, "TensorStorageMetadata", "size")?, fqn)?;
    // Every byte count derived from these sizes is checked once here.
    let numel = checked_numel(&size)
        .filter(|n| {
            n.checked_mul(dtype.size() as u64)
                .and_then(|b| usize::try_from(b).ok())
                .is_some()
        })
        .ok_or_else(|| {
            bad(format!(
                "{fqn}: size {size:?} of {dtype} overflows: its byte count does not fit in 64 bits"
            ))
        })?;
    let mut chunk_elems = 0u64;
    let chunks_v = field(st, "TensorStorageMetadata", "chunks")?
        .as_seq()
        .ok_or_else(|| bad(format!("{fqn}: chunks is not a list")))?;
    let mut chunks = Vec::with_capacity(chunks_v.len());
    for c in chunks_v {
        let cs = state_of(c, ".ChunkStorageMetadata")?;
        let offsets = size_of(field(cs, "ChunkStorageMetadata", "offsets")?, fqn)?;
        let sizes = size_of(field(cs, "ChunkStorageMetadata", "sizes")?, fqn)?;
        let fits = offsets.len() == size.len()
            && sizes.len() == size.len()
            && offsets
                .iter()
                .zip(&sizes)
                .zip(&size)
                .all(|((o, s), full)| o.checked_add(*s).is_some_and(|e| e <= *full));
        if !fits {
            return Err(bad(format!(
                "{fqn}: chunk at {offsets:?} of size {sizes:?} does not fit the tensor's size {size:?}"
            )));
        }
        // Fits, so at most `numel` elements: no overflow.
        let n = checked_numel(&sizes).unwrap_or(u64::MAX);
        chunk_elems = chunk_elems.saturating_add(n);
        chunks.push(ChunkMeta { offsets, sizes });
    }
    // dcp.save's own check: the chunks tile the tensor (no gap, no overlap);
    // their element counts must add up to the tensor's.
    if chunk_elems != numel {
        return Err(bad(format!(
            "{fqn}: its chunks hold {chunk_elems} elements but the tensor has {numel}: they do not cover it exactly"
        )));
    }
    Ok(Entry::Tensor(TensorMeta {
        dtype,
        size,
        chunks,
    }))
}

fn storage_item_of(k: &Value, v: &Value) -> Result<StorageItem> {
    let idx = state_of(k, ".MetadataIndex")?;
    let fqn = field(idx, "MetadataIndex", "fqn")?
        .as_str()
        .ok_or_else(|| bad("MetadataIndex.fqn is not a string"))?
        .to_string();
    let chunk_offset = match idx.get("offset") {
        None | Some(Value::None) => None,
        Some(o) => Some(size_of(o, &fqn)?),
    };
    let index = match idx.get("index") {
        None | Some(Value::None) => None,
        Some(i) => Some(int(i, &fqn)? as usize),
    };
    let info = state_of(v, "._StorageInfo")?;
    let relative_path = field(info, "_StorageInfo", "relative_path")?
        .as_str()
        .ok_or_else(|| bad(format!("{fqn}: relative_path is not a string")))?
        .to_string();
    if relative_path.is_empty()
        || relative_path.starts_with('/')
        || relative_path.split('/').any(|p| p == "..")
    {
        return Err(bad(format!(
            "{fqn}: relative_path {relative_path:?} leaves the checkpoint directory"
        )));
    }
    let offset = int(field(info, "_StorageInfo", "offset")?, &fqn)?;
    let length = int(field(info, "_StorageInfo", "length")?, &fqn)?;
    offset
        .checked_add(length)
        .ok_or_else(|| bad(format!("{fqn}: offset + length overflows")))?;
    if let Some(t) = info.get("transform_descriptors")
        && t.as_seq().is_some_and(|s| !s.is_empty())
    {
        return Err(bad(format!(
            "{fqn}: stored with stream transforms {}, which shmfetch cannot decode",
            t.brief()
        )));
    }
    Ok(StorageItem {
        fqn,
        chunk_offset,
        index,
        relative_path,
        offset,
        length,
    })
}
