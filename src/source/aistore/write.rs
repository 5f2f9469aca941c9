//! AIStore writes: whether an object exists, delete, rename, a single
//! `PUT`, and multipart uploads, with the native API as the Go client
//! (`api/object.go`, `api/mpt.go`) sends it.
//!
//! | call | request (`/v1/objects/<bucket>/<object>?provider=…`) |
//! |---|---|
//! | [`AisWriter::exists`] | `HEAD` |
//! | [`AisWriter::delete`] | `DELETE` |
//! | [`AisWriter::rename`] | `POST` `{"action":"rename-obj","name":NEW}` |
//! | [`AisWriter::put_whole`] | `PUT` with the body |
//! | [`AisWriter::mpt_create`] | `POST` `{"action":"mpt-upload"}` → the upload id (body text) |
//! | [`AisWriter::put_part`] | `PUT ?uploadId=ID&partNumber=N` with the part |
//! | [`AisWriter::mpt_complete`] | `POST ?uploadId=ID` `{"action":"mpt-complete","value":[{"etag":E,"part-number":N}…]}` |
//! | [`AisWriter::mpt_abort`] | `DELETE ?uploadId=ID` `{"action":"mpt-abort"}` |
//!
//! **Redirects.** The gateway answers every one of these with a 307 to
//! the target that holds the object. A `HEAD` follows it as reads do.
//! The others are redirected by hand, asking the gateway anew each time
//! (a `Location` carries a timestamp, and a signature on clusters that
//! sign redirects: it is never reused), because ureq does not follow a
//! 307 for a request with a body, nor for a `DELETE`:
//!
//! * **bodies** (a part, a whole object) go only to the target, as the
//!   Python SDK's `_request_with_manual_redirect` does: the gateway is
//!   asked with the body's headers (`Content-Length`, or chunked) and
//!   `Expect: 100-continue`; AIStore's proxy never reads a `PUT` body, so
//!   it answers the 307 without asking for it, and the body is sent once,
//!   to the `Location`. Announcing the true length matters where the
//!   cluster signs redirects (the signature covers the length);
//! * **action messages** (small JSON) go to both, as Go's client resends
//!   them: the proxy reads a `POST`'s message to route it.
//!
//! The bearer token goes to the gateway only; targets trust its markers.
//!
//! **Errors** name the object and the operation. Retries are the
//! caller's ([`crate::source::retry::call`]): transport errors, 5xx but
//! 501, 408 and 429 are retryable ([`Error::is_retryable`]), the rest —
//! 4xx, a missing bucket, a missing upload — are not. A call with a
//! streamed body cannot be retried once its body was read: see
//! [`AisWriter::put_whole`].
//!
//! Nothing here resolves names or starts threads: [`AisWriter::put_part`]
//! runs in forked workers with their [`HttpClient`].

use std::io::{self, Read};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use ureq::http::Response;
use ureq::typestate::WithBody;
use ureq::{RequestBuilder, ResponseExt, SendBody};

use super::AisAddress;
use crate::error::{Error, Result};
use crate::source::SourceSpec;
use crate::source::http::{DEFAULT_READ_TIMEOUT, HttpClient, error_response, header, transport};

/// Query values keep only RFC 3986 unreserved characters.
const QUERY_KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// How [`AisWriter::mpt_create`] went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MptStart {
    /// A multipart upload was created; its id.
    Upload(String),
    /// The cluster predates multipart uploads (AIStore before 4.0): the
    /// object has to be written with one `PUT` ([`AisWriter::put_whole`]).
    Unsupported,
}

/// Writes of one AIStore object, through the gateway. Blocking; cheap to
/// build; holds no connection of its own (the [`HttpClient`]'s pool).
#[derive(Debug, Clone)]
pub struct AisWriter {
    client: HttpClient,
    addr: AisAddress,
}

/// The request methods used here.
#[derive(Debug, Clone, Copy)]
enum Method {
    Put,
    Post,
    Delete,
}

/// What a request carries.
enum Payload<'a> {
    /// Nothing.
    None,
    /// An action message, sent to the gateway and again to the target.
    Json(&'a [u8]),
    /// Bytes sent to the target only.
    Bytes(&'a [u8]),
    /// A stream sent to the target only: exactly `len` bytes, or chunked.
    Stream(&'a mut dyn Read, Option<u64>),
}

impl AisWriter {
    /// The writer of an [`SourceSpec::AiStore`] object.
    ///
    /// # Errors
    /// [`Error::InvalidSource`] for any other spec.
    pub fn new(client: HttpClient, spec: &SourceSpec) -> Result<AisWriter> {
        Ok(AisWriter {
            client,
            addr: AisAddress::of(spec)?,
        })
    }

    /// The object's name, as `ais://bucket/object`.
    pub fn name(&self) -> &str {
        &self.addr.name
    }

    /// Whether the object exists: `HEAD` through the gateway. A missing
    /// object is `false`; a missing bucket is an error, like any other
    /// failure.
    ///
    /// # Errors
    /// [`Error::BucketNotFound`], [`Error::AccessDenied`] (401/403),
    /// [`Error::Http`], [`Error::Transport`].
    pub fn exists(&self) -> Result<bool> {
        let op = "HEAD";
        let mut req = self.client.agent.head(&self.addr.url);
        for (k, v) in self.auth() {
            req = req.header(k, v);
        }
        let resp = req.call().map_err(|e| self.transport(op, e))?;
        if resp.status().is_success() {
            return Ok(true);
        }
        match self.fail(op, None, resp) {
            Error::ObjectNotFound { .. } => Ok(false),
            e => Err(e),
        }
    }

    /// Deletes the object.
    ///
    /// # Errors
    /// [`Error::ObjectNotFound`] when it does not exist (so a caller that
    /// wants "gone either way" tells the cases apart), and the errors of
    /// [`AisWriter::exists`].
    pub fn delete(&self) -> Result<()> {
        self.call(
            "DELETE",
            None,
            Method::Delete,
            &self.addr.url,
            Payload::None,
        )
        .map(drain)
    }

    /// Renames the object to `new_object` in the same bucket (AIStore
    /// copies, then removes the original; an object already named
    /// `new_object` is replaced). Not supported by AIStore in remote
    /// buckets (501) nor for erasure-coded ones.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an empty name; [`Error::ObjectNotFound`];
    /// [`Error::Http`] 400 (onto itself) or 501; as [`AisWriter::exists`].
    pub fn rename(&self, new_object: &str) -> Result<()> {
        if new_object.is_empty() {
            return Err(Error::InvalidConfig(format!(
                "renaming {}: the new name is empty",
                self.addr.name
            )));
        }
        let op = format!("rename-obj to {new_object:?}");
        let msg = act_msg("rename-obj", new_object, serde_json::Value::Null);
        self.call(&op, None, Method::Post, &self.addr.url, Payload::Json(&msg))
            .map(drain)
    }

    /// Writes the whole object with one `PUT` (the fallback when
    /// multipart uploads are not supported), streaming `body`: exactly
    /// `len` bytes when given (a body that ends sooner is an error, bytes
    /// past `len` are not read), else chunked. The object appears only
    /// when the body is complete.
    ///
    /// A failed call may have consumed part of `body`: retry only with a
    /// body that starts again from its beginning. The error says how many
    /// bytes were read; a refusal that came before any (401, 404, a
    /// gateway that did not redirect) read none.
    ///
    /// # Errors
    /// [`Error::Io`] when `body` fails or ends early; as
    /// [`AisWriter::exists`].
    pub fn put_whole(&self, body: &mut dyn Read, len: Option<u64>) -> Result<()> {
        self.call(
            "PUT",
            None,
            Method::Put,
            &self.addr.url,
            Payload::Stream(body, len),
        )
        .map(drain)
    }

    /// Starts a multipart upload. An older cluster, whose proxy or target
    /// does not know the action, is [`MptStart::Unsupported`]: AIStore's
    /// answer to an unknown object action is 400 `invalid action
    /// "mpt-upload"`, and a proxy before 4.0 parsed `POST` object paths
    /// with the object name inside the bucket's, answering 400 `bucket
    /// name is invalid` for a bucket whose name is valid.
    ///
    /// # Errors
    /// As [`AisWriter::exists`]; an empty upload id is [`Error::Http`].
    pub fn mpt_create(&self) -> Result<MptStart> {
        let op = "mpt-upload";
        let msg = act_msg("mpt-upload", "", serde_json::Value::Null);
        let resp = match self.exchange(op, Method::Post, &self.addr.url, Payload::Json(&msg))? {
            Ok(resp) => resp,
            Err(resp) => {
                let r = error_response(&self.addr.name, None, resp);
                if r.status == 400 && is_older_cluster_answer(&r.body, &self.addr.bucket) {
                    return Ok(MptStart::Unsupported);
                }
                return Err(with_op(self.addr.classify(r), op));
            }
        };
        let url = resp.get_uri().to_string();
        let id = resp
            .into_body()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .map_err(|e| self.transport(op, e))?;
        let id = id.trim();
        if id.is_empty() {
            return Err(Error::Http {
                object: self.addr.name.clone(),
                range: None,
                status: 200,
                url,
                message: format!("{op}: the answer has no upload id"),
            });
        }
        Ok(MptStart::Upload(id.to_string()))
    }

    /// Uploads part `part_number` (≥ 1) of upload `upload_id`; returns the
    /// part's `ETag` header, or `""` when the target sends none (AIStore's
    /// native API does not). Uploading a part number again replaces it.
    /// AIStore refuses an empty part (400).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for part 0 or an empty upload id, before
    /// any request; [`Error::Http`] 404 for an upload that does not exist
    /// (completed, aborted or never made), 400 for a bad part; as
    /// [`AisWriter::exists`].
    pub fn put_part(&self, upload_id: &str, part_number: u32, body: &[u8]) -> Result<String> {
        if part_number == 0 || upload_id.is_empty() {
            return Err(Error::InvalidConfig(format!(
                "uploading a part of {}: part numbers start at 1 and the upload id is not \
                 empty (got part {part_number} of upload {upload_id:?})",
                self.addr.name
            )));
        }
        let op = format!("PUT part {part_number} of upload {upload_id:?}");
        let url = format!("{}&partNumber={part_number}", self.upload_url(upload_id));
        let resp = self.call(
            &op,
            Some(upload_id),
            Method::Put,
            &url,
            Payload::Bytes(body),
        )?;
        let etag = header(&resp, "etag").unwrap_or("").to_string();
        drain(resp);
        Ok(etag)
    }

    /// Completes upload `upload_id` from `parts` (number, ETag — `""` is
    /// fine for AIStore's own buckets). AIStore wants exactly the parts
    /// uploaded, numbered 1..N (in any order): a missing or extra part is
    /// an error and the upload stays, to be completed again or aborted.
    ///
    /// # Errors
    /// [`Error::Http`] 400 (parts), 404 (no such upload); as
    /// [`AisWriter::exists`].
    pub fn mpt_complete(&self, upload_id: &str, parts: &[(u32, String)]) -> Result<()> {
        let op = format!("mpt-complete of upload {upload_id:?}");
        let value = parts
            .iter()
            .map(|(n, etag)| serde_json::json!({"etag": etag, "part-number": n}))
            .collect();
        let msg = act_msg("mpt-complete", "", serde_json::Value::Array(value));
        let url = self.upload_url(upload_id);
        self.call(
            &op,
            Some(upload_id),
            Method::Post,
            &url,
            Payload::Json(&msg),
        )
        .map(drain)
    }

    /// Aborts upload `upload_id`: its parts are dropped, no object is made.
    ///
    /// # Errors
    /// [`Error::Http`] 404 for an upload that does not exist; as
    /// [`AisWriter::exists`].
    pub fn mpt_abort(&self, upload_id: &str) -> Result<()> {
        let op = format!("mpt-abort of upload {upload_id:?}");
        let msg = act_msg("mpt-abort", "", serde_json::Value::Null);
        let url = self.upload_url(upload_id);
        self.call(
            &op,
            Some(upload_id),
            Method::Delete,
            &url,
            Payload::Json(&msg),
        )
        .map(drain)
    }

    // ---- the requests -------------------------------------------------

    fn auth(&self) -> Vec<(&'static str, String)> {
        self.addr.auth()
    }

    /// The object's URL naming upload `upload_id`.
    fn upload_url(&self, upload_id: &str) -> String {
        format!(
            "{}&uploadId={}",
            self.addr.url,
            utf8_percent_encode(upload_id, QUERY_KEEP)
        )
    }

    /// [`AisWriter::exchange`], with an error answer classified.
    fn call(
        &self,
        op: &str,
        upload: Option<&str>,
        method: Method,
        url: &str,
        payload: Payload<'_>,
    ) -> Result<Response<ureq::Body>> {
        self.exchange(op, method, url, payload)?
            .map_err(|resp| self.fail(op, upload, resp))
    }

    /// Asks the gateway, then sends the request to the target it names:
    /// `Ok(Ok)` a 2xx answer, `Ok(Err)` any other answer (of the gateway
    /// or of the target), `Err` a request that got no answer.
    fn exchange(
        &self,
        op: &str,
        method: Method,
        url: &str,
        payload: Payload<'_>,
    ) -> Result<std::result::Result<Response<ureq::Body>, Response<ureq::Body>>> {
        // 1. The gateway: headers (and an action message), no other body.
        let mut req = self.builder(method, url, true);
        for (k, v) in self.auth() {
            req = req.header(k, v);
        }
        let mut withheld = Withheld::default();
        let sent = match &payload {
            Payload::None => req.send_empty(),
            Payload::Json(j) => req.header("Content-Type", "application/json").send(*j),
            Payload::Bytes(b) => req
                .header("Expect", "100-continue")
                .header("Content-Length", b.len().to_string())
                .send(SendBody::from_reader(&mut withheld)),
            Payload::Stream(_, len) => {
                let req = req.header("Expect", "100-continue");
                let req = match len {
                    Some(n) => req.header("Content-Length", n.to_string()),
                    None => req.header("Transfer-Encoding", "chunked"),
                };
                req.send(SendBody::from_reader(&mut withheld))
            }
        };
        let resp = match sent {
            Ok(r) => r,
            Err(e) if withheld.asked => {
                return Err(self.transport(
                    op,
                    format!(
                        "the gateway did not redirect before asking for the body \
                         (100 Continue, or no answer within the read timeout): {e}"
                    ),
                ));
            }
            Err(e) => return Err(self.transport(op, e)),
        };
        let status = resp.status().as_u16();
        let location = match status {
            301 | 302 | 307 | 308 => match header(&resp, "location") {
                Some(l) => self.resolve(url, l, op)?,
                None => return Ok(Err(resp)),
            },
            200..=299 if matches!(payload, Payload::None | Payload::Json(_)) => {
                // The gateway did it itself.
                return Ok(Ok(resp));
            }
            200..=299 => {
                return Err(Error::Http {
                    object: self.addr.name.clone(),
                    range: None,
                    status,
                    url: url.to_string(),
                    message: format!(
                        "{op}: the gateway answered without redirecting to a target, \
                         the body was not sent"
                    ),
                });
            }
            _ => return Ok(Err(resp)),
        };
        drain(resp);
        // 2. The target: the whole request, no token.
        let req = self.builder(method, &location, false);
        let sent = match payload {
            Payload::None => req.send_empty(),
            Payload::Json(j) => req.header("Content-Type", "application/json").send(j),
            Payload::Bytes(b) => req.header("Expect", "100-continue").send(b),
            Payload::Stream(body, len) => {
                let mut exact = Exact {
                    inner: body,
                    left: len,
                    read: 0,
                    failed: None,
                };
                let req = req.header("Expect", "100-continue");
                let req = match len {
                    Some(n) => req.header("Content-Length", n.to_string()),
                    None => req,
                };
                let sent = req.send(SendBody::from_reader(&mut exact));
                match (sent, exact.failed) {
                    (Ok(r), _) => Ok(r),
                    (Err(_), Some(why)) => {
                        return Err(Error::Io {
                            context: format!("{op} {}: reading the body", self.addr.name),
                            message: why,
                            errno: None,
                        });
                    }
                    (Err(e), None) if exact.read > 0 => {
                        return Err(self.transport(
                            op,
                            format!(
                                "{e} ({} bytes of the body were read: resend it from its start)",
                                exact.read
                            ),
                        ));
                    }
                    (Err(e), None) => Err(e),
                }
            }
        };
        let resp = sent.map_err(|e| self.transport(op, e))?;
        if resp.status().is_success() {
            Ok(Ok(resp))
        } else {
            Ok(Err(resp))
        }
    }

    /// A request that follows no redirect (a 3xx is an answer). Bodies
    /// announced with `Expect: 100-continue` wait for the answer up to the
    /// read timeout at the gateway (which never asks for them), the
    /// default second at a target (which does).
    fn builder(&self, method: Method, url: &str, gateway: bool) -> RequestBuilder<WithBody> {
        let agent = &self.client.agent;
        let req = match method {
            Method::Put => agent.put(url),
            Method::Post => agent.post(url),
            Method::Delete => agent.delete(url).force_send_body(),
        };
        let cfg = req
            .config()
            .max_redirects(0)
            .max_redirects_will_error(false);
        let cfg = if gateway {
            let wait = agent
                .config()
                .timeout_per_read()
                .unwrap_or(DEFAULT_READ_TIMEOUT);
            cfg.timeout_await_100(Some(wait))
        } else {
            cfg
        };
        cfg.build()
    }

    /// The absolute URL of a `Location` (AIStore sends absolute ones).
    fn resolve(&self, base: &str, location: &str, op: &str) -> Result<String> {
        url::Url::parse(base)
            .and_then(|b| b.join(location))
            .map(String::from)
            .map_err(|e| Error::Http {
                object: self.addr.name.clone(),
                range: None,
                status: 307,
                url: base.to_string(),
                message: format!("{op}: unusable redirect Location {location:?}: {e}"),
            })
    }

    /// A failed answer as a typed error naming the object and `op`. For
    /// an operation on an upload, a 404 that is not the bucket's is the
    /// upload's: [`Error::Http`] 404, not a missing object.
    fn fail(&self, op: &str, upload: Option<&str>, resp: Response<ureq::Body>) -> Error {
        let r = error_response(&self.addr.name, None, resp);
        let (status, url) = (r.status, r.url.clone());
        match self.addr.classify(r) {
            Error::ObjectNotFound { object, message } if upload.is_some() => Error::Http {
                object,
                range: None,
                status,
                url,
                message: format!("{op}: the upload does not exist: {message}"),
            },
            e => with_op(e, op),
        }
    }

    fn transport(&self, op: &str, e: impl std::fmt::Display) -> Error {
        transport(&self.addr.name, None, format!("{op}: {e}"))
    }
}

/// An action message as Go's `apc.ActMsg` marshals it.
fn act_msg(action: &str, name: &str, value: serde_json::Value) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct ActMsg<'a> {
        value: serde_json::Value,
        action: &'a str,
        name: &'a str,
    }
    serde_json::to_vec(&ActMsg {
        value,
        action,
        name,
    })
    .unwrap_or_default()
}

/// Prefixes an error's message with the operation that failed.
fn with_op(e: Error, op: &str) -> Error {
    let prefix = |m: String| {
        if m.trim().is_empty() {
            op.to_string()
        } else {
            format!("{op}: {m}")
        }
    };
    match e {
        Error::Http {
            object,
            range,
            status,
            url,
            message,
        } => Error::Http {
            object,
            range,
            status,
            url,
            message: prefix(message),
        },
        Error::ObjectNotFound { object, message } => Error::ObjectNotFound {
            object,
            message: prefix(message),
        },
        Error::AccessDenied {
            object,
            status,
            message,
        } => Error::AccessDenied {
            object,
            status,
            message: prefix(message),
        },
        Error::BucketNotFound {
            bucket,
            endpoint,
            message,
        } => Error::BucketNotFound {
            bucket,
            endpoint,
            message: prefix(message),
        },
        e => e,
    }
}

/// Whether a 400 to `mpt-upload` says the cluster does not know the
/// action (see [`AisWriter::mpt_create`]).
fn is_older_cluster_answer(body: &str, bucket: &str) -> bool {
    let message = serde_json::from_str::<serde_json::Value>(body.trim())
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.to_string());
    message.contains("invalid action \"mpt-upload\"")
        || (message.contains("bucket name is invalid") && is_valid_bucket_name(bucket))
}

/// AIStore's rule for bucket names (`cmn/cos/uuid.go` `CheckAlphaPlus`):
/// letters, digits, `-`, `_` and `.`, no `..`, not `.`.
fn is_valid_bucket_name(b: &str) -> bool {
    !b.is_empty()
        && b != "."
        && !b.contains("..")
        && b.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Reads what is left of an answer's body (a little), so that its
/// connection goes back to the pool.
fn drain(resp: Response<ureq::Body>) {
    let mut sink = Vec::new();
    let _ = resp
        .into_body()
        .into_reader()
        .take(64 * 1024)
        .read_to_end(&mut sink);
}

/// The body of a request to the gateway: never sent. Reading it means
/// the gateway asked for the body instead of redirecting.
#[derive(Default)]
struct Withheld {
    asked: bool,
}

impl Read for Withheld {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        self.asked = true;
        Err(io::Error::other(
            "a body goes to the target only, never to the gateway",
        ))
    }
}

/// A streamed body: at most `left` bytes when set, and an error when the
/// stream ends before; remembers how much was read and why it failed.
struct Exact<'a> {
    inner: &'a mut dyn Read,
    left: Option<u64>,
    read: u64,
    failed: Option<String>,
}

impl Read for Exact<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let cap = match self.left {
            Some(0) => return Ok(0),
            Some(l) => usize::try_from(l).unwrap_or(usize::MAX).min(buf.len()),
            None => buf.len(),
        };
        loop {
            match self.inner.read(&mut buf[..cap]) {
                Ok(0) if self.left.is_some() && cap > 0 => {
                    let why = format!(
                        "the body ended after {} of {} bytes",
                        self.read,
                        self.read + self.left.unwrap_or(0)
                    );
                    self.failed = Some(why.clone());
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, why));
                }
                Ok(n) => {
                    self.read += n as u64;
                    if let Some(l) = &mut self.left {
                        *l -= n as u64;
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.failed = Some(e.to_string());
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::source::http::{HttpConfig, NameSource, WorkerHttp};
    use crate::testing::server::{ServerConfig, TestServer};

    /// Every `*.invalid` name is 127.0.0.1; records what was asked.
    #[derive(Debug, Default)]
    struct Loopback {
        asked: Mutex<Vec<String>>,
    }

    impl NameSource for Loopback {
        fn lookup(&self, host: &str, port: u16, _: Duration) -> io::Result<Vec<SocketAddr>> {
            self.asked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(host.to_string());
            if host.ends_with(".invalid") {
                Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))])
            } else {
                Err(io::Error::new(io::ErrorKind::NotFound, host.to_string()))
            }
        }
    }

    /// `put_part` runs in forked workers, whose client never resolves a
    /// name itself: with a worker's client, the gateway's name and the
    /// redirect's target name come from its name source (names no
    /// system resolver knows), and the part is stored.
    #[test]
    fn a_worker_s_client_uploads_parts_with_names_from_its_coordinator() {
        let srv = TestServer::start(ServerConfig {
            redirect_host: Some("target.invalid".into()),
            ..ServerConfig::default()
        })
        .unwrap();
        srv.create_bucket("b");
        let port = srv.endpoint().rsplit(':').next().unwrap().to_string();
        let spec = SourceSpec::AiStore {
            endpoint: format!("http://gw.invalid:{port}"),
            bucket: "b".into(),
            object: "o".into(),
            provider: "ais".into(),
            token: None,
            direct: false,
            direct_url: None,
        };
        let names = Arc::new(Loopback::default());
        let client = WorkerHttp::prepare(&HttpConfig::default()).client(names.clone());
        let w = AisWriter::new(client, &spec).unwrap();
        let MptStart::Upload(id) = w.mpt_create().unwrap() else {
            panic!("multipart is supported");
        };
        w.put_part(&id, 1, b"from a worker").unwrap();
        w.mpt_complete(&id, &[(1, String::new())]).unwrap();
        assert_eq!(srv.object("b", "o").unwrap(), b"from a worker");
        let asked = names.asked.lock().unwrap().clone();
        assert!(asked.contains(&"gw.invalid".to_string()), "{asked:?}");
        assert!(asked.contains(&"target.invalid".to_string()), "{asked:?}");
    }

    /// A gateway that asks for the body (100 Continue) instead of
    /// redirecting gets none of it: the call fails, retryably, saying so.
    #[test]
    fn a_gateway_that_asks_for_the_body_gets_none_of_it() {
        use std::io::Write;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = Vec::new();
            let mut tmp = [0u8; 4096];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = c.read(&mut tmp).unwrap();
                assert!(n > 0);
                got.extend_from_slice(&tmp[..n]);
            }
            let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
            c.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
            // Whatever the client sends after the head, until it closes.
            let mut body = got.len() - head_end;
            while let Ok(n) = c.read(&mut tmp) {
                if n == 0 {
                    break;
                }
                body += n;
            }
            (head, body)
        });
        let spec = SourceSpec::AiStore {
            endpoint: format!("http://{addr}"),
            bucket: "b".into(),
            object: "o".into(),
            provider: "ais".into(),
            token: None,
            direct: false,
            direct_url: None,
        };
        let w = AisWriter::new(HttpClient::default(), &spec).unwrap();
        let e = w.put_part("id", 1, &[7u8; 100_000]).unwrap_err();
        assert!(matches!(e, Error::Transport { .. }), "{e:?}");
        assert!(e.to_string().contains("did not redirect"), "{e}");
        let (head, body) = server.join().unwrap();
        assert!(
            head.starts_with("put /v1/objects/b/o?provider=ais&uploadid=id&partnumber=1 "),
            "{head}"
        );
        assert!(head.contains("expect: 100-continue"), "{head}");
        assert!(head.contains("content-length: 100000"), "{head}");
        assert_eq!(body, 0, "body bytes reached the gateway");
    }

    #[test]
    fn action_messages_are_marshalled_as_go_does() {
        assert_eq!(
            String::from_utf8(act_msg("rename-obj", "a/b c", serde_json::Value::Null)).unwrap(),
            r#"{"value":null,"action":"rename-obj","name":"a/b c"}"#
        );
    }

    #[test]
    fn older_cluster_answers_are_told_from_real_errors() {
        let json = |m: &str| serde_json::json!({"message": m, "status": 400}).to_string();
        assert!(is_older_cluster_answer(
            &json("invalid action \"mpt-upload\""),
            "b"
        ));
        let old = json(
            "bucket name is invalid: may only contain letters, numbers, dashes (-), \
             underscores (_), and dots (.)",
        );
        assert!(is_older_cluster_answer(&old, "my-bucket.v2"));
        // The same words about a bucket name that is invalid indeed.
        assert!(!is_older_cluster_answer(&old, "bad name"));
        assert!(!is_older_cluster_answer(&old, "a..b"));
        assert!(!is_older_cluster_answer(
            &json("invalid action \"rename-obj\""),
            "b"
        ));
        assert!(!is_older_cluster_answer(
            &json("parts must be exactly 1..3"),
            "b"
        ));
    }

    #[test]
    fn a_streamed_body_is_exactly_its_length() {
        let mut src: &[u8] = b"0123456789";
        let mut e = Exact {
            inner: &mut src,
            left: Some(4),
            read: 0,
            failed: None,
        };
        let mut out = Vec::new();
        e.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"0123");
        let mut short: &[u8] = b"01";
        let mut e = Exact {
            inner: &mut short,
            left: Some(4),
            read: 0,
            failed: None,
        };
        let err = e.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(
            e.failed.as_deref(),
            Some("the body ended after 2 of 4 bytes")
        );
    }
}
