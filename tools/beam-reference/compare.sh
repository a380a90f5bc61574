#!/usr/bin/env bash
# Regenerate (or check) the Beam DirectRunner reference outputs of the comparison cases.
#
#   tools/beam-reference/compare.sh                 # regenerate expected.jsonl for every case
#   tools/beam-reference/compare.sh map_filter ...  # only these cases
#   tools/beam-reference/compare.sh --check         # re-run Beam, diff against the stored files,
#                                                   # change nothing; exit 1 on any difference
#
# Each case is cases/NAME/ with pipeline.yaml and optionally input.jsonl or input.csv. The pipeline
# is run as
#   run_beam.py pipeline.yaml --var input=<case>/input.jsonl --var output=<tmp>/out
# and every file Beam wrote whose name starts with <tmp>/out is collected into
#   expected.jsonl      rows as JSON objects with sorted keys, compact, lines sorted (normalised)
#   expected.raw.jsonl  the lines exactly as Beam's WriteToJson wrote them (only sorted)
#   expected.files      the names of the files Beam wrote, the configured path shown as <path>
# A case holding a file `expect_fail` must FAIL; its first line is a regex that Beam's error
# output has to match (used for what does not work offline, e.g. the sql language).
#
# Needs the venv from setup.sh (runs it when missing). Sluice can run the same cases with
#   sluice run cases/NAME/pipeline.yaml --var input=... --var output=...
# and compare its normalised rows with expected.jsonl.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${SLUICE_BEAM_VENV:-/var/tmp/sluice-beam-venv}"
CHECK=0
CASES=()
for a in "$@"; do
  case "$a" in
    --check) CHECK=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) CASES+=("$a") ;;
  esac
done
if [[ ${#CASES[@]} -eq 0 ]]; then
  for d in "$HERE"/cases/*/; do CASES+=("$(basename "$d")"); done
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  "$HERE/setup.sh" || exit 1
fi
PY="$VENV/bin/python"
# Beam's YAML Flatten builds its output schema from a Python set, so the field order of rows
# after a Flatten (raw JSON key order, CSV column order) depends on string hashing. Pin it.
export PYTHONHASHSEED="${PYTHONHASHSEED:-0}"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/sluice-beam-ref.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

pass=0; fail=0
for name in "${CASES[@]}"; do
  dir="$HERE/cases/$name"
  if [[ ! -f "$dir/pipeline.yaml" ]]; then
    echo "FAIL $name: no $dir/pipeline.yaml"; fail=$((fail+1)); continue
  fi
  work="$TMP/$name"; mkdir -p "$work"
  vars=(--var "output=$work/out")
  if [[ -f "$dir/input.jsonl" ]]; then vars+=(--var "input=$dir/input.jsonl")
  elif [[ -f "$dir/input.csv" ]]; then vars+=(--var "input=$dir/input.csv"); fi

  "$PY" "$HERE/run_beam.py" "$dir/pipeline.yaml" "${vars[@]}" \
      --collect "$work/out=$work/expected.jsonl" >"$work/log" 2>&1
  rc=$?

  if [[ -f "$dir/expect_fail" ]]; then
    pattern="$(head -n1 "$dir/expect_fail")"
    if [[ $rc -ne 0 ]] && grep -Eq -- "$pattern" "$work/log"; then
      echo "ok   $name (fails as expected: /$pattern/)"
      pass=$((pass+1))
    else
      echo "FAIL $name: expected a failure matching /$pattern/ (exit $rc); log:"; tail -n 20 "$work/log"
      fail=$((fail+1))
    fi
    continue
  fi
  if [[ $rc -ne 0 ]]; then
    echo "FAIL $name: Beam exited $rc; log:"; tail -n 20 "$work/log"; fail=$((fail+1)); continue
  fi
  # Raw lines exactly as written (all shards), sorted bytewise for stability.
  shards=( "$work"/out* )
  LC_ALL=C cat "${shards[@]}" | LC_ALL=C sort > "$work/expected.raw.jsonl"
  shard_names="$(cd "$work" && ls out* | tr '\n' ' ')"
  # The names of the files Beam wrote, with the configured path shown as <path>.
  (cd "$work" && LC_ALL=C ls -1 out* | sed 's/^out/<path>/') > "$work/expected.files"

  if [[ $CHECK -eq 1 ]]; then
    if cmp -s "$work/expected.jsonl" "$dir/expected.jsonl" && cmp -s "$work/expected.raw.jsonl" "$dir/expected.raw.jsonl" \
        && cmp -s "$work/expected.files" "$dir/expected.files"; then
      echo "ok   $name ($(wc -l < "$work/expected.jsonl") rows)"; pass=$((pass+1))
    else
      echo "FAIL $name: Beam output differs from stored expected files"
      diff -u "$dir/expected.jsonl" "$work/expected.jsonl" | head -n 40
      fail=$((fail+1))
    fi
  else
    cp "$work/expected.jsonl" "$dir/expected.jsonl"
    cp "$work/expected.raw.jsonl" "$dir/expected.raw.jsonl"
    cp "$work/expected.files" "$dir/expected.files"
    echo "ok   $name ($(wc -l < "$dir/expected.jsonl") rows; Beam wrote: $shard_names)"
    pass=$((pass+1))
  fi
done

echo "beam-reference: $("$PY" -c 'import platform, apache_beam, pandas; print("apache-beam", apache_beam.__version__, "pandas", pandas.__version__, "python", platform.python_version())' 2>/dev/null)"
echo "$pass passed, $fail failed"
[[ $fail -eq 0 ]]
