//! DCP checkpoints end to end: `.metadata` against the ground truth, every
//! tensor through every reader kind from the AIStore-style test server and
//! from local files, compared by sha256 with what PyTorch saved.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use shmfetch::dcp::{Checkpoint, Entry, MaxGap, ReaderKind, export_safetensors};
use shmfetch::testing::server::{ServerConfig, TestServer};
use shmfetch::{SourceOptions, WorkerPool};

use crate::common::sha;

pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dcp-small")
}

pub fn truth() -> Json {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dcp-small.truth/items.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A test server holding the fixture as `ais://ckpt/dcp-small/…`.
pub fn fixture_server() -> TestServer {
    let srv = TestServer::start(ServerConfig::default()).unwrap();
    srv.put_files("ckpt", "dcp-small/", &fixture_dir()).unwrap();
    srv
}

pub fn ais_checkpoint(srv: &TestServer, pool: &WorkerPool) -> Checkpoint {
    let opts = SourceOptions {
        endpoint: Some(srv.endpoint()),
        token: None,
        s3: Default::default(),
    };
    Checkpoint::open_with("ais://ckpt/dcp-small/", opts, pool.clone()).unwrap()
}

pub fn all_kinds() -> Vec<ReaderKind> {
    vec![
        ReaderKind::Sequential,
        ReaderKind::range_based(8 << 20).unwrap(),
        ReaderKind::range_based(0).unwrap(),
        ReaderKind::dcp_optimized(32 << 20).unwrap(),
        ReaderKind::dcp_optimized(0).unwrap(),
        ReaderKind::DcpOptimized {
            max_gap: MaxGap::Unbounded,
        },
    ]
}

/// Checks a safetensors file holds every tensor of the truth (or those in
/// `only`) with the right dtype, shape and sha256.
pub fn check_export(path: &Path, only: &[&str]) {
    let t = truth();
    let data = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&data).unwrap();
    let want: Vec<(&String, &Json)> = t["state_dict_metadata"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v["kind"] == "tensor")
        .filter(|(k, _)| only.is_empty() || only.contains(&k.as_str()))
        .collect();
    assert!(!want.is_empty());
    let mut names = st.names();
    names.sort();
    assert_eq!(names.len(), want.len(), "tensors in the file: {names:?}");
    let dtypes: HashMap<&str, safetensors::Dtype> = [
        ("bfloat16", safetensors::Dtype::BF16),
        ("float16", safetensors::Dtype::F16),
        ("float32", safetensors::Dtype::F32),
        ("int64", safetensors::Dtype::I64),
        ("bool", safetensors::Dtype::BOOL),
    ]
    .into();
    for (fqn, v) in want {
        let tv = st.tensor(fqn).unwrap_or_else(|e| panic!("{fqn}: {e}"));
        assert_eq!(tv.dtype(), dtypes[v["dtype"].as_str().unwrap()], "{fqn}");
        let shape: Vec<usize> = v["size"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(tv.shape(), shape.as_slice(), "{fqn}");
        assert_eq!(sha(tv.data()), v["sha256"].as_str().unwrap(), "{fqn}");
    }
}

#[test]
fn metadata_matches_the_ground_truth() {
    let pool = WorkerPool::new(2).unwrap();
    let ckpt = Checkpoint::open(fixture_dir().to_str().unwrap(), pool).unwrap();
    let md = ckpt.metadata().unwrap();
    let t = truth();
    assert_eq!(md.version.as_deref(), Some("1.0.0"));
    let sdm = t["state_dict_metadata"].as_object().unwrap();
    assert_eq!(md.state_dict.len(), sdm.len());
    for (fqn, v) in sdm {
        match (&md.state_dict[fqn], v["kind"].as_str().unwrap()) {
            (Entry::Tensor(tm), "tensor") => {
                assert_eq!(tm.dtype.name(), v["dtype"], "{fqn}");
                assert_eq!(serde_json::to_value(&tm.size).unwrap(), v["size"], "{fqn}");
                let chunks: Vec<Json> = tm
                    .chunks
                    .iter()
                    .map(|c| serde_json::json!({"offsets": c.offsets, "sizes": c.sizes}))
                    .collect();
                assert_eq!(Json::Array(chunks), v["chunks"], "{fqn}");
            }
            (Entry::Bytes, "bytes") => {}
            (e, k) => panic!("{fqn}: {e:?} vs {k}"),
        }
    }
    let items = t["items"].as_array().unwrap();
    assert_eq!(md.storage.len(), items.len());
    for it in items {
        let s = md
            .storage
            .iter()
            .find(|s| {
                s.relative_path == it["relative_path"] && s.offset == it["offset"].as_u64().unwrap()
            })
            .unwrap_or_else(|| panic!("no storage item like {it}"));
        assert_eq!(s.fqn, it["fqn"].as_str().unwrap());
        assert_eq!(s.length, it["length"].as_u64().unwrap());
        assert_eq!(
            serde_json::to_value(&s.chunk_offset).unwrap(),
            it["chunk_offset"]
        );
        assert_eq!(serde_json::to_value(s.index).unwrap(), it["index"]);
    }
}

#[test]
fn every_tensor_through_every_reader_kind_from_the_test_server() {
    let srv = fixture_server();
    let pool = WorkerPool::new(3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for kind in all_kinds() {
        let ckpt = ais_checkpoint(&srv, &pool);
        let md = ckpt.metadata().unwrap();
        let out = dir.path().join(format!("{kind}.safetensors"));
        let rep = export_safetensors(&ckpt, &md, kind, &[], &out, &mut |_, _| {}).unwrap();
        check_export(&out, &[]);
        assert!(rep.skipped_bytes_items.len() > 3, "{rep:?}");
        eprintln!("{kind}: {rep:?}");
    }
    crate::common::drop_pool_and_check(pool);
}

#[test]
fn every_tensor_through_every_reader_kind_from_local_files() {
    let pool = WorkerPool::new(2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for kind in all_kinds() {
        let ckpt = Checkpoint::open(fixture_dir().to_str().unwrap(), pool.clone()).unwrap();
        let md = ckpt.metadata().unwrap();
        let out = dir.path().join("all.safetensors");
        export_safetensors(&ckpt, &md, kind, &[], &out, &mut |_, _| {}).unwrap();
        check_export(&out, &[]);
        // Same bytes as PyTorch's own dcp.load, tensor by tensor.
        let ours = std::fs::read(&out).unwrap();
        let ours = safetensors::SafeTensors::deserialize(&ours).unwrap();
        let theirs = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/dcp-small.truth/tensors.safetensors"),
        )
        .unwrap();
        let theirs = safetensors::SafeTensors::deserialize(&theirs).unwrap();
        for n in theirs.names() {
            assert_eq!(
                ours.tensor(n).unwrap().data(),
                theirs.tensor(n).unwrap().data(),
                "{n}"
            );
        }
    }
}

#[test]
fn every_tensor_through_every_reader_kind_from_nginx() {
    let ng = crate::nginx::Nginx::start();
    let dest = ng.root.join("v1/objects/ckpt/dcp-small");
    std::fs::create_dir_all(&dest).unwrap();
    for e in std::fs::read_dir(fixture_dir()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dest.join(e.file_name())).unwrap();
    }
    let pool = WorkerPool::new(3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = ng.options();
    // Through the gateway (AIStore API, 301 to a target) and straight from
    // a target as plain HTTP.
    let locations = [
        "ais://ckpt/dcp-small/".to_string(),
        format!("{}/v1/objects/ckpt/dcp-small/", ng.targets[0]),
    ];
    for loc in &locations {
        for kind in all_kinds() {
            let ckpt = Checkpoint::open_with(loc, opts.clone(), pool.clone()).unwrap();
            let md = ckpt.metadata().unwrap();
            let out = dir.path().join("n.safetensors");
            export_safetensors(&ckpt, &md, kind, &[], &out, &mut |_, _| {})
                .unwrap_or_else(|e| panic!("{loc} {kind}: {e}"));
            check_export(&out, &[]);
        }
    }
    crate::common::drop_pool_and_check(pool);
}
