//! Host mode: one daemon for a VM or bare-metal host. It serves the workloads whose IPs are
//! on its own interfaces (HBONE inbound on 15008) and, with `--socks5`, takes outbound
//! connections from local clients and sends them through the mesh.

use anyhow::Context;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use weft::hbone::{HboneClient, HboneClientConfig, HboneServer, HboneServerConfig};
use weft::identity::CertManager;
use weft::proxy::{HostWorkloads, OutboundProxy};
use weft::socks5::Socks5Server;

use serde_json::{json, Value};
use weft::admin::{LogControl, NodeStatus, NotReady};
use weft::hbone::server::BoxFuture;

use crate::daemon::{self, Basics};
use crate::Args;

pub async fn run(args: Args, log: Arc<dyn LogControl>) -> anyhow::Result<()> {
    let basics = daemon::start_basics(&args).await?;
    let Basics { certs, store, .. } = &basics;
    let (certs, store) = (certs.clone(), store.clone());

    let host = HostWorkloads::new(store.clone(), args.trust_domain.clone());
    tokio::spawn(host.clone().enforce_policy_changes());
    let mut announced = announce_workloads(&host, &certs, &args.node_name, None).await;
    let mut changes = store.subscribe();
    {
        let host = host.clone();
        let certs = certs.clone();
        let node = args.node_name.clone();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                host.refresh_local_ips();
                announced = announce_workloads(&host, &certs, &node, Some(&announced)).await;
            }
        });
    }

    // Every proxy port is bound before the readiness endpoint exists, so "ready" never
    // answers while one of them could still fail to bind.
    let hbone_listener =
        weft::listener::bind_shared(args.hbone_listen).context("the HBONE port")?;
    let socks_listener = match args.socks5 {
        Some(addr) => Some(weft::listener::bind_shared(addr).context("the SOCKS5 port")?),
        None => None,
    };
    let listening = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);
    let status = Arc::new(HostStatus {
        host: host.clone(),
        listening: listening.clone(),
    });
    daemon::start_admin(&args, &basics, "host", status, log, stop_rx.clone()).await?;
    let server = HboneServer::new(
        host.clone(),
        certs.clone(),
        HboneServerConfig {
            trust_domain: args.trust_domain.clone(),
            ..HboneServerConfig::default()
        },
    );
    tracing::info!(addr = %args.hbone_listen, "HBONE listener up");
    tokio::spawn(server.clone().serve(hbone_listener, stop_rx.clone()));

    let client = HboneClient::new(
        certs.clone(),
        HboneClientConfig {
            idle_timeout: args.pool_idle_timeout,
            ..HboneClientConfig::default()
        },
    );
    // The SOCKS5 port is this daemon too: a SOCKS5 CONNECT to it would loop.
    let own_ports = args.socks5.iter().map(|addr| addr.port()).collect();
    let outbound = OutboundProxy::with_own_ports(client, args.trust_domain.clone(), own_ports);
    let socks = match (args.socks5, socks_listener) {
        (Some(addr), Some(listener)) => {
            let socks = Socks5Server::new(outbound.clone(), store.clone(), host.clone());
            tracing::info!(%addr, "SOCKS5 listener up");
            tokio::spawn(socks.clone().serve(listener, stop_rx.clone()));
            Some(socks)
        }
        _ => None,
    };
    listening.store(true, Ordering::Release);
    tracing::info!(node = %args.node_name, "weft-node ready (host mode)");

    daemon::wait_for_signal().await?;
    tracing::info!(grace = ?args.grace_period, "shutting down: no new connections; letting open ones finish");
    let _ = stop_tx.send(true);
    daemon::drain(args.grace_period, || {
        server.stats().connections_open.load(Ordering::Relaxed)
            + socks.as_ref().map_or(0, |s| s.sessions_open())
    })
    .await;
    Ok(())
}

/// Host mode's answers for the admin API and dashboard.
struct HostStatus {
    host: Arc<HostWorkloads>,
    /// Set once the HBONE (and SOCKS5) listeners are serving.
    listening: Arc<AtomicBool>,
}

impl NodeStatus for HostStatus {
    fn served(&self) -> BoxFuture<'_, Value> {
        let served: Vec<Value> = self
            .host
            .served()
            .iter()
            .map(|w| {
                json!({
                    "name": w.name,
                    "namespace": w.namespace,
                    "identity": self.host.identity_of(w).map(|id| id.to_string()),
                    "ips": w.ips,
                    "state": "serving",
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

/// Gets the certificates of the workloads this host serves ready, retires those no workload
/// uses any more, and logs what changed since `before` (the workloads last announced; `None`
/// at start): a cluster-wide source publishes often, and an unchanged host logs nothing.
/// Returns the workloads served now (namespace/name).
async fn announce_workloads(
    host: &HostWorkloads,
    certs: &Arc<CertManager>,
    node: &str,
    before: Option<&BTreeSet<String>>,
) -> BTreeSet<String> {
    let served = host.served();
    let in_use: std::collections::HashSet<_> =
        served.iter().filter_map(|w| host.identity_of(w)).collect();
    certs.retain(|id| in_use.contains(id));
    let now: BTreeSet<String> = served
        .iter()
        .map(|w| format!("{}/{}", w.namespace, w.name))
        .collect();
    if now.is_empty() && before.is_none_or(|b| !b.is_empty()) {
        tracing::warn!(
            node,
            "no workload in the mesh config has an IP on this host's interfaces"
        );
    }
    for workload in served {
        let Some(id) = host.identity_of(&workload) else {
            continue;
        };
        let name = format!("{}/{}", workload.namespace, workload.name);
        match certs.get_or_issue(&id).await {
            Ok(_) if before.is_some_and(|b| b.contains(&name)) => {}
            Ok(_) => {
                tracing::info!(workload = %name, identity = %id, ips = ?workload.ips, "serving workload")
            }
            Err(error) => tracing::error!(identity = %id, %error, "cannot issue a certificate"),
        }
    }
    now
}
