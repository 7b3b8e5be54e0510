#!/usr/bin/env bash
# End-to-end test of Ambit on a real Kubernetes cluster: builds the images, installs the Helm
# chart, enrolls a Bookinfo-shaped demo app and runs every check of lib/checks.sh (mTLS on
# the wire, L4 deny, 90/10 canary, retries, data-plane upgrade, enrolling running pods, a pod
# recreated on the other node, operator leader failover, helm upgrade, uninstall).
# Prints PASS/FAIL per check; exits non-zero if any failed.
# Providers: kind (a laptop with Docker) or local (kind-tests/local: nodes as network and
# mount namespaces on this machine, no Docker; what CI runs).
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CHART="$ROOT/helm/ambit"
MANIFESTS="$HERE/manifests"
NS=ambit-system
APP_NS=bookinfo
REGISTRY=ghcr.io/ambit-mesh
# The chart's appVersion: the tag the chart's default values point at.
TAG=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$CHART/Chart.yaml")
# Dockerfile target -> image name.
IMAGES=(ztunnel:ztunnel cni-agent:ambit-cni-agent waypoint:waypoint operator:ambit-operator demo-app:demo-app)

PROVIDER=kind
DRY_RUN=0
KEEP=0
BUILD=1
OUT=""
ONLY=""

usage() {
  cat <<EOF
Usage: $(basename "$0") [--provider kind|local] [--out FILE] [--only CHECK,...] [--dry-run]
                        [--keep] [--skip-build] [--help]

Creates a cluster, builds and loads the images (tag $TAG), installs helm/ambit, deploys
kind-tests/manifests and runs the checks.
  --provider kind   a kind cluster (default; needs docker, kind, kubectl, helm; cluster name
                    from KIND_CLUSTER, default ambit-e2e)
  --provider local  kind-tests/local/cluster.sh: two worker nodes on this machine built from
                    the cached Kubernetes binaries (root; no Docker; images with buildah)
  --out FILE        write the results as JSON: kubernetes_version, nodes, checks
  --only LIST       run only these checks (comma-separated names; setup always runs)
  --dry-run         print every command instead of running it (kind; needs none of the tools)
  --keep            keep the cluster afterwards (default: deleted on exit)
  --skip-build      use images already built (still loaded into the cluster)
  --help            this text
Checks: mtls deny canary retries upgrade enroll-running-pods pod-recreated leader-failover
        helm-upgrade uninstall
EOF
}

while (($#)); do
  case $1 in
    --provider)
      PROVIDER=${2:-}
      shift
      ;;
    --out)
      OUT=${2:?--out needs a file}
      shift
      ;;
    --only)
      ONLY=${2:?--only needs a list}
      shift
      ;;
    --dry-run) DRY_RUN=1 ;;
    --keep) KEEP=1 ;;
    --skip-build) BUILD=0 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      printf 'unknown argument: %s\n\n' "$1" >&2
      usage >&2
      exit 2
      ;;
  esac
  shift
done
case $PROVIDER in
  kind) CLUSTER=${KIND_CLUSTER:-ambit-e2e} ;;
  local) CLUSTER=${LOCAL_CLUSTER:-ambit-e2e} ;;
  *)
    printf -- '--provider %s: want kind or local\n' "$PROVIDER" >&2
    exit 2
    ;;
esac
[[ -z $OUT ]] || OUT=$(realpath -m "$OUT")
WORKER1="$CLUSTER-worker"
WORKER2="$CLUSTER-worker2"

# shellcheck source=lib/common.sh
source "$HERE/lib/common.sh"
# shellcheck source=lib/checks.sh
source "$HERE/lib/checks.sh"
# shellcheck source=lib/provider-kind.sh
source "$HERE/lib/provider-$PROVIDER.sh"

provider_preflight

WORK=$(mktemp -d)

diagnostics() {
  step "diagnostics"
  run kubectl get pods -A -o wide || true
  run kubectl get meshes,waypoints,trafficroutes,authorizationpolicies -A || true
  run kubectl get events -A --sort-by=.lastTimestamp || true
  run kubectl -n "$NS" logs -l app.kubernetes.io/name=ambit-operator --tail=100 --prefix || true
}

cleanup() {
  local rc=$?
  if ((rc != 0 || ${#FAILED_CHECKS[@]})) && ! ((DRY_RUN)); then diagnostics; fi
  if ((KEEP)); then
    printf '\nkept cluster %s; KUBECONFIG=%s\n' "$CLUSTER" "$KUBECONFIG" >&2
  else
    step "delete the cluster"
    provider_down || true
  fi
  rm -rf "$WORK" "$DETAIL_FILE"
  exit "$rc"
}
trap cleanup EXIT

step "create the cluster ($PROVIDER: $CLUSTER)"
provider_up

step "build and load the images"
provider_images

step "install the chart"
run helm install ambit "$CHART" -n "$NS" --create-namespace --wait --timeout 5m
run kubectl -n "$NS" rollout status deploy/ambit-operator --timeout=180s
run kubectl wait --for=condition=Ready mesh/default --timeout=300s

step "deploy the demo app in an enrolled namespace"
run kubectl create namespace "$APP_NS"
run kubectl label namespace "$APP_NS" ambit.dev/dataplane-mode=ambient
deploy_bookinfo
run kubectl -n "$APP_NS" wait --for=condition=Available deploy --all --timeout=300s
# What runs where, before the checks change it.
run kubectl get pods -A -o wide

wanted() { [[ -z $ONLY || ",$ONLY," == *",$1,"* ]]; }
for name in mtls deny canary retries upgrade enroll-running-pods pod-recreated leader-failover helm-upgrade uninstall; do
  wanted "$name" || continue
  check "$name" "check_${name//-/_}"
done

printf '\n'
if ((DRY_RUN)); then
  if ((${#FAILED_CHECKS[@]})); then
    printf 'dry run: the script itself failed in: %s\n' "${FAILED_CHECKS[*]}"
    exit 1
  fi
  printf 'dry run: nothing was executed\n'
  exit 0
fi
[[ -z $OUT ]] || write_results "$OUT"
printf '%s e2e: %d checks passed, %d failed%s\n' "$PROVIDER" "${#PASSED_CHECKS[@]}" "${#FAILED_CHECKS[@]}" \
  "$( ((${#FAILED_CHECKS[@]})) && printf ' (%s)' "${FAILED_CHECKS[*]}")"
((${#FAILED_CHECKS[@]} == 0))
