#!/usr/bin/env bash
# Builds the five images of images/Dockerfile without Docker or a registry, and writes each as
# an OCI archive for `ctr -n k8s.io images import` (the image keeps its ghcr.io/... name).
#
# Usage: images/build-local.sh --out DIR [--profile debug|release] [--skip-build] [--rebuild-base]
#   --out DIR       where the archives go: DIR/{ztunnel,ambit-cni-agent,waypoint,ambit-operator,demo-app}.tar
#   --profile P     the cargo target dir to take the binaries from (target/P); default: release
#                   when target/release has all six, else debug
#   --skip-build    only write the archives of images already in buildah's storage
#   --rebuild-base  debootstrap the base images again even if the cached ones are current
#
# How: the binaries (cargo build --bins --locked [--release]) are stripped into a staging
# directory, which is the build context of `buildah bud --build-arg BINARIES=prebuilt` (the
# Dockerfile's default, BINARIES=builder, compiles in a Rust image instead). The bases are
# made with debootstrap (bookworm minbase) from this host's Debian mirror and cached in
# ${AMBIT_CACHE:-~/.cache/ambit}/images-base-bookworm-<hash of their inputs>/:
#   localhost/ambit-base/debian      (DEBIAN_IMAGE) minbase + nftables, iproute2, curl,
#                                    ca-certificates, so the Dockerfile's apt lines are no-ops
#   localhost/ambit-base/distroless  (DISTROLESS_IMAGE, and :nonroot with user 65532) only
#                                    glibc, libgcc, base-files and the CA bundle, like
#                                    gcr.io/distroless/cc-debian12
# Needs root (debootstrap; buildah's system storage), buildah, runc, debootstrap and binutils.
# Images accumulate in buildah's storage as they are rebuilt: `buildah rmi --prune` reclaims.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${AMBIT_CACHE:-$HOME/.cache/ambit}
REGISTRY=ghcr.io/ambit-mesh
BINARIES=(ztunnel ambit-cni ambit-cni-agent waypoint ambit-operator ambitctl)
# Dockerfile target:image name.
TARGETS=(ztunnel:ztunnel cni-agent:ambit-cni-agent waypoint:waypoint operator:ambit-operator demo-app:demo-app)
# The binaries of the targets based on DISTROLESS_IMAGE: their shared libraries must be there.
DISTROLESS_BINARIES=(ztunnel waypoint ambit-operator)
SUITE=bookworm
# What the Dockerfile's Debian stages apt-get install (cni-agent: nft, ip; demo-app: curl).
DEBIAN_PACKAGES=(nftables iproute2 curl ca-certificates)
# The distroless base: what the Rust binaries link (libc, libm, libgcc_s; see `ldd`) and
# /etc/os-release; the CA bundle and the users are added by hand.
DISTROLESS_PACKAGES=(base-files libc6 libgcc-s1)
BASE=localhost/ambit-base
PATH_ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build-local.sh: %s\n' "$*" >&2; exit 1; }
bad_usage() { printf 'build-local.sh: %s (see --help)\n' "$*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; }

OUT="" PROFILE="" BUILD=1 REBUILD_BASE=0
while (($#)); do
  case $1 in
    --out) [[ $# -ge 2 ]] || bad_usage "--out needs a directory"; OUT=$2; shift ;;
    --out=*) OUT=${1#*=} ;;
    --profile) [[ $# -ge 2 ]] || bad_usage "--profile needs debug or release"; PROFILE=$2; shift ;;
    --profile=*) PROFILE=${1#*=} ;;
    --skip-build) BUILD=0 ;;
    --rebuild-base) REBUILD_BASE=1 ;;
    -h | --help) usage; exit 0 ;;
    *) bad_usage "unknown argument: $1" ;;
  esac
  shift
done
[[ -n $OUT ]] || bad_usage "--out DIR is required"
case $PROFILE in '' | debug | release) ;; *) bad_usage "--profile $PROFILE: want debug or release" ;; esac

TAG=$(sed -n 's/^appVersion:[[:space:]]*["'\'']\{0,1\}\([^"'\'' ]*\)["'\'']\{0,1\}[[:space:]]*$/\1/p' "$ROOT/helm/ambit/Chart.yaml")
[[ -n $TAG ]] || die "no appVersion in helm/ambit/Chart.yaml"

need() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null || die "$c is required (apt-get install buildah runc debootstrap binutils)"
  done
}
need buildah
((BUILD == 0)) || need runc debootstrap strip readelf sha256sum flock
((BUILD == 0)) || [[ $(id -u) -eq 0 ]] || die "needs root (debootstrap, and buildah's system storage)"

# --- binaries ---------------------------------------------------------------------------

cargo_cmd() { printf 'cargo build --bins --locked%s' "$([[ $1 == release ]] && printf ' --release')"; }
missing_bins() {
  local b
  for b in "${BINARIES[@]}"; do [[ -x $ROOT/target/$1/$b ]] || printf ' %s' "$b"; done
}
pick_profile() {
  [[ -z $PROFILE ]] || return 0
  if [[ -z $(missing_bins release) ]]; then PROFILE=release; else PROFILE=debug; fi
}
# Strips the binaries into $STAGE/bin, the build context of the prebuilt stage.
stage_binaries() {
  local missing b
  missing=$(missing_bins "$PROFILE")
  [[ -z $missing ]] ||
    die "missing in $ROOT/target/$PROFILE:$missing; build them with \`$(cargo_cmd "$PROFILE")\` (in $ROOT)"
  mkdir -p "$STAGE/bin"
  for b in "${BINARIES[@]}"; do
    strip --strip-all -o "$STAGE/bin/$b" "$ROOT/target/$PROFILE/$b"
    chmod 0755 "$STAGE/bin/$b"
  done
  say "binaries: ${BINARIES[*]} from target/$PROFILE, stripped" \
    "($(cd "$ROOT/target/$PROFILE" && du -chL "${BINARIES[@]}" | tail -1 | cut -f1) -> $(du -sh "$STAGE/bin" | cut -f1))"
}

# --- base images --------------------------------------------------------------------------

# The Debian mirror this host uses for $SUITE (sources.list, *.list or deb822 *.sources).
debian_mirror() {
  local uri
  if [[ -n ${AMBIT_DEBIAN_MIRROR:-} ]]; then printf '%s\n' "$AMBIT_DEBIAN_MIRROR"; return; fi
  uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    awk -v s="$SUITE" '$1 == "deb" {
      i = 2
      if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
      if ($(i + 1) == s && $i ~ /^https?:/) { print $i; exit }
    }') || true
  if [[ -z $uri ]]; then
    uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
      awk -v s="$SUITE" '
        function flush() {
          if (!found && (" " types " ") ~ / deb / && (" " suites " ") ~ (" " s " ") && uris ~ /^https?:/) {
            split(uris, u, " "); print u[1]; found = 1
          }
          types = uris = suites = ""
        }
        /^[[:space:]]*$/ { flush(); next }
        /^Types:/ { sub(/^Types:[[:space:]]*/, ""); types = $0 }
        /^URIs:/ { sub(/^URIs:[[:space:]]*/, ""); uris = $0 }
        /^Suites:/ { sub(/^Suites:[[:space:]]*/, ""); suites = $0 }
        END { flush() }') || true
  fi
  printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

# debootstrap, then what an image does not need: documentation, locales, apt's lists and
# downloaded packages, logs, the host's resolv.conf and hostname. The apt and dpkg settings
# are those of Debian's official images, so later apt-get runs stay small too.
make_debian_rootfs() {
  local r=$1 mirror=$2 log=$3 keyring=() kept
  [[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]] &&
    keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
  debootstrap --variant=minbase --components=main "${keyring[@]}" \
    --include="$(IFS=,; printf '%s' "${DEBIAN_PACKAGES[*]}")" "$SUITE" "$r" "$mirror" >"$log" 2>&1 || {
    tail -20 "$log" >&2
    kept="$CACHE/images-base-$SUITE-debootstrap-failed.log"
    cp "$log" "$kept"
    die "debootstrap $SUITE from $mirror failed (log: $kept)"
  }
  find "$r/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$r"/usr/share/{man,info,lintian,linda}/* "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin \
    "$r"/var/cache/apt/archives/*.deb "$r"/var/cache/debconf/*-old "$r"/var/lib/dpkg/*-old \
    "$r"/etc/resolv.conf "$r"/etc/hostname "$r"/etc/machine-id "$r"/tmp/* "$r"/var/tmp/*
  [[ ! -d $r/usr/share/locale ]] ||
    find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  find "$r/var/log" -type f -delete
  cat >"$r/etc/dpkg/dpkg.cfg.d/ambit-excludes" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  cat >"$r/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  printf 'Acquire::Languages "none";\n' >"$r/etc/apt/apt.conf.d/docker-no-languages"
  printf 'Acquire::GzipIndexes "true";\nAcquire::CompressionTypes::Order:: "gz";\n' \
    >"$r/etc/apt/apt.conf.d/docker-gzip-indexes"
  # The Dockerfile's unprivileged stages run as 65532, as distroless's nonroot.
  printf 'nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin\n' >>"$r/etc/passwd"
  printf 'nonroot:x:65532:\n' >>"$r/etc/group"
  printf 'nonroot:!:19000:0:99999:7:::\n' >>"$r/etc/shadow"
  printf 'nonroot:!::\n' >>"$r/etc/gshadow"
  install -d -m 0700 -o 65532 -g 65532 "$r/home/nonroot"
}

# The distroless-like rootfs, taken from the Debian one: the files of DISTROLESS_PACKAGES
# but glibc's iconv modules (gconv, 8 MB; Rust does not use them), their dpkg status (for
# image scanners, as distroless), the CA bundle, the users root, nobody and nonroot.
make_distroless_rootfs() {
  local r=$1 d=$2 l p pkg
  mkdir -p "$d"
  # Merged /usr: bin -> usr/bin, lib64 -> usr/lib64, ...
  for l in "$r"/*; do
    if [[ -L $l ]]; then
      cp -a "$l" "$d/"
      mkdir -p "$d/$(readlink "$l")"
    fi
  done
  for pkg in "${DISTROLESS_PACKAGES[@]}"; do
    dpkg-query --admindir="$r/var/lib/dpkg" -L "$pkg" | while IFS= read -r p; do
      # Directories come with their files; the top-level links are there already.
      if [[ $p == /*/* && $p != */gconv/* && (-L $r$p || (-e $r$p && ! -d $r$p)) ]]; then
        printf '%s\n' "${p#/}"
      fi
    done
  done | tar -C "$r" --numeric-owner --no-recursion -cf - -T - |
    tar -C "$d" --keep-directory-symlink -xf -
  mkdir -p "$d/var/lib/dpkg/status.d" "$d/etc/ssl/certs"
  for pkg in "${DISTROLESS_PACKAGES[@]}"; do
    dpkg-query --admindir="$r/var/lib/dpkg" -s "$pkg" >"$d/var/lib/dpkg/status.d/$pkg"
  done
  cp -L "$r/etc/ssl/certs/ca-certificates.crt" "$d/etc/ssl/certs/"
  cp "$r/etc/nsswitch.conf" "$r/etc/ld.so.conf" "$d/etc/"
  "$r/usr/sbin/ldconfig" -r "$d"
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$d/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'tty:x:5:' 'staff:x:50:' 'nonroot:x:65532:' >"$d/etc/group"
  install -d -m 1777 "$d/tmp"
  install -d -m 0700 "$d/root"
  install -d -m 0700 -o 65532 -g 65532 "$d/home/nonroot"
}

base_key() {
  {
    printf '%s\n' "$SUITE" "$1" "${DEBIAN_PACKAGES[*]}" "${DISTROLESS_PACKAGES[*]}"
    dpkg-query -W debootstrap 2>/dev/null || debootstrap --version
    declare -f make_debian_rootfs make_distroless_rootfs
  } | sha256sum | cut -c1-12
}

# Makes (or reuses) the cached base rootfs tarballs, and imports them into buildah's storage
# when the images there are not from this key.
base_images() {
  local mirror key dir tmp t0=$SECONDS
  mirror=$(debian_mirror)
  key=$(base_key "$mirror")
  dir="$CACHE/images-base-$SUITE-$key"
  BASE_DIR=$dir
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.images-base.lock"
  flock 9
  if ((REBUILD_BASE)) || [[ ! -f $dir/debian.tar || ! -f $dir/distroless.tar ]]; then
    say "base: debootstrap $SUITE minbase + ${DEBIAN_PACKAGES[*]} from $mirror (a minute or two, once; cached in $dir)"
    tmp="$dir.tmp"
    BASE_TMP=$tmp
    rm -rf "$tmp"
    mkdir -p "$tmp"
    make_debian_rootfs "$tmp/debian" "$mirror" "$tmp/debootstrap.log"
    make_distroless_rootfs "$tmp/debian" "$tmp/distroless"
    tar -C "$tmp/debian" --numeric-owner -cf "$tmp/debian.tar" .
    tar -C "$tmp/distroless" --numeric-owner -cf "$tmp/distroless.tar" .
    rm -rf "$tmp/debian" "$tmp/distroless"
    printf 'suite: %s\nmirror: %s\ndebian: %s\ndistroless: %s\nbuilt: %s\n' "$SUITE" "$mirror" \
      "${DEBIAN_PACKAGES[*]}" "${DISTROLESS_PACKAGES[*]}" "$(date -u +%FT%TZ)" >"$tmp/inputs.txt"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    BASE_TMP=""
    say "base: rootfs built in $((SECONDS - t0))s (debian $(du -h "$dir/debian.tar" | cut -f1), distroless $(du -h "$dir/distroless.tar" | cut -f1))"
  fi
  import_base "$BASE/debian:latest" "$dir/debian.tar" "$key"
  import_base "$BASE/distroless:latest" "$dir/distroless.tar" "$key" --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
  if [[ $(base_label "$BASE/distroless:nonroot") != "$(base_label "$BASE/distroless:latest")" ]]; then
    local ctr
    ctr=$(buildah from --pull=never "$BASE/distroless:latest")
    buildah config --user 65532:65532 --workingdir /home/nonroot "$ctr"
    buildah commit -q --rm "$ctr" "$BASE/distroless:nonroot" >/dev/null
  fi
  flock -u 9
  exec 9>&-
  say "base: $BASE/debian, $BASE/distroless{,:nonroot} ready ($((SECONDS - t0))s)"
}

base_label() {
  buildah inspect --type image --format '{{index .OCIv1.Config.Labels "ambit.base-key"}}' "$1" 2>/dev/null || true
}

# The label names the key and the tarball's time, so a rebuilt tarball is imported again.
import_base() {
  local image=$1 tarball=$2 stamp ctr
  stamp="$3@$(stat -c %Y "$tarball")"
  shift 3
  [[ $(base_label "$image") == "$stamp" ]] && return 0
  say "base: importing $tarball as $image"
  ctr=$(buildah from scratch)
  buildah add "$ctr" "$tarball" / >/dev/null
  buildah config --label "ambit.base-key=$stamp" --env "$PATH_ENV" "$@" "$ctr"
  buildah commit -q --rm "$ctr" "$image" >/dev/null
}

# Every shared library a distroless-based binary needs must be in the distroless base.
check_distroless_libs() {
  local files b lib
  files=$(tar -tf "$BASE_DIR/distroless.tar")
  for b in "${DISTROLESS_BINARIES[@]}"; do
    for lib in $(readelf -d "$STAGE/bin/$b" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'); do
      grep -q "/${lib//./\\.}\$" <<<"$files" ||
        die "$b links $lib, which the distroless base lacks: add its package to DISTROLESS_PACKAGES in $0"
    done
  done
}

# --- the images -----------------------------------------------------------------------------

# Keeps buildah's RUN containers within this host's hard limits (runc refuses more).
ulimit_arg() {
  local want=$2 hard
  hard=$(ulimit -H "$1")
  [[ $hard == unlimited ]] || ((hard >= want)) || want=$hard
  printf '%s:%s' "$want" "$want"
}

build_images() {
  local entry target image t0 log runtime
  runtime=${BUILDAH_RUNTIME:-$(command -v runc)}
  log="$STAGE/bud.log"
  for entry in "${TARGETS[@]}"; do
    target=${entry%%:*}
    image="$REGISTRY/${entry#*:}:$TAG"
    t0=$SECONDS
    # --layers: the stages shared between targets are built once; host network only for the
    # Dockerfile's apt lines should a base lack a package.
    buildah bud --layers --pull=never --runtime "$runtime" --network host \
      --ulimit "nofile=$(ulimit_arg -n 1024)" --ulimit "nproc=$(ulimit_arg -u 4096)" \
      --build-arg BINARIES=prebuilt --build-arg "DEBIAN_IMAGE=$BASE/debian" \
      --build-arg "DISTROLESS_IMAGE=$BASE/distroless" \
      -f "$ROOT/images/Dockerfile" --target "$target" -t "$image" "$STAGE" >"$log" 2>&1 || {
      tail -30 "$log" >&2
      die "buildah bud --target $target failed"
    }
    say "built $image ($((SECONDS - t0))s, $(buildah images --format '{{.Size}}' "$image" | head -1))"
  done
}

write_archives() {
  local entry image file t0
  mkdir -p "$OUT"
  for entry in "${TARGETS[@]}"; do
    image="$REGISTRY/${entry#*:}:$TAG"
    file="$OUT/${entry#*:}.tar"
    t0=$SECONDS
    buildah inspect --type image "$image" >/dev/null 2>&1 ||
      die "$image is not in buildah's storage: run without --skip-build"
    rm -f "$file"
    # The reference name annotation carries the full name, which ctr import keeps.
    buildah push -q "$image" "oci-archive:$file:$image"
    say "wrote $file ($(du -h "$file" | cut -f1), $((SECONDS - t0))s)"
    printf '%s\n' "$file"
  done
}

START=$SECONDS
if ((BUILD)); then
  pick_profile
  STAGE=$(mktemp -d "${TMPDIR:-/tmp}/ambit-images.XXXXXX") BASE_TMP=""
  trap 'rm -rf "$STAGE" ${BASE_TMP:+"$BASE_TMP"}' EXIT
  stage_binaries
  base_images
  check_distroless_libs
  build_images
fi
write_archives
say "done in $((SECONDS - START))s: $(du -ch "$OUT"/*.tar | tail -1 | cut -f1) of archives in $OUT"
