#!/usr/bin/env bash
# Builds Prometheus's promtool v3 (module github.com/prometheus/prometheus v0.316.0, pinned
# in tests/promtool/go.mod) with Go from the module proxy into $FEDERATOR_PROMTOOL_DIR/bin
# (default ~/.cache/federator/promtool/bin); reused while the pin is unchanged. The first
# build takes about 6 minutes on 2 cores. `tests/run.sh` runs this: the tests lint every
# metrics endpoint with `promtool check metrics` and fail, naming this script, without it.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
tools="${FEDERATOR_PROMTOOL_DIR:-$HOME/.cache/federator/promtool}"
. "$repo/deploy/local/go-tools.sh"

go_tools_require_go setup-promtool promtool
go_tools_inputs() {
  cat "$repo"/tests/promtool/go.mod "$repo"/tests/promtool/go.sum
}
if go_tools_fresh "$tools" promtool; then
  exit 0
fi
echo "setup-promtool: building promtool into $tools (once; about 6 minutes on 2 cores)" >&2
mkdir -p "$tools/bin"
rm -f "$tools/stamp"
started=$(date +%s)
(cd "$repo/tests/promtool" && GOFLAGS=-mod=readonly GOBIN="$tools/bin" go install tool)
"$tools/bin/promtool" --version >/dev/null
go_tools_stamp "$tools"
echo "setup-promtool: built in $(( $(date +%s) - started )) s" >&2
