#!/usr/bin/env bash
# Removes network namespaces left behind by weft tests that were killed (SIGKILL, timeout)
# before their cleanup ran. Only names of the testbed's form `w<kind><pid>x<n>` whose owning
# test process is gone are touched; processes still inside them are killed first.
set -euo pipefail
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^w[a-z]+[0-9]+x[0-9]+$' || true); do
  owner=$(sed -E 's/^w[a-z]+([0-9]+)x[0-9]+$/\1/' <<<"$ns")
  if kill -0 "$owner" 2>/dev/null; then continue; fi
  for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  ip netns del "$ns" 2>/dev/null && echo "clean-testbed: removed stale namespace $ns"
done
