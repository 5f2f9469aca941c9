//! Selective export: the server's request log shows only the ranges of the
//! chosen items, coalesced by `max_gap_size` — one request per group.

use std::collections::BTreeMap;

use shmfetch::WorkerPool;
use shmfetch::dcp::{MaxGap, ReaderKind, export_safetensors};
use shmfetch::testing::server::TestServer;

use crate::dcp_load::{ais_checkpoint, check_export, fixture_server, truth};

pub(crate) const ONLY: &[&str] = &[
    "model.norm.weight",
    "buffers.mask",
    "model.layers.0.attn.out.weight",
];

/// The groups a load of ONLY must fetch, worked out from the ground truth
/// (not from our planner): per file, items sorted by offset, a new group
/// wherever the gap to the previous item exceeds `max_gap`.
pub(crate) fn expected_groups(max_gap: MaxGap) -> BTreeMap<String, Vec<(u64, u64)>> {
    let t = truth();
    let mut by_file: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for it in t["items"].as_array().unwrap() {
        if ONLY.contains(&it["fqn"].as_str().unwrap()) {
            let (o, l) = (
                it["offset"].as_u64().unwrap(),
                it["length"].as_u64().unwrap(),
            );
            by_file
                .entry(it["relative_path"].as_str().unwrap().to_string())
                .or_default()
                .push((o, o + l));
        }
    }
    let mut out = BTreeMap::new();
    for (f, mut items) in by_file {
        items.sort();
        let mut groups: Vec<(u64, u64)> = Vec::new();
        for (s, e) in items {
            match groups.last_mut() {
                Some(g)
                    if match max_gap {
                        MaxGap::Bytes(m) => s - g.1 <= m,
                        MaxGap::Unbounded => true,
                    } =>
                {
                    g.1 = e
                }
                _ => groups.push((s, e)),
            }
        }
        out.insert(f, groups);
    }
    out
}

/// Data-file ranges the targets served, per file, from the request log.
fn served_ranges(srv: &TestServer) -> BTreeMap<String, Vec<(u64, u64)>> {
    served(srv, |r| r.role.starts_with("target")).0
}

/// [`served_ranges`] of a test server in S3 mode, and the number of
/// one-byte size probes (`bytes=0-0`, one per file opened), left out of
/// the ranges.
pub(crate) fn served_ranges_s3(srv: &TestServer) -> (BTreeMap<String, Vec<(u64, u64)>>, usize) {
    served(srv, |_| true)
}

fn served(
    srv: &TestServer,
    keep: impl Fn(&shmfetch::testing::server::LoggedRequest) -> bool,
) -> (BTreeMap<String, Vec<(u64, u64)>>, usize) {
    let mut out: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    let mut probes = 0;
    for r in srv.requests() {
        if r.method != "GET" || !keep(&r) {
            continue;
        }
        if r.range.as_deref() == Some("bytes=0-0") && !r.role.starts_with("target") {
            probes += 1;
            continue;
        }
        if !r.object.ends_with(".distcp") {
            continue;
        }
        let range = r.range.as_deref().expect("every data GET is a range");
        let (a, b) = range
            .strip_prefix("bytes=")
            .and_then(|x| x.split_once('-'))
            .unwrap();
        let file = r.object.rsplit('/').next().unwrap().to_string();
        out.entry(file)
            .or_default()
            .push((a.parse().unwrap(), b.parse::<u64>().unwrap() + 1));
    }
    for v in out.values_mut() {
        v.sort();
    }
    (out, probes)
}

#[test]
fn only_the_chosen_items_are_fetched_one_request_per_group() {
    let only: Vec<String> = ONLY.iter().map(|s| s.to_string()).collect();
    let dir = tempfile::tempdir().unwrap();
    let pool = WorkerPool::new(2).unwrap();
    let mut seen = Vec::new();
    for (max_gap, want_requests) in [
        (MaxGap::Bytes(0), 4),
        (MaxGap::default(), 3),
        (MaxGap::Unbounded, 3),
        (MaxGap::Bytes(4096), 4),
    ] {
        let srv = fixture_server();
        let ckpt = ais_checkpoint(&srv, &pool);
        let md = ckpt.metadata().unwrap();
        let after_metadata = ckpt.counter().requests();
        let out = dir.path().join("sel.safetensors");
        let kind = ReaderKind::DcpOptimized { max_gap };
        let rep = export_safetensors(&ckpt, &md, kind, &only, &out, &mut |_, _| {}).unwrap();
        check_export(&out, ONLY);

        let want = expected_groups(max_gap);
        let got = served_ranges(&srv);
        assert_eq!(got, want, "{kind}: ranges fetched");
        let n: usize = got.values().map(Vec::len).sum();
        assert_eq!(n, want_requests, "{kind}: requests");
        let bytes: u64 = got.values().flatten().map(|(a, b)| b - a).sum();
        assert_eq!(rep.requests - after_metadata, n as u64, "{kind}: our count");
        let md_len = std::fs::metadata(crate::dcp_load::fixture_dir().join(".metadata"))
            .unwrap()
            .len();
        assert_eq!(rep.bytes_fetched, bytes + md_len, "{kind}: bytes");
        // Nothing beyond the chosen items and the bridged gaps.
        let item_bytes: u64 = md
            .storage
            .iter()
            .filter(|s| ONLY.contains(&s.fqn.as_str()))
            .map(|s| s.length)
            .sum();
        assert!(bytes >= item_bytes);
        if max_gap == MaxGap::Bytes(0) {
            assert_eq!(bytes, item_bytes, "max_gap 0 bridges no gap");
        }
        assert!(
            bytes < md.stored_bytes() / 2,
            "{bytes} of {}",
            md.stored_bytes()
        );
        seen.push((kind.to_string(), n, bytes));
    }
    eprintln!("{seen:?}");
    crate::common::drop_pool_and_check(pool);
}
