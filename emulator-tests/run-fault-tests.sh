#!/usr/bin/env bash
# Runs the fault harness (emulator-tests/faults_emulator.rs): workers with durable state are
# SIGKILLed at random points and restarted against Google's Pub/Sub emulator, Postgres (sink and
# state store) and Redis; the final totals must be exact. Starts the emulator and a private
# Postgres and Redis (stores-emulator.sh) on free ports; stops them (also on failure).
#
#   bash emulator-tests/run-fault-tests.sh [extra cargo test args...]
#   SLUICE_FAULT_SEED=N bash emulator-tests/run-fault-tests.sh   # replay a kill schedule
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

EMU_NAME=fault-tests
export SLUICE_EMU_DIR="${SLUICE_EMU_DIR:-/tmp/sluice-emulators-fault-tests-$$}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$HERE/lib.sh"

stop_emulators_on_exit pubsub stores

env_lines="$(bash "$HERE/stores-emulator.sh" start)"
eval "$env_lines"
export SLUICE_TEST_PG_ADDR SLUICE_TEST_REDIS_ADDR
env_lines="$(bash "$HERE/pubsub-emulator.sh" start)"
eval "$env_lines"
export PUBSUB_EMULATOR_HOST
export SLUICE_REQUIRE_EMULATORS=1
log "emulator at $PUBSUB_EMULATOR_HOST"

cd "$HERE/.."
# One test at a time: each runs and kills many workers, and the kill points are what is tested.
cargo test --test faults_emulator "$@" -- --test-threads=1 --nocapture
