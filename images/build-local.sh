#!/usr/bin/env bash
# Builds the five images of images/Dockerfile without Docker or a registry: buildah, the
# workspace's prebuilt binaries (--build-arg BINARIES=prebuilt) and Debian bases made with
# debootstrap (cached by their inputs in $AMBIT_CACHE, default ~/.cache/ambit). Writes one
# OCI archive per image to --out DIR, for `ctr -n k8s.io images import`.
#
# Usage: images/build-local.sh --out DIR [--profile debug|release] [--skip-build]
#   --profile     which cargo target dir to take binaries from (default: release when it has
#                 all of them, else debug)
#   --skip-build  only export images already in buildah's storage
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${AMBIT_CACHE:-$HOME/.cache/ambit}
REGISTRY=ghcr.io/ambit-mesh
TAG=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$ROOT/helm/ambit/Chart.yaml")
BINARIES=(ztunnel ambit-cni ambit-cni-agent waypoint ambit-operator ambitctl)
# Dockerfile target -> image name.
TARGETS=(ztunnel:ztunnel cni-agent:ambit-cni-agent waypoint:waypoint operator:ambit-operator demo-app:demo-app)
# The base: what the Dockerfile's stages install, so their apt lines have nothing to fetch.
SUITE=bookworm
BASE_PACKAGES=nftables,iproute2,curl,ca-certificates
BASE_IMAGE=localhost/ambit-base/debian

OUT="" PROFILE="" BUILD=1
while (($#)); do
  case $1 in
    --out) OUT=${2:?--out needs a directory}; shift ;;
    --profile) PROFILE=${2:?--profile needs debug or release}; shift ;;
    --skip-build) BUILD=0 ;;
    -h | --help) sed -n '2,11s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) printf 'unknown argument: %s (see --help)\n' "$1" >&2; exit 2 ;;
  esac
  shift
done
[[ -n $OUT ]] || { echo "--out DIR is required (see --help)" >&2; exit 2; }
say() { printf '==> [images] %s\n' "$*" >&2; }
for c in buildah debootstrap strip; do
  command -v "$c" >/dev/null || { echo "$c is required (apt-get install buildah debootstrap binutils)" >&2; exit 2; }
done

have_all() { local b; for b in "${BINARIES[@]}"; do [[ -x $ROOT/target/$1/$b ]] || return 1; done; }
if [[ -z $PROFILE ]]; then
  if have_all release; then PROFILE=release; else PROFILE=debug; fi
fi
case $PROFILE in debug | release) ;; *) echo "--profile $PROFILE: want debug or release" >&2; exit 2 ;; esac

# The base image, from debootstrap: rebuilt when the suite or the package list changes.
base_image() {
  local key dir
  key=$(printf '%s %s' "$SUITE" "$BASE_PACKAGES" | md5sum | cut -c1-12)
  dir="$CACHE/images-base-$SUITE-$key"
  if [[ ! -f $dir/rootfs.tar ]]; then
    local mirror
    mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
    mirror=${mirror:-http://deb.debian.org/debian}
    say "debootstrap $SUITE ($BASE_PACKAGES) from $mirror: a few minutes, once"
    rm -rf "$dir"
    mkdir -p "$dir"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$dir/rootfs" "$mirror" >"$dir/debootstrap.log" 2>&1 || {
      tail -20 "$dir/debootstrap.log" >&2
      echo "debootstrap failed (log: $dir/debootstrap.log)" >&2
      exit 1
    }
    # What an image does not need: documentation, locales, apt lists and caches.
    rm -rf "$dir"/rootfs/usr/share/{doc,man,info,locale} "$dir"/rootfs/var/lib/apt/lists/* \
      "$dir"/rootfs/var/cache/apt/*.bin "$dir"/rootfs/var/cache/debconf/*-old
    tar -C "$dir/rootfs" --numeric-owner -cf "$dir/rootfs.tar.tmp" .
    rm -rf "$dir/rootfs"
    mv "$dir/rootfs.tar.tmp" "$dir/rootfs.tar"
  fi
  if [[ $(buildah images -q --filter "label=ambit.base-key=$key" 2>/dev/null | head -1) == "" ]]; then
    say "importing the base as $BASE_IMAGE"
    local ctr
    ctr=$(buildah from scratch)
    buildah add "$ctr" "$dir/rootfs.tar" / >/dev/null
    buildah config --label "ambit.base-key=$key" --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
    buildah commit -q "$ctr" "$BASE_IMAGE:latest" >/dev/null
    buildah rm "$ctr" >/dev/null
  fi
  # The Dockerfile's distroless stages ask for <image> and <image>:nonroot.
  buildah tag "$BASE_IMAGE:latest" "$BASE_IMAGE:nonroot"
}

build() {
  local stage entry b
  stage=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$stage'" RETURN
  mkdir -p "$stage/bin"
  for b in "${BINARIES[@]}"; do
    [[ -x $ROOT/target/$PROFILE/$b ]] || {
      echo "target/$PROFILE/$b is missing: build it with cargo build --workspace --bins$([[ $PROFILE == release ]] && printf ' --release')" >&2
      exit 1
    }
    strip -o "$stage/bin/$b" "$ROOT/target/$PROFILE/$b"
  done
  say "binaries from target/$PROFILE (stripped: $(du -sh "$stage/bin" | cut -f1))"
  for entry in "${TARGETS[@]}"; do
    local image="$REGISTRY/${entry#*:}:$TAG" t0=$SECONDS
    # Host network for the stages' apt lines; rlimits within the host's hard limits.
    buildah bud -q --layers --network host --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 \
      --runtime "$(command -v runc)" \
      --build-arg BINARIES=prebuilt --build-arg DEBIAN_IMAGE="$BASE_IMAGE" \
      --build-arg DISTROLESS_IMAGE="$BASE_IMAGE" \
      -f "$ROOT/images/Dockerfile" --target "${entry%%:*}" -t "$image" "$stage" >/dev/null
    say "$image ($((SECONDS - t0))s)"
  done
}

mkdir -p "$OUT"
if ((BUILD)); then
  base_image
  build
fi
for entry in "${TARGETS[@]}"; do
  image="$REGISTRY/${entry#*:}:$TAG"
  rm -f "$OUT/${entry#*:}.tar"
  buildah push -q "$image" "oci-archive:$OUT/${entry#*:}.tar:$image"
done
say "archives in $OUT: $(cd "$OUT" && du -ch ./*.tar | tail -1 | cut -f1)"
