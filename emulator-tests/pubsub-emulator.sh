#!/usr/bin/env bash
# Start/stop Google's official Pub/Sub emulator (gcloud SDK component).
#
#   eval "$(emulator-tests/pubsub-emulator.sh start)"   # sets PUBSUB_EMULATOR_HOST
#   emulator-tests/pubsub-emulator.sh stop
#
# Env: PUBSUB_PORT (default: a free loopback port), SLUICE_EMU_DIR (state dir,
# default /tmp/sluice-emulators), PUBSUB_EMULATOR_BIN (override the binary),
# PUBSUB_START_TIMEOUT (seconds, default 60).
# See emulator-tests/README.md.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

EMU_NAME=pubsub
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$HERE/lib.sh"

PIDFILE="$SLUICE_EMU_DIR/pubsub.pid"
PORTFILE="$SLUICE_EMU_DIR/pubsub.port"
LOGFILE="$SLUICE_EMU_DIR/pubsub.log"
# Both the launcher script and the java command line contain this.
PATTERN="cloud-pubsub-emulator"
TIMEOUT="${PUBSUB_START_TIMEOUT:-60}"

usage() {
	cat >&2 <<'EOF'
usage: pubsub-emulator.sh start|stop|status
  start   start the emulator on 127.0.0.1 and print `export PUBSUB_EMULATOR_HOST=...`
  stop    stop it (whole process group), idempotent
  status  print the export line if running, exit 1 otherwise
EOF
	exit 2
}

find_emulator() {
	if [ -n "${PUBSUB_EMULATOR_BIN:-}" ]; then
		[ -x "$PUBSUB_EMULATOR_BIN" ] || die "PUBSUB_EMULATOR_BIN=$PUBSUB_EMULATOR_BIN is not an executable file"
		echo "$PUBSUB_EMULATOR_BIN"
		return
	fi
	command -v gcloud >/dev/null 2>&1 || die "gcloud not found on PATH.
  The Pub/Sub emulator is part of the Google Cloud SDK (component 'pubsub-emulator')
  and cannot be installed from the package registries reachable here; it must be
  preinstalled on the machine (see SPEC §5). Set PUBSUB_EMULATOR_BIN to use another copy."
	local root bin
	root="$(gcloud info --format='value(installation.sdk_root)' 2>/dev/null </dev/null || true)"
	[ -n "$root" ] || die "'gcloud info' did not report installation.sdk_root"
	bin="$root/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
	[ -x "$bin" ] || die "Pub/Sub emulator not found at $bin.
  It is the gcloud SDK component 'pubsub-emulator' and cannot be installed from the
  package registries reachable here; it must be preinstalled on the machine (SPEC §5)."
	echo "$bin"
}

# emulator_command BIN: prints, one word a line, the command that starts the emulator: java with
# pubsub-emulator-shim/ compiled before the emulator's jar on the class path. The shim adds the
# gRPC method whose absence makes the emulator keep serving cancelled streaming pulls ("zombie"
# streams that lease messages to nobody; see pubsub-emulator-shim/io/grpc/InternalStatus.java).
# Without javac or the jar, the plain launcher BIN (with a warning).
emulator_command() {
	local bin="$1" jar shim_src="$HERE/pubsub-emulator-shim" shim_out="$SLUICE_EMU_DIR/pubsub-shim"
	jar="$(ls "$(dirname "$bin")"/../lib/cloud-pubsub-emulator-*-all.jar 2>/dev/null | head -n 1)"
	if [ -z "$jar" ] || ! command -v javac >/dev/null 2>&1; then
		log "WARNING: no javac or no emulator jar: starting the emulator without the gRPC shim;"
		log "  cancelled streaming pulls will keep leasing messages (redelivery tests may fail)"
		echo "$bin"
		return
	fi
	if [ ! -f "$shim_out/io/grpc/InternalStatus.class" ] ||
		[ "$shim_src/io/grpc/InternalStatus.java" -nt "$shim_out/io/grpc/InternalStatus.class" ]; then
		javac -nowarn -cp "$jar" -d "$shim_out" "$shim_src/io/grpc/InternalStatus.java" >&2 ||
			die "could not compile the emulator's gRPC shim"
	fi
	printf '%s\n' java -cp "$shim_out:$jar" com.google.cloud.pubsub.testing.v1.Main
}

print_exports() {
	echo "export PUBSUB_EMULATOR_HOST=127.0.0.1:$1"
}

is_running() {
	[ -s "$PIDFILE" ] && [ -s "$PORTFILE" ] &&
		pid_alive "$(cat "$PIDFILE")" "$PATTERN" &&
		curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$(cat "$PORTFILE")/v1/projects/p/topics" 2>/dev/null
}

start() {
	ensure_state_dir
	need_cmd curl
	if is_running; then
		if [ -n "${PUBSUB_PORT:-}" ] && [ "$PUBSUB_PORT" != "$(cat "$PORTFILE")" ]; then
			die "already running on port $(cat "$PORTFILE"), not PUBSUB_PORT=$PUBSUB_PORT; run '$0 stop' first"
		fi
		log "already running (pid $(cat "$PIDFILE"), port $(cat "$PORTFILE"))"
		print_exports "$(cat "$PORTFILE")"
		return 0
	fi
	# A stale or half-started instance of ours: clean it up first.
	stop_tree "$PIDFILE" "$PATTERN" 2>/dev/null || true

	local bin port attempt rc
	bin="$(find_emulator)"
	need_cmd java "Java 17 is needed by the Pub/Sub emulator"
	local launch
	launch="$(emulator_command "$bin")"
	local -a cmd
	mapfile -t cmd <<<"$launch"

	for attempt in 1 2 3; do
		if [ -n "${PUBSUB_PORT:-}" ]; then
			port="$PUBSUB_PORT"
			if port_in_use "$port"; then
				die "PUBSUB_PORT=$port is already in use on 127.0.0.1"
			fi
		else
			port="$(free_ports 1)"
		fi
		log "starting ${cmd[*]} on 127.0.0.1:$port (log: $LOGFILE)"
		: >"$LOGFILE"
		echo "$port" >"$PORTFILE"
		local t0=$SECONDS
		spawn_detached "$PIDFILE" "$LOGFILE" "${cmd[@]}" --host=127.0.0.1 "--port=$port"
		rc=0
		wait_http "http://127.0.0.1:$port/v1/projects/p/topics" "$TIMEOUT" "$PIDFILE" "$PATTERN" || rc=$?
		if [ "$rc" -eq 0 ]; then
			log "ready after $((SECONDS - t0))s (pid $(cat "$PIDFILE"))"
			print_exports "$port"
			return 0
		fi
		if [ "$rc" -eq 2 ] && [ -z "${PUBSUB_PORT:-}" ] && [ "$attempt" -lt 3 ] &&
			grep -qiE 'address already in use|BindException' "$LOGFILE"; then
			log "port $port was taken meanwhile; retrying with another port"
			rm -f "$PIDFILE"
			continue
		fi
		break
	done
	if [ "$rc" -eq 2 ]; then
		log "the emulator exited before it was ready"
	else
		log "the emulator did not answer within ${TIMEOUT}s"
	fi
	show_log "$LOGFILE"
	stop_tree "$PIDFILE" "$PATTERN" || true
	rm -f "$PORTFILE"
	die "Pub/Sub emulator failed to start"
}

stop() {
	stop_tree "$PIDFILE" "$PATTERN"
	rm -f "$PORTFILE"
}

status() {
	if is_running; then
		log "running (pid $(cat "$PIDFILE"))"
		print_exports "$(cat "$PORTFILE")"
	else
		log "not running"
		return 1
	fi
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
*) usage ;;
esac
