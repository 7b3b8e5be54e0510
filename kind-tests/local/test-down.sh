#!/usr/bin/env bash
# Test of cluster.sh's lifecycle on this machine (root): an `up` killed half-way (SIGKILL,
# as a crash would) and then `down` leave no process, network namespace, mount, cgroup, link,
# route or file behind; a second `up` after that works (nodes Ready, DNS), and its `down`
# leaves nothing either. Uses its own cluster name and subnet, so it runs beside other
# clusters. Exits non-zero with what was left.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[[ $(id -u) -eq 0 ]] || {
  echo "test-down.sh: needs root" >&2
  exit 2
}

NAME="ambit-dt$$"
NAME=${NAME:0:21}
# A /24 no interface of this machine uses.
for _ in $(seq 50); do
  SUBNET="172.30.$((RANDOM % 250 + 1))"
  ip -o addr show | grep -q " $SUBNET\." || break
done
STATE_ROOT=${AMBIT_LOCAL_STATE:-/var/lib/ambit-local}
STATE="$STATE_ROOT/$NAME"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ambit-test-down.XXXXXX")
cluster() { "$HERE/cluster.sh" "$@" --name "$NAME"; }
say() { printf '==> test-down [%s]: %s\n' "$NAME" "$*" >&2; }
UP_PID=""
cleanup() {
  [[ -n $UP_PID ]] && kill -KILL -- "-$UP_PID" 2>/dev/null
  cluster down >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

short=$(printf '%s' "$NAME" | md5sum | cut -c1-6)
# Everything of this cluster the machine shows, one line per thing (empty when clean).
traces() {
  local p
  ip netns list 2>/dev/null | awk -v n="$NAME" 'index($1, n) == 1 {print "netns " $1}'
  grep -F "$NAME" /proc/self/mountinfo | awk '{print "mount " $5}'
  for p in /sys/fs/cgroup/*/"$NAME"-*; do [[ -d $p ]] && echo "cgroup $p"; done
  ip -o link show 2>/dev/null | awk -v s="$short" -F': ' 'index($2, "albr" s) == 1 || index($2, "alv" s) == 1 {print "link " $2}'
  ip route show | awk -v s="$SUBNET." 'index($0, s) {print "route " $0}'
  for p in "$STATE" "/run/ambit-local/$NAME"; do [[ -e $p ]] && echo "file $p"; done
  # A process of the cluster: its command line names it (control plane, kubelet) or it runs
  # in a node's network namespace (containerd, shims, pods), also once the namespace's file
  # is gone.
  local ns
  for p in /proc/[0-9]*; do
    ns=$(readlink "$p/ns/net" 2>/dev/null) || continue
    if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "$NAME" ||
      { [[ -n $NODE_NETNS ]] && grep -qxF -- "$ns" <<<"$NODE_NETNS"; }; then
      echo "process ${p#/proc/} $(tr '\0' ' ' <"$p/cmdline" | cut -c1-80)"
    fi
  done
  return 0
}
NODE_NETNS=""
# The node network namespaces (as /proc/PID/ns/net shows them), while their files exist.
record_node_netns() {
  local f
  for f in /run/netns/"$NAME"-*; do
    [[ -e $f ]] && NODE_NETNS+="net:[$(stat -L -c %i "$f")]"$'\n'
  done
  return 0
}

expect_clean() {
  local left
  left=$(traces)
  if [[ -n $left ]]; then
    printf 'FAIL: %s left:\n%s\n' "$1" "$left" >&2
    exit 1
  fi
  say "clean after $1"
}

expect_clean "nothing (before the test)"

# 1. `up`, SIGKILLed once the first node's kubelet runs: processes, namespaces, mounts and
#    cgroups exist, and `up` never reached its end.
say "up (to be killed half-way), subnet $SUBNET.0/24"
setsid "$HERE/cluster.sh" up --name "$NAME" --subnet "$SUBNET" >"$WORK/up1.log" 2>&1 &
UP_PID=$!
for _ in $(seq 600); do
  compgen -G "$STATE/pids/*kubelet*" >/dev/null && break
  kill -0 "$UP_PID" 2>/dev/null || break
  sleep 0.5
done
kill -0 "$UP_PID" 2>/dev/null || {
  cat "$WORK/up1.log" >&2
  echo "FAIL: up ended before it could be killed" >&2
  exit 1
}
compgen -G "$STATE/pids/*kubelet*" >/dev/null || {
  echo "FAIL: no kubelet started within 300 s" >&2
  exit 1
}
sleep 2
kill -KILL -- "-$UP_PID"
wait "$UP_PID" 2>/dev/null || true
UP_PID=""
record_node_netns
before=$(traces | cut -d' ' -f1 | sort | uniq -c | tr -s ' \n' ' ')
say "killed up; what it had made: $before"
[[ $before == *netns* && $before == *process* && $before == *mount* ]] ||
  { echo "FAIL: the killed up had not made namespaces, mounts and processes yet ($before): the test proves nothing" >&2; exit 1; }
cluster down >"$WORK/down1.log" 2>&1 || { cat "$WORK/down1.log" >&2; exit 1; }
expect_clean "down after a killed up"

# 2. A full `up` after that, a look at the cluster, and `down`.
say "up again"
cluster up --subnet "$SUBNET" >"$WORK/up2.log" 2>&1 || { cat "$WORK/up2.log" >&2; exit 1; }
KUBECTL=$(find "${AMBIT_CACHE:-$HOME/.cache/ambit}" -path '*kubernetes-*/bin/kubectl' | head -1)
kc() { "$KUBECTL" --kubeconfig "$STATE/admin.conf" "$@"; }
ready=$(kc get nodes -o 'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True || true)
((ready >= 2)) || { echo "FAIL: $ready nodes Ready after the second up" >&2; exit 1; }
dns=$(kc -n kube-system get endpointslices -l k8s-app=kube-dns -o 'jsonpath={.items[*].endpoints[*].addresses[*]}')
[[ -n $dns ]] || { echo "FAIL: no cluster DNS endpoint after the second up" >&2; exit 1; }
say "second up: $ready nodes Ready, DNS at $dns"
NODE_NETNS=""
record_node_netns
cluster down >"$WORK/down2.log" 2>&1 || { cat "$WORK/down2.log" >&2; exit 1; }
expect_clean "down after a full up"
echo "PASS: test-down (killed up + down, up + down)"
