//! The safe pickle decoder on the real checkpoint fixture.

use super::{Value, decode};

/// The globals a DCP `.metadata` pickle uses (tests/fixtures/dcp-small.truth/layout.md).
const METADATA_GLOBALS: &[&str] = &[
    "pathlib.PosixPath",
    "torch.Size",
    "torch.bfloat16",
    "torch.bool",
    "torch.float16",
    "torch.float32",
    "torch.int64",
    "torch.distributed.checkpoint.filesystem._StorageInfo",
    "torch.distributed.checkpoint.metadata.BytesStorageMetadata",
    "torch.distributed.checkpoint.metadata.ChunkStorageMetadata",
    "torch.distributed.checkpoint.metadata.Metadata",
    "torch.distributed.checkpoint.metadata.MetadataIndex",
    "torch.distributed.checkpoint.metadata.StorageMeta",
    "torch.distributed.checkpoint.metadata.TensorProperties",
    "torch.distributed.checkpoint.metadata.TensorStorageMetadata",
    "torch.distributed.checkpoint.metadata._MEM_FORMAT_ENCODING",
    "torch.serialization._get_layout",
];

fn metadata() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/dcp-small/.metadata"
    ))
    .unwrap()
}

#[test]
fn fixture_metadata_decodes_and_lists_every_fqn() {
    let v = decode(&metadata(), METADATA_GLOBALS).unwrap();
    assert_eq!(
        v.class_name().as_deref(),
        Some("torch.distributed.checkpoint.metadata.Metadata")
    );
    let Value::Object {
        state: Some(state), ..
    } = &v
    else {
        panic!("Metadata has a BUILD state: {v:?}")
    };
    let sdm = state
        .get("state_dict_metadata")
        .expect("state_dict_metadata");
    let Value::Dict(entries) = sdm else {
        panic!("a dict")
    };
    let truth: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/dcp-small.truth/items.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut want: Vec<String> = truth["state_dict_metadata"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let mut got: Vec<String> = entries
        .iter()
        .map(|(k, _)| k.as_str().unwrap().to_string())
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    let storage = state.get("storage_data").expect("storage_data");
    let Value::Dict(items) = storage else {
        panic!("a dict")
    };
    assert_eq!(items.len(), truth["items"].as_array().unwrap().len());
}

#[test]
fn malformed_metadata_is_a_clear_error() {
    let data = metadata();
    // Truncated anywhere: an error, never a panic.
    for n in (0..data.len()).step_by(97) {
        assert!(decode(&data[..n], METADATA_GLOBALS).is_err(), "prefix {n}");
    }
    // One global missing from the allow-list: named in the error.
    let fewer: Vec<&str> = METADATA_GLOBALS
        .iter()
        .copied()
        .filter(|g| *g != "torch.Size")
        .collect();
    let e = decode(&data, &fewer).unwrap_err().to_string();
    assert!(e.contains("torch.Size") && e.contains("not allowed"), "{e}");
}
