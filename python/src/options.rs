//! Keyword arguments shared by readers and file systems, with the CLI's
//! defaults and environment variables (`AIS_ENDPOINT`, `AIS_AUTHN_TOKEN`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL`, …).

use std::time::Duration;

use pyo3::prelude::*;
use shmfetch::source::SourceOptions;
use shmfetch::source::retry::RetryConfig;

use crate::errors::{OrRaise, invalid};

/// Where names resolve: the environment, then the keyword arguments.
pub struct Location {
    /// AIStore gateway (`endpoint=`, else `AIS_ENDPOINT`).
    pub endpoint: Option<String>,
    /// S3 region (`region=`, else `AWS_REGION`/`AWS_DEFAULT_REGION`/profile).
    pub region: Option<String>,
    /// S3 endpoint (`endpoint_url=`, else `AWS_ENDPOINT_URL_S3`/`AWS_ENDPOINT_URL`).
    pub endpoint_url: Option<String>,
    /// Unsigned S3 requests.
    pub unsigned: bool,
    /// `auto`, `path` or `virtual`.
    pub addressing_style: Option<String>,
}

impl Location {
    /// The core's options.
    pub fn options(&self, py: Python<'_>) -> PyResult<SourceOptions> {
        let mut opts = SourceOptions::from_env().or_raise(py)?;
        if let Some(e) = &self.endpoint {
            let lower = e.to_ascii_lowercase();
            if !(lower.starts_with("http://") || lower.starts_with("https://")) {
                return Err(invalid(
                    py,
                    format!("endpoint {e:?}: must start with http:// or https://"),
                ));
            }
            opts.endpoint = Some(e.clone());
        }
        if let Some(r) = &self.region {
            opts.s3.region = Some(r.clone());
        }
        if let Some(e) = &self.endpoint_url {
            opts.s3.endpoint = Some(e.clone());
        }
        opts.s3.unsigned |= self.unsigned;
        if let Some(a) = &self.addressing_style {
            opts.s3.addressing = a.parse().or_raise(py)?;
        }
        Ok(opts)
    }
}

/// The retry policy from `attempts=` (default: no count limit) and
/// `retry_timeout=` seconds (default 120).
pub fn retry(
    py: Python<'_>,
    attempts: Option<u32>,
    retry_timeout: Option<f64>,
) -> PyResult<RetryConfig> {
    let mut retry = RetryConfig::default();
    if let Some(a) = attempts {
        if a == 0 {
            return Err(invalid(py, "attempts must be at least 1"));
        }
        retry.attempts = a;
    }
    if let Some(t) = retry_timeout {
        retry.max_elapsed = Duration::try_from_secs_f64(t).map_err(|_| {
            invalid(
                py,
                format!("retry_timeout must be a number of seconds, 0 or more, got {t}"),
            )
        })?;
    }
    Ok(retry)
}

/// A positive number of seconds.
pub fn seconds(py: Python<'_>, v: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            invalid(
                py,
                format!("{what} must be a positive number of seconds, got {v}"),
            )
        })
}
