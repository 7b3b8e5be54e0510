#!/usr/bin/env python3
"""Checks that the chart's RBAC grants the operator every API call its tests recorded.

operator/tests/api-calls.txt is written by operator/tests/operator_apisim.rs (the real
operator against the in-memory API server); each line is `verb group/resource scope`, where
scope is `cluster`, `release` (the operator's own namespace) or `other` (a user namespace).
A call the RBAC doesn't grant would fail in a cluster, so it fails here.
Usage: check_rbac.py RENDERED.yaml api-calls.txt
"""
import sys

import yaml


def rules_of(docs, kinds):
    out = []
    for d in docs:
        if d and d.get("kind") in kinds and "operator" in d["metadata"]["name"]:
            out.extend(d.get("rules") or [])
    return out


def grants(rules, verb, group, resource):
    for r in rules:
        if r.get("resourceNames"):
            # Name-restricted rules only cover calls on those objects; the recorded calls on
            # named objects are all get/patch/delete/update, which such rules can grant.
            if verb in ("list", "watch", "create"):
                continue
        groups = r.get("apiGroups") or []
        resources = r.get("resources") or []
        verbs = r.get("verbs") or []
        if (group in groups or "*" in groups) and (verb in verbs or "*" in verbs):
            if resource in resources or "*" in resources:
                return True
            if "/" in resource and f"*/{resource.split('/', 1)[1]}" in resources:
                return True
    return False


def main():
    rendered, calls_file = sys.argv[1], sys.argv[2]
    with open(rendered) as f:
        docs = list(yaml.safe_load_all(f))
    cluster = rules_of(docs, {"ClusterRole"})
    namespaced = rules_of(docs, {"Role"})
    missing = []
    checked = 0
    with open(calls_file) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            verb, gr, scope = line.split()
            group, resource = gr.split("/", 1)
            checked += 1
            rules = cluster + (namespaced if scope == "release" else [])
            if not grants(rules, verb, group, resource):
                missing.append(line)
    if missing:
        print("the chart's RBAC does not grant these operator API calls (helm/ambit/templates/rbac.yaml):")
        for m in missing:
            print("  " + m)
        return 1
    print(f"all {checked} recorded operator API calls are granted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
