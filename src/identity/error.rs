//! The identity layer's error: what can go wrong getting a workload its certificate.

use super::ca::CaError;
use super::csr_issuer::CsrError;

/// Why an identity has no (fresh) certificate.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The local CA directory could not be read or could not sign.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The signer (through a Kubernetes CSR) gave no certificate.
    #[error(transparent)]
    Csr(Box<CsrError>),
    /// The issuance task ended without an answer (it panicked or was cancelled).
    #[error("issuing a certificate for {id}: the issuing task failed: {reason}")]
    IssuerTask {
        /// The identity being issued for.
        id: String,
        /// The task's failure, as text.
        reason: String,
    },
    /// The issuer answered with a certificate for another identity.
    #[error("the issuer returned a certificate for {returned}, not for {requested}")]
    WrongIdentity {
        /// The identity asked for.
        requested: String,
        /// The identity the returned leaf carries.
        returned: String,
    },
}

impl From<CsrError> for IdentityError {
    fn from(error: CsrError) -> Self {
        // Boxed: a CSR's answer carries several strings, and every proxy error holds this.
        IdentityError::Csr(Box::new(error))
    }
}
