//! Against a real third-party server: nginx from Debian's packages, laid out
//! like an AIStore cluster — a gateway server block that answers object GETs
//! with 301 and HEADs with 307 to one of three target blocks, which serve
//! files at /v1/objects/<bucket>/<object> with Range support, and the
//! cluster map of those targets at `/v1/daemon?what=smap`. Every request
//! is logged (port, status, request line, Range), so a test can tell which
//! server answered what.
//!
//! The README's test command installs nginx; without it this test fails
//! (it is never skipped silently).

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use sha2::Digest;

use crate::common::*;
use shmfetch::testing::content;
use shmfetch::{ParallelReader, SourceOptions, SourceSpec, WorkerPool};

pub struct Nginx {
    child: Option<Child>,
    pub endpoint: String,
    pub targets: Vec<String>,
    pub root: PathBuf,
    /// How it was started, to start it again after [`Nginx::kill`].
    command: Vec<String>,
    host: String,
    ports: Vec<u16>,
    /// The access log of every server block.
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// One line of [`Nginx::requests`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub port: u16,
    pub status: u16,
    pub method: String,
    pub uri: String,
    pub range: Option<String>,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn nginx_binary() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "nginx is not installed: run the README's test command (scripts/test.sh), which installs it"
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Nginx {
    /// On loopback, at free ports.
    pub fn start() -> Nginx {
        let gw = free_port();
        let tp: Vec<u16> = (0..3).map(|_| free_port()).collect();
        Nginx::start_at("127.0.0.1", gw, &tp, &[])
    }

    /// Listening on `host` (gateway at `gw`, targets at `tp`), run through
    /// `wrapper` (e.g. `ip netns exec NS` to run it in a network namespace).
    pub fn start_at(host: &str, gw: u16, tp: &[u16], wrapper: &[&str]) -> Nginx {
        let bin = nginx_binary();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        std::fs::create_dir_all(root.join("v1/objects")).unwrap();
        for d in ["logs", "tmp"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let p = dir.path().display();
        // The cluster map, shaped as AIStore's gateway answers it: the
        // gateway as proxy, each target block by its port, reached directly.
        let node = |id: String, kind: &str, port: u16| {
            format!(
                "{{\"daemon_id\": \"{id}\", \"daemon_type\": \"{kind}\", \"public_net\": {{\"direct_url\": \"http://{host}:{port}\"}}, \"flags\": 0}}"
            )
        };
        let tmap: Vec<String> = tp
            .iter()
            .map(|t| format!("\"t{t}\": {}", node(format!("t{t}"), "target", *t)))
            .collect();
        let proxy = node(format!("p{gw}"), "proxy", gw);
        let smap = dir.path().join("smap.json");
        std::fs::write(
            &smap,
            format!(
                "{{\"version\": 1, \"proxy_si\": {proxy}, \"pmap\": {{\"p{gw}\": {proxy}}}, \"tmap\": {{{}}}}}",
                tmap.join(", ")
            ),
        )
        .unwrap();
        let targets: String = tp
            .iter()
            .map(|t| {
                format!(
                    "server {{ listen {host}:{t}; root {}; location /v1/objects/ {{ }} }}\n",
                    root.display()
                )
            })
            .collect();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n log_format t '$server_port $status \"$request\" \"$http_range\"';\n access_log {p}/logs/access.log t;\n sendfile on;\n tcp_nopush on;\n keepalive_requests 100000;\n\
             client_body_temp_path {p}/tmp/body; proxy_temp_path {p}/tmp/proxy; fastcgi_temp_path {p}/tmp/fcgi;\n\
             uwsgi_temp_path {p}/tmp/uwsgi; scgi_temp_path {p}/tmp/scgi;\n default_type application/octet-stream;\n\
             split_clients \"${{request_id}}\" $target {{ 33% {host}:{}; 33% {host}:{}; * {host}:{}; }}\n\
             server {{ listen {host}:{gw};\n  location = /v1/daemon {{ default_type application/json; alias {}; }}\n  location /v1/objects/ {{\n   if ($request_method = HEAD) {{ return 307 http://$target$request_uri; }}\n   return 301 http://$target$request_uri;\n  }}\n }}\n\
             {targets}}}\n",
            tp[0],
            tp[1],
            tp[2],
            smap.display()
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let command: Vec<String> = wrapper
            .iter()
            .map(|s| s.to_string())
            .chain([
                bin.display().to_string(),
                "-p".into(),
                p.to_string(),
                "-c".into(),
                conf_path.display().to_string(),
                "-e".into(),
                format!("{p}/logs/error.log"),
            ])
            .collect();
        let mut ng = Nginx {
            child: None,
            endpoint: format!("http://{host}:{gw}"),
            targets: tp.iter().map(|t| format!("http://{host}:{t}")).collect(),
            root,
            command,
            host: host.to_string(),
            ports: std::iter::once(gw).chain(tp.iter().copied()).collect(),
            log: dir.path().join("logs/access.log"),
            _dir: dir,
        };
        ng.spawn();
        ng
    }

    /// Starts the server process and waits until every port accepts.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "nginx is running");
        self.child = Some(
            Command::new(&self.command[0])
                .args(&self.command[1..])
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for &port in &self.ports {
            while TcpStream::connect_timeout(
                &format!("{}:{port}", self.host).parse().unwrap(),
                Duration::from_secs(2),
            )
            .is_err()
            {
                assert!(
                    Instant::now() < deadline,
                    "nginx did not start listening on {port}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Every request logged so far, in the order nginx finished them.
    pub fn requests(&self) -> Vec<Logged> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let (port, rest) = l.split_once(' ')?;
                let (status, rest) = rest.split_once(' ')?;
                let (request, range) = rest.strip_prefix('"')?.split_once("\" \"")?;
                let mut parts = request.split(' ');
                let range = range.trim_end_matches('"');
                Some(Logged {
                    port: port.parse().ok()?,
                    status: status.parse().ok()?,
                    method: parts.next()?.to_string(),
                    uri: parts.next()?.to_string(),
                    range: (range != "-").then(|| range.to_string()),
                })
            })
            .collect()
    }

    /// Source options that reach AIStore through this gateway.
    pub fn options(&self) -> SourceOptions {
        SourceOptions {
            endpoint: Some(self.endpoint.clone()),
            token: None,
            s3: Default::default(),
        }
    }

    /// The port of the gateway.
    pub fn gateway_port(&self) -> u16 {
        self.ports[0]
    }

    /// Kills the server process (SIGKILL: connections in flight are cut).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Writes `size` deterministic bytes as ais://bucket/object; returns sha256.
    pub fn put(&self, bucket: &str, object: &str, size: u64, seed: u64) -> String {
        let path = self.root.join("v1/objects").join(bucket).join(object);
        crate::common::write_generated(&path, size, seed)
    }
}

#[test]
fn read_all_iter_and_cli_against_nginx() {
    let ng = Nginx::start();
    let size = 256u64 << 20;
    let want = ng.put("bkt", "big/object.bin", size, 61);
    let opts = ng.options();
    let spec = SourceSpec::parse_with("ais://bkt/big/object.bin", &opts).unwrap();
    let pool = WorkerPool::new(8).unwrap();
    let r = ParallelReader::builder(spec)
        .pool(pool.clone())
        .build()
        .unwrap();
    assert_eq!(
        r.size(),
        size,
        "size from the HEAD that nginx answered after a 307"
    );
    let buf = r.read_all().unwrap();
    assert_eq!(sha(&buf), want, "read_all");
    drop(buf);
    let mut h = sha2::Sha256::new();
    let mut n = 0;
    for c in r.create_iter(0).unwrap() {
        let c = c.unwrap();
        h.update(&*c);
        n += c.len() as u64;
    }
    assert_eq!(n, size);
    assert_eq!(hex::encode(h.finalize()), want, "create_iter");
    // From an offset, through io::Read.
    let mut h = sha2::Sha256::new();
    let mut s = r.stream(size - 5_000_000).unwrap();
    std::io::copy(&mut s, &mut HashWriter(&mut h)).unwrap();
    let mut tail = vec![0u8; 5_000_000];
    content::fill(61, size - 5_000_000, &mut tail);
    assert_eq!(hex::encode(h.finalize()), sha(&tail));
    drop(s);
    drop(r);
    // A target directly, as a plain HTTP server.
    let direct = SourceSpec::parse_with(
        &format!("{}/v1/objects/bkt/big/object.bin", ng.targets[1]),
        &opts,
    )
    .unwrap();
    let r = ParallelReader::builder(direct)
        .pool(pool.clone())
        .chunk_size(16 << 20)
        .build()
        .unwrap();
    assert_eq!(sha(&r.read_all().unwrap()), want, "plain http");
    drop(r);
    // Missing object: nginx's 404 after the redirect.
    let missing = SourceSpec::parse_with("ais://bkt/nothing", &opts).unwrap();
    let e = ParallelReader::builder(missing)
        .pool(pool.clone())
        .build()
        .unwrap_err();
    assert!(matches!(e, shmfetch::Error::ObjectNotFound { .. }), "{e:?}");
    drop_pool_and_check(pool);
    // The CLI, both modes.
    let dir = tempfile::tempdir().unwrap();
    for mode in ["read-all", "stream"] {
        let out = dir.path().join(mode);
        let o = Command::new(env!("CARGO_BIN_EXE_shmfetch"))
            .args([
                "get",
                "ais://bkt/big/object.bin",
                "-o",
                out.to_str().unwrap(),
                "-w",
                "8",
                "--mode",
                mode,
            ])
            .env("AIS_ENDPOINT", &ng.endpoint)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        eprintln!(
            "nginx {mode}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
        let mut h = sha2::Sha256::new();
        std::io::copy(
            &mut std::fs::File::open(&out).unwrap(),
            &mut HashWriter(&mut h),
        )
        .unwrap();
        assert_eq!(hex::encode(h.finalize()), want, "cli {mode}");
        std::fs::remove_file(&out).unwrap();
    }
    crate::cli::assert_no_orphaned_workers();
}

struct HashWriter<'a>(&'a mut sha2::Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Direct-to-target reads against nginx: the cluster map comes from the
/// gateway; the HEAD and every range go straight to the target AIStore's
/// placement names in it, and the access log shows no object request at
/// the gateway, hence no redirect.
#[test]
fn direct_reads_from_nginx_take_no_redirect() {
    use shmfetch::source::aistore::hrw::{Smap, uname};
    let ng = Nginx::start();
    let size = 24u64 << 20;
    let want = ng.put("bkt", "direct/obj+1", size, 67);
    let opts = ng.options();
    let spec = SourceSpec::parse_with("ais://bkt/direct/obj+1", &opts).unwrap();
    let pool = WorkerPool::new(4).unwrap();
    let r = ParallelReader::builder(spec)
        .pool(pool.clone())
        .chunk_size(4 << 20)
        .direct(true)
        .build()
        .unwrap();
    let buf = r.read_all().unwrap();
    assert_eq!(sha(&buf), want, "read_all");
    drop(buf);
    let mut h = sha2::Sha256::new();
    for c in r.create_iter(0).unwrap() {
        h.update(&*c.unwrap());
    }
    assert_eq!(hex::encode(h.finalize()), want, "create_iter");
    drop(r);

    let body = ureq::get(format!("{}/v1/daemon?what=smap", ng.endpoint))
        .call()
        .unwrap()
        .body_mut()
        .read_to_vec()
        .unwrap();
    let smap = Smap::parse(&body).unwrap();
    let owner = smap
        .target_for(&uname("ais", "", "", "bkt", "direct/obj+1"))
        .unwrap();
    let port: u16 = owner
        .direct_url
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let log = ng.requests();
    let at_gateway: Vec<_> = log.iter().filter(|l| l.port == ng.gateway_port()).collect();
    assert!(!at_gateway.is_empty(), "no map was fetched: {log:?}");
    assert!(
        at_gateway
            .iter()
            .all(|l| l.uri == "/v1/daemon?what=smap" && l.status == 200),
        "the gateway saw more than map requests: {at_gateway:?}"
    );
    let objects: Vec<_> = log
        .iter()
        .filter(|l| l.uri.starts_with("/v1/objects/bkt/"))
        .collect();
    // A HEAD, then 6 ranges for read_all and 6 for create_iter.
    assert!(objects.len() >= 13, "{objects:?}");
    for l in &objects {
        assert_eq!(l.port, port, "not at the owner {}: {l:?}", owner.id);
        assert!(
            matches!((l.method.as_str(), l.status), ("HEAD", 200) | ("GET", 206)),
            "{l:?}"
        );
    }
    drop_pool_and_check(pool);
}

/// Bug: `shmfetch-bench --direct` without `--objects` read through the
/// gateway all the same (the flag was only passed to the objects mode).
#[test]
fn the_bench_with_direct_reads_every_range_from_the_target() {
    let ng = Nginx::start();
    ng.put("bkt", "bench-direct", 12 << 20, 71);
    let out = Command::new(env!("CARGO_BIN_EXE_shmfetch-bench"))
        .args(["--endpoint", &ng.endpoint, "--bucket", "bkt"])
        .args(["--object", "bench-direct", "--workers", "2"])
        .args(["--modes", "read-all,iter", "--runs", "1", "--warmup", "0"])
        .args(["--chunk-size", "4MiB", "--direct", "--verify", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = String::from_utf8_lossy(&out.stdout);
    assert_eq!(rows.matches("\"verified\":\"ok\"").count(), 2, "{rows}");
    let gateway_gets: Vec<_> = ng
        .requests()
        .into_iter()
        .filter(|l| l.port == ng.gateway_port() && l.uri.starts_with("/v1/objects/"))
        .collect();
    // Only the single stream that --verify compares with goes through the
    // gateway: one GET, no Range.
    assert_eq!(gateway_gets.len(), 1, "{gateway_gets:?}");
    assert_eq!(gateway_gets[0].range, None, "{gateway_gets:?}");
}
