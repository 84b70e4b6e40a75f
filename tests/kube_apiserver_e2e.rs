//! The real API server harness (tests/common/apiserver.rs) against a real kube-apiserver and
//! etcd: the admin writes objects as kubelet and users would, weft-node's kubeconfig carries
//! exactly the rights deploy/kubernetes/rbac.yaml grants, and etcd keeps the data across
//! an apiserver restart.
//!
//! Needs root and the binaries of scripts/build-apiserver.sh (skipped otherwise, unless
//! WEFT_E2E=1).

mod common;

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

use common::apiserver::{self, status_code, ApiServer};
use common::testbed::{link, unique, Netns};

/// Bounds every request so a hang fails the test instead of stalling it.
async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 60s"))
}

fn assert_forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) {
    match result {
        Err(e) => assert_eq!(status_code(&e), Some(403), "{what}: expected 403, got {e}"),
        Ok(v) => panic!("{what}: expected 403, but it was allowed: {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_apiserver_rbac_and_restart() {
    if !ApiServer::available() {
        return;
    }
    let mut server = ApiServer::start_alone();
    assert_eq!(server.url(), "https://127.0.0.1:6443");
    assert!(server.ca_pem().contains("BEGIN CERTIFICATE"));
    let admin = server.admin_client().await;

    // The admin writes a namespace, a service account and a pod, and plays kubelet.
    let ns = unique("kapi");
    apiserver::create_namespace(&admin, &ns, &[("weft.dev/dataplane-mode", "ambient")]).await;
    apiserver::ensure_service_account(&admin, &ns, "web").await;
    apiserver::ensure_service_account(&admin, &ns, "web").await; // idempotent
    let created =
        apiserver::create_pod(&admin, &ns, "web-1", "web", "node-1", &[("app", "web")]).await;
    assert!(created.status.and_then(|s| s.pod_ip).is_none());
    apiserver::set_pod_ip(&admin, &ns, "web-1", "10.244.1.5").await;

    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let pod = bounded("get pod", pods.get("web-1")).await.expect("pod");
    let spec = pod.spec.as_ref().expect("spec");
    assert_eq!(spec.service_account_name.as_deref(), Some("web"));
    assert_eq!(spec.node_name.as_deref(), Some("node-1"));
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.containers[0].image.as_deref(), Some("weft.test/app"));
    assert_eq!(
        pod.metadata.labels.as_ref().and_then(|l| l.get("app")),
        Some(&"web".to_owned())
    );
    let status = pod.status.as_ref().expect("status");
    assert_eq!(status.pod_ip.as_deref(), Some("10.244.1.5"));
    assert_eq!(status.phase.as_deref(), Some("Running"));
    let ips: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .collect();
    assert_eq!(ips, ["10.244.1.5"]);

    // A pod naming a service account that does not exist is refused (admission is real).
    let orphan: Pod = serde_json::from_value(json!({
        "metadata": {"name": "orphan"},
        "spec": {"serviceAccountName": "nobody", "automountServiceAccountToken": false,
                 "containers": [{"name": "app", "image": "weft.test/app"}]},
    }))
    .unwrap();
    let refused = bounded("orphan pod", pods.create(&PostParams::default(), &orphan)).await;
    assert!(
        refused.is_err(),
        "pod without its service account was admitted"
    );

    // weft-node's kubeconfig: the server URL as seen in the netns, the CA, a token.
    let work = tempfile::tempdir().unwrap();
    let kubeconfig = work.path().join("node.kubeconfig");
    server.node_kubeconfig(&kubeconfig).await;
    let text = std::fs::read_to_string(&kubeconfig).unwrap();
    assert!(text.contains("server: https://127.0.0.1:6443"), "{text}");
    assert!(text.contains("token:"), "{text}");
    assert!(!text.contains("client-key-data"), "{text}");
    let node = server.client_from_kubeconfig(&kubeconfig).await;

    // It is the weft-node service account, authenticated by its token.
    let whoami = bounded(
        "self subject review",
        Api::<SelfSubjectReview>::all(node.clone())
            .create(&PostParams::default(), &SelfSubjectReview::default()),
    )
    .await
    .expect("self subject review");
    let user = whoami.status.and_then(|s| s.user_info).expect("user info");
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:weft-system:weft-node")
    );

    // Allowed: list pods cluster-wide, watch namespaces, record an event.
    let all_pods = bounded(
        "node lists pods",
        Api::<Pod>::all(node.clone()).list(&ListParams::default()),
    )
    .await
    .expect("node may list pods cluster-wide");
    assert!(all_pods
        .items
        .iter()
        .any(|p| p.metadata.name.as_deref() == Some("web-1")
            && p.metadata.namespace.as_deref() == Some(ns.as_str())));
    let namespaces: Api<Namespace> = Api::all(node.clone());
    let mut watch = bounded(
        "node watches namespaces",
        namespaces.watch(&WatchParams::default().timeout(30), "0"),
    )
    .await
    .expect("node may watch namespaces")
    .boxed();
    let first = bounded("first watch event", watch.next())
        .await
        .expect("watch stream open")
        .expect("watch event");
    assert!(
        matches!(first, WatchEvent::Added(_)),
        "first watch event: {first:?}"
    );
    drop(watch);
    let event: Event = serde_json::from_value(json!({
        "metadata": {"name": "web-1.weft-test"},
        "involvedObject": {"kind": "Pod", "namespace": ns, "name": "web-1"},
        "reason": "Enrolled", "message": "test", "type": "Normal",
    }))
    .unwrap();
    bounded(
        "node records an event",
        Api::<Event>::namespaced(node.clone(), &ns).create(&PostParams::default(), &event),
    )
    .await
    .expect("node may create events");

    // Refused: Secrets (write and read) and deleting pods.
    let secrets: Api<Secret> = Api::namespaced(node.clone(), &ns);
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "stolen"}, "stringData": {"k": "v"}}))
            .unwrap();
    assert_forbidden(
        "node creates a Secret",
        bounded(
            "create secret",
            secrets.create(&PostParams::default(), &secret),
        )
        .await,
    );
    assert_forbidden(
        "node lists Secrets",
        bounded("list secrets", secrets.list(&ListParams::default())).await,
    );
    assert_forbidden(
        "node reads a Secret",
        bounded("get secret", secrets.get("anything")).await,
    );
    assert_forbidden(
        "node lists Secrets cluster-wide",
        bounded(
            "list all secrets",
            Api::<Secret>::all(node.clone()).list(&ListParams::default()),
        )
        .await,
    );
    assert_forbidden(
        "node deletes a pod",
        bounded(
            "delete pod",
            Api::<Pod>::namespaced(node.clone(), &ns).delete("web-1", &DeleteParams::default()),
        )
        .await,
    );

    // The apiserver stops, etcd stays: requests fail, then succeed again after the restart
    // with the data intact (the same client reconnects).
    server.stop();
    let down = bounded("get pod while stopped", pods.get("web-1")).await;
    assert!(
        down.is_err(),
        "a request succeeded with kube-apiserver stopped"
    );
    server.start_again();
    let pod = bounded("get pod after restart", pods.get("web-1"))
        .await
        .expect("pod after restart");
    assert_eq!(
        pod.status.and_then(|s| s.pod_ip).as_deref(),
        Some("10.244.1.5")
    );
    // The token issued before the restart still works (same signing key).
    bounded(
        "node lists pods after restart",
        Api::<Pod>::all(node).list(&ListParams::default()),
    )
    .await
    .expect("node token valid after restart");
}

/// `start` on a node-like namespace's own address: processes in another namespace on the
/// same link reach `url()` with the admin kubeconfig's credentials, and the `kubernetes`
/// Service has its first Service CIDR address with this server as its endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_on_an_underlay_address() {
    if !ApiServer::available() {
        return;
    }
    let server_ns = Netns::new("wkapis");
    let peer_ns = Netns::new("wkapip");
    let subnet = 20 + (std::process::id() % 200) as u8;
    let server_ip = format!("10.{subnet}.250.1");
    link(
        &server_ns,
        &format!("{server_ip}/24"),
        &peer_ns,
        &format!("10.{subnet}.250.2/24"),
    );
    let server = ApiServer::start(&server_ns, &server_ip);
    assert_eq!(server.url(), format!("https://{server_ip}:6443"));

    // The admin kubeconfig, used from the peer namespace by a process of its own (curl).
    let work = tempfile::tempdir().unwrap();
    let kubeconfig = work.path().join("admin.kubeconfig");
    server.admin_kubeconfig(&kubeconfig);
    let parsed: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&kubeconfig).unwrap()).unwrap();
    let cluster = &parsed["clusters"][0]["cluster"];
    assert_eq!(cluster["server"].as_str(), Some(server.url().as_str()));
    let user = &parsed["users"][0]["user"];
    let decode = |field: &serde_yaml::Value| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(field.as_str().expect("a *-data field"))
            .unwrap()
    };
    let files = [
        ("ca.pem", decode(&cluster["certificate-authority-data"])),
        ("cert.pem", decode(&user["client-certificate-data"])),
        ("key.pem", decode(&user["client-key-data"])),
    ];
    for (name, bytes) in &files {
        std::fs::write(work.path().join(name), bytes).unwrap();
    }
    let p = |name: &str| work.path().join(name).display().to_string();
    let body = peer_ns.run(&[
        "curl",
        "-sS",
        "--fail",
        "--max-time",
        "20",
        "--cacert",
        &p("ca.pem"),
        "--cert",
        &p("cert.pem"),
        "--key",
        &p("key.pem"),
        &format!(
            "{}/api/v1/namespaces/default/services/kubernetes",
            server.url()
        ),
    ]);
    let service: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(service["spec"]["clusterIP"], "10.96.0.1", "{body}");

    // The endpoint reconciler publishes this server behind the Service.
    let admin = server.admin_client().await;
    let slices: Api<EndpointSlice> = Api::namespaced(admin, "default");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let slice = bounded("get endpointslice", slices.get_opt("kubernetes"))
            .await
            .expect("get endpointslice");
        let addresses: Vec<String> = slice
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .flat_map(|e| e.addresses.iter().cloned())
            .collect();
        if addresses == [server_ip.clone()] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "kubernetes EndpointSlice addresses: {addresses:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
