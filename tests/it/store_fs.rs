//! The checkpoint file system (`shmfetch::store::CheckpointFs`): one
//! conformance suite run against local files, s3s-fs (signed) and the
//! AIStore test server — write → exists → read back with every reader
//! kind (sha256) → rename → old gone, new equal → rm → gone — plus the
//! connector's DCP layout written through it and read back by
//! `shmfetch dcp export`.

use std::io::{Read, Write};

use shmfetch::dcp::{ItemRange, MaxGap, ReaderKind};
use shmfetch::store::{CheckpointFs, FsStream, StreamMode, UploadOptions};
use shmfetch::testing::content;
use shmfetch::{SourceOptions, WorkerPool};

use crate::common::sha;
use crate::s3::opts;
use crate::s3rig::{ACCESS_KEY, S3sFs, SECRET_KEY};

const PART: usize = 5 << 20;

fn kinds() -> Vec<ReaderKind> {
    vec![
        ReaderKind::Sequential,
        ReaderKind::range_based(8 << 20).unwrap(),
        ReaderKind::range_based(0).unwrap(),
        ReaderKind::DcpOptimized {
            max_gap: MaxGap::Bytes(0),
        },
    ]
}

fn write(fs: &CheckpointFs, path: &str, data: &[u8]) {
    let FsStream::Write(mut w) = fs.create_stream(path, StreamMode::Write).unwrap() else {
        panic!("not a writer")
    };
    for piece in data.chunks(1 << 20) {
        w.write_all(piece).unwrap();
    }
    w.finish().unwrap_or_else(|e| panic!("{path}: {e}"));
}

fn read(fs: &CheckpointFs, kind: ReaderKind, path: &str, len: usize) -> Vec<u8> {
    let fs = fs.clone().with_reader(kind);
    let mut r = match kind {
        ReaderKind::DcpOptimized { .. } => {
            // Two items with a gap between them: only they are delivered.
            let ranges = [
                ItemRange {
                    start: 0,
                    end: len as u64 / 3,
                },
                ItemRange {
                    start: len as u64 / 2,
                    end: len as u64,
                },
            ];
            let mut r = fs.open_ranges(path, &ranges).unwrap();
            let mut out = vec![0u8; len];
            for it in ranges {
                use std::io::Seek;
                r.seek(std::io::SeekFrom::Start(it.start)).unwrap();
                r.read_exact(&mut out[it.start as usize..it.end as usize])
                    .unwrap();
            }
            return out;
        }
        _ => match fs.create_stream(path, StreamMode::Read).unwrap() {
            FsStream::Read(r) => r,
            FsStream::Write(_) => panic!("not a reader"),
        },
    };
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    out
}

/// The suite: every step checked by bytes.
fn conformance(fs: &CheckpointFs, base: &str) {
    assert!(CheckpointFs::validate_checkpoint_id(base), "{base}");
    let dir = fs.concat_path(base, "ckpt");
    fs.mkdir(&dir).unwrap();
    for (i, n) in [1usize, 4097, 2 * PART + 3].into_iter().enumerate() {
        let data = content::bytes(0xf5 + i as u64, n);
        let old = fs.concat_path(&dir, &format!("f{i}.tmp"));
        let new = fs.concat_path(&dir, &format!("f{i}.bin"));
        assert!(!fs.exists(&old).unwrap(), "{old} before");
        write(fs, &old, &data);
        assert!(fs.exists(&old).unwrap(), "{old} after");
        for kind in kinds() {
            let got = read(fs, kind, &old, n);
            let want = match kind {
                ReaderKind::DcpOptimized { .. } => {
                    let mut w = vec![0u8; n];
                    w[..n / 3].copy_from_slice(&data[..n / 3]);
                    w[n / 2..].copy_from_slice(&data[n / 2..]);
                    w
                }
                _ => data.clone(),
            };
            assert_eq!(sha(&got), sha(&want), "{old} read by {kind}");
        }
        fs.rename(&old, &new).unwrap();
        assert!(!fs.exists(&old).unwrap(), "{old} after rename");
        assert!(fs.exists(&new).unwrap(), "{new} after rename");
        assert_eq!(
            sha(&read(fs, ReaderKind::Sequential, &new, n)),
            sha(&data),
            "{new}"
        );
        fs.rm_file(&new).unwrap();
        assert!(!fs.exists(&new).unwrap(), "{new} after rm");
    }
    let e = "ab".parse::<StreamMode>().unwrap_err();
    assert!(
        e.to_string()
            .contains("only supports rb (read mode) & wb (write mode)"),
        "{e}"
    );
    let e = fs
        .clone()
        .with_reader(ReaderKind::dcp_optimized(0).unwrap())
        .create_stream(&fs.concat_path(&dir, "x"), StreamMode::Read)
        .unwrap_err();
    assert!(e.to_string().contains("no ranges"), "{e}");
}

fn fs_with(o: SourceOptions) -> CheckpointFs {
    CheckpointFs::new(WorkerPool::new(3).unwrap(), o).with_upload(UploadOptions {
        part_size: PART as u64,
        ..Default::default()
    })
}

#[test]
fn the_file_system_conforms_on_local_files() {
    let dir = tempfile::tempdir().unwrap();
    conformance(
        &fs_with(SourceOptions::default()),
        dir.path().to_str().unwrap(),
    );
}

#[test]
fn the_file_system_conforms_on_s3s_fs() {
    let s3 = S3sFs::start();
    s3.create_bucket("fsb");
    conformance(
        &fs_with(opts(&s3.endpoint(), Some((ACCESS_KEY, SECRET_KEY)))),
        "s3://fsb/base",
    );
}

#[test]
fn exists_on_s3_without_access_is_an_error_not_false() {
    let s3 = S3sFs::start();
    s3.create_bucket("fsb");
    let fs = fs_with(opts(&s3.endpoint(), Some((ACCESS_KEY, "wrong-secret"))));
    let e = fs.exists("s3://fsb/nothing-here").unwrap_err();
    assert!(matches!(e, shmfetch::Error::AccessDenied { .. }), "{e:?}");
    let e = fs_with(opts(&s3.endpoint(), Some((ACCESS_KEY, SECRET_KEY))))
        .rename("s3://fsb/a", "s3://other/a")
        .unwrap_err();
    assert!(e.to_string().contains("one bucket"), "{e}");
}

/// The connector's writer layout, written through the file system: each
/// rank's files named `{prefix}{n}.distcp` (the default strategy's
/// `__{rank}_`), `.metadata` written as `.metadata.tmp`, an old one
/// removed, then renamed into place.
fn write_checkpoint(fs: &CheckpointFs, base: &str) {
    let src = crate::dcp_load::fixture_dir();
    for rank in 0..2 {
        for n in 0..2 {
            let name = format!(
                "{}{n}.distcp",
                shmfetch::dcp::PrefixStrategy::default().prefix(rank)
            );
            let data = std::fs::read(src.join(&name)).unwrap();
            write(fs, &fs.concat_path(base, &name), &data);
        }
    }
    let tmp = fs.concat_path(base, ".metadata.tmp");
    let meta = fs.concat_path(base, ".metadata");
    write(fs, &tmp, &std::fs::read(src.join(".metadata")).unwrap());
    if fs.exists(&meta).unwrap() {
        fs.rm_file(&meta).unwrap();
    }
    fs.rename(&tmp, &meta).unwrap();
}

fn export_with_cli(ckpt: &str, extra: &[&str], env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("all.safetensors");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_shmfetch"))
        .args(["dcp", "export", ckpt, "-o", out.to_str().unwrap()])
        .args(extra)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    crate::dcp_load::check_export(&out, &[]);
}

#[test]
fn a_checkpoint_written_in_the_connectors_layout_exports_exactly_from_local_and_s3() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("step-1");
    let fs = fs_with(SourceOptions::default());
    fs.mkdir(base.to_str().unwrap()).unwrap();
    write_checkpoint(&fs, base.to_str().unwrap());
    // Written twice: the second save replaces the first `.metadata`.
    write_checkpoint(&fs, base.to_str().unwrap());
    export_with_cli(base.to_str().unwrap(), &[], &[]);

    let s3 = S3sFs::start();
    s3.create_bucket("ckpts");
    let fs = fs_with(opts(&s3.endpoint(), Some((ACCESS_KEY, SECRET_KEY))));
    write_checkpoint(&fs, "s3://ckpts/step-1");
    write_checkpoint(&fs, "s3://ckpts/step-1");
    assert!(!fs.exists("s3://ckpts/step-1/.metadata.tmp").unwrap());
    export_with_cli(
        "s3://ckpts/step-1/",
        &["--endpoint-url", &s3.endpoint(), "--region", "us-east-1"],
        &[
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ],
    );
}

#[test]
fn the_file_system_conforms_on_the_aistore_test_server() {
    use shmfetch::testing::server::{ServerConfig, TestServer};
    let srv = TestServer::start(ServerConfig::default()).unwrap();
    srv.create_bucket("fsb");
    let o = SourceOptions {
        endpoint: Some(srv.endpoint()),
        ..Default::default()
    };
    conformance(&fs_with(o.clone()), "ais://fsb/base");
    // A checkpoint in the connector's layout, exported by the CLI.
    write_checkpoint(&fs_with(o), "ais://fsb/step-1");
    export_with_cli("ais://fsb/step-1/", &["--endpoint", &srv.endpoint()], &[]);
}

#[test]
fn exists_on_aistore_with_a_wrong_token_is_an_error_not_false() {
    use shmfetch::testing::server::{ServerConfig, TestServer};
    let srv = TestServer::start(ServerConfig {
        token: Some("right".into()),
        ..Default::default()
    })
    .unwrap();
    srv.create_bucket("fsb");
    let o = SourceOptions {
        endpoint: Some(srv.endpoint()),
        token: shmfetch::source::BearerToken::new("wrong"),
        ..Default::default()
    };
    let e = fs_with(o).exists("ais://fsb/x").unwrap_err();
    assert!(matches!(e, shmfetch::Error::AccessDenied { .. }), "{e:?}");
}

/// Found by the Python interop tests: torch's `FileSystemWriter` calls
/// `mkdir(checkpoint path)`, and a checkpoint at `s3://b/ckpt/` or at a
/// bucket's root was refused as "not an object"; the connector's `mkdir`
/// does nothing on object stores, and so must ours, whatever the prefix.
#[test]
fn mkdir_of_an_object_store_prefix_is_a_no_op() {
    let fs = fs_with(SourceOptions {
        endpoint: Some("http://127.0.0.1:9".into()),
        ..SourceOptions::default()
    });
    for p in [
        "s3://bucket/ckpt/",
        "s3://bucket/",
        "s3://bucket",
        "s3://bucket/ckpt",
        "ais://bucket/ckpt/",
        "ais://bucket",
    ] {
        fs.mkdir(p).unwrap_or_else(|e| panic!("mkdir {p}: {e}"));
    }
    // Local paths are still created, and an unusable location still refused.
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("a/b");
    fs.mkdir(local.to_str().unwrap()).unwrap();
    assert!(local.is_dir());
    assert!(fs.mkdir("http://example.com/x/").is_err());
}
