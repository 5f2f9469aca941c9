//! Where one small read_all spends its time (per-call overhead).
//! `AIS_ENDPOINT=... cargo run --release --example percall`
use std::time::Instant;
fn main() -> shmfetch::Result<()> {
    let pool = shmfetch::WorkerPool::new(8)?;
    let (mut tb, mut tr, mut td) = (0.0, 0.0, 0.0);
    let k = 64;
    for round in 0..3 {
        for i in 0..k {
            let spec = if std::env::var("LOCAL").is_ok() {
                shmfetch::SourceSpec::Local {
                    path: format!("/tmp/pc/v1/objects/bench/small-{i}").into(),
                }
            } else {
                shmfetch::SourceSpec::parse(&format!("ais://bench/small-{i}"))?
            };
            let t = Instant::now();
            let r = shmfetch::ParallelReader::builder(spec)
                .pool(pool.clone())
                .build()?;
            let t1 = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let b = r.read_all()?;
            let t2 = t.elapsed().as_secs_f64();
            let t = Instant::now();
            drop(b);
            let t3 = t.elapsed().as_secs_f64();
            if round > 0 {
                tb += t1;
                tr += t2;
                td += t3;
            }
        }
    }
    let n = 2.0 * k as f64;
    println!(
        "per object: build (HEAD) {:.2} ms, read_all {:.2} ms, drop {:.2} ms",
        tb / n * 1e3,
        tr / n * 1e3,
        td / n * 1e3
    );
    Ok(())
}
