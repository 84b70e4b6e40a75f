//! The proxy's connection paths end to end in the pods-mode testbed: an address the mesh
//! does not know is passed through unchanged (15001, plain TCP from the pod's own
//! address), and plaintext from outside the mesh (15006) runs the same policy path as
//! HBONE: denied by an AuthorizationPolicy that does not admit it, and an open plaintext
//! connection cut when a policy change stops admitting it.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{stream_outcome, unix_now, Cluster, AMBIENT};
use common::testbed::*;

fn ready() -> bool {
    e2e_ready(&["ip", "nft", "nsenter", "curl", "python3"])
}

/// Waits until node `i`'s `/config_dump` satisfies `applied` (the config in force there).
fn wait_for_config(c: &Cluster, i: usize, what: &str, applied: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let dump = c.node_get(i, "http://127.0.0.1:15000/config_dump");
        if applied(&dump) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {i} never applied {what}:\n{dump}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The access log lines of node `i` that mention every one of `needles`.
fn access_lines(c: &Cluster, i: usize, needles: &[&str]) -> Vec<String> {
    c.daemon_log(i)
        .lines()
        .filter(|l| l.contains("weft::access") && needles.iter().all(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

/// Waits until node `i` logged an access line mentioning every one of `needles` (the
/// line is written when the connection closes, just after the client saw it end).
fn wait_for_access_line(c: &Cluster, i: usize, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(line) = access_lines(c, i, needles).pop() {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "node {i} logged no access line with {needles:?}:\n{}",
            c.daemon_log(i)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Node `i`'s `weft_open_connections{direction="inbound"}`.
fn open_inbound(c: &Cluster, i: usize) -> f64 {
    c.node_get(i, "http://127.0.0.1:15020/metrics")
        .lines()
        .find(|l| l.starts_with("weft_open_connections{direction=\"inbound\"}"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn an_unknown_destination_is_passed_through_unchanged() {
    if !ready() {
        return;
    }
    let mut c = Cluster::new(2);
    c.namespace("shop", &[AMBIENT]);
    c.write_config();
    c.start_daemon(0);
    let client = c.add_pod(0, "shop", "client", "client", &[]).unwrap();
    let client_ip = c.pods[client].ip.clone();
    wait_for_config(&c, 0, "the client pod's address", |d| {
        d.contains(&client_ip)
    });

    // A server on node 2's underlay address: no pod, service or endpoint of the mesh.
    let outside_ip = c.nodes[1].underlay_ip.clone();
    assert!(
        !std::fs::read_to_string(&c.config_path)
            .unwrap()
            .contains(&outside_ip),
        "the mesh config must not know {outside_ip}"
    );
    let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/http_app.py");
    let mut cmd = c.nodes[1].ns.command("python3");
    cmd.arg(&app)
        .args([outside_ip.as_str(), "18080", "outside"]);
    let _outside = Process::spawn(
        cmd,
        &c.work.path().join("outside-app.log"),
        "app outside the mesh",
    );
    let url = format!("http://{outside_ip}:18080/");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Cluster::curl(&c.nodes[1].ns, &url).is_err() {
        assert!(Instant::now() < deadline, "outside app did not start");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Reached unchanged: the same address and port, from the pod's own address.
    assert_eq!(
        Cluster::curl(&c.pods[client].ns, &url).expect("client -> outside app"),
        format!("outside sees {client_ip}")
    );
    // Through the proxy (15001 reports it), as plain TCP.
    let line = wait_for_access_line(
        &c,
        0,
        &[&format!("dst={outside_ip}:18080"), "outbound", "none"],
    );
    assert!(line.contains("conn_id="), "access line has no id: {line}");
    assert!(
        line.contains(&format!("src={client_ip}:")),
        "access line names another source: {line}"
    );
}

/// Admits order's identity, and plaintext from `plain_cidr` when given, to payment.
fn payment_policy(name: &str, plain_cidr: Option<&str>) -> String {
    let plain = plain_cidr
        .map(|cidr| format!("\n  - from: [{{source: {{ipBlocks: [\"{cidr}\"]}}}}]"))
        .unwrap_or_default();
    format!(
        r#"apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: payment}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ["cluster.local/ns/shop/sa/order"]}}}}]{plain}
"#
    )
}

#[test]
fn plaintext_inbound_is_denied_by_policy_and_cut_when_a_change_denies_it() {
    if !ready() {
        return;
    }
    let mut c = Cluster::running(2, true);
    let payment = c
        .add_pod(1, "shop", "payment", "payment", &[("app", "payment")])
        .unwrap();
    let outsider = c.add_pod(0, "legacy", "outsider", "default", &[]).unwrap();
    c.start_app(payment, 8080);
    c.start_echo(payment, 7070);
    let pay_ip = c.pods[payment].ip.clone();
    let outsider_ip = c.pods[outsider].ip.clone();
    let url = format!("http://{pay_ip}:8080/");

    // A policy that admits the outsider's plaintext: it reaches the app from its own
    // address, through 15006 (which reports it, unencrypted).
    c.extra_yaml = payment_policy("payment-callers", Some(&format!("{outsider_ip}/32")));
    c.write_config();
    wait_for_config(&c, 1, "payment-callers", |d| {
        d.contains("shop/payment-callers") && d.contains(&outsider_ip)
    });
    assert_eq!(
        Cluster::curl(&c.pods[outsider].ns, &url).expect("allowed plaintext"),
        format!("payment sees {outsider_ip}")
    );
    let admitted = wait_for_access_line(
        &c,
        1,
        &[
            &format!("src={outsider_ip}:"),
            &format!("dst={pay_ip}:8080"),
            "inbound",
        ],
    );
    assert!(
        admitted.contains("security=\"none\"") || admitted.contains("security=none"),
        "plaintext must be reported unencrypted: {admitted}"
    );

    // An open plaintext connection, admitted under that policy, then a change that no
    // longer admits it: the connection is cut after the change, not before.
    let held = c.start_stream_client(outsider, &pay_ip, 7070, 20);
    // Admitted: node 2 counts it open (only an admitted, connected stream is).
    let deadline = Instant::now() + Duration::from_secs(5);
    while open_inbound(&c, 1) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the held connection was never admitted:\n{}",
            held.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !held.log_text().contains("closed"),
        "the admitted connection must be open before the change:\n{}",
        held.log_text()
    );
    c.extra_yaml = payment_policy("order-only", None);
    let changed_at = unix_now();
    c.write_config();
    let (state, closed_at) = stream_outcome(&held, Duration::from_secs(10));
    assert_eq!(state, "closed", "the now denied connection must be cut");
    assert!(
        closed_at > changed_at,
        "cut at {closed_at:.3}, before the change at {changed_at:.3}"
    );
    assert!(
        c.daemon_log(1).contains("a policy change denies it"),
        "the cut must be logged:\n{}",
        c.daemon_log(1)
    );

    // A new plaintext connection under the new policy is denied, counted and logged DENY.
    wait_for_config(&c, 1, "order-only", |d| {
        d.contains("shop/order-only") && !d.contains("shop/payment-callers")
    });
    let denied = Cluster::curl(&c.pods[outsider].ns, &url);
    assert!(
        denied.is_err(),
        "plaintext must be denied by the policy, got {denied:?}"
    );
    let line = wait_for_access_line(
        &c,
        1,
        &[
            &format!("src={outsider_ip}:"),
            &format!("dst={pay_ip}:8080"),
            "DENY",
        ],
    );
    assert!(line.contains("conn_id="), "access line has no id: {line}");
    let metrics = c.node_get(1, "http://127.0.0.1:15020/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_tcp_connections_closed_total{")
                && l.contains("response_flags=\"DENY\"")
                && l.contains("connection_security_policy=\"none\"")
                && l.contains("destination_workload=\"payment\"")),
        "the denial must be counted:\n{metrics}"
    );
}
