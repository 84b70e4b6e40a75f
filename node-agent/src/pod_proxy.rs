//! The proxy for one enrolled pod: its three listeners, opened inside the pod's network
//! namespace but served by this daemon.
//!
//! - 15001 outbound: the app's connections, redirected; routed by the original destination
//!   and sent over HBONE or plain TCP from sockets in the pod's namespace.
//! - 15006 inbound plaintext: connections from outside the mesh, redirected; delivered to the
//!   app from the original client address.
//! - 15008 inbound HBONE: mTLS CONNECT streams for this pod's identity, delivered the same way.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use weft::hbone::{HboneClient, HboneClientConfig, HboneServer, HboneServerConfig};
use weft::identity::{CertManager, SpiffeId};
use weft::model::{MeshStore, Workload};
use weft::proxy::capture::{serve_inbound_plaintext, serve_outbound};
use weft::proxy::{OutboundProxy, PodInbound, TransparentSockets};

use crate::netns::{listen_in_pod, Netns, NetnsError, PodSockets};

use weft::dataplane::{HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_CAPTURE_PORT};

/// What every pod proxy on this node shares.
pub struct NodeContext {
    pub home: Arc<Netns>,
    /// This node's name: pods the config schedules elsewhere are refused.
    pub node_name: String,
    pub certs: Arc<CertManager>,
    pub store: Arc<MeshStore>,
    pub trust_domain: String,
    pub client_config: HboneClientConfig,
}

/// The running proxy of one pod; dropping it closes the listeners.
pub struct PodProxy {
    pub workload: Arc<Workload>,
    pub identity: SpiffeId,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl PodProxy {
    /// Opens the pod's listeners and starts serving them.
    pub fn start(
        ctx: &Arc<NodeContext>,
        netns: Arc<Netns>,
        workload: Arc<Workload>,
        pod_ips: Vec<IpAddr>,
    ) -> Result<PodProxy, NetnsError> {
        let identity = workload
            .spiffe_id(&ctx.trust_domain)
            .map_err(|e| NetnsError::Socket {
                path: netns.path().to_owned(),
                action: "pod identity".into(),
                source: std::io::Error::other(e.to_string()),
            })?;
        let has_v6 = pod_ips.iter().any(IpAddr::is_ipv6);
        let bind_all = |port| {
            let mut addrs = vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)];
            if has_v6 {
                addrs.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
            }
            addrs
        };
        let mut listeners = Vec::new();
        for port in [OUTBOUND_CAPTURE_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT] {
            for addr in bind_all(port) {
                listeners.push((port, listen_in_pod(&netns, &ctx.home, addr)?));
            }
        }

        let sockets = Arc::new(PodSockets {
            netns: netns.clone(),
            home: ctx.home.clone(),
        });
        let client = HboneClient::with_sockets(
            ctx.certs.clone(),
            ctx.client_config.clone(),
            sockets.clone(),
        );
        let outbound = OutboundProxy::new(client, ctx.trust_domain.clone());
        let inbound = PodInbound::new(
            identity.clone(),
            pod_ips,
            sockets,
            ctx.store.clone(),
            workload.clone(),
        );
        let hbone = HboneServer::new(
            inbound.clone(),
            ctx.certs.clone(),
            HboneServerConfig {
                trust_domain: ctx.trust_domain.clone(),
                ..HboneServerConfig::default()
            },
        );
        // Have the certificate ready before the first connection arrives.
        let (certs, id) = (ctx.certs.clone(), identity.clone());
        tokio::spawn(async move {
            if let Err(error) = certs.get_or_issue(&id).await {
                tracing::error!(identity = %id, %error, "cannot issue the pod's certificate");
            }
        });

        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = vec![tokio::spawn(inbound.clone().enforce_policy_changes())];
        for (port, listener) in listeners {
            let task = match port {
                OUTBOUND_CAPTURE_PORT => tokio::spawn(serve_outbound(
                    listener,
                    stop_rx.clone(),
                    outbound.clone(),
                    ctx.store.clone(),
                    workload.clone(),
                )),
                INBOUND_PLAINTEXT_PORT => tokio::spawn(serve_inbound_plaintext(
                    listener,
                    stop_rx.clone(),
                    inbound.clone(),
                )),
                _ => tokio::spawn(hbone.clone().serve(listener, stop_rx.clone())),
            };
            tasks.push(task);
        }
        Ok(PodProxy {
            workload,
            identity,
            stop,
            tasks,
        })
    }
}

impl PodProxy {
    /// Shutdown: the pod's listeners stop accepting and close (HBONE connections get
    /// GOAWAY); connections already accepted carry on until they finish.
    pub fn stop_accepting(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for PodProxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl TransparentSockets for PodSockets {
    fn transparent_from(&self, client: IpAddr, remote: SocketAddr) -> std::io::Result<TcpSocket> {
        PodSockets::transparent_from(self, client, remote)
    }
}
