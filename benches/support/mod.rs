//! Shared set-up for the in-process benchmarks: a sink app that acknowledges every
//! CHUNK bytes, a plain TCP relay, and the full HBONE path (entry proxy with the daemon's
//! per-connection telemetry, mTLS h2 tunnel, HBONE server) on loopback.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use weft::hbone::{ConnectRequest, HboneClient, HboneClientConfig, HboneServer, HboneServerConfig};
use weft::identity::{CertManager, RenewalPolicy, SpiffeId};
use weft::model::{parse_and_build, MeshStore};
use weft::proxy::{copy_both_ways, copy_metered, HostWorkloads};
use weft::telemetry::{ConnectionReport, Reporter, Security, WorkloadLabels};

pub const CHUNK: usize = 16 * 1024 * 1024;

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: bench, labels: {weft.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: bench}
spec: {serviceAccountName: server}
status: {podIP: 127.0.0.1}
"#;

/// Reads CHUNK bytes, answers one byte, forever.
pub async fn start_sink() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let _ = conn.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut seen = 0usize;
                loop {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen += n,
                    }
                    while seen >= CHUNK {
                        seen -= CHUNK;
                        if conn.write_all(b"k").await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Plain TCP relay: accept, connect to `to`, copy both ways.
pub async fn start_relay(to: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = conn.set_nodelay(true);
                let up = TcpStream::connect(to).await.unwrap();
                let _ = up.set_nodelay(true);
                let _ = copy_both_ways(conn, up).await;
            });
        }
    });
    addr
}

/// Entry proxy: accept plain TCP, tunnel it over HBONE to the app.
pub async fn start_hbone_path(app: SocketAddr, ca_dir: std::path::PathBuf) -> SocketAddr {
    let certs = CertManager::new(ca_dir, RenewalPolicy::default()).unwrap();
    let store = Arc::new(MeshStore::new(parse_and_build(MESH).unwrap()));
    let host = HostWorkloads::new(store, "cluster.local".into());
    let server = HboneServer::new(host, certs.clone(), HboneServerConfig::default());
    let hbone_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hbone_addr = hbone_listener.local_addr().unwrap();
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _keep = _stop_tx;
        server.serve(hbone_listener, stop_rx).await
    });
    let client = HboneClient::new(certs, HboneClientConfig::default());
    let request = ConnectRequest {
        source: SpiffeId::new("cluster.local", "bench", "client").unwrap(),
        destination_identity: SpiffeId::new("cluster.local", "bench", "server").unwrap(),
        hbone_addr,
        authority: app,
        forwarded_for: None,
    };
    let entry = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let entry_addr = entry.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((conn, _)) = entry.accept().await {
            let client = client.clone();
            let request = request.clone();
            tokio::spawn(async move {
                let _ = conn.set_nodelay(true);
                let tunnel = client.connect(&request).await.unwrap();
                // The same per-connection telemetry as the daemon's outbound side: counters
                // are no-ops until a recorder is installed (the "metrics off" case).
                let mut report = ConnectionReport::new(
                    weft::telemetry::ConnectionId::next(),
                    Reporter::Source,
                    conn.peer_addr().unwrap(),
                    app,
                    Arc::new(WorkloadLabels::default()),
                    Arc::new(WorkloadLabels::default()),
                    None,
                    Security::MutualTls,
                );
                let meter = report.opened();
                let (totals, error) = copy_metered(conn, tunnel, meter, None).await;
                report.closed((totals.a_to_b, totals.b_to_a), error.as_ref());
            });
        }
    });
    entry_addr
}

pub async fn send_chunk(conn: &mut TcpStream, data: &[u8]) {
    conn.write_all(data).await.unwrap();
    let mut ack = [0u8; 1];
    conn.read_exact(&mut ack).await.unwrap();
}

/// Connects to `addr` with TCP_NODELAY.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    let conn = TcpStream::connect(addr).await.unwrap();
    conn.set_nodelay(true).unwrap();
    conn
}
