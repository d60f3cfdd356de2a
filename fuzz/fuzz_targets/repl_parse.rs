//! Fuzz target: the REPL parser (`client::repl::parse`); parsed commands round-trip.
//! The invariants checked are documented on `dsm::fuzzing::repl_line`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dsm::fuzzing::repl_line(data));
