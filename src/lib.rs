//! weft: the data-plane engine of a sidecarless (ambient) service mesh.
//!
//! The library holds every piece both binaries share: the mesh model and its config
//! sources, L4 authorization policy, identities and the mesh CA, TLS, the HBONE tunnel
//! (client and server), the L4 proxy logic and the SOCKS5 entry point. `weft-node`
//! (node-agent/) wires them into a daemon; the `weft` CLI exposes the CA for operators.

#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod dataplane;
pub mod hbone;
pub mod identity;
pub mod install;
pub mod limits;
pub mod listener;
pub mod model;
pub mod names;
pub mod policy;
pub mod proxy;
pub mod shutdown;
pub mod signer;
pub mod sockets;
pub mod socks5;
pub mod telemetry;
pub mod tls;
pub mod waypoint;
