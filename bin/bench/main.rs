//! `shmfetch-bench`: single-stream GET against `read_all` and `create_iter`
//! over a grid of worker counts, against an AIStore endpoint, any URL, or
//! (with neither) a local AIStore-style server with a generated object.

mod dcp;
mod interrupt;
#[path = "../log_filter.rs"]
mod log_filter;
mod put;
#[path = "../s3_args.rs"]
mod s3_args;
mod tour;

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
    /// An s3://BUCKET/KEY or any http(s) URL that honours Range, instead
    /// of AIStore.
    #[arg(long)]
    url: Option<String>,
    #[command(flatten)]
    s3: s3_args::S3Args,
    /// Worker counts to try, comma-separated.
    #[arg(long, default_value = "1,2,4,8,16", value_delimiter = ',')]
    workers: Vec<usize>,
    /// Chunk size (default: the server's hint, else 8MiB).
    #[arg(long, value_parser = parse_size)]
    chunk_size: Option<u64>,
    /// Timed runs per configuration.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Untimed warm-up runs before them.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
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
    /// Draw MiB/s against workers per mode into this SVG file.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    /// Per-call overhead mode: fetch K objects of --size with one reused
    /// pool per worker count and report objects/s. With an endpoint, the
    /// objects are OBJECT-0 … OBJECT-(K-1).
    #[arg(long)]
    objects: Option<usize>,
    /// With --objects: how many objects are read at once, each by its own
    /// thread, all on the one pool (1: one after the other).
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// DCP mode: export --dcp-fraction of a checkpoint's tensors with each
    /// reader kind (sequential, range_based, dcp_optimized) and compare time,
    /// bytes fetched and requests. CKPT is ais://BUCKET/PREFIX/, an http(s)
    /// URL ending in /, a directory, or "fixture" (the repository's PyTorch
    /// checkpoint behind a local AIStore-style server).
    #[arg(long, value_name = "CKPT", num_args = 0..=1, default_missing_value = "fixture")]
    dcp: Option<String>,
    /// Local server only: milliseconds each target waits before answering a
    /// GET (object storage's time to first byte).
    #[arg(long, default_value_t = 0.0)]
    server_latency_ms: f64,
    /// Local server only: milliseconds the gateway waits before each
    /// redirect (a real proxy's hop to a cold target).
    #[arg(long, default_value_t = 0.0)]
    server_redirect_ms: f64,
    /// Local server only: pace each response at this many bytes/s (e.g.
    /// 200MiB), like one disk or stream per request. Default: unpaced.
    #[arg(long, value_parser = parse_size)]
    server_rate: Option<u64>,
    /// Fraction of the tensors the DCP mode exports.
    #[arg(long, default_value_t = 0.1)]
    dcp_fraction: f64,
    /// Upload mode: store --size bytes (default here: 256MiB) under DEST
    /// (s3://BUCKET/PREFIX, ais://BUCKET/PREFIX or a local directory) with
    /// one PUT, then with each worker count's parallel parts; each object
    /// is removed after its run. Without DEST, a local AIStore-style server
    /// that takes each request's body at --server-rate (default 100MiB).
    #[arg(long, value_name = "DEST", num_args = 0..=1, default_missing_value = "local")]
    put: Option<String>,
    /// Upload mode: bytes per part.
    #[arg(long, value_parser = parse_size, default_value = "8MiB")]
    part_size: u64,
    /// AIStore: read-all and iter read straight from the target that holds
    /// the object (cluster map, no redirect); with --objects both ways run
    /// in the same run, alternating.
    #[arg(long)]
    direct: bool,
}

/// The local server's settings from the command line.
fn server_config(args: &Args) -> ServerConfig {
    ServerConfig {
        first_byte_latency: Some(Duration::from_secs_f64(
            args.server_latency_ms.max(0.0) / 1e3,
        ))
        .filter(|d| !d.is_zero()),
        per_request_rate: args.server_rate,
        redirect_latency: Some(Duration::from_secs_f64(
            args.server_redirect_ms.max(0.0) / 1e3,
        ))
        .filter(|d| !d.is_zero()),
        ..ServerConfig::default()
    }
}

fn parse_size(s: &str) -> std::result::Result<u64, String> {
    shmfetch::range::parse_size(s).map_err(|e| e.to_string())
}

/// The median of `v` (NaN when empty).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
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
        median(self.secs.clone())
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
    // A presigned S3 URL carries a signature (and maybe a session token):
    // errors name the URL without its query.
    let shown = url.split('?').next().unwrap_or_default();
    let resp = req.call().with_context(|| format!("GET {shown}"))?;
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

/// `--objects`: K objects per worker count, `read_all` each, `--in-flight`
/// of them at once on one pool.
fn per_call(args: &Args) -> Result<()> {
    let k = args.objects.unwrap_or(0);
    if k == 0 {
        bail!("--objects must be at least 1");
    }
    let env_ep = std::env::var("AIS_ENDPOINT").ok().filter(|s| !s.is_empty());
    let mut _server = None;
    let (opts, bucket, prefix) = if let Some(ep) = args.endpoint.clone().or(env_ep) {
        let mut o = SourceOptions::from_env()?;
        o.endpoint = Some(ep);
        let prefix = args
            .object
            .clone()
            .context("--object (the name prefix) is needed with an endpoint")?;
        (o, args.bucket.clone(), prefix)
    } else {
        let srv = TestServer::start(server_config(args))?;
        let size = usize::try_from(args.size).context("--size too large")?;
        for i in 0..k {
            srv.put_bytes(
                "bench",
                &format!("small-{i}"),
                content::bytes(i as u64, size),
            );
        }
        let o = SourceOptions {
            endpoint: Some(srv.endpoint()),
            token: None,
            s3: Default::default(),
        };
        _server = Some(srv);
        (o, "bench".to_string(), "small".to_string())
    };
    let specs: Vec<SourceSpec> = (0..k)
        .map(|i| SourceSpec::parse_with(&format!("ais://{bucket}/{prefix}-{i}"), &opts))
        .collect::<shmfetch::Result<_>>()?;
    let ways: &[bool] = if args.direct {
        &[false, true]
    } else {
        &[false]
    };
    for &w in &args.workers {
        // read_all after read_all: the pool recycles the last buffer's segment.
        let pool = recycling_pool(w)?;
        let mut secs = vec![Vec::new(); ways.len()];
        let mut bytes = 0u64;
        for _ in 0..args.runs {
            for (way, &direct) in ways.iter().enumerate() {
                let read = |spec: &SourceSpec| -> Result<u64> {
                    let mut b = ParallelReader::builder(spec.clone())
                        .pool(pool.clone())
                        .direct(direct);
                    if let Some(c) = args.chunk_size {
                        b = b.chunk_size(c);
                    }
                    Ok(b.build()?.read_all()?.len() as u64)
                };
                let next = std::sync::atomic::AtomicUsize::new(0);
                let t = Instant::now();
                // Each thread takes the next object until none is left.
                let per_thread: Vec<Result<u64>> = std::thread::scope(|s| {
                    let threads: Vec<_> = (0..args.in_flight.min(k))
                        .map(|_| {
                            s.spawn(|| {
                                let mut n = 0;
                                loop {
                                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    let Some(spec) = specs.get(i) else {
                                        return Ok(n);
                                    };
                                    n += read(spec)?;
                                }
                            })
                        })
                        .collect();
                    threads
                        .into_iter()
                        .map(|h| {
                            h.join().unwrap_or_else(|_| {
                                Err(anyhow::anyhow!("a reader thread panicked"))
                            })
                        })
                        .collect()
                });
                secs[way].push(t.elapsed().as_secs_f64());
                bytes = per_thread.into_iter().sum::<Result<u64>>()?;
            }
        }
        for (way, &direct) in ways.iter().enumerate() {
            let med = median(secs[way].clone());
            let ops = k as f64 / med;
            let mode = if direct {
                "read-all-objects-direct"
            } else {
                "read-all-objects"
            };
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"mode": mode, "workers": w, "objects": k, "in_flight": args.in_flight.min(k), "bytes": bytes,
                        "median_s": med, "objects_per_s": ops, "mib_per_s": bytes as f64 / (1 << 20) as f64 / med})
                );
            } else {
                println!(
                    "read-all x{k} objects ({bytes} bytes), {w} workers, {} in flight, {}: {ops:.1} objects/s, {:.0} MiB/s (median of {})",
                    args.in_flight.min(k),
                    if direct {
                        "direct to target"
                    } else {
                        "through the gateway"
                    },
                    bytes as f64 / (1 << 20) as f64 / med,
                    secs[way].len()
                );
            }
        }
    }
    Ok(())
}

/// Writes a line chart of MiB/s against workers, one line per mode.
fn plot(rows: &[Row], path: &std::path::Path, title: &str) -> Result<()> {
    let (w, h, l, r, t, b) = (760.0, 440.0, 70.0, 150.0, 40.0, 50.0);
    let xs: Vec<usize> = {
        let mut v: Vec<usize> = rows
            .iter()
            .filter(|r| r.mode != "get")
            .map(|r| r.workers)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let ymax = rows.iter().map(|r| r.mib_s(r.median())).fold(1.0, f64::max) * 1.1;
    let xpos = |wk: usize| {
        let i = xs.iter().position(|&x| x == wk).unwrap_or(0) as f64;
        l + i * (w - l - r) / ((xs.len().max(2) - 1) as f64)
    };
    let ypos = |v: f64| t + (h - t - b) * (1.0 - v / ymax);
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\n\
         <rect width='100%' height='100%' fill='white'/>\n<text x='{l}' y='22' font-size='14'>{title}</text>\n"
    );
    for i in 0..=5 {
        let v = ymax * i as f64 / 5.0;
        let y = ypos(v);
        s += &format!(
            "<line x1='{l}' y1='{y:.1}' x2='{:.1}' y2='{y:.1}' stroke='#ddd'/><text x='{:.1}' y='{:.1}' text-anchor='end'>{v:.0}</text>\n",
            w - r,
            l - 6.0,
            y + 4.0
        );
    }
    for &x in &xs {
        s += &format!(
            "<text x='{:.1}' y='{:.1}' text-anchor='middle'>{x}</text>\n",
            xpos(x),
            h - b + 18.0
        );
    }
    s += &format!(
        "<text x='{:.1}' y='{:.1}' text-anchor='middle'>workers</text>\n",
        (l + w - r) / 2.0,
        h - 10.0
    );
    s += &format!(
        "<text x='16' y='{:.1}' transform='rotate(-90 16 {:.1})' text-anchor='middle'>MiB/s (median)</text>\n",
        (t + h - b) / 2.0,
        (t + h - b) / 2.0
    );
    let colors = [("read-all", "#1f77b4"), ("iter", "#d62728")];
    for (i, (mode, color)) in colors.iter().enumerate() {
        let pts: Vec<String> = rows
            .iter()
            .filter(|r| r.mode == *mode)
            .map(|r| format!("{:.1},{:.1}", xpos(r.workers), ypos(r.mib_s(r.median()))))
            .collect();
        if pts.is_empty() {
            continue;
        }
        s += &format!(
            "<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>\n",
            pts.join(" ")
        );
        for p in &pts {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            s += &format!("<circle cx='{x}' cy='{y}' r='3' fill='{color}'/>\n");
        }
        let ly = t + 20.0 + i as f64 * 18.0;
        s += &format!(
            "<line x1='{:.1}' y1='{ly:.1}' x2='{:.1}' y2='{ly:.1}' stroke='{color}' stroke-width='2'/><text x='{:.1}' y='{:.1}'>{mode}</text>\n",
            w - r + 10.0,
            w - r + 30.0,
            w - r + 36.0,
            ly + 4.0
        );
    }
    if let Some(g) = rows.iter().find(|r| r.mode == "get") {
        let y = ypos(g.mib_s(g.median()));
        let ly = t + 20.0 + 2.0 * 18.0;
        s += &format!(
            "<line x1='{l}' y1='{y:.1}' x2='{:.1}' y2='{y:.1}' stroke='#555' stroke-dasharray='6 4'/>\n",
            w - r
        );
        s += &format!(
            "<line x1='{:.1}' y1='{ly:.1}' x2='{:.1}' y2='{ly:.1}' stroke='#555' stroke-dasharray='6 4'/><text x='{:.1}' y='{:.1}'>get (1 stream)</text>\n",
            w - r + 10.0,
            w - r + 30.0,
            w - r + 36.0,
            ly + 4.0
        );
    }
    s += "</svg>\n";
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}

/// Checks the arguments clap cannot, before any object is generated or
/// fetched: a bad one is a usage error (exit 2, like clap's own).
fn check_args(args: &Args) -> std::result::Result<(), String> {
    let max = shmfetch::worker::MAX_WORKERS;
    if args.workers.is_empty() || args.workers.iter().any(|&w| w == 0 || w > max) {
        return Err(format!(
            "--workers: each count must be between 1 and {max}, got {:?}",
            args.workers
        ));
    }
    if let Some(c) = args.chunk_size {
        let max = shmfetch::reader::MAX_CHUNK_SIZE;
        if c == 0 || c > max {
            return Err(format!(
                "--chunk-size must be between 1 byte and {max} bytes, got {c}"
            ));
        }
    }
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    if args.objects == Some(0) {
        return Err("--objects must be at least 1".into());
    }
    if args.in_flight == 0 {
        return Err("--in-flight must be at least 1".into());
    }
    if args.in_flight > 1 && args.objects.is_none() {
        return Err("--in-flight works with --objects".into());
    }
    if let Some(m) = args
        .modes
        .iter()
        .find(|m| !["get", "read-all", "iter"].contains(&m.as_str()))
    {
        return Err(format!("--modes: unknown mode {m:?} (get, read-all, iter)"));
    }
    if !(args.dcp_fraction > 0.0 && args.dcp_fraction <= 1.0) {
        return Err("--dcp-fraction must be in (0, 1]".into());
    }
    if let Some(e) = &args.endpoint {
        let l = e.to_ascii_lowercase();
        if !(l.starts_with("http://") || l.starts_with("https://")) {
            return Err(format!(
                "--endpoint {e:?}: endpoint must start with http:// or https://"
            ));
        }
    }
    let local = args.url.is_none()
        && args.endpoint.is_none()
        && std::env::var("AIS_ENDPOINT").map_or(true, |e| e.is_empty());
    if local && args.dcp.is_none() {
        // The generated object lives in this process's memory.
        let k = args.objects.unwrap_or(1) as u64;
        let total = args.size.saturating_mul(k);
        let ram = physical_memory();
        if ram.is_some_and(|ram| total > ram / 2) {
            return Err(format!(
                "--size {} x {k} object(s) is more than half of this machine's memory ({} bytes) \
                 for the local server's generated object(s)",
                args.size,
                ram.unwrap_or(0)
            ));
        }
    }
    Ok(())
}

/// Bytes of physical memory, when the system says.
fn physical_memory() -> Option<u64> {
    use nix::unistd::{SysconfVar, sysconf};
    let pages = sysconf(SysconfVar::_PHYS_PAGES).ok()??;
    let page = sysconf(SysconfVar::PAGE_SIZE).ok()??;
    u64::try_from(pages)
        .ok()?
        .checked_mul(u64::try_from(page).ok()?)
}

/// No source and no setting of the local world: the two-world tour.
fn is_default_run(args: &Args) -> bool {
    args.url.is_none()
        && args.endpoint.is_none()
        && std::env::var("AIS_ENDPOINT").map_or(true, |e| e.is_empty())
        && args.dcp.is_none()
        && args.put.is_none()
        && args.objects.is_none()
        && args.server_rate.is_none()
        && args.server_latency_ms == 0.0
        && args.size == 1 << 30
        && args.workers == [1, 2, 4, 8, 16]
        && args.modes == ["get", "read-all", "iter"]
        && args.chunk_size.is_none()
        && !args.json
        && !args.verify
        && args.plot.is_none()
}

/// A pool of `workers` that keeps dropped `read_all` segments and finished
/// rings for the next download.
fn recycling_pool(workers: usize) -> shmfetch::Result<WorkerPool> {
    WorkerPool::with_config(shmfetch::PoolConfig {
        workers,
        recycle_bytes: shmfetch::worker::RECYCLE_BYTES,
        ..Default::default()
    })
}

fn main() -> Result<()> {
    interrupt::install()?;
    let args = Args::parse();
    if let Err(msg) = check_args(&args) {
        use clap::CommandFactory;
        Args::command()
            .error(clap::error::ErrorKind::ValueValidation, msg)
            .exit();
    }
    tracing_subscriber::fmt()
        .with_env_filter(log_filter::log_filter("shmfetch=warn"))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if args.objects.is_some() {
        return per_call(&args);
    }
    if let Some(dest) = &args.put {
        let mut _server = None;
        let (dest, opts) = if dest == "local" {
            // Like object storage unless told otherwise: each request's
            // body taken at 100 MiB/s (one disk or stream per request).
            let mut cfg = server_config(&args);
            cfg.per_request_rate = cfg.per_request_rate.or(Some(100 << 20));
            let rate = cfg.per_request_rate.unwrap_or(0) >> 20;
            let srv = TestServer::start(cfg)?;
            srv.create_bucket("bench");
            let opts = SourceOptions {
                endpoint: Some(srv.endpoint()),
                ..Default::default()
            };
            eprintln!(
                "no destination given: uploading to a local AIStore-style server {} that takes each request's body at {rate} MiB/s (--server-rate)",
                srv.endpoint()
            );
            _server = Some(srv);
            ("ais://bench/put".to_string(), opts)
        } else {
            let mut opts = SourceOptions::from_env()?;
            if let Some(e) = &args.endpoint {
                opts.endpoint = Some(e.clone());
            }
            opts.s3 = shmfetch::source::s3::S3Options::from_env();
            args.s3.apply(&mut opts.s3);
            (dest.clone(), opts)
        };
        let size = if args.size == 1 << 30 {
            256 << 20
        } else {
            args.size
        };
        return put::run(put::PutArgs {
            dest,
            opts,
            size,
            workers: args.workers.clone(),
            part_size: args.part_size,
            runs: args.runs,
            warmup: args.warmup,
            json: args.json,
        });
    }
    if is_default_run(&args) {
        return tour::run(args.warmup, args.runs);
    }
    if let Some(ckpt) = &args.dcp {
        anyhow::ensure!(
            args.dcp_fraction > 0.0 && args.dcp_fraction <= 1.0,
            "--dcp-fraction must be in (0, 1]"
        );
        return dcp::run(dcp::DcpArgs {
            ckpt: ckpt.clone(),
            fraction: args.dcp_fraction,
            workers: *args.workers.iter().max().unwrap_or(&8),
            runs: args.runs.max(1),
            json: args.json,
            server: server_config(&args),
        });
    }
    let env_ep = std::env::var("AIS_ENDPOINT").ok().filter(|s| !s.is_empty());
    let mut _server = None;
    let (spec, get_url, token, where_) = if let Some(url) = &args.url {
        let mut opts = SourceOptions::default();
        if url.starts_with("s3://") {
            opts.s3 = shmfetch::source::s3::S3Options::from_env();
            args.s3.apply(&mut opts.s3);
        }
        let spec = SourceSpec::parse_with(url, &opts)?;
        // The single stream of an S3 object GETs a presigned URL.
        let get_url = match spec.s3_get_url()? {
            Some(u) => u.expose().to_string(),
            None => url.clone(),
        };
        (spec, get_url, None, url.clone())
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
        let srv = TestServer::start(server_config(&args))?;
        let size = usize::try_from(args.size).context("--size too large")?;
        srv.put_bytes("bench", "object.bin", content::bytes(0xBE7C, size));
        let opts = SourceOptions {
            endpoint: Some(srv.endpoint()),
            ..Default::default()
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
    let want = |m: &str| args.modes.iter().any(|x| x == m);
    let mut reference_sha = None;
    let mut size = 0;
    // One reader (and pool) per worker count, made up front, so that the
    // rounds below can alternate between every configuration: a machine
    // that is busier for a while slows all of them, not one.
    let mut readers = Vec::new();
    for &w in &args.workers {
        // Download after download: the pool recycles the last buffer's
        // segment (or ring).
        let pool = recycling_pool(w)?;
        let mut b = ParallelReader::builder(spec.clone())
            .pool(pool)
            .direct(args.direct);
        if let Some(c) = args.chunk_size {
            b = b.chunk_size(c);
        }
        let reader = b.build()?;
        size = reader.size();
        readers.push((w, reader));
    }
    if want("get") || args.verify {
        let (n, sha) = plain_get(&get_url, token.as_deref(), args.verify)?; // warm-up
        size = n;
        reference_sha = sha;
    }
    let mut rows: Vec<Row> = Vec::new();
    if want("get") {
        rows.push(Row {
            mode: "get",
            workers: 1,
            chunk_size: size,
            bytes: size,
            secs: vec![],
            sha: reference_sha.clone(),
        });
    }
    for (w, reader) in &readers {
        for mode in ["read-all", "iter"] {
            if want(mode) {
                rows.push(Row {
                    mode,
                    workers: *w,
                    chunk_size: reader.chunk_size(),
                    bytes: reader.size(),
                    secs: vec![],
                    sha: None,
                });
            }
        }
    }
    let reader_of = |w: usize| {
        readers
            .iter()
            .find(|(x, _)| *x == w)
            .map(|(_, r)| r)
            .context("no reader for this worker count")
    };
    // One run of a row's configuration: its seconds, and the sha256 of what
    // it delivered when `hash` is set (outside the timing for iter).
    let run_once = |row: &Row, hash: bool| -> Result<(f64, Option<String>)> {
        use sha2::Digest;
        match row.mode {
            "get" => {
                let t = Instant::now();
                let (m, _) = plain_get(&get_url, token.as_deref(), false)?;
                let secs = t.elapsed().as_secs_f64();
                if m != row.bytes {
                    bail!("GET returned {m} bytes, then {}", row.bytes);
                }
                Ok((secs, None))
            }
            "read-all" => {
                let reader = reader_of(row.workers)?;
                let t = Instant::now();
                let buf = reader.read_all()?;
                let secs = t.elapsed().as_secs_f64();
                Ok((secs, hash.then(|| content::sha256_hex(&buf))))
            }
            _ => {
                let reader = reader_of(row.workers)?;
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
                let t = Instant::now();
                let (n, _) = consume(false)?;
                let secs = t.elapsed().as_secs_f64();
                if n != row.bytes {
                    bail!("iter delivered {n} of {} bytes", row.bytes);
                }
                Ok((secs, if hash { consume(true)?.1 } else { None }))
            }
        }
    };
    for _ in 0..args.warmup {
        for row in &rows {
            if row.mode != "get" {
                run_once(row, false)?;
            }
        }
    }
    // Rounds: every configuration once per round, in the same order.
    for round in 0..args.runs {
        for row in rows.iter_mut() {
            let hash = args.verify && round == 0 && row.mode != "get";
            let (secs, sha) = run_once(row, hash)?;
            row.secs.push(secs);
            if sha.is_some() {
                row.sha = sha;
            }
        }
    }
    let base = rows
        .iter()
        .find(|r| r.mode == "get")
        .map(|r| r.mib_s(r.median()));
    if !args.json {
        println!(
            "# {where_}{}: {size} bytes, {} alternating rounds (median, min-max), {} cores",
            if args.direct && args.url.is_none() {
                ", read-all and iter direct to target"
            } else {
                ""
            },
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
    if let Some(p) = &args.plot {
        plot(&rows, p, &format!("{where_}, {size} bytes"))?;
        eprintln!("plot written to {}", p.display());
    }
    if bad {
        bail!("some mode delivered different bytes than a plain GET");
    }
    let _ = Duration::ZERO;
    Ok(())
}
