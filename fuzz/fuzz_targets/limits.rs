//! Fuzz target: request validation (`limits::Limits`) against its specification.
//! The invariants checked are documented on `dsm::fuzzing::limits`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dsm::fuzzing::limits(data));
