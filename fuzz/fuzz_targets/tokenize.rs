//! Fuzz target: `quoting::tokenize` and its inverse `quoting::escape`.
//! The invariants checked are documented on `dsm::fuzzing::tokenize_escape`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dsm::fuzzing::tokenize_escape(data));
