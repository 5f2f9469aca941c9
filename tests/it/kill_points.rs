//! A worker that dies at any instant never makes a download deliver other
//! bytes: at each kill point (after claiming a slot, mid-write, after
//! publishing Ready, after reporting) the delivered bytes equal the
//! source's, or the call fails with `WorkerCrashed` — never anything else.
//!
//! The hook is the `test-support` feature's `kill_workers_at`: in every
//! download, the first workers to reach the point `SIGKILL` themselves
//! there. Each test kills at least 200 workers per mode and counts the
//! deaths the pool saw.

use shmfetch::worker::KillPoint;
use shmfetch::{Error, ParallelReader, WorkerPool};

use crate::common::*;

const CHUNK: usize = 256 * 1024;
const CHUNKS: usize = 12;
const KILLS_PER_DOWNLOAD: u32 = 2;
const KILLS_WANTED: u64 = 200;

#[derive(Default, Debug)]
struct Tally {
    exact: u32,
    crashed: u32,
    kills: u64,
}

fn run_point(point: KillPoint, iter: bool) -> Tally {
    let (_srv, spec, data) = server_with("k", CHUNKS * CHUNK - 1000, 3);
    let pool = WorkerPool::new(2).unwrap();
    let reader = ParallelReader::builder(spec)
        .pool(pool.clone())
        .chunk_size(CHUNK as u64)
        .kill_workers_at(point, KILLS_PER_DOWNLOAD)
        .build()
        .unwrap();
    let mut t = Tally::default();
    let before = pool.stats().worker_deaths;
    while pool.stats().worker_deaths - before < KILLS_WANTED {
        let got = if iter {
            iter_bytes(&reader, 0)
        } else {
            reader.read_all().map(|b| b.to_vec())
        };
        match got {
            Ok(bytes) => {
                assert!(
                    bytes == data,
                    "{point:?} (iter: {iter}): WRONG BYTES, sha256 {} != {}",
                    sha(&bytes),
                    sha(&data)
                );
                t.exact += 1;
            }
            Err(Error::WorkerCrashed { .. }) => t.crashed += 1,
            Err(e) => panic!("{point:?} (iter: {iter}): unexpected error {e}"),
        }
        assert!(
            t.exact + t.crashed < 4 * KILLS_WANTED as u32,
            "{point:?}: the kill hook does not fire ({t:?})"
        );
    }
    t.kills = pool.stats().worker_deaths - before;
    // Every dead worker was replaced.
    assert_eq!(pool.worker_pids().len(), 2);
    drop(reader);
    drop_pool_and_check(pool);
    eprintln!("{point:?} iter={iter}: {t:?}");
    t
}

fn check_point(point: KillPoint) {
    for iter in [true, false] {
        let t = run_point(point, iter);
        assert!(t.kills >= KILLS_WANTED);
        // Two kills per download are within every crash budget: each
        // download must have delivered its bytes.
        assert_eq!(t.crashed, 0, "{point:?}: {t:?}");
    }
}

#[test]
fn killed_after_claiming_a_slot() {
    check_point(KillPoint::AfterClaim);
}

#[test]
fn killed_mid_write() {
    check_point(KillPoint::MidWrite);
}

#[test]
fn killed_after_publishing_ready_before_reporting() {
    check_point(KillPoint::AfterPublish);
}

#[test]
fn killed_after_reporting() {
    check_point(KillPoint::AfterReport);
}

/// Past the crash budget the answer is `WorkerCrashed`, never bytes: with
/// every worker dying mid-write, no range can be delivered.
#[test]
fn a_crash_loop_is_worker_crashed_not_bytes() {
    let (_srv, spec, _data) = server_with("k", 4 * CHUNK, 4);
    for iter in [true, false] {
        let reader = ParallelReader::builder(spec.clone())
            .workers(2)
            .chunk_size(CHUNK as u64)
            .kill_workers_at(KillPoint::MidWrite, u32::MAX)
            .build()
            .unwrap();
        let got = if iter {
            iter_bytes(&reader, 0)
        } else {
            reader.read_all().map(|b| b.to_vec())
        };
        match got {
            Err(Error::WorkerCrashed { .. }) => {}
            other => panic!("iter {iter}: expected WorkerCrashed, got {other:?}"),
        }
    }
}
