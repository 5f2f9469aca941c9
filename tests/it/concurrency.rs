//! Many downloads at once on one pool: threads, owned iterators moved
//! across threads, and the async facade on both kinds of tokio runtime —
//! every result sha256-exact (or `WorkerCrashed` where workers were killed).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;

use futures_core::Stream;
use shmfetch::worker::KillPoint;
use shmfetch::{ChunkStream, Error, ParallelReader, SourceSpec, WorkerPool};

use crate::common::*;

const CHUNK: u64 = 64 * 1024;

fn reader(spec: &SourceSpec, pool: &WorkerPool) -> ParallelReader {
    ParallelReader::builder(spec.clone())
        .pool(pool.clone())
        .chunk_size(CHUNK)
        .build()
        .unwrap()
}

#[test]
fn eight_threads_fifty_downloads_each_mixed_modes_random_kills() {
    let (_srv, spec, data) = server_with("c", 1_000_003, 21);
    let data = Arc::new(data);
    let pool = WorkerPool::new(4).unwrap();
    let points = [
        KillPoint::AfterClaim,
        KillPoint::MidWrite,
        KillPoint::AfterPublish,
        KillPoint::AfterReport,
    ];
    let deaths_before = pool.stats().worker_deaths;
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let (spec, pool, data) = (spec.clone(), pool.clone(), Arc::clone(&data));
            std::thread::spawn(move || {
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ t;
                let mut crashed = 0;
                for i in 0..50 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let mut b = ParallelReader::builder(spec.clone())
                        .pool(pool.clone())
                        .chunk_size(CHUNK);
                    if x.is_multiple_of(3) {
                        b = b.kill_workers_at(points[(x >> 8) as usize % 4], 1);
                    }
                    let r = b.build().unwrap();
                    let (got, want) = match (x >> 16) % 4 {
                        0 => (r.read_all().map(|b| b.to_vec()), &data[..]),
                        1 => (iter_bytes(&r, 0), &data[..]),
                        2 => {
                            let mut out = Vec::new();
                            let res = r.stream(777).and_then(|mut s| {
                                std::io::Read::read_to_end(&mut s, &mut out)
                                    .map_err(|e| Error::Pool(e.to_string()))
                            });
                            (res.map(|_| out), &data[777..])
                        }
                        _ => {
                            let range = shmfetch::ByteRange::new(1000, 600_000).unwrap();
                            (
                                r.read_range(range).map(|b| b.to_vec()),
                                &data[1000..600_000],
                            )
                        }
                    };
                    match got {
                        Ok(bytes) => assert!(
                            bytes == want,
                            "thread {t} download {i}: WRONG BYTES {} != {}",
                            sha(&bytes),
                            sha(want)
                        ),
                        Err(Error::WorkerCrashed { .. }) => crashed += 1,
                        Err(e) => panic!("thread {t} download {i}: {e}"),
                    }
                }
                crashed
            })
        })
        .collect();
    let crashed: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    // One kill per killing download is within every crash budget.
    assert_eq!(crashed, 0);
    assert!(
        pool.stats().worker_deaths - deaths_before >= 20,
        "kills did happen"
    );
    assert_eq!(pool.worker_pids().len(), 4);
    drop_pool_and_check(pool);
}

#[test]
fn an_owned_iterator_moves_into_another_thread_and_outlives_its_reader() {
    let (_srv, spec, data) = server_with("o", 700_001, 22);
    let pool = WorkerPool::new(3).unwrap();
    let r = reader(&spec, &pool);
    let it = r.create_iter(0).unwrap();
    let stream = r.stream(5).unwrap();
    drop(r);
    let t1 = std::thread::spawn(move || {
        let mut out = Vec::new();
        for c in it {
            out.extend_from_slice(&c.unwrap());
        }
        out
    });
    let t2 = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut s = stream;
        std::io::Read::read_to_end(&mut s, &mut out).unwrap();
        out
    });
    assert_eq!(sha(&t1.join().unwrap()), sha(&data));
    assert_eq!(sha(&t2.join().unwrap()), sha(&data[5..]));
    drop_pool_and_check(pool);
}

async fn stream_bytes(mut s: ChunkStream) -> shmfetch::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(c) = poll_fn(|cx| Pin::new(&mut s).poll_next(cx)).await {
        out.extend_from_slice(&c?);
    }
    Ok(out)
}

/// 64 downloads at once (half `read_all_async`, half `chunk_stream`),
/// spawned on `rt`.
fn sixty_four_at_once(rt: tokio::runtime::Runtime) {
    let (_srv, spec, data) = server_with("a", 300_007, 23);
    let data = Arc::new(data);
    let pool = WorkerPool::new(4).unwrap();
    let readers: Vec<ParallelReader> = (0..64).map(|_| reader(&spec, &pool)).collect();
    rt.block_on(async {
        let tasks: Vec<_> = readers
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                tokio::spawn(async move {
                    if i % 2 == 0 {
                        r.read_all_async().await.map(|b| b.to_vec())
                    } else {
                        stream_bytes(r.chunk_stream(0)?).await
                    }
                })
            })
            .collect();
        for t in tasks {
            let bytes = t.await.unwrap().unwrap();
            assert_eq!(sha(&bytes), sha(&data));
        }
    });
    drop(rt);
    drop_pool_and_check(pool);
}

#[test]
fn sixty_four_async_downloads_on_a_current_thread_runtime() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    sixty_four_at_once(rt);
}

#[test]
fn sixty_four_async_downloads_on_a_multi_thread_runtime() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_io()
        .build()
        .unwrap();
    sixty_four_at_once(rt);
}

#[test]
fn async_errors_are_the_same_errors() {
    let (_srv, spec, _data) = server_with("e", 10_000, 24);
    let pool = WorkerPool::new(2).unwrap();
    let r = reader(&spec, &pool);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let past_end = shmfetch::ByteRange::new(0, 10_001).unwrap();
    match rt.block_on(r.read_range_async(past_end)) {
        Err(Error::InvalidConfig(m)) => assert!(m.contains("past its end"), "{m}"),
        other => panic!("{other:?}"),
    }
    drop(r);
    drop_pool_and_check(pool);
}

/// Found in review: the dispatcher sent a finished download's close to
/// every worker that knew it, busy or not. A busy worker does not read its
/// socket, so ~280 closes filled it and the dispatcher blocked in `send`,
/// stalling every download of the pool until that worker's slow range
/// ended. Closes for a busy worker now wait until it is idle.
#[test]
fn closes_for_a_busy_worker_do_not_stall_the_pool() {
    use shmfetch::testing::server::{Fault, FaultKind};
    let (srv, spec, _) = server_with("small", 8192, 25);
    let big = content_put(&srv, "slow", 40_000);
    let pool = WorkerPool::new(2).unwrap();
    // 400 downloads left open, each known to both workers (two chunks, two
    // slots, the first chunk taken).
    let open: Vec<_> = (0..400)
        .map(|_| {
            let r = ParallelReader::builder(spec.clone())
                .pool(pool.clone())
                .allow_small_chunks()
                .chunk_size(4096)
                .build()
                .unwrap();
            let mut it = r.create_iter(0).unwrap();
            let first = it.next().unwrap().unwrap();
            (it, first)
        })
        .collect();
    // One worker busy for ~4 s on a trickling range.
    srv.inject(Fault::on("slow", FaultKind::Trickle(10_000), 1));
    let slow = ParallelReader::builder(big.clone())
        .pool(pool.clone())
        .chunk_size(1 << 20)
        .build()
        .unwrap();
    let t0 = std::time::Instant::now();
    let slow = std::thread::spawn(move || slow.read_all().map(|b| b.len()));
    std::thread::sleep(std::time::Duration::from_millis(200));
    drop(open); // 400 closes, for both workers
    // The other worker must still serve a new download at once.
    let quick = reader(&spec, &pool).read_all().unwrap();
    assert_eq!(quick.len(), 8192);
    let quick_s = t0.elapsed();
    assert_eq!(slow.join().unwrap().unwrap(), 40_000);
    let slow_s = t0.elapsed();
    assert!(
        quick_s < slow_s / 2,
        "a download waited for another worker's slow range ({quick_s:?} of {slow_s:?})"
    );
    drop(quick);
    drop_pool_and_check(pool);
}

fn content_put(srv: &shmfetch::testing::server::TestServer, name: &str, size: usize) -> SourceSpec {
    srv.put_bytes("b", name, shmfetch::testing::content::bytes(26, size));
    ais_spec(srv, &format!("ais://b/{name}"))
}
