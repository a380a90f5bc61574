#!/usr/bin/env bash
# Install/start/stop the BigQuery emulator (bqemulator from PyPI, DuckDB-backed).
#
#   emulator-tests/bigquery-emulator.sh install           # venv + pinned packages + offline DuckDB extensions
#   eval "$(emulator-tests/bigquery-emulator.sh start)"   # sets BIGQUERY_EMULATOR_HOST, BIGQUERY_STORAGE_EMULATOR_HOST
#   emulator-tests/bigquery-emulator.sh stop
#
# Env: SLUICE_BQ_VENV (default /var/tmp/sluice-bqemu-venv), BQ_REST_PORT,
# BQ_GRPC_PORT (default: free loopback ports), BQ_PROJECT (default test-project),
# SLUICE_EMU_DIR (state dir, default /tmp/sluice-emulators), BQ_START_TIMEOUT
# (seconds, default 60), SLUICE_PYTHON (interpreter for the venv, >= 3.11).
# See emulator-tests/README.md.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

EMU_NAME=bigquery
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$HERE/lib.sh"

VENV="${SLUICE_BQ_VENV:-/var/tmp/sluice-bqemu-venv}"
# DuckDB has no environment variable for its extension directory; it uses
# $HOME/.duckdb/extensions. The emulator runs with HOME pointing here, so the
# pre-installed extensions live inside the venv and nothing depends on (or
# pollutes) the caller's home directory.
DUCKDB_HOME="$VENV/duckdb-home"
PIDFILE="$SLUICE_EMU_DIR/bigquery.pid"
PORTFILE="$SLUICE_EMU_DIR/bigquery.ports"
LOGFILE="$SLUICE_EMU_DIR/bigquery.log"
PATTERN="bqemulator"
TIMEOUT="${BQ_START_TIMEOUT:-60}"
PROJECT="${BQ_PROJECT:-test-project}"

# Pinned by SPEC §5. numpy is unpinned there; the resolver picks one that
# matches duckdb/pyarrow.
PACKAGES=(
	"bqemulator==1.4.0"
	"duckdb==1.5.5"
	"numpy"
	"duckdb-extensions==1.5.5"
	"duckdb-extension-spatial==1.5.5"
	"duckdb-extension-avro==1.5.5"
)
# Extensions bqemulator INSTALLs/LOADs at start-up (spatial: required; avro:
# best-effort, needed for Avro load/extract jobs).
EXTENSIONS=(spatial avro)

usage() {
	cat >&2 <<'EOF'
usage: bigquery-emulator.sh install|start|stop|status
  install  create/reuse the virtualenv, pip install the pinned packages and
           pre-install the DuckDB extensions from their PyPI wheels (offline)
  start    (installs first if needed) start the emulator on 127.0.0.1 and print
           `export BIGQUERY_EMULATOR_HOST=...` and `export BIGQUERY_STORAGE_EMULATOR_HOST=...`
  stop     stop it (whole process group), idempotent
  status   print the export lines if running, exit 1 otherwise
EOF
	exit 2
}

vpy() { HOME="$DUCKDB_HOME" "$VENV/bin/python" "$@"; }

# True when the venv exists and holds exactly the pinned versions.
venv_ok() {
	[ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/bqemulator" ] || return 1
	vpy - <<'PY' >/dev/null 2>&1
import sys
from importlib.metadata import version
want = {
    "bqemulator": "1.4.0",
    "duckdb": "1.5.5",
    "duckdb-extensions": "1.5.5",
    "duckdb-extension-spatial": "1.5.5",
    "duckdb-extension-avro": "1.5.5",
}
for name, v in want.items():
    if version(name) != v:
        sys.exit(1)
version("numpy")
import bqemulator, duckdb, numpy, duckdb_extensions  # noqa: F401
PY
}

# Copy the extension binaries shipped in the duckdb-extension-* wheels into
# DuckDB's extension directory (DUCKDB_HOME/.duckdb/extensions/v1.5.5/<platform>/),
# using the package's own helper (duckdb_extensions.import_extension, which runs
# `FORCE INSTALL '<file in site-packages>'`). After this, the emulator's plain
# `INSTALL spatial` is a no-op and `LOAD spatial` reads the local file.
preload_extensions() {
	mkdir -p "$DUCKDB_HOME"
	vpy - "${EXTENSIONS[@]}" <<'PY'
import sys
import duckdb
from duckdb_extensions import import_extension

con = duckdb.connect(":memory:")
for name in sys.argv[1:]:
    import_extension(name, force_install=True, con=con)
rows = duckdb.connect(":memory:").sql(
    "SELECT extension_name, install_path FROM duckdb_extensions() "
    "WHERE installed AND install_mode <> 'STATICALLY_LINKED' ORDER BY 1"
).fetchall()
for name, path in rows:
    print(f"  pre-installed {name}: {path}", file=sys.stderr)
PY
}

# Prove the extensions load with every download path closed: a bogus custom
# repository and no autoinstall, exactly the statements bqemulator runs.
verify_extensions() {
	vpy - "${EXTENSIONS[@]}" <<'PY'
import sys
import duckdb

con = duckdb.connect(":memory:")
con.execute("SET custom_extension_repository = 'http://127.0.0.1:9/no-downloads'")
con.execute("SET autoinstall_known_extensions = false")
for name in sys.argv[1:]:
    con.execute(f"INSTALL {name}")
    con.execute(f"LOAD {name}")
assert con.sql("SELECT ST_AsText(ST_Point(1, 2))").fetchone()[0] == "POINT (1 2)"
PY
}

find_python() {
	local py
	for py in ${SLUICE_PYTHON:-} python3.13 python3.12 python3.11 python3; do
		command -v "$py" >/dev/null 2>&1 || continue
		if "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
			command -v "$py"
			return 0
		fi
	done
	die "no Python >= 3.11 found (bqemulator 1.4.0 requires it); set SLUICE_PYTHON"
}

make_venv() {
	local py
	py="$(find_python)"
	log "creating virtualenv $VENV with $py"
	rm -rf "$VENV"
	if ! "$py" -m venv "$VENV" >&2 2>&1; then
		# Debian's system python needs python3-venv for ensurepip.
		if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
			log "python -m venv failed; installing python3-venv from Debian"
			DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || true
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
			rm -rf "$VENV"
			"$py" -m venv "$VENV" >&2
		else
			die "could not create a virtualenv with $py"
		fi
	fi
}

install() {
	local t0=$SECONDS
	if venv_ok; then
		log "virtualenv $VENV already has the pinned versions; reusing it"
	else
		[ -x "$VENV/bin/python" ] || make_venv
		log "pip installing ${PACKAGES[*]}"
		if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -q \
			"${PACKAGES[@]}" >&2; then
			# A broken venv (e.g. from another Python) gets one fresh retry.
			make_venv
			"$VENV/bin/python" -m pip install --disable-pip-version-check -q \
				"${PACKAGES[@]}" >&2
		fi
		venv_ok || die "packages installed but the version check failed"
	fi
	if verify_extensions 2>/dev/null; then
		log "DuckDB extensions (${EXTENSIONS[*]}) already pre-installed in $DUCKDB_HOME/.duckdb"
	else
		log "pre-installing DuckDB extensions (${EXTENSIONS[*]}) from their wheels"
		preload_extensions
		verify_extensions || die "DuckDB extensions still do not load offline"
		log "extensions load offline"
	fi
	log "install done in $((SECONDS - t0))s"
}

print_exports() {
	echo "export BIGQUERY_EMULATOR_HOST=127.0.0.1:$1"
	echo "export BIGQUERY_STORAGE_EMULATOR_HOST=127.0.0.1:$2"
}

read_ports() {
	# shellcheck disable=SC2034 # REST_PORT/GRPC_PORT are used by callers
	read -r REST_PORT GRPC_PORT <"$PORTFILE"
}

is_running() {
	[ -s "$PIDFILE" ] && [ -s "$PORTFILE" ] || return 1
	pid_alive "$(cat "$PIDFILE")" "$PATTERN" || return 1
	read_ports
	curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$REST_PORT/healthz" 2>/dev/null &&
		port_in_use "$GRPC_PORT"
}

start() {
	ensure_state_dir
	need_cmd curl
	if is_running; then
		if [ "${BQ_REST_PORT:-$REST_PORT}" != "$REST_PORT" ] || [ "${BQ_GRPC_PORT:-$GRPC_PORT}" != "$GRPC_PORT" ]; then
			die "already running on REST $REST_PORT / gRPC $GRPC_PORT, not the requested BQ_REST_PORT/BQ_GRPC_PORT; run '$0 stop' first"
		fi
		log "already running (pid $(cat "$PIDFILE"), REST $REST_PORT, gRPC $GRPC_PORT)"
		print_exports "$REST_PORT" "$GRPC_PORT"
		return 0
	fi
	stop_tree "$PIDFILE" "$PATTERN" 2>/dev/null || true

	# Cheap when already installed (a version check and an offline load test).
	install

	local attempt rc ports t0
	for attempt in 1 2 3; do
		mapfile -t ports < <(free_ports 2)
		REST_PORT="${BQ_REST_PORT:-${ports[0]}}"
		GRPC_PORT="${BQ_GRPC_PORT:-${ports[1]}}"
		[ "$REST_PORT" != "$GRPC_PORT" ] || die "BQ_REST_PORT and BQ_GRPC_PORT must differ"
		if port_in_use "$REST_PORT"; then die "REST port $REST_PORT is already in use"; fi
		if port_in_use "$GRPC_PORT"; then die "gRPC port $GRPC_PORT is already in use"; fi
		echo "$REST_PORT $GRPC_PORT" >"$PORTFILE"
		: >"$LOGFILE"
		log "starting bqemulator: REST 127.0.0.1:$REST_PORT, gRPC 127.0.0.1:$GRPC_PORT, project $PROJECT (log: $LOGFILE)"
		t0=$SECONDS
		spawn_detached "$PIDFILE" "$LOGFILE" env HOME="$DUCKDB_HOME" \
			"$VENV/bin/bqemulator" start \
			--rest-host 127.0.0.1 --rest-port "$REST_PORT" \
			--grpc-host 127.0.0.1 --grpc-port "$GRPC_PORT" \
			--ephemeral --project "$PROJECT"
		rc=0
		wait_http "http://127.0.0.1:$REST_PORT/healthz" "$TIMEOUT" "$PIDFILE" "$PATTERN" || rc=$?
		if [ "$rc" -eq 0 ]; then
			# REST comes up with the gRPC server; make sure both listen.
			for _ in $(seq 1 40); do
				port_in_use "$GRPC_PORT" && break
				sleep 0.25
			done
			port_in_use "$GRPC_PORT" || { rc=1; break; }
			if grep -q 'avro_unavailable' "$LOGFILE"; then
				log "WARNING: the emulator could not load the avro extension (Avro load/extract jobs will fail)"
			fi
			log "ready after $((SECONDS - t0))s (pid $(cat "$PIDFILE"))"
			print_exports "$REST_PORT" "$GRPC_PORT"
			return 0
		fi
		if [ "$rc" -eq 2 ] && [ -z "${BQ_REST_PORT:-}${BQ_GRPC_PORT:-}" ] && [ "$attempt" -lt 3 ] &&
			grep -qiE 'address already in use|errno 98|failed to bind' "$LOGFILE"; then
			log "a port was taken meanwhile; retrying with other ports"
			rm -f "$PIDFILE"
			continue
		fi
		break
	done
	if [ "$rc" -eq 2 ]; then
		log "the emulator exited before it was ready"
	else
		log "the emulator did not become ready within ${TIMEOUT}s"
	fi
	show_log "$LOGFILE"
	stop_tree "$PIDFILE" "$PATTERN" || true
	rm -f "$PORTFILE"
	die "BigQuery emulator failed to start"
}

stop() {
	stop_tree "$PIDFILE" "$PATTERN"
	rm -f "$PORTFILE"
}

status() {
	if is_running; then
		log "running (pid $(cat "$PIDFILE"))"
		print_exports "$REST_PORT" "$GRPC_PORT"
	else
		log "not running"
		return 1
	fi
}

case "${1:-}" in
install) install ;;
start) start ;;
stop) stop ;;
status) status ;;
*) usage ;;
esac
