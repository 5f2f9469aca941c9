//! Checkpoints we have not seen: written here, byte for byte in DCP's
//! layout (a `.metadata` pickle of the DCP dataclasses, data files of
//! concatenated `torch.save` zip archives), with what the fixture lacks:
//! 3 ranks x 2 files, f64/i8/i16/i32/u8/u16/float8_e4m3fn, a channels-last
//! and a transposed shard, a sliced view with a storage offset, an empty
//! shard, a 0-d tensor, row and column shards. Every tensor must come back
//! equal to the one generated, through every reader kind.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use shmfetch::WorkerPool;
use shmfetch::dcp::{Checkpoint, export_safetensors};
use shmfetch::testing::content;

use crate::dcp_load::all_kinds;

/// A protocol-2 pickle writer for the opcodes DCP's files use.
pub(crate) struct P(pub(crate) Vec<u8>);

impl P {
    pub(crate) fn new() -> P {
        P(vec![0x80, 2])
    }
    pub(crate) fn op(&mut self, b: &[u8]) -> &mut P {
        self.0.extend_from_slice(b);
        self
    }
    pub(crate) fn global(&mut self, module: &str, name: &str) -> &mut P {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }
    pub(crate) fn int(&mut self, i: u64) -> &mut P {
        if i < 256 {
            self.op(&[b'K', i as u8])
        } else if i < (1 << 31) {
            self.op(b"J").op(&(i as u32).to_le_bytes())
        } else {
            self.op(&[0x8a, 8]).op(&i.to_le_bytes())
        }
    }
    pub(crate) fn str(&mut self, s: &str) -> &mut P {
        self.op(b"X")
            .op(&(s.len() as u32).to_le_bytes())
            .op(s.as_bytes())
    }
    pub(crate) fn ints_tuple(&mut self, v: &[u64]) -> &mut P {
        self.op(b"(");
        for &x in v {
            self.int(x);
        }
        self.op(b"t")
    }
    /// `torch.Size([..])` as REDUCE(torch.Size, ([..],)).
    pub(crate) fn size(&mut self, v: &[u64]) -> &mut P {
        self.global("torch", "Size").op(b"(]("); // args tuple, list, mark
        for &x in v {
            self.int(x);
        }
        self.op(b"et").op(b"R")
    }
    /// `cls.__new__(cls)` then BUILD with the dict the closure writes.
    pub(crate) fn dataclass(
        &mut self,
        module: &str,
        name: &str,
        fields: impl FnOnce(&mut P),
    ) -> &mut P {
        self.global(module, name).op(b")\x81}(");
        fields(self);
        self.op(b"ub")
    }
    pub(crate) fn done(&mut self) -> Vec<u8> {
        self.op(b".");
        std::mem::take(&mut self.0)
    }
}

pub(crate) const M: &str = "torch.distributed.checkpoint.metadata";

#[derive(Clone, Copy)]
struct Dt {
    name: &'static str,
    storage: Option<&'static str>, // None: UntypedStorage + _rebuild_tensor_v3
    size: usize,
    st: safetensors::Dtype,
}

const F64: Dt = Dt {
    name: "float64",
    storage: Some("DoubleStorage"),
    size: 8,
    st: safetensors::Dtype::F64,
};
const I8: Dt = Dt {
    name: "int8",
    storage: Some("CharStorage"),
    size: 1,
    st: safetensors::Dtype::I8,
};
const I16: Dt = Dt {
    name: "int16",
    storage: Some("ShortStorage"),
    size: 2,
    st: safetensors::Dtype::I16,
};
const I32: Dt = Dt {
    name: "int32",
    storage: Some("IntStorage"),
    size: 4,
    st: safetensors::Dtype::I32,
};
const U8: Dt = Dt {
    name: "uint8",
    storage: Some("ByteStorage"),
    size: 1,
    st: safetensors::Dtype::U8,
};
const BF16: Dt = Dt {
    name: "bfloat16",
    storage: Some("BFloat16Storage"),
    size: 2,
    st: safetensors::Dtype::BF16,
};
const F8: Dt = Dt {
    name: "float8_e4m3fn",
    storage: None,
    size: 1,
    st: safetensors::Dtype::F8_E4M3,
};
const U16: Dt = Dt {
    name: "uint16",
    storage: None,
    size: 2,
    st: safetensors::Dtype::U16,
};

/// How a chunk's storage is laid out when saved.
#[derive(Clone, Copy)]
enum Layout {
    C,
    /// Dimensions stored in this order, outermost first (a permutation).
    Perm(&'static [usize]),
    /// C order inside a larger storage: rows padded to `row` elements,
    /// starting at element `offset` (a sliced view).
    Slice {
        offset: u64,
        row: u64,
    },
}

struct Tensor {
    fqn: &'static str,
    dt: Dt,
    size: Vec<u64>,
    /// (offsets, sizes, layout) per chunk.
    chunks: Vec<(Vec<u64>, Vec<u64>, Layout)>,
}

fn c_strides(shape: &[u64]) -> Vec<u64> {
    let mut s = vec![1u64; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// Every index of `shape` in C order.
fn indices(shape: &[u64]) -> Vec<Vec<u64>> {
    let n: u64 = shape.iter().product();
    let cs = c_strides(shape);
    (0..n)
        .map(|lin| (0..shape.len()).map(|d| lin / cs[d] % shape[d]).collect())
        .collect()
}

/// A chunk's C-order bytes cut from the full tensor.
fn cut(full: &[u8], size: &[u64], off: &[u64], sizes: &[u64], e: usize) -> Vec<u8> {
    let fs = c_strides(size);
    let mut out = Vec::new();
    for idx in indices(sizes) {
        let lin: u64 = idx
            .iter()
            .enumerate()
            .map(|(d, i)| (off[d] + i) * fs[d])
            .sum();
        out.extend_from_slice(&full[lin as usize * e..(lin as usize + 1) * e]);
    }
    out
}

/// Lays the chunk's C-order bytes out as `layout` says: (storage bytes,
/// stride, storage offset).
fn lay_out(chunk: &[u8], sizes: &[u64], e: usize, layout: Layout) -> (Vec<u8>, Vec<u64>, u64) {
    let (stride, offset, numel) = match layout {
        Layout::C => (c_strides(sizes), 0, sizes.iter().product::<u64>()),
        Layout::Perm(order) => {
            let mut st = vec![0u64; sizes.len()];
            let mut acc = 1;
            for &d in order.iter().rev() {
                st[d] = acc;
                acc *= sizes[d];
            }
            (st, 0, sizes.iter().product())
        }
        Layout::Slice { offset, row } => {
            let mut st = c_strides(sizes);
            st[0] = row;
            (st, offset, offset + sizes[0] * row + 3)
        }
    };
    let mut storage = vec![0xA5u8; numel as usize * e];
    for (k, idx) in indices(sizes).iter().enumerate() {
        let pos: u64 = offset + idx.iter().zip(&stride).map(|(i, s)| i * s).sum::<u64>();
        storage[pos as usize * e..(pos as usize + 1) * e]
            .copy_from_slice(&chunk[k * e..(k + 1) * e]);
    }
    (storage, stride, offset)
}

/// A `torch.save` archive of one tensor.
fn tensor_item(dt: Dt, storage: &[u8], sizes: &[u64], stride: &[u64], offset: u64) -> Vec<u8> {
    let mut p = P::new();
    let v3 = dt.storage.is_none();
    p.global(
        "torch._utils",
        if v3 {
            "_rebuild_tensor_v3"
        } else {
            "_rebuild_tensor_v2"
        },
    );
    p.op(b"((").str("storage");
    match dt.storage {
        Some(class) => p
            .global("torch", class)
            .str("0")
            .str("cpu")
            .int((storage.len() / dt.size) as u64),
        None => p
            .global("torch", "UntypedStorage")
            .str("0")
            .str("cpu")
            .int(storage.len() as u64),
    };
    p.op(b"tQ")
        .int(offset)
        .ints_tuple(sizes)
        .ints_tuple(stride)
        .op(b"\x89");
    p.global("collections", "OrderedDict").op(b")R");
    if v3 {
        p.global("torch", dt.name);
    }
    let pkl = p.op(b"tR").done();
    archive(&[
        ("data.pkl", &pkl),
        ("byteorder", b"little"),
        ("data/0", storage),
        ("version", b"3\n"),
    ])
}

/// A `torch.save` archive of a Python float (a bytes item).
fn bytes_item(v: f64) -> Vec<u8> {
    let mut pkl = vec![0x80, 2, b'G'];
    pkl.extend_from_slice(&v.to_be_bytes());
    pkl.push(b'.');
    archive(&[
        ("data.pkl", &pkl),
        ("byteorder", b"little"),
        ("version", b"3\n"),
    ])
}

fn archive(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .with_alignment(64);
    for (name, data) in records {
        z.start_file(format!("ckpt_archive/{name}"), opts).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap().into_inner()
}

fn tensors() -> Vec<Tensor> {
    use Layout::*;
    let t = |fqn, dt, size: &[u64], chunks: Vec<(&[u64], &[u64], Layout)>| Tensor {
        fqn,
        dt,
        size: size.to_vec(),
        chunks: chunks
            .into_iter()
            .map(|(o, s, l)| (o.to_vec(), s.to_vec(), l))
            .collect(),
    };
    vec![
        t(
            "model.f64_rows",
            F64,
            &[6, 5],
            vec![
                (&[0, 0], &[2, 5], C),
                (&[2, 0], &[2, 5], C),
                (&[4, 0], &[2, 5], C),
            ],
        ),
        t(
            "model.i8_cols",
            I8,
            &[4, 9],
            vec![(&[0, 0], &[4, 5], C), (&[0, 5], &[4, 4], Perm(&[1, 0]))],
        ),
        t(
            "model.i16_cube",
            I16,
            &[3, 3, 3],
            vec![(&[0, 0, 0], &[3, 3, 3], Perm(&[2, 0, 1]))],
        ),
        t(
            "model.i32_channels_last",
            I32,
            &[2, 3, 4, 5],
            vec![(&[0, 0, 0, 0], &[2, 3, 4, 5], Perm(&[0, 2, 3, 1]))],
        ),
        t(
            "model.u8_slice",
            U8,
            &[4, 6],
            vec![(&[0, 0], &[4, 6], Slice { offset: 7, row: 8 })],
        ),
        t(
            "model.f8_e4m3fn",
            F8,
            &[5, 4],
            vec![(&[0, 0], &[3, 4], C), (&[3, 0], &[2, 4], Perm(&[1, 0]))],
        ),
        t("model.u16", U16, &[7], vec![(&[0], &[7], C)]),
        t(
            "model.uneven",
            F64,
            &[3, 4],
            vec![
                (&[0, 0], &[2, 4], C),
                (&[2, 0], &[1, 4], C),
                (&[3, 0], &[0, 4], C),
            ],
        ),
        t("model.scalar", BF16, &[], vec![(&[], &[], C)]),
        t("model.empty", I32, &[0, 7], vec![(&[0, 0], &[0, 7], C)]),
    ]
}

/// Writes the checkpoint into `dir`; returns each tensor's full C-order bytes.
fn write_checkpoint(dir: &Path) -> BTreeMap<&'static str, (Dt, Vec<u64>, Vec<u8>)> {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut storage_data = Vec::new(); // (fqn, Some((offsets, index)), file, offset, length)
    let mut expected = BTreeMap::new();
    let mut n = 0usize;
    let mut place = |item: Vec<u8>, files: &mut BTreeMap<String, Vec<u8>>| {
        let name = format!("__{}_{}.distcp", n % 3, (n / 3) % 2);
        n += 1;
        let f = files.entry(name.clone()).or_default();
        let at = f.len() as u64;
        f.extend_from_slice(&item);
        (name, at, item.len() as u64)
    };
    let ts = tensors();
    for (k, t) in ts.iter().enumerate() {
        let e = t.dt.size;
        let numel: u64 = t.size.iter().product();
        let full = content::bytes(100 + k as u64, numel as usize * e);
        for (i, (off, sizes, layout)) in t.chunks.iter().enumerate() {
            let chunk = cut(&full, &t.size, off, sizes, e);
            let (storage, stride, soff) = lay_out(&chunk, sizes, e, *layout);
            let (file, at, len) = place(
                tensor_item(t.dt, &storage, sizes, &stride, soff),
                &mut files,
            );
            storage_data.push((t.fqn, Some((off.clone(), i)), file, at, len));
        }
        expected.insert(t.fqn, (t.dt, t.size.clone(), full));
    }
    for (fqn, v) in [("config.lr", 0.001), ("config.wd", 0.1)] {
        let (file, at, len) = place(bytes_item(v), &mut files);
        storage_data.push((fqn, None, file, at, len));
    }

    // .metadata
    let mut p = P::new();
    p.dataclass(M, "Metadata", |p| {
        p.str("state_dict_metadata").op(b"}(");
        for t in &ts {
            p.str(t.fqn).dataclass(M, "TensorStorageMetadata", |p| {
                p.str("properties")
                    .global(M, "TensorProperties")
                    .op(b")\x81(");
                p.global("torch", t.dt.name);
                p.global("torch.serialization", "_get_layout")
                    .op(b"(")
                    .str("torch.strided")
                    .op(b"tR");
                p.op(b"\x89")
                    .global(M, "_MEM_FORMAT_ENCODING")
                    .op(b"(")
                    .int(0)
                    .op(b"tR");
                p.op(b"\x89").ints_tuple(&c_strides(&t.size)).op(b"tb");
                p.str("size").size(&t.size).str("chunks").op(b"](");
                for (off, sizes, _) in &t.chunks {
                    p.dataclass(M, "ChunkStorageMetadata", |p| {
                        p.str("offsets").size(off).str("sizes").size(sizes);
                    });
                }
                p.op(b"e");
            });
        }
        for f in ["config.lr", "config.wd"] {
            p.str(f).global(M, "BytesStorageMetadata").op(b")\x81");
        }
        p.op(b"u")
            .str("planner_data")
            .op(b"}")
            .str("storage_data")
            .op(b"}(");
        for (fqn, chunk, file, at, len) in &storage_data {
            p.dataclass(M, "MetadataIndex", |p| {
                p.str("fqn").str(fqn);
                match chunk {
                    Some((off, i)) => p.str("offset").size(off).str("index").int(*i as u64),
                    None => p.str("index").op(b"N"),
                };
            });
            p.dataclass(
                "torch.distributed.checkpoint.filesystem",
                "_StorageInfo",
                |p| {
                    p.str("relative_path")
                        .str(file)
                        .str("offset")
                        .int(*at)
                        .str("length")
                        .int(*len);
                },
            );
        }
        p.op(b"u")
            .str("storage_meta")
            .op(b"N")
            .str("version")
            .str("1.0.0");
    });
    std::fs::write(dir.join(".metadata"), p.done()).unwrap();
    for (name, data) in files {
        std::fs::write(dir.join(name), data).unwrap();
    }
    expected
}

#[test]
fn unseen_layouts_and_dtypes_through_every_reader_kind() {
    let ck = tempfile::tempdir().unwrap();
    let expected = write_checkpoint(ck.path());
    assert_eq!(
        std::fs::read_dir(ck.path()).unwrap().count(),
        7,
        ".metadata + 3 ranks x 2 files"
    );
    let srv = shmfetch::testing::server::TestServer::start(Default::default()).unwrap();
    srv.put_files("ckpt", "synth/", ck.path()).unwrap();
    let opts = shmfetch::SourceOptions {
        endpoint: Some(srv.endpoint()),
        token: None,
        s3: Default::default(),
    };
    let pool = WorkerPool::new(3).unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("s.safetensors");
    for loc in [
        ck.path().to_str().unwrap().to_string(),
        "ais://ckpt/synth/".to_string(),
    ] {
        for kind in all_kinds() {
            let ckpt = Checkpoint::open_with(&loc, opts.clone(), pool.clone()).unwrap();
            let md = ckpt.metadata().unwrap();
            assert_eq!(md.files().len(), 6);
            let rep = export_safetensors(&ckpt, &md, kind, &[], &out, &mut |_, _| {})
                .unwrap_or_else(|e| panic!("{loc} {kind}: {e}"));
            assert_eq!(rep.skipped_bytes_items, ["config.lr", "config.wd"]);
            let data = std::fs::read(&out).unwrap();
            let st = safetensors::SafeTensors::deserialize(&data).unwrap();
            assert_eq!(st.names().len(), expected.len());
            for (fqn, (dt, size, full)) in &expected {
                let t = st.tensor(fqn).unwrap();
                assert_eq!(t.dtype(), dt.st, "{fqn}");
                let shape: Vec<usize> = size.iter().map(|&d| d as usize).collect();
                assert_eq!(t.shape(), shape.as_slice(), "{fqn}");
                assert!(t.data() == full.as_slice(), "{loc} {kind}: {fqn} differs");
            }
        }
    }
    crate::common::drop_pool_and_check(pool);
}
