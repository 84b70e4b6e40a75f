//! HBONE server: transport only. Accepts mTLS h2 connections on 15008 and hands every
//! CONNECT stream that passes the transport checks to a [`StreamHandler`] as an
//! [`InboundRequest`] (peer identity, addresses, authority) with a [`Responder`] to admit
//! it (200, the stream) or refuse it with a status. Policy, telemetry, connection tracking
//! and the upstream connect are the handler's (see `proxy::inbound`).
//!
//! For each accepted TCP connection the certificate presented is the identity of the
//! workload the client dialled (the listener's local address); the client must speak TLS
//! 1.3, negotiate ALPN h2 and present a mesh certificate of this trust domain. Each CONNECT is checked in
//! order, each failure answered with its own status while the connection keeps serving:
//! method (405), the peer's per-stream connection permit (503), authority syntax (400),
//! weft's own ports (400), an address this server does not serve (400); then the handler
//! decides (policy 401, reaching the application 503). Headers over the limit get 431 from
//! h2 itself.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use super::stream::H2Stream;
use super::{
    set_nodelay, CONNECTION_WINDOW, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE, OWN_PORTS, STREAM_WINDOW,
};
use crate::identity::{CertManager, SpiffeId};
use crate::limits::Permit;
use crate::listener::accept_gated;
use crate::tls;

/// A boxed future, so handlers can be used behind `dyn`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the server needs from whoever serves the streams it accepts.
pub trait StreamHandler: Send + Sync + 'static {
    /// Identity to present to a client that dialled `local` (the listener address).
    fn identity_for(&self, local: SocketAddr) -> Option<SpiffeId>;
    /// Whether a CONNECT to `authority`, on a connection that dialled `local`, is served here.
    fn serves(&self, local: SocketAddr, authority: SocketAddr) -> bool;
    /// Serves one CONNECT stream that passed the transport checks: answer it through
    /// `responder` and carry its bytes. Runs on the stream's own task.
    fn handle(
        self: Arc<Self>,
        request: InboundRequest,
        responder: Responder,
    ) -> BoxFuture<'static, ()>;
}

/// One CONNECT stream as the transport authenticated it.
#[derive(Debug, Clone)]
pub struct InboundRequest {
    /// The client's SPIFFE ID from its certificate (in this server's trust domain),
    /// shared by every stream of the connection.
    pub peer: Arc<SpiffeId>,
    /// The address the client dialled.
    pub local: SocketAddr,
    /// The address the tunnel came from: the only client address to trust.
    pub remote: SocketAddr,
    /// The `ip:port` the stream asks for; never one of weft's own ports, always one
    /// [`StreamHandler::serves`] accepted.
    pub authority: SocketAddr,
    /// A `forwarded: for=` address the client claims; for logs only, never trusted.
    pub forwarded: Option<IpAddr>,
}

/// The answer to one CONNECT stream: [`Responder::admit`] (200) or [`Responder::refuse`].
pub struct Responder {
    respond: h2::server::SendResponse<Bytes>,
    body: h2::RecvStream,
    stats: Arc<ServerStats>,
    /// The stream's share of the peer's connection permits, held while it lives.
    permit: Permit,
    remote: SocketAddr,
}

impl Responder {
    /// Answers 200 and hands over the stream.
    pub fn admit(mut self) -> Result<ServedStream, h2::Error> {
        let send = self.respond.send_response(Response::new(()), false)?;
        self.stats.streams_accepted.fetch_add(1, Ordering::Relaxed);
        self.stats.streams_open.fetch_add(1, Ordering::Relaxed);
        Ok(ServedStream {
            stream: H2Stream::new(send, self.body),
            stats: self.stats,
            _permit: self.permit,
        })
    }

    /// Answers `status` (ending the stream), logging `reason`.
    pub fn refuse(mut self, status: StatusCode, reason: &str) {
        refuse(&mut self.respond, &self.stats, self.remote, status, reason);
    }
}

fn refuse(
    respond: &mut h2::server::SendResponse<Bytes>,
    stats: &ServerStats,
    remote: SocketAddr,
    status: StatusCode,
    reason: &str,
) {
    stats.streams_refused.fetch_add(1, Ordering::Relaxed);
    tracing::info!(%remote, status = status.as_u16(), reason, "refused HBONE stream");
    let mut response = Response::new(());
    *response.status_mut() = status;
    let _ = respond.send_response(response, true);
}

/// An admitted CONNECT stream: the tunnel's bytes, counted in `streams_open` while it lives.
pub struct ServedStream {
    stream: H2Stream,
    stats: Arc<ServerStats>,
    _permit: Permit,
}

impl Drop for ServedStream {
    fn drop(&mut self) {
        self.stats.streams_open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for ServedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ServedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Why a connection could get no TLS configuration (it is closed before the handshake).
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    /// The handler knows no identity for the dialled address (given).
    #[error("no workload here owns {0}")]
    NoIdentity(IpAddr),
    /// The dialled workload's identity has no certificate.
    #[error("cannot get a certificate for {id}: {source}")]
    Certificate {
        /// The identity the server would present.
        id: SpiffeId,
        /// Why the certificate manager has none.
        source: crate::identity::IdentityError,
    },
    /// The server TLS configuration for the identity could not be built.
    #[error("TLS configuration for {id}: {source}")]
    Tls {
        /// The identity the server would present.
        id: SpiffeId,
        /// Why rustls refused the configuration.
        source: tls::TlsError,
    },
}

/// Server timing settings.
#[derive(Debug, Clone)]
pub struct HboneServerConfig {
    /// Limit on a client's TLS handshake (10 s by default); a slower client is dropped and
    /// counted in `handshakes_failed`.
    pub handshake_timeout: Duration,
    /// Streams one client connection may have open at once, announced in the HTTP/2
    /// SETTINGS (1000 by default).
    pub max_concurrent_streams: u32,
    /// Time between pings sent on each connection (30 s by default). Pongs are not waited
    /// for: data sent to a dead peer makes TCP give up, which ends the connection.
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
    /// TCP connections accepted since start.
    pub connections_accepted: AtomicU64,
    /// Connections being served right now.
    pub connections_open: AtomicU64,
    /// Connections closed before HTTP/2 began: no certificate or TLS configuration for the
    /// dialled address, a failed or timed-out TLS handshake, no ALPN `h2`, or a client
    /// without a SPIFFE ID of this trust domain.
    pub handshakes_failed: AtomicU64,
    /// CONNECT streams admitted with 200 ([`Responder::admit`]).
    pub streams_accepted: AtomicU64,
    /// CONNECT streams answered with an error status, by the transport checks or by the
    /// handler ([`Responder::refuse`]).
    pub streams_refused: AtomicU64,
    /// Admitted streams not yet dropped (live [`ServedStream`]s).
    pub streams_open: AtomicU64,
}

/// Serves HBONE for one [`StreamHandler`].
pub struct HboneServer<H: StreamHandler> {
    handler: Arc<H>,
    certs: Arc<CertManager>,
    config: HboneServerConfig,
    /// One TLS config per identity served, with the roots it was built for: a config whose
    /// roots are no longer the manager's (a new trust bundle) is rebuilt.
    tls_configs: Mutex<HashMap<SpiffeId, CachedTlsConfig>>,
    stats: Arc<ServerStats>,
}

type CachedTlsConfig = (Arc<Vec<CertificateDer<'static>>>, Arc<rustls::ServerConfig>);

impl<H: StreamHandler> HboneServer<H> {
    /// A server whose streams go to `handler`, presenting leaves from `certs`; nothing
    /// listens until [`HboneServer::serve`] or [`HboneServer::serve_connection`] is called.
    pub fn new(handler: Arc<H>, certs: Arc<CertManager>, config: HboneServerConfig) -> Arc<Self> {
        Arc::new(HboneServer {
            handler,
            certs,
            config,
            tls_configs: Mutex::new(HashMap::new()),
            stats: Arc::new(ServerStats::default()),
        })
    }

    /// The server's counters, live.
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

    async fn tls_config_for(
        &self,
        local: SocketAddr,
    ) -> Result<Arc<rustls::ServerConfig>, ServerTlsError> {
        let id = self
            .handler
            .identity_for(local)
            .ok_or(ServerTlsError::NoIdentity(local.ip()))?;
        let roots = self.certs.roots();
        if let Some((built_for, config)) = self
            .tls_configs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            if Arc::ptr_eq(built_for, &roots) {
                return Ok(config.clone());
            }
        }
        // The one place the server asks for a certificate.
        let slot =
            self.certs
                .get_or_issue(&id)
                .await
                .map_err(|source| ServerTlsError::Certificate {
                    id: id.clone(),
                    source,
                })?;
        let config = tls::server_config(&roots, slot).map_err(|source| ServerTlsError::Tls {
            id: id.clone(),
            source,
        })?;
        self.tls_configs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (roots, config.clone()));
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
            Err(error) => {
                tracing::warn!(%remote, %local, %error, "refusing HBONE connection");
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
        // rustls refuses a client whose ALPN list lacks h2; one offering no ALPN at all
        // would get through, so the outcome is checked here.
        if tls_stream.get_ref().1.alpn_protocol() != Some(tls::ALPN_H2) {
            tracing::info!(%remote, "refusing HBONE client that did not negotiate ALPN h2");
            self.stats.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
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
                        tokio::spawn(
                            server
                                .serve_stream(request, respond, peer, local, remote)
                                .in_current_span(),
                        );
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

    /// The transport checks of one CONNECT; a stream that passes goes to the handler.
    async fn serve_stream(
        self: Arc<Self>,
        request: Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
        peer: Arc<SpiffeId>,
        local: SocketAddr,
        remote: SocketAddr,
    ) {
        let stats = &self.stats;
        if request.method() != Method::CONNECT {
            return refuse(
                &mut respond,
                stats,
                remote,
                StatusCode::METHOD_NOT_ALLOWED,
                "only CONNECT is served",
            );
        }
        // Each stream opens an upstream socket: it counts against the peer's share.
        let permit = match crate::limits::global().admit(remote.ip(), "hbone stream") {
            Ok(permit) => permit,
            Err(refusal) => {
                return refuse(
                    &mut respond,
                    stats,
                    remote,
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
                    stats,
                    remote,
                    StatusCode::BAD_REQUEST,
                    "authority must be <ip>:<port>",
                )
            }
        };
        if OWN_PORTS.contains(&authority.port()) {
            return refuse(
                &mut respond,
                stats,
                remote,
                StatusCode::BAD_REQUEST,
                "authority is one of weft's own ports",
            );
        }
        if !self.handler.serves(local, authority) {
            return refuse(
                &mut respond,
                stats,
                remote,
                StatusCode::BAD_REQUEST,
                "authority is not an address served here",
            );
        }
        let forwarded = forwarded_ip(&request);
        let inbound = InboundRequest {
            peer,
            local,
            remote,
            authority,
            forwarded,
        };
        let responder = Responder {
            respond,
            body: request.into_body(),
            stats: self.stats.clone(),
            permit,
            remote,
        };
        self.handler.clone().handle(inbound, responder).await
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
