# Sourced by the set-up scripts that build third-party test tools with Go from the module
# proxy. `go_tools_fresh DIR TOOL...` succeeds when DIR/bin holds every TOOL and DIR/stamp
# matches the digest of the inputs (`go_tools_inputs` prints them: define it first);
# `go_tools_stamp DIR` records that digest after a build.
go_tools_require_go() {
  if ! command -v go >/dev/null 2>&1; then
    echo "$1: Go is needed to build $2 (Go 1.26 from the machine's toolchain)" >&2
    exit 1
  fi
}
go_tools_digest() {
  { go_tools_inputs; go version; } | sha256sum | cut -c1-16
}
go_tools_fresh() {
  local dir="$1" tool
  shift
  [ "$(cat "$dir/stamp" 2>/dev/null || true)" = "$(go_tools_digest)" ] || return 1
  for tool in "$@"; do
    [ -x "$dir/bin/$tool" ] || return 1
  done
}
go_tools_stamp() {
  go_tools_digest > "$1/stamp"
}
