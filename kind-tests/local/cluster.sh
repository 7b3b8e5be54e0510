#!/usr/bin/env bash
# A real multi-node Kubernetes cluster on one Linux machine, no Docker engine: etcd,
# kube-apiserver, kube-controller-manager and kube-scheduler on the host; each worker node a
# network namespace on a bridge plus a mount namespace of its own, running containerd,
# kubelet and kube-proxy; the CNI reference plugins (bridge + host-local) as primary CNI;
# CoreDNS for cluster DNS. Every binary is built from the Go module proxy at the pins in
# versions.env and cached (build-tools.sh).
#
#   cluster.sh up [--name N] [--nodes K] [--subnet A.B.C]   bring it up, print KUBECONFIG
#   cluster.sh status [--name N]                             what runs, node readiness
#   cluster.sh down [--name N]                               remove everything up made
#   cluster.sh load [--name N] ARCHIVE...                    import image archives on every node
#   cluster.sh exec [--name N] NODE CMD...                   run CMD in a node's namespaces
#   cluster.sh kubeconfig [--name N]                         print the kubeconfig path
# Needs root. `down` works from what is on disk, also after a crash or a half-finished `up`.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

CLUSTER=ambit-local
NODE_COUNT=2
SUBNET=172.29.0

usage() { sed -n '2,16s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

die() {
  printf 'cluster.sh: %s\n' "$*" >&2
  exit 1
}
say() { printf '==> [%s] %s\n' "$CLUSTER" "$*" >&2; }

CMD=${1:-}
[[ -n $CMD ]] || {
  usage >&2
  exit 2
}
shift
ARGS=()
while (($#)); do
  case $1 in
    --name) CLUSTER=${2:?--name needs a value}; shift ;;
    --nodes) NODE_COUNT=${2:?--nodes needs a value}; shift ;;
    --subnet) SUBNET=${2:?--subnet needs a value}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) ARGS+=("$1") ;;
  esac
  shift
done
[[ $CLUSTER =~ ^[a-z][a-z0-9-]{0,20}$ ]] || die "--name '$CLUSTER': lower-case letters, digits and '-', at most 21 characters (it names network namespaces)"
[[ $NODE_COUNT =~ ^[1-9]$ ]] || die "--nodes '$NODE_COUNT': 1 to 9"
[[ $SUBNET =~ ^(10|172|192)\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || die "--subnet '$SUBNET': the first three octets of a private /24, e.g. 172.29.0"
[[ $(id -u) -eq 0 ]] || die "needs root (network and mount namespaces, cgroups)"

STATE_ROOT=${AMBIT_LOCAL_STATE:-/var/lib/ambit-local}
STATE="$STATE_ROOT/$CLUSTER"
PKI="$STATE/pki"
NS_DIR="/run/ambit-local/$CLUSTER"
API_IP="$SUBNET.1"
SERVICE_API_IP=10.96.0.1
DNS_IP=10.96.0.10
ETCD_PORT=$((23000 + ${SUBNET##*.}))
# Interface names: at most 15 bytes, unique per cluster.
SHORT=$(printf '%s' "$CLUSTER" | md5sum | cut -c1-6)
BRIDGE="albr$SHORT"
IF_PREFIX="alv$SHORT"
PAUSE_IMAGE=registry.k8s.io/pause:3.10.1
COREDNS_IMAGE=registry.k8s.io/coredns/coredns:local
KUBECTL_IMAGE=registry.k8s.io/kubectl:$(sed -n 's/^KUBERNETES_VERSION=//p' "$HERE/versions.env")

# The node names kind gives a cluster's workers, so checks read the same on both.
NODES=()
if [[ -f $STATE/nodes.list ]]; then
  mapfile -t NODES <"$STATE/nodes.list"
else
  for ((i = 1; i <= NODE_COUNT; i++)); do
    if ((i == 1)); then NODES+=("$CLUSTER-worker"); else NODES+=("$CLUSTER-worker$i"); fi
  done
fi

# shellcheck source=pki.sh
source "$HERE/pki.sh"
# shellcheck source=node.sh
source "$HERE/node.sh"

tools() {
  local line
  while IFS='=' read -r name dir; do
    case $name in
      kubernetes) BIN_K8S=$dir ;;
      etcd) BIN_ETCD=$dir ;;
      containerd) BIN_CONTAINERD=$dir ;;
      coredns) BIN_COREDNS=$dir ;;
      helm) export BIN_HELM=$dir ;;
      pause) BIN_PAUSE=$dir ;;
    esac
  done < <("$HERE/build-tools.sh" all)
  for line in BIN_K8S BIN_ETCD BIN_CONTAINERD BIN_COREDNS BIN_HELM BIN_PAUSE; do
    [[ -n ${!line:-} ]] || die "build-tools.sh did not report $line"
  done
  KUBECTL="$BIN_K8S/kubectl"
}

# start_process NAME CMD... : runs CMD in its own session, logs to $STATE/logs/NAME.log.
start_process() {
  local name=$1
  shift
  mkdir -p "$STATE/logs" "$STATE/pids"
  setsid "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null &
  printf '%s\n' "$!" >"$STATE/pids/$name"
}

# wait_for SECONDS WHAT CMD... : polls CMD every second.
wait_for() {
  local timeout=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for $what (logs: $STATE/logs)"
    sleep 1
  done
}

kc() { "$KUBECTL" --kubeconfig "$STATE/admin.conf" "$@"; }

control_plane() {
  local k=(--kubeconfig)
  start_process etcd "$BIN_ETCD/etcd" --name "$CLUSTER" --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1000))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1000))" \
    --initial-cluster "$CLUSTER=http://127.0.0.1:$((ETCD_PORT + 1000))" \
    --unsafe-no-fsync --quota-backend-bytes 2147483648
  start_process kube-apiserver "$BIN_K8S/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" --bind-address="$API_IP" --advertise-address="$API_IP" \
    --secure-port=6443 --service-cluster-ip-range=10.96.0.0/16 --allow-privileged=true \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --client-ca-file="$PKI/ca.crt" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --api-audiences=https://kubernetes.default.svc.cluster.local \
    --kubelet-preferred-address-types=InternalIP --profiling=false
  wait_for 90 "kube-apiserver" kc get --raw /readyz
  start_process kube-controller-manager "$BIN_K8S/kube-controller-manager" "${k[@]}" "$STATE/controller-manager.conf" \
    --bind-address=127.0.0.1 --secure-port=0 --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --service-cluster-ip-range=10.96.0.0/16 --cluster-cidr=10.244.0.0/16 --allocate-node-cidrs=false \
    --controllers='*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route'
  start_process kube-scheduler "$BIN_K8S/kube-scheduler" "${k[@]}" "$STATE/scheduler.conf" \
    --bind-address=127.0.0.1 --secure-port=0 --leader-elect=false
}

images_for_cluster() {
  local work
  work=$(mktemp -d)
  mkdir -p "$STATE/images"
  # FROM scratch images of the static pause and CoreDNS binaries.
  local ctr
  ctr=$(buildah from scratch)
  buildah copy "$ctr" "$BIN_PAUSE/pause" /pause >/dev/null
  buildah config --entrypoint '["/pause"]' --user 65535:65535 "$ctr"
  buildah commit -q "$ctr" "$PAUSE_IMAGE" >/dev/null
  buildah rm "$ctr" >/dev/null
  ctr=$(buildah from scratch)
  buildah copy "$ctr" "$BIN_COREDNS/coredns" /coredns >/dev/null
  buildah config --entrypoint '["/coredns"]' "$ctr"
  buildah commit -q "$ctr" "$COREDNS_IMAGE" >/dev/null
  buildah rm "$ctr" >/dev/null
  # kubectl for the chart's uninstall hook, from the same pinned build as the cluster.
  ctr=$(buildah from scratch)
  buildah copy "$ctr" "$BIN_K8S/kubectl" /bin/kubectl >/dev/null
  buildah config --entrypoint '["/bin/kubectl"]' --env PATH=/bin "$ctr"
  buildah commit -q "$ctr" "$KUBECTL_IMAGE" >/dev/null
  buildah rm "$ctr" >/dev/null
  buildah push -q "$PAUSE_IMAGE" "oci-archive:$STATE/images/pause.tar:$PAUSE_IMAGE"
  buildah push -q "$COREDNS_IMAGE" "oci-archive:$STATE/images/coredns.tar:$COREDNS_IMAGE"
  buildah push -q "$KUBECTL_IMAGE" "oci-archive:$STATE/images/kubectl.tar:$KUBECTL_IMAGE"
  rm -rf "$work"
}

load_images() {
  local node archive
  for node in "${NODES[@]}"; do
    for archive in "$@"; do
      in_node "$node" "$BIN_CONTAINERD/ctr" -n k8s.io images import --local "$archive" >/dev/null ||
        die "importing $archive on $node failed"
    done
  done
}

cmd_up() {
  if [[ -e $STATE ]]; then
    die "cluster '$CLUSTER' exists (state in $STATE): run 'cluster.sh down --name $CLUSTER' first"
  fi
  for c in ip nsenter unshare iptables openssl buildah runc; do
    command -v "$c" >/dev/null || die "$c is required (apt-get install iproute2 util-linux iptables openssl buildah runc)"
  done
  [[ -x /usr/lib/cni/bridge ]] || die "the CNI reference plugins are required (apt-get install containernetworking-plugins)"
  ip link show "$BRIDGE" >/dev/null 2>&1 && die "bridge $BRIDGE exists: run down first"
  ip -o addr show | grep -q " $SUBNET\." && die "subnet $SUBNET.0/24 is in use on this machine: pick another with --subnet"
  local t0=$SECONDS
  say "building or finding the cached Kubernetes binaries"
  tools
  mkdir -p "$STATE" "$NS_DIR"
  printf '%s\n' "${NODES[@]}" >"$STATE/nodes.list"
  printf 'subnet=%s\nbridge=%s\nif_prefix=%s\n' "$SUBNET" "$BRIDGE" "$IF_PREFIX" >"$STATE/cluster.env"
  # The namespace files live on a private mount, as persistent mount namespaces need.
  mount --bind "$NS_DIR" "$NS_DIR"
  mount --make-private "$NS_DIR"

  say "certificates"
  make_pki
  kubeconfig "$STATE/admin.conf" admin "https://$API_IP:6443"
  kubeconfig "$STATE/controller-manager.conf" controller-manager "https://$API_IP:6443"
  kubeconfig "$STATE/scheduler.conf" scheduler "https://$API_IP:6443"

  say "network: bridge $BRIDGE ($API_IP/24)"
  ip link add "$BRIDGE" type bridge
  ip addr add "$API_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up

  say "control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler"
  control_plane

  say "images: pause, CoreDNS, kubectl"
  images_for_cluster
  local i
  for i in "${!NODES[@]}"; do
    say "node ${NODES[$i]}: $(node_ip "$i"), pods $(pod_cidr "$i")"
    node_network "$i"
    node_mounts "${NODES[$i]}"
    node_files "$i"
    node_start "${NODES[$i]}" "$i"
  done
  for i in "${!NODES[@]}"; do
    wait_for 60 "containerd on ${NODES[$i]}" in_node "${NODES[$i]}" "$BIN_CONTAINERD/ctr" version
  done
  load_images "$STATE/images/pause.tar" "$STATE/images/coredns.tar" "$STATE/images/kubectl.tar"

  say "waiting for ${#NODES[@]} nodes to be Ready"
  wait_for 120 "nodes to register" sh -c "[ \$('$KUBECTL' --kubeconfig '$STATE/admin.conf' get nodes -o name | wc -l) -ge ${#NODES[@]} ]"
  kc wait --for=condition=Ready node --all --timeout=120s >/dev/null

  say "cluster DNS (CoreDNS at $DNS_IP)"
  sed -e "s|__DNS_IP__|$DNS_IP|" -e "s|__IMAGE__|$COREDNS_IMAGE|" "$HERE/manifests/coredns.yaml" | kc apply -f - >/dev/null
  kc -n kube-system rollout status deploy/coredns --timeout=180s >/dev/null
  say "up in $((SECONDS - t0))s"
  printf 'export KUBECONFIG=%s\n' "$STATE/admin.conf"
}

cmd_status() {
  [[ -d $STATE ]] || {
    printf 'cluster %s: not up (no %s)\n' "$CLUSTER" "$STATE"
    return 1
  }
  local f pid state
  for f in "$STATE"/pids/*; do
    [[ -e $f ]] || continue
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then state=running; else state=STOPPED; fi
    printf '%-40s pid %-8s %s\n' "$(basename "$f")" "$pid" "$state"
  done
  printf 'KUBECONFIG=%s\n' "$STATE/admin.conf"
  KUBECTL=$(find "${AMBIT_CACHE:-$HOME/.cache/ambit}" -path '*kubernetes-*/bin/kubectl' | head -1)
  if [[ -n $KUBECTL ]]; then kc get nodes -o wide 2>&1 || true; fi
}

# Every process of the cluster: the recorded ones, everything in a node's network namespace
# (shims, hostNetwork pods) and everything in a node's cgroup root (all containers).
cluster_pids() {
  local f node d
  for f in "$STATE"/pids/*; do [[ -e $f ]] && cat "$f"; done
  for node in "${NODES[@]}"; do
    ip netns pids "$(node_netns "$node")" 2>/dev/null || true
    for d in /sys/fs/cgroup/*/"$node"; do
      [[ -d $d ]] && find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null
    done
  done
}

cmd_down() {
  local t0=$SECONDS pids round node p
  if [[ -f $STATE/cluster.env ]]; then
    SUBNET=$(sed -n 's/^subnet=//p' "$STATE/cluster.env")
    BRIDGE=$(sed -n 's/^bridge=//p' "$STATE/cluster.env")
    IF_PREFIX=$(sed -n 's/^if_prefix=//p' "$STATE/cluster.env")
  fi
  for round in 1 2 3 4 5 6 7 8 9 10; do
    pids=$(cluster_pids | sort -u | grep -E '^[0-9]+$' | while read -r p; do
      kill -0 "$p" 2>/dev/null && printf '%s\n' "$p"
    done || true)
    [[ -z $pids ]] && break
    local signal=TERM
    ((round < 3)) || signal=KILL
    # shellcheck disable=SC2086 # one pid per word
    kill -s "$signal" $pids 2>/dev/null || true
    sleep 1
  done
  [[ -z ${pids:-} ]] || say "warning: processes still alive: $pids"
  for node in "${NODES[@]}"; do
    umount "$(node_mntns "$node")" 2>/dev/null || true
    ip netns del "$(node_netns "$node")" 2>/dev/null || true
    # Deepest cgroups first; a hierarchy's root of this node goes last.
    for p in /sys/fs/cgroup/*/"$node"; do
      [[ -d $p ]] && find "$p" -depth -type d -exec rmdir {} + 2>/dev/null
    done
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  for p in $(ip -o link show 2>/dev/null | sed -n "s/^[0-9]*: \(${IF_PREFIX}[0-9]*\)[@:].*/\1/p"); do
    ip link del "$p" 2>/dev/null || true
  done
  ip route show | awk -v s="$SUBNET." '$1 ~ /^10\.244\./ && $3 ~ "^"s {print $1}' | while read -r p; do
    ip route del "$p" 2>/dev/null || true
  done
  if [[ -f $STATE/created-paths ]]; then
    sort -ru "$STATE/created-paths" | while read -r p; do rmdir "$p" 2>/dev/null || true; done
  fi
  umount "$NS_DIR" 2>/dev/null || true
  rm -rf "$NS_DIR" "$STATE"
  rmdir /run/ambit-local "$STATE_ROOT" 2>/dev/null || true
  local left=()
  for node in "${NODES[@]}"; do
    [[ -e /run/netns/$(node_netns "$node") ]] && left+=("netns $node")
    for p in /sys/fs/cgroup/*/"$node"; do [[ -d $p ]] && left+=("cgroup $p"); done
  done
  ip link show "$BRIDGE" >/dev/null 2>&1 && left+=("bridge $BRIDGE")
  ((${#left[@]} == 0)) || die "down left: ${left[*]}"
  say "down in $((SECONDS - t0))s"
}

case $CMD in
  up) cmd_up ;;
  status) cmd_status ;;
  down) cmd_down ;;
  load)
    tools
    load_images "${ARGS[@]}"
    ;;
  exec)
    ((${#ARGS[@]} >= 2)) || die "exec NODE CMD..."
    in_node "${ARGS[@]}"
    ;;
  kubeconfig) printf '%s\n' "$STATE/admin.conf" ;;
  *)
    usage >&2
    exit 2
    ;;
esac
