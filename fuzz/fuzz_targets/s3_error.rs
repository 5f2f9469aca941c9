//! Fuzz target: S3's XML error classification (src/source/s3.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmfetch::fuzzing::s3_error(data));
