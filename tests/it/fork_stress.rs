//! Forking from a multi-threaded parent: many pools created and used from
//! many threads at once while other threads allocate, log and build HTTP
//! clients. A child that touched a lock held by another thread at fork time
//! would hang; the watchdog turns a hang into a failure.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use shmfetch::{ParallelReader, SourceSpec, WorkerPool};

#[test]
fn fork_from_many_threads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let data = shmfetch::testing::content::bytes(90, 300_000);
    std::fs::write(&path, &data).unwrap();
    let (_srv, ais, adata) = server_with("o", 200_000, 91);
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .try_init();
    let stop = Arc::new(AtomicBool::new(false));
    // Noise: threads that keep taking the allocator, stderr, env and
    // tracing locks while pools fork.
    let mut noise = Vec::new();
    for i in 0..3 {
        let stop = Arc::clone(&stop);
        noise.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let v: Vec<Vec<u8>> = (0..64).map(|k| vec![k as u8; 1000 + k * 13]).collect();
                n += v.len() as u64;
                tracing::info!(i, n, "noise");
                let _ = std::env::var("HOME");
                if n.is_multiple_of(640) {
                    let _ = shmfetch::source::HttpClient::default();
                    eprint!("");
                }
            }
        }));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let mut workers = Vec::new();
    for t in 0..8 {
        let tx = tx.clone();
        let path = path.clone();
        let ais = ais.clone();
        let data = data.clone();
        let adata = adata.clone();
        workers.push(std::thread::spawn(move || {
            for round in 0..4 {
                let pool = WorkerPool::new(1 + (t + round) % 4).unwrap();
                let (spec, want) = if round % 2 == 0 {
                    (SourceSpec::Local { path: path.clone() }, &data)
                } else {
                    (ais.clone(), &adata)
                };
                let r = ParallelReader::builder(spec)
                    .pool(pool.clone())
                    .chunk_size(32_768)
                    .build()
                    .unwrap();
                assert_eq!(sha(&r.read_all().unwrap()), sha(want));
                drop(r);
                drop_pool_and_check(pool);
            }
            tx.send(t).unwrap();
        }));
    }
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut done = 0;
    while done < 8 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(_) => done += 1,
            Err(_) => panic!("only {done} of 8 threads finished: a forked child hung"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in workers.into_iter().chain(noise) {
        h.join().unwrap();
    }
}
