//! Uploads through the worker pool (`shmfetch::store::Upload`): every
//! size around a part, to local files, s3s-fs (signed) and moto, with
//! worker deaths mid-part and abandoned uploads. The stored object is
//! read back by the server's own client (boto3) or from disk and
//! compared by sha256 with the source.

use std::io::Write;

use shmfetch::store::{Upload, UploadOptions};
use shmfetch::testing::content;
use shmfetch::worker::KillPoint;
use shmfetch::{SourceOptions, SourceSpec, WorkerPool};

use crate::common::sha;
use crate::s3::{opts, spec};
use crate::s3rig::{ACCESS_KEY, Moto, S3sFs, SECRET_KEY};

const MIB: usize = 1 << 20;

/// Writes `data` in uneven pieces (so parts straddle writes) and finishes.
fn upload(
    pool: &WorkerPool,
    dest: SourceSpec,
    data: &[u8],
    opts: UploadOptions,
) -> shmfetch::Result<shmfetch::store::UploadSummary> {
    let mut up = Upload::new(pool, dest, opts)?;
    for piece in data.chunks(3 * MIB + 12_345) {
        up.write_all(piece)
            .map_err(|e| shmfetch::Error::Pool(e.to_string()))?;
    }
    up.finish()
}

fn part_opts(part: usize) -> UploadOptions {
    UploadOptions {
        part_size: part as u64,
        ..Default::default()
    }
}

/// What boto3 reads back from the server.
fn s3_get(tool: &dyn Fn(&[&str]) -> Result<String, String>, bucket: &str, key: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("got");
    tool(&["get", bucket, key, f.to_str().unwrap()]).unwrap();
    std::fs::read(f).unwrap()
}

fn uploads_in_progress(tool: &dyn Fn(&[&str]) -> Result<String, String>, bucket: &str) -> usize {
    let out = tool(&["uploads", bucket]).unwrap();
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    v["uploads"].as_array().map_or(0, Vec::len)
}

const PART: usize = 5 * MIB;

/// 0 B, 1 B, part − 1, part, part + 1 and many parts.
fn sizes() -> [usize; 6] {
    [0, 1, PART - 1, PART, PART + 1, 4 * PART + 777]
}

#[test]
fn uploads_to_local_files_are_exact_for_every_size() {
    let pool = WorkerPool::new(3).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (i, n) in [0, 1, 4095, 4096, 4097, 9 * 4096 + 5]
        .into_iter()
        .enumerate()
    {
        let data = content::bytes(0x70 + i as u64, n);
        let path = dir.path().join(format!("f{i}"));
        let s = upload(
            &pool,
            SourceSpec::Local { path: path.clone() },
            &data,
            part_opts(4096),
        )
        .unwrap();
        assert_eq!(s.bytes, n as u64);
        assert_eq!(sha(&std::fs::read(&path).unwrap()), sha(&data), "size {n}");
    }
    // Only the finished files: no temporary file is left.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 6);
}

#[test]
fn uploads_to_s3s_fs_are_exact_for_every_size() {
    let s3 = S3sFs::start();
    s3.create_bucket("upl");
    let o = opts(&s3.endpoint(), Some((ACCESS_KEY, SECRET_KEY)));
    let pool = WorkerPool::new(3).unwrap();
    let tool = |a: &[&str]| s3.tool(a);
    for (i, n) in sizes().into_iter().enumerate() {
        let data = content::bytes(0x80 + i as u64, n);
        let key = format!("dir/obj {i}+ü");
        let s = upload(&pool, spec("upl", &key, &o), &data, part_opts(PART)).unwrap();
        assert_eq!(s.bytes, n as u64);
        assert_eq!(
            s.parts as usize,
            if n < PART { 0 } else { n.div_ceil(PART) },
            "size {n}"
        );
        assert_eq!(sha(&s3_get(&tool, "upl", &key)), sha(&data), "size {n}");
    }
}

#[test]
fn uploads_to_moto_are_exact_and_leave_no_multipart_upload() {
    let moto = Moto::start();
    moto.create_bucket("upl");
    let o = opts(&moto.endpoint(), Some(("test", "test")));
    let pool = WorkerPool::new(3).unwrap();
    let tool = |a: &[&str]| moto.tool(a);
    for (i, n) in [PART + 1, 3 * PART].into_iter().enumerate() {
        let data = content::bytes(0x90 + i as u64, n);
        let key = format!("m{i}");
        upload(&pool, spec("upl", &key, &o), &data, part_opts(PART)).unwrap();
        assert_eq!(sha(&s3_get(&tool, "upl", &key)), sha(&data), "size {n}");
        let head = moto.tool(&["head", "upl", &key]).unwrap();
        assert!(
            head.contains(&format!("-{}", n.div_ceil(PART))),
            "a multipart ETag: {head}"
        );
    }
    assert_eq!(uploads_in_progress(&tool, "upl"), 0);
}

#[test]
fn a_dropped_upload_leaves_no_multipart_upload_and_no_object() {
    let moto = Moto::start();
    moto.create_bucket("upl");
    let o = opts(&moto.endpoint(), Some(("test", "test")));
    let pool = WorkerPool::new(3).unwrap();
    let tool = |a: &[&str]| moto.tool(a);
    let data = content::bytes(0xa0, 3 * PART);
    let mut up = Upload::new(&pool, spec("upl", "dropped", &o), part_opts(PART)).unwrap();
    up.write_all(&data).unwrap();
    assert_eq!(
        uploads_in_progress(&tool, "upl"),
        1,
        "parts were on their way"
    );
    drop(up);
    assert_eq!(uploads_in_progress(&tool, "upl"), 0);
    let err = moto.tool(&["head", "upl", "dropped"]).unwrap_err();
    assert!(err.contains("404") || err.contains("Not Found"), "{err}");
    // An explicit abort does the same, and a local upload leaves no file.
    let dir = tempfile::tempdir().unwrap();
    let mut up = Upload::new(
        &pool,
        SourceSpec::Local {
            path: dir.path().join("x"),
        },
        part_opts(4096),
    )
    .unwrap();
    up.write_all(&data[..100_000]).unwrap();
    up.abort().unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn an_upload_survives_workers_killed_mid_part() {
    let s3 = S3sFs::start();
    s3.create_bucket("upl");
    let o = opts(&s3.endpoint(), Some((ACCESS_KEY, SECRET_KEY)));
    let pool = WorkerPool::new(3).unwrap();
    let tool = |a: &[&str]| s3.tool(a);
    let data = content::bytes(0xb0, 6 * PART + 3);
    for (i, point) in [
        KillPoint::MidWrite,
        KillPoint::AfterClaim,
        KillPoint::AfterPublish,
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("killed{i}");
        let opts = UploadOptions {
            kill: Some((point, 2)),
            ..part_opts(PART)
        };
        let before = pool.stats().worker_deaths;
        upload(&pool, spec("upl", &key, &o), &data, opts).unwrap();
        assert_eq!(pool.stats().worker_deaths - before, 2, "{point:?}");
        assert_eq!(sha(&s3_get(&tool, "upl", &key)), sha(&data), "{point:?}");
    }
    // And to a local file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let opts = UploadOptions {
        kill: Some((KillPoint::MidWrite, 2)),
        ..part_opts(MIB)
    };
    upload(&pool, SourceSpec::Local { path: path.clone() }, &data, opts).unwrap();
    assert_eq!(sha(&std::fs::read(&path).unwrap()), sha(&data));
}

#[test]
fn destinations_that_cannot_take_the_upload_are_refused_at_the_start() {
    let o = opts("http://127.0.0.1:9", Some((ACCESS_KEY, SECRET_KEY)));
    let pool = WorkerPool::new(1).unwrap();
    let e = Upload::new(&pool, spec("b", "k", &o), part_opts(MIB)).unwrap_err();
    assert!(e.to_string().contains("at least"), "{e}");
    let e = Upload::new(
        &pool,
        SourceSpec::Local {
            path: "/nonexistent-dir/x".into(),
        },
        part_opts(MIB),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("directory /nonexistent-dir does not exist"),
        "{e}"
    );
    let e = Upload::new(
        &pool,
        SourceSpec::Http {
            url: "http://127.0.0.1:9/x".into(),
        },
        part_opts(MIB),
    )
    .unwrap_err();
    assert!(e.to_string().contains("cannot upload here"), "{e}");
    let _ = SourceOptions::default();
}

mod ais_and_faults {
    //! Uploads to the AIStore test server (its multipart upload, and one
    //! streamed PUT on a cluster without it) and to the test server's S3
    //! mode, with faults on every 3rd part request.
    use super::*;
    use shmfetch::testing::server::{Fault, FaultKind, ServerConfig, TestServer};

    fn ais(srv: &TestServer, name: &str) -> SourceSpec {
        let o = SourceOptions {
            endpoint: Some(srv.endpoint()),
            ..Default::default()
        };
        SourceSpec::parse_with(&format!("ais://bk/{name}"), &o).unwrap()
    }

    #[test]
    fn uploads_to_aistore_are_exact_for_every_size() {
        let srv = TestServer::start(ServerConfig::default()).unwrap();
        srv.create_bucket("bk");
        let pool = WorkerPool::new(3).unwrap();
        for (i, n) in [0, 1, MIB - 1, MIB, MIB + 1, 7 * MIB + 3]
            .into_iter()
            .enumerate()
        {
            let data = content::bytes(0xd0 + i as u64, n);
            let name = format!("dir/o {i}+ü");
            let s = upload(&pool, ais(&srv, &name), &data, part_opts(MIB)).unwrap();
            assert_eq!(
                s.parts as usize,
                if n < MIB { 0 } else { n.div_ceil(MIB) },
                "size {n}"
            );
            assert_eq!(
                sha(&srv.object("bk", &name).unwrap()),
                sha(&data),
                "size {n}"
            );
        }
        assert_eq!(srv.uploads_in_progress(), 0);
    }

    #[test]
    fn a_cluster_without_multipart_upload_gets_one_streamed_put() {
        let srv = TestServer::start(ServerConfig {
            no_multipart: true,
            ..Default::default()
        })
        .unwrap();
        srv.create_bucket("bk");
        let pool = WorkerPool::new(3).unwrap();
        let data = content::bytes(0xd9, 5 * MIB + 17);
        upload(&pool, ais(&srv, "one-put"), &data, part_opts(MIB)).unwrap();
        assert_eq!(sha(&srv.object("bk", "one-put").unwrap()), sha(&data));
        let puts: Vec<_> = srv
            .requests()
            .into_iter()
            .filter(|r| r.method == "PUT" && r.role != "gateway")
            .collect();
        assert_eq!(puts.len(), 1, "{puts:?}");
        // Dropped half-way: the PUT's body is cut, nothing is stored.
        let mut up = Upload::new(&pool, ais(&srv, "cut"), part_opts(MIB)).unwrap();
        up.write_all(&data).unwrap();
        drop(up);
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(srv.object("bk", "cut").is_none());
    }

    #[test]
    fn a_fault_on_every_third_part_request_still_stores_exact_bytes() {
        // AIStore: 503s, and resets mid-body.
        let srv = TestServer::start(ServerConfig::default()).unwrap();
        srv.create_bucket("bk");
        let pool = WorkerPool::new(3).unwrap();
        let data = content::bytes(0xe0, 12 * MIB + 5);
        for (i, kind) in [FaultKind::Status(503), FaultKind::ResetDuringBody(100_000)]
            .into_iter()
            .enumerate()
        {
            let name = format!("faulty{i}");
            srv.inject(
                Fault::always(&name, kind)
                    .method("PUT")
                    .query("partNumber=")
                    .every(3),
            );
            let before = srv.faults_injected();
            let s = upload(&pool, ais(&srv, &name), &data, part_opts(MIB)).unwrap();
            let faults = srv.faults_injected() - before;
            assert!(faults >= 4, "{faults} faults");
            assert!(
                s.retries >= faults,
                "{} retries for {faults} faults",
                s.retries
            );
            assert_eq!(sha(&srv.object("bk", &name).unwrap()), sha(&data), "{i}");
        }
        // S3 mode: SlowDown on every 3rd UploadPart.
        let s3 = TestServer::start(ServerConfig {
            s3: true,
            ..Default::default()
        })
        .unwrap();
        s3.create_bucket("bk3");
        let o = opts(&s3.endpoint(), Some((ACCESS_KEY, SECRET_KEY)));
        s3.inject(
            Fault::always("k", FaultKind::Status(503))
                .method("PUT")
                .query("partNumber=")
                .every(3),
        );
        let data = content::bytes(0xe1, 4 * PART + 1);
        let s = upload(&pool, spec("bk3", "k", &o), &data, part_opts(PART)).unwrap();
        assert!(s3.faults_injected() >= 1 && s.retries >= 1);
        assert_eq!(sha(&s3.object("bk3", "k").unwrap()), sha(&data));
        assert_eq!(s3.uploads_in_progress(), 0);
    }

    #[test]
    fn an_aistore_upload_survives_workers_killed_and_a_failed_one_is_aborted() {
        let srv = TestServer::start(ServerConfig::default()).unwrap();
        srv.create_bucket("bk");
        let pool = WorkerPool::new(3).unwrap();
        let data = content::bytes(0xe2, 6 * MIB + 1);
        let opts = UploadOptions {
            kill: Some((KillPoint::AfterClaim, 2)),
            ..part_opts(MIB)
        };
        upload(&pool, ais(&srv, "killed"), &data, opts).unwrap();
        assert_eq!(sha(&srv.object("bk", "killed").unwrap()), sha(&data));
        // A part that fails for good (403): the upload is aborted.
        srv.inject(
            Fault::always("denied", FaultKind::Status(403))
                .method("PUT")
                .query("partNumber="),
        );
        let e = upload(&pool, ais(&srv, "denied"), &data, part_opts(MIB)).unwrap_err();
        assert!(e.to_string().contains("403"), "{e}");
        assert!(srv.object("bk", "denied").is_none());
        assert_eq!(srv.uploads_in_progress(), 0);
    }
}

/// Found in review: a part that failed was dropped from the upload, and a
/// writer that carried on (or just called `finish`) completed the upload
/// with the parts before it: a truncated object, stored, and `Ok`.
#[test]
fn a_failed_part_fails_the_upload_even_when_the_writer_carries_on() {
    use shmfetch::testing::server::{Fault, FaultKind, ServerConfig, TestServer};
    let srv = TestServer::start(ServerConfig {
        s3: true,
        ..Default::default()
    })
    .unwrap();
    srv.create_bucket("bk3");
    let o = opts(&srv.endpoint(), Some((ACCESS_KEY, SECRET_KEY)));
    let pool = WorkerPool::new(1).unwrap();
    // The second part is refused for good (403 is not retried).
    srv.inject(
        Fault::on("k", FaultKind::Status(403), 1)
            .method("PUT")
            .query("partNumber=2")
            .skip(0),
    );
    let data = content::bytes(0xe5, 3 * PART);
    let mut up = Upload::new(&pool, spec("bk3", "k", &o), part_opts(PART)).unwrap();
    let written = up.write_all(&data);
    assert!(
        written.is_err(),
        "the failed part is reported to the writer"
    );
    // More bytes after the error are refused too, and finish fails.
    assert!(up.write_all(b"more").is_err());
    let e = up.finish().unwrap_err();
    assert!(e.to_string().contains("403"), "{e}");
    assert!(
        srv.object("bk3", "k").is_none(),
        "a truncated object was stored"
    );
    assert_eq!(srv.uploads_in_progress(), 0);
}
