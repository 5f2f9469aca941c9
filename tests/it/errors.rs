//! Bad input gets a clear, typed error and loses nothing.

use crate::common::*;
use shmfetch::testing::content;
use shmfetch::testing::server::{Fault, FaultKind, ServerConfig, TestServer};
use shmfetch::{Error, ParallelReader, SourceOptions, SourceSpec, WorkerPool};

#[test]
fn unknown_bucket_and_object() {
    let (srv, _spec, _) = server_with("o", 10, 1);
    let e = ParallelReader::builder(ais_spec(&srv, "ais://nope/o"))
        .workers(1)
        .build()
        .unwrap_err();
    assert!(
        matches!(&e, Error::BucketNotFound { bucket, .. } if bucket == "ais://nope"),
        "{e:?}"
    );
    assert!(e.to_string().contains("ais://nope"), "{e}");
    let e = ParallelReader::builder(ais_spec(&srv, "ais://b/missing"))
        .workers(1)
        .build()
        .unwrap_err();
    assert!(
        matches!(&e, Error::ObjectNotFound { object, .. } if object == "ais://b/missing"),
        "{e:?}"
    );
    let e = ParallelReader::builder(SourceSpec::Local {
        path: "/nonexistent/x".into(),
    })
    .workers(1)
    .build()
    .unwrap_err();
    assert!(matches!(e, Error::ObjectNotFound { .. }), "{e:?}");
}

#[test]
fn bearer_token_is_checked_at_the_gateway_and_never_shown() {
    let secret = "s3cr3t-jwt-value";
    let srv = TestServer::start(ServerConfig {
        token: Some(secret.into()),
        ..Default::default()
    })
    .unwrap();
    let data = content::bytes(5, 300_000);
    srv.put_bytes("b", "o", data.clone());
    let no_token = ais_spec(&srv, "ais://b/o");
    let e = ParallelReader::builder(no_token)
        .workers(1)
        .build()
        .unwrap_err();
    assert!(
        matches!(e, Error::AccessDenied { status: 401, .. }),
        "{e:?}"
    );
    let wrong = SourceSpec::parse_with(
        "ais://b/o",
        &SourceOptions {
            endpoint: Some(srv.endpoint()),
            token: shmfetch::source::BearerToken::new("wrong"),
        },
    )
    .unwrap();
    let e = ParallelReader::builder(wrong)
        .workers(1)
        .build()
        .unwrap_err();
    assert!(
        matches!(e, Error::AccessDenied { status: 401, .. }),
        "{e:?}"
    );
    let good = SourceSpec::parse_with(
        "ais://b/o",
        &SourceOptions {
            endpoint: Some(srv.endpoint()),
            token: shmfetch::source::BearerToken::new(secret),
        },
    )
    .unwrap();
    assert!(
        !format!("{good:?}").contains(secret),
        "Debug shows the token: {good:?}"
    );
    let r = ParallelReader::builder(good)
        .workers(2)
        .chunk_size(50_000)
        .build()
        .unwrap();
    assert!(!format!("{r:?}").contains(secret));
    assert_eq!(sha(&r.read_all().unwrap()), sha(&data));
    assert_eq!(sha(&iter_bytes(&r, 0).unwrap()), sha(&data));
    // The gateway saw the token on every request; targets did not need it.
    assert!(
        srv.requests()
            .iter()
            .filter(|q| q.role == "gateway" && q.status != 401)
            .all(|q| q.had_auth)
    );
}

fn one_fault(kind: FaultKind, times: u32, attempts: u32) -> (TestServer, ParallelReader, Vec<u8>) {
    let (srv, spec, data) = server_with("o", 1_000_000, 77);
    srv.inject(Fault {
        object: Some("o".into()),
        range_start: Some(300_000),
        times,
        kind,
    });
    let r = ParallelReader::builder(spec)
        .workers(3)
        .chunk_size(100_000)
        .attempts(attempts)
        .build()
        .unwrap();
    (srv, r, data)
}

fn segments_of_mine() -> Vec<String> {
    let mine = format!("shmfetch-{}-", std::process::id());
    std::fs::read_dir(SHM)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&mine))
        .collect()
}

fn check_permanent(kind: FaultKind, expect: fn(&Error) -> bool) {
    // Permanent: the fault outlasts every attempt.
    let (srv, r, data) = one_fault(kind.clone(), 100, 3);
    let e = r.read_all().unwrap_err();
    assert!(expect(&e), "{kind:?}: read_all gave {e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("ais://b/o") && msg.contains("300000"),
        "error names object and range: {msg}"
    );
    // The iterator yields the good chunks before the bad one, then the error.
    let mut got = Vec::new();
    let mut err = None;
    for c in r.create_iter(0).unwrap() {
        match c {
            Ok(c) => got.extend_from_slice(&c),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let e = err.expect("iterator reports the error");
    assert!(expect(&e), "{kind:?}: iter gave {e:?}");
    assert_eq!(
        got,
        data[..300_000],
        "everything before the bad range is intact"
    );
    drop(r);
    drop(srv);
}

#[test]
fn server_ignoring_range_is_an_error() {
    check_permanent(
        FaultKind::IgnoreRange,
        |e| matches!(e, Error::RangeMismatch { detail, .. } if detail.contains("ignored Range")),
    );
}

#[test]
fn wrong_content_range_is_an_error() {
    check_permanent(
        FaultKind::WrongContentRange,
        |e| matches!(e, Error::RangeMismatch { detail, .. } if detail.contains("Content-Range")),
    );
}

#[test]
fn short_body_is_an_error() {
    check_permanent(FaultKind::ShortBody(1234), |e| {
        matches!(
            e,
            Error::ShortRead {
                got: 1234,
                expected: 100_000,
                ..
            }
        )
    });
}

#[test]
fn server_error_is_an_error() {
    check_permanent(FaultKind::Status(500), |e| {
        matches!(e, Error::Http { status: 500, .. })
    });
}

#[test]
fn transient_faults_are_retried_and_the_bytes_are_right() {
    for kind in [
        FaultKind::ShortBody(10),
        FaultKind::Status(503),
        FaultKind::ResetAfter(5000),
        FaultKind::IgnoreRange,
    ] {
        let retryable = !matches!(kind, FaultKind::IgnoreRange);
        let (_srv, r, data) = one_fault(kind.clone(), 1, 3);
        let res = r.read_all();
        if retryable {
            assert_eq!(sha(&res.unwrap()), sha(&data), "{kind:?}");
        } else {
            // A server that ignores Range is not retried: it would again.
            assert!(res.is_err(), "{kind:?}");
        }
    }
}

#[test]
fn nothing_is_left_after_errors() {
    let before = segments_of_mine().len();
    let pool = WorkerPool::new(2).unwrap();
    {
        let (srv, spec, _data) = server_with("o", 500_000, 78);
        srv.inject(Fault {
            object: None,
            range_start: Some(100_000),
            times: 100,
            kind: FaultKind::ShortBody(1),
        });
        let r = ParallelReader::builder(spec)
            .pool(pool.clone())
            .chunk_size(100_000)
            .attempts(1)
            .build()
            .unwrap();
        for _ in 0..3 {
            assert!(r.read_all().is_err());
            assert!(iter_bytes(&r, 0).is_err());
        }
    }
    // Segments of failed downloads are gone (other tests of this process
    // may hold theirs, so compare with before, allowing for them).
    let after = segments_of_mine();
    assert!(after.len() <= before + 4, "segments left: {after:?}");
    drop_pool_and_check(pool);
}

#[test]
fn range_not_satisfiable_and_bad_sources() {
    for bad in ["ais://bucket-only", "ais://", "gopher://x/y", ""] {
        let e = SourceSpec::parse_with(
            bad,
            &SourceOptions {
                endpoint: Some("http://127.0.0.1:1".into()),
                token: None,
            },
        )
        .unwrap_err();
        assert!(matches!(e, Error::InvalidSource { .. }), "{bad}: {e:?}");
    }
    let e = SourceSpec::parse_with("ais://b/o", &SourceOptions::default()).unwrap_err();
    assert!(e.to_string().contains("AIS_ENDPOINT"), "{e}");
    // Nothing listens on port 1: a transport error naming the object.
    let spec = SourceSpec::parse_with(
        "ais://b/o",
        &SourceOptions {
            endpoint: Some("http://127.0.0.1:1".into()),
            token: None,
        },
    )
    .unwrap();
    let e = ParallelReader::builder(spec)
        .workers(1)
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::Transport { .. }), "{e:?}");
    assert!(e.to_string().contains("ais://b/o"), "{e}");
}
