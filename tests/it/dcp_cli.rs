//! `shmfetch dcp ls|export|get`, run as a user would, against the
//! AIStore-style test server.

use std::process::{Command, Output};

use crate::cli::assert_no_orphaned_workers;
use crate::common::sha;
use crate::dcp_load::{check_export, fixture_dir, fixture_server, truth};

const BIN: &str = env!("CARGO_BIN_EXE_shmfetch");

fn dcp(args: &[&str], endpoint: &str) -> Output {
    let out = Command::new(BIN)
        .arg("dcp")
        .args(args)
        .env("AIS_ENDPOINT", endpoint)
        .env_remove("AIS_AUTHN_TOKEN")
        .env_remove("AIS_AUTHN_TOKEN_FILE")
        .output()
        .unwrap();
    assert_no_orphaned_workers();
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn ls_lists_every_item_as_a_table_and_as_json() {
    let srv = fixture_server();
    let t = truth();
    let out = dcp(&["ls", "ais://ckpt/dcp-small/"], &srv.endpoint());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(table.starts_with("FQN "), "{table}");
    for it in t["items"].as_array().unwrap() {
        let want = [
            it["fqn"].as_str().unwrap().to_string(),
            it["relative_path"].as_str().unwrap().to_string(),
            it["offset"].to_string(),
            it["length"].to_string(),
        ];
        let row = table
            .lines()
            .find(|l| want.iter().all(|w| l.split_whitespace().any(|c| c == w)))
            .unwrap_or_else(|| panic!("no row for {want:?} in\n{table}"));
        if let Some(d) = it["dtype"].as_str() {
            assert!(row.contains(d), "{row}");
        } else {
            assert!(row.contains("bytes"), "{row}");
        }
    }
    assert!(
        table.contains("1/2 at [0, 128] size [256, 128]")
            || table.contains("2/2 at [0, 128] size [256, 128]"),
        "column shard shown"
    );
    assert!(
        table.contains("22 FQNs (13 tensors, 9 bytes items), 26 storage items in 4 files"),
        "{table}"
    );

    let out = dcp(&["ls", "--json", "ais://ckpt/dcp-small/"], &srv.endpoint());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["storage"].as_array().unwrap().len(), 26);
    assert_eq!(j["state_dict"]["model.embed.weight"]["dtype"], "bfloat16");
    assert_eq!(j["state_dict"]["config.lr"]["kind"], "bytes");
}

#[test]
fn export_all_and_selected_with_stats() {
    let srv = fixture_server();
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("all.safetensors");
    for reader in ["sequential", "range-based", "dcp-optimized"] {
        let out = dcp(
            &[
                "export",
                "ais://ckpt/dcp-small/",
                "-o",
                o.to_str().unwrap(),
                "--reader",
                reader,
                "-w",
                "3",
                "--stats",
            ],
            &srv.endpoint(),
        );
        let err = text(&out.stderr);
        assert!(out.status.success(), "{reader}: {err}");
        check_export(&o, &[]);
        assert!(err.contains("13 tensors, 1182520 bytes"), "{err}");
        assert!(err.contains("skipped bytes item config.lr"), "{err}");
        assert!(
            err.contains("stats: fetched") && err.contains("checkpoint holds 1220558 bytes"),
            "{err}"
        );
    }
    let only = ["model.norm.weight", "model.layers.0.attn.out.weight"];
    let o = dir.path().join("sel.safetensors");
    for (gap, requests) in [("0", 4), ("32MiB", 4), ("unbounded", 4)] {
        let out = dcp(
            &[
                "export",
                "ais://ckpt/dcp-small/",
                "-o",
                o.to_str().unwrap(),
                "--only",
                only[0],
                "--only",
                only[1],
                "--max-gap",
                gap,
                "--stats",
            ],
            &srv.endpoint(),
        );
        let err = text(&out.stderr);
        assert!(out.status.success(), "{err}");
        check_export(&o, &only);
        // .metadata + one group per file (the two items are in 3 files).
        assert!(
            err.contains(&format!("in {requests} requests")),
            "{gap}: {err}"
        );
    }
}

#[test]
fn get_writes_one_bytes_item() {
    let srv = fixture_server();
    let dir = tempfile::tempdir().unwrap();
    let t = truth();
    for it in t["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == "bytes")
    {
        let fqn = it["fqn"].as_str().unwrap();
        let o = dir.path().join("item.pt");
        let out = dcp(
            &[
                "get",
                "ais://ckpt/dcp-small/",
                fqn,
                "-o",
                o.to_str().unwrap(),
            ],
            &srv.endpoint(),
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(
            sha(&std::fs::read(&o).unwrap()),
            it["item_sha256"].as_str().unwrap(),
            "{fqn}"
        );
    }
    // To stdout, from a local directory.
    let out = Command::new(BIN)
        .args([
            "dcp",
            "get",
            fixture_dir().to_str().unwrap(),
            "config.lr",
            "-o",
            "-",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(&out.stdout[..4], b"PK\x03\x04");
}

#[test]
fn mistakes_get_clear_errors() {
    let srv = fixture_server();
    let ep = srv.endpoint();
    for (args, want) in [
        (
            vec![
                "get",
                "ais://ckpt/dcp-small/",
                "model.embed.weight",
                "-o",
                "/tmp/x",
            ],
            "is a tensor; export it with",
        ),
        (
            vec!["get", "ais://ckpt/dcp-small/", "nope", "-o", "/tmp/x"],
            "no FQN \"nope\"",
        ),
        (
            vec![
                "export",
                "ais://ckpt/dcp-small/",
                "-o",
                "/tmp/x.st",
                "--only",
                "nope",
            ],
            "no FQN \"nope\"",
        ),
        (
            vec![
                "export",
                "ais://ckpt/dcp-small/",
                "-o",
                "/tmp/x.st",
                "--max-gap",
                "-1",
            ],
            "max gap must be >= 0",
        ),
        (
            vec!["ls", "ais://ckpt/elsewhere/"],
            "is this a DCP checkpoint directory",
        ),
        (vec!["ls", "http://127.0.0.1:9/ckpt"], "end it with '/'"),
    ] {
        let out = dcp(&args, &ep);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
