//! `read_all` and `create_iter` deliver exactly the object's bytes for the
//! sizes, worker counts, chunk sizes and offsets that matter.

use crate::common::*;
use shmfetch::testing::server::{ServerConfig, TestServer};
use shmfetch::{ParallelReader, WorkerPool};

const C: usize = 64 * 1024;

fn sizes() -> Vec<usize> {
    vec![0, 1, C - 1, C, C + 1, 7 * C + 4093]
}

#[test]
fn sizes_by_workers_read_all_and_iter() {
    for workers in 1usize..=16 {
        let pool = WorkerPool::new(workers).unwrap();
        for (i, size) in sizes().into_iter().enumerate() {
            let (srv, spec, data) = server_with(&format!("obj-{size}"), size, i as u64 + 100);
            let r = ParallelReader::builder(spec)
                .pool(pool.clone())
                .chunk_size(C as u64)
                .build()
                .unwrap();
            assert_eq!(r.size(), size as u64);
            let buf = r.read_all().unwrap();
            assert_eq!(buf.len(), size);
            assert_eq!(
                sha(&buf),
                sha(&data),
                "read_all size {size} workers {workers}"
            );
            let name = buf.segment_name().to_string();
            drop(buf);
            assert!(!segment_exists(&name), "segment {name} left after drop");
            for offset in [0, 1, C as u64, size as u64] {
                if offset > size as u64 {
                    continue;
                }
                let got = iter_bytes(&r, offset).unwrap();
                assert_eq!(
                    sha(&got),
                    sha(&data[offset as usize..]),
                    "iter size {size} workers {workers} offset {offset}"
                );
            }
            drop(r);
            drop(srv);
        }
        drop_pool_and_check(pool);
    }
}

#[test]
fn several_chunk_sizes() {
    let size = 3 * 1024 * 1024 + 12345;
    let (_srv, spec, data) = server_with("obj", size, 7);
    let pool = WorkerPool::new(5).unwrap();
    for chunk in [4096u64, 65_536, 1 << 20, 3 * 1024 * 1024 + 12345, 8 << 20] {
        let r = ParallelReader::builder(spec.clone())
            .pool(pool.clone())
            .allow_small_chunks()
            .chunk_size(chunk)
            .build()
            .unwrap();
        assert_eq!(r.chunk_size(), chunk);
        assert_eq!(sha(&r.read_all().unwrap()), sha(&data), "chunk {chunk}");
        assert_eq!(
            sha(&iter_bytes(&r, 0).unwrap()),
            sha(&data),
            "iter chunk {chunk}"
        );
        assert_eq!(
            sha(&iter_bytes(&r, 4097).unwrap()),
            sha(&data[4097..]),
            "iter chunk {chunk} offset 4097"
        );
    }
    drop_pool_and_check(pool);
}

#[test]
fn offset_past_end_is_an_error_and_offset_at_end_is_empty() {
    let (_srv, spec, _data) = server_with("o", 1000, 1);
    let r = ParallelReader::builder(spec)
        .workers(2)
        .allow_small_chunks()
        .chunk_size(100)
        .build()
        .unwrap();
    assert_eq!(r.create_iter(1000).unwrap().count(), 0);
    let e = r.create_iter(1001).unwrap_err();
    assert!(matches!(e, shmfetch::Error::InvalidConfig(_)), "{e}");
    assert!(e.to_string().contains("1001"), "{e}");
}

#[test]
fn chunk_size_comes_from_server_hint_unless_given() {
    let srv = TestServer::start(ServerConfig {
        chunk_hint: Some(300_000),
        ..Default::default()
    })
    .unwrap();
    let data = shmfetch::testing::content::bytes(3, 1_000_000);
    srv.put_bytes("b", "o", data.clone());
    let spec = ais_spec(&srv, "ais://b/o");
    let r = ParallelReader::builder(spec.clone())
        .workers(3)
        .build()
        .unwrap();
    assert_eq!(r.chunk_size(), 300_000);
    assert_eq!(sha(&r.read_all().unwrap()), sha(&data));
    let r = ParallelReader::builder(spec)
        .workers(3)
        .chunk_size(1 << 16)
        .build()
        .unwrap();
    assert_eq!(r.chunk_size(), 1 << 16);
    // No hint: the 8 MiB default.
    let (_s2, spec2, _) = server_with("x", 10, 1);
    let r = ParallelReader::builder(spec2).workers(1).build().unwrap();
    assert_eq!(r.chunk_size(), shmfetch::reader::DEFAULT_CHUNK_SIZE);
}

#[test]
fn every_range_goes_through_the_gateway_redirect() {
    let (srv, spec, data) = server_with("o", 10 * 4096 + 1, 9);
    let r = ParallelReader::builder(spec)
        .workers(3)
        .allow_small_chunks()
        .chunk_size(4096)
        .build()
        .unwrap();
    let before = srv.redirects();
    assert_eq!(sha(&r.read_all().unwrap()), sha(&data));
    // 11 ranges, 11 redirects: the target is never cached.
    assert_eq!(srv.redirects() - before, 11);
    let reqs = srv.requests();
    let ranged_at_targets = reqs
        .iter()
        .filter(|q| q.role.starts_with("target") && q.range.is_some() && q.status == 206)
        .count();
    assert_eq!(ranged_at_targets, 11);
    let heads = reqs
        .iter()
        .filter(|q| q.method == "HEAD" && q.role == "gateway")
        .count();
    assert_eq!(heads, 1);
}

#[test]
fn buffer_api() {
    let (_srv, spec, data) = server_with("o", 100_000, 4);
    let r = ParallelReader::builder(spec)
        .workers(2)
        .allow_small_chunks()
        .chunk_size(30_000)
        .build()
        .unwrap();
    let buf = r.read_all().unwrap();
    assert!(
        buf.segment_name()
            .starts_with(&format!("shmfetch-{}-", std::process::id()))
    );
    assert!(segment_exists(buf.segment_name()));
    // Exactly one segment, exactly the object's size.
    let md = std::fs::metadata(std::path::Path::new(SHM).join(buf.segment_name())).unwrap();
    assert_eq!(md.len(), 100_000);
    let v = buf.to_vec();
    assert_eq!(v, data);
    assert_eq!(buf.as_ref(), &data[..]);
}

#[test]
fn invalid_settings_are_errors_at_the_boundary() {
    let (_srv, spec, _) = server_with("o", 10, 1);
    for b in [
        ParallelReader::builder(spec.clone()).chunk_size(0),
        ParallelReader::builder(spec.clone()).workers(0),
        ParallelReader::builder(spec.clone()).workers(100_000),
        ParallelReader::builder(spec.clone()).attempts(0),
    ] {
        let e = b.build().unwrap_err();
        assert!(matches!(e, shmfetch::Error::InvalidConfig(_)), "{e}");
    }
    assert!(WorkerPool::new(0).is_err());
}
