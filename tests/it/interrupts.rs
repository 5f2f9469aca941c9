//! Issue 10, "Interrupts and leftovers": `shmfetch get` stopped by SIGINT,
//! SIGTERM or SIGHUP leaves no segment, no part file and no worker, and
//! exits 128 + signo; after a SIGKILL, the next `get` into the same
//! directory removes the part file left behind.
//!
//! The downloads come from a paced test server (each response at a few
//! hundred KiB/s), so they are surely in flight when the signal comes.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::*;
use shmfetch::testing::content;
use shmfetch::testing::server::{ServerConfig, TestServer};

const BIN: &str = env!("CARGO_BIN_EXE_shmfetch");

/// A server whose responses trickle at 256 KiB/s each, with `ais://b/o` of
/// `size` bytes.
fn paced_server(size: usize, seed: u64) -> (TestServer, Vec<u8>) {
    let srv = TestServer::start(ServerConfig {
        per_request_rate: Some(256 << 10),
        ..Default::default()
    })
    .unwrap();
    let data = content::bytes(seed, size);
    srv.put_bytes("b", "o", data.clone());
    (srv, data)
}

fn spawn_get(endpoint: &str, out: &Path, extra: &[&str]) -> Child {
    Command::new(BIN)
        .args(["get", "ais://b/o", "-o"])
        .arg(out)
        .args(["-w", "2", "--chunk-size", "1MiB"])
        .args(extra)
        .env("AIS_ENDPOINT", endpoint)
        .env_remove("AIS_AUTHN_TOKEN")
        .env_remove("AIS_AUTHN_TOKEN_FILE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Names in /dev/shm that belong to `pid`: segments and hidden temporaries.
fn shm_names_of(pid: i32) -> Vec<String> {
    let (a, b) = (format!("shmfetch-{pid}-"), format!(".shmfetch-new-{pid}-"));
    std::fs::read_dir(SHM)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&a) || n.starts_with(&b))
        .collect()
}

fn workers_of(parent: i32) -> Vec<i32> {
    worker_processes()
        .into_iter()
        .filter(|&(_, ppid)| ppid == parent)
        .map(|(pid, _)| pid)
        .collect()
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

fn part_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".shmfetch-part-"))
        .collect()
}

/// Waits (a hang guard, not a timing) until `cond` holds.
fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for `child` to exit (hang guard: 20 s, then it is killed).
fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("shmfetch did not exit after the signal");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a download, waits until its segment, part file and workers
/// exist, sends `sig`, and checks the exit status and that nothing is left.
fn signal_mid_download(sig: Signal, code: i32, mode: &str) {
    let (srv, _) = paced_server(8 << 20, 81);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("big.bin");
    let mut child = spawn_get(&srv.endpoint(), &out, &["--mode", mode]);
    let pid = child.id() as i32;
    let mut workers = Vec::new();
    wait_for("the download to start", 15, || {
        workers = workers_of(pid);
        workers.len() == 2 && !shm_names_of(pid).is_empty() && !part_files(dir.path()).is_empty()
    });
    kill(Pid::from_raw(pid), sig).unwrap();
    let st = wait_exit(&mut child);
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert_eq!(st.code(), Some(code), "{sig} → exit {code}: {stderr}");
    assert!(
        !stderr.contains("error"),
        "an interrupt is not an error: {stderr}"
    );
    assert_eq!(shm_names_of(pid), Vec::<String>::new(), "segments left");
    assert_eq!(
        part_files(dir.path()),
        Vec::<String>::new(),
        "part file left"
    );
    assert!(!out.exists(), "no output from an interrupted download");
    wait_for("the workers to die with their coordinator", 10, || {
        !workers.iter().any(|&w| running(w))
    });
}

#[test]
fn sigint_mid_download_removes_segment_and_part_file() {
    signal_mid_download(Signal::SIGINT, 130, "read-all");
}

#[test]
fn sigterm_mid_download_removes_segment_and_part_file() {
    signal_mid_download(Signal::SIGTERM, 143, "stream");
}

#[test]
fn sighup_mid_download_removes_segment_and_part_file() {
    signal_mid_download(Signal::SIGHUP, 129, "read-all");
}

/// A signal before any segment or part file exists (the HEAD request hangs
/// on a server that accepts but never answers): exit 130, nothing left.
#[test]
fn sigint_before_the_segment_exists_exits_130() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o");
    let mut child = spawn_get(&endpoint, &out, &[]);
    let pid = child.id() as i32;
    // The signal thread exists (and the signals are blocked) from the
    // first line of main; the HEAD waits 30 s for an answer.
    wait_for("the signal thread", 10, || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks.flatten().any(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "shmfetch-signal")
                })
            })
            .unwrap_or(false)
    });
    std::thread::sleep(Duration::from_millis(300));
    kill(Pid::from_raw(pid), Signal::SIGINT).unwrap();
    let st = wait_exit(&mut child);
    assert_eq!(st.code(), Some(130));
    assert_eq!(shm_names_of(pid), Vec::<String>::new());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn stale_part_files_of_dead_pids_are_removed_by_the_next_get() {
    let (srv, data) = paced_server(8 << 20, 82);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("big.bin");
    let mut child = spawn_get(&srv.endpoint(), &out, &[]);
    let pid = child.id() as i32;
    wait_for("the part file", 15, || !part_files(dir.path()).is_empty());
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    wait_exit(&mut child);
    let stale = part_files(dir.path());
    assert_eq!(stale, vec![format!(".big.bin.shmfetch-part-{pid}")]);
    // A part file of a live process (this test) is not stale.
    let live = dir
        .path()
        .join(format!(".other.shmfetch-part-{}", std::process::id()));
    std::fs::write(&live, b"being written").unwrap();
    // The next get into the same directory, of a small object.
    let small = content::bytes(83, 100_000);
    srv.put_bytes("b", "small", small.clone());
    let o = Command::new(BIN)
        .args(["get", "ais://b/small", "-o"])
        .arg(dir.path().join("small"))
        .env("AIS_ENDPOINT", srv.endpoint())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        sha(&std::fs::read(dir.path().join("small")).unwrap()),
        sha(&small)
    );
    assert_eq!(
        part_files(dir.path()),
        vec![format!(".other.shmfetch-part-{}", std::process::id())],
        "the dead get's part file is gone, the live one's is kept"
    );
    drop(data);
}

/// Two `get`s into one directory from two PID namespaces can have the same
/// pid, hence the same part-file name. The one that does not hold the
/// part file's lock must neither truncate nor remove it (found in review:
/// it truncated the file before trying the lock, and removed it when the
/// lock failed).
#[test]
fn a_part_file_locked_by_another_get_is_neither_truncated_nor_removed() {
    use nix::fcntl::{Flock, FlockArg};
    let srv = TestServer::start(ServerConfig::default()).unwrap();
    srv.put_bytes("b", "o", content::bytes(5, 300_000));
    let dir = tempfile::tempdir().unwrap();
    // `unshare --pid --fork` runs shmfetch as pid 1 of a new namespace.
    let part = dir.path().join(".o.shmfetch-part-1");
    std::fs::write(&part, b"another get's bytes").unwrap();
    let held = Flock::lock(
        std::fs::OpenOptions::new().write(true).open(&part).unwrap(),
        FlockArg::LockExclusiveNonblock,
    )
    .unwrap();
    let o = Command::new("unshare")
        .args(["--pid", "--fork", BIN, "get", "ais://b/o", "-o"])
        .arg(dir.path().join("o"))
        .args(["--endpoint", &srv.endpoint()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("another shmfetch"), "{stderr}");
    assert_eq!(std::fs::read(&part).unwrap(), b"another get's bytes");
    assert!(!dir.path().join("o").exists());
    drop(held);
}

/// `dcp export` writes its output through a part file too; Ctrl-C must
/// remove it (found in review: the export's part file was not known to the
/// signal handler and stayed behind).
#[test]
fn sigint_during_dcp_export_removes_its_part_file() {
    let srv = TestServer::start(ServerConfig {
        first_byte_latency: Some(Duration::from_millis(700)),
        ..Default::default()
    })
    .unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dcp-small");
    srv.put_files("ckpt", "dcp-small/", &fixture).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model.safetensors");
    let mut child = Command::new(BIN)
        .args(["dcp", "export", "ais://ckpt/dcp-small/", "-o"])
        .arg(&out)
        .args(["--endpoint", &srv.endpoint(), "-w", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let part = dir
        .path()
        .join(format!(".model.safetensors.shmfetch-part-{pid}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !part.exists() {
        assert!(
            Instant::now() < deadline,
            "the export never created {part:?}"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the export ended early"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    kill(Pid::from_raw(pid), Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(!part.exists(), "the part file was left behind");
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// Found while benchmarking (issue 14): the main job, `shmfetch-bench`,
/// had no signal handling, so Ctrl-C or SIGTERM in the middle of a run left
/// its `read_all` segments and rings in /dev/shm until the next `gc`.
#[test]
fn the_bench_interrupted_mid_run_leaves_no_segment_and_no_worker() {
    for (sig, code) in [(Signal::SIGINT, 130), (Signal::SIGTERM, 143)] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shmfetch-bench"))
            .args(["--size", "32MiB", "--workers", "2", "--runs", "50"])
            .args(["--modes", "read-all,iter", "--server-rate", "4MiB"])
            .env_remove("AIS_ENDPOINT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let mut workers = Vec::new();
        wait_for("the bench's downloads to start", 30, || {
            workers = workers_of(pid);
            workers.len() >= 2 && !shm_names_of(pid).is_empty()
        });
        kill(Pid::from_raw(pid), sig).unwrap();
        let st = wait_exit(&mut child);
        let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
        assert_eq!(st.code(), Some(code), "{sig}: {stderr}");
        assert_eq!(
            shm_names_of(pid),
            Vec::<String>::new(),
            "{sig}: segments left"
        );
        wait_for("the workers to die with their coordinator", 10, || {
            !workers.iter().any(|&w| running(w))
        });
    }
}
