//! Inputs the fuzzers found (`scripts/fuzz.sh`), replayed through the same
//! entry points the fuzz targets call (`shmfetch::fuzzing`, feature
//! `fuzzing`): each was a crash, a hang or an out-of-memory before its fix
//! and must now be handled, quickly. Files live in
//! `tests/fixtures/fuzz/<target>/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

fn fuzz_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(target)
}

/// Feeds `file` to `f` on a thread, with a 20 s hang guard.
fn replay(f: fn(&[u8]), file: &Path) {
    let data = std::fs::read(file).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f(&data);
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{} hung", file.display()),
        Err(_) => panic!("{} panicked", file.display()),
    }
}

fn replay_all(target: &str, f: fn(&[u8])) -> usize {
    let Ok(dir) = std::fs::read_dir(fuzz_dir(target)) else {
        return 0;
    };
    let mut n = 0;
    for e in dir {
        replay(f, &e.unwrap().path());
        n += 1;
    }
    n
}

#[test]
fn every_input_the_fuzzers_found_is_handled() {
    let n = replay_all("metadata", shmfetch::fuzzing::metadata)
        + replay_all("item", shmfetch::fuzzing::item)
        + replay_all("range", shmfetch::fuzzing::range)
        + replay_all("ais_error", shmfetch::fuzzing::ais_error)
        + replay_all("s3_error", shmfetch::fuzzing::s3_error);
    assert!(n > 0, "no fuzz regression inputs found");
}
