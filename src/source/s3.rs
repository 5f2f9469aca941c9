//! S3 and S3-compatible stores: `s3://bucket/key`.
//!
//! The work is split at the process boundary:
//!
//! * the **coordinator** resolves the settings ([`S3Options`] → [`S3Config`]:
//!   region, endpoint, addressing style), finds credentials by the standard
//!   AWS chain and **presigns** one `GET` URL per download (SigV4 query
//!   authentication, [`PRESIGN_TTL`]); see `presign` (feature `s3`);
//! * a **worker** only sends plain ranged `GET`s to that URL with
//!   `If-Match: <etag>` — no signing code, no credentials and no async
//!   runtime in a forked child. An unsigned request (`--no-sign-request`)
//!   goes to the object's plain URL.
//!
//! The object's size, ETag and version come from a one-byte ranged `GET`
//! rather than a `HEAD`: S3 answers a failed `HEAD` without a body, so a
//! `HEAD` cannot tell a missing bucket from a missing key, nor say why
//! access was denied. S3's XML errors become typed errors
//! (`classify_s3`).
//!
//! Keys are encoded per path segment (every byte but `A–Z a–z 0–9 - _ . ~`
//! and `/` percent-encoded), so `/`, spaces, `+`, `%`, `?`, `#` and
//! non-ASCII characters round-trip. Keys with an empty segment (`a//b`, a
//! leading or trailing `/`) or a `.`/`..` segment are refused: URL
//! normalisation would change them.

#[cfg(feature = "s3")]
pub(crate) mod ops;
#[cfg(feature = "s3")]
mod presign;

use std::fmt;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::range::ByteRange;
use crate::source::http::{ErrorResponse, HttpClient, Probe, get_range_into, probe_with};
use crate::source::sink::RangeSink;
use crate::source::{ObjectMeta, ObjectSource, SourceSpec};

/// How long a presigned URL handed to the workers stays valid, unless
/// [`S3Options::presign_ttl`] says otherwise. Each download gets a fresh
/// one, renewed for the workers every half of it.
pub const PRESIGN_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Longest the workers keep one presigned URL: temporary credentials
/// (IMDS, web identity, container, a session token in a profile) are
/// refreshed by their provider only when less than 5 minutes remain, so a
/// URL may die 5 minutes after it was made. Renewing costs microseconds.
pub const RENEW_AT_MOST: std::time::Duration = std::time::Duration::from_secs(240);

/// Characters kept as they are in a key's path: RFC 3986 unreserved and
/// `/` (S3's `UriEncode(key, false)`).
const KEY_KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// Path-style (`endpoint/bucket/key`) or virtual-hosted-style
/// (`bucket.endpoint/key`) addressing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Addressing {
    /// Path-style when an endpoint is given (S3-compatible stores), else
    /// virtual-hosted (AWS), except for bucket names with dots.
    #[default]
    Auto,
    /// `https://endpoint/bucket/key`.
    Path,
    /// `https://bucket.endpoint/key`.
    Virtual,
}

impl std::str::FromStr for Addressing {
    type Err = Error;
    fn from_str(s: &str) -> Result<Addressing> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Addressing::Auto),
            "path" => Ok(Addressing::Path),
            "virtual" => Ok(Addressing::Virtual),
            _ => Err(Error::InvalidConfig(format!(
                "addressing style {s:?}: expected auto, path or virtual"
            ))),
        }
    }
}

/// What the user said about S3: flags over environment. Unresolved:
/// [`S3Options::resolve`] fills in defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Options {
    /// `--region`, else `AWS_REGION`, else `AWS_DEFAULT_REGION`.
    pub region: Option<String>,
    /// `--endpoint-url`, else `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`.
    pub endpoint: Option<String>,
    /// `--addressing-style`.
    pub addressing: Addressing,
    /// `--no-sign-request`: send requests unsigned (public buckets).
    pub unsigned: bool,
    /// `AWS_PROFILE` (else `AWS_DEFAULT_PROFILE`): the profile of the
    /// shared config files.
    pub profile: Option<String>,
    /// Credentials given by the program, used before any of the chain's.
    pub credentials: Option<S3Credentials>,
    /// Lifetime of the presigned URLs (1 s to 7 days); default
    /// [`PRESIGN_TTL`].
    pub presign_ttl: Option<std::time::Duration>,
}

/// Static S3 credentials. `Debug` shows the key id only; they never
/// travel to the workers (which get presigned URLs).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct S3Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"***")
            .field("session_token", &self.session_token.as_ref().map(|_| "***"))
            .finish()
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

impl S3Options {
    /// Reads `AWS_REGION`/`AWS_DEFAULT_REGION`,
    /// `AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL` and
    /// `AWS_PROFILE`/`AWS_DEFAULT_PROFILE`.
    pub fn from_env() -> S3Options {
        S3Options {
            region: env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")),
            endpoint: env("AWS_ENDPOINT_URL_S3").or_else(|| env("AWS_ENDPOINT_URL")),
            addressing: Addressing::Auto,
            unsigned: false,
            profile: env("AWS_PROFILE").or_else(|| env("AWS_DEFAULT_PROFILE")),
            credentials: None,
            presign_ttl: None,
        }
    }

    /// Fills in the defaults: the region from the profile's `region` in
    /// the shared config file, else `us-east-1`; the addressing style.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an endpoint that is not an `http(s)`
    /// URL, or virtual-hosted addressing of a bucket name with dots.
    pub fn resolve(&self, bucket: &str) -> Result<S3Config> {
        let region = self
            .region
            .clone()
            .or_else(|| profile_region(self.profile.as_deref()))
            .unwrap_or_else(|| "us-east-1".to_string());
        let endpoint = match &self.endpoint {
            Some(e) => {
                let e = e.trim_end_matches('/').to_string();
                let u = url::Url::parse(&e)
                    .map_err(|err| Error::InvalidConfig(format!("S3 endpoint URL {e:?}: {err}")))?;
                if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
                    return Err(Error::InvalidConfig(format!(
                        "S3 endpoint URL {e:?}: expected http(s)://host[:port]"
                    )));
                }
                Some(e)
            }
            None => None,
        };
        let dns_name = bucket.len() >= 3
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !bucket.starts_with('-')
            && !bucket.ends_with('-');
        let addressing = match self.addressing {
            // Virtual-hosted names the bucket in the host: only for names
            // that are DNS labels (as botocore decides).
            Addressing::Auto if endpoint.is_some() || !dns_name => Addressing::Path,
            Addressing::Auto => Addressing::Virtual,
            a => a,
        };
        if addressing == Addressing::Virtual
            && let Some(e) = &endpoint
            && let Ok(u) = url::Url::parse(e)
            && !matches!(u.host(), Some(url::Host::Domain(_)))
        {
            return Err(Error::InvalidConfig(format!(
                "virtual-hosted addressing puts the bucket in the host name, which the \
                 endpoint {e} (an IP address) cannot take: use --addressing-style path"
            )));
        }
        let ttl = self.presign_ttl.unwrap_or(PRESIGN_TTL);
        if !(1..=7 * 24 * 3600).contains(&ttl.as_secs()) {
            return Err(Error::InvalidConfig(format!(
                "presigned URL lifetime {} s: S3 accepts 1 s to 7 days",
                ttl.as_secs()
            )));
        }
        Ok(S3Config {
            region,
            endpoint,
            addressing,
            unsigned: self.unsigned,
            profile: self.profile.clone(),
            presign_ttl_secs: ttl.as_secs(),
            credentials: self.credentials.clone(),
        })
    }
}

/// The `region` of `profile` (or `default`) in the shared config file.
fn profile_region(profile: Option<&str>) -> Option<String> {
    #[cfg(feature = "s3")]
    {
        presign::profile_region(profile)
    }
    #[cfg(not(feature = "s3"))]
    {
        let _ = profile;
        None
    }
}

/// Resolved S3 settings of one object: what travels to the workers (no
/// secret in it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct S3Config {
    /// Region, for signing and the AWS endpoint.
    pub region: String,
    /// Endpoint URL without a trailing `/`; `None` for AWS.
    pub endpoint: Option<String>,
    /// [`Addressing::Path`] or [`Addressing::Virtual`], never `Auto`.
    pub addressing: Addressing,
    /// Requests are not signed.
    pub unsigned: bool,
    /// The shared-files profile to take credentials from.
    pub profile: Option<String>,
    /// Lifetime of the presigned URLs, in seconds.
    pub presign_ttl_secs: u64,
    /// Credentials given by the program; never serialised (the workers
    /// get presigned URLs, not credentials).
    #[serde(skip)]
    pub credentials: Option<S3Credentials>,
}

impl S3Config {
    /// Lifetime of the presigned URLs.
    pub fn presign_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.presign_ttl_secs)
    }

    /// The URL of `bucket` (no trailing `/`): `endpoint/bucket`,
    /// `scheme://bucket.host`, or AWS's.
    pub fn bucket_url(&self, bucket: &str) -> String {
        match (&self.endpoint, self.addressing) {
            (Some(e), Addressing::Virtual) => match url::Url::parse(e) {
                Ok(u) => {
                    let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
                    let host = u.host_str().unwrap_or_default();
                    format!("{}://{bucket}.{host}{port}", u.scheme())
                }
                Err(_) => format!("{e}/{bucket}"),
            },
            (Some(e), _) => format!("{e}/{bucket}"),
            (None, Addressing::Virtual) => {
                format!("https://{bucket}.s3.{}.amazonaws.com", self.region)
            }
            (None, _) => format!("https://s3.{}.amazonaws.com/{bucket}", self.region),
        }
    }

    /// The object's plain (unsigned) URL, the key encoded.
    pub fn object_url(&self, bucket: &str, key: &str) -> String {
        format!(
            "{}/{}",
            self.bucket_url(bucket),
            utf8_percent_encode(key, KEY_KEEP)
        )
    }

    /// The endpoint for messages.
    pub(crate) fn endpoint_display(&self) -> String {
        self.endpoint
            .clone()
            .unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", self.region))
    }
}

/// A URL that carries a credential (a presigned URL: signature, key id,
/// session token). `Debug` and `Display` show it without its query.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL.
    pub(crate) fn new(url: String) -> SecretUrl {
        SecretUrl(url)
    }

    /// The URL with its credential, to send a request with. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL without its query.
    pub fn redacted(&self) -> &str {
        self.0.split('?').next().unwrap_or_default()
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({}?***)", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}?***", self.redacted())
    }
}

/// How the workers reach the object: a presigned `GET` URL (or the plain
/// URL when unsigned), and when it expires.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct S3Access {
    /// The URL to `GET`.
    pub url: SecretUrl,
    /// Seconds since the epoch after which the URL is refused; `None`
    /// for an unsigned URL.
    pub expires_at: Option<u64>,
}

/// Checks `key` can be addressed exactly (see the module notes).
pub(crate) fn check_key(key: &str) -> std::result::Result<(), &'static str> {
    if key.is_empty() {
        return Err("missing key: expected s3://BUCKET/KEY");
    }
    if key.ends_with('/') {
        return Err("the key ends with `/`, which names a prefix, not an object");
    }
    if key
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(
            "keys with an empty segment (a leading, trailing or double `/`) or a `.`/`..` \
             segment are not supported",
        );
    }
    if key.chars().any(|c| c.is_control()) {
        return Err("keys with control characters are not supported");
    }
    Ok(())
}

/// Checks an S3 bucket name loosely (3–63 characters of `a-z 0-9 . -`,
/// plus `_` and capitals some S3-compatible stores allow).
pub(crate) fn check_bucket(bucket: &str) -> std::result::Result<(), &'static str> {
    let ok = (1..=255).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err("invalid bucket name (expected letters, digits, `.`, `-`, `_`)")
    }
}

/// Presigns a `GET` of `bucket/key` for the workers (feature `s3`), or
/// gives the plain URL when unsigned.
pub(crate) fn access_for(bucket: &str, key: &str, config: &S3Config) -> Result<S3Access> {
    if config.unsigned {
        return Ok(S3Access {
            url: SecretUrl::new(config.object_url(bucket, key)),
            expires_at: None,
        });
    }
    if crate::source::http::in_worker() {
        // Never reached: the coordinator presigns before any task. A worker
        // must not run the credential chain (it needs an async runtime).
        return Err(Error::Pool(
            "a worker got an S3 object without a presigned URL".into(),
        ));
    }
    #[cfg(feature = "s3")]
    {
        presign::presign_get(bucket, key, config, config.presign_ttl())
    }
    #[cfg(not(feature = "s3"))]
    {
        Err(Error::InvalidSource {
            url: format!("s3://{bucket}/{key}"),
            reason: "signed S3 requests need the `s3` cargo feature (use --no-sign-request \
                     for a public bucket)"
                .into(),
        })
    }
}

/// An object in an S3 bucket, read through a presigned (or plain) URL.
pub struct S3Object {
    client: HttpClient,
    name: String,
    bucket: String,
    endpoint: String,
    public_url: String,
    url: SecretUrl,
    unsigned: bool,
}

impl fmt::Debug for S3Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Object")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl S3Object {
    /// Builds the backend for a [`SourceSpec::S3`]. A spec without
    /// [`S3Access`] is presigned now (in the coordinator).
    ///
    /// # Errors
    /// [`Error::InvalidSource`] for another spec; credential errors.
    pub fn new(client: HttpClient, spec: &SourceSpec) -> Result<S3Object> {
        let SourceSpec::S3 {
            bucket,
            key,
            config,
            access,
        } = spec
        else {
            return Err(Error::InvalidSource {
                url: spec.display_name(),
                reason: "not an S3 object".into(),
            });
        };
        let access = match access {
            Some(a) => a.clone(),
            None => access_for(bucket, key, config)?,
        };
        Ok(S3Object {
            client,
            name: spec.display_name(),
            bucket: bucket.clone(),
            endpoint: config.endpoint_display(),
            public_url: config.object_url(bucket, key),
            url: access.url,
            unsigned: config.unsigned,
        })
    }

    fn classify(&self, r: ErrorResponse) -> Error {
        match classify_s3(&self.bucket, &self.endpoint, &self.public_url, r) {
            Error::AccessDenied {
                object,
                status,
                message,
            } if self.unsigned => Error::AccessDenied {
                object,
                status,
                message: format!(
                    "{message} (the request was unsigned, --no-sign-request: the object is not \
                     public; drop the flag to sign with credentials)"
                ),
            },
            e => e,
        }
    }
}

impl ObjectSource for S3Object {
    fn name(&self) -> &str {
        &self.name
    }

    /// A `GET` of `bytes=0-0`: size from `Content-Range`, ETag and
    /// `x-amz-version-id`; a failure comes with S3's XML error.
    fn meta(&self) -> Result<ObjectMeta> {
        let answer = probe_with(
            &self.client,
            self.url.expose(),
            &[],
            false,
            "x-amz-version-id",
            &self.name,
            &|mut r| {
                r.url = self.public_url.clone();
                self.classify(r)
            },
        )?;
        let size = match answer.probe {
            Probe::Size(s) | Probe::Ignored(Some(s @ 0)) => s,
            Probe::Ignored(_) => {
                return Err(Error::RangeMismatch {
                    object: self.name.clone(),
                    range: ByteRange { start: 0, end: 1 },
                    detail: "the endpoint ignored Range (HTTP 200 to bytes=0-0)".into(),
                });
            }
        };
        Ok(ObjectMeta {
            size,
            chunk_hint: None,
            etag: answer.etag,
            // S3 says `null` for an object of an unversioned bucket.
            version: answer.version.filter(|v| v != "null"),
            no_ranges: false,
        })
    }

    fn read_range(
        &self,
        range: ByteRange,
        sink: &mut dyn RangeSink,
        expected: &ObjectMeta,
    ) -> Result<()> {
        let mut headers = Vec::new();
        if let Some(etag) = &expected.etag {
            headers.push(("If-Match", etag.clone()));
        }
        get_range_into(
            &self.client,
            self.url.expose(),
            &headers,
            false,
            &self.name,
            range,
            sink,
            expected,
            &|mut r| {
                r.url = self.public_url.clone();
                self.classify(r)
            },
        )
    }
}

/// `Code` and `Message` of S3's XML error body, if it is one.
pub(crate) fn parse_error_xml(body: &str) -> Option<(String, String)> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(body);
    let mut depth = 0usize;
    let mut is_error = false;
    // The field being read (`Code` or `Message`) and its text so far.
    let mut field: Option<(bool, String)> = None;
    let (mut code, mut message) = (None::<String>, None::<String>);
    // A malformed part ends the loop; what was found before it is kept.
    while let Ok(event) = reader.read_event() {
        match event {
            Event::Start(e) => {
                depth += 1;
                if depth == 1 {
                    is_error = e.name().as_ref() == b"Error";
                }
                field = match (is_error, depth, e.name().as_ref()) {
                    (true, 2, b"Code") => Some((true, String::new())),
                    (true, 2, b"Message") => Some((false, String::new())),
                    _ => None,
                };
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                if let Some((is_code, text)) = field.take() {
                    let text = text.trim().to_string();
                    if is_code {
                        code = Some(text);
                    } else {
                        message = Some(text);
                    }
                }
            }
            Event::Text(t) => {
                if let (Some((_, text)), Ok(t)) = (&mut field, t.decode()) {
                    text.push_str(&t);
                }
            }
            // `&amp;`, `&#38;`: quick-xml reports entities on their own.
            Event::GeneralRef(r) => {
                if let Some((_, text)) = &mut field {
                    if let Ok(Some(c)) = r.resolve_char_ref() {
                        text.push(c);
                    } else if let Ok(name) = r.decode() {
                        match quick_xml::escape::resolve_predefined_entity(&name) {
                            Some(v) => text.push_str(v),
                            None => {
                                text.push('&');
                                text.push_str(&name);
                                text.push(';');
                            }
                        }
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let code = code.filter(|c| !c.is_empty())?;
    Some((code, message.unwrap_or_default()))
}

/// Codes that mean the credentials or the signature are refused.
const ACCESS_CODES: &[&str] = &[
    "AccessDenied",
    "AllAccessDisabled",
    "AccountProblem",
    "ExpiredToken",
    "InvalidAccessKeyId",
    "InvalidToken",
    "SignatureDoesNotMatch",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
    "AuthorizationQueryParametersError",
    "RequestTimeTooSkewed",
];

/// Maps an S3 error answer to a typed error. `public_url` is the object's
/// URL without credentials (never the presigned one).
pub(crate) fn classify_s3(
    bucket: &str,
    endpoint: &str,
    public_url: &str,
    r: ErrorResponse,
) -> Error {
    let (code, message) = match parse_error_xml(&r.body) {
        Some((c, m)) => (c, m),
        None => (
            String::new(),
            r.body.trim().chars().take(300).collect::<String>(),
        ),
    };
    let text = match (code.is_empty(), message.is_empty()) {
        (true, _) => message.clone(),
        (false, true) => code.clone(),
        (false, false) => format!("{code}: {message}"),
    };
    if code == "NoSuchBucket" {
        return Error::BucketNotFound {
            bucket: format!("s3://{bucket}"),
            endpoint: endpoint.to_string(),
            message: text,
        };
    }
    if code == "NoSuchKey" || (code.is_empty() && r.status == 404) {
        return Error::ObjectNotFound {
            object: r.object,
            message: text,
        };
    }
    if code == "PreconditionFailed" || r.status == 412 {
        return Error::ObjectChanged {
            object: r.object,
            detail: format!(
                "it was replaced during the download (its ETag no longer matches: HTTP {} {text})",
                r.status
            ),
        };
    }
    if code == "RequestTimeout" {
        // S3 closed an idle socket (400); the SDKs retry it.
        return Error::Transport {
            object: r.object,
            range: r.range,
            message: format!("HTTP {} {text}", r.status),
        };
    }
    if code == "PermanentRedirect" || code == "TemporaryRedirect" || (300..400).contains(&r.status)
    {
        return Error::Http {
            object: r.object,
            range: r.range,
            status: r.status,
            url: public_url.to_string(),
            message: match &r.bucket_region {
                Some(region) => format!(
                    "{text} (the bucket is in region {region}: pass --region {region} \
                     or set AWS_REGION={region})"
                ),
                None => format!(
                    "{text} (the bucket is in another region or behind another endpoint: \
                     set --region or AWS_REGION to the bucket's region)"
                ),
            },
        };
    }
    if ACCESS_CODES.contains(&code.as_str()) || r.status == 401 || r.status == 403 {
        return Error::AccessDenied {
            object: r.object,
            status: r.status,
            message: text,
        };
    }
    Error::Http {
        object: r.object,
        range: r.range,
        status: r.status,
        url: public_url.to_string(),
        message: text,
    }
}

/// [`classify_s3`] of a response with `status` and `body`, for the fuzz
/// targets (feature `fuzzing`).
#[cfg(feature = "fuzzing")]
pub(crate) fn classify_for_fuzzing(status: u16, body: &str) -> Error {
    let r = ErrorResponse {
        object: "s3://fuzz/key".to_string(),
        range: None,
        status,
        url: "http://fuzz/fuzz/key".to_string(),
        body: body.to_string(),
        bucket_region: None,
    };
    classify_s3("fuzz", "http://fuzz", "http://fuzz/fuzz/key", r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(endpoint: Option<&str>, addressing: Addressing) -> S3Config {
        S3Options {
            region: Some("eu-west-1".into()),
            endpoint: endpoint.map(str::to_string),
            addressing,
            unsigned: true,
            ..Default::default()
        }
        .resolve("bkt")
        .unwrap()
    }

    #[test]
    fn keys_are_encoded_per_segment_keeping_slashes() {
        let c = cfg(Some("http://127.0.0.1:9000/"), Addressing::Auto);
        assert_eq!(c.addressing, Addressing::Path);
        assert_eq!(
            c.object_url("bkt", "a dir/x%y?z#w+ü~_.-"),
            "http://127.0.0.1:9000/bkt/a%20dir/x%25y%3Fz%23w%2B%C3%BC~_.-"
        );
    }

    #[test]
    fn addressing_styles() {
        assert_eq!(
            cfg(None, Addressing::Auto).object_url("bkt", "k"),
            "https://bkt.s3.eu-west-1.amazonaws.com/k"
        );
        assert_eq!(
            cfg(None, Addressing::Path).object_url("bkt", "k"),
            "https://s3.eu-west-1.amazonaws.com/bkt/k"
        );
        assert_eq!(
            cfg(Some("http://minio:9000"), Addressing::Virtual).object_url("bkt", "k"),
            "http://bkt.minio:9000/k"
        );
        for name in ["a.b", "Upper", "under_score"] {
            let c = S3Options::default().resolve(name).unwrap();
            assert_eq!(c.addressing, Addressing::Path, "{name}");
        }
        let ip_virtual = S3Options {
            endpoint: Some("http://127.0.0.1:9000".into()),
            addressing: Addressing::Virtual,
            ..Default::default()
        };
        assert!(ip_virtual.resolve("bkt").is_err());
    }

    #[test]
    fn keys_that_would_not_round_trip_are_refused() {
        for k in ["", "/a", "a/", "a//b", "a/./b", "../x", "a\nb"] {
            assert!(check_key(k).is_err(), "{k:?}");
        }
        for k in ["a", "a b/c+d%e?f#g/ü", "x/y/z.bin", "..a/b.."] {
            assert!(check_key(k).is_ok(), "{k:?}");
        }
    }

    #[test]
    fn secret_urls_never_show_their_query() {
        let u = SecretUrl::new("http://h/b/k?X-Amz-Signature=abc&X-Amz-Security-Token=tok".into());
        for shown in [format!("{u:?}"), format!("{u}")] {
            assert!(!shown.contains("abc") && !shown.contains("tok"), "{shown}");
            assert!(shown.contains("http://h/b/k"), "{shown}");
        }
    }

    fn resp(status: u16, body: &str) -> ErrorResponse {
        ErrorResponse {
            object: "s3://b/k".into(),
            range: None,
            status,
            url: "http://h/b/k?X-Amz-Signature=secret".into(),
            body: body.into(),
            bucket_region: None,
        }
    }

    fn xml(code: &str, message: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
             <Message>{message}</Message><RequestId>r</RequestId></Error>"
        )
    }

    #[test]
    fn s3_error_codes_become_typed_errors() {
        let c = |status, code: &str| {
            classify_s3(
                "b",
                "http://h",
                "http://h/b/k",
                resp(status, &xml(code, "m &amp; n")),
            )
        };
        assert!(matches!(
            c(404, "NoSuchBucket"),
            Error::BucketNotFound { .. }
        ));
        assert!(matches!(c(404, "NoSuchKey"), Error::ObjectNotFound { .. }));
        for code in [
            "AccessDenied",
            "SignatureDoesNotMatch",
            "InvalidAccessKeyId",
        ] {
            match c(403, code) {
                Error::AccessDenied { message, .. } => {
                    assert_eq!(message, format!("{code}: m & n"));
                }
                e => panic!("{code}: {e:?}"),
            }
        }
        assert!(matches!(c(400, "ExpiredToken"), Error::AccessDenied { .. }));
        assert!(matches!(
            c(412, "PreconditionFailed"),
            Error::ObjectChanged { .. }
        ));
        let slow = c(503, "SlowDown");
        assert!(slow.is_retryable(), "{slow:?}");
        assert!(c(500, "InternalError").is_retryable());
        assert!(!slow.to_string().contains("secret"), "{slow}");
        // A body that is not XML still gives a typed error.
        let e = classify_s3("b", "e", "u", resp(404, ""));
        assert!(matches!(e, Error::ObjectNotFound { .. }), "{e:?}");
        let e = classify_s3("b", "e", "u", resp(403, "<html>nope</html>"));
        assert!(matches!(e, Error::AccessDenied { .. }), "{e:?}");
        let e = classify_s3("b", "e", "u", resp(400, &xml("RequestTimeout", "idle")));
        assert!(e.is_retryable(), "{e:?}");
    }

    #[test]
    fn hostile_error_bodies_are_handled() {
        for body in [
            "<Error><Code>",
            "<Error><Code>NoSuchKey</Code",
            "<Error><Code></Code></Error>",
            "<Error><Error><Code>NoSuchBucket</Code></Error></Error>",
            "<X><Code>NoSuchBucket</Code></X>",
            "\u{0}\u{1}<<<&&&",
        ] {
            let e = classify_s3("b", "e", "u", resp(500, body));
            assert!(matches!(e, Error::Http { .. }), "{body:?}: {e:?}");
        }
    }
}
