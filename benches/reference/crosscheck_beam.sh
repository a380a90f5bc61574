#!/usr/bin/env bash
# Cross-check reference.py against Beam's DirectRunner on a small sample of the standard workload.
#   benches/reference/crosscheck_beam.sh [EVENTS] [SEED]     (defaults 20000 1)
# Generates EVENTS events, runs reference.py and standard_workload.beam.yaml (via
# tools/beam-reference/run_beam.py), converts Beam's window_string "[start, end)" (epoch seconds)
# to RFC 3339 and compares every row. Needs tools/beam-reference/setup.sh's venv.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
N="${1:-20000}"; SEED="${2:-1}"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/sluice-xcheck.XXXXXX")"; trap 'rm -rf "$TMP"' EXIT
python3 "$HERE/gen_events.py" --events "$N" --seed "$SEED" --out "$TMP/events.jsonl"
python3 "$HERE/reference.py" "$TMP/events.jsonl" --out "$TMP/reference.jsonl"
t0=$(date +%s.%N)
python3 "$ROOT/tools/beam-reference/run_beam.py" "$HERE/standard_workload.beam.yaml" \
  --var "input=$TMP/events.jsonl" --var "output=$TMP/beam/out" \
  --collect "$TMP/beam/out=$TMP/beam.jsonl" 2> "$TMP/beam.log" || { tail -20 "$TMP/beam.log"; exit 1; }
t1=$(date +%s.%N)
echo "crosscheck: Beam DirectRunner took $(python3 -c "print(round($t1-$t0,1))") s for $N events"
python3 - "$TMP/reference.jsonl" "$TMP/beam.jsonl" <<'PY'
import json, sys, time
def rfc(sec):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sec))
ref = [json.loads(l) for l in open(sys.argv[1])]
beam = []
for l in open(sys.argv[2]):
    r = json.loads(l)
    start, end = r.pop("window_string").strip("[)").split(", ")
    r["window_start"], r["window_end"] = rfc(float(start)), rfc(float(end))
    beam.append(r)
key = lambda r: json.dumps(r, sort_keys=True)
a, b = sorted(map(key, ref)), sorted(map(key, beam))
if a == b:
    print("crosscheck: reference.py == Beam DirectRunner (%d rows)" % len(a))
    print("1 passed, 0 failed")
else:
    sa, sb = set(a), set(b)
    print("crosscheck: MISMATCH: %d rows only in reference, %d only in Beam" % (len(sa - sb), len(sb - sa)))
    for x in sorted(sa - sb)[:5]: print("  ref :", x)
    for x in sorted(sb - sa)[:5]: print("  beam:", x)
    print("0 passed, 1 failed")
    sys.exit(1)
PY
