//! Working inside a pod's network namespace from the daemon.
//!
//! A socket stays in the namespace it was created in, so the daemon briefly moves the
//! calling thread into the pod's namespace (`setns`), creates the socket, and moves the
//! thread back. Every socket made this way carries the proxy mark
//! ([`weft::dataplane::PROXY_MARK`]), which the pod's
//! redirection rules let through untouched.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sched::{setns, CloneFlags};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket};

use weft::dataplane::PROXY_MARK;
use weft::sockets::SocketFactory;

/// What went wrong entering a namespace or making a socket there.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot enter network namespace {path}: {source}")]
    Enter { path: PathBuf, source: nix::Error },
    #[error("in network namespace {path}: {action}: {source}")]
    Socket {
        path: PathBuf,
        action: String,
        source: io::Error,
    },
}

/// An open handle on a network namespace.
#[derive(Debug)]
pub struct Netns {
    path: PathBuf,
    file: File,
}

impl Netns {
    /// Opens the namespace at `path` (e.g. `/var/run/netns/x` or `/proc/<pid>/ns/net`).
    pub fn open(path: &Path) -> Result<Netns, NetnsError> {
        let open_error = |source| NetnsError::Open {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(open_error)?;
        Ok(Netns {
            path: path.to_owned(),
            file,
        })
    }

    /// The namespace the calling thread is in now (the daemon's own, at start-up).
    pub fn current() -> Result<Netns, NetnsError> {
        Netns::open(Path::new("/proc/thread-self/ns/net"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace's identity: device and inode of its nsfs file.
    pub fn identity(&self) -> io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let meta = self.file.metadata()?;
        Ok((meta.dev(), meta.ino()))
    }

    /// Whether `other` is this same namespace (compared by device and inode of the open
    /// handles, so a path retargeted since either was opened cannot fool it).
    pub fn same_namespace(&self, other: &Netns) -> io::Result<bool> {
        Ok(self.identity()? == other.identity()?)
    }

    /// Whether this handle is a network namespace at all: nsfs files share one device, so
    /// it must be on the same device as `known` (a real netns) — a regular file or a
    /// directory is not.
    pub fn is_network_namespace_like(&self, known: &Netns) -> io::Result<bool> {
        Ok(self.identity()?.0 == known.identity()?.0)
    }

    /// A path that names exactly the namespace this handle holds, for tools run as child
    /// processes (`nsenter --net=...`), whatever the original path points to now.
    pub fn pinned_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            self.file.as_raw_fd()
        ))
    }

    /// Runs `f` with the calling thread inside this namespace, then returns it `home`.
    pub fn run<T>(&self, home: &Netns, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
            path: self.path.clone(),
            source,
        })?;
        let result = f();
        if let Err(error) = setns(home.file.as_fd(), CloneFlags::CLONE_NEWNET) {
            // A worker thread stuck in a pod's namespace would open later sockets in the
            // wrong place. Stop rather than risk traffic escaping its rules.
            tracing::error!(%error, pod_netns = %self.path.display(),
                "cannot return to the daemon's network namespace; aborting");
            std::process::abort();
        }
        Ok(result)
    }
}

/// Options for a socket created in a pod.
#[derive(Debug, Clone, Copy)]
pub struct PodSocketOptions {
    /// Bind to a non-local address (the original client IP) for transparent delivery.
    pub transparent: bool,
    /// Allow several listeners on one port (a new daemon next to an old one during upgrade).
    pub reuse_port: bool,
}

fn pod_socket(
    netns: &Netns,
    home: &Netns,
    domain: Domain,
    options: PodSocketOptions,
) -> Result<Socket, NetnsError> {
    let socket_error = |action: &str, source| NetnsError::Socket {
        path: netns.path.clone(),
        action: action.to_owned(),
        source,
    };
    let socket = netns
        .run(home, || {
            Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
        })?
        .map_err(|e| socket_error("socket()", e))?;
    socket
        .set_mark(PROXY_MARK)
        .map_err(|e| socket_error("SO_MARK", e))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| socket_error("O_NONBLOCK", e))?;
    socket
        .set_tcp_nodelay(true)
        .map_err(|e| socket_error("TCP_NODELAY", e))?;
    if options.reuse_port {
        socket
            .set_reuse_address(true)
            .map_err(|e| socket_error("SO_REUSEADDR", e))?;
        socket
            .set_reuse_port(true)
            .map_err(|e| socket_error("SO_REUSEPORT", e))?;
    }
    if options.transparent {
        let result = if domain == Domain::IPV6 {
            socket.set_ip_transparent_v6(true)
        } else {
            socket.set_ip_transparent_v4(true)
        };
        result.map_err(|e| socket_error("IP_TRANSPARENT", e))?;
    }
    Ok(socket)
}

fn domain_of(addr: SocketAddr) -> Domain {
    if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
}

/// A listener inside the pod's namespace on `addr`, marked and with SO_REUSEPORT.
pub fn listen_in_pod(
    netns: &Netns,
    home: &Netns,
    addr: SocketAddr,
) -> Result<TcpListener, NetnsError> {
    let socket = pod_socket(
        netns,
        home,
        domain_of(addr),
        PodSocketOptions {
            transparent: false,
            reuse_port: true,
        },
    )?;
    let socket_error = |action: String, source| NetnsError::Socket {
        path: netns.path.clone(),
        action,
        source,
    };
    socket
        .bind(&addr.into())
        .map_err(|e| socket_error(format!("bind {addr}"), e))?;
    socket
        .listen(1024)
        .map_err(|e| socket_error(format!("listen {addr}"), e))?;
    TcpListener::from_std(socket.into()).map_err(|e| socket_error("register listener".into(), e))
}

/// Makes the proxy's outbound sockets inside one pod's namespace.
pub struct PodSockets {
    pub netns: Arc<Netns>,
    pub home: Arc<Netns>,
}

impl PodSockets {
    /// A socket bound to the client's address, for delivering to the local app as if the
    /// client had connected directly (needs the pod's policy-routing rule for the replies).
    pub fn transparent_from(
        &self,
        client: std::net::IpAddr,
        remote: SocketAddr,
    ) -> io::Result<TcpSocket> {
        let socket = pod_socket(
            &self.netns,
            &self.home,
            domain_of(remote),
            PodSocketOptions {
                transparent: true,
                reuse_port: false,
            },
        )
        .map_err(io::Error::other)?;
        socket.bind(&SocketAddr::new(client, 0).into())?;
        Ok(TcpSocket::from_std_stream(socket.into()))
    }
}

impl SocketFactory for PodSockets {
    fn tcp_socket(&self, remote: SocketAddr) -> io::Result<TcpSocket> {
        let socket = pod_socket(
            &self.netns,
            &self.home,
            domain_of(remote),
            PodSocketOptions {
                transparent: false,
                reuse_port: false,
            },
        )
        .map_err(io::Error::other)?;
        Ok(TcpSocket::from_std_stream(socket.into()))
    }
}
