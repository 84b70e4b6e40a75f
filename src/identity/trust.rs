//! The mesh's trust anchors: the root certificates every peer's chain must lead to, shared by
//! the certificate manager, the TLS configs built from it and the CSR client that checks what
//! the signer returns. They are swapped whole when the trust bundle changes (a root rotation
//! publishes old and new roots together), so a handshake always sees one consistent set.
//!
//! [`roots_from_pem`] reads a bundle (the `root-cert.pem` of a CA directory or of the
//! `weft-ca-root` ConfigMap) and refuses anything that is not a set of CA certificates.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::ca::is_ca_certificate;

/// Why a trust bundle cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustBundleError {
    /// Not PEM certificates.
    #[error("not PEM certificates: {0}")]
    NotPem(String),
    /// No certificate at all.
    #[error("holds no certificate")]
    Empty,
    /// One certificate cannot anchor trust.
    #[error("certificate {index} (from 0) is not a usable CA certificate: {reason}")]
    NotCa {
        /// Its position in the bundle.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// Reads a PEM bundle of root certificates, each a CA certificate rustls accepts as an
/// anchor.
pub fn roots_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TrustBundleError> {
    let roots = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TrustBundleError::NotPem(e.to_string()))?;
    if roots.is_empty() {
        return Err(TrustBundleError::Empty);
    }
    for (index, root) in roots.iter().enumerate() {
        let not_ca = |reason: String| TrustBundleError::NotCa { index, reason };
        let (_, cert) =
            x509_parser::parse_x509_certificate(root).map_err(|e| not_ca(e.to_string()))?;
        if !is_ca_certificate(&cert) {
            return Err(not_ca("basicConstraints CA:TRUE is missing".into()));
        }
        rustls::RootCertStore::empty()
            .add(root.clone())
            .map_err(|e| not_ca(e.to_string()))?;
    }
    Ok(roots)
}

/// The current roots, shared; cloning shares the same set.
#[derive(Clone, Default)]
pub struct TrustAnchors(Arc<ArcSwap<Vec<CertificateDer<'static>>>>);

impl TrustAnchors {
    /// Anchors starting at `roots` (empty: nothing verifies until [`TrustAnchors::replace`]).
    pub fn new(roots: Vec<CertificateDer<'static>>) -> TrustAnchors {
        TrustAnchors(Arc::new(ArcSwap::from_pointee(roots)))
    }

    /// The roots in force now. The `Arc` changes exactly when the set is replaced, so a
    /// holder can tell whether what it built from them is stale.
    pub fn current(&self) -> Arc<Vec<CertificateDer<'static>>> {
        self.0.load_full()
    }

    /// Replaces the set; returns whether it differs from the one in force.
    pub fn replace(&self, roots: Vec<CertificateDer<'static>>) -> bool {
        if *self.0.load_full() == roots {
            return false;
        }
        self.0.store(Arc::new(roots));
        true
    }
}

impl std::fmt::Debug for TrustAnchors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustAnchors")
            .field("roots", &self.0.load().len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::identity::{MeshCa, SpiffeId};

    #[test]
    fn a_bundle_of_ca_roots_reads_and_anything_else_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = MeshCa::init(dir.path(), "cluster.local", false).unwrap();
        let pem = std::fs::read(dir.path().join("root-cert.pem")).unwrap();
        assert_eq!(roots_from_pem(&pem).unwrap(), ca.roots().to_vec());

        assert_eq!(roots_from_pem(b"").unwrap_err(), TrustBundleError::Empty);
        let id = SpiffeId::new("cluster.local", "a", "b").unwrap();
        let leaf = ca.issue(&id, Duration::from_secs(60)).unwrap();
        let err = roots_from_pem(leaf.chain_pem().as_bytes()).unwrap_err();
        assert!(
            matches!(&err, TrustBundleError::NotCa { index: 0, reason } if reason.contains("CA:TRUE")),
            "{err}"
        );
    }

    #[test]
    fn replacing_with_the_same_roots_changes_nothing() {
        let anchors = TrustAnchors::default();
        assert!(anchors.current().is_empty());
        let dir = tempfile::tempdir().unwrap();
        let ca = MeshCa::init(dir.path(), "cluster.local", false).unwrap();
        assert!(anchors.replace(ca.roots().to_vec()));
        let before = anchors.current();
        assert!(!anchors.replace(ca.roots().to_vec()));
        assert!(Arc::ptr_eq(&before, &anchors.current()));
    }
}
