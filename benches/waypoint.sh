#!/usr/bin/env bash
# The waypoint hop benchmark (see benches/waypoint.rs): builds release binaries, brings up
# the 2-node testbed with a waypoint pod and measures D (direct), H (L4) and W (through the
# waypoint) interleaved, writing the `## Waypoint (L7) hop` section of benches/RESULTS.md.
# Usage (as root): bash benches/waypoint.sh [--quick] [--runs N]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "waypoint benchmark: needs root; run as root: bash benches/waypoint.sh" >&2; exit 1; }
bash scripts/install-deps.sh >/dev/null
bash scripts/clean-testbed.sh
cargo build --release --workspace --bins --quiet
flock /tmp/weft-e2e.lock cargo bench --quiet --bench waypoint -- "$@"
