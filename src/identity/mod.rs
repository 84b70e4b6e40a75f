//! Workload identity: SPIFFE IDs, the mesh CA that signs them, the [`Issuer`] the
//! certificate manager asks for leaves (today the local CA directory, off the async
//! executor), and the per-daemon certificate manager that keeps one fresh leaf per
//! identity its served workloads use.

pub mod ca;
pub mod error;
pub mod issuer;
pub mod manager;
pub mod spiffe;

pub use ca::{CaError, IssuedLeaf, MeshCa};
pub use error::IdentityError;
pub use issuer::{IssueFuture, IssueRequest, Issuer, LocalCaIssuer};
pub use manager::{CertManager, LeafCert, RenewalPolicy};
pub use spiffe::{SpiffeId, SpiffeIdError, DEFAULT_TRUST_DOMAIN};
