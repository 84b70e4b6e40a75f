//! `weft signer` against a real kube-apiserver: it signs a node's CSR only for service
//! accounts with a pod on that node (the node named by weft-node's pod-bound token), denies
//! everything else with a reason `kubectl describe csr` shows, cannot approve any other
//! signer's CSRs (RBAC, proven by the API server), loses nothing across a restart, and keeps
//! the trust bundle published. The node side is weft's own `CsrIssuer` and trust-bundle
//! watch, with weft-node's real RBAC.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use rcgen::{CertificateParams, KeyPair, SanType, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256};
use serde_json::json;

use common::apiserver::{self, status_code, ApiServer};
use common::cluster::{conn_load_result, pods_e2e_ready, Cluster, AMBIENT};
use common::testbed::{binary, e2e_ready, Process};
use weft::identity::ca::verify_chain;
use weft::identity::csr::WorkloadKey;
use weft::identity::root_configmap::RootWatch;
use weft::identity::CsrError;
use weft::identity::{
    CsrIssuer, IdentityError, IssueRequest, Issuer, MeshCa, SpiffeId, TrustAnchors,
};

const MINUTE: Duration = Duration::from_secs(60);

async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(MINUTE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within 60s"))
}

fn assert_forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) {
    match result {
        Err(e) => assert_eq!(status_code(&e), Some(403), "{what}: expected 403, got {e}"),
        Ok(v) => panic!("{what}: expected 403, but it was allowed: {v:?}"),
    }
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "shop", sa).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sf", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `weft signer` on the host, waited for until /healthz/ready answers.
fn start_signer(dir: &Path, ca_dir: &Path, kubeconfig: &Path, port: u16) -> Process {
    let mut cmd = Command::new(binary("weft"));
    cmd.arg("signer")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--ca-dir")
        .arg(ca_dir)
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .args(["--max-cert-ttl", "2h"])
        .env("RUST_LOG", "info,weft=debug");
    let log = dir.join(format!("signer-{}.log", common::testbed::unique("s")));
    let mut signer = Process::spawn(cmd, &log, "weft signer");
    signer.wait_until("ready", MINUTE, || {
        http_get(port, "/healthz/ready").is_some()
    });
    signer
}

/// A CSR as a client of our choosing writes it.
async fn create_csr(
    client: &kube::Client,
    name: &str,
    pem: &str,
    signer: &str,
    usages: &[&str],
) -> Result<CertificateSigningRequest, kube::Error> {
    let csr: CertificateSigningRequest = serde_json::from_value(json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": {
            "request": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pem),
            "signerName": signer,
            "usages": usages,
        },
    }))
    .unwrap();
    Api::<CertificateSigningRequest>::all(client.clone())
        .create(&PostParams::default(), &csr)
        .await
}

const MESH_USAGES: [&str; 3] = ["digital signature", "server auth", "client auth"];

/// Waits until the CSR has a certificate or a Denied/Failed condition.
async fn answered(admin: &kube::Client, name: &str) -> CertificateSigningRequest {
    let api: Api<CertificateSigningRequest> = Api::all(admin.clone());
    bounded(
        &format!("an answer to CSR {name}"),
        kube::runtime::wait::await_condition(
            api,
            name,
            |csr: Option<&CertificateSigningRequest>| {
                csr.and_then(|c| c.status.as_ref()).is_some_and(|s| {
                    s.certificate.is_some()
                        || s.conditions
                            .iter()
                            .flatten()
                            .any(|c| c.type_ == "Denied" || c.type_ == "Failed")
                })
            },
        ),
    )
    .await
    .expect("watching the CSR")
    .expect("the CSR exists")
}

/// The (type, reason, message) of a CSR's Denied or Failed condition.
fn refusal(csr: &CertificateSigningRequest) -> (String, String, String) {
    let status = csr.status.as_ref().expect("status");
    assert!(
        status.certificate.is_none(),
        "CSR {:?} was signed",
        csr.metadata.name
    );
    let c = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Denied" || c.type_ == "Failed")
        .expect("a Denied or Failed condition");
    (
        c.type_.clone(),
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
    )
}

fn raw_request(sans: Vec<&str>, key: &KeyPair) -> String {
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans
        .into_iter()
        .map(|s| SanType::URI(rcgen::Ia5String::try_from(s).unwrap()))
        .collect();
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signer_signs_only_for_pods_on_the_asking_node() {
    if !(e2e_ready(&["curl", "kubectl"]) && ApiServer::available()) {
        return;
    }
    let server = ApiServer::start_alone();
    server
        .apply_install(&[
            "namespace.yaml",
            "rbac.yaml",
            "configmap.yaml",
            "signer.yaml",
        ])
        .await;
    let admin = server.admin_client().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let ca = MeshCa::init(&ca_dir, "cluster.local", false).unwrap();

    // shop/cart runs on node-a, shop/pay only on node-b.
    apiserver::create_namespace(&admin, "shop", &[]).await;
    for (sa, pod, node) in [("cart", "cart-1", "node-a"), ("pay", "pay-1", "node-b")] {
        apiserver::ensure_service_account(&admin, "shop", sa).await;
        apiserver::create_pod(&admin, "shop", pod, sa, node, &[]).await;
        apiserver::set_pod_ip(&admin, "shop", pod, "10.244.0.9").await;
    }
    let node_a = server
        .token_client(&server.node_pod_token("node-a").await)
        .await;
    server.node_pod_token("node-b").await;
    let signer_token = server
        .service_account_token("weft-system", "weft-signer", 3600)
        .await;
    let signer_kubeconfig = dir.path().join("signer.yaml");
    server.token_kubeconfig_local(&signer_kubeconfig, &signer_token);
    let port = free_port();
    let mut signer = start_signer(dir.path(), &ca_dir, &signer_kubeconfig, port);

    // The trust bundle is published, and weft-node (its own RBAC) reads it.
    let anchors = TrustAnchors::default();
    let mut bundle = RootWatch::start(
        node_a.clone(),
        "weft-system",
        "weft-ca-root",
        anchors.clone(),
        None,
    );
    bounded(
        "the trust bundle",
        bundle.wait_loaded(Duration::from_secs(5)),
    )
    .await;
    assert_eq!(*anchors.current(), ca.roots().to_vec());

    // 1. node-a gets a certificate for cart, which runs there.
    let issuer = CsrIssuer::new(node_a.clone(), "node-a".into(), anchors.clone(), MINUTE);
    let ask = |sa: &str| IssueRequest {
        id: id(sa),
        ttl: Duration::from_secs(24 * 3600),
    };
    let leaf = issuer.issue(ask("cart")).await.expect("cart on node-a");
    assert_eq!(leaf.id, id("cart"));
    verify_chain(&leaf.chain, ca.roots()).expect("the leaf chains to the CA's root");
    let lifetime = leaf.not_after.duration_since(leaf.not_before).unwrap();
    assert!(
        lifetime <= Duration::from_secs(2 * 3600 + 300),
        "the signer's --max-cert-ttl 2h was not applied: {lifetime:?}"
    );

    // 2. node-a asks for pay, whose only pod is on node-b: denied, and the reason says so.
    let denied = issuer.issue(ask("pay")).await.expect_err("pay from node-a");
    let IdentityError::Csr(error) = &denied else {
        panic!("not a CSR error: {denied}");
    };
    let CsrError::Denied {
        name,
        reason,
        message,
        ..
    } = error.as_ref()
    else {
        panic!("not a denial: {error}");
    };
    assert_eq!(reason, "NoPodOnNode", "{message}");
    assert!(
        message.contains("shop/pay") && message.contains("node-a") && message.contains("node-b"),
        "{message}"
    );
    let admin_kubeconfig = dir.path().join("admin.yaml");
    server.admin_kubeconfig_local(&admin_kubeconfig);
    let described = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&admin_kubeconfig)
        .args(["describe", "csr", name])
        .output()
        .unwrap();
    let described = String::from_utf8_lossy(&described.stdout);
    assert!(
        described.contains("Denied")
            && described.contains("NoPodOnNode")
            && described.contains("is scheduled on node node-a"),
        "kubectl describe csr {name}:\n{described}"
    );

    // A pod being deleted counts until its grace period ends, not after.
    apiserver::ensure_service_account(&admin, "shop", "leaving").await;
    apiserver::create_pod(&admin, "shop", "leaving-1", "leaving", "node-a", &[]).await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(admin.clone(), "shop");
    pods.delete(
        "leaving-1",
        &kube::api::DeleteParams {
            grace_period_seconds: Some(1),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let deadline = Instant::now() + MINUTE;
    loop {
        let end = pods
            .get("leaving-1")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp;
        let end = end
            .expect("no kubelet here: the pod stays Terminating")
            .0
            .as_second();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        if now > end + 1 {
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let denied = issuer
        .issue(ask("leaving"))
        .await
        .expect_err("a pod past its grace period");
    assert!(denied.to_string().contains("NoPodOnNode"), "{denied}");

    // 3. Requests weft never signs, each denied with its field.
    let p256 = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let rsa = KeyPair::generate_for(&PKCS_RSA_SHA256).unwrap();
    let cart = "spiffe://cluster.local/ns/shop/sa/cart";
    let cases = [
        (
            "two-sans",
            raw_request(vec![cart, "spiffe://cluster.local/ns/shop/sa/pay"], &p256),
            &MESH_USAGES[..],
            "BadRequest",
            "exactly one identity",
        ),
        (
            "foreign-trust-domain",
            raw_request(vec!["spiffe://evil.example/ns/shop/sa/cart"], &p256),
            &MESH_USAGES[..],
            "BadRequest",
            "outside this mesh's trust domain cluster.local",
        ),
        (
            "rsa-key",
            raw_request(vec![cart], &rsa),
            &MESH_USAGES[..],
            "BadRequest",
            "RSA key",
        ),
        (
            "no-client-auth",
            raw_request(vec![cart], &p256),
            &["digital signature", "server auth"][..],
            "BadUsages",
            "client auth",
        ),
    ];
    for (name, pem, usages, want_reason, want_text) in &cases {
        create_csr(&node_a, name, pem, "weft.dev/workload", usages)
            .await
            .unwrap_or_else(|e| panic!("node-a creating CSR {name}: {e}"));
        let (kind, reason, message) = refusal(&answered(&admin, name).await);
        assert_eq!(
            (kind.as_str(), reason.as_str()),
            ("Denied", *want_reason),
            "{name}: {message}"
        );
        assert!(message.contains(want_text), "{name}: {message}");
    }

    // 4. Only weft-node, with a token that names its node, may ask.
    let good = WorkloadKey::generate(&id("cart")).unwrap();
    create_csr(
        &admin,
        "from-admin",
        good.request_pem(),
        "weft.dev/workload",
        &MESH_USAGES,
    )
    .await
    .unwrap();
    let (_, reason, message) = refusal(&answered(&admin, "from-admin").await);
    assert_eq!(reason, "RequesterNotWeftNode", "{message}");
    let unbound = server
        .token_client(
            &server
                .service_account_token("weft-system", "weft-node", 600)
                .await,
        )
        .await;
    create_csr(
        &unbound,
        "unbound-token",
        good.request_pem(),
        "weft.dev/workload",
        &MESH_USAGES,
    )
    .await
    .unwrap();
    let (_, reason, message) = refusal(&answered(&admin, "unbound-token").await);
    assert_eq!(reason, "NoNodeInCredentials", "{message}");

    // 4b. A waypoint asks for its own identity with its pod's token, through the RBAC that
    //     `weft waypoint manifests` binds, and gets it; for any other identity it is denied.
    server.apply_install(&["waypoint-rbac.yaml"]).await;
    let manifests = Command::new(common::testbed::binary("weft"))
        .args([
            "waypoint",
            "manifests",
            "--namespace",
            "shop",
            "--name",
            "shop-waypoint",
        ])
        .output()
        .unwrap();
    assert!(manifests.status.success(), "{manifests:?}");
    server
        .apply_yaml(&String::from_utf8_lossy(&manifests.stdout))
        .await
        .expect("the waypoint's manifests apply");
    let waypoint = server
        .token_client(
            &server
                .pod_token("shop", "shop-waypoint", "shop-waypoint-1", "node-a")
                .await,
        )
        .await;
    let own = CsrIssuer::new(
        waypoint.clone(),
        "shop-waypoint-1".into(),
        anchors.clone(),
        MINUTE,
    );
    let leaf = own
        .issue(ask("shop-waypoint"))
        .await
        .expect("the waypoint's own identity");
    assert_eq!(leaf.id, id("shop-waypoint"));
    verify_chain(&leaf.chain, ca.roots()).expect("the waypoint's leaf chains to the root");
    let other = own
        .issue(ask("cart"))
        .await
        .expect_err("cart from the waypoint");
    assert!(
        other.to_string().contains("NotOwnIdentity")
            || other.to_string().contains("only ask for its own identity"),
        "{other}"
    );
    // ... and it reads the trust bundle with its own RBAC.
    let waypoint_anchors = TrustAnchors::default();
    let mut waypoint_bundle = RootWatch::start(
        waypoint.clone(),
        "weft-system",
        "weft-ca-root",
        waypoint_anchors.clone(),
        None,
    );
    bounded(
        "the trust bundle, as the waypoint",
        waypoint_bundle.wait_loaded(Duration::from_secs(5)),
    )
    .await;
    assert_eq!(*waypoint_anchors.current(), ca.roots().to_vec());

    // 5. RBAC, as the API server enforces it: weft-node cannot approve (not even its own
    //    CSR) or read the CA Secret; the signer cannot approve any other signer's CSR.
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "weft-ca", "namespace": "weft-system"},
        "stringData": {"ca-key.pem": "not read by anyone here"},
    }))
    .unwrap();
    Api::<Secret>::namespaced(admin.clone(), "weft-system")
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let approve = json!({"status": {"conditions": [
        {"type": "Approved", "status": "True", "reason": "Self", "message": "self-approved"}
    ]}});
    let own = WorkloadKey::generate(&id("pay")).unwrap();
    create_csr(
        &node_a,
        "self-approve",
        own.request_pem(),
        "weft.dev/workload",
        &MESH_USAGES,
    )
    .await
    .unwrap();
    assert_forbidden(
        "weft-node approving a CSR",
        Api::<CertificateSigningRequest>::all(node_a.clone())
            .patch_approval(
                "self-approve",
                &PatchParams::default(),
                &Patch::Merge(&approve),
            )
            .await,
    );
    assert_forbidden(
        "weft-node reading the CA Secret",
        Api::<Secret>::namespaced(node_a.clone(), "weft-system")
            .get("weft-ca")
            .await,
    );
    let signer_client = server.token_client(&signer_token).await;
    assert_forbidden(
        "weft-signer reading the CA Secret through the API",
        Api::<Secret>::namespaced(signer_client.clone(), "weft-system")
            .get("weft-ca")
            .await,
    );
    let client_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut client_params = CertificateParams::default();
    client_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "someone");
    let client_pem = client_params
        .serialize_request(&client_key)
        .unwrap()
        .pem()
        .unwrap();
    create_csr(
        &admin,
        "apiserver-client",
        &client_pem,
        "kubernetes.io/kube-apiserver-client",
        &["client auth"],
    )
    .await
    .unwrap();
    assert_forbidden(
        "weft-signer approving a kube-apiserver-client CSR",
        Api::<CertificateSigningRequest>::all(signer_client.clone())
            .patch_approval(
                "apiserver-client",
                &PatchParams::default(),
                &Patch::Merge(&approve),
            )
            .await,
    );

    // 6. A restart loses nothing: while the signer is down, node-a waits on a CSR, and an
    //    admin approves two by hand (one for cart, one for pay, whose pod is elsewhere).
    signer.signal_and_wait(nix::sys::signal::Signal::SIGTERM, MINUTE);
    let waiting = {
        let issuer = issuer.clone();
        tokio::spawn(async move { issuer.issue(ask("cart")).await })
    };
    let by_hand = [("hand-cart", "cart"), ("hand-pay", "pay")];
    for (name, sa) in by_hand {
        let key = WorkloadKey::generate(&id(sa)).unwrap();
        create_csr(
            &node_a,
            name,
            key.request_pem(),
            "weft.dev/workload",
            &MESH_USAGES,
        )
        .await
        .unwrap();
        Api::<CertificateSigningRequest>::all(admin.clone())
            .patch_approval(name, &PatchParams::default(), &Patch::Merge(&approve))
            .await
            .unwrap_or_else(|e| panic!("admin approving {name}: {e}"));
    }
    let _signer = start_signer(dir.path(), &ca_dir, &signer_kubeconfig, port);
    let leaf = bounded("the CSR made while the signer was down", waiting)
        .await
        .unwrap()
        .expect("signed after the restart");
    verify_chain(&leaf.chain, ca.roots()).unwrap();
    let hand_cart = answered(&admin, "hand-cart").await;
    let pem = hand_cart
        .status
        .unwrap()
        .certificate
        .expect("hand-cart signed")
        .0;
    assert!(String::from_utf8_lossy(&pem).contains("BEGIN CERTIFICATE"));
    let (kind, reason, message) = refusal(&answered(&admin, "hand-pay").await);
    assert_eq!(
        (kind.as_str(), reason.as_str()),
        ("Failed", "NoPodOnNode"),
        "{message}"
    );

    let metrics = http_get(port, "/metrics").expect("signer metrics");
    assert!(
        metric(
            &metrics,
            r#"weft_signer_csrs_total{result="issued",reason="Signed"}"#
        ) >= 2.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"weft_signer_csrs_total{result="failed",reason="NoPodOnNode"}"#
        ),
        1.0,
        "{metrics}"
    );

    // 7. An edited trust bundle is put back.
    let maps: Api<ConfigMap> = Api::namespaced(admin.clone(), "weft-system");
    let other = tempfile::tempdir().unwrap();
    MeshCa::init(other.path(), "cluster.local", false).unwrap();
    let foreign = std::fs::read_to_string(other.path().join("root-cert.pem")).unwrap();
    maps.patch(
        "weft-ca-root",
        &PatchParams::default(),
        &Patch::Merge(&json!({"data": {"root-cert.pem": foreign}})),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + MINUTE;
    loop {
        let held = maps
            .get("weft-ca-root")
            .await
            .unwrap()
            .data
            .unwrap_or_default();
        let roots = held
            .get("root-cert.pem")
            .and_then(|pem| weft::identity::roots_from_pem(pem.as_bytes()).ok());
        if roots.as_deref() == Some(ca.roots()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the edited trust bundle was not restored"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One connection from pod `from` to `ip:port` that echoes a line back.
fn echo_once(c: &Cluster, from: usize, ip: &str, port: u16) -> Result<(), String> {
    let out = c.pods[from]
        .ns
        .command("python3")
        .args([
            "-c",
            &format!(
                "import socket; s=socket.create_connection(('{ip}', {port}), timeout=5); s.settimeout(5); s.sendall(b'ping\\n'); d=s.recv(10); assert d, 'closed'; print(d)"
            ),
        ])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ping") {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn wait_logged(c: &Cluster, marks: &[usize], needle: &str) {
    let deadline = Instant::now() + MINUTE;
    for (i, mark) in marks.iter().enumerate() {
        while !c.daemon_log_since(i, *mark).contains(needle) {
            assert!(
                Instant::now() < deadline,
                "node {i} did not log {needle:?}:\n{}",
                c.daemon_log_since(i, *mark)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Nodes without the CA key: every pod's certificate comes from weft signer through CSRs;
/// with 20 s leaves (renewed every 10 s) a steady stream of new connections runs through
/// several rotations of every leaf on both nodes and none fails; and the roots handshakes
/// verify against are the ConfigMap's: a foreign root there makes a new handshake fail,
/// the real one put back makes it work.
#[test]
fn pods_get_certificates_from_the_signer_and_every_leaf_rotates_under_traffic() {
    if !(pods_e2e_ready(&["ip", "nft", "nsenter", "curl", "python3"]) && ApiServer::available()) {
        return;
    }
    const RATE: u32 = 50;
    const SECONDS: u32 = 35;
    let mut c = Cluster::with_signer(2, &["--max-cert-ttl", "20s", "--republish-interval", "1h"]);
    c.daemon_args = vec!["--cert-ttl".into(), "20s".into()];
    c.kube_namespace("shop", &[AMBIENT]);
    for i in 0..2 {
        c.start_daemon(i);
        let log = c.daemon_log(i);
        assert!(log.contains("no CA key is held here"), "{log}");
    }
    let server = c
        .add_pod(1, "shop", "server", "server", &[])
        .expect("ADD server");
    c.start_echo(server, 7000);
    let other_server = c
        .add_pod(1, "shop", "server2", "server2", &[])
        .expect("ADD server2");
    c.start_echo(other_server, 7000);
    let client = c
        .add_pod(0, "shop", "client", "client", &[])
        .expect("ADD client");
    let warm = c.add_pod(0, "shop", "warm", "warm", &[]).expect("ADD warm");
    let server_ip = c.pods[server].ip.clone();
    echo_once(&c, client, &server_ip, 7000)
        .expect("the first connection, with signer-issued leaves");

    let load = c.start_conn_load(client, &server_ip, 7000, RATE, SECONDS);
    let result = conn_load_result(&load, Duration::from_secs(u64::from(SECONDS) + 30));
    eprintln!("rotation under load: {}", result.line);
    assert_eq!(
        result.failures(),
        (0, 0, 0, 0),
        "connections failed while leaves rotated: {}\n{}",
        result.log,
        c.signer_log()
    );
    assert!(
        result.count("ok") >= u64::from(RATE * SECONDS) * 9 / 10,
        "{}",
        result.line
    );
    // Every leaf on both nodes was renewed, more than once, through the signer.
    for (i, identity) in [(0, "client"), (1, "server")] {
        let dump = c.dump(i).expect("config dump");
        let certs = dump["certificates"]
            .as_array()
            .expect("certificates")
            .clone();
        let held = certs
            .iter()
            .find(|s| s["identity"] == format!("spiffe://cluster.local/ns/shop/sa/{identity}"))
            .unwrap_or_else(|| panic!("node {i} holds no leaf for {identity}: {certs:?}"));
        assert!(held["renewals"].as_u64().unwrap() >= 2, "node {i}: {held}");
        let metrics = c.node_get(i, "http://127.0.0.1:15020/metrics");
        assert!(
            metric(&metrics, r#"weft_csr_requests_total{result="issued"}"#) >= 3.0,
            "node {i}:\n{metrics}"
        );
    }

    // server2's leaf is issued (a connection from `warm`) before the bundle changes, so the
    // client's first connection to it is a fresh handshake between two valid leaves.
    let other_ip = c.pods[other_server].ip.clone();
    echo_once(&c, warm, &other_ip, 7000).expect("warm to server2");
    let maps: Api<ConfigMap> = Api::namespaced(c.kube().client.clone(), "weft-system");
    let other = tempfile::tempdir().unwrap();
    MeshCa::init(other.path(), "cluster.local", false).unwrap();
    let set_bundle = |pem: String| {
        let marks = [c.daemon_log_mark(0), c.daemon_log_mark(1)];
        c.block(maps.patch(
            "weft-ca-root",
            &PatchParams::default(),
            &Patch::Merge(&json!({"data": {"root-cert.pem": pem}})),
        ))
        .expect("editing the trust bundle");
        wait_logged(&c, &marks, "trust bundle loaded");
    };
    set_bundle(std::fs::read_to_string(other.path().join("root-cert.pem")).unwrap());
    let mark = c.daemon_log_mark(0);
    let refused = echo_once(&c, client, &other_ip, 7000);
    assert!(
        refused.is_err(),
        "a handshake verified against a root not in the ConfigMap"
    );
    // Refused by the handshake itself (both leaves are valid; only the roots changed).
    let why = c.daemon_log_since(0, mark);
    assert!(
        why.contains("TLS handshake") && why.contains("invalid peer certificate"),
        "{why}"
    );
    set_bundle(std::fs::read_to_string(c.ca_dir.join("root-cert.pem")).unwrap());
    let deadline = Instant::now() + MINUTE;
    while let Err(error) = echo_once(&c, client, &other_ip, 7000) {
        assert!(
            Instant::now() < deadline,
            "with the real root back, client to server2 still fails: {error}\n{}",
            c.daemon_log(0)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
