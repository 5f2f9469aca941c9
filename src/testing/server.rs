//! A loopback server that speaks the AIStore object API, or (with
//! [`ServerConfig::s3`]) S3's unsigned path-style object API: reads, and
//! writes (single PUTs, multipart uploads, delete, rename or copy).
//!
//! **Writes, AIStore mode** (`ais_write`): the gateway answers `PUT`,
//! `DELETE` and `POST` on `/v1/objects/<b>/<o>` with a 307 to the target
//! its `GET` redirect names (same `pid`/`utm` markers), after the bucket
//! and token checks; it reads a `POST`'s action message first (to refuse
//! an unknown action, as AIStore's proxy does), and leaves other bodies
//! unread (see `wire` for what then happens to the connection). A target
//! stores `PUT` bodies, deletes, and runs the action messages
//! `rename-obj`, `mpt-upload`, `mpt-complete` (`POST ?uploadId=`) and
//! `mpt-abort` (`DELETE ?uploadId=`); parts are `PUT ?uploadId=&partNumber=`.
//! With a token configured, a target refuses writes without the
//! gateway's markers (403 `direct target access denied`). An object being
//! written is visible only once its body (or its upload) is complete.
//!
//! **Writes, S3 mode** (`s3_write`): `PutObject` (`Content-MD5` checked),
//! `CopyObject`, `DeleteObject`, and multipart uploads (create, part,
//! complete with ETag checks, abort, list), with S3's XML answers and
//! error codes; signatures are not verified.
//!
//! Built on `std::net` and `httparse` rather than an HTTP server crate on
//! purpose: fault injection needs to send what a correct server library
//! refuses to (a short body under a longer `Content-Length`, a wrong
//! `Content-Range`, a reset in the middle of a body).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use percent_encoding::percent_decode_str;

use crate::range::{ByteRange, parse_range_header};

mod ais_write;
mod s3_write;
mod wire;
#[cfg(test)]
mod write_tests;

use wire::{Conn, Request};

/// Where an object's bytes come from.
#[derive(Debug, Clone)]
pub enum Body {
    /// In memory.
    Bytes(Arc<Vec<u8>>),
    /// A file, read per request.
    File(PathBuf),
}

impl Body {
    fn size(&self) -> std::io::Result<u64> {
        match self {
            Body::Bytes(b) => Ok(b.len() as u64),
            Body::File(p) => Ok(std::fs::metadata(p)?.len()),
        }
    }
}

/// What to do wrong, instead of answering normally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer with this status and an AIS JSON error body (in S3 mode, an
    /// S3 XML error: 503 `SlowDown`, 500 and other statuses
    /// `InternalError`, 403 `AccessDenied`, 404 `NoSuchKey`, 400
    /// `InvalidRequest`). A write's body is read first (nothing is stored).
    Status(u16),
    /// S3 mode: answer with this status and an S3 XML error of this code
    /// (e.g. 400 `ExpiredToken`, 403 `SignatureDoesNotMatch`).
    S3Error(u16, &'static str),
    /// Answer a ranged GET with 200 and the whole object.
    IgnoreRange,
    /// Answer 206 with a `Content-Range` shifted by one byte.
    WrongContentRange,
    /// Send the right headers, then only this many body bytes (at most
    /// the range minus one), then close.
    ShortBody(u64),
    /// Send headers and this many body bytes (at most the range minus one),
    /// then reset the connection.
    ResetAfter(u64),
    /// Send headers, then nothing for this long, then close. On a write:
    /// read the body, then nothing for this long, then close without an
    /// answer (nothing is stored).
    Stall(Duration),
    /// Send the body at about this many bytes per second.
    Trickle(u64),
    /// Answer as if the object had been replaced since the HEAD: another
    /// version and ETag, other bytes.
    ChangeVersion,
    /// Before answering, the object is replaced by these bytes (a new
    /// version and, in S3 mode, a new ETag), as a writer overwriting it in
    /// the middle of a download would; this and later requests see the new
    /// object.
    Overwrite(Arc<Vec<u8>>),
    /// The whole server (gateway and targets) goes down for this long,
    /// starting with this request, which gets no answer: its listeners
    /// close (connections are refused), open connections are dropped, and
    /// it comes back on the same ports. A server restart.
    Outage(Duration),
    /// A write whose connection dies in the middle of its body: read this
    /// many body bytes (at most the body's length minus one), then reset
    /// the connection; nothing is stored.
    ResetDuringBody(u64),
}

impl Fault {
    /// `kind` on every GET of `object`, for good (a server that always
    /// misbehaves).
    pub fn always(object: &str, kind: FaultKind) -> Fault {
        Fault::on(object, kind, u32::MAX)
    }
}

/// A scripted fault: applies to requests at a target (in S3 mode, at the
/// server) that match `method` (GET unless set), `object`, `query` and
/// `touching`, after letting `skip` of them through, `times` times.
///
/// On writes (`PUT`, `POST`, `DELETE`) the kinds that apply are
/// [`FaultKind::Status`], [`FaultKind::S3Error`], [`FaultKind::Stall`],
/// [`FaultKind::Outage`] and [`FaultKind::ResetDuringBody`]; the others
/// describe a read's answer and are spent without effect.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Object name (as in the bucket), or any object when `None`.
    pub object: Option<String>,
    /// Only ranged GETs whose range includes this byte, when set (a resumed
    /// request for the rest of a range still matches its last byte).
    pub touching: Option<u64>,
    /// Matching requests to let through first (script "fail attempt N").
    pub skip: u32,
    /// How many requests it still applies to.
    pub times: u32,
    /// What happens.
    pub kind: FaultKind,
    /// The request method it applies to (`GET` when `None`).
    pub method: Option<String>,
    /// Only requests whose query string contains this, when set (e.g.
    /// `partNumber=` for the parts of a multipart upload).
    pub query: Option<String>,
    /// When above 1, only every `every`-th matching request (after `skip`)
    /// is faulted; the others pass.
    pub every: u32,
    /// Matching requests seen so far (for `every`).
    pub seen: u32,
}

impl Fault {
    /// `kind`, `times` times, on every GET of `object`.
    pub fn on(object: &str, kind: FaultKind, times: u32) -> Fault {
        Fault {
            object: Some(object.to_string()),
            touching: None,
            skip: 0,
            times,
            kind,
            method: None,
            query: None,
            every: 0,
            seen: 0,
        }
    }

    /// Faults only every `n`-th matching request ("a fault every 3rd part").
    pub fn every(mut self, n: u32) -> Fault {
        self.every = n;
        self
    }

    /// Restricts the fault to requests with this method: `PUT`, `POST` or
    /// `DELETE` (a write; `GET` by default; `HEAD`s are never faulted).
    pub fn method(mut self, method: &str) -> Fault {
        self.method = Some(method.to_ascii_uppercase());
        self
    }

    /// Restricts the fault to requests whose query string contains `s`.
    pub fn query(mut self, s: &str) -> Fault {
        self.query = Some(s.to_string());
        self
    }

    /// Restricts the fault to ranges that include byte `offset`.
    pub fn touching(mut self, offset: u64) -> Fault {
        self.touching = Some(offset);
        self
    }

    /// Lets the first `n` matching requests through.
    pub fn skip(mut self, n: u32) -> Fault {
        self.skip = n;
        self
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    /// `gateway` or `target<N>`.
    pub role: String,
    /// `GET` or `HEAD`.
    pub method: String,
    /// Decoded object name (or the raw path when not an object URL).
    pub object: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// Status answered.
    pub status: u16,
    /// Whether an `Authorization` header was present (a bearer token; in
    /// S3 mode, a SigV4 signature).
    pub had_auth: bool,
    /// The query string as sent (in S3 mode, presigned `X-Amz-*`
    /// parameters), without the `?`.
    pub query: String,
    /// The `If-Match` header, if any.
    pub if_match: Option<String>,
    /// Request body bytes the server read (0 without a body, or when the
    /// body was left unread, as a gateway does before a redirect).
    pub body_len: u64,
    /// When the request was answered.
    pub at: std::time::SystemTime,
}

/// Settings of a [`TestServer`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Number of targets behind the gateway.
    pub targets: usize,
    /// When set, the gateway requires `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// When set, HEAD with `props=chunked` reports objects as chunked with
    /// this `Ais-Chunks-Max-Chunk-Size`.
    pub chunk_hint: Option<u64>,
    /// Time a target waits before answering each GET (object storage's
    /// time to first byte), so that the number of requests costs time.
    pub first_byte_latency: Option<Duration>,
    /// Bytes per second each target response is paced at (one disk or one
    /// network stream per request), so that bytes fetched cost time; request
    /// bodies (uploads) are read no faster either.
    pub per_request_rate: Option<u64>,
    /// The host the gateway names in its redirects (e.g. `localhost`), in
    /// place of the targets' IP address; the port stays the target's.
    pub redirect_host: Option<String>,
    /// Targets behave like a static server without Range support: no
    /// `Accept-Ranges` header, and 200 with the whole object to any GET.
    pub no_ranges: bool,
    /// S3 mode: the gateway itself answers unsigned path-style
    /// `GET`/`HEAD /<bucket>/<key>` (key percent-decoded, query ignored, so
    /// presigned `X-Amz-*` parameters are accepted unverified) with
    /// `ETag: "<content hash>"`, `Last-Modified`, `If-Match` (412
    /// `PreconditionFailed`) and S3 XML errors (`NoSuchBucket`,
    /// `NoSuchKey`, `InvalidRange`; on HEAD the status only). No redirects;
    /// `token` and `chunk_hint` do not apply; faults do. Writes too: see
    /// the module's notes.
    pub s3: bool,
    /// An AIStore cluster older than multipart uploads (before 4.0): the
    /// gateway answers the `mpt-*` actions as such a proxy answers any
    /// action it does not route by object — it parsed the object's path
    /// with the bucket as the last item, so `b/o` is the bucket's name:
    /// 400 `bucket name is invalid: may only contain letters, numbers,
    /// dashes (-), underscores (_), and dots (.)` (AIStore 3.31
    /// `ais/proxy.go` `httpobjpost`, `cmn/cos/uuid.go` `CheckAlphaPlus`).
    pub no_multipart: bool,
    /// S3 mode: the smallest part but the last a completed multipart
    /// upload may have (`EntityTooSmall` otherwise); S3 requires 5 MiB.
    /// 0 (the default) checks nothing, so tests can use small parts.
    pub min_part_size: u64,
    /// Targets answer a `GET`/`HEAD` that did not come through the gateway
    /// (no `pid=` marker) with 403 `direct target access denied`, as an
    /// AIStore 5.0 cluster with AuthN or request signing does.
    pub direct_denied: bool,
    /// Targets (by index) the cluster map shows in maintenance (flag 4):
    /// the gateway redirects elsewhere; they still answer if asked.
    pub maintenance: Vec<usize>,
    /// The body served for `GET /v1/daemon?what=smap` instead of the map
    /// of the targets (hostile-input tests).
    pub smap_body: Option<String>,
    /// Time the gateway waits before each redirect (a proxy's hop to a
    /// cold target costs milliseconds on a real cluster).
    pub redirect_latency: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            targets: 2,
            token: None,
            chunk_hint: None,
            first_byte_latency: None,
            per_request_rate: None,
            redirect_host: None,
            no_ranges: false,
            s3: false,
            no_multipart: false,
            min_part_size: 0,
            direct_denied: false,
            maintenance: Vec::new(),
            smap_body: None,
            redirect_latency: None,
        }
    }
}

/// One stored object.
#[derive(Debug, Clone)]
struct Stored {
    body: Body,
    version: u64,
    /// S3 mode: the quoted content hash, computed when stored.
    etag: Option<String>,
    modified: SystemTime,
}

/// bucket → object → what is stored
type Buckets = HashMap<String, HashMap<String, Stored>>;

#[derive(Default)]
struct State {
    buckets: RwLock<Buckets>,
    faults: Mutex<Vec<Fault>>,
    log: Mutex<Vec<LoggedRequest>>,
    shutdown: AtomicBool,
    redirects: AtomicU64,
    injected: AtomicU64,
    /// While set and in the future, the server is down.
    down_until: Mutex<Option<Instant>>,
    /// Every listener's address (gateway first), to wake accept loops.
    addrs: Mutex<Vec<SocketAddr>>,
    /// Outages started so far.
    outages: AtomicU64,
    /// Multipart uploads neither completed nor aborted, by upload id.
    uploads: Mutex<HashMap<String, Upload>>,
    /// Upload ids handed out so far.
    upload_ids: AtomicU64,
}

/// A multipart upload in progress.
#[derive(Debug)]
struct Upload {
    bucket: String,
    object: String,
    initiated: SystemTime,
    /// Part number → its bytes and their MD5.
    parts: std::collections::BTreeMap<u32, Part>,
}

#[derive(Debug)]
struct Part {
    data: Vec<u8>,
    md5: [u8; 16],
}

impl State {
    fn is_down(&self) -> bool {
        lock(&self.down_until).is_some_and(|t| t > Instant::now())
    }

    /// Takes the server down for `d`: accept loops are woken to close
    /// their listeners.
    fn go_down(&self, d: Duration) {
        *lock(&self.down_until) = Some(Instant::now() + d);
        self.outages.fetch_add(1, Ordering::Relaxed);
        for a in lock(&self.addrs).iter() {
            let _ = TcpStream::connect_timeout(a, Duration::from_millis(200));
        }
    }
}

/// The running server. Stops when dropped.
pub struct TestServer {
    cfg: ServerConfig,
    state: Arc<State>,
    gateway: SocketAddr,
    targets: Vec<SocketAddr>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("gateway", &self.gateway)
            .field("targets", &self.targets)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TestServer {
    /// Starts a gateway and `cfg.targets` targets on `127.0.0.1`, port 0.
    ///
    /// # Errors
    /// When a listener cannot be bound.
    pub fn start(cfg: ServerConfig) -> std::io::Result<TestServer> {
        TestServer::start_on("127.0.0.1:0", cfg)
    }

    /// Like [`TestServer::start`], with the gateway bound to `gateway_addr`.
    ///
    /// # Errors
    /// When a listener cannot be bound.
    pub fn start_on(gateway_addr: &str, cfg: ServerConfig) -> std::io::Result<TestServer> {
        let state = Arc::new(State::default());
        let gw = TcpListener::bind(gateway_addr)?;
        let gateway = gw.local_addr()?;
        let mut listeners = Vec::new();
        let mut targets = Vec::new();
        for _ in 0..cfg.targets.max(1) {
            let l = TcpListener::bind("127.0.0.1:0")?;
            targets.push(l.local_addr()?);
            listeners.push(l);
        }
        *lock(&state.addrs) = std::iter::once(gateway)
            .chain(targets.iter().copied())
            .collect();
        let mut threads = Vec::new();
        threads.push(accept_loop(gw, Role::Gateway, &cfg, &state, &targets));
        for (i, l) in listeners.into_iter().enumerate() {
            threads.push(accept_loop(l, Role::Target(i), &cfg, &state, &targets));
        }
        Ok(TestServer {
            cfg,
            state,
            gateway,
            targets,
            threads,
        })
    }

    /// The gateway's URL, for `AIS_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.gateway)
    }

    /// A plain HTTP URL of an object at the first target (no redirect).
    pub fn direct_url(&self, bucket: &str, object: &str) -> String {
        format!(
            "http://{}{}",
            self.targets[0],
            crate::source::aistore::object_url("", bucket, object, "ais")
        )
    }

    /// Creates an empty bucket.
    pub fn create_bucket(&self, bucket: &str) {
        if let Ok(mut b) = self.state.buckets.write() {
            b.entry(bucket.to_string()).or_default();
        }
    }

    /// Stores an object (creating its bucket), replacing any previous one
    /// and bumping its version. Safe while downloads run: in S3 mode the
    /// new bytes get a new ETag, so a GET with the old one in `If-Match`
    /// is answered 412.
    pub fn put(&self, bucket: &str, object: &str, body: Body) {
        let etag = self.cfg.s3.then(|| content_etag(&body));
        store(&self.state, bucket, object, body, etag);
    }

    /// Stores `data` in memory.
    pub fn put_bytes(&self, bucket: &str, object: &str, data: Vec<u8>) {
        self.put(bucket, object, Body::Bytes(Arc::new(data)));
    }

    /// Serves every file under `dir/<bucket>/…` as `ais://<bucket>/…`.
    ///
    /// # Errors
    /// When `dir` cannot be listed.
    pub fn put_dir(&self, dir: &std::path::Path) -> std::io::Result<usize> {
        let mut n = 0;
        for b in std::fs::read_dir(dir)? {
            let b = b?;
            if !b.file_type()?.is_dir() {
                continue;
            }
            let bucket = b.file_name().to_string_lossy().into_owned();
            self.create_bucket(&bucket);
            let mut stack = vec![b.path()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d)? {
                    let e = e?;
                    let p = e.path();
                    if e.file_type()?.is_dir() {
                        stack.push(p);
                    } else if let Ok(rel) = p.strip_prefix(b.path()) {
                        self.put(&bucket, &rel.to_string_lossy(), Body::File(p.clone()));
                        n += 1;
                    }
                }
            }
        }
        Ok(n)
    }

    /// Serves every file directly in `dir` as `ais://<bucket>/<prefix><name>`
    /// (creating the bucket); returns how many. A checkpoint directory put
    /// with prefix `ckpt/` is then `ais://<bucket>/ckpt/`.
    ///
    /// # Errors
    /// When `dir` cannot be listed.
    pub fn put_files(
        &self,
        bucket: &str,
        prefix: &str,
        dir: &std::path::Path,
    ) -> std::io::Result<usize> {
        self.create_bucket(bucket);
        let mut n = 0;
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if e.file_type()?.is_file() {
                let name = format!("{prefix}{}", e.file_name().to_string_lossy());
                self.put(bucket, &name, Body::File(e.path()));
                n += 1;
            }
        }
        Ok(n)
    }

    /// Adds a scripted fault.
    pub fn inject(&self, fault: Fault) {
        lock(&self.state.faults).push(fault);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        lock(&self.state.log).clone()
    }

    /// Faults served so far.
    pub fn faults_injected(&self) -> u64 {
        self.state.injected.load(Ordering::Relaxed)
    }

    /// Takes the whole server down for `d` (connections are refused, open
    /// ones dropped), as a restart would; it comes back on the same ports.
    pub fn outage(&self, d: Duration) {
        self.state.go_down(d);
    }

    /// Outages started so far (by [`TestServer::outage`] or
    /// [`FaultKind::Outage`]).
    pub fn outages(&self) -> u64 {
        self.state.outages.load(Ordering::Relaxed)
    }

    /// Redirects the gateway has sent.
    pub fn redirects(&self) -> u64 {
        self.state.redirects.load(Ordering::Relaxed)
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// The bytes stored as `bucket`/`object` (written by a client, or put
    /// by the test), `None` when there is no such object.
    pub fn object(&self, bucket: &str, object: &str) -> Option<Vec<u8>> {
        let stored = {
            let b = self.state.buckets.read().ok()?;
            b.get(bucket)?.get(object)?.body.clone()
        };
        match stored {
            Body::Bytes(b) => Some(b.as_ref().clone()),
            Body::File(p) => std::fs::read(p).ok(),
        }
    }

    /// Multipart uploads created and neither completed nor aborted.
    pub fn uploads_in_progress(&self) -> usize {
        lock(&self.state.uploads).len()
    }
}

fn store(state: &State, bucket: &str, object: &str, body: Body, etag: Option<String>) {
    if let Ok(mut b) = state.buckets.write() {
        let objs = b.entry(bucket.to_string()).or_default();
        let version = objs.get(object).map(|o| o.version + 1).unwrap_or(1);
        let stored = Stored {
            body,
            version,
            etag,
            modified: SystemTime::now(),
        };
        objs.insert(object.to_string(), stored);
    }
}

/// `"<hex>"`: the content's MD5, as S3 tags an object stored by one PUT.
fn content_etag(body: &Body) -> String {
    use md5::Digest;
    let mut h = md5::Md5::new();
    match body {
        Body::Bytes(b) => h.update(b.as_slice()),
        Body::File(p) => {
            if let Ok(mut f) = File::open(p) {
                let mut buf = vec![0u8; 1 << 20];
                while let Ok(n) = f.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
            }
        }
    }
    format!("\"{}\"", hex::encode(h.finalize()))
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.state.shutdown.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.gateway);
        for t in &self.targets {
            let _ = TcpStream::connect(t);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Role {
    Gateway,
    Target(usize),
}

fn accept_loop(
    l: TcpListener,
    role: Role,
    cfg: &ServerConfig,
    state: &Arc<State>,
    targets: &[SocketAddr],
) -> JoinHandle<()> {
    let cfg = cfg.clone();
    let state = Arc::clone(state);
    let targets = targets.to_vec();
    std::thread::spawn(move || {
        let Ok(addr) = l.local_addr() else { return };
        let mut listener = Some(l);
        loop {
            if state.shutdown.load(Ordering::SeqCst) {
                break;
            }
            if state.is_down() {
                // Closed: connecting is refused until the outage ends.
                listener = None;
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            let Some(l) = &listener else {
                // Back on the same port (std sets SO_REUSEADDR).
                match TcpListener::bind(addr) {
                    Ok(l) => listener = Some(l),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
                continue;
            };
            let Ok((conn, _)) = l.accept() else { continue };
            if state.shutdown.load(Ordering::SeqCst) {
                break;
            }
            if state.is_down() {
                continue; // the wake-up of `go_down`, or a client: dropped
            }
            let cfg = cfg.clone();
            let state = Arc::clone(&state);
            let targets = targets.clone();
            std::thread::spawn(move || {
                let _ = serve_conn(conn, role, &cfg, &state, &targets);
            });
        }
    })
}

fn serve_conn(
    stream: TcpStream,
    role: Role,
    cfg: &ServerConfig,
    state: &State,
    targets: &[SocketAddr],
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut conn = Conn::new(stream);
    conn.set_pace(cfg.per_request_rate);
    loop {
        if state.is_down() {
            return Ok(()); // a restart drops open connections
        }
        let req = match conn.read_request() {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if state.shutdown.load(Ordering::SeqCst) || conn.has_partial_request() {
                    return Ok(());
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        if state.is_down() {
            return Ok(());
        }
        let write = is_write(&req);
        let keep = match role {
            Role::Gateway if cfg.s3 && (write || s3_write::is_not_an_object_read(&req)) => {
                s3_write::serve(&mut conn, &req, cfg, state)?
            }
            Role::Gateway if cfg.s3 => target(&mut conn, &req, None, cfg, state)?,
            Role::Gateway if write => ais_write::gateway(&mut conn, &req, cfg, state, targets)?,
            Role::Gateway => gateway(&mut conn, &req, cfg, state, targets)?,
            Role::Target(i) if write => ais_write::target(&mut conn, &req, i, cfg, state)?,
            Role::Target(i) => target(&mut conn, &req, Some(i), cfg, state)?,
        };
        if !keep {
            let _ = conn.stream.shutdown(Shutdown::Both);
            return Ok(());
        }
        if !conn.finish(&req) {
            return Ok(());
        }
    }
}

/// Requests that write: every method but `GET` and `HEAD` (a body sent
/// with those is not read, and dropped after the answer).
fn is_write(req: &Request) -> bool {
    !matches!(req.method.as_str(), "GET" | "HEAD")
}

/// Splits `/v1/objects/<bucket>/<object>` (object percent-decoded).
fn object_path(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix("/v1/objects/")?;
    let (b, o) = rest.split_once('/')?;
    let b = percent_decode_str(b).decode_utf8().ok()?.into_owned();
    let o = percent_decode_str(o).decode_utf8().ok()?.into_owned();
    if b.is_empty() || o.is_empty() {
        return None;
    }
    Some((b, o))
}

/// Splits path-style S3 `/<bucket>/<key>` (both percent-decoded; a `+`
/// stays a `+`).
fn s3_path(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix('/')?;
    let (b, k) = rest.split_once('/')?;
    let b = percent_decode_str(b).decode_utf8().ok()?.into_owned();
    let k = percent_decode_str(k).decode_utf8().ok()?.into_owned();
    if b.is_empty() || k.is_empty() {
        return None;
    }
    Some((b, k))
}

/// The S3 error code and message a status is answered with in S3 mode.
fn s3_error_code(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("InvalidRequest", "Invalid Request"),
        403 => ("AccessDenied", "Access Denied"),
        404 => ("NoSuchKey", "The specified key does not exist."),
        412 => (
            "PreconditionFailed",
            "At least one of the pre-conditions you specified did not hold",
        ),
        416 => ("InvalidRange", "The requested range is not satisfiable"),
        501 => (
            "NotImplemented",
            "A header you provided implies functionality that is not implemented",
        ),
        503 => ("SlowDown", "Please reduce your request rate."),
        _ => (
            "InternalError",
            "We encountered an internal error. Please try again.",
        ),
    }
}

/// Whether `If-Match: header` holds for `etag` (`*`, or one of a
/// comma-separated list; quotes optional, `W/` never matches).
fn if_match_allows(header: &str, etag: &str) -> bool {
    let bare = etag.trim_matches('"');
    header.split(',').map(str::trim).any(|t| {
        t == "*" || (!t.starts_with("W/") && t.trim_matches('"') == bare && !bare.is_empty())
    })
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// An S3 XML error (on HEAD, the status only, as S3 answers).
fn s3_error(
    conn: &mut Conn,
    req: &Request,
    status: u16,
    code: &str,
    message: &str,
    resource: &str,
    extra: &[(&str, String)],
) -> std::io::Result<bool> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if req.method == "HEAD" {
        head.push_str("Content-Length: 0\r\n\r\n");
        conn.write_all(head.as_bytes())?;
        return Ok(true);
    }
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{}</Message><Resource>{}</Resource></Error>",
        xml_escape(message),
        xml_escape(resource)
    );
    head.push_str(&format!(
        "Content-Type: application/xml\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    conn.write_all(head.as_bytes())?;
    conn.write_all(body.as_bytes())?;
    Ok(true)
}

/// An HTTP date (RFC 7231 IMF-fixdate), e.g. `Thu, 01 Jan 1970 00:00:00 GMT`.
fn http_date(t: SystemTime) -> String {
    let (days, (year, month, day), rem) = civil(t);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let mon = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!(
        "{weekday}, {day:02} {mon} {year} {:02}:{:02}:{:02} GMT",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// An ISO 8601 UTC time as S3's XML writes it, e.g.
/// `1970-01-01T00:00:00.000Z`.
fn iso8601(t: SystemTime) -> String {
    let (_, (year, month, day), rem) = civil(t);
    format!(
        "{year}-{month:02}-{day:02}T{:02}:{:02}:{:02}.000Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01, the civil date (year, month, day) and the
/// seconds into the day of `t` (H. Hinnant's algorithm).
fn civil(t: SystemTime) -> (i64, (i64, i64, i64), u64) {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (days, (year, month, day), rem)
}

fn ais_error(status: u16, tcode: &str, message: &str, method: &str, path: &str) -> String {
    serde_json::json!({
        "tcode": tcode, "message": message, "method": method,
        "url_path": path, "status": status,
    })
    .to_string()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        412 => "Precondition Failed",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn log(state: &State, role: &str, req: &Request, object: &str, status: u16) {
    lock(&state.log).push(LoggedRequest {
        role: role.to_string(),
        method: req.method.clone(),
        object: object.to_string(),
        range: req.range.clone(),
        status,
        had_auth: req.auth.is_some(),
        query: req.query.clone(),
        if_match: req.if_match.clone(),
        body_len: req.body_len.get(),
        at: std::time::SystemTime::now(),
    });
}

/// Writes a complete response with `body` of `content_type` (none when
/// the body is empty); `extra` headers first.
fn respond_raw(
    conn: &mut Conn,
    req: &Request,
    status: u16,
    extra: &[(&str, String)],
    content_type: &str,
    body: &[u8],
) -> std::io::Result<bool> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    conn.write_all(head.as_bytes())?;
    if req.method != "HEAD" {
        conn.write_all(body)?;
    }
    Ok(true)
}

/// The value of `key` in a query string (form-decoded), if present.
fn query_get(query: &str, key: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Writes a complete response with a small body (JSON error or redirect).
fn respond(
    conn: &mut Conn,
    req: &Request,
    status: u16,
    extra: &[(&str, String)],
    body: &str,
) -> std::io::Result<bool> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n");
    }
    if req.method == "HEAD" && status >= 400 {
        head.push_str(&format!(
            "Hdr-Error: {}\r\n",
            body.replace(['\r', '\n'], " ")
        ));
        head.push_str("Content-Length: 0\r\n\r\n");
        conn.write_all(head.as_bytes())?;
    } else {
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        conn.write_all(head.as_bytes())?;
        if req.method != "HEAD" {
            conn.write_all(body.as_bytes())?;
        }
    }
    Ok(true)
}

fn gateway(
    conn: &mut Conn,
    req: &Request,
    cfg: &ServerConfig,
    state: &State,
    targets: &[SocketAddr],
) -> std::io::Result<bool> {
    if req.path == "/v1/daemon" && req.query.split('&').any(|p| p == "what=smap") {
        log(state, "gateway", req, &req.path, 200);
        let body = match &cfg.smap_body {
            Some(b) => b.clone(),
            None => smap_json(cfg, targets, conn.stream.local_addr()?),
        };
        return respond_raw(conn, req, 200, &[], "application/json", body.as_bytes());
    }
    let (_, object) = match gateway_checks(conn, req, cfg, state)? {
        Ok(bo) => bo,
        Err(keep) => return Ok(keep),
    };
    let status = if req.method == "HEAD" { 307 } else { 301 };
    redirect(conn, req, cfg, state, targets, &object, status)
}

/// What a gateway checks before redirecting: the path names an object
/// (else 400), its bucket exists (404 `ErrBckNotFound`) and the bearer
/// token, when one is configured (401). `Ok` with bucket and object, or
/// `Err` with the answered request's keep-alive.
fn gateway_checks(
    conn: &mut Conn,
    req: &Request,
    cfg: &ServerConfig,
    state: &State,
) -> std::io::Result<Result<(String, String), bool>> {
    let Some((bucket, object)) = object_path(&req.path) else {
        log(state, "gateway", req, &req.path, 400);
        let body = ais_error(
            400,
            "",
            &format!("invalid URL path {:?}", req.path),
            &req.method,
            &req.path,
        );
        return respond(conn, req, 400, &[], &body).map(Err);
    };
    let exists = state
        .buckets
        .read()
        .map(|b| b.contains_key(&bucket))
        .unwrap_or(false);
    if !exists {
        log(state, "gateway", req, &object, 404);
        let msg = format!("bucket \"ais://{bucket}\" does not exist");
        return respond(
            conn,
            req,
            404,
            &[],
            &ais_error(404, "ErrBckNotFound", &msg, &req.method, &req.path),
        )
        .map(Err);
    }
    if let Some(tok) = &cfg.token {
        let got = req
            .auth
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .map(str::trim);
        match got {
            None | Some("") => {
                log(state, "gateway", req, &object, 401);
                return respond(
                    conn,
                    req,
                    401,
                    &[],
                    &ais_error(401, "", "token required", &req.method, &req.path),
                )
                .map(Err);
            }
            Some(t) if t != tok => {
                log(state, "gateway", req, &object, 401);
                return respond(
                    conn,
                    req,
                    401,
                    &[],
                    &ais_error(401, "", "invalid token", &req.method, &req.path),
                )
                .map(Err);
            }
            Some(_) => {}
        }
    }
    Ok(Ok((bucket, object)))
}

/// Answers with `status` and a `Location` on the target that holds
/// `object` (picked from its name, a stand-in for HRW, as a cluster map
/// would), with the original query and the proxy's `pid`/`utm` markers.
fn redirect(
    conn: &mut Conn,
    req: &Request,
    cfg: &ServerConfig,
    state: &State,
    targets: &[SocketAddr],
    object: &str,
    status: u16,
) -> std::io::Result<bool> {
    let bucket = object_path(&req.path).map(|(b, _)| b).unwrap_or_default();
    let provider = req
        .query
        .split('&')
        .find_map(|p| p.strip_prefix("provider="))
        .unwrap_or("ais");
    let t = hrw_target(cfg, targets, provider, &bucket, object);
    let utm = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let sep = if req.query.is_empty() { "" } else { "&" };
    let t = match &cfg.redirect_host {
        Some(host) => format!("{host}:{}", t.port()),
        None => t.to_string(),
    };
    let location = format!(
        "http://{t}{}?{}{sep}pid=gw1&utm={utm:x}",
        req.path, req.query
    );
    if let Some(d) = cfg.redirect_latency {
        std::thread::sleep(d);
    }
    state.redirects.fetch_add(1, Ordering::Relaxed);
    log(state, "gateway", req, object, status);
    respond(conn, req, status, &[("Location", location)], "")
}

/// The daemon id of target `i` in the cluster map.
pub fn target_id(i: usize) -> String {
    format!("target{i}")
}

/// The cluster map of the targets (`GET /v1/daemon?what=smap`): daemon
/// ids `target<i>`, `public_net.direct_url`, `id_digest` = xxh64 of the id
/// as AIStore computes it, flag 4 (maintenance) for `cfg.maintenance`.
fn smap_json(cfg: &ServerConfig, targets: &[SocketAddr], gateway: SocketAddr) -> String {
    let node = |id: String, addr: SocketAddr, kind: &str, flags: u64| {
        serde_json::json!({
            "daemon_id": id,
            "daemon_type": kind,
            "public_net": {
                "node_ip_addr": addr.ip().to_string(),
                "daemon_port": addr.port().to_string(),
                "direct_url": format!("http://{addr}"),
            },
            "flags": flags,
            "id_digest": crate::source::aistore::hrw::digest(&id),
        })
    };
    let tmap: serde_json::Map<String, serde_json::Value> = targets
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let flags = if cfg.maintenance.contains(&i) { 4 } else { 0 };
            (target_id(i), node(target_id(i), *a, "target", flags))
        })
        .collect();
    let proxy = node("gw1".into(), gateway, "proxy", 0);
    serde_json::json!({
        "tmap": tmap,
        "pmap": { "gw1": proxy },
        "proxy_si": proxy,
        "version": 3,
        "uuid": "shmfetch-test",
    })
    .to_string()
}

/// The target that holds `bucket/object` by AIStore's placement over the
/// targets not in maintenance (the first target when all are).
fn hrw_target(
    cfg: &ServerConfig,
    targets: &[SocketAddr],
    provider: &str,
    bucket: &str,
    object: &str,
) -> SocketAddr {
    use crate::source::aistore::hrw;
    let d = hrw::digest(&hrw::uname(provider, "", "", bucket, object));
    (0..targets.len())
        .filter(|i| !cfg.maintenance.contains(i))
        .max_by_key(|i| hrw::xoshiro256(hrw::digest(&target_id(*i)) ^ d))
        .map_or(targets[0], |i| targets[i])
}

fn take_fault(
    state: &State,
    req: &Request,
    object: &str,
    range: Option<ByteRange>,
) -> Option<FaultKind> {
    let mut faults = lock(&state.faults);
    let i = faults.iter().position(|f| {
        f.times > 0
            && f.method.as_deref().unwrap_or("GET") == req.method
            && f.query.as_deref().is_none_or(|q| req.query.contains(q))
            && f.object.as_deref().is_none_or(|o| o == object)
            && f.touching
                .is_none_or(|b| range.is_some_and(|r| r.start <= b && b < r.end))
    })?;
    if faults[i].skip > 0 {
        faults[i].skip -= 1;
        return None;
    }
    if faults[i].every > 1 {
        faults[i].seen = faults[i].seen.wrapping_add(1);
        if !faults[i].seen.is_multiple_of(faults[i].every) {
            return None;
        }
    }
    state.injected.fetch_add(1, Ordering::Relaxed);
    faults[i].times -= 1;
    let k = faults[i].kind.clone();
    if faults[i].times == 0 {
        faults.remove(i);
    }
    Some(k)
}

fn write_body(
    conn: &mut Conn,
    body: &Body,
    range: ByteRange,
    limit: Option<u64>,
) -> std::io::Result<()> {
    let end = limit
        .map(|l| (range.start + l).min(range.end))
        .unwrap_or(range.end);
    match body {
        Body::Bytes(b) => conn.write_all(&b[range.start as usize..end as usize]),
        Body::File(p) => {
            let f = File::open(p)?;
            let mut buf = vec![0u8; 1 << 20];
            let mut pos = range.start;
            while pos < end {
                let n = ((end - pos) as usize).min(buf.len());
                f.read_exact_at(&mut buf[..n], pos)?;
                conn.write_all(&buf[..n])?;
                pos += n as u64;
            }
            Ok(())
        }
    }
}

fn target(
    conn: &mut Conn,
    req: &Request,
    idx: Option<usize>,
    cfg: &ServerConfig,
    state: &State,
) -> std::io::Result<bool> {
    // `None`: the S3-mode gateway, which answers itself.
    let s3 = idx.is_none();
    let role = idx.map_or_else(|| "s3".to_string(), |i| format!("target{i}"));
    let parsed = if s3 {
        s3_path(&req.path)
    } else {
        object_path(&req.path)
    };
    let Some((bucket, object)) = parsed else {
        log(state, &role, req, &req.path, 400);
        if s3 {
            let msg = "only path-style GET/HEAD /<bucket>/<key> is served";
            return s3_error(conn, req, 400, "InvalidRequest", msg, &req.path, &[]);
        }
        return respond(
            conn,
            req,
            400,
            &[],
            &ais_error(400, "", "invalid URL path", &req.method, &req.path),
        );
    };
    if cfg.direct_denied && !s3 && !req.query.split('&').any(|p| p.starts_with("pid=")) {
        log(state, &role, req, &object, 403);
        return respond(
            conn,
            req,
            403,
            &[],
            &ais_error(
                403,
                "",
                "direct target access denied",
                &req.method,
                &req.path,
            ),
        );
    }
    let lookup = || {
        let b = state.buckets.read().ok()?;
        b.get(&bucket).and_then(|o| o.get(&object)).cloned()
    };
    let Some(mut stored) = lookup() else {
        log(state, &role, req, &object, 404);
        if s3 {
            let bucket_exists = state
                .buckets
                .read()
                .map(|b| b.contains_key(&bucket))
                .unwrap_or(false);
            let (code, msg) = if bucket_exists {
                ("NoSuchKey", "The specified key does not exist.")
            } else {
                ("NoSuchBucket", "The specified bucket does not exist.")
            };
            return s3_error(conn, req, 404, code, msg, &req.path, &[]);
        }
        let msg = format!("t[{role}]: ais://{bucket}/{object} does not exist");
        return respond(
            conn,
            req,
            404,
            &[],
            &ais_error(404, "ErrNotFound", &msg, &req.method, &req.path),
        );
    };
    let mut fault = if req.method == "GET" {
        let size = stored.body.size()?;
        let asked = req
            .range
            .as_deref()
            .and_then(|h| parse_range_header(h, size).ok());
        take_fault(state, req, &object, asked)
    } else {
        None
    };
    if let Some(FaultKind::Overwrite(bytes)) = &fault {
        let body = Body::Bytes(Arc::clone(bytes));
        let etag = cfg.s3.then(|| content_etag(&body));
        store(state, &bucket, &object, body, etag);
        fault = None;
        match lookup() {
            Some(s) => stored = s,
            None => return Ok(false),
        }
    }
    let size = stored.body.size()?;
    let (body, version, etag) = if fault == Some(FaultKind::ChangeVersion) {
        let other = Body::Bytes(Arc::new(crate::testing::content::bytes(
            stored.version ^ 0xDEAD,
            size as usize,
        )));
        let etag = s3.then(|| content_etag(&other));
        (other, stored.version + 1000, etag)
    } else {
        (stored.body, stored.version, stored.etag)
    };
    let mut common = if s3 {
        let etag = etag.unwrap_or_else(|| content_etag(&body));
        if let Some(im) = &req.if_match
            && !if_match_allows(im, &etag)
        {
            log(state, &role, req, &object, 412);
            let msg = "At least one of the pre-conditions you specified did not hold";
            return s3_error(conn, req, 412, "PreconditionFailed", msg, &req.path, &[]);
        }
        vec![
            ("ETag", etag),
            ("Last-Modified", http_date(stored.modified)),
        ]
    } else {
        vec![
            ("Ais-Version", version.to_string()),
            ("ETag", format!("\"v{version}\"")),
        ]
    };
    if !cfg.no_ranges {
        common.push(("Accept-Ranges", "bytes".to_string()));
    }
    if req.method == "HEAD" {
        let mut h = common.clone();
        if !s3 {
            h.push(("Ais-Present", "true".into()));
        }
        if let Some(c) = cfg.chunk_hint.filter(|_| !s3)
            && req
                .query
                .split('&')
                .any(|kv| kv.starts_with("props=") && kv.contains("chunked"))
        {
            h.push(("Ais-Chunks-Count", size.div_ceil(c.max(1)).to_string()));
            h.push(("Ais-Chunks-Max-Chunk-Size", c.to_string()));
        }
        let mut head = "HTTP/1.1 200 OK\r\n".to_string();
        for (k, v) in &h {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {size}\r\n\r\n"));
        log(state, &role, req, &object, 200);
        conn.write_all(head.as_bytes())?;
        return Ok(true);
    }
    let range = match &req.range {
        None => None,
        Some(_) if cfg.no_ranges => None,
        Some(h) => match parse_range_header(h, size) {
            Ok(r) => Some(r),
            Err(e) => {
                log(state, &role, req, &object, 416);
                let (tcode, msg) = e.aistore_error(h, size);
                let extra: Vec<_> = e
                    .content_range(size)
                    .map(|cr| ("Content-Range", cr))
                    .into_iter()
                    .collect();
                if s3 {
                    let msg = "The requested range is not satisfiable";
                    return s3_error(conn, req, 416, "InvalidRange", msg, &req.path, &extra);
                }
                return respond(
                    conn,
                    req,
                    416,
                    &extra,
                    &ais_error(416, tcode, &msg, &req.method, &req.path),
                );
            }
        },
    };
    if let Some(FaultKind::Outage(d)) = fault {
        log(state, &role, req, &object, 0);
        state.go_down(d);
        return Ok(false);
    }
    if let Some(FaultKind::S3Error(s, code)) = fault {
        log(state, &role, req, &object, s);
        return s3_error(conn, req, s, code, "injected", &req.path, &[]);
    }
    if let Some(FaultKind::Status(s)) = fault {
        log(state, &role, req, &object, s);
        if s3 {
            let (code, msg) = s3_error_code(s);
            return s3_error(conn, req, s, code, msg, &req.path, &[]);
        }
        return respond(
            conn,
            req,
            s,
            &[],
            &ais_error(s, "", &format!("injected {s}"), &req.method, &req.path),
        );
    }
    let whole = ByteRange {
        start: 0,
        end: size,
    };
    let (status, r) = match range {
        Some(_) if fault == Some(FaultKind::IgnoreRange) => (200, whole),
        Some(r) => (206, r),
        None => (200, whole),
    };
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in &common {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("Content-Type: application/octet-stream\r\n");
    if status == 206 {
        let cr = if fault == Some(FaultKind::WrongContentRange) {
            ByteRange {
                start: r.start + 1,
                end: r.end + 1,
            }
            .to_content_range(size)
        } else {
            r.to_content_range(size)
        };
        head.push_str(&format!("Content-Range: {cr}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", r.len()));
    log(state, &role, req, &object, status);
    if req.method == "GET"
        && let Some(d) = cfg.first_byte_latency
    {
        std::thread::sleep(d);
    }
    conn.write_all(head.as_bytes())?;
    match fault {
        // At most len − 1 bytes: a short body is always short.
        Some(FaultKind::ShortBody(n)) => {
            write_body(conn, &body, r, Some(n.min(r.len().saturating_sub(1))))?;
            Ok(false)
        }
        Some(FaultKind::ResetAfter(n)) => {
            write_body(conn, &body, r, Some(n.min(r.len().saturating_sub(1))))?;
            // SO_LINGER 0 turns the close into a reset.
            conn.reset();
            Ok(false)
        }
        Some(FaultKind::Stall(d)) => {
            std::thread::sleep(d);
            Ok(false)
        }
        Some(FaultKind::Trickle(rate)) => {
            let piece = (rate / 20).max(1);
            let mut pos = r.start;
            while pos < r.end {
                let end = (pos + piece).min(r.end);
                write_body(conn, &body, ByteRange { start: pos, end }, None)?;
                pos = end;
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(true)
        }
        _ => {
            match cfg.per_request_rate.filter(|_| req.method == "GET") {
                Some(rate) => {
                    // Paced: byte n leaves no earlier than n / rate seconds in.
                    let start = std::time::Instant::now();
                    let piece = (rate / 200).max(1);
                    let mut pos = r.start;
                    while pos < r.end {
                        let end = (pos + piece).min(r.end);
                        write_body(conn, &body, ByteRange { start: pos, end }, None)?;
                        pos = end;
                        let due = Duration::from_secs_f64((pos - r.start) as f64 / rate as f64);
                        if let Some(wait) = due.checked_sub(start.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                }
                None => write_body(conn, &body, r, None)?,
            }
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_are_imf_fixdates() {
        let at = |s| http_date(std::time::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(at(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 GMT");
    }

    #[test]
    fn if_match_compares_strong_etags_quoted_or_not() {
        assert!(if_match_allows("\"ab\"", "\"ab\""));
        assert!(if_match_allows("ab", "\"ab\""));
        assert!(if_match_allows("\"x\", \"ab\"", "\"ab\""));
        assert!(if_match_allows("*", "\"ab\""));
        assert!(!if_match_allows("\"abc\"", "\"ab\""));
        assert!(!if_match_allows("W/\"ab\"", "\"ab\""));
    }
}
