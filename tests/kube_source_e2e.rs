//! The Kubernetes API source end to end: two nodes' daemons watch a real kube-apiserver
//! (with etcd, authentication and RBAC on; each daemon holds the weft-node ServiceAccount's
//! token), and everything they know comes from objects created through the API: Namespaces,
//! Pods (IPs set through the status subresource, as kubelet does), a Service with its
//! EndpointSlice, and AuthorizationPolicies. Covers traffic across nodes and through the
//! VIP, enrollment and release by relabelling a namespace, the per-pod opt-out, a policy
//! taking effect within a second, an invalid object rejected alone, and the API server
//! killed (traffic keeps flowing, the daemon says it is degraded) and restarted (updates
//! resume).

mod common;

use std::time::{Duration, Instant};

use common::apiserver::ApiServer;
use common::cluster::kube::workload;
use common::cluster::{pods_e2e_ready, Cluster, AMBIENT};
use common::testbed::*;
use serde_json::Value;

fn ready() -> bool {
    pods_e2e_ready(&["ip", "nft", "nsenter", "curl", "tcpdump", "python3"])
        && ApiServer::available()
}

fn nft_table_present(ns: &Netns) -> bool {
    ns.command("nft")
        .args(["list", "table", "inet", "weft"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Polls `condition` until it holds or `timeout` passes.
fn wait_until(what: &str, timeout: Duration, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn has_policy(dump: &Value, workload: &str, policy: &str) -> bool {
    dump["policies_in_force"][workload]["authorization_policies"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["policy"] == policy))
}

fn readiness(c: &Cluster, node: usize) -> String {
    c.node_get(node, "http://127.0.0.1:15021/healthz/ready")
}

const DENY_CLIENT: &str = r#"apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: server-only-admin, namespace: shop}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/admin"]}}]
"#;

#[test]
fn mesh_model_from_the_api_server() {
    if !ready() {
        return;
    }
    let mut c = Cluster::running_kube(2, true);
    let dump = c.dump(0).expect("node-1 dump");
    let source = dump["config"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        source.starts_with("kubernetes https://10."),
        "the daemon names its source: {source}"
    );
    assert!(
        dump["config"]["kinds"]["Namespace"]["synced"] == true,
        "per-kind status: {}",
        dump["config"]
    );

    let client = c.add_pod(0, "shop", "client", "client", &[]).unwrap();
    let server = c
        .add_pod(1, "shop", "server", "server", &[("app", "server")])
        .unwrap();
    let opted_out = c
        .add_pod(
            0,
            "shop",
            "opted-out",
            "client",
            &[("weft.dev/dataplane-mode", "none")],
        )
        .unwrap();
    let plain = c.add_pod(1, "legacy", "plain", "default", &[]).unwrap();
    c.start_app(server, 8080);
    c.start_app(plain, 8080);
    let ip = |i: usize| c.pods[i].ip.clone();
    let (client_ip, server_ip, plain_ip) = (ip(client), ip(server), ip(plain));

    // Enrollment from the API's labels: shop's pods have rules, the opted-out one and
    // legacy's do not.
    assert!(nft_table_present(&c.pods[client].ns));
    assert!(nft_table_present(&c.pods[server].ns));
    assert!(
        !nft_table_present(&c.pods[opted_out].ns),
        "opt-out by pod label"
    );
    assert!(
        !nft_table_present(&c.pods[plain].ns),
        "legacy is not enrolled"
    );

    // Across nodes through the mesh: only HBONE on the underlay, the app sees the client.
    let capture = Capture::start(&c.nodes[0].ns, "ul0", c.work.path());
    let answer = Cluster::curl(&c.pods[client].ns, &format!("http://{server_ip}:8080/"))
        .expect("client -> server");
    assert_eq!(answer, format!("server sees {client_ip}"));
    let (_, lines) = capture.stop();
    let data: Vec<&String> = lines
        .iter()
        .filter(|l| !l.contains(":6443") && !l.contains(".6443"))
        .collect();
    assert!(!data.is_empty(), "nothing captured on the underlay");
    for line in data {
        assert!(
            is_port(line, 15008),
            "non-HBONE packet on the underlay: {line}"
        );
    }

    // A Service and its EndpointSlice from the API: the VIP reaches the server.
    let vip = "10.96.7.80";
    c.kube_apply(&format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: server, namespace: shop}}
spec:
  clusterIP: {vip}
  selector: {{app: server}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: server-1
  namespace: shop
  labels: {{kubernetes.io/service-name: server}}
addressType: IPv4
endpoints: [{{addresses: ["{server_ip}"]}}]
ports: [{{name: http, port: 8080, protocol: TCP}}]
"#
    ))
    .expect("Service and EndpointSlice apply");
    c.wait_dumps("the Service with its endpoint", |d| {
        d["mesh"]["services"].as_array().is_some_and(|ss| {
            ss.iter()
                .any(|s| s["name"] == "server" && s["endpoints"].to_string().contains(&server_ip))
        })
    });
    let via_vip =
        Cluster::curl(&c.pods[client].ns, &format!("http://{vip}/")).expect("client -> VIP");
    assert_eq!(via_vip, format!("server sees {client_ip}"));

    // Labelling legacy in the API enrolls its running pod on its node; removing the label
    // releases it.
    c.kube_namespace("legacy", &[AMBIENT]);
    c.settle();
    wait_until("legacy's pod enrolled", Duration::from_secs(10), || {
        nft_table_present(&c.pods[plain].ns)
    });
    let enrolled = Cluster::curl(&c.pods[client].ns, &format!("http://{plain_ip}:8080/"))
        .expect("client -> newly enrolled plain");
    assert_eq!(enrolled, format!("plain sees {client_ip}"));
    c.kube_namespace("legacy", &[]);
    c.settle();
    wait_until("legacy's pod released", Duration::from_secs(10), || {
        !nft_table_present(&c.pods[plain].ns)
    });

    // A policy created through the API is in force on every node within a second.
    let started = Instant::now();
    c.kube_apply(DENY_CLIENT).expect("policy apply");
    c.wait_dumps("the new policy in force", |d| {
        has_policy(d, "shop/server", "shop/server-only-admin")
    });
    let took = started.elapsed();
    eprintln!("policy in force on both nodes {took:?} after the apply");
    assert!(
        took < Duration::from_secs(1),
        "policy took {took:?} to take effect"
    );
    assert!(
        Cluster::curl(&c.pods[client].ns, &format!("http://{server_ip}:8080/")).is_err(),
        "the policy denies client"
    );
    c.kube_delete(
        "weft.dev/v1alpha1",
        "AuthorizationPolicy",
        Some("shop"),
        "server-only-admin",
    );
    c.wait_dumps("the policy gone", |d| {
        !has_policy(d, "shop/server", "shop/server-only-admin")
    });
    Cluster::curl(&c.pods[client].ns, &format!("http://{server_ip}:8080/"))
        .expect("client -> server once the policy is deleted");

    // An invalid object (a pod claiming the server's IP, which the API server cannot know
    // is taken) is rejected alone, named with its field; the server keeps working and
    // later changes still apply.
    let server_uid = c.pods[server].spec.uid.clone();
    let ghost_client = c.kube().client.clone();
    c.block(async {
        common::apiserver::ensure_service_account(&ghost_client, "shop", "ghost").await;
        common::apiserver::create_pod(&ghost_client, "shop", "ghost", "ghost", "node-2", &[]).await;
        common::apiserver::set_pod_ip(&ghost_client, "shop", "ghost", &server_ip).await;
    });
    c.wait_dumps("the ghost pod rejected", |d| {
        d["config"]["rejected_objects"]
            .as_array()
            .is_some_and(|rs| {
                rs.iter().any(|r| {
                    r["object"] == "Pod shop/ghost"
                        && r["error"]
                            .as_str()
                            .is_some_and(|e| e.contains("status.podIP"))
                })
            })
    });
    let log = c.daemon_log(1);
    assert!(
        log.contains("Pod shop/ghost") && log.contains("rejected"),
        "the rejection is logged with the object named"
    );
    let dump = c.dump(1).unwrap();
    assert!(
        workload(&dump, &server_uid).is_some(),
        "the server stays in the model"
    );
    assert_eq!(dump["config"]["kinds"]["Pod (other nodes)"]["rejected"], 0);
    assert_eq!(dump["config"]["kinds"]["Pod (this node)"]["rejected"], 1);
    let answer = Cluster::curl(&c.pods[client].ns, &format!("http://{server_ip}:8080/"))
        .expect("client -> server with the ghost rejected");
    assert_eq!(answer, format!("server sees {client_ip}"));
    c.kube_delete_pod("shop", "ghost");
    c.wait_dumps("the rejection cleared", |d| {
        d["config"]["rejected_objects"]
            .as_array()
            .is_none_or(|rs| rs.is_empty())
    });

    // The API server goes away: the last model keeps serving, and the daemons say so.
    c.api.as_mut().unwrap().server.kill();
    wait_until("node-1 degraded", Duration::from_secs(20), || {
        readiness(&c, 0).contains("degraded")
    });
    let answer = Cluster::curl(&c.pods[client].ns, &format!("http://{server_ip}:8080/"))
        .expect("traffic keeps flowing without the API server");
    assert_eq!(answer, format!("server sees {client_ip}"));
    // The gauges refresh every 5 s.
    wait_until("the degraded gauge", Duration::from_secs(15), || {
        c.node_get(0, "http://127.0.0.1:15020/metrics")
            .lines()
            .any(|l| l == "weft_config_source_degraded 1")
    });
    assert!(c.dump(0).unwrap()["config"]["degraded"].is_string());

    // Back: updates resume (a new policy arrives) and the degraded state clears.
    c.api.as_mut().unwrap().server.start_again();
    c.kube_apply(DENY_CLIENT)
        .expect("policy apply after the restart");
    c.wait_dumps("the policy after the restart", |d| {
        has_policy(d, "shop/server", "shop/server-only-admin")
    });
    assert!(Cluster::curl(&c.pods[client].ns, &format!("http://{server_ip}:8080/")).is_err());
    wait_until("node-1 no longer degraded", Duration::from_secs(60), || {
        let r = readiness(&c, 0);
        r.starts_with("ready") && !r.contains("degraded")
    });
}
