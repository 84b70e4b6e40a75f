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
# Pod cgroups of tests/discovery_e2e.rs (`weft-e2e-<pid>x<n>`) whose test process is gone:
# their pause processes are killed and the directories removed, deepest first.
for top in /sys/fs/cgroup/*/weft-e2e-[0-9]*x[0-9]* /sys/fs/cgroup/weft-e2e-[0-9]*x[0-9]*; do
  [ -d "$top" ] || continue
  owner=$(basename "$top" | sed -E 's/^weft-e2e-([0-9]+)x[0-9]+$/\1/')
  if kill -0 "$owner" 2>/dev/null; then continue; fi
  for procs in $(find "$top" -name cgroup.procs); do
    for pid in $(cat "$procs"); do kill -9 "$pid" 2>/dev/null || true; done
  done
  find "$top" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  echo "clean-testbed: removed stale cgroup $top"
done
