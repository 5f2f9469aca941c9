//! Fuzz target: Content-Range, Range and size parsing (src/range.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmfetch::fuzzing::range(data));
