//! Issue 9, item 5: orphan cleanup asks each segment's lock, never the pid in
//! its name, so it cannot remove the segment of a live process in another
//! PID namespace (containers sharing `/dev/shm`).
//!
//! The owners are real processes: this test binary run again
//! ([`segment_owner_helper`]), plainly or under `unshare --pid --fork`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::common::*;
use shmfetch::testing::OwnedSegment as Segment;
use shmfetch::{ParallelReader, WorkerPool};

const BIN: &str = env!("CARGO_BIN_EXE_shmfetch");

/// Set for the helper: the directories to create one segment in, `:`-separated.
const OWNER_ENV: &str = "SHMFETCH_TEST_SEGMENT_OWNER_DIRS";

/// What the helper writes into each of its segments.
fn pattern(name: &str) -> Vec<u8> {
    name.bytes().cycle().take(4096).collect()
}

/// Writes `bytes` at the start of the file (through its name: what is
/// checked is what the name refers to), without truncating it.
fn fill(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    f.write_all(bytes).unwrap();
}

/// Not a test: the segment owner the tests below start. With
/// `SHMFETCH_TEST_SEGMENT_OWNER_DIRS` set it creates a segment in each
/// directory, fills it with [`pattern`], prints `@segment DIR NAME` for each
/// and `@pid PID` (its pid as it sees it), then holds them until its stdin
/// reaches EOF. Without the variable it does nothing.
#[test]
#[ignore = "helper process of the gc tests"]
fn segment_owner_helper() {
    let Ok(dirs) = std::env::var(OWNER_ENV) else {
        return;
    };
    let segs: Vec<Segment> = dirs
        .split(':')
        .map(|d| {
            let s = Segment::create(Path::new(d), 4096).expect("helper creates its segment");
            fill(&Path::new(d).join(s.name()), &pattern(s.name()));
            s
        })
        .collect();
    let mut out = std::io::stdout().lock();
    // (A newline first: the harness has printed `test NAME ... ` unended.)
    writeln!(out).unwrap();
    for s in &segs {
        writeln!(out, "@segment {} {}", s.dir().display(), s.name()).unwrap();
    }
    writeln!(out, "@pid {}", std::process::id()).unwrap();
    out.flush().unwrap();
    drop(out);
    std::io::stdin().read_to_end(&mut Vec::new()).ok();
    drop(segs);
}

/// A running [`segment_owner_helper`].
struct Owner {
    child: Child,
    stdin: Option<ChildStdin>,
    /// (directory, name) of each segment.
    segments: Vec<(PathBuf, String)>,
    /// Its pid as it sees it (the one in the segment names).
    pid: i32,
}

impl Owner {
    /// Starts the helper (`wrap` is a command line to run it under) with one
    /// segment in each of `dirs`, and waits until it holds them.
    fn start(wrap: &[&str], env: &[(&str, String)], dirs: &[&Path]) -> Owner {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = match wrap.split_first() {
            None => Command::new(&exe),
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&exe);
                c
            }
        };
        let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        cmd.args([
            "--exact",
            "gc::segment_owner_helper",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(OWNER_ENV, dirs.join(":"))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut segments = Vec::new();
        let pid = loop {
            let line = match lines.next() {
                Some(l) => l.unwrap(),
                None => {
                    let st = child.wait().unwrap();
                    panic!("the segment owner exited ({st}) before holding its segments: {cmd:?}")
                }
            };
            if let Some(s) = line.strip_prefix("@segment ") {
                let (d, n) = s.rsplit_once(' ').unwrap();
                segments.push((PathBuf::from(d), n.to_string()));
            } else if let Some(p) = line.strip_prefix("@pid ") {
                break p.parse().unwrap();
            }
        };
        assert_eq!(segments.len(), dirs.len());
        // The rest of its output (the harness's summary) is not needed.
        std::thread::spawn(move || lines.for_each(drop));
        Owner {
            child,
            stdin,
            segments,
            pid,
        }
    }

    /// SIGKILLs `pid` (the owner, or the init of its PID namespace, whose
    /// death kills everything in it) and waits until the helper is gone:
    /// from then on no process holds its segments' locks.
    fn kill(mut self, pid: i32) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        self.child.wait().unwrap();
        self.stdin = None;
    }

    fn assert_segments_intact(&self) {
        for (d, n) in &self.segments {
            let got = std::fs::read(d.join(n)).unwrap_or_else(|e| {
                panic!("{n} of a live owner was removed from {}: {e}", d.display())
            });
            assert!(got == pattern(n), "{n}: content changed");
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        // EOF on its stdin: a helper still running drops its segments and
        // exits (a test that failed half-way leaves nothing behind).
        if self.stdin.take().is_some() {
            let _ = self.child.wait();
        }
    }
}

/// `shmfetch gc [ARGS]`; returns its stdout, asserting it succeeded.
fn gc(args: &[&str]) -> String {
    let o = Command::new(BIN).arg("gc").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "shmfetch gc {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// A private directory on the same tmpfs as `/dev/shm`, so what happens
/// in it is this test's alone (other tests clean `/dev/shm` concurrently).
fn private_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(".gc-test-")
        .tempdir_in(SHM)
        .unwrap()
}

/// A pid no process has now: a child we started and reaped.
fn dead_pid() -> i32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id() as i32;
    c.wait().unwrap();
    pid
}

/// The pids of the processes whose parent is `ppid`.
fn children_of(ppid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| ppid_of(p) == Some(ppid))
        .collect()
}

/// A reader over a small object that keeps its segments in `dir`.
fn read_all_in(dir: &Path, pool: &WorkerPool) {
    let (_srv, spec, data) = server_with("o", 100_000, 91);
    let r = ParallelReader::builder(spec)
        .pool(pool.clone())
        .allow_small_chunks()
        .chunk_size(32 << 10)
        .shm_dir(dir)
        .build()
        .unwrap();
    assert_eq!(sha(&r.read_all().unwrap()), sha(&data));
}

#[test]
fn a_live_owner_in_another_pid_namespace_keeps_its_segments() {
    // CI runs as root on a machine with util-linux: a missing unshare is a
    // broken test machine, not a reason to skip.
    let ok = Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .status();
    assert!(
        matches!(ok, Ok(s) if s.success()),
        "`unshare --pid --fork true` failed ({ok:?}): this test needs util-linux's unshare and root"
    );
    let (gc_dir, reader_dir) = (private_dir(), private_dir());
    // The owner gets, inside its namespace, a pid that is dead outside it:
    // exactly the case where asking `kill(pid, 0)` removes a live segment.
    let pid = dead_pid();
    let script =
        r#"echo "$LAST_PID" > /proc/sys/kernel/ns_last_pid || exit 97; "$0" "$@"; exit $?"#;
    let owner = Owner::start(
        &[
            "unshare",
            "--pid",
            "--fork",
            "--kill-child",
            "sh",
            "-c",
            script,
        ],
        &[("LAST_PID", (pid - 1).to_string())],
        &[Path::new(SHM), gc_dir.path(), reader_dir.path()],
    );
    assert_eq!(owner.pid, pid, "the owner's pid inside its namespace");
    for (_, n) in &owner.segments {
        assert!(n.starts_with(&format!("shmfetch-{pid}-")), "{n}");
    }
    assert!(!pid_alive(pid), "pid {pid} is free outside the namespace");

    // Neither `shmfetch gc` (default dir, DIR, --dir), nor a new pool, nor a
    // reader's first segment in the directory touches them.
    let gc_path = gc_dir.path().to_str().unwrap();
    let mut out = gc(&[]);
    out += &gc(&[gc_path]);
    out += &gc(&["--dir", gc_path]);
    for (_, n) in &owner.segments {
        assert!(!out.contains(n.as_str()), "gc reported {n}: {out}");
    }
    let pool = WorkerPool::new(1).unwrap();
    read_all_in(reader_dir.path(), &pool);
    owner.assert_segments_intact();

    // Killed (its namespace's init, which takes every process in it along),
    // its segments are orphans: the lock is gone with the process.
    let unshare = owner.child.id() as i32;
    let init = children_of(unshare);
    assert_eq!(init.len(), 1, "unshare's child: {init:?}");
    let segments = owner.segments.clone();
    owner.kill(init[0]);
    for (d, n) in &segments {
        assert!(d.join(n).exists(), "{n} outlives its owner until a gc");
    }
    // (Other tests clean /dev/shm at the same time, so only the private
    // directories' reports are certain to be this gc's.)
    let out = gc(&[gc_path]) + &gc(&["--dir", reader_dir.path().to_str().unwrap()]);
    gc(&[]);
    for (i, (d, n)) in segments.iter().enumerate() {
        assert!(!d.join(n).exists(), "{n} left in {} after gc", d.display());
        if i > 0 {
            assert!(out.contains(n.as_str()), "gc reports {n}: {out}");
        }
    }
    drop_pool_and_check(pool);
}

#[test]
fn a_killed_owners_segments_are_removed_by_gc_a_new_pool_and_a_new_reader() {
    let (gc_dir, reader_dir) = (private_dir(), private_dir());
    let owner = Owner::start(
        &[],
        &[],
        &[Path::new(SHM), gc_dir.path(), reader_dir.path()],
    );
    owner.assert_segments_intact();
    let segments = owner.segments.clone();
    let pid = owner.child.id() as i32;
    owner.kill(pid);
    let (in_gc_dir, in_reader_dir) = (&segments[1], &segments[2]);
    assert!(in_gc_dir.0.join(&in_gc_dir.1).exists());
    assert!(in_reader_dir.0.join(&in_reader_dir.1).exists());

    // A new pool cleans /dev/shm.
    let pool = WorkerPool::new(1).unwrap();
    assert!(!segment_exists(&segments[0].1), "a new pool removes it");
    // `shmfetch gc DIR` cleans DIR and says what it removed.
    let out = gc(&[gc_dir.path().to_str().unwrap()]);
    assert!(out.contains(&in_gc_dir.1), "{out}");
    assert!(!in_gc_dir.0.join(&in_gc_dir.1).exists());
    // A reader cleans the directory it uses when it creates a segment there.
    read_all_in(reader_dir.path(), &pool);
    assert!(
        !in_reader_dir.0.join(&in_reader_dir.1).exists(),
        "the reader's first segment in its dir removes the orphan there"
    );
    assert_eq!(std::fs::read_dir(reader_dir.path()).unwrap().count(), 0);
    drop_pool_and_check(pool);
}

#[test]
fn segments_created_while_gc_runs_in_a_loop_are_never_removed() {
    // On /dev/shm's tmpfs, but private: a sweep of /dev/shm in a tight loop
    // would also remove the (unlocked) segments of any older shmfetch
    // running on the machine, such as another checkout's tests.
    let private = private_dir();
    let dir = private.path();
    let stop = Arc::new(AtomicBool::new(false));
    let sweeper = {
        let (stop, dir) = (stop.clone(), dir.to_path_buf());
        std::thread::spawn(move || {
            let (mut removed, mut sweeps) = (Vec::new(), 0u64);
            while !stop.load(Ordering::Relaxed) {
                removed.extend(shmfetch::shm::remove_orphans(&dir));
                sweeps += 1;
            }
            (removed, sweeps)
        })
    };
    // Each segment is checked when created and again before it is dropped;
    // only the last few are held, so the directory stays small and the
    // sweeper passes over each new name as often as it can.
    const HELD: usize = 4;
    let check = |s: &Segment, content: &[u8]| {
        let got = std::fs::read(dir.join(s.name()))
            .unwrap_or_else(|e| panic!("{} of a live owner: {e}", s.name()));
        assert!(got == content, "{}: content changed", s.name());
        let suffix = s
            .name()
            .strip_prefix(shmfetch::shm::SEGMENT_PREFIX)
            .unwrap();
        let temp = format!("{}{suffix}", shmfetch::shm::TEMP_PREFIX);
        assert!(!dir.join(&temp).exists(), "temporary {temp} left");
    };
    let mut held = std::collections::VecDeque::new();
    let mut names = Vec::new();
    for i in 0..200u64 {
        let len = [0, 1, 4096, 10_000][i as usize % 4];
        let s = if i % 2 == 0 {
            Segment::create(dir, len)
        } else {
            Segment::create_unreserved(dir, len)
        }
        .unwrap();
        let content: Vec<u8> = (0..len).map(|b| (b ^ i) as u8).collect();
        fill(&dir.join(s.name()), &content);
        check(&s, &content);
        names.push(s.name().to_string());
        held.push_back((s, content));
        if held.len() > HELD {
            let (s, content) = held.pop_front().unwrap();
            check(&s, &content);
        }
    }
    for (s, content) in &held {
        check(s, content);
    }
    stop.store(true, Ordering::Relaxed);
    let (removed, sweeps) = sweeper.join().unwrap();
    assert!(sweeps > 1, "the sweeper ran during the creations");
    for n in &names {
        assert!(!removed.contains(n), "{n} removed while its owner lived");
    }
    drop(held);
    assert_eq!(
        std::fs::read_dir(dir).unwrap().count(),
        0,
        "unlinked on drop"
    );
}

#[test]
fn gc_of_a_missing_directory_fails_naming_it() {
    let d = private_dir();
    let missing = d.path().join("no-such-dir");
    for args in [
        vec![missing.to_str().unwrap()],
        vec!["--dir", missing.to_str().unwrap()],
    ] {
        let o = Command::new(BIN).arg("gc").args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "gc {args:?} succeeded: {err}");
        assert!(err.contains(missing.to_str().unwrap()), "{err}");
        assert!(err.contains("No such file or directory"), "{err}");
    }
    // DIR and --dir at once is a usage error, not a silent choice.
    let o = Command::new(BIN)
        .args(["gc", "/dev/shm", "--dir", "/dev/shm"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}
