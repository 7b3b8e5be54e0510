#!/usr/bin/env python3
"""Checks what the chart renders: each value lands where docs/install.md says, and the
operator's security and availability settings hold. Renders with the default values,
with ci/full-values.yaml (every option set) and with operator.replicas=1.

Usage: check_chart.py --helm PATH/TO/helm --chart helm/ambit
"""

import argparse
import pathlib
import subprocess
import sys

import yaml

FAILURES = []


def expect(cond, what):
    if not cond:
        FAILURES.append(what)


def render(helm, chart, *args):
    out = subprocess.run(
        [helm, "template", "ambit", str(chart), "-n", "ambit-system", *args],
        check=True, capture_output=True, text=True,
    ).stdout
    objs = {}
    for doc in yaml.safe_load_all(out):
        if doc:
            objs[(doc["kind"], doc["metadata"]["name"])] = doc
    return objs


def merge(base, over):
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def image(values, app_version, comp):
    img, glob = values[comp]["image"], values["global"]
    registry = (img.get("registry") or glob["imageRegistry"]).rstrip("/")
    tag = img.get("tag") or glob["imageTag"] or app_version
    return f"{registry}/{img['repository']}:{tag}" if registry else f"{img['repository']}:{tag}"


def expected_mesh(values, app_version):
    """The documented mapping from values to the Mesh spec (docs/install.md)."""
    m, glob = values["mesh"], values["global"]

    def component(name, tolerations):
        c = values[name]
        spec = {
            "image": image(values, app_version, name),
            "imagePullPolicy": c["image"].get("pullPolicy") or glob["imagePullPolicy"],
        }
        if c.get("resources"):
            spec["resources"] = c["resources"]
        if tolerations and c.get("tolerations"):
            spec["tolerations"] = c["tolerations"]
        if c.get("logLevel"):
            spec["logLevel"] = c["logLevel"]
        return spec

    return {
        "trustDomain": m["trustDomain"],
        "defaultMtlsMode": m["defaultMtlsMode"],
        "logLevel": m["logLevel"],
        "certificateTtl": m["certificateTtl"],
        "ztunnel": component("ztunnel", True),
        "nodeAgent": component("nodeAgent", True),
        "waypoint": component("waypoint", False),
        "cni": values["cni"],
        "upgrade": m["upgrade"],
    }


def check_operator(objs, values, app_version, label):
    op = values["operator"]
    dep = objs.get(("Deployment", "ambit-operator"))
    expect(dep is not None, f"{label}: no Deployment ambit-operator")
    if dep is None:
        return
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    expect(spec["replicas"] == op["replicas"], f"{label}: replicas {spec['replicas']} != {op['replicas']}")
    expect(c["image"] == image(values, app_version, "operator"), f"{label}: operator image {c['image']}")
    level = op.get("logLevel") or values["mesh"]["logLevel"]
    want_args = ["--namespace", "$(POD_NAMESPACE)", "--pod-name", "$(POD_NAME)", "--listen", "0.0.0.0:15012",
                 "--metrics", "0.0.0.0:15014", "--health", "0.0.0.0:15021", "--leader-elect", "--log-level", level]
    expect(c["args"] == want_args, f"{label}: operator args {c['args']}")
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"]}
    expect(env == {"POD_NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"}, f"{label}: env {env}")
    expect(c["livenessProbe"]["httpGet"]["path"] == "/healthz", f"{label}: liveness path")
    expect(c["readinessProbe"]["httpGet"]["path"] == "/readyz", f"{label}: readiness path")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    expect(ports == {"tls-control": 15012, "http-metrics": 15014, "http-health": 15021}, f"{label}: ports {ports}")
    expect(c["resources"] == op["resources"], f"{label}: operator resources")
    sc, psc = c["securityContext"], pod["securityContext"]
    expect(sc.get("readOnlyRootFilesystem") is True, f"{label}: root filesystem not read-only")
    expect(sc.get("allowPrivilegeEscalation") is False, f"{label}: privilege escalation allowed")
    expect(sc.get("capabilities") == {"drop": ["ALL"]}, f"{label}: capabilities {sc.get('capabilities')}")
    expect(psc.get("runAsNonRoot") is True and psc.get("runAsUser") == 65532, f"{label}: not non-root 65532")
    expect(psc.get("seccompProfile") == {"type": "RuntimeDefault"}, f"{label}: seccomp profile")
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    expect(anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname", f"{label}: anti-affinity")
    expect(anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"],
           f"{label}: anti-affinity selects other pods than the Deployment's")
    expect(pod.get("nodeSelector", {}) == op["nodeSelector"], f"{label}: nodeSelector")
    expect(pod.get("tolerations", []) == op["tolerations"], f"{label}: tolerations")
    expect(pod.get("priorityClassName", "") == op["priorityClassName"], f"{label}: priorityClassName")
    secrets = [s["name"] for s in pod.get("imagePullSecrets", [])]
    expect(secrets == values["global"]["imagePullSecrets"], f"{label}: imagePullSecrets {secrets}")
    labels = spec["template"]["metadata"]["labels"]
    expect(all(labels.get(k) == v for k, v in op["podLabels"].items()), f"{label}: podLabels")
    annotations = spec["template"]["metadata"]["annotations"]
    expect(all(annotations.get(k) == v for k, v in op["podAnnotations"].items()), f"{label}: podAnnotations")

    svc = objs[("Service", "ambit-operator")]
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]}
    expect(ports == {"tls-control": (15012, "tls-control"), "http-metrics": (15014, "http-metrics")},
           f"{label}: Service ports {ports}")
    expect(svc["spec"]["selector"] == spec["selector"]["matchLabels"], f"{label}: Service selector")
    pdb = objs.get(("PodDisruptionBudget", "ambit-operator"))
    if op["replicas"] > 1:
        expect(pdb is not None and pdb["spec"]["minAvailable"] == 1, f"{label}: PDB minAvailable 1 missing")
    else:
        expect(pdb is None, f"{label}: a PDB with minAvailable 1 and one replica would block every drain")


def check_rbac(objs, label):
    cr = objs[("ClusterRole", "ambit-operator")]["rules"]
    role = objs[("Role", "ambit-operator")]["rules"]
    for r in cr + role:
        expect("*" not in r["verbs"], f"{label}: wildcard verb in {r}")
    expect(not any("secrets" in r["resources"] for r in cr), f"{label}: Secrets must be readable only in the release namespace")
    expect(not any("daemonsets" in r["resources"] for r in cr), f"{label}: DaemonSets only in the release namespace")
    rbac = [r for r in cr if "rbac.authorization.k8s.io" in r["apiGroups"]]
    expect(all(r.get("resourceNames") == ["ambit-node-agent"] for r in rbac if r["verbs"] != ["create"]),
           f"{label}: RBAC objects other than ambit-node-agent are writable")
    leases = [r for r in role if "leases" in r["resources"]]
    expect(leases and sorted(leases[0]["verbs"]) == ["create", "get", "update"], f"{label}: lease verbs")
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        (subject,) = objs[(kind, "ambit-operator")]["subjects"]
        expect(subject == {"kind": "ServiceAccount", "name": "ambit-operator", "namespace": "ambit-system"},
               f"{label}: {kind} subject {subject}")


def check_uninstall(objs, values, label):
    job = objs.get(("Job", "ambit-uninstall"))
    if not values["uninstall"]["enabled"]:
        expect(job is None, f"{label}: uninstall hook rendered although disabled")
        return
    expect(job is not None, f"{label}: no uninstall hook Job")
    if job is None:
        return
    expect(job["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete", f"{label}: hook is not pre-delete")
    # The Mesh first (init container, waits for the finalizer), then the CA the operator minted.
    (init,) = job["spec"]["template"]["spec"]["initContainers"]
    (c,) = job["spec"]["template"]["spec"]["containers"]
    for k in (init, c):
        expect(k["image"] == values["uninstall"]["image"], f"{label}: uninstall image")
    cmd = " ".join(init["command"])
    expect("delete meshes.ambit.dev default" in cmd and "--wait=true" in cmd, f"{label}: uninstall command {cmd}")
    cmd = " ".join(c["command"])
    expect("delete secrets" in cmd and "app.kubernetes.io/managed-by=ambit-operator" in cmd
           and "app.kubernetes.io/name=ca" in cmd, f"{label}: CA cleanup command {cmd}")
    role = objs[("ClusterRole", "ambit-uninstall")]["rules"]
    expect(role == [{"apiGroups": ["ambit.dev"], "resources": ["meshes"], "resourceNames": ["default"],
                     "verbs": ["get", "list", "watch", "delete"]}], f"{label}: uninstall RBAC {role}")
    role = objs[("Role", "ambit-uninstall")]["rules"]
    expect(role == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "delete"]}],
           f"{label}: uninstall Secret RBAC {role}")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--helm", required=True)
    ap.add_argument("--chart", required=True)
    args = ap.parse_args()
    chart = pathlib.Path(args.chart)
    defaults = yaml.safe_load((chart / "values.yaml").read_text())
    app_version = str(yaml.safe_load((chart / "Chart.yaml").read_text())["appVersion"])
    full = yaml.safe_load((chart / "ci" / "full-values.yaml").read_text())
    cases = [
        ("default values", defaults, []),
        ("ci/full-values.yaml", merge(defaults, full), ["-f", str(chart / "ci" / "full-values.yaml")]),
        ("operator.replicas=1", merge(defaults, {"operator": {"replicas": 1}}), ["--set", "operator.replicas=1"]),
    ]
    for label, values, extra in cases:
        objs = render(args.helm, chart, *extra)
        mesh = objs.get(("Mesh", "default"))
        expect(mesh is not None and "namespace" not in mesh["metadata"], f"{label}: no cluster-scoped Mesh default")
        if mesh is not None:
            want = expected_mesh(values, app_version)
            for key in sorted(set(want) | set(mesh["spec"])):
                expect(mesh["spec"].get(key) == want.get(key),
                       f"{label}: Mesh spec.{key} = {mesh['spec'].get(key)!r}, want {want.get(key)!r}")
        check_operator(objs, values, app_version, label)
        check_rbac(objs, label)
        check_uninstall(objs, values, label)
        print(f"  rendered with {label}: {len(objs)} objects checked")
    for f in FAILURES:
        print(f"  {f}")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
