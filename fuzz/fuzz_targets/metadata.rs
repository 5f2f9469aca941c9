//! Fuzz target: DCP `.metadata`: the safe pickle decoder and the mapping onto Metadata.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmfetch::fuzzing::metadata(data));
