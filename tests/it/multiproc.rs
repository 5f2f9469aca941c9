//! Proof that the work happens in other processes, in shared memory, and
//! that nothing outlives its owner.

use crate::common::*;
use shmfetch::testing::server::{Fault, FaultKind};
use shmfetch::{ParallelReader, WorkerPool};

#[test]
fn workers_are_child_processes_and_write_the_segment() {
    let me = std::process::id() as i32;
    let pool = WorkerPool::new(4).unwrap();
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 4);
    for &p in &pids {
        assert_ne!(p, me);
        assert_eq!(ppid_of(p), Some(me), "worker {p} is our child");
        let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap();
        assert_eq!(comm.trim(), "shmfetch-wrk");
    }
    let (_srv, spec, data) = server_with("o", 4_000_000, 41);
    let r = ParallelReader::builder(spec)
        .pool(pool.clone())
        .chunk_size(100_000)
        .build()
        .unwrap();
    let buf = r.read_all().unwrap();
    assert_eq!(sha(&buf), sha(&data));
    // The ranges were written by the workers, not by us.
    assert!(!buf.worker_pids().is_empty());
    for p in buf.worker_pids() {
        assert!(pids.contains(p), "{p} is one of the pool's workers");
        assert_ne!(*p, me);
    }
    assert!(
        buf.worker_pids().len() > 1,
        "several workers took part: {:?}",
        buf.worker_pids()
    );
    // The bytes really live in /dev/shm: read them back through the file.
    let on_disk = std::fs::read(std::path::Path::new(SHM).join(buf.segment_name())).unwrap();
    assert_eq!(sha(&on_disk), sha(&data));
    let name = buf.segment_name().to_string();
    drop(buf);
    assert!(!segment_exists(&name));
    // The same processes serve the next download: the pool is reused.
    let again = r.read_all().unwrap();
    assert_eq!(sha(&again), sha(&data));
    assert_eq!(pool.worker_pids(), pids);
    drop(again);
    drop(r);
    drop_pool_and_check(pool);
}

#[test]
fn a_segment_exists_during_a_download() {
    let (srv, spec, data) = server_with("o", 1_000_000, 42);
    // Slow the last range down so the download is still in progress.
    srv.inject(Fault::on("o", FaultKind::Trickle(1_000_000), 1).touching(999_999));
    let r = ParallelReader::builder(spec)
        .workers(2)
        .chunk_size(100_000)
        .build()
        .unwrap();
    let mine = format!("shmfetch-{}-", std::process::id());
    let mut it = r.create_iter(0).unwrap();
    let first = it.next().unwrap().unwrap();
    let seg = it.segment_name().unwrap().to_string();
    assert!(seg.starts_with(&mine));
    let meta = std::fs::metadata(std::path::Path::new(SHM).join(&seg)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "segments are private"
    );
    assert_eq!(&first[..], &data[..100_000]);
    drop(first);
    drop(it);
    assert!(!segment_exists(&seg));
}

#[test]
fn a_killed_worker_is_replaced_and_its_range_rerun() {
    let (srv, spec, data) = server_with("o", 2_000_000, 43);
    // Every worker stalls on its first range long enough to be killed.
    srv.inject(Fault::on(
        "o",
        FaultKind::Stall(std::time::Duration::from_secs(5)),
        3,
    ));
    let pool = WorkerPool::new(3).unwrap();
    let old = pool.worker_pids();
    let r = ParallelReader::builder(spec)
        .pool(pool.clone())
        .chunk_size(200_000)
        .build()
        .unwrap();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        for p in &old {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        old
    });
    let t = std::time::Instant::now();
    let buf = r.read_all().unwrap();
    let old = killer.join().unwrap();
    assert_eq!(sha(&buf), sha(&data));
    assert!(
        t.elapsed() < std::time::Duration::from_secs(4),
        "recovered without waiting out the stall: {:?}",
        t.elapsed()
    );
    let new = pool.worker_pids();
    assert_eq!(new.len(), 3);
    for p in &old {
        assert!(!new.contains(p));
        assert!(!pid_alive(*p), "dead worker {p} was reaped");
    }
    drop(buf);
    drop(r);
    drop_pool_and_check(pool);
}
