#!/usr/bin/env python3
"""Checks rendered manifests against Pod Security "restricted", plus Sluice's own rules:
read-only root filesystem and resource requests/limits for every container.

usage: check_security.py RENDERED.yaml...   (exit 1 listing every violation)
"""
import sys

import yaml

POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod"}


def pod_spec(obj):
    kind = obj.get("kind")
    if kind == "Pod":
        return obj.get("spec", {})
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def check(obj):
    name = f'{obj["kind"]}/{obj["metadata"]["name"]}'
    spec = pod_spec(obj)
    pod_sc = spec.get("securityContext", {})
    problems = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            problems.append(f"{name}: {key} must not be set")
    for vol in spec.get("volumes", []):
        if "hostPath" in vol:
            problems.append(f'{name}: volume {vol["name"]} uses hostPath')
    for c in spec.get("initContainers", []) + spec.get("containers", []):
        where = f'{name} container {c["name"]}'
        sc = c.get("securityContext", {})

        def eff(key):
            return sc.get(key, pod_sc.get(key))

        if eff("runAsNonRoot") is not True:
            problems.append(f"{where}: runAsNonRoot must be true")
        if eff("runAsUser") == 0:
            problems.append(f"{where}: runAsUser must not be 0")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        if sc.get("privileged"):
            problems.append(f"{where}: privileged must not be set")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problems.append(f"{where}: capabilities must drop ALL")
        added = set(sc.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}
        if added:
            problems.append(f"{where}: capabilities add {sorted(added)}")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost")
        res = c.get("resources", {})
        if not res.get("requests") or not res.get("limits"):
            problems.append(f"{where}: resources need requests and limits")
        if c.get("image", "").startswith("sluice") or "/sluice/" in c.get("image", ""):
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem must be true")
    return problems


def main(paths):
    problems, checked = [], 0
    for path in paths:
        with open(path) as f:
            for obj in yaml.safe_load_all(f):
                if obj and obj.get("kind") in POD_KINDS:
                    checked += 1
                    problems.extend(check(obj))
    for p in problems:
        print(f"FAIL {p}")
    print(f"{checked - len({p.split(' ')[0] for p in problems})} passed, {len({p.split(' ')[0] for p in problems})} failed")
    return 1 if problems or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
