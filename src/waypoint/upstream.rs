//! Where the waypoint sends a request it forwards, and the HTTP connections it keeps to get
//! there. An endpoint that is enrolled in the mesh is reached through a new HBONE stream to
//! its node (`ip:15008`, authority `ip:targetPort`) presenting the waypoint's own identity
//! and requiring the endpoint's; one outside the mesh by plain TCP.
//!
//! Which endpoint serves a request is the [`Balancer`]'s choice (P2C over peak-EWMA, with
//! outlier ejection); what each attempt came to is reported back to it.
//!
//! HTTP/1.1 connections are pooled per backend Service and endpoint: a connection goes back to the pool when
//! its response body has been read to the end, so keep-alive works across requests and a
//! connection still busy is never shared. HTTP/2 (and gRPC) share one connection per
//! endpoint, multiplexed, replaced when it closes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::balancer::{Balancer, EndpointStats, OutlierConfig, Selection};
use super::circuit_breaker::{BackendGate, ConnectionPermit, Overflow};
use crate::dataplane::HBONE_PORT;
use crate::hbone::client::HboneError;
use crate::hbone::{ConnectRequest, HboneClient};
use crate::identity::SpiffeId;
use crate::model::traffic_policies::{DestinationPolicy, LoadBalancing};
use crate::model::{MeshSnapshot, Service, Workload};
pub use crate::proxy::outbound::Upstream as Connection;

/// The body type the waypoint sends and answers with.
pub type ProxyBody = BoxBody<Bytes, BodyError>;

/// An error reading a body: the client's or the upstream's.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 32;

/// Which HTTP version to speak to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamProtocol {
    /// HTTP/1.1, one request at a time per connection.
    Http1,
    /// HTTP/2 with prior knowledge (h2c), multiplexed.
    Http2,
}

/// One endpoint of a backend Service, and how to reach it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `ip:targetPort`: what the application listens on.
    pub addr: SocketAddr,
    /// The workload behind it, `namespace/name`, when known.
    pub workload: Option<Arc<Workload>>,
    /// The identity its node must prove, when it is enrolled (then the hop is HBONE).
    pub identity: Option<SpiffeId>,
    /// What the balancer knows of it; attempts report their outcome here.
    pub stats: Arc<EndpointStats>,
    /// When its backend ejects it.
    pub outlier: OutlierConfig,
}

/// Why a request could not be sent upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The backend Service port has no endpoint serving it.
    #[error("service {service} port {port} has no ready endpoint")]
    NoEndpoint {
        /// `namespace/name`.
        service: String,
        /// The Service port.
        port: u16,
    },
    /// The HBONE stream to the endpoint's node could not be opened.
    #[error("HBONE to {addr}: {source}")]
    Hbone {
        /// The endpoint.
        addr: SocketAddr,
        /// Why.
        source: Box<HboneError>,
    },
    /// The plain TCP connect failed.
    #[error("TCP connect to {addr}: {source}")]
    Connect {
        /// The endpoint.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP exchange with the endpoint failed.
    #[error("HTTP to {addr}: {source}")]
    Http {
        /// The endpoint.
        addr: SocketAddr,
        /// Why.
        source: hyper::Error,
    },
    /// The backend's DestinationPolicy limits turned the request away.
    #[error("circuit breaker: {0}")]
    Overflow(#[source] Overflow),
    /// The endpoint's workload has no valid identity in this trust domain.
    #[error("endpoint {workload} has an invalid identity: {reason}")]
    BadIdentity {
        /// `namespace/name`.
        workload: String,
        /// Why.
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    addr: SocketAddr,
    identity: Option<SpiffeId>,
    protocol: UpstreamProtocol,
    /// The backend Service (`namespace/name`) the connection serves: backends never share
    /// connections, so each one's connection limit holds.
    backend: Option<Arc<str>>,
}

/// A connection's place in its backend's connection limit: held by the connection's task,
/// its lease and its idle entry, freed by whichever ends it first (an evicted idle
/// connection frees it at once, before its task notices).
type SharedPermit = Arc<Mutex<Option<ConnectionPermit>>>;

fn free(permit: &SharedPermit) {
    permit.lock().unwrap_or_else(|e| e.into_inner()).take();
}

/// An idle HTTP/1.1 connection, and the backend whose connection limit it counts against.
struct IdleConnection {
    sender: http1::SendRequest<ProxyBody>,
    gate: Option<Arc<BackendGate>>,
    permit: SharedPermit,
}

type Idle = Mutex<HashMap<PoolKey, Vec<IdleConnection>>>;

/// Opens and pools the waypoint's connections to endpoints.
pub struct Upstreams {
    hbone: Arc<HboneClient>,
    own_identity: SpiffeId,
    trust_domain: String,
    idle_h1: Arc<Idle>,
    shared_h2: Mutex<HashMap<PoolKey, http2::SendRequest<ProxyBody>>>,
    balancer: Balancer,
    /// The round-robin turn.
    turn: AtomicUsize,
    /// The model snapshot the balancer's endpoints were last pruned against.
    pruned_for: Mutex<Weak<MeshSnapshot>>,
}

/// An upstream's answer to a request sent.
pub struct Sent {
    /// Its response head (and body to read).
    pub response: Response<Incoming>,
    /// The HTTP/1.1 connection it came on, to give back once the body is read.
    pub lease: Option<Lease>,
    /// When the request went out on a ready connection: latency counts from here, so a
    /// new connection's handshakes do not make an endpoint look slow.
    pub dispatched: Instant,
}

/// An HTTP/1.1 connection lent to one request, returned to the pool by
/// [`Lease::release`] once its response has been read to the end.
pub struct Lease {
    key: PoolKey,
    sender: http1::SendRequest<ProxyBody>,
    pool: Weak<Idle>,
    gate: Option<Arc<BackendGate>>,
    permit: SharedPermit,
}

// === impl Lease ===

impl Lease {
    /// The response was read to the end: the connection may serve another request.
    pub fn release(self) {
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        if self.sender.is_closed() {
            return;
        }
        let mut idle = pool.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(self.key).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(IdleConnection {
                sender: self.sender,
                gate: self.gate.clone(),
                permit: self.permit,
            });
        }
        drop(idle);
        if let Some(gate) = &self.gate {
            gate.connection_idle();
        }
    }
}

// === impl Upstreams ===

impl Upstreams {
    /// Connections presenting `own_identity` (the waypoint's), through `hbone`, to
    /// endpoints chosen by a balancer ejecting outliers as `outlier` says.
    pub fn new(
        hbone: Arc<HboneClient>,
        own_identity: SpiffeId,
        trust_domain: String,
        outlier: OutlierConfig,
    ) -> Self {
        Upstreams {
            hbone,
            own_identity,
            trust_domain,
            idle_h1: Arc::new(Mutex::new(HashMap::new())),
            shared_h2: Mutex::new(HashMap::new()),
            balancer: Balancer::new(outlier),
            turn: AtomicUsize::new(0),
            pruned_for: Mutex::new(Weak::new()),
        }
    }

    /// The balancer.
    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// Drops the balancer's stats of endpoints no longer in `snapshot`, once per snapshot.
    fn prune(&self, snapshot: &Arc<MeshSnapshot>) {
        let mut pruned = self.pruned_for.lock().unwrap_or_else(|e| e.into_inner());
        if pruned.upgrade().is_some_and(|p| Arc::ptr_eq(&p, snapshot)) {
            return;
        }
        *pruned = Arc::downgrade(snapshot);
        drop(pruned);
        let live: std::collections::HashSet<SocketAddr> = snapshot
            .services()
            .flat_map(|s| s.endpoints.iter())
            .flat_map(|ep| ep.target_ports.values().map(|t| SocketAddr::new(ep.ip, *t)))
            .collect();
        self.balancer.retain(|addr| live.contains(addr));
    }

    /// The ejection settings of a backend: the waypoint's, with its DestinationPolicy's
    /// `outlierDetection` over them.
    pub fn outlier_for(&self, policy: Option<&DestinationPolicy>) -> OutlierConfig {
        let mut outlier = *self.balancer.outlier();
        if let Some(policy) = policy {
            if let Some(n) = policy.consecutive_errors {
                outlier.consecutive_failures = n;
            }
            if let Some(base) = policy.base_ejection {
                outlier.base_ejection = base;
                outlier.max_ejection = outlier.max_ejection.max(base);
            }
            if let Some(percent) = policy.max_ejection_percent {
                outlier.max_ejected_share = f64::from(percent) / 100.0;
            }
        }
        outlier
    }

    /// Picks an endpoint of `service` for its `port` ([`Balancer::choose`], as its
    /// DestinationPolicy's `loadBalancer` says; `hash` is the request's consistent-hash key
    /// when the policy asks for one and the request has it), avoiding the endpoints in
    /// `tried` (a retry's earlier attempts) while there is another.
    pub fn pick(
        &self,
        snapshot: &Arc<MeshSnapshot>,
        service: &Service,
        port: u16,
        tried: &[SocketAddr],
        hash: Option<u64>,
    ) -> Result<Endpoint, UpstreamError> {
        let all: Vec<_> = service
            .endpoints
            .iter()
            .filter_map(|ep| ep.target_ports.get(&port).map(|target| (ep, *target)))
            .collect();
        if all.is_empty() {
            return Err(UpstreamError::NoEndpoint {
                service: format!("{}/{}", service.namespace, service.name),
                port,
            });
        }
        self.prune(snapshot);
        let addrs: Vec<SocketAddr> = all
            .iter()
            .map(|(ep, target)| SocketAddr::new(ep.ip, *target))
            .collect();
        let policy = snapshot.destination_policy(&service.namespace, &service.name);
        let least_request = || Selection::LeastRequest(rand::random(), rand::random());
        let selection = match policy.map(|p| p.load_balancing) {
            Some(LoadBalancing::RoundRobin) => {
                Selection::RoundRobin(self.turn.fetch_add(1, Ordering::Relaxed))
            }
            Some(LoadBalancing::ConsistentHash) => hash.map_or_else(least_request, Selection::Hash),
            Some(LoadBalancing::LeastRequest) | None => least_request(),
        };
        let outlier = self.outlier_for(policy.map(|p| &**p));
        let chosen = self
            .balancer
            .choose(&addrs, tried, selection, &outlier)
            .unwrap_or(0);
        let (ep, target) = all[chosen];
        let workload = ep
            .workload_uid
            .as_deref()
            .and_then(|uid| snapshot.workload_by_uid(uid))
            .or_else(|| snapshot.workload_by_ip(ep.ip))
            .cloned();
        let identity =
            match &workload {
                Some(w) if w.enrolled => Some(w.spiffe_id(&self.trust_domain).map_err(|e| {
                    UpstreamError::BadIdentity {
                        workload: format!("{}/{}", w.namespace, w.name),
                        reason: e.to_string(),
                    }
                })?),
                _ => None,
            };
        let addr = SocketAddr::new(ep.ip, target);
        Ok(Endpoint {
            addr,
            workload,
            identity,
            stats: self.balancer.stats(addr),
            outlier,
        })
    }

    /// Sends `request` to `endpoint` over `protocol`, within `gate`'s connection limit
    /// when there is one (`dispatched` turns true once it goes out on a connection, past
    /// any wait for one); for HTTP/1.1 also returns the connection's lease, to release when
    /// the response body has ended.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        protocol: UpstreamProtocol,
        request: Request<ProxyBody>,
        gate: Option<&Arc<BackendGate>>,
        dispatched: Option<&AtomicBool>,
    ) -> Result<Sent, UpstreamError> {
        let key = PoolKey {
            addr: endpoint.addr,
            identity: endpoint.identity.clone(),
            protocol,
            backend: gate.map(|g| g.service()),
        };
        let http = |source| UpstreamError::Http {
            addr: endpoint.addr,
            source,
        };
        match protocol {
            UpstreamProtocol::Http1 => {
                let (mut sender, permit) = loop {
                    if let Some(idle) = self.idle_h1_connection(&key) {
                        break (idle.sender, idle.permit);
                    }
                    let permit = match gate {
                        Some(gate) => match self.connection_permit(gate, &key).await? {
                            Some(permit) => Some(permit),
                            None => continue,
                        },
                        None => None,
                    };
                    let permit: SharedPermit = Arc::new(Mutex::new(permit));
                    let io = self.open(endpoint).await?;
                    let (sender, connection) = http1::handshake(io).await.map_err(http)?;
                    let held = permit.clone();
                    tokio::spawn(async move {
                        if let Err(error) = connection.await {
                            tracing::debug!(%error, "upstream HTTP/1.1 connection ended");
                        }
                        free(&held);
                    });
                    break (sender, permit);
                };
                sender.ready().await.map_err(http)?;
                if let Some(flag) = dispatched {
                    flag.store(true, Ordering::Release);
                }
                let dispatched = Instant::now();
                let response = sender.send_request(request).await.map_err(http)?;
                let lease = Lease {
                    key,
                    sender,
                    pool: Arc::downgrade(&self.idle_h1),
                    gate: gate.cloned(),
                    permit,
                };
                Ok(Sent {
                    response,
                    lease: Some(lease),
                    dispatched,
                })
            }
            UpstreamProtocol::Http2 => {
                let mut sender = match self.shared_h2_sender(&key) {
                    Some(sender) => sender,
                    None => {
                        let permit = match gate {
                            Some(gate) => self.connection_permit(gate, &key).await?,
                            None => None,
                        };
                        let io = self.open(endpoint).await?;
                        let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                            .await
                            .map_err(http)?;
                        tokio::spawn(async move {
                            let _counted = permit;
                            if let Err(error) = connection.await {
                                tracing::debug!(%error, "upstream HTTP/2 connection ended");
                            }
                        });
                        self.shared_h2
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(key, sender.clone());
                        sender
                    }
                };
                sender.ready().await.map_err(http)?;
                if let Some(flag) = dispatched {
                    flag.store(true, Ordering::Release);
                }
                let dispatched = Instant::now();
                let response = sender.send_request(request).await.map_err(http)?;
                Ok(Sent {
                    response,
                    lease: None,
                    dispatched,
                })
            }
        }
    }

    fn idle_h1_connection(&self, key: &PoolKey) -> Option<IdleConnection> {
        let mut idle = self.idle_h1.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(key)?;
        while let Some(connection) = list.pop() {
            if connection.sender.is_ready() {
                return Some(connection);
            }
            free(&connection.permit);
        }
        None
    }

    /// Closes one idle connection that counts against `gate` (to another endpoint than
    /// `key`'s), so a request at the connection limit is not starved by idle ones.
    fn evict_idle(&self, gate: &Arc<BackendGate>, key: &PoolKey) -> bool {
        let mut idle = self.idle_h1.lock().unwrap_or_else(|e| e.into_inner());
        for (other, list) in idle.iter_mut() {
            if other == key {
                continue;
            }
            let found = list
                .iter()
                .position(|c| c.gate.as_ref().is_some_and(|g| Arc::ptr_eq(g, gate)));
            if let Some(i) = found {
                // Its place is freed now; dropping the sender ends the connection.
                let evicted = list.swap_remove(i);
                free(&evicted.permit);
                return true;
            }
        }
        false
    }

    /// A permit to open a connection counted against `gate`, waiting (as a pending
    /// request) while the limit is reached; `Ok(None)` when an idle connection for `key`
    /// came free meanwhile (HTTP/1.1 only), to be taken from the pool.
    async fn connection_permit(
        &self,
        gate: &Arc<BackendGate>,
        key: &PoolKey,
    ) -> Result<Option<ConnectionPermit>, UpstreamError> {
        loop {
            if let Some(permit) = gate.try_connection() {
                return Ok(Some(permit));
            }
            if key.protocol == UpstreamProtocol::Http1 && self.evict_idle(gate, key) {
                continue;
            }
            if key.protocol == UpstreamProtocol::Http2 {
                // A multiplexed connection never goes idle: waiting could be forever. Limit
                // HTTP/2 backends with http2MaxRequests.
                return Err(UpstreamError::Overflow(Overflow::Pending(
                    gate.connections(),
                    0,
                )));
            }
            gate.wait_for_connection()
                .await
                .map_err(UpstreamError::Overflow)?;
            if key.protocol == UpstreamProtocol::Http1 {
                let has_idle = self
                    .idle_h1
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(key)
                    .is_some_and(|list| !list.is_empty());
                if has_idle {
                    return Ok(None);
                }
            }
        }
    }

    fn shared_h2_sender(&self, key: &PoolKey) -> Option<http2::SendRequest<ProxyBody>> {
        let mut shared = self.shared_h2.lock().unwrap_or_else(|e| e.into_inner());
        match shared.get(key) {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            Some(_) => {
                shared.remove(key);
                None
            }
            None => None,
        }
    }

    /// A byte stream to the endpoint: an HBONE stream if it is enrolled, else TCP.
    pub async fn open(&self, endpoint: &Endpoint) -> Result<TokioIo<Connection>, UpstreamError> {
        let stream = match &endpoint.identity {
            Some(identity) => {
                let request = ConnectRequest {
                    source: self.own_identity.clone(),
                    destination_identity: identity.clone(),
                    hbone_addr: SocketAddr::new(endpoint.addr.ip(), HBONE_PORT),
                    authority: endpoint.addr,
                    forwarded_for: None,
                };
                let stream =
                    self.hbone
                        .connect(&request)
                        .await
                        .map_err(|source| UpstreamError::Hbone {
                            addr: endpoint.addr,
                            source: Box::new(source),
                        })?;
                Connection::Tunnel(stream)
            }
            None => {
                let stream = crate::sockets::connect(self.hbone.sockets().as_ref(), endpoint.addr)
                    .await
                    .map_err(|source| UpstreamError::Connect {
                        addr: endpoint.addr,
                        source,
                    })?;
                Connection::Plain(stream)
            }
        };
        Ok(TokioIo::new(stream))
    }
}
