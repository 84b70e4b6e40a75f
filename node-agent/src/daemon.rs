//! Start-up and shutdown pieces both modes share: the CA (a local directory, or weft signer
//! through CSRs with the trust bundle from its ConfigMap), the config source, listening
//! sockets and waiting for SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use tokio::sync::watch;
use weft::admin::{AdminAddrs, AdminContext, LogControl, NodeStatus};
use weft::config::{
    kube_source, ConfigSource, FileSource, FileSourceLimits, KubeSource, KubeSourceOptions,
};
use weft::identity::from_signer::{certs_from_signer, SignerSettings};
use weft::identity::{CertManager, RenewalPolicy, SpiffeId};
use weft::model::{MeshSnapshot, MeshStore};
use weft::telemetry::MetricsHandle;

use crate::{Args, Source};

/// What every mode starts from.
pub struct Basics {
    pub certs: Arc<CertManager>,
    pub store: Arc<MeshStore>,
    pub source: Arc<dyn ConfigSource>,
    pub metrics: MetricsHandle,
    /// The API server's client (kube source only).
    pub api: Option<kube_source::ApiClient>,
}

/// Checks the trust domain, loads the CA and the mesh model (refusing to start on a bad
/// config file; waiting for the first full list from the Kubernetes API) and keeps
/// watching the source.
pub async fn start_basics(args: &Args) -> anyhow::Result<Basics> {
    SpiffeId::new(&args.trust_domain, "x", "x")
        .with_context(|| format!("--trust-domain {:?} is not valid", args.trust_domain))?;
    let policy = RenewalPolicy {
        ttl: args.cert_ttl,
        ..RenewalPolicy::default()
    };
    // Reading the CA directory blocks: keep it off the async workers.
    let local_ca = match &args.ca_dir {
        Some(dir) => Some(
            tokio::task::block_in_place(|| CertManager::new(dir.clone(), policy.clone()))
                .context("loading the mesh CA")?,
        ),
        None if args.source() == Source::File => {
            anyhow::bail!("--ca-dir is required with --source file (only the kube source can ask weft signer for certificates)")
        }
        None => None,
    };
    let store = Arc::new(MeshStore::new(MeshSnapshot::empty()));
    let (source, api) = match args.source() {
        Source::File => (file_source(args, store.clone())?, None),
        Source::Kube => {
            let (source, api) = kube_source(args, store.clone()).await?;
            (source, Some(api))
        }
    };
    let certs = match (local_ca, &api) {
        (Some(certs), _) => certs,
        (None, Some(api)) => signer_certs(args, api, policy).await,
        (None, None) => anyhow::bail!("--ca-dir is required without the kube source"),
    };
    let metrics = weft::telemetry::install().context("setting up metrics")?;
    tokio::spawn(weft::telemetry::registry::update_health_forever(
        certs.clone(),
        source.clone(),
    ));
    Ok(Basics {
        certs,
        store,
        source,
        metrics,
        api,
    })
}

/// Certificates from `weft signer`: the trust bundle first (nothing verifies without it;
/// start-up waits for it), then CSRs for each identity as it is needed.
async fn signer_certs(
    args: &Args,
    api: &kube_source::ApiClient,
    policy: RenewalPolicy,
) -> Arc<CertManager> {
    let settings = SignerSettings {
        namespace: args.install_namespace.clone(),
        configmap: args.trust_bundle.clone(),
        requester: args.node_name.clone(),
        cache: Some(args.run_dir.join("trust-bundle.pem")),
        csr_timeout: args.csr_timeout,
    };
    certs_from_signer(api.client.clone(), settings, policy).await
}

/// The Kubernetes source, once every kind has listed (a first snapshot of half a cluster
/// would release the pods of the namespaces not listed yet).
async fn kube_source(
    args: &Args,
    store: Arc<MeshStore>,
) -> anyhow::Result<(Arc<dyn ConfigSource>, kube_source::ApiClient)> {
    if args.config.is_some() {
        anyhow::bail!("--config is for --source file; the kube source reads the API server");
    }
    let api = kube_source::client(args.kubeconfig.as_deref())
        .await
        .context("connecting to the Kubernetes API")?;
    tracing::info!(server = %api.server, node = %args.node_name, "watching the Kubernetes API");
    let source = KubeSource::start(
        api.clone(),
        store,
        KubeSourceOptions {
            node_name: args.node_name.clone(),
            coalesce: kube_source::DEFAULT_COALESCE,
        },
    );
    source.wait_synced(Duration::from_secs(10)).await;
    Ok((Arc::new(source), api))
}

fn file_source(args: &Args, store: Arc<MeshStore>) -> anyhow::Result<Arc<dyn ConfigSource>> {
    let Some(config) = &args.config else {
        anyhow::bail!("--source file needs --config FILE");
    };
    if args.kubeconfig.is_some() {
        anyhow::bail!("--kubeconfig is for --source kube; the file source reads --config");
    }
    let limits = FileSourceLimits {
        max_bytes: args.config_max_bytes,
    };
    // In pods mode the state file says which namespaces were enrolled when the daemon last
    // ran: a first config that drops all of them is refused like a reload would be.
    let enrolled_before = match args.mode {
        crate::Mode::Pods => crate::state::load(&args.run_dir)
            .map(|state| state.enrolled_namespaces)
            .unwrap_or_default(),
        crate::Mode::Host => Vec::new(),
    };
    let source = FileSource::load_initial_guarded(config, store, limits, &enrolled_before)
        .with_context(|| format!("loading mesh config {}", config.display()))?;
    source.spawn_watch(Duration::from_millis(200));
    Ok(source)
}

/// Starts the admin (:15000), metrics + dashboard (:15020) and readiness (:15021) servers.
pub async fn start_admin(
    args: &Args,
    basics: &Basics,
    mode: &'static str,
    status: Arc<dyn NodeStatus>,
    log: Arc<dyn LogControl>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let ctx = Arc::new(AdminContext {
        node_name: args.node_name.clone(),
        mode,
        store: basics.store.clone(),
        source: basics.source.clone(),
        certs: basics.certs.clone(),
        metrics: basics.metrics.clone(),
        status,
        log,
    });
    let addrs = AdminAddrs {
        admin: args.admin_addr,
        metrics: args.metrics_addr,
        readiness: args.readiness_addr,
    };
    weft::admin::start(ctx, addrs, shutdown)
        .await
        .context("binding the admin, metrics or readiness port")
}

pub async fn wait_for_signal() -> anyhow::Result<()> {
    weft::shutdown::signal()
        .await
        .context("installing the SIGTERM/SIGINT handlers")
}

/// After SIGTERM, once listeners stopped accepting: waits until `open()` (connections still
/// open) reaches 0 or `grace` has passed, whichever comes first.
pub async fn drain(grace: Duration, open: impl Fn() -> u64) {
    let deadline = tokio::time::Instant::now() + grace;
    let at_start = open();
    if at_start > 0 {
        tracing::info!(
            open = at_start,
            ?grace,
            "waiting for open connections to finish"
        );
    }
    loop {
        let open = open();
        if open == 0 {
            tracing::info!("all connections finished; exiting");
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(open, "grace period over; closing remaining connections");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
