# shellcheck shell=bash
# The local provider: kind-tests/local/cluster.sh, two worker nodes on this machine (network
# and mount namespaces, each with containerd, kubelet and kube-proxy), no Docker.

LOCAL="$HERE/local"
KUBECONFIG=$("$LOCAL/cluster.sh" kubeconfig --name "$CLUSTER")
export KUBECONFIG

provider_preflight() {
  ((DRY_RUN)) && return 0
  [[ $(id -u) -eq 0 ]] || {
    printf -- '--provider local needs root (network and mount namespaces)\n' >&2
    exit 2
  }
  if [[ -e $KUBECONFIG ]]; then
    printf 'local cluster %s already exists: remove it (%s down --name %s) or set LOCAL_CLUSTER\n' \
      "$CLUSTER" "$LOCAL/cluster.sh" "$CLUSTER" >&2
    exit 2
  fi
  # kubectl and helm come from the same pinned builds as the cluster.
  while IFS='=' read -r name dir; do
    case $name in kubernetes | helm) PATH="$dir:$PATH" ;; esac
  done < <("$LOCAL/build-tools.sh" kubernetes helm)
  export PATH
}

provider_up() { run "$LOCAL/cluster.sh" up --name "$CLUSTER" >/dev/null; }

provider_images() {
  local args=(--out "$WORK/images")
  ((BUILD)) || args+=(--skip-build)
  run "$ROOT/images/build-local.sh" "${args[@]}"
  run "$LOCAL/cluster.sh" load --name "$CLUSTER" "$WORK"/images/*.tar
}

# Runs a command on a node (inside the node's network and mount namespaces).
node_exec() { "$LOCAL/cluster.sh" exec --name "$CLUSTER" "$@"; }

provider_down() { run "$LOCAL/cluster.sh" down --name "$CLUSTER"; }
