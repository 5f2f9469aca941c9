//! Fuzz target: AIStore's JSON error classification (src/source/aistore.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmfetch::fuzzing::ais_error(data));
