# shellcheck shell=bash
# Shared helpers for the emulator scripts. Sourced, never executed.
#
# Conventions:
#   * everything meant for humans goes to stderr; stdout is reserved for the
#     `export VAR=value` lines that callers `eval`;
#   * state (pid files, ports, logs) lives in $SLUICE_EMU_DIR;
#   * every emulator is started as the leader of its own session/process
#     group (setsid), so `stop` can signal the whole tree at once.

SLUICE_EMU_DIR="${SLUICE_EMU_DIR:-/tmp/sluice-emulators}"

log() { printf '[%s] %s\n' "${EMU_NAME:-emulator}" "$*" >&2; }

die() {
	printf '[%s] ERROR: %s\n' "${EMU_NAME:-emulator}" "$*" >&2
	exit 1
}

ensure_state_dir() { mkdir -p "$SLUICE_EMU_DIR"; }

# need_cmd CMD [HINT]: fail loudly when a required command is missing.
need_cmd() {
	command -v "$1" >/dev/null 2>&1 || die "required command '$1' not found${2:+ ($2)}"
}

# free_ports N: print N distinct free TCP ports on 127.0.0.1, one per line.
# All sockets are held open together so the ports are distinct.
free_ports() {
	local n="$1" py
	for py in python3 python; do
		if command -v "$py" >/dev/null 2>&1; then
			"$py" - "$n" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
for s in socks:
    s.close()
PY
			return
		fi
	done
	# Fallback without Python: probe a random range with bash's /dev/tcp.
	local found=0 port
	while [ "$found" -lt "$n" ]; do
		port=$((20000 + RANDOM % 30000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
			echo "$port"
			found=$((found + 1))
		fi
	done
}

# port_in_use PORT: true when something accepts connections on 127.0.0.1:PORT.
port_in_use() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# pid_alive PID PATTERN: true when PID runs and its command line contains
# PATTERN (guards against pid reuse: we only ever signal our own process).
pid_alive() {
	local pid="$1" pattern="$2" cmdline
	[ -n "$pid" ] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	[ -r "/proc/$pid/cmdline" ] || return 0
	cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
	case "$cmdline" in
	*"$pattern"*) return 0 ;;
	*) return 1 ;;
	esac
}

# descendants PID: print all descendant pids of PID (depth first).
descendants() {
	local child
	for child in $(pgrep -P "$1" 2>/dev/null || true); do
		descendants "$child"
		echo "$child"
	done
}

# spawn_detached PIDFILE LOGFILE CMD...: run CMD in a new session (so it leads
# its own process group), detached from our stdin/stdout, and record its pid.
spawn_detached() {
	local pidfile="$1" logfile="$2"
	shift 2
	rm -f "$pidfile"
	need_cmd setsid "util-linux"
	# `exec` keeps the pid: the recorded pid is the emulator process itself
	# (or its launcher script, which execs java), and it is the process-group
	# and session leader.
	# shellcheck disable=SC2016 # $$ and $@ are for the inner shell
	setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" \
		</dev/null >>"$logfile" 2>&1 &
	for _ in $(seq 1 50); do
		[ -s "$pidfile" ] && return 0
		sleep 0.1
	done
	die "could not record the pid of: $*"
}

# stop_tree PIDFILE PATTERN: stop the process recorded in PIDFILE, its whole
# process group and every descendant (TERM, then KILL after a grace period).
# Idempotent: a missing pid file or a dead process is not an error.
stop_tree() {
	local pidfile="$1" pattern="$2" pid pids
	if [ ! -s "$pidfile" ]; then
		log "not running (no pid file)"
		return 0
	fi
	pid="$(cat "$pidfile")"
	if ! pid_alive "$pid" "$pattern"; then
		log "not running (stale pid $pid)"
		rm -f "$pidfile"
		return 0
	fi
	pids="$(descendants "$pid") $pid"
	log "stopping pid $pid (process group and children: $(echo "$pids" | xargs))"
	# The group first (covers children we might not see any more), then
	# each known pid in case one left the group.
	kill -TERM -- "-$pid" 2>/dev/null || true
	# shellcheck disable=SC2086 # word splitting of the pid list is intended
	kill -TERM $pids 2>/dev/null || true
	for _ in $(seq 1 100); do
		# shellcheck disable=SC2086
		if ! kill -0 $pids 2>/dev/null && ! kill -0 -- "-$pid" 2>/dev/null; then
			break
		fi
		sleep 0.1
	done
	# shellcheck disable=SC2086
	if kill -0 $pids 2>/dev/null || kill -0 -- "-$pid" 2>/dev/null; then
		log "still alive after 10s; sending SIGKILL"
		kill -KILL -- "-$pid" 2>/dev/null || true
		# shellcheck disable=SC2086
		kill -KILL $pids 2>/dev/null || true
		for _ in $(seq 1 50); do
			# shellcheck disable=SC2086
			kill -0 $pids 2>/dev/null || break
			sleep 0.1
		done
	fi
	rm -f "$pidfile"
	log "stopped"
}

# show_log LOGFILE: dump the tail of a log to stderr (for failures).
show_log() {
	local logfile="$1"
	if [ -f "$logfile" ]; then
		printf -- '----- last 80 lines of %s -----\n' "$logfile" >&2
		tail -n 80 "$logfile" >&2 || true
		printf -- '----- end of log -----\n' >&2
	fi
}

# wait_http URL TIMEOUT PIDFILE PATTERN: poll URL until it answers 2xx.
# Fails early when the process dies.
wait_http() {
	local url="$1" timeout="$2" pidfile="$3" pattern="$4" deadline
	deadline=$((SECONDS + timeout))
	while [ "$SECONDS" -lt "$deadline" ]; do
		if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
			return 0
		fi
		if ! pid_alive "$(cat "$pidfile" 2>/dev/null || true)" "$pattern"; then
			return 2
		fi
		sleep 0.25
	done
	return 1
}

# stop_emulators_on_exit NAME...: when the calling script exits, stops the emulators NAME
# (pubsub, bigquery: their NAME-emulator.sh) and, if the script succeeded, removes
# $SLUICE_EMU_DIR when it is the suite's own (/tmp/sluice-emulators-$EMU_NAME-*); on failure it
# keeps it, with the emulator logs, and says where.
stop_emulators_on_exit() {
	_STOP_EMULATORS=("$@")
	trap _stop_emulators EXIT
}

_stop_emulators() {
	local rc=$? dir e
	dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
	for e in "${_STOP_EMULATORS[@]}"; do
		bash "$dir/$e-emulator.sh" stop || true
	done
	if [ "$rc" -eq 0 ]; then
		case "$SLUICE_EMU_DIR" in "/tmp/sluice-emulators-$EMU_NAME-"*) rm -rf "$SLUICE_EMU_DIR" ;; esac
	else
		log "emulator logs kept in $SLUICE_EMU_DIR"
	fi
}
