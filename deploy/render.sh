#!/usr/bin/env bash
# Renders both charts with their default values into deploy/kubernetes/ (release names
# `federator` and `federator-agent`, namespace `federator`), each after its header
# (deploy/kubernetes/NAME.header). `--check` renders into a temporary directory and fails
# when the committed files differ: `tests/run.sh` runs that, so the manifests are never
# kept in step by hand. Helm comes from deploy/local/setup-helm.sh ($FEDERATOR_HELM).
set -euo pipefail
deploy="$(cd "$(dirname "$0")" && pwd)"
helm="${FEDERATOR_HELM:-$HOME/.cache/federator/helm/bin/helm}"
if [ ! -x "$helm" ]; then
  echo "render: no helm at $helm: run bash deploy/local/setup-helm.sh" >&2
  exit 1
fi
out="$deploy/kubernetes"
check=false
if [ "${1:-}" = "--check" ]; then
  check=true
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
fi
for chart in federator federator-agent; do
  { cat "$deploy/kubernetes/$chart.header"
    "$helm" template "$chart" "$deploy/helm/$chart" --namespace federator
  } > "$out/$chart.yaml"
  if $check && ! diff -u "$deploy/kubernetes/$chart.yaml" "$out/$chart.yaml" >&2; then
    echo "render: deploy/kubernetes/$chart.yaml is not the chart's rendering: run bash deploy/render.sh" >&2
    exit 1
  fi
done
