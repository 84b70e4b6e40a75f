//! Outbound: decides where a connection to an original destination goes, and opens it.
//!
//! A Service VIP is load-balanced across the service's endpoints; an enrolled endpoint (or
//! an enrolled workload addressed directly) is reached over HBONE at `ip:15008` with the
//! authority `ip:targetPort`; a known but not enrolled one by plain TCP; an address the
//! model does not know is passed through untouched.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::hbone::client::HboneError;
use crate::hbone::{ConnectRequest, H2Stream, HboneClient, HBONE_PORT};
use crate::identity::SpiffeId;
use crate::model::{MeshSnapshot, Workload};
use crate::proxy::copy::copy_metered;
use crate::telemetry::{ConnectionReport, Reporter, Security, WorkloadLabels};

/// Where one outbound connection goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// Through the mesh tunnel.
    Hbone(Box<ConnectRequestPlan>),
    /// A known workload outside the mesh: plain TCP to the chosen address.
    Direct(SocketAddr),
    /// An address the mesh knows nothing about: plain TCP, unchanged.
    Passthrough(SocketAddr),
}

/// The parts of an HBONE connect decided by routing.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectRequestPlan {
    pub destination_identity: SpiffeId,
    pub hbone_addr: SocketAddr,
    pub authority: SocketAddr,
    pub destination_workload: String,
    pub service: Option<String>,
}

/// Why an outbound connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("service {service} has no port {port}")]
    NoServicePort { service: String, port: u16 },
    #[error("service {service} port {port} has no ready endpoints")]
    NoEndpoints { service: String, port: u16 },
    #[error("destination workload {workload} has an invalid identity: {reason}")]
    BadIdentity { workload: String, reason: String },
    #[error(transparent)]
    Hbone(#[from] HboneError),
    #[error("plain TCP connect to {addr} failed: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
}

/// An opened outbound connection of either kind.
pub enum Upstream {
    Tunnel(H2Stream),
    Plain(TcpStream),
}

/// An opened outbound connection with its telemetry, ready to relay the client's bytes.
pub struct OutboundConnection {
    pub route: Route,
    upstream: Upstream,
    report: ConnectionReport,
}

impl OutboundConnection {
    /// Copies bytes between the client and the upstream until both sides finish, counting
    /// them as they move; reports the close.
    pub async fn relay(self, client: TcpStream) {
        let OutboundConnection {
            route,
            upstream,
            mut report,
        } = self;
        // Not needed while bytes flow: keep long-lived connections small.
        drop(route);
        let meter = report.opened();
        let (totals, error) = copy_metered(client, upstream, meter, None).await;
        report.closed((totals.a_to_b, totals.b_to_a), error.as_ref());
    }
}

/// Routes and opens outbound connections against the current mesh snapshot.
pub struct OutboundProxy {
    hbone: Arc<HboneClient>,
    trust_domain: String,
    next_endpoint: AtomicUsize,
}

impl OutboundProxy {
    pub fn new(hbone: Arc<HboneClient>, trust_domain: String) -> Arc<Self> {
        Arc::new(OutboundProxy {
            hbone,
            trust_domain,
            next_endpoint: AtomicUsize::new(0),
        })
    }

    pub fn hbone(&self) -> &Arc<HboneClient> {
        &self.hbone
    }

    /// The SPIFFE ID of a workload in this mesh's trust domain.
    pub fn identity_of(&self, workload: &Workload) -> Result<SpiffeId, ProxyError> {
        workload
            .spiffe_id(&self.trust_domain)
            .map_err(|e| ProxyError::BadIdentity {
                workload: format!("{}/{}", workload.namespace, workload.name),
                reason: e.to_string(),
            })
    }

    /// Decides where a connection to `dst` goes.
    pub fn route(&self, snapshot: &MeshSnapshot, dst: SocketAddr) -> Result<Route, ProxyError> {
        let (target, workload, service) = match snapshot.service_by_vip(dst.ip()) {
            Some(service) => {
                let name = format!("{}/{}", service.namespace, service.name);
                if service.port(dst.port()).is_none() {
                    return Err(ProxyError::NoServicePort {
                        service: name,
                        port: dst.port(),
                    });
                }
                let candidates: Vec<(SocketAddr, Option<&String>)> = service
                    .endpoints
                    .iter()
                    .filter_map(|ep| {
                        ep.target_ports
                            .get(&dst.port())
                            .map(|port| (SocketAddr::new(ep.ip, *port), ep.workload_uid.as_ref()))
                    })
                    .collect();
                if candidates.is_empty() {
                    return Err(ProxyError::NoEndpoints {
                        service: name,
                        port: dst.port(),
                    });
                }
                // Round robin across endpoints: spreads load evenly and predictably.
                let pick = self.next_endpoint.fetch_add(1, Ordering::Relaxed) % candidates.len();
                let (target, uid) = candidates[pick];
                let workload = uid
                    .and_then(|uid| snapshot.workload_by_uid(uid))
                    .or_else(|| snapshot.workload_by_ip(target.ip()))
                    .cloned();
                (target, workload, Some(name))
            }
            None => match snapshot.workload_by_ip(dst.ip()) {
                Some(workload) => (dst, Some(workload.clone()), None),
                None => return Ok(Route::Passthrough(dst)),
            },
        };
        match workload {
            Some(workload) if workload.enrolled => {
                let destination_identity = self.identity_of(&workload)?;
                Ok(Route::Hbone(Box::new(ConnectRequestPlan {
                    destination_identity,
                    hbone_addr: SocketAddr::new(target.ip(), HBONE_PORT),
                    authority: target,
                    destination_workload: format!("{}/{}", workload.namespace, workload.name),
                    service,
                })))
            }
            _ => Ok(Route::Direct(target)),
        }
    }

    /// Routes `dst` for `source` (whose client is at `client`) and opens the upstream. A
    /// failure is reported (response flag `DENY` for a policy refusal, `CONNECT` otherwise)
    /// before it is returned.
    pub async fn connect(
        &self,
        snapshot: &MeshSnapshot,
        source: &Arc<Workload>,
        client: SocketAddr,
        dst: SocketAddr,
    ) -> Result<OutboundConnection, ProxyError> {
        let source_id = self.identity_of(source);
        let source_labels = WorkloadLabels::shared(Some(source), source_id.as_ref().ok());
        let service = snapshot.service_by_vip(dst.ip()).map(|s| s.hostname());
        let route = self.route(snapshot, dst);
        let (destination, security) = match &route {
            Ok(Route::Hbone(plan)) => (
                WorkloadLabels::at(snapshot, plan.authority, Some(&plan.destination_identity)),
                Security::MutualTls,
            ),
            Ok(Route::Direct(addr) | Route::Passthrough(addr)) => {
                (WorkloadLabels::at(snapshot, *addr, None), Security::None)
            }
            Err(_) => (WorkloadLabels::at(snapshot, dst, None), Security::None),
        };
        let report = ConnectionReport::new(
            Reporter::Source,
            client,
            dst,
            source_labels,
            destination,
            service,
            security,
        );
        let route = match route {
            Ok(route) => route,
            Err(error) => {
                report.refused("CONNECT", &error.to_string(), None);
                return Err(error);
            }
        };
        match self.open(source, source_id, &route).await {
            Ok(upstream) => Ok(OutboundConnection {
                route,
                upstream,
                report,
            }),
            Err(error) => {
                let denied = matches!(
                    &error,
                    ProxyError::Hbone(HboneError::Status { status, .. }) if *status == http::StatusCode::UNAUTHORIZED
                );
                report.refused(
                    if denied { "DENY" } else { "CONNECT" },
                    &error.to_string(),
                    None,
                );
                Err(error)
            }
        }
    }

    /// Opens the connection a route describes, on behalf of `source` (whose identity is
    /// `source_id`; only a tunnel needs it).
    async fn open(
        &self,
        source: &Workload,
        source_id: Result<SpiffeId, ProxyError>,
        route: &Route,
    ) -> Result<Upstream, ProxyError> {
        match route {
            Route::Hbone(plan) => {
                let request = ConnectRequest {
                    source: source_id?,
                    destination_identity: plan.destination_identity.clone(),
                    hbone_addr: plan.hbone_addr,
                    authority: plan.authority,
                    forwarded_for: same_family_ip(source, plan.authority.ip()),
                };
                Ok(Upstream::Tunnel(self.hbone.connect(&request).await?))
            }
            Route::Direct(addr) | Route::Passthrough(addr) => {
                let stream = crate::sockets::connect(self.hbone.sockets().as_ref(), *addr)
                    .await
                    .map_err(|source| ProxyError::Connect {
                        addr: *addr,
                        source,
                    })?;
                Ok(Upstream::Plain(stream))
            }
        }
    }
}

fn same_family_ip(workload: &Workload, like: IpAddr) -> Option<IpAddr> {
    workload
        .ips
        .iter()
        .find(|ip| ip.is_ipv4() == like.is_ipv4())
        .copied()
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Tunnel(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Tunnel(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Tunnel(s) => Pin::new(s).poll_flush(cx),
            Upstream::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Tunnel(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
