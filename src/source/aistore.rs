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
//! Writes (exists, delete, rename, `PUT`, multipart uploads) are in
//! [`write`](mod@write).

pub mod hrw;
pub mod write;

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

/// An object in an AIStore bucket.
#[derive(Debug)]
pub struct AisObject {
    client: HttpClient,
    endpoint: String,
    bucket: String,
    provider: String,
    name: String,
    url: String,
    token: Option<BearerToken>,
}

impl AisObject {
    /// Builds the backend for an [`SourceSpec::AiStore`].
    ///
    /// # Errors
    /// [`Error::InvalidSource`] for any other spec.
    pub fn new(client: HttpClient, spec: &SourceSpec) -> Result<AisObject> {
        let SourceSpec::AiStore {
            endpoint,
            bucket,
            object,
            provider,
            token,
        } = spec
        else {
            return Err(Error::InvalidSource {
                url: spec.display_name(),
                reason: "not an AIStore object".into(),
            });
        };
        Ok(AisObject {
            client,
            endpoint: endpoint.clone(),
            bucket: bucket.clone(),
            provider: provider.clone(),
            name: spec.display_name(),
            url: object_url(endpoint, bucket, object, provider),
            token: token.clone(),
        })
    }

    /// The gateway's `Authorization` header, if a token is set.
    fn auth(&self) -> Vec<(&'static str, String)> {
        self.token
            .iter()
            .map(|t| ("Authorization", t.header_value()))
            .collect()
    }

    fn classify(&self, r: ErrorResponse) -> Error {
        classify_ais(&self.endpoint, &self.bucket, &self.provider, r)
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
        &self.name
    }

    fn meta(&self) -> Result<ObjectMeta> {
        // v2 HEAD: size always; the chunk hint, and the version and ETag
        // that every range is later checked against.
        let url = format!("{}&props=chunked,version,etag", self.url);
        // AIStore always honours Range: no probe.
        head(&self.client, &url, &self.auth(), &self.name, false, &|r| {
            self.classify(r)
        })
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
            &self.auth(),
            true,
            &self.name,
            range,
            sink,
            expected,
            &|r| self.classify(r),
        )
    }
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
