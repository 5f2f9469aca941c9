//! The `shmfetch` binary, run as a user would.

use std::process::Command;

use crate::common::*;
use shmfetch::testing::content;
use shmfetch::testing::server::{ServerConfig, TestServer};

const BIN: &str = env!("CARGO_BIN_EXE_shmfetch");

/// No worker process may be left behind by an exited CLI: an orphaned
/// worker would have been re-parented away from its coordinator (to init or
/// a subreaper). Workers of other CLIs that tests run at the same time are
/// children of a live `shmfetch` process; those of another integration-test
/// binary running at the same time (another checkout) are children of an
/// `it-…` process.
pub fn assert_no_orphaned_workers() {
    let me = std::process::id() as i32;
    for (pid, ppid) in worker_processes() {
        let parent = std::fs::read_to_string(format!("/proc/{ppid}/comm")).unwrap_or_default();
        let parent = parent.trim();
        assert!(
            ppid == me || parent == "shmfetch" || (ppid != 1 && parent.starts_with("it-")),
            "worker {pid} belongs to no live coordinator (ppid {ppid}, {parent:?})",
        );
    }
}

fn get(args: &[&str], endpoint: &str) -> std::process::Output {
    Command::new(BIN)
        .arg("get")
        .args(args)
        .env("AIS_ENDPOINT", endpoint)
        .env_remove("AIS_AUTHN_TOKEN")
        .env_remove("AIS_AUTHN_TOKEN_FILE")
        .output()
        .unwrap()
}

#[test]
fn get_to_file_and_stdout_in_both_modes() {
    let (srv, _spec, data) = server_with("dir/obj.bin", 3_000_017, 51);
    let dir = tempfile::tempdir().unwrap();
    for (mode, workers) in [
        ("read-all", "4"),
        ("stream", "3"),
        ("read-all", "1"),
        ("stream", "16"),
    ] {
        let out = dir.path().join(format!("out-{mode}-{workers}"));
        let o = get(
            &[
                "ais://b/dir/obj.bin",
                "-o",
                out.to_str().unwrap(),
                "-w",
                workers,
                "--chunk-size",
                "256KiB",
                "--mode",
                mode,
            ],
            &srv.endpoint(),
        );
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{mode}: {stderr}");
        assert_eq!(
            sha(&std::fs::read(&out).unwrap()),
            sha(&data),
            "{mode} -w {workers}"
        );
        assert!(
            stderr.contains("3000017 bytes") && stderr.contains("MiB/s"),
            "summary line: {stderr}"
        );
        let o = get(
            &[
                "ais://b/dir/obj.bin",
                "-o",
                "-",
                "-w",
                workers,
                "--chunk-size",
                "1M",
                "--mode",
                mode,
            ],
            &srv.endpoint(),
        );
        assert!(o.status.success());
        assert_eq!(sha(&o.stdout), sha(&data), "{mode} to stdout");
    }
    // Default output name: the object's base name, in the working directory.
    let o = Command::new(BIN)
        .current_dir(dir.path())
        .args(["get", "ais://b/dir/obj.bin", "--endpoint", &srv.endpoint()])
        .env("AIS_ENDPOINT", "http://127.0.0.1:1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        sha(&std::fs::read(dir.path().join("obj.bin")).unwrap()),
        sha(&data),
        "--endpoint overrides AIS_ENDPOINT"
    );
    assert_no_orphaned_workers();
}

#[test]
fn empty_object_and_local_file() {
    let (srv, _spec, _) = server_with("empty", 0, 1);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("e");
    let o = get(
        &["ais://b/empty", "-o", out.to_str().unwrap()],
        &srv.endpoint(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&out).unwrap().len(), 0);
    let src = dir.path().join("src");
    let data = content::bytes(52, 777_777);
    std::fs::write(&src, &data).unwrap();
    let o = get(
        &[src.to_str().unwrap(), "-o", "-", "--chunk-size", "100000"],
        "",
    );
    assert!(o.status.success());
    assert_eq!(sha(&o.stdout), sha(&data));
}

#[test]
fn failures_exit_non_zero_with_a_clear_message_and_no_partial_file() {
    let (srv, _spec, _) = server_with("o", 1000, 53);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never");
    for (src, needle) in [
        ("ais://nobucket/o", "bucket ais://nobucket does not exist"),
        ("ais://b/nothere", "ais://b/nothere does not exist"),
    ] {
        let o = get(&[src, "-o", out.to_str().unwrap()], &srv.endpoint());
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
        assert!(!out.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no partial file"
        );
    }
    let o = get(&["ais://b/o", "--chunk-size", "lots"], &srv.endpoint());
    assert_ne!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a size"));
    let o = Command::new(BIN)
        .args(["get", "ais://b/o"])
        .env_remove("AIS_ENDPOINT")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("AIS_ENDPOINT"));
}

#[test]
fn token_from_file_works_and_is_never_printed() {
    let secret = "eyJhbGciOiJIUzI1NiJ9.secret-part";
    let srv = TestServer::start(ServerConfig {
        token: Some(secret.into()),
        ..Default::default()
    })
    .unwrap();
    let data = content::bytes(54, 100_000);
    srv.put_bytes("b", "o", data.clone());
    let dir = tempfile::tempdir().unwrap();
    let tf = dir.path().join("auth.token");
    std::fs::write(&tf, format!("{{\"token\":\"{secret}\"}}")).unwrap();
    let o = Command::new(BIN)
        .args(["get", "ais://b/o", "-o", "-", "-v"])
        .env("AIS_ENDPOINT", srv.endpoint())
        .env("AIS_AUTHN_TOKEN_FILE", &tf)
        .env_remove("AIS_AUTHN_TOKEN")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(sha(&o.stdout), sha(&data));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("secret-part"));
    // A wrong token: 401, and neither token shows in the message.
    let o = Command::new(BIN)
        .args(["get", "ais://b/o", "-o", "-", "-v"])
        .env("AIS_ENDPOINT", srv.endpoint())
        .env("AIS_AUTHN_TOKEN", "wrong-secret-xyz")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr.contains("401") && stderr.contains("access denied"),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong-secret-xyz"), "{stderr}");
}

#[test]
fn special_output_files_are_written_in_place_never_replaced() {
    use std::os::unix::fs::FileTypeExt;
    let (srv, _spec, data) = server_with("o", 2_000_000, 56);
    let dir = tempfile::tempdir().unwrap();
    // A FIFO stands in for /dev/null and friends: it must stay a FIFO.
    let fifo = dir.path().join("pipe");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let f2 = fifo.clone();
    let reader = std::thread::spawn(move || std::fs::read(&f2).unwrap());
    let o = get(
        &["ais://b/o", "-o", fifo.to_str().unwrap(), "-w", "3"],
        &srv.endpoint(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(sha(&reader.join().unwrap()), sha(&data));
    assert!(
        std::fs::metadata(&fifo).unwrap().file_type().is_fifo(),
        "the FIFO was replaced"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file left"
    );
    let o = get(&["ais://b/o", "-o", "/dev/null"], &srv.endpoint());
    assert!(o.status.success());
    assert!(
        std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device(),
        "/dev/null is still a device"
    );
    // A directory is refused.
    let o = get(
        &["ais://b/o", "-o", dir.path().to_str().unwrap()],
        &srv.endpoint(),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is a directory"));
}

#[test]
fn read_timeout_flag_cuts_a_stalled_server_short() {
    use shmfetch::testing::server::{Fault, FaultKind};
    let (srv, _spec, data) = server_with("o", 500_000, 57);
    srv.inject(Fault::on(
        "o",
        FaultKind::Stall(std::time::Duration::from_secs(20)),
        1,
    ));
    let t = std::time::Instant::now();
    let o = get(
        &["ais://b/o", "-o", "-", "-w", "2", "--read-timeout", "0.3"],
        &srv.endpoint(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(sha(&o.stdout), sha(&data));
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        t.elapsed()
    );
    // Permanent stall: a clear error naming the range and the attempts.
    srv.inject(Fault::on(
        "o",
        FaultKind::Stall(std::time::Duration::from_secs(20)),
        100,
    ));
    let o = get(
        &[
            "ais://b/o",
            "-o",
            "-",
            "-w",
            "1",
            "--read-timeout",
            "0.2",
            "--attempts",
            "2",
        ],
        &srv.endpoint(),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.contains("ais://b/o") && err.contains("bytes 0-") && err.contains("2 attempt"),
        "{err}"
    );
    let o = get(&["ais://b/o", "--read-timeout", "0"], &srv.endpoint());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--read-timeout must be"));
}
