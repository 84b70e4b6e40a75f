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

/// Serves 15001 for `source` until `stop` turns true: each connection is routed by its
/// original destination against the snapshot current when it arrives.
pub async fn serve_outbound(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    outbound: Arc<OutboundProxy>,
    store: Arc<MeshStore>,
    source: Arc<Workload>,
) {
    accept_gated(&listener, &mut stop, "outbound 15001", |client, peer, permit| {
        let _ = client.set_nodelay(true);
        let outbound = outbound.clone();
        let store = store.clone();
        let source = source.clone();
        let id = ConnectionId::next();
        let span = connection_span(id, "outbound", peer);
        tokio::spawn(
            async move {
                let _permit = permit;
                let dst = match original_destination(&client) {
                    Ok(dst) => dst,
                    Err(error) => {
                        tracing::warn!(%error, "outbound connection without an original destination; closing");
                        return;
                    }
                };
                tracing::Span::current().record("dst", tracing::field::display(dst));
                let connection = outbound.prepare(&store.load(), &source, peer, dst, id);
                connection.relay(PlainDownstream(client)).await;
            }
            .instrument(span),
        );
    })
    .await;
}

/// Serves 15006 for `target` until `stop` turns true.
pub async fn serve_inbound_plaintext<T: InboundTarget>(
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    target: Arc<T>,
) {
    accept_gated(&listener, &mut stop, "inbound 15006", |client, peer, permit| {
        let _ = client.set_nodelay(true);
        let target = target.clone();
        let id = ConnectionId::next();
        let span = connection_span(id, "plaintext_in", peer);
        tokio::spawn(
            async move {
                let _permit = permit;
                let dst = match original_destination(&client) {
                    Ok(dst) => dst,
                    Err(error) => {
                        tracing::warn!(%error, "inbound connection without an original destination; closing");
                        return;
                    }
                };
                tracing::Span::current().record("dst", tracing::field::display(dst));
                serve_plaintext(target, client, peer, dst, id).await;
            }
            .instrument(span),
        );
    })
    .await;
}
