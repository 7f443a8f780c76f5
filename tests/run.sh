#!/usr/bin/env bash
# The test command: set-up, lint, build, unit and end-to-end tests, benchmark smoke.
# `.ci/run` calls exactly this. Real replicas, real etcd and real TLS on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/local/setup.sh
# SPIRE, the go-spiffe test client, promtool, Helm and kube-apiserver (built with Go
# once per machine, then reused; kube-apiserver takes 10 to 15 minutes the first time).
bash deploy/local/setup-spiffe.sh
bash deploy/local/setup-promtool.sh
bash deploy/local/setup-helm.sh
bash deploy/local/kube-apiserver.sh build >/dev/null

step() { printf '\n== %s\n' "$*" >&2; }

# A full run writes several GB under target/ (debug and release builds of every test
# binary, each statically linked). Incremental compilation adds as much again and only
# pays off when editing, so the test command turns it off (export CARGO_INCREMENTAL=1
# to keep it).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# A linker killed by a full disk prints little of why: say how much room there was.
report_disk() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    printf '\n== failed (exit %s); disk where target/ lives:\n' "$rc" >&2
    df -h "${CARGO_TARGET_DIR:-target}" . 2>/dev/null >&2 || true
  fi
}
trap report_disk EXIT
mkdir -p target "${CARGO_TARGET_DIR:-target}"
avail_kb=$(df -Pk "${CARGO_TARGET_DIR:-target}" | awk 'NR==2 {print $4}')
if [ -n "$avail_kb" ] && [ "$avail_kb" -lt $((12 * 1024 * 1024)) ]; then
  printf 'warning: %s GB free where target/ lives; a full run may need 10 GB or more\n' \
    "$((avail_kb / 1024 / 1024))" >&2
fi

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy -p federator-raft --all-targets --features failpoints --locked -- -D warnings

step "fuzz targets compile (federator/fuzz, a workspace of its own with its own lockfile)"
# Stable cargo checks them (running them needs nightly and cargo-fuzz: docs/security.md).
# A target directory of their own under the main one: other features, other artifacts.
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}/fuzz" \
  cargo check --manifest-path federator/fuzz/Cargo.toml --locked --bins

step "deployment files (helm lint and template, Kubernetes schemas, chart values schemas)"
helm="$HOME/.cache/federator/helm/bin/helm"
# deploy/kubernetes/ is each chart rendered with its defaults: never edited by hand.
bash deploy/render.sh --check
rendered="$(mktemp -d)"
for chart in deploy/helm/*/; do
  name="$(basename "$chart")"
  # Through the interpreter setup.sh installed them for (its scripts may not be on PATH).
  python3 -m check_jsonschema --schemafile "$chart/values.schema.json" "$chart/values.yaml"
  for values in "$chart"/ci/*.yaml; do
    "$helm" lint --strict "$chart" -f "$values"
    "$helm" template "$name" "$chart" --namespace federator -f "$values" \
      > "$rendered/$name-$(basename "$values")"
  done
  "$helm" lint --strict "$chart"
done
python3 -m kubernetes_validate --strict --quiet deploy/kubernetes/*.yaml "$rendered"/*.yaml
rm -rf "$rendered"

step "build"
cargo build --workspace --all-targets --locked
# Every test and chaos run starts this binary. Named here so that none of them builds
# `-p federator` on its own: cargo unifies features per invocation, so that build differs
# from the workspace's and each side would rebuild a hundred crates under the other.
export FEDERATOR_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/federator"

step "image (deploy/image: podman, on a Debian 12 base made from Debian's packages)"
# tests/tests/image.rs runs the replica chart's scripts in it.
bash deploy/image/build.sh --binary "$FEDERATOR_BIN" --tag localhost/federator:test --local-base

step "tests (unit, storage conformance, transport, end-to-end)"
# The end-to-end tests start several replica processes each; two at a time fit 2 cores.
RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}" cargo test --workspace --locked --no-fail-fast 2>&1 | tee target/test-output.txt
step "storage faults (federator-raft with the failpoints feature)"
cargo test -p federator-raft --features failpoints --test storage_faults --locked 2>&1 | tee -a target/test-output.txt
summary=$(grep -E '^test result:' target/test-output.txt | awk '{p+=$4; f+=$6; i+=$8} END {printf "%d passed, %d failed, %d skipped", p, f, i}')

step "chaos: the short set of fault scenarios, histories checked (JUnit in target/chaos-junit.xml)"
# The scenarios' availability bounds assume fsyncs of ordinary speed: write back the
# gigabytes of test binaries just linked first, so their writeback does not stall them.
sync
cargo run --locked -q -p federator-chaos -- run --short --seed "${CHAOS_SEED:-42}" \
  --format junit --out target/chaos-junit.xml
chaos_summary=$(grep -o 'tests="[0-9]*" failures="[0-9]*"' target/chaos-junit.xml)

step "benchmark smoke (figures are not checked here; see BENCHMARKS.md)"
if [ -z "${SKIP_BENCH_SMOKE:-}" ]; then
  # Every benchmark, its markdown section and the raft latency plot (into target/).
  cargo run --locked -q -p federator-chaos -- bench all --smoke --markdown target/bench-smoke.md
fi

printf '\n%s; chaos scenarios: %s\n' "$summary" "$chaos_summary"
