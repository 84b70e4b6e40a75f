//! The identity layer's error: what can go wrong getting a workload its certificate.

use std::time::Duration;

use super::ca::CaError;
use super::csr::ChainRejection;

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

/// Why a CSR did not give this node a certificate.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    /// The key or the request could not be made.
    #[error("making a key and CSR for {id}: {reason}")]
    Generate {
        /// The identity.
        id: String,
        /// rcgen's error.
        reason: String,
    },
    /// The API server refused or failed the CSR's creation or the watch on it.
    #[error("CSR for {id}: the API server: {source}")]
    Api {
        /// The identity.
        id: String,
        /// kube's error.
        #[source]
        source: kube::Error,
    },
    /// Watching the CSR for its answer failed.
    #[error("CSR {name} for {id}: watching for the answer: {reason}")]
    Watch {
        /// The CSR object.
        name: String,
        /// The identity.
        id: String,
        /// The watch's error.
        reason: String,
    },
    /// The signer denied the request.
    #[error("CSR {name} for {id} was denied by the signer: {reason}: {message}")]
    Denied {
        /// The CSR object.
        name: String,
        /// The identity.
        id: String,
        /// The condition's reason.
        reason: String,
        /// The condition's message.
        message: String,
    },
    /// The signer marked the request failed.
    #[error("CSR {name} for {id} failed at the signer: {reason}: {message}")]
    Failed {
        /// The CSR object.
        name: String,
        /// The identity.
        id: String,
        /// The condition's reason.
        reason: String,
        /// The condition's message.
        message: String,
    },
    /// Nothing answered in time.
    #[error("CSR {name} for {id}: no certificate after {waited:?}; is weft-signer running? (kubectl -n weft-system get deploy weft-signer; kubectl describe csr {name})")]
    Timeout {
        /// The CSR object.
        name: String,
        /// The identity.
        id: String,
        /// How long this node waited.
        waited: Duration,
    },
    /// The certificate the signer wrote is not acceptable.
    #[error("CSR {name} for {id}: {source}")]
    BadChain {
        /// The CSR object.
        name: String,
        /// The identity.
        id: String,
        /// What is wrong with it.
        #[source]
        source: ChainRejection,
    },
}

impl CsrError {
    /// The `result` label of `weft_csr_requests_total` for this failure.
    pub fn result_label(&self) -> &'static str {
        match self {
            CsrError::Denied { .. } => "denied",
            CsrError::Failed { .. } | CsrError::BadChain { .. } => "failed",
            CsrError::Timeout { .. } => "timeout",
            CsrError::Generate { .. } | CsrError::Api { .. } | CsrError::Watch { .. } => "error",
        }
    }
}
