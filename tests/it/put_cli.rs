//! `shmfetch put` end to end: files and stdin to s3s-fs, moto and local
//! paths, read back by boto3 or from disk and compared by sha256; Ctrl-C
//! mid-upload leaves no multipart upload, object or segment behind.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shmfetch::testing::content;

use crate::common::sha;
use crate::s3rig::{ACCESS_KEY, Moto, S3sFs, SECRET_KEY};

const BIN: &str = env!("CARGO_BIN_EXE_shmfetch");
const MIB: usize = 1 << 20;

fn put(args: &[&str], creds: (&str, &str), stdin: Option<&[u8]>) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.arg("put")
        .args(args)
        .env("AWS_ACCESS_KEY_ID", creds.0)
        .env("AWS_SECRET_ACCESS_KEY", creds.1)
        .env("AWS_REGION", "us-east-1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(b) = stdin {
        input.write_all(b).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn stored(s3: &S3sFs, bucket: &str, key: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("got");
    s3.tool(&["get", bucket, key, f.to_str().unwrap()]).unwrap();
    std::fs::read(f).unwrap()
}

#[test]
fn put_stores_files_and_stdin_exactly_in_s3_and_local_paths() {
    let s3 = S3sFs::start();
    s3.create_bucket("putb");
    let ep = s3.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let data = content::bytes(0xc1, 13 * MIB + 5);
    let src = dir.path().join("model.bin");
    std::fs::write(&src, &data).unwrap();
    let creds = (ACCESS_KEY, SECRET_KEY);
    // A file, to a "directory": the file name is appended.
    let o = put(
        &[
            src.to_str().unwrap(),
            "s3://putb/ckpt/",
            "--endpoint-url",
            &ep,
            "-w",
            "3",
            "--part-size",
            "5MiB",
        ],
        creds,
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bytes to s3://putb/ckpt/model.bin") && err.contains("3 parts"),
        "{err}"
    );
    assert_eq!(sha(&stored(&s3, "putb", "ckpt/model.bin")), sha(&data));
    // stdin, quietly.
    let o = put(
        &["-q", "-", "s3://putb/from-stdin", "--endpoint-url", &ep],
        creds,
        Some(&data),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(sha(&stored(&s3, "putb", "from-stdin")), sha(&data));
    // A local destination.
    let out = dir.path().join("copy.bin");
    let o = put(
        &[
            src.to_str().unwrap(),
            out.to_str().unwrap(),
            "--part-size",
            "1MiB",
        ],
        creds,
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(sha(&std::fs::read(&out).unwrap()), sha(&data));
    // Usage errors exit 2 and say why.
    let o = put(
        &["-", "s3://putb/dir/", "--endpoint-url", &ep],
        creds,
        Some(b""),
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = put(
        &[
            src.to_str().unwrap(),
            "s3://putb/x",
            "--endpoint",
            "http://127.0.0.1:9",
        ],
        creds,
        None,
    );
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Wrong credentials: a clear error, nothing stored.
    let o = put(
        &[
            src.to_str().unwrap(),
            "s3://putb/denied",
            "--endpoint-url",
            &ep,
            "--attempts",
            "1",
        ],
        (ACCESS_KEY, "wrong"),
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("denied") || err.contains("Signature"), "{err}");
    assert!(s3.tool(&["head", "putb", "denied"]).is_err());
}

#[test]
fn ctrl_c_during_a_put_aborts_the_multipart_upload_and_leaves_nothing() {
    let moto = Moto::start();
    moto.create_bucket("putb");
    let ep = moto.endpoint();
    let mut child = Command::new(BIN)
        .args([
            "put",
            "-",
            "s3://putb/interrupted",
            "--endpoint-url",
            &ep,
            "-w",
            "2",
            "--part-size",
            "5MiB",
        ])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut input = child.stdin.take().unwrap();
    // Three parts' worth: the multipart upload has started; stdin stays open.
    input.write_all(&content::bytes(0xc2, 16 * MIB)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = moto.tool(&["uploads", "putb"]).unwrap();
        if out.contains("interrupted") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no multipart upload started: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let o = child.wait_with_output().unwrap();
    drop(input);
    assert_eq!(
        o.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = moto.tool(&["uploads", "putb"]).unwrap();
    assert!(
        !out.contains("interrupted"),
        "the multipart upload was left: {out}"
    );
    assert!(moto.tool(&["head", "putb", "interrupted"]).is_err());
    crate::cli::assert_no_orphaned_workers();
}
