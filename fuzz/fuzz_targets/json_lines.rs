//! libFuzzer entry for `sluice::fuzzing::data::json_lines` (its invariant is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::data::json_lines(data));
