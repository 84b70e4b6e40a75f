#!/usr/bin/env bash
# The Kubernetes source at scale (see benches/README.md): builds the release binaries and the
# test kube-apiserver + etcd, then runs benches/kube_scale.rs as root, which prints the figures
# and writes the `## Kubernetes source at scale` section of benches/RESULTS.md.
# Usage (as root): bash benches/kube_scale.sh [--pods N] [--services S] [--namespaces M]
#   [--churn-rate R] [--churn-secs T] [--inflight C] [--no-write]
# Defaults: 10,000 pods in 20 namespaces on 100 node names, 2,000 services, 100 pods/s of
# churn for 30 s, 32 requests in flight. Runs under flock /tmp/weft-e2e.lock (the end-to-end
# tests share the machine's namespaces and CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "kube scale benchmark: needs root; run as root: bash benches/kube_scale.sh" >&2; exit 1; }
command -v curl >/dev/null || { echo "kube scale benchmark: curl is missing" >&2; exit 1; }

bash scripts/build-apiserver.sh >/dev/null
cargo build --release --quiet -p weft-node-agent -p weft
cargo bench --no-run --quiet --bench kube_scale

# If the bench is killed outright (no Drop runs), remove its namespace and whatever is left
# in it (API server, etcd, daemons) here.
state=$(mktemp /tmp/weft-kscale-netns.XXXXXX)
cleanup() {
  local ns
  ns=$(cat "$state" 2>/dev/null || true)
  if [ -n "$ns" ] && ip netns list | awk '{print $1}' | grep -qx "$ns"; then
    echo "kube scale benchmark: cleaning up netns $ns" >&2
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  fi
  rm -f "$state"
}
trap cleanup EXIT

export KUBE_SCALE_NETNS_FILE="$state"
export KUBE_SCALE_COMMAND="bash benches/kube_scale.sh${*:+ $*}"
flock /tmp/weft-e2e.lock cargo bench --quiet --bench kube_scale -- "$@"
