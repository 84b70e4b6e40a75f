#!/usr/bin/env bash
# The end-to-end benchmark suite (see benches/README.md): builds release binaries, brings up
# the 2-node testbed and measures D (direct) vs H (HBONE) interleaved, writing
# benches/RESULTS.json and benches/RESULTS.md. Usage (as root): bash benches/mesh.sh [--quick] [--runs N]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "mesh benchmark: needs root; run as root: bash benches/mesh.sh" >&2; exit 1; }
bash scripts/install-deps.sh >/dev/null
bash scripts/clean-testbed.sh
cargo build --release --workspace --bins --quiet
cargo bench --quiet --bench mesh -- "$@"
