#!/usr/bin/env bash
# weft host-mode demo (VMs): two "VMs" (network namespaces) each run weft-node; a client on the
# first reaches an HTTP server on the second through the mesh (SOCKS5 entry, HBONE mTLS
# tunnel). Prints who talked to whom and proof that only TLS crossed the wire, then tears
# everything down. Usage (as root): bash scripts/demo-host.sh   (set KEEP=1 to keep it up for poking)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "demo: needs root (network namespaces); run as root: bash scripts/demo-host.sh" >&2; exit 1; }
bash scripts/install-deps.sh >/dev/null
echo "== building release binaries"
cargo build --release --workspace --bins --quiet
BIN=target/release

ID=$$
A=weft-demo-a-$ID; B=weft-demo-b-$ID
WORK=$(mktemp -d /tmp/weft-demo.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
  [ "${KEEP_LOGS:-0}" = 1 ] || rm -rf "$WORK"
  echo "== cleaned up namespaces $A $B"
}
trap cleanup EXIT

echo "== two hosts: $A (10.200.0.1, runs the client) and $B (10.200.0.2, runs the server)"
ip netns add "$A"; ip netns add "$B"
ip link add "wd-a$ID" netns "$A" type veth peer name "wd-b$ID" netns "$B"
ip -n "$A" addr add 10.200.0.1/24 dev "wd-a$ID"; ip -n "$B" addr add 10.200.0.2/24 dev "wd-b$ID"
for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
ip -n "$A" link set "wd-a$ID" up; ip -n "$B" link set "wd-b$ID" up

echo "== mesh CA (weft ca init)"
$BIN/weft ca init --dir "$WORK/ca" >/dev/null
cat > "$WORK/mesh.yaml" <<'YAML'
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {weft.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: client-vm, namespace: demo}
spec: {serviceAccountName: client, nodeName: vm-a}
status: {podIP: 10.200.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: server-vm, namespace: demo, labels: {app: server}}
spec: {serviceAccountName: server, nodeName: vm-b}
status: {podIP: 10.200.0.2}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: 8080}]
YAML
ip netns exec "$B" python3 tests/apps/http_app.py 10.200.0.2 8080 >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do ip netns exec "$B" curl -s -o /dev/null http://10.200.0.2:8080/ && break; sleep 0.1; done
ip netns exec "$A" $BIN/weft-node --mode host --config "$WORK/mesh.yaml" --ca-dir "$WORK/ca" \
  --node-name vm-a --socks5 127.0.0.1:15080 >"$WORK/vm-a.log" 2>&1 &
PIDS+=($!)
ip netns exec "$B" $BIN/weft-node --mode host --config "$WORK/mesh.yaml" --ca-dir "$WORK/ca" \
  --node-name vm-b >"$WORK/vm-b.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do grep -q "weft-node ready" "$WORK/vm-a.log" "$WORK/vm-b.log" 2>/dev/null && \
  [ "$(grep -l 'weft-node ready' "$WORK"/vm-*.log | wc -l)" = 2 ] && break; sleep 0.1; done

echo "== identities each daemon serves"
for vm in vm-a vm-b; do
  { grep -ho 'identity=spiffe://[^ ]*' "$WORK/$vm.log" || echo "(none: see $WORK/$vm.log)"; } | sed "s/^/   $vm: /"
done

ip netns exec "$A" tcpdump -i "wd-a$ID" -nn -U --immediate-mode -w "$WORK/wire.pcap" tcp >"$WORK/tcpdump.log" 2>&1 &
PIDS+=($!); sleep 2
echo "== curl --socks5 127.0.0.1:15080 http://server.demo.svc.cluster.local/ (from $A)"
ip netns exec "$A" curl -sS --socks5-hostname 127.0.0.1:15080 http://server.demo.svc.cluster.local/ | sed 's/^/   /'
echo "== POST a secret through the mesh"
ip netns exec "$A" curl -sS --socks5 127.0.0.1:15080 --data "top-secret-payload" http://10.200.0.2:8080/ | sed "s/^/   /"
sleep 0.5; kill -INT "${PIDS[-1]}"; sleep 0.5

echo "== what crossed the wire (tcpdump on the link)"
tcpdump -nn -r "$WORK/wire.pcap" 2>/dev/null | awk '{print $3, $4, $5}' | sed 's/:$//' | sort | uniq -c | sed 's/^/  /' | head -8
other=$(tcpdump -nn -r "$WORK/wire.pcap" 2>/dev/null | grep -vc '\.15008[ :]' || true)
if grep -q "top-secret-payload" "$WORK/wire.pcap"; then echo "   !! the payload was seen in clear on the wire"; else echo "   the payload never appears in clear on the wire"; fi
echo "   packets not to/from port 15008 (HBONE): $other"
echo "== poke at it yourself (while KEEP=1):"
echo "   ip netns exec $A curl --socks5-hostname 127.0.0.1:15080 http://server.demo.svc.cluster.local/"
echo "   ip netns exec $A tcpdump -i wd-a$ID -nn port 15008"
if [ "${KEEP:-0}" = 1 ]; then echo "== KEEP=1: press Enter to tear down"; read -r _; fi
