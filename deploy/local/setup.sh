#!/usr/bin/env bash
# Installs what building and testing Federator needs on a fresh Debian machine:
# protoc (for the gRPC code and etcd-client), etcd (tests and benchmarks run real etcd
# servers on loopback) and the Rust components used by the test command.
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if command -v rustup >/dev/null 2>&1; then
  for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^${component}" || rustup component add "$component" >/dev/null 2>&1 || true
  done
fi
echo "setup: protoc $(protoc --version | cut -d' ' -f2), etcd $(etcd --version | head -1 | cut -d' ' -f3), $(cargo --version)" >&2
