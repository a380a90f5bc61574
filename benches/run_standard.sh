#!/usr/bin/env bash
# Runs Sluice's standard workload on generated recipe events and checks the result against the
# plain-Python reference (benches/reference/reference.py), row for row.
#
#   benches/run_standard.sh [standard|watermark|passthrough]
#
# standard (default): benches/standard_workload.yaml, compared exactly with reference.py.
# watermark: benches/standard_workload_watermark.yaml (the same with a generated watermark, so
# windows fire and free their state during the run), compared exactly with reference.py.
# passthrough: benches/json_passthrough.yaml (JSON in, SQL projection, JSON out), row count checked.
#
# Environment: EVENTS (default 2000000), SEED (42), BENCH_DIR (/var/tmp/sluice-bench: cached
# input and reference output), SLUICE (the binary; default $CARGO_TARGET_DIR or target, release).
# Prints wall time, events/s and peak RSS (from /usr/bin/time -v), and exits non-zero when the
# output differs from the reference.
set -euo pipefail

workload="${1:-standard}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
events="${EVENTS:-2000000}"
seed="${SEED:-42}"
dir="${BENCH_DIR:-/var/tmp/sluice-bench}"
sluice="${SLUICE:-${CARGO_TARGET_DIR:-$root/target}/release/sluice}"
mkdir -p "$dir"

input="$dir/events-$events-$seed.jsonl"
reference="$dir/reference-$events-$seed.jsonl"
if [ ! -s "$input" ]; then
  echo "generating $events events -> $input" >&2
  python3 "$here/reference/gen_events.py" --events "$events" --seed "$seed" --out "$input.tmp"
  mv "$input.tmp" "$input"
fi
if [ "$workload" != passthrough ] && [ ! -s "$reference" ]; then
  echo "computing the reference result -> $reference" >&2
  python3 "$here/reference/reference.py" "$input" --out "$reference.tmp"
  mv "$reference.tmp" "$reference"
fi
if [ ! -x "$sluice" ]; then
  echo "building $sluice (cargo build --release)" >&2
  (cd "$root" && cargo build --release --bin sluice)
fi
if [ ! -x /usr/bin/time ]; then
  echo "installing GNU time" >&2
  apt-get install -y time >/dev/null
fi

case "$workload" in
  standard) pipeline="$here/standard_workload.yaml" ;;
  watermark) pipeline="$here/standard_workload_watermark.yaml" ;;
  passthrough) pipeline="$here/json_passthrough.yaml" ;;
  *) echo "unknown workload '$workload' (standard | watermark | passthrough)" >&2; exit 2 ;;
esac

out="$dir/out-$workload"
rm -rf "$out"
mkdir -p "$out"
timing="$dir/time-$workload.txt"
/usr/bin/time -v "$sluice" run "$pipeline" --var input="$input" --var output="$out/result" \
  >"$dir/run-$workload.log" 2>"$timing" || {
  cat "$timing" >&2
  exit 1
}

python3 - "$workload" "$events" "$timing" "$reference" "$out" <<'PY'
import glob, json, re, sys, datetime

workload, events, timing, reference, out = sys.argv[1:]
events = int(events)
text = open(timing).read()

def field(label):
    m = re.search(re.escape(label) + r":\s*(.+)", text)
    return m.group(1).strip() if m else None

wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss)")
secs = 0.0
for part in wall.split(":"):
    secs = secs * 60 + float(part)
rss_mb = int(field("Maximum resident set size (kbytes)")) / 1024
user, sys_ = float(field("User time (seconds)")), float(field("System time (seconds)"))
cpu = user + sys_
print(f"{workload}: {events} events in {secs:.2f} s wall = {events / secs:,.0f} events/s; "
      f"cpu {cpu:.2f} s (user {user:.2f}, sys {sys_:.2f}) = {events / cpu:,.0f} events/s per core; "
      f"peak RSS {rss_mb:.0f} MB")

paths = sorted(p for p in glob.glob(out + "/result-[0-9]*-of-*"))
rows = []
for p in paths:
    with open(p) as f:
        rows.extend(json.loads(l) for l in f if l.strip())

if workload == "passthrough":
    if len(rows) != events:
        sys.exit(f"FAIL: {len(rows)} rows written, expected {events}")
    print(f"OK: {len(rows)} rows")
    sys.exit(0)

def rfc3339(v):
    # Window bounds may come as RFC 3339 text or epoch milliseconds; normalise to reference.py's
    # format (whole seconds, `Z`).
    if isinstance(v, (int, float)):
        t = datetime.datetime.fromtimestamp(v / 1000, datetime.timezone.utc)
    else:
        t = datetime.datetime.fromisoformat(str(v).replace("Z", "+00:00"))
    t = t.astimezone(datetime.timezone.utc)
    base = t.strftime("%Y-%m-%dT%H:%M:%S")
    ms = t.microsecond // 1000
    return base + ("Z" if ms == 0 else ".%03dZ" % ms)

keys = ["window_start", "window_end", "recipe_id", "action", "count", "sum_watch_seconds",
        "distinct_users"]
norm = []
for r in rows:
    missing = [k for k in keys if k not in r]
    if missing:
        sys.exit(f"FAIL: output row lacks {missing}: {r}")
    r = {k: r[k] for k in keys}
    r["window_start"], r["window_end"] = rfc3339(r["window_start"]), rfc3339(r["window_end"])
    for k in ("count", "sum_watch_seconds", "distinct_users"):
        if isinstance(r[k], float) and r[k].is_integer():
            r[k] = int(r[k])
    norm.append(json.dumps(r, separators=(",", ":"), ensure_ascii=False))
norm.sort(key=lambda s: (json.loads(s)["window_start"], json.loads(s)["recipe_id"],
                         json.loads(s)["action"]))
expected = open(reference).read().splitlines()
if norm == expected:
    print(f"OK: {len(norm)} rows identical to reference.py")
    sys.exit(0)
print(f"FAIL: {len(norm)} rows, reference has {len(expected)}")
exp, got = set(expected), set(norm)
for line in sorted(exp - got)[:5]:
    print("  missing:", line)
for line in sorted(got - exp)[:5]:
    print("  unexpected:", line)
sys.exit(1)
PY
