#!/usr/bin/env bash
# End-to-end test of Ambit on a real 3-node kind cluster: builds the images, installs the Helm
# chart, enrolls a Bookinfo-shaped demo app and checks (a) mTLS on the wire, (b) a 90/10
# canary, (c) retries masking a flaky backend, (d) an L4 deny policy, (e) a rolling data-plane
# upgrade. Prints PASS/FAIL per check; exits non-zero if any failed.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CHART="$ROOT/helm/ambit"
MANIFESTS="$HERE/manifests"
CLUSTER=${KIND_CLUSTER:-ambit-e2e}
NS=ambit-system
APP_NS=bookinfo
REGISTRY=ghcr.io/ambit-mesh
# The chart's appVersion: the tag the chart's default values point at.
TAG=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$CHART/Chart.yaml")
# Dockerfile target -> image name.
IMAGES=(ztunnel:ztunnel cni-agent:ambit-cni-agent waypoint:waypoint operator:ambit-operator demo-app:demo-app)

DRY_RUN=0
KEEP=0
BUILD=1

usage() {
  cat <<EOF
Usage: $(basename "$0") [--dry-run] [--keep] [--skip-build] [--help]

Creates kind cluster '$CLUSTER' (override with KIND_CLUSTER), builds and loads the images
(tag $TAG), installs helm/ambit, deploys kind-tests/manifests and runs the checks.
Needs docker, kind, kubectl and helm (helm/kubectl also from target/tools/bin, see
scripts/lint-deploy).

  --dry-run     print every command instead of running it (needs none of the tools)
  --keep        keep the cluster afterwards (default: deleted on exit)
  --skip-build  use images already present locally (still loaded into kind)
  --help        this text
EOF
}

while (($#)); do
  case $1 in
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

# shellcheck source=lib/common.sh
source "$HERE/lib/common.sh"
# shellcheck source=lib/checks.sh
source "$HERE/lib/checks.sh"

PATH="$PATH:$ROOT/target/tools/bin"
if ! ((DRY_RUN)); then
  for tool in docker kind kubectl helm; do
    command -v "$tool" >/dev/null || {
      printf '%s is required (see --help)\n' "$tool" >&2
      exit 2
    }
  done
  if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    printf 'kind cluster %s already exists: delete it (kind delete cluster --name %s) or set KIND_CLUSTER\n' "$CLUSTER" "$CLUSTER" >&2
    exit 2
  fi
fi

WORK=$(mktemp -d)
export KUBECONFIG="$WORK/kubeconfig"

diagnostics() {
  step "diagnostics"
  run kubectl get pods -A -o wide || true
  run kubectl get meshes,waypoints,trafficroutes,authorizationpolicies -A || true
  run kubectl -n "$NS" logs deploy/ambit-operator --tail=200 || true
}

cleanup() {
  local rc=$?
  if ((rc != 0 || ${#FAILED_CHECKS[@]})) && ! ((DRY_RUN)); then diagnostics; fi
  if ((KEEP)); then
    printf '\nkept cluster %s; KUBECONFIG=%s\n' "$CLUSTER" "$KUBECONFIG" >&2
  else
    step "delete the cluster"
    run kind delete cluster --name "$CLUSTER" || true
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT

step "create the kind cluster ($CLUSTER, 3 nodes)"
run kind create cluster --name "$CLUSTER" --config "$HERE/kind-config.yaml" --kubeconfig "$KUBECONFIG" --wait 120s

step "build and load the images"
for entry in "${IMAGES[@]}"; do
  image="$REGISTRY/${entry#*:}:$TAG"
  if ((BUILD)); then
    run docker build -f "$ROOT/images/Dockerfile" --target "${entry%%:*}" -t "$image" "$ROOT"
  fi
  run kind load docker-image "$image" --name "$CLUSTER"
done

step "install the chart"
run helm install ambit "$CHART" -n "$NS" --create-namespace --wait --timeout 5m
run kubectl -n "$NS" rollout status deploy/ambit-operator --timeout=180s
run kubectl wait --for=condition=Ready mesh/default --timeout=300s

step "deploy the demo app in an enrolled namespace"
run kubectl create namespace "$APP_NS"
run kubectl label namespace "$APP_NS" ambit.dev/dataplane-mode=ambient
show sed -e "s/__WORKER1__/$CLUSTER-worker/" -e "s/__WORKER2__/$CLUSTER-worker2/" "$MANIFESTS/bookinfo.yaml" '|' kubectl apply -f -
if ! ((DRY_RUN)); then
  sed -e "s/__WORKER1__/$CLUSTER-worker/" -e "s/__WORKER2__/$CLUSTER-worker2/" "$MANIFESTS/bookinfo.yaml" | kubectl apply -f -
fi
run kubectl -n "$APP_NS" wait --for=condition=Available deploy --all --timeout=300s

check "(a) mTLS between nodes" check_mtls
check "(d) AuthorizationPolicy denies a caller" check_authz
check "(b) 90/10 canary on reviews" check_canary
check "(c) retries mask a 50% flaky ratings" check_retries
check "(e) helm upgrade rolls ztunnel one node at a time" check_upgrade

printf '\n'
if ((DRY_RUN)); then
  if ((${#FAILED_CHECKS[@]})); then
    printf 'dry run: the script itself failed in: %s\n' "${FAILED_CHECKS[*]}"
    exit 1
  fi
  printf 'dry run: nothing was executed\n'
  exit 0
fi
printf 'kind e2e: %d checks passed, %d failed%s\n' "${#PASSED_CHECKS[@]}" "${#FAILED_CHECKS[@]}" \
  "$( ((${#FAILED_CHECKS[@]})) && printf ' (%s)' "${FAILED_CHECKS[*]}")"
((${#FAILED_CHECKS[@]} == 0))
