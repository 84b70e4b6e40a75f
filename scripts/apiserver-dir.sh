#!/usr/bin/env bash
# Prints the cache directory of the test kube-apiserver and etcd binaries for the versions
# pinned in tests/apiserver (the k8s.io/kubernetes version plus a hash of go.sum, so a
# changed pin never reuses an old build). Does not build: see build-apiserver.sh.
set -euo pipefail
cd "$(dirname "$0")/../tests/apiserver"
version=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' go.mod)
sum=$(cat go.mod go.sum | sha256sum | cut -c1-12)
echo "${WEFT_CACHE_DIR:-${HOME:-/root}/.cache/weft}/kube-apiserver-${version}-${sum}"
