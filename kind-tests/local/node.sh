# shellcheck shell=bash
# One worker node: a network namespace on the cluster bridge and a mount namespace whose
# node-owned paths are per-node directories, running its own containerd, kubelet and
# kube-proxy. Expects the variables cluster.sh sets.

# Paths a real node owns alone; each is bind-mounted from $NODE_DIR/<path> in the node's
# mount namespace, so hostPath volumes and sockets resolve per node as on real nodes.
NODE_OWNED_PATHS=(
  /var/lib/kubelet /var/lib/containerd /run/containerd /var/lib/cni /etc/cni/net.d
  /opt/cni/bin /var/run/ambit /var/log/pods /var/log/containers /run/netns /etc/kubernetes
)

node_ip() { printf '%s.%s' "$SUBNET" "$((11 + $1))"; }
pod_cidr() { printf '10.244.%s.0/24' "$(($1 + 1))"; }
node_netns() { printf '%s' "$1"; }
node_mntns() { printf '%s/%s.mnt' "$NS_DIR" "$1"; }
# Runs a command inside NODE's network and mount namespaces (what `docker exec` is on kind).
in_node() {
  local node=$1
  shift
  nsenter --net="/run/netns/$(node_netns "$node")" --mount="$(node_mntns "$node")" -- "$@"
}

# A veth from the node's netns to the cluster bridge, with routes to every other node's pods.
node_network() {
  local i=$1 node=${NODES[$1]} ns ip host_if
  ns=$(node_netns "$node")
  ip=$(node_ip "$i")
  host_if="$IF_PREFIX$i"
  ip netns add "$ns"
  ip link add "$host_if" type veth peer name eth0 netns "$ns"
  ip link set "$host_if" master "$BRIDGE" up
  nsenter --net="/run/netns/$ns" sh -euc "
    ip link set lo up
    ip addr add $ip/24 dev eth0
    ip link set eth0 up
    ip route add default via $API_IP
    sysctl -qw net.ipv4.ip_forward=1
    sysctl -qw net.bridge.bridge-nf-call-iptables=1
    sysctl -qw net.ipv4.conf.all.rp_filter=0
  "
  local j
  for j in "${!NODES[@]}"; do
    ((j == i)) && continue
    ip netns exec "$ns" ip route add "$(pod_cidr "$j")" via "$(node_ip "$j")"
  done
  # The host (API server, kubectl) reaches pods through their node.
  ip route add "$(pod_cidr "$i")" via "$ip"
}

# The node's mount namespace: private to it, then shared inside so containers that ask for
# HostToContainer propagation (the node agent's /var/run/netns) get it.
node_mounts() {
  local node=$1 dir="$STATE/nodes/$1" p
  for p in "${NODE_OWNED_PATHS[@]}"; do
    mkdir -p "$dir$p"
    if [[ ! -e $p ]]; then
      mkdir -p "$p"
      printf '%s\n' "$p" >>"$STATE/created-paths"
    fi
  done
  touch "$(node_mntns "$node")"
  unshare --mount="$(node_mntns "$node")" --propagation private true
  nsenter --mount="$(node_mntns "$node")" sh -euc "
    mount --make-rshared /
    for p in ${NODE_OWNED_PATHS[*]}; do mount --bind \"$dir\$p\" \"\$p\"; done
  "
}

node_files() {
  local i=$1 node=${NODES[$1]} dir="$STATE/nodes/${NODES[$1]}"
  cp /usr/lib/cni/{bridge,host-local,loopback,portmap} "$dir/opt/cni/bin/"
  cat >"$dir/etc/cni/net.d/10-bridge.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "k8s-pod-network",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$(pod_cidr "$i")"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  cp "$PKI/ca.crt" "$dir/etc/kubernetes/ca.crt"
  kubeconfig "$dir/etc/kubernetes/kubelet.conf" "kubelet-$node" "https://$API_IP:6443"
  kubeconfig "$dir/etc/kubernetes/kube-proxy.conf" kube-proxy "https://$API_IP:6443"
  # Pods with dnsPolicy Default get this; there is no upstream DNS here.
  printf 'nameserver %s\n' "$API_IP" >"$dir/etc/kubernetes/resolv.conf"
  cat >"$dir/etc/kubernetes/containerd.toml" <<EOF
version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$PAUSE_IMAGE"
[plugins.'io.containerd.cri.v1.runtime']
  # No CAP_SYS_RESOURCE here: never ask for an oom_score_adj below containerd's own.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/opt/cni/bin"]
    conf_dir = "/etc/cni/net.d"
EOF
  cat >"$dir/etc/kubernetes/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# Facts of these machines: cgroups v1, no systemd, swap may be on; and nodes share one
# cgroup tree, so each kubelet gets its own root.
cgroupDriver: cgroupfs
cgroupRoot: /$node
failSwapOn: false
failCgroupV1: false
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: /etc/kubernetes/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
clusterDNS: [$DNS_IP]
resolvConf: /etc/kubernetes/resolv.conf
address: $(node_ip "$i")
healthzBindAddress: 127.0.0.1
serializeImagePulls: false
# The shared disk is the host's: evict on real pressure only.
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
  cat >"$dir/etc/kubernetes/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: /etc/kubernetes/kube-proxy.conf}
hostnameOverride: $node
clusterCIDR: 10.244.0.0/16
bindAddress: $(node_ip "$i")
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# nf_conntrack_max is global to the machine: leave it alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

# cgroup_root_dirs NODE : the node's kubelet cgroup root in every v1 hierarchy.
cgroup_root_dirs() {
  local d
  for d in /sys/fs/cgroup/*/; do
    [[ -e $d/cgroup.procs ]] || continue
    printf '%s%s\n' "$d" "$1"
  done
}

node_start() {
  local node=$1 d
  while read -r d; do mkdir -p "$d"; done < <(cgroup_root_dirs "$node")
  # cpuset children start empty: give the root the parent's CPUs and memory nodes.
  if [[ -d /sys/fs/cgroup/cpuset/$node ]]; then
    cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$node/cpuset.cpus"
    cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$node/cpuset.mems"
  fi
  local enter=(nsenter --net="/run/netns/$(node_netns "$node")" --mount="$(node_mntns "$node")" --)
  start_process "$node-containerd" "${enter[@]}" "$BIN_CONTAINERD/containerd" \
    --config /etc/kubernetes/containerd.toml
  wait_for 60 "containerd on $node" in_node "$node" test -S /run/containerd/containerd.sock
  start_process "$node-kubelet" "${enter[@]}" "$BIN_K8S/kubelet" --config=/etc/kubernetes/kubelet.yaml \
    --kubeconfig=/etc/kubernetes/kubelet.conf --hostname-override="$node" \
    --node-ip="$(node_ip "$2")" --node-labels="ambit.dev/local-cluster=$CLUSTER"
  start_process "$node-kube-proxy" "${enter[@]}" "$BIN_K8S/kube-proxy" \
    --config=/etc/kubernetes/kube-proxy.yaml
}
