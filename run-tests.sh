#!/usr/bin/env bash
# Runs every test Sluice has: unit and integration tests, the `tests:` section of every example
# pipeline, and the emulator suites in emulator-tests/ (each script there installs and starts
# what it needs, runs its tests and stops it). This is the README's test command; CI calls it.
set -euo pipefail
cd "$(dirname "$0")"

target="${CARGO_TARGET_DIR:-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== build"
cargo build --all-targets

echo "== golden pipelines: validate and run their tests: sections"
"$target/debug/sluice" validate pipelines/*.yaml
"$target/debug/sluice" test pipelines/*.yaml

echo "== unit and integration tests (no servers needed: the store tests run in the loop below)"
cargo test

echo "== container image and Kubernetes manifests"
bash k8s/check.sh

shopt -s nullglob
for suite in emulator-tests/run-*.sh; do
  echo "== $suite"
  bash "$suite"
done
