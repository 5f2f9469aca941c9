//! Issue 4: coordinator death, a full /dev/shm, names that need escaping,
//! and the token in logs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use shmfetch::testing::content;
use shmfetch::testing::server::{Fault, FaultKind, ServerConfig, TestServer};
use shmfetch::{Error, ParallelReader, WorkerPool};

const BIN: &str = env!("CARGO_BIN_EXE_shmfetch");

/// Alive and not a zombie.
fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

fn workers_of(parent: i32) -> Vec<i32> {
    worker_processes()
        .into_iter()
        .filter(|&(_, ppid)| ppid == parent)
        .map(|(pid, _)| pid)
        .collect()
}

fn segments_of(pid: i32) -> Vec<String> {
    let p = format!("shmfetch-{pid}-");
    std::fs::read_dir(SHM)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&p))
        .collect()
}

#[test]
fn workers_die_with_the_coordinator_and_gc_removes_its_segment() {
    let (srv, _spec, _) = server_with("o", 5_000_000, 71);
    srv.inject(Fault::on(
        "o",
        FaultKind::Stall(Duration::from_secs(20)),
        1000,
    ));
    let mut child = Command::new(BIN)
        .args([
            "get",
            "ais://b/o",
            "-o",
            "/dev/null",
            "-w",
            "3",
            "--chunk-size",
            "1M",
        ])
        .env("AIS_ENDPOINT", srv.endpoint())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let cpid = child.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(10);
    let (workers, segs) = loop {
        let (w, s) = (workers_of(cpid), segments_of(cpid));
        if w.len() == 3 && !s.is_empty() {
            break (w, s);
        }
        assert!(
            Instant::now() < deadline,
            "the download never started: workers {w:?} segments {s:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // The coordinator dies without any chance to clean up.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cpid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while workers.iter().any(|p| running(*p)) {
        assert!(
            Instant::now() < deadline,
            "workers outlived their coordinator: {workers:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Its segment is still there, unlocked now that its owner is dead:
    // `shmfetch gc` removes it (other tests' gcs may have been first).
    let still: Vec<_> = segs.iter().filter(|s| segment_exists(s)).cloned().collect();
    let o = Command::new(BIN).arg("gc").output().unwrap();
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    for s in &segs {
        assert!(!segment_exists(s), "{s} left after gc");
    }
    for s in &still {
        assert!(out.contains(s.as_str()), "gc reports {s}: {out}");
    }
}

#[test]
fn a_new_pool_removes_segments_of_dead_owners() {
    // A file no process holds the lock of, as a crashed owner leaves it
    // (the pid in its name, a child we started and reaped, is informational).
    let mut c = Command::new("true").spawn().unwrap();
    let dead = c.id();
    c.wait().unwrap();
    let name = format!("shmfetch-{dead}-00000000deadbeef");
    std::fs::write(Path::new(SHM).join(&name), b"left by a crash").unwrap();
    let mine = shmfetch::testing::OwnedSegment::create(Path::new(SHM), 4).unwrap();
    let pool = WorkerPool::new(1).unwrap();
    assert!(!segment_exists(&name), "orphan removed at pool start");
    assert!(
        mine.dir().join(mine.name()).exists(),
        "a live owner's segment is kept"
    );
    drop(mine);
    drop_pool_and_check(pool);
}

/// A tmpfs of `size` mounted for the test, unmounted on drop.
struct SmallTmpfs {
    path: PathBuf,
    // Removed after the unmount (fields drop after `Drop::drop`).
    _dir: tempfile::TempDir,
}

impl SmallTmpfs {
    fn mount(size: &str) -> SmallTmpfs {
        let d = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(d.path())
            .status();
        assert!(
            matches!(st, Ok(s) if s.success()),
            "mounting a {size} tmpfs failed: this test needs root (CI and the README's test command run as root)"
        );
        SmallTmpfs {
            path: d.path().to_path_buf(),
            _dir: d,
        }
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

#[test]
fn full_shm_is_a_clear_error_and_create_iter_still_works() {
    let fs = SmallTmpfs::mount("2m");
    let (_srv, spec, data) = server_with("big", 4 << 20, 72);
    let pool = WorkerPool::new(2).unwrap();
    let r = ParallelReader::builder(spec)
        .pool(pool.clone())
        .chunk_size(256 << 10)
        .shm_dir(&fs.path)
        .build()
        .unwrap();
    let e = r.read_all().unwrap_err();
    match &e {
        Error::ShmNoSpace { needed, free, .. } => {
            assert_eq!(*needed, 4 << 20);
            assert!(*free <= 2 << 20, "free {free}");
        }
        other => panic!("expected ShmNoSpace, got {other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("4194304") && msg.contains("create_iter"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read_dir(&fs.path).unwrap().count(),
        0,
        "no partial segment left"
    );
    // Bounded memory fits: 2 slots × 256 KiB.
    assert_eq!(sha(&iter_bytes(&r, 0).unwrap()), sha(&data));
    assert_eq!(std::fs::read_dir(&fs.path).unwrap().count(), 0);
    // And a ring that does not fit either is the same clear error.
    let r2 = ParallelReader::builder(ais_spec(&_srv, "ais://b/big"))
        .pool(pool.clone())
        .chunk_size(2 << 20)
        .shm_dir(&fs.path)
        .build()
        .unwrap();
    assert!(matches!(
        r2.create_iter(0).unwrap_err(),
        Error::ShmNoSpace { .. }
    ));
    drop((r, r2));
    drop_pool_and_check(pool);
}

#[test]
fn object_names_are_escaped() {
    let srv = TestServer::start(ServerConfig::default()).unwrap();
    let names = [
        "dir/sub/file.bin",
        "with space.bin",
        "per%cent.bin",
        "q?mark.bin",
        "hash#tag.bin",
        "plus+sign.bin",
        "ünïcødé/日本.bin",
    ];
    let pool = WorkerPool::new(2).unwrap();
    for (i, name) in names.iter().enumerate() {
        let data = content::bytes(80 + i as u64, 150_000);
        srv.put_bytes("b", name, data.clone());
        let r = ParallelReader::builder(ais_spec(&srv, &format!("ais://b/{name}")))
            .pool(pool.clone())
            .chunk_size(64 << 10)
            .build()
            .unwrap();
        assert_eq!(sha(&r.read_all().unwrap()), sha(&data), "{name}");
        assert!(
            srv.requests()
                .iter()
                .filter(|q| q.role.starts_with("target"))
                .any(|q| q.object == *name),
            "server decoded {name}"
        );
    }
    drop_pool_and_check(pool);
    assert_eq!(
        shmfetch::source::aistore::object_url("http://h", "b", "a b/%?#+ü", "ais"),
        "http://h/v1/objects/b/a%20b/%25%3F%23%2B%C3%BC?provider=ais"
    );
}

#[test]
fn token_never_reaches_logs_or_output() {
    let secret = "tok-ZX81-very-secret";
    let srv = TestServer::start(ServerConfig {
        token: Some(secret.into()),
        ..Default::default()
    })
    .unwrap();
    srv.put_bytes("b", "o", content::bytes(73, 200_000));
    for (token, ok) in [(secret, true), ("tok-wrong-also-secret", false)] {
        let o = Command::new(BIN)
            .args(["get", "ais://b/o", "-o", "-", "-vv"])
            .env("AIS_ENDPOINT", srv.endpoint())
            .env("AIS_AUTHN_TOKEN", token)
            .env("RUST_LOG", "trace")
            .output()
            .unwrap();
        assert_eq!(o.status.success(), ok);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains(token), "token in stderr");
        let dumped = hexdump_bytes(&err);
        assert!(
            !contains(&dumped, token.as_bytes()),
            "token hex-dumped in stderr"
        );
        assert!(!contains(&dumped, secret.as_bytes()));
        if ok {
            assert!(
                err.contains("TRACE") || err.contains("DEBUG"),
                "trace logging was on"
            );
        }
    }
    let e = ParallelReader::builder(ais_spec(&srv, "ais://b/o"))
        .workers(1)
        .build()
        .unwrap_err();
    assert!(!format!("{e:?} {e}").contains(secret));
}

/// The bytes of every hexdump-style group (`4a6f` or `4a`, space-separated)
/// in `s`, in order: what a logger that dumps raw requests would show.
fn hexdump_bytes(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for tok in s.split_whitespace() {
        let tok = tok.trim_matches(|c: char| !c.is_ascii_alphanumeric());
        if (tok.len() == 2 || tok.len() == 4) && tok.chars().all(|c| c.is_ascii_hexdigit()) {
            out.extend(hex::decode(tok).unwrap_or_default());
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_write_that_finds_no_room_is_shm_no_space_not_sigbus() {
    use shmfetch::source::sink::{FileSink, RangeSink};
    use std::os::fd::AsFd;
    let fs = SmallTmpfs::mount("1m");
    let f = std::fs::File::create(fs.path.join("seg")).unwrap();
    f.set_len(2 << 20).unwrap(); // sparse: no room reserved
    let mut scratch = Vec::new();
    let mut sink = FileSink::new(f.as_fd(), 0, 2 << 20, &mut scratch, &fs.path);
    let mut err = None;
    while sink.remaining() > 0 {
        let n = {
            let b = sink.next_buf(sink.remaining());
            b.fill(7);
            b.len()
        };
        if let Err(e) = sink.commit(n) {
            err = Some(e);
            break;
        }
    }
    match err {
        Some(Error::ShmNoSpace { needed, .. }) => assert_eq!(needed, 2 << 20),
        other => panic!("expected ShmNoSpace, got {other:?}"),
    }
}
