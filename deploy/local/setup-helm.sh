#!/usr/bin/env bash
# Builds Helm v4.3.2 (pinned in tests/helm-tool/go.mod) with Go from the module proxy into
# $FEDERATOR_HELM_DIR/bin (default ~/.cache/federator/helm/bin); reused while the pin is
# unchanged. The first build takes about 4 minutes on 2 cores. `tests/run.sh` runs this:
# it lints and renders the charts with it.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
tools="${FEDERATOR_HELM_DIR:-$HOME/.cache/federator/helm}"
. "$repo/deploy/local/go-tools.sh"

go_tools_require_go setup-helm Helm
go_tools_inputs() {
  cat "$repo"/tests/helm-tool/go.mod "$repo"/tests/helm-tool/go.sum
}
if go_tools_fresh "$tools" helm; then
  exit 0
fi
echo "setup-helm: building Helm v4.3.2 into $tools (once; about 4 minutes on 2 cores)" >&2
mkdir -p "$tools/bin"
rm -f "$tools/stamp"
started=$(date +%s)
(cd "$repo/tests/helm-tool" && GOFLAGS=-mod=readonly GOBIN="$tools/bin" go install tool)
"$tools/bin/helm" version >/dev/null
go_tools_stamp "$tools"
echo "setup-helm: built in $(( $(date +%s) - started )) s" >&2
