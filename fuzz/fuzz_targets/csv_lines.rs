//! libFuzzer entry for `sluice::fuzzing::data::csv_lines` (its invariant is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::data::csv_lines(data));
