#!/usr/bin/env bash
# A real Kubernetes API server (kube-apiserver v1.37.2, no kubelet, no controllers) on
# loopback, for the integration tests. Modes:
#
#   kube-apiserver.sh build
#       Builds kube-apiserver and kubectl v1.37.2 (module k8s.io/kubernetes, pinned in
#       deploy/local/kube-tools/go.mod) with Go from the module proxy into
#       $FEDERATOR_KUBE_DIR/bin (default ~/.cache/federator/kube/bin); reused while the pin
#       is unchanged. Prints that directory. The first build takes 10 to 15 minutes on 2
#       cores (niced; 15 while a Rust build shared them) and needs about 2.5 GB of memory
#       and 3 GB of Go build cache. tests/run.sh (or .ci/run) should run it before the tests.
#
#   kube-apiserver.sh start DIR [API_PORT ETCD_PORT ETCD_PEER_PORT]
#       Builds if needed, makes certificates in DIR (a CA, a serving certificate for
#       127.0.0.1/localhost, an admin client certificate in group system:masters, a
#       service-account signing key), starts etcd on 127.0.0.1:ETCD_PORT and kube-apiserver
#       on https://127.0.0.1:API_PORT, waits until /readyz answers "ok", and writes
#       DIR/kubeconfig (admin) and DIR/env (shell assignments: KUBECONFIG, API_URL,
#       API_PORT, ETCD_URL, CA/CERT/KEY paths, PIDs). Ports left out are picked free by
#       the kernel. Logs: DIR/etcd.log, DIR/kube-apiserver.log. Pid files: DIR/*.pid.
#       Exits non-zero (having stopped what it started) if it does not become ready.
#       DIR's certificates and etcd data are kept across stop/start: restart a DIR with the
#       ports in its env file. Ready about 4 s after the start on 2 cores.
#
#   kube-apiserver.sh stop DIR
#       Stops the kube-apiserver and etcd started in DIR (TERM, then KILL after 10 s).
#       Keeps DIR's files.
#
#   kube-apiserver.sh kubectl DIR ARGS...
#       Runs the built kubectl (same version as the server) against the server in DIR.
#
# Extra kube-apiserver flags: $FEDERATOR_KUBE_APISERVER_ARGS (split on spaces), e.g.
# --runtime-config=certificates.k8s.io/v1beta1/clustertrustbundles=true. A start waits
# $FEDERATOR_KUBE_READY_TIMEOUT seconds (default 180) for /readyz.
#
# Backing store: $FEDERATOR_KUBE_ETCD, else `etcd` on PATH (Debian's etcd-server 3.4.23,
# installed by deploy/local/setup.sh). Only 127.0.0.1 is ever bound or dialled.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
tools="${FEDERATOR_KUBE_DIR:-$HOME/.cache/federator/kube}"
kube_version=v1.37.2
. "$repo/deploy/local/go-tools.sh"

log() { echo "kube-apiserver.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

go_tools_inputs() {
  cat "$repo"/deploy/local/kube-tools/go.mod "$repo"/deploy/local/kube-tools/go.sum
  echo "$kube_version -trimpath -s -w"
}

build() {
  if go_tools_fresh "$tools" kube-apiserver kubectl; then
    echo "$tools/bin"
    return 0
  fi
  go_tools_require_go kube-apiserver.sh "kube-apiserver $kube_version"
  log "building kube-apiserver and kubectl $kube_version into $tools (once; 10 to 15 minutes on 2 cores)"
  mkdir -p "$tools/bin"
  rm -f "$tools/stamp"
  local started ldflags pkg
  started=$(date +%s)
  # The version the binaries report (kubectl version, /version); the server's feature
  # gates follow the compiled-in DefaultKubeBinaryVersion (1.37) either way.
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=37"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$repo/deploy/local/kube-tools" &&
    GOFLAGS=-mod=readonly GOBIN="$tools/bin" nice -n 10 go install -trimpath -ldflags="$ldflags" tool)
  "$tools/bin/kube-apiserver" --version >/dev/null
  "$tools/bin/kubectl" version --client >/dev/null
  go_tools_stamp "$tools"
  log "built in $(( $(date +%s) - started )) s"
  echo "$tools/bin"
}

etcd_bin() {
  if [ -n "${FEDERATOR_KUBE_ETCD:-}" ]; then echo "$FEDERATOR_KUBE_ETCD"; return; fi
  command -v etcd 2>/dev/null || die "no etcd: run deploy/local/setup.sh (Debian's etcd-server) or set FEDERATOR_KUBE_ETCD"
}

# Three free loopback TCP ports, chosen by the kernel.
free_ports() {
  python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))'
}

# Certificates and keys in DIR/pki, made once per DIR (a restart of the same DIR keeps them,
# as it keeps etcd's data).
make_pki() {
  local pki="$1/pki"
  [ -s "$pki/sa.pub" ] && return 0
  mkdir -p "$pki"
  (
    cd "$pki"
    umask 077
    days=3650
    key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
    key ca.key
    openssl req -x509 -new -key ca.key -sha256 -days "$days" -subj "/CN=federator-test-kube-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -out ca.crt 2>/dev/null
    leaf() { # NAME SUBJECT EXTENSIONS
      key "$1.key"
      openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
      printf '%s\n' "$3" > "$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days "$days" \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr" "$1.ext"
    }
    leaf apiserver "/CN=kube-apiserver" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,IP:198.18.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    leaf admin "/O=system:masters/CN=federator-test-admin" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
    key sa.key
    openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
  ) || die "could not make certificates in $pki (openssl)"
  chmod 644 "$pki"/*.crt "$pki"/sa.pub
}

# Is PID alive and a process started for DIR? (Guards against a reused pid.)
ours() {
  local pid="$1" dir="$2"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "$dir/"
}

# Has PID not finished exiting? (An exiting process loses its cmdline before it closes its
# sockets; a zombie has closed them.)
running() {
  local state
  state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)"
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

stop_one() { # DIR NAME
  local dir="$1" name="$2" pid i
  pid="$(cat "$dir/$name.pid" 2>/dev/null || true)"
  if ours "$pid" "$dir"; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
      running "$pid" || break
      sleep 0.1
    done
    if running "$pid"; then
      log "$name (pid $pid) did not stop in 10 s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      for i in $(seq 1 50); do
        running "$pid" || break
        sleep 0.1
      done
    fi
  fi
  rm -f "$dir/$name.pid"
}

stop() {
  stop_one "$1" kube-apiserver
  stop_one "$1" etcd
}

wait_for() { # DIR NAME TIMEOUT COMMAND... (NAME is also the pid and log file's name)
  local dir="$1" name="$2" timeout="$3" deadline
  shift 3
  deadline=$(( $(date +%s) + timeout ))
  until "$@" >/dev/null 2>&1; do
    if ! ours "$(cat "$dir/$name.pid" 2>/dev/null)" "$dir"; then
      log "$name exited; the end of $dir/$name.log:"
      tail -n 30 "$dir/$name.log" >&2 || true
      return 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "$name not ready after $timeout s; the end of $dir/$name.log:"
      tail -n 30 "$dir/$name.log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

ready() { # PKI PORT
  [ "$(curl -s --noproxy '*' --max-time 5 --cacert "$1/ca.crt" --cert "$1/admin.crt" \
    --key "$1/admin.key" "https://127.0.0.1:$2/readyz")" = ok ]
}

write_kubeconfig() { # DIR PORT
  local dir="$1" pki="$1/pki"
  (
    umask 077
    {
      echo "apiVersion: v1"
      echo "kind: Config"
      echo "clusters:"
      echo "- name: federator-test"
      echo "  cluster:"
      echo "    server: https://127.0.0.1:$2"
      echo "    certificate-authority-data: $(base64 -w0 < "$pki/ca.crt")"
      echo "users:"
      echo "- name: admin"
      echo "  user:"
      echo "    client-certificate-data: $(base64 -w0 < "$pki/admin.crt")"
      echo "    client-key-data: $(base64 -w0 < "$pki/admin.key")"
      echo "contexts:"
      echo "- name: federator-test"
      echo "  context:"
      echo "    cluster: federator-test"
      echo "    user: admin"
      echo "current-context: federator-test"
    } > "$dir/kubeconfig"
  )
}

start() {
  local dir="$1" api_port="${2:-}" etcd_port="${3:-}" peer_port="${4:-}"
  local bin etcd started pki
  bin="$(build)"
  etcd="$(etcd_bin)"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if ours "$(cat "$dir/kube-apiserver.pid" 2>/dev/null)" "$dir" ||
    ours "$(cat "$dir/etcd.pid" 2>/dev/null)" "$dir"; then
    die "a server is already running in $dir: stop it first"
  fi
  if [ -z "$api_port" ]; then
    read -r api_port etcd_port peer_port < <(free_ports)
  fi
  make_pki "$dir"
  pki="$dir/pki"
  started=$(date +%s.%N)
  # Whatever stops this script before the server is ready stops what it started.
  starting="$dir"
  trap 'stop "$starting"' EXIT
  trap 'exit 1' INT TERM HUP

  # etcd: one member, loopback only, its data in DIR/etcd-data.
  setsid "$etcd" \
    --name default \
    --data-dir "$dir/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "default=http://127.0.0.1:$peer_port" \
    --initial-cluster-state new \
    </dev/null >"$dir/etcd.log" 2>&1 &
  echo $! > "$dir/etcd.pid"
  wait_for "$dir" etcd 30 curl -sf --noproxy '*' "http://127.0.0.1:$etcd_port/health"

  setsid "$bin/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --storage-backend=etcd3 \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --secure-port="$api_port" \
    --tls-cert-file="$pki/apiserver.crt" \
    --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" \
    --service-account-key-file="$pki/sa.pub" \
    --service-account-signing-key-file="$pki/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --authorization-mode=RBAC \
    --service-cluster-ip-range=198.18.0.0/16 \
    --endpoint-reconciler-type=none \
    --enable-priority-and-fairness=false \
    --disable-admission-plugins=ServiceAccount \
    --profiling=false \
    --cert-dir="$dir/cert-dir" \
    ${FEDERATOR_KUBE_APISERVER_ARGS:-} \
    </dev/null >"$dir/kube-apiserver.log" 2>&1 &
  echo $! > "$dir/kube-apiserver.pid"
  wait_for "$dir" kube-apiserver "${FEDERATOR_KUBE_READY_TIMEOUT:-180}" ready "$pki" "$api_port"

  write_kubeconfig "$dir" "$api_port"
  {
    echo "KUBECONFIG=$dir/kubeconfig"
    echo "API_URL=https://127.0.0.1:$api_port"
    echo "API_PORT=$api_port"
    echo "ETCD_URL=http://127.0.0.1:$etcd_port"
    echo "ETCD_PORT=$etcd_port"
    echo "ETCD_PEER_PORT=$peer_port"
    echo "CA_CERT=$pki/ca.crt"
    echo "ADMIN_CERT=$pki/admin.crt"
    echo "ADMIN_KEY=$pki/admin.key"
    echo "KUBE_APISERVER_PID=$(cat "$dir/kube-apiserver.pid")"
    echo "ETCD_PID=$(cat "$dir/etcd.pid")"
  } > "$dir/env"
  trap - EXIT INT TERM HUP
  log "ready in $(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s at https://127.0.0.1:$api_port (etcd 127.0.0.1:$etcd_port); KUBECONFIG=$dir/kubeconfig"
  cat "$dir/env"
}

usage="usage: $0 build | start DIR [API_PORT ETCD_PORT ETCD_PEER_PORT] | stop DIR | kubectl DIR ARGS..."
case "${1:-}" in
  build)
    [ $# -eq 1 ] || die "$usage"
    build ;;
  start)
    [ $# -eq 2 ] || [ $# -eq 5 ] || die "$usage"
    shift
    start "$@" ;;
  stop)
    [ $# -eq 2 ] || die "$usage"
    [ -d "$2" ] || exit 0
    stop "$(cd "$2" && pwd)" ;;
  kubectl)
    [ $# -ge 2 ] || die "$usage"
    dir="$(cd "$2" && pwd)"
    shift 2
    bin="$(build)"
    exec "$bin/kubectl" --kubeconfig "$dir/kubeconfig" "$@" ;;
  *) die "$usage" ;;
esac
