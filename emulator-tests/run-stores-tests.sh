#!/usr/bin/env bash
# Runs the WriteToPostgres / WriteToRedis tests (tests/postgres.rs, tests/redis.rs) and the state
# backends' tests (tests/state_stores.rs) against the machine's Postgres (127.0.0.1:5432, trust
# auth, database `test`) and Redis (127.0.0.1:6379), starting either server when it is not
# running. The tests fail (never skip) without them.
# `run-stores-tests.sh start` only starts the servers (run-tests.sh does this before `cargo test`,
# which includes these suites).
set -euo pipefail
cd "$(dirname "$0")/.."
EMU_NAME=stores
# shellcheck source=emulator-tests/lib.sh
. emulator-tests/lib.sh

wait_for() { # wait_for WHAT SECONDS CMD...
	local what="$1" secs="$2"
	shift 2
	for _ in $(seq 1 $((secs * 10))); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	die "$what did not become ready within ${secs}s"
}

pg_ready() { pg_isready -h 127.0.0.1 -p 5432 -q; }
redis_ready() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; }

if ! pg_ready; then
	need_cmd pg_ctlcluster "apt-get install postgresql"
	log "starting Postgres"
	pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi
wait_for Postgres 60 pg_ready
# The tests use database `test` as user postgres (trust auth on 127.0.0.1).
if ! psql -h 127.0.0.1 -U postgres -d test -Atc 'select 1' >/dev/null 2>&1; then
	log "creating database test"
	psql -h 127.0.0.1 -U postgres -d postgres -c 'CREATE DATABASE test' >/dev/null
fi

if ! redis_ready; then
	need_cmd redis-server "apt-get install redis-server"
	log "starting Redis"
	mkdir -p /var/lib/redis /var/log/redis
	redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
		--dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
wait_for Redis 30 redis_ready

[ "${1:-}" = start ] && { log "Postgres and Redis are up"; exit 0; }
log "Postgres and Redis are up; running the store tests"
cargo test --test postgres --test redis --test state_stores
