//! Fuzz target: see `walwatch::fuzzing::pgoutput`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| walwatch::fuzzing::pgoutput(data));
