#!/usr/bin/env python3
"""Plain-Python reference result for Sluice's standard workload.

Usage:
  reference.py INPUT.jsonl [--out FILE] [--window 60]

The workload: 1-minute tumbling event-time windows keyed by (recipe_id, action), with
count(*), sum(watch_seconds) and count_distinct(user_id). Input is bounded and every event is on
time (the watermark jumps to +inf at end of input), so every event lands in the window
[floor(t / 60 s) * 60 s, that + 60 s) of its own event_time, and every window fires exactly once.

Output (JSON Lines, one row per (window, recipe_id, action) that has at least one event):

  {"window_start":"2026-01-01T00:00:00Z","window_end":"2026-01-01T00:01:00Z","recipe_id":"r0001",
   "action":"cook","count":12,"sum_watch_seconds":3456,"distinct_users":12}

- keys in exactly that order; compact separators (",", ":"), no spaces; "\\n" line ends
- window_start / window_end: RFC 3339 UTC, format "%Y-%m-%dT%H:%M:%SZ" (whole seconds, "Z" suffix,
  no fractional part); if --window is not a whole number of seconds the bounds get ".mmm"
- count, distinct_users: integers; sum_watch_seconds: integer when every watch_seconds is an
  integer, else a float
- rows sorted by (window_start, recipe_id, action) — byte order of the strings, which for this
  format is chronological
- events whose watch_seconds is null/missing count in count, add nothing to the sum; events with
  a null/missing user_id are not counted in distinct_users (SQL COUNT(DISTINCT) semantics)

event_time accepts RFC 3339 with "Z" or an offset and any number of fractional digits (the
generator writes "YYYY-MM-DDTHH:MM:SS.mmmZ", parsed by a fast path), or epoch seconds (number).
Prints a summary (events, windows, rows, time) to stderr.
"""

import argparse
import calendar
import datetime
import json
import sys
import time


def _fmt(ms):
    sec, frac = divmod(ms, 1000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return base + ("Z" if frac == 0 else ".%03dZ" % frac)


def _slow_parse(v):
    """event_time -> epoch milliseconds (int)."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return int(v * 1000) if isinstance(v, float) else v * 1000
    s = str(v).strip()
    if s.endswith("Z") or s.endswith("z"):
        s = s[:-1] + "+00:00"
    # fromisoformat in 3.11 accepts any fraction length and offsets.
    dt = datetime.datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    delta = dt - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000


def aggregate(path, window_ms):
    groups = {}  # (window_start_ms, recipe_id, action) -> [count, sum, set(users)]
    sec_cache = {}
    n = 0
    timegm = calendar.timegm
    loads = json.loads
    opener = sys.stdin if path == "-" else open(path, "r", encoding="utf-8", buffering=1 << 20)
    with opener as f:
        for line in f:
            if not line.strip():
                continue
            ev = loads(line)
            n += 1
            et = ev["event_time"]
            # Fast path: "YYYY-MM-DDTHH:MM:SS.mmmZ" (what gen_events.py writes).
            if type(et) is str and len(et) == 24 and et[19] == "." and et[23] == "Z":
                key = et[:19]
                sec = sec_cache.get(key)
                if sec is None:
                    if len(sec_cache) > 8192:
                        sec_cache.clear()
                    sec = timegm(time.strptime(key, "%Y-%m-%dT%H:%M:%S"))
                    sec_cache[key] = sec
                t = sec * 1000 + int(et[20:23])
            else:
                t = _slow_parse(et)
            ws = t - (t % window_ms)  # floor, also for negative t
            k = (ws, ev["recipe_id"], ev["action"])
            g = groups.get(k)
            if g is None:
                g = groups[k] = [0, 0, set()]
            g[0] += 1
            w = ev.get("watch_seconds")
            if w is not None:
                g[1] += w
            u = ev.get("user_id")
            if u is not None:
                g[2].add(u)
    return n, groups


def write(groups, out_path, window_ms):
    fmt_cache = {}

    def fmt(ms):
        s = fmt_cache.get(ms)
        if s is None:
            s = fmt_cache[ms] = _fmt(ms)
        return s

    rows = sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2]))
    dumps = json.dumps
    out = sys.stdout if out_path == "-" else open(out_path, "w", encoding="utf-8",
                                                  newline="\n", buffering=1 << 20)
    try:
        buf = []
        for (ws, recipe, action), (cnt, total, users) in rows:
            buf.append(dumps({
                "window_start": fmt(ws),
                "window_end": fmt(ws + window_ms),
                "recipe_id": recipe,
                "action": action,
                "count": cnt,
                "sum_watch_seconds": total,
                "distinct_users": len(users),
            }, separators=(",", ":"), ensure_ascii=False))
            if len(buf) >= 10000:
                out.write("\n".join(buf) + "\n")
                buf.clear()
        if buf:
            out.write("\n".join(buf) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return len(rows), len({k[0] for k in groups})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("input", help="JSON Lines events ('-' for stdin)")
    ap.add_argument("--out", default="-", help="output JSON Lines ('-' for stdout, the default)")
    ap.add_argument("--window", type=float, default=60.0, help="window size in seconds")
    a = ap.parse_args(argv)
    window_ms = int(round(a.window * 1000))
    if window_ms <= 0:
        ap.error("--window must be positive")
    t0 = time.perf_counter()
    n, groups = aggregate(a.input, window_ms)
    t1 = time.perf_counter()
    rows, windows = write(groups, a.out, window_ms)
    t2 = time.perf_counter()
    sys.stderr.write("reference: %d events -> %d windows, %d rows; read+aggregate %.1f s, "
                     "write %.1f s\n" % (n, windows, rows, t1 - t0, t2 - t1))


if __name__ == "__main__":
    main()
