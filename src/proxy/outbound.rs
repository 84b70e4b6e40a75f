//! Outbound: decides where a connection to an original destination goes, and opens it.
//!
//! A Service bound to a waypoint (`weft.dev/use-waypoint`) goes to one of the waypoint's
//! pods over HBONE with the Service `VIP:port` as the authority, and is refused when the
//! waypoint has no ready pod (never sent around it). Any other Service VIP is
//! load-balanced across the service's endpoints; an enrolled endpoint (or
//! an enrolled workload addressed directly) is reached over HBONE at `ip:15008` with the
//! authority `ip:targetPort`; a known but not enrolled one by plain TCP; an address the
//! model does not know is passed through untouched.
//!
//! A proxy never connects to itself: a target that is loopback, unspecified, one of the
//! capture ports, or one of the daemon's own ports on the source's own address is refused
//! (counted in `weft_connections_refused_total{reason="loop"}`) wherever the route came
//! from, so one connection cannot chain into thousands.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::l4::{self, Authorize, Connect, Downstream, Refusal};
use super::tracker::TrackedAttrs;
use crate::dataplane::{HBONE_PORT, OWN_PORTS};
use crate::hbone::client::HboneError;
use crate::hbone::{ConnectRequest, H2Stream, HboneClient};
use crate::identity::SpiffeId;
use crate::model::waypoints::{NoWaypoint, WaypointTarget};
use crate::model::{MeshSnapshot, Workload};
use crate::telemetry::{
    ConnectionId, ConnectionReport, Reporter, ResponseFlag, Security, WorkloadLabels,
};

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
    /// The SPIFFE ID the destination's HBONE server must prove (the chosen workload's).
    pub destination_identity: SpiffeId,
    /// Where the tunnel is opened: the chosen endpoint's IP at port 15008.
    pub hbone_addr: SocketAddr,
    /// The CONNECT authority: the chosen endpoint's `ip:targetPort` (for a VIP, the
    /// endpoint's target port, not the service port dialled).
    pub authority: SocketAddr,
    /// The destination workload as `namespace/name`.
    pub destination_workload: String,
    /// The service as `namespace/name` when the client dialled a VIP; `None` when it
    /// addressed the workload directly.
    pub service: Option<String>,
    /// Other pods of the same waypoint, tried in order when the chosen one cannot be
    /// reached at all (its listener is gone: restarting, draining); empty for an endpoint.
    pub fallbacks: Vec<WaypointHop>,
}

/// One waypoint pod a bound Service's connection may go to.
#[derive(Debug, Clone, PartialEq)]
pub struct WaypointHop {
    /// The identity it must prove.
    pub destination_identity: SpiffeId,
    /// Its HBONE listener.
    pub hbone_addr: SocketAddr,
}

/// Why an outbound connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The client dialled a Service VIP on a port the service does not declare.
    #[error("service {service} has no port {port}")]
    NoServicePort {
        /// The service as `namespace/name`.
        service: String,
        /// The port dialled on the VIP.
        port: u16,
    },
    /// The service declares the port, but no endpoint has a target port for it.
    #[error("service {service} port {port} has no ready endpoints")]
    NoEndpoints {
        /// The service as `namespace/name`.
        service: String,
        /// The port dialled on the VIP.
        port: u16,
    },
    /// A workload's SPIFFE ID (source, or an enrolled destination) could not be formed
    /// from its namespace and service account.
    #[error("workload {workload} has an invalid identity: {reason}")]
    BadIdentity {
        /// The workload as `namespace/name`.
        workload: String,
        /// Why the SPIFFE ID is invalid.
        reason: String,
    },
    /// The Service is bound to a waypoint that cannot take traffic: refused, never sent
    /// around the waypoint.
    #[error(transparent)]
    NoWaypoint(#[from] NoWaypoint),
    /// A waypoint endpoint is not a pod the model knows, so its identity cannot be checked.
    #[error("waypoint {waypoint} endpoint {ip} is not a known pod; its identity cannot be verified, so the connection is refused")]
    UnknownWaypointPod {
        /// The waypoint Service, `namespace/name`.
        waypoint: String,
        /// The endpoint's IP.
        ip: IpAddr,
    },
    /// The HBONE tunnel could not be opened; a 401 from the destination's proxy is a
    /// policy denial (response flag `DENY`).
    #[error(transparent)]
    Hbone(#[from] HboneError),
    /// The target is this proxy itself (see [`loop_reason`]); refused before connecting.
    #[error("refusing to connect to {addr}: it is this proxy itself ({why})")]
    Loop {
        /// The refused target (for a tunnel, its authority).
        addr: SocketAddr,
        /// Why it loops, as [`loop_reason`] names it.
        why: &'static str,
    },
    /// The plain TCP connect of a `Direct` or `Passthrough` route failed.
    #[error("plain TCP connect to {addr} failed: {source}")]
    Connect {
        /// The address dialled.
        addr: SocketAddr,
        /// The connect error.
        source: io::Error,
    },
}

impl Refusal for ProxyError {
    fn flag(&self) -> ResponseFlag {
        match self {
            ProxyError::Loop { .. } => ResponseFlag::Loop,
            // The destination's proxy denied the stream by policy.
            ProxyError::Hbone(HboneError::Status { status, .. })
                if *status == http::StatusCode::UNAUTHORIZED =>
            {
                ResponseFlag::Deny
            }
            _ => ResponseFlag::Connect,
        }
    }

    fn policy(&self) -> Option<&str> {
        None
    }
}

/// An opened outbound connection of either kind.
pub enum Upstream {
    /// An HBONE CONNECT stream to the destination's proxy.
    Tunnel(H2Stream),
    /// A plain TCP connection straight to the destination.
    Plain(TcpStream),
}

/// One outbound connection, routed against a snapshot and reported, ready to run the
/// [`l4`] sequence (the loop check, the upstream connect, the copy).
pub struct OutboundConnection {
    report: ConnectionReport,
    attrs: TrackedAttrs,
    steps: OutboundSteps,
}

impl OutboundConnection {
    /// Where routing sends it (or why it cannot be routed).
    pub fn route(&self) -> Result<&Route, &ProxyError> {
        self.steps.route.as_ref()
    }

    /// Runs the sequence: refuses a loop, opens the upstream, answers the client through
    /// `downstream` and copies bytes until both sides finish.
    pub async fn relay<D: Downstream<ProxyError>>(self, downstream: D) {
        l4::run(self.report, self.attrs, None, self.steps, downstream).await
    }
}

/// The authorize step of an outbound connection: its route, unless it loops.
struct OutboundSteps {
    proxy: Arc<OutboundProxy>,
    source: Arc<Workload>,
    route: Result<Route, ProxyError>,
}

impl Authorize for OutboundSteps {
    type Connect = OutboundConnect;

    fn authorize(self, attrs: &TrackedAttrs) -> Result<OutboundConnect, ProxyError> {
        let route = self
            .route
            .and_then(|route| self.proxy.refuse_loops(route, &self.source))
            .inspect_err(|error| {
                if matches!(error, ProxyError::Loop { .. }) {
                    metrics::counter!(crate::telemetry::registry::CONNECTIONS_REFUSED, "reason" => "loop")
                        .increment(1);
                }
            })?;
        Ok(OutboundConnect {
            proxy: self.proxy,
            source: self.source,
            client: attrs.source.ip(),
            route,
        })
    }
}

/// The connect step of an outbound connection: an HBONE tunnel or plain TCP.
struct OutboundConnect {
    proxy: Arc<OutboundProxy>,
    source: Arc<Workload>,
    /// The captured client's address: the `forwarded: for=` of a tunnel (the workload's
    /// IPs may not be in the model yet when its proxy started).
    client: IpAddr,
    route: Route,
}

impl Connect for OutboundConnect {
    type Upstream = Upstream;
    type Error = ProxyError;

    async fn connect(self) -> Result<Upstream, ProxyError> {
        tracing::debug!(route = ?self.route, "outbound connection");
        let source_id = self.proxy.identity_of(&self.source);
        self.proxy
            .open(&self.source, self.client, source_id, &self.route)
            .await
    }
}

/// Routes and opens outbound connections against the current mesh snapshot.
pub struct OutboundProxy {
    hbone: Arc<HboneClient>,
    trust_domain: String,
    next_endpoint: AtomicUsize,
    /// Ports this daemon listens on besides [`OWN_PORTS`] (e.g. the SOCKS5 port).
    extra_own_ports: Vec<u16>,
}

/// Capture ports: nothing legitimate is ever reached on them by plain TCP.
const CAPTURE_PORTS: [u16; 2] = [
    crate::dataplane::OUTBOUND_CAPTURE_PORT,
    crate::dataplane::INBOUND_PLAINTEXT_PORT,
];

/// Why `target` would loop back into this proxy, if it would.
///
/// `source_ips` are the addresses of the workload the connection is made for: the daemon's
/// own listeners live on them (in pods mode inside the pod, in host mode on the host).
pub fn loop_reason(
    target: SocketAddr,
    source_ips: &[IpAddr],
    extra_own_ports: &[u16],
) -> Option<&'static str> {
    let ip = target.ip();
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        IpAddr::V4(_) => ip,
    };
    if ip.is_loopback() {
        return Some("loopback address");
    }
    if ip.is_unspecified() {
        return Some("unspecified address");
    }
    if CAPTURE_PORTS.contains(&target.port()) {
        return Some("capture port");
    }
    let own_port = OWN_PORTS.contains(&target.port()) || extra_own_ports.contains(&target.port());
    if own_port && source_ips.contains(&ip) {
        return Some("own port on the source's own address");
    }
    None
}

impl OutboundProxy {
    /// A proxy that opens tunnels with `hbone` and derives SPIFFE IDs in `trust_domain`;
    /// only [`OWN_PORTS`] count as its own ports.
    pub fn new(hbone: Arc<HboneClient>, trust_domain: String) -> Arc<Self> {
        Arc::new(OutboundProxy {
            hbone,
            trust_domain,
            next_endpoint: AtomicUsize::new(0),
            extra_own_ports: Vec::new(),
        })
    }

    /// The same proxy, also treating `ports` as its own (refused as loop targets).
    pub fn with_own_ports(
        hbone: Arc<HboneClient>,
        trust_domain: String,
        ports: Vec<u16>,
    ) -> Arc<Self> {
        Arc::new(OutboundProxy {
            hbone,
            trust_domain,
            next_endpoint: AtomicUsize::new(0),
            extra_own_ports: ports,
        })
    }

    /// The HBONE client tunnels are opened with (its socket factory also makes the plain
    /// TCP connections).
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
                if let Some(waypoint) = snapshot.waypoint_for(service)? {
                    return self.via_waypoint(&waypoint, dst, name);
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
                    fallbacks: Vec::new(),
                })))
            }
            _ => Ok(Route::Direct(target)),
        }
    }

    /// A bound Service's connection goes to one of its waypoint's pods (round robin), over
    /// HBONE with the Service `VIP:port` kept as the authority; the waypoint must prove
    /// its pod's identity.
    fn via_waypoint(
        &self,
        waypoint: &WaypointTarget<'_>,
        dst: SocketAddr,
        service: String,
    ) -> Result<Route, ProxyError> {
        let pick = self.next_endpoint.fetch_add(1, Ordering::Relaxed) % waypoint.pods.len();
        let waypoint_name = format!("{}/{}", waypoint.service.namespace, waypoint.service.name);
        // The chosen pod first, then the others in order.
        let mut hops = Vec::with_capacity(waypoint.pods.len());
        let mut chosen_workload = None;
        for offset in 0..waypoint.pods.len() {
            let pod = &waypoint.pods[(pick + offset) % waypoint.pods.len()];
            let Some(workload) = pod.workload else {
                return Err(ProxyError::UnknownWaypointPod {
                    waypoint: waypoint_name,
                    ip: pod.ip,
                });
            };
            if offset == 0 {
                chosen_workload = Some(format!("{}/{}", workload.namespace, workload.name));
            }
            hops.push(WaypointHop {
                destination_identity: self.identity_of(workload)?,
                hbone_addr: SocketAddr::new(pod.ip, HBONE_PORT),
            });
        }
        let first = hops.remove(0);
        Ok(Route::Hbone(Box::new(ConnectRequestPlan {
            destination_identity: first.destination_identity,
            hbone_addr: first.hbone_addr,
            authority: dst,
            destination_workload: chosen_workload.unwrap_or(waypoint_name),
            service: Some(service),
            fallbacks: hops,
        })))
    }

    /// Routes `dst` for `source` (whose client is at `client`) against `snapshot` and
    /// reports it; nothing is opened until [`OutboundConnection::relay`]. A failure is
    /// reported with response flag `LOOP`, `DENY` (the destination's policy answered 401)
    /// or `CONNECT`.
    pub fn prepare(
        self: &Arc<Self>,
        snapshot: &MeshSnapshot,
        source: &Arc<Workload>,
        client: SocketAddr,
        dst: SocketAddr,
        id: ConnectionId,
    ) -> OutboundConnection {
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
            id,
            Reporter::Source,
            client,
            dst,
            source_labels,
            destination,
            service,
            security,
        );
        OutboundConnection {
            report,
            attrs: TrackedAttrs {
                peer: None,
                source: client,
                destination: dst,
            },
            steps: OutboundSteps {
                proxy: self.clone(),
                source: source.clone(),
                route,
            },
        }
    }

    /// Passes `route` unless its target is this proxy itself.
    fn refuse_loops(&self, route: Route, source: &Workload) -> Result<Route, ProxyError> {
        let target = match &route {
            Route::Hbone(plan) => plan.authority,
            Route::Direct(addr) | Route::Passthrough(addr) => *addr,
        };
        match loop_reason(target, &source.ips, &self.extra_own_ports) {
            Some(why) => Err(ProxyError::Loop { addr: target, why }),
            None => Ok(route),
        }
    }

    /// Opens the connection a route describes, on behalf of `source` (whose identity is
    /// `source_id`; only a tunnel needs it).
    async fn open(
        &self,
        source: &Workload,
        client: IpAddr,
        source_id: Result<SpiffeId, ProxyError>,
        route: &Route,
    ) -> Result<Upstream, ProxyError> {
        match route {
            Route::Hbone(plan) => {
                let mut request = ConnectRequest {
                    source: source_id?,
                    destination_identity: plan.destination_identity.clone(),
                    hbone_addr: plan.hbone_addr,
                    authority: plan.authority,
                    forwarded_for: if client.is_ipv4() == plan.authority.ip().is_ipv4() {
                        Some(client)
                    } else {
                        same_family_ip(source, plan.authority.ip())
                    },
                };
                let mut fallbacks = plan.fallbacks.iter();
                loop {
                    match self.hbone.connect(&request).await {
                        Ok(stream) => return Ok(Upstream::Tunnel(stream)),
                        // Nothing listens there (a waypoint pod restarting or draining):
                        // the next pod of the same waypoint, never around the waypoint.
                        Err(
                            error @ (HboneError::Connect { .. } | HboneError::ConnectTimeout(_)),
                        ) => match fallbacks.next() {
                            Some(next) => {
                                tracing::debug!(%error, next = %next.hbone_addr, "waypoint pod unreachable; trying the next");
                                request.destination_identity = next.destination_identity.clone();
                                request.hbone_addr = next.hbone_addr;
                            }
                            None => return Err(error.into()),
                        },
                        Err(error) => return Err(error.into()),
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loop_targets_are_named() {
        let own: Vec<IpAddr> = vec!["10.1.0.5".parse().unwrap()];
        assert_eq!(
            loop_reason(addr("127.0.0.1:15001"), &own, &[]),
            Some("loopback address")
        );
        assert_eq!(
            loop_reason(addr("127.0.0.7:8080"), &own, &[]),
            Some("loopback address")
        );
        assert_eq!(
            loop_reason(addr("[::ffff:127.0.0.1]:80"), &own, &[]),
            Some("loopback address")
        );
        assert_eq!(
            loop_reason(addr("[::1]:80"), &own, &[]),
            Some("loopback address")
        );
        assert_eq!(
            loop_reason(addr("0.0.0.0:80"), &own, &[]),
            Some("unspecified address")
        );
        assert_eq!(
            loop_reason(addr("10.9.9.9:15006"), &own, &[]),
            Some("capture port")
        );
        assert_eq!(
            loop_reason(addr("10.1.0.5:15008"), &own, &[]),
            Some("own port on the source's own address")
        );
        assert_eq!(
            loop_reason(addr("10.1.0.5:15080"), &own, &[15080]),
            Some("own port on the source's own address")
        );
    }

    #[test]
    fn ordinary_targets_pass() {
        let own: Vec<IpAddr> = vec!["10.1.0.5".parse().unwrap()];
        assert_eq!(loop_reason(addr("10.1.0.5:8080"), &own, &[]), None);
        assert_eq!(loop_reason(addr("10.2.0.7:15008"), &own, &[]), None);
        assert_eq!(loop_reason(addr("10.2.0.7:15080"), &own, &[15080]), None);
    }
}
