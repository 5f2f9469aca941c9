//! `shmfetch serve`: a directory through the AIStore object-read API.
//!
//! `DIR/BUCKET/OBJECT` is `ais://BUCKET/OBJECT`. A gateway listens on
//! `--addr` and redirects each request (301 GET, 307 HEAD) to one of
//! `--targets` targets, listening on the same IP with ports of their own;
//! the redirect's `Location` names the host of `--addr` (for an unspecified
//! address such as `0.0.0.0`, the host the client asked for), so clients on
//! other hosts can follow it. Targets answer HEAD and ranged GET (200, 206,
//! 416) and AIS JSON errors; file bodies are streamed from disk.
//!
//! Memory is bounded: `--threads` threads serve the connections of every
//! listener, taking them from a bounded queue (when it is full, new
//! connections wait in the kernel's accept backlog); each connection holds
//! one request head of at most 16 KiB; nothing is logged in memory. An idle
//! keep-alive connection gives its thread up as soon as another one waits.
//!
//! With `AIS_AUTHN_TOKEN` set, the gateway requires `Authorization: Bearer
//! <token>` and signs its redirects; a target answers only signed, recent
//! redirects (403 `direct target access denied` otherwise).
//!
//! There is no fault injection here: that is the test server's job
//! (`shmfetch::testing::server`).

mod http;
mod store;

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use crossbeam_channel::Receiver;
use sha2::{Digest, Sha256};
use shmfetch::range::parse_range_header;
use tracing::{debug, warn};

use crate::cli::ServeArgs;
use http::{Conn, Next, Request, ais_error};
use store::{Lookup, PathError, Root};

/// How long a signed redirect stays valid at a target.
const REDIRECT_TTL: Duration = Duration::from_secs(300);

/// The properties a v2 HEAD may ask for (`api/apc/lsmsg.go`); any other is
/// a 400, as in AIStore.
const HEAD_PROPS: &[&str] = &[
    "name",
    "size",
    "checksum",
    "atime",
    "version",
    "custom",
    "last-modified",
    "etag",
    "location",
    "copies",
    "ec",
    "chunked",
];

#[derive(Debug, Clone, Copy)]
enum Role {
    Gateway,
    Target(usize),
}

/// What every connection thread shares.
#[derive(Debug)]
struct Shared {
    root: Root,
    token: Option<String>,
    /// The host (URL form) put in redirects; `None` when bound to an
    /// unspecified address: then the request's `Host`, else the local IP
    /// the client reached.
    advertise: Option<String>,
    target_ports: Vec<u16>,
}

pub fn run(a: ServeArgs) -> Result<()> {
    anyhow::ensure!(a.threads >= 1, "--threads must be at least 1");
    anyhow::ensure!(a.targets >= 1, "--targets must be at least 1");
    let root = Root::new(&a.dir).with_context(|| format!("serving {}", a.dir.display()))?;
    let gw = TcpListener::bind(&a.addr).with_context(|| format!("listening on {}", a.addr))?;
    let gw_addr = gw.local_addr()?;
    let mut listeners = vec![(gw, Role::Gateway)];
    let mut target_ports = Vec::new();
    for i in 0..a.targets {
        let l = TcpListener::bind(SocketAddr::new(gw_addr.ip(), 0))
            .with_context(|| format!("listening for target {i} on {}", gw_addr.ip()))?;
        target_ports.push(l.local_addr()?.port());
        listeners.push((l, Role::Target(i)));
    }
    let advertise = advertised_host(&a.addr, gw_addr.ip());
    let shown = advertise.clone().unwrap_or_else(|| url_host(gw_addr.ip()));
    let endpoint = format!("http://{shown}:{}", gw_addr.port());
    let buckets = root.buckets().unwrap_or(0);
    let sh = Arc::new(Shared {
        root,
        token: std::env::var("AIS_AUTHN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        advertise,
        target_ports,
    });

    let (tx, rx) = crossbeam_channel::bounded::<(TcpStream, Role)>(a.threads);
    for i in 0..a.threads {
        let rx = rx.clone();
        let sh = Arc::clone(&sh);
        std::thread::Builder::new()
            .name(format!("serve-{i}"))
            .spawn(move || {
                for (stream, role) in rx.iter() {
                    // A bug in one connection must not cost the pool a thread.
                    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        serve_conn(stream, role, &sh, &rx)
                    }));
                    if served.is_err() {
                        warn!("a connection thread panicked; it goes on");
                    }
                }
            })
            .context("starting a connection thread")?;
    }
    eprintln!(
        "serving {} ({buckets} bucket(s)) at {endpoint} (AIS_ENDPOINT={endpoint}); \
         {} target(s), {} thread(s){}; Ctrl-C stops",
        sh.root.dir().display(),
        a.targets,
        a.threads,
        if sh.token.is_some() {
            ", bearer token required"
        } else {
            ""
        }
    );
    let mut accepts = Vec::new();
    for (l, role) in listeners {
        let tx = tx.clone();
        accepts.push(
            std::thread::Builder::new()
                .name("serve-accept".into())
                .spawn(move || {
                    for conn in l.incoming() {
                        match conn {
                            // Blocks while the queue is full: the connection
                            // waits, later ones wait in the backlog.
                            Ok(c) => {
                                if tx.send((c, role)).is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                // Out of descriptors and the like: back off
                                // instead of spinning.
                                warn!("accept: {e}");
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        }
                    }
                })
                .context("starting an accept thread")?,
        );
    }
    drop(tx);
    for t in accepts {
        let _ = t.join();
    }
    Ok(())
}

/// The host for redirects from `--addr` as given: `None` for an
/// unspecified IP (decided per request then).
fn advertised_host(addr: &str, bound: IpAddr) -> Option<String> {
    if bound.is_unspecified() {
        return None;
    }
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    match host.trim_matches(['[', ']']).parse::<IpAddr>() {
        Ok(ip) => Some(url_host(ip)),
        Err(_) if !host.is_empty() => Some(host.to_string()),
        Err(_) => Some(url_host(bound)),
    }
}

/// An IP as the host part of a URL (`[…]` around IPv6).
fn url_host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// The host part of a `Host` header (`name`, `name:port`, `[v6]:port`).
fn host_of(header: &str) -> Option<&str> {
    let h = header.trim();
    let host = if h.starts_with('[') {
        &h[..=h.find(']')?]
    } else {
        h.rsplit_once(':').map(|(a, _)| a).unwrap_or(h)
    };
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b));
    ok.then_some(host)
}

fn serve_conn(stream: TcpStream, role: Role, sh: &Shared, queue: &Receiver<(TcpStream, Role)>) {
    let peer = stream.peer_addr().ok();
    let mut conn = match Conn::new(stream) {
        Ok(c) => c,
        Err(e) => {
            debug!("{peer:?}: {e}");
            return;
        }
    };
    let busy = || !queue.is_empty();
    loop {
        let mut req = match conn.next_request(&busy) {
            Ok(Next::Request(r)) => r,
            Ok(Next::Closed) => break,
            Ok(Next::Bad(status, why)) => {
                let req = Request {
                    close: true,
                    ..Request::default()
                };
                let _ = conn.respond(&req, status, &[], &ais_error(status, "", why, &req));
                break;
            }
            Err(e) => {
                debug!("{peer:?}: {e}");
                break;
            }
        };
        // Others wait for a thread: answer, then make room.
        req.close |= busy();
        let result = match role {
            Role::Gateway => gateway(&mut conn, &req, sh),
            Role::Target(i) => target(&mut conn, &req, i, sh),
        };
        conn.served += 1;
        if let Err(e) = result {
            debug!("{peer:?} {} {}: {e}", req.method, req.path);
            break;
        }
        if req.close {
            break;
        }
    }
    conn.close();
}

/// The checked bucket and object names, or the refusal to send: 400 for a
/// path that is not an object's or a refused name, 405 for anything but
/// GET and HEAD, 400 for a request with a body.
fn check_request(req: &Request) -> Result<(String, String), (u16, String, &'static str)> {
    let names = store::object_path(&req.path).map_err(|e| match e {
        PathError::NotObjectPath => (400, format!("invalid URL path {:?}", req.path), ""),
        PathError::BadName(m) => (400, m, "ErrInvalidObjName"),
    })?;
    if req.method != "GET" && req.method != "HEAD" {
        return Err((
            405,
            format!("{} is not supported: this server only reads", req.method),
            "ErrUnsupp",
        ));
    }
    if req.has_body {
        return Err((400, "a GET or HEAD has no body".into(), ""));
    }
    Ok(names)
}

fn refuse(
    conn: &mut Conn,
    req: &Request,
    status: u16,
    tcode: &str,
    msg: &str,
) -> std::io::Result<()> {
    debug!("{} {} -> {status} {msg}", req.method, req.path);
    let extra = if status == 405 {
        vec![("Allow", "GET, HEAD".to_string())]
    } else {
        vec![]
    };
    conn.respond(req, status, &extra, &ais_error(status, tcode, msg, req))
}

fn gateway(conn: &mut Conn, req: &Request, sh: &Shared) -> std::io::Result<()> {
    if req.path == "/v1/health" {
        return conn.respond(req, 200, &[], "");
    }
    let (bucket, object) = match check_request(req) {
        Ok(n) => n,
        Err((status, msg, tcode)) => return refuse(conn, req, status, tcode, &msg),
    };
    // The bucket is looked up before the token (AIStore: a missing bucket
    // is a 404 even without a token).
    match sh.root.bucket(&bucket) {
        Ok(()) => {}
        Err(Lookup::Outside) => {
            let msg = format!("bucket \"ais://{bucket}\" lies outside the served directory");
            return refuse(conn, req, 403, "", &msg);
        }
        Err(_) => {
            let msg = format!("bucket \"ais://{bucket}\" does not exist");
            return refuse(conn, req, 404, "ErrBckNotFound", &msg);
        }
    }
    if let Some(tok) = &sh.token {
        let got = req
            .auth
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        match got {
            None => return refuse(conn, req, 401, "", "token required"),
            Some(t) if !same(t.as_bytes(), tok.as_bytes()) => {
                return refuse(conn, req, 401, "", "invalid token");
            }
            Some(_) => {}
        }
    }
    // The target from the object name (a stand-in for HRW).
    let h = object.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let port = sh.target_ports[(h % sh.target_ports.len() as u64) as usize];
    let host = match &sh.advertise {
        Some(h) => h.clone(),
        None => req
            .host
            .as_deref()
            .and_then(host_of)
            .map(str::to_string)
            .or_else(|| conn.local_ip().map(url_host))
            .unwrap_or_else(|| "127.0.0.1".into()),
    };
    let utm = radix36(now_ns());
    let mut location = format!("http://{host}:{port}{}?", req.path);
    if !req.query.is_empty() {
        location.push_str(&req.query);
        location.push('&');
    }
    location.push_str(&format!("pid=gw&utm={utm}"));
    if let Some(tok) = &sh.token {
        location.push_str(&format!("&u={}", signature(tok, &bucket, &object, &utm)));
    }
    let status = if req.method == "HEAD" { 307 } else { 301 };
    debug!("{} {} -> {status} {location}", req.method, req.path);
    conn.respond(req, status, &[("Location", location)], "")
}

fn target(conn: &mut Conn, req: &Request, idx: usize, sh: &Shared) -> std::io::Result<()> {
    let (bucket, object) = match check_request(req) {
        Ok(n) => n,
        Err((status, msg, tcode)) => return refuse(conn, req, status, tcode, &msg),
    };
    if let Some(tok) = &sh.token
        && !signed(tok, &bucket, &object, &req.query)
    {
        return refuse(conn, req, 403, "", "direct target access denied");
    }
    let obj = match sh.root.open(&bucket, &object) {
        Ok(o) => o,
        Err(Lookup::NoBucket) => {
            let msg = format!("bucket \"ais://{bucket}\" does not exist");
            return refuse(conn, req, 404, "ErrBckNotFound", &msg);
        }
        Err(Lookup::NoObject) => {
            let msg = format!("t[target{idx}]: ais://{bucket}/{object} does not exist");
            return refuse(conn, req, 404, "ErrNotFound", &msg);
        }
        Err(Lookup::Outside) => {
            let msg = format!("ais://{bucket}/{object} lies outside the served directory");
            return refuse(conn, req, 403, "", &msg);
        }
        Err(Lookup::Io(e)) => {
            warn!("opening ais://{bucket}/{object}: {e}");
            let msg = format!("t[target{idx}]: ais://{bucket}/{object}: {e}");
            return refuse(conn, req, 500, "", &msg);
        }
    };
    let size = obj.size;
    let mut headers = vec![
        ("Ais-Version", obj.version.clone()),
        ("ETag", obj.etag.clone()),
        ("Accept-Ranges", "bytes".to_string()),
    ];
    if req.method == "HEAD" {
        let bad = req
            .query
            .split('&')
            .filter_map(|kv| kv.strip_prefix("props="))
            .flat_map(|v| v.split([',', '+']))
            .map(|p| {
                percent_encoding::percent_decode_str(p)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .find(|p| !p.is_empty() && !HEAD_PROPS.contains(&p.as_str()));
        if let Some(p) = bad {
            return refuse(conn, req, 400, "", &format!("invalid property {p:?}"));
        }
        headers.push(("Ais-Present", "true".into()));
        debug!("HEAD {} -> 200 ({size} bytes)", req.path);
        return conn.write_head(req, 200, &headers, size);
    }
    let whole = shmfetch::range::ByteRange {
        start: 0,
        end: size,
    };
    let (status, range) = match req
        .range
        .as_deref()
        .map(|h| (h, parse_range_header(h, size)))
    {
        None => (200, whole),
        Some((_, Ok(r))) => (206, r),
        Some((h, Err(e))) => {
            let (tcode, msg) = e.aistore_error(h, size);
            let extra: Vec<_> = e
                .content_range(size)
                .map(|cr| ("Content-Range", cr))
                .into_iter()
                .collect();
            debug!("GET {} -> 416 {msg}", req.path);
            return conn.respond(req, 416, &extra, &ais_error(416, tcode, &msg, req));
        }
    };
    headers.push(("Content-Type", "application/octet-stream".into()));
    if status == 206 {
        headers.push(("Content-Range", range.to_content_range(size)));
    }
    debug!("GET {} -> {status} {range}", req.path);
    conn.write_head(req, status, &headers, range.len())?;
    conn.send_file(&obj.file, range)
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// `n` in base 36, as AIStore writes `utm`.
fn radix36(mut n: u128) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8_lossy(&out).into_owned()
}

/// The redirect's signature: ties the token, the object and the time.
fn signature(token: &str, bucket: &str, object: &str, utm: &str) -> String {
    let mut h = Sha256::new();
    for part in [token, bucket, object, utm] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex::encode(h.finalize())
}

/// Whether `query` carries a valid, recent signature for the object.
fn signed(token: &str, bucket: &str, object: &str, query: &str) -> bool {
    let last = |key: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .next_back()
    };
    let (Some(utm), Some(u)) = (last("utm"), last("u")) else {
        return false;
    };
    let Ok(sent) = u128::from_str_radix(utm, 36) else {
        return false;
    };
    let now = now_ns();
    let fresh = sent <= now + 60_000_000_000 && now.saturating_sub(sent) <= REDIRECT_TTL.as_nanos();
    fresh
        && same(
            u.as_bytes(),
            signature(token, bucket, object, utm).as_bytes(),
        )
}

/// Compares secrets in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_host_follows_the_address_asked_for() {
        let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            advertised_host("127.0.0.2:51080", v4("127.0.0.2")).as_deref(),
            Some("127.0.0.2")
        );
        assert_eq!(
            advertised_host("[::1]:0", v4("::1")).as_deref(),
            Some("[::1]")
        );
        assert_eq!(
            advertised_host("myhost:51080", v4("10.0.0.5")).as_deref(),
            Some("myhost")
        );
        assert_eq!(advertised_host("0.0.0.0:51080", v4("0.0.0.0")), None);
        assert_eq!(host_of("h.example:51080"), Some("h.example"));
        assert_eq!(host_of("[fe80::1]:80"), Some("[fe80::1]"));
        assert_eq!(host_of("10.1.2.3"), Some("10.1.2.3"));
        assert_eq!(host_of("evil/x:1"), None);
        assert_eq!(host_of(""), None);
    }

    #[test]
    fn redirects_are_signed_and_expire() {
        let utm = radix36(now_ns());
        let u = signature("tok", "b", "o", &utm);
        let q = format!("provider=ais&pid=gw&utm={utm}&u={u}");
        assert!(signed("tok", "b", "o", &q));
        assert!(!signed("other", "b", "o", &q));
        assert!(!signed("tok", "b", "o2", &q));
        assert!(!signed("tok", "b", "o", "provider=ais&pid=gw"));
        let old = radix36(now_ns() - 2 * REDIRECT_TTL.as_nanos());
        let q = format!("utm={old}&u={}", signature("tok", "b", "o", &old));
        assert!(!signed("tok", "b", "o", &q));
        assert_eq!(radix36(0), "0");
        assert_eq!(radix36(36 * 36 + 35), "10z");
    }
}
