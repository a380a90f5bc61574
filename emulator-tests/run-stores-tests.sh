#!/usr/bin/env bash
# Runs the WriteToPostgres / WriteToRedis tests (emulator-tests/postgres.rs, redis.rs) and the
# state backends' tests (emulator-tests/state_stores.rs) against a private Postgres and Redis that
# stores-emulator.sh starts on free ports (their addresses reach the tests as
# SLUICE_TEST_PG_ADDR / SLUICE_TEST_REDIS_ADDR) and stops afterwards, also on failure. The
# machine's own servers are not used. The tests fail (never skip) without the servers.
#
#   bash emulator-tests/run-stores-tests.sh [extra cargo test args...]
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

EMU_NAME=stores-tests
export SLUICE_EMU_DIR="${SLUICE_EMU_DIR:-/tmp/sluice-emulators-stores-tests-$$}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$HERE/lib.sh"

stop_emulators_on_exit stores
env_lines="$(bash "$HERE/stores-emulator.sh" start)"
eval "$env_lines"
export SLUICE_TEST_PG_ADDR SLUICE_TEST_REDIS_ADDR
log "Postgres at $SLUICE_TEST_PG_ADDR, Redis at $SLUICE_TEST_REDIS_ADDR; running the store tests"

cd "$HERE/.."
cargo test --test postgres --test redis --test state_stores "$@"
