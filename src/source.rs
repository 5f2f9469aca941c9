//! Objects we can HEAD and read byte ranges of.
//!
//! [`ObjectSource`] is the small, blocking contract every backend meets:
//! tell the object's metadata, and fill a caller-given buffer with exactly
//! one range (a short or mismatched answer is an error, never partial data).
//!
//! A backend holds sockets, so it is built *inside* each worker process after
//! the fork; what crosses the process boundary is a [`SourceSpec`], a plain,
//! serialisable description of the object (URL, endpoint, bucket, token).
//!
//! | Spec | Written as | Backend |
//! |---|---|---|
//! | AIStore | `ais://bucket/object` (+ `AIS_ENDPOINT`) | [`aistore`] |
//! | AIStore remote bucket | `ais://@aws/bucket/object` (`@gcp`, `@azure`, `@oci`) | [`aistore`] |
//! | S3 | `s3://bucket/key` (+ `AWS_*`, see [`s3`]) | [`s3`] |
//! | HTTP(S) | `http://host/path`, `https://…` | [`http`] |
//! | Local file | `file:///path` or a plain path | [`local`] |
//!
//! `gs://` and `az://` are not read directly yet: through AIStore they are
//! `ais://@gcp/…` and `ais://@azure/…`.

pub mod aistore;
pub mod http;
pub mod local;
pub mod retry;
pub mod s3;
pub mod sink;

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::range::ByteRange;
pub use http::{HttpClient, HttpConfig};

/// What a HEAD tells about an object.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// Size in bytes.
    pub size: u64,
    /// The server's preferred chunk size (AIStore `Ais-Chunks-Max-Chunk-Size`).
    pub chunk_hint: Option<u64>,
    /// Entity tag, when the server sends one.
    pub etag: Option<String>,
    /// Version (AIStore `Ais-Version`, file modification time).
    pub version: Option<String>,
    /// The server does not honour `Range` (a plain HTTP server that sent no
    /// `Accept-Ranges: bytes` and answered a `bytes=0-0` probe with 200).
    /// Such an object is read with one streaming GET of the whole object: a
    /// range `[a, b)` is the bytes `a..b` of that body, the first `a`
    /// skipped, and a retry starts a new GET and skips what was received.
    /// Never set for AIStore (which always honours `Range`) or local files.
    #[serde(default)]
    pub no_ranges: bool,
}

/// An object whose size we can learn and whose byte ranges we can read.
///
/// Implementations are blocking and cheap to build; they are created in the
/// worker process that uses them.
pub trait ObjectSource: Send {
    /// The object's name as the user wrote it (for error messages).
    fn name(&self) -> &str;

    /// Size, chunk hint and version of the object.
    ///
    /// # Errors
    /// Not-found, access and transport errors, typed.
    fn meta(&self) -> Result<ObjectMeta>;

    /// Delivers exactly the bytes of `range` to `sink` (whose remaining
    /// capacity is `range.len()`), checking the answer is that range of the
    /// object `expected` describes (same size, and same version/etag where
    /// both sides have one). One request; retries are the caller's
    /// ([`retry::fetch_range`]).
    ///
    /// On error, what the sink received so far is valid (a body cut short),
    /// so a retry can resume after it.
    ///
    /// # Errors
    /// [`Error::RangeMismatch`], [`Error::ShortRead`],
    /// [`Error::ObjectChanged`], HTTP and transport errors. Nothing beyond
    /// the range is ever delivered.
    fn read_range(
        &self,
        range: ByteRange,
        sink: &mut dyn sink::RangeSink,
        expected: &ObjectMeta,
    ) -> Result<()>;
}

/// A bearer token. Its `Debug` and `Display` never show the secret.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BearerToken(String);

impl BearerToken {
    /// Wraps a raw token (a JWT). Returns `None` for an empty string.
    pub fn new(raw: impl Into<String>) -> Option<BearerToken> {
        let s: String = raw.into();
        let t = s.trim();
        (!t.is_empty()).then(|| BearerToken(t.to_string()))
    }

    /// The `Authorization` header value.
    pub(crate) fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(***)")
    }
}

impl fmt::Display for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How to resolve names: AIStore's endpoint and token, S3's settings.
#[derive(Debug, Clone, Default)]
pub struct SourceOptions {
    /// AIStore gateway URL, e.g. `http://aistore:8080`.
    pub endpoint: Option<String>,
    /// Token sent as `Authorization: Bearer …` to the gateway.
    pub token: Option<BearerToken>,
    /// Region, endpoint, addressing and signing of `s3://` objects.
    pub s3: s3::S3Options,
}

impl SourceOptions {
    /// Reads `AIS_ENDPOINT`, then the token from `AIS_AUTHN_TOKEN` or the
    /// file named by `AIS_AUTHN_TOKEN_FILE` (JSON `{"token": "…"}` or the
    /// raw token).
    ///
    /// # Errors
    /// [`Error::Io`] when `AIS_AUTHN_TOKEN_FILE` names an unreadable file.
    pub fn from_env() -> Result<SourceOptions> {
        let endpoint = std::env::var("AIS_ENDPOINT").ok().filter(|s| !s.is_empty());
        let mut token = std::env::var("AIS_AUTHN_TOKEN")
            .ok()
            .and_then(BearerToken::new);
        if token.is_none()
            && let Ok(path) = std::env::var("AIS_AUTHN_TOKEN_FILE")
            && !path.is_empty()
        {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| Error::io(format!("reading AIS_AUTHN_TOKEN_FILE {path}"), &e))?;
            token = match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(v) => v
                    .get("token")
                    .and_then(|t| t.as_str())
                    .and_then(BearerToken::new),
                Err(_) => BearerToken::new(text),
            };
        }
        Ok(SourceOptions {
            endpoint,
            token,
            s3: s3::S3Options::from_env(),
        })
    }
}

/// A serialisable description of an object: what travels to the workers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SourceSpec {
    /// A local file, read with `pread`.
    Local {
        /// Path of the file.
        path: PathBuf,
    },
    /// Any HTTP(S) URL whose server honours `Range`.
    Http {
        /// The URL.
        url: String,
    },
    /// An AIStore object, read through the gateway's native API.
    AiStore {
        /// Gateway URL (no trailing slash).
        endpoint: String,
        /// Bucket name.
        bucket: String,
        /// Object name (may contain `/`).
        object: String,
        /// Provider (`ais`, `aws`, `gcp`, `azure`, `oci`).
        provider: String,
        /// Bearer token for the gateway.
        token: Option<BearerToken>,
        /// Read straight from the target that holds the object, found in
        /// the cluster map (see [`crate::ParallelReaderBuilder::direct`]).
        direct: bool,
        /// The target's `direct_url` the workers read from: filled in by
        /// the coordinator for each download when `direct` is set and the
        /// map names a target (`None` until then, and to use the gateway).
        direct_url: Option<String>,
    },
    /// An S3 object (AWS or an S3-compatible store).
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key (may contain `/`).
        key: String,
        /// Region, endpoint, addressing, signing.
        config: s3::S3Config,
        /// The presigned URL the workers use; filled in by the coordinator
        /// for each download (`None` until then).
        access: Option<s3::S3Access>,
    },
}

impl SourceSpec {
    /// Parses `ais://b/o`, `ais://@aws/b/o` (an AIStore remote bucket),
    /// `s3://b/k`, `http(s)://…`, `file://…` or a path, using `opts` for
    /// AIStore's endpoint and S3's settings.
    ///
    /// # Errors
    /// [`Error::InvalidSource`] naming the input and what is wrong.
    ///
    /// ```
    /// use shmfetch::source::{SourceOptions, SourceSpec};
    /// let opts = SourceOptions { endpoint: Some("http://gw:8080".into()), ..Default::default() };
    /// let spec = SourceSpec::parse_with("ais://bkt/dir/obj.bin", &opts).unwrap();
    /// assert_eq!(spec.display_name(), "ais://bkt/dir/obj.bin");
    /// assert!(SourceSpec::parse_with("ais://bkt", &opts).is_err());
    /// let s3 = SourceSpec::parse_with("s3://bkt/a b/c.bin", &opts).unwrap();
    /// assert_eq!(s3.display_name(), "s3://bkt/a b/c.bin");
    /// ```
    pub fn parse_with(s: &str, opts: &SourceOptions) -> Result<SourceSpec> {
        let bad = |reason: &str| Error::InvalidSource {
            url: s.to_string(),
            reason: reason.to_string(),
        };
        if let Some((scheme, rest)) = s.split_once("://") {
            match scheme.to_ascii_lowercase().as_str() {
                "http" | "https" => {
                    url::Url::parse(s).map_err(|e| bad(&e.to_string()))?;
                    return Ok(SourceSpec::Http { url: s.to_string() });
                }
                "file" => {
                    let u = url::Url::parse(s).map_err(|e| bad(&e.to_string()))?;
                    let path = u.to_file_path().map_err(|_| bad("not a local file path"))?;
                    return Ok(SourceSpec::Local { path });
                }
                "s3" => {
                    let (bucket, key) = rest
                        .split_once('/')
                        .ok_or_else(|| bad("missing key: expected s3://BUCKET/KEY"))?;
                    s3::check_bucket(bucket).map_err(bad)?;
                    s3::check_key(key).map_err(bad)?;
                    let config = opts.s3.resolve(bucket)?;
                    return Ok(SourceSpec::S3 {
                        bucket: bucket.to_string(),
                        key: key.to_string(),
                        config,
                        access: None,
                    });
                }
                "ais" => {
                    let (provider, rest) = match rest.strip_prefix('@') {
                        Some(r) => {
                            let (p, r) = r
                                .split_once('/')
                                .ok_or_else(|| bad("expected ais://@PROVIDER/BUCKET/OBJECT"))?;
                            let p = match p {
                                "aws" | "s3" => "aws",
                                "gcp" | "gs" => "gcp",
                                "azure" | "az" => "azure",
                                "oci" | "oc" => "oci",
                                "ais" => "ais",
                                _ => {
                                    return Err(bad(
                                        "unknown provider: expected @aws, @gcp, @azure or @oci",
                                    ));
                                }
                            };
                            (p, r)
                        }
                        None => ("ais", rest),
                    };
                    let (bucket, object) = rest
                        .split_once('/')
                        .ok_or_else(|| bad("missing object name: expected ais://BUCKET/OBJECT"))?;
                    if bucket.is_empty() || object.is_empty() {
                        return Err(bad(
                            "expected ais://BUCKET/OBJECT with both parts non-empty",
                        ));
                    }
                    let endpoint = opts.endpoint.clone().ok_or_else(|| {
                        bad("no AIStore endpoint: set AIS_ENDPOINT or pass the endpoint (--endpoint, endpoint=)")
                    })?;
                    let endpoint = endpoint.trim_end_matches('/').to_string();
                    url::Url::parse(&endpoint)
                        .map_err(|e| bad(&format!("endpoint {endpoint:?}: {e}")))?;
                    return Ok(SourceSpec::AiStore {
                        endpoint,
                        bucket: bucket.to_string(),
                        object: object.to_string(),
                        provider: provider.to_string(),
                        token: opts.token.clone(),
                        direct: false,
                        direct_url: None,
                    });
                }
                "aws" => {
                    return Err(bad(
                        "use s3://BUCKET/KEY for S3, or ais://@aws/BUCKET/OBJECT for an \
                         AIStore remote bucket (with AIS_ENDPOINT set)",
                    ));
                }
                "gs" | "gcp" | "az" | "azure" | "oc" | "oci" => {
                    return Err(bad(
                        "this cloud is not read directly yet; through an AIStore cluster \
                         write ais://@gcp/BUCKET/OBJECT (or @azure, @oci) with AIS_ENDPOINT set",
                    ));
                }
                _ => {
                    return Err(bad(
                        "unknown scheme (use s3://, ais://, http(s)://, file:// or a path)",
                    ));
                }
            }
        }
        if s.is_empty() {
            return Err(bad("empty source"));
        }
        Ok(SourceSpec::Local {
            path: PathBuf::from(s),
        })
    }

    /// [`SourceSpec::parse_with`] with [`SourceOptions::from_env`].
    ///
    /// # Errors
    /// As [`SourceSpec::parse_with`] and [`SourceOptions::from_env`].
    pub fn parse(s: &str) -> Result<SourceSpec> {
        SourceSpec::parse_with(s, &SourceOptions::from_env()?)
    }

    /// The object's name for messages (never includes a token).
    pub fn display_name(&self) -> String {
        match self {
            SourceSpec::Local { path } => path.display().to_string(),
            SourceSpec::Http { url } => url.clone(),
            SourceSpec::AiStore {
                bucket,
                object,
                provider,
                ..
            } => match provider.as_str() {
                "ais" => format!("ais://{bucket}/{object}"),
                p => format!("ais://@{p}/{bucket}/{object}"),
            },
            SourceSpec::S3 { bucket, key, .. } => format!("s3://{bucket}/{key}"),
        }
    }

    /// Builds the backend for this spec, sharing `client`'s connections.
    ///
    /// # Errors
    /// [`Error::ObjectNotFound`]/[`Error::Io`] when a local file cannot be opened.
    pub fn open(&self, client: &HttpClient) -> Result<Box<dyn ObjectSource>> {
        Ok(match self {
            SourceSpec::Local { path } => Box::new(local::LocalFile::open(path)?),
            SourceSpec::Http { url } => {
                Box::new(http::HttpObject::new(client.clone(), url.clone()))
            }
            SourceSpec::AiStore { .. } => Box::new(aistore::AisObject::new(client.clone(), self)?),
            SourceSpec::S3 { .. } => Box::new(s3::S3Object::new(client.clone(), self)?),
        })
    }

    /// For an S3 object, a `GET` URL of it valid for [`s3::PRESIGN_TTL`]
    /// (presigned, or plain with `--no-sign-request`): what a single
    /// stream outside shmfetch (curl, the benchmark's baseline) can fetch.
    /// `None` for other sources.
    ///
    /// # Errors
    /// Credential errors.
    pub fn s3_get_url(&self) -> Result<Option<s3::SecretUrl>> {
        match self {
            SourceSpec::S3 {
                bucket,
                key,
                config,
                ..
            } => Ok(Some(s3::access_for(bucket, key, config)?.url)),
            _ => Ok(None),
        }
    }

    /// How often the workers' copy of this spec must be renewed, `None`
    /// when it does not expire: for a signed S3 object half the presigned
    /// URL's lifetime, and at most [`s3::RENEW_AT_MOST`] — a URL dies with
    /// the session token inside it, which a credential provider renews
    /// only in its last minutes.
    pub(crate) fn refresh_after(&self) -> Option<std::time::Duration> {
        match self {
            SourceSpec::S3 { config, .. } if !config.unsigned => {
                Some((config.presign_ttl() / 2).min(s3::RENEW_AT_MOST))
            }
            _ => None,
        }
    }

    /// The spec as the workers get it for one download: an S3 object with
    /// a freshly presigned URL ([`s3::PRESIGN_TTL`]); an AIStore object in
    /// direct mode with the `direct_url` of the target that holds it (none
    /// when the cluster map cannot say: the gateway); any other unchanged.
    ///
    /// # Errors
    /// Credential errors of S3.
    pub(crate) fn for_workers(&self) -> Result<SourceSpec> {
        match self {
            SourceSpec::S3 {
                bucket,
                key,
                config,
                ..
            } => Ok(SourceSpec::S3 {
                bucket: bucket.clone(),
                key: key.clone(),
                config: config.clone(),
                access: Some(s3::access_for(bucket, key, config)?),
            }),
            SourceSpec::AiStore {
                endpoint,
                bucket,
                object,
                provider,
                token,
                direct: true,
                ..
            } => {
                let mut spec = self.clone();
                let target =
                    aistore::direct_target(endpoint, token.as_ref(), provider, bucket, object);
                match target {
                    Ok(url) => {
                        if let SourceSpec::AiStore { direct_url, .. } = &mut spec {
                            *direct_url = Some(url);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(object = %self.display_name(), error = %e,
                            "no direct target; reading through the gateway");
                    }
                }
                Ok(spec)
            }
            other => Ok(other.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found in review: URLs were renewed every half hour, but one made
    /// with a provider's session token can die 5 minutes later.
    #[test]
    fn presigned_urls_are_renewed_before_a_provider_token_can_expire() {
        let spec = SourceSpec::parse_with("s3://b/k", &SourceOptions::default()).unwrap();
        let every = spec.refresh_after().unwrap();
        assert!(every <= std::time::Duration::from_secs(240), "{every:?}");
        let opts = SourceOptions {
            s3: s3::S3Options {
                unsigned: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let unsigned = SourceSpec::parse_with("s3://b/k", &opts).unwrap();
        assert_eq!(unsigned.refresh_after(), None);
    }
}
