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

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use weft::hbone::server::{BoxFuture, InboundTarget};
use weft::hbone::{HboneClient, HboneClientConfig, HboneServer, HboneServerConfig, OWN_PORTS};
use weft::identity::{CertManager, SpiffeId};
use weft::listener::accept_gated;
use weft::model::{MeshSnapshot, MeshStore, Workload};
use weft::proxy::authz::{check_inbound, recheck_on_change};
use weft::proxy::{copy_metered, ConnectionTracker, Denial, OutboundProxy, TrackedAttrs};
use weft::telemetry::{ConnectionReport, Reporter, Security, WorkloadLabels};

use crate::netns::{listen_in_pod, Netns, NetnsError, PodSockets};

pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
pub const HBONE_PORT: u16 = weft::hbone::HBONE_PORT;

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
        for port in [OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT] {
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
        let inbound = Arc::new(PodInbound {
            identity: identity.clone(),
            ips: pod_ips,
            sockets,
            store: ctx.store.clone(),
            workload: workload.clone(),
            tracker: ConnectionTracker::new(),
        });
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
                OUTBOUND_PORT => tokio::spawn(serve_outbound(
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

/// The pod as an HBONE and plaintext inbound target.
struct PodInbound {
    identity: SpiffeId,
    ips: Vec<IpAddr>,
    sockets: Arc<PodSockets>,
    store: Arc<MeshStore>,
    /// The pod as it was when enrolled; the current snapshot's copy wins when present.
    workload: Arc<Workload>,
    tracker: Arc<ConnectionTracker>,
}

impl PodInbound {
    fn current_workload(&self, snapshot: &MeshSnapshot) -> Arc<Workload> {
        snapshot
            .workload_by_uid(&self.workload.uid)
            .cloned()
            .unwrap_or_else(|| self.workload.clone())
    }

    /// Closes open connections that a config change denies.
    async fn enforce_policy_changes(self: Arc<Self>) {
        let this = self.clone();
        recheck_on_change(
            self.store.clone(),
            self.tracker.clone(),
            move |snapshot, _| Some(this.current_workload(snapshot)),
        )
        .await
    }
}

impl InboundTarget for PodInbound {
    fn authorize(&self, attrs: &TrackedAttrs) -> Result<(), Denial> {
        let snapshot = self.store.load();
        check_inbound(&snapshot, &self.current_workload(&snapshot), attrs)
    }

    fn snapshot(&self) -> Option<Arc<MeshSnapshot>> {
        Some(self.store.load())
    }

    fn tracker(&self) -> Option<&Arc<ConnectionTracker>> {
        Some(&self.tracker)
    }

    fn identity_for(&self, local: SocketAddr) -> Option<SpiffeId> {
        self.ips
            .contains(&local.ip())
            .then(|| self.identity.clone())
    }

    fn serves(&self, _local: SocketAddr, authority: SocketAddr) -> bool {
        self.ips.contains(&authority.ip())
    }

    fn connect_upstream(
        &self,
        client_ip: Option<IpAddr>,
        authority: SocketAddr,
    ) -> BoxFuture<'_, std::io::Result<TcpStream>> {
        Box::pin(async move {
            let socket = match client_ip {
                // Deliver from the client's own address, so the app sees who called it.
                Some(ip) if ip.is_ipv4() == authority.is_ipv4() => {
                    self.sockets.transparent_from(ip, authority)?
                }
                _ => weft::sockets::SocketFactory::tcp_socket(self.sockets.as_ref(), authority)?,
            };
            socket.connect(authority).await
        })
    }
}

/// The destination a redirected connection was headed for.
fn original_destination(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let socket = socket2::SockRef::from(stream);
    let local = stream.local_addr()?;
    let original = if local.is_ipv4() {
        socket.original_dst_v4()?
    } else {
        socket.original_dst_v6()?
    };
    original
        .as_socket()
        .ok_or_else(|| std::io::Error::other("original destination is not an IP socket address"))
}

async fn serve_outbound(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    outbound: Arc<OutboundProxy>,
    store: Arc<MeshStore>,
    workload: Arc<Workload>,
) {
    accept_gated(&listener, &mut stop, "outbound 15001", |client, peer, permit| {
        let _ = client.set_nodelay(true);
        let outbound = outbound.clone();
        let store = store.clone();
        let workload = workload.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let dst = match original_destination(&client) {
                Ok(dst) => dst,
                Err(error) => {
                    tracing::warn!(%peer, %error, "outbound connection without an original destination; closing");
                    return;
                }
            };
            let snapshot = store.load();
            // Boxed: the connect future (TLS handshake state) is large and is freed once the
            // connection is up, so a long-lived relay task stays small.
            let opened = Box::pin(outbound.connect(&snapshot, &workload, peer, dst)).await;
            drop(snapshot);
            match opened {
                Ok(opened) => {
                    tracing::debug!(%peer, %dst, route = ?opened.route, "outbound connection open");
                    opened.relay(client).await;
                }
                Err(error) => tracing::debug!(src = %peer, %dst, %error, "outbound connection failed"),
            }
        });
    })
    .await;
}

async fn serve_inbound_plaintext(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    inbound: Arc<PodInbound>,
) {
    accept_gated(&listener, &mut stop, "inbound 15006", |client, peer, permit| {
        let _ = client.set_nodelay(true);
        let inbound = inbound.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let dst = match original_destination(&client) {
                Ok(dst) => dst,
                Err(error) => {
                    tracing::warn!(%peer, %error, "inbound connection without an original destination; closing");
                    return;
                }
            };
            if OWN_PORTS.contains(&dst.port()) || !inbound.ips.contains(&dst.ip()) {
                tracing::info!(%peer, %dst, "refusing plaintext inbound to an address or port the app does not own");
                return;
            }
            let attrs = TrackedAttrs {
                peer: None,
                source: peer,
                destination: dst,
            };
            let mut report = {
                let snapshot = inbound.store.load();
                ConnectionReport::new(
                    Reporter::Destination,
                    peer,
                    dst,
                    WorkloadLabels::at(&snapshot, peer, None),
                    WorkloadLabels::shared(Some(&inbound.current_workload(&snapshot)), Some(&inbound.identity)),
                    None,
                    Security::None,
                )
            };
            if let Err(denial) = inbound.authorize(&attrs) {
                report.refused("DENY", &denial.reason, denial.policy.as_deref());
                return;
            }
            match Box::pin(inbound.connect_upstream(Some(peer.ip()), dst)).await {
                Ok(app) => {
                    let tracked = inbound.tracker.track(attrs);
                    let meter = report.opened();
                    let (totals, error) = copy_metered(client, app, meter, Some(&tracked)).await;
                    report.closed((totals.a_to_b, totals.b_to_a), error.as_ref());
                }
                Err(error) => report.refused("CONNECT", &format!("cannot reach the app: {error}"), None),
            }
        });
    })
    .await;
}
