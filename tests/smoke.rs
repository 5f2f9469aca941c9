use shmfetch::testing::{content, server::{ServerConfig, TestServer}};
use shmfetch::{ParallelReader, SourceOptions, SourceSpec};

#[test]
fn smoke() {
    let srv = TestServer::start(ServerConfig::default()).unwrap();
    let data = content::bytes(1, 10_000_001);
    srv.put_bytes("b", "dir/o", data.clone());
    let opts = SourceOptions { endpoint: Some(srv.endpoint()), token: None };
    let spec = SourceSpec::parse_with("ais://b/dir/o", &opts).unwrap();
    let r = ParallelReader::builder(spec).workers(4).chunk_size(1 << 20).build().unwrap();
    let t = std::time::Instant::now();
    let buf = r.read_all().unwrap();
    eprintln!("read_all {:?} pids {:?}", t.elapsed(), buf.worker_pids());
    assert_eq!(content::sha256_hex(&buf), content::sha256_hex(&data));
    let mut out = Vec::new();
    for c in r.create_iter(5).unwrap() { out.extend_from_slice(&c.unwrap()); }
    assert_eq!(out, data[5..]);
    eprintln!("{:?}", srv.requests().len());
}
