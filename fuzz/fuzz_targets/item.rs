//! Fuzz target: A DCP storage item (torch.save zip): archive, data.pkl, layout.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmfetch::fuzzing::item(data));
