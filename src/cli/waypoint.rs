//! `weft waypoint`: start-up of an L7 waypoint. Reads the mesh model (a config file, or
//! the Kubernetes API), gets the waypoint's certificate (from a CA directory, or in a
//! cluster from weft signer through a CSR made with the pod's own token), serves HBONE on 15008 with
//! [`weft::waypoint::Waypoint`], and the admin, metrics and readiness ports as weft-node
//! does; drains open connections on SIGTERM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};
use tokio::sync::watch;

use weft::admin::{AdminAddrs, AdminContext, NodeStatus, NotReady};
use weft::config::{ConfigSource, FileSource, FileSourceLimits, KubeSource, KubeSourceOptions};
use weft::hbone::server::BoxFuture;
use weft::hbone::{HboneClient, HboneClientConfig, HboneServer, HboneServerConfig};
use weft::identity::from_signer::{certs_from_signer, SignerSettings};
use weft::identity::{CertManager, RenewalPolicy, SpiffeId};
use weft::model::{MeshSnapshot, MeshStore};
use weft::waypoint::balancer::OutlierConfig;
use weft::waypoint::upstream::Upstreams;
use weft::waypoint::{Waypoint, WaypointConfig};

use crate::WaypointArgs;

/// Runs the waypoint until SIGTERM.
pub fn run(args: WaypointArgs) -> anyhow::Result<()> {
    let log = weft::admin::logging::init(args.log_format == "json");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.worker_threads.max(1))
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args, log))
}

async fn serve(
    args: WaypointArgs,
    log: Arc<weft::admin::logging::ReloadableFilter>,
) -> anyhow::Result<()> {
    let namespace = args
        .namespace
        .clone()
        .context("--namespace (or POD_NAMESPACE) is required")?;
    let name = args
        .name
        .clone()
        .context("--name (or WEFT_WAYPOINT_NAME) is required")?;
    let service_account = args.service_account.clone().unwrap_or_else(|| name.clone());
    let identity = SpiffeId::new(&args.trust_domain, &namespace, &service_account)
        .with_context(|| {
            format!(
                "the waypoint's identity (trust domain {:?}, namespace {namespace:?}, service account {service_account:?}) is not valid",
                args.trust_domain
            )
        })?;
    let policy = RenewalPolicy {
        ttl: args.cert_ttl,
        ..RenewalPolicy::default()
    };
    let store = Arc::new(MeshStore::new(MeshSnapshot::empty()));
    let (source, api) = open_source(&args, store.clone()).await?;
    let certs = match (&args.ca_dir, api) {
        (Some(dir), _) => tokio::task::block_in_place(|| CertManager::new(dir.clone(), policy))
            .context("loading the mesh CA")?,
        (None, Some(client)) => {
            let settings = SignerSettings {
                namespace: args.install_namespace.clone(),
                configmap: args.trust_bundle.clone(),
                requester: args.pod_name.clone(),
                cache: None,
                csr_timeout: args.csr_timeout,
            };
            certs_from_signer(client, settings, policy).await
        }
        (None, None) => anyhow::bail!(
            "--ca-dir is required with --config (only the Kubernetes source can ask weft signer for the waypoint's certificate)"
        ),
    };
    let metrics = weft::telemetry::install().context("setting up metrics")?;
    tokio::spawn(weft::telemetry::registry::update_health_forever(
        certs.clone(),
        source.clone(),
    ));
    certs
        .get_or_issue(&identity)
        .await
        .with_context(|| format!("issuing the waypoint's certificate ({identity})"))?;
    let hbone = HboneClient::new(certs.clone(), HboneClientConfig::default());
    let upstreams = Arc::new(Upstreams::new(
        hbone,
        identity.clone(),
        args.trust_domain.clone(),
        OutlierConfig {
            consecutive_failures: args.outlier_consecutive_failures,
            base_ejection: args.outlier_base_ejection,
            ..OutlierConfig::default()
        },
    ));
    let waypoint = Waypoint::new(
        WaypointConfig {
            namespace: namespace.clone(),
            name: name.clone(),
            identity: identity.clone(),
            protocol_detection_timeout: args.protocol_detection_timeout,
            default_response_timeout: Some(args.default_response_timeout).filter(|d| !d.is_zero()),
            default_retry_attempts: args.default_retry_attempts,
        },
        store.clone(),
        upstreams,
    );
    let server = HboneServer::new(
        waypoint,
        certs.clone(),
        HboneServerConfig {
            trust_domain: args.trust_domain.clone(),
            ..HboneServerConfig::default()
        },
    );
    let listener = weft::listener::bind_shared(args.hbone_addr)
        .with_context(|| format!("binding the HBONE listener {}", args.hbone_addr))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let listening = Arc::new(AtomicBool::new(false));
    let status = Arc::new(WaypointStatus {
        namespace: namespace.clone(),
        name: name.clone(),
        identity: identity.to_string(),
        store: store.clone(),
        listening: listening.clone(),
    });
    let ctx = Arc::new(AdminContext {
        node_name: format!("waypoint {namespace}/{name}"),
        mode: "waypoint",
        store,
        source,
        certs,
        metrics,
        status,
        log,
    });
    weft::admin::start(
        ctx,
        AdminAddrs {
            admin: args.admin_addr,
            metrics: args.metrics_addr,
            readiness: args.readiness_addr,
        },
        stop_rx.clone(),
    )
    .await
    .context("binding the admin, metrics or readiness port")?;
    let stats = server.stats().clone();
    let serving = tokio::spawn(server.serve(listener, stop_rx));
    listening.store(true, Ordering::Release);
    tracing::info!(%identity, hbone = %args.hbone_addr, "waypoint {namespace}/{name} serving");
    weft::shutdown::signal()
        .await
        .context("installing the SIGTERM/SIGINT handlers")?;
    tracing::info!("SIGTERM: draining");
    let _ = stop_tx.send(true);
    let _ = serving.await;
    let deadline = tokio::time::Instant::now() + args.grace_period;
    while stats.connections_open.load(Ordering::Relaxed) > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The model's source, and the API client when it is the Kubernetes API.
async fn open_source(
    args: &WaypointArgs,
    store: Arc<MeshStore>,
) -> anyhow::Result<(Arc<dyn ConfigSource>, Option<kube::Client>)> {
    match &args.config {
        Some(config) => {
            if args.kubeconfig.is_some() {
                anyhow::bail!("--kubeconfig is for the Kubernetes source; --config reads a file");
            }
            let source =
                FileSource::load_initial_guarded(config, store, FileSourceLimits::default(), &[])
                    .with_context(|| format!("loading mesh config {}", config.display()))?;
            source.spawn_watch(Duration::from_millis(200));
            Ok((source, None))
        }
        None => {
            let api = weft::config::kube_source::client(args.kubeconfig.as_deref())
                .await
                .context("connecting to the Kubernetes API")?;
            tracing::info!(server = %api.server, "watching the Kubernetes API");
            let client = api.client.clone();
            let source = KubeSource::start(
                api,
                store,
                KubeSourceOptions {
                    node_name: String::new(),
                    coalesce: weft::config::kube_source::DEFAULT_COALESCE,
                },
            );
            source.wait_synced(Duration::from_secs(10)).await;
            Ok((Arc::new(source), Some(client)))
        }
    }
}

/// What the admin API shows of a waypoint: the Services bound to it.
struct WaypointStatus {
    namespace: String,
    name: String,
    identity: String,
    store: Arc<MeshStore>,
    listening: Arc<AtomicBool>,
}

impl NodeStatus for WaypointStatus {
    fn served(&self) -> BoxFuture<'_, Value> {
        let snapshot = self.store.load();
        let served: Vec<Value> = snapshot
            .services()
            .filter(|s| {
                s.namespace == self.namespace
                    && s.waypoint.as_deref() == Some(self.name.as_str())
                    && s.name != self.name
            })
            .map(|s| {
                json!({
                    "name": s.name,
                    "namespace": s.namespace,
                    "identity": self.identity,
                    "ips": s.vips,
                    "state": "bound",
                })
            })
            .collect();
        Box::pin(async move { Value::Array(served) })
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), NotReady>> {
        let listening = self.listening.load(Ordering::Acquire);
        Box::pin(async move {
            if listening {
                Ok(())
            } else {
                Err(NotReady("the HBONE listener is not serving yet".to_owned()))
            }
        })
    }
}
