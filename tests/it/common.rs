//! Helpers shared by the integration tests.

use std::path::Path;

use shmfetch::testing::content;
use shmfetch::testing::server::{ServerConfig, TestServer};
use shmfetch::{ParallelReader, SourceOptions, SourceSpec, WorkerPool};

pub const SHM: &str = "/dev/shm";

/// A local AIStore-style server with one object `ais://b/<name>` of `size`
/// deterministic bytes; returns the server, the spec and the bytes.
pub fn server_with(name: &str, size: usize, seed: u64) -> (TestServer, SourceSpec, Vec<u8>) {
    let srv = TestServer::start(ServerConfig::default()).expect("server starts");
    let data = content::bytes(seed, size);
    srv.put_bytes("b", name, data.clone());
    let spec = ais_spec(&srv, &format!("ais://b/{name}"));
    (srv, spec, data)
}

pub fn ais_spec(srv: &TestServer, url: &str) -> SourceSpec {
    let opts = SourceOptions {
        endpoint: Some(srv.endpoint()),
        token: None,
        s3: Default::default(),
    };
    SourceSpec::parse_with(url, &opts).expect("valid spec")
}

/// Writes `size` deterministic bytes (`content::fill(seed, …)`) to `path`,
/// streamed in 8 MiB pieces, creating its directories; returns their
/// sha256.
pub fn write_generated(path: &Path, size: u64, seed: u64) -> String {
    use sha2::Digest;
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("object's directories");
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("object file"));
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 8 << 20];
    let mut pos = 0;
    while pos < size {
        let n = ((size - pos) as usize).min(buf.len());
        content::fill(seed, pos, &mut buf[..n]);
        h.update(&buf[..n]);
        f.write_all(&buf[..n]).expect("object written");
        pos += n as u64;
    }
    f.flush().expect("object flushed");
    hex::encode(h.finalize())
}

pub fn sha(b: &[u8]) -> String {
    content::sha256_hex(b)
}

pub fn segment_exists(name: &str) -> bool {
    Path::new(SHM).join(name).exists()
}

pub fn pid_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Asserts every pid is gone (killed *and* reaped: a zombie would still
/// answer kill(0)).
pub fn assert_pids_gone(pids: &[i32]) {
    for &p in pids {
        assert!(!pid_alive(p), "worker process {p} outlived its pool");
    }
}

/// Drops the pool (and every reader holding it must be gone already) and
/// checks its processes went with it.
pub fn drop_pool_and_check(pool: WorkerPool) {
    let pids = pool.worker_pids();
    assert!(!pids.is_empty());
    drop(pool);
    assert_pids_gone(&pids);
}

/// Reads the whole object through `create_iter(offset)` and returns it.
pub fn iter_bytes(r: &ParallelReader, offset: u64) -> shmfetch::Result<Vec<u8>> {
    let mut out = Vec::new();
    for c in r.create_iter(offset)? {
        let c = c?;
        assert_eq!(
            c.offset(),
            offset + out.len() as u64,
            "chunks come in order"
        );
        out.extend_from_slice(&c);
    }
    Ok(out)
}

/// The parent pid of `pid`, from `/proc/PID/status`.
pub fn ppid_of(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Every running `shmfetch-wrk` process as `(pid, ppid)`.
pub fn worker_processes() -> Vec<(i32, i32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "shmfetch-wrk" {
            out.push((pid, ppid_of(pid).unwrap_or(0)));
        }
    }
    out
}
