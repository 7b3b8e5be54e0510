# shellcheck shell=bash
# The kind provider: a 3-node kind cluster (a control plane and two workers) on Docker.

PATH="$PATH:$ROOT/target/tools/bin"
KUBECONFIG=${KUBECONFIG:-$HOME/.kube/config}

provider_preflight() {
  ((DRY_RUN)) && return 0
  local tool
  for tool in docker kind kubectl helm; do
    command -v "$tool" >/dev/null || {
      printf '%s is required for --provider kind (see --help; --provider local needs no Docker)\n' "$tool" >&2
      exit 2
    }
  done
  if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    printf 'kind cluster %s already exists: delete it (kind delete cluster --name %s) or set KIND_CLUSTER\n' "$CLUSTER" "$CLUSTER" >&2
    exit 2
  fi
}

provider_up() {
  export KUBECONFIG="$WORK/kubeconfig"
  run kind create cluster --name "$CLUSTER" --config "$HERE/kind-config.yaml" --kubeconfig "$KUBECONFIG" --wait 120s
}

provider_images() {
  local entry image
  for entry in "${IMAGES[@]}"; do
    image="$REGISTRY/${entry#*:}:$TAG"
    if ((BUILD)); then
      run docker build -f "$ROOT/images/Dockerfile" --target "${entry%%:*}" -t "$image" "$ROOT"
    fi
    run kind load docker-image "$image" --name "$CLUSTER"
  done
}

# Runs a command on a node (inside the node's network and mount namespaces).
node_exec() { docker exec "$@"; }

provider_down() { run kind delete cluster --name "$CLUSTER"; }
