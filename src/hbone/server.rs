//! HBONE server: accepts mTLS h2 connections on 15008 and serves CONNECT streams.
//!
//! For each accepted TCP connection the certificate presented is the identity of the
//! workload the client dialled (the listener's local address). Each CONNECT is checked in
//! order, each failure answered with its own status while the connection keeps serving:
//! method (405), authority syntax (400), weft's own ports (400), an address this server does
//! not serve (400), policy (401), reaching the application (503). Headers over the limit get
//! 431 from h2 itself.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use super::stream::H2Stream;
use super::{
    set_nodelay, CONNECTION_WINDOW, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE, OWN_PORTS, STREAM_WINDOW,
};
use crate::identity::{CertManager, SpiffeId};
use crate::listener::accept_gated;
use crate::model::MeshSnapshot;
use crate::proxy::copy::copy_metered;
use crate::proxy::tracker::{ConnectionTracker, Denial, TrackedAttrs};
use crate::telemetry::{ConnectionReport, Reporter, Security, WorkloadLabels};
use crate::tls;

/// A boxed future, so targets can be used behind `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the server needs to know about the workloads behind it.
pub trait InboundTarget: Send + Sync + 'static {
    /// Identity to present to a client that dialled `local` (the listener address).
    fn identity_for(&self, local: SocketAddr) -> Option<SpiffeId>;
    /// Whether a CONNECT to `authority`, on a connection that dialled `local`, is served here.
    fn serves(&self, local: SocketAddr, authority: SocketAddr) -> bool;
    /// Policy check for one stream; `Err` says which policy denied it and why.
    fn authorize(&self, _attrs: &TrackedAttrs) -> Result<(), Denial> {
        Ok(())
    }
    /// The mesh snapshot in force, for telemetry labels (None: labels stay `unknown`).
    fn snapshot(&self) -> Option<Arc<MeshSnapshot>> {
        None
    }
    /// Where admitted streams are remembered so a policy change can close them.
    fn tracker(&self) -> Option<&Arc<ConnectionTracker>> {
        None
    }
    /// Opens the connection to the application for one stream.
    fn connect_upstream(
        &self,
        client_ip: Option<IpAddr>,
        authority: SocketAddr,
    ) -> BoxFuture<'_, std::io::Result<TcpStream>>;
}

/// Server timing settings.
#[derive(Debug, Clone)]
pub struct HboneServerConfig {
    pub handshake_timeout: Duration,
    pub max_concurrent_streams: u32,
    pub keepalive_interval: Duration,
    /// Clients must hold an identity in this trust domain.
    pub trust_domain: String,
}

impl Default for HboneServerConfig {
    fn default() -> Self {
        HboneServerConfig {
            trust_domain: crate::identity::DEFAULT_TRUST_DOMAIN.to_owned(),
            handshake_timeout: Duration::from_secs(10),
            max_concurrent_streams: 1000,
            keepalive_interval: Duration::from_secs(30),
        }
    }
}

/// Counters a test or the admin API can read.
#[derive(Debug, Default)]
pub struct ServerStats {
    pub connections_accepted: AtomicU64,
    pub connections_open: AtomicU64,
    pub handshakes_failed: AtomicU64,
    pub streams_accepted: AtomicU64,
    pub streams_refused: AtomicU64,
    pub streams_open: AtomicU64,
}

/// Serves HBONE for one [`InboundTarget`].
pub struct HboneServer<T: InboundTarget> {
    target: Arc<T>,
    certs: Arc<CertManager>,
    config: HboneServerConfig,
    tls_configs: Mutex<HashMap<SpiffeId, Arc<rustls::ServerConfig>>>,
    stats: Arc<ServerStats>,
}

impl<T: InboundTarget> HboneServer<T> {
    pub fn new(target: Arc<T>, certs: Arc<CertManager>, config: HboneServerConfig) -> Arc<Self> {
        Arc::new(HboneServer {
            target,
            certs,
            config,
            tls_configs: Mutex::new(HashMap::new()),
            stats: Arc::new(ServerStats::default()),
        })
    }

    pub fn stats(&self) -> &Arc<ServerStats> {
        &self.stats
    }

    /// Accepts connections until `shutdown` turns true; then asks open connections to finish
    /// (GOAWAY) and returns. Callers wait for `stats().connections_open` to drain.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
        let mut stop = shutdown.clone();
        accept_gated(&listener, &mut stop, "hbone", |tcp, remote, permit| {
            let server = self.clone();
            let shutdown = shutdown.clone();
            let span = tracing::debug_span!("hbone_in", %remote);
            tokio::spawn(
                async move {
                    let _permit = permit;
                    server.serve_connection(tcp, remote, shutdown).await
                }
                .instrument(span),
            );
        })
        .await;
    }

    async fn tls_config_for(&self, local: SocketAddr) -> Result<Arc<rustls::ServerConfig>, String> {
        let id = self
            .target
            .identity_for(local)
            .ok_or_else(|| format!("no workload here owns {}", local.ip()))?;
        if let Some(config) = self
            .tls_configs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            return Ok(config.clone());
        }
        let slot = self
            .certs
            .get_or_issue(&id)
            .await
            .map_err(|e| e.to_string())?;
        let config = tls::server_config(self.certs.roots(), slot).map_err(|e| e.to_string())?;
        self.tls_configs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, config.clone());
        Ok(config)
    }

    /// Serves one accepted TCP connection until the client or shutdown ends it.
    pub async fn serve_connection(
        self: Arc<Self>,
        tcp: TcpStream,
        remote: SocketAddr,
        mut shutdown: watch::Receiver<bool>,
    ) {
        self.stats
            .connections_accepted
            .fetch_add(1, Ordering::Relaxed);
        let _open = Gauge::up(&self.stats.connections_open);
        set_nodelay(&tcp);
        let local = match tcp.local_addr() {
            Ok(local) => local,
            Err(error) => {
                tracing::warn!(%remote, %error, "cannot read the local address of an HBONE connection");
                return;
            }
        };
        let tls_config = match self.tls_config_for(local).await {
            Ok(config) => config,
            Err(reason) => {
                tracing::warn!(%remote, %local, %reason, "refusing HBONE connection");
                self.stats.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let handshake = tokio::time::timeout(
            self.config.handshake_timeout,
            TlsAcceptor::from(tls_config).accept(tcp),
        )
        .await;
        let tls_stream = match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::info!(%remote, %error, "HBONE TLS handshake failed");
                self.stats.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(_) => {
                tracing::info!(%remote, "HBONE TLS handshake timed out");
                self.stats.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let peer = match tls::peer_identity(tls_stream.get_ref().1) {
            // Shared by every stream of this connection.
            Ok(peer) => Arc::new(peer),
            Err(error) => {
                tracing::info!(%remote, %error, "refusing HBONE client without a mesh identity");
                self.stats.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if peer.trust_domain() != self.config.trust_domain {
            tracing::info!(%remote, %peer, trust_domain = %self.config.trust_domain,
                "refusing HBONE client from another trust domain");
            self.stats.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut connection = match h2::server::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            .max_concurrent_streams(self.config.max_concurrent_streams)
            .max_send_buffer_size(1024 * 1024)
            .handshake::<_, Bytes>(tls_stream)
            .await
        {
            Ok(connection) => connection,
            Err(error) => {
                tracing::info!(%remote, %error, "HTTP/2 handshake failed");
                return;
            }
        };
        let mut ping_pong = connection.ping_pong();
        let mut keepalive = tokio::time::interval(self.config.keepalive_interval);
        keepalive.tick().await;
        let mut draining = false;
        loop {
            tokio::select! {
                next = connection.accept() => match next {
                    Some(Ok((request, respond))) => {
                        let server = self.clone();
                        let peer = peer.clone();
                        tokio::spawn(async move {
                            server.serve_stream(request, respond, peer, local, remote).await
                        });
                    }
                    Some(Err(error)) => {
                        tracing::debug!(%remote, %error, "HBONE connection error");
                        break;
                    }
                    None => break,
                },
                _ = shutdown.wait_for(|stop| *stop), if !draining => {
                    draining = true;
                    connection.graceful_shutdown();
                }
                _ = keepalive.tick(), if ping_pong.is_some() => {
                    if let Some(pp) = ping_pong.as_mut() {
                        // A pong is not awaited here (accept() drives the connection); a dead
                        // peer shows up as a connection error once TCP gives up.
                        let _ = pp.send_ping(h2::Ping::opaque());
                    }
                }
            }
        }
    }

    async fn serve_stream(
        self: Arc<Self>,
        request: Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
        peer: Arc<SpiffeId>,
        local: SocketAddr,
        remote: SocketAddr,
    ) {
        let refuse = |respond: &mut h2::server::SendResponse<Bytes>,
                      status: StatusCode,
                      reason: &str| {
            self.stats.streams_refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%remote, %peer, status = status.as_u16(), reason, "refused HBONE stream");
            let mut response = Response::new(());
            *response.status_mut() = status;
            let _ = respond.send_response(response, true);
        };
        if request.method() != Method::CONNECT {
            return refuse(
                &mut respond,
                StatusCode::METHOD_NOT_ALLOWED,
                "only CONNECT is served",
            );
        }
        // Each stream opens an upstream socket: it counts against the peer's share.
        let _permit = match crate::limits::global().admit(remote.ip(), "hbone stream") {
            Ok(permit) => permit,
            Err(refusal) => {
                return refuse(
                    &mut respond,
                    StatusCode::SERVICE_UNAVAILABLE,
                    &refusal.to_string(),
                )
            }
        };
        let authority = match request
            .uri()
            .authority()
            .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
        {
            Some(authority) => authority,
            None => {
                return refuse(
                    &mut respond,
                    StatusCode::BAD_REQUEST,
                    "authority must be <ip>:<port>",
                )
            }
        };
        if OWN_PORTS.contains(&authority.port()) {
            return refuse(
                &mut respond,
                StatusCode::BAD_REQUEST,
                "authority is one of weft's own ports",
            );
        }
        if !self.target.serves(local, authority) {
            return refuse(
                &mut respond,
                StatusCode::BAD_REQUEST,
                "authority is not an address served here",
            );
        }
        let attrs = TrackedAttrs {
            peer: Some(peer.clone()),
            source: remote,
            destination: authority,
        };
        let mut report = self.report(&attrs, local);
        if let Err(denial) = self.target.authorize(&attrs) {
            report.refused("DENY", &denial.reason, denial.policy.as_deref());
            return refuse(&mut respond, StatusCode::UNAUTHORIZED, &denial.to_string());
        }
        // The source address is the one the tunnel came from; a `forwarded` header is only
        // logged, never trusted, so a peer cannot make the app see another client's IP.
        let client_ip = Some(remote.ip());
        let forwarded = forwarded_ip(&request);
        let upstream = match self.target.connect_upstream(client_ip, authority).await {
            Ok(upstream) => upstream,
            Err(error) => {
                let reason = format!("application at {authority} unreachable: {error}");
                report.refused("CONNECT", &reason, None);
                return refuse(&mut respond, StatusCode::SERVICE_UNAVAILABLE, &reason);
            }
        };
        set_nodelay(&upstream);
        let send = match respond.send_response(Response::new(()), false) {
            Ok(send) => send,
            Err(error) => {
                tracing::debug!(%remote, %error, "client went away before the CONNECT answer");
                return;
            }
        };
        self.stats.streams_accepted.fetch_add(1, Ordering::Relaxed);
        let _open = Gauge::up(&self.stats.streams_open);
        let tunnel = H2Stream::new(send, request.into_body());
        let tracked = self.target.tracker().map(|t| t.track(attrs));
        let meter = report.opened();
        let (totals, error) = copy_metered(tunnel, upstream, meter, tracked.as_ref()).await;
        tracing::debug!(%peer, %authority, ?forwarded, to_app = totals.a_to_b, from_app = totals.b_to_a, "HBONE stream closed");
        report.closed((totals.a_to_b, totals.b_to_a), error.as_ref());
    }

    /// The destination-side report of one stream, labelled from the mesh snapshot.
    fn report(&self, attrs: &TrackedAttrs, local: SocketAddr) -> ConnectionReport {
        let (source, destination) = match self.target.snapshot() {
            Some(snapshot) => (
                WorkloadLabels::at(&snapshot, attrs.source, attrs.peer.as_deref()),
                WorkloadLabels::at(
                    &snapshot,
                    attrs.destination,
                    self.target.identity_for(local).as_ref(),
                ),
            ),
            None => (
                WorkloadLabels::shared(None, attrs.peer.as_deref()),
                WorkloadLabels::shared(None, self.target.identity_for(local).as_ref()),
            ),
        };
        ConnectionReport::new(
            Reporter::Destination,
            attrs.source,
            attrs.destination,
            source,
            destination,
            None,
            Security::MutualTls,
        )
    }
}

/// The client address from a `forwarded: for=...` header, when present and valid.
fn forwarded_ip<B>(request: &Request<B>) -> Option<IpAddr> {
    let value = request.headers().get("forwarded")?.to_str().ok()?;
    value.split([';', ',']).find_map(|part| {
        let part = part.trim();
        let v = part
            .strip_prefix("for=")
            .or_else(|| part.strip_prefix("For="))?;
        let v = v.trim_matches('"');
        let v = v
            .strip_prefix('[')
            .and_then(|x| x.strip_suffix(']'))
            .unwrap_or(v);
        v.parse().ok()
    })
}

/// Increments a gauge now and decrements it when dropped.
struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    fn up(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Gauge(counter)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_forwarded_for() {
        let req = Request::builder()
            .header("forwarded", "for=10.1.2.3")
            .body(())
            .unwrap();
        assert_eq!(forwarded_ip(&req), Some("10.1.2.3".parse().unwrap()));
        let req = Request::builder()
            .header("forwarded", "for=\"[fd00::1]\"")
            .body(())
            .unwrap();
        assert_eq!(forwarded_ip(&req), Some("fd00::1".parse().unwrap()));
        let req = Request::builder()
            .header("forwarded", "for=bogus")
            .body(())
            .unwrap();
        assert_eq!(forwarded_ip(&req), None);
    }
}
