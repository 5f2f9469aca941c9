//! The S3 flags shared by `shmfetch` and `shmfetch-bench`.

use clap::Args;
use shmfetch::source::s3::{Addressing, S3Options};

/// How `s3://` objects are reached (flags override the environment).
#[derive(Debug, Clone, Default, Args)]
pub struct S3Args {
    /// S3 region (overrides AWS_REGION, AWS_DEFAULT_REGION and the
    /// profile's region). Default: us-east-1.
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// S3-compatible endpoint, e.g. http://127.0.0.1:9000 (overrides
    /// AWS_ENDPOINT_URL_S3 and AWS_ENDPOINT_URL). Default: AWS.
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// Send S3 requests unsigned (public buckets): no credentials needed.
    #[arg(long)]
    pub no_sign_request: bool,
    /// S3 addressing: path (ENDPOINT/BUCKET/KEY), virtual
    /// (BUCKET.ENDPOINT/KEY), or auto: path with --endpoint-url or for a
    /// bucket name that is not a DNS label, else virtual.
    #[arg(long, value_name = "STYLE", default_value = "auto", value_parser = parse_addressing)]
    pub addressing_style: Addressing,
}

fn parse_addressing(s: &str) -> Result<Addressing, String> {
    s.parse().map_err(|e: shmfetch::Error| e.to_string())
}

impl S3Args {
    /// Applies the flags over `opts` (read from the environment).
    pub fn apply(&self, opts: &mut S3Options) {
        if let Some(r) = &self.region {
            opts.region = Some(r.clone());
        }
        if let Some(e) = &self.endpoint_url {
            opts.endpoint = Some(e.clone());
        }
        opts.unsigned |= self.no_sign_request;
        opts.addressing = self.addressing_style;
    }
}
