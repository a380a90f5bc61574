#!/usr/bin/env python3
"""Run a Beam YAML pipeline on Apache Beam's Python DirectRunner, offline.

Usage:
  run_beam.py PIPELINE.yaml [--var K=V]... [--collect PREFIX=FILE]... [--runner R]
              [--test] [--keep-prism]

  --var K=V          Jinja variable (Beam YAML templating; like `sluice run --var`).
                     Repeatable. Values are strings.
  --collect P=FILE   After the run, read every file whose name starts with P (Beam adds
                     shard suffixes such as `-00000-of-00001`), parse each line as JSON,
                     and write FILE normalised: one JSON object per line with sorted keys,
                     compact separators, lines sorted. Repeatable.
  --runner R         Beam runner (default DirectRunner).
  --test             Run the pipeline's `tests:` section instead (python -m
                     apache_beam.yaml.main --tests).
  --keep-prism       Let Beam's DirectRunner try the Prism runner first. By default this
                     script disables that attempt: Prism is a Go binary that Beam downloads
                     from GitHub at run time, which fails here (no network besides package
                     registries). Without Prism, DirectRunner runs on the FnApiRunner
                     (batch) — the same engine it falls back to anyway.

The script re-executes itself under the virtualenv made by setup.sh
(${SLUICE_BEAM_VENV:-/var/tmp/sluice-beam-venv}) when apache_beam is not importable.
Exit code: 0 success, 1 pipeline failure, 2 usage error.
"""

import argparse
import glob
import json
import os
import sys

VENV = os.environ.get("SLUICE_BEAM_VENV", "/var/tmp/sluice-beam-venv")


def _ensure_beam():
    try:
        import apache_beam  # noqa: F401
        import apache_beam.yaml.main  # noqa: F401
        return
    except ImportError:
        pass
    py = os.path.join(VENV, "bin", "python")
    if os.environ.get("_SLUICE_BEAM_REEXEC") or not os.path.exists(py):
        sys.stderr.write(
            "run_beam.py: apache_beam is not importable; run tools/beam-reference/setup.sh "
            "(venv %s)\n" % VENV)
        sys.exit(2)
    os.environ["_SLUICE_BEAM_REEXEC"] = "1"
    os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])


def normalise_rows(rows):
    """Each row -> compact JSON with sorted keys; rows sorted by that text."""
    lines = [json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
             for r in rows]
    lines.sort()
    return lines


def collect(prefix, out_file):
    files = sorted(f for f in glob.glob(glob.escape(prefix) + "*")
                   if os.path.isfile(f) and os.path.abspath(f) != os.path.abspath(out_file))
    rows = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if line:
                    rows.append(json.loads(line))
    lines = normalise_rows(rows)
    with open(out_file, "w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(line + "\n")
    return files, len(lines)


def _disable_prism():
    """Make DirectRunner skip its Prism attempt (which would try to download a binary)."""
    from apache_beam.runners.direct import direct_runner

    orig = direct_runner.SwitchingDirectRunner.run_pipeline

    def run_pipeline(self, pipeline, options):
        from apache_beam.runners.portability import prism_runner

        class _NoPrism(object):
            def run_pipeline(self, *a, **k):
                # DirectRunner catches this and falls back to its Python runners.
                raise RuntimeError("Prism disabled by run_beam.py (offline)")

        saved = prism_runner.PrismRunner
        prism_runner.PrismRunner = _NoPrism
        try:
            return orig(self, pipeline, options)
        finally:
            prism_runner.PrismRunner = saved

    direct_runner.SwitchingDirectRunner.run_pipeline = run_pipeline


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pipeline")
    ap.add_argument("--var", action="append", default=[], metavar="K=V")
    ap.add_argument("--collect", action="append", default=[], metavar="PREFIX=FILE")
    ap.add_argument("--runner", default="DirectRunner")
    ap.add_argument("--test", action="store_true")
    ap.add_argument("--keep-prism", action="store_true")
    args, extra = ap.parse_known_args(argv)

    jinja = {}
    for kv in args.var:
        if "=" not in kv:
            ap.error("--var expects K=V, got %r" % kv)
        k, v = kv.split("=", 1)
        jinja[k] = v
    collects = []
    for c in args.collect:
        if "=" not in c:
            ap.error("--collect expects PREFIX=FILE, got %r" % c)
        collects.append(tuple(c.split("=", 1)))
    if not os.path.exists(args.pipeline):
        ap.error("no such pipeline file: %s" % args.pipeline)

    _ensure_beam()
    import logging
    logging.basicConfig()
    # LogForTesting logs through the root logger (logging.info by default): keep the
    # root at INFO so its lines show, and Beam's own loggers at BEAM_LOG_LEVEL.
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("apache_beam").setLevel(os.environ.get("BEAM_LOG_LEVEL", "WARNING"))
    if "BEAM_LOG_LEVEL" not in os.environ:
        # Beam's dataframe layer (behind ReadFromJson/ReadFromCsv) logs plan dumps on the root
        # logger at INFO; hide them unless asked for.
        for h in logging.getLogger().handlers:
            h.addFilter(lambda r: not (r.name == "root" and
                                       str(r.msg).startswith("Computing dataframe stage")))
    import apache_beam
    from apache_beam.yaml import main as yaml_main

    if not args.keep_prism:
        _disable_prism()

    beam_argv = ["--yaml_pipeline_file=" + args.pipeline, "--runner=" + args.runner]
    if jinja:
        beam_argv.append("--jinja_variables=" + json.dumps(jinja))
    beam_argv += extra
    sys.stderr.write("run_beam.py: apache-beam %s, %s %s\n" %
                     (apache_beam.__version__, args.runner, " ".join(beam_argv)))
    try:
        if args.test:
            yaml_main.run_tests(beam_argv, exit=False)
        else:
            yaml_main.run(beam_argv)
    except Exception as e:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        sys.stderr.write("run_beam.py: pipeline failed: %s: %s\n" % (type(e).__name__, e))
        return 1
    for prefix, out in collects:
        files, n = collect(prefix, out)
        sys.stderr.write("run_beam.py: collected %d rows from %s -> %s\n" %
                         (n, ", ".join(files) or "(no files)", out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
