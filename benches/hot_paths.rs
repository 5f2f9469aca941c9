//! Criterion benches for the hot paths: range planning, the slot hand-off
//! between two processes (slot word + eventfd doorbell), and
//! the full per-chunk pipeline (task → worker process → slot → consumer)
//! with small chunks, where per-chunk overhead dominates.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shmfetch::dcp::{ItemRange, MaxGap, coalesce};
use shmfetch::range::split_into_chunks;
use shmfetch::{ParallelReader, SourceSpec, WorkerPool};

fn planning(c: &mut Criterion) {
    c.bench_function("split 1 TiB into 8 MiB chunks", |b| {
        b.iter(|| split_into_chunks(0, 1 << 40, 8 << 20).map(|v| v.len()))
    });
    // 100k DCP items of 4 KiB-4 MiB with gaps of 0-64 MiB, one file.
    let mut items = Vec::with_capacity(100_000);
    let (mut pos, mut x) = (0u64, 0x9E37_79B9_7F4A_7C15u64);
    for _ in 0..100_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        pos += x % (64 << 20);
        let len = 4096 + x % (4 << 20);
        items.push(ItemRange {
            start: pos,
            end: pos + len,
        });
        pos += len;
    }
    c.bench_function("coalesce 100k DCP items (max_gap 32 MiB)", |b| {
        b.iter(|| coalesce(&items, MaxGap::default()).map(|g| g.len()))
    });
}

fn hand_off(c: &mut Criterion) {
    // A real second process plays the worker: it claims the assigned slot,
    // publishes Ready and rings the doorbell (eventfd); the consumer wakes,
    // sees Ready and releases — the library's own table and doorbell.
    let h = shmfetch::testing::handoff::HandOff::start().expect("hand-off");
    c.bench_function(
        "slot hand-off across processes: Assigned -> claim -> Ready -> doorbell -> consumer wakes",
        |b| b.iter(|| h.once().expect("hand-off")),
    );
}

fn pipeline(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("obj");
    let size = 16usize << 20;
    std::fs::write(&path, shmfetch::testing::content::bytes(1, size)).expect("write");
    let pool = WorkerPool::new(4).expect("pool");
    let chunk = 64 * 1024;
    let reader = ParallelReader::builder(SourceSpec::Local { path })
        .pool(pool)
        .chunk_size(chunk)
        .build()
        .expect("reader");
    let mut g = c.benchmark_group("pipeline, 16 MiB local file, 64 KiB chunks, 4 workers");
    g.throughput(Throughput::Elements((size as u64).div_ceil(chunk)));
    g.sample_size(20);
    g.bench_function("create_iter (chunks/s)", |b| {
        b.iter(|| {
            let mut n = 0;
            for ch in reader.create_iter(0).expect("iter") {
                n += ch.expect("chunk").len();
            }
            n
        })
    });
    g.bench_function("read_all (chunks/s)", |b| {
        b.iter(|| reader.read_all().expect("read_all").len())
    });
    g.finish();
}

/// Turning a saved DCP chunk into C-order bytes and placing it into its full
/// tensor: what `dcp export` does to every byte it loads.
fn dcp_layout(c: &mut Criterion) {
    use shmfetch::dcp::layout::{place_chunk, to_c_order};
    let (rows, cols, e) = (2048u64, 2048u64, 2usize); // 8 MiB of bf16
    let storage = vec![7u8; (rows * cols) as usize * e];
    let mut g = c.benchmark_group("dcp layout, 2048x2048 bf16 (8 MiB)");
    g.throughput(Throughput::Bytes(storage.len() as u64));
    g.bench_function("to_c_order, C-contiguous", |b| {
        b.iter(|| to_c_order(&storage, e, &[rows, cols], &[cols, 1], 0, "b").expect("c"))
    });
    g.bench_function("to_c_order, transposed (stride [1, rows])", |b| {
        b.iter(|| to_c_order(&storage, e, &[rows, cols], &[1, rows], 0, "b").expect("t"))
    });
    let mut full = vec![0u8; storage.len() * 2];
    g.bench_function("place_chunk, column half of a 2048x4096 tensor", |b| {
        b.iter(|| {
            place_chunk(
                &mut full,
                &[rows, 2 * cols],
                &[0, cols],
                &[rows, cols],
                &storage,
                e,
                "p",
            )
            .expect("place")
        })
    });
    g.finish();
}

/// What an S3 download costs the coordinator before any byte moves:
/// presigning the workers' GET URL (static credentials, cached client).
fn s3_presign(c: &mut Criterion) {
    use shmfetch::SourceSpec;
    use shmfetch::source::SourceOptions;
    use shmfetch::source::s3::{S3Credentials, S3Options};
    let opts = SourceOptions {
        s3: S3Options {
            endpoint: Some("http://127.0.0.1:9000".into()),
            credentials: Some(S3Credentials {
                access_key_id: "AKIDBENCH".into(),
                secret_access_key: "bench-secret".into(),
                session_token: None,
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let spec = SourceSpec::parse_with("s3://bench/dir/object.bin", &opts).expect("spec");
    c.bench_function("s3_presign_one_download", |b| {
        b.iter(|| spec.s3_get_url().expect("presigned"))
    });
}

criterion_group!(
    benches, planning, hand_off, pipeline, dcp_layout, s3_presign
);
criterion_main!(benches);
