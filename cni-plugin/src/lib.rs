//! `weft-cni` library part: the CNI spec pieces the plugin needs, the protocol it speaks
//! with `weft-node` over the daemon's unix socket, and reading the daemon's state file when
//! it is down. Synchronous and small on purpose: the plugin runs once per pod event.

pub mod daemon;
pub mod protocol;
pub mod spec;
