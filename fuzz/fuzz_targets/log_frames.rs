//! Fuzz target: the write-ahead log record decoder (`wal::frame`), frame after frame.
//! The invariants checked are documented on `dsm::fuzzing::log_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dsm::fuzzing::log_frames(data));
