#!/usr/bin/env bash
# Builds the Federator image (deploy/image/Containerfile) with podman from a binary built
# beforehand; the binary is stripped of debug information on the way in.
#
#   bash deploy/image/build.sh --binary target/release/federator [--tag federator:0.1.0]
#                              [--local-base]
#
# --local-base: no registry is reachable (as on the machines the tests run on), so the
# base is made from Debian 12's packages (debootstrap --variant=minbase, with
# ca-certificates and busybox-static) and imported as
# localhost/federator-base:bookworm-busybox; the root file system is cached in
# $FEDERATOR_IMAGE_CACHE (default ~/.cache/federator/image) and reused. Without it the
# Containerfile's default base (debian:bookworm-slim) is pulled.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
binary=""
tag="federator:$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/federator/Cargo.toml" | head -1)"
local_base=false
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --local-base) local_base=true; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$binary" ] || [ ! -x "$binary" ]; then
  echo "build.sh: --binary must name the federator binary to pack (cargo build --release first)" >&2
  exit 2
fi
command -v podman >/dev/null || { echo "build.sh: podman is needed (apt-get install podman)" >&2; exit 1; }

build_args=()
if $local_base; then
  cache="${FEDERATOR_IMAGE_CACHE:-$HOME/.cache/federator/image}"
  base_tar="$cache/base-bookworm-busybox.tar"
  rm -f "$cache/base-bookworm.tar" # an earlier base, without BusyBox
  if [ ! -s "$base_tar" ]; then
    command -v debootstrap >/dev/null || { echo "build.sh: debootstrap is needed for --local-base" >&2; exit 1; }
    mirror="$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)"
    mirror="${mirror:-http://deb.debian.org/debian}"
    echo "build.sh: making a Debian 12 base from $mirror (once; about a minute)" >&2
    root="$(mktemp -d)"
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase --include=ca-certificates,busybox-static bookworm "$root" "$mirror" >/dev/null
    mkdir -p "$cache"
    tar -C "$root" -cf "$base_tar.tmp" .
    mv "$base_tar.tmp" "$base_tar"
  fi
  if ! podman image exists localhost/federator-base:bookworm-busybox; then
    podman import --quiet "$base_tar" localhost/federator-base:bookworm-busybox >/dev/null
  fi
  build_args+=(--build-arg BASE=localhost/federator-base:bookworm-busybox)
fi

context="$(mktemp -d)"
trap 'rm -rf "$context" ${root:+"$root"}' EXIT
objcopy --strip-debug "$binary" "$context/federator"
# The image this replaces goes (unless a container uses it), so rebuilds do not pile up.
old="$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
# Chroot isolation: the RUN step needs no OCI runtime or cgroup support (crun refuses
# hosts with hybrid cgroups, as the test machines have), and runs only Debian's tools.
podman build --quiet --isolation=chroot "${build_args[@]}" -f "$repo/deploy/image/Containerfile" -t "$tag" "$context" >/dev/null
new="$(podman image inspect --format '{{.Id}}' "$tag")"
if [ -n "$old" ] && [ "$old" != "$new" ]; then
  podman rmi "$old" >/dev/null 2>&1 || true
fi
echo "build.sh: built $tag ($(du -h "$context/federator" | cut -f1) binary)" >&2
