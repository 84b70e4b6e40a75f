//! Where the waypoint sends a request it forwards, and the HTTP connections it keeps to get
//! there. An endpoint that is enrolled in the mesh is reached through a new HBONE stream to
//! its node (`ip:15008`, authority `ip:targetPort`) presenting the waypoint's own identity
//! and requiring the endpoint's; one outside the mesh by plain TCP.
//!
//! HTTP/1.1 connections are pooled per endpoint: a connection goes back to the pool when
//! its response body has been read to the end, so keep-alive works across requests and a
//! connection still busy is never shared. HTTP/2 (and gRPC) share one connection per
//! endpoint, multiplexed, replaced when it closes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::dataplane::HBONE_PORT;
use crate::hbone::client::HboneError;
use crate::hbone::{ConnectRequest, HboneClient};
use crate::identity::SpiffeId;
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
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// `ip:targetPort`: what the application listens on.
    pub addr: SocketAddr,
    /// The workload behind it, `namespace/name`, when known.
    pub workload: Option<Arc<Workload>>,
    /// The identity its node must prove, when it is enrolled (then the hop is HBONE).
    pub identity: Option<SpiffeId>,
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
}

type Idle = Mutex<HashMap<PoolKey, Vec<http1::SendRequest<ProxyBody>>>>;

/// Opens and pools the waypoint's connections to endpoints.
pub struct Upstreams {
    hbone: Arc<HboneClient>,
    own_identity: SpiffeId,
    trust_domain: String,
    idle_h1: Arc<Idle>,
    shared_h2: Mutex<HashMap<PoolKey, http2::SendRequest<ProxyBody>>>,
    next: AtomicUsize,
}

/// An HTTP/1.1 connection lent to one request, returned to the pool by
/// [`Lease::release`] once its response has been read to the end.
pub struct Lease {
    key: PoolKey,
    sender: http1::SendRequest<ProxyBody>,
    pool: Weak<Idle>,
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
            list.push(self.sender);
        }
    }
}

// === impl Upstreams ===

impl Upstreams {
    /// Connections presenting `own_identity` (the waypoint's), through `hbone`.
    pub fn new(hbone: Arc<HboneClient>, own_identity: SpiffeId, trust_domain: String) -> Self {
        Upstreams {
            hbone,
            own_identity,
            trust_domain,
            idle_h1: Arc::new(Mutex::new(HashMap::new())),
            shared_h2: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
        }
    }

    /// Picks an endpoint of `service` for its `port`, round robin.
    pub fn pick(
        &self,
        snapshot: &MeshSnapshot,
        service: &Service,
        port: u16,
    ) -> Result<Endpoint, UpstreamError> {
        let candidates: Vec<_> = service
            .endpoints
            .iter()
            .filter_map(|ep| ep.target_ports.get(&port).map(|target| (ep, *target)))
            .collect();
        if candidates.is_empty() {
            return Err(UpstreamError::NoEndpoint {
                service: format!("{}/{}", service.namespace, service.name),
                port,
            });
        }
        let (ep, target) = candidates[self.next.fetch_add(1, Ordering::Relaxed) % candidates.len()];
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
        Ok(Endpoint {
            addr: SocketAddr::new(ep.ip, target),
            workload,
            identity,
        })
    }

    /// Sends `request` to `endpoint` over `protocol`; for HTTP/1.1 also returns the
    /// connection's lease, to release when the response body has ended.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        protocol: UpstreamProtocol,
        request: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Option<Lease>), UpstreamError> {
        let key = PoolKey {
            addr: endpoint.addr,
            identity: endpoint.identity.clone(),
            protocol,
        };
        let http = |source| UpstreamError::Http {
            addr: endpoint.addr,
            source,
        };
        match protocol {
            UpstreamProtocol::Http1 => {
                let mut sender = match self.idle_h1_sender(&key) {
                    Some(sender) => sender,
                    None => {
                        let io = self.open(endpoint).await?;
                        let (sender, connection) = http1::handshake(io).await.map_err(http)?;
                        tokio::spawn(async move {
                            if let Err(error) = connection.await {
                                tracing::debug!(%error, "upstream HTTP/1.1 connection ended");
                            }
                        });
                        sender
                    }
                };
                sender.ready().await.map_err(http)?;
                let response = sender.send_request(request).await.map_err(http)?;
                let lease = Lease {
                    key,
                    sender,
                    pool: Arc::downgrade(&self.idle_h1),
                };
                Ok((response, Some(lease)))
            }
            UpstreamProtocol::Http2 => {
                let mut sender = match self.shared_h2_sender(&key) {
                    Some(sender) => sender,
                    None => {
                        let io = self.open(endpoint).await?;
                        let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                            .await
                            .map_err(http)?;
                        tokio::spawn(async move {
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
                let response = sender.send_request(request).await.map_err(http)?;
                Ok((response, None))
            }
        }
    }

    fn idle_h1_sender(&self, key: &PoolKey) -> Option<http1::SendRequest<ProxyBody>> {
        let mut idle = self.idle_h1.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(key)?;
        while let Some(sender) = list.pop() {
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
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
