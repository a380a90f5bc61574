#!/usr/bin/env bash
# Runs the Pub/Sub end-to-end tests (emulator-tests/pubsub_emulator.rs, pubsub_bad_input_emulator.rs,
# valve_emulator.rs, alarms_emulator.rs, drain_emulator.rs, routing_emulator.rs, files_emulator.rs)
# against Google's Pub/Sub emulator:
# starts it on a free port, runs the tests, stops it (also on failure).
#
#   bash emulator-tests/run-pubsub-tests.sh [extra cargo test args...]
#
# SLUICE_REQUIRE_EMULATORS=1 makes a test fail (never skip) if the emulator is not reachable.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

EMU_NAME=pubsub-tests
# Our own state dir: a Pub/Sub emulator someone else started (default dir) is neither reused nor
# stopped by this script.
export SLUICE_EMU_DIR="${SLUICE_EMU_DIR:-/tmp/sluice-emulators-pubsub-tests-$$}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$HERE/lib.sh"

stop_emulators_on_exit pubsub

env_lines="$(bash "$HERE/pubsub-emulator.sh" start)"
eval "$env_lines"
export PUBSUB_EMULATOR_HOST
export SLUICE_REQUIRE_EMULATORS=1
log "emulator at $PUBSUB_EMULATOR_HOST"

cd "$HERE/.."
# The tests spawn several `sluice` processes each; two at a time keeps a 2-core machine responsive.
cargo test --test pubsub_emulator --test pubsub_bad_input_emulator --test valve_emulator --test alarms_emulator --test drain_emulator --test routing_emulator --test files_emulator "$@" -- --test-threads="${PUBSUB_TEST_THREADS:-2}"
