//! Servers without Range support (`python3 -m http.server`, many static
//! servers): HEAD without `Accept-Ranges: bytes`, 200 with the whole object
//! to any range. Such an object is read with one streaming GET — into the
//! segment for `read_all`, through the ring for `create_iter` — as curl
//! and aria2c do. Against the real `python3 -m http.server`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::assert_no_orphaned_workers;
use crate::common::*;
use crate::faults::ShmDir;
use shmfetch::testing::content;
use shmfetch::{ParallelReader, SourceSpec, WorkerPool};

const BIN: &str = env!("CARGO_BIN_EXE_shmfetch");

/// `python3 -m http.server` serving a directory on 127.0.0.1, at a free
/// port; killed and reaped on drop.
struct PyServer {
    child: Child,
    addr: SocketAddr,
}

impl PyServer {
    fn start(dir: &Path) -> PyServer {
        // A free port: bound and released (the race with another process
        // taking it in between is harmless on loopback in a test run).
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "python3 http.server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        PyServer { child, addr }
    }

    fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Files of 0 bytes, 12 bytes and several MiB (not a multiple of the
/// chunk), read with `read_all`, `create_iter(0)` and `create_iter` at an
/// offset inside a later chunk; every result's sha256 equals the file's.
#[test]
fn a_server_without_range_support_is_read_with_one_streaming_get() {
    let files = tempfile::tempdir().unwrap();
    let sizes = [0usize, 12, (5 << 20) + 12_345];
    let mut data = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let d = content::bytes(2000 + i as u64, n);
        std::fs::write(files.path().join(format!("f{i}")), &d).unwrap();
        data.push(d);
    }
    let py = PyServer::start(files.path());
    let dir = ShmDir::new();
    let pool = WorkerPool::new(3).unwrap();
    for (i, d) in data.iter().enumerate() {
        let reader = ParallelReader::builder(SourceSpec::Http {
            url: py.url(&format!("f{i}")),
        })
        .pool(pool.clone())
        .chunk_size(1 << 20)
        .shm_dir(&dir.0)
        .build()
        .unwrap_or_else(|e| panic!("f{i}: {e}"));
        assert!(
            reader.meta().no_ranges,
            "f{i}: the probe found no Range support"
        );
        assert_eq!(reader.size(), d.len() as u64);
        let buf = reader.read_all().unwrap_or_else(|e| panic!("f{i}: {e}"));
        assert_eq!(sha(&buf), sha(d), "read_all f{i}");
        drop(buf);
        let got = iter_bytes(&reader, 0).unwrap_or_else(|e| panic!("f{i}: {e}"));
        assert_eq!(sha(&got), sha(d), "create_iter(0) f{i}");
        for offset in [d.len() / 2, d.len()] {
            let got = iter_bytes(&reader, offset as u64).unwrap_or_else(|e| panic!("f{i}: {e}"));
            assert_eq!(sha(&got), sha(&d[offset..]), "create_iter({offset}) f{i}");
        }
        // A range of the middle (what DCP readers ask for).
        if d.len() > 100 {
            let r = shmfetch::ByteRange::new(50, d.len() as u64 - 50).unwrap();
            let part = reader.read_range(r).unwrap();
            assert_eq!(sha(&part), sha(&d[50..d.len() - 50]), "read_range f{i}");
        }
    }
    dir.assert_empty();
    drop_pool_and_check(pool);
}

/// `shmfetch get` from the same server, both modes, one warning that the
/// server does not support ranges.
#[test]
fn get_from_a_server_without_range_support() {
    let files = tempfile::tempdir().unwrap();
    let d = content::bytes(2100, (3 << 20) + 5);
    std::fs::write(files.path().join("obj.bin"), &d).unwrap();
    let py = PyServer::start(files.path());
    for mode in ["read-all", "stream"] {
        let o = Command::new(BIN)
            .args([
                "get",
                &py.url("obj.bin"),
                "-o",
                "-",
                "-w",
                "3",
                "--chunk-size",
                "1MiB",
                "--mode",
                mode,
            ])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{mode}: {stderr}");
        assert_eq!(sha(&o.stdout), sha(&d), "{mode}");
        assert_eq!(
            stderr
                .lines()
                .filter(|l| l.contains("does not support Range"))
                .count(),
            1,
            "{mode}: {stderr}"
        );
    }
    assert_no_orphaned_workers();
}

/// A whole-object stream cut short (a reset after 1.5 MB of 3 MB) is
/// resumed by a new GET that skips the bytes already received — in a
/// worker for `read_all`, in the consumer's thread for `create_iter` — and
/// the bytes come out right.
#[test]
fn a_reset_stream_without_ranges_resumes_by_skipping_what_was_received() {
    use shmfetch::testing::server::{Fault, FaultKind, ServerConfig, TestServer};
    let srv = TestServer::start(ServerConfig {
        no_ranges: true,
        ..ServerConfig::default()
    })
    .unwrap();
    let d = content::bytes(2200, 3_000_000);
    srv.put_bytes("b", "o", d.clone());
    let dir = ShmDir::new();
    let pool = WorkerPool::new(2).unwrap();
    let reader = ParallelReader::builder(SourceSpec::Http {
        url: srv.direct_url("b", "o"),
    })
    .pool(pool.clone())
    .chunk_size(1 << 20)
    .retry(crate::faults::quick_retry())
    .shm_dir(&dir.0)
    .build()
    .unwrap();
    assert!(reader.meta().no_ranges);
    for iter in [false, true] {
        srv.inject(Fault::on("o", FaultKind::ResetAfter(1_500_000), 1));
        let before = pool.stats();
        let got = if iter {
            iter_bytes(&reader, 0).unwrap()
        } else {
            reader.read_all().unwrap().to_vec()
        };
        assert_eq!(sha(&got), sha(&d), "iter {iter}");
        let after = pool.stats();
        assert!(after.retries > before.retries, "iter {iter}: {after:?}");
        // The bytes before the reset were kept, not fetched again.
        assert!(
            after.resumed_bytes > before.resumed_bytes,
            "iter {iter}: {after:?}"
        );
    }
    assert_eq!(srv.faults_injected(), 2);
    drop(reader);
    dir.assert_empty();
    drop_pool_and_check(pool);
}
