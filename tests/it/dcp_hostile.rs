//! Hostile or broken checkpoints, and the `dcp` commands' output as data:
//! a `.metadata` built to blow up the decoder, sizes whose byte counts
//! overflow, corrupt files named in their errors, exports that are
//! byte-identical for identical input, outputs refused before any fetch,
//! and `dcp ls` into a pipe that closes early.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shmfetch::dcp::Checkpoint;
use shmfetch::{Error, WorkerPool};

use crate::cli::assert_no_orphaned_workers;
use crate::common::sha;
use crate::dcp_load::{fixture_dir, fixture_server};
use crate::dcp_synth::{M, P};

const BIN: &str = env!("CARGO_BIN_EXE_shmfetch");

/// A `.metadata` of one tensor `fqn` (`dtype`, `size`) stored as `chunks`
/// (offsets, sizes), each chunk `i` in `__0_0.distcp` at `items[i]`
/// (offset, length).
fn one_tensor_metadata(
    fqn: &str,
    dtype: &str,
    size: &[u64],
    chunks: &[(&[u64], &[u64])],
    items: &[(u64, u64)],
) -> Vec<u8> {
    let mut p = P::new();
    p.dataclass(M, "Metadata", |p| {
        p.str("state_dict_metadata").op(b"}(");
        p.str(fqn).dataclass(M, "TensorStorageMetadata", |p| {
            p.str("properties")
                .global(M, "TensorProperties")
                .op(b")\x81(");
            p.global("torch", dtype);
            p.global("torch.serialization", "_get_layout")
                .op(b"(")
                .str("torch.strided")
                .op(b"tR");
            p.op(b"\x89")
                .global(M, "_MEM_FORMAT_ENCODING")
                .op(b"(")
                .int(0)
                .op(b"tR");
            p.op(b"\x89").ints_tuple(&vec![1; size.len()]).op(b"tb");
            p.str("size").size(size).str("chunks").op(b"](");
            for (off, sizes) in chunks {
                p.dataclass(M, "ChunkStorageMetadata", |p| {
                    p.str("offsets").size(off).str("sizes").size(sizes);
                });
            }
            p.op(b"e");
        });
        p.op(b"u").str("storage_data").op(b"}(");
        for (i, ((off, _), (at, len))) in chunks.iter().zip(items).enumerate() {
            p.dataclass(M, "MetadataIndex", |p| {
                p.str("fqn").str(fqn);
                p.str("offset").size(off).str("index").int(i as u64);
            });
            p.dataclass(
                "torch.distributed.checkpoint.filesystem",
                "_StorageInfo",
                |p| {
                    p.str("relative_path")
                        .str("__0_0.distcp")
                        .str("offset")
                        .int(*at)
                        .str("length")
                        .int(*len);
                },
            );
        }
        p.op(b"u").str("version").str("1.0.0");
    });
    p.done()
}

/// A checkpoint directory holding `metadata` and a 4 KiB data file.
fn checkpoint_with(metadata: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".metadata"), metadata).unwrap();
    std::fs::write(dir.path().join("__0_0.distcp"), vec![0u8; 4096]).unwrap();
    dir
}

fn metadata_error(dir: &Path) -> Error {
    let pool = WorkerPool::new(1).unwrap();
    let ckpt = Checkpoint::open(dir.to_str().unwrap(), pool.clone()).unwrap();
    let e = ckpt.metadata().unwrap_err();
    drop(ckpt);
    crate::common::drop_pool_and_check(pool);
    e
}

/// Runs `shmfetch dcp ARGS` with a hang guard of 60 s; returns (exit
/// code, stdout, stderr).
fn dcp(args: &[&str], endpoint: Option<&str>) -> (i32, Vec<u8>, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("dcp")
        .args(args)
        .env_remove("AIS_AUTHN_TOKEN")
        .env_remove("AIS_AUTHN_TOKEN_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(e) = endpoint {
        cmd.env("AIS_ENDPOINT", e);
    }
    let child = cmd.spawn().unwrap();
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    let out = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("shmfetch dcp {args:?} hung (killed after 60 s)");
        }
    };
    assert_no_orphaned_workers();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `[]` memoized, then `depth` lists each holding the previous one twice
/// by memo reference (2^depth leaves once expanded).
fn nested_memo_pickle(depth: u8) -> Vec<u8> {
    let mut d = vec![0x80, 2, b']', b'q', 0];
    for i in 1..=depth {
        d.extend_from_slice(&[b'(', b'h', i - 1, b'h', i - 1, b'l', b'q', i]);
    }
    d.push(b'.');
    d
}

#[test]
fn pickle_nested_memo_references_in_metadata_are_an_error_not_a_hang() {
    // 198 bytes at depth 24 took 6-12 s; at 32 levels it would take hours.
    let dir = checkpoint_with(&nested_memo_pickle(32));
    let e = metadata_error(dir.path());
    assert!(matches!(e, Error::Pickle { .. }), "{e:?}");
    let m = e.to_string();
    assert!(m.contains(".metadata") && m.contains("budget"), "{m}");
    let (rc, _, err) = dcp(&["ls", dir.path().to_str().unwrap()], None);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("budget") && !err.contains("panicked"), "{err}");
}

#[test]
fn metadata_sizes_that_overflow_are_an_error_naming_the_fqn() {
    // 2^33 x 2^33 float32: 2^68 bytes, more than u64 holds.
    let big: &[u64] = &[1 << 33, 1 << 33];
    let md = one_tensor_metadata("model.huge", "float32", big, &[(&[0, 0], big)], &[(0, 100)]);
    let dir = checkpoint_with(&md);
    let e = metadata_error(dir.path());
    assert!(matches!(e, Error::Checkpoint { .. }), "{e:?}");
    let m = e.to_string();
    assert!(
        m.contains("model.huge") && m.contains("overflow") && m.contains(".metadata"),
        "{m}"
    );
    for args in [
        vec!["ls", dir.path().to_str().unwrap()],
        vec!["export", dir.path().to_str().unwrap(), "-o"],
    ] {
        let out = dir.path().join("out.safetensors");
        let mut args = args.clone();
        if args[0] == "export" {
            args.push(out.to_str().unwrap());
        }
        let (rc, _, err) = dcp(&args, None);
        assert_eq!(rc, 1, "{args:?}: {err}");
        assert!(
            err.contains("model.huge") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
        assert!(!out.exists());
    }
}

#[test]
fn metadata_tensor_bigger_than_its_storage_items_is_an_error_naming_the_fqn() {
    // 4 MiB of float32 in a 100-byte item: no honest checkpoint does that,
    // and trusting it would allocate whatever .metadata says.
    let size: &[u64] = &[1024, 1024];
    let md = one_tensor_metadata("model.w", "float32", size, &[(&[0, 0], size)], &[(0, 100)]);
    let e = metadata_error(checkpoint_with(&md).path());
    let m = e.to_string();
    assert!(matches!(e, Error::Checkpoint { .. }), "{e:?}");
    assert!(
        m.contains("model.w") && m.contains("4194304 bytes") && m.contains("100"),
        "{m}"
    );
    // Chunks that do not cover their tensor: a 2^40-element tensor with one
    // 1-element chunk (assembling it would allocate 4 TiB).
    let md = one_tensor_metadata(
        "model.sparse",
        "float32",
        &[1 << 20, 1 << 20],
        &[(&[0, 0], &[1, 1])],
        &[(0, 100)],
    );
    let m = metadata_error(checkpoint_with(&md).path()).to_string();
    assert!(m.contains("model.sparse") && m.contains("cover"), "{m}");
}

#[test]
fn corrupt_metadata_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let meta = std::fs::read(fixture_dir().join(".metadata")).unwrap();
    std::fs::write(dir.path().join(".metadata"), &meta[..3000]).unwrap();
    let file = format!("{}/.metadata", dir.path().display());
    let e = metadata_error(dir.path());
    assert!(matches!(e, Error::Pickle { .. }), "{e:?}");
    let m = e.to_string();
    assert!(
        m.contains(&format!("{file} is truncated at byte 3000"))
            && m.contains("not a complete DCP metadata pickle"),
        "{m}"
    );
    let (rc, _, err) = dcp(&["ls", dir.path().to_str().unwrap()], None);
    assert_eq!(rc, 1);
    assert!(err.contains(&format!("{file} is truncated")), "{err}");
    // Not a pickle at all, and a pickle that is not DCP metadata.
    for (bytes, want) in [
        (&b"{\"not\": \"a pickle\"}"[..], "not a DCP metadata pickle"),
        (&b"\x80\x02}q\x00."[..], "expected a .Metadata object"),
    ] {
        std::fs::write(dir.path().join(".metadata"), bytes).unwrap();
        let m = metadata_error(dir.path()).to_string();
        assert!(m.contains(&file) && m.contains(want), "{m}");
    }
}

/// A copy of the fixture under `parent/name`.
fn copy_fixture_to(parent: &Path, name: &str) -> std::path::PathBuf {
    let d = parent.join(name);
    std::fs::create_dir(&d).unwrap();
    for e in std::fs::read_dir(fixture_dir()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
    }
    d
}

#[test]
fn dcp_export_is_byte_identical_for_identical_input() {
    let tmp = tempfile::tempdir().unwrap();
    let a = copy_fixture_to(tmp.path(), "a");
    let b = copy_fixture_to(tmp.path(), "somewhere-else");
    let mut shas = Vec::new();
    for (i, dir) in [&a, &a, &b, &b].iter().enumerate() {
        let out = tmp.path().join(format!("out{i}.safetensors"));
        let (rc, _, err) = dcp(
            &[
                "export",
                dir.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                "-w",
                "2",
            ],
            None,
        );
        assert_eq!(rc, 0, "{err}");
        let bytes = std::fs::read(&out).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), 13);
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = String::from_utf8_lossy(&bytes[8..8 + header_len]).into_owned();
        assert!(
            !header.contains(tmp.path().to_str().unwrap()),
            "the checkpoint's path is in the header: {header}"
        );
        shas.push(sha(&bytes));
    }
    assert!(shas.iter().all(|s| *s == shas[0]), "{shas:?}");
}

#[test]
fn dcp_export_to_a_directory_or_a_missing_parent_is_refused_before_any_fetch() {
    let srv = fixture_server();
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no/such/dir/out.safetensors");
    for (out, want) in [
        (tmp.path().to_path_buf(), "is a directory"),
        (missing.clone(), "does not exist"),
    ] {
        let (rc, _, err) = dcp(
            &[
                "export",
                "ais://ckpt/dcp-small/",
                "-o",
                out.to_str().unwrap(),
            ],
            Some(&srv.endpoint()),
        );
        // A bad -o is a usage error, like every bad flag value.
        assert_eq!(rc, 2, "{err}");
        assert!(err.contains(want), "{err}");
        let reqs = srv.requests();
        assert!(
            reqs.is_empty(),
            "{} requests reached the server",
            reqs.len()
        );
    }
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

/// Spawns `shmfetch ARGS` with stdout a 4 KiB pipe, reads `lines` lines,
/// closes the pipe and returns (exit code, stderr).
fn into_head(args: &[&str], lines: usize) -> (i32, String) {
    use std::os::fd::AsFd;
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    // The smallest pipe: whatever is left after the first lines cannot fit
    // in it, so the command is still writing when the pipe closes.
    nix::fcntl::fcntl(w.as_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(4096)).unwrap();
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(w))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut rd = BufReader::new(std::fs::File::from(r));
    for _ in 0..lines {
        let mut l = String::new();
        rd.read_line(&mut l).unwrap();
    }
    drop(rd);
    let start = Instant::now();
    let out = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            // A hang guard that leaves no process behind.
            let _ = child.kill();
            let _ = child.wait();
            panic!("shmfetch {args:?} hung (killed after 60 s)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_no_orphaned_workers();
    (out.code().unwrap_or(-1), err)
}

#[test]
fn dcp_ls_json_into_head_is_a_quiet_success() {
    let dir = fixture_dir();
    let (rc, err) = into_head(&["dcp", "ls", dir.to_str().unwrap(), "--json"], 2);
    assert_eq!((rc, err.as_str()), (0, ""));
}

#[test]
fn dcp_ls_into_a_closed_pipe_reports_the_broken_pipe_instead_of_panicking() {
    // What this branch guarantees on its own: the write error reaches main
    // as an io::Error (printed as an error, exit 1), never a panic (101).
    // With h-cli's EPIPE handling main turns it into a quiet exit 0.
    let dir = fixture_dir();
    let (rc, err) = into_head(&["dcp", "ls", dir.to_str().unwrap(), "--json"], 2);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        (rc == 0 && err.is_empty()) || (rc == 1 && err.contains("Broken pipe")),
        "{rc}: {err}"
    );
}
