#!/usr/bin/env bash
# Runs the realistic-stream tests (emulator-tests/streams_emulator.rs, issue #16) against
# Google's Pub/Sub emulator, Postgres and Redis: starts the emulator and a private Postgres and
# Redis (stores-emulator.sh) on free ports, runs the tests one at a time (one of them freezes the
# emulator with SIGSTOP), stops them (also on failure).
#
#   bash emulator-tests/run-stream-tests.sh [extra cargo test args...]
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

EMU_NAME=stream-tests
# Our own state dir: the tests read the emulator's pid file in it (to freeze it).
export SLUICE_EMU_DIR="${SLUICE_EMU_DIR:-/tmp/sluice-emulators-stream-tests-$$}"
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
cargo test --test streams_emulator "$@" -- --test-threads=1 --nocapture
