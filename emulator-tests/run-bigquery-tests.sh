#!/usr/bin/env bash
# Runs tests/bigquery_emulator.rs against bqemulator: starts the emulator with
# bigquery-emulator.sh (installing it when needed), exports BIGQUERY_EMULATOR_HOST and
# BIGQUERY_STORAGE_EMULATOR_HOST, runs `cargo test --test bigquery_emulator`, and always stops
# the emulator, also when the tests fail or the script is interrupted.
#
#   bash emulator-tests/run-bigquery-tests.sh [extra cargo test args, e.g. a test name]
#
# Exit code: cargo's (0 when every test passed).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE/.."

trap 'bash "$HERE/bigquery-emulator.sh" stop || true' EXIT
env="$(bash "$HERE/bigquery-emulator.sh" start)"
eval "$env"
export BIGQUERY_EMULATOR_HOST BIGQUERY_STORAGE_EMULATOR_HOST
export GOOGLE_CLOUD_PROJECT="${GOOGLE_CLOUD_PROJECT:-test-project}"
echo "bigquery emulator: REST $BIGQUERY_EMULATOR_HOST, gRPC $BIGQUERY_STORAGE_EMULATOR_HOST" >&2
cargo test --test bigquery_emulator -- "$@"
