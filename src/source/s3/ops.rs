//! The coordinator's S3 requests other than reads (feature `s3`): the
//! multipart upload's start, part URLs, completion and abort, and the
//! object operations a checkpoint file system needs (exists, delete,
//! copy). All run through `object_store` on the S3 runtime thread; the
//! parts' bytes go from the workers to presigned `UploadPart` URLs.

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStoreExt;
use object_store::aws::AmazonS3;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::signer::{SignedUrlOptions, Signer};

use super::presign::{block_on, no_credentials, store};
use super::{S3Config, SecretUrl};
use crate::error::{Error, Result};

/// The HTTP status in an `object_store` error message ("… status code:
/// 400 Bad Request …"), if any.
fn http_status(message: &str) -> Option<u16> {
    let rest = &message[message.find("status code: ")? + "status code: ".len()..];
    rest.get(..3)?
        .parse()
        .ok()
        .filter(|s| (100..600).contains(s))
}

/// The `ETag` S3 gives a multipart object made of parts with these
/// (single-part, MD5) `ETag`s: the MD5 of their binary MD5s, then `-N`.
/// `None` when a part's `ETag` is not an MD5 (SSE-KMS, other stores).
pub(crate) fn multipart_etag(parts: &[String]) -> Option<String> {
    use md5::Digest as _;
    let mut h = md5::Md5::new();
    for p in parts {
        let hex = p.trim().trim_matches('"');
        if hex.len() != 32 {
            return None;
        }
        let mut raw = [0u8; 16];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        h.update(raw);
    }
    let digest = h.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("\"{hex}-{}\"", parts.len()))
}

/// One S3 object as a destination or operand.
#[derive(Clone)]
pub(crate) struct S3Dest {
    s3: Arc<AmazonS3>,
    bucket: String,
    key: String,
    path: Path,
    endpoint: String,
}

impl std::fmt::Debug for S3Dest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Dest(s3://{}/{})", self.bucket, self.key)
    }
}

/// `key` as `object_store` addresses it, refused when that would not be
/// exactly `key` (a request must name the key the user gave).
pub(super) fn exact_path(bucket: &str, key: &str) -> Result<Path> {
    let path = Path::parse(key).map_err(|e| Error::InvalidSource {
        url: format!("s3://{bucket}/{key}"),
        reason: e.to_string(),
    })?;
    if path.as_ref() != key {
        return Err(Error::InvalidSource {
            url: format!("s3://{bucket}/{key}"),
            reason: "this key cannot be addressed exactly".into(),
        });
    }
    Ok(path)
}

impl S3Dest {
    /// The object `bucket/key` with `config`'s endpoint and credentials.
    pub(crate) fn new(bucket: &str, key: &str, config: &S3Config) -> Result<S3Dest> {
        Ok(S3Dest {
            s3: store(bucket, config)?,
            bucket: bucket.to_string(),
            key: key.to_string(),
            path: exact_path(bucket, key)?,
            endpoint: config.endpoint_display(),
        })
    }

    fn name(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    /// A typed error for what `object_store` answered to `what`.
    fn error(&self, what: &str, e: object_store::Error) -> Error {
        let object = self.name();
        match e {
            object_store::Error::NotFound { source, .. } => {
                let message = source.to_string();
                if message.contains("NoSuchBucket") {
                    Error::BucketNotFound {
                        bucket: format!("s3://{}", self.bucket),
                        endpoint: self.endpoint.clone(),
                        message,
                    }
                } else {
                    Error::ObjectNotFound { object, message }
                }
            }
            object_store::Error::PermissionDenied { source, .. } => Error::AccessDenied {
                object,
                status: 403,
                message: format!("{what}: {source}"),
            },
            object_store::Error::Unauthenticated { source, .. } => Error::AccessDenied {
                object,
                status: 401,
                message: format!("{what}: {source}"),
            },
            // What the credential providers fail with.
            object_store::Error::Generic { source, .. }
                if source.to_string().contains("credential") =>
            {
                no_credentials(&object, &source.to_string())
            }
            e => {
                let message = format!("{what}: {e}");
                // An answer with a status (object_store says which in its
                // message) is the server's word: retryable only as HTTP
                // statuses are; no status is a transport failure.
                match http_status(&message) {
                    Some(status) => Error::Http {
                        object,
                        range: None,
                        status,
                        url: format!("s3://{}/{}", self.bucket, self.key),
                        message,
                    },
                    None => Error::Transport {
                        object,
                        range: None,
                        message,
                    },
                }
            }
        }
    }

    /// The object's `ETag`, if it exists.
    pub(crate) fn etag(&self) -> Result<Option<String>> {
        let (s3, path) = (Arc::clone(&self.s3), self.path.clone());
        match block_on(async move { s3.head(&path).await })? {
            Ok(m) => Ok(m.e_tag),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("asking for its ETag", e)),
        }
    }

    /// Starts a multipart upload; returns its id.
    pub(crate) fn create_multipart(&self) -> Result<String> {
        let (s3, path) = (Arc::clone(&self.s3), self.path.clone());
        block_on(async move { s3.create_multipart(&path).await })?
            .map_err(|e| self.error("starting a multipart upload", e))
    }

    /// A `PUT` URL for part `part` (1-based) of upload `id`, valid for `ttl`.
    pub(crate) fn presign_part(&self, id: &str, part: u32, ttl: Duration) -> Result<SecretUrl> {
        let (s3, path) = (Arc::clone(&self.s3), self.path.clone());
        let opts = SignedUrlOptions::default().with_query([
            ("partNumber", part.to_string()),
            ("uploadId", id.to_string()),
        ]);
        let url = block_on(async move {
            s3.signed_url_opts(http::Method::PUT, &path, ttl, &opts)
                .await
        })?
        .map_err(|e| self.error("presigning a part", e))?;
        Ok(SecretUrl::new(url.to_string()))
    }

    /// A `PUT` URL of the whole object, valid for `ttl` (one request).
    pub(crate) fn presign_put(&self, ttl: Duration) -> Result<SecretUrl> {
        let (s3, path) = (Arc::clone(&self.s3), self.path.clone());
        let url = block_on(async move { s3.signed_url(http::Method::PUT, &path, ttl).await })?
            .map_err(|e| self.error("presigning a PUT", e))?;
        Ok(SecretUrl::new(url.to_string()))
    }

    /// Completes upload `id` from its parts' ETags, in part order. A
    /// completion whose answer was lost and whose retry then finds no
    /// upload (`NoSuchUpload`) is a success when the object now has the
    /// `ETag` these parts make.
    pub(crate) fn complete_multipart(&self, id: &str, etags: Vec<String>) -> Result<()> {
        let expected = multipart_etag(&etags);
        let (s3, path, id) = (Arc::clone(&self.s3), self.path.clone(), id.to_string());
        let parts = etags
            .into_iter()
            .map(|content_id| PartId { content_id })
            .collect();
        match block_on(async move { s3.complete_multipart(&path, &id, parts).await })? {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = self.error("completing the multipart upload", e);
                if err.to_string().contains("NoSuchUpload")
                    && expected.is_some()
                    && self.etag().ok().flatten() == expected
                {
                    return Ok(());
                }
                Err(err)
            }
        }
    }

    /// Aborts upload `id` (its parts are deleted).
    pub(crate) fn abort_multipart(&self, id: &str) -> Result<()> {
        let (s3, path, id) = (Arc::clone(&self.s3), self.path.clone(), id.to_string());
        block_on(async move { s3.abort_multipart(&path, &id).await })?
            .map_err(|e| self.error("aborting the multipart upload", e))
    }

    /// Whether the object exists (`HEAD`): not found is `false`, any other
    /// failure (no access, no bucket …) an error.
    pub(crate) fn exists(&self) -> Result<bool> {
        let (s3, path) = (Arc::clone(&self.s3), self.path.clone());
        match block_on(async move { s3.head(&path).await })? {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error("asking whether it exists", e)),
        }
    }

    /// Deletes the object (S3 answers the same whether it existed or not).
    pub(crate) fn delete(&self) -> Result<()> {
        let (s3, path) = (Arc::clone(&self.s3), self.path.clone());
        block_on(async move { s3.delete(&path).await })?.map_err(|e| self.error("deleting", e))
    }

    /// Copies the object to `to` in the same bucket (`CopyObject`).
    pub(crate) fn copy_to(&self, to: &str) -> Result<()> {
        let to_path = exact_path(&self.bucket, to)?;
        let (s3, path) = (Arc::clone(&self.s3), self.path.clone());
        block_on(async move { s3.copy(&path, &to_path).await })?
            .map_err(|e| self.error(&format!("copying to s3://{}/{to}", self.bucket), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_read_from_object_store_messages() {
        assert_eq!(
            http_status("Server returned non-2xx status code: 400 Bad Request: <Error>"),
            Some(400)
        );
        assert_eq!(
            http_status("error sending request: connection refused"),
            None
        );
        assert_eq!(http_status("status code: abc"), None);
    }

    #[test]
    fn the_multipart_etag_is_the_md5_of_the_parts_md5s() {
        // Two parts: md5("") and md5("a"); S3's rule gives this ETag.
        let parts = vec![
            "\"d41d8cd98f00b204e9800998ecf8427e\"".to_string(),
            "\"0cc175b9c0f1b6a831c399e269772661\"".to_string(),
        ];
        let want = {
            use md5::Digest as _;
            let mut raw = Vec::new();
            raw.extend(md5::Md5::digest(b""));
            raw.extend(md5::Md5::digest(b"a"));
            let d = md5::Md5::digest(&raw);
            format!(
                "\"{}-2\"",
                d.iter().map(|b| format!("{b:02x}")).collect::<String>()
            )
        };
        assert_eq!(multipart_etag(&parts), Some(want));
        assert_eq!(multipart_etag(&["\"kms-etag\"".to_string()]), None);
    }
}
