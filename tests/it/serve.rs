//! `shmfetch serve`, the product server, run as a user would: fetched with
//! `shmfetch get` and with a raw TCP client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::sha;
use shmfetch::testing::content;

const BIN: &str = env!("CARGO_BIN_EXE_shmfetch");

/// A running `shmfetch serve`, killed when dropped.
struct Serve {
    child: Child,
    endpoint: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn start(dir: &Path, addr: &str, extra: &[&str]) -> Serve {
        Serve::start_with_token(dir, addr, extra, None)
    }

    fn start_with_token(dir: &Path, addr: &str, extra: &[&str], token: Option<&str>) -> Serve {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg(dir)
            .args(["--addr", addr])
            .args(extra)
            .env_remove("AIS_AUTHN_TOKEN");
        if let Some(t) = token {
            cmd.env("AIS_AUTHN_TOKEN", t);
        }
        let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        // Keep draining stderr so that the server never blocks on it.
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        assert!(
            !line.contains("s3cret"),
            "the token is never printed: {line}"
        );
        let endpoint = line
            .split("AIS_ENDPOINT=")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .unwrap_or_else(|| panic!("no endpoint in {line:?}"))
            .to_string();
        Serve { child, endpoint }
    }

    /// `host:port` of the gateway.
    fn gateway(&self) -> String {
        self.endpoint.trim_start_matches("http://").to_string()
    }
}

fn get(args: &[&str], endpoint: &str) -> std::process::Output {
    Command::new(BIN)
        .arg("get")
        .args(args)
        .env("AIS_ENDPOINT", endpoint)
        .env_remove("AIS_AUTHN_TOKEN")
        .env_remove("AIS_AUTHN_TOKEN_FILE")
        .output()
        .unwrap()
}

/// One response as a raw client sees it.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw HTTP/1.1 client on one keep-alive connection.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn connect(hostport: &str) -> Raw {
        let stream = TcpStream::connect(hostport).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends `method target` with `headers` and reads the response (no
    /// body for HEAD).
    fn send(&mut self, method: &str, target: &str, headers: &[(&str, &str)]) -> Resp {
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: test\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.stream.write_all(req.as_bytes()).unwrap();
        let mut tmp = [0u8; 65536];
        let (n, status, headers) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut hs);
            if let httparse::Status::Complete(n) = r.parse(&self.buf).unwrap() {
                let headers: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                break (n, r.code.unwrap(), headers);
            }
            let k = self.stream.read(&mut tmp).unwrap();
            assert!(k > 0, "connection closed before a response head");
            self.buf.extend_from_slice(&tmp[..k]);
        };
        self.buf.drain(..n);
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        let len: usize = if method == "HEAD" {
            0
        } else {
            resp.header("content-length").unwrap().parse().unwrap()
        };
        while self.buf.len() < len {
            let k = self.stream.read(&mut tmp).unwrap();
            assert!(k > 0, "connection closed inside a body");
            self.buf.extend_from_slice(&tmp[..k]);
        }
        resp.body = self.buf.drain(..len).collect();
        resp
    }
}

/// `http://host:port/path?query` → (`host:port`, `/path?query`).
fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let i = rest.find('/').unwrap();
    (rest[..i].to_string(), rest[i..].to_string())
}

/// GET or HEAD through the gateway, following its redirect by hand.
fn fetch(gateway: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> (Resp, Resp) {
    let redirect = Raw::connect(gateway).send(method, path, headers);
    let location = redirect
        .header("location")
        .unwrap_or_else(|| panic!("no redirect: {redirect:?} {}", redirect.text()))
        .to_string();
    let (target, target_path) = split_url(&location);
    let answer = Raw::connect(&target).send(method, &target_path, headers);
    (redirect, answer)
}

fn dir_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, data) in files {
        let p = dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    dir
}

#[test]
fn serve_exposes_a_directory_through_the_ais_api() {
    let data = content::bytes(55, 2_500_000);
    let dir = dir_with(&[("bkt/sub/file.bin", &data)]);
    let srv = Serve::start(dir.path(), "127.0.0.1:0", &[]);
    for (mode, workers) in [("read-all", "3"), ("stream", "4")] {
        let o = get(
            &[
                "ais://bkt/sub/file.bin",
                "-o",
                "-",
                "-w",
                workers,
                "--chunk-size",
                "500000",
                "--mode",
                mode,
            ],
            &srv.endpoint,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(sha(&o.stdout), sha(&data), "{mode}");
    }
    // Missing bucket and object: the AIS errors the client classifies.
    for (src, needle) in [
        ("ais://nob/o", "bucket ais://nob does not exist"),
        ("ais://bkt/nothere", "ais://bkt/nothere does not exist"),
    ] {
        let o = get(&[src, "-o", "-"], &srv.endpoint);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn serve_answers_a_raw_client_like_an_aistore_target() {
    let data = content::bytes(60, 1_234_567);
    let dir = dir_with(&[("b/dir/o.bin", &data), ("b/empty", b"")]);
    let srv = Serve::start(dir.path(), "127.0.0.1:0", &["--threads", "3"]);
    let gw = srv.gateway();
    let path = "/v1/objects/b/dir/o.bin?provider=ais";

    // HEAD: 307, then the size, version and ETag.
    let (r, h) = fetch(
        &gw,
        "HEAD",
        &format!("{path}&props=chunked,version,etag"),
        &[],
    );
    assert_eq!(r.status, 307);
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-length"), Some("1234567"));
    assert_eq!(h.header("ais-present"), Some("true"));
    let etag = h.header("etag").unwrap().to_string();
    assert!(etag.starts_with('"') && h.header("ais-version").is_some());
    assert!(
        h.header("ais-chunks-count").is_none(),
        "a file is not chunked"
    );
    let (_, h) = fetch(&gw, "HEAD", &format!("{path}&props=cached"), &[]);
    assert_eq!(h.status, 400);
    assert!(h.header("hdr-error").unwrap().contains("invalid property"));

    // Whole GET: 301, 200, the file's bytes.
    let (r, g) = fetch(&gw, "GET", path, &[]);
    assert_eq!(r.status, 301);
    assert_eq!(g.status, 200);
    assert_eq!(g.header("content-type"), Some("application/octet-stream"));
    assert_eq!(g.header("etag"), Some(etag.as_str()));
    assert_eq!(sha(&g.body), sha(&data));

    // Ranged GETs in the three forms, on one keep-alive connection.
    let location = r.header("location").unwrap().to_string();
    let (target, tpath) = split_url(&location);
    let mut conn = Raw::connect(&target);
    let n = data.len();
    for (range, start, end) in [
        ("bytes=0-0", 0, 1),
        ("bytes=1000-200999", 1000, 201_000),
        ("bytes=1234000-9999999", 1_234_000, n),
        ("bytes=1200000-", 1_200_000, n),
        ("bytes=-567", n - 567, n),
        ("bytes=-9999999", 0, n),
    ] {
        let g = conn.send("GET", &tpath, &[("Range", range)]);
        assert_eq!(g.status, 206, "{range}: {}", g.text());
        assert_eq!(
            g.header("content-range").unwrap(),
            format!("bytes {}-{}/{n}", start, end - 1),
            "{range}"
        );
        assert_eq!(sha(&g.body), sha(&data[start..end]), "{range}");
    }
    // 416: past the end (with `bytes */size`), multi-range and garbage
    // (without); the connection stays usable.
    let g = conn.send("GET", &tpath, &[("Range", "bytes=1234567-")]);
    assert_eq!(g.status, 416);
    assert_eq!(g.header("content-range"), Some("bytes */1234567"));
    assert!(g.text().contains("ErrRangeNotSatisfiable"), "{}", g.text());
    let g = conn.send("GET", &tpath, &[("Range", "bytes=0-1,5-9")]);
    assert_eq!(g.status, 416);
    assert!(g.header("content-range").is_none() && g.text().contains("ErrUnsupp"));
    let g = conn.send("GET", &tpath, &[("Range", "bytes=9-2")]);
    assert_eq!(g.status, 416);
    assert!(g.header("content-range").is_none());
    let g = conn.send("GET", &tpath, &[("Range", "bytes=10-19")]);
    assert_eq!(g.body, &data[10..20]);

    // An empty object: HEAD says 0, a range is 416 `bytes */0`.
    let (_, h) = fetch(&gw, "HEAD", "/v1/objects/b/empty?props=size", &[]);
    assert_eq!((h.status, h.header("content-length")), (200, Some("0")));
    let (_, g) = fetch(&gw, "GET", "/v1/objects/b/empty", &[("Range", "bytes=0-0")]);
    assert_eq!(
        (g.status, g.header("content-range")),
        (416, Some("bytes */0"))
    );

    // Errors are AIS JSON: a missing bucket from the gateway, a missing
    // object from the target (the JSON in Hdr-Error on HEAD).
    let e = Raw::connect(&gw).send("GET", "/v1/objects/nob/o", &[]);
    assert_eq!(e.status, 404);
    assert_eq!(e.header("content-type"), Some("application/json"));
    let j: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
    assert_eq!(j["tcode"], "ErrBckNotFound");
    assert_eq!(j["message"], "bucket \"ais://nob\" does not exist");
    let (_, e) = fetch(&gw, "GET", "/v1/objects/b/nothere", &[]);
    assert_eq!(e.status, 404);
    let j: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
    assert_eq!(j["tcode"], "ErrNotFound");
    assert!(
        j["message"]
            .as_str()
            .unwrap()
            .ends_with("ais://b/nothere does not exist")
    );
    let (_, e) = fetch(&gw, "HEAD", "/v1/objects/b/nothere", &[]);
    assert_eq!(e.status, 404);
    assert!(e.header("hdr-error").unwrap().contains("ErrNotFound"));
    let e = Raw::connect(&gw).send("PUT", "/v1/objects/b/x", &[]);
    assert_eq!(e.status, 405);
    let e = Raw::connect(&gw).send("GET", "/v1/buckets/b", &[]);
    assert_eq!(e.status, 400);
}

#[test]
fn serve_refuses_path_traversal() {
    let secret = b"top secret, never served";
    let outside = dir_with(&[("secret", secret), ("b/secret", secret)]);
    let dir = dir_with(&[("b/ok", b"fine")]);
    std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("b/link")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("b"), dir.path().join("escape")).unwrap();
    // The secret would be `../secret` from a bucket of `outside/x`-style
    // layouts; try every spelling of leaving the directory.
    let srv = Serve::start(dir.path(), "127.0.0.1:0", &[]);
    let gw = srv.gateway();
    let (_, ok) = fetch(&gw, "GET", "/v1/objects/b/ok", &[]);
    assert_eq!(ok.body, b"fine");
    let target = {
        let (r, _) = fetch(&gw, "HEAD", "/v1/objects/b/ok", &[]);
        split_url(r.header("location").unwrap()).0
    };
    for path in [
        "/v1/objects/b/../../secret",
        "/v1/objects/b/%2e%2e/%2e%2e/secret",
        "/v1/objects/b/x/%2E%2E/%2E%2E/%2E%2E/secret",
        "/v1/objects/b/..%2f..%2fsecret",
        "/v1/objects/b//etc/passwd",
        "/v1/objects/b/%2Fetc%2Fpasswd",
        "/v1/objects/../b/secret",
        "/v1/objects/%2e%2e/secret",
        "/v1/objects/b/ok%00",
    ] {
        // At the gateway and straight at a target alike.
        for hostport in [&gw, &target] {
            let e = Raw::connect(hostport).send("GET", path, &[]);
            assert_eq!(e.status, 400, "{path} at {hostport}: {}", e.text());
            assert!(e.text().contains("invalid"), "{path}: {}", e.text());
            assert!(!e.text().contains("top secret"));
        }
    }
    // Symlinks out of the directory: refused as well.
    for path in ["/v1/objects/b/link", "/v1/objects/escape/secret"] {
        let e = Raw::connect(&target).send("GET", path, &[]);
        assert_eq!(e.status, 403, "{path}: {}", e.text());
        assert!(e.text().contains("outside the served directory"));
        assert!(!e.text().contains("top secret"));
    }
    let e = Raw::connect(&gw).send("GET", "/v1/objects/escape/secret", &[]);
    assert_eq!(e.status, 403, "{}", e.text());
    // And through the client: a clear failure, nothing written.
    let o = get(&["ais://b/link", "-o", "-"], &srv.endpoint);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
}

#[test]
fn serve_queues_more_connections_than_threads() {
    let data = content::bytes(61, 300_000);
    let dir = dir_with(&[("b/o", &data)]);
    let srv = Serve::start(dir.path(), "127.0.0.1:0", &["--threads", "2"]);
    let gw = srv.gateway();
    // Idle connections that never send a request take the two threads
    // first; they must give them up to the connections queued behind.
    let idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(&gw).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let clients = 12;
    let (tx, rx) = std::sync::mpsc::channel();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(clients));
    for i in 0..clients {
        let (gw, tx, barrier) = (gw.clone(), tx.clone(), barrier.clone());
        std::thread::spawn(move || {
            barrier.wait();
            // Keep-alive: each client keeps both connections open until
            // every client is done.
            let mut g = Raw::connect(&gw);
            let r = g.send("GET", "/v1/objects/b/o", &[]);
            let (target, path) = split_url(r.header("location").unwrap());
            let mut t = Raw::connect(&target);
            let start = i * 1000;
            let range = format!("bytes={start}-");
            let body = t.send("GET", &path, &[("Range", &range)]).body;
            let _ = tx.send((i, body, g, t));
        });
    }
    drop(tx);
    let t0 = std::time::Instant::now();
    let mut held = Vec::new();
    for _ in 0..clients {
        let (i, body, g, t) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("every client is served in time");
        assert_eq!(sha(&body), sha(&data[i * 1000..]), "client {i}");
        held.push((g, t));
    }
    // Well before the 15 s keep-alive timeout: idle connections yielded
    // their threads as soon as others queued.
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    drop((idle, held));
    // A full CLI fetch with many workers through two threads.
    let o = get(
        &["ais://b/o", "-o", "-", "-w", "8", "--chunk-size", "64KiB"],
        &srv.endpoint,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(sha(&o.stdout), sha(&data));
}

#[test]
fn serve_redirects_name_the_addr_host() {
    let data = content::bytes(62, 777_777);
    let dir = dir_with(&[("b/o", &data)]);
    // 127.0.0.0/8 is all loopback on Linux: a host other than 127.0.0.1.
    let srv = Serve::start(dir.path(), "127.0.0.2:0", &[]);
    assert!(
        srv.endpoint.starts_with("http://127.0.0.2:"),
        "{}",
        srv.endpoint
    );
    let gw = srv.gateway();
    for method in ["HEAD", "GET"] {
        let (r, a) = fetch(&gw, method, "/v1/objects/b/o?provider=ais", &[]);
        let location = r.header("location").unwrap();
        assert!(
            location.starts_with("http://127.0.0.2:"),
            "{method}: {location}"
        );
        assert!(location.contains("?provider=ais&pid=") && location.contains("&utm="));
        assert_eq!(a.status, 200, "{method}");
        // The target listens on that IP only.
        let (target, _) = split_url(location);
        let port = target.rsplit_once(':').unwrap().1;
        assert!(TcpStream::connect(format!("127.0.0.1:{port}")).is_err());
    }
    let o = get(&["ais://b/o", "-o", "-", "-w", "3"], &srv.endpoint);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(sha(&o.stdout), sha(&data));
}

#[test]
fn serve_with_a_token_guards_gateway_and_targets() {
    let data = content::bytes(63, 100_000);
    let dir = dir_with(&[("b/o", &data)]);
    let srv = Serve::start_with_token(dir.path(), "127.0.0.1:0", &[], Some("s3cret-token"));
    let gw = srv.gateway();
    let e = Raw::connect(&gw).send("GET", "/v1/objects/b/o", &[]);
    assert_eq!(e.status, 401);
    assert!(e.text().contains("token required"));
    let e = Raw::connect(&gw).send(
        "GET",
        "/v1/objects/b/o",
        &[("Authorization", "Bearer nope")],
    );
    assert_eq!(e.status, 401);
    let auth = [("Authorization", "Bearer s3cret-token")];
    let (r, a) = fetch(&gw, "GET", "/v1/objects/b/o?provider=ais", &auth);
    assert_eq!((r.status, a.status), (301, 200));
    assert_eq!(sha(&a.body), sha(&data));
    // The target takes only the signed redirect, not a hand-made URL.
    let location = r.header("location").unwrap();
    let (target, path) = split_url(location);
    let unsigned = path.split("&u=").next().unwrap();
    let e = Raw::connect(&target).send("GET", unsigned, &[]);
    assert_eq!(e.status, 403);
    assert!(e.text().contains("direct target access denied"));
    let e = Raw::connect(&target).send("GET", &path.replace("/b/o", "/b/other"), &[]);
    assert_eq!(e.status, 403);
    // The CLI with the token: works.
    let o = Command::new(BIN)
        .args(["get", "ais://b/o", "-o", "-", "-w", "2"])
        .env("AIS_ENDPOINT", &srv.endpoint)
        .env("AIS_AUTHN_TOKEN", "s3cret-token")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(sha(&o.stdout), sha(&data));
}

#[test]
fn serve_and_the_test_server_answer_ranges_alike() {
    use shmfetch::testing::server::{ServerConfig, TestServer};
    let data = content::bytes(64, 10_000);
    let dir = dir_with(&[("b/o", &data)]);
    let srv = Serve::start(dir.path(), "127.0.0.1:0", &[]);
    let (r, _) = fetch(&srv.gateway(), "HEAD", "/v1/objects/b/o", &[]);
    let (serve_target, serve_path) = split_url(r.header("location").unwrap());
    let test = TestServer::start(ServerConfig::default()).unwrap();
    test.put_bytes("b", "o", data.clone());
    let (test_target, test_path) = split_url(&test.direct_url("b", "o"));
    for range in [
        "bytes=0-0",
        "bytes=100-199",
        "bytes=9990-20000",
        "bytes=5000-",
        "bytes=-10",
        "bytes=-20000",
        "bytes=10000-",
        "bytes=-0",
        "bytes=0-1,4-5",
        "bytes=5-1",
        "bytes=x-1",
        "pages=1-2",
    ] {
        let a = Raw::connect(&serve_target).send("GET", &serve_path, &[("Range", range)]);
        let b = Raw::connect(&test_target).send("GET", &test_path, &[("Range", range)]);
        assert_eq!(a.status, b.status, "{range}");
        assert_eq!(
            a.header("content-range"),
            b.header("content-range"),
            "{range}"
        );
        if a.status == 206 {
            assert_eq!(a.body, b.body, "{range}");
        } else {
            let tcode = |r: &Resp| {
                serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["tcode"].clone()
            };
            assert_eq!(tcode(&a), tcode(&b), "{range}");
        }
    }
}
