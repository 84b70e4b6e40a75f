#!/usr/bin/env bash
# weft demo (pods mode): 2 nodes with 2 enrolled pods each plus one pod outside the mesh,
# built with the real CNI plugins and a weft-node per node. Sends traffic between them,
# prints which identities talked and what crossed the wire, and tears everything down.
# Usage (as root): bash scripts/demo.sh        (KEEP=1 keeps the cluster up to poke at it)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "demo: needs root (network namespaces); run as root: bash scripts/demo.sh" >&2; exit 1; }
bash scripts/install-deps.sh >/dev/null
echo "== building release binaries"
cargo build --release --workspace --bins --quiet
cargo run --release --quiet --example demo
