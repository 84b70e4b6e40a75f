//! Where leaf certificates come from. [`CertManager`](super::CertManager) asks an
//! [`Issuer`] for every first leaf and every renewal; the trait is async so a remote signer
//! can implement it without blocking the daemon.
//!
//! Two issuers: [`LocalCaIssuer`] here (the plug-in CA directory, re-read at every issuance
//! so an in-place CA rotation is picked up, and signed on tokio's blocking pool, so no CA
//! file read and no signature ever runs on an async worker thread), and
//! [`CsrIssuer`](super::CsrIssuer) (a Kubernetes CSR that `weft signer` answers).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use super::ca::{IssuedLeaf, MeshCa};
use super::error::IdentityError;
use super::spiffe::SpiffeId;

/// A boxed future, so issuers can be used behind `dyn`.
pub type IssueFuture<'a> =
    Pin<Box<dyn Future<Output = Result<IssuedLeaf, IdentityError>> + Send + 'a>>;

/// One leaf to issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueRequest {
    /// The identity the leaf must carry; an issuer answering for any other is an error.
    pub id: SpiffeId,
    /// Requested lifetime (an issuer may shorten it, e.g. to its own expiry).
    pub ttl: Duration,
}

/// Signs leaves for identities. The private key of the leaf is made on this node (by the
/// issuer itself for the local CA; a CSR client generates it and sends only the CSR) and
/// returned with the chain.
pub trait Issuer: Send + Sync + 'static {
    /// Issues a fresh leaf for `request.id`.
    fn issue(&self, request: IssueRequest) -> IssueFuture<'_>;
}

/// Issues from the local CA directory (`weft ca init` / a plug-in CA), off the async
/// executor.
#[derive(Debug, Clone)]
pub struct LocalCaIssuer {
    ca_dir: PathBuf,
}

impl LocalCaIssuer {
    /// An issuer for the CA directory `ca_dir`; nothing is read until the first issuance.
    pub fn new(ca_dir: PathBuf) -> LocalCaIssuer {
        LocalCaIssuer { ca_dir }
    }
}

impl Issuer for LocalCaIssuer {
    fn issue(&self, request: IssueRequest) -> IssueFuture<'_> {
        let ca_dir = self.ca_dir.clone();
        Box::pin(async move {
            let id = request.id.to_string();
            let signed = tokio::task::spawn_blocking(move || {
                let ca = MeshCa::load(&ca_dir)?;
                ca.issue(&request.id, request.ttl)
            })
            .await
            .map_err(|error| IdentityError::IssuerTask {
                id,
                reason: error.to_string(),
            })?;
            Ok(signed?)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;

    /// The CA key is a FIFO that only this test writes: if the issuer read it on the
    /// (single) runtime thread, that thread would block and the test's next task could not
    /// run. A watchdog thread unblocks such a hang after a while so the test fails instead
    /// of hanging; the check is that it never had to.
    #[tokio::test(flavor = "current_thread")]
    async fn the_local_ca_is_read_and_signs_off_the_runtime_thread() {
        let dir = tempfile::tempdir().unwrap();
        MeshCa::init(dir.path(), "cluster.local", false).unwrap();
        let key_path = dir.path().join("ca-key.pem");
        let key = std::fs::read(&key_path).unwrap();
        std::fs::remove_file(&key_path).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(&key_path)
            .status()
            .unwrap();
        assert!(made.success());

        let finished = Arc::new(AtomicBool::new(false));
        let watchdog_fired = Arc::new(AtomicBool::new(false));
        {
            let (finished, fired, key, key_path) = (
                finished.clone(),
                watchdog_fired.clone(),
                key.clone(),
                key_path.clone(),
            );
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(20));
                if !finished.load(Ordering::SeqCst) {
                    fired.store(true, Ordering::SeqCst);
                    let _ = std::fs::write(&key_path, &key);
                }
            });
        }
        let issuer = LocalCaIssuer::new(dir.path().to_owned());
        let id = SpiffeId::new("cluster.local", "demo", "a").unwrap();
        let request = IssueRequest {
            id: id.clone(),
            ttl: Duration::from_secs(3600),
        };
        let issuing = tokio::spawn(async move { issuer.issue(request).await });
        // Runs only once the issuing task has yielded the runtime thread.
        tokio::spawn(async {}).await.unwrap();
        assert!(
            !watchdog_fired.load(Ordering::SeqCst),
            "the CA directory was read on the runtime thread"
        );
        tokio::task::spawn_blocking(move || std::fs::write(&key_path, &key))
            .await
            .unwrap()
            .unwrap();
        let leaf = issuing.await.unwrap().expect("issued");
        finished.store(true, Ordering::SeqCst);
        assert_eq!(leaf.id, id);
        assert!(!watchdog_fired.load(Ordering::SeqCst));
    }
}
