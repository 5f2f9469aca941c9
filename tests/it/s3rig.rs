//! Real S3 servers for the S3 tests, each started on a free loopback port
//! and killed (and reaped) on drop:
//!
//! - [`S3sFs`]: `s3s-fs`, a file-backed S3 server that checks SigV4
//!   (header and presigned). Quirks: it reads files 4 KiB at a time (keep
//!   objects to a few MiB), ignores `If-Match` on GET, answers a GET in a
//!   missing bucket with `NoSuchKey`, lists with `encoding-type=url`
//!   unencoded and takes an empty `delimiter=` as a delimiter.
//! - [`Moto`]: moto's server (in memory, any credentials): multipart
//!   ETags (`"…-N"`), CopyObject, versioning.
//! - [`NginxS3`]: nginx serving a directory path-style, unsigned, fast:
//!   Range, `ETag` (nginx's `"<mtime hex>-<size hex>"`), `If-Match` → 412.
//! - The test server's S3 mode is `ServerConfig { s3: true, .. }`.
//!
//! [`s3_tool`] drives boto3 (`tests/it/s3_tool.py`, path-style) against any
//! of them. `s3s-fs` and the Python venv (`target/s3-venv`: boto3, moto)
//! are installed by `./scripts/test.sh`; without them these tests fail
//! (they are never skipped).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::nginx::{free_port, nginx_binary};

#[cfg(test)]
#[path = "s3rig_smoke.rs"]
mod smoke;

/// Access key the rig's `s3s-fs` accepts.
pub const ACCESS_KEY: &str = "shmfetch-test-ak";
/// Secret key the rig's `s3s-fs` accepts.
pub const SECRET_KEY: &str = "shmfetch-test-secret-key";

/// Credentials for [`s3_tool`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    pub access_key: String,
    pub secret_key: String,
}

impl Creds {
    pub fn new(access_key: &str, secret_key: &str) -> Creds {
        Creds {
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
        }
    }
}

const INSTALL_HINT: &str = "run ./scripts/test.sh to install it";

/// `target/s3-venv/bin/python` (boto3, moto); panics when missing.
pub fn venv_python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/s3-venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing (boto3 and moto for the S3 tests): {INSTALL_HINT}",
        p.display()
    );
    p
}

/// The `s3s-fs` binary (`$CARGO_HOME/bin`, `~/.cargo/bin` or `PATH`);
/// panics when missing.
pub fn s3s_fs_binary() -> PathBuf {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(h) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(h).join("bin"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".cargo/bin"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter()
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("s3s-fs is not installed (the S3 tests' server): {INSTALL_HINT}"))
}

/// Runs `s3_tool.py ARGS` (boto3, path-style) against `endpoint` with
/// `creds`; its stdout, trimmed, or its stderr as the error.
pub fn s3_tool(endpoint: &str, creds: &Creds, args: &[&str]) -> Result<String, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/s3_tool.py");
    let o = Command::new(venv_python())
        .arg(script)
        .args(["--endpoint", endpoint])
        .args(["--access-key", &creds.access_key])
        .args(["--secret-key", &creds.secret_key])
        .args(args)
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .expect("runs the venv's python");
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
    }
}

/// `s3_tool put` of `bytes` (through a temporary file); the ETag, quoted.
/// With `part_size`, a multipart upload of parts that size.
pub fn s3_tool_put(
    endpoint: &str,
    creds: &Creds,
    bucket: &str,
    key: &str,
    bytes: &[u8],
    part_size: Option<u64>,
) -> Result<String, String> {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(bytes).expect("temp file written");
    f.flush().expect("temp file flushed");
    let path = f.path().to_str().expect("utf-8 temp path").to_string();
    let size = part_size.map(|n| n.to_string());
    let mut args = vec!["put", bucket, key, &path];
    if let Some(s) = &size {
        args.extend(["--multipart-chunksize", s]);
    }
    s3_tool(endpoint, creds, &args)
}

/// A server process listening on a loopback port, its files in a
/// temporary directory; killed and reaped on drop.
struct Process {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Spawns `cmd` and waits until `port` accepts on loopback; panics
    /// (with the server's log) when the process exits first or after 30 s.
    fn spawn(
        mut cmd: Command,
        port: u16,
        dir: tempfile::TempDir,
        what: &str,
        log: &Path,
    ) -> Process {
        let mut child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{what} starts: {e}"));
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            let log = || std::fs::read_to_string(log).unwrap_or_default();
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "{what} exited ({st}) before listening on {port}:\n{}",
                    log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not listen on {port} within 30 s:\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        Process {
            child: Some(child),
            port,
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:PORT`.
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A key that maps onto a path under a bucket directory and back unchanged
/// (no empty, `.` or `..` component, no leading or trailing `/`).
fn key_is_a_plain_path(key: &str) -> bool {
    !key.is_empty()
        && key
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// URL-safe base64 without padding (s3s-fs names its sidecar files so).
fn base64_url(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// `s3s-fs` on a free loopback port with a fresh root directory; SigV4 with
/// [`ACCESS_KEY`] / [`SECRET_KEY`]. Killed and reaped on drop.
pub struct S3sFs {
    process: Process,
    root: PathBuf,
}

impl S3sFs {
    /// Starts it and waits until it accepts connections.
    pub fn start() -> S3sFs {
        let bin = s3s_fs_binary();
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).expect("root dir");
        let log = dir.path().join("s3s-fs.log");
        let out = std::fs::File::create(&log).expect("log file");
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&root)
            .env("RUST_LOG", "warn")
            .stdout(out.try_clone().expect("log file"))
            .stderr(out);
        S3sFs {
            process: Process::spawn(cmd, port, dir, "s3s-fs", &log),
            root,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.process.endpoint()
    }

    pub fn access_key(&self) -> &str {
        ACCESS_KEY
    }

    pub fn secret_key(&self) -> &str {
        SECRET_KEY
    }

    /// The right credentials.
    pub fn creds(&self) -> Creds {
        Creds::new(ACCESS_KEY, SECRET_KEY)
    }

    /// Its root directory: bucket `b`, key `k` is the file `root/b/k`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// [`s3_tool`] against it with the right credentials.
    pub fn tool(&self, args: &[&str]) -> Result<String, String> {
        s3_tool(&self.endpoint(), &self.creds(), args)
    }

    /// Creates a bucket (a directory of the root, as s3s-fs's own
    /// CreateBucket does).
    pub fn create_bucket(&self, name: &str) {
        std::fs::create_dir_all(self.root.join(name)).expect("bucket dir");
    }

    /// Stores `bytes` as `bucket/key` (creating the bucket). Written into
    /// the root directly (s3s-fs's layout: its ETag is then the MD5 of the
    /// file), replacing any earlier object and its metadata; a key that is
    /// not a plain relative path goes through boto3 instead.
    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) {
        self.create_bucket(bucket);
        if !key_is_a_plain_path(key) {
            s3_tool_put(&self.endpoint(), &self.creds(), bucket, key, bytes, None)
                .unwrap_or_else(|e| panic!("put {bucket}/{key:?} through boto3: {e}"));
            return;
        }
        // Sidecars of an earlier PutObject would keep its ETag/checksums.
        let side = format!(
            ".bucket-{}.object-{}",
            base64_url(bucket.as_bytes()),
            base64_url(key.as_bytes())
        );
        for ext in ["internal.json", "metadata.json"] {
            let _ = std::fs::remove_file(self.root.join(format!("{side}.{ext}")));
        }
        let path = self.root.join(bucket).join(key);
        std::fs::create_dir_all(path.parent().expect("key has a parent")).expect("key's dirs");
        std::fs::write(&path, bytes).expect("object written");
    }
}

/// moto's S3 server (in memory, any credentials) on a free loopback port.
/// Killed and reaped on drop.
pub struct Moto {
    process: Process,
}

impl Moto {
    /// Starts `moto_server` from the venv and waits until it accepts.
    pub fn start() -> Moto {
        let python = venv_python();
        let bin = python.with_file_name("moto_server");
        assert!(bin.exists(), "{} is missing: {INSTALL_HINT}", bin.display());
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("moto.log");
        let out = std::fs::File::create(&log).expect("log file");
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(out.try_clone().expect("log file"))
            .stderr(out);
        Moto {
            process: Process::spawn(cmd, port, dir, "moto_server", &log),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.process.endpoint()
    }

    /// Credentials (moto takes any).
    pub fn creds(&self) -> Creds {
        Creds::new("testing", "testing")
    }

    /// [`s3_tool`] against it.
    pub fn tool(&self, args: &[&str]) -> Result<String, String> {
        s3_tool(&self.endpoint(), &self.creds(), args)
    }

    pub fn create_bucket(&self, name: &str) {
        self.tool(&["mb", name])
            .unwrap_or_else(|e| panic!("moto mb {name}: {e}"));
    }

    /// PutObject; the ETag, quoted.
    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) -> String {
        s3_tool_put(&self.endpoint(), &self.creds(), bucket, key, bytes, None)
            .unwrap_or_else(|e| panic!("moto put {bucket}/{key:?}: {e}"))
    }

    /// A multipart upload in parts of `part_size` (≥ 5 MiB but the last);
    /// the ETag, quoted, `"…-<parts>"`.
    pub fn put_multipart(&self, bucket: &str, key: &str, bytes: &[u8], part_size: u64) -> String {
        s3_tool_put(
            &self.endpoint(),
            &self.creds(),
            bucket,
            key,
            bytes,
            Some(part_size),
        )
        .unwrap_or_else(|e| panic!("moto multipart put {bucket}/{key:?}: {e}"))
    }
}

/// nginx serving `root/<bucket>/<key>` as unsigned path-style S3 GET/HEAD
/// `/<bucket>/<key>`: Range, ETag, `If-Match` (412, S3 XML), a missing
/// key 404 with `NoSuchKey` XML; the query string (presigned parameters)
/// is ignored. nginx decodes the path: `%20`, `%2B`, `%25`, `%3F`, `%23`
/// and UTF-8 escapes become the file name's bytes, a literal `+` stays `+`,
/// `//` is kept (`merge_slashes off`). Killed and reaped on drop.
pub struct NginxS3 {
    process: Process,
    root: PathBuf,
}

impl NginxS3 {
    /// At full speed.
    pub fn start() -> NginxS3 {
        NginxS3::start_with(None)
    }

    /// Each response paced at `bytes_per_sec` (nginx's `limit_rate`), so a
    /// download takes long enough to overwrite the object in the middle.
    pub fn with_limit_rate(bytes_per_sec: u64) -> NginxS3 {
        NginxS3::start_with(Some(bytes_per_sec))
    }

    fn start_with(rate: Option<u64>) -> NginxS3 {
        let bin = nginx_binary();
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("data");
        std::fs::create_dir_all(&root).expect("root dir");
        for d in ["logs", "tmp"] {
            std::fs::create_dir_all(dir.path().join(d)).expect("nginx dirs");
        }
        let p = dir.path().display();
        let port = free_port();
        let limit = rate.map(|r| format!("limit_rate {r};")).unwrap_or_default();
        let xml = |code: &str, msg: &str| {
            format!(
                "<?xml version=\\\"1.0\\\" encoding=\\\"UTF-8\\\"?>\\n<Error><Code>{code}</Code><Message>{msg}</Message></Error>"
            )
        };
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n access_log off;\n sendfile on;\n tcp_nopush on;\n keepalive_requests 100000;\n merge_slashes off;\n\
             client_body_temp_path {p}/tmp/body; proxy_temp_path {p}/tmp/proxy; fastcgi_temp_path {p}/tmp/fcgi;\n\
             uwsgi_temp_path {p}/tmp/uwsgi; scgi_temp_path {p}/tmp/scgi;\n default_type application/octet-stream;\n\
             server {{ listen 127.0.0.1:{port};\n  root {root};\n  etag on;\n  autoindex off;\n\
               error_page 404 @nosuchkey;\n  error_page 412 @preconditionfailed;\n\
               location / {{ limit_except GET {{ deny all; }} {limit} }}\n\
               location @nosuchkey {{ default_type application/xml; return 404 \"{nsk}\"; }}\n\
               location @preconditionfailed {{ default_type application/xml; return 412 \"{pf}\"; }}\n\
             }}\n}}\n",
            root = root.display(),
            nsk = xml("NoSuchKey", "The specified key does not exist."),
            pf = xml(
                "PreconditionFailed",
                "At least one of the pre-conditions you specified did not hold"
            ),
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf");
        let log = dir.path().join("logs/error.log");
        let mut cmd = Command::new(bin);
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(&log);
        let process = Process::spawn(cmd, port, dir, "nginx", &log);
        NginxS3 { process, root }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.process.endpoint()
    }

    /// Bucket `b`, key `k` is the file `root/b/k`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn create_bucket(&self, name: &str) {
        std::fs::create_dir_all(self.root.join(name)).expect("bucket dir");
    }

    /// Stores `bytes` as `bucket/key`. An overwrite moves the file's mtime
    /// on by at least a second, so nginx's ETag (mtime and size) changes
    /// even for a same-size rewrite within the same second.
    pub fn put(&self, bucket: &str, key: &str, bytes: &[u8]) {
        let path = self.object_path(bucket, key);
        let before = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        std::fs::write(&path, bytes).expect("object written");
        self.bump_mtime(&path, before);
    }

    /// Stores `size` deterministic bytes (`content::fill(seed, …)`) as
    /// `bucket/key`, streamed; returns their sha256.
    pub fn put_generated(&self, bucket: &str, key: &str, size: u64, seed: u64) -> String {
        let path = self.object_path(bucket, key);
        let before = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        let sha = crate::common::write_generated(&path, size, seed);
        self.bump_mtime(&path, before);
        sha
    }

    fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        assert!(
            key_is_a_plain_path(key),
            "key {key:?} has no file under nginx's root"
        );
        let path = self.root.join(bucket).join(key);
        std::fs::create_dir_all(path.parent().expect("key has a parent")).expect("key's dirs");
        path
    }

    fn bump_mtime(&self, path: &Path, before: Option<std::time::SystemTime>) {
        let Some(before) = before else { return };
        let f = std::fs::File::options()
            .write(true)
            .open(path)
            .expect("object file");
        let now = f.metadata().and_then(|m| m.modified()).expect("mtime");
        let later = before + Duration::from_secs(1);
        if now < later {
            f.set_modified(later).expect("mtime set");
        }
    }
}

/// A response read by [`raw_request`].
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request (`Connection: close`) to `endpoint`
/// (`http://HOST:PORT`) for `path_and_query` as given (already
/// percent-encoded), with `headers`; the whole response. A hang guard of
/// 30 s per read.
pub fn raw_request(
    endpoint: &str,
    method: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> RawResponse {
    let host = endpoint
        .strip_prefix("http://")
        .expect("http:// endpoint")
        .trim_end_matches('/');
    let mut c = TcpStream::connect(host).expect("connects");
    c.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut req =
        format!("{method} {path_and_query} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    c.write_all(req.as_bytes()).expect("request sent");
    // Headers, then the body by its Content-Length (servers may keep the
    // connection open anyway), or to the end of the stream.
    let mut all = Vec::new();
    let mut buf = [0u8; 64 << 10];
    loop {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut hs);
        if let httparse::Status::Complete(n) = r.parse(&all).expect("a valid HTTP response") {
            let status = r.code.expect("status");
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
            let mut resp = RawResponse {
                status,
                headers,
                body: all[n..].to_vec(),
            };
            let len = if method == "HEAD" || status == 204 || status == 304 {
                Some(0)
            } else {
                resp.header("content-length")
                    .map(|v| v.trim().parse::<usize>().expect("a numeric Content-Length"))
            };
            match len {
                Some(len) => {
                    while resp.body.len() < len {
                        let k = c.read(&mut buf).expect("body read");
                        assert!(k > 0, "body cut short at {} of {len}", resp.body.len());
                        resp.body.extend_from_slice(&buf[..k]);
                    }
                    resp.body.truncate(len);
                }
                None => {
                    c.read_to_end(&mut resp.body).expect("body read");
                }
            }
            return resp;
        }
        let k = c.read(&mut buf).expect("response read");
        assert!(
            k > 0,
            "connection closed in the headers: {:?}",
            String::from_utf8_lossy(&all)
        );
        all.extend_from_slice(&buf[..k]);
    }
}

/// `/<bucket>/<key>` with the key percent-encoded as SigV4 does (all but
/// `A-Z a-z 0-9 - _ . ~` and `/`).
pub fn s3_url_path(bucket: &str, key: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const KEY: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~')
        .remove(b'/');
    format!("/{bucket}/{}", utf8_percent_encode(key, KEY))
}
