#![no_main]
//! Feeds HBONE CONNECT requests to a real in-process `HboneServer` (the same as weft-node's,
//! serving pod `demo/server` at 192.0.2.1, with a throwaway mesh CA) inside a private network
//! namespace (the pod address lives on its `lo`; needs root), over one long-lived mTLS
//! HTTP/2 connection from a `demo/client` identity. The input is text lines: the method, the
//! `:authority`, then `name: value` headers (e.g. `forwarded: for=...`). Only requests an h2
//! peer can put on the wire are sent. Asserts the status the server documents for each check
//! (src/hbone/server.rs): 405 for a method other than CONNECT; 400 unless the authority is
//! `<ip>:<port>`; 400 for weft's own ports and for any address not served here (anything but
//! 192.0.2.1); otherwise the port is dialled inside the namespace: 200 where something
//! listens (the application on 8080, the HBONE listener), 503 anywhere else. 431 only
//! for a header list over the limit. A server that answers nothing within 5 s is a failure.
//! WEFT_FUZZ_DEBUG=1 prints each outcome.
//!
//! The authority check itself is private (`HboneServer::serve_stream`), hence the whole server.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::header::{HeaderName, HeaderValue};
use http::uri::{Authority, Parts, PathAndQuery, Scheme};
use http::{Method, Request, StatusCode, Uri};
use libfuzzer_sys::fuzz_target;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use weft::hbone::{HboneServer, HboneServerConfig, MAX_HEADER_LIST_SIZE, OWN_PORTS};
use weft::identity::{CertManager, MeshCa, RenewalPolicy, SpiffeId};
use weft::model::{parse_and_build, MeshStore};
use weft::proxy::HostWorkloads;

#[path = "../common/netns.rs"]
mod netns;

const TRUST_DOMAIN: &str = "cluster.local";
/// The served pod's address, on `lo` of the private namespace.
const POD_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Where the pod's application listens.
const APP_PORT: u16 = 8080;
const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {weft.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: demo}
spec: {serviceAccountName: server, nodeName: node-1}
status: {podIP: 192.0.2.1}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo}
spec: {serviceAccountName: client, nodeName: node-2}
status: {podIP: 10.255.0.1}
"#;

struct Harness {
    rt: Runtime,
    addr: SocketAddr,
    certs: Arc<CertManager>,
    sender: Mutex<Option<SendRequest<Bytes>>>,
    _ca_dir: tempfile::TempDir,
    _stop: watch::Sender<bool>,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        netns::enter_private(&["192.0.2.1/32"]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let ca_dir = tempfile::tempdir().expect("tempdir");
        MeshCa::init(ca_dir.path(), TRUST_DOMAIN, false).expect("ca init");
        let certs =
            CertManager::new(ca_dir.path().to_owned(), RenewalPolicy::default()).expect("certs");
        let store = Arc::new(MeshStore::new(parse_and_build(MESH).expect("mesh")));
        let host = HostWorkloads::new(store, TRUST_DOMAIN.into());
        let server = HboneServer::new(host, certs.clone(), HboneServerConfig::default());
        let (stop, stop_rx) = watch::channel(false);
        let addr = rt.block_on(async {
            let listener = TcpListener::bind((POD_IP, 0)).await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(server.serve(listener, stop_rx));
            // The application: reads what the tunnel carries until EOF, then closes.
            let app = TcpListener::bind((POD_IP, APP_PORT)).await.expect("bind app");
            tokio::spawn(async move {
                while let Ok((mut conn, _)) = app.accept().await {
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut conn, &mut tokio::io::sink()).await;
                    });
                }
            });
            addr
        });
        Harness {
            rt,
            addr,
            certs,
            sender: Mutex::new(None),
            _ca_dir: ca_dir,
            _stop: stop,
        }
    })
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new(TRUST_DOMAIN, "demo", sa).expect("id")
}

/// One mTLS h2 connection to the server, as `demo/client`.
async fn connect(h: &Harness) -> SendRequest<Bytes> {
    let identity = h.certs.get_or_issue(&id("client")).await.expect("client leaf");
    let config = weft::tls::client_config(&h.certs.roots(), identity, id("server")).expect("tls");
    let tcp = TcpStream::connect(h.addr).await.expect("connect");
    let name = ServerName::IpAddress(IpAddr::V4(POD_IP).into());
    let tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("mTLS handshake with the HBONE server");
    let (sender, connection) = h2::client::Builder::new()
        .enable_push(false)
        .handshake::<_, Bytes>(tls)
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
}

/// The request the input describes, if an h2 client can send it, and its header list size.
fn request(data: &[u8]) -> Option<(Request<()>, usize)> {
    let mut lines = data.split(|&b| b == b'\n');
    let method = Method::from_bytes(lines.next()?).ok()?;
    let authority = Authority::try_from(lines.next()?).ok()?;
    let mut parts = Parts::default();
    parts.authority = Some(authority);
    if method != Method::CONNECT {
        parts.scheme = Some(Scheme::HTTP);
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    let mut builder = Request::builder()
        .method(method)
        .uri(Uri::from_parts(parts).ok()?);
    let mut size = 0;
    for line in lines.take(64) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        size += name.as_str().len() + value.len() + 32;
        builder = builder.header(name, value);
    }
    Some((builder.body(()).ok()?, size))
}

fuzz_target!(|data: &[u8]| {
    let Some((req, header_size)) = request(data) else {
        return;
    };
    let h = harness();
    let method = req.method().clone();
    let authority = req.uri().authority().expect("authority").as_str().to_owned();
    let outcome = h.rt.block_on(async {
        let existing = h.sender.lock().unwrap().take();
        let sender = match existing {
            Some(sender) => sender,
            None => connect(h).await,
        };
        let answer = tokio::time::timeout(Duration::from_secs(5), async {
            let mut sender = sender.clone().ready().await?;
            let (response, _send) = sender.send_request(req, true)?;
            response.await
        })
        .await;
        match answer {
            Err(_) => panic!("the HBONE server did not answer {method} {authority:?} within 5 s"),
            Ok(Ok(response)) => {
                *h.sender.lock().unwrap() = Some(sender);
                Some(response.status())
            }
            Ok(Err(error)) => {
                // A request h2 refuses to send, or a stream reset: nothing weft decided.
                // Reconnect if the connection itself is gone.
                if !(error.is_go_away() || error.is_io()) {
                    *h.sender.lock().unwrap() = Some(sender);
                }
                None
            }
        }
    });
    if std::env::var_os("WEFT_FUZZ_DEBUG").is_some() {
        eprintln!("hbone_connect: {method} {authority:?} -> {outcome:?}");
    }
    let Some(status) = outcome else { return };
    if status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE {
        assert!(
            header_size > (MAX_HEADER_LIST_SIZE as usize) / 2,
            "431 for a {header_size}-byte header list"
        );
        return;
    }
    let expected: &[StatusCode] = if method != Method::CONNECT {
        &[StatusCode::METHOD_NOT_ALLOWED]
    } else {
        match authority.parse::<SocketAddr>() {
            Err(_) => &[StatusCode::BAD_REQUEST],
            Ok(addr) if OWN_PORTS.contains(&addr.port()) => &[StatusCode::BAD_REQUEST],
            Ok(addr) if addr.ip() != IpAddr::V4(POD_IP) => &[StatusCode::BAD_REQUEST],
            // The application, or the HBONE listener itself: something accepts.
            Ok(addr) if addr.port() == APP_PORT || addr.port() == h.addr.port() => &[StatusCode::OK],
            Ok(_) => &[StatusCode::SERVICE_UNAVAILABLE],
        }
    };
    assert!(
        expected.contains(&status),
        "{method} {authority:?}: status {status}, expected one of {expected:?}"
    );
});
