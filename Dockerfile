# weft's image: weft-node (the DaemonSet), weft-cni (copied onto each node by weft-node)
# and the weft CLI, on a slim Debian with the two tools the daemon runs: nft (nftables)
# and nsenter (util-linux).
#
#   docker build -t ghcr.io/weft-mesh/weft:0.1.0 .
#
# then push it where your nodes pull from (or `kind load docker-image ...`), and keep the
# DaemonSet's image in deploy/kubernetes/daemonset.yaml in step.
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin weft --bin weft-node --bin weft-cni

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables util-linux \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/weft /src/target/release/weft-node /src/target/release/weft-cni /usr/local/bin/
