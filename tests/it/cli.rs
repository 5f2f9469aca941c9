//! The `shmfetch` binary, run as a user would.

use std::process::Command;

use crate::common::*;
use shmfetch::testing::content;
use shmfetch::testing::server::{ServerConfig, TestServer};

const BIN: &str = env!("CARGO_BIN_EXE_shmfetch");

/// No worker process may be left behind by an exited CLI: an orphaned
/// worker would have been re-parented away from its coordinator (to init or
/// a subreaper). A worker's parent is its coordinator as long as it has the
/// pool's dispatcher thread (`shmfetch-pool`, which forks every worker),
/// whatever the process is: a `shmfetch`, this test binary, another
/// checkout's tests or benches running at the same time.
///
/// Other tests interrupt or kill CLIs on purpose: their workers die by
/// `PR_SET_PDEATHSIG` an instant after their coordinator, so a worker
/// without a coordinator counts only if it is still running after a grace
/// period (an orphan that stays is what this guards against).
pub fn assert_no_orphaned_workers() {
    let orphan = |pid: i32, ppid: i32| -> Option<String> {
        let coordinator = std::fs::read_dir(format!("/proc/{ppid}/task")).is_ok_and(|tasks| {
            tasks.flatten().any(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "shmfetch-pool")
            })
        });
        (!coordinator && running(pid))
            .then(|| format!("worker {pid} belongs to no live coordinator (ppid {ppid})"))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let orphans: Vec<String> = worker_processes()
            .into_iter()
            .filter_map(|(pid, ppid)| orphan(pid, ppid))
            .collect();
        if orphans.is_empty() {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{orphans:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Alive and not a zombie.
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            != Some("Z")
    })
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

/// A one-purpose HTTP server on loopback: answers every request on a new
/// connection with what `answer(method, path)` returns, after its delay.
struct TinyServer {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

type Answer = fn(&str, &str, &str) -> (String, std::time::Duration);

impl TinyServer {
    /// `answer(method, path, own_base)` gives the response bytes and a delay.
    fn start(answer: Answer) -> TinyServer {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || {
                    // One read: a request head (or a TLS hello) comes whole.
                    let mut buf = vec![0u8; 65536];
                    let n = conn.read(&mut buf).unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let first = head.lines().next().unwrap_or("");
                    let mut parts = first.split_whitespace();
                    let (m, p) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    let (resp, delay) = answer(m, p, &format!("http://{addr}"));
                    std::thread::sleep(delay);
                    let _ = conn.write_all(resp.as_bytes());
                });
            }
        });
        TinyServer { addr, stop }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for TinyServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

fn run(args: &[&str]) -> (Option<i32>, String, Vec<u8>) {
    let o = Command::new(BIN)
        .args(args)
        .env_remove("AIS_AUTHN_TOKEN")
        .env_remove("AIS_AUTHN_TOKEN_FILE")
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        o.stdout,
    )
}

#[test]
fn get_to_stdout_into_head_is_a_quiet_success() {
    use std::io::Read;
    let (srv, _spec, _) = server_with("o", 16 << 20, 90);
    for mode in ["read-all", "stream"] {
        let mut child = Command::new(BIN)
            .args(["get", "ais://b/o", "-o", "-", "--mode", mode])
            .env("AIS_ENDPOINT", srv.endpoint())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // `| head -c 100`: read 100 bytes, then go away.
        let mut stdout = child.stdout.take().unwrap();
        let mut first = [0u8; 100];
        stdout.read_exact(&mut first).unwrap();
        drop(stdout);
        let o = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{mode}: {stderr}");
        assert_eq!(stderr, "", "{mode}: nothing on stderr");
    }
    assert_no_orphaned_workers();
}

#[test]
fn usage_errors_exit_2() {
    let (srv, _spec, _) = server_with("o", 1000, 91);
    let ep = srv.endpoint();
    for (args, needle) in [
        (vec!["get", "ais://b/o", "--bogus"], "--bogus"),
        (
            vec!["get", "ais://b/o", "--endpoint", &ep, "-w", "0"],
            "--workers must be between 1 and",
        ),
        (
            vec![
                "get",
                "ais://b/o",
                "--endpoint",
                &ep,
                "--chunk-size",
                "99999TiB",
            ],
            "99999 TiB is larger than the 4 GiB maximum",
        ),
        (
            vec!["get", "ais://b/o", "--endpoint", &ep, "--read-timeout", "0"],
            "--read-timeout must be",
        ),
        (
            vec!["get", "ais://b/o", "--endpoint", &ep, "--attempts", "0"],
            "--attempts must be at least 1",
        ),
        (
            vec!["get", "ais://b/o", "--endpoint", "127.0.0.1:1"],
            "endpoint must start with http:// or https://",
        ),
    ] {
        let (code, stderr, _) = run(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    // And --help says so.
    let (code, _, stdout) = run(&["--help"]);
    assert_eq!(code, Some(0));
    let help = String::from_utf8_lossy(&stdout);
    for s in ["Exit status", "2 ", "130", "143", "129", "EPIPE"] {
        assert!(help.contains(s), "--help lacks {s:?}: {help}");
    }
}

#[test]
fn a_bad_ais_endpoint_variable_says_what_an_endpoint_looks_like() {
    let o = Command::new(BIN)
        .args(["get", "ais://b/o", "-o", "-"])
        .env("AIS_ENDPOINT", "127.0.0.1:1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("AIS_ENDPOINT") && stderr.contains("must start with http:// or https://"),
        "{stderr}"
    );
}

/// Mounts a tmpfs of `size` on a new directory, or says why it cannot.
pub(crate) fn small_tmpfs(size: &str) -> Option<(tempfile::TempDir, Unmount)> {
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir.path())
        .status();
    if !st.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return None;
    }
    let u = Unmount(dir.path().to_path_buf());
    Some((dir, u))
}

pub(crate) struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn no_space_is_reported_before_downloading() {
    let Some((dir, _unmount)) = small_tmpfs("1m") else {
        return;
    };
    let (srv, _spec, _) = server_with("o", 2_000_000, 92);
    let out = dir.path().join("out.bin");
    let (code, stderr, _) = run(&[
        "get",
        "ais://b/o",
        "--endpoint",
        &srv.endpoint(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("not enough space") && stderr.contains(out.to_str().unwrap()),
        "{stderr}"
    );
    assert!(
        !stderr.contains("shmfetch-part"),
        "names the user's path: {stderr}"
    );
    assert!(
        !stderr.contains("No space left on device"),
        "checked before, not found after: {stderr}"
    );
    assert_eq!(
        srv.requests().iter().filter(|r| r.method == "GET").count(),
        0,
        "nothing was downloaded"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn errors_name_the_output_path_not_the_part_file() {
    let (srv, _spec, _) = server_with("o", 1000, 93);
    let dir = tempfile::tempdir().unwrap();
    // A directory we may not write in (we may be root: make it a file's child).
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let out = blocker.join("out.bin");
    let (code, stderr, _) = run(&[
        "get",
        "ais://b/o",
        "--endpoint",
        &srv.endpoint(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(out.to_str().unwrap()), "{stderr}");
    assert!(!stderr.contains("shmfetch-part"), "{stderr}");
}

#[test]
fn get_onto_a_read_only_file_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let (srv, _spec, data) = server_with("o", 300_000, 94);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ro.bin");
    std::fs::write(&out, b"old").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o444)).unwrap();
    let (code, stderr, _) = run(&[
        "get",
        "ais://b/o",
        "--endpoint",
        &srv.endpoint(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(sha(&std::fs::read(&out).unwrap()), sha(&data));
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o7777,
        0o444,
        "the file's mode is kept"
    );
}

#[test]
fn quiet_hides_the_summary() {
    let (srv, _spec, data) = server_with("o", 300_000, 95);
    let (code, stderr, stdout) = run(&[
        "get",
        "ais://b/o",
        "--endpoint",
        &srv.endpoint(),
        "-o",
        "-",
        "-q",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stderr, "");
    assert_eq!(sha(&stdout), sha(&data));
}

/// The summary's seconds are the command's: a HEAD that takes a second
/// (a slow gateway in front of the real one) is in them.
#[test]
fn the_summary_time_is_wall_time() {
    let (srv, _spec, _) = server_with("o", 100_000, 96);
    // The slow gateway redirects everything to the real one; HEADs after 1 s.
    static REAL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    REAL.set(srv.endpoint()).unwrap();
    let slow = TinyServer::start(|method, path, _| {
        let real = REAL.get().unwrap();
        let resp = format!(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: {real}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let delay = if method == "HEAD" { 1000 } else { 0 };
        (resp, std::time::Duration::from_millis(delay))
    });
    let (code, stderr, _) = run(&[
        "get",
        "ais://b/o",
        "--endpoint",
        &slow.url(""),
        "-o",
        "/dev/null",
        "-w",
        "1",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let secs: f64 = stderr
        .split(" in ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no time in the summary: {stderr}"));
    assert!(secs >= 1.0, "the 1 s HEAD is not in {secs} s: {stderr}");
}

#[test]
fn logs_have_no_ansi_colour_when_stderr_is_not_a_terminal() {
    let (srv, _spec, _) = server_with("o", 100_000, 97);
    let (code, stderr, _) = run(&[
        "get",
        "ais://b/o",
        "--endpoint",
        &srv.endpoint(),
        "-o",
        "/dev/null",
        "-v",
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("DEBUG"), "-v logs: {stderr}");
    assert!(!stderr.contains('\x1b'), "ANSI escapes in {stderr:?}");
}

#[test]
fn an_error_is_printed_once() {
    use shmfetch::testing::server::{Fault, FaultKind};
    let (srv, _spec, _) = server_with("o", 100_000, 98);
    srv.inject(Fault::on("o", FaultKind::Status(500), 100));
    for mode in ["read-all", "stream"] {
        let (code, stderr, _) = run(&[
            "get",
            "ais://b/o",
            "--endpoint",
            &srv.endpoint(),
            "-o",
            "/dev/null",
            "--attempts",
            "1",
            "--mode",
            mode,
        ]);
        assert_eq!(code, Some(1), "{stderr}");
        assert_eq!(stderr.matches("HTTP 500").count(), 1, "{mode}: {stderr}");
        assert!(!stderr.contains("ERROR"), "{mode}: {stderr}");
    }
}

#[test]
fn connection_refused_names_host_and_port() {
    let (code, stderr, _) = run(&[
        "get",
        "ais://b/o",
        "--endpoint",
        "http://127.0.0.1:1",
        "-o",
        "/dev/null",
        "--retry-timeout",
        "0.3",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    // It said that it retried before giving up.
    assert!(stderr.contains("retrying after a backoff"), "{stderr}");
}

#[test]
fn tls_to_a_plain_http_port_says_so() {
    // A plain HTTP server answers a TLS hello with a 400 (nginx does).
    let plain = TinyServer::start(|_, _, _| {
        (
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
            std::time::Duration::ZERO,
        )
    });
    let url = plain.url("/o").replacen("http://", "https://", 1);
    let (code, stderr, _) = run(&["get", &url, "-o", "/dev/null", "--attempts", "1"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("does not speak TLS") && stderr.contains("http://"),
        "{stderr}"
    );
}

#[test]
fn a_stall_names_read_timeout() {
    use shmfetch::testing::server::{Fault, FaultKind};
    let (srv, _spec, _) = server_with("o", 1000, 100);
    srv.inject(Fault::on(
        "o",
        FaultKind::Stall(std::time::Duration::from_secs(20)),
        100,
    ));
    let (code, stderr, _) = run(&[
        "get",
        "ais://b/o",
        "--endpoint",
        &srv.endpoint(),
        "-o",
        "/dev/null",
        "--read-timeout",
        "0.2",
        "--attempts",
        "1",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--read-timeout"), "{stderr}");
}

#[test]
fn no_token_hint_for_a_plain_http_403_and_no_dangling_colon_after_a_404() {
    let forbidden = TinyServer::start(|_, _, _| {
        (
            "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
            std::time::Duration::ZERO,
        )
    });
    let (code, stderr, _) = run(&["get", &forbidden.url("/x"), "-o", "/dev/null"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("403"), "{stderr}");
    assert!(!stderr.contains("AIS_AUTHN_TOKEN"), "{stderr}");
    let missing = TinyServer::start(|_, _, _| {
        (
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
            std::time::Duration::ZERO,
        )
    });
    let (code, stderr, _) = run(&["get", &missing.url("/x"), "-o", "/dev/null"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(
        !stderr.trim_end().ends_with(':'),
        "dangling colon: {stderr:?}"
    );
}

#[test]
fn the_token_file_is_read_only_for_ais_sources() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let data = content::bytes(101, 10_000);
    std::fs::write(&src, &data).unwrap();
    let o = Command::new(BIN)
        .args(["get", src.to_str().unwrap(), "-o", "-"])
        .env("AIS_AUTHN_TOKEN_FILE", dir.path().join("no-such-token"))
        .env_remove("AIS_AUTHN_TOKEN")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(sha(&o.stdout), sha(&data));
}

#[test]
fn a_url_with_a_literal_space_is_percent_encoded() {
    let (srv, _spec, data) = server_with("a b", 10_000, 102);
    let url = srv.direct_url("b", "a b").replace("%20", " ");
    assert!(url.contains(' '), "{url}");
    let (code, stderr, stdout) = run(&["get", &url, "-o", "-"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(sha(&stdout), sha(&data));
}

#[test]
fn shmfetch_bench_checks_its_arguments_before_generating_its_object() {
    const BENCH: &str = env!("CARGO_BIN_EXE_shmfetch-bench");
    for (args, needle) in [
        (vec!["--workers", "0"], "--workers"),
        (vec!["--runs", "0"], "--runs"),
        (vec!["--modes", "get,bogus"], "bogus"),
        (vec!["--size", "99999TiB"], "memory"),
    ] {
        let o = Command::new(BENCH)
            .args(&args)
            .env_remove("AIS_ENDPOINT")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("starting a local"),
            "{args:?}: checked before the object is generated: {stderr}"
        );
    }
}

/// On a terminal (a pty from `script`), the bar moves while no byte has
/// arrived yet (targets answer after 1.5 s) and shows the writing phase of
/// read-all (the output is a FIFO the test reads only after a second).
#[test]
fn the_progress_bar_ticks_from_the_start_and_shows_the_writing_phase() {
    use std::io::Read;
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIPPED: script(1) (util-linux) is needed for a terminal");
        return;
    }
    let srv = TestServer::start(ServerConfig {
        first_byte_latency: Some(std::time::Duration::from_millis(1500)),
        ..Default::default()
    })
    .unwrap();
    let data = content::bytes(103, 2 << 20);
    srv.put_bytes("b", "o", data.clone());
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let f2 = fifo.clone();
    let reader = std::thread::spawn(move || {
        let mut f = std::fs::File::open(&f2).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2500));
        let mut v = Vec::new();
        f.read_to_end(&mut v).unwrap();
        v
    });
    let cmd = format!(
        "{BIN} get ais://b/o -o {} -w 2 --chunk-size 1MiB --endpoint {}",
        fifo.display(),
        srv.endpoint()
    );
    let o = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env("COLUMNS", "120")
        .output()
        .unwrap();
    let tty = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{tty}");
    assert_eq!(sha(&reader.join().unwrap()), sha(&data));
    let waiting = tty.matches("0 B/").count();
    assert!(
        waiting >= 5,
        "the bar drew {waiting} frame(s) while waiting for the first byte: {tty:?}"
    );
    assert!(tty.contains("fetching"), "{tty:?}");
    assert!(tty.contains("writing"), "no writing phase: {tty:?}");
}

/// A retry's warning is printed on its own line around the progress bar:
/// the bar is cleared, the line written, the bar drawn again — not the
/// warning glued to the end of a bar frame and drawn over by the next tick.
#[test]
fn retry_warnings_are_printed_around_the_progress_bar_not_over_it() {
    use shmfetch::testing::server::{Fault, FaultKind};
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("SKIPPED: script(1) (util-linux) is needed for a terminal");
        return;
    }
    let srv = TestServer::start(ServerConfig::default()).unwrap();
    let data = content::bytes(104, 2 << 20);
    srv.put_bytes("b", "o", data.clone());
    // The second range takes the server down for a second: the ranges in
    // flight back off and warn while the bar is on the screen.
    srv.inject(Fault::on("o", FaultKind::Outage(std::time::Duration::from_secs(1)), 1).skip(1));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let cmd = format!(
        "{BIN} get ais://b/o -o {} -w 2 --chunk-size 256KiB --endpoint {}",
        out.display(),
        srv.endpoint()
    );
    let o = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env("COLUMNS", "120")
        .output()
        .unwrap();
    let tty = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{tty}");
    assert_eq!(sha(&std::fs::read(&out).unwrap()), sha(&data));
    let warnings: Vec<&str> = tty
        .split('\n')
        .filter(|l| l.contains("retrying after a backoff"))
        .collect();
    assert!(!warnings.is_empty(), "no retry warning: {tty:?}");
    for w in warnings {
        // What stays visible of the line: the text after its last carriage
        // return (each frame and each clear starts with one; the terminal
        // ends lines with \r\n).
        let w = w.trim_end_matches('\r');
        let visible = w.rsplit('\r').next().unwrap_or(w);
        assert!(
            !visible.contains("fetching"),
            "a warning shares its line with the bar: {w:?}"
        );
    }
}
