//! The fuzz targets of `sluice::fuzzing` on stable Rust: each runs over its committed corpus
//! (`fuzz/corpus/<target>/`) and a fixed number of inputs mutated from it by a deterministic
//! generator, so CI keeps exercising what libFuzzer found without a nightly toolchain or a
//! sanitizer build. Long runs: `fuzz/` (docs/guarantees.md, "Fuzzing").

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

/// Mutated inputs per target per `cargo test`: under a second each in a debug build.
/// `SLUICE_FUZZ_MUTATIONS=N` runs more (a longer search on stable Rust, without libFuzzer's
/// coverage guidance); `SLUICE_FUZZ_SEED=N` changes the sequence.
const MUTATIONS: usize = 400;

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

/// Fragments that reach the loader's and the compiler's interesting paths when spliced in.
const TOKENS: &[&[u8]] = &[
    b"&a ",
    b"*a",
    b"<<: ",
    b"\0",
    b"\xef\xbb\xbf",
    b"{{ x }}",
    b"{% for i in range(3) %}",
    b"{% endfor %}",
    b"[",
    b"]",
    b"{",
    b"}",
    b"'",
    b"\"",
    b": ",
    b"\n  - ",
    b"\n",
    b"---\n",
    b"!!str ",
    b"type: ",
    b"windowing: {type: sliding, size: 1d, period: 1ms}",
    b"num_shards: ",
    b"99999999999999999999",
    b"-1",
    b"sum(",
    b"(",
    b")",
    b" OVER ()",
    b"CAST(",
    b" AS ",
    b"pg_sleep(1)",
    b"\xff",
    b"\t",
    b"#",
    b"language: sql",
    b"keep: ",
    b"1e309",
    b"NULL",
];

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let inputs: Vec<_> = files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    assert!(inputs.len() >= 10, "{target}: the corpus is too small");
    inputs
}

/// xorshift64*: the same inputs on every run and machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, inputs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut data = inputs[rng.below(inputs.len())].1.clone();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(6) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                data.splice(at..at, t.iter().copied());
            }
            2 if !data.is_empty() => {
                let end = (at + 1 + rng.below(16)).min(data.len());
                data.drain(at.min(end)..end);
            }
            3 if !data.is_empty() => {
                let start = rng.below(data.len());
                let end = (start + 1 + rng.below(64)).min(data.len());
                let piece = data[start..end].to_vec();
                data.splice(at..at, piece);
            }
            4 => {
                let other = &inputs[rng.below(inputs.len())].1;
                let from = rng.below(other.len() + 1);
                data.truncate(at);
                data.extend_from_slice(&other[from..]);
            }
            _ => data.truncate(at),
        }
    }
    data
}

/// Runs `target` on every corpus input and `MUTATIONS` mutants, reporting the first failure
/// with the input (escaped) so it can be added to the corpus. On an 8 MiB stack, as the
/// `sluice` binary's threads have (a test thread has 2 MiB).
fn exercise(name: &'static str, target: fn(&[u8]), seed: u64) {
    std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || exercise_here(name, target, seed))
        .unwrap()
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

fn exercise_here(name: &str, target: fn(&[u8]), seed: u64) {
    let inputs = corpus(name);
    let run = |label: &str, data: &[u8]| {
        if catch_unwind(AssertUnwindSafe(|| target(data))).is_err() {
            panic!(
                "{name}: {label} broke the target's invariant; input: {:?}",
                String::from_utf8_lossy(data)
            );
        }
    };
    for (file, data) in &inputs {
        run(file, data);
    }
    let mut rng = Rng(seed ^ env_number("SLUICE_FUZZ_SEED").unwrap_or(0));
    let mutations = env_number("SLUICE_FUZZ_MUTATIONS").map_or(MUTATIONS, |n| n as usize);
    for i in 0..mutations {
        let data = mutate(&mut rng, &inputs);
        run(&format!("mutant {i}"), &data);
    }
}

#[test]
fn pipeline_loader_holds_on_its_corpus_and_mutants() {
    exercise(
        "pipeline_loader",
        sluice::fuzzing::pipeline_loader,
        0x5eed_0001,
    );
}

#[test]
fn sql_expression_holds_on_its_corpus_and_mutants() {
    exercise(
        "sql_expression",
        sluice::fuzzing::sql_expression,
        0x5eed_0002,
    );
}
