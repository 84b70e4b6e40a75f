//! HBONE end to end over loopback: real TLS 1.3, real h2, real TCP applications.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use weft::hbone::client::HboneError;
use weft::hbone::{ConnectRequest, HboneClient, HboneClientConfig};
use weft::identity::{CertManager, MeshCa, RenewalPolicy, SpiffeId};
use weft::tls;

fn request(server: SocketAddr, app: SocketAddr) -> ConnectRequest {
    ConnectRequest {
        source: id("demo", "client"),
        destination_identity: id("demo", "server"),
        hbone_addr: server,
        authority: app,
        forwarded_for: Some("10.255.0.1".parse().unwrap()),
    }
}

#[tokio::test]
async fn multi_mib_payloads_cross_intact_both_ways() {
    let ca = TestCa::new();
    let certs = ca.certs();
    let server = start_hbone_server(certs.clone()).await;
    let echo = start_echo().await;
    let client = client(certs);

    let data = payload(8 * 1024 * 1024 + 123, 7);
    let stream = client
        .connect(&request(server.addr, echo))
        .await
        .expect("connect");
    let (mut rd, mut wr) = tokio::io::split(stream);
    let to_send = data.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&to_send).await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut echoed = Vec::with_capacity(data.len());
    rd.read_to_end(&mut echoed).await.expect("read echo");
    writer.await.unwrap();
    assert_eq!(echoed.len(), data.len());
    assert!(echoed == data, "echoed bytes differ from the payload");
}

#[tokio::test]
async fn half_close_lets_the_app_answer_after_eof() {
    let ca = TestCa::new();
    let certs = ca.certs();
    let server = start_hbone_server(certs.clone()).await;
    let counter = start_counter().await;
    let client = client(certs);

    let mut stream = client
        .connect(&request(server.addr, counter))
        .await
        .expect("connect");
    let data = payload(3 * 1024 * 1024, 3);
    stream.write_all(&data).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, format!("received {}", data.len()));
}

#[tokio::test]
async fn hundred_concurrent_streams_share_one_pooled_connection() {
    let ca = TestCa::new();
    let certs = ca.certs();
    let server = start_hbone_server(certs.clone()).await;
    let echo = start_echo().await;
    let client = client(certs);

    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let mut tasks = Vec::new();
    for i in 0..100u64 {
        let client = client.clone();
        let barrier = barrier.clone();
        let req = request(server.addr, echo);
        tasks.push(tokio::spawn(async move {
            let mut stream = client.connect(&req).await.expect("connect");
            let msg = payload(1000, i);
            stream.write_all(&msg).await.unwrap();
            let mut back = vec![0u8; msg.len()];
            stream.read_exact(&mut back).await.unwrap();
            assert_eq!(back, msg);
            // All 100 streams are open at the same moment here.
            barrier.wait().await;
            stream.shutdown().await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        client.connections_opened(),
        1,
        "100 streams should share one connection"
    );
    assert_eq!(
        server
            .server
            .stats()
            .connections_accepted
            .load(Ordering::Relaxed),
        1
    );
    assert_eq!(
        server
            .server
            .stats()
            .streams_accepted
            .load(Ordering::Relaxed),
        100
    );

    // The 101st stream exceeds the per-connection stream cap: a second connection opens.
    let mut extra = client
        .connect(&request(server.addr, echo))
        .await
        .expect("connect");
    extra.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    extra.read_exact(&mut one).await.unwrap();
    assert_eq!(client.connections_opened(), 2);
}

#[tokio::test]
async fn idle_connections_close_and_the_pool_reconnects() {
    let ca = TestCa::new();
    let certs = ca.certs();
    let server = start_hbone_server(certs.clone()).await;
    let echo = start_echo().await;
    let client = HboneClient::new(
        certs,
        HboneClientConfig {
            idle_timeout: Duration::from_millis(300),
            ..HboneClientConfig::default()
        },
    );
    let mut stream = client.connect(&request(server.addr, echo)).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    drop(stream);
    let stats = server.server.stats().clone();
    eventually(
        "idle connection closed on the server",
        Duration::from_secs(5),
        || stats.connections_open.load(Ordering::Relaxed) == 0,
    )
    .await;
    assert_eq!(client.connections_live(), 0);
    let mut again = client.connect(&request(server.addr, echo)).await.unwrap();
    again.write_all(b"ok").await.unwrap();
    let mut back = [0u8; 2];
    again.read_exact(&mut back).await.unwrap();
    assert_eq!(client.connections_opened(), 2);
}

#[tokio::test]
async fn unreachable_app_gets_503() {
    let ca = TestCa::new();
    let certs = ca.certs();
    let server = start_hbone_server(certs.clone()).await;
    // A port nothing listens on: bind, learn the port, close.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let err = client(certs)
        .connect(&request(server.addr, closed))
        .await
        .expect_err("must fail");
    assert!(
        matches!(
            err,
            HboneError::Status {
                status: StatusCode::SERVICE_UNAVAILABLE,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn client_refuses_a_server_with_the_wrong_identity() {
    let ca = TestCa::new();
    let certs = ca.certs();
    let server = start_hbone_server(certs.clone()).await;
    let echo = start_echo().await;
    let mut req = request(server.addr, echo);
    req.destination_identity = id("demo", "payments");
    let err = client(certs).connect(&req).await.expect_err("must refuse");
    let text = err.to_string();
    assert!(text.contains("not the expected"), "{text}");
}

/// Opens TLS + h2 to the server with an arbitrary client config; returns the h2 sender.
async fn raw_h2(
    server: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<h2::client::SendRequest<Bytes>, String> {
    let tcp = TcpStream::connect(server)
        .await
        .map_err(|e| e.to_string())?;
    let tls = TlsConnector::from(config)
        .connect(ServerName::IpAddress(server.ip().into()), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (sender, conn) = h2::client::handshake(tls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn status_of(
    sender: &mut h2::client::SendRequest<Bytes>,
    request: Request<()>,
) -> Result<StatusCode, String> {
    let mut ready = sender.clone().ready().await.map_err(|e| e.to_string())?;
    let (response, _send) = ready
        .send_request(request, false)
        .map_err(|e| e.to_string())?;
    let response = response.await.map_err(|e| e.to_string())?;
    Ok(response.status())
}

async fn mesh_client_config(
    certs: &Arc<CertManager>,
    source: &SpiffeId,
) -> Arc<rustls::ClientConfig> {
    let slot = certs.get_or_issue(source).await.unwrap();
    tls::client_config(&certs.roots(), slot, id("demo", "server")).unwrap()
}

#[tokio::test]
async fn bad_requests_get_their_status_and_the_server_keeps_serving() {
    let ca = TestCa::new();
    let certs = ca.certs();
    let server = start_hbone_server(certs.clone()).await;
    let echo = start_echo().await;
    let mut sender = raw_h2(
        server.addr,
        mesh_client_config(&certs, &id("demo", "client")).await,
    )
    .await
    .expect("mTLS + h2");

    let connect = |authority: &str| {
        Request::builder()
            .method(Method::CONNECT)
            .uri(authority)
            .body(())
            .unwrap()
    };
    // Not an address this server serves: no open relay.
    assert_eq!(
        status_of(&mut sender, connect("127.0.0.2:80")).await,
        Ok(StatusCode::BAD_REQUEST)
    );
    assert_eq!(
        status_of(&mut sender, connect("192.0.2.1:80")).await,
        Ok(StatusCode::BAD_REQUEST)
    );
    // weft's own ports: no loops.
    for port in [15008, 15001, 15006, 15000] {
        let status = status_of(&mut sender, connect(&format!("127.0.0.1:{port}"))).await;
        assert_eq!(status, Ok(StatusCode::BAD_REQUEST), "port {port}");
    }
    // Malformed authorities.
    assert_eq!(
        status_of(&mut sender, connect("server.demo:80")).await,
        Ok(StatusCode::BAD_REQUEST)
    );
    assert_eq!(
        status_of(&mut sender, connect("127.0.0.1:99999")).await,
        Ok(StatusCode::BAD_REQUEST)
    );
    // Not CONNECT.
    let get = Request::builder()
        .method(Method::GET)
        .uri(format!("https://127.0.0.1:{}/", echo.port()))
        .body(())
        .unwrap();
    assert_eq!(
        status_of(&mut sender, get).await,
        Ok(StatusCode::METHOD_NOT_ALLOWED)
    );
    // Headers over the 16 KiB limit: 431, and the connection stays usable.
    let mut big = connect(&echo.to_string());
    big.headers_mut()
        .insert("x-padding", "a".repeat(20 * 1024).parse().unwrap());
    assert_eq!(
        status_of(&mut sender, big).await,
        Ok(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
    );
    // The same connection still serves a good request afterwards.
    assert_eq!(
        status_of(&mut sender, connect(&echo.to_string())).await,
        Ok(StatusCode::OK)
    );
    assert!(
        server
            .server
            .stats()
            .streams_refused
            .load(Ordering::Relaxed)
            >= 9
    );

    // Grossly oversized headers: h2 drops that connection (ENHANCE_YOUR_CALM) and the
    // server keeps serving everybody else.
    let mut huge = connect(&echo.to_string());
    huge.headers_mut()
        .insert("x-padding", "a".repeat(256 * 1024).parse().unwrap());
    assert!(status_of(&mut sender, huge).await.is_err());
    let mut fresh = raw_h2(
        server.addr,
        mesh_client_config(&certs, &id("demo", "client")).await,
    )
    .await
    .expect("new connection");
    assert_eq!(
        status_of(&mut fresh, connect(&echo.to_string())).await,
        Ok(StatusCode::OK)
    );
}

#[tokio::test]
async fn clients_without_a_valid_mesh_identity_are_refused() {
    let ca = TestCa::new();
    let certs = ca.certs();
    let server = start_hbone_server(certs.clone()).await;
    let echo = start_echo().await;
    let good = || {
        Request::builder()
            .method(Method::CONNECT)
            .uri(echo.to_string())
            .body(())
            .unwrap()
    };

    // 1. No client certificate at all.
    let slot = certs.get_or_issue(&id("demo", "client")).await.unwrap();
    let base = tls::client_config(&certs.roots(), slot, id("demo", "server")).unwrap();
    let mut no_cert = (*base).clone();
    no_cert.client_auth_cert_resolver = Arc::new(NoClientCert);
    let outcome = match raw_h2(server.addr, Arc::new(no_cert)).await {
        Ok(mut sender) => status_of(&mut sender, good()).await.map(|s| s.to_string()),
        Err(e) => Err(e),
    };
    assert!(
        outcome.is_err(),
        "no client cert must be refused, got {outcome:?}"
    );

    // 2. A certificate from another CA.
    let other_ca = TestCa::new();
    let other = other_ca.certs();
    let foreign = other.get_or_issue(&id("demo", "client")).await.unwrap();
    // Trust our roots for the server, but present the foreign leaf.
    let foreign_config = tls::client_config(&certs.roots(), foreign, id("demo", "server")).unwrap();
    let outcome = match raw_h2(server.addr, foreign_config).await {
        Ok(mut sender) => status_of(&mut sender, good()).await.map(|s| s.to_string()),
        Err(e) => Err(e),
    };
    assert!(
        outcome.is_err(),
        "a foreign CA must be refused, got {outcome:?}"
    );

    // 3. A certificate from our CA for another trust domain.
    let stranger = SpiffeId::new("evil.example", "demo", "client").unwrap();
    let outcome = match raw_h2(server.addr, mesh_client_config(&certs, &stranger).await).await {
        Ok(mut sender) => status_of(&mut sender, good()).await.map(|s| s.to_string()),
        Err(e) => Err(e),
    };
    assert!(
        outcome.is_err(),
        "another trust domain must be refused, got {outcome:?}"
    );
    assert!(
        server
            .server
            .stats()
            .handshakes_failed
            .load(Ordering::Relaxed)
            >= 3
    );

    // The server still serves a proper client.
    let mut sender = raw_h2(
        server.addr,
        mesh_client_config(&certs, &id("demo", "client")).await,
    )
    .await
    .unwrap();
    assert_eq!(status_of(&mut sender, good()).await, Ok(StatusCode::OK));
}

#[derive(Debug)]
struct NoClientCert;

impl rustls::client::ResolvesClientCert for NoClientCert {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }
    fn has_certs(&self) -> bool {
        false
    }
}

#[tokio::test]
async fn certificates_renew_and_survive_a_broken_ca() {
    let ca = TestCa::new();
    let policy = RenewalPolicy {
        ttl: Duration::from_secs(2),
        renew_at_fraction: 0.5,
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_millis(400),
    };
    let certs = CertManager::new(ca.path(), policy).unwrap();
    let slot = certs.get_or_issue(&id("demo", "client")).await.unwrap();
    let first = slot.current();
    let first_der = first.chain[0].clone();
    eventually("first renewal", Duration::from_secs(5), || {
        slot.current().chain[0] != first_der
    })
    .await;
    let status = certs.status();
    assert_eq!(status.len(), 1);
    assert!(status[0].renewals >= 1);

    // Break the CA: renewals fail, the last good leaf keeps serving, failures are counted.
    let key_path = ca.path().join("ca-key.pem");
    let good_key = std::fs::read(&key_path).unwrap();
    std::fs::write(&key_path, b"not a key").unwrap();
    let held = slot.current().chain[0].clone();
    eventually("failed renewal attempts", Duration::from_secs(5), || {
        certs.status()[0].failed_renewals >= 2
    })
    .await;
    assert_eq!(
        slot.current().chain[0],
        held,
        "the old certificate must keep serving"
    );

    // Repair the CA: the next retry succeeds.
    std::fs::write(&key_path, good_key).unwrap();
    eventually("renewal after repair", Duration::from_secs(5), || {
        slot.current().chain[0] != held
    })
    .await;
    let _ = MeshCa::load(&ca.path()).unwrap();
}

#[tokio::test]
async fn a_denying_policy_answers_401_and_others_still_pass() {
    let ca = TestCa::new();
    let certs = ca.certs();
    let policy = r#"apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: only-order, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules: [{from: [{source: {principals: ["cluster.local/ns/demo/sa/order"]}}]}]
"#;
    let server = start_hbone_server_with(certs.clone(), policy).await;
    let echo = start_echo().await;
    let client = client(certs);
    let err = client
        .connect(&request(server.addr, echo))
        .await
        .expect_err("client is not allowed");
    assert!(
        matches!(
            err,
            HboneError::Status {
                status: StatusCode::UNAUTHORIZED,
                ..
            }
        ),
        "{err}"
    );
    let mut allowed = request(server.addr, echo);
    allowed.source = id("demo", "order");
    let mut stream = client.connect(&allowed).await.expect("order is allowed");
    stream.write_all(b"hi").await.unwrap();
    let mut back = [0u8; 2];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"hi");
}

/// Accepts any server certificate (with valid signatures): these clients test what the
/// server refuses, not what they verify.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client presenting the mesh leaf of `demo/client` with the given TLS versions and ALPN.
async fn client_with(
    certs: &Arc<CertManager>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let base = mesh_client_config(certs, &id("demo", "client")).await;
    let provider = tls::provider();
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_cert_resolver(base.client_auth_cert_resolver.clone());
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

#[tokio::test]
async fn clients_without_tls13_or_alpn_h2_are_refused() {
    let ca = TestCa::new();
    let certs = ca.certs();
    let server = start_hbone_server(certs.clone()).await;
    let echo = start_echo().await;
    let connect = || {
        Request::builder()
            .method(Method::CONNECT)
            .uri(echo.to_string())
            .body(())
            .unwrap()
    };
    let outcome = |config| async {
        match raw_h2(server.addr, config).await {
            Ok(mut sender) => status_of(&mut sender, connect()).await,
            Err(e) => Err(e),
        }
    };
    let tls12 = [&rustls::version::TLS12];
    let tls13 = [&rustls::version::TLS13];

    // The same client, TLS 1.3 with h2, is served: the refusals below are about the
    // version and ALPN only.
    assert_eq!(
        outcome(client_with(&certs, &tls13, &[b"h2"]).await).await,
        Ok(StatusCode::OK)
    );
    let refused = [
        ("TLS 1.2 only", client_with(&certs, &tls12, &[b"h2"]).await),
        (
            "ALPN http/1.1 only",
            client_with(&certs, &tls13, &[b"http/1.1"]).await,
        ),
        ("no ALPN", client_with(&certs, &tls13, &[]).await),
    ];
    for (i, (what, config)) in refused.into_iter().enumerate() {
        let result = outcome(config).await;
        assert!(result.is_err(), "{what} must be refused, got {result:?}");
        // The server counts the refusal once its side of the handshake is over.
        let stats = server.server.stats();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while stats.handshakes_failed.load(Ordering::Relaxed) < i as u64 + 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: the server never counted the refusal"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            stats.handshakes_failed.load(Ordering::Relaxed),
            i as u64 + 1,
            "{what}: refused once by the server"
        );
    }
    // The server still serves a proper client.
    assert_eq!(
        outcome(mesh_client_config(&certs, &id("demo", "client")).await).await,
        Ok(StatusCode::OK)
    );
}
