//! Fuzz target: see `walwatch::fuzzing::framing`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walwatch::fuzzing::framing(data));
