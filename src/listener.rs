//! The accept loop every weft listener shares: accept until shutdown is signalled, hand
//! each connection to a handler, and ride out transient accept errors (e.g. out of fds)
//! without spinning. Proxy listeners use [`accept_gated`], which admits each connection
//! through the process-wide [`crate::limits`] gate and closes the ones it sheds.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A listener on `addr` with SO_REUSEADDR and SO_REUSEPORT: during an upgrade the new
/// daemon binds the same ports while the old one still serves (it closes its listeners
/// when it starts draining).
pub fn bind_shared(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket
        .bind(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding {addr}: {e}")))?;
    socket
        .listen(1024)
        .map_err(|e| std::io::Error::new(e.kind(), format!("listening on {addr}: {e}")))
}

/// Pause after a failed accept, so a persistent error does not spin a core.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts connections on `listener` until `shutdown` turns true.
pub async fn accept_until_shutdown(
    listener: &TcpListener,
    shutdown: &mut watch::Receiver<bool>,
    what: &str,
    mut on_accept: impl FnMut(TcpStream, SocketAddr),
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        match accepted {
            Ok((stream, remote)) => on_accept(stream, remote),
            Err(error) => {
                tracing::warn!(%error, listener = what, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

/// Like [`accept_until_shutdown`], but every connection must first get a permit from the
/// process-wide gate (keyed by the client's IP); shed connections are closed at once. The
/// handler keeps the permit for as long as the connection lives.
pub async fn accept_gated(
    listener: &TcpListener,
    shutdown: &mut watch::Receiver<bool>,
    what: &'static str,
    mut on_accept: impl FnMut(TcpStream, SocketAddr, crate::limits::Permit),
) {
    let gate = crate::limits::global();
    accept_until_shutdown(listener, shutdown, what, |stream, remote| {
        match gate.admit(remote.ip(), what) {
            Ok(permit) => on_accept(stream, remote, permit),
            Err(_) => drop(stream),
        }
    })
    .await
}
