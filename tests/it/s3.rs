//! `s3://` end to end against real S3 servers: `s3s-fs` (checks SigV4,
//! header and presigned), moto (multipart ETags, NoSuchBucket), nginx as a
//! fast unsigned endpoint, and the test server's S3 mode for scripted
//! faults (SlowDown, an object replaced mid-download) and request logs.
//! Every read is compared by sha256 with the bytes stored.

use std::process::{Command, Output};
use std::time::Duration;

use shmfetch::dcp::{Checkpoint, ReaderKind, export_safetensors};
use shmfetch::source::s3::{S3Credentials, S3Options};
use shmfetch::testing::content;
use shmfetch::testing::server::{Fault, FaultKind, ServerConfig, TestServer};
use shmfetch::{Error, ParallelReader, SourceOptions, SourceSpec, WorkerPool};

use crate::cli::assert_no_orphaned_workers;
use crate::common::{iter_bytes, sha};
use crate::dcp_load::{all_kinds, check_export, fixture_dir};
use crate::s3rig::{ACCESS_KEY, Moto, NginxS3, S3sFs, SECRET_KEY};

const BIN: &str = env!("CARGO_BIN_EXE_shmfetch");
const BENCH: &str = env!("CARGO_BIN_EXE_shmfetch-bench");

/// Options for an S3-compatible `endpoint`: signed with `creds`, or
/// unsigned without.
pub fn opts(endpoint: &str, creds: Option<(&str, &str)>) -> SourceOptions {
    SourceOptions {
        s3: S3Options {
            region: Some("us-east-1".into()),
            endpoint: Some(endpoint.to_string()),
            unsigned: creds.is_none(),
            credentials: creds.map(|(id, secret)| S3Credentials {
                access_key_id: id.to_string(),
                secret_access_key: secret.to_string(),
                session_token: None,
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

pub fn spec(bucket: &str, key: &str, o: &SourceOptions) -> SourceSpec {
    SourceSpec::parse_with(&format!("s3://{bucket}/{key}"), o).unwrap()
}

/// `read_all`, `create_iter(0)` and `create_iter` from a third of the way
/// deliver exactly `want`.
fn check_modes(spec: SourceSpec, want: &[u8], chunk: u64, what: &str) {
    let r = ParallelReader::builder(spec)
        .workers(3)
        .chunk_size(chunk)
        .allow_small_chunks()
        .build()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(r.size(), want.len() as u64, "{what}: size");
    let all = r
        .read_all()
        .unwrap_or_else(|e| panic!("{what}: read_all: {e}"));
    assert_eq!(sha(&all), sha(want), "{what}: read_all");
    let it = iter_bytes(&r, 0).unwrap_or_else(|e| panic!("{what}: iter: {e}"));
    assert_eq!(sha(&it), sha(want), "{what}: create_iter(0)");
    let off = want.len() as u64 / 3;
    let it = iter_bytes(&r, off).unwrap_or_else(|e| panic!("{what}: iter at {off}: {e}"));
    assert_eq!(
        sha(&it),
        sha(&want[off as usize..]),
        "{what}: create_iter({off})"
    );
}

/// Sizes around a 4 KiB chunk: empty, one byte, chunk ± 1, many chunks.
const SIZES: &[usize] = &[0, 1, 4095, 4096, 4097, 25 * 4096 + 7];

#[test]
fn signed_reads_from_s3s_fs_are_exact_for_every_size() {
    let s3 = S3sFs::start();
    let o = opts(&s3.endpoint(), Some((ACCESS_KEY, SECRET_KEY)));
    for (i, &n) in SIZES.iter().enumerate() {
        let data = content::bytes(0x53 + i as u64, n);
        let key = format!("sizes/obj-{n}");
        s3.put("bkt", &key, &data);
        check_modes(
            spec("bkt", &key, &o),
            &data,
            4096,
            &format!("s3s-fs {n} bytes"),
        );
    }
}

#[test]
fn unsigned_reads_from_nginx_are_exact_for_every_size() {
    let ng = NginxS3::start();
    let o = opts(&ng.endpoint(), None);
    for (i, &n) in SIZES.iter().enumerate() {
        let data = content::bytes(0x6E + i as u64, n);
        let key = format!("sizes/obj-{n}");
        ng.put("bkt", &key, &data);
        check_modes(
            spec("bkt", &key, &o),
            &data,
            4096,
            &format!("nginx {n} bytes"),
        );
    }
}

#[test]
fn multipart_objects_uploaded_by_boto3_read_exactly() {
    let moto = Moto::start();
    moto.create_bucket("mpart");
    let data = content::bytes(0x3A, 20 << 20);
    let etag = moto.put_multipart("mpart", "big/multi.bin", &data, 5 << 20);
    assert!(etag.trim_matches('"').ends_with("-4"), "{etag}");
    let c = moto.creds();
    let o = opts(&moto.endpoint(), Some((&c.access_key, &c.secret_key)));
    let r = ParallelReader::builder(spec("mpart", "big/multi.bin", &o))
        .workers(4)
        .chunk_size(1 << 20)
        .build()
        .unwrap();
    assert_eq!(r.meta().etag.as_deref(), Some(etag.as_str()));
    assert_eq!(sha(&r.read_all().unwrap()), sha(&data));
    assert_eq!(sha(&iter_bytes(&r, 0).unwrap()), sha(&data));
}

/// Keys that URL encoding gets wrong one way or another.
const KEYS: &[&str] = &[
    "dir/sub dir/with space.bin",
    "plus+sign/a+b",
    "percent%20literal/100%",
    "question?mark=1&x=2",
    "hash#fragment",
    "unicode/üñíçødé/日本語/😀",
    "punct/!$&'()*,;=:@~[]^{}|`",
];

#[test]
fn keys_with_special_characters_round_trip() {
    let s3 = S3sFs::start();
    let ng = NginxS3::start();
    let moto = Moto::start();
    moto.create_bucket("keys");
    let mc = moto.creds();
    for (i, key) in KEYS.iter().enumerate() {
        let data = content::bytes(0x4B + i as u64, 10_000 + i);
        s3.put("keys", key, &data);
        ng.put("keys", key, &data);
        moto.put("keys", key, &data);
        for (server, o) in [
            (
                "s3s-fs",
                opts(&s3.endpoint(), Some((ACCESS_KEY, SECRET_KEY))),
            ),
            ("nginx", opts(&ng.endpoint(), None)),
            (
                "moto",
                opts(&moto.endpoint(), Some((&mc.access_key, &mc.secret_key))),
            ),
        ] {
            check_modes(
                spec("keys", key, &o),
                &data,
                4096,
                &format!("{server} {key:?}"),
            );
        }
    }
    // And from the command line, named as a user types it.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("k.bin");
    let key = KEYS[5];
    let o = shmfetch_cmd(&s3.endpoint())
        .args([
            "get",
            &format!("s3://keys/{key}"),
            "-o",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        sha(&std::fs::read(&out).unwrap()),
        sha(&content::bytes(0x4B + 5, 10_005))
    );
}

/// A test server in S3 mode holding `data` as `bkt/obj`.
fn s3_test_server(data: &[u8]) -> TestServer {
    let srv = TestServer::start(ServerConfig {
        s3: true,
        ..Default::default()
    })
    .unwrap();
    srv.put_bytes("bkt", "obj", data.to_vec());
    srv
}

#[test]
fn an_object_replaced_during_a_download_is_object_changed_never_stitched() {
    let old = content::bytes(0x01D, 1 << 20);
    let new = content::bytes(0x0E3, 1 << 20);
    for iter in [false, true] {
        let srv = s3_test_server(&old);
        // The probe and two ranges see the old object; then a writer
        // replaces it (same size: only the ETag tells).
        srv.inject(Fault::on("obj", FaultKind::Overwrite(new.clone().into()), 1).skip(3));
        let r = ParallelReader::builder(spec("bkt", "obj", &opts(&srv.endpoint(), None)))
            .workers(1)
            .chunk_size(64 << 10)
            .build()
            .unwrap();
        let got = if iter {
            iter_bytes(&r, 0).map(|_| ())
        } else {
            r.read_all().map(|_| ())
        };
        match got {
            Err(e) => assert!(
                matches!(e.root(), Error::ObjectChanged { .. }),
                "iter={iter}: {e:?}"
            ),
            Ok(()) => panic!("iter={iter}: a replaced object was delivered"),
        }
        // Every range after the swap asked for the old ETag.
        let reqs = srv.requests();
        assert!(reqs.iter().any(|q| q.status == 412), "{reqs:?}");
        assert!(
            reqs.iter()
                .filter(|q| q.range.as_deref() != Some("bytes=0-0"))
                .all(|q| q.if_match.is_some()),
            "{reqs:?}"
        );
    }
}

#[test]
fn slowdown_and_internal_errors_are_retried() {
    let data = content::bytes(0x510, 600_000);
    let srv = s3_test_server(&data);
    srv.inject(Fault::on("obj", FaultKind::Status(503), 3).skip(1));
    srv.inject(Fault::on("obj", FaultKind::Status(500), 2).skip(4));
    check_modes(
        spec("bkt", "obj", &opts(&srv.endpoint(), None)),
        &data,
        64 << 10,
        "after SlowDown and InternalError",
    );
    assert_eq!(srv.faults_injected(), 5);
}

#[test]
fn s3_errors_become_typed_errors() {
    let build = |spec: SourceSpec| ParallelReader::builder(spec).workers(1).build();
    let s3 = S3sFs::start();
    s3.put("bkt", "here", b"x");
    let good = opts(&s3.endpoint(), Some((ACCESS_KEY, SECRET_KEY)));
    let e = build(spec("bkt", "missing", &good)).unwrap_err();
    assert!(matches!(e, Error::ObjectNotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("NoSuchKey"), "{e}");

    let wrong = opts(&s3.endpoint(), Some((ACCESS_KEY, "not-the-secret")));
    let e = build(spec("bkt", "here", &wrong)).unwrap_err();
    match &e {
        Error::AccessDenied {
            status, message, ..
        } => {
            assert_eq!(*status, 403);
            assert!(message.contains("SignatureDoesNotMatch"), "{message}");
        }
        e => panic!("{e:?}"),
    }
    assert!(!format!("{e} {e:?}").contains("not-the-secret"));

    let moto = Moto::start();
    let mc = moto.creds();
    let e = build(spec(
        "no-such-bucket",
        "k",
        &opts(&moto.endpoint(), Some((&mc.access_key, &mc.secret_key))),
    ))
    .unwrap_err();
    assert!(matches!(e, Error::BucketNotFound { .. }), "{e:?}");

    // s3s-fs refuses unsigned requests: the hint says the flag is why.
    let e = build(spec("bkt", "here", &opts(&s3.endpoint(), None))).unwrap_err();
    assert!(matches!(e, Error::AccessDenied { .. }), "{e:?}");
    assert!(e.to_string().contains("drop the flag"), "{e}");

    // What AWS answers for an expired session token, and for a denied
    // object, from the test server.
    let srv = s3_test_server(b"0123456789");
    srv.inject(Fault::always(
        "obj",
        FaultKind::S3Error(400, "ExpiredToken"),
    ));
    let e = build(spec("bkt", "obj", &opts(&srv.endpoint(), None))).unwrap_err();
    match &e {
        Error::AccessDenied { message, .. } => assert!(message.contains("ExpiredToken"), "{e}"),
        e => panic!("{e:?}"),
    }
    assert!(
        e.to_string().contains("AWS_SESSION_TOKEN"),
        "the hint names it: {e}"
    );
}

/// Found by hand: S3's 301 `PermanentRedirect` (a bucket in another
/// region) has no `Location`; followed as a redirect it was a transport
/// error, retried for two minutes with "missing a location header".
#[test]
fn a_bucket_in_another_region_fails_at_once_naming_the_region_flag() {
    let srv = s3_test_server(b"0123456789");
    srv.inject(Fault::always(
        "obj",
        FaultKind::S3Error(301, "PermanentRedirect"),
    ));
    let t = std::time::Instant::now();
    let e = ParallelReader::builder(spec("bkt", "obj", &opts(&srv.endpoint(), None)))
        .workers(1)
        .build()
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "retried: {e}");
    let msg = e.to_string();
    assert!(
        msg.contains("PermanentRedirect") && msg.contains("--region"),
        "{msg}"
    );
    // And a range answered so, mid-download.
    let srv = s3_test_server(&content::bytes(1, 300_000));
    srv.inject(Fault::always("obj", FaultKind::S3Error(301, "PermanentRedirect")).skip(1));
    let r = ParallelReader::builder(spec("bkt", "obj", &opts(&srv.endpoint(), None)))
        .workers(1)
        .chunk_size(64 << 10)
        .build()
        .unwrap();
    let e = r.read_all().map(|_| ()).unwrap_err();
    assert!(e.to_string().contains("--region"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10), "retried: {e}");
}

#[test]
fn dcp_export_from_s3_matches_the_truth_for_every_reader_kind() {
    let s3 = S3sFs::start();
    s3.create_bucket("ckpt");
    for e in std::fs::read_dir(fixture_dir()).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        // Uploaded by boto3, as a training job's checkpoint would be.
        crate::s3rig::s3_tool_put(
            &s3.endpoint(),
            &s3.creds(),
            "ckpt",
            &format!("run-7/step-1000/{name}"),
            &std::fs::read(&p).unwrap(),
            None,
        )
        .unwrap();
    }
    let pool = WorkerPool::new(3).unwrap();
    let o = opts(&s3.endpoint(), Some((ACCESS_KEY, SECRET_KEY)));
    let ckpt = Checkpoint::open_with("s3://ckpt/run-7/step-1000/", o, pool).unwrap();
    let md = ckpt.metadata().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for kind in all_kinds() {
        let out = dir.path().join("all.safetensors");
        export_safetensors(&ckpt, &md, kind, &[], &out, &mut |_, _| {})
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        check_export(&out, &[]);
    }
}

#[test]
fn selective_dcp_export_from_s3_requests_exactly_the_coalesced_groups() {
    let only: Vec<String> = crate::dcp_plan::ONLY
        .iter()
        .map(|s| s.to_string())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let pool = WorkerPool::new(2).unwrap();
    for max_gap in [
        shmfetch::dcp::MaxGap::Bytes(0),
        shmfetch::dcp::MaxGap::default(),
        shmfetch::dcp::MaxGap::Unbounded,
    ] {
        let srv = TestServer::start(ServerConfig {
            s3: true,
            ..Default::default()
        })
        .unwrap();
        srv.put_files("ckpt", "dcp-small/", &fixture_dir()).unwrap();
        let ckpt = Checkpoint::open_with(
            "s3://ckpt/dcp-small/",
            opts(&srv.endpoint(), None),
            pool.clone(),
        )
        .unwrap();
        let md = ckpt.metadata().unwrap();
        let out = dir.path().join("sel.safetensors");
        let kind = ReaderKind::DcpOptimized { max_gap };
        export_safetensors(&ckpt, &md, kind, &only, &out, &mut |_, _| {}).unwrap();
        check_export(&out, crate::dcp_plan::ONLY);
        let want = crate::dcp_plan::expected_groups(max_gap);
        let (got, probes) = crate::dcp_plan::served_ranges_s3(&srv);
        assert_eq!(got, want, "{kind}: ranges fetched");
        // Besides the groups, one size probe per file opened.
        assert_eq!(
            probes,
            want.len() + 1,
            "{kind}: probes (data files + .metadata)"
        );
    }
}

fn shmfetch_cmd(endpoint: &str) -> Command {
    let mut c = Command::new(BIN);
    c.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_ENDPOINT_URL", endpoint)
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(mut c: Command) -> Output {
    let o = c.output().unwrap();
    assert_no_orphaned_workers();
    o
}

/// What must never appear in anything shmfetch prints.
fn assert_no_secret(o: &Output, secrets: &[&str], what: &str) {
    let all = format!("{}{}", text(&o.stdout), text(&o.stderr));
    for s in secrets.iter().chain(&[
        "X-Amz-Signature",
        "X-Amz-Credential",
        "X-Amz-Security-Token",
    ]) {
        assert!(!all.contains(s), "{what}: {s:?} printed:\n{all}");
    }
}

#[test]
fn credentials_from_env_profile_and_session_token_work_and_are_never_printed() {
    let s3 = S3sFs::start();
    let data = content::bytes(0xC4ED, 300_000);
    s3.put("bkt", "creds/obj", &data);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.bin");
    let token = "FwoGZXIvYXdzEXAMPLE-session-token-0123456789";
    let get = |c: &mut Command| {
        c.args([
            "-v",
            "get",
            "s3://bkt/creds/obj",
            "-o",
            out.to_str().unwrap(),
            "-w",
            "2",
        ])
        .env("RUST_LOG", "trace");
    };

    // 1. The environment, with a session token.
    let mut c = shmfetch_cmd(&s3.endpoint());
    c.env("AWS_SESSION_TOKEN", token);
    get(&mut c);
    let o = run(c);
    assert!(o.status.success(), "env: {}", text(&o.stderr));
    assert_eq!(sha(&std::fs::read(&out).unwrap()), sha(&data));
    assert_no_secret(&o, &[SECRET_KEY, token], "env");

    // 2. AWS_PROFILE from temporary shared files (keys in credentials,
    //    region in config), nothing in the environment.
    let creds = dir.path().join("credentials");
    let config = dir.path().join("config");
    std::fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = WRONG\naws_secret_access_key = WRONG\n\n\
             [ci]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n\
             aws_session_token = {token}\n"
        ),
    )
    .unwrap();
    std::fs::write(&config, "[profile ci]\nregion = us-east-1\n").unwrap();
    std::fs::remove_file(&out).unwrap();
    let mut c = shmfetch_cmd(&s3.endpoint());
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_PROFILE", "ci")
        .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
        .env("AWS_CONFIG_FILE", &config);
    get(&mut c);
    let o = run(c);
    assert!(o.status.success(), "profile: {}", text(&o.stderr));
    assert_eq!(sha(&std::fs::read(&out).unwrap()), sha(&data));
    assert_no_secret(&o, &[SECRET_KEY, token], "profile");

    // 3. The default profile has the wrong keys: a clear AccessDenied,
    //    and still no secret printed.
    let mut c = shmfetch_cmd(&s3.endpoint());
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_SHARED_CREDENTIALS_FILE", &creds);
    get(&mut c);
    let o = run(c);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    // s3s-fs names an unknown key id NotSignedUp (AWS: InvalidAccessKeyId).
    assert!(
        err.contains("access denied") && err.contains("HTTP 403"),
        "{err}"
    );
    assert_no_secret(&o, &[SECRET_KEY, token, "WRONG\n"], "wrong profile");

    // 4. Keys in the environment come first in the chain: a profile that
    //    is not there is not even read. Without them it is an error, and
    //    so is having no credentials at all.
    let mut c = shmfetch_cmd(&s3.endpoint());
    c.env("AWS_PROFILE", "nope")
        .env("AWS_SHARED_CREDENTIALS_FILE", &creds);
    c.args(["get", "s3://bkt/creds/obj", "-o", out.to_str().unwrap()]);
    let o = run(c);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut c = shmfetch_cmd(&s3.endpoint());
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_PROFILE", "nope")
        .env("AWS_SHARED_CREDENTIALS_FILE", &creds);
    c.args(["get", "s3://bkt/creds/obj", "-o", out.to_str().unwrap()]);
    let o = run(c);
    // A configuration error, like a bad flag: exit 2.
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("AWS_PROFILE=nope: no such profile"),
        "{}",
        text(&o.stderr)
    );
    let mut c = shmfetch_cmd(&s3.endpoint());
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    c.args(["get", "s3://bkt/creds/obj", "-o", out.to_str().unwrap()]);
    let o = run(c);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("no AWS credentials found")
            && err.contains("AWS_ACCESS_KEY_ID")
            && err.contains("--no-sign-request"),
        "{err}"
    );
}

#[test]
fn a_download_outliving_its_presigned_url_gets_renewed_ones() {
    // Each range takes ~250 ms; URLs live 2 s and are renewed every 1 s.
    let data = content::bytes(0x7717, 24 * 65536);
    let srv = TestServer::start(ServerConfig {
        s3: true,
        first_byte_latency: Some(Duration::from_millis(250)),
        ..Default::default()
    })
    .unwrap();
    srv.put_bytes("bkt", "slow", data.clone());
    let mut o = opts(&srv.endpoint(), Some(("AKIDRENEW", "renew-secret")));
    o.s3.presign_ttl = Some(Duration::from_secs(2));
    let r = ParallelReader::builder(spec("bkt", "slow", &o))
        .workers(1)
        .chunk_size(65536)
        .build()
        .unwrap();
    let t = std::time::Instant::now();
    assert_eq!(sha(&r.read_all().unwrap()), sha(&data));
    assert!(
        t.elapsed() > Duration::from_secs(4),
        "the download must outlive two URLs"
    );
    // Every request was made while its URL was valid, and the URLs changed.
    let mut dates = std::collections::BTreeSet::new();
    for q in srv.requests() {
        let param = |name: &str| {
            q.query
                .split('&')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("{name} missing in {:?}", q.query))
                .to_string()
        };
        assert_eq!(param("X-Amz-Expires"), "2");
        let signed = param("X-Amz-Date");
        let at =
            q.at.duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
        let signed_at = amz_date_secs(&signed);
        assert!(
            at <= signed_at + 2,
            "request at {at} with a URL signed at {signed_at}"
        );
        dates.insert(signed);
    }
    assert!(dates.len() >= 3, "URLs renewed: {dates:?}");
}

/// Seconds since the epoch of an `X-Amz-Date` (`YYYYMMDDTHHMMSSZ`).
fn amz_date_secs(d: &str) -> u64 {
    let n = |a: usize, b: usize| d[a..b].parse::<i64>().unwrap();
    let (y, m, day) = (n(0, 4), n(4, 6), n(6, 8));
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    (days * 86400 + n(9, 11) * 3600 + n(11, 13) * 60 + n(13, 15)) as u64
}

#[test]
fn get_bench_and_dcp_take_s3_urls() {
    let ng = NginxS3::start();
    let sha_want = ng.put_generated("bench", "obj", 3 << 20, 0xBE);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("obj");
    let ep = ng.endpoint();
    let mut c = Command::new(BIN);
    c.args([
        "get",
        "s3://bench/obj",
        "--no-sign-request",
        "--endpoint-url",
        &ep,
    ])
    .args(["-o", out.to_str().unwrap(), "-w", "3", "--mode", "stream"])
    .env_remove("AWS_ENDPOINT_URL")
    .env_remove("AWS_ENDPOINT_URL_S3");
    let o = run(c);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(sha(&std::fs::read(&out).unwrap()), sha_want);

    let mut c = Command::new(BENCH);
    c.args([
        "--url",
        "s3://bench/obj",
        "--no-sign-request",
        "--endpoint-url",
        &ep,
    ])
    .args(["--workers", "2", "--runs", "1", "--warmup", "0", "--verify"]);
    let o = run(c);
    let table = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    for mode in ["get", "read-all", "iter"] {
        assert!(
            table
                .lines()
                .any(|l| l.starts_with(mode) && l.trim_end().ends_with("ok")),
            "{mode}: {table}"
        );
    }

    for e in std::fs::read_dir(fixture_dir()).unwrap() {
        let p = e.unwrap().path();
        ng.put(
            "ckpts",
            &format!("step-1/{}", p.file_name().unwrap().to_str().unwrap()),
            &std::fs::read(&p).unwrap(),
        );
    }
    let mut c = Command::new(BIN);
    c.args([
        "dcp",
        "ls",
        "s3://ckpts/step-1/",
        "--no-sign-request",
        "--endpoint-url",
        &ep,
    ]);
    let o = run(c);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("model.norm.weight"),
        "{}",
        text(&o.stdout)
    );
    let st = dir.path().join("m.safetensors");
    let mut c = Command::new(BIN);
    c.args([
        "dcp",
        "export",
        "s3://ckpts/step-1",
        "--no-sign-request",
        "--endpoint-url",
        &ep,
    ])
    .args(["-o", st.to_str().unwrap()]);
    let o = run(c);
    assert!(o.status.success(), "{}", text(&o.stderr));
    check_export(&st, &[]);
}

#[test]
fn scheme_rules() {
    let o = SourceOptions {
        endpoint: Some("http://gw:51080".into()),
        ..Default::default()
    };
    match SourceSpec::parse_with("ais://@aws/bkt/dir/o", &o).unwrap() {
        SourceSpec::AiStore {
            provider,
            bucket,
            object,
            ..
        } => {
            assert_eq!(
                (provider.as_str(), bucket.as_str(), object.as_str()),
                ("aws", "bkt", "dir/o")
            );
        }
        s => panic!("{s:?}"),
    }
    assert!(matches!(
        SourceSpec::parse_with("s3://bkt/o", &SourceOptions::default()).unwrap(),
        SourceSpec::S3 { .. }
    ));
    for (url, says) in [
        ("gs://b/o", "ais://@gcp/"),
        ("az://b/o", "ais://@gcp/"),
        ("s3://b", "s3://BUCKET/KEY"),
        ("s3://b/a//c", "empty segment"),
        ("s3://b/dir/", "names a prefix"),
        ("aws://b/o", "ais://@aws/"),
        ("ais://@nope/b/o", "unknown provider"),
    ] {
        let e = SourceSpec::parse_with(url, &o).unwrap_err().to_string();
        assert!(e.contains(says), "{url}: {e}");
    }
    // Debug never shows a secret given to the library.
    let spec = spec("b", "k", &opts("http://h:1", Some(("AKID", "sekrit"))));
    assert!(!format!("{spec:?}").contains("sekrit"), "{spec:?}");
}

/// A fake instance metadata service (IMDSv2: a token from `PUT
/// /latest/api/token`, required on every `GET`) and container credentials
/// endpoint (`GET /creds` with the token file's `Authorization`), both
/// handing out `key`/`secret`/`token`. Returns its URL and the request
/// lines it answered.
fn fake_credentials_endpoint(
    key: &'static str,
    secret: &'static str,
    token: &'static str,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = std::sync::Arc::clone(&seen);
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                headers.push(h.trim().to_ascii_lowercase());
            }
            let has = |p: &str| headers.iter().any(|h| h.starts_with(p));
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let creds = format!(
                r#"{{"Code":"Success","Type":"AWS-HMAC","AccessKeyId":"{key}","SecretAccessKey":"{secret}","Token":"{token}","Expiration":"2099-01-01T00:00:00Z"}}"#
            );
            let (status, body) = match (line.split_whitespace().next(), path.as_str()) {
                (Some("PUT"), "/latest/api/token")
                    if has("x-aws-ec2-metadata-token-ttl-seconds") =>
                {
                    (200, "imds-session-token".to_string())
                }
                (Some("GET"), _)
                    if path.starts_with("/latest/")
                        && !has("x-aws-ec2-metadata-token: imds-session-token") =>
                {
                    (401, String::new())
                }
                (Some("GET"), "/latest/meta-data/iam/security-credentials/") => {
                    (200, "the-role".into())
                }
                (Some("GET"), "/latest/meta-data/iam/security-credentials/the-role") => {
                    (200, creds)
                }
                (Some("GET"), "/creds") if has("authorization: container-auth-token") => {
                    (200, creds)
                }
                _ => (404, String::new()),
            };
            log.lock()
                .unwrap()
                .push(format!("{} {status}", line.trim()));
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, seen)
}

#[test]
fn credentials_from_the_instance_metadata_service_and_a_container_endpoint() {
    let s3 = S3sFs::start();
    let data = content::bytes(0x1AD5, 200_000);
    s3.put("bkt", "chain/obj", &data);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.bin");
    let session = "imds-handed-session-token";
    let (url, seen) = fake_credentials_endpoint(ACCESS_KEY, SECRET_KEY, session);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "container-auth-token").unwrap();
    let base = |c: &mut Command| {
        c.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_EC2_METADATA_DISABLED")
            .env("RUST_LOG", "trace")
            .args([
                "-v",
                "get",
                "s3://bkt/chain/obj",
                "-o",
                out.to_str().unwrap(),
            ]);
    };
    // IMDSv2, moved to the fake by the SDKs' variable.
    let mut c = shmfetch_cmd(&s3.endpoint());
    c.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &url);
    base(&mut c);
    let o = run(c);
    assert!(o.status.success(), "imds: {}", text(&o.stderr));
    assert_eq!(sha(&std::fs::read(&out).unwrap()), sha(&data));
    assert_no_secret(&o, &[SECRET_KEY, session, "imds-session-token"], "imds");
    let lines = seen.lock().unwrap().clone();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("PUT /latest/api/token") && l.ends_with("200")),
        "IMDSv2 token first: {lines:?}"
    );
    // Container credentials (EKS Pod Identity style: full URI + token file).
    std::fs::remove_file(&out).unwrap();
    let mut c = shmfetch_cmd(&s3.endpoint());
    c.env("AWS_CONTAINER_CREDENTIALS_FULL_URI", format!("{url}/creds"))
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &token_file);
    base(&mut c);
    let o = run(c);
    assert!(o.status.success(), "container: {}", text(&o.stderr));
    assert_eq!(sha(&std::fs::read(&out).unwrap()), sha(&data));
    assert_no_secret(
        &o,
        &[SECRET_KEY, session, "container-auth-token"],
        "container",
    );
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("GET /creds") && l.ends_with("200"))
    );
}

/// Found in review: the benchmark's single-stream baseline named the
/// presigned URL (signature, key id, session token) in its errors.
#[test]
fn the_benchmark_never_prints_a_presigned_url() {
    let s3 = S3sFs::start();
    s3.put("bkt", "b/obj", &content::bytes(0xB1, 100_000));
    let token = "bench-session-token-secret";
    let mut c = Command::new(BENCH);
    c.args(["--url", "s3://bkt/b/obj", "--endpoint-url", &s3.endpoint()])
        .args(["--workers", "1", "--runs", "1", "--warmup", "0"])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", "wrong-secret-for-the-bench")
        .env("AWS_SESSION_TOKEN", token)
        .env("RUST_LOG", "trace");
    let o = run(c);
    assert!(!o.status.success());
    assert_no_secret(&o, &["wrong-secret-for-the-bench", token], "bench");
}

/// Found in review: `--endpoint` (AIStore's gateway) with an s3:// URL was
/// ignored, sending a MinIO user's request to AWS.
#[test]
fn endpoint_flags_of_the_wrong_kind_are_usage_errors() {
    for args in [
        vec!["get", "s3://b/k", "--endpoint", "http://127.0.0.1:9"],
        vec!["get", "ais://b/k", "--endpoint-url", "http://127.0.0.1:9"],
        vec![
            "dcp",
            "ls",
            "s3://b/ckpt/",
            "--endpoint",
            "http://127.0.0.1:9",
        ],
        vec![
            "dcp",
            "ls",
            "ais://b/ckpt/",
            "--endpoint-url",
            "http://127.0.0.1:9",
        ],
    ] {
        let mut c = Command::new(BIN);
        c.args(&args);
        let o = run(c);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains("--endpoint"),
            "{}",
            text(&o.stderr)
        );
    }
}
