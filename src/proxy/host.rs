//! Host mode's inbound target: the workloads whose IPs sit on this network namespace's own
//! interfaces are served here, each with its own identity; a stream may only reach the
//! workload its connection authenticated as, its policies decide, and the application is
//! reached by a plain local TCP connection.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpStream;

use super::inbound::{enforce_policy_changes, serve_hbone, InboundTarget};
use super::tracker::ConnectionTracker;
use crate::hbone::server::BoxFuture;
use crate::hbone::{InboundRequest, Responder, StreamHandler};
use crate::identity::SpiffeId;
use crate::model::{MeshSnapshot, MeshStore, Workload};

/// The workloads of one host (VM or bare metal).
pub struct HostWorkloads {
    store: Arc<MeshStore>,
    tracker: Arc<ConnectionTracker>,
    local_ips: ArcSwap<HashSet<IpAddr>>,
    trust_domain: String,
}

impl HostWorkloads {
    /// The workloads of this host under `store`'s config, with identities in
    /// `trust_domain`; reads the interface addresses once (see
    /// [`HostWorkloads::refresh_local_ips`]).
    pub fn new(store: Arc<MeshStore>, trust_domain: String) -> Arc<Self> {
        let host = Arc::new(HostWorkloads {
            store,
            tracker: ConnectionTracker::new(),
            local_ips: ArcSwap::from_pointee(HashSet::new()),
            trust_domain,
        });
        host.refresh_local_ips();
        host
    }

    /// Re-reads the addresses of this network namespace's interfaces.
    pub fn refresh_local_ips(&self) {
        match local_interface_ips() {
            Ok(ips) => self.local_ips.store(Arc::new(ips)),
            Err(error) => {
                tracing::warn!(%error, "cannot list interface addresses; keeping the previous list")
            }
        }
    }

    /// The workloads this host serves right now (in the model and with a local IP).
    pub fn served(&self) -> Vec<Arc<Workload>> {
        let snapshot = self.store.load();
        let ips = self.local_ips.load();
        snapshot
            .workloads()
            .filter(|w| Self::is_local(w, &ips))
            .cloned()
            .collect()
    }

    /// The workload local clients (SOCKS5) act as: the first one served, by namespace/name.
    pub fn source_workload(&self) -> Option<Arc<Workload>> {
        let snapshot = self.store.load();
        let ips = self.local_ips.load();
        let found = snapshot
            .workloads()
            .find(|w| Self::is_local(w, &ips))
            .cloned();
        found
    }

    fn is_local(workload: &Workload, ips: &HashSet<IpAddr>) -> bool {
        !workload.host_network && workload.ips.iter().any(|ip| ips.contains(ip))
    }

    fn local_workload(&self, ip: IpAddr) -> Option<Arc<Workload>> {
        if !self.local_ips.load().contains(&ip) {
            return None;
        }
        self.store.load().workload_by_ip(ip).cloned()
    }

    /// Closes open connections that a config change denies; runs until the store is gone.
    pub async fn enforce_policy_changes(self: Arc<Self>) {
        enforce_policy_changes(self).await
    }

    /// The SPIFFE ID of a workload in this trust domain.
    pub fn identity_of(&self, workload: &Workload) -> Option<SpiffeId> {
        workload.spiffe_id(&self.trust_domain).ok()
    }
}

// === impl HostWorkloads ===

impl StreamHandler for HostWorkloads {
    fn identity_for(&self, local: SocketAddr) -> Option<SpiffeId> {
        let workload = self.local_workload(local.ip())?;
        self.identity_of(&workload)
    }

    fn serves(&self, local: SocketAddr, authority: SocketAddr) -> bool {
        // Only the workload whose identity this connection proved may be reached through it.
        match (
            self.local_workload(local.ip()),
            self.local_workload(authority.ip()),
        ) {
            (Some(dialled), Some(target)) => dialled.uid == target.uid,
            _ => false,
        }
    }

    fn handle(
        self: Arc<Self>,
        request: InboundRequest,
        responder: Responder,
    ) -> BoxFuture<'static, ()> {
        Box::pin(serve_hbone(self, request, responder))
    }
}

impl InboundTarget for HostWorkloads {
    type Upstream = TcpStream;

    fn store(&self) -> &Arc<MeshStore> {
        &self.store
    }

    fn policy_workload(
        &self,
        snapshot: &MeshSnapshot,
        destination: SocketAddr,
    ) -> Option<Arc<Workload>> {
        snapshot.workload_by_ip(destination.ip()).cloned()
    }

    fn tracker(&self) -> &Arc<ConnectionTracker> {
        &self.tracker
    }

    fn connect_upstream(
        &self,
        _client: IpAddr,
        authority: SocketAddr,
    ) -> BoxFuture<'_, io::Result<TcpStream>> {
        Box::pin(async move {
            let stream = TcpStream::connect(authority).await?;
            stream.set_nodelay(true)?;
            Ok(stream)
        })
    }
}

/// Addresses on this network namespace's interfaces.
pub fn local_interface_ips() -> Result<HashSet<IpAddr>, nix::Error> {
    let mut ips = HashSet::new();
    for interface in nix::ifaddrs::getifaddrs()? {
        let Some(address) = interface.address else {
            continue;
        };
        if let Some(v4) = address.as_sockaddr_in() {
            ips.insert(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = address.as_sockaddr_in6() {
            ips.insert(IpAddr::V6(v6.ip()));
        }
    }
    Ok(ips)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse_and_build;
    use crate::proxy::inbound::authorize;
    use crate::proxy::tracker::TrackedAttrs;

    const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {weft.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: demo}
spec: {serviceAccountName: server, nodeName: node-1}
status: {podIP: 10.1.0.5}
"#;

    fn attrs(destination: &str) -> TrackedAttrs {
        TrackedAttrs {
            peer: None,
            source: "10.9.0.1:40000".parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    #[test]
    fn a_destination_that_is_no_workload_is_denied() {
        let store = Arc::new(MeshStore::new(parse_and_build(MESH).unwrap()));
        let host = HostWorkloads::new(store, "cluster.local".into());
        // No policy at all: a known workload is allowed, an unknown address is not.
        assert_eq!(authorize(host.as_ref(), &attrs("10.1.0.5:8080")), Ok(()));
        let denial = authorize(host.as_ref(), &attrs("10.1.0.6:8080")).unwrap_err();
        assert_eq!(denial.policy, None);
        assert!(
            denial.reason.contains("not a workload"),
            "{}",
            denial.reason
        );
    }
}
