//! Issue 10: the progress callback of `read_all_with_progress` /
//! `read_range_with_progress` advances with the bytes as they arrive, not
//! only when a whole range is done, and its increments add up to exactly
//! the bytes asked for — also when a range is resumed after a cut
//! connection or re-run from its start by another worker after a death.
//!
//! The server is paced (`per_request_rate`), so one large range takes
//! about a second and a half to arrive.

use shmfetch::testing::content;
use shmfetch::testing::server::{Fault, FaultKind, ServerConfig, TestServer};
use shmfetch::worker::KillPoint;
use shmfetch::{ByteRange, ParallelReader, SourceSpec, WorkerPool};

use crate::common::*;

const MIB: u64 = 1 << 20;

/// A server whose every GET response is paced at `rate` bytes/s, holding
/// `ais://b/<name>` of `size` deterministic bytes.
fn paced_server(name: &str, size: usize, rate: u64) -> (TestServer, SourceSpec, Vec<u8>) {
    let srv = TestServer::start(ServerConfig {
        per_request_rate: Some(rate),
        ..ServerConfig::default()
    })
    .expect("server starts");
    let data = content::bytes(11, size);
    srv.put_bytes("b", name, data.clone());
    let spec = ais_spec(&srv, &format!("ais://b/{name}"));
    (srv, spec, data)
}

/// Every increment the callback was given, checking on each call that it
/// is positive and that the running total never passes `total`.
#[derive(Debug, Default)]
struct Increments {
    total: u64,
    seen: Vec<u64>,
}

impl Increments {
    fn new(total: u64) -> Increments {
        Increments {
            total,
            seen: Vec::new(),
        }
    }

    fn add(&mut self, n: u64) {
        assert!(n > 0, "an increment of 0 after {:?}", self.seen);
        self.seen.push(n);
        let sum = self.sum();
        assert!(
            sum <= self.total,
            "progress reported {sum} of {} bytes: counted twice ({:?})",
            self.total,
            self.seen
        );
    }

    fn sum(&self) -> u64 {
        self.seen.iter().sum()
    }
}

#[test]
fn progress_advances_within_a_large_chunk() {
    // One 8 MiB range at 6 MiB/s: ~1.3 s during which the old callback
    // (called when a range is done) said nothing at all.
    let size = 8 * MIB;
    let (_srv, spec, data) = paced_server("big", size as usize, 6 * MIB);
    let pool = WorkerPool::new(2).unwrap();
    let reader = ParallelReader::builder(spec)
        .pool(pool.clone())
        .chunk_size(size)
        .build()
        .unwrap();
    let mut inc = Increments::new(size);
    let buf = reader
        .read_all_with_progress(&mut |n| inc.add(n))
        .expect("read_all");
    assert_eq!(sha(&buf), sha(&data));
    assert_eq!(inc.sum(), size, "increments {:?}", inc.seen);
    assert!(
        inc.seen.len() >= 5,
        "the callback saw one 8 MiB range arrive in only {} steps: {:?}",
        inc.seen.len(),
        inc.seen
    );
    drop(buf);
    let spec = reader.source().clone();
    drop(reader);

    // A sub-range of two ranges: the increments add up to its length.
    let part = ByteRange::new(MIB + 7, 7 * MIB - 3).unwrap();
    let reader = ParallelReader::builder(spec)
        .pool(pool.clone())
        .chunk_size(4 * MIB)
        .build()
        .unwrap();
    let mut inc = Increments::new(part.len());
    let buf = reader
        .read_range_with_progress(part, &mut |n| inc.add(n))
        .expect("read_range");
    assert_eq!(
        sha(&buf),
        sha(&data[part.start as usize..part.end as usize])
    );
    assert_eq!(inc.sum(), part.len(), "increments {:?}", inc.seen);
    assert!(inc.seen.len() >= 5, "increments {:?}", inc.seen);
    drop(buf);
    drop(reader);
    drop_pool_and_check(pool);
}

#[test]
fn progress_never_double_counts_a_resumed_range() {
    // The first response is cut by a reset after up to 3 MiB (what the
    // client got before the reset); the worker resumes from the last byte
    // it received, paced: the bytes it kept are counted once.
    let size = 8 * MIB;
    let (srv, spec, data) = paced_server("cut", size as usize, 8 * MIB);
    srv.inject(Fault::on("cut", FaultKind::ResetAfter(3 * MIB), 1));
    let pool = WorkerPool::new(2).unwrap();
    let reader = ParallelReader::builder(spec)
        .pool(pool.clone())
        .chunk_size(size)
        .build()
        .unwrap();
    let mut inc = Increments::new(size);
    let buf = reader
        .read_all_with_progress(&mut |n| inc.add(n))
        .expect("read_all");
    assert_eq!(sha(&buf), sha(&data));
    assert_eq!(inc.sum(), size, "increments {:?}", inc.seen);
    assert!(inc.seen.len() >= 3, "increments {:?}", inc.seen);
    let asked: Vec<String> = srv
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.role != "gateway")
        .filter_map(|r| r.range)
        .collect();
    let resumed_at: Vec<u64> = asked
        .iter()
        .filter_map(|r| r.strip_prefix("bytes=")?.split_once('-'))
        .filter(|(_, end)| *end == (size - 1).to_string())
        .filter_map(|(start, _)| start.parse().ok())
        .filter(|start| *start > 0)
        .collect();
    assert_eq!(resumed_at.len(), 1, "the range was resumed once: {asked:?}");
    drop(buf);
    drop(reader);
    drop_pool_and_check(pool);
}

#[test]
fn progress_never_double_counts_a_range_rerun_after_a_worker_death() {
    // Workers die after writing the first bytes of a range; the range is
    // re-run from its start by another worker (a new generation). What
    // the dead worker had written may have been reported already: the
    // re-run adds only what goes past it.
    let size = 6 * MIB + 12_345;
    let (_srv, spec, data) = paced_server("rerun", size as usize, 16 * MIB);
    let pool = WorkerPool::new(2).unwrap();
    let reader = ParallelReader::builder(spec)
        .pool(pool.clone())
        .chunk_size(2 * MIB)
        .kill_workers_at(KillPoint::MidWrite, 2)
        .build()
        .unwrap();
    let deaths = pool.stats().worker_deaths;
    let mut inc = Increments::new(size);
    let buf = reader
        .read_all_with_progress(&mut |n| inc.add(n))
        .expect("read_all");
    assert_eq!(sha(&buf), sha(&data));
    assert_eq!(inc.sum(), size, "increments {:?}", inc.seen);
    assert_eq!(pool.stats().worker_deaths - deaths, 2, "two workers died");
    drop(buf);
    drop(reader);
    // The pool replaced the dead workers; nothing is left once it goes.
    drop_pool_and_check(pool);
}
