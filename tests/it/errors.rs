//! Bad input gets a clear, typed error and loses nothing.

use crate::common::*;
use shmfetch::testing::content;
use shmfetch::testing::server::{ServerConfig, TestServer};
use shmfetch::{Error, ParallelReader, SourceOptions, SourceSpec};

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
            s3: Default::default(),
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
            s3: Default::default(),
        },
    )
    .unwrap();
    assert!(
        !format!("{good:?}").contains(secret),
        "Debug shows the token: {good:?}"
    );
    let r = ParallelReader::builder(good)
        .workers(2)
        .allow_small_chunks()
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

#[test]
fn range_not_satisfiable_and_bad_sources() {
    for bad in ["ais://bucket-only", "ais://", "gopher://x/y", ""] {
        let e = SourceSpec::parse_with(
            bad,
            &SourceOptions {
                endpoint: Some("http://127.0.0.1:1".into()),
                token: None,
                s3: Default::default(),
            },
        )
        .unwrap_err();
        assert!(matches!(e, Error::InvalidSource { .. }), "{bad}: {e:?}");
    }
    let e = SourceSpec::parse_with("ais://b/o", &SourceOptions::default()).unwrap_err();
    assert!(e.to_string().contains("AIS_ENDPOINT"), "{e}");
    // Nothing listens on port 1: a transport error naming the object
    // (after the HEAD's retries, here cut short).
    let spec = SourceSpec::parse_with(
        "ais://b/o",
        &SourceOptions {
            endpoint: Some("http://127.0.0.1:1".into()),
            token: None,
            s3: Default::default(),
        },
    )
    .unwrap();
    let e = ParallelReader::builder(spec)
        .workers(1)
        .retry(shmfetch::source::retry::RetryConfig {
            max_elapsed: std::time::Duration::from_millis(300),
            ..Default::default()
        })
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::Transport { .. }), "{e:?}");
    assert!(e.to_string().contains("ais://b/o"), "{e}");
}
