#!/usr/bin/env bash
# Runs every weft test on a fresh machine: installs the system packages, checks formatting
# and lints, builds all binaries, then runs unit, integration and end-to-end tests.
# End-to-end tests need root; as root this sets WEFT_E2E=1 so a missing tool fails them.
# Usage (as root): bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
# The real kube-apiserver and etcd the Kubernetes tests run against: built from their Go
# modules once per machine (a few minutes), then reused from the cache.
echo "== test API server: $(bash scripts/build-apiserver.sh)"
# A real grpc-go server and client for the waypoint's gRPC tests, cached the same way.
echo "== gRPC test app: $(bash scripts/build-grpc-app.sh)"

for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$component"
  fi
done

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo doc (broken links and malformed docs fail)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps
echo "== cargo build"
cargo build --workspace --bins
if [ "$(id -u)" -eq 0 ]; then
  export WEFT_E2E=1
else
  echo "note: not root, end-to-end tests will be skipped (run with sudo to include them)"
fi
bash scripts/clean-testbed.sh
echo "== cargo test"
cargo test --workspace -- --test-threads 2
echo "== fuzz targets: build and a 1 s smoke run each (benches/fuzz.sh runs them for real)"
bash benches/fuzz.sh --smoke
