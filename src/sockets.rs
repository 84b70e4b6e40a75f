//! Where the proxy's own outbound sockets come from. Host mode uses ordinary sockets; pods
//! mode supplies a factory that creates each socket inside the pod's network namespace with
//! the proxy mark, so the pod's redirection rules let it through.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpSocket, TcpStream};

/// Creates the TCP sockets the proxy connects out with.
pub trait SocketFactory: Send + Sync + 'static {
    /// A new, unconnected TCP socket suitable for reaching `remote`.
    fn tcp_socket(&self, remote: SocketAddr) -> io::Result<TcpSocket>;
}

/// Plain sockets in the daemon's own network namespace.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostSockets;

impl SocketFactory for HostSockets {
    fn tcp_socket(&self, remote: SocketAddr) -> io::Result<TcpSocket> {
        match remote {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
    }
}

/// Connects to `remote` with a socket from `factory`, with TCP_NODELAY set.
pub async fn connect(factory: &dyn SocketFactory, remote: SocketAddr) -> io::Result<TcpStream> {
    let socket = factory.tcp_socket(remote)?;
    socket.set_nodelay(true)?;
    socket.connect(remote).await
}
