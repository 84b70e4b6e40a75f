#![no_main]
//! Feeds a SOCKS5 client's bytes to a real in-process `Socks5Server` on 127.0.0.1: one TCP
//! connection per input, the whole input written, then the write side closed. The mesh has a
//! Service `web.demo` and no workload on this host, so no session ever dials out (every
//! complete request ends in a refusal before any upstream connection); the server also runs
//! in a private network namespace (needs root), so even a regression could not reach any
//! other host. Asserts the server's
//! bytes equal those of a reference reading of RFC 1928 as src/socks5.rs documents it (no
//! authentication, CONNECT only, IPv4/IPv6/domain destinations, IP literals and
//! `<svc>.<ns>.svc[.cluster.local]` names): method reply, then the request's reply code
//! (7 bad command, 8 bad address type, 4 unresolvable, 2 not allowed: no source workload),
//! and nothing after a protocol violation or a truncated message. A server that neither
//! answers nor closes within 5 s is a failure. WEFT_FUZZ_DEBUG=1 prints each exchange.
//!
//! `negotiate` and `resolve` are private, hence the whole server.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use weft::hbone::{HboneClient, HboneClientConfig};
use weft::identity::{CertManager, MeshCa, RenewalPolicy};
use weft::model::{parse_and_build, MeshStore};
use weft::proxy::{HostWorkloads, OutboundProxy};
use weft::socks5::Socks5Server;

#[path = "../common/netns.rs"]
mod netns;

const TRUST_DOMAIN: &str = "cluster.local";
/// No Pod at all: the host has no source workload, so a resolved request is refused (2).
const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {weft.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80}]
"#;

struct Harness {
    rt: Runtime,
    addr: SocketAddr,
    _ca_dir: tempfile::TempDir,
    _stop: watch::Sender<bool>,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        netns::enter_private(&[]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let ca_dir = tempfile::tempdir().expect("tempdir");
        MeshCa::init(ca_dir.path(), TRUST_DOMAIN, false).expect("ca init");
        let certs =
            CertManager::new(ca_dir.path().to_owned(), RenewalPolicy::default()).expect("certs");
        let snapshot = parse_and_build(MESH).expect("mesh");
        assert_eq!(snapshot.workloads().count(), 0);
        let store = Arc::new(MeshStore::new(snapshot));
        let host = HostWorkloads::new(store.clone(), TRUST_DOMAIN.into());
        assert!(host.source_workload().is_none());
        let (stop, stop_rx) = watch::channel(false);
        let addr = rt.block_on(async {
            let client = HboneClient::new(certs, HboneClientConfig::default());
            let outbound = OutboundProxy::new(client, TRUST_DOMAIN.into());
            let server = Socks5Server::new(outbound, store, host);
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(server.serve(listener, stop_rx));
            addr
        });
        Harness {
            rt,
            addr,
            _ca_dir: ca_dir,
            _stop: stop,
        }
    })
}

fn reply(code: u8) -> [u8; 10] {
    [5, code, 0, 1, 0, 0, 0, 0, 0, 0]
}

/// Whether the documented resolution finds a destination: an IP literal, or `web.demo.svc`
/// / `web.demo.svc.cluster.local` (trailing dots allowed), the one Service in the mesh.
fn resolves(host: &str) -> bool {
    if host.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = host.trim_end_matches('.');
    name == "web.demo.svc" || name == "web.demo.svc.cluster.local"
}

/// What the server should write for `input`, followed by the client closing its side.
fn expected(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let [5, n, rest @ ..] = input else {
        return out;
    };
    let n = usize::from(*n);
    if rest.len() < n {
        return out;
    }
    let (methods, rest) = rest.split_at(n);
    if !methods.contains(&0) {
        out.extend_from_slice(&[5, 0xff]);
        return out;
    }
    out.extend_from_slice(&[5, 0]);
    let [5, command, _reserved, atyp, rest @ ..] = rest else {
        return out;
    };
    let (host, rest) = match *atyp {
        1 if rest.len() >= 4 => (
            Ipv4Addr::from(<[u8; 4]>::try_from(&rest[..4]).unwrap()).to_string(),
            &rest[4..],
        ),
        4 if rest.len() >= 16 => (
            Ipv6Addr::from(<[u8; 16]>::try_from(&rest[..16]).unwrap()).to_string(),
            &rest[16..],
        ),
        3 if !rest.is_empty() && rest.len() > usize::from(rest[0]) => {
            let len = usize::from(rest[0]);
            (
                String::from_utf8_lossy(&rest[1..=len]).into_owned(),
                &rest[1 + len..],
            )
        }
        1 | 3 | 4 => return out,
        _ => {
            out.extend_from_slice(&reply(8));
            return out;
        }
    };
    if rest.len() < 2 {
        return out;
    }
    if *command != 1 {
        out.extend_from_slice(&reply(7));
        return out;
    }
    out.extend_from_slice(&reply(if resolves(&host) { 2 } else { 4 }));
    out
}

fuzz_target!(|data: &[u8]| {
    let h = harness();
    let (received, reset) = h.rt.block_on(async {
        let mut client = TcpStream::connect(h.addr).await.expect("connect");
        // The server may close early (a refusal) while we still write: that is fine.
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut received = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut received))
            .await
            .unwrap_or_else(|_| {
                panic!("the SOCKS5 server neither answered nor closed within 5 s: got {received:?}")
            });
        // RST instead of FIN: no TIME_WAIT pile-up over millions of connections.
        let _ = client.set_zero_linger();
        (received, read.is_err())
    });
    let want = expected(data);
    if std::env::var_os("WEFT_FUZZ_DEBUG").is_some() {
        eprintln!("socks5_negotiate: {data:?} -> {received:?} (reset: {reset}), expected {want:?}");
    }
    if reset {
        // The server closed with our bytes unread (RST): what arrived must be a prefix.
        assert!(
            want.starts_with(&received),
            "server sent {received:?} (then reset), expected {want:?}"
        );
    } else {
        assert_eq!(received, want, "server reply for {data:?}");
    }
});
