# weft's image: weft-node (the DaemonSet's container), weft-cni (copied onto each node by
# weft-node --cni-install) and the weft CLI, on a slim Debian with the two tools the daemon
# runs: nft (nftables) and nsenter (util-linux).
#
# Build it from the repository root (Cargo.lock pins every dependency; --locked refuses to
# change it):
#
#   docker build -t ghcr.io/weft-mesh/weft:0.1.0 .
#
# then push it where your nodes pull from (or `kind load docker-image ...`), and keep the
# image of deploy/kubernetes/daemonset.yaml in step. No ENTRYPOINT: the DaemonSet gives the
# command.
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p weft -p weft-node-agent -p weft-cni

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends nftables util-linux \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/weft /src/target/release/weft-node /src/target/release/weft-cni /usr/local/bin/
