//! HBONE client: opens CONNECT streams over pooled mTLS h2 connections.
//!
//! Connections are pooled per (source identity, destination identity, destination address).
//! A connection carries at most `max_streams_per_connection` streams over its life, then a
//! new one is opened; connections idle for `idle_timeout` close; keepalive pings detect dead
//! peers. Establishing a connection for a key is single-flight, so a burst of streams to a
//! new destination shares one connection instead of opening one each.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::stream::H2Stream;
use super::{set_nodelay, CONNECTION_WINDOW, MAX_FRAME_SIZE, STREAM_WINDOW};
use crate::identity::{CertManager, IdentityError, SpiffeId};
use crate::sockets::{self, HostSockets, SocketFactory};
use crate::tls::{self, TlsError};

/// Pool and timing settings.
#[derive(Debug, Clone)]
pub struct HboneClientConfig {
    /// Streams one connection carries over its whole life (100 by default); once reached,
    /// the next stream opens a new connection and the old one closes as its streams end.
    pub max_streams_per_connection: u32,
    /// A connection with no open stream and no new stream for this long is closed (60 s by
    /// default).
    pub idle_timeout: Duration,
    /// Time between keepalive pings on each connection (10 s by default).
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed as dead (10 s by
    /// default).
    pub keepalive_timeout: Duration,
    /// Limit on the TCP connect, and separately on the TLS handshake, of a new connection
    /// (10 s by default).
    pub connect_timeout: Duration,
}

impl Default for HboneClientConfig {
    fn default() -> Self {
        HboneClientConfig {
            max_streams_per_connection: 100,
            idle_timeout: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// One CONNECT to open.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// Identity presented to the server.
    pub source: SpiffeId,
    /// Identity the server must prove.
    pub destination_identity: SpiffeId,
    /// Where the HBONE server listens (`podIP:15008`).
    pub hbone_addr: SocketAddr,
    /// The CONNECT authority: the original destination `ip:port`.
    pub authority: SocketAddr,
    /// Sent as `forwarded: for=<ip>` when known.
    pub forwarded_for: Option<IpAddr>,
}

/// Why a CONNECT stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    /// The source identity has no certificate to present.
    #[error("no certificate for {identity}: {source}")]
    Certificate {
        /// The source SPIFFE ID, as text.
        identity: String,
        /// Why the certificate manager has none.
        source: IdentityError,
    },
    /// The client TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The TCP connect to the HBONE server failed.
    #[error("TCP connect to {addr} failed: {source}")]
    Connect {
        /// The HBONE server address.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// The TCP connect or the TLS handshake to the HBONE server (given) took longer than
    /// `connect_timeout`.
    #[error("TCP connect to {0} timed out")]
    ConnectTimeout(SocketAddr),
    /// The TLS handshake failed, e.g. the server's certificate is not the expected identity.
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake {
        /// The HBONE server address.
        addr: SocketAddr,
        /// The handshake error from rustls (wrapped as I/O).
        source: std::io::Error,
    },
    /// The HBONE server (given) did not agree on ALPN `h2`, or its fresh connection could
    /// not take a stream.
    #[error("{0} did not negotiate ALPN h2")]
    NoH2(SocketAddr),
    /// The HTTP/2 handshake, or sending the CONNECT or receiving its response, failed.
    #[error("HTTP/2 with {addr} failed: {source}")]
    H2 {
        /// The HBONE server address.
        addr: SocketAddr,
        /// The h2 error.
        source: h2::Error,
    },
    /// The server refused the CONNECT with a status other than 200.
    #[error("HBONE server {addr} answered {status} to CONNECT {authority}")]
    Status {
        /// The HBONE server address.
        addr: SocketAddr,
        /// The destination the CONNECT asked for.
        authority: SocketAddr,
        /// The status it answered (e.g. 401 when policy denied the stream).
        status: StatusCode,
    },
    /// The CONNECT request could not be built from the request's fields.
    #[error("building the CONNECT request failed: {0}")]
    Request(#[from] http::Error),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    source: SpiffeId,
    destination: SpiffeId,
    addr: SocketAddr,
}

/// One pooled h2 connection.
struct PooledConnection {
    sender: h2::client::SendRequest<Bytes>,
    streams_opened: AtomicU32,
    active: Arc<AtomicUsize>,
    dead: Arc<AtomicBool>,
}

impl PooledConnection {
    fn usable(&self, max_streams: u32) -> bool {
        !self.dead.load(Ordering::Acquire)
            && self.streams_opened.load(Ordering::Acquire) < max_streams
    }

    /// Claims one stream slot, if the connection can take another stream.
    fn try_reserve(&self, max_streams: u32) -> Option<ActiveStream> {
        if self.dead.load(Ordering::Acquire) {
            return None;
        }
        self.streams_opened
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max_streams).then_some(n + 1)
            })
            .ok()?;
        self.active.fetch_add(1, Ordering::AcqRel);
        Some(ActiveStream(self.active.clone()))
    }
}

/// Counts a stream as open on its connection until dropped.
struct ActiveStream(Arc<AtomicUsize>);

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

type Slot = Arc<tokio::sync::Mutex<Vec<Arc<PooledConnection>>>>;

/// Why one attempt to open a stream failed.
enum StreamFailure {
    /// A pooled connection refused the stream before processing it (GOAWAY, REFUSED_STREAM).
    Unprocessed(HboneError),
    /// Anything else: reported as is.
    Failed(HboneError),
}

// === impl StreamFailure ===

impl StreamFailure {
    fn into_error(self) -> HboneError {
        match self {
            StreamFailure::Unprocessed(error) | StreamFailure::Failed(error) => error,
        }
    }
}

/// Opens HBONE streams for any number of source identities.
pub struct HboneClient {
    certs: Arc<CertManager>,
    sockets: Arc<dyn SocketFactory>,
    config: HboneClientConfig,
    pools: Mutex<HashMap<PoolKey, Slot>>,
    connections_opened: AtomicU64,
    connections_live: Arc<AtomicU64>,
}

impl HboneClient {
    /// A client whose connections use ordinary sockets in the daemon's network namespace.
    pub fn new(certs: Arc<CertManager>, config: HboneClientConfig) -> Arc<Self> {
        Self::with_sockets(certs, config, Arc::new(HostSockets))
    }

    /// A client whose connections use sockets from `sockets` (e.g. inside a pod's netns).
    pub fn with_sockets(
        certs: Arc<CertManager>,
        config: HboneClientConfig,
        sockets: Arc<dyn SocketFactory>,
    ) -> Arc<Self> {
        Arc::new(HboneClient {
            certs,
            sockets,
            config,
            pools: Mutex::new(HashMap::new()),
            connections_opened: AtomicU64::new(0),
            connections_live: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The factory this client's sockets come from.
    pub fn sockets(&self) -> &Arc<dyn SocketFactory> {
        &self.sockets
    }

    /// h2 connections opened since start.
    pub fn connections_opened(&self) -> u64 {
        self.connections_opened.load(Ordering::Relaxed)
    }

    /// h2 connections currently open.
    pub fn connections_live(&self) -> u64 {
        self.connections_live.load(Ordering::Relaxed)
    }

    /// Opens one CONNECT stream; the returned stream carries the tunnelled bytes.
    pub async fn connect(
        self: &Arc<Self>,
        request: &ConnectRequest,
    ) -> Result<H2Stream, HboneError> {
        let key = PoolKey {
            source: request.source.clone(),
            destination: request.destination_identity.clone(),
            addr: request.hbone_addr,
        };
        let slot = {
            let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
            pools.entry(key.clone()).or_default().clone()
        };
        // A pooled connection the server is closing (GOAWAY: its daemon is draining for an
        // upgrade) refuses new streams without processing them; such a CONNECT is safe to
        // send again, once, on a fresh connection.
        match self.open_stream(request, &slot, true).await {
            Err(StreamFailure::Unprocessed(error)) => {
                tracing::debug!(addr = %request.hbone_addr, %error,
                    "pooled HBONE connection refused the stream; retrying on a new connection");
                self.open_stream(request, &slot, false)
                    .await
                    .map_err(StreamFailure::into_error)
            }
            other => other.map_err(StreamFailure::into_error),
        }
    }

    /// One CONNECT on a pooled connection (if `reuse` and one has room) or a new one.
    async fn open_stream(
        self: &Arc<Self>,
        request: &ConnectRequest,
        slot: &Slot,
        reuse: bool,
    ) -> Result<H2Stream, StreamFailure> {
        let max = self.config.max_streams_per_connection;
        let (connection, active, reused) = {
            let mut list = slot.lock().await;
            list.retain(|c| c.usable(max));
            let reserved = list
                .iter()
                .filter(|_| reuse)
                .find_map(|c| c.try_reserve(max).map(|guard| (c.clone(), guard)));
            match reserved {
                Some((connection, guard)) => (connection, guard, true),
                None => {
                    let fresh = self
                        .open_connection(request, Arc::downgrade(slot))
                        .await
                        .map_err(StreamFailure::Failed)?;
                    let guard = fresh
                        .try_reserve(max)
                        .ok_or(StreamFailure::Failed(HboneError::NoH2(request.hbone_addr)))?;
                    list.push(fresh.clone());
                    (fresh, guard, false)
                }
            }
        };

        let authority = request.authority.to_string();
        let mut builder = Request::builder()
            .method(Method::CONNECT)
            .uri(authority.as_str());
        if let Some(ip) = request.forwarded_for {
            builder = builder.header("forwarded", forwarded_for(ip));
        }
        let connect = builder
            .body(())
            .map_err(|e| StreamFailure::Failed(e.into()))?;
        let h2_error = |source| HboneError::H2 {
            addr: request.hbone_addr,
            source,
        };
        // Failures before the server saw the stream, on a connection that served earlier
        // streams, are worth one retry elsewhere; the connection is not used again.
        let unprocessed = |source: h2::Error, sent: bool| {
            let refused =
                !sent || source.is_go_away() || source.reason() == Some(h2::Reason::REFUSED_STREAM);
            if reused && refused {
                connection.dead.store(true, Ordering::Release);
                StreamFailure::Unprocessed(h2_error(source))
            } else {
                StreamFailure::Failed(h2_error(source))
            }
        };
        let mut sender = connection
            .sender
            .clone()
            .ready()
            .await
            .map_err(|e| unprocessed(e, false))?;
        let (response, send_stream) = sender
            .send_request(connect, false)
            .map_err(|e| unprocessed(e, false))?;
        let response = response.await.map_err(|e| unprocessed(e, true))?;
        if response.status() != StatusCode::OK {
            return Err(StreamFailure::Failed(HboneError::Status {
                addr: request.hbone_addr,
                authority: request.authority,
                status: response.status(),
            }));
        }
        Ok(H2Stream::new(send_stream, response.into_body()).with_guard(Box::new(active)))
    }

    async fn open_connection(
        self: &Arc<Self>,
        request: &ConnectRequest,
        slot: Weak<tokio::sync::Mutex<Vec<Arc<PooledConnection>>>>,
    ) -> Result<Arc<PooledConnection>, HboneError> {
        let addr = request.hbone_addr;
        let identity = self
            .certs
            .get_or_issue(&request.source)
            .await
            .map_err(|source| HboneError::Certificate {
                identity: request.source.to_string(),
                source,
            })?;
        let tls_config = tls::client_config(
            &self.certs.roots(),
            identity,
            request.destination_identity.clone(),
        )?;
        let tcp = tokio::time::timeout(
            self.config.connect_timeout,
            sockets::connect(self.sockets.as_ref(), addr),
        )
        .await
        .map_err(|_| HboneError::ConnectTimeout(addr))?
        .map_err(|source| HboneError::Connect { addr, source })?;
        set_nodelay(&tcp);
        let server_name = ServerName::IpAddress(addr.ip().into());
        let tls_stream = tokio::time::timeout(
            self.config.connect_timeout,
            TlsConnector::from(tls_config).connect(server_name, tcp),
        )
        .await
        .map_err(|_| HboneError::ConnectTimeout(addr))?
        .map_err(|source| HboneError::Handshake { addr, source })?;
        if tls_stream.get_ref().1.alpn_protocol() != Some(tls::ALPN_H2) {
            return Err(HboneError::NoH2(addr));
        }
        let (sender, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_send_buffer_size(1024 * 1024)
            .enable_push(false)
            .handshake::<_, Bytes>(tls_stream)
            .await
            .map_err(|source| HboneError::H2 { addr, source })?;
        let ping_pong = connection.ping_pong();

        let pooled = Arc::new(PooledConnection {
            sender,
            streams_opened: AtomicU32::new(0),
            active: Arc::new(AtomicUsize::new(0)),
            dead: Arc::new(AtomicBool::new(false)),
        });
        self.connections_opened.fetch_add(1, Ordering::Relaxed);
        self.connections_live.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%addr, source = %request.source, "opened HBONE connection");

        let dead = pooled.dead.clone();
        let live = self.connections_live.clone();
        let driver = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%addr, %error, "HBONE connection ended with an error");
            }
            dead.store(true, Ordering::Release);
            live.fetch_sub(1, Ordering::Relaxed);
        });
        tokio::spawn(monitor_connection(
            Arc::downgrade(&pooled),
            slot,
            ping_pong,
            driver,
            self.config.clone(),
        ));
        Ok(pooled)
    }
}

/// Keeps a connection honest: pings it, closes it when idle, drops it when dead.
async fn monitor_connection(
    connection: Weak<PooledConnection>,
    slot: Weak<tokio::sync::Mutex<Vec<Arc<PooledConnection>>>>,
    ping_pong: Option<h2::PingPong>,
    driver: tokio::task::JoinHandle<()>,
    config: HboneClientConfig,
) {
    let tick = config
        .keepalive_interval
        .min(config.idle_timeout / 2)
        .max(Duration::from_millis(10));
    let mut ping_pong = ping_pong;
    let mut idle_for = Duration::ZERO;
    let mut since_ping = Duration::ZERO;
    let mut last_opened = 0;
    loop {
        tokio::time::sleep(tick).await;
        let Some(conn) = connection.upgrade() else {
            return;
        };
        if conn.dead.load(Ordering::Acquire) {
            break;
        }
        let opened = conn.streams_opened.load(Ordering::Acquire);
        if conn.active.load(Ordering::Acquire) == 0 && opened == last_opened {
            idle_for += tick;
        } else {
            idle_for = Duration::ZERO;
        }
        last_opened = opened;
        if idle_for >= config.idle_timeout {
            tracing::debug!("closing idle HBONE connection");
            conn.dead.store(true, Ordering::Release);
            break;
        }
        since_ping += tick;
        if since_ping >= config.keepalive_interval {
            since_ping = Duration::ZERO;
            if let Some(pp) = ping_pong.as_mut() {
                let pong =
                    tokio::time::timeout(config.keepalive_timeout, pp.ping(h2::Ping::opaque()));
                drop(conn);
                if !matches!(pong.await, Ok(Ok(_))) {
                    tracing::warn!("HBONE keepalive ping failed; closing the connection");
                    if let Some(conn) = connection.upgrade() {
                        conn.dead.store(true, Ordering::Release);
                    }
                    driver.abort();
                    break;
                }
            }
        }
    }
    // Drop the pool's reference: once open streams finish, the h2 connection closes.
    if let (Some(slot), Some(conn)) = (slot.upgrade(), connection.upgrade()) {
        slot.lock().await.retain(|c| !Arc::ptr_eq(c, &conn));
    }
}

fn forwarded_for(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("for={v4}"),
        IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
    }
}
