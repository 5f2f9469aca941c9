//! Malformed checkpoints: each a clear error naming what is wrong, never a
//! panic, no output file and no segment left behind — through every reader
//! kind.

use std::path::{Path, PathBuf};

use shmfetch::dcp::{Checkpoint, export_safetensors};
use shmfetch::{Error, WorkerPool};

use crate::dcp_load::{all_kinds, fixture_dir, truth};

/// A copy of the fixture in a temporary directory.
fn copy_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixture_dir()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    dir
}

/// (file, offset, length) of `fqn`'s first item, from the truth.
fn item_of(fqn: &str) -> (String, usize, usize) {
    let t = truth();
    let it = t["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["fqn"] == fqn)
        .unwrap()
        .clone();
    (
        it["relative_path"].as_str().unwrap().to_string(),
        it["offset"].as_u64().unwrap() as usize,
        it["length"].as_u64().unwrap() as usize,
    )
}

fn edit(dir: &Path, file: &str, f: impl FnOnce(&mut Vec<u8>)) {
    let p = dir.join(file);
    let mut b = std::fs::read(&p).unwrap();
    f(&mut b);
    std::fs::write(&p, b).unwrap();
}

fn replace_once(b: &mut [u8], range: std::ops::Range<usize>, from: &[u8], to: &[u8]) {
    assert_eq!(from.len(), to.len());
    let at = b[range.clone()]
        .windows(from.len())
        .position(|w| w == from)
        .unwrap_or_else(|| panic!("{from:?} not found"))
        + range.start;
    b[at..at + to.len()].copy_from_slice(to);
}

/// Exports `only` with every kind; returns the errors' messages.
fn export_errors(dir: &Path, only: &[&str]) -> Vec<(String, Error)> {
    let pool = WorkerPool::new(2).unwrap();
    let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
    let out: PathBuf = dir.join("out.safetensors");
    let mut errs = Vec::new();
    for kind in all_kinds() {
        let ckpt = Checkpoint::open(dir.to_str().unwrap(), pool.clone()).unwrap();
        let md = ckpt.metadata().unwrap();
        let e = export_safetensors(&ckpt, &md, kind, &only, &out, &mut |_, _| {}).unwrap_err();
        assert!(!out.exists(), "no partial output");
        let leftovers: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("shmfetch-part"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        errs.push((kind.to_string(), e));
    }
    crate::common::drop_pool_and_check(pool);
    errs
}

#[test]
fn truncated_metadata() {
    let dir = copy_fixture();
    edit(dir.path(), ".metadata", |b| b.truncate(3000));
    let ckpt = Checkpoint::open(dir.path().to_str().unwrap(), WorkerPool::new(1).unwrap()).unwrap();
    let e = ckpt.metadata().unwrap_err();
    assert!(matches!(e, Error::Pickle { .. }), "{e:?}");
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn metadata_with_an_unknown_global() {
    let dir = copy_fixture();
    edit(dir.path(), ".metadata", |b| {
        let n = b.len();
        replace_once(b, 0..n, b"PosixPath", b"PosixPAth")
    });
    let ckpt = Checkpoint::open(dir.path().to_str().unwrap(), WorkerPool::new(1).unwrap()).unwrap();
    let e = ckpt.metadata().unwrap_err().to_string();
    assert!(e.contains("pathlib.PosixPAth is not allowed"), "{e}");
}

#[test]
fn not_a_checkpoint_directory() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = Checkpoint::open(dir.path().to_str().unwrap(), WorkerPool::new(1).unwrap()).unwrap();
    let e = ckpt.metadata().unwrap_err();
    assert!(matches!(e, Error::Checkpoint { .. }), "{e:?}");
    assert!(
        e.to_string().contains("is this a DCP checkpoint directory"),
        "{e}"
    );
    let e = Checkpoint::open("http://127.0.0.1:1/ckpt", WorkerPool::new(1).unwrap()).unwrap_err();
    assert!(e.to_string().contains("end it with '/'"), "{e}");
}

#[test]
fn corrupt_zip_inside_an_item() {
    let dir = copy_fixture();
    let (file, off, len) = item_of("model.norm.weight");
    // Break the end-of-central-directory record at the end of the item.
    edit(dir.path(), &file, |b| {
        replace_once(b, off + len - 22..off + len, b"PK\x05\x06", b"XX\x05\x06")
    });
    for (kind, e) in export_errors(dir.path(), &["model.norm.weight"]) {
        let m = e.to_string();
        assert!(matches!(e, Error::Checkpoint { .. }), "{kind}: {e:?}");
        assert!(
            m.contains("model.norm.weight")
                && m.contains(&file)
                && m.contains("not a torch.save archive"),
            "{kind}: {m}"
        );
    }
}

#[test]
fn item_modified_after_it_was_written() {
    let dir = copy_fixture();
    let (file, off, len) = item_of("model.norm.weight");
    edit(dir.path(), &file, |b| {
        replace_once(b, off..off + len, b"FloatStorage", b"FloatStorXge")
    });
    for (kind, e) in export_errors(dir.path(), &["model.norm.weight"]) {
        // The zip's CRC catches it before the pickle is even decoded.
        let m = e.to_string();
        assert!(
            m.contains("model.norm.weight") && m.contains("data.pkl") && m.contains("checksum"),
            "{kind}: {m}"
        );
    }
}

#[test]
fn item_range_beyond_the_file() {
    let dir = copy_fixture();
    let (file, off, len) = item_of("buffers.empty");
    edit(dir.path(), &file, |b| {
        assert_eq!(b.len(), off + len, "the last item of its file");
        b.truncate(off + len - 100);
    });
    for (kind, e) in export_errors(dir.path(), &["buffers.empty"]) {
        let m = e.to_string();
        assert!(matches!(e, Error::Checkpoint { .. }), "{kind}: {e:?}");
        assert!(
            m.contains("beyond the end of the file") && m.contains(&file),
            "{kind}: {m}"
        );
    }
}

#[test]
fn unknown_fqns_and_bytes_items_are_refused_before_fetching() {
    let pool = WorkerPool::new(1).unwrap();
    let ckpt = Checkpoint::open(fixture_dir().to_str().unwrap(), pool).unwrap();
    let md = ckpt.metadata().unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = out.path().join("x.safetensors");
    let before = ckpt.counter().requests();
    for (only, want) in [
        (
            "model.embed",
            "no FQN \"model.embed\" (similar: model.embed.weight)",
        ),
        ("config.lr", "is a bytes item"),
    ] {
        let e = export_safetensors(
            &ckpt,
            &md,
            Default::default(),
            &[only.to_string()],
            &o,
            &mut |_, _| {},
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(want), "{e}");
    }
    assert_eq!(ckpt.counter().requests(), before);
    assert!(!o.exists());
}
