//! The S3 rig works: each server answers what the S3 tests will rely on,
//! checked with boto3 or raw HTTP, bytes compared by sha256.

use std::sync::Arc;

use super::*;
use crate::common::sha;
use shmfetch::testing::content;
use shmfetch::testing::server::{Fault, FaultKind, ServerConfig, TestServer};

/// Keys the S3 tests need to round-trip: `/`, spaces, `+`, `%`, `?`, `#`,
/// unicode.
const ODD_KEYS: &[&str] = &[
    "plain.bin",
    "dir/sub dir/a+b%20c?d=e#f",
    "ünïcødé/ключ 🔑.bin",
];

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).expect("file read")
}

#[test]
fn s3s_fs_serves_boto3_puts_and_signed_gets_byte_exact() {
    let s3 = S3sFs::start();
    s3.tool(&["mb", "bkt"]).expect("CreateBucket");
    let dir = tempfile::tempdir().unwrap();
    for (i, key) in ODD_KEYS.iter().enumerate() {
        let data = content::bytes(300 + i as u64, 700_001 + i * 4096);
        // Through boto3 (PutObject, SigV4).
        let etag = s3_tool_put(&s3.endpoint(), &s3.creds(), "bkt", key, &data, None)
            .unwrap_or_else(|e| panic!("put {key:?}: {e}"));
        let out = dir.path().join(format!("got{i}"));
        let got_etag = s3
            .tool(&["get", "bkt", key, out.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("get {key:?}: {e}"));
        assert_eq!(sha(&read(&out)), sha(&data), "boto3 put, get of {key:?}");
        assert_eq!(got_etag, etag, "{key:?}");
        let head: serde_json::Value =
            serde_json::from_str(&s3.tool(&["head", "bkt", key]).unwrap()).unwrap();
        assert_eq!(head["size"], data.len() as u64, "{key:?}");
        // The fast path: the file written into s3s-fs's root, same key,
        // other bytes (its earlier ETag must not survive).
        let other = content::bytes(400 + i as u64, 300_000 + i);
        s3.put("bkt", key, &other);
        assert_eq!(
            read(&s3.root().join("bkt").join(key)),
            other,
            "s3s-fs's layout"
        );
        let got_etag2 = s3
            .tool(&["get", "bkt", key, out.to_str().unwrap()])
            .unwrap();
        assert_eq!(sha(&read(&out)), sha(&other), "fast put, get of {key:?}");
        assert_ne!(got_etag2, etag, "the ETag follows the new bytes of {key:?}");
        // A ranged GET.
        s3.tool(&[
            "get",
            "bkt",
            key,
            out.to_str().unwrap(),
            "--range",
            "bytes=1000-5999",
        ])
        .unwrap();
        assert_eq!(read(&out), &other[1000..6000], "range of {key:?}");
    }
    let listed: serde_json::Value =
        serde_json::from_str(&s3.tool(&["ls", "bkt"]).unwrap()).unwrap();
    let mut want: Vec<&str> = ODD_KEYS.to_vec();
    want.sort();
    let mut got: Vec<String> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    got.sort();
    assert_eq!(got, want, "ListObjectsV2 names every key");
    // A presigned GET (signature in the query) answers the bytes; the same
    // URL with the signature changed is refused.
    let key = ODD_KEYS[1];
    let url = s3.tool(&["presign", "bkt", key]).unwrap();
    let path = url
        .strip_prefix(&s3.endpoint())
        .expect("URL at the endpoint");
    let r = raw_request(&s3.endpoint(), "GET", path, &[("Range", "bytes=10-19")]);
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(r.body, content::bytes(401, 300_001)[10..20]);
    let (unsigned, sig) = path.rsplit_once("X-Amz-Signature=").unwrap();
    let flipped = if sig.starts_with('0') { "1" } else { "0" };
    let bad = format!("{unsigned}X-Amz-Signature={flipped}{}", &sig[1..]);
    let r = raw_request(&s3.endpoint(), "GET", &bad, &[]);
    assert_eq!(r.status, 403, "a forged presigned URL: {}", r.text());
}

#[test]
fn s3s_fs_rejects_a_wrong_secret() {
    let s3 = S3sFs::start();
    s3.put("bkt", "obj", b"secret bytes");
    let wrong = Creds::new(s3.access_key(), "not-the-secret");
    assert_ne!(s3.secret_key(), "not-the-secret");
    let e = s3_tool(&s3.endpoint(), &wrong, &["head", "bkt", "obj"]).unwrap_err();
    assert!(e.starts_with("403"), "HEAD with a wrong secret: {e}");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let e = s3_tool(
        &s3.endpoint(),
        &wrong,
        &["get", "bkt", "obj", out.to_str().unwrap()],
    )
    .unwrap_err();
    assert!(
        e.contains("SignatureDoesNotMatch"),
        "GET with a wrong secret: {e}"
    );
    // Unsigned: refused too.
    let r = raw_request(&s3.endpoint(), "GET", "/bkt/obj", &[]);
    assert_eq!(r.status, 403, "an unsigned GET: {}", r.text());
    // The right secret: the bytes.
    s3.tool(&["get", "bkt", "obj", out.to_str().unwrap()])
        .unwrap();
    assert_eq!(read(&out), b"secret bytes");
}

#[test]
fn moto_multipart_upload_has_a_dash_4_etag() {
    let m = Moto::start();
    m.create_bucket("bkt");
    let data = content::bytes(77, 20 << 20);
    let key = ODD_KEYS[1];
    let etag = m.put_multipart("bkt", key, &data, 5 << 20);
    assert!(
        etag.starts_with('"') && etag.ends_with("-4\""),
        "20 MiB in 5 MiB parts: {etag}"
    );
    let head: serde_json::Value =
        serde_json::from_str(&m.tool(&["head", "bkt", key]).unwrap()).unwrap();
    assert_eq!(head["etag"], etag.as_str());
    assert_eq!(head["size"], 20u64 << 20);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    m.tool(&["get", "bkt", key, out.to_str().unwrap()]).unwrap();
    assert_eq!(sha(&read(&out)), sha(&data));
    // Versioning and CopyObject: a copy is single-part, another ETag;
    // overwriting under versioning gives another version id.
    m.tool(&["versioning", "bkt", "on"]).unwrap();
    let copied = m.tool(&["cp", "bkt", key, "bkt", "copy"]).unwrap();
    assert!(!copied.contains('-'), "CopyObject's ETag: {copied}");
    let v1: serde_json::Value =
        serde_json::from_str(&m.tool(&["head", "bkt", "copy"]).unwrap()).unwrap();
    m.put("bkt", "copy", b"new");
    let v2: serde_json::Value =
        serde_json::from_str(&m.tool(&["head", "bkt", "copy"]).unwrap()).unwrap();
    assert!(v1["version_id"].is_string(), "{v1}");
    assert_ne!(v1["version_id"], v2["version_id"]);
    assert_eq!(v2["size"], 3);
}

#[test]
fn nginx_s3_answers_ranges_etags_and_if_match() {
    check_nginx_s3(NginxS3::start());
    // Paced (fast enough for the test).
    check_nginx_s3(NginxS3::with_limit_rate(256 << 20));
}

fn check_nginx_s3(ng: NginxS3) {
    ng.create_bucket("bkt");
    let key = "dir/a b+c%d ü.bin";
    let want = ng.put_generated("bkt", key, 3 << 20, 91);
    let data = content::bytes(91, 3 << 20);
    assert_eq!(sha(&data), want);
    let ep = ng.endpoint();
    let path = s3_url_path("bkt", key);
    let r = raw_request(&ep, "HEAD", &path, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("3145728"));
    let etag = r.header("etag").expect("an ETag").to_string();
    // Range, with presigned-style parameters in the query (ignored).
    let q = format!("{path}?X-Amz-Signature=abc&X-Amz-Expires=60");
    let r = raw_request(&ep, "GET", &q, &[("Range", "bytes=1000000-1999999")]);
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some("bytes 1000000-1999999/3145728")
    );
    assert_eq!(sha(&r.body), sha(&data[1_000_000..2_000_000]));
    let r = raw_request(
        &ep,
        "GET",
        &path,
        &[("Range", "bytes=0-9"), ("If-Match", &etag)],
    );
    assert_eq!(r.status, 206, "the right If-Match");
    assert_eq!(r.body, data[..10]);
    let r = raw_request(
        &ep,
        "GET",
        &path,
        &[("Range", "bytes=0-9"), ("If-Match", "\"nope\"")],
    );
    assert_eq!(r.status, 412, "a wrong If-Match");
    assert!(
        r.text().contains("<Code>PreconditionFailed</Code>"),
        "{}",
        r.text()
    );
    // A literal `+` in the path is a `+` in the file name.
    let r = raw_request(
        &ep,
        "GET",
        "/bkt/dir/a%20b+c%25d%20%C3%BC.bin",
        &[("Range", "bytes=5-9")],
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.body, data[5..10]);
    // A small object put as bytes: the file under the root.
    ng.put("bkt", "small", b"0123456789");
    assert_eq!(read(&ng.root().join("bkt/small")), b"0123456789");
    let r = raw_request(&ep, "GET", "/bkt/small", &[("Range", "bytes=-3")]);
    assert_eq!((r.status, &r.body[..]), (206, &b"789"[..]));
    // Missing key: 404 with S3's code.
    let r = raw_request(&ep, "GET", "/bkt/nothing", &[]);
    assert_eq!(r.status, 404);
    assert!(r.text().contains("<Code>NoSuchKey</Code>"), "{}", r.text());
    // Overwritten with the same size within the same second: another ETag.
    ng.put_generated("bkt", key, 3 << 20, 92);
    let r = raw_request(
        &ep,
        "GET",
        &path,
        &[("Range", "bytes=0-9"), ("If-Match", &etag)],
    );
    assert_eq!(r.status, 412, "the old ETag after an overwrite");
    let r = raw_request(&ep, "HEAD", &path, &[]);
    assert_ne!(r.header("etag"), Some(etag.as_str()));
}

fn s3_server() -> TestServer {
    TestServer::start(ServerConfig {
        s3: true,
        ..ServerConfig::default()
    })
    .expect("server starts")
}

#[test]
fn test_server_s3_mode_answers_ranges_etags_and_s3_errors() {
    let srv = s3_server();
    let key = ODD_KEYS[1];
    let data = content::bytes(5, 1 << 20);
    srv.put_bytes("bkt", key, data.clone());
    let ep = srv.endpoint();
    let path = s3_url_path("bkt", key);
    let head = raw_request(&ep, "HEAD", &path, &[]);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("1048576"));
    let etag = head.header("etag").expect("ETag").to_string();
    assert!(etag.len() == 34 && etag.starts_with('"'), "{etag}");
    assert!(
        head.header("last-modified")
            .is_some_and(|d| d.ends_with(" GMT"))
    );
    // Same bytes elsewhere: the same ETag (a content hash).
    srv.put_bytes("bkt", "same", data.clone());
    let r = raw_request(&ep, "HEAD", "/bkt/same", &[]);
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    // Range (presigned parameters in the query are accepted unverified).
    let q = format!("{path}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=00");
    let r = raw_request(
        &ep,
        "GET",
        &q,
        &[("Range", "bytes=4096-8191"), ("If-Match", &etag)],
    );
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(r.header("content-range"), Some("bytes 4096-8191/1048576"));
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(sha(&r.body), sha(&data[4096..8192]));
    let r = raw_request(&ep, "GET", &path, &[]);
    assert_eq!((r.status, sha(&r.body)), (200, sha(&data)));
    // Wrong If-Match: 412 PreconditionFailed, on HEAD the status only.
    let r = raw_request(
        &ep,
        "GET",
        &path,
        &[("Range", "bytes=0-9"), ("If-Match", "\"0123\"")],
    );
    assert_eq!(r.status, 412);
    assert!(
        r.text().contains("<Code>PreconditionFailed</Code>"),
        "{}",
        r.text()
    );
    assert_eq!(r.header("content-type"), Some("application/xml"));
    let r = raw_request(&ep, "HEAD", &path, &[("If-Match", "\"0123\"")]);
    assert_eq!((r.status, r.body.len()), (412, 0));
    // Missing key, missing bucket.
    let r = raw_request(&ep, "GET", "/bkt/nothing", &[]);
    assert_eq!(r.status, 404);
    assert!(r.text().contains("<Code>NoSuchKey</Code>"), "{}", r.text());
    let r = raw_request(&ep, "HEAD", "/bkt/nothing", &[]);
    assert_eq!((r.status, r.body.len()), (404, 0), "HEAD: status only");
    let r = raw_request(&ep, "GET", "/nobkt/x", &[]);
    assert_eq!(r.status, 404);
    assert!(
        r.text().contains("<Code>NoSuchBucket</Code>"),
        "{}",
        r.text()
    );
    // Unsatisfiable range.
    let r = raw_request(&ep, "GET", &path, &[("Range", "bytes=2000000-")]);
    assert_eq!(r.status, 416);
    assert!(
        r.text().contains("<Code>InvalidRange</Code>"),
        "{}",
        r.text()
    );
    // Logged with the If-Match, query and Authorization it carried.
    raw_request(
        &ep,
        "HEAD",
        &path,
        &[("Authorization", "AWS4-HMAC-SHA256 Credential=x")],
    );
    let log = srv.requests();
    assert!(log.last().is_some_and(|l| l.had_auth), "{log:?}");
    assert!(log.iter().any(|l| l.query.starts_with("X-Amz-Algorithm=")));
    assert!(!log[0].had_auth && log[0].query.is_empty(), "{log:?}");
    assert!(log.iter().all(|l| l.role == "s3"), "{log:?}");
    assert!(
        log.iter()
            .any(|l| l.if_match.as_deref() == Some(etag.as_str()) && l.status == 206)
    );
}

#[test]
fn test_server_s3_slowdown_fault_is_answered_the_configured_number_of_times() {
    let srv = s3_server();
    let data = content::bytes(6, 100_000);
    srv.put_bytes("bkt", "obj", data.clone());
    srv.inject(Fault::on("obj", FaultKind::Status(503), 3));
    let ep = srv.endpoint();
    for i in 0..3 {
        let r = raw_request(&ep, "GET", "/bkt/obj", &[("Range", "bytes=0-99")]);
        assert_eq!(r.status, 503, "request {i}");
        assert!(r.text().contains("<Code>SlowDown</Code>"), "{}", r.text());
    }
    let r = raw_request(&ep, "GET", "/bkt/obj", &[("Range", "bytes=0-99")]);
    assert_eq!((r.status, &r.body[..]), (206, &data[..100]), "the 4th");
    srv.inject(Fault::on("obj", FaultKind::Status(500), 1));
    let r = raw_request(&ep, "GET", "/bkt/obj", &[]);
    assert_eq!(r.status, 500);
    assert!(
        r.text().contains("<Code>InternalError</Code>"),
        "{}",
        r.text()
    );
    assert_eq!(srv.faults_injected(), 4);
    let r = raw_request(&ep, "GET", "/bkt/obj", &[]);
    assert_eq!((r.status, sha(&r.body)), (200, sha(&data)));
}

#[test]
fn test_server_s3_object_overwritten_mid_download_fails_if_match() {
    let srv = s3_server();
    let old = content::bytes(7, 64 << 10);
    let new = content::bytes(8, 64 << 10);
    srv.put_bytes("bkt", "obj", old.clone());
    let ep = srv.endpoint();
    let etag = raw_request(&ep, "HEAD", "/bkt/obj", &[])
        .header("etag")
        .unwrap()
        .to_string();
    // The second GET finds the object replaced.
    srv.inject(Fault::on("obj", FaultKind::Overwrite(Arc::new(new.clone())), 1).skip(1));
    let first = raw_request(
        &ep,
        "GET",
        "/bkt/obj",
        &[("Range", "bytes=0-1023"), ("If-Match", &etag)],
    );
    assert_eq!((first.status, &first.body[..]), (206, &old[..1024]));
    let second = raw_request(
        &ep,
        "GET",
        "/bkt/obj",
        &[("Range", "bytes=1024-2047"), ("If-Match", &etag)],
    );
    assert_eq!(second.status, 412, "{}", second.text());
    let head = raw_request(&ep, "HEAD", "/bkt/obj", &[]);
    let etag2 = head.header("etag").unwrap().to_string();
    assert_ne!(etag2, etag);
    let r = raw_request(&ep, "GET", "/bkt/obj", &[("If-Match", &etag2)]);
    assert_eq!((r.status, sha(&r.body)), (200, sha(&new)));
    // TestServer::put while serving: the same, without a fault.
    srv.put_bytes("bkt", "obj", old.clone());
    let r = raw_request(&ep, "GET", "/bkt/obj", &[("If-Match", &etag2)]);
    assert_eq!(r.status, 412);
    let r = raw_request(&ep, "GET", "/bkt/obj", &[("If-Match", &etag)]);
    assert_eq!(
        (r.status, sha(&r.body)),
        (200, sha(&old)),
        "the old bytes, the old ETag"
    );
}
