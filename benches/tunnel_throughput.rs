//! In-process tunnel throughput over loopback, three ways side by side:
//! `direct` (client -> app), `relay` (client -> plain TCP relay -> app) and `hbone`
//! (client -> entry proxy -> HBONE mTLS h2 stream -> HBONE server -> app), i.e. the same
//! two proxy hops a meshed connection takes. Each iteration moves 16 MiB and waits for the
//! app to acknowledge it. `benches/run.sh` runs this and prints the ratios.

use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

use weft::hbone::{ConnectRequest, HboneClient, HboneClientConfig, HboneServer, HboneServerConfig};
use weft::identity::{CertManager, MeshCa, RenewalPolicy, SpiffeId};
use weft::model::{parse_and_build, MeshStore};
use weft::proxy::{copy_both_ways, HostWorkloads};

const CHUNK: usize = 16 * 1024 * 1024;

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
async fn start_sink() -> SocketAddr {
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
async fn start_relay(to: SocketAddr) -> SocketAddr {
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
async fn start_hbone_path(app: SocketAddr, ca_dir: std::path::PathBuf) -> SocketAddr {
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
                let _ = copy_both_ways(conn, tunnel).await;
            });
        }
    });
    entry_addr
}

async fn send_chunk(conn: &mut TcpStream, data: &[u8]) {
    conn.write_all(data).await.unwrap();
    let mut ack = [0u8; 1];
    conn.read_exact(&mut ack).await.unwrap();
}

fn throughput(c: &mut Criterion) {
    let runtime = Runtime::new().unwrap();
    let ca_dir = tempfile::tempdir().unwrap();
    MeshCa::init(ca_dir.path(), "cluster.local", false).unwrap();
    let data = vec![0x5au8; CHUNK];

    let (direct, relay, hbone) = runtime.block_on(async {
        let sink = start_sink().await;
        let relay = start_relay(sink).await;
        let hbone = start_hbone_path(sink, ca_dir.path().to_owned()).await;
        (sink, relay, hbone)
    });

    let mut group = c.benchmark_group("tunnel_throughput");
    group.throughput(Throughput::Bytes(CHUNK as u64));
    group.sample_size(10);
    group.measurement_time(std::time::Duration::from_secs(6));
    for (name, addr) in [("direct", direct), ("relay", relay), ("hbone", hbone)] {
        let mut conn = runtime.block_on(async {
            let conn = TcpStream::connect(addr).await.unwrap();
            conn.set_nodelay(true).unwrap();
            conn
        });
        group.bench_function(name, |b| {
            b.iter(|| runtime.block_on(send_chunk(&mut conn, &data)));
        });
    }
    group.finish();
}

criterion_group!(benches, throughput);
criterion_main!(benches);
