//! The identity layer's error: what can go wrong getting a workload its certificate.

use super::ca::CaError;

/// Why an identity has no (fresh) certificate.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The local CA directory could not be read or could not sign.
    #[error(transparent)]
    Ca(#[from] CaError),
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
