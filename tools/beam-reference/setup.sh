#!/usr/bin/env bash
# Create (or reuse) a virtualenv holding Apache Beam's Python SDK with the YAML extra,
# used by run_beam.py / compare.sh as the DirectRunner reference for Sluice.
#
#   tools/beam-reference/setup.sh                      # venv at ${SLUICE_BEAM_VENV:-/var/tmp/sluice-beam-venv}
#   BEAM_VERSION=2.xx.0 tools/beam-reference/setup.sh  # another Beam version
#   BEAM_VERSION=latest tools/beam-reference/setup.sh  # whatever PyPI serves now, unpinned
#
# The default version is the one cases/*/expected*.jsonl were generated with (Beam's JSON output
# depends on it and on pandas). Only PyPI is needed. A venv that imports apache_beam.yaml at the
# wanted version is reused. The installed versions (apache-beam, pandas, python) are written to
# $VENV/BEAM_VERSION and to BEAM_VERSION.installed next to this script.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${SLUICE_BEAM_VENV:-/var/tmp/sluice-beam-venv}"
PYTHON="${PYTHON:-python3}"
BEAM_VERSION="${BEAM_VERSION:-2.77.0}"
if [[ "$BEAM_VERSION" == "latest" ]]; then
  BEAM_VERSION=""
  SPEC="apache-beam[yaml]"
else
  SPEC="apache-beam[yaml]==${BEAM_VERSION}"
fi

venv_ok() {
  [[ -x "$VENV/bin/python" ]] || return 1
  "$VENV/bin/python" - <<'PY' >/dev/null 2>&1 || return 1
import apache_beam, apache_beam.yaml.main, jinja2, yaml  # noqa: F401
PY
  if [[ -n "${BEAM_VERSION:-}" ]]; then
    [[ "$("$VENV/bin/python" -c 'import apache_beam; print(apache_beam.__version__)')" == "$BEAM_VERSION" ]] || return 1
  fi
}

if venv_ok; then
  echo "setup.sh: reusing $VENV"
else
  if [[ -d "$VENV" ]]; then
    echo "setup.sh: $VENV exists but is incomplete; recreating" >&2
    rm -rf "$VENV"
  fi
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip wheel
  "$VENV/bin/python" -m pip install "$SPEC"
  venv_ok || { echo "setup.sh: install finished but apache_beam.yaml does not import" >&2; exit 1; }
fi

VERSIONS="$("$VENV/bin/python" - <<'PY' 2>/dev/null
import platform, apache_beam, pandas
print("apache-beam %s pandas %s python %s" % (apache_beam.__version__, pandas.__version__, platform.python_version()))
PY
)"
echo "$VERSIONS" > "$VENV/BEAM_VERSION"
echo "$VERSIONS" > "$HERE/BEAM_VERSION.installed"
echo "setup.sh: $VERSIONS in $VENV"
