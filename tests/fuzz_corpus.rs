//! The fuzz targets (`sluice::fuzzing::data`) over the committed corpus in `fuzz/corpus/<target>/`
//! and a fixed number of deterministic mutations of it, so CI exercises them on stable Rust
//! without a fuzzing engine. Long runs: `fuzz/` with cargo-fuzz (docs/fuzzing.md).

use std::path::PathBuf;

use sluice::fuzzing::data::{Mutator, TARGETS};

/// Mutated inputs per target per run: about a second for all targets in a debug build.
/// `SLUICE_FUZZ_MUTATIONS=N` runs more (a longer search on stable Rust, by hand).
const MUTATIONS: usize = 3000;

fn mutations() -> usize {
    std::env::var("SLUICE_FUZZ_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MUTATIONS)
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

fn run(target: &str) {
    let (_, f) = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a known target");
    let files = corpus(target);
    assert!(
        files.len() >= 20,
        "{target}: the corpus has {} files",
        files.len()
    );
    for (name, bytes) in &files {
        let result = std::panic::catch_unwind(|| f(bytes));
        assert!(
            result.is_ok(),
            "{target}: corpus file {name} broke the invariant"
        );
    }
    let seed = std::env::var("SLUICE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let mut m = Mutator::new(seed ^ target.len() as u64);
    let mut last = Vec::new();
    for i in 0..mutations() {
        let (_, base) = &files[i % files.len()];
        let (_, other) = &files[(i * 7 + 3) % files.len()];
        // Every other input mutates the previous one again: deeper edits than one step.
        let input = if i % 2 == 1 {
            m.mutate(&last, other)
        } else {
            m.mutate(base, other)
        };
        let result = std::panic::catch_unwind(|| f(&input));
        assert!(
            result.is_ok(),
            "{target}: mutation {i} broke the invariant; input: {:?}",
            String::from_utf8_lossy(&input)
        );
        last = input;
    }
}

#[test]
fn json_lines() {
    run("json_lines");
}

#[test]
fn csv_lines() {
    run("csv_lines");
}

#[test]
fn pubsub_messages() {
    run("pubsub_messages");
}

#[test]
fn rfc3339() {
    run("rfc3339");
}
