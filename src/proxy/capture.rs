//! The listeners for captured (redirected) connections in pods mode: 15001 takes the pod's
//! outbound connections, 15006 plaintext connections to the pod from outside the mesh.
//! Each accepted connection gets a permit, a [`ConnectionId`] and its own span, learns its
//! original destination, and runs the [`super::l4`] sequence.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::Instrument;

use super::inbound::{serve_plaintext, InboundTarget};
use super::l4::PlainDownstream;
use super::outbound::OutboundProxy;
use crate::listener::accept_gated;
use crate::model::{MeshStore, Workload};
use crate::telemetry::ConnectionId;

/// The destination a redirected connection was headed for (`SO_ORIGINAL_DST`).
pub fn original_destination(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let socket = socket2::SockRef::from(stream);
    let local = stream.local_addr()?;
    let original = if local.is_ipv4() {
        socket.original_dst_v4()?
    } else {
        socket.original_dst_v6()?
    };
    original
        .as_socket()
        .ok_or_else(|| std::io::Error::other("original destination is not an IP socket address"))
}

/// The span every task of one connection carries.
fn connection_span(id: ConnectionId, path: &'static str, src: SocketAddr) -> tracing::Span {
    tracing::info_span!("connection", id = id.0, path, %src, dst = tracing::field::Empty)
}

/// Accepts redirected connections on `listener` until `stop` turns true. Each one holds a
/// permit, gets a [`ConnectionId`] and a span (`path`), learns its original destination and
/// is handed to `serve` with it; one without an original destination is closed.
async fn serve_redirected<F, Fut>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    name: &'static str,
    path: &'static str,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr, SocketAddr, ConnectionId) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    accept_gated(&listener, &mut stop, name, |client, peer, permit| {
        let _ = client.set_nodelay(true);
        let id = ConnectionId::next();
        let span = connection_span(id, path, peer);
        let dst = {
            let _entered = span.enter();
            match original_destination(&client) {
                Ok(dst) => dst,
                Err(error) => {
                    tracing::warn!(%error, "{name}: connection without an original destination; closing");
                    return;
                }
            }
        };
        span.record("dst", tracing::field::display(dst));
        let connection = serve(client, peer, dst, id);
        tokio::spawn(
            async move {
                let _permit = permit;
                connection.await;
            }
            .instrument(span),
        );
    })
    .await;
}

/// Serves 15001 for `source` until `stop` turns true: each connection is routed by its
/// original destination against the snapshot current when it arrives.
pub async fn serve_outbound(
    listener: TcpListener,
    stop: watch::Receiver<bool>,
    outbound: Arc<OutboundProxy>,
    store: Arc<MeshStore>,
    source: Arc<Workload>,
) {
    serve_redirected(
        listener,
        stop,
        "outbound 15001",
        "outbound",
        move |client, peer, dst, id| {
            let outbound = outbound.clone();
            let store = store.clone();
            let source = source.clone();
            async move {
                let connection = outbound.prepare(&store.load(), &source, peer, dst, id);
                connection.relay(PlainDownstream(client)).await;
            }
        },
    )
    .await;
}

/// Serves 15006 for `target` until `stop` turns true.
pub async fn serve_inbound_plaintext<T: InboundTarget>(
    listener: TcpListener,
    stop: watch::Receiver<bool>,
    target: Arc<T>,
) {
    serve_redirected(
        listener,
        stop,
        "inbound 15006",
        "plaintext_in",
        move |client, peer, dst, id| serve_plaintext(target.clone(), client, peer, dst, id),
    )
    .await;
}
