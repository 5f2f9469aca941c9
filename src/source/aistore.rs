//! The AIStore native object API: `HEAD|GET {endpoint}/v1/objects/{bucket}/{object}`.
//!
//! Every request goes to the gateway (proxy), which redirects to the target
//! that holds the object (301 for GET, 307 for HEAD); the redirect is followed
//! every time and its `Location` never cached (it carries a timestamp and the
//! cluster map may change). The bearer token is sent to the gateway only —
//! targets trust the redirect's markers.
//!
//! Object names are percent-encoded per path segment, keeping `/`, like the
//! Python SDK's `quote(name, safe="/")`.
//!
//! **Direct-to-target reads** (opt-in, [`crate::ParallelReaderBuilder::direct`]):
//! the coordinator fetches the cluster map (`GET /v1/daemon?what=smap`,
//! cached per gateway for [`SMAP_TTL`]), picks the target that holds the
//! object by AIStore's placement ([`hrw`]) and hands its `direct_url` to the
//! workers, which GET their ranges from it with no redirect and no token
//! (the coordinator's HEAD goes there too).
//! A range the target refuses before any byte (403 `direct target access
//! denied` when the cluster requires proxy mediation, 404 when the map is
//! stale, a connection error, a redirect) is read through the gateway, and
//! that worker uses the gateway for the rest of the download. A map that
//! cannot be fetched or used (hostile, placement weights, every target in
//! maintenance) means the gateway for the whole download.
//!
//! Writes (exists, delete, rename, `PUT`, multipart uploads) are in
//! [`write`](mod@write).

pub mod hrw;
pub mod write;

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::error::{Error, Result};
use crate::range::ByteRange;
use crate::source::http::{ErrorResponse, HttpClient, get_range_into, head};
use crate::source::sink::RangeSink;
use crate::source::{BearerToken, ObjectMeta, ObjectSource, SourceSpec};
pub use write::{AisWriter, MptStart};

/// Characters left as they are in an object's path: RFC 3986 unreserved
/// plus `/` (what Python's `urllib.parse.quote` keeps by default).
const PATH_KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// `{endpoint}/v1/objects/{bucket}/{object}?provider=…`, escaped.
pub fn object_url(endpoint: &str, bucket: &str, object: &str, provider: &str) -> String {
    format!(
        "{}/v1/objects/{}/{}?provider={}",
        endpoint.trim_end_matches('/'),
        utf8_percent_encode(bucket, PATH_KEEP),
        utf8_percent_encode(object, PATH_KEEP),
        provider
    )
}

/// Where an AIStore object is and how to talk to its gateway: what the
/// reading backend ([`AisObject`]) and the writer ([`write::AisWriter`])
/// share.
#[derive(Debug, Clone)]
pub(crate) struct AisAddress {
    pub(crate) endpoint: String,
    pub(crate) bucket: String,
    pub(crate) object: String,
    pub(crate) provider: String,
    /// `ais://bucket/object`, for messages.
    pub(crate) name: String,
    /// The object's URL at the gateway.
    pub(crate) url: String,
    pub(crate) token: Option<BearerToken>,
}

impl AisAddress {
    /// The address of an [`SourceSpec::AiStore`] object.
    ///
    /// # Errors
    /// [`Error::InvalidSource`] for any other spec.
    pub(crate) fn of(spec: &SourceSpec) -> Result<AisAddress> {
        let SourceSpec::AiStore {
            endpoint,
            bucket,
            object,
            provider,
            token,
            ..
        } = spec
        else {
            return Err(Error::InvalidSource {
                url: spec.display_name(),
                reason: "not an AIStore object".into(),
            });
        };
        Ok(AisAddress {
            endpoint: endpoint.clone(),
            bucket: bucket.clone(),
            object: object.clone(),
            provider: provider.clone(),
            name: spec.display_name(),
            url: object_url(endpoint, bucket, object, provider),
            token: token.clone(),
        })
    }

    /// The gateway's `Authorization` header, if a token is set.
    pub(crate) fn auth(&self) -> Vec<(&'static str, String)> {
        self.token
            .iter()
            .map(|t| ("Authorization", t.header_value()))
            .collect()
    }

    /// An error answer, typed (bucket vs object not found, access …).
    pub(crate) fn classify(&self, r: ErrorResponse) -> Error {
        classify_ais(&self.endpoint, &self.bucket, &self.provider, r)
    }
}

/// An object in an AIStore bucket.
#[derive(Debug)]
pub struct AisObject {
    client: HttpClient,
    addr: AisAddress,
    /// The object's URL at the target that holds it (direct mode).
    direct: Option<String>,
    /// Set once the target refused a range: the gateway from then on.
    direct_off: AtomicBool,
}

impl AisObject {
    /// Builds the backend for an [`SourceSpec::AiStore`].
    ///
    /// # Errors
    /// [`Error::InvalidSource`] for any other spec.
    pub fn new(client: HttpClient, spec: &SourceSpec) -> Result<AisObject> {
        let addr = AisAddress::of(spec)?;
        let direct = match spec {
            SourceSpec::AiStore {
                direct_url: Some(d),
                ..
            } => Some(object_url(d, &addr.bucket, &addr.object, &addr.provider)),
            _ => None,
        };
        Ok(AisObject {
            client,
            addr,
            direct,
            direct_off: AtomicBool::new(false),
        })
    }

    fn auth(&self) -> Vec<(&'static str, String)> {
        self.addr.auth()
    }

    fn classify(&self, r: ErrorResponse) -> Error {
        self.addr.classify(r)
    }
}

/// AIStore's JSON error body (`cmn/err.go`): we use `message` and `tcode`.
#[derive(Debug, Default, serde::Deserialize)]
struct AisErrorBody {
    #[serde(default)]
    message: String,
    #[serde(default)]
    tcode: String,
}

fn classify_ais(endpoint: &str, bucket: &str, provider: &str, r: ErrorResponse) -> Error {
    let parsed: Option<AisErrorBody> = serde_json::from_str(r.body.trim()).ok();
    let (message, tcode) = match parsed {
        Some(b) => (b.message, b.tcode),
        None => (r.body.trim().chars().take(300).collect(), String::new()),
    };
    let scheme = if provider == "ais" { "ais" } else { provider };
    match r.status {
        404 => {
            // The gateway answers a missing bucket itself (`ErrBckNotFound`,
            // `bucket "ais://b" does not exist`); a missing object comes
            // from a target (`ErrNotFound`, `ais://b/o does not exist`).
            let bucket_tcode = tcode == "ErrBckNotFound" || tcode == "ErrRemoteBckNotFound";
            let object_wording = message.contains(&format!("{bucket}/"));
            if bucket_tcode || (!object_wording && message.contains("bucket")) {
                Error::BucketNotFound {
                    bucket: format!("{scheme}://{bucket}"),
                    endpoint: endpoint.to_string(),
                    message,
                }
            } else {
                Error::ObjectNotFound {
                    object: r.object,
                    message,
                }
            }
        }
        401 | 403 => Error::AccessDenied {
            object: r.object,
            status: r.status,
            message,
        },
        status => Error::Http {
            object: r.object,
            range: r.range,
            status,
            url: r.url,
            message,
        },
    }
}

/// [`classify_ais`] of a response with `status` and `body`, for the fuzz
/// targets (feature `fuzzing`).
#[cfg(feature = "fuzzing")]
pub(crate) fn classify_for_fuzzing(status: u16, body: &str) -> Error {
    let r = ErrorResponse {
        object: "ais://fuzz/object".to_string(),
        range: None,
        status,
        url: "http://fuzz/v1/objects/fuzz/object".to_string(),
        body: body.to_string(),
        bucket_region: None,
    };
    classify_ais("http://fuzz", "fuzz", "ais", r)
}

impl ObjectSource for AisObject {
    fn name(&self) -> &str {
        &self.addr.name
    }

    fn meta(&self) -> Result<ObjectMeta> {
        // v2 HEAD: size always; the chunk hint, and the version and ETag
        // that every range is later checked against.
        if let Some(direct) = &self.direct
            && !self.direct_off.load(Ordering::Relaxed)
        {
            let url = format!("{direct}&props=chunked,version,etag");
            match head(&self.client, &url, &[], &self.addr.name, false, &|r| {
                self.classify(r)
            }) {
                Ok(meta) => return Ok(meta),
                Err(e) => {
                    tracing::debug!(object = %self.addr.name, error = %e,
                        "direct HEAD refused; using the gateway");
                    self.direct_off.store(true, Ordering::Relaxed);
                }
            }
        }
        let url = format!("{}&props=chunked,version,etag", self.addr.url);
        // AIStore always honours Range: no probe.
        head(
            &self.client,
            &url,
            &self.auth(),
            &self.addr.name,
            false,
            &|r| self.classify(r),
        )
    }

    fn read_range(
        &self,
        range: ByteRange,
        sink: &mut dyn RangeSink,
        expected: &ObjectMeta,
    ) -> Result<()> {
        if let Some(direct) = &self.direct
            && !self.direct_off.load(Ordering::Relaxed)
        {
            let before = sink.remaining();
            // No token to a target: a cluster with AuthN refuses direct
            // access anyway (403), and the URL came from the cluster map.
            match get_range_into(
                &self.client,
                direct,
                &[],
                false,
                &self.addr.name,
                range,
                sink,
                expected,
                &|r| self.classify(r),
            ) {
                Ok(()) => return Ok(()),
                Err(e) if sink.remaining() == before => {
                    tracing::debug!(object = %self.addr.name, %range, error = %e,
                        "direct read refused; using the gateway");
                    self.direct_off.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        get_range_into(
            &self.client,
            &self.addr.url,
            &self.auth(),
            true,
            &self.addr.name,
            range,
            sink,
            expected,
            &|r| self.classify(r),
        )
    }
}

/// How long a fetched cluster map is used for new downloads.
pub const SMAP_TTL: Duration = Duration::from_secs(10);

/// Cluster maps by gateway URL, with when each was fetched.
type SmapCache = HashMap<String, (Instant, Arc<hrw::Smap>)>;
static SMAPS: Mutex<Option<SmapCache>> = Mutex::new(None);

/// Fetches the cluster map from the gateway (`GET /v1/daemon?what=smap`).
fn fetch_smap(
    client: &HttpClient,
    endpoint: &str,
    token: Option<&BearerToken>,
) -> Result<hrw::Smap> {
    let url = format!("{}/v1/daemon?what=smap", endpoint.trim_end_matches('/'));
    let fail = |message: String| Error::Transport {
        object: format!("cluster map of {endpoint}"),
        range: None,
        message,
    };
    let mut req = client.agent.get(&url);
    if let Some(t) = token {
        req = req.header("Authorization", t.header_value());
    }
    let mut resp = req.call().map_err(|e| fail(e.to_string()))?;
    if resp.status().as_u16() != 200 {
        return Err(fail(format!("HTTP {}", resp.status().as_u16())));
    }
    let mut body = Vec::new();
    resp.body_mut()
        .as_reader()
        .take(hrw::MAX_SMAP_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| fail(e.to_string()))?;
    hrw::Smap::parse(&body).map_err(fail)
}

/// The cluster map of `endpoint`: the cached one when younger than
/// [`SMAP_TTL`], else a fresh one.
fn smap_for(endpoint: &str, token: Option<&BearerToken>) -> Result<Arc<hrw::Smap>> {
    let now = Instant::now();
    {
        let guard = SMAPS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, smap)) = guard.as_ref().and_then(|c| c.get(endpoint))
            && now.duration_since(*at) < SMAP_TTL
        {
            return Ok(smap.clone());
        }
    }
    static CLIENT: std::sync::OnceLock<HttpClient> = std::sync::OnceLock::new();
    let smap = Arc::new(fetch_smap(
        CLIENT.get_or_init(HttpClient::default),
        endpoint,
        token,
    )?);
    let mut guard = SMAPS.lock().unwrap_or_else(|p| p.into_inner());
    guard
        .get_or_insert_with(HashMap::new)
        .insert(endpoint.to_string(), (now, smap.clone()));
    Ok(smap)
}

/// The `direct_url` of the target that holds `provider`'s `bucket/object`
/// by the gateway's cluster map (global namespace), for the workers of one
/// download.
///
/// # Errors
/// The map cannot be fetched or used, or every target is in maintenance.
pub(crate) fn direct_target(
    endpoint: &str,
    token: Option<&BearerToken>,
    provider: &str,
    bucket: &str,
    object: &str,
) -> Result<String> {
    let smap = smap_for(endpoint, token)?;
    let uname = hrw::uname(provider, "", "", bucket, object);
    smap.target_for(&uname)
        .map(|t| t.direct_url.clone())
        .ok_or_else(|| Error::Transport {
            object: format!("ais://{bucket}/{object}"),
            range: None,
            message: format!(
                "cluster map v{} has no target out of maintenance",
                smap.version
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_python_quote() {
        assert_eq!(
            object_url("http://gw:8080/", "b", "a dir/x%y?z#w+ü", "ais"),
            "http://gw:8080/v1/objects/b/a%20dir/x%25y%3Fz%23w%2B%C3%BC?provider=ais"
        );
    }

    #[test]
    fn classifies_bucket_vs_object() {
        let mk = |body: &str| ErrorResponse {
            object: "ais://b/o".into(),
            range: None,
            status: 404,
            url: "u".into(),
            body: body.into(),
            bucket_region: None,
        };
        let e = classify_ais(
            "e",
            "b",
            "ais",
            mk(
                r#"{"tcode":"ErrBckNotFound","message":"bucket \"ais://b\" does not exist","status":404}"#,
            ),
        );
        assert!(matches!(e, Error::BucketNotFound { .. }), "{e:?}");
        let e = classify_ais(
            "e",
            "b",
            "ais",
            mk(
                r#"{"tcode":"ErrNotFound","message":"t[x]: ais://b/o does not exist","status":404}"#,
            ),
        );
        assert!(matches!(e, Error::ObjectNotFound { .. }), "{e:?}");
    }
}
