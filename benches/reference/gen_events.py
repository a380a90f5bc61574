#!/usr/bin/env python3
"""Deterministic generator of recipe events (JSON Lines) for Sluice's standard workload.

Usage:
  gen_events.py --events N [--seed S] --out FILE [--start 2026-01-01T00:00:00Z]
                [--rate 2000] [--jitter 5] [--recipes 2000] [--users 100000]

One JSON object per line, keys in this order, about 140-150 bytes per line:

  {"event_id":"e0000000000","recipe_id":"r0001","user_id":"u000001","action":"view",
   "watch_seconds":123,"event_time":"2026-01-01T00:00:00.123Z"}

- event_id      "e" + 10-digit sequence number: unique within a file
- recipe_id     "r0001".."r2000" (uniform)
- user_id       "u000001".."u100000" (uniform)
- action        view 60 %, like 15 %, save 10 %, cook 10 %, share 5 %
- watch_seconds int, uniform 0..600
- event_time    RFC 3339 UTC with milliseconds; event i's nominal time is start + i / rate seconds,
                plus a uniform integer jitter in [-jitter, +jitter] seconds, in whole milliseconds
                (so the input is mildly out of order; the first events fall before start).

The same arguments always produce the same bytes (random.Random(seed); no clock, no hashing).
FILE "-" writes to stdout.
"""

import argparse
import calendar
import datetime
import random
import sys
import time

ACTIONS = ["view"] * 12 + ["like"] * 3 + ["save"] * 2 + ["cook"] * 2 + ["share"]  # 20 slots


def parse_start(s):
    s = s.strip()
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    dt = datetime.datetime.fromisoformat(s)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return int(round(dt.timestamp() * 1000))


def generate(out, n, seed, start_ms, rate, jitter_s, n_recipes, n_users, chunk=20000):
    rng = random.Random(seed)
    r = rng.random
    recipes = ["r%04d" % (k + 1) for k in range(n_recipes)]
    users = ["u%06d" % (k + 1) for k in range(n_users)]
    actions = ACTIONS
    n_actions = len(actions)
    jitter_ms = int(round(jitter_s * 1000))
    span = 2 * jitter_ms + 1  # jitter is a uniform integer in [-jitter_ms, +jitter_ms]
    sec_cache = {}
    gmtime = time.gmtime
    strftime = time.strftime
    buf = []
    append = buf.append
    for i in range(n):
        t = start_ms + (i * 1000) // rate + int(r() * span) - jitter_ms
        sec, ms = divmod(t, 1000)
        prefix = sec_cache.get(sec)
        if prefix is None:
            if len(sec_cache) > 4096:
                sec_cache.clear()
            prefix = strftime("%Y-%m-%dT%H:%M:%S", gmtime(sec))
            sec_cache[sec] = prefix
        append('{"event_id":"e%010d","recipe_id":"%s","user_id":"%s","action":"%s",'
               '"watch_seconds":%d,"event_time":"%s.%03dZ"}\n' % (
                   i, recipes[int(r() * n_recipes)], users[int(r() * n_users)],
                   actions[int(r() * n_actions)], int(r() * 601), prefix, ms))
        if len(buf) >= chunk:
            out.write("".join(buf))
            buf.clear()
    if buf:
        out.write("".join(buf))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--start", default="2026-01-01T00:00:00Z")
    ap.add_argument("--rate", type=int, default=2000, help="events per second of event time")
    ap.add_argument("--jitter", type=float, default=5.0, help="uniform +- jitter, seconds")
    ap.add_argument("--recipes", type=int, default=2000)
    ap.add_argument("--users", type=int, default=100000)
    a = ap.parse_args(argv)
    if a.events < 0 or a.rate <= 0 or a.recipes <= 0 or a.users <= 0 or a.jitter < 0:
        ap.error("counts and rate must be positive, jitter non-negative")
    t0 = time.perf_counter()
    start_ms = parse_start(a.start)
    if a.out == "-":
        generate(sys.stdout, a.events, a.seed, start_ms, a.rate, a.jitter, a.recipes, a.users)
    else:
        with open(a.out, "w", encoding="ascii", newline="\n", buffering=1 << 20) as f:
            generate(f, a.events, a.seed, start_ms, a.rate, a.jitter, a.recipes, a.users)
    sys.stderr.write("gen_events: %d events, seed %d -> %s in %.1f s\n" %
                     (a.events, a.seed, a.out, time.perf_counter() - t0))


if __name__ == "__main__":
    main()
