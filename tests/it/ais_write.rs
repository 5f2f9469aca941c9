//! AIStore writes (`AisWriter`) against the test server: multipart
//! uploads, single PUTs, exists, delete, rename; the redirect done by hand
//! (bodies only to the target, the token only to the gateway, a new
//! `Location` for every attempt); errors typed and classified for
//! `retry::call`. Every stored object is compared by sha256.

use std::time::Duration;

use crate::common::*;
use shmfetch::source::aistore::{AisWriter, MptStart};
use shmfetch::source::retry::{self, RetryConfig};
use shmfetch::source::{BearerToken, HttpClient};
use shmfetch::testing::content;
use shmfetch::testing::server::{Fault, FaultKind, ServerConfig, TestServer};
use shmfetch::{Error, ParallelReader, SourceOptions, SourceSpec, WorkerPool};

fn server(cfg: ServerConfig) -> TestServer {
    let srv = TestServer::start(cfg).expect("server starts");
    srv.create_bucket("b");
    srv
}

fn writer(srv: &TestServer, url: &str) -> AisWriter {
    AisWriter::new(HttpClient::default(), &ais_spec(srv, url)).expect("an AIStore spec")
}

fn writer_with_token(srv: &TestServer, url: &str, token: &str) -> AisWriter {
    let opts = SourceOptions {
        endpoint: Some(srv.endpoint()),
        token: BearerToken::new(token),
        s3: Default::default(),
    };
    let spec = SourceSpec::parse_with(url, &opts).expect("valid spec");
    AisWriter::new(HttpClient::default(), &spec).expect("an AIStore spec")
}

/// A quick retry policy for tests (the default waits up to 2 minutes).
fn quick_retries() -> RetryConfig {
    RetryConfig {
        attempts: 6,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_elapsed: Duration::from_secs(20),
    }
}

fn upload_id(w: &AisWriter) -> String {
    match w.mpt_create().expect("mpt-upload") {
        MptStart::Upload(id) => id,
        MptStart::Unsupported => panic!("the test server supports multipart uploads"),
    }
}

/// `data` split into `n` parts (the last one takes the rest).
fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    let size = data.len().div_ceil(n);
    data.chunks(size).collect()
}

#[test]
fn parts_uploaded_out_of_order_complete_into_the_object() {
    let srv = server(ServerConfig::default());
    let w = writer(&srv, "ais://b/dir/multi part.bin");
    let data = content::bytes(7, 3 * 1_000_003);
    let id = upload_id(&w);
    assert_eq!(srv.uploads_in_progress(), 1);
    let pieces = parts(&data, 3);
    let mut etags = vec![String::new(); 3];
    for i in [2usize, 0, 1] {
        etags[i] = w
            .put_part(&id, i as u32 + 1, pieces[i])
            .expect("part stored");
        assert!(etags[i].starts_with('"'), "{:?}", etags[i]);
    }
    assert!(
        srv.object("b", "dir/multi part.bin").is_none(),
        "an object appears only when its upload completes"
    );
    let list: Vec<(u32, String)> = (1..=3)
        .map(|n| (n, etags[n as usize - 1].clone()))
        .collect();
    w.mpt_complete(&id, &list).expect("completed");
    assert_eq!(srv.uploads_in_progress(), 0);
    assert_eq!(
        sha(&srv.object("b", "dir/multi part.bin").unwrap()),
        sha(&data)
    );
    // And it reads back through the workers, byte for byte.
    let pool = WorkerPool::new(3).unwrap();
    let r = ParallelReader::builder(ais_spec(&srv, "ais://b/dir/multi part.bin"))
        .pool(pool.clone())
        .chunk_size(1 << 20)
        .build()
        .unwrap();
    let buf = r.read_all().unwrap();
    assert_eq!(sha(&buf), sha(&data));
    let seg = buf.segment_name().to_string();
    drop(buf);
    drop(r);
    assert!(!segment_exists(&seg));
    drop_pool_and_check(pool);
}

#[test]
fn a_body_goes_only_to_the_target_and_the_token_only_to_the_gateway() {
    let srv = server(ServerConfig {
        token: Some("tok".into()),
        ..ServerConfig::default()
    });
    let w = writer_with_token(&srv, "ais://b/o", "tok");
    let data = content::bytes(3, 300_000);
    let id = upload_id(&w);
    for (i, p) in parts(&data, 2).iter().enumerate() {
        w.put_part(&id, i as u32 + 1, p).unwrap();
    }
    w.mpt_complete(&id, &[(1, String::new()), (2, String::new())])
        .unwrap();
    w.put_whole(&mut &data[..], Some(data.len() as u64))
        .unwrap();
    assert_eq!(sha(&srv.object("b", "o").unwrap()), sha(&data));
    let log = srv.requests();
    for r in &log {
        if r.role == "gateway" {
            assert!(r.had_auth, "{r:?}");
            assert_eq!(r.status, 307, "{r:?}");
            if r.method == "PUT" {
                assert_eq!(r.body_len, 0, "a body reached the gateway: {r:?}");
            }
        } else {
            assert!(!r.had_auth, "the token reached a target: {r:?}");
            assert!(r.query.contains("pid=gw1&utm="), "{r:?}");
        }
    }
    let target_puts: Vec<u64> = log
        .iter()
        .filter(|r| r.role != "gateway" && r.method == "PUT")
        .map(|r| r.body_len)
        .collect();
    assert_eq!(target_puts, [150_000, 150_000, 300_000]);
    // One gateway request per target request: no Location is reused.
    let at = |gw: bool| log.iter().filter(|r| (r.role == "gateway") == gw).count();
    assert_eq!(at(true), at(false));
}

#[test]
fn abort_leaves_no_object_and_no_upload() {
    let srv = server(ServerConfig::default());
    let w = writer(&srv, "ais://b/o");
    let id = upload_id(&w);
    w.put_part(&id, 1, b"some bytes").unwrap();
    w.mpt_abort(&id).unwrap();
    assert_eq!(srv.uploads_in_progress(), 0);
    assert!(srv.object("b", "o").is_none());
    assert!(!w.exists().unwrap());
    // The upload is gone: its parts, completion and abort are refused, and
    // not as a missing object.
    for e in [
        w.put_part(&id, 2, b"x").unwrap_err(),
        w.mpt_complete(&id, &[(1, String::new())]).unwrap_err(),
        w.mpt_abort(&id).unwrap_err(),
    ] {
        assert!(matches!(e, Error::Http { status: 404, .. }), "{e:?}");
        assert!(!e.is_retryable(), "{e}");
        assert!(e.to_string().contains(&id), "{e}");
        assert!(e.to_string().contains("ais://b/o"), "{e}");
    }
}

#[test]
fn completing_with_a_missing_part_is_an_error_that_is_not_retried() {
    let srv = server(ServerConfig::default());
    let w = writer(&srv, "ais://b/o");
    let id = upload_id(&w);
    w.put_part(&id, 1, b"one").unwrap();
    w.put_part(&id, 3, b"three").unwrap();
    let before = srv.requests().len();
    let list = [(1, String::new()), (2, String::new()), (3, String::new())];
    let e = retry::call(w.name(), &quick_retries(), || w.mpt_complete(&id, &list)).unwrap_err();
    assert!(matches!(e, Error::Http { status: 400, .. }), "{e:?}");
    assert!(e.to_string().contains("mpt-complete"), "{e}");
    // Asked once: gateway and target, no retries.
    assert_eq!(srv.requests().len() - before, 2);
    assert!(srv.object("b", "o").is_none());
    // The upload stays, and completes once the part is there.
    w.put_part(&id, 2, b"-two-").unwrap();
    w.mpt_complete(&id, &list).unwrap();
    assert_eq!(srv.object("b", "o").unwrap(), b"one-two-three");
}

#[test]
fn a_part_cut_mid_body_fails_retryably_and_its_retry_succeeds() {
    let srv = server(ServerConfig::default());
    let w = writer(&srv, "ais://b/o");
    let data = content::bytes(11, 2 << 20);
    let id = upload_id(&w);
    srv.inject(
        Fault::on("o", FaultKind::ResetDuringBody(300_000), 1)
            .method("PUT")
            .query("partNumber=2"),
    );
    let pieces = parts(&data, 2);
    w.put_part(&id, 1, pieces[0]).unwrap();
    let e = w.put_part(&id, 2, pieces[1]).unwrap_err();
    assert!(matches!(e, Error::Transport { .. }), "{e:?}");
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().contains("PUT part 2"), "{e}");
    w.put_part(&id, 2, pieces[1]).unwrap();
    w.mpt_complete(&id, &[(1, String::new()), (2, String::new())])
        .unwrap();
    assert_eq!(sha(&srv.object("b", "o").unwrap()), sha(&data));
    let cut: Vec<u64> = srv
        .requests()
        .iter()
        .filter(|r| r.role != "gateway" && r.query.contains("partNumber=2"))
        .map(|r| r.body_len)
        .collect();
    assert_eq!(cut, [300_000, 1 << 20]);
}

#[test]
fn a_503_at_the_target_is_retried_by_retry_call() {
    let srv = server(ServerConfig::default());
    let w = writer(&srv, "ais://b/o");
    let id = upload_id(&w);
    srv.inject(Fault::on("o", FaultKind::Status(503), 2).method("PUT"));
    let etag = retry::call(w.name(), &quick_retries(), || w.put_part(&id, 1, b"abc")).unwrap();
    assert!(!etag.is_empty());
    assert_eq!(srv.faults_injected(), 2);
    w.mpt_complete(&id, &[(1, etag)]).unwrap();
    assert_eq!(srv.object("b", "o").unwrap(), b"abc");
}

#[test]
fn put_whole_streams_with_and_without_a_length() {
    let srv = server(ServerConfig::default());
    let data = content::bytes(5, 5 << 20);
    let w = writer(&srv, "ais://b/known");
    w.put_whole(&mut &data[..], Some(data.len() as u64))
        .unwrap();
    assert_eq!(sha(&srv.object("b", "known").unwrap()), sha(&data));
    let w = writer(&srv, "ais://b/chunked");
    w.put_whole(&mut std::io::Cursor::new(&data), None).unwrap();
    assert_eq!(sha(&srv.object("b", "chunked").unwrap()), sha(&data));
    let w = writer(&srv, "ais://b/empty");
    w.put_whole(&mut &b""[..], Some(0)).unwrap();
    assert_eq!(srv.object("b", "empty").unwrap(), b"");
    // Only `len` bytes are sent; a body shorter than `len` is an error and
    // stores nothing.
    let w = writer(&srv, "ais://b/prefix");
    w.put_whole(&mut &data[..], Some(1000)).unwrap();
    assert_eq!(srv.object("b", "prefix").unwrap(), &data[..1000]);
    let w = writer(&srv, "ais://b/short");
    let e = w.put_whole(&mut &data[..10], Some(1000)).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("ended after 10 of 1000"), "{e}");
    assert!(!e.is_retryable());
    assert!(srv.object("b", "short").is_none());
    let target_bodies: Vec<u64> = srv
        .requests()
        .iter()
        .filter(|r| r.role != "gateway" && r.status == 200)
        .map(|r| r.body_len)
        .collect();
    assert_eq!(target_bodies, [5 << 20, 5 << 20, 0, 1000]);
}

#[test]
fn put_whole_refused_before_the_body_reads_none_of_it() {
    let srv = server(ServerConfig {
        token: Some("tok".into()),
        ..ServerConfig::default()
    });
    let w = writer_with_token(&srv, "ais://b/o", "wrong");
    let mut body: &[u8] = b"0123456789";
    let e = w.put_whole(&mut body, Some(10)).unwrap_err();
    assert!(
        matches!(e, Error::AccessDenied { status: 401, .. }),
        "{e:?}"
    );
    assert_eq!(body.len(), 10, "the stream was read");
}

#[test]
fn exists_is_true_false_or_a_typed_error() {
    let srv = server(ServerConfig {
        token: Some("tok".into()),
        ..ServerConfig::default()
    });
    srv.put_bytes("b", "here", b"x".to_vec());
    assert!(
        writer_with_token(&srv, "ais://b/here", "tok")
            .exists()
            .unwrap()
    );
    assert!(
        !writer_with_token(&srv, "ais://b/gone", "tok")
            .exists()
            .unwrap()
    );
    let e = writer_with_token(&srv, "ais://b/here", "wrong")
        .exists()
        .unwrap_err();
    assert!(matches!(e, Error::AccessDenied { .. }), "{e:?}");
    assert!(!e.to_string().contains("wrong"), "the token is shown: {e}");
    let e = writer(&srv, "ais://b/here").exists().unwrap_err();
    assert!(matches!(e, Error::AccessDenied { .. }), "{e:?}");
    let e = writer_with_token(&srv, "ais://nobucket/o", "tok")
        .exists()
        .unwrap_err();
    assert!(matches!(e, Error::BucketNotFound { .. }), "{e:?}");
}

#[test]
fn delete_removes_and_a_missing_object_is_object_not_found() {
    let srv = server(ServerConfig::default());
    srv.put_bytes("b", "o", b"x".to_vec());
    let w = writer(&srv, "ais://b/o");
    w.delete().unwrap();
    assert!(srv.object("b", "o").is_none());
    assert!(!w.exists().unwrap());
    let e = w.delete().unwrap_err();
    assert!(matches!(e, Error::ObjectNotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("DELETE"), "{e}");
    let e = writer(&srv, "ais://nobucket/o").delete().unwrap_err();
    assert!(matches!(e, Error::BucketNotFound { .. }), "{e:?}");
}

#[test]
fn rename_moves_the_bytes_and_the_old_name_is_gone() {
    let srv = server(ServerConfig::default());
    let data = content::bytes(9, 100_000);
    srv.put_bytes("b", "old name", data.clone());
    srv.put_bytes("b", "dir/new", b"replaced".to_vec());
    let w = writer(&srv, "ais://b/old name");
    w.rename("dir/new").unwrap();
    assert!(!w.exists().unwrap());
    let e = w.delete().unwrap_err();
    assert!(matches!(e, Error::ObjectNotFound { .. }), "{e:?}");
    assert_eq!(sha(&srv.object("b", "dir/new").unwrap()), sha(&data));
    // A missing source, itself, an empty name.
    let e = w.rename("other").unwrap_err();
    assert!(matches!(e, Error::ObjectNotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("rename-obj"), "{e}");
    let e = writer(&srv, "ais://b/dir/new")
        .rename("dir/new")
        .unwrap_err();
    assert!(matches!(e, Error::Http { status: 400, .. }), "{e:?}");
    let e = w.rename("").unwrap_err();
    assert!(matches!(e, Error::InvalidConfig(_)), "{e:?}");
}

#[test]
fn an_older_cluster_is_unsupported_and_the_object_goes_in_one_put() {
    let srv = server(ServerConfig {
        no_multipart: true,
        ..ServerConfig::default()
    });
    let w = writer(&srv, "ais://b/o");
    assert_eq!(w.mpt_create().unwrap(), MptStart::Unsupported);
    assert_eq!(srv.uploads_in_progress(), 0);
    let data = content::bytes(1, 1 << 20);
    w.put_whole(&mut &data[..], Some(data.len() as u64))
        .unwrap();
    assert_eq!(sha(&srv.object("b", "o").unwrap()), sha(&data));
    // Rename still works there.
    w.rename("p").unwrap();
    assert_eq!(sha(&srv.object("b", "p").unwrap()), sha(&data));
}

/// AIStore answers 501 to what it does not support for a bucket (rename
/// in a remote bucket: `_checkObjMv`); 501 was retried like any 5xx,
/// for the whole retry budget (2 minutes by default).
#[test]
fn a_501_not_supported_is_not_retried() {
    let srv = server(ServerConfig::default());
    srv.put_bytes("b", "o", b"x".to_vec());
    let w = writer(&srv, "ais://@aws/b/o");
    let cfg = RetryConfig {
        max_elapsed: Duration::from_secs(3),
        ..quick_retries()
    };
    let e = retry::call(w.name(), &cfg, || w.rename("p")).unwrap_err();
    assert!(matches!(e, Error::Http { status: 501, .. }), "{e:?}");
    assert!(
        e.to_string().contains("not supported for remote buckets"),
        "{e}"
    );
    let asked = srv.requests().iter().filter(|r| r.method == "POST").count();
    assert_eq!(asked, 1, "a 501 was retried");
    assert_eq!(srv.object("b", "o").unwrap(), b"x");
}

#[test]
fn part_0_or_an_empty_upload_id_is_refused_before_any_request() {
    let srv = server(ServerConfig::default());
    let w = writer(&srv, "ais://b/o");
    for e in [
        w.put_part("id", 0, b"x").unwrap_err(),
        w.put_part("", 1, b"x").unwrap_err(),
    ] {
        assert!(matches!(e, Error::InvalidConfig(_)), "{e:?}");
    }
    assert!(srv.requests().is_empty());
}
