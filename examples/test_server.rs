//! The fault-injecting AIStore-style test server as a process, for tests
//! outside Rust (the Python package's pytest suite). Never for users.
//!
//! ```text
//! cargo run --example test_server --features test-support -- [--rate BYTES_PER_S] [--first-byte-ms MS]
//! ```
//!
//! Prints `endpoint http://127.0.0.1:PORT` on its first line, then answers
//! one command per line of stdin, one line of stdout each:
//! - `bucket NAME`: creates the bucket; answers `ok`;
//! - `requests`: the requests served so far, one JSON array
//!   (`role`, `method`, `object`, `range`, `status`, `query`);
//! - `quit` (or the end of stdin): exits.

use std::io::{BufRead, Write};
use std::time::Duration;

use shmfetch::testing::server::{ServerConfig, TestServer};

fn main() {
    if let Err(e) = run() {
        eprintln!("test_server: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let mut cfg = ServerConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |what: &str| -> Result<u64, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{a} needs a number ({what})"))
        };
        match a.as_str() {
            "--rate" => cfg.per_request_rate = Some(value("bytes per second")?),
            "--first-byte-ms" => {
                cfg.first_byte_latency = Some(Duration::from_millis(value("milliseconds")?))
            }
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    let server = TestServer::start(cfg).map_err(|e| format!("starting: {e}"))?;
    let mut out = std::io::stdout().lock();
    let mut say = |line: &str| -> Result<(), String> {
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|e| format!("stdout: {e}"))
    };
    say(&format!("endpoint {}", server.endpoint()))?;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| format!("stdin: {e}"))?;
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("bucket"), Some(name)) => {
                server.create_bucket(name);
                say("ok")?;
            }
            (Some("requests"), None) => {
                let reqs: Vec<serde_json::Value> = server
                    .requests()
                    .into_iter()
                    .map(|r| {
                        serde_json::json!({
                            "role": r.role, "method": r.method, "object": r.object,
                            "range": r.range, "status": r.status, "query": r.query,
                        })
                    })
                    .collect();
                say(&serde_json::Value::Array(reqs).to_string())?;
            }
            (Some("quit"), None) => break,
            _ => say(&format!("error: unknown command {line:?}"))?,
        }
    }
    Ok(())
}
