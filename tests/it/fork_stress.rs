//! Forking from a multi-threaded parent: many pools created and used from
//! many threads at once while other threads resolve host names, allocate,
//! log and build HTTP clients. A child that touched a lock held by another
//! thread at fork time (`getaddrinfo`'s resolver and NSS locks among them)
//! would hang; the watchdogs turn a hang into a failure.
//!
//! The windows in which another thread holds such a lock are short, and
//! shorter still in an optimised build, where a hang is also likelier to
//! show up as a timing change. Run them in release mode too:
//!
//! ```sh
//! cargo test --release --test it fork_stress
//! ```

use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use shmfetch::source::HttpClient;
use shmfetch::testing::content;
use shmfetch::testing::server::{ServerConfig, TestServer};
use shmfetch::{ParallelReader, SourceOptions, SourceSpec, WorkerPool};

/// Waits for `n` threads to report on `rx`, failing after `limit`.
fn wait_all(rx: &std::sync::mpsc::Receiver<usize>, n: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    for done in 0..n {
        let left = deadline.saturating_duration_since(Instant::now());
        if rx.recv_timeout(left).is_err() {
            panic!("only {done} of {n} threads finished within {limit:?}: a forked child hung");
        }
    }
}

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
                    .allow_small_chunks()
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
    wait_all(&rx, 8, Duration::from_secs(120));
    stop.store(true, Ordering::Relaxed);
    for h in workers.into_iter().chain(noise) {
        h.join().unwrap();
    }
}

/// A test server reached by the name `localhost` only: its gateway's URL
/// and its redirects name `localhost`, so every worker connection needs a
/// name resolved, and the children must get the addresses from their
/// coordinator (handed over with each download, or asked for).
fn localhost_server(object: &str, size: usize, seed: u64) -> (TestServer, Vec<u8>) {
    let srv = TestServer::start(ServerConfig {
        redirect_host: Some("localhost".into()),
        ..ServerConfig::default()
    })
    .expect("server starts");
    let data = content::bytes(seed, size);
    srv.put_bytes("b", object, data.clone());
    (srv, data)
}

fn by_name(url: &str) -> String {
    url.replacen("127.0.0.1", "localhost", 1)
}

fn ais_by_name(srv: &TestServer, object: &str) -> SourceSpec {
    let opts = SourceOptions {
        endpoint: Some(by_name(&srv.endpoint())),
        token: None,
        s3: Default::default(),
    };
    SourceSpec::parse_with(&format!("ais://b/{object}"), &opts).expect("valid spec")
}

/// The same stress with names: 8 threads × 20 rounds create pools and
/// download, by the name `localhost`, through the gateway's redirect and
/// straight from a target, while other threads call `getaddrinfo` in a
/// tight loop, HEAD the server by name (ureq's resolver in the parent),
/// allocate, log and build HTTP clients.
#[test]
fn fork_while_resolving_names() {
    const THREADS: usize = 8;
    const ROUNDS: usize = 20;
    let t0 = Instant::now();
    let (srv, data) = localhost_server("o", 200_000, 93);
    let srv = Arc::new(srv);
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .try_init();
    let stop = Arc::new(AtomicBool::new(false));
    let lookups = Arc::new(AtomicU64::new(0));
    let mut noise = Vec::new();
    // getaddrinfo in a tight loop: resolver and NSS locks taken all the time.
    for _ in 0..2 {
        let stop = Arc::clone(&stop);
        let lookups = Arc::clone(&lookups);
        noise.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let a: Vec<_> = ("localhost", 80).to_socket_addrs().unwrap().collect();
                assert!(!a.is_empty());
                lookups.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Allocation, tracing, environment, new HTTP clients and HEADs by name.
    for i in 0..2 {
        let stop = Arc::clone(&stop);
        let spec = ais_by_name(&srv, "o");
        noise.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let v: Vec<Vec<u8>> = (0..64).map(|k| vec![k as u8; 1000 + k * 13]).collect();
                n += v.len() as u64;
                tracing::info!(i, n, "noise");
                let _ = std::env::var("HOME");
                if n.is_multiple_of(640) {
                    let client = HttpClient::default();
                    let meta = spec.open(&client).unwrap().meta().unwrap();
                    assert_eq!(meta.size, 200_000);
                }
            }
        }));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let mut workers = Vec::new();
    for t in 0..THREADS {
        let tx = tx.clone();
        let srv = Arc::clone(&srv);
        let data = data.clone();
        workers.push(std::thread::spawn(move || {
            let ais = ais_by_name(&srv, "o");
            let direct = SourceSpec::Http {
                url: by_name(&srv.direct_url("b", "o")),
            };
            for round in 0..ROUNDS {
                let pool = WorkerPool::new(1 + (t + round) % 4).unwrap();
                let spec = if (t + round) % 3 == 2 {
                    direct.clone()
                } else {
                    ais.clone()
                };
                let r = ParallelReader::builder(spec)
                    .pool(pool.clone())
                    .allow_small_chunks()
                    .chunk_size(32_768)
                    .build()
                    .unwrap();
                let got = if round % 2 == 0 {
                    r.read_all().unwrap().to_vec()
                } else {
                    iter_bytes(&r, 0).unwrap()
                };
                assert_eq!(sha(&got), sha(&data), "thread {t} round {round}");
                drop(r);
                drop_pool_and_check(pool);
            }
            tx.send(t).unwrap();
        }));
    }
    drop(tx);
    wait_all(&rx, THREADS, Duration::from_secs(120));
    stop.store(true, Ordering::Relaxed);
    for h in workers.into_iter().chain(noise) {
        h.join().unwrap();
    }
    assert!(lookups.load(Ordering::Relaxed) > 0);
    eprintln!(
        "{} pools, {} getaddrinfo calls meanwhile, in {:?}",
        THREADS * ROUNDS,
        lookups.load(Ordering::Relaxed),
        t0.elapsed()
    );
}

/// A redirect to a name the coordinator did not resolve beforehand (the
/// gateway is given as an IP literal, its redirects name `localhost`):
/// the workers ask their coordinator for it, and every byte arrives.
#[test]
fn redirect_to_a_name_resolved_on_request() {
    let (srv, data) = localhost_server("r", 300_000, 94);
    let spec = ais_spec(&srv, "ais://b/r");
    assert!(srv.endpoint().starts_with("http://127.0.0.1:"));
    let pool = WorkerPool::new(3).unwrap();
    let r = ParallelReader::builder(spec)
        .pool(pool.clone())
        .allow_small_chunks()
        .chunk_size(40_000)
        .build()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let all = r.read_all().unwrap().to_vec();
        let streamed = iter_bytes(&r, 1234).unwrap();
        tx.send(0).unwrap();
        (all, streamed)
    });
    wait_all(&rx, 1, Duration::from_secs(60));
    let (all, streamed) = h.join().unwrap();
    assert_eq!(sha(&all), sha(&data));
    assert_eq!(sha(&streamed), sha(&data[1234..]));
    let to_targets = srv
        .requests()
        .iter()
        .filter(|q| q.role.starts_with("target") && q.method == "GET")
        .count();
    assert!(to_targets >= 16, "{to_targets} ranged GETs reached targets");
    assert!(srv.redirects() >= 16);
    assert_eq!(pool.stats().worker_deaths, 0);
    drop_pool_and_check(pool);
}
