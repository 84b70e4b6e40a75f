//! Start-up and shutdown pieces both modes share: the CA, the config source, listening
//! sockets and waiting for SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use weft::config::FileSource;
use weft::identity::{CertManager, RenewalPolicy, SpiffeId};
use weft::model::{MeshSnapshot, MeshStore};

use crate::Args;

/// What every mode starts from.
pub struct Basics {
    pub certs: Arc<CertManager>,
    pub store: Arc<MeshStore>,
}

/// Checks the trust domain, loads the CA and the config (refusing to start on a bad one)
/// and starts watching the config file.
pub fn start_basics(args: &Args) -> anyhow::Result<Basics> {
    SpiffeId::new(&args.trust_domain, "x", "x")
        .with_context(|| format!("--trust-domain {:?} is not valid", args.trust_domain))?;
    let policy = RenewalPolicy {
        ttl: args.cert_ttl,
        ..RenewalPolicy::default()
    };
    let certs = CertManager::new(args.ca_dir.clone(), policy).context("loading the mesh CA")?;
    let store = Arc::new(MeshStore::new(MeshSnapshot::empty()));
    let source = FileSource::load_initial(&args.config, store.clone())
        .with_context(|| format!("loading mesh config {}", args.config.display()))?;
    source.spawn_watch(Duration::from_millis(200));
    Ok(Basics { certs, store })
}

pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .context("creating a socket")?;
    socket.set_reuseaddr(true).context("SO_REUSEADDR")?;
    socket
        .bind(addr)
        .with_context(|| format!("binding {addr} (is another weft-node running?)"))?;
    socket
        .listen(1024)
        .with_context(|| format!("listening on {addr}"))
}

pub async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
