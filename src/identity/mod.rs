//! Workload identity: SPIFFE IDs, the mesh CA that signs them, the [`Issuer`] the
//! certificate manager asks for leaves (the local CA directory off the async executor, or
//! in a cluster [`CsrIssuer`]: a Kubernetes CSR that `weft signer` answers, so the node
//! never holds the CA key), the CSR both ends read ([`csr`]), the trust anchors and their
//! ConfigMap ([`trust`], [`root_configmap`]), and the per-daemon certificate manager that
//! keeps one fresh leaf per identity its served workloads use.

pub mod ca;
pub mod csr;
pub mod csr_issuer;
pub mod error;
pub mod from_signer;
pub mod issuer;
pub mod manager;
pub mod root_configmap;
pub mod spiffe;
pub mod trust;

pub use ca::{CaError, IssuedLeaf, MeshCa, SignedChain};
pub use csr_issuer::CsrIssuer;
pub use error::{CsrError, IdentityError};
pub use issuer::{IssueFuture, IssueRequest, Issuer, LocalCaIssuer};
pub use manager::{CertManager, LeafCert, RenewalPolicy};
pub use spiffe::{SpiffeId, SpiffeIdError, DEFAULT_TRUST_DOMAIN};
pub use trust::{roots_from_pem, TrustAnchors, TrustBundleError};
