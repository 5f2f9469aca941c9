//! The ring buffer: bounded memory, zero-copy chunks, io::Read adapter,
//! several readers on one pool.

use std::io::Read;

use crate::common::*;
use shmfetch::{ParallelReader, WorkerPool};

#[test]
fn ring_is_workers_times_chunk_and_slots_are_reused() {
    let chunk = 64 * 1024;
    let (_srv, spec, data) = server_with("big", 40 * chunk + 5, 11);
    let r = ParallelReader::builder(spec)
        .workers(4)
        .chunk_size(chunk as u64)
        .build()
        .unwrap();
    let mut it = r.create_iter(0).unwrap();
    assert_eq!(it.slots(), 4);
    let seg = it.segment_name().unwrap().to_string();
    let len = std::fs::metadata(std::path::Path::new(SHM).join(&seg))
        .unwrap()
        .len();
    // 4 slots of 64 KiB plus two pages of slot table (header, one record
    // and one error box per slot: chunks this small are never cut, so no
    // piece records), whatever the object's size.
    assert_eq!(len, 4 * chunk as u64 + 2 * 4096);
    let mut out = Vec::new();
    let mut slots_seen = std::collections::BTreeSet::new();
    for c in &mut it {
        let c = c.unwrap();
        slots_seen.insert(c.slot());
        out.extend_from_slice(&c);
    }
    assert_eq!(slots_seen.len(), 4);
    assert_eq!(sha(&out), sha(&data));
    assert!(
        segment_exists(&seg),
        "segment lives while the iterator does"
    );
    drop(it);
    assert!(
        !segment_exists(&seg),
        "segment {seg} left after the iterator"
    );
}

#[test]
fn fewer_chunks_than_workers_uses_fewer_slots() {
    let (_srv, spec, data) = server_with("small", 3000, 12);
    let r = ParallelReader::builder(spec)
        .workers(8)
        .allow_small_chunks()
        .chunk_size(1000)
        .build()
        .unwrap();
    let it = r.create_iter(0).unwrap();
    assert_eq!(it.slots(), 3);
    let got: Vec<u8> = it.flat_map(|c| c.unwrap().to_vec()).collect();
    assert_eq!(got, data);
}

#[test]
fn holding_every_slot_is_an_error_not_a_hang() {
    let (_srv, spec, _data) = server_with("o", 10_000, 13);
    let r = ParallelReader::builder(spec)
        .workers(2)
        .allow_small_chunks()
        .chunk_size(1000)
        .build()
        .unwrap();
    let mut it = r.create_iter(0).unwrap();
    let a = it.next().unwrap().unwrap();
    let b = it.next().unwrap().unwrap();
    let e = it.next().unwrap().unwrap_err();
    assert!(e.to_string().contains("still held"), "{e}");
    drop((a, b));
}

#[test]
fn chunks_can_be_held_up_to_slots_and_stay_valid() {
    let (_srv, spec, data) = server_with("o", 10_000, 14);
    let r = ParallelReader::builder(spec)
        .workers(3)
        .allow_small_chunks()
        .chunk_size(1000)
        .build()
        .unwrap();
    let mut it = r.create_iter(0).unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(it.next().unwrap().unwrap());
    }
    for (i, c) in held.iter().enumerate() {
        assert_eq!(&c[..], &data[i * 1000..(i + 1) * 1000]);
    }
    held.remove(0);
    let d = it.next().unwrap().unwrap();
    assert_eq!(&d[..], &data[3000..4000]);
}

#[test]
fn io_read_adapter_copies_the_object() {
    let (_srv, spec, data) = server_with("o", 1_000_003, 15);
    let r = ParallelReader::builder(spec)
        .workers(3)
        .chunk_size(100_000)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out");
    let mut f = std::fs::File::create(&path).unwrap();
    let n = std::io::copy(&mut r.stream(0).unwrap(), &mut f).unwrap();
    assert_eq!(n, data.len() as u64);
    assert_eq!(sha(&std::fs::read(&path).unwrap()), sha(&data));
    // Odd-sized reads from an offset.
    let mut s = r.stream(777).unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 4099];
    loop {
        let k = s.read(&mut b).unwrap();
        if k == 0 {
            break;
        }
        got.extend_from_slice(&b[..k]);
    }
    assert_eq!(sha(&got), sha(&data[777..]));
}

#[test]
fn several_readers_share_one_pool_at_the_same_time() {
    let pool = WorkerPool::new(4).unwrap();
    let mut handles = Vec::new();
    for t in 0..4u64 {
        let pool = pool.clone();
        handles.push(std::thread::spawn(move || {
            let (_srv, spec, data) = server_with("o", 2_000_000 + t as usize * 1000, 20 + t);
            let r = ParallelReader::builder(spec)
                .pool(pool)
                .chunk_size(65_536)
                .build()
                .unwrap();
            for _ in 0..3 {
                assert_eq!(sha(&r.read_all().unwrap()), sha(&data));
                assert_eq!(sha(&iter_bytes(&r, 0).unwrap()), sha(&data));
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    drop_pool_and_check(pool);
}

#[test]
fn local_files_and_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.bin");
    let data = shmfetch::testing::content::bytes(33, 500_001);
    std::fs::write(&path, &data).unwrap();
    let pool = WorkerPool::new(3).unwrap();
    for src in [
        path.display().to_string(),
        format!("file://{}", path.display()),
    ] {
        let spec = shmfetch::SourceSpec::parse_with(&src, &Default::default()).unwrap();
        let r = ParallelReader::builder(spec)
            .pool(pool.clone())
            .chunk_size(65_536)
            .build()
            .unwrap();
        assert_eq!(sha(&r.read_all().unwrap()), sha(&data));
        assert_eq!(sha(&iter_bytes(&r, 10).unwrap()), sha(&data[10..]));
    }
    let (srv, _spec, data) = server_with("plain", 300_000, 34);
    let spec = shmfetch::SourceSpec::parse_with(&srv.direct_url("b", "plain"), &Default::default())
        .unwrap();
    assert!(matches!(spec, shmfetch::SourceSpec::Http { .. }));
    let r = ParallelReader::builder(spec)
        .pool(pool.clone())
        .chunk_size(65_536)
        .build()
        .unwrap();
    assert_eq!(sha(&r.read_all().unwrap()), sha(&data));
    drop(r);
    drop_pool_and_check(pool);
}
