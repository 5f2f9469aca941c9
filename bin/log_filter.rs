//! The `tracing` filter both binaries install.

/// `RUST_LOG` if set, else `default`, with the HTTP client's own logging
/// capped at `warn` whatever was asked — at trace level it dumps raw request
/// bytes, bearer token included.
pub fn log_filter(default: &str) -> tracing_subscriber::EnvFilter {
    let base = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    ["ureq=warn", "ureq_proto=warn"]
        .iter()
        .filter_map(|d| d.parse().ok())
        .fold(base, |f, d| f.add_directive(d))
}
