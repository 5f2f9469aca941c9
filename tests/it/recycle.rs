//! Issue 14.3: `read_all` segments (and `create_iter` rings) recycled by
//! their pool. Buffers are exact whatever the sizes in a row, a segment is
//! handed out again only once its buffer is gone and every writer is done
//! with it, and the kept segments go with the pool.

use std::time::Duration;

use crate::common::*;
use crate::faults::{BAD_BYTE, CHUNK, SIZE, ShmDir, quick_retry};
use shmfetch::testing::server::{Fault, FaultKind};
use shmfetch::{ParallelReader, PoolConfig, WorkerPool};

/// A pool that keeps dropped `read_all` segments (the default keeps none).
fn recycling_pool(workers: usize) -> WorkerPool {
    WorkerPool::with_config(PoolConfig {
        workers,
        recycle_bytes: shmfetch::worker::RECYCLE_BYTES,
        ..PoolConfig::default()
    })
    .unwrap()
}

fn reader(spec: shmfetch::SourceSpec, pool: &WorkerPool, dir: &ShmDir) -> ParallelReader {
    ParallelReader::builder(spec)
        .pool(pool.clone())
        .chunk_size(CHUNK)
        .retry(quick_retry())
        .shm_dir(&dir.0)
        .build()
        .unwrap()
}

#[test]
fn back_to_back_read_alls_of_different_sizes_are_exact_in_one_recycled_segment() {
    let pool = recycling_pool(4);
    let dir = ShmDir::new();
    let mut first = None;
    // Shrinking, growing (bytes past the old end), a partial last page,
    // less than one chunk, and back.
    let sizes = [SIZE, 300_001, 2_500_003, 4095, 65_536, SIZE];
    for (i, &size) in sizes.iter().enumerate() {
        let (_srv, spec, data) = server_with(&format!("o{i}"), size, 900 + i as u64);
        let r = reader(spec, &pool, &dir);
        let buf = r.read_all().unwrap();
        assert_eq!(buf.len(), size);
        assert_eq!(sha(&buf), sha(&data), "read_all {i} of {size} bytes");
        let name = buf.segment_name().to_string();
        let first = first.get_or_insert_with(|| name.clone());
        assert_eq!(&name, first, "read_all {i} got the kept segment");
        assert_eq!(pool.stats().recycled_segments, i as u64);
        assert_eq!(
            std::fs::metadata(dir.0.join(&name)).unwrap().len(),
            size as u64,
            "the segment is exactly the object's size"
        );
    }
    // Kept while the pool lives, gone with it.
    assert_eq!(dir.entries().len(), 1, "one kept segment");
    drop_pool_and_check(pool);
    dir.assert_empty();
}

#[test]
fn a_live_buffers_segment_is_never_handed_out_again() {
    let pool = recycling_pool(3);
    let dir = ShmDir::new();
    let (_s1, spec1, data1) = server_with("a", SIZE, 31);
    let (_s2, spec2, data2) = server_with("b", SIZE, 32);
    let (r1, r2) = (reader(spec1, &pool, &dir), reader(spec2, &pool, &dir));
    drop(r1.read_all().unwrap()); // one kept segment
    let a = r1.read_all().unwrap();
    let b = r2.read_all().unwrap();
    assert_ne!(a.segment_name(), b.segment_name());
    assert_eq!(pool.stats().recycled_segments, 1);
    assert_eq!((sha(&a), sha(&b)), (sha(&data1), sha(&data2)));
    drop((a, b, r1, r2));
    drop_pool_and_check(pool);
    dir.assert_empty();
}

/// A download that fails while a worker is still writing one of its ranges
/// (a trickling answer outlives the download's error) must not give its
/// segment to the next `read_all`: the late writes would land in the next
/// user's buffer.
#[test]
fn a_cancelled_downloads_late_worker_write_cannot_corrupt_the_next_buffer() {
    let pool = recycling_pool(3);
    let dir = ShmDir::new();
    let (srv, spec, data) = server_with("o", SIZE, 41);
    let (_s2, spec2, data2) = server_with("next", SIZE, 42);
    let (r, r2) = (reader(spec, &pool, &dir), reader(spec2, &pool, &dir));
    // A kept segment, which the failing download then takes.
    assert_eq!(sha(&r.read_all().unwrap()), sha(&data));
    // The third range trickles for about a second, every byte written as
    // it comes; the last range fails at once (not retried).
    srv.inject(Fault::on("o", FaultKind::Trickle(100_000), 1).touching(BAD_BYTE));
    srv.inject(Fault::on("o", FaultKind::Status(403), 1).touching(SIZE as u64 - 1));
    let e = r.read_all().unwrap_err();
    assert!(e.to_string().contains("HTTP 403"), "{e}");
    assert_eq!(pool.stats().recycled_segments, 1);
    // The next download runs while the trickling worker still writes.
    let buf = r2.read_all().unwrap();
    assert_eq!(sha(&buf), sha(&data2));
    // Let the trickle end (its bytes land wherever they land), then look
    // again.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        sha(&buf),
        sha(&data2),
        "a late write reached the next buffer"
    );
    drop((buf, r, r2));
    drop_pool_and_check(pool);
    dir.assert_empty();
}

#[test]
fn by_default_a_pool_recycles_nothing_and_leaves_nothing_behind_a_buffer() {
    let pool = WorkerPool::new(2).unwrap();
    let dir = ShmDir::new();
    let (_srv, spec, data) = server_with("o", SIZE, 51);
    let r = reader(spec, &pool, &dir);
    for _ in 0..2 {
        assert_eq!(sha(&r.read_all().unwrap()), sha(&data));
        dir.assert_empty();
    }
    assert_eq!(pool.stats().recycled_segments, 0);
    drop(r);
    drop_pool_and_check(pool);
}

/// Everything one `create_iter` delivers, and the name of its ring.
fn iterate(r: &ParallelReader) -> (Vec<u8>, String) {
    let it = r.create_iter(0).unwrap();
    let name = it.segment_name().unwrap().to_string();
    let mut out = Vec::new();
    for c in it {
        out.extend_from_slice(&c.unwrap());
    }
    (out, name)
}

/// Issue 14: a new ring costs allocating and zeroing every page of it
/// (`workers × chunk` bytes), and the workers fault each in again; a
/// finished ring goes back to the pool for the next ring of its size.
#[test]
fn back_to_back_iters_reuse_a_finished_ring_and_are_exact() {
    let pool = recycling_pool(4);
    let dir = ShmDir::new();
    let (_s1, spec1, data1) = server_with("a", SIZE, 61);
    let (_s2, spec2, data2) = server_with("b", SIZE, 62);
    let (r1, r2) = (reader(spec1, &pool, &dir), reader(spec2, &pool, &dir));
    let mut names = Vec::new();
    for i in 0..6 {
        let (r, data) = if i % 2 == 0 {
            (&r1, &data1)
        } else {
            (&r2, &data2)
        };
        let (got, name) = iterate(r);
        assert_eq!(sha(&got), sha(data), "iteration {i}");
        names.push(name);
        // The ring is handed out again once the pool's dispatcher has let
        // go of the finished download (it learns of the last range's end
        // from its worker a moment after the consumer does).
        std::thread::sleep(Duration::from_millis(50));
    }
    let distinct: std::collections::BTreeSet<_> = names.iter().collect();
    assert!(
        distinct.len() < names.len(),
        "no ring was reused: {names:?}"
    );
    assert!(pool.stats().recycled_segments >= 1);
    drop((r1, r2));
    drop_pool_and_check(pool);
    dir.assert_empty();
}

/// A ring whose iterator was dropped while a worker still writes one of
/// its slots is never kept: the late write would land in the next ring.
#[test]
fn an_abandoned_ring_with_a_late_writer_is_not_reused() {
    let pool = recycling_pool(3);
    let dir = ShmDir::new();
    let (srv, spec, _data) = server_with("o", SIZE, 71);
    let (_s2, spec2, data2) = server_with("next", SIZE, 72);
    let (r, r2) = (reader(spec, &pool, &dir), reader(spec2, &pool, &dir));
    // The fourth range trickles for about a second, every byte written as
    // it comes.
    srv.inject(Fault::on("o", FaultKind::Trickle(100_000), 1).touching(BAD_BYTE));
    let mut it = r.create_iter(0).unwrap();
    let abandoned = it.segment_name().unwrap().to_string();
    drop(it.next().unwrap().unwrap());
    drop(it);
    let (got, name) = iterate(&r2);
    assert_ne!(name, abandoned, "an abandoned ring was handed out again");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sha(&got), sha(&data2));
    // Not kept at all: also once its writer is long done.
    let (again, name) = iterate(&r2);
    assert_ne!(name, abandoned, "an abandoned ring was kept");
    assert_eq!(sha(&again), sha(&data2));
    drop((r, r2));
    drop_pool_and_check(pool);
    dir.assert_empty();
}

/// Kept rings of other sizes took the room a new ring needed: `read_all`
/// drops its pool's kept segments and tries again before it reports
/// `ShmNoSpace`, `create_iter` reported it at once.
#[test]
fn a_new_ring_gets_the_room_of_kept_rings_before_shm_no_space() {
    let Some((tmp, _unmount)) = crate::cli::small_tmpfs("4m") else {
        return;
    };
    let pool = recycling_pool(2);
    let (_srv, spec, data) = server_with("o", 2_000_000, 81);
    let iter_with_chunk = |chunk: u64| {
        let r = ParallelReader::builder(spec.clone())
            .pool(pool.clone())
            .allow_small_chunks()
            .chunk_size(chunk)
            .retry(quick_retry())
            .shm_dir(tmp.path())
            .build()
            .unwrap();
        let mut out = Vec::new();
        for c in r.create_iter(0)? {
            out.extend_from_slice(&c?);
        }
        // Let the dispatcher let go of the ring before the next one.
        std::thread::sleep(Duration::from_millis(50));
        Ok::<_, shmfetch::Error>(out)
    };
    // Four rings of ~0.75-0.9 MB, each kept (each at most a quarter of
    // the 4 MiB directory), none of a size the next one can reuse.
    for chunk in [380_000, 400_000, 420_000, 440_000] {
        assert_eq!(sha(&iter_with_chunk(chunk).unwrap()), sha(&data));
    }
    // A ring of ~1 MB does not fit beside them, and does once they go.
    let got = iter_with_chunk(500_000).expect("kept rings were not dropped for a new ring");
    assert_eq!(sha(&got), sha(&data));
    drop_pool_and_check(pool);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

/// A recycled segment's pages exist, so its workers store into them
/// through a mapping instead of `pwrite`. Workers killed mid-write there
/// (one per download), and the re-runs of their ranges, still leave
/// exactly the object's bytes in the buffer — never the bytes the
/// segment held for the other object read before it.
#[test]
fn recycled_segments_written_in_place_stay_exact_when_writers_die_mid_write() {
    let (_sa, spec_a, a) = server_with("a", SIZE, 71);
    let (_sb, spec_b, b) = server_with("b", SIZE, 72);
    assert_ne!(sha(&a), sha(&b));
    let pool = recycling_pool(2);
    let dir = ShmDir::new();
    let reader = |spec| {
        ParallelReader::builder(spec)
            .pool(pool.clone())
            .chunk_size(CHUNK)
            .retry(quick_retry())
            .shm_dir(&dir.0)
            .kill_workers_at(shmfetch::worker::KillPoint::MidWrite, 1)
            .build()
            .unwrap()
    };
    let (ra, rb) = (reader(spec_a), reader(spec_b));
    let mut exact = 0;
    for i in 0..12 {
        let (r, want) = if i % 2 == 0 { (&ra, &a) } else { (&rb, &b) };
        match r.read_all() {
            Ok(buf) => {
                assert!(
                    buf[..] == want[..],
                    "read_all {i}: wrong bytes, sha256 {}",
                    sha(&buf)
                );
                exact += 1;
            }
            Err(shmfetch::Error::WorkerCrashed { .. }) => {}
            Err(e) => panic!("read_all {i}: {e}"),
        }
    }
    let stats = pool.stats();
    assert!(exact >= 6, "{exact} of 12 exact");
    assert!(stats.worker_deaths >= 10, "{stats:?}");
    assert!(stats.recycled_segments >= 5, "{stats:?}");
    drop((ra, rb));
    drop_pool_and_check(pool);
}
