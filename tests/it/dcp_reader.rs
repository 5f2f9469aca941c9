//! The reader kinds' contracts: the dcp-optimized reader's access rules
//! (each error by kind and message), what each kind fetches, and property
//! tests against a plain slice of the file.

use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use shmfetch::dcp::readers::{DcpOptimizedReader, RangeBasedReader, from_io};
use shmfetch::dcp::{FetchCounter, ItemRange, MaxGap, ReaderKind};
use shmfetch::testing::content;
use shmfetch::{Error, ParallelReader, SourceSpec, WorkerPool};

fn file_with(dir: &Path, size: usize) -> (SourceSpec, Vec<u8>) {
    let data = content::bytes(7, size);
    let path = dir.join("f.distcp");
    std::fs::write(&path, &data).unwrap();
    (SourceSpec::Local { path }, data)
}

fn r(start: u64, end: u64) -> ItemRange {
    ItemRange { start, end }
}

fn optimized(
    spec: &SourceSpec,
    pool: &WorkerPool,
    items: &[ItemRange],
    gap: MaxGap,
) -> (DcpOptimizedReader, std::sync::Arc<FetchCounter>) {
    let pr = ParallelReader::builder(spec.clone())
        .pool(pool.clone())
        .allow_small_chunks()
        .chunk_size(64)
        .build()
        .unwrap();
    let c = FetchCounter::new();
    (
        DcpOptimizedReader::new(pr, items, gap, c.clone()).unwrap(),
        c,
    )
}

/// The crate error inside a reader's io::Error, with its io kind.
fn unsupported(e: std::io::Error) -> String {
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    match from_io(&e, "read") {
        Error::UnsupportedAccess { reader, detail, .. } => {
            assert_eq!(reader, "dcp_optimized");
            let msg = e.to_string();
            assert!(msg.contains("use the sequential reader"), "{msg}");
            detail
        }
        other => panic!("expected UnsupportedAccess, got {other:?}"),
    }
}

#[test]
fn dcp_optimized_contract() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, data) = file_with(dir.path(), 2000);
    let pool = WorkerPool::new(2).unwrap();
    let items = [r(100, 200), r(300, 400), r(400, 450), r(1000, 1100)];
    let (mut rd, counter) = optimized(&spec, &pool, &items, MaxGap::Bytes(0));
    assert_eq!(rd.groups().len(), 3, "touching items share a group");
    let read = |rd: &mut DcpOptimizedReader, at: u64, n: usize| {
        rd.seek(SeekFrom::Start(at)).unwrap();
        let mut b = vec![0u8; n];
        let got = rd.read(&mut b)?;
        b.truncate(got);
        Ok::<_, std::io::Error>(b)
    };

    // Before the first item.
    let d = unsupported(read(&mut rd, 0, 10).unwrap_err());
    assert!(
        d.contains("[0, 10)")
            && d.contains("no item read yet")
            && d.contains("next planned item is [100, 200)"),
        "{d}"
    );
    // Inside the first item; free seeking inside it, backwards too.
    assert_eq!(read(&mut rd, 150, 10).unwrap(), &data[150..160]);
    assert_eq!(read(&mut rd, 100, 10).unwrap(), &data[100..110]);
    // A read stops at the end of its item.
    assert_eq!(read(&mut rd, 190, 50).unwrap(), &data[190..200]);
    // The gap after it.
    let d = unsupported(read(&mut rd, 200, 10).unwrap_err());
    assert!(
        d.contains("current item is [100, 200)") && d.contains("next planned item is [300, 400)"),
        "{d}"
    );
    // Next item, then the touching one after it (same group, no new request).
    assert_eq!(read(&mut rd, 300, 100).unwrap(), &data[300..400]);
    assert_eq!(read(&mut rd, 400, 50).unwrap(), &data[400..450]);
    // Backwards to an earlier item.
    let d = unsupported(read(&mut rd, 350, 10).unwrap_err());
    assert!(
        d.contains("[350, 360)") && d.contains("current item is [400, 450)"),
        "{d}"
    );
    // SeekFrom::End is not supported.
    let d = unsupported(rd.seek(SeekFrom::End(-10)).unwrap_err());
    assert!(d.contains("SeekFrom::End"), "{d}");
    // The last item, then past it.
    assert_eq!(read(&mut rd, 1000, 100).unwrap(), &data[1000..1100]);
    let d = unsupported(read(&mut rd, 1100, 1).unwrap_err());
    assert!(d.contains("no next planned item"), "{d}");
    // One request per group (chunk 64 bytes: the workers split groups).
    let group_bytes = 100 + 150 + 100;
    assert_eq!(counter.bytes(), group_bytes);
    assert_eq!(
        counter.requests(),
        2 + 3 + 2,
        "100/64, 150/64, 100/64 chunks"
    );
    drop(rd);

    // Skipping a planned item is an error too: reads go item by item.
    let (mut rd, _) = optimized(&spec, &pool, &items, MaxGap::Bytes(0));
    read(&mut rd, 100, 100).unwrap();
    let d = unsupported(read(&mut rd, 1000, 10).unwrap_err());
    assert!(d.contains("next planned item is [300, 400)"), "{d}");
    drop(rd);

    // Bad plans are refused up front, naming the ranges.
    let pr = || {
        ParallelReader::builder(spec.clone())
            .pool(pool.clone())
            .build()
            .unwrap()
    };
    let e = DcpOptimizedReader::new(
        pr(),
        &[r(0, 10), r(5, 20)],
        MaxGap::default(),
        FetchCounter::new(),
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::InvalidRanges(_))
            && e.to_string().contains("[0, 10)")
            && e.to_string().contains("[5, 20)"),
        "{e}"
    );
    let e = DcpOptimizedReader::new(
        pr(),
        &[r(1990, 2010)],
        MaxGap::default(),
        FetchCounter::new(),
    )
    .unwrap_err();
    assert!(
        matches!(e, Error::Checkpoint { .. }) && e.to_string().contains("beyond the end"),
        "{e}"
    );
    let e = DcpOptimizedReader::new(pr(), &[r(5, 5)], MaxGap::default(), FetchCounter::new())
        .unwrap_err();
    assert!(matches!(e, Error::InvalidRanges(_)), "{e}");
    crate::common::drop_pool_and_check(pool);
}

#[test]
fn reader_kind_settings_are_checked_at_construction() {
    let e = ReaderKind::range_based(-1).unwrap_err();
    assert!(
        matches!(e, Error::InvalidConfig(_)) && e.to_string().contains("got -1"),
        "{e}"
    );
    let e = ReaderKind::dcp_optimized(-32).unwrap_err();
    assert!(
        matches!(e, Error::InvalidConfig(_)) && e.to_string().contains("max_gap_size"),
        "{e}"
    );
    let e = ReaderKind::from_name("fast", 0, MaxGap::default()).unwrap_err();
    assert!(
        e.to_string()
            .contains("sequential, range_based or dcp_optimized"),
        "{e}"
    );
    for (name, kind) in [
        ("sequential", ReaderKind::default()),
        ("range_based", ReaderKind::range_based(0).unwrap()),
        ("dcp_optimized", ReaderKind::dcp_optimized(0).unwrap()),
    ] {
        assert_eq!(kind.name(), name);
        assert_eq!(
            ReaderKind::from_name(name, 0, MaxGap::Bytes(0))
                .unwrap()
                .name(),
            name
        );
    }
}

fn range_based(spec: &SourceSpec, buffer: u64) -> (RangeBasedReader, std::sync::Arc<FetchCounter>) {
    let src = spec.open(&Default::default()).unwrap();
    let meta = src.meta().unwrap();
    let c = FetchCounter::new();
    (
        RangeBasedReader::new(src, meta, Default::default(), buffer, c.clone()),
        c,
    )
}

#[test]
fn range_based_buffer_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, data) = file_with(dir.path(), 10_000);
    let (mut rd, c) = range_based(&spec, 1000);
    let mut b = [0u8; 10];
    // A small read fills the buffer from there...
    rd.seek(SeekFrom::Start(500)).unwrap();
    rd.read_exact(&mut b).unwrap();
    assert_eq!(&b, &data[500..510]);
    assert_eq!((c.requests(), c.bytes()), (1, 1000));
    // ...and reads inside it are free, backwards too.
    rd.seek(SeekFrom::Start(1400)).unwrap();
    rd.read_exact(&mut b).unwrap();
    rd.seek(SeekFrom::Start(600)).unwrap();
    rd.read_exact(&mut b).unwrap();
    assert_eq!(&b, &data[600..610]);
    assert_eq!(c.requests(), 1);
    // A forward-overlapping read takes what the buffer has, fetches the rest.
    rd.seek(SeekFrom::Start(1450)).unwrap();
    let mut big = vec![0u8; 2000];
    rd.read_exact(&mut big).unwrap();
    assert_eq!(big, &data[1450..3450]);
    assert_eq!(
        (c.requests(), c.bytes()),
        (2, 1000 + 1950),
        "only the missing 1950 bytes"
    );
    // A large read bypasses the buffer.
    rd.seek(SeekFrom::Start(5000)).unwrap();
    rd.read_exact(&mut big).unwrap();
    assert_eq!(big, &data[5000..7000]);
    assert_eq!(c.requests(), 3);
    // SeekFrom::End works (the size is known) and reads stop at the end.
    assert_eq!(rd.seek(SeekFrom::End(-4)).unwrap(), 9996);
    let mut rest = Vec::new();
    rd.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, &data[9996..]);

    // Buffer 0: one request per read, exactly the bytes asked for.
    let (mut rd, c) = range_based(&spec, 0);
    for at in [0u64, 5, 10] {
        rd.seek(SeekFrom::Start(at)).unwrap();
        rd.read_exact(&mut b).unwrap();
        assert_eq!(&b, &data[at as usize..at as usize + 10]);
    }
    assert_eq!((c.requests(), c.bytes()), (3, 30));
}

/// Disjoint sorted items from cut points, and per item a list of
/// (offset inside the item, length) reads.
/// Items, max gap, reads per item.
type Plan = (Vec<(u64, u64)>, u64, Vec<Vec<(u64, usize)>>);

fn plan_strategy() -> impl Strategy<Value = Plan> {
    (prop::collection::btree_set(0u64..3000, 2..24), 0u64..400).prop_flat_map(|(cuts, gap)| {
        let cuts: Vec<u64> = cuts.into_iter().collect();
        // Every other interval between cuts is an item.
        let items: Vec<(u64, u64)> = cuts
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0], c[1]))
            .collect();
        let n = items.len();
        (
            Just(items),
            Just(gap),
            prop::collection::vec(
                prop::collection::vec((0u64..1000, 1usize..300), 1..4),
                n..=n,
            ),
        )
    })
}

#[test]
fn dcp_optimized_reads_equal_a_slice_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, data) = file_with(dir.path(), 3000);
    let pool = WorkerPool::new(2).unwrap();
    let mut runner = TestRunner::new(Config::with_cases(48));
    runner
        .run(&plan_strategy(), |(items, gap, reads)| {
            let ranges: Vec<ItemRange> = items.iter().map(|&(s, e)| r(s, e)).collect();
            let (mut rd, _) = optimized(&spec, &pool, &ranges, MaxGap::Bytes(gap));
            for (&(s, e), rs) in items.iter().zip(&reads) {
                // Random reads inside the item (any order), then the whole
                // item front to back with read_exact.
                for &(off, len) in rs {
                    let at = s + off % (e - s);
                    rd.seek(SeekFrom::Start(at)).unwrap();
                    let mut b = vec![0u8; len];
                    let n = rd.read(&mut b).unwrap();
                    prop_assert_eq!(n as u64, (len as u64).min(e - at));
                    prop_assert_eq!(&b[..n], &data[at as usize..at as usize + n]);
                }
                rd.seek(SeekFrom::Start(s)).unwrap();
                let mut whole = vec![0u8; (e - s) as usize];
                rd.read_exact(&mut whole).unwrap();
                prop_assert_eq!(&whole[..], &data[s as usize..e as usize]);
            }
            Ok(())
        })
        .unwrap();
    crate::common::drop_pool_and_check(pool);
}

#[test]
fn range_based_reads_equal_a_slice_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, data) = file_with(dir.path(), 5000);
    let mut runner = TestRunner::new(Config::with_cases(64));
    runner
        .run(
            &(
                0u64..600,
                prop::collection::vec((0u64..5200, 0usize..900), 1..20),
            ),
            |(buffer, reads)| {
                let (mut rd, _) = range_based(&spec, buffer);
                for (at, len) in reads {
                    rd.seek(SeekFrom::Start(at)).unwrap();
                    let mut b = vec![0u8; len];
                    let n = rd.read(&mut b).unwrap();
                    let want = &data[(at as usize).min(5000)..(at as usize + len).min(5000)];
                    prop_assert_eq!(&b[..n], want);
                }
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn range_injection_needs_planned_files_and_allows_an_empty_plan() {
    use shmfetch::dcp::{Checkpoint, StorageReader, load_tensors, plan};
    let pool = WorkerPool::new(2).unwrap();
    let dir = crate::dcp_load::fixture_dir();
    let ckpt = Checkpoint::open(dir.to_str().unwrap(), pool.clone()).unwrap();
    let md = ckpt.metadata().unwrap();
    let after_md = (ckpt.counter().requests(), ckpt.counter().bytes());
    // An empty plan: nothing is opened, nothing fetched.
    let kind = ReaderKind::dcp_optimized(0).unwrap();
    let storage = StorageReader::new(&ckpt, kind, &[]);
    load_tensors(&storage, &md, &[], &mut |_, _, _| panic!("no tensor")).unwrap();
    assert_eq!(
        (ckpt.counter().requests(), ckpt.counter().bytes()),
        after_md
    );
    // A plan with one file's items: other files are refused with guidance.
    let items = plan(&md, &["model.norm.weight".to_string()]).unwrap();
    assert!(items.iter().all(|i| i.relative_path == "__1_0.distcp"));
    let storage = StorageReader::new(&ckpt, kind, &items);
    assert_eq!(storage.ranges().len(), 1);
    let e = storage.open("__0_0.distcp").unwrap_err();
    assert!(matches!(e, Error::InvalidConfig(_)), "{e:?}");
    let m = e.to_string();
    assert!(
        m.contains("no ranges for __0_0.distcp") && m.contains("sequential reader"),
        "{m}"
    );
    // The other kinds read any file.
    for k in [ReaderKind::Sequential, ReaderKind::range_based(0).unwrap()] {
        let mut r = StorageReader::new(&ckpt, k, &items)
            .open("__0_0.distcp")
            .unwrap();
        let mut head = [0u8; 4];
        r.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"PK\x03\x04");
    }
    drop(ckpt);
    crate::common::drop_pool_and_check(pool);
}
