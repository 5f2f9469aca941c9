//! `shmfetch-bench --dcp`: a selective checkpoint load (a fraction of the
//! tensors) with each reader kind, side by side, medians of time, bytes
//! fetched and requests.

use std::time::Instant;

use anyhow::{Context, Result};
use shmfetch::dcp::{Checkpoint, MaxGap, ReaderKind, export_safetensors};
use shmfetch::testing::server::{ServerConfig, TestServer};
use shmfetch::{SourceOptions, WorkerPool};

pub struct DcpArgs {
    pub ckpt: String,
    pub fraction: f64,
    pub workers: usize,
    pub runs: usize,
    pub json: bool,
    pub server: ServerConfig,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(a: DcpArgs) -> Result<()> {
    let mut _server = None;
    let mut opts = SourceOptions::from_env()?;
    let ckpt_loc = if a.ckpt == "fixture" {
        // The repository's real PyTorch checkpoint, behind a local
        // AIStore-style server (gateway redirecting to targets).
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dcp-small");
        let srv = TestServer::start(a.server.clone())?;
        srv.put_files("ckpt", "dcp-small/", &dir)
            .with_context(|| format!("reading {}", dir.display()))?;
        opts.endpoint = Some(srv.endpoint());
        _server = Some(srv);
        "ais://ckpt/dcp-small/".to_string()
    } else {
        a.ckpt.clone()
    };
    let pool = WorkerPool::new(a.workers)?;
    let md = Checkpoint::open_with(&ckpt_loc, opts.clone(), pool.clone())?.metadata()?;
    let names: Vec<&str> = md.tensors().map(|(f, _)| f).collect();
    let k = ((names.len() as f64 * a.fraction).ceil() as usize).clamp(1, names.len());
    // Evenly spread over the sorted names, so the pick is not one file's.
    let only: Vec<String> = (0..k)
        .map(|i| names[i * names.len() / k].to_string())
        .collect();
    let tensor_bytes: u64 = md
        .tensors()
        .filter(|(f, _)| only.iter().any(|o| o == f))
        .map(|(_, t)| t.nbytes())
        .sum();
    eprintln!(
        "{ckpt_loc}{}: exporting {k} of {} tensors ({tensor_bytes} bytes): {}; checkpoint holds {} bytes; {} workers, {} runs each, kinds alternating",
        if _server.is_some() {
            format!(
                " (local server: first byte {:?}, rate {:?} B/s per request)",
                a.server.first_byte_latency, a.server.per_request_rate
            )
        } else {
            String::new()
        },
        names.len(),
        only.join(", "),
        md.stored_bytes(),
        a.workers,
        a.runs
    );
    let kinds = [
        ReaderKind::Sequential,
        ReaderKind::RangeBased {
            buffer_size: shmfetch::dcp::DEFAULT_BUFFER_SIZE,
        },
        ReaderKind::DcpOptimized {
            max_gap: MaxGap::default(),
        },
    ];
    let out = std::env::temp_dir().join(format!(
        "shmfetch-bench-dcp-{}.safetensors",
        std::process::id()
    ));
    let mut secs = vec![Vec::new(); kinds.len()];
    let mut fetched = vec![(0u64, 0u64); kinds.len()];
    for run in 0..a.runs + 1 {
        for (i, kind) in kinds.iter().enumerate() {
            let start = Instant::now();
            let ckpt = Checkpoint::open_with(&ckpt_loc, opts.clone(), pool.clone())?;
            let md = ckpt.metadata()?;
            let rep = export_safetensors(&ckpt, &md, *kind, &only, &out, &mut |_, _| {})?;
            let t = start.elapsed().as_secs_f64();
            if run > 0 {
                // Run 0 warms up (connections, page cache).
                secs[i].push(t);
            }
            fetched[i] = (rep.bytes_fetched, rep.requests);
        }
    }
    let _ = std::fs::remove_file(&out);
    let seq = median(&mut secs[0].clone());
    if !a.json {
        println!(
            "{:<40} {:>10} {:>12} {:>9} {:>10}",
            "reader", "median ms", "bytes", "requests", "vs seq"
        );
    }
    for (i, kind) in kinds.iter().enumerate() {
        let m = median(&mut secs[i]);
        let (bytes, requests) = fetched[i];
        if a.json {
            println!(
                "{}",
                serde_json::json!({"reader": kind.to_string(), "median_s": m, "bytes_fetched": bytes,
                    "requests": requests, "tensors": k, "tensor_bytes": tensor_bytes,
                    "checkpoint_bytes": md.stored_bytes(), "runs": a.runs})
            );
        } else {
            println!(
                "{:<40} {:>10.2} {:>12} {:>9} {:>9.2}x",
                kind.to_string(),
                m * 1e3,
                bytes,
                requests,
                seq / m
            );
        }
    }
    Ok(())
}
