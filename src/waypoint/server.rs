//! The waypoint's HBONE side: which CONNECT streams it takes and what it speaks on them.
//!
//! A node daemon opens a stream to the waypoint for a connection to a bound Service, with
//! the Service `VIP:port` as the authority and the calling workload's identity as its
//! certificate. [`Waypoint`] serves a stream only for a Service of its namespace bound to it
//! (by `weft.dev/use-waypoint`) on a port the Service declares; anything else is refused
//! (400) by the HBONE transport.
//!
//! An admitted stream is HTTP when the port says so (`appProtocol` http, h2c, grpc, or a
//! port named `http…`/`grpc…`), plain TCP when it names another protocol, and otherwise
//! detected from the first bytes: an HTTP/1 request line or the HTTP/2 preface is HTTP,
//! anything else (or silence until the detection timeout: a server-first protocol) is
//! passed through as TCP to an endpoint of the Service.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::circuit_breaker::CircuitBreakers;
use super::proxy::{self, ForwardingDefaults, StreamContext};
use super::retry::RetryPolicy;
use super::retry_budget::{BudgetLimits, RetryBudgets};
use super::upstream::Upstreams;
use crate::hbone::server::{BoxFuture, InboundRequest, Responder, StreamHandler};
use crate::identity::SpiffeId;
use crate::model::{MeshStore, ServicePort};
use crate::telemetry::WorkloadLabels;

/// Largest request head (HTTP/1.1 buffer, HTTP/2 header list) accepted; larger gets 431.
pub const MAX_REQUEST_HEAD: usize = 64 * 1024;
/// Bytes read to tell HTTP from other protocols.
const SNIFF_LIMIT: usize = 4096;

/// Who this waypoint is.
#[derive(Debug, Clone)]
pub struct WaypointConfig {
    /// Its namespace: it serves Services of this namespace only.
    pub namespace: String,
    /// Its name, as Services name it in `weft.dev/use-waypoint`.
    pub name: String,
    /// The identity it presents to callers and to endpoints.
    pub identity: SpiffeId,
    /// How long to wait for a client's first bytes on a port whose protocol is not
    /// declared before treating the stream as TCP.
    pub protocol_detection_timeout: Duration,
    /// How long a forwarded request may wait for its response head when its route sets no
    /// `timeouts` (`None`: no limit).
    pub default_response_timeout: Option<Duration>,
    /// Retries of a request whose route has no `retry` (connect failures and refused
    /// streams, and 503 of idempotent methods); 0 for none.
    pub default_retry_attempts: u32,
}

/// The waypoint: an HBONE [`StreamHandler`] that proxies HTTP per route.
pub struct Waypoint {
    config: WaypointConfig,
    store: Arc<MeshStore>,
    upstreams: Arc<Upstreams>,
    defaults: Arc<ForwardingDefaults>,
}

/// How an admitted stream is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortProtocol {
    Http,
    Tcp,
    Detect,
}

// === impl Waypoint ===

impl Waypoint {
    /// A waypoint reading the model from `store` and forwarding through `upstreams`.
    pub fn new(
        config: WaypointConfig,
        store: Arc<MeshStore>,
        upstreams: Arc<Upstreams>,
    ) -> Arc<Self> {
        let defaults = Arc::new(ForwardingDefaults {
            response_timeout: config.default_response_timeout,
            retry: Arc::new(RetryPolicy::mesh_default(config.default_retry_attempts)),
            budgets: RetryBudgets::new(BudgetLimits::default()),
            breakers: CircuitBreakers::default(),
        });
        Arc::new(Waypoint {
            config,
            store,
            upstreams,
            defaults,
        })
    }

    /// Who it is.
    pub fn config(&self) -> &WaypointConfig {
        &self.config
    }

    async fn serve_stream(self: Arc<Self>, request: InboundRequest, responder: Responder) {
        let snapshot = self.store.load();
        let protocol = snapshot
            .service_by_vip(request.authority.ip())
            .and_then(|s| s.port(request.authority.port()))
            .map_or(PortProtocol::Detect, port_protocol);
        let stream = match responder.admit() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, "client went away before the stream was admitted");
                return;
            }
        };
        let (stream, protocol) = match protocol {
            PortProtocol::Detect => {
                match sniff(stream, self.config.protocol_detection_timeout).await {
                    Ok((stream, true)) => (stream, PortProtocol::Http),
                    Ok((stream, false)) => (stream, PortProtocol::Tcp),
                    Err(error) => {
                        tracing::debug!(%error, "stream ended during protocol detection");
                        return;
                    }
                }
            }
            known => (Prefixed::new(Bytes::new(), stream), known),
        };
        let source_workload = request
            .forwarded
            .and_then(|ip| snapshot.workload_by_ip(ip))
            .filter(|w| {
                w.spiffe_id(request.peer.trust_domain())
                    .is_ok_and(|id| id == *request.peer)
            })
            .cloned();
        tracing::debug!(forwarded = ?request.forwarded, known = source_workload.is_some(), peer = %request.peer, "stream admitted");
        let source = WorkloadLabels::shared(source_workload.as_ref(), Some(&request.peer));
        drop(snapshot);
        match protocol {
            PortProtocol::Tcp | PortProtocol::Detect => {
                self.pass_through(stream, request.authority).await
            }
            PortProtocol::Http => {
                let ctx = Arc::new(
                    StreamContext::new(
                        self.store.clone(),
                        self.upstreams.clone(),
                        request.peer.clone(),
                        request.remote,
                        request.authority,
                        source,
                        self.defaults.clone(),
                    )
                    .with_caller_ip(request.forwarded),
                );
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder.http1().max_buf_size(MAX_REQUEST_HEAD);
                builder
                    .http2()
                    .max_header_list_size(MAX_REQUEST_HEAD as u32);
                let service = service_fn(move |req| proxy::serve(ctx.clone(), req));
                let (lent, back) = Lent::new(stream);
                if let Err(error) = builder.serve_connection(TokioIo::new(lent), service).await {
                    tracing::debug!(%error, authority = %request.authority, "HTTP connection ended with an error");
                }
                // What hyper wrote last (a 400 for a malformed request, say) must reach the
                // client: end the stream cleanly instead of letting a drop reset it.
                if let Ok(mut stream) = back.await {
                    close_gracefully(&mut stream).await;
                }
            }
        }
    }

    /// Copies a non-HTTP stream to an endpoint of the Service called.
    async fn pass_through(
        &self,
        mut stream: Prefixed<crate::hbone::ServedStream>,
        vip: SocketAddr,
    ) {
        let snapshot = self.store.load();
        let Some(service) = snapshot.service_by_vip(vip.ip()).cloned() else {
            return;
        };
        let endpoint = match self
            .upstreams
            .pick(&snapshot, &service, vip.port(), &[], None)
        {
            Ok(endpoint) => endpoint,
            Err(error) => {
                tracing::info!(%error, %vip, "TCP stream through the waypoint has no endpoint");
                return;
            }
        };
        drop(snapshot);
        let mut upstream = match self.upstreams.open(&endpoint).await {
            Ok(io) => io.into_inner(),
            Err(error) => {
                tracing::info!(%error, %vip, "TCP stream through the waypoint could not connect");
                return;
            }
        };
        match tokio::io::copy_bidirectional(&mut stream, &mut upstream).await {
            Ok((sent, received)) => {
                tracing::debug!(%vip, upstream = %endpoint.addr, sent, received, "TCP stream through the waypoint closed")
            }
            Err(error) => tracing::debug!(%vip, %error, "TCP stream through the waypoint failed"),
        }
    }

    /// Whether `service` (namespace and labels as the model has them) is bound here.
    fn binds(&self, namespace: &str, name: &str, waypoint: Option<&str>) -> bool {
        namespace == self.config.namespace
            && waypoint == Some(self.config.name.as_str())
            && name != self.config.name
    }
}

impl StreamHandler for Waypoint {
    fn identity_for(&self, _local: SocketAddr) -> Option<SpiffeId> {
        Some(self.config.identity.clone())
    }

    fn serves(&self, _local: SocketAddr, authority: SocketAddr) -> bool {
        let snapshot = self.store.load();
        snapshot.service_by_vip(authority.ip()).is_some_and(|s| {
            self.binds(&s.namespace, &s.name, s.waypoint.as_deref())
                && s.port(authority.port()).is_some()
        })
    }

    fn handle(
        self: Arc<Self>,
        request: InboundRequest,
        responder: Responder,
    ) -> BoxFuture<'static, ()> {
        Box::pin(self.serve_stream(request, responder))
    }
}

fn port_protocol(port: &ServicePort) -> PortProtocol {
    let http = |p: &str| {
        matches!(
            p,
            "http" | "http2" | "h2c" | "kubernetes.io/h2c" | "grpc" | "grpc-web"
        )
    };
    if let Some(app) = port.app_protocol.as_deref() {
        let app = app.to_ascii_lowercase();
        return if http(&app) {
            PortProtocol::Http
        } else {
            PortProtocol::Tcp
        };
    }
    let prefix = port
        .name
        .as_deref()
        .map(|n| n.split('-').next().unwrap_or(n).to_ascii_lowercase());
    match prefix.as_deref() {
        Some(p) if http(p) => PortProtocol::Http,
        Some("tcp" | "tls" | "https" | "mongo" | "mysql" | "redis") => PortProtocol::Tcp,
        _ => PortProtocol::Detect,
    }
}

/// Reads the first bytes of `stream` and says whether they start HTTP; the bytes read are
/// replayed to whoever reads the returned stream.
async fn sniff<S: AsyncRead + Unpin>(
    mut stream: S,
    first_bytes_within: Duration,
) -> io::Result<(Prefixed<S>, bool)> {
    let mut buf = BytesMut::with_capacity(SNIFF_LIMIT);
    let mut first = true;
    loop {
        let read = if first {
            match tokio::time::timeout(first_bytes_within, stream.read_buf(&mut buf)).await {
                Ok(read) => read?,
                // A client that waits for the server to speak first: not HTTP.
                Err(_) => return Ok((Prefixed::new(buf.freeze(), stream), false)),
            }
        } else {
            stream.read_buf(&mut buf).await?
        };
        first = false;
        match looks_like_http(&buf) {
            Some(verdict) => return Ok((Prefixed::new(buf.freeze(), stream), verdict)),
            None if read == 0 || buf.len() >= SNIFF_LIMIT => {
                return Ok((Prefixed::new(buf.freeze(), stream), false))
            }
            None => {}
        }
    }
}

/// `Some(true)` for an HTTP/1 request line or the HTTP/2 preface, `Some(false)` when the
/// bytes cannot start either, `None` while undecided.
fn looks_like_http(bytes: &[u8]) -> Option<bool> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let n = bytes.len().min(PREFACE.len());
    if bytes[..n] == PREFACE[..n] {
        return if bytes.len() >= PREFACE.len() {
            Some(true)
        } else {
            None
        };
    }
    // method SP request-target SP HTTP/1.x CRLF
    let method_len = bytes.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if method_len == bytes.len() {
        return if method_len <= 16 { None } else { Some(false) };
    }
    if method_len == 0 || bytes[method_len] != b' ' {
        return Some(false);
    }
    let Some(line_end) = bytes.iter().position(|b| *b == b'\n') else {
        return if bytes[method_len + 1..]
            .iter()
            .all(|b| b.is_ascii_graphic() || *b == b' ')
        {
            None
        } else {
            Some(false)
        };
    };
    let line = bytes[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&bytes[..line_end]);
    Some(line.len() > 9 && line[line.len() - 9..].starts_with(b" HTTP/1."))
}

/// Longest wait, once the waypoint is done with a stream, for the client to close its side.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Half-closes `stream` (END_STREAM after the data already written) and waits, bounded, for
/// the client's end, so dropping it afterwards resets nothing that is still in flight.
async fn close_gracefully<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    use tokio::io::AsyncWriteExt;
    if stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, drain).await;
}

/// A stream lent to hyper: given back through the channel when hyper drops it.
struct Lent<S> {
    inner: Option<S>,
    back: Option<tokio::sync::oneshot::Sender<S>>,
}

// === impl Lent ===

impl<S> Lent<S> {
    fn new(inner: S) -> (Self, tokio::sync::oneshot::Receiver<S>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            Lent {
                inner: Some(inner),
                back: Some(tx),
            },
            rx,
        )
    }

    fn get(&mut self) -> io::Result<&mut S> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "stream given back"))
    }
}

impl<S> Drop for Lent<S> {
    fn drop(&mut self) {
        if let (Some(inner), Some(back)) = (self.inner.take(), self.back.take()) {
            let _ = back.send(inner);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Lent<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.get()?).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Lent<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get()?).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get()?).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get()?).poll_shutdown(cx)
    }
}

/// A stream whose first bytes were already read: they are returned first.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

// === impl Prefixed ===

impl<S> Prefixed<S> {
    fn new(prefix: Bytes, inner: S) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_http_by_its_first_bytes() {
        assert_eq!(
            looks_like_http(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Some(true)
        );
        assert_eq!(looks_like_http(b"POST /api?x=1 HTTP/1.0\n"), Some(true));
        assert_eq!(
            looks_like_http(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(true)
        );
        assert_eq!(looks_like_http(b"PRI * HT"), None);
        assert_eq!(looks_like_http(b"GE"), None);
        assert_eq!(looks_like_http(b"GET /pa"), None);
        assert_eq!(looks_like_http(b"hello\n"), Some(false));
        assert_eq!(looks_like_http(b"\x16\x03\x01\x02"), Some(false));
        assert_eq!(looks_like_http(b"GET / SMTP\r\n"), Some(false));
        assert_eq!(looks_like_http(b"PING\r\n"), Some(false));
    }

    #[tokio::test]
    async fn sniffed_bytes_are_replayed() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"ping\n")
            .await
            .unwrap();
        let (mut stream, http) = sniff(server, Duration::from_secs(5)).await.unwrap();
        assert!(!http);
        let mut got = [0u8; 5];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping\n");
    }

    #[tokio::test]
    async fn a_silent_client_is_tcp() {
        let (_client, server) = tokio::io::duplex(64);
        let (_, http) = sniff(server, Duration::from_millis(10)).await.unwrap();
        assert!(!http);
    }

    fn port(name: Option<&str>, app: Option<&str>) -> ServicePort {
        ServicePort {
            name: name.map(str::to_owned),
            port: 80,
            target_port: crate::model::TargetPort::Number(80),
            app_protocol: app.map(str::to_owned),
            protocol: "TCP".into(),
        }
    }

    #[test]
    fn declared_protocols_win() {
        assert_eq!(port_protocol(&port(None, Some("http"))), PortProtocol::Http);
        assert_eq!(
            port_protocol(&port(None, Some("kubernetes.io/h2c"))),
            PortProtocol::Http
        );
        assert_eq!(
            port_protocol(&port(Some("http"), Some("mysql"))),
            PortProtocol::Tcp
        );
        assert_eq!(
            port_protocol(&port(Some("grpc-api"), None)),
            PortProtocol::Http
        );
        assert_eq!(
            port_protocol(&port(Some("tcp-db"), None)),
            PortProtocol::Tcp
        );
        assert_eq!(
            port_protocol(&port(Some("web"), None)),
            PortProtocol::Detect
        );
        assert_eq!(port_protocol(&port(None, None)), PortProtocol::Detect);
    }
}
