//! Inbound side of host mode: the workloads whose IPs sit on this network namespace's own
//! interfaces are served here, each with its own identity, and CONNECT streams reach the
//! application by a plain local TCP connection.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpStream;

use crate::hbone::server::{BoxFuture, InboundTarget};
use crate::identity::SpiffeId;
use crate::model::{MeshStore, Workload};
use crate::proxy::authz::{check_inbound, recheck_on_change};
use crate::proxy::tracker::{ConnectionTracker, Denial, TrackedAttrs};

/// The workloads of one host (VM or bare metal).
pub struct HostWorkloads {
    store: Arc<MeshStore>,
    tracker: Arc<ConnectionTracker>,
    local_ips: ArcSwap<HashSet<IpAddr>>,
    trust_domain: String,
}

impl HostWorkloads {
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
        let store = self.store.clone();
        let tracker = self.tracker.clone();
        recheck_on_change(store, tracker, move |snapshot, attrs| {
            snapshot.workload_by_ip(attrs.destination.ip()).cloned()
        })
        .await
    }

    /// The SPIFFE ID of a workload in this trust domain.
    pub fn identity_of(&self, workload: &Workload) -> Option<SpiffeId> {
        workload.spiffe_id(&self.trust_domain).ok()
    }
}

impl InboundTarget for HostWorkloads {
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

    fn authorize(&self, attrs: &TrackedAttrs) -> Result<(), Denial> {
        let snapshot = self.store.load();
        match snapshot.workload_by_ip(attrs.destination.ip()) {
            Some(workload) => check_inbound(&snapshot, workload, attrs),
            None => Err(Denial {
                policy: None,
                reason: "destination is not a workload in the mesh config".into(),
            }),
        }
    }

    fn snapshot(&self) -> Option<Arc<crate::model::MeshSnapshot>> {
        Some(self.store.load())
    }

    fn tracker(&self) -> Option<&Arc<ConnectionTracker>> {
        Some(&self.tracker)
    }

    fn connect_upstream(
        &self,
        _client_ip: Option<IpAddr>,
        authority: SocketAddr,
    ) -> BoxFuture<'_, std::io::Result<TcpStream>> {
        Box::pin(TcpStream::connect(authority))
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
