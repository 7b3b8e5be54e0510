#!/usr/bin/env bash
# Builds the pinned Kubernetes components the local cluster runs (kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl), etcd, containerd
# (+ shim, ctr), CoreDNS and helm from the Go module proxy, and a static pause binary.
# Each lands in $AMBIT_CACHE/<name>-<version>/bin and is rebuilt only when its pin in
# versions.env changes. First build on 2 cores: about 25-35 minutes (Kubernetes alone ~15-20);
# afterwards a few seconds.
#
# Usage: build-tools.sh [all|kubernetes|etcd|containerd|coredns|helm|pause]...
# Prints the bin directory of each component on the last lines ("<name>=<dir>").
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$HERE/versions.env"
CACHE=${AMBIT_CACHE:-$HOME/.cache/ambit}
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
export GOTOOLCHAIN=local

say() { printf '==> [build %s] %s\n' "$1" "${*:2}" >&2; }

# go_build NAME VERSION MODULE@VERSION LDFLAGS PKG... : builds PKGs of MODULE into the cache.
# A throwaway module requires MODULE so `replace` lines (Kubernetes' staging modules) can
# be added by the caller through $EXTRA_GOMOD.
go_build() {
  local name=$1 version=$2 modver=$3 ldflags=$4
  shift 4
  local dest="$CACHE/$name-$version" work total
  if [[ -f $dest/.complete ]]; then
    printf '%s=%s\n' "$name" "$dest/bin"
    return
  fi
  rm -rf "$dest"
  work=$(mktemp -d "${TMPDIR:-/tmp}/ambit-build-$name.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" RETURN
  mkdir -p "$dest/bin"
  {
    printf 'module ambit.dev/local-cluster-build/%s\n\ngo 1.25.0\n\nrequire %s %s\n' \
      "$name" "${modver%@*}" "${modver#*@}"
    printf '%s\n' "${EXTRA_GOMOD:-}"
  } >"$work/go.mod"
  say "$name" "resolving modules for ${modver}"
  (cd "$work" && go list -deps "$@" >"$work/deps" 2>"$work/list.log") || {
    cat "$work/list.log" >&2
    return 1
  }
  total=$(wc -l <"$work/deps")
  say "$name" "compiling $total packages (progress every 10%)"
  (cd "$work" && go build -v -trimpath -ldflags "-s -w $ldflags" -o "$dest/bin/" "$@" 2>&1) |
    awk -v total="$total" -v name="$name" '
      { n++; pct = int(100 * n / total); if (pct >= next_pct) { printf "==> [build %s] %d%% (%d/%d packages)\n", name, pct, n, total > "/dev/stderr"; next_pct = pct + 10 } }
      /^#|: / { print > "/dev/stderr" }'
  [[ ${PIPESTATUS[0]} -eq 0 ]] || return 1
  [[ $(find "$dest/bin" -type f | wc -l) -ge $# ]] || {
    say "$name" "go build made $(find "$dest/bin" -type f | wc -l) of $# binaries"
    return 1
  }
  date -u +%FT%TZ >"$dest/.complete"
  say "$name" "done: $(find "$dest/bin" -type f -printf '%f ')"
  printf '%s=%s\n' "$name" "$dest/bin"
}

build_kubernetes() {
  local v=$KUBERNETES_VERSION minor gomod staging
  minor=${v#v1.}
  minor=${minor%%.*}
  # k8s.io/kubernetes replaces its staging modules with ./staging/...; as a dependency those
  # lines are ignored, so pin every one of them to the matching published v0.X.Y.
  gomod=$(go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
  staging=$(sed -n 's#^\t\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$gomod")
  EXTRA_GOMOD=$(printf 'replace (\n'
    for m in $staging; do printf '\t%s => %s v0.%s\n' "$m" "$m" "${v#v1.}"; done
    printf ')\n')
  local ver_ld="" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ver_ld+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  EXTRA_GOMOD=$EXTRA_GOMOD go_build kubernetes "$v" "k8s.io/kubernetes@$v" "$ver_ld" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl
}

build_etcd() {
  local v=$ETCD_VERSION
  go_build etcd "$v" "go.etcd.io/etcd/server/v3@$v" "" go.etcd.io/etcd/server/v3 >/dev/null
  # The server module's main package is built under its directory's name.
  local dest="$CACHE/etcd-$v/bin"
  [[ -x $dest/server ]] && mv "$dest/server" "$dest/etcd"
  printf 'etcd=%s\n' "$dest"
}

build_containerd() {
  local v=$CONTAINERD_VERSION m=github.com/containerd/containerd/v2
  GOFLAGS="$GOFLAGS -tags=no_btrfs,no_devmapper,no_zfs" go_build containerd "$v" "$m@$v" \
    "-X $m/version.Version=$v" "$m/cmd/containerd" "$m/cmd/containerd-shim-runc-v2" "$m/cmd/ctr"
}

build_coredns() {
  local v=$COREDNS_VERSION
  go_build coredns "$v" "github.com/coredns/coredns@$v" "" github.com/coredns/coredns
}

build_helm() {
  local v=$HELM_VERSION
  go_build helm "$v" "helm.sh/helm/v4@$v" "-X helm.sh/helm/v4/internal/version.version=$v" \
    helm.sh/helm/v4/cmd/helm
}

# The pod sandbox's pause process: waits for signals, reaps nothing else. Static so the
# image is FROM scratch.
build_pause() {
  local dest="$CACHE/pause-1/bin"
  if [[ ! -x $dest/pause ]]; then
    mkdir -p "$dest"
    cc -static -O2 -o "$dest/pause" "$HERE/pause.c"
  fi
  printf 'pause=%s\n' "$dest"
}

main() {
  local what=("$@")
  ((${#what[@]})) || what=(all)
  [[ ${what[0]} == all ]] && what=(pause etcd containerd helm coredns kubernetes)
  local cached_go
  for cached_go in "$CACHE"/go-*/go/bin; do
    command -v go >/dev/null || PATH="$cached_go:$PATH"
  done
  command -v go >/dev/null || {
    echo "go is required (Go 1.25 or newer; scripts/install-deps installs it)" >&2
    exit 2
  }
  mkdir -p "$CACHE"
  for w in "${what[@]}"; do
    case $w in
      kubernetes | etcd | containerd | coredns | helm | pause) "build_$w" ;;
      *)
        echo "unknown component: $w (kubernetes etcd containerd coredns helm pause all)" >&2
        exit 2
        ;;
    esac
  done
}
main "$@"
