#!/usr/bin/env bash
# Tests the status page (`/` of `--http`, src/http/status.html) in headless Chromium against a
# real streaming pipeline: emulator-tests/statuspage.yaml reading from the Pub/Sub emulator while
# this script publishes events (some malformed, some invalid) in a loop.
#
#   bash emulator-tests/run-statuspage-tests.sh
#
# Installs chromium from Debian when it is missing (CI runs as root). Keeps a screenshot in
# ci-artifacts/status-page.png. Ends with `N passed, M failed`; exit 0 only if all passed.
# Stops everything it started (emulator, sluice, publisher), also on failure.
# Env: SLUICE_STATUSPAGE_KEEP=1 keeps the work dir (DOM dumps, logs) even when all passed.
# shellcheck source-path=SCRIPTDIR
# `[ … ] && pass … || fail …` is safe here: pass never fails.
# shellcheck disable=SC2015
set -euo pipefail

EMU_NAME=statuspage-tests
# Our own state dir: an emulator someone else started is neither reused nor stopped.
export SLUICE_EMU_DIR="${SLUICE_EMU_DIR:-/tmp/sluice-emulators-statuspage-tests-$$}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
# shellcheck source=lib.sh
. "$HERE/lib.sh"

TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
SLUICE="$TARGET/debug/sluice"
ARTIFACT="$REPO/ci-artifacts/status-page.png"
WORK="$(mktemp -d /tmp/sluice-statuspage.XXXXXX)"
PUB_PID=""
PASSED=0
FAILED=0
pass() {
	PASSED=$((PASSED + 1))
	log "PASS: $*"
}
fail() {
	FAILED=$((FAILED + 1))
	log "FAIL: $*"
}

cleanup() {
	local rc=$?
	if [ -n "$PUB_PID" ]; then
		# shellcheck disable=SC2046 # one pid per word
		kill $(descendants "$PUB_PID") "$PUB_PID" 2>/dev/null || true
		wait "$PUB_PID" 2>/dev/null || true
	fi
	EMU_NAME=sluice stop_tree "$WORK/sluice.pid" "$SLUICE" || true
	bash "$HERE/pubsub-emulator.sh" stop || true
	if [ "$rc" -eq 0 ] && [ "$FAILED" -eq 0 ] && [ -z "${SLUICE_STATUSPAGE_KEEP:-}" ]; then
		rm -rf "$WORK"
		case "$SLUICE_EMU_DIR" in /tmp/sluice-emulators-statuspage-tests-*) rm -rf "$SLUICE_EMU_DIR" ;; esac
	else
		log "logs and DOM dumps kept in $WORK (emulator: $SLUICE_EMU_DIR)"
	fi
}
trap cleanup EXIT

# --- what it needs -------------------------------------------------------------------------------
apt_install() {
	[ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || die "missing $*; install it (Debian: apt-get install $*)"
	log "installing $* from Debian"
	DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}
# DejaVu so the screenshot has glyphs on a machine without any font.
command -v chromium >/dev/null 2>&1 || apt_install chromium fonts-dejavu-core
command -v jq >/dev/null 2>&1 || apt_install jq
need_cmd curl
need_cmd base64
CHROMIUM="$(command -v chromium)"

log "building sluice"
# Worktrees may share one target dir (CARGO_TARGET_DIR): touching makes cargo relink this
# checkout's binary.
touch "$REPO/src/lib.rs" "$REPO/src/main.rs"
(cd "$REPO" && cargo build --quiet --bin sluice) >&2

# --- the pipeline --------------------------------------------------------------------------------
env_lines="$(bash "$HERE/pubsub-emulator.sh" start)"
eval "$env_lines"
export PUBSUB_EMULATOR_HOST
export GOOGLE_CLOUD_PROJECT=statuspage-test
TOPIC="statuspage-events-$$"
VARS=(--var "topic=$TOPIC" --var "subscription=statuspage-events-sub-$$"
	--var "output_topic=statuspage-clean-$$" --var "dead_letter_topic=statuspage-dead-$$")
PIPELINE="$HERE/statuspage.yaml"
# The transform names of statuspage.yaml, in its order: the page must show every one.
TRANSFORMS=(ReadEvents CheckEvents EventsComplete Enrich PublishCleanEvents DeadLetters PublishDeadLetters)
"$SLUICE" setup "$PIPELINE" "${VARS[@]}" >&2

PORT="$(free_ports 1)"
BASE="http://127.0.0.1:$PORT"
RUST_LOG="${RUST_LOG:-warn,sluice=info}" spawn_detached "$WORK/sluice.pid" "$WORK/sluice.log" \
	"$SLUICE" run "$PIPELINE" "${VARS[@]}" --http "127.0.0.1:$PORT"
rc=0
wait_http "$BASE/readyz" 30 "$WORK/sluice.pid" "$SLUICE" || rc=$?
if [ "$rc" -ne 0 ]; then
	show_log "$WORK/sluice.log"
	die "sluice did not become ready on $BASE (rc $rc)"
fi
log "pipeline ready on $BASE"

# Every 0.1 s: 4 good events, and every 5th round one that is not JSON (ReadEvents.malformed)
# and one with an unknown action (CheckEvents.invalid). Each has its own event_id.
publish_loop() {
	local round=0 i msgs d id
	while :; do
		round=$((round + 1))
		msgs=""
		for i in 1 2 3 4; do
			id="e$round-$i"
			d="$(printf '{"event_id":"%s","recipe_id":"r%04d","user_id":"u%d","action":"view","watch_seconds":%d}' \
				"$id" "$((round % 50))" "$i" "$((round % 600))" | base64 -w0)"
			msgs+="{\"data\":\"$d\",\"attributes\":{\"event_id\":\"$id\"}},"
		done
		if [ $((round % 5)) -eq 0 ]; then
			d="$(printf 'not json %d' "$round" | base64 -w0)"
			msgs+="{\"data\":\"$d\",\"attributes\":{\"event_id\":\"m$round\"}},"
			d="$(printf '{"event_id":"x%d","recipe_id":"r1","user_id":"u1","action":"teleport"}' "$round" | base64 -w0)"
			msgs+="{\"data\":\"$d\",\"attributes\":{\"event_id\":\"x$round\"}},"
		fi
		curl -sS -o /dev/null --max-time 5 -X POST -H 'Content-Type: application/json' \
			--data "{\"messages\":[${msgs%,}]}" \
			"http://$PUBSUB_EMULATOR_HOST/v1/projects/$GOOGLE_CLOUD_PROJECT/topics/$TOPIC:publish" || true
		sleep 0.1
	done
}
publish_loop >>"$WORK/publisher.log" 2>&1 &
PUB_PID=$!

# Wait until records made it all the way to both sinks, so the page has something to show.
deadline=$((SECONDS + 30))
until [ "$(curl -fsS --max-time 2 "$BASE/api/status" |
	jq '[.stages[] | select(.name == "PublishCleanEvents" or .name == "PublishDeadLetters") | .records_in > 0] | all')" = true ]; do
	[ "$SECONDS" -lt "$deadline" ] || {
		show_log "$WORK/sluice.log"
		curl -sS --max-time 2 "$BASE/api/status" | jq -c '.stages[]' >&2 || true
		die "no records reached both sinks within 30 s"
	}
	sleep 0.5
done

# --- the page in headless Chromium ---------------------------------------------------------------
# chrome OUT_NAME ARGS...: one headless load of the page. The virtual time budget lets the page
# poll api/status ~20 times (timers run on virtual time, fetches on real time). The host resolver
# sends every name but 127.0.0.1 nowhere and the net log records every request, so a page that
# fetched anything from elsewhere fails the "nothing but api/status" assertion.
chrome() {
	local name="$1"
	shift
	timeout -k 5 60 "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
		--disable-background-networking --disable-component-update --disable-sync \
		--disable-default-apps --disable-extensions --mute-audio \
		--host-resolver-rules="MAP * ~NOTFOUND, EXCLUDE 127.0.0.1" \
		--log-net-log="$WORK/$name.netlog.json" \
		--user-data-dir="$(mktemp -d "$WORK/profile.XXXXXX")" \
		--virtual-time-budget=20000 --window-size=1400,860 "$@" "$BASE/" 2>>"$WORK/chromium.log"
}

# attr FILE STAGE ATTR: the value of data-ATTR on the table row of STAGE.
attr() {
	{ grep -o "<tr data-stage=\"$2\"[^>]*>" "$1" | grep -o " data-$3=\"[^\"]*\"" | cut -d'"' -f2 | head -n 1; } || true
}
# cell FILE STAGE COL: the text of the COL cell in the row of STAGE.
cell() {
	{ grep -o "<tr data-stage=\"$2\".*" "$1" | sed 's#</tr>.*##' |
		grep -o "<td[^>]*data-col=\"$3\"[^>]*>[^<]*</td>" | sed 's#<[^>]*>##g' | head -n 1; } || true
}
is_count() { [[ "$1" =~ ^[0-9]+$ ]]; }
# The page prints counts with thousands separators (en-US).
is_shown_count() { [[ "$1" =~ ^[0-9]{1,3}(,[0-9]{3})*$ ]]; }

log "first load"
chrome dom1 --dump-dom >"$WORK/dom1.html" || fail "chromium exited with $? on the first load"
t1=$SECONDS
sleep 4
log "second load"
chrome dom2 --dump-dom >"$WORK/dom2.html" || fail "chromium exited with $? on the second load"
log "screenshot"
mkdir -p "$(dirname "$ARTIFACT")"
rm -f "$ARTIFACT"
chrome shot --screenshot="$ARTIFACT" --hide-scrollbars >/dev/null || fail "chromium exited with $? taking the screenshot"

# --- assertions ----------------------------------------------------------------------------------
DOM1="$WORK/dom1.html"
DOM2="$WORK/dom2.html"

title="$(grep -o '<title>[^<]*</title>' "$DOM1" || true)"
[ "$title" = "<title>Sluice status</title>" ] && pass "page title" || fail "page title is '$title', expected Sluice status"

shown="$(grep -o '<span id="pipeline">[^<]*</span>' "$DOM1" | sed 's#<[^>]*>##g' || true)"
[ "$shown" = statuspage ] && pass "header names the pipeline" || fail "header shows pipeline '$shown', expected 'statuspage' (did the page render?)"

ready="$(grep -o '<span id="ready"[^>]*>[^<]*</span>' "$DOM1" | sed 's#<[^>]*>##g' || true)"
[ "$ready" = ready ] && pass "readiness badge says ready" || fail "readiness badge says '$ready', expected 'ready'"

nodes="$(grep -o '<div class="node[^"]*" data-node="[^"]*"' "$DOM1" | sed 's#.*data-node="##; s#"$##' | sort | xargs || true)"
expected="$(printf '%s\n' "${TRANSFORMS[@]}" | sort | xargs)"
[ "$nodes" = "$expected" ] && pass "graph has exactly the ${#TRANSFORMS[@]} transforms: $nodes" ||
	fail "graph nodes are '$nodes', expected $expected"
edges="$(grep -o '<path ' "$DOM1" | wc -l || true)"
# ReadEvents→CheckEvents→EventsComplete→Enrich→PublishCleanEvents, ReadEvents.malformed and
# CheckEvents.invalid→DeadLetters→PublishDeadLetters.
[ "$edges" -eq 7 ] && pass "graph draws 7 edges" || fail "graph draws $edges edges, expected 7"

for t in "${TRANSFORMS[@]}"; do
	ok=1
	for dom in "$DOM1" "$DOM2"; do
		for a in records-in records-out errors; do
			v="$(attr "$dom" "$t" "$a")"
			is_count "$v" || {
				ok=0
				fail "$t: data-$a is '$v' in $(basename "$dom"), expected a count"
			}
		done
		for c in records-in records-out; do
			v="$(cell "$dom" "$t" "$c")"
			is_shown_count "$v" || {
				ok=0
				fail "$t: the $c cell shows '$v' in $(basename "$dom"), expected a number"
			}
		done
	done
	[ "$ok" = 1 ] && pass "$t: records counters are numbers in both loads"
done

# increased STAGE ATTR: the counter grew between the two loads.
increased() {
	local a b
	a="$(attr "$DOM1" "$1" "$2")"
	b="$(attr "$DOM2" "$1" "$2")"
	if is_count "$a" && is_count "$b" && [ "$b" -gt "$a" ]; then
		pass "$1 $2 increased between the loads: $a -> $b"
	else
		fail "$1 $2 did not increase between the loads ($((SECONDS - t1)) s apart): '$a' -> '$b'"
	fi
}
increased ReadEvents records-out
increased CheckEvents records-in
increased PublishCleanEvents records-in
increased PublishDeadLetters records-in
increased ReadEvents errors
increased CheckEvents errors

# Throughput is computed from successive polls: after 20 s of virtual time it is a number.
rate="$(grep -o '<div class="node[^"]*" data-node="ReadEvents">.*' "$DOM2" | grep -o '<div class="rate">[^<]*' | head -n 1 | sed 's#.*>##' || true)"
[[ "$rate" =~ ^[0-9][0-9,.]*\ rec/s\ read$ ]] && pass "ReadEvents node shows its throughput: $rate" ||
	fail "ReadEvents node shows '$rate', expected 'N rec/s read'"
for id in sum-rate sum-lag sum-queued sum-dead sum-valves; do
	v="$(grep -o "<div class=\"value\" id=\"$id\"[^>]*>[^<]*" "$DOM2" | sed 's#.*>##' || true)"
	[ -n "$v" ] && [ "$v" != "–" ] && pass "summary $id shows '$v'" || fail "summary $id shows '$v', expected a value"
done
queued="$(attr "$DOM2" PublishCleanEvents queued)"
is_count "$queued" && pass "PublishCleanEvents backlog is a count: $queued" || fail "PublishCleanEvents data-queued is '$queued', expected a count"
lag="$(cell "$DOM2" PublishCleanEvents lag)"
[[ "$lag" =~ ^[0-9][0-9,.]*\ (s|min|h)$ ]] && pass "PublishCleanEvents watermark lag shown: $lag" || fail "PublishCleanEvents watermark lag is '$lag', expected a duration"
dl="$(cell "$DOM2" ReadEvents dead-letter-rate)"
[[ "$dl" =~ ^[0-9][0-9.]*\ %$ ]] && pass "ReadEvents dead-letter rate shown: $dl" || fail "ReadEvents dead-letter rate is '$dl', expected a percentage"

grep -q '<section><h2>Valves</h2><div id="valves">' "$DOM1" && pass "valves section present" || fail "no valves section"
valve="$(grep -o '<li data-valve="EventsComplete" data-state="[^"]*"' "$DOM1" | sed 's#.*data-state="##; s#"$##' || true)"
[ "$valve" = open ] && pass "valve EventsComplete listed as open" || fail "valve EventsComplete state is '$valve', expected open"

# Nothing but this server: every request the page made (net log events whose initiator is the
# page's origin; the browser's own update and time checks are not) is to $BASE.
urls="$(jq -r --arg origin "$BASE" '.events[] | .params? // {} | select(.initiator? == $origin) | .url' \
	"$WORK/dom1.netlog.json" | sort -u || true)"
foreign="$(echo "$urls" | grep -v "^$BASE/" || true)"
if echo "$urls" | grep -qx "$BASE/api/status" && [ -z "$foreign" ]; then
	pass "the page fetched only from the pipeline: $(echo "$urls" | sed "s#^$BASE##" | xargs)"
else
	fail "the page fetched from elsewhere or never polled: ${foreign:-no api/status request recorded}"
fi

if [ -s "$ARTIFACT" ] && [ "$(head -c 8 "$ARTIFACT" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ]; then
	pass "screenshot saved: $ARTIFACT"
else
	fail "no PNG screenshot at $ARTIFACT"
fi

pid="$(cat "$WORK/sluice.pid")"
pid_alive "$pid" "$SLUICE" && pass "pipeline still running after the loads" || {
	show_log "$WORK/sluice.log"
	fail "sluice exited during the test"
}

echo "screenshot: $ARTIFACT"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
