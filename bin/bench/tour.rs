//! The default run (`shmfetch-bench` with no source): two worlds side by
//! side, so that a newcomer sees where parallel workers pay and where the
//! machine is the limit.
//!
//! * **A**, a local server that paces every response like one disk or one
//!   cloud stream per request (100 MiB/s, 2 ms to the first byte): N
//!   workers should fetch about N times as fast as one stream.
//! * **B**, the same server unpaced on loopback: one stream already moves
//!   bytes as fast as this machine copies them; workers add little.
//!
//! Every row is compared with **one stream that stores its bytes the same
//! way**: one GET into a `/dev/shm` segment (`read_all` with one worker and
//! one range), not a GET that throws its bytes away.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::median;
use shmfetch::testing::content;
use shmfetch::testing::server::{ServerConfig, TestServer};
use shmfetch::{ParallelReader, SourceOptions, SourceSpec, WorkerPool};

/// Worker counts of the tour.
const WORKERS: [usize; 3] = [2, 4, 8];

struct World {
    label: &'static str,
    what: &'static str,
    cfg: ServerConfig,
    size: u64,
}

/// Medians in MiB/s of one world: the single stream, then per worker
/// count read-all and iter.
struct Figures {
    single: f64,
    rows: Vec<(usize, f64, f64)>,
}

fn mib_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs
}

/// Times `f` `runs` times after `warmup` untimed runs; the median MiB/s.
fn timed(bytes: u64, warmup: usize, runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    let mut secs = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        secs.push(t.elapsed().as_secs_f64());
    }
    Ok(mib_s(bytes, median(secs)))
}

fn measure(w: &World, seed: u64, warmup: usize, runs: usize) -> Result<Figures> {
    let srv = TestServer::start(w.cfg.clone())?;
    let data = content::bytes(seed, usize::try_from(w.size)?);
    let want = content::sha256_hex(&data);
    srv.put_bytes("bench", "object.bin", data);
    let opts = SourceOptions {
        endpoint: Some(srv.endpoint()),
        ..Default::default()
    };
    let spec = SourceSpec::parse_with("ais://bench/object.bin", &opts)?;

    // One stream, stored: one worker, one range, into a segment.
    let one = ParallelReader::builder(spec.clone())
        .pool(WorkerPool::new(1)?)
        .chunk_size(w.size.max(1 << 16))
        .build()?;
    let got = content::sha256_hex(&one.read_all()?);
    if got != want {
        bail!("one stream delivered other bytes than the server holds");
    }
    let single = timed(w.size, 0, runs, || {
        one.read_all().map(drop).map_err(Into::into)
    })?;

    let mut rows = Vec::new();
    for n in WORKERS {
        let reader = ParallelReader::builder(spec.clone())
            .pool(WorkerPool::new(n)?)
            .build()?;
        if content::sha256_hex(&reader.read_all()?) != want {
            bail!("read-all with {n} workers delivered other bytes");
        }
        let all = timed(w.size, warmup, runs, || {
            reader.read_all().map(drop).map_err(Into::into)
        })?;
        let iter = timed(w.size, warmup, runs, || {
            let mut got = 0;
            for c in reader.create_iter(0)? {
                got += c?.len() as u64;
            }
            if got != w.size {
                bail!("iter delivered {got} of {} bytes", w.size);
            }
            Ok(())
        })?;
        rows.push((n, all, iter));
    }
    Ok(Figures { single, rows })
}

fn print(w: &World, f: &Figures) {
    println!("\n{} {}", w.label, w.what);
    println!(
        "{:<22} {:>7} {:>8} {:>13}",
        "mode", "workers", "MiB/s", "vs 1 stream"
    );
    println!(
        "{:<22} {:>7} {:>8.0} {:>13}",
        "1 stream (stored)", 1, f.single, "1.00x"
    );
    for &(n, all, iter) in &f.rows {
        for (mode, v) in [("read-all", all), ("iter", iter)] {
            println!("{:<22} {:>7} {:>8.0} {:>12.2}x", mode, n, v, v / f.single);
        }
    }
}

/// Runs both worlds and says what the figures mean.
pub fn run(warmup: usize, runs: usize) -> Result<()> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let worlds = [
        World {
            label: "A.",
            what: "Like object storage: each request paced at 100 MiB/s, 2 ms to first byte (256 MiB object)",
            cfg: ServerConfig {
                per_request_rate: Some(100 << 20),
                first_byte_latency: Some(Duration::from_millis(2)),
                ..ServerConfig::default()
            },
            size: 256 << 20,
        },
        World {
            label: "B.",
            what: "Unpaced loopback: nothing to wait for, this machine's copying is the limit (512 MiB object)",
            cfg: ServerConfig::default(),
            size: 512 << 20,
        },
    ];
    println!(
        "# shmfetch-bench: a local AIStore-style server, two worlds; {runs} runs each (medians), {cores} cores.\n\
         # Every row is compared with one stream that stores its bytes the same way (one GET into /dev/shm)."
    );
    let mut figures = Vec::new();
    for (i, w) in worlds.iter().enumerate() {
        let f = measure(w, 0xBE7C + i as u64, warmup, runs)?;
        print(w, &f);
        figures.push(f);
    }
    let at8 = |f: &Figures| {
        f.rows
            .iter()
            .find(|r| r.0 == 8)
            .map(|&(_, a, i)| (a / f.single, i / f.single))
            .unwrap_or((f64::NAN, f64::NAN))
    };
    let (a_all, a_iter) = at8(&figures[0]);
    let (b_all, b_iter) = at8(&figures[1]);
    println!(
        "\nWhat this means:\n\
         - A: when each request is limited (a disk, a cloud stream), 8 workers fetch {a_all:.1}x (read-all) \
         and {a_iter:.1}x (iter) as fast as one stream; 8x is the ideal.\n\
         - B: on unpaced loopback one stream already copies at {:.0} MiB/s: {cores} cores, not the network, \
         are the limit. 8 workers give {b_all:.1}x (read-all, which like the one stream faults in the \
         pages of a new segment) and {b_iter:.1}x (iter, which reuses its ring's pages).\n\
         - Measure your own storage: --endpoint (AIStore), --url s3://… or https://…; \
         --server-rate/--server-latency-ms/--size for one local world of your choosing.",
        figures[1].single
    );
    Ok(())
}
