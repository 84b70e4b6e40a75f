//! Pods mode's inbound target: one enrolled pod, served by HBONE and plaintext listeners
//! inside its network namespace. Streams for any of the pod's addresses are served; the
//! pod's current policies decide; the app is reached from the client's own address (a
//! transparent socket inside the pod's namespace), so it sees who called it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpSocket, TcpStream};

use super::inbound::{enforce_policy_changes, serve_hbone, InboundTarget};
use super::tracker::ConnectionTracker;
use crate::hbone::server::BoxFuture;
use crate::hbone::{InboundRequest, Responder, StreamHandler};
use crate::identity::SpiffeId;
use crate::model::{MeshSnapshot, MeshStore, Workload};
use crate::sockets::SocketFactory;

/// Sockets inside a pod's network namespace, including ones bound to a foreign (client)
/// address for delivering inbound connections.
pub trait TransparentSockets: SocketFactory {
    /// An unconnected socket bound to `client`, for reaching `remote` as if the client had
    /// connected directly.
    fn transparent_from(&self, client: IpAddr, remote: SocketAddr) -> io::Result<TcpSocket>;
}

/// One enrolled pod as an HBONE and plaintext inbound target.
pub struct PodInbound {
    identity: SpiffeId,
    ips: Vec<IpAddr>,
    sockets: Arc<dyn TransparentSockets>,
    store: Arc<MeshStore>,
    /// The pod as it was when enrolled; the current snapshot's copy wins when present.
    workload: Arc<Workload>,
    tracker: Arc<ConnectionTracker>,
}

impl PodInbound {
    /// The target for the pod `workload` (as enrolled), presenting `identity` on its
    /// addresses `ips`; `sockets` make the app-side sockets inside the pod's network
    /// namespace. Called once per pod when its listeners are opened.
    pub fn new(
        identity: SpiffeId,
        ips: Vec<IpAddr>,
        sockets: Arc<dyn TransparentSockets>,
        store: Arc<MeshStore>,
        workload: Arc<Workload>,
    ) -> Arc<Self> {
        Arc::new(PodInbound {
            identity,
            ips,
            sockets,
            store,
            workload,
            tracker: ConnectionTracker::new(),
        })
    }

    fn current_workload(&self, snapshot: &MeshSnapshot) -> Arc<Workload> {
        snapshot
            .workload_by_uid(&self.workload.uid)
            .cloned()
            .unwrap_or_else(|| self.workload.clone())
    }

    /// Closes open connections that a config change denies; runs until the store is gone.
    pub async fn enforce_policy_changes(self: Arc<Self>) {
        enforce_policy_changes(self).await
    }
}

// === impl PodInbound ===

impl StreamHandler for PodInbound {
    fn identity_for(&self, local: SocketAddr) -> Option<SpiffeId> {
        self.ips
            .contains(&local.ip())
            .then(|| self.identity.clone())
    }

    fn serves(&self, _local: SocketAddr, authority: SocketAddr) -> bool {
        self.ips.contains(&authority.ip())
    }

    fn handle(
        self: Arc<Self>,
        request: InboundRequest,
        responder: Responder,
    ) -> BoxFuture<'static, ()> {
        Box::pin(serve_hbone(self, request, responder))
    }
}

impl InboundTarget for PodInbound {
    type Upstream = TcpStream;

    fn store(&self) -> &Arc<MeshStore> {
        &self.store
    }

    /// This pod, whatever address of it the connection reached (`serves` admits only those).
    fn policy_workload(
        &self,
        snapshot: &MeshSnapshot,
        _destination: SocketAddr,
    ) -> Option<Arc<Workload>> {
        Some(self.current_workload(snapshot))
    }

    fn tracker(&self) -> &Arc<ConnectionTracker> {
        &self.tracker
    }

    fn connect_upstream(
        &self,
        client: IpAddr,
        authority: SocketAddr,
    ) -> BoxFuture<'_, io::Result<TcpStream>> {
        Box::pin(async move {
            let socket = if client.is_ipv4() == authority.is_ipv4() {
                // Deliver from the client's own address, so the app sees who called it.
                self.sockets.transparent_from(client, authority)?
            } else {
                self.sockets.tcp_socket(authority)?
            };
            socket.set_nodelay(true)?;
            socket.connect(authority).await
        })
    }
}
