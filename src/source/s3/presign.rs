//! The coordinator's half of S3: credentials and presigning (feature `s3`).
//!
//! Credentials follow the AWS SDKs' default chain, first match wins:
//!
//! 1. `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`);
//! 2. the profile `AWS_PROFILE` (else `default`) of the shared files
//!    `~/.aws/credentials` and `~/.aws/config` (`AWS_SHARED_CREDENTIALS_FILE`,
//!    `AWS_CONFIG_FILE`): static keys and an optional session token;
//! 3. web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`),
//!    container credentials (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`,
//!    `…_FULL_URI` + `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`) and the EC2
//!    instance metadata service (IMDSv2; `AWS_EC2_METADATA_SERVICE_ENDPOINT`
//!    moves it), all from `object_store`, which
//!    also caches and refreshes what they hand out.
//!
//! `object_store` is async: its calls run on one small runtime thread of
//! this process (`shmfetch-s3`), never in a worker.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::signer::Signer;

use super::{Addressing, S3Access, S3Config, SecretUrl, env};
use crate::error::{Error, Result};

/// Environment variables of the credential providers after the profile
/// (web identity, container, IMDS), passed on to `object_store`.
const CHAIN_VARS: &[&str] = &[
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_ENDPOINT_URL_STS",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_METADATA_ENDPOINT",
];

/// Static keys, from the environment or a profile.
struct Keys {
    id: String,
    secret: String,
    token: Option<String>,
}

fn home_file(var: &str, default: &str) -> Option<PathBuf> {
    env(var)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".aws").join(default)))
}

/// The section of `profile` in a shared file (`[name]` in credentials,
/// `[profile name]` or `[default]` in config).
fn section(file: &ini::Ini, name: &str, config_file: bool) -> Option<HashMap<String, String>> {
    // The config file names `[profile NAME]`, and the default profile
    // `[default]` (the AWS CLI also accepts `[profile default]`).
    let wanted = if config_file && name != "default" {
        format!("profile {name}")
    } else {
        name.to_string()
    };
    let also = (config_file && name == "default").then_some("profile default");
    file.iter()
        .find(|(s, _)| {
            let s = s.map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "));
            s.as_deref() == Some(wanted.as_str()) || (also.is_some() && s.as_deref() == also)
        })
        .map(|(_, props)| {
            props
                .iter()
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect()
        })
}

fn load(path: &Option<PathBuf>) -> Result<Option<ini::Ini>> {
    let Some(path) = path else { return Ok(None) };
    match std::fs::read_to_string(path) {
        Ok(text) => ini::Ini::load_from_str_noescape(&text)
            .map(Some)
            .map_err(|e| Error::InvalidConfig(format!("AWS shared file {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(
            format!("reading AWS shared file {}", path.display()),
            &e,
        )),
    }
}

/// The region of `profile` (or `default`) in the shared config file.
pub(super) fn profile_region(profile: Option<&str>) -> Option<String> {
    let file = load(&home_file("AWS_CONFIG_FILE", "config")).ok()??;
    section(&file, profile.unwrap_or("default"), true)?
        .get("region")
        .filter(|r| !r.is_empty())
        .cloned()
}

/// Static keys of `profile` from the shared files. An explicitly named
/// profile that is missing or has no static keys is an error; a missing
/// `default` profile is not (the chain goes on).
fn profile_keys(profile: Option<&str>) -> Result<Option<Keys>> {
    let name = profile.unwrap_or("default");
    let cred_path = home_file("AWS_SHARED_CREDENTIALS_FILE", "credentials");
    let conf_path = home_file("AWS_CONFIG_FILE", "config");
    let mut found = false;
    let mut merged: HashMap<String, String> = HashMap::new();
    for (path, config_file) in [(&conf_path, true), (&cred_path, false)] {
        if let Some(file) = load(path)?
            && let Some(s) = section(&file, name, config_file)
        {
            found = true;
            merged.extend(s); // credentials file wins over config
        }
    }
    let files = || {
        [&cred_path, &conf_path]
            .iter()
            .filter_map(|p| p.as_ref().map(|p| p.display().to_string()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !found {
        return match profile {
            Some(p) => Err(Error::InvalidConfig(format!(
                "AWS_PROFILE={p}: no such profile in {}",
                files()
            ))),
            None => Ok(None),
        };
    }
    match (
        merged.get("aws_access_key_id").filter(|v| !v.is_empty()),
        merged
            .get("aws_secret_access_key")
            .filter(|v| !v.is_empty()),
    ) {
        (Some(id), Some(secret)) => Ok(Some(Keys {
            id: id.clone(),
            secret: secret.clone(),
            token: merged
                .get("aws_session_token")
                .filter(|v| !v.is_empty())
                .cloned(),
        })),
        _ if profile.is_none() => Ok(None),
        _ => {
            let kind = [
                "role_arn",
                "sso_session",
                "sso_start_url",
                "credential_process",
            ]
            .into_iter()
            .find(|k| merged.contains_key(*k))
            .unwrap_or("no aws_access_key_id/aws_secret_access_key");
            Err(Error::InvalidConfig(format!(
                "AWS profile {name} ({}) uses {kind}, which shmfetch does not support yet; \
                 export its credentials to the environment, e.g. \
                 `eval $(aws configure export-credentials --profile {name} --format env)`",
                files()
            )))
        }
    }
}

fn env_keys() -> Result<Option<Keys>> {
    match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => Ok(Some(Keys {
            id,
            secret,
            token: env("AWS_SESSION_TOKEN"),
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(Error::InvalidConfig(
            "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not".into(),
        )),
        (None, Some(_)) => Err(Error::InvalidConfig(
            "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not".into(),
        )),
    }
}

/// The one runtime of this process for `object_store`'s futures.
fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("shmfetch-s3")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| Error::Pool(format!("cannot start the S3 runtime: {e}")))
}

/// Runs `fut` on the runtime and waits for it, from any thread (also from
/// inside another runtime: this thread only blocks on a channel).
pub(super) fn block_on<T: Send + 'static>(
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime()?.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .map_err(|_| Error::Pool("the S3 runtime stopped".into()))
}

/// The static keys to sign with, read now (so a rotated profile file or
/// changed environment is picked up by the next presign): given by the
/// program, else the environment, else the profile.
fn static_keys(config: &S3Config) -> Result<Option<Keys>> {
    if let Some(c) = &config.credentials {
        return Ok(Some(Keys {
            id: c.access_key_id.clone(),
            secret: c.secret_access_key.clone(),
            token: c.session_token.clone(),
        }));
    }
    match env_keys()? {
        Some(k) => Ok(Some(k)),
        None => profile_keys(config.profile.as_deref()),
    }
}

/// One `AmazonS3` per bucket, settings and static keys, so credentials a
/// provider fetched (IMDS, web identity, container) are cached and
/// refreshed by it across downloads, and new static keys get a new client.
pub(super) fn store(bucket: &str, config: &S3Config) -> Result<Arc<AmazonS3>> {
    type CacheKey = (String, S3Config, Option<(String, String, Option<String>)>);
    type Stores = Mutex<HashMap<CacheKey, Arc<AmazonS3>>>;
    static STORES: OnceLock<Stores> = OnceLock::new();
    let stores = STORES.get_or_init(Default::default);
    let keys = if config.unsigned {
        None
    } else {
        static_keys(config)?
    };
    let cache_key = (
        bucket.to_string(),
        config.clone(),
        keys.as_ref()
            .map(|k| (k.id.clone(), k.secret.clone(), k.token.clone())),
    );
    if let Some(s) = stores.lock().map_err(|_| poisoned())?.get(&cache_key) {
        return Ok(Arc::clone(s));
    }
    let virtual_hosted = config.addressing == Addressing::Virtual;
    let mut b = AmazonS3Builder::new()
        .with_bucket_name(bucket)
        .with_region(&config.region)
        .with_virtual_hosted_style_request(virtual_hosted);
    if config.endpoint.is_some() {
        // object_store wants the bucket in a virtual-hosted endpoint.
        let endpoint = if virtual_hosted {
            config.bucket_url(bucket)
        } else {
            config.endpoint.clone().unwrap_or_default()
        };
        b = b.with_endpoint(endpoint).with_allow_http(true);
    }
    if config.unsigned {
        b = b.with_skip_signature(true);
    } else if let Some(k) = keys {
        b = b.with_access_key_id(k.id).with_secret_access_key(k.secret);
        if let Some(t) = k.token {
            b = b.with_token(t);
        }
    } else {
        for var in CHAIN_VARS {
            if let Some(v) = env(var)
                && let Ok(key) = var.to_ascii_lowercase().parse::<AmazonS3ConfigKey>()
            {
                b = b.with_config(key, v);
            }
        }
        // The SDKs' name for the instance metadata endpoint.
        if let Some(v) = env("AWS_EC2_METADATA_SERVICE_ENDPOINT") {
            b = b.with_config(AmazonS3ConfigKey::MetadataEndpoint, v);
        }
        if env("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            && env("AWS_WEB_IDENTITY_TOKEN_FILE").is_none()
            && env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_none()
            && env("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_none()
        {
            return Err(no_credentials(
                &format!("s3://{bucket}"),
                "AWS_EC2_METADATA_DISABLED is set",
            ));
        }
    }
    let s3 = Arc::new(
        b.build()
            .map_err(|e| Error::InvalidConfig(format!("S3 settings for bucket {bucket}: {e}")))?,
    );
    stores
        .lock()
        .map_err(|_| poisoned())?
        .insert(cache_key, Arc::clone(&s3));
    Ok(s3)
}

fn poisoned() -> Error {
    Error::Pool("the S3 client cache was poisoned by a panic".into())
}

pub(super) fn no_credentials(object: &str, detail: &str) -> Error {
    Error::InvalidSource {
        url: object.to_string(),
        reason: format!(
            "no AWS credentials found ({detail}); set AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary ones), or \
             AWS_PROFILE for a profile of ~/.aws/credentials, or pass --no-sign-request \
             for a public bucket"
        ),
    }
}

/// A `GET` URL of `bucket/key`, presigned for `ttl`.
pub(super) fn presign_get(
    bucket: &str,
    key: &str,
    config: &S3Config,
    ttl: Duration,
) -> Result<S3Access> {
    let s3 = store(bucket, config)?;
    let path = super::ops::exact_path(bucket, key)?;
    let expires_at = SystemTime::now()
        .checked_add(ttl)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    let url = block_on(async move { s3.signed_url(http::Method::GET, &path, ttl).await })?
        .map_err(|e| {
            let object = format!("s3://{bucket}/{key}");
            match e {
                // What the credential providers fail with.
                object_store::Error::Generic { source, .. } => {
                    no_credentials(&object, &source.to_string())
                }
                e => Error::InvalidSource {
                    url: object,
                    reason: format!("cannot presign a request: {e}"),
                },
            }
        })?;
    Ok(S3Access {
        url: SecretUrl::new(url.to_string()),
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::s3::S3Options;

    #[test]
    fn presigned_path_is_the_plain_url() {
        let config = S3Options {
            region: Some("us-east-1".into()),
            endpoint: Some("http://127.0.0.1:1".into()),
            addressing: Addressing::Auto,
            ..Default::default()
        }
        .resolve("bkt")
        .unwrap();
        let key = "a dir/x%y?z#w+ü~_.-";
        let s3 = AmazonS3Builder::new()
            .with_bucket_name("bkt")
            .with_region("us-east-1")
            .with_endpoint("http://127.0.0.1:1")
            .with_allow_http(true)
            .with_access_key_id("AKIDEXAMPLE")
            .with_secret_access_key("wJalrXUtnFEMI")
            .build()
            .unwrap();
        let path = object_store::path::Path::parse(key).unwrap();
        let url = block_on(async move {
            s3.signed_url(http::Method::GET, &path, Duration::from_secs(60))
                .await
        })
        .unwrap()
        .unwrap();
        let url = url.to_string();
        assert_eq!(
            url.split('?').next().unwrap(),
            config.object_url("bkt", key),
            "{url}"
        );
        assert!(url.contains("X-Amz-Signature="), "{url}");
    }
}
