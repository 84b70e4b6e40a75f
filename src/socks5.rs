//! SOCKS5 entry point (RFC 1928, CONNECT, no authentication) for clients that cannot be
//! redirected, e.g. applications on a VM in host mode: `curl --socks5 127.0.0.1:15080 ...`.
//!
//! Destinations may be IP addresses or Service names (`<svc>.<ns>.svc[.cluster.local]`,
//! resolved against the mesh model; no DNS is consulted). The reply is sent only after the
//! upstream connection is open, so a failure reaches the client as a SOCKS error code.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::Instrument;

use crate::listener::accept_gated;
use crate::model::{MeshSnapshot, MeshStore};
use crate::proxy::l4::Downstream;
use crate::proxy::outbound::ProxyError;
use crate::proxy::{HostWorkloads, OutboundProxy};
use crate::telemetry::ConnectionId;

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0;
const NO_ACCEPTABLE_METHOD: u8 = 0xff;
const CMD_CONNECT: u8 = 1;
const ATYP_V4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_V6: u8 = 4;

/// SOCKS5 reply codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    /// The upstream is open; the reply carries the address the client is connected to.
    Succeeded = 0,
    /// Any other refusal (a loop, an identity or HBONE failure, a policy denial).
    GeneralFailure = 1,
    /// This host serves no mesh workload, so there is no identity to connect as.
    NotAllowed = 2,
    /// The name did not resolve, or the service has no such port or no endpoints.
    HostUnreachable = 4,
    /// The plain TCP connect to the destination failed.
    ConnectionRefused = 5,
    /// The client asked for something other than CONNECT.
    CommandNotSupported = 7,
    /// The client used an address type other than IPv4, IPv6 or a domain name.
    AddressTypeNotSupported = 8,
}

/// Why a SOCKS5 session failed before or during setup.
#[derive(Debug, thiserror::Error)]
pub enum Socks5Error {
    /// Reading from or writing to the client failed.
    #[error("client I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The client did not send its greeting and request within 10 seconds.
    #[error("client did not finish the SOCKS5 handshake in time")]
    Timeout,
    /// The greeting or request carried this version byte instead of 5.
    #[error("unsupported SOCKS version {0} (only 5 is spoken)")]
    Version(u8),
    /// The client's methods did not include "no authentication" (it is told 0xff).
    #[error("client offered no 'no authentication' method")]
    NoMethod,
    /// The client sent this command code instead of CONNECT (1).
    #[error("unsupported command {0} (only CONNECT is supported)")]
    Command(u8),
    /// The request carried this address type code, not 1 (IPv4), 3 (name) or 4 (IPv6).
    #[error("unsupported address type {0}")]
    AddressType(u8),
    /// The requested host is neither an IP literal nor the name of a Service in the
    /// model.
    #[error(
        "cannot resolve {0:?}: only IP addresses and <service>.<namespace>.svc names are served"
    )]
    Unresolvable(String),
    /// No workload of the model has an address on this host (see
    /// [`HostWorkloads::source_workload`]).
    #[error("this host serves no mesh workload, so it has no identity to connect with")]
    NoSourceWorkload,
}

/// The SOCKS5 listener of a host-mode daemon.
pub struct Socks5Server {
    outbound: Arc<OutboundProxy>,
    store: Arc<MeshStore>,
    host: Arc<HostWorkloads>,
    sessions_open: Arc<AtomicU64>,
}

impl Socks5Server {
    /// SOCKS5 sessions in progress.
    pub fn sessions_open(&self) -> u64 {
        self.sessions_open.load(Ordering::Relaxed)
    }

    /// A server that resolves names against `store`, connects as the workload `host`
    /// serves, and routes through `outbound`.
    pub fn new(
        outbound: Arc<OutboundProxy>,
        store: Arc<MeshStore>,
        host: Arc<HostWorkloads>,
    ) -> Arc<Self> {
        Arc::new(Socks5Server {
            outbound,
            store,
            host,
            sessions_open: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Accepts clients until `shutdown` turns true.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) {
        accept_gated(
            &listener,
            &mut shutdown,
            "socks5",
            |client, remote, permit| {
                let server = self.clone();
                let open = server.sessions_open.clone();
                open.fetch_add(1, Ordering::Relaxed);
                let id = ConnectionId::next();
                let span = tracing::info_span!("connection", id = id.0, path = "socks5",
                    src = %remote, dst = tracing::field::Empty);
                tokio::spawn(
                    async move {
                        let _permit = permit;
                        let result = server.serve_client(client, remote, id).await;
                        open.fetch_sub(1, Ordering::Relaxed);
                        if let Err(error) = result {
                            tracing::info!(%error, "SOCKS5 session failed");
                        }
                    }
                    .instrument(span),
                );
            },
        )
        .await;
    }

    async fn serve_client(
        &self,
        mut client: TcpStream,
        peer: SocketAddr,
        id: ConnectionId,
    ) -> Result<(), Socks5Error> {
        let _ = client.set_nodelay(true);
        let target = tokio::time::timeout(Duration::from_secs(10), negotiate(&mut client))
            .await
            .map_err(|_| Socks5Error::Timeout)?;
        let target = match target {
            Ok(target) => target,
            Err(error) => {
                let code = match &error {
                    Socks5Error::Command(_) => Some(Reply::CommandNotSupported),
                    Socks5Error::AddressType(_) => Some(Reply::AddressTypeNotSupported),
                    _ => None,
                };
                if let Some(code) = code {
                    let _ = send_reply(&mut client, code, None).await;
                }
                return Err(error);
            }
        };
        let snapshot = self.store.load();
        let dst = match resolve(&snapshot, &target) {
            Some(dst) => dst,
            None => {
                send_reply(&mut client, Reply::HostUnreachable, None).await?;
                return Err(Socks5Error::Unresolvable(target.host));
            }
        };
        let Some(source) = self.host.source_workload() else {
            send_reply(&mut client, Reply::NotAllowed, None).await?;
            return Err(Socks5Error::NoSourceWorkload);
        };
        tracing::Span::current().record("dst", tracing::field::display(dst));
        let connection = self.outbound.prepare(&snapshot, &source, peer, dst, id);
        drop(snapshot);
        connection.relay(Socks5Downstream(client)).await;
        Ok(())
    }
}

/// A SOCKS5 client waiting for its reply: success with the bound address once the
/// upstream is open, or the reply code of the refusal.
struct Socks5Downstream(TcpStream);

impl Downstream<ProxyError> for Socks5Downstream {
    type Stream = TcpStream;

    async fn admit(mut self) -> std::io::Result<TcpStream> {
        let bound = self.0.local_addr().ok();
        send_reply(&mut self.0, Reply::Succeeded, bound).await?;
        Ok(self.0)
    }

    async fn refuse(mut self, refusal: &ProxyError) {
        let code = match refusal {
            ProxyError::Connect { .. } => Reply::ConnectionRefused,
            ProxyError::NoEndpoints { .. } | ProxyError::NoServicePort { .. } => {
                Reply::HostUnreachable
            }
            _ => Reply::GeneralFailure,
        };
        tracing::info!(error = %refusal, reply = ?code, "SOCKS5 connection refused");
        let _ = send_reply(&mut self.0, code, None).await;
    }
}

/// A requested destination before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
}

async fn negotiate(client: &mut TcpStream) -> Result<Target, Socks5Error> {
    let mut head = [0u8; 2];
    client.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(Socks5Error::Version(head[0]));
    }
    let mut methods = vec![0u8; usize::from(head[1])];
    client.read_exact(&mut methods).await?;
    if !methods.contains(&NO_AUTH) {
        client.write_all(&[VERSION, NO_ACCEPTABLE_METHOD]).await?;
        return Err(Socks5Error::NoMethod);
    }
    client.write_all(&[VERSION, NO_AUTH]).await?;

    let mut request = [0u8; 4];
    client.read_exact(&mut request).await?;
    if request[0] != VERSION {
        return Err(Socks5Error::Version(request[0]));
    }
    let host = match request[3] {
        ATYP_V4 => {
            let mut octets = [0u8; 4];
            client.read_exact(&mut octets).await?;
            Ipv4Addr::from(octets).to_string()
        }
        ATYP_V6 => {
            let mut octets = [0u8; 16];
            client.read_exact(&mut octets).await?;
            Ipv6Addr::from(octets).to_string()
        }
        ATYP_DOMAIN => {
            let mut len = [0u8; 1];
            client.read_exact(&mut len).await?;
            let mut name = vec![0u8; usize::from(len[0])];
            client.read_exact(&mut name).await?;
            String::from_utf8_lossy(&name).into_owned()
        }
        other => {
            // Drain nothing more: the client gets an error reply and the session ends.
            return Err(Socks5Error::AddressType(other));
        }
    };
    let mut port = [0u8; 2];
    client.read_exact(&mut port).await?;
    if request[1] != CMD_CONNECT {
        return Err(Socks5Error::Command(request[1]));
    }
    Ok(Target {
        host,
        port: u16::from_be_bytes(port),
    })
}

/// An IP literal, or a Service name known to the model.
fn resolve(snapshot: &MeshSnapshot, target: &Target) -> Option<SocketAddr> {
    if let Ok(ip) = target.host.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, target.port));
    }
    let name = target.host.trim_end_matches('.');
    let name = name
        .strip_suffix(".svc.cluster.local")
        .or_else(|| name.strip_suffix(".svc"))?;
    let (service, namespace) = name.split_once('.')?;
    let vip = *snapshot.service(namespace, service)?.vips.first()?;
    Some(SocketAddr::new(vip, target.port))
}

async fn send_reply(
    client: &mut TcpStream,
    reply: Reply,
    bound: Option<SocketAddr>,
) -> std::io::Result<()> {
    let mut message = vec![VERSION, reply as u8, 0];
    match bound.unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)) {
        SocketAddr::V4(v4) => {
            message.push(ATYP_V4);
            message.extend_from_slice(&v4.ip().octets());
            message.extend_from_slice(&v4.port().to_be_bytes());
        }
        SocketAddr::V6(v6) => {
            message.push(ATYP_V6);
            message.extend_from_slice(&v6.ip().octets());
            message.extend_from_slice(&v6.port().to_be_bytes());
        }
    }
    client.write_all(&message).await
}
