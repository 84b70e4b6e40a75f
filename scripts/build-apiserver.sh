#!/usr/bin/env bash
# Builds the real kube-apiserver and etcd that weft's Kubernetes-facing tests run against,
# from the Go module in tests/apiserver (k8s.io/kubernetes pinned there, etcd from the same
# module graph), once per machine: the binaries are cached in a directory keyed by the
# pinned versions and go.sum, so later runs reuse them in a second.
# Prints the directory holding `kube-apiserver` and `etcd`.
# Usage: bash scripts/build-apiserver.sh   (env WEFT_CACHE_DIR overrides ~/.cache/weft)
set -euo pipefail
cd "$(dirname "$0")/../tests/apiserver"

dir=$(bash ../../scripts/apiserver-dir.sh)
if [ -x "$dir/kube-apiserver" ] && [ -x "$dir/etcd" ]; then
  echo "$dir"
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "build-apiserver: Go is missing; install Go (>= the go line of tests/apiserver/go.mod)" >&2
  exit 1
fi
echo "build-apiserver: building kube-apiserver and etcd into $dir (once per machine, a few minutes)" >&2
tmp="$dir.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
# -mod=readonly: go.mod and go.sum are the pin; a build never edits them. The version
# stamp makes /version report the real release, as a release build would.
version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' go.mod)
minor=$(echo "$version" | cut -d. -f2)
stamp="-X k8s.io/component-base/version.gitVersion=$version"
stamp="$stamp -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
stamp="$stamp -X k8s.io/component-base/version.gitTreeState=clean"
GOFLAGS="-mod=readonly -buildvcs=false" go build -trimpath -ldflags="-s -w $stamp" \
  -o "$tmp/" ./kube-apiserver ./etcd >&2
rm -rf "$dir"
mv "$tmp" "$dir"
trap - EXIT
echo "$dir"
