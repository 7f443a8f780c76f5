#!/usr/bin/env bash
# Builds the third-party SPIFFE peers the tests run, with Go from the module proxy:
# - SPIRE server and agent, v1.13.3 (pinned in tests/spire-tools/go.mod),
# - the go-spiffe v2.9.0 test client (tests/spiffe-client),
# into $FEDERATOR_SPIFFE_TOOLS/bin (default ~/.cache/federator/spiffe-tools/bin). A build
# is reused while its inputs (those modules and the client's source) are unchanged; the
# first one takes about 10 minutes on 2 cores. `tests/run.sh` runs this; the tests that
# need the tools never skip: without them they fail and say to run this script.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
tools="${FEDERATOR_SPIFFE_TOOLS:-$HOME/.cache/federator/spiffe-tools}"
. "$repo/deploy/local/go-tools.sh"

go_tools_require_go setup-spiffe "SPIRE and the go-spiffe client"
go_tools_inputs() {
  cat "$repo"/tests/spire-tools/go.mod "$repo"/tests/spire-tools/go.sum \
    "$repo"/tests/spiffe-client/go.mod "$repo"/tests/spiffe-client/go.sum \
    "$repo"/tests/spiffe-client/*.go
}
if go_tools_fresh "$tools" spire-server spire-agent spiffe-client; then
  exit 0
fi
echo "setup-spiffe: building SPIRE v1.13.3 and the go-spiffe test client into $tools (once; about 10 minutes on 2 cores)" >&2
mkdir -p "$tools/bin"
rm -f "$tools/stamp"
started=$(date +%s)
(cd "$repo/tests/spire-tools" && GOFLAGS=-mod=readonly GOBIN="$tools/bin" go install tool)
(cd "$repo/tests/spiffe-client" && GOFLAGS=-mod=readonly go build -o "$tools/bin/spiffe-client" .)
"$tools/bin/spire-server" --version >/dev/null 2>&1
go_tools_stamp "$tools"
echo "setup-spiffe: built in $(( $(date +%s) - started )) s: $(ls "$tools/bin" | tr '\n' ' ')" >&2
