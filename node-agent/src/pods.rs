//! Pods mode: the daemon of a Kubernetes node. The CNI plugin hands it every new pod over
//! `<run-dir>/cni.sock`; pods in enrolled namespaces get their redirection rules and
//! listeners; config changes enroll or release running pods live; on start-up the pods
//! recorded in the run dir are found again without any CNI call.
//!
//! Start-up order, so that an upgrade beside a running daemon refuses nothing
//! ([`crate::handover`]): the recorded pods' listeners open first (next to the old
//! daemon's), then the CNI socket is taken, then the node's ownership lock; only the owner
//! writes state, installs the CNI config (`--cni-install`, [`crate::cni_install`]) and
//! changes pods. On SIGTERM the owner asks the API server whether weft is being uninstalled
//! (then it takes its CNI config out of the node) or merely restarted (it removes nothing).

use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::sync::watch;

use weft::admin::LogControl;
use weft::hbone::HboneClientConfig;
use weft::install::InstallState;
use weft_cni::protocol::SOCKET_FILE;

use crate::cni_install::{self, CniInstallConfig, CniInstaller};
use crate::daemon::{self, Basics};
use crate::enrollment::PodManager;
use crate::handover::{self, SocketIdentity};
use crate::netns::Netns;
use crate::pod_proxy::NodeContext;
use crate::{cni_server, Args};

/// Shortest time between two scans for pods that already run.
const DISCOVERY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

pub async fn run(args: Args, log: Arc<dyn LogControl>) -> anyhow::Result<()> {
    let basics = daemon::start_basics(&args).await?;
    let Basics { certs, store, .. } = &basics;
    let (certs, store) = (certs.clone(), store.clone());
    cni_server::prepare_run_dir(&args.run_dir)
        .with_context(|| format!("creating run dir {}", args.run_dir.display()))?;
    // Read before anything is written: a missing plugin binary is a broken image.
    let installer = match args.cni_install {
        true => Some(Arc::new(Mutex::new(cni_installer(&args)?))),
        false => None,
    };
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
    if installer.is_some() {
        pods.set_cni_config_problem(Some("not installed yet".into()));
    }

    // Pods recorded before a restart: re-apply rules, re-open listeners (beside an old
    // daemon's, if one still runs).
    pods.reconcile_all().await;
    let (known, enrolled) = pods.counts().await;
    tracing::info!(known, enrolled, "pods from the run dir restored");

    let (stop_tx, stop_rx) = watch::channel(false);
    daemon::start_admin(&args, &basics, "pods", pods.clone(), log, stop_rx.clone()).await?;
    // From here on new CNI requests come to this process; they wait until it owns the node.
    let socket_path = args.run_dir.join(SOCKET_FILE);
    let listener = cni_server::bind(&socket_path)
        .with_context(|| format!("binding the CNI socket {}", socket_path.display()))?;
    let socket = SocketIdentity::of(&socket_path)?;
    tokio::spawn(cni_server::serve(listener, pods.clone(), stop_rx.clone()));
    pods.set_serving_cni();
    let ownership = handover::acquire(&args.run_dir, args.handover_timeout).await?;
    pods.become_owner().await;

    // Stops the CNI repair loop: at a takeover, and at shutdown before any uninstall.
    let (repair_stop, repair_stop_rx) = watch::channel(false);
    let repair_stop = Arc::new(repair_stop);
    let mut repair = None;
    if let Some(installer) = &installer {
        // The first pass before "ready": new pods from here on go through weft.
        let first = cni_install::install_pass(installer).await;
        cni_install::log_outcome(&first);
        pods.set_cni_config_problem(first.clone());
        let pods = pods.clone();
        repair = Some(tokio::spawn(cni_install::keep_installed(
            installer.clone(),
            first,
            repair_stop_rx,
            move |problem| pods.set_cni_config_problem(problem),
        )));
    }

    // Pods that ran before weft was installed (or started while its CNI config was not in
    // place), then again whenever the model lists such a pod (at most every few seconds).
    pods.discover(&args.proc_dir).await;
    let mut changes = store.subscribe();
    let reconciler = {
        let (pods, proc_dir) = (pods.clone(), args.proc_dir.clone());
        tokio::spawn(async move {
            let mut last_scan = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        pods.reconcile_all().await;
                    }
                    // A change that came too soon after a scan is looked at again here.
                    _ = tokio::time::sleep(DISCOVERY_INTERVAL) => {}
                }
                if last_scan.elapsed() >= DISCOVERY_INTERVAL {
                    pods.discover(&proc_dir).await;
                    last_scan = tokio::time::Instant::now();
                }
            }
        })
    };
    // A newer daemon binding the CNI socket takes the node: stop managing it.
    let takeover = {
        let (pods, socket, repair_stop) = (pods.clone(), socket.clone(), repair_stop.clone());
        tokio::spawn(async move {
            socket.taken_over().await;
            pods.hand_over().await;
            repair_stop.send_replace(true);
            drop(ownership);
            tracing::info!(
                "a newer weft-node took over this node; serving open connections until SIGTERM"
            );
        })
    };
    tracing::info!(socket = %socket_path.display(), node = %args.node_name, "weft-node ready (pods mode)");

    daemon::wait_for_signal().await?;
    takeover.abort();
    reconciler.abort();
    let handed_over = pods.handed_over().await;
    repair_stop.send_replace(true);
    if let Some(repair) = repair {
        // A pass in flight finishes before anything is removed.
        let _ = repair.await;
    }
    if let (Some(installer), false) = (&installer, handed_over) {
        uninstall_if_removed(&args, &basics, installer).await;
    }
    // Rules stay in the pods: until a daemon runs again their traffic is refused, never
    // sent around the mesh.
    tracing::info!(
        grace = ?args.grace_period,
        "shutting down: no new connections; letting open ones finish (enrolled pods keep their rules)"
    );
    // No more enrollments or releases: the pods stay as they are for the next daemon.
    let _ = stop_tx.send(true);
    socket.remove_if_current();
    pods.stop_accepting().await;
    // Every accepted connection and HBONE stream holds a permit until it ends.
    daemon::drain(args.grace_period, || {
        u64::try_from(weft::limits::global().open()).unwrap_or(u64::MAX)
    })
    .await;
    Ok(())
}

/// The installer for `--cni-install`.
fn cni_installer(args: &Args) -> anyhow::Result<CniInstaller> {
    let plugin_source = match &args.cni_plugin {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("locating weft-node's executable (pass --cni-plugin)")?
            .with_file_name(cni_install::PLUGIN_TYPE),
    };
    CniInstaller::new(CniInstallConfig {
        bin_dir: args.cni_bin_dir.clone(),
        conf_dir: args.cni_conf_dir.clone(),
        plugin_source,
        socket_path: args.run_dir.join(SOCKET_FILE),
        run_dir: args.run_dir.clone(),
    })
    .context("preparing the CNI install")
}

/// At shutdown: takes weft's CNI config and plugin out of the node if the API server says
/// weft is being uninstalled; a restart or an upgrade (or no clear answer) removes nothing.
async fn uninstall_if_removed(args: &Args, basics: &Basics, installer: &Arc<Mutex<CniInstaller>>) {
    let Some(api) = &basics.api else {
        tracing::info!("file source: keeping weft's CNI config (remove it by hand to uninstall)");
        return;
    };
    match weft::install::daemonset_state(api, &args.install_namespace, &args.daemonset).await {
        InstallState::Installed => {
            tracing::info!(
                "DaemonSet still installed: a restart or upgrade, keeping weft's CNI config"
            )
        }
        InstallState::Unknown(why) => {
            tracing::warn!(
                "cannot tell whether weft is being uninstalled ({why}); keeping its CNI config"
            )
        }
        InstallState::Uninstalled(why) => {
            tracing::info!("weft is being uninstalled: {why}; removing its CNI config and plugin");
            let installer = installer.clone();
            let removed = tokio::task::spawn_blocking(move || {
                cni_install::with_installer(&installer, CniInstaller::uninstall)
            })
            .await;
            match removed {
                Ok(Ok(())) => tracing::info!(
                    "weft's CNI config and plugin removed: new pods start without weft"
                ),
                Ok(Err(error)) => tracing::error!(%error, "removing weft's CNI config"),
                Err(error) => tracing::error!(%error, "removing weft's CNI config"),
            }
        }
    }
}
