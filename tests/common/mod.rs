//! Shared pieces for weft's integration tests: a throwaway CA, a loopback mesh with one
//! served workload on 127.0.0.1, and small real TCP applications (echo, sink).

#![allow(dead_code)]

pub mod apiserver;
pub mod cluster;
pub mod l7;
pub mod prometheus;
pub mod testbed;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use weft::hbone::{HboneClient, HboneClientConfig, HboneServer, HboneServerConfig};
use weft::identity::{CertManager, MeshCa, RenewalPolicy, SpiffeId};
use weft::model::{parse_and_build, MeshStore};
use weft::proxy::HostWorkloads;

pub const TRUST_DOMAIN: &str = "cluster.local";

/// A CA directory that disappears with the test.
pub struct TestCa {
    pub dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().expect("tempdir");
        MeshCa::init(dir.path(), TRUST_DOMAIN, false).expect("ca init");
        TestCa { dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    pub fn certs(&self) -> Arc<CertManager> {
        CertManager::new(self.path(), RenewalPolicy::default()).expect("cert manager")
    }
}

pub fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(TRUST_DOMAIN, ns, sa).expect("valid id")
}

/// A mesh where `demo/server` (sa `server`) lives on 127.0.0.1 and `demo/client` elsewhere.
pub const LOOPBACK_MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {weft.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: demo, labels: {app: server}}
spec: {serviceAccountName: server, nodeName: node-1}
status: {podIP: 127.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo}
spec: {serviceAccountName: client, nodeName: node-2}
status: {podIP: 10.255.0.1}
"#;

/// An HBONE server on 127.0.0.1 serving the loopback mesh.
pub struct LoopbackServer {
    pub addr: SocketAddr,
    pub server: Arc<HboneServer<HostWorkloads>>,
    pub stop: watch::Sender<bool>,
}

pub async fn start_hbone_server(certs: Arc<CertManager>) -> LoopbackServer {
    start_hbone_server_with(certs, "").await
}

/// Like [`start_hbone_server`], with extra config documents (e.g. policies) appended.
pub async fn start_hbone_server_with(certs: Arc<CertManager>, extra_yaml: &str) -> LoopbackServer {
    let yaml = if extra_yaml.is_empty() {
        LOOPBACK_MESH.to_owned()
    } else {
        format!("{LOOPBACK_MESH}---\n{extra_yaml}")
    };
    let snapshot = parse_and_build(&yaml).expect("mesh");
    let store = Arc::new(MeshStore::new(snapshot));
    let host = HostWorkloads::new(store, TRUST_DOMAIN.into());
    let server = HboneServer::new(host, certs, HboneServerConfig::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(server.clone().serve(listener, stop_rx));
    LoopbackServer { addr, server, stop }
}

pub fn client(certs: Arc<CertManager>) -> Arc<HboneClient> {
    HboneClient::new(certs, HboneClientConfig::default())
}

/// An echo application: writes back everything it reads, then closes its side.
pub async fn start_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A counting application: reads to EOF, then answers with the byte count and closes.
/// Only a correct half-close lets it answer.
pub async fn start_counter() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind counter");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut total = 0u64;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n as u64,
                    }
                }
                let _ = conn.write_all(format!("received {total}").as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    addr
}

/// Deterministic pseudo-random payload.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x & 0xff) as u8
        })
        .collect()
}

/// Waits until `check` holds or the deadline passes.
pub async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
