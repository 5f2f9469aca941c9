//! Plain HTTP(S) objects, and the one ranged-GET path every HTTP-based
//! backend uses (`get_range_into`): status 206, `Content-Range` equal to
//! the range asked for (of an object of the expected size), body length
//! exactly the range — anything else is an error naming what came back.

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use ureq::ResponseExt;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    Buffers, ConnectProxyConnector, ConnectionDetails, Connector, DefaultConnector, LazyBuffers,
    NextTimeout, RustlsConnector, TcpConnector, Transport,
};

use crate::error::{Error, Result};
use crate::range::{ByteRange, parse_content_range};
use crate::source::sink::RangeSink;
use crate::source::{ObjectMeta, ObjectSource, SourceSpec};

/// How long a TCP connect may take by default: long enough for a busy
/// cluster, short enough that a dead endpoint is reported within seconds.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one socket read may block by default. A stalled server (headers
/// sent, no bytes) becomes a [`Error::Transport`] after this.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Most redirects followed for one request (AIStore needs one).
pub const DEFAULT_MAX_REDIRECTS: u32 = 5;

/// Settings of the HTTP client each worker builds after the fork.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HttpConfig {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Timeout of each socket read.
    pub read_timeout: Duration,
    /// Redirects followed per request.
    pub max_redirects: u32,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            max_redirects: DEFAULT_MAX_REDIRECTS,
        }
    }
}

/// A blocking HTTP client with a keep-alive connection pool (ureq).
#[derive(Debug, Clone)]
pub struct HttpClient {
    pub(crate) agent: ureq::Agent,
}

impl HttpClient {
    /// Builds a client. Statuses are returned, not turned into errors, so
    /// AIStore's JSON error bodies can be read; compression is never asked
    /// for (it would break byte ranges).
    pub fn new(cfg: &HttpConfig) -> HttpClient {
        HttpClient::from_config(HttpClient::prepare(cfg))
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::new(&HttpConfig::default())
    }
}

/// Turns a non-success status into a typed error. Backends pass their own
/// (AIStore knows its JSON error format); [`plain_http_error`] is the default.
pub(crate) type Classify<'a> = &'a dyn Fn(ErrorResponse) -> Error;

/// A failed response, for [`Classify`].
#[derive(Debug)]
pub(crate) struct ErrorResponse {
    pub object: String,
    pub range: Option<ByteRange>,
    pub status: u16,
    pub url: String,
    /// The body (first 64 KiB), or the `Hdr-Error` header for a HEAD.
    pub body: String,
    /// S3's `x-amz-bucket-region`, sent with a wrong-region answer.
    pub bucket_region: Option<String>,
}

pub(crate) fn plain_http_error(r: ErrorResponse) -> Error {
    let message = r
        .body
        .chars()
        .take(300)
        .collect::<String>()
        .trim()
        .to_string();
    match r.status {
        404 | 410 => Error::ObjectNotFound {
            object: r.object,
            message: format!("HTTP {} from {}: {message}", r.status, r.url)
                .trim_end_matches([':', ' '])
                .to_string(),
        },
        401 | 403 => Error::AccessDenied {
            object: r.object,
            status: r.status,
            message,
        },
        _ => Error::Http {
            object: r.object,
            range: r.range,
            status: r.status,
            url: r.url,
            message,
        },
    }
}

pub(crate) fn transport(
    object: &str,
    range: Option<ByteRange>,
    e: impl std::fmt::Display,
) -> Error {
    Error::Transport {
        object: object.to_string(),
        range,
        message: e.to_string(),
    }
}

pub(crate) fn header<'a>(
    resp: &'a ureq::http::Response<ureq::Body>,
    name: &str,
) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

pub(crate) fn error_response(
    object: &str,
    range: Option<ByteRange>,
    resp: ureq::http::Response<ureq::Body>,
) -> ErrorResponse {
    let status = resp.status().as_u16();
    let url = resp.get_uri().to_string();
    let hdr_error = header(&resp, "hdr-error").map(str::to_string);
    let bucket_region = header(&resp, "x-amz-bucket-region").map(str::to_string);
    let mut body = String::new();
    let _ = resp
        .into_body()
        .into_reader()
        .take(64 * 1024)
        .read_to_string(&mut body);
    if body.trim().is_empty()
        && let Some(h) = hdr_error
    {
        body = h;
    }
    ErrorResponse {
        object: object.to_string(),
        range,
        status,
        url,
        body,
        bucket_region,
    }
}

/// HEADs `url` and reads the object's metadata. The size comes from
/// `Content-Length` (parsed here: HEAD responses carry the object's size);
/// a server that omits it is asked for `bytes=0-0` and the size is read from
/// `Content-Range`. With `probe_ranges` (plain HTTP), a HEAD without
/// `Accept-Ranges: bytes` is followed by that same probe once: a 200
/// answer means the server ignores `Range` ([`ObjectMeta::no_ranges`]).
pub(crate) fn head(
    client: &HttpClient,
    url: &str,
    headers: &[(&str, String)],
    object: &str,
    probe_ranges: bool,
    classify: Classify<'_>,
) -> Result<ObjectMeta> {
    let mut req = client.agent.head(url);
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    let resp = req.call().map_err(|e| transport(object, None, e))?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(classify(error_response(object, None, resp)));
    }
    let etag = header(&resp, "etag").map(str::to_string);
    let version = header(&resp, "ais-version").map(str::to_string);
    let chunk_hint = header(&resp, "ais-chunks-max-chunk-size")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|v| *v > 0);
    let size = header(&resp, "content-length").and_then(|v| v.trim().parse::<u64>().ok());
    let says_ranges = header(&resp, "accept-ranges")
        .is_some_and(|v| v.split(',').any(|u| u.trim().eq_ignore_ascii_case("bytes")));
    let (size, no_ranges) = match size {
        Some(s) if says_ranges || !probe_ranges => (s, false),
        _ => match probe(client, url, headers, object, classify)? {
            Probe::Size(s) => (s, false),
            Probe::Ignored(len) => match size.or(len) {
                Some(s) if probe_ranges => (s, true),
                _ => {
                    return Err(Error::RangeMismatch {
                        object: object.to_string(),
                        range: ByteRange { start: 0, end: 1 },
                        detail: "server does not honour Range (HTTP 200) and sent no size".into(),
                    });
                }
            },
        },
    };
    if no_ranges {
        tracing::warn!(
            target: "shmfetch",
            object,
            size,
            "the server does not support Range requests: fetching with one streaming GET"
        );
    }
    Ok(ObjectMeta {
        size,
        chunk_hint,
        etag,
        version,
        no_ranges,
    })
}

/// What a `bytes=0-0` probe found.
pub(crate) enum Probe {
    /// The server honours `Range`; the object's size.
    Size(u64),
    /// 200: the server ignores `Range`; the `Content-Length` of its answer.
    Ignored(Option<u64>),
}

/// A `bytes=0-0` probe's finding and the answer's `ETag` and version
/// header.
pub(crate) struct ProbeAnswer {
    pub probe: Probe,
    pub etag: Option<String>,
    pub version: Option<String>,
}

fn probe(
    client: &HttpClient,
    url: &str,
    headers: &[(&str, String)],
    object: &str,
    classify: Classify<'_>,
) -> Result<Probe> {
    probe_with(client, url, headers, true, "ais-version", object, classify).map(|a| a.probe)
}

/// GETs `bytes=0-0` of `url`: the object's size (or that the server
/// ignores `Range`), its ETag and `version_header`. With
/// `follow_redirects` false a 3xx is an answer to classify.
#[allow(clippy::too_many_arguments)]
pub(crate) fn probe_with(
    client: &HttpClient,
    url: &str,
    headers: &[(&str, String)],
    follow_redirects: bool,
    version_header: &str,
    object: &str,
    classify: Classify<'_>,
) -> Result<ProbeAnswer> {
    let mut req = client.agent.get(url).header("Range", "bytes=0-0");
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    if !follow_redirects {
        req = req
            .config()
            .max_redirects(0)
            .max_redirects_will_error(false)
            .build();
    }
    let resp = req.call().map_err(|e| transport(object, None, e))?;
    let status = resp.status().as_u16();
    let mismatch = |detail: &str| Error::RangeMismatch {
        object: object.to_string(),
        range: ByteRange { start: 0, end: 1 },
        detail: detail.to_string(),
    };
    let probe = match status {
        // `bytes */0`: an empty object (a 416 naming another size is not).
        416 => match header(&resp, "content-range").and_then(parse_content_range) {
            Some(cr) if cr.total.is_some_and(|t| t > 0) => {
                return Err(mismatch("416 to bytes=0-0 of a non-empty object"));
            }
            _ => Probe::Size(0),
        },
        206 => header(&resp, "content-range")
            .and_then(parse_content_range)
            .and_then(|cr| cr.total)
            .map(Probe::Size)
            .ok_or_else(|| mismatch("no size in HEAD Content-Length nor in Content-Range"))?,
        // The whole object: its body is not read (dropping the response
        // closes the connection).
        200..300 => Probe::Ignored(
            header(&resp, "content-length").and_then(|v| v.trim().parse::<u64>().ok()),
        ),
        _ => return Err(classify(error_response(object, None, resp))),
    };
    let etag = header(&resp, "etag").map(str::to_string);
    let version = header(&resp, version_header).map(str::to_string);
    if matches!(probe, Probe::Size(_)) {
        // Read the byte so the connection can be reused.
        let mut one = Vec::new();
        let _ = resp.into_body().into_reader().take(2).read_to_end(&mut one);
    }
    Ok(ProbeAnswer {
        probe,
        etag,
        version,
    })
}

/// An entity tag without weakness marker and quotes, for comparison.
fn etag_core(v: &str) -> &str {
    v.trim().trim_start_matches("W/").trim_matches('"')
}

/// Compares the version headers of a range response with the HEAD's.
/// Only fields both sides have are compared (servers differ in which they
/// send).
fn check_same_version(
    resp: &ureq::http::Response<ureq::Body>,
    expected: &ObjectMeta,
    object: &str,
) -> Result<()> {
    let changed = |what: &str, was: &str, now: &str| Error::ObjectChanged {
        object: object.to_string(),
        detail: format!("{what} was {was:?} at HEAD, a range came back with {now:?}"),
    };
    if let (Some(was), Some(now)) = (&expected.version, header(resp, "ais-version"))
        && was.trim() != now.trim()
    {
        return Err(changed("version", was, now));
    }
    if let (Some(was), Some(now)) = (&expected.etag, header(resp, "etag"))
        && etag_core(was) != etag_core(now)
    {
        return Err(changed("ETag", was, now));
    }
    Ok(())
}

/// GETs `range` of `url` straight into `buf`, checking the answer. With
/// `follow_redirects` false a 3xx is an answer to classify (S3's
/// `PermanentRedirect` for a bucket in another region), not a hop.
#[allow(clippy::too_many_arguments)]
pub(crate) fn get_range_into(
    client: &HttpClient,
    url: &str,
    headers: &[(&str, String)],
    follow_redirects: bool,
    object: &str,
    range: ByteRange,
    sink: &mut dyn RangeSink,
    expected: &ObjectMeta,
    classify: Classify<'_>,
) -> Result<()> {
    let expected_size = expected.size;
    let mismatch = |detail: String| Error::RangeMismatch {
        object: object.to_string(),
        range,
        detail,
    };
    if sink.remaining() as u64 != range.len() || range.is_empty() {
        return Err(Error::InvalidConfig(format!(
            "sink of {} bytes for {range}",
            sink.remaining()
        )));
    }
    let mut req = client.agent.get(url).header("Range", range.to_header());
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    if !follow_redirects {
        req = req
            .config()
            .max_redirects(0)
            .max_redirects_will_error(false)
            .build();
    }
    let resp = req.call().map_err(|e| transport(object, Some(range), e))?;
    let status = resp.status().as_u16();
    if status != 206 {
        if (200..300).contains(&status) {
            return Err(mismatch(format!(
                "HTTP {status} instead of 206: the server ignored Range (Content-Length {})",
                header(&resp, "content-length").unwrap_or("unknown")
            )));
        }
        return Err(classify(error_response(object, Some(range), resp)));
    }
    check_same_version(&resp, expected, object)?;
    let cr_raw = header(&resp, "content-range").unwrap_or("").to_string();
    let cr = parse_content_range(&cr_raw)
        .ok_or_else(|| mismatch(format!("206 with unusable Content-Range {cr_raw:?}")))?;
    if let Some(total) = cr.total
        && total != expected_size
    {
        return Err(Error::ObjectChanged {
            object: object.to_string(),
            detail: format!(
                "size was {expected_size} bytes at HEAD, Content-Range {cr_raw:?} says {total}"
            ),
        });
    }
    if cr.range != range {
        return Err(mismatch(format!("Content-Range {cr_raw:?} does not match")));
    }
    if let Some(cl) = header(&resp, "content-length").and_then(|v| v.trim().parse::<u64>().ok())
        && cl != range.len()
    {
        return Err(mismatch(format!(
            "Content-Length {cl} for a {}-byte range",
            range.len()
        )));
    }
    let mut reader = resp.into_body().into_reader();
    read_into(&mut reader, sink, object, range)?;
    // The body must end exactly here (this also returns the connection to
    // the pool).
    let mut extra = [0u8; 1];
    match reader.read(&mut extra) {
        Ok(0) => Ok(()),
        Ok(_) => Err(mismatch("body is longer than the range".into())),
        Err(_) => Ok(()), // bytes are complete; the connection is just not reusable
    }
}

/// PUTs `body` to `url` (one request, no redirect followed), with
/// `Content-Length` and `Content-MD5`, so the server refuses bytes that
/// arrive changed, and returns the answer's `ETag` (`None` when it sends
/// none). `public_url` is what errors show (a presigned URL's query is a
/// secret). Any status but 2xx is an error typed by `classify`.
///
/// # Errors
/// Transport errors (retryable), and `classify`'s error for a status.
#[allow(clippy::too_many_arguments)]
pub(crate) fn put_bytes(
    client: &HttpClient,
    url: &str,
    public_url: &str,
    headers: &[(&str, String)],
    object: &str,
    range: ByteRange,
    body: &[u8],
    sent: &mut dyn FnMut(usize),
    classify: Classify<'_>,
) -> Result<Option<String>> {
    use base64::Engine as _;
    use md5::Digest as _;
    let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body));
    let mut req = client
        .agent
        .put(url)
        .header("Content-Length", body.len().to_string())
        .header("Content-MD5", md5)
        .header("Content-Type", "application/octet-stream");
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    let req = req
        .config()
        .max_redirects(0)
        .max_redirects_will_error(false)
        .build();
    let mut reader = CountingReader { body, pos: 0, sent };
    let resp = req
        .send(ureq::SendBody::from_reader(&mut reader))
        .map_err(|e| transport(object, Some(range), e))?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        let mut r = error_response(object, Some(range), resp);
        r.url = public_url.to_string();
        return Err(classify(r));
    }
    let etag = header(&resp, "etag").map(str::to_string);
    // Read the (small) body to its end: the connection goes back to the pool.
    let _ = std::io::copy(
        &mut resp.into_body().into_reader().take(64 * 1024),
        &mut std::io::sink(),
    );
    Ok(etag)
}

/// A request body that reports how much of it was taken so far.
struct CountingReader<'a, 'f> {
    body: &'a [u8],
    pos: usize,
    sent: &'f mut dyn FnMut(usize),
}

impl Read for CountingReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let rest = &self.body[self.pos..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        if n > 0 {
            (self.sent)(self.pos);
        }
        Ok(n)
    }
}

/// Reads the `range.len()` bytes of `range` from `reader` into `sink`
/// (which is empty); a body that ends first is [`Error::ShortRead`].
fn read_into(
    reader: &mut dyn Read,
    sink: &mut dyn RangeSink,
    object: &str,
    range: ByteRange,
) -> Result<()> {
    let total = range.len() as usize;
    let mut done = 0usize;
    while done < total {
        let buf = sink.next_buf(total - done);
        match reader.read(buf) {
            Ok(0) => {
                return Err(Error::ShortRead {
                    object: object.to_string(),
                    range,
                    got: done as u64,
                    expected: range.len(),
                });
            }
            Ok(n) => {
                sink.commit(n)?;
                done += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(Error::ShortRead {
                    object: object.to_string(),
                    range,
                    got: done as u64,
                    expected: range.len(),
                });
            }
            Err(e) => {
                return Err(transport(
                    object,
                    Some(range),
                    format!("after {done} of {} bytes: {e}", range.len()),
                ));
            }
        }
    }
    Ok(())
}

/// GETs the whole object (no `Range`: the server ignores it) and checks
/// the answer is the object `expected` describes: 200, its size, its
/// version. Returns the body, to be read in order.
fn get_whole(
    client: &HttpClient,
    url: &str,
    object: &str,
    range: ByteRange,
    expected: &ObjectMeta,
) -> Result<ureq::BodyReader<'static>> {
    let resp = client
        .agent
        .get(url)
        .call()
        .map_err(|e| transport(object, Some(range), e))?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(plain_http_error(error_response(object, Some(range), resp)));
    }
    if status != 200 {
        return Err(Error::RangeMismatch {
            object: object.to_string(),
            range,
            detail: format!("HTTP {status} to a GET of the whole object"),
        });
    }
    check_same_version(&resp, expected, object)?;
    if let Some(cl) = header(&resp, "content-length").and_then(|v| v.trim().parse::<u64>().ok())
        && cl != expected.size
    {
        return Err(Error::ObjectChanged {
            object: object.to_string(),
            detail: format!(
                "size was {} bytes at HEAD, a GET of the whole object has Content-Length {cl}",
                expected.size
            ),
        });
    }
    Ok(resp.into_body().into_reader())
}

/// The body of a whole-object GET, read in order, and the object offset of
/// its next byte.
struct WholeBody {
    reader: ureq::BodyReader<'static>,
    pos: u64,
}

/// An object behind a plain HTTP(S) URL.
///
/// When the server does not honour `Range` ([`ObjectMeta::no_ranges`]) a
/// range is read from one GET of the whole object, skipping the bytes
/// before it; the body is kept, so that reading the next range in order
/// (a stream through the ring) continues it rather than starting over.
pub struct HttpObject {
    client: HttpClient,
    url: String,
    whole: std::sync::Mutex<Option<WholeBody>>,
}

impl std::fmt::Debug for HttpObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpObject")
            .field("url", &self.url)
            .finish()
    }
}

impl HttpObject {
    /// Wraps `url`, to be fetched with `client`.
    pub fn new(client: HttpClient, url: String) -> HttpObject {
        HttpObject {
            client,
            url,
            whole: std::sync::Mutex::new(None),
        }
    }

    /// `range` out of a whole-object GET: the kept body when it is at
    /// `range.start`, else a new GET whose first `range.start` bytes are
    /// skipped. The body is kept for the next range only after a complete
    /// read.
    fn read_from_whole(
        &self,
        range: ByteRange,
        sink: &mut dyn RangeSink,
        expected: &ObjectMeta,
    ) -> Result<()> {
        let mut kept = self.whole.lock().unwrap_or_else(|p| p.into_inner());
        let mut body = match kept.take() {
            Some(b) if b.pos == range.start => b,
            _ => WholeBody {
                reader: get_whole(&self.client, &self.url, &self.url, range, expected)?,
                pos: 0,
            },
        };
        if body.pos < range.start {
            let skip = range.start - body.pos;
            let copied = io::copy(&mut (&mut body.reader).take(skip), &mut io::sink())
                .map_err(|e| transport(&self.url, Some(range), e))?;
            if copied < skip {
                return Err(Error::ShortRead {
                    object: self.url.clone(),
                    range,
                    got: 0,
                    expected: range.len(),
                });
            }
            body.pos = range.start;
        }
        read_into(&mut body.reader, sink, &self.url, range)?;
        body.pos = range.end;
        if range.end < expected.size {
            *kept = Some(body);
        }
        Ok(())
    }
}

impl ObjectSource for HttpObject {
    fn name(&self) -> &str {
        &self.url
    }

    fn meta(&self) -> Result<ObjectMeta> {
        head(
            &self.client,
            &self.url,
            &[],
            &self.url,
            true,
            &plain_http_error,
        )
    }

    fn read_range(
        &self,
        range: ByteRange,
        sink: &mut dyn RangeSink,
        expected: &ObjectMeta,
    ) -> Result<()> {
        if expected.no_ranges {
            return self.read_from_whole(range, sink, expected);
        }
        get_range_into(
            &self.client,
            &self.url,
            &[],
            true,
            &self.url,
            range,
            sink,
            expected,
            &plain_http_error,
        )
    }
}

impl HttpClient {
    /// Builds the client's configuration without a client. Reading proxy
    /// settings from the environment happens here, so the pool calls this
    /// in the parent before forking and each worker makes its client from
    /// the result ([`HttpClient::from_config`]) without touching the
    /// environment.
    pub(crate) fn prepare(cfg: &HttpConfig) -> ureq::config::Config {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(cfg.max_redirects)
            .max_redirects_will_error(true)
            .timeout_connect(Some(cfg.connect_timeout))
            .timeout_per_read(Some(cfg.read_timeout))
            .user_agent(concat!("shmfetch/", env!("CARGO_PKG_VERSION")))
            .max_idle_connections_per_host(4)
            .build()
    }

    /// Makes a client (with its own, empty connection pool) from a
    /// configuration made by [`HttpClient::prepare`]. It resolves host
    /// names with the system resolver (`getaddrinfo`), except in a worker
    /// process, where it refuses to (`getaddrinfo` is not safe after a
    /// fork from a multi-threaded parent).
    pub(crate) fn from_config(cfg: ureq::config::Config) -> HttpClient {
        HttpClient {
            agent: ureq::Agent::with_parts(
                cfg,
                DefaultConnector::new(),
                HostResolver { names: None },
            ),
        }
    }
}

// ---------------------------------------------------------------------
// Name resolution and TLS for clients in forked worker processes.
//
// `getaddrinfo` takes locks (the resolver's, NSS modules', `/etc/hosts`
// readers') that another thread of the parent may hold at the instant of
// `fork`; in the child they would stay locked forever. So a worker never
// resolves a name itself: the coordinator resolves the hosts a download
// contacts before sending it (`resolve_source`, carried in the `Open`
// message), and a worker asks its coordinator for any other name (a
// redirect's target, a proxy) through a [`NameSource`]. Likewise the TLS
// client configuration (root store, crypto provider, the RNG and CPU
// feature detection a handshake initialises) is built in the parent
// ([`WorkerHttp::prepare`]), not lazily at a worker's first connection.
// ---------------------------------------------------------------------

/// Set once in a worker process, right after the fork: from then on a
/// client without a [`NameSource`] fails a name lookup instead of calling
/// `getaddrinfo`.
static NO_NAME_LOOKUPS: AtomicBool = AtomicBool::new(false);

/// Called by a worker right after the fork: this process must never call
/// `getaddrinfo` (see the module's notes on fork safety).
pub(crate) fn forbid_name_lookups() {
    NO_NAME_LOOKUPS.store(true, Ordering::Relaxed);
}

/// Whether this process is a worker (set right after the fork).
pub(crate) fn in_worker() -> bool {
    NO_NAME_LOOKUPS.load(Ordering::Relaxed)
}

/// Most addresses kept per name (ureq keeps 16).
const MAX_ADDRS: usize = 16;

/// Longest a worker waits for its coordinator to resolve a name, whatever
/// ureq's own (by default unlimited) resolve timeout.
pub(crate) const MAX_LOOKUP_WAIT: Duration = Duration::from_secs(60);

/// A host name and port resolved by the coordinator, handed to workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ResolvedHost {
    /// The name, in lower case.
    pub host: String,
    /// The port.
    pub port: u16,
    /// Its addresses, in the resolver's order.
    pub addrs: Vec<SocketAddr>,
}

/// Resolves `host:port` with the system resolver (`getaddrinfo`). Only
/// for the coordinator process; the error is a message for the worker
/// that asked.
pub(crate) fn lookup_host(host: &str, port: u16) -> std::result::Result<Vec<SocketAddr>, String> {
    match (host, port).to_socket_addrs() {
        Ok(it) => {
            let v: Vec<SocketAddr> = it.take(MAX_ADDRS).collect();
            if v.is_empty() {
                Err(format!("{host}:{port} has no address"))
            } else {
                Ok(v)
            }
        }
        Err(e) => Err(format!("resolving {host}:{port}: {e}")),
    }
}

/// Resolves, in the coordinator, the host a download of `spec` contacts
/// first: the URL's for HTTP, the gateway's (`AIS_ENDPOINT`) for AIStore;
/// none for a local file or an IP literal. A name that does not resolve is
/// left out: a worker then asks for it and reports the error with the
/// range.
pub(crate) fn resolve_source(spec: &SourceSpec) -> Vec<ResolvedHost> {
    let url = match spec {
        SourceSpec::Local { .. } => return Vec::new(),
        SourceSpec::Http { url } => url.clone(),
        SourceSpec::AiStore { endpoint, .. } => endpoint.clone(),
        SourceSpec::S3 {
            bucket,
            key,
            config,
            ..
        } => config.object_url(bucket, key),
    };
    let Ok(u) = url::Url::parse(&url) else {
        return Vec::new();
    };
    let (Some(url::Host::Domain(host)), Some(port)) = (u.host(), u.port_or_known_default()) else {
        return Vec::new();
    };
    let host = host.to_ascii_lowercase();
    match lookup_host(&host, port) {
        Ok(addrs) => vec![ResolvedHost { host, port, addrs }],
        Err(_) => Vec::new(),
    }
}

/// Where a worker's client gets the addresses of host names (never from
/// `getaddrinfo`): the worker's table of handed-over addresses, and its
/// coordinator for the rest.
pub(crate) trait NameSource: std::fmt::Debug + Send + Sync + 'static {
    /// The addresses of `host` (lower case, never an IP literal) at
    /// `port`, within `wait`.
    ///
    /// # Errors
    /// [`io::ErrorKind::TimedOut`] when no answer came within `wait`;
    /// any other error when the name does not resolve or the coordinator
    /// is gone.
    fn lookup(&self, host: &str, port: u16, wait: Duration) -> io::Result<Vec<SocketAddr>>;
}

/// ureq's resolver for every [`HttpClient`]: IP literals are parsed,
/// names go to the [`NameSource`] (in a worker) or to `getaddrinfo`
/// (in the coordinator, never once [`forbid_name_lookups`] was called).
#[derive(Debug)]
struct HostResolver {
    names: Option<Arc<dyn NameSource>>,
}

/// What [`HostResolver`] does with a name.
enum Answer {
    Addrs(Vec<SocketAddr>),
    /// Ask the system resolver (the coordinator only).
    System,
}

impl HostResolver {
    /// The decision, apart from ureq's types and the process-global flag
    /// (so that it can be tested in the coordinator).
    fn answer(
        &self,
        host: &str,
        port: u16,
        wait: Duration,
        lookups_forbidden: bool,
    ) -> io::Result<Answer> {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Answer::Addrs(vec![SocketAddr::new(ip, port)]));
        }
        if let Some(names) = &self.names {
            return names
                .lookup(&bare.to_ascii_lowercase(), port, wait)
                .map(Answer::Addrs);
        }
        if lookups_forbidden {
            return Err(io::Error::other(format!(
                "{bare}:{port}: a worker process does not resolve names itself \
                 (getaddrinfo is not fork-safe) and this client has no coordinator to ask"
            )));
        }
        Ok(Answer::System)
    }
}

impl Resolver for HostResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> std::result::Result<ResolvedSocketAddrs, ureq::Error> {
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(ureq::Error::BadUri(format!("{uri}: no scheme or host")));
        };
        // "host:port", with the scheme's default port (http, https, socks).
        let port = DefaultResolver::host_and_port(scheme, authority)
            .and_then(|hp| hp.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()))
            .ok_or_else(|| ureq::Error::BadUri(format!("{uri}: unknown scheme or port")))?;
        let wait = (*timeout.after).min(MAX_LOOKUP_WAIT);
        let found = match self.answer(
            authority.host(),
            port,
            wait,
            NO_NAME_LOOKUPS.load(Ordering::Relaxed),
        ) {
            Ok(Answer::Addrs(a)) => a,
            Ok(Answer::System) => return DefaultResolver::default().resolve(uri, config, timeout),
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(ureq::Error::Timeout(timeout.reason));
            }
            Err(e) => return Err(ureq::Error::Io(e)),
        };
        let mut out = self.empty();
        for a in config
            .ip_family()
            .keep_wanted(found.into_iter())
            .take(MAX_ADDRS)
        {
            out.push(a);
        }
        if out.is_empty() {
            Err(ureq::Error::HostNotFound)
        } else {
            Ok(out)
        }
    }
}

/// What a worker process builds its HTTP client from after the fork, all
/// of it made in the parent: the configuration (proxy settings come from
/// the environment) and the TLS connector with its client configuration
/// already built.
#[derive(Debug, Clone)]
pub(crate) struct WorkerHttp {
    config: ureq::config::Config,
    tls: Arc<RustlsConnector>,
}

impl WorkerHttp {
    /// Builds the configuration ([`HttpClient::prepare`]) and the TLS
    /// client configuration. ureq builds the latter lazily, at the first
    /// HTTPS connection; here a handshake is started over an in-memory
    /// transport that fails at once, which fills the connector's cached
    /// configuration (root store, crypto provider) and initialises what
    /// a handshake initialises once per process (ring's CPU feature
    /// detection, `getrandom`'s state). No socket is opened.
    pub(crate) fn prepare(cfg: &HttpConfig) -> WorkerHttp {
        let config = HttpClient::prepare(cfg);
        let tls = Arc::new(RustlsConnector::default());
        let warm = ureq::Agent::with_parts(
            config.clone(),
            NullConnector.chain(SharedTls(Arc::clone(&tls))),
            HostResolver { names: None },
        );
        // An IP literal: nothing is resolved. The call fails (the transport
        // reads nothing), after the TLS configuration was built.
        let _ = warm.head("https://127.0.0.1:9/").call();
        WorkerHttp { config, tls }
    }

    /// The worker's client: its own connection pool, the TLS configuration
    /// built in the parent, names from `names`.
    pub(crate) fn client(self, names: Arc<dyn NameSource>) -> HttpClient {
        let connector =
            ().chain(ConnectProxyConnector::default())
                .chain(TcpConnector::default())
                .chain(SharedTls(self.tls));
        HttpClient {
            agent: ureq::Agent::with_parts(
                self.config,
                connector,
                HostResolver { names: Some(names) },
            ),
        }
    }
}

/// A TLS connector shared by reference, so that the one whose
/// configuration was built in the parent serves the worker's client.
#[derive(Debug)]
struct SharedTls(Arc<RustlsConnector>);

impl<In: Transport> Connector<In> for SharedTls {
    type Out = <RustlsConnector as Connector<In>>::Out;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> std::result::Result<Option<Self::Out>, ureq::Error> {
        self.0.connect(details, chained)
    }
}

/// Makes [`NullTransport`]s: no socket, for [`WorkerHttp::prepare`].
#[derive(Debug)]
struct NullConnector;

impl Connector<()> for NullConnector {
    type Out = NullTransport;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _: Option<()>,
    ) -> std::result::Result<Option<NullTransport>, ureq::Error> {
        Ok(Some(NullTransport(LazyBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        ))))
    }
}

/// Swallows what is written and fails the first read.
#[derive(Debug)]
struct NullTransport(LazyBuffers);

impl Transport for NullTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.0
    }

    fn transmit_output(
        &mut self,
        _: usize,
        _: NextTimeout,
    ) -> std::result::Result<(), ureq::Error> {
        Ok(())
    }

    fn await_input(&mut self, _: NextTimeout) -> std::result::Result<bool, ureq::Error> {
        Err(ureq::Error::Io(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "in-memory transport of the TLS warm-up",
        )))
    }

    fn is_open(&mut self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use crate::testing::server::{ServerConfig, TestServer};

    /// Names from a table; records what was asked.
    #[derive(Debug, Default)]
    struct Table {
        names: HashMap<(String, u16), Vec<SocketAddr>>,
        asked: Mutex<Vec<String>>,
    }

    impl NameSource for Table {
        fn lookup(&self, host: &str, port: u16, _: Duration) -> io::Result<Vec<SocketAddr>> {
            self.asked.lock().unwrap().push(format!("{host}:{port}"));
            self.names
                .get(&(host.to_string(), port))
                .cloned()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{host}?")))
        }
    }

    fn addrs(a: io::Result<Answer>) -> Vec<SocketAddr> {
        match a.unwrap() {
            Answer::Addrs(v) => v,
            Answer::System => panic!("went to the system resolver"),
        }
    }

    #[test]
    fn ip_literals_are_parsed_names_go_to_the_source() {
        let table = Arc::new(Table {
            names: [(("gw".to_string(), 80), vec!["10.0.0.5:80".parse().unwrap()])].into(),
            ..Table::default()
        });
        let r = HostResolver {
            names: Some(table.clone()),
        };
        let w = Duration::from_secs(1);
        assert_eq!(
            addrs(r.answer("10.1.2.3", 8080, w, true)),
            vec!["10.1.2.3:8080".parse().unwrap()]
        );
        assert_eq!(
            addrs(r.answer("[::1]", 443, w, true)),
            vec!["[::1]:443".parse().unwrap()]
        );
        assert!(table.asked.lock().unwrap().is_empty());
        assert_eq!(
            addrs(r.answer("GW", 80, w, true)),
            vec!["10.0.0.5:80".parse().unwrap()]
        );
        assert!(r.answer("other", 80, w, true).is_err());
        assert_eq!(*table.asked.lock().unwrap(), ["gw:80", "other:80"]);
    }

    #[test]
    fn without_a_source_a_worker_refuses_and_the_coordinator_uses_the_system() {
        let r = HostResolver { names: None };
        let w = Duration::from_secs(1);
        let e = match r.answer("localhost", 80, w, true) {
            Err(e) => e,
            Ok(_) => panic!("a worker process resolved a name without its coordinator"),
        };
        assert!(e.to_string().contains("getaddrinfo"), "{e}");
        assert!(matches!(
            r.answer("localhost", 80, w, false),
            Ok(Answer::System)
        ));
        // IP literals need no resolver anywhere.
        assert!(matches!(
            r.answer("127.0.0.1", 80, w, true),
            Ok(Answer::Addrs(_))
        ));
    }

    #[test]
    fn resolve_source_names_the_first_host_only() {
        let http = |url: &str| SourceSpec::Http { url: url.into() };
        let got = resolve_source(&http("http://LocalHost:8080/x"));
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].host.as_str(), got[0].port), ("localhost", 8080));
        assert!(
            got[0]
                .addrs
                .iter()
                .all(|a| a.port() == 8080 && a.ip().is_loopback())
        );
        assert_eq!(resolve_source(&http("https://localhost/x"))[0].port, 443);
        assert!(resolve_source(&http("http://127.0.0.1:9/x")).is_empty());
        assert!(resolve_source(&http("http://[::1]:9/x")).is_empty());
        assert!(resolve_source(&SourceSpec::Local { path: "/x".into() }).is_empty());
        let ais = SourceSpec::AiStore {
            endpoint: "http://localhost:51080".into(),
            bucket: "b".into(),
            object: "o".into(),
            provider: "ais".into(),
            token: None,
            direct: false,
            direct_url: None,
        };
        assert_eq!(resolve_source(&ais)[0].port, 51080);
    }

    /// A worker's client (TLS connector warmed in this process, names from
    /// a table) reaches a server by a name no system resolver knows, through
    /// the gateway's redirect to another such name.
    #[test]
    fn worker_client_uses_its_name_source() {
        let srv = TestServer::start(ServerConfig {
            redirect_host: Some("target.invalid".into()),
            ..ServerConfig::default()
        })
        .unwrap();
        srv.put_bytes("b", "o", vec![7u8; 1000]);
        let gw: SocketAddr = srv.endpoint()["http://".len()..].parse().unwrap();
        let mut names: HashMap<(String, u16), Vec<SocketAddr>> =
            [(("gw.invalid".to_string(), gw.port()), vec![gw])].into();
        // The targets listen on 127.0.0.1 at ports only the server knows:
        // find them from a redirect.
        let loc = HttpClient::default()
            .agent
            .get(&format!("{}/v1/objects/b/o?provider=ais", srv.endpoint()))
            .config()
            .max_redirects(0)
            .build()
            .call()
            .unwrap();
        let loc = loc.headers()["location"].to_str().unwrap().to_string();
        let port: u16 = loc["http://target.invalid:".len()..]
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        names.insert(
            ("target.invalid".to_string(), port),
            vec![SocketAddr::from(([127, 0, 0, 1], port))],
        );
        let table = Arc::new(Table {
            names,
            ..Table::default()
        });
        let client = WorkerHttp::prepare(&HttpConfig::default()).client(table.clone());
        let spec = SourceSpec::AiStore {
            endpoint: format!("http://GW.invalid:{}", gw.port()),
            bucket: "b".into(),
            object: "o".into(),
            provider: "ais".into(),
            token: None,
            direct: false,
            direct_url: None,
        };
        let meta = spec.open(&client).unwrap().meta().unwrap();
        assert_eq!(meta.size, 1000);
        let asked = table.asked.lock().unwrap().clone();
        assert!(
            asked.contains(&format!("gw.invalid:{}", gw.port())),
            "{asked:?}"
        );
        assert!(
            asked.contains(&format!("target.invalid:{port}")),
            "{asked:?}"
        );
    }
}
