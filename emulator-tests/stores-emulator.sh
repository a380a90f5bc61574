#!/usr/bin/env bash
# Start/stop a private Redis and a private PostgreSQL cluster for the store tests, each on a free
# loopback port with its data in $SLUICE_EMU_DIR: the machine's own servers (if any) are neither
# used nor touched.
#
#   eval "$(emulator-tests/stores-emulator.sh start)"   # sets SLUICE_TEST_PG_ADDR, SLUICE_TEST_REDIS_ADDR
#   emulator-tests/stores-emulator.sh stop
#
# Postgres: a fresh `initdb` cluster (trust auth, superuser `postgres`, database `test`, TLS on
# with a throwaway self-signed certificate, as `tls: require` needs), fsync off. Started as the
# `postgres` user when run as root (Postgres refuses to run as root). Binaries come from
# /usr/lib/postgresql/*/bin (Debian's postgresql package) or PATH. Redis: `redis-server` with no
# persistence.
# Env: SLUICE_EMU_DIR (state dir, default /tmp/sluice-emulators), STORES_START_TIMEOUT (seconds,
# default 60).
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

EMU_NAME=stores
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$HERE/lib.sh"

PG_DIR="$SLUICE_EMU_DIR/postgres"
PG_PIDFILE="$SLUICE_EMU_DIR/postgres.pid"
PG_PORTFILE="$SLUICE_EMU_DIR/postgres.port"
PG_LOG="$SLUICE_EMU_DIR/postgres.log"
REDIS_PIDFILE="$SLUICE_EMU_DIR/redis.pid"
REDIS_PORTFILE="$SLUICE_EMU_DIR/redis.port"
REDIS_LOG="$SLUICE_EMU_DIR/redis.log"
TIMEOUT="${STORES_START_TIMEOUT:-60}"

usage() {
	cat >&2 <<'EOF'
usage: stores-emulator.sh start|stop|status
  start   start private Postgres and Redis on 127.0.0.1 and print their `export ...` lines
  stop    stop both (whole process groups) and delete their data, idempotent
  status  print the export lines if both run, exit 1 otherwise
EOF
	exit 2
}

pg_bin() { # pg_bin NAME: the newest installed Postgres's NAME, else NAME from PATH
	local dir
	dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
	if [ -n "$dir" ] && [ -x "$dir/$1" ]; then
		echo "$dir/$1"
	else
		need_cmd "$1" "apt-get install postgresql"
		command -v "$1"
	fi
}

# as_pg CMD...: run CMD as the user that owns the cluster (`postgres` when we are root).
as_pg() {
	if [ "$(id -u)" -eq 0 ]; then
		setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
	else
		"$@"
	fi
}

print_exports() {
	echo "export SLUICE_TEST_PG_ADDR=127.0.0.1:$(cat "$PG_PORTFILE")"
	echo "export SLUICE_TEST_REDIS_ADDR=127.0.0.1:$(cat "$REDIS_PORTFILE")"
}

pg_ready() { "$(pg_bin pg_isready)" -h 127.0.0.1 -p "$1" -q; }
redis_ready() { [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]; }

is_running() {
	[ -s "$PG_PORTFILE" ] && [ -s "$REDIS_PORTFILE" ] &&
		pid_alive "$(cat "$PG_PIDFILE" 2>/dev/null)" "$PG_DIR" &&
		pid_alive "$(cat "$REDIS_PIDFILE" 2>/dev/null)" redis-server &&
		pg_ready "$(cat "$PG_PORTFILE")" && redis_ready "$(cat "$REDIS_PORTFILE")"
}

wait_ready() { # wait_ready WHAT PIDFILE PATTERN LOG CMD...
	local what="$1" pidfile="$2" pattern="$3" logfile="$4" deadline
	shift 4
	deadline=$((SECONDS + TIMEOUT))
	while [ "$SECONDS" -lt "$deadline" ]; do
		"$@" && return 0
		if ! pid_alive "$(cat "$pidfile" 2>/dev/null || true)" "$pattern"; then
			show_log "$logfile"
			die "$what exited during startup"
		fi
		sleep 0.1
	done
	show_log "$logfile"
	die "$what did not become ready within ${TIMEOUT}s"
}

start_postgres() {
	local port cert
	need_cmd openssl
	[ "$(id -u)" -ne 0 ] || { id postgres >/dev/null 2>&1 && need_cmd setpriv; } ||
		die "running as root needs a \`postgres\` user to run the cluster as"
	rm -rf "$PG_DIR"
	mkdir -p "$PG_DIR"
	if [ "$(id -u)" -eq 0 ]; then
		chown postgres: "$PG_DIR"
		chmod a+x "$SLUICE_EMU_DIR" # the postgres user must reach its data directory
	fi
	chmod 700 "$PG_DIR"
	as_pg "$(pg_bin initdb)" -D "$PG_DIR" -U postgres -A trust -E UTF8 --locale=C \
		--no-sync >>"$PG_LOG" 2>&1 || {
		show_log "$PG_LOG"
		die "initdb failed"
	}
	# A throwaway certificate: `tls: require` encrypts without verifying the server.
	cert="$PG_DIR/server"
	as_pg openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
		-keyout "$cert.key" -out "$cert.crt" >>"$PG_LOG" 2>&1 || die "openssl could not make a certificate"
	chmod 600 "$cert.key"
	port="$(free_ports 1)"
	echo "$port" >"$PG_PORTFILE"
	log "starting Postgres on 127.0.0.1:$port (data and log in $SLUICE_EMU_DIR)"
	local -a run=()
	[ "$(id -u)" -ne 0 ] || run=(setpriv --reuid=postgres --regid=postgres --init-groups --)
	# setpriv execs, so the recorded pid is the postmaster's.
	spawn_detached "$PG_PIDFILE" "$PG_LOG" "${run[@]}" "$(pg_bin postgres)" -D "$PG_DIR" \
		-p "$port" -k "$PG_DIR" -c listen_addresses=127.0.0.1 -c fsync=off \
		-c synchronous_commit=off -c full_page_writes=off -c ssl=on \
		-c ssl_cert_file="$cert.crt" -c ssl_key_file="$cert.key"
	wait_ready Postgres "$PG_PIDFILE" "$PG_DIR" "$PG_LOG" pg_ready "$port"
	as_pg "$(pg_bin psql)" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qc 'CREATE DATABASE test' \
		>>"$PG_LOG" 2>&1 || die "could not create database test"
}

start_redis() {
	local port
	need_cmd redis-server "apt-get install redis-server"
	need_cmd redis-cli "apt-get install redis-tools"
	port="$(free_ports 1)"
	echo "$port" >"$REDIS_PORTFILE"
	mkdir -p "$SLUICE_EMU_DIR/redis"
	log "starting Redis on 127.0.0.1:$port"
	spawn_detached "$REDIS_PIDFILE" "$REDIS_LOG" redis-server --bind 127.0.0.1 --port "$port" \
		--save "" --appendonly no --dir "$SLUICE_EMU_DIR/redis" --daemonize no
	wait_ready Redis "$REDIS_PIDFILE" redis-server "$REDIS_LOG" redis_ready "$port"
}

start() {
	ensure_state_dir
	if is_running; then
		log "already running (Postgres port $(cat "$PG_PORTFILE"), Redis port $(cat "$REDIS_PORTFILE"))"
		print_exports
		return 0
	fi
	stop 2>/dev/null || true
	ensure_state_dir
	start_redis
	start_postgres
	print_exports
}

stop() {
	# A fast shutdown first: SIGTERM alone is Postgres's "smart" one, which waits for clients.
	if [ -s "$PG_PIDFILE" ] && pid_alive "$(cat "$PG_PIDFILE")" "$PG_DIR"; then
		as_pg "$(pg_bin pg_ctl)" stop -D "$PG_DIR" -m fast -w -t 20 >>"$PG_LOG" 2>&1 || true
	fi
	stop_tree "$PG_PIDFILE" "$PG_DIR"
	stop_tree "$REDIS_PIDFILE" redis-server
	rm -rf "$PG_DIR" "$SLUICE_EMU_DIR/redis" "$PG_PORTFILE" "$REDIS_PORTFILE"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) is_running && print_exports ;;
*) usage ;;
esac
