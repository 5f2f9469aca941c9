//! Plain HTTP(S) objects, and the one ranged-GET path every HTTP-based
//! backend uses (`get_range_into`): status 206, `Content-Range` equal to
//! the range asked for (of an object of the expected size), body length
//! exactly the range — anything else is an error naming what came back.

use std::io::Read;
use std::time::Duration;

use ureq::ResponseExt;

use crate::error::{Error, Result};
use crate::range::{ByteRange, parse_content_range};
use crate::source::sink::RangeSink;
use crate::source::{BearerToken, ObjectMeta, ObjectSource};

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
    agent: ureq::Agent,
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
            message: format!("HTTP {} from {}: {message}", r.status, r.url),
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

fn transport(object: &str, range: Option<ByteRange>, e: impl std::fmt::Display) -> Error {
    Error::Transport {
        object: object.to_string(),
        range,
        message: e.to_string(),
    }
}

fn header<'a>(resp: &'a ureq::http::Response<ureq::Body>, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

fn error_response(
    object: &str,
    range: Option<ByteRange>,
    resp: ureq::http::Response<ureq::Body>,
) -> ErrorResponse {
    let status = resp.status().as_u16();
    let url = resp.get_uri().to_string();
    let hdr_error = header(&resp, "hdr-error").map(str::to_string);
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
    }
}

/// HEADs `url` and reads the object's metadata. The size comes from
/// `Content-Length` (parsed here: HEAD responses carry the object's size);
/// a server that omits it is asked for `bytes=0-0` and the size is read from
/// `Content-Range`.
pub(crate) fn head(
    client: &HttpClient,
    url: &str,
    token: Option<&BearerToken>,
    object: &str,
    classify: Classify<'_>,
) -> Result<ObjectMeta> {
    let mut req = client.agent.head(url);
    if let Some(t) = token {
        req = req.header("Authorization", t.header_value());
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
    let size = match size {
        Some(s) => s,
        None => probe_size(client, url, token, object, classify)?,
    };
    Ok(ObjectMeta {
        size,
        chunk_hint,
        etag,
        version,
    })
}

fn probe_size(
    client: &HttpClient,
    url: &str,
    token: Option<&BearerToken>,
    object: &str,
    classify: Classify<'_>,
) -> Result<u64> {
    let mut req = client.agent.get(url).header("Range", "bytes=0-0");
    if let Some(t) = token {
        req = req.header("Authorization", t.header_value());
    }
    let resp = req.call().map_err(|e| transport(object, None, e))?;
    let status = resp.status().as_u16();
    if status == 416 {
        return Ok(0); // `bytes */0`: an empty object
    }
    if status != 206 {
        if (200..300).contains(&status) {
            return Err(Error::RangeMismatch {
                object: object.to_string(),
                range: ByteRange { start: 0, end: 1 },
                detail: format!("server does not honour Range (HTTP {status}) and sent no size"),
            });
        }
        return Err(classify(error_response(object, None, resp)));
    }
    header(&resp, "content-range")
        .and_then(parse_content_range)
        .and_then(|cr| cr.total)
        .ok_or_else(|| Error::RangeMismatch {
            object: object.to_string(),
            range: ByteRange { start: 0, end: 1 },
            detail: "no size in HEAD Content-Length nor in Content-Range".into(),
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

/// GETs `range` of `url` straight into `buf`, checking the answer.
#[allow(clippy::too_many_arguments)]
pub(crate) fn get_range_into(
    client: &HttpClient,
    url: &str,
    token: Option<&BearerToken>,
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
    if let Some(t) = token {
        req = req.header("Authorization", t.header_value());
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
    // The body must end exactly here (this also returns the connection to
    // the pool).
    let mut extra = [0u8; 1];
    match reader.read(&mut extra) {
        Ok(0) => Ok(()),
        Ok(_) => Err(mismatch("body is longer than the range".into())),
        Err(_) => Ok(()), // bytes are complete; the connection is just not reusable
    }
}

/// An object behind a plain HTTP(S) URL.
#[derive(Debug)]
pub struct HttpObject {
    client: HttpClient,
    url: String,
}

impl HttpObject {
    /// Wraps `url`, to be fetched with `client`.
    pub fn new(client: HttpClient, url: String) -> HttpObject {
        HttpObject { client, url }
    }
}

impl ObjectSource for HttpObject {
    fn name(&self) -> &str {
        &self.url
    }

    fn meta(&self) -> Result<ObjectMeta> {
        head(&self.client, &self.url, None, &self.url, &plain_http_error)
    }

    fn read_range(
        &self,
        range: ByteRange,
        sink: &mut dyn RangeSink,
        expected: &ObjectMeta,
    ) -> Result<()> {
        get_range_into(
            &self.client,
            &self.url,
            None,
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
    pub fn prepare(cfg: &HttpConfig) -> ureq::config::Config {
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
    /// configuration made by [`HttpClient::prepare`].
    pub fn from_config(cfg: ureq::config::Config) -> HttpClient {
        HttpClient {
            agent: cfg.new_agent(),
        }
    }
}
