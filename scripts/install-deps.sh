#!/usr/bin/env bash
# Installs the system packages weft's tests, demo and benchmarks need.
# Idempotent: packages already present are skipped, so running it twice is cheap.
set -euo pipefail

PACKAGES=(
  iproute2            # ip netns / veth for the testbed
  nftables            # in-pod redirection rules
  iptables
  containernetworking-plugins  # real CNI reference plugins in /usr/lib/cni
  curl                # real HTTP client (also --socks5)
  iperf3              # throughput benchmark
  nghttp2-client      # h2load
  tcpdump             # asserts what crosses the wire
  openssl             # certificate checks in tests
  python3             # tiny HTTP servers in tests
  procps
  prometheus          # real Prometheus server + promtool for the metrics tests
  chromium            # headless browser for the dashboard test
  nginx-light         # HTTP server for the latency and connection-rate benchmarks
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
