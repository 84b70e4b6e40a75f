//! Certificates from `weft signer`, for a process that holds no CA key (weft-node in a
//! cluster, a waypoint): the trust bundle first, from the `weft-ca-root` ConfigMap the
//! signer publishes (nothing verifies without it, so start-up waits for it), then a CSR per
//! identity as it is needed ([`CsrIssuer`]), renewed by the [`CertManager`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;

use super::csr_issuer::CsrIssuer;
use super::manager::{CertManager, RenewalPolicy};
use super::root_configmap::RootWatch;
use super::trust::TrustAnchors;

/// Where the trust bundle is and who asks.
#[derive(Debug, Clone)]
pub struct SignerSettings {
    /// The ConfigMap's namespace (weft's own).
    pub namespace: String,
    /// The ConfigMap's name.
    pub configmap: String,
    /// Who asks, as CSR names and labels show it (a node's name, a waypoint pod's).
    pub requester: String,
    /// A copy of the bundle, read at start when the API server is not reachable yet.
    pub cache: Option<PathBuf>,
    /// How long one CSR is waited for.
    pub csr_timeout: Duration,
}

/// A certificate manager whose leaves come from `weft signer`; returns once the trust
/// bundle is loaded.
pub async fn certs_from_signer(
    client: Client,
    settings: SignerSettings,
    policy: RenewalPolicy,
) -> Arc<CertManager> {
    let anchors = TrustAnchors::default();
    let mut bundle = RootWatch::start(
        client.clone(),
        &settings.namespace,
        &settings.configmap,
        anchors.clone(),
        settings.cache,
    );
    bundle.wait_loaded(Duration::from_secs(10)).await;
    tracing::info!(
        requester = %settings.requester,
        "certificates come from weft signer (CSRs with signerName weft.dev/workload); no CA key is held here"
    );
    let issuer = CsrIssuer::new(
        client,
        settings.requester,
        anchors.clone(),
        settings.csr_timeout,
    );
    CertManager::with_issuer(Arc::new(issuer), anchors, policy)
}
