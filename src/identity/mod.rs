//! Workload identity: SPIFFE IDs, the mesh CA that signs them, and the per-daemon
//! certificate manager that keeps one fresh leaf per service account it serves.

pub mod ca;
pub mod manager;
pub mod spiffe;

pub use ca::{CaError, IssuedLeaf, MeshCa};
pub use manager::{CertManager, LeafCert, RenewalPolicy};
pub use spiffe::{SpiffeId, SpiffeIdError, DEFAULT_TRUST_DOMAIN};
