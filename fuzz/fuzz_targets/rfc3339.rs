//! libFuzzer entry for `sluice::fuzzing::data::rfc3339` (its invariant is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::data::rfc3339(data));
