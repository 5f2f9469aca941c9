//! `shmfetch-bench`: single-stream GET against `read_all` and `create_iter`
//! over a grid of worker counts, against an AIStore endpoint, any URL, or
//! (with neither) a local AIStore-style server with a generated object.

use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use shmfetch::testing::content;
use shmfetch::testing::server::{ServerConfig, TestServer};
use shmfetch::{ParallelReader, SourceOptions, SourceSpec, WorkerPool};

/// Benchmark shmfetch against a single-stream GET.
#[derive(Debug, Parser)]
#[command(name = "shmfetch-bench", version, about)]
struct Args {
    /// AIStore gateway (default: AIS_ENDPOINT; with neither this nor --url a
    /// local server is started).
    #[arg(long)]
    endpoint: Option<String>,
    /// Bucket of the object (with --endpoint).
    #[arg(long, default_value = "bench")]
    bucket: String,
    /// Object name (with --endpoint).
    #[arg(long)]
    object: Option<String>,
    /// Any http(s) URL that honours Range, instead of AIStore.
    #[arg(long)]
    url: Option<String>,
    /// Worker counts to try, comma-separated.
    #[arg(long, default_value = "1,2,4,8,16", value_delimiter = ',')]
    workers: Vec<usize>,
    /// Chunk size (default: the server's hint, else 8MiB).
    #[arg(long, value_parser = parse_size)]
    chunk_size: Option<u64>,
    /// Timed runs per configuration (after one warm-up).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Size of the generated object for the local server.
    #[arg(long, value_parser = parse_size, default_value = "1GiB")]
    size: u64,
    /// Modes to run, comma-separated: get, read-all, iter.
    #[arg(long, default_value = "get,read-all,iter", value_delimiter = ',')]
    modes: Vec<String>,
    /// Check the sha256 of what every mode delivered against a plain GET.
    #[arg(long)]
    verify: bool,
    /// One JSON object per line and row instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_size(s: &str) -> std::result::Result<u64, String> {
    shmfetch::range::parse_size(s).map_err(|e| e.to_string())
}

struct Row {
    mode: &'static str,
    workers: usize,
    chunk_size: u64,
    bytes: u64,
    secs: Vec<f64>,
    sha: Option<String>,
}

impl Row {
    fn median(&self) -> f64 {
        let mut v = self.secs.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            return f64::NAN;
        }
        let m = v.len() / 2;
        if v.len() % 2 == 1 {
            v[m]
        } else {
            (v[m - 1] + v[m]) / 2.0
        }
    }
    fn mib_s(&self, s: f64) -> f64 {
        self.bytes as f64 / (1 << 20) as f64 / s
    }
}

/// One plain streaming GET (following redirects), bytes discarded after
/// hashing when `hash` is set.
fn plain_get(url: &str, token: Option<&str>, hash: bool) -> Result<(u64, Option<String>)> {
    use sha2::Digest;
    let agent: ureq::Agent = ureq::Agent::config_builder().build().new_agent();
    let mut req = agent.get(url);
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let resp = req.call().with_context(|| format!("GET {url}"))?;
    let mut r = resp.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    let mut h = sha2::Sha256::new();
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            break;
        }
        if hash {
            h.update(&buf[..k]);
        }
        n += k as u64;
    }
    Ok((n, hash.then(|| hex::encode(h.finalize()))))
}

fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(shmfetch::log_filter("shmfetch=warn"))
        .with_writer(std::io::stderr)
        .init();
    let env_ep = std::env::var("AIS_ENDPOINT").ok().filter(|s| !s.is_empty());
    let mut _server = None;
    let (spec, get_url, token, where_) = if let Some(url) = &args.url {
        let spec = SourceSpec::parse_with(url, &SourceOptions::default())?;
        (spec, url.clone(), None, url.clone())
    } else if let Some(ep) = args.endpoint.clone().or(env_ep) {
        let object = args
            .object
            .clone()
            .context("--object is needed with an AIStore endpoint")?;
        let mut opts = SourceOptions::from_env()?;
        opts.endpoint = Some(ep.clone());
        let spec = SourceSpec::parse_with(&format!("ais://{}/{}", args.bucket, object), &opts)?;
        let url = shmfetch::source::aistore::object_url(&ep, &args.bucket, &object, "ais");
        let token = std::env::var("AIS_AUTHN_TOKEN").ok();
        (
            spec,
            url,
            token,
            format!("{ep} ais://{}/{object}", args.bucket),
        )
    } else {
        eprintln!(
            "no endpoint given: starting a local AIStore-style server with a {}-byte generated object",
            args.size
        );
        let srv = TestServer::start(ServerConfig::default())?;
        let size = usize::try_from(args.size).context("--size too large")?;
        srv.put_bytes("bench", "object.bin", content::bytes(0xBE7C, size));
        let opts = SourceOptions {
            endpoint: Some(srv.endpoint()),
            token: None,
        };
        let spec = SourceSpec::parse_with("ais://bench/object.bin", &opts)?;
        let url =
            shmfetch::source::aistore::object_url(&srv.endpoint(), "bench", "object.bin", "ais");
        let w = format!("local server {} ais://bench/object.bin", srv.endpoint());
        _server = Some(srv);
        (spec, url, None, w)
    };
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let mut rows: Vec<Row> = Vec::new();
    let want = |m: &str| args.modes.iter().any(|x| x == m);
    let mut reference_sha = None;
    let mut size = 0;
    if want("get") || args.verify {
        let (n, sha) = plain_get(&get_url, token.as_deref(), args.verify)?; // warm-up
        size = n;
        reference_sha = sha;
        if want("get") {
            let mut row = Row {
                mode: "get",
                workers: 1,
                chunk_size: n,
                bytes: n,
                secs: vec![],
                sha: None,
            };
            for _ in 0..args.runs {
                let t = Instant::now();
                let (m, _) = plain_get(&get_url, token.as_deref(), false)?;
                row.secs.push(t.elapsed().as_secs_f64());
                if m != n {
                    bail!("GET returned {m} bytes, then {n}");
                }
            }
            row.sha = reference_sha.clone();
            rows.push(row);
        }
    }
    for &w in &args.workers {
        let pool = WorkerPool::new(w)?;
        let mut b = ParallelReader::builder(spec.clone()).pool(pool);
        if let Some(c) = args.chunk_size {
            b = b.chunk_size(c);
        }
        let reader = b.build()?;
        size = reader.size();
        if want("read-all") {
            let mut row = Row {
                mode: "read-all",
                workers: w,
                chunk_size: reader.chunk_size(),
                bytes: size,
                secs: vec![],
                sha: None,
            };
            drop(reader.read_all()?); // warm-up
            for i in 0..args.runs {
                let t = Instant::now();
                let buf = reader.read_all()?;
                row.secs.push(t.elapsed().as_secs_f64());
                if args.verify && i == 0 {
                    row.sha = Some(content::sha256_hex(&buf));
                }
            }
            rows.push(row);
        }
        if want("iter") {
            use sha2::Digest;
            let mut row = Row {
                mode: "iter",
                workers: w,
                chunk_size: reader.chunk_size(),
                bytes: size,
                secs: vec![],
                sha: None,
            };
            let consume = |hash: bool| -> Result<(u64, Option<String>)> {
                let mut h = sha2::Sha256::new();
                let mut n = 0;
                for c in reader.create_iter(0)? {
                    let c = c?;
                    if hash {
                        h.update(&*c);
                    }
                    n += c.len() as u64;
                }
                Ok((n, hash.then(|| hex::encode(h.finalize()))))
            };
            consume(false)?;
            for i in 0..args.runs {
                let t = Instant::now();
                let (n, _) = consume(false)?;
                row.secs.push(t.elapsed().as_secs_f64());
                if n != size {
                    bail!("iter delivered {n} of {size} bytes");
                }
                if args.verify && i == 0 {
                    row.sha = consume(true)?.1;
                }
            }
            rows.push(row);
        }
    }
    let base = rows
        .iter()
        .find(|r| r.mode == "get")
        .map(|r| r.mib_s(r.median()));
    if !args.json {
        println!(
            "# {where_}: {size} bytes, {} runs each (median, min-max), {} cores",
            args.runs,
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        );
        println!(
            "{:<9} {:>7} {:>11} {:>10} {:>19} {:>8}{}",
            "mode",
            "workers",
            "chunk",
            "MiB/s",
            "min-max MiB/s",
            "vs get",
            if args.verify { "  sha256" } else { "" }
        );
    }
    let mut bad = false;
    for r in &rows {
        let med = r.mib_s(r.median());
        let lo = r.secs.iter().cloned().fold(f64::MIN, f64::max);
        let hi = r.secs.iter().cloned().fold(f64::MAX, f64::min);
        let speedup = base.map(|b| med / b);
        let verdict = match (&r.sha, &reference_sha) {
            (Some(a), Some(b)) if a == b => "ok",
            (Some(_), Some(_)) => {
                bad = true;
                "MISMATCH"
            }
            _ => "-",
        };
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "mode": r.mode, "workers": r.workers, "chunk_size": r.chunk_size, "bytes": r.bytes,
                    "median_s": r.median(), "mib_per_s": med, "min_mib_per_s": r.mib_s(lo), "max_mib_per_s": r.mib_s(hi),
                    "speedup_vs_get": speedup, "runs": r.secs.len(), "verified": if args.verify { Some(verdict) } else { None },
                })
            );
        } else {
            println!(
                "{:<9} {:>7} {:>11} {:>10.0} {:>9.0}-{:<9.0} {:>8}{}",
                r.mode,
                r.workers,
                r.chunk_size,
                med,
                r.mib_s(lo),
                r.mib_s(hi),
                speedup
                    .map(|s| format!("{s:.2}x"))
                    .unwrap_or_else(|| "-".into()),
                if args.verify {
                    format!("  {verdict}")
                } else {
                    String::new()
                }
            );
        }
    }
    if bad {
        bail!("some mode delivered different bytes than a plain GET");
    }
    let _ = Duration::ZERO;
    Ok(())
}
