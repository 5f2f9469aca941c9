//! Issue 4: one test per fault kind, for `read_all` and `create_iter`:
//! transient faults end in the right sha256, permanent ones in the exact
//! error kind; no segment and no process is left either way.
//!
//! Each test uses its own shared-memory directory (a directory on the
//! `/dev/shm` tmpfs), so "no segment left" is checked exactly even while
//! other tests run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::*;
use shmfetch::source::HttpConfig;
use shmfetch::source::retry::RetryConfig;
use shmfetch::testing::server::{Fault, FaultKind, TestServer};
use shmfetch::{Error, ParallelReader, PoolConfig, WorkerPool};

pub const SIZE: usize = 1_000_000;
pub const CHUNK: u64 = 100_000;
/// The faulty chunk is [300000, 400000); faults match its last byte, so a
/// resumed request for the rest of it still matches.
pub const BAD_START: usize = 300_000;
pub const BAD_BYTE: u64 = 399_999;

/// A private directory for segments, removed (and checked empty) on drop.
pub struct ShmDir(pub PathBuf);

impl ShmDir {
    pub fn new() -> ShmDir {
        let p = Path::new(SHM).join(format!(
            "sft-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir(&p).unwrap();
        ShmDir(p)
    }
    pub fn entries(&self) -> Vec<String> {
        std::fs::read_dir(&self.0)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }
    pub fn assert_empty(&self) {
        assert_eq!(
            self.entries(),
            Vec::<String>::new(),
            "segments left in {}",
            self.0.display()
        );
    }
}

impl Drop for ShmDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A pool whose workers time a silent server out after 300 ms.
pub fn quick_pool(workers: usize) -> WorkerPool {
    WorkerPool::with_config(PoolConfig {
        workers,
        http: HttpConfig {
            read_timeout: Duration::from_millis(300),
            ..HttpConfig::default()
        },
        ..PoolConfig::default()
    })
    .unwrap()
}

pub fn quick_retry() -> RetryConfig {
    RetryConfig {
        attempts: 4,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_elapsed: Duration::from_secs(20),
    }
}

struct Case {
    srv: TestServer,
    reader: ParallelReader,
    data: Vec<u8>,
    dir: ShmDir,
}

fn case(seed: u64, pool: &WorkerPool) -> Case {
    let (srv, spec, data) = server_with("o", SIZE, seed);
    let dir = ShmDir::new();
    let reader = ParallelReader::builder(spec)
        .pool(pool.clone())
        .chunk_size(CHUNK)
        .retry(quick_retry())
        .shm_dir(&dir.0)
        .build()
        .unwrap();
    Case {
        srv,
        reader,
        data,
        dir,
    }
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    ReadAll,
    Iter,
}

/// Runs one download; returns the bytes, or the error and the bytes the
/// iterator delivered before it.
fn download(r: &ParallelReader, mode: Mode) -> (Vec<u8>, Option<Error>) {
    match mode {
        Mode::ReadAll => match r.read_all() {
            Ok(b) => (b.to_vec(), None),
            Err(e) => (vec![], Some(e)),
        },
        Mode::Iter => {
            let mut got = Vec::new();
            let it = match r.create_iter(0) {
                Ok(it) => it,
                Err(e) => return (got, Some(e)),
            };
            for c in it {
                match c {
                    Ok(c) => got.extend_from_slice(&c),
                    Err(e) => return (got, Some(e)),
                }
            }
            (got, None)
        }
    }
}

fn transient(kind: FaultKind) {
    for mode in [Mode::ReadAll, Mode::Iter] {
        let pool = quick_pool(3);
        let c = case(100, &pool);
        c.srv
            .inject(Fault::on("o", kind.clone(), 1).touching(BAD_BYTE));
        let (got, err) = download(&c.reader, mode);
        assert!(err.is_none(), "{kind:?} {mode:?}: {err:?}");
        assert_eq!(sha(&got), sha(&c.data), "{kind:?} {mode:?}");
        assert_eq!(
            c.srv.faults_injected(),
            1,
            "{kind:?} {mode:?}: the fault was served"
        );
        c.dir.assert_empty();
        drop(c);
        drop_pool_and_check(pool);
    }
}

fn permanent(kind: FaultKind, times: u32, attempts: u32, expect: fn(&Error) -> bool) {
    for mode in [Mode::ReadAll, Mode::Iter] {
        let pool = quick_pool(3);
        let c = case(101, &pool);
        c.srv
            .inject(Fault::on("o", kind.clone(), times).touching(BAD_BYTE));
        let (got, err) = download(&c.reader, mode);
        let e = err.unwrap_or_else(|| panic!("{kind:?} {mode:?}: no error"));
        assert!(expect(e.root()), "{kind:?} {mode:?}: got {e:?}");
        match &e {
            Error::RangeFailed {
                object,
                range,
                attempts: a,
                ..
            } => {
                assert_eq!(object, "ais://b/o");
                assert_eq!(range.start, BAD_START as u64);
                assert_eq!(*a, attempts, "{kind:?} {mode:?}: attempts");
            }
            other => panic!("{kind:?} {mode:?}: not wrapped with the range: {other:?}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains("ais://b/o")
                && msg.contains("bytes 300000-399999")
                && msg.contains(&format!("{attempts} attempt")),
            "{msg}"
        );
        if let Mode::Iter = mode {
            assert_eq!(
                got,
                c.data[..BAD_START],
                "{kind:?}: chunks before the bad one are intact"
            );
        }
        // Let the other ranges in flight finish before checking the dir:
        // their segment is unlinked already, whatever they still write.
        std::thread::sleep(Duration::from_millis(50));
        c.dir.assert_empty();
        drop(c);
        drop_pool_and_check(pool);
    }
}

#[test]
fn status_5xx_then_success() {
    transient(FaultKind::Status(500));
    transient(FaultKind::Status(503));
}

#[test]
fn status_429_then_success() {
    transient(FaultKind::Status(429));
}

#[test]
fn reset_mid_body_then_success() {
    transient(FaultKind::ResetAfter(5_000));
}

#[test]
fn short_body_then_success_resumes() {
    let pool = quick_pool(2);
    let c = case(102, &pool);
    c.srv
        .inject(Fault::on("o", FaultKind::ShortBody(12_345), 1).touching(BAD_BYTE));
    assert_eq!(sha(&c.reader.read_all().unwrap()), sha(&c.data));
    let st = pool.stats();
    assert_eq!(st.retries, 1);
    assert_eq!(
        st.resumed_bytes, 12_345,
        "the bytes received were kept, not fetched again"
    );
    let asked: Vec<_> = c
        .srv
        .requests()
        .into_iter()
        .filter(|q| q.role.starts_with("target") && q.range.is_some())
        .filter_map(|q| q.range)
        .collect();
    assert!(
        asked.contains(&"bytes=312345-399999".to_string()),
        "resumed from the last byte: {asked:?}"
    );
    drop(c);
    transient(FaultKind::ShortBody(1));
    drop_pool_and_check(pool);
}

#[test]
fn stall_then_success() {
    let t = Instant::now();
    transient(FaultKind::Stall(Duration::from_secs(3)));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the read timeout cut the stall short: {:?}",
        t.elapsed()
    );
}

#[test]
fn slow_trickle_completes() {
    // 400 kB/s: slower than everything else but always making progress.
    transient(FaultKind::Trickle(400_000));
}

#[test]
fn permanent_5xx_and_429_name_attempts_and_cause() {
    permanent(FaultKind::Status(500), 1000, 4, |e| {
        matches!(e, Error::Http { status: 500, .. })
    });
    permanent(FaultKind::Status(429), 1000, 4, |e| {
        matches!(e, Error::Http { status: 429, .. })
    });
}

#[test]
fn permanent_reset_short_and_stall() {
    permanent(FaultKind::ResetAfter(100), 1000, 4, |e| {
        matches!(e, Error::Transport { .. } | Error::ShortRead { .. })
    });
    permanent(FaultKind::ShortBody(10), 1000, 4, |e| {
        matches!(e, Error::ShortRead { .. })
    });
    permanent(
        FaultKind::Stall(Duration::from_secs(2)),
        1000,
        4,
        |e| matches!(e, Error::Transport { message, .. } if message.contains("imeout") || message.contains("timed out")),
    );
}

#[test]
fn client_errors_are_not_retried() {
    permanent(FaultKind::Status(400), 1, 1, |e| {
        matches!(e, Error::Http { status: 400, .. })
    });
    permanent(FaultKind::Status(403), 1, 1, |e| {
        matches!(e, Error::AccessDenied { status: 403, .. })
    });
    permanent(FaultKind::Status(404), 1, 1, |e| {
        matches!(e, Error::ObjectNotFound { .. })
    });
}

/// A cache, proxy or restarting target can answer a range wrongly once
/// (200 with the whole object, a 206 naming another range): the range is
/// tried again, nothing wrong is written, the bytes come out right.
#[test]
fn a_wrong_range_answer_once_is_retried() {
    transient(FaultKind::IgnoreRange);
    transient(FaultKind::WrongContentRange);
}

/// A server that keeps answering wrongly fails fast: three answers in all
/// (no backoff budget spent on it), then `RangeMismatch` saying the server
/// does not honour `Range`.
#[test]
fn a_server_that_always_ignores_range_fails_fast() {
    permanent(FaultKind::IgnoreRange, u32::MAX, 3, |e| {
        matches!(e, Error::RangeMismatch { detail, .. }
            if detail.contains("ignored Range") && detail.contains("does not honour Range"))
    });
    permanent(FaultKind::WrongContentRange, u32::MAX, 3, |e| {
        matches!(e, Error::RangeMismatch { detail, .. }
            if detail.contains("Content-Range") && detail.contains("does not honour Range"))
    });
}

#[test]
fn version_change_stops_the_download() {
    permanent(
        FaultKind::ChangeVersion,
        1,
        1,
        |e| matches!(e, Error::ObjectChanged { detail, .. } if detail.contains("version")),
    );
}

#[test]
fn object_replaced_after_head_is_never_stitched() {
    for mode in [Mode::ReadAll, Mode::Iter] {
        let pool = quick_pool(2);
        let c = case(103, &pool);
        // Same size, other bytes, new version: a careless reader would
        // return a mix of both.
        c.srv
            .put_bytes("b", "o", shmfetch::testing::content::bytes(999, SIZE));
        let (_got, err) = download(&c.reader, mode);
        let e = err.expect("replaced object is an error");
        assert!(
            matches!(e.root(), Error::ObjectChanged { .. }),
            "{mode:?}: {e:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
        c.dir.assert_empty();
        drop(c);
        drop_pool_and_check(pool);
    }
}

#[test]
fn resumed_range_from_another_version_is_refused() {
    // Attempt 1 is cut short; by attempt 2 the object has changed: the
    // resumed tail must not be glued onto the old head.
    let pool = quick_pool(2);
    let c = case(104, &pool);
    c.srv
        .inject(Fault::on("o", FaultKind::ShortBody(50_000), 1).touching(BAD_BYTE));
    c.srv
        .inject(Fault::on("o", FaultKind::ChangeVersion, 1).touching(BAD_BYTE));
    let e = c.reader.read_all().unwrap_err();
    assert!(matches!(e.root(), Error::ObjectChanged { .. }), "{e:?}");
    assert!(matches!(e, Error::RangeFailed { attempts: 2, .. }), "{e:?}");
    drop(c);
    drop_pool_and_check(pool);
}

#[test]
fn worker_killed_mid_range_in_iter() {
    let pool = quick_pool(3);
    let c = case(105, &pool);
    // The bad chunk trickles long enough to kill its worker mid-body.
    c.srv
        .inject(Fault::on("o", FaultKind::Trickle(50_000), 1).touching(BAD_BYTE));
    let pids = pool.worker_pids();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(400));
        for p in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    });
    let (got, err) = download(&c.reader, Mode::Iter);
    killer.join().unwrap();
    assert!(err.is_none(), "{err:?}");
    assert_eq!(sha(&got), sha(&c.data));
    assert!(pool.stats().worker_deaths >= 1);
    c.dir.assert_empty();
    drop(c);
    drop_pool_and_check(pool);
}

#[test]
fn too_many_worker_deaths_fail_the_download() {
    let pool = WorkerPool::with_config(PoolConfig {
        workers: 2,
        max_deaths_per_download: 3,
        ..PoolConfig::default()
    })
    .unwrap();
    let c = case(106, &pool);
    c.srv.inject(Fault::on(
        "o",
        FaultKind::Stall(Duration::from_secs(30)),
        1000,
    ));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (p2, s2) = (pool.clone(), stop.clone());
    let killer = std::thread::spawn(move || {
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(150));
            for p in p2.worker_pids() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    });
    let t = Instant::now();
    let e = c.reader.read_all().unwrap_err();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    killer.join().unwrap();
    assert!(matches!(e, Error::WorkerCrashed { .. }), "{e:?}");
    assert!(e.to_string().contains("in this download"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10));
    c.dir.assert_empty();
    drop(c);
    drop_pool_and_check(pool);
}
