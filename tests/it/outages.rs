//! Issue 10, "Outages and misbehaving servers": a server that restarts,
//! answers a range wrongly, or refuses absurd plans. Every download is
//! checked by sha256 against the source, and no segment or worker is left.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::cli::assert_no_orphaned_workers;
use crate::common::*;
use crate::faults::ShmDir;
use shmfetch::source::retry::RetryConfig;
use shmfetch::testing::server::{Fault, FaultKind};
use shmfetch::{Error, ParallelReader, WorkerPool};

const BIN: &str = env!("CARGO_BIN_EXE_shmfetch");

const SIZE: usize = 4 << 20;
const CHUNK: u64 = 256 << 10;

/// With the default retry policy (no count limit, two minutes, backoff
/// capped at 10 s), a server that goes down for 30 s in the middle of a
/// download — every connection refused, open ones dropped — costs a pause,
/// not the download (five quick attempts used to give up within a second,
/// losing everything fetched).
#[test]
fn a_server_down_for_30_seconds_is_survived_with_default_settings() {
    let (srv, spec, data) = server_with("o", SIZE, 1001);
    // The fifth range GET takes the whole server down (gateway and
    // targets) for 30 s: four ranges are in, the rest wait.
    srv.inject(Fault::on("o", FaultKind::Outage(Duration::from_secs(30)), 1).skip(4));
    let dir = ShmDir::new();
    let pool = WorkerPool::new(3).unwrap();
    let reader = ParallelReader::builder(spec)
        .pool(pool.clone())
        .chunk_size(CHUNK)
        .shm_dir(&dir.0)
        .build()
        .unwrap();
    let t0 = Instant::now();
    let buf = reader.read_all().expect("the outage is survived");
    assert_eq!(sha(&buf), sha(&data));
    assert_eq!(srv.outages(), 1, "the outage happened");
    assert!(
        t0.elapsed() >= Duration::from_secs(30),
        "the download waited the outage out"
    );
    assert!(pool.stats().retries > 0, "{:?}", pool.stats());
    drop(buf);
    drop(reader);
    dir.assert_empty();
    drop_pool_and_check(pool);
}

/// The HEAD that reads an object's size is retried like a range: a server
/// that is restarting when a download starts (found by the network-fault
/// soak: "Connection refused" at the HEAD failed 21 of 30 downloads while
/// every range survived the same restarts) costs a pause, not the download.
#[test]
fn the_head_is_retried_through_an_outage() {
    let (srv, spec, data) = server_with("o", SIZE, 1003);
    srv.outage(Duration::from_secs(2));
    let dir = ShmDir::new();
    let pool = WorkerPool::new(2).unwrap();
    let t0 = Instant::now();
    let reader = ParallelReader::builder(spec)
        .pool(pool.clone())
        .chunk_size(CHUNK)
        .retry(RetryConfig {
            max_delay: Duration::from_millis(300),
            max_elapsed: Duration::from_secs(30),
            ..RetryConfig::default()
        })
        .shm_dir(&dir.0)
        .build()
        .expect("the HEAD outlasts the outage");
    assert!(t0.elapsed() >= Duration::from_millis(1500), "it waited");
    assert_eq!(sha(&reader.read_all().unwrap()), sha(&data));
    // Permanent answers are not retried: a missing object fails at once.
    let t0 = Instant::now();
    let e = ParallelReader::builder(ais_spec(&srv, "ais://b/missing"))
        .pool(pool.clone())
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::ObjectNotFound { .. }), "{e:?}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    // Past the budget, the cause is the error.
    srv.outage(Duration::from_secs(5));
    let e = ParallelReader::builder(ais_spec(&srv, "ais://b/o"))
        .pool(pool.clone())
        .retry(RetryConfig {
            max_delay: Duration::from_millis(100),
            max_elapsed: Duration::from_millis(500),
            ..RetryConfig::default()
        })
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("refused"), "{e}");
    drop(reader);
    dir.assert_empty();
    drop_pool_and_check(pool);
}

/// The same restart (shorter, with a tuned policy) in the middle of a
/// stream through the ring.
#[test]
fn a_server_restart_is_survived_by_create_iter() {
    let (srv, spec, data) = server_with("o", SIZE, 1002);
    srv.inject(Fault::on("o", FaultKind::Outage(Duration::from_secs(2)), 1).skip(3));
    let dir = ShmDir::new();
    let pool = WorkerPool::new(3).unwrap();
    let reader = ParallelReader::builder(spec)
        .pool(pool.clone())
        .chunk_size(CHUNK)
        .retry(RetryConfig {
            max_delay: Duration::from_millis(300),
            max_elapsed: Duration::from_secs(30),
            ..RetryConfig::default()
        })
        .shm_dir(&dir.0)
        .build()
        .unwrap();
    let got = iter_bytes(&reader, 0).expect("the outage is survived");
    assert_eq!(sha(&got), sha(&data));
    assert_eq!(srv.outages(), 1);
    drop(reader);
    dir.assert_empty();
    drop_pool_and_check(pool);
}

/// A server down for longer than the retry budget fails the download with
/// the cause (a refused connection), the range and the attempts; no hang.
#[test]
fn a_server_down_longer_than_the_retry_timeout_fails_with_the_cause() {
    let (srv, spec, _data) = server_with("o", SIZE, 1003);
    let dir = ShmDir::new();
    let pool = WorkerPool::new(2).unwrap();
    let reader = ParallelReader::builder(spec)
        .pool(pool.clone())
        .chunk_size(CHUNK)
        .retry(RetryConfig {
            max_elapsed: Duration::from_secs(1),
            ..RetryConfig::default()
        })
        .shm_dir(&dir.0)
        .build()
        .unwrap();
    srv.outage(Duration::from_secs(600));
    let e = reader.read_all().expect_err("the server is down");
    match &e {
        Error::RangeFailed { attempts, .. } => assert!(*attempts > 1, "{e}"),
        other => panic!("not a range failure: {other:?}"),
    }
    assert!(
        matches!(e.root(), Error::Transport { message, .. } if message.to_lowercase().contains("refused")),
        "{e}"
    );
    drop(reader);
    dir.assert_empty();
    drop_pool_and_check(pool);
    drop(srv); // stops while down
}

/// `shmfetch get` says that it is retrying: one warning per backoff on
/// stderr (from the coordinator: workers never log), naming the object,
/// the range, the attempt, the delay and the cause; the bytes are right.
#[test]
fn get_warns_on_stderr_each_time_a_range_is_retried() {
    let (srv, _spec, data) = server_with("o", SIZE, 1004);
    srv.inject(Fault::on("o", FaultKind::Outage(Duration::from_secs(2)), 1).skip(2));
    let o = Command::new(BIN)
        .args([
            "get",
            "ais://b/o",
            "-o",
            "-",
            "-w",
            "2",
            "--chunk-size",
            "256KiB",
        ])
        .env("AIS_ENDPOINT", srv.endpoint())
        .env_remove("RUST_LOG")
        .env_remove("AIS_AUTHN_TOKEN")
        .env_remove("AIS_AUTHN_TOKEN_FILE")
        .output()
        .unwrap();
    let stderr = strip_ansi(&String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{stderr}");
    assert_eq!(sha(&o.stdout), sha(&data));
    let warns: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("retrying"))
        .collect();
    assert!(!warns.is_empty(), "no retry warning: {stderr}");
    for w in &warns {
        assert!(
            w.contains("ais://b/o")
                && w.contains("range=bytes ")
                && w.contains("attempt=")
                && w.contains("delay_ms=")
                && w.contains("cause="),
            "{w}"
        );
    }
    assert_no_orphaned_workers();
}

/// The text without terminal colour codes (`ESC [ … m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `--chunk-size 1` used to plan a `Vec` of every range (36 GB asked for a
/// large object: the process aborted, leaving a segment, a part file and
/// workers). Now it is refused up front with a message that says what to
/// use, exit status 2 (a usage error, like every bad flag value), nothing
/// left behind.
#[test]
fn chunk_size_1_is_refused_with_a_message_not_an_abort() {
    let (srv, _spec, _data) = server_with("o", 1 << 20, 1005);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.bin");
    let child = Command::new(BIN)
        .args([
            "get",
            "ais://b/o",
            "-o",
            out.to_str().unwrap(),
            "--chunk-size",
            "1",
        ])
        .env("AIS_ENDPOINT", srv.endpoint())
        .env_remove("AIS_AUTHN_TOKEN")
        .env_remove("AIS_AUTHN_TOKEN_FILE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("chunk size 1 bytes is below the minimum") && stderr.contains("64KiB"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let left: Vec<_> = std::fs::read_dir(SHM)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&format!("shmfetch-{pid}-")))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_no_orphaned_workers();
}

/// The library refuses a chunk size that would split the object into more
/// than `MAX_RANGES` ranges (even where tests allow tiny chunks), naming
/// the smallest chunk size that fits; without an explicit chunk size the
/// chunk grows instead.
#[test]
fn too_many_ranges_are_refused_suggesting_a_larger_chunk_size() {
    let size = (shmfetch::reader::MAX_RANGES + 1) as usize;
    let (_srv, spec, _data) = server_with("o", size, 1006);
    let pool = WorkerPool::new(1).unwrap();
    let e = ParallelReader::builder(spec.clone())
        .pool(pool.clone())
        .allow_small_chunks()
        .chunk_size(1)
        .build()
        .expect_err("too many ranges");
    let msg = e.to_string();
    assert!(
        matches!(e, Error::InvalidConfig(_))
            && msg.contains("ranges")
            && msg.contains("use a chunk size of at least 2 bytes"),
        "{msg}"
    );
    // Below the minimum without the test knob: refused with the minimum.
    let e = ParallelReader::builder(spec)
        .pool(pool.clone())
        .chunk_size(4096)
        .build()
        .expect_err("below the minimum");
    assert!(e.to_string().contains("minimum of 65536 bytes"), "{e}");
    drop_pool_and_check(pool);
}

/// A worker sleeping in backoff for a download its consumer dropped stops
/// at its next wake-up instead of retrying for the whole budget (two
/// minutes by default), so the pool's other downloads are not held up.
#[test]
fn a_dropped_download_does_not_keep_its_worker_retrying() {
    let (down, spec, _) = server_with("o", SIZE, 1007);
    let (_up, spec2, data2) = server_with("p", SIZE, 1008);
    let pool = WorkerPool::new(1).unwrap();
    let dir = ShmDir::new();
    let reader = ParallelReader::builder(spec)
        .pool(pool.clone())
        .chunk_size(CHUNK)
        .retry(RetryConfig {
            max_delay: Duration::from_millis(500),
            ..RetryConfig::default() // 2 minutes of retries
        })
        .shm_dir(&dir.0)
        .build()
        .unwrap();
    down.outage(Duration::from_secs(600));
    let it = reader.create_iter(0).unwrap();
    // Let the one worker fail and go into backoff, then drop the download.
    let t0 = Instant::now();
    while pool.stats().ranges == 0 && t0.elapsed() < Duration::from_millis(800) {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(it);
    drop(reader);
    let other = ParallelReader::builder(spec2)
        .pool(pool.clone())
        .chunk_size(CHUNK)
        .shm_dir(&dir.0)
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        let _ = tx.send(other.read_all().map(|b| sha(&b)));
    });
    // Hang guard: the worker was busy for up to two more minutes before.
    let got = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the pool's worker was freed from the dropped download");
    assert_eq!(got.unwrap(), sha(&data2));
    t.join().unwrap(); // its reader holds the pool
    dir.assert_empty();
    drop_pool_and_check(pool);
    drop(down);
}
