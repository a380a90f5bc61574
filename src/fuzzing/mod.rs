//! Fuzz targets as library functions, so `fuzz/` (libFuzzer, by hand) and `cargo test` (a
//! committed corpus plus deterministic mutations) run the same code. docs/fuzzing.md.

pub mod data;
