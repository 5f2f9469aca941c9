//! The soak test (issue 4): hundreds of downloads with randomized faults,
//! sizes, worker counts, chunk sizes, modes and worker kills. Ignored in
//! the default run; run it with
//!
//! ```sh
//! cargo test --release --test it soak -- --ignored --nocapture
//! ```
//!
//! `SOAK_DOWNLOADS` (default 500) and `SOAK_SEED` (default: the clock)
//! change the run; the seed is printed so a failure can be replayed.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::faults::{ShmDir, quick_pool, quick_retry};
use shmfetch::testing::content;
use shmfetch::testing::server::{Fault, FaultKind, ServerConfig, TestServer};
use shmfetch::{Error, ParallelReader};

/// xorshift64*: reproducible from the printed seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn transient_kind(rng: &mut Rng) -> FaultKind {
    match rng.below(8) {
        0 => FaultKind::Status(500),
        1 => FaultKind::Status(503),
        2 => FaultKind::Status(429),
        3 => FaultKind::ResetAfter(rng.below(20_000)),
        4 => FaultKind::ShortBody(rng.below(20_000)),
        5 => FaultKind::Stall(Duration::from_secs(2)),
        6 => FaultKind::Trickle(2_000_000),
        _ => FaultKind::Status(502),
    }
}

#[test]
#[ignore = "long: run with --ignored (see the module docs)"]
fn soak() {
    let n: usize = std::env::var("SOAK_DOWNLOADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    println!("soak: {n} downloads, SOAK_SEED={seed}");
    let mut rng = Rng(seed);
    let srv = TestServer::start(ServerConfig {
        targets: 3,
        ..Default::default()
    })
    .unwrap();
    let pools = [quick_pool(1), quick_pool(3), quick_pool(8)];
    let dir = ShmDir::new();
    let (mut ok, mut expected_err, mut unexpected, mut corrupted, mut leaked, mut kills) =
        (0, 0, 0, 0, 0, 0);
    let mut bytes = 0u64;
    let t0 = Instant::now();
    for i in 0..n {
        let size = match rng.below(10) {
            0 => rng.below(3) as usize,
            _ => rng.below(3 << 20) as usize,
        };
        let chunk = [4096u64, 65_536, 262_144, 1 << 20][rng.below(4) as usize];
        let pool = &pools[rng.below(3) as usize];
        let name = format!("o{i}");
        let data = content::bytes(seed ^ i as u64, size);
        srv.put_bytes("b", &name, data.clone());
        let mut permanent = false;
        // A permanent fault goes first: the server serves the first matching
        // fault, and a slow-but-successful transient one (Trickle) ahead of
        // it would let the range through.
        if size > 0 && rng.chance(5) {
            permanent = true;
            let kind = if rng.chance(50) {
                FaultKind::Status(500)
            } else {
                FaultKind::IgnoreRange
            };
            // The last byte of a chunk: every resumed request for that
            // chunk still includes it, so the fault cannot be outrun.
            let b = rng.below(size as u64);
            let last = ((b / chunk + 1) * chunk).min(size as u64) - 1;
            srv.inject(Fault::on(&name, kind, 1000).touching(last));
        }
        if size > 0 && rng.chance(50) {
            for _ in 0..1 + rng.below(3) {
                let kind = transient_kind(&mut rng);
                srv.inject(Fault::on(&name, kind, 1).touching(rng.below(size as u64)));
            }
        }
        let reader = ParallelReader::builder(ais_spec(&srv, &format!("ais://b/{name}")))
            .pool(pool.clone())
            .allow_small_chunks()
            .chunk_size(chunk)
            .retry(quick_retry())
            .shm_dir(&dir.0)
            .build()
            .unwrap();
        let killer = (size > 0 && !permanent && rng.chance(4)).then(|| {
            kills += 1;
            let pids = pool.worker_pids();
            let victim = pids[rng.below(pids.len() as u64) as usize];
            let delay = Duration::from_millis(rng.below(30));
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(victim),
                    nix::sys::signal::Signal::SIGKILL,
                );
            })
        });
        let res: Result<Vec<u8>, Error> = if rng.chance(50) {
            reader.read_all().map(|b| b.to_vec())
        } else {
            iter_bytes(&reader, 0)
        };
        if let Some(k) = killer {
            k.join().unwrap();
        }
        match res {
            Ok(got) => {
                bytes += got.len() as u64;
                if got != data {
                    corrupted += 1;
                    eprintln!(
                        "download {i}: CORRUPTED ({} bytes vs {})",
                        got.len(),
                        data.len()
                    );
                }
                if permanent {
                    unexpected += 1;
                    eprintln!(
                        "download {i}: succeeded despite a permanent fault (size {size}, chunk {chunk})"
                    );
                    for q in srv.requests().iter().filter(|q| q.object == name) {
                        eprintln!("  {} {} {:?} -> {}", q.role, q.method, q.range, q.status);
                    }
                } else {
                    ok += 1;
                }
            }
            Err(e) => {
                let fine = permanent
                    && matches!(
                        e.root(),
                        Error::Http { status: 500, .. } | Error::RangeMismatch { .. }
                    );
                if fine {
                    expected_err += 1;
                } else {
                    unexpected += 1;
                    eprintln!("download {i}: unexpected error: {e}");
                }
            }
        }
        drop(reader);
        // Workers of a failed download may still be finishing a range into
        // the (already unlinked) segment; the directory must be empty.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !dir.entries().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        leaked += dir.entries().len();
        for e in dir.entries() {
            let _ = std::fs::remove_file(dir.0.join(e));
        }
    }
    let st = pools.iter().map(|p| p.stats()).fold((0, 0, 0), |a, s| {
        (
            a.0 + s.retries,
            a.1 + s.worker_deaths,
            a.2 + s.resumed_bytes,
        )
    });
    println!(
        "soak: {n} downloads in {:.1} s ({:.1} MiB verified): {ok} correct, {expected_err} failed as expected (permanent faults), \
         {unexpected} unexpected; faults injected {}, retries {}, bytes resumed {}, worker kill attempts {kills}, worker deaths survived {}; \
         corrupted results {corrupted}, leaked segments {leaked}",
        t0.elapsed().as_secs_f64(),
        bytes as f64 / (1 << 20) as f64,
        srv.faults_injected(),
        st.0,
        st.2,
        st.1,
    );
    let pids: Vec<i32> = pools.iter().flat_map(|p| p.worker_pids()).collect();
    drop(pools);
    assert_pids_gone(&pids);
    assert_eq!(corrupted, 0);
    assert_eq!(leaked, 0);
    assert_eq!(unexpected, 0);
}
