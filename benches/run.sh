#!/usr/bin/env bash
# Runs the in-process tunnel throughput benchmark and prints HBONE throughput as a ratio of
# the plain relay and of direct TCP, all measured in this same run.
# Usage: bash benches/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench tunnel_throughput -- --noplot "$@"
python3 - <<'PY'
import json, os
base = os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "criterion", "tunnel_throughput")
chunk = 16 * 1024 * 1024
gbit = {}
for case in ("direct", "relay", "hbone"):
    with open(os.path.join(base, case, "new", "estimates.json")) as f:
        est = json.load(f)
    seconds = est["median"]["point_estimate"] / 1e9
    gbit[case] = chunk * 8 / seconds / 1e9
print()
print("tunnel throughput over loopback (median of this run)")
for case in ("direct", "relay", "hbone"):
    print(f"  {case:<7} {gbit[case]:7.2f} Gbit/s")
print(f"  hbone / relay  = {gbit['hbone'] / gbit['relay']:.2f}")
print(f"  hbone / direct = {gbit['hbone'] / gbit['direct']:.2f}")
PY
echo
cargo bench --bench metrics_cost
