//! Fuzz target: see `walwatch::fuzzing::values`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walwatch::fuzzing::values(data));
