//! The coordinator's S3 requests other than reads (feature `s3`): the
//! multipart upload's start, part URLs, completion and abort, and the
//! object operations a checkpoint file system needs (exists, delete,
//! copy). All run through `object_store` on the S3 runtime thread; the
//! parts' bytes go from the workers to presigned `UploadPart` URLs.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::signer::{SignedUrlOptions, Signer};
use object_store::{ObjectStoreExt, PutPayload};

use super::presign::{block_on, no_credentials, store};
use super::{S3Config, SecretUrl};
use crate::error::{Error, Result};

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

fn exact_path(bucket: &str, key: &str) -> Result<Path> {
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
            e => Error::Transport {
                object,
                range: None,
                message: format!("{what}: {e}"),
            },
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

    /// Completes upload `id` from its parts' ETags, in part order.
    pub(crate) fn complete_multipart(&self, id: &str, etags: Vec<String>) -> Result<()> {
        let (s3, path, id) = (Arc::clone(&self.s3), self.path.clone(), id.to_string());
        let parts = etags
            .into_iter()
            .map(|content_id| PartId { content_id })
            .collect();
        block_on(async move { s3.complete_multipart(&path, &id, parts).await })?
            .map(drop)
            .map_err(|e| self.error("completing the multipart upload", e))
    }

    /// Aborts upload `id` (its parts are deleted).
    pub(crate) fn abort_multipart(&self, id: &str) -> Result<()> {
        let (s3, path, id) = (Arc::clone(&self.s3), self.path.clone(), id.to_string());
        block_on(async move { s3.abort_multipart(&path, &id).await })?
            .map_err(|e| self.error("aborting the multipart upload", e))
    }

    /// Stores `bytes` with one `PUT` (an upload too small for parts).
    pub(crate) fn put(&self, bytes: Vec<u8>) -> Result<()> {
        let (s3, path) = (Arc::clone(&self.s3), self.path.clone());
        block_on(async move { s3.put(&path, PutPayload::from(bytes)).await })?
            .map(drop)
            .map_err(|e| self.error("storing the object", e))
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
