#!/usr/bin/env bash
# Runs the lake → Pub/Sub → windowed pipeline → lake loop (emulator-tests/loop_emulator.rs)
# against both emulators: starts the Pub/Sub emulator (pubsub-emulator.sh) and bqemulator
# (bigquery-emulator.sh, installing it when needed), runs the test, and always stops both, also
# when the test fails or the script is interrupted.
#
#   bash emulator-tests/run-loop-tests.sh [extra cargo test args, e.g. a test name]
#
# Exit code: cargo's (0 when every test passed).
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

EMU_NAME=loop-tests
# Our own state dir: emulators someone else started are neither reused nor stopped here.
export SLUICE_EMU_DIR="${SLUICE_EMU_DIR:-/tmp/sluice-emulators-loop-tests-$$}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$HERE/lib.sh"

stop_emulators_on_exit pubsub bigquery

eval "$(bash "$HERE/pubsub-emulator.sh" start)"
eval "$(bash "$HERE/bigquery-emulator.sh" start)"
export PUBSUB_EMULATOR_HOST BIGQUERY_EMULATOR_HOST BIGQUERY_STORAGE_EMULATOR_HOST
export GOOGLE_CLOUD_PROJECT="${GOOGLE_CLOUD_PROJECT:-test-project}"
export SLUICE_REQUIRE_EMULATORS=1
log "Pub/Sub at $PUBSUB_EMULATOR_HOST, BigQuery REST at $BIGQUERY_EMULATOR_HOST"

cd "$HERE/.."
# One test at a time: bqemulator's Storage Write appends use its DuckDB connection without the
# lock its REST handlers take, so an append beside another test's REST call can fail or hang
# (docs/bigquery.md, "The emulator").
cargo test --test loop_emulator "$@" -- --test-threads=1
