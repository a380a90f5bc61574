//! libFuzzer entry for `sluice::fuzzing::pipeline_loader` (YAML + Jinja + validation): no
//! panic, and every refusal has a position.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::pipeline_loader(data));
