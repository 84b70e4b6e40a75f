#!/usr/bin/env bash
# Builds tests/grpc-app (a real grpc-go server and client for the waypoint's gRPC tests)
# once per machine: the binary is cached in a directory keyed by a hash of go.mod, go.sum
# and main.go, so later runs reuse it at once. Prints the binary's path.
# Usage: bash scripts/build-grpc-app.sh   (env WEFT_CACHE_DIR overrides ~/.cache/weft)
set -euo pipefail
cd "$(dirname "$0")/../tests/grpc-app"
sum=$(cat go.mod go.sum main.go | sha256sum | cut -c1-12)
dir="${WEFT_CACHE_DIR:-${HOME:-/root}/.cache/weft}/grpc-app-$sum"
if [ -x "$dir/grpc-app" ]; then
  echo "$dir/grpc-app"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "build-grpc-app: Go is missing; install Go (>= the go line of tests/grpc-app/go.mod)" >&2
  exit 1
fi
tmp="$dir.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
GOFLAGS="-mod=readonly -buildvcs=false" go build -trimpath -ldflags="-s -w" -o "$tmp/grpc-app" . >&2
rm -rf "$dir"
mv "$tmp" "$dir"
trap - EXIT
echo "$dir/grpc-app"
