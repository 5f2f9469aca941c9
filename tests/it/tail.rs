//! Busy until the last byte: at the tail of a `read_all`, a worker with
//! nothing left to do gets the second half of the largest range still being
//! written, and that range's writer stops at the cut; in a `create_iter`
//! ring, the rest of the earliest chunk in flight, into the same slot. The
//! bytes stay exact whatever happens to either writer.

use std::time::{Duration, Instant};

use crate::common::*;
use shmfetch::testing::content;
use shmfetch::testing::server::{Fault, FaultKind, TestServer};
use shmfetch::{ParallelReader, WorkerPool};

const MIB: u64 = 1024 * 1024;

/// The requested ranges of GETs at the targets, as (first, last) bytes.
fn target_ranges(srv: &TestServer) -> Vec<(u64, u64)> {
    srv.requests()
        .iter()
        .filter(|r| r.method == "GET" && r.role.starts_with("target"))
        .filter_map(|r| {
            let (a, b) = r
                .range
                .as_deref()?
                .strip_prefix("bytes=")?
                .split_once('-')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

/// An object of `size` bytes on a test server, read by 2 workers in
/// `chunk`-byte ranges from `offset`, whose first range trickles at `rate`
/// bytes/s (once); the server, the bytes from `offset`, the pool and the
/// reader.
fn slow_start(
    size: u64,
    chunk: u64,
    seed: u64,
    rate: u64,
    offset: u64,
) -> (TestServer, Vec<u8>, WorkerPool, ParallelReader) {
    let (srv, spec, data) = server_with("o", size as usize, seed);
    srv.inject(Fault::on("o", FaultKind::Trickle(rate), 1).touching(offset));
    let pool = WorkerPool::new(2).unwrap();
    let r = ParallelReader::builder(spec)
        .pool(pool.clone())
        .chunk_size(chunk)
        .build()
        .unwrap();
    (srv, data[offset as usize..].to_vec(), pool, r)
}

/// An 8 MiB object read by 2 workers in two 4 MiB ranges, the first of
/// which trickles at `rate` bytes/s.
fn slow_first_range(seed: u64, rate: u64) -> (TestServer, Vec<u8>, WorkerPool, ParallelReader) {
    slow_start(8 * MIB, 4 * MIB, seed, rate, 0)
}

/// Waits (up to 20 s) until the pool has cut a range, then SIGKILLs every
/// worker of it.
fn kill_every_worker_after_the_first_cut(pool: &WorkerPool) {
    let t0 = Instant::now();
    while pool.stats().cut_ranges == 0 {
        assert!(t0.elapsed() < Duration::from_secs(20), "no cut happened");
        std::thread::sleep(Duration::from_millis(5));
    }
    for p in pool.worker_pids() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Where the first piece cut off a range was asked for: the first request
/// that starts at no whole multiple of `chunk` from `offset`.
fn first_piece(ranges: &[(u64, u64)], offset: u64, chunk: u64) -> Option<u64> {
    ranges
        .iter()
        .map(|(a, _)| *a)
        .find(|a| !(a - offset).is_multiple_of(chunk))
}

#[test]
fn an_idle_worker_takes_the_second_half_of_a_trickling_range() {
    // The range at 0 trickles (~2 s whole); the other is quick.
    let (srv, data, pool, r) = slow_first_range(41, 2 * MIB);
    let buf = r.read_all().unwrap();
    assert_eq!(sha(&buf), sha(&data));
    let cuts = pool.stats().cut_ranges;
    assert!(cuts >= 1, "no range was cut: {:?}", target_ranges(&srv));
    // Each cut piece was asked for from a whole 64 KiB inside the slow
    // range to its (then) end; the planned ranges start at whole chunks.
    let pieces: Vec<_> = target_ranges(&srv)
        .into_iter()
        .filter(|(a, _)| a % (4 * MIB) != 0)
        .collect();
    assert_eq!(pieces.len() as u64, cuts, "{:?}", target_ranges(&srv));
    for (a, b) in &pieces {
        assert_eq!(a % (64 * 1024), 0, "piece at {a}");
        assert!(
            *a > 0 && *b < 4 * MIB,
            "piece {a}-{b} outside the slow range"
        );
    }
    drop(buf);
    drop(r);
    drop_pool_and_check(pool);
}

/// Every worker dies after a range was cut: the re-run of the cut range
/// fetches it only up to the cut (the piece is the thief's), and the
/// bytes are exact.
#[test]
fn a_cut_range_whose_writer_dies_is_rerun_up_to_the_cut() {
    let (srv, data, pool, r) = slow_first_range(43, MIB);
    let job = std::thread::spawn(move || r.read_all().map(|b| sha(&b)));
    kill_every_worker_after_the_first_cut(&pool);
    assert_eq!(job.join().unwrap().unwrap(), sha(&data));
    assert!(pool.stats().worker_deaths >= 1);
    // The first cut (the first piece asked for) is where the re-run of
    // the range at 0 must end, or sooner (cut again later).
    let ranges = target_ranges(&srv);
    let first_cut = first_piece(&ranges, 0, 4 * MIB);
    let rerun_ends: Vec<u64> = ranges
        .iter()
        .filter(|(a, _)| *a == 0)
        .skip(1)
        .map(|(_, b)| b + 1)
        .collect();
    let cut = first_cut.expect("a piece was asked for");
    assert!(
        !rerun_ends.is_empty(),
        "the range at 0 was not re-run: {ranges:?}"
    );
    for end in &rerun_ends {
        assert!(
            *end <= cut,
            "a re-run asked for 0-{end} past the cut at {cut}: {ranges:?}"
        );
    }
    drop_pool_and_check(pool);
}

/// `create_iter`: the consumer waits for the first chunk, which trickles,
/// while the second worker's chunk is done. That worker gets the rest of
/// the first chunk from a whole 64 KiB on, into the same ring slot; the
/// chunks come whole, in order, exact. From an offset that is no multiple
/// of anything, so the piece's place in its slot is not its place in the
/// object.
#[test]
fn an_idle_worker_fills_the_rest_of_a_trickling_ring_slot() {
    let offset = MIB + 4321;
    let (srv, data, pool, r) = slow_start(16 * MIB, 4 * MIB, 45, 2 * MIB, offset);
    let mut out = Vec::new();
    for (i, c) in r.create_iter(offset).unwrap().enumerate() {
        let c = c.unwrap();
        assert_eq!(c.offset(), offset + i as u64 * 4 * MIB);
        assert_eq!(c.len() as u64, (4 * MIB).min(16 * MIB - c.offset()));
        out.extend_from_slice(&c);
    }
    assert_eq!(sha(&out), sha(&data));
    let cuts = pool.stats().cut_ranges;
    assert!(cuts >= 1, "no chunk was cut: {:?}", target_ranges(&srv));
    // The planned ranges start at offset + whole chunks; each piece at a
    // whole 64 KiB inside a chunk, to that chunk's end, and one inside the
    // slow first chunk.
    let pieces: Vec<_> = target_ranges(&srv)
        .into_iter()
        .filter(|(a, _)| !(a - offset).is_multiple_of(4 * MIB))
        .collect();
    assert_eq!(pieces.len() as u64, cuts, "{:?}", target_ranges(&srv));
    for (a, b) in &pieces {
        assert_eq!((a - offset) % (64 * 1024), 0, "piece at {a}");
        let chunk_end = (offset + ((a - offset) / (4 * MIB) + 1) * 4 * MIB).min(16 * MIB);
        assert_eq!(b + 1, chunk_end, "piece {a}-{b}");
    }
    assert!(
        pieces.iter().any(|(a, _)| *a < offset + 4 * MIB),
        "the slow chunk was not cut: {pieces:?}"
    );
    drop(r);
    drop_pool_and_check(pool);
}

/// Every worker dies after a ring slot was cut: its re-run stops at the
/// cut, the piece is re-run too if it was in flight, and the chunks are
/// exact.
#[test]
fn a_cut_ring_slot_whose_writers_die_is_rerun_exactly() {
    let (srv, data, pool, r) = slow_start(16 * MIB, 4 * MIB, 47, MIB, 0);
    let job = std::thread::spawn(move || -> shmfetch::Result<String> {
        let mut out = Vec::new();
        for c in r.create_iter(0)? {
            out.extend_from_slice(&c?);
        }
        Ok(sha(&out))
    });
    kill_every_worker_after_the_first_cut(&pool);
    assert_eq!(job.join().unwrap().unwrap(), sha(&data));
    assert!(pool.stats().worker_deaths >= 1);
    let ranges = target_ranges(&srv);
    let cut = first_piece(&ranges, 0, 4 * MIB).expect("a piece was asked for");
    // The range at 0 was asked for whole once (4 MiB), and again, after
    // the kill, at most up to the cut (the log holds the requests in the
    // order the server finished with them).
    let at_0: Vec<u64> = ranges
        .iter()
        .filter(|(a, _)| *a == 0)
        .map(|(_, b)| b + 1)
        .collect();
    let reruns = at_0.iter().filter(|end| **end != 4 * MIB).count();
    assert!(reruns >= 1, "the range at 0 was not re-run: {ranges:?}");
    for end in at_0 {
        assert!(
            end == 4 * MIB || end <= cut,
            "a re-run asked for 0-{end} past the cut at {cut}: {ranges:?}"
        );
    }
    drop_pool_and_check(pool);
}

/// Bug: a chunk still `Assigned` when the consumer first looked was never
/// cut, because a worker's claim woke nobody: with one chunk and two
/// workers, the second worker sat idle for the whole trickling chunk.
#[test]
fn a_chunk_not_yet_claimed_at_the_first_look_is_still_cut() {
    let (srv, data, pool, r) = slow_start(8 * MIB, 8 * MIB, 49, 2 * MIB, 0);
    let t0 = Instant::now();
    let mut out = Vec::new();
    for c in r.create_iter(0).unwrap() {
        out.extend_from_slice(&c.unwrap());
    }
    assert_eq!(sha(&out), sha(&data));
    assert!(
        pool.stats().cut_ranges >= 1,
        "the one chunk was not cut ({:?} in {:?})",
        target_ranges(&srv),
        t0.elapsed()
    );
    drop(r);
    drop_pool_and_check(pool);
}

/// Bug: when the rest of a cut chunk failed for good, the iterator said so
/// only once the chunk's slow first half was in (or had failed too): the
/// piece's error waited behind the very stream the cut was made for.
#[test]
fn a_failed_piece_fails_the_iterator_without_waiting_for_the_slow_half() {
    // The first chunk trickles (8 s whole); any other request for its last
    // byte, that is its piece, is refused for good.
    let (srv, _, pool, r) = slow_start(16 * MIB, 4 * MIB, 51, MIB / 2, 0);
    srv.inject(Fault::always("o", FaultKind::Status(403)).touching(4 * MIB - 1));
    let t0 = Instant::now();
    let err = r
        .create_iter(0)
        .unwrap()
        .find_map(|c| c.err())
        .expect("the piece's 403 fails the iterator");
    let took = t0.elapsed();
    assert!(pool.stats().cut_ranges >= 1, "{:?}", target_ranges(&srv));
    assert!(err.to_string().contains("403"), "{err}");
    assert!(
        took < Duration::from_secs(3),
        "the error came after {took:?}, with the slow half"
    );
    drop(r);
    drop_pool_and_check(pool);
}

/// The GETs of `object` at the targets, by their `Range` headers.
fn ranges_of(srv: &TestServer, object: &str) -> Vec<String> {
    srv.requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.role.starts_with("target") && r.object == object)
        .filter_map(|r| r.range)
        .collect()
}

/// A test server holding `name` (`size` bytes) and a 4 MiB "big" object,
/// and a pool of 4 workers: the object's bytes, big's, and both.
fn beside_big(name: &str, size: u64, seed: u64) -> (TestServer, Vec<u8>, Vec<u8>, WorkerPool) {
    let srv = TestServer::start(Default::default()).unwrap();
    let data = content::bytes(seed, size as usize);
    let big = content::bytes(seed + 1, 4 * MIB as usize);
    srv.put_bytes("b", name, data.clone());
    srv.put_bytes("b", "big", big.clone());
    (srv, data, big, WorkerPool::new(4).unwrap())
}

/// A reader of `name` on `pool`, with `chunk` (else the default).
fn reader_on(
    srv: &TestServer,
    pool: &WorkerPool,
    name: &str,
    chunk: Option<u64>,
) -> ParallelReader {
    let b = ParallelReader::builder(ais_spec(srv, &format!("ais://b/{name}"))).pool(pool.clone());
    match chunk {
        Some(c) => b.chunk_size(c),
        None => b,
    }
    .build()
    .unwrap()
}

/// `n` downloads of "big" in flight on `pool`, each one 4 MiB range
/// trickling at `rate`, once the server saw each start: their threads
/// answer the sha256 of what they read.
fn big_in_flight(
    srv: &TestServer,
    pool: &WorkerPool,
    n: usize,
    rate: u64,
) -> Vec<std::thread::JoinHandle<String>> {
    srv.inject(Fault::always("big", FaultKind::Trickle(rate)));
    let others: Vec<_> = (0..n)
        .map(|_| {
            let r = reader_on(srv, pool, "big", Some(4 * MIB));
            std::thread::spawn(move || sha(&r.read_all().unwrap()))
        })
        .collect();
    let t0 = Instant::now();
    while ranges_of(srv, "big").len() < n {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the others did not start"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    others
}

/// Found measuring 64 objects of 4 MiB, 8 at a time on 8 workers: each
/// object was split into four 1 MiB ranges as if it had the pool to
/// itself, and its one slow range was cut again for workers idle only in
/// its own eyes (busy with the other objects): 219 objects/s, against 283
/// with one range per object. A small object now shares the workers the
/// pool's other active downloads leave it, and a range is cut only for
/// those.
#[test]
fn a_small_object_read_beside_other_downloads_is_one_range_and_not_cut() {
    let (srv, small, big, pool) = beside_big("small", 4 * MIB, 53);
    let r = reader_on(&srv, &pool, "small", None);
    // Alone on the pool, the small object is shared by all 4 workers.
    assert_eq!(sha(&r.read_all().unwrap()), sha(&small));
    let alone = ranges_of(&srv, "small");
    assert_eq!(alone.len(), 4, "{alone:?}");

    // Three other downloads with a range in flight each (one 4 MiB range
    // trickling for 2 s): one worker's share is left, so one range. (The
    // cut rule itself: a_range_is_cut_only_for_workers_idle_within_the_share.)
    let others = big_in_flight(&srv, &pool, 3, 2 * MIB);
    srv.inject(Fault::on("small", FaultKind::Trickle(8 * MIB), 1));
    let cuts = pool.stats().cut_ranges;
    assert_eq!(sha(&r.read_all().unwrap()), sha(&small));
    assert_eq!(
        ranges_of(&srv, "small")[alone.len()..],
        [format!("bytes=0-{}", 4 * MIB - 1)],
        "the small object beside 3 active downloads on 4 workers"
    );
    assert_eq!(pool.stats().cut_ranges, cuts);
    for t in others {
        assert_eq!(t.join().unwrap(), sha(&big));
    }

    // Nothing in flight any more: the whole pool is the small object's again.
    let before = ranges_of(&srv, "small").len();
    assert_eq!(sha(&r.read_all().unwrap()), sha(&small));
    assert_eq!(ranges_of(&srv, "small").len() - before, 4);
    drop(r);
    drop_pool_and_check(pool);
}

/// Found in review: a download counted at its pool from its open to its
/// drop, so an iterator with every chunk in (not dropped yet, its last
/// chunk still held) took a share of workers it did not use, and a small
/// object read beside three of them was one range for one worker while
/// three sat idle. Only a download with a range queued or being fetched
/// takes a share.
#[test]
fn a_download_with_nothing_in_flight_takes_no_share_of_the_workers() {
    let (srv, small, big, pool) = beside_big("small", 4 * MIB, 55);
    let b = reader_on(&srv, &pool, "big", None);
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut it = b.create_iter(0).unwrap();
        let mut out = Vec::new();
        let mut last = None;
        for c in &mut it {
            let c = c.unwrap();
            out.extend_from_slice(&c);
            last = Some(c);
        }
        assert_eq!(sha(&out), sha(&big));
        idle.push((it, last));
    }
    let r = reader_on(&srv, &pool, "small", None);
    assert_eq!(sha(&r.read_all().unwrap()), sha(&small));
    let ranges = ranges_of(&srv, "small");
    assert_eq!(ranges.len(), 4, "beside 3 idle iterators: {ranges:?}");
    drop(idle);
    drop((r, b));
    drop_pool_and_check(pool);
}

/// Found in review: no test showed that a range is cut only for a worker
/// idle within the download's share. Beside two downloads in flight on 4
/// workers (share: 1), neither a `read_all` nor a ring of two 4 MiB ranges,
/// the first trickling for 1 s, is cut: the workers it does not use are
/// the other downloads'.
#[test]
fn a_range_is_cut_only_for_workers_idle_within_the_share() {
    let (srv, mid, big, pool) = beside_big("mid", 8 * MIB, 57);
    let r = reader_on(&srv, &pool, "mid", Some(4 * MIB));
    let t0 = Instant::now();
    let others = big_in_flight(&srv, &pool, 2, MIB);
    let cuts = pool.stats().cut_ranges;
    srv.inject(Fault::on("mid", FaultKind::Trickle(4 * MIB), 1).touching(0));
    assert_eq!(sha(&r.read_all().unwrap()), sha(&mid));
    srv.inject(Fault::on("mid", FaultKind::Trickle(4 * MIB), 1).touching(0));
    let mut out = Vec::new();
    for c in r.create_iter(0).unwrap() {
        out.extend_from_slice(&c.unwrap());
    }
    assert_eq!(sha(&out), sha(&mid));
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "the others ended first"
    );
    assert_eq!(
        pool.stats().cut_ranges,
        cuts,
        "{:?}",
        ranges_of(&srv, "mid")
    );
    assert_eq!(ranges_of(&srv, "mid").len(), 4);
    for t in others {
        assert_eq!(t.join().unwrap(), sha(&big));
    }
    drop(r);
    drop_pool_and_check(pool);
}
