//! `shmfetch-bench --put`: upload throughput, one request from this
//! process (the single stream) against N workers sending parts from shared
//! memory, to the same destination in the same run.

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result};
use shmfetch::store::{Upload, UploadOptions, put_single};
use shmfetch::testing::content;
use shmfetch::{SourceOptions, SourceSpec, WorkerPool};

/// What `--put` measures.
pub struct PutArgs {
    /// s3://BUCKET/PREFIX, ais://BUCKET/PREFIX or a local directory.
    pub dest: String,
    pub opts: SourceOptions,
    pub size: u64,
    pub workers: Vec<usize>,
    pub part_size: u64,
    pub runs: usize,
    pub warmup: usize,
    pub json: bool,
}

fn spec_of(a: &PutArgs, name: &str) -> Result<SourceSpec> {
    let base = a.dest.trim_end_matches('/');
    Ok(SourceSpec::parse_with(&format!("{base}/{name}"), &a.opts)?)
}

/// Removes what a run stored (object stores keep no copies between runs).
fn remove(fs: &shmfetch::store::CheckpointFs, spec: &SourceSpec) {
    let _ = fs.rm_file(&spec.display_name());
}

pub fn run(a: PutArgs) -> Result<()> {
    let size = usize::try_from(a.size).context("--size too large")?;
    let data = content::bytes(0x9u64 ^ 0x5e7, size);
    let fs = shmfetch::store::CheckpointFs::new(WorkerPool::new(1)?, a.opts.clone());
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mib_s = |secs: f64| a.size as f64 / (1 << 20) as f64 / secs.max(1e-9);
    let mut rows: Vec<(String, usize, f64)> = Vec::new();
    // The single stream: one PUT of the whole object from memory.
    let mut secs = Vec::new();
    for i in 0..a.warmup + a.runs {
        let spec = spec_of(&a, &format!("bench-put-single-{i}"))?;
        let t = Instant::now();
        put_single(&spec, &data)?;
        if i >= a.warmup {
            secs.push(t.elapsed().as_secs_f64());
        }
        remove(&fs, &spec);
    }
    let base = mib_s(median(secs));
    rows.push(("single PUT".into(), 1, base));
    for &w in &a.workers {
        let pool = WorkerPool::new(w)?;
        let mut secs = Vec::new();
        for i in 0..a.warmup + a.runs {
            let spec = spec_of(&a, &format!("bench-put-{w}-{i}"))?;
            let t = Instant::now();
            let mut up = Upload::new(
                &pool,
                spec.clone(),
                UploadOptions {
                    part_size: a.part_size,
                    ..Default::default()
                },
            )?;
            up.write_all(&data)?;
            up.finish()?;
            if i >= a.warmup {
                secs.push(t.elapsed().as_secs_f64());
            }
            remove(&fs, &spec);
        }
        rows.push(("put".into(), w, mib_s(median(secs))));
    }
    if !a.json {
        println!(
            "# upload to {}: {} bytes, parts of {} bytes, {} runs each (median), {} cores",
            a.dest,
            a.size,
            a.part_size,
            a.runs,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!(
            "{:<11} {:>7} {:>10} {:>10}",
            "mode", "workers", "MiB/s", "vs single"
        );
    }
    for (mode, w, m) in rows {
        if a.json {
            println!(
                "{}",
                serde_json::json!({"mode": mode, "workers": w, "part_size": a.part_size,
                    "bytes": a.size, "mib_per_s": m, "speedup_vs_single": m / base})
            );
        } else {
            println!("{mode:<11} {w:>7} {m:>10.0} {:>9.2}x", m / base);
        }
    }
    Ok(())
}
