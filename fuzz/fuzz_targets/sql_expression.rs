//! libFuzzer entry for `sluice::fuzzing::sql_expression` (the SQL expression compiler): no
//! panic, and bounded messages.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice::fuzzing::sql_expression(data));
