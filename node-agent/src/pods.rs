//! Pods mode: the daemon of a Kubernetes node. The CNI plugin hands it every new pod over
//! `<run-dir>/cni.sock`; pods in enrolled namespaces get their redirection rules and
//! listeners; config changes enroll or release running pods live; on start-up the pods
//! recorded in the run dir are found again without any CNI call.

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;

use weft::admin::LogControl;
use weft::hbone::HboneClientConfig;
use weft_cni::protocol::SOCKET_FILE;

use crate::daemon::{self, Basics};
use crate::enrollment::PodManager;
use crate::netns::Netns;
use crate::pod_proxy::NodeContext;
use crate::{cni_server, Args};

pub async fn run(args: Args, log: Arc<dyn LogControl>) -> anyhow::Result<()> {
    let basics = daemon::start_basics(&args).await?;
    let Basics { certs, store, .. } = &basics;
    let (certs, store) = (certs.clone(), store.clone());
    cni_server::prepare_run_dir(&args.run_dir)
        .with_context(|| format!("creating run dir {}", args.run_dir.display()))?;
    let home = Arc::new(Netns::current().context("opening the daemon's own network namespace")?);
    let ctx = Arc::new(NodeContext {
        home,
        node_name: args.node_name.clone(),
        certs,
        store: store.clone(),
        trust_domain: args.trust_domain.clone(),
        client_config: HboneClientConfig {
            idle_timeout: args.pool_idle_timeout,
            ..HboneClientConfig::default()
        },
    });
    let pods = PodManager::new(ctx, &args.run_dir).context("reading the run dir state")?;

    // Pods recorded before a restart: re-apply rules, re-open listeners.
    pods.reconcile_all().await;
    let (known, enrolled) = pods.counts().await;
    tracing::info!(known, enrolled, "pods from the run dir restored");

    let mut changes = store.subscribe();
    let reconciler = {
        let pods = pods.clone();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                pods.reconcile_all().await;
            }
        })
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    daemon::start_admin(&args, &basics, "pods", pods.clone(), log, stop_rx.clone()).await?;
    let socket_path = args.run_dir.join(SOCKET_FILE);
    let listener = cni_server::bind(&socket_path)
        .with_context(|| format!("binding the CNI socket {}", socket_path.display()))?;
    tokio::spawn(cni_server::serve(listener, pods.clone(), stop_rx));
    pods.set_serving_cni();
    tracing::info!(socket = %socket_path.display(), node = %args.node_name, "weft-node ready (pods mode)");

    daemon::wait_for_signal().await?;
    // Rules stay in the pods: until a daemon runs again their traffic is refused, never
    // sent around the mesh.
    tracing::info!(
        grace = ?args.grace_period,
        "shutting down: no new connections; letting open ones finish (enrolled pods keep their rules)"
    );
    // No more enrollments or releases: the pods stay as they are for the next daemon.
    reconciler.abort();
    let _ = stop_tx.send(true);
    let _ = std::fs::remove_file(&socket_path);
    pods.stop_accepting().await;
    // Every accepted connection and HBONE stream holds a permit until it ends.
    daemon::drain(args.grace_period, || {
        u64::try_from(weft::limits::global().open()).unwrap_or(u64::MAX)
    })
    .await;
    Ok(())
}
