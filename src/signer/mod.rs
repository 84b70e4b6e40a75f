//! `weft signer`: the cluster's only holder of the mesh CA key. It runs as a small
//! Deployment in `weft-system` with the CA Secret (Istio plug-in CA layout) mounted, and
//!
//! - signs Kubernetes CSRs with `signerName: weft.dev/workload` ([`controller`]), after
//!   [`review`] has checked that weft-node asked, which node its token names, what the CSR
//!   asks for, and that a pod of that identity is scheduled on that node; it denies the rest
//!   with a reason `kubectl describe csr` shows;
//! - publishes the CA's roots as the trust bundle (ConfigMap `weft-ca-root`) and puts them
//!   back if they are edited;
//! - serves `/metrics` (`weft_signer_csrs_total{result,reason}`) and `/healthz/ready` (ready
//!   once the CA loads, the bundle is published and the CSRs that existed at start are
//!   listed).
//!
//! Nodes never see the key: they make their own keys and send only CSRs
//! ([`crate::identity::CsrIssuer`]).

pub mod controller;
pub mod review;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use kube::Client;
use tokio::sync::watch;

use crate::identity::ca::chain_to_pem;
use crate::identity::root_configmap;
use crate::identity::{CaError, MeshCa};

pub use review::ReviewPolicy;

/// The signer's settings.
#[derive(Debug, Clone)]
pub struct SignerConfig {
    /// Who may ask and what is signed.
    pub policy: ReviewPolicy,
    /// The CA directory (the mounted Secret).
    pub ca_dir: PathBuf,
    /// Where the trust-bundle ConfigMap lives.
    pub namespace: String,
    /// The trust-bundle ConfigMap's name.
    pub root_configmap: String,
    /// `/metrics` and `/healthz/ready`.
    pub http_addr: SocketAddr,
    /// How often the published trust bundle is compared with the CA directory's roots.
    pub republish_every: Duration,
}

/// What stops the signer or one CSR.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// The CA directory cannot be used.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The API server refused or failed a request.
    #[error("{action} CSR {name}: {source}")]
    Api {
        /// What was being done.
        action: &'static str,
        /// The CSR.
        name: String,
        /// kube's error.
        #[source]
        source: kube::Error,
    },
    /// Someone else answered the CSR between this signer's read and its write.
    #[error("CSR {0} was answered meanwhile")]
    AlreadyAnswered(String),
    /// The signing task ended without an answer.
    #[error("the signing task failed: {0}")]
    Task(String),
    /// The metrics/health port cannot be bound or metrics cannot be set up.
    #[error("{0}")]
    Setup(String),
}

/// Runs the signer until the process is stopped. Fails at start if the CA directory is
/// unusable, so a broken Secret shows as a crash-looping pod with the reason in its log.
pub async fn run(client: Client, config: SignerConfig) -> Result<(), SignerError> {
    let dir = config.ca_dir.clone();
    let ca = tokio::task::spawn_blocking(move || MeshCa::load(&dir))
        .await
        .map_err(|e| SignerError::Task(e.to_string()))??;
    tracing::info!(ca_dir = %config.ca_dir.display(), roots = ca.roots().len(),
        trust_domain = %config.policy.trust_domain, "weft signer: the mesh CA loads");
    drop(ca);
    let metrics = crate::telemetry::install().map_err(|e| SignerError::Setup(e.to_string()))?;
    metrics::describe_counter!(
        controller::SIGNER_CSRS,
        "weft.dev/workload CSRs the signer answered, by result (issued, denied, failed) and reason"
    );

    let (published_tx, published) = watch::channel(false);
    let (listed_tx, listed) = watch::channel(false);
    let listener = crate::listener::bind_shared(config.http_addr)
        .map_err(|e| SignerError::Setup(format!("binding {}: {e}", config.http_addr)))?;
    let (_stop_tx, stop) = watch::channel(false);
    let ready = Arc::new((published, listed));
    tokio::spawn(crate::admin::serve(
        listener,
        stop,
        "signer metrics",
        move |request| {
            let metrics = metrics.clone();
            let ready = ready.clone();
            Box::pin(async move {
                let (status, body) = match request.uri().path() {
                    "/metrics" => (StatusCode::OK, metrics.render()),
                    "/healthz/ready" if *ready.0.borrow() && *ready.1.borrow() => {
                        (StatusCode::OK, "ready\n".to_owned())
                    }
                    "/healthz/ready" => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "not ready: trust bundle not published or CSRs not listed yet\n".to_owned(),
                    ),
                    _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
                };
                Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::from(body)))
                    .unwrap_or_default()
            })
        },
    ));

    tokio::spawn(keep_root_published(
        client.clone(),
        config.clone(),
        published_tx,
    ));
    controller::Controller::new(client, config.policy, config.ca_dir)
        .run(listed_tx)
        .await;
    Ok(())
}

/// Publishes the CA directory's roots as the trust bundle now and every
/// `republish_every`, so an edited bundle or a rotated CA reaches the nodes.
async fn keep_root_published(client: Client, config: SignerConfig, published: watch::Sender<bool>) {
    let mut tick = tokio::time::interval(config.republish_every);
    loop {
        tick.tick().await;
        let dir = config.ca_dir.clone();
        let roots = match tokio::task::spawn_blocking(move || MeshCa::load(&dir)).await {
            Ok(Ok(ca)) => chain_to_pem(ca.roots()),
            Ok(Err(error)) => {
                tracing::error!(%error, "the CA directory no longer loads; the trust bundle is left as it is");
                continue;
            }
            Err(error) => {
                tracing::error!(%error, "reading the CA directory failed");
                continue;
            }
        };
        match root_configmap::publish(
            client.clone(),
            &config.namespace,
            &config.root_configmap,
            &roots,
        )
        .await
        {
            Ok(wrote) => {
                if wrote {
                    tracing::info!(configmap = %format!("{}/{}", config.namespace, config.root_configmap),
                        "published the trust bundle");
                }
                published.send_replace(true);
            }
            Err(error) => tracing::warn!(%error, "publishing the trust bundle failed; will retry"),
        }
    }
}
