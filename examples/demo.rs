//! The weft pods-mode demo: two nodes with two enrolled pods each and one pod outside the
//! mesh, built with the real CNI plugins and one weft-node per node. Sends traffic between
//! them and prints what a newcomer wants to see: which identities talked, that only TLS
//! crossed the wire, and the commands to poke at it by hand. Then a waypoint's safeguards
//! (README "Resilience"): one of three `pay` pods failing is hidden by retries and ejected,
//! and a FaultInjection aborts 10% of `/checkout` calls. Tears everything down on exit.
//!
//! Run it as root with `bash scripts/demo.sh` (set KEEP=1 to keep the cluster up).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::BufRead;

use common::cluster::{Cluster, AMBIENT};
use common::l7::{start_echo, start_waypoint, statuses, waypoint_get};
use common::testbed::{is_port, Capture};

/// The resilience example of README.md: `pay` behind the waypoint, with a route that
/// retries 503s, a DestinationPolicy that ejects an endpoint after 3 failures in a row,
/// and a FaultInjection that aborts 10% of /checkout calls.
const RESILIENCE: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: pay, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: pay, port: 80}]
  rules:
  - retry: {codes: [503], attempts: 2, backoff: 10ms}
    backendRefs: [{name: pay, port: 80}]
---
apiVersion: weft.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: pay, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: pay}]
  loadBalancer: {simple: ROUND_ROBIN}   # every pod gets its turn, so pay-b's failures show
  outlierDetection: {consecutive5xxErrors: 3, baseEjectionTime: 30s}
---
apiVersion: weft.dev/v1alpha1
kind: FaultInjection
metadata: {name: checkout-chaos, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: pay}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /checkout}}]
    abort: {httpStatus: 500, percentage: {value: 10}}
"#;

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("demo: needs root (network namespaces); run as root: bash scripts/demo.sh");
        std::process::exit(1);
    }
    println!("== building a 2-node cluster on network namespaces (real CNI: bridge + host-local + weft-cni)");
    let mut c = Cluster::new(2);
    c.namespace("demo", &[AMBIENT]);
    c.namespace("legacy", &[]);
    c.namespace("shop", &[AMBIENT]);
    c.write_config();
    c.start_daemon(0);
    c.start_daemon(1);
    let pods = [
        (0, "demo", "client-a", "client", vec![]),
        (0, "demo", "web-a", "web", vec![("app", "web")]),
        (1, "demo", "client-b", "client", vec![]),
        (1, "demo", "web-b", "web", vec![("app", "web")]),
        (1, "legacy", "legacy", "default", vec![]),
    ];
    for (node, ns, name, sa, labels) in &pods {
        c.add_pod(*node, ns, name, sa, labels)
            .unwrap_or_else(|e| panic!("CNI ADD of {name} failed: {e:?}"));
    }
    let vip = format!("10.{}.100.10", c.subnet);
    c.extra_yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: demo}}\nspec:\n  clusterIP: {vip}\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n"
    );
    c.write_config();
    for name in ["web-a", "web-b", "legacy"] {
        let i = c.pod_index(name);
        c.start_app(i, 8080);
    }
    c.settle();

    println!(
        "\n== pods (namespace demo is labelled weft.dev/dataplane-mode=ambient; legacy is not)"
    );
    for pod in &c.pods {
        let enrolled = pod.spec.namespace == "demo";
        println!(
            "   {:<9} node-{}  {:<15} netns {:<18} {}",
            pod.spec.name,
            pod.spec.node + 1,
            pod.ip,
            pod.ns.name,
            if enrolled {
                format!(
                    "enrolled as spiffe://cluster.local/ns/{}/sa/{}",
                    pod.spec.namespace, pod.spec.service_account
                )
            } else {
                "not enrolled".into()
            }
        );
    }

    println!("\n== traffic between mesh pods (tcpdump on node-1's underlay link)");
    let capture = Capture::start(&c.nodes[0].ns, "ul0", c.work.path());
    let mesh_requests = [
        (
            "client-a",
            format!("http://{}:8080/", c.pod("web-b").ip),
            "cross-node, HBONE",
        ),
        (
            "client-b",
            format!("http://{}:8080/", c.pod("web-a").ip),
            "cross-node, HBONE",
        ),
        (
            "client-a",
            format!("http://{}:8080/", c.pod("web-a").ip),
            "same node, HBONE",
        ),
        ("client-a", format!("http://{vip}/"), "Service VIP"),
        ("client-a", format!("http://{vip}/"), "Service VIP"),
    ];
    run_requests(&c, &mesh_requests);
    let (raw, lines) = capture.stop();
    let hbone = lines.iter().filter(|l| is_port(l, 15008)).count();
    let in_clear = common::testbed::contains_bytes(&raw, b"GET / HTTP/1.1");
    println!(
        "   on the wire: {} packets, {hbone} of them TLS to/from port 15008; HTTP text seen: {}",
        lines.len(),
        if in_clear { "yes" } else { "no" }
    );

    println!("\n== traffic with the pod outside the mesh (plain TCP on the wire, as it must be)");
    let capture = Capture::start(&c.nodes[0].ns, "ul0", c.work.path());
    run_requests(
        &c,
        &[
            (
                "legacy",
                format!("http://{}:8080/", c.pod("web-a").ip),
                "plain client, captured by 15006",
            ),
            (
                "client-a",
                format!("http://{}:8080/", c.pod("legacy").ip),
                "enrolled -> not enrolled",
            ),
        ],
    );
    let (raw, lines) = capture.stop();
    println!(
        "   on the wire: {} packets to/from port 8080; HTTP text seen: {}",
        lines.iter().filter(|l| is_port(l, 8080)).count(),
        if common::testbed::contains_bytes(&raw, b"GET / HTTP/1.1") {
            "yes"
        } else {
            "no"
        }
    );

    println!("\n== identities the servers saw (from the node daemons' logs)");
    for i in 0..2 {
        let log = c.daemon_log(i);
        let mut seen: Vec<String> = log
            .lines()
            .filter(|l| l.contains("HBONE stream closed"))
            .filter_map(|l| {
                let peer = l.split("peer=").nth(1)?.split(' ').next()?;
                let authority = l.split("authority=").nth(1)?.split(' ').next()?;
                Some(format!("{peer} -> {authority}"))
            })
            .collect();
        seen.sort();
        seen.dedup();
        for line in seen {
            println!("   node-{}: {line}", i + 1);
        }
    }

    println!("\n== poke at it yourself");
    let client = c.pod("client-a");
    println!(
        "   ip netns exec {} curl http://{}:8080/",
        client.ns.name,
        c.pod("web-b").ip
    );
    println!(
        "   ip netns exec {} nft list table inet weft      # the capture rules",
        client.ns.name
    );
    println!(
        "   ip netns exec {} tcpdump -i ul0 -nn port 15008  # only TLS on the wire",
        c.nodes[0].ns.name
    );
    println!(
        "   cat {}/daemon-*.log   # node-1's daemon log",
        c.nodes[0].run_dir.display()
    );
    resilience(&mut c);

    if std::env::var("KEEP").is_ok_and(|v| v == "1") {
        println!("\n== KEEP=1: the cluster stays up; press Enter to tear it down");
        let _ = std::io::stdin().lock().lines().next();
    }
    println!("== tearing down");
}

fn run_requests(c: &Cluster, requests: &[(&str, String, &str)]) {
    for (from, url, what) in requests {
        let answer = Cluster::curl(&c.pod(from).ns, url).unwrap_or_else(|e| format!("FAILED: {e}"));
        println!("   {from:<9} -> {url:<28} {what:<30} answer: {answer}");
    }
}

/// The README's resilience example on the demo cluster: three `pay` pods (one failing on
/// cue), a waypoint, and the safeguards' metrics.
fn resilience(c: &mut Cluster) {
    println!("\n== resilience: a waypoint in front of three pay pods (README \"Resilience\")");
    let mut pay_pods = Vec::new();
    for name in ["pay-a", "pay-b", "pay-c"] {
        let i = c
            .add_pod(1, "shop", name, "pay", &[("app", "pay")])
            .unwrap_or_else(|e| panic!("CNI ADD of {name} failed: {e:?}"));
        pay_pods.push(i);
    }
    let client = c
        .add_pod(0, "shop", "shopper", "shopper", &[])
        .expect("CNI ADD of shopper");
    let waypoint_pod = c
        .add_pod(
            0,
            "shop",
            "shop-waypoint-0",
            "shop-waypoint",
            &[
                ("app.kubernetes.io/name", "shop-waypoint"),
                ("weft.dev/dataplane-mode", "none"),
            ],
        )
        .expect("CNI ADD of the waypoint");
    let s = c.subnet;
    c.extra_yaml.push_str(&format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: pay, namespace: shop, labels: {{weft.dev/use-waypoint: shop-waypoint}}}}\nspec:\n  clusterIP: 10.{s}.100.20\n  selector: {{app: pay}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: shop-waypoint, namespace: shop}}\nspec:\n  clusterIP: 10.{s}.100.21\n  selector: {{app.kubernetes.io/name: shop-waypoint}}\n  ports: [{{name: mesh, port: 15008}}]\n---\n{RESILIENCE}"
    ));
    c.write_config();
    for (i, name) in pay_pods.iter().zip(["pay-a", "pay-b", "pay-c"]) {
        start_echo(c, *i, name);
    }
    c.settle();
    start_waypoint(c, waypoint_pod, "shop-waypoint", &[]);
    let pay = format!("http://10.{s}.100.20");
    let ns = &c.pods[client].ns;
    let orders = statuses(
        ns,
        &["-H", "x-fail-on: pay-b"],
        &format!("{pay}/orders"),
        100,
    );
    let ok = orders.iter().filter(|s| **s == 200).count();
    println!("   100 GET /orders while pay-b answers 503: {ok} answered 200 (its failures retried on the others)");
    let checkout = statuses(ns, &[], &format!("{pay}/checkout"), 200);
    let aborted = checkout.iter().filter(|s| **s == 500).count();
    println!("   200 GET /checkout with 10% aborts injected: {aborted} got the injected 500");
    let metrics = waypoint_get(c, waypoint_pod, "http://127.0.0.1:15020/metrics");
    println!("   the waypoint's safeguard metrics (its dashboard shows them too):");
    for line in metrics.lines().filter(|l| {
        l.starts_with("weft_waypoint_retries_total")
            || l.starts_with("weft_waypoint_outlier_ejections_total")
            || l.starts_with("weft_waypoint_faults_injected_total")
            || l.starts_with("weft_waypoint_retry_budget_remaining")
    }) {
        println!("     {line}");
    }
    let wp_ns = &c.pods[waypoint_pod].ns.name;
    println!("   its dashboard: ip netns exec {wp_ns} chromium --no-sandbox http://127.0.0.1:15020/   (KEEP=1)");
    println!(
        "   more: ip netns exec {} curl -s -H 'x-fail-on: pay-b' {pay}/orders",
        ns.name
    );
}
