//! `shmfetch serve`.

use anyhow::{Context, Result};
use shmfetch::testing::server::{ServerConfig, TestServer};

use crate::cli::ServeArgs;

pub fn run(a: ServeArgs) -> Result<()> {
    let srv = TestServer::start_on(
        &a.addr,
        ServerConfig {
            targets: a.targets,
            token: std::env::var("AIS_AUTHN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
            chunk_hint: None,
            ..Default::default()
        },
    )
    .with_context(|| format!("listening on {}", a.addr))?;
    let n = srv
        .put_dir(&a.dir)
        .with_context(|| format!("listing {}", a.dir.display()))?;
    eprintln!(
        "serving {n} object(s) from {} at {} (AIS_ENDPOINT={}); Ctrl-C stops",
        a.dir.display(),
        srv.endpoint(),
        srv.endpoint()
    );
    srv.wait();
    Ok(())
}
