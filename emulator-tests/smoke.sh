#!/usr/bin/env bash
# Smoke test of the emulator scripts: starts both emulators, makes real REST
# requests to each, prints the results, stops both (also on failure).
#
#   bash emulator-tests/smoke.sh
#
# Ends with a line `smoke: N passed, N failed`; exit 0 only if all passed.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

EMU_NAME=smoke
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
. "$HERE/lib.sh"

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
	bash "$HERE/pubsub-emulator.sh" stop || true
	bash "$HERE/bigquery-emulator.sh" stop || true
}
trap cleanup EXIT

need_cmd curl
if ! command -v jq >/dev/null 2>&1; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		log "installing jq from Debian"
		DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || true
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >&2
	fi
	need_cmd jq
fi

# http METHOD URL [JSON]: request with a JSON body; prints the body; fails
# (non-zero) on an HTTP status >= 400, after printing the body to stderr.
http() {
	local method="$1" url="$2" body="${3:-}" out code
	out="$(mktemp)"
	if [ -n "$body" ]; then
		code="$(curl -sS --max-time 30 -o "$out" -w '%{http_code}' -X "$method" \
			-H 'Content-Type: application/json' --data "$body" "$url")"
	else
		code="$(curl -sS --max-time 30 -o "$out" -w '%{http_code}' -X "$method" "$url")"
	fi
	if [ "$code" -ge 400 ]; then
		log "$method $url -> HTTP $code: $(cat "$out")"
		rm -f "$out"
		return 1
	fi
	cat "$out"
	rm -f "$out"
}

# ---------------------------------------------------------------- Pub/Sub ---
pubsub_smoke() {
	local t0 base topic sub payload resp got attr ack
	t0=$SECONDS
	local exports
	exports="$(bash "$HERE/pubsub-emulator.sh" start)" || return 1
	eval "$exports"
	log "Pub/Sub emulator up in $((SECONDS - t0))s: PUBSUB_EMULATOR_HOST=$PUBSUB_EMULATOR_HOST"

	base="http://$PUBSUB_EMULATOR_HOST/v1/projects/test-project"
	topic="smoke-topic-$$"
	sub="smoke-sub-$$"
	payload='{"recipe_id":42,"event":"smoke"}'

	http PUT "$base/topics/$topic" '{}' >/dev/null || return 1
	http PUT "$base/subscriptions/$sub" \
		"{\"topic\":\"projects/test-project/topics/$topic\",\"ackDeadlineSeconds\":30}" >/dev/null || return 1
	resp="$(http POST "$base/topics/$topic:publish" \
		"{\"messages\":[{\"data\":\"$(printf '%s' "$payload" | base64 -w0)\",\"attributes\":{\"origin\":\"smoke\"}}]}")" || return 1
	log "published: $(jq -c . <<<"$resp")"

	# returnImmediately: a plain pull on an empty subscription blocks (>40s seen).
	resp=""
	for _ in $(seq 1 20); do
		resp="$(http POST "$base/subscriptions/$sub:pull" '{"maxMessages":10,"returnImmediately":true}')" || return 1
		[ "$(jq '.receivedMessages // [] | length' <<<"$resp")" -gt 0 ] && break
		sleep 0.25
	done
	log "pulled: $(jq -c '.receivedMessages' <<<"$resp")"
	got="$(jq -r '.receivedMessages[0].message.data // empty' <<<"$resp" | base64 -d)"
	attr="$(jq -r '.receivedMessages[0].message.attributes.origin // empty' <<<"$resp")"
	ack="$(jq -r '.receivedMessages[0].ackId // empty' <<<"$resp")"
	if [ "$got" != "$payload" ] || [ "$attr" != smoke ]; then
		log "expected data $payload with attribute origin=smoke, got '$got' / '$attr'"
		return 1
	fi
	http POST "$base/subscriptions/$sub:acknowledge" "{\"ackIds\":[\"$ack\"]}" >/dev/null || return 1
	resp="$(http POST "$base/subscriptions/$sub:pull" '{"maxMessages":10,"returnImmediately":true}')" || return 1
	[ "$(jq '.receivedMessages // [] | length' <<<"$resp")" -eq 0 ] || {
		log "message was redelivered after ack: $resp"
		return 1
	}
	log "Pub/Sub round trip OK: create topic+subscription, publish, pull, ack"
}

# --------------------------------------------------------------- BigQuery ---
bigquery_smoke() {
	local t0 base ds resp rows
	t0=$SECONDS
	local exports
	exports="$(bash "$HERE/bigquery-emulator.sh" start)" || return 1
	eval "$exports"
	log "BigQuery emulator up in $((SECONDS - t0))s (incl. install check): BIGQUERY_EMULATOR_HOST=$BIGQUERY_EMULATOR_HOST BIGQUERY_STORAGE_EMULATOR_HOST=$BIGQUERY_STORAGE_EMULATOR_HOST"

	port_in_use "${BIGQUERY_STORAGE_EMULATOR_HOST##*:}" || {
		log "Storage gRPC port is not listening"
		return 1
	}

	base="http://$BIGQUERY_EMULATOR_HOST/bigquery/v2/projects/test-project"
	ds="smoke_$$"
	http POST "$base/datasets" \
		"{\"datasetReference\":{\"projectId\":\"test-project\",\"datasetId\":\"$ds\"}}" >/dev/null || return 1
	http POST "$base/datasets/$ds/tables" "{
		\"tableReference\":{\"projectId\":\"test-project\",\"datasetId\":\"$ds\",\"tableId\":\"events\"},
		\"schema\":{\"fields\":[
			{\"name\":\"id\",\"type\":\"INTEGER\",\"mode\":\"REQUIRED\"},
			{\"name\":\"name\",\"type\":\"STRING\"},
			{\"name\":\"amount\",\"type\":\"FLOAT\"},
			{\"name\":\"ts\",\"type\":\"TIMESTAMP\"}]}}" >/dev/null || return 1
	resp="$(http POST "$base/datasets/$ds/tables/events/insertAll" '{
		"rows":[{"insertId":"smoke-1","json":{"id":7,"name":"seven","amount":1.5,"ts":"2026-01-02T03:04:05Z"}}]}')" || return 1
	log "insertAll: $(jq -c . <<<"$resp")"
	[ "$(jq '.insertErrors // [] | length' <<<"$resp")" -eq 0 ] || return 1

	resp="$(http POST "$base/queries" "{\"useLegacySql\":false,
		\"query\":\"SELECT id, name, amount, ts, ST_ASTEXT(ST_GEOGPOINT(1, 2)) AS geo FROM \`test-project.$ds.events\` ORDER BY id\"}")" || return 1
	rows="$(jq -c '[.rows[]? | [.f[].v]]' <<<"$resp")"
	log "query rows: $rows (schema: $(jq -c '[.schema.fields[] | .name + ":" + .type]' <<<"$resp"))"
	# TIMESTAMP comes back as int64 microseconds (see README).
	[ "$rows" = '[["7","seven","1.5","1767323045000000","POINT(1 2)"]]' ] ||
		[ "$rows" = '[["7","seven","1.5","1767323045000000","POINT (1 2)"]]' ] || {
		log "unexpected query result"
		return 1
	}
	log "BigQuery round trip OK: create dataset+table, insertAll, query (GEOGRAPHY via the offline spatial extension)"
}

if (pubsub_smoke); then pass "Pub/Sub emulator"; else fail "Pub/Sub emulator"; fi
if (bigquery_smoke); then pass "BigQuery emulator"; else fail "BigQuery emulator"; fi

echo "smoke: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
