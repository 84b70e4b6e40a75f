//! The L7 waypoint end to end on the two-node testbed, with real pods through the real CNI
//! chain: client pod (node 1) -> node daemon -> waypoint pod (`weft waypoint`, node 1) ->
//! HBONE -> echo-v1 / echo-v2 pods (node 2) that answer with what they received.
//!
//! The scenarios are the Gateway API mesh (GAMMA) conformance cases, rebuilt as weft's own
//! vectors: routing by the Service's ClusterIP (a call to a pod IP is not routed, whatever
//! the Host header), path / header / query / method matching with segment boundaries, 404
//! for no match, request and response header modifiers at rule and backend level, path
//! rewrite, redirects, mirroring, weights (measured over 1,000 requests), HTTP/1.1
//! keep-alive and HTTP/2 multiplexed clients, request metrics, access log, traceparent;
//! and the binding fails closed: with the waypoint gone, nothing reaches the echo pods.

mod common;

use std::path::Path;
use std::time::Duration;

use common::cluster::{pods_e2e_ready, Cluster, AMBIENT};
use common::l7::{add_echo_pods, curl, dashboard_dom, start_echo, waypoint_get, EchoPods};
use common::testbed::*;
use serde_json::Value;

const WAYPOINT: &str = "shop-waypoint";

fn ready() -> bool {
    pods_e2e_ready(&[
        "ip", "nft", "nsenter", "curl", "python3", "h2load", "chromium",
    ])
}

fn services(vip: &str, v1_vip: &str, v2_vip: &str, wp_vip: &str, plain_vip: &str) -> String {
    let grpc_vip = v1_vip.replace(".100.11", ".100.15");
    let grpc_v2_vip = v1_vip.replace(".100.11", ".100.16");
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: shop, labels: {{weft.dev/use-waypoint: {WAYPOINT}}}}}
spec:
  clusterIP: {vip}
  selector: {{app: echo}}
  ports: [{{name: http, port: 80, targetPort: 8080}}, {{name: web, port: 81, targetPort: 8080}}, {{port: 82, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: plain-echo, namespace: shop, labels: {{weft.dev/use-waypoint: {WAYPOINT}}}}}
spec:
  clusterIP: {plain_vip}
  selector: {{app: echo, version: v1}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo-v1, namespace: shop}}
spec:
  clusterIP: {v1_vip}
  selector: {{app: echo, version: v1}}
  ports: [{{name: http, port: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo-v2, namespace: shop}}
spec:
  clusterIP: {v2_vip}
  selector: {{app: echo, version: v2}}
  ports: [{{name: http, port: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: {WAYPOINT}, namespace: shop}}
spec:
  clusterIP: {wp_vip}
  selector: {{app.kubernetes.io/name: {WAYPOINT}}}
  ports: [{{name: mesh, port: 15008}}]
---
apiVersion: v1
kind: Service
metadata: {{name: grpc, namespace: shop, labels: {{weft.dev/use-waypoint: {WAYPOINT}}}}}
spec:
  clusterIP: {grpc_vip}
  selector: {{app: echo}}
  ports: [{{name: grpc, port: 9090, appProtocol: kubernetes.io/h2c}}]
---
apiVersion: v1
kind: Service
metadata: {{name: grpc-v2, namespace: shop}}
spec:
  clusterIP: {grpc_v2_vip}
  selector: {{app: echo, version: v2}}
  ports: [{{name: grpc, port: 9090, appProtocol: kubernetes.io/h2c}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web-view, namespace: web}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo, namespace: shop, port: 80}}]
  rules:
  - name: all-to-v2
    matches: [{{path: {{type: PathPrefix, value: /app}}}}]
    backendRefs: [{{name: echo-v2, namespace: shop, port: 8080}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: grpc, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: grpc, port: 9090}}]
  rules:
  - name: health
    matches: [{{path: {{type: PathPrefix, value: /grpc.health.v1.Health}}}}]
    backendRefs: [{{name: grpc-v2, port: 9090}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: echo, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo, port: 80}}]
  rules:
  - name: beta
    matches: [{{headers: [{{name: x-user-group, value: beta}}]}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: x-routed, value: beta}}], remove: [x-drop-me]}}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {{add: [{{name: x-route-rule, value: beta}}]}}
    backendRefs:
    - name: echo-v2
      port: 8080
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier: {{add: [{{name: x-backend, value: v2}}]}}
      - type: ResponseHeaderModifier
        responseHeaderModifier: {{set: [{{name: x-backend-rule, value: v2}}]}}
  - name: canary
    matches: [{{path: {{type: PathPrefix, value: /canary}}}}]
    backendRefs: [{{name: echo-v1, port: 8080, weight: 90}}, {{name: echo-v2, port: 8080, weight: 10}}]
  - name: old
    matches: [{{path: {{type: PathPrefix, value: /old}}}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /new}}, statusCode: 301}}
  - name: moved
    matches: [{{path: {{type: Exact, value: /moved}}}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {{scheme: https, hostname: shop.example, port: 8443, statusCode: 308}}
  - name: api
    matches: [{{path: {{type: PathPrefix, value: /api}}}}]
    filters:
    - type: URLRewrite
      urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /v1}}}}
    - type: RequestMirror
      requestMirror: {{backendRef: {{name: echo-v2, port: 8080}}}}
    backendRefs: [{{name: echo-v1, port: 8080}}]
  - name: exact
    matches: [{{path: {{type: Exact, value: /exact}}}}]
    backendRefs: [{{name: echo-v2, port: 8080}}]
  - name: submit
    matches: [{{path: {{type: PathPrefix, value: /app}}, method: POST}}]
    backendRefs: [{{name: echo-v2, port: 8080}}]
  - name: variant
    matches: [{{path: {{type: PathPrefix, value: /app}}, queryParams: [{{name: variant, value: b}}]}}]
    backendRefs: [{{name: echo-v2, port: 8080}}]
  - name: regex
    matches: [{{path: {{type: RegularExpression, value: "/items/[0-9]+"}}}}]
    backendRefs: [{{name: echo-v2, port: 8080}}]
  - name: app
    matches: [{{path: {{type: PathPrefix, value: /app}}}}]
    backendRefs: [{{name: echo-v1, port: 8080}}]
  - name: slow
    matches: [{{path: {{type: PathPrefix, value: /slow}}}}]
    timeouts: {{request: 500ms, backendRequest: 400ms}}
    backendRefs: [{{name: echo-v1, port: 8080}}]
  - name: unbounded
    matches: [{{path: {{type: PathPrefix, value: /unbounded}}}}]
    timeouts: {{request: 0s}}
    backendRefs: [{{name: echo-v1, port: 8080}}]
  - name: unready
    matches: [{{path: {{type: PathPrefix, value: /gone}}}}]
    backendRefs: [{{name: missing, port: 8080}}]
"#
    )
}

/// Starts `weft waypoint` in the waypoint pod, with a 2 s default response timeout.
fn start_waypoint(c: &mut Cluster, pod: usize) -> usize {
    common::l7::start_waypoint(c, pod, WAYPOINT, &["--default-response-timeout", "2s"])
}

/// The grpc-go test app, built (once per machine) by scripts/build-grpc-app.sh.
fn grpc_app() -> std::path::PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-grpc-app.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "scripts/build-grpc-app.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[test]
fn gamma_routing_through_the_waypoint() {
    if !ready() {
        return;
    }
    let mut c = Cluster::new(2);
    c.namespace("shop", &[AMBIENT]);
    c.namespace("web", &[AMBIENT]);
    c.write_config();
    c.start_daemon(0);
    c.start_daemon(1);
    let EchoPods {
        client,
        v1,
        v2,
        waypoint: wp,
    } = add_echo_pods(&mut c, WAYPOINT);
    let web_client = c
        .add_pod(0, "web", "web-client", "web-client", &[])
        .expect("ADD web-client");
    let s = c.subnet;
    let vip = format!("10.{s}.100.10");
    c.extra_yaml = services(
        &vip,
        &format!("10.{s}.100.11"),
        &format!("10.{s}.100.12"),
        &format!("10.{s}.100.13"),
        &format!("10.{s}.100.14"),
    );
    c.write_config();
    let _v1_log = start_echo(&mut c, v1, "echo-v1");
    let v2_log = start_echo(&mut c, v2, "echo-v2");
    let grpc_app = grpc_app();
    for (pod, name) in [(v1, "echo-v1"), (v2, "echo-v2")] {
        let log = c.work.path().join(format!("grpc-{name}.log"));
        let p = &mut c.pods[pod];
        let mut cmd = p.ns.command(&grpc_app);
        cmd.args(["serve", "0.0.0.0:9090", name]);
        p.extra
            .push(Process::spawn(cmd, &log, &format!("grpc {name}")));
        c.wait_for_port(pod, 9090, name);
    }
    c.settle();
    let waypoint = start_waypoint(&mut c, wp);
    let ns = &c.pods[client].ns;
    let url = |path: &str| format!("http://{vip}{path}");

    // Header match: beta goes to v2 with the rule's and the backend's request and response
    // header modifiers applied. (The beta rule matches any path, so a longer path match, as
    // /app, takes precedence over it: the spec orders path before headers.)
    let beta = curl(
        ns,
        &[
            "-H",
            "x-user-group: beta",
            "-H",
            "x-drop-me: 1",
            &url("/cart"),
        ],
    )
    .expect("beta request");
    assert_eq!(beta.status, 200, "{beta:?}");
    assert_eq!(beta.served_by(), "echo-v2");
    assert_eq!(beta.received("x-routed").as_deref(), Some("beta"));
    assert_eq!(beta.received("x-backend").as_deref(), Some("v2"));
    assert_eq!(beta.received("x-drop-me"), None, "{beta:?}");
    assert_eq!(
        beta.headers.get("x-route-rule").map(String::as_str),
        Some("beta")
    );
    assert_eq!(
        beta.headers.get("x-backend-rule").map(String::as_str),
        Some("v2")
    );
    // traceparent was started by the waypoint (none was sent).
    let started = beta
        .received("traceparent")
        .expect("traceparent sent upstream");
    assert!(
        started.starts_with("00-") && started.len() == 55,
        "{started}"
    );

    // Without the header no rule matches /cart; /app with the header goes to the /app rule.
    assert_eq!(curl(ns, &[&url("/cart")]).unwrap().status, 404);
    let plain = curl(ns, &["-H", "x-user-group: beta", &url("/app/cart")]).expect("plain");
    assert_eq!(plain.served_by(), "echo-v1");
    assert_eq!(plain.received("x-routed"), None);
    // A caller's trace is continued: same trace id, a new parent span.
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traced = curl(
        ns,
        &["-H", &format!("traceparent: {parent}"), &url("/app/t")],
    )
    .expect("traced");
    let sent = traced.received("traceparent").expect("traceparent");
    assert!(
        sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{sent}"
    );
    assert_ne!(sent, parent);

    // Path matching: prefix on segment boundaries, exact, regular expression; 404 else.
    assert_eq!(curl(ns, &[&url("/app")]).unwrap().served_by(), "echo-v1");
    assert_eq!(curl(ns, &[&url("/app/")]).unwrap().served_by(), "echo-v1");
    assert_eq!(curl(ns, &[&url("/application")]).unwrap().status, 404);
    assert_eq!(curl(ns, &[&url("/exact")]).unwrap().served_by(), "echo-v2");
    assert_eq!(curl(ns, &[&url("/exact/more")]).unwrap().status, 404);
    assert_eq!(
        curl(ns, &[&url("/items/42")]).unwrap().served_by(),
        "echo-v2"
    );
    assert_eq!(curl(ns, &[&url("/items/x")]).unwrap().status, 404);
    let none = curl(ns, &[&url("/nothing")]).unwrap();
    assert_eq!(none.status, 404, "{none:?}");
    assert!(none.body.contains("no HTTPRoute rule matches"), "{none:?}");
    // Method and query matching.
    let post = curl(ns, &["--data", "x=1", &url("/app/form")]).unwrap();
    assert_eq!(
        (post.served_by(), post.json()["body_bytes"].as_u64()),
        ("echo-v2".into(), Some(3))
    );
    assert_eq!(
        curl(ns, &[&url("/app/q?variant=b")]).unwrap().served_by(),
        "echo-v2"
    );
    assert_eq!(
        curl(ns, &[&url("/app/q?variant=a")]).unwrap().served_by(),
        "echo-v1"
    );

    // A backend that does not exist: 500, with the reason.
    let broken = curl(ns, &[&url("/gone")]).unwrap();
    assert_eq!(broken.status, 500, "{broken:?}");
    assert!(broken.body.contains("does not exist"), "{broken:?}");

    // Redirects.
    let old = curl(ns, &[&url("/old/page?x=1")]).unwrap();
    assert_eq!(old.status, 301);
    assert_eq!(
        old.headers.get("location").map(String::as_str),
        Some(format!("http://{vip}/new/page?x=1").as_str())
    );
    let moved = curl(ns, &[&url("/moved")]).unwrap();
    assert_eq!(moved.status, 308);
    assert_eq!(
        moved.headers.get("location").map(String::as_str),
        Some("https://shop.example:8443/moved")
    );

    // Rewrite and mirror: v1 sees the rewritten path; the mirror (v2) receives a copy; the
    // client sees only the primary's answer.
    let api = curl(ns, &[&url("/api/users?id=7")]).unwrap();
    assert_eq!(api.served_by(), "echo-v1");
    assert_eq!(api.json()["path"], "/v1/users?id=7");
    let mirror_saw = |line: &str| {
        (0..50).any(|_| {
            let seen = std::fs::read_to_string(&v2_log)
                .unwrap_or_default()
                .lines()
                .any(|l| l == line);
            if !seen {
                std::thread::sleep(Duration::from_millis(100));
            }
            seen
        })
    };
    assert!(
        mirror_saw("GET /v1/users?id=7 0"),
        "the mirror never received the copy"
    );
    // A request body reaches the primary and the mirror whole.
    let body = c.work.path().join("order-body");
    std::fs::write(&body, "b".repeat(200_000)).unwrap();
    let body_arg = format!("@{}", body.display());
    let posted = curl(ns, &["--data-binary", &body_arg, &url("/api/orders")]).unwrap();
    assert_eq!(
        (posted.served_by(), posted.json()["body_bytes"].as_u64()),
        ("echo-v1".to_owned(), Some(200_000)),
        "{posted:?}"
    );
    assert!(
        mirror_saw("POST /v1/orders 200000"),
        "the mirror never received the whole body"
    );

    // Timeouts: a rule's timeouts (backendRequest 400ms, within request 500ms) answer 504
    // when the head is late and cut a body that does not end in time; a rule without
    // timeouts gets the waypoint's default (2s here) for the head only.
    assert_eq!(curl(ns, &[&url("/slow/x")]).unwrap().status, 200);
    let late = curl(ns, &["-H", "x-delay-ms: 1500", &url("/slow/x")]).unwrap();
    assert_eq!(late.status, 504, "{late:?}");
    assert!(
        late.body.contains("timeouts.backendRequest (400ms)"),
        "{late:?}"
    );
    let cut = curl(ns, &["-H", "x-body-delay-ms: 1500", &url("/slow/body")]);
    assert!(
        cut.is_err(),
        "a body past the route's timeout must be cut: {cut:?}"
    );
    let slow_default = curl(ns, &["-H", "x-delay-ms: 1000", &url("/app/slow")]).unwrap();
    assert_eq!(
        slow_default.status, 200,
        "within the default: {slow_default:?}"
    );
    let late_default = curl(ns, &["-H", "x-delay-ms: 3000", &url("/app/slow")]).unwrap();
    assert_eq!(late_default.status, 504, "{late_default:?}");
    assert!(
        late_default.body.contains("default response timeout (2s"),
        "{late_default:?}"
    );
    let unbounded = curl(ns, &["-H", "x-delay-ms: 2500", &url("/unbounded")]).unwrap();
    assert_eq!(
        unbounded.status, 200,
        "timeouts.request 0s: no limit, no default: {unbounded:?}"
    );
    let streamed = curl(ns, &["-H", "x-body-delay-ms: 3000", &url("/app/stream")]).unwrap();
    assert_eq!(
        (streamed.status, streamed.served_by()),
        (200, "echo-v1".to_owned()),
        "the default bounds the head only: {streamed:?}"
    );
    let log = c.pods[wp].extra[waypoint].log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("path=/slow/body") && l.contains("response_flags=\"UT\"")),
        "the cut body is logged with flag UT:\n{log}"
    );

    // Consumer routes: a route in the caller's namespace decides for that caller alone.
    let web_ns = &c.pods[web_client].ns;
    let consumer = curl(web_ns, &[&url("/app/x")]).unwrap();
    assert_eq!(consumer.served_by(), "echo-v2", "{consumer:?}");
    // ... and replaces the producer's routes for it entirely: /canary has no rule there.
    assert_eq!(curl(web_ns, &[&url("/canary")]).unwrap().status, 404);
    assert_eq!(curl(ns, &[&url("/app/x")]).unwrap().served_by(), "echo-v1");

    // Routing is by ClusterIP: a pod IP is not routed whatever the Host header says.
    let v1_ip = c.pods[v1].ip.clone();
    let direct = curl(
        ns,
        &[
            "-H",
            "host: echo.shop.svc.cluster.local",
            "-H",
            "x-user-group: beta",
            &format!("http://{v1_ip}:8080/nothing"),
        ],
    )
    .unwrap();
    assert_eq!(direct.status, 200);
    assert_eq!(direct.served_by(), "echo-v1");
    assert_eq!(direct.received("x-routed"), None);
    // ... and the route is scoped to its parentRef port: port 81 of the same Service has no
    // route, so what is 404 on port 80 goes to the Service itself there, unrouted.
    let other_port = curl(
        ns,
        &[
            "-H",
            "x-user-group: beta",
            &format!("http://{vip}:81/nothing"),
        ],
    )
    .unwrap();
    assert_eq!(other_port.status, 200, "{other_port:?}");
    assert_eq!(other_port.received("x-routed"), None, "{other_port:?}");
    assert!(
        other_port.received("traceparent").is_some(),
        "not through the waypoint"
    );

    // Weights over 1,000 keep-alive requests: 10% to v2 (binomial sd 9.5; 5 sd bounds).
    let probe = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/http_probe.py");
    let out = ns.run(&[
        "python3",
        probe.to_str().unwrap(),
        &vip,
        "80",
        "/canary",
        "1000",
    ]);
    let counts: Value = serde_json::from_str(out.trim()).expect("probe JSON");
    let to_v2 = counts["served_by"]["echo-v2"].as_u64().unwrap_or(0);
    let to_v1 = counts["served_by"]["echo-v1"].as_u64().unwrap_or(0);
    assert_eq!(to_v1 + to_v2, 1000, "{counts}");
    assert_eq!(counts["errors"], 0, "{counts}");
    assert!(
        (52..=148).contains(&to_v2),
        "v2 got {to_v2} of 1000: {counts}"
    );

    // HTTP/2 with prior knowledge, 200 requests multiplexed 10 at a time on one connection.
    let h2 = ns.run(&[
        "h2load",
        "-n",
        "200",
        "-c",
        "1",
        "-m",
        "10",
        &url("/app/h2"),
    ]);
    assert!(h2.contains("200 succeeded, 0 failed"), "{h2}");
    assert!(h2.contains("200 2xx"), "{h2}");

    // gRPC through the waypoint (the route sends the health service to v2 alone): 50 unary
    // calls on one connection and a server-streaming call, over HTTP/2 end to end.
    let grpc_vip = format!("10.{s}.100.15:9090");
    let app = grpc_app.to_str().unwrap();
    let unary: Value =
        serde_json::from_str(ns.run(&[app, "unary", &grpc_vip, "50"]).trim()).expect("unary JSON");
    assert_eq!(
        (unary["ok"].as_u64(), unary["failed"].as_u64()),
        (Some(50), Some(0)),
        "{unary}"
    );
    assert_eq!(unary["served_by"]["echo-v2"], 50, "{unary}");
    let streamed: Value =
        serde_json::from_str(ns.run(&[app, "stream", &grpc_vip, "5"]).trim()).expect("stream JSON");
    assert_eq!(
        (
            streamed["messages"].as_u64(),
            streamed["served_by"].as_str()
        ),
        (Some(5), Some("echo-v2")),
        "{streamed}"
    );

    // Request telemetry on the waypoint, with Istio's labels.
    let metrics = waypoint_get(&c, wp, "http://127.0.0.1:15020/metrics");
    let beta_line = metrics
        .lines()
        .find(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("destination_service_name=\"echo\"")
                && l.contains("destination_workload=\"echo-v2\"")
                && l.contains("response_code=\"200\"")
                && l.contains("source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"")
                && l.contains("source_workload=\"client\"")
                && l.contains("reporter=\"waypoint\"")
        })
        .unwrap_or_else(|| panic!("no istio_requests_total for v2:\n{metrics}"));
    assert!(
        beta_line.contains("request_protocol=\"http\""),
        "{beta_line}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains("response_code=\"404\"")
                && l.contains("response_flags=\"NR\"")),
        "no 404/NR series:\n{metrics}"
    );
    assert!(
        metrics.contains("istio_request_duration_milliseconds_bucket{"),
        "{metrics}"
    );
    assert!(
        metrics.contains("istio_response_bytes_bucket{"),
        "{metrics}"
    );
    // The waypoint's dashboard (the node dashboard, same page) lists the services it routes
    // with their request counts and latency, drawn in headless Chromium.
    let dom = dashboard_dom(&c, wp);
    let echo_row = dom
        .split("data-service=\"echo.shop.svc.cluster.local\"")
        .nth(1)
        .unwrap_or_else(|| panic!("no row for the echo Service:\n{dom}"));
    let requests: u64 = echo_row
        .split("data-requests=\"")
        .nth(1)
        .and_then(|r| r.split('"').next()?.parse().ok())
        .unwrap_or(0);
    assert!(
        requests >= 1000,
        "the dashboard shows {requests} requests for echo"
    );
    let cells = echo_row.split("</tr>").next().unwrap_or_default();
    assert!(
        cells.contains(" ms</td>"),
        "no latency percentiles in the echo row: {cells}"
    );
    assert!(!cells.contains("NaN"), "{cells}");
    assert!(
        dom.contains("data-service=\"grpc.shop.svc.cluster.local\""),
        "no gRPC service row"
    );

    let log = c.pods[wp].extra[waypoint].log_text();
    assert!(
        log.lines().any(|l| l.contains("path=/cart")
            && l.contains("route=\"shop/echo#beta\"")
            && l.contains("status=200")),
        "no access log line for the beta request:\n{log}"
    );

    // An invalid route (a filter weft does not support) is refused naming its field; the
    // waypoint keeps the routes it had.
    let good = c.extra_yaml.clone();
    c.extra_yaml.push_str("---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: bad, namespace: shop}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo, port: 80}]\n  rules:\n  - filters: [{type: ExtensionRef, extensionRef: {group: x, kind: y, name: z}}]\n    backendRefs: [{name: echo-v1, port: 8080}]\n");
    c.write_config();
    c.settle();
    let mut refusal = String::new();
    let mut config = Value::Null;
    for _ in 0..100 {
        let dump: Value =
            serde_json::from_str(&waypoint_get(&c, wp, "http://127.0.0.1:15000/config_dump"))
                .unwrap_or_default();
        config = dump["config"].clone();
        if let Some(error) = dump["config"]["last_error"].as_str() {
            refusal = error.to_owned();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        refusal.contains("shop/bad") && refusal.contains("spec.rules[0].filters[0].type"),
        "{refusal:?} {config}"
    );
    let ns = &c.pods[client].ns;
    let still = curl(ns, &["-H", "x-user-group: beta", &url("/cart")]).unwrap();
    assert_eq!(still.served_by(), "echo-v2", "{still:?}");
    c.extra_yaml = good;
    c.write_config();
    c.settle();
    let ns = &c.pods[client].ns;

    // A bound Service no route is attached to: the waypoint sends it to the Service itself.
    let plain_vip = format!("10.{s}.100.14");
    let unrouted = curl(ns, &[&format!("http://{plain_vip}/anything")]).unwrap();
    assert_eq!(
        (unrouted.status, unrouted.served_by()),
        (200, "echo-v1".to_owned())
    );
    assert!(
        unrouted.received("traceparent").is_some(),
        "not through the waypoint: {unrouted:?}"
    );

    // Bad input. Malformed HTTP gets 400 from the waypoint; oversized headers 431; the
    // waypoint keeps serving.
    let raw = |port: u16, bytes: &str| {
        let script = format!(
            "import socket; s = socket.create_connection(('{vip}', {port}), timeout=5); s.sendall({bytes}); print(s.recv(4096).decode(errors='replace'))"
        );
        ns.run(&["python3", "-c", &script])
    };
    let malformed = raw(80, r"b'GET / HTTP/1.1\r\nthis is not a header\r\n\r\n'");
    assert!(malformed.starts_with("HTTP/1.1 400"), "{malformed}");
    let big = format!("x-big: {}", "a".repeat(70 * 1024));
    let oversized = curl(ns, &["-H", &big, &url("/app/big")]).unwrap();
    assert_eq!(oversized.status, 431, "{oversized:?}");
    assert_eq!(curl(ns, &[&url("/app/after")]).unwrap().status, 200);
    // A port whose protocol is not declared, and bytes that are not HTTP: passed through as
    // TCP to an endpoint (the echo app's own error page proves the bytes reached it).
    let tcp = raw(82, r"b'hello\n'");
    assert!(
        tcp.contains("Bad request") && tcp.contains("hello"),
        "{tcp}"
    );
    // ... while HTTP on that port is detected and routed (no route there: to the Service).
    let detected = curl(ns, &[&format!("http://{vip}:82/x")]).unwrap();
    assert_eq!(detected.status, 200, "{detected:?}");
    assert!(detected.received("traceparent").is_some(), "{detected:?}");

    // Fail closed: with the waypoint gone, the bound Service is not reachable at all, and
    // nothing reaches the echo pods around it.
    c.pods[wp].extra.remove(waypoint);
    let ns = &c.pods[client].ns;
    let before = std::fs::read_to_string(&v2_log).unwrap_or_default().len();
    let refused = curl(ns, &["-H", "x-user-group: beta", &url("/app/closed")]);
    assert!(
        refused.is_err() || refused.as_ref().is_ok_and(|r| r.status >= 500),
        "{refused:?}"
    );
    let after = std::fs::read_to_string(&v2_log).unwrap_or_default();
    assert!(
        !after[before..].contains("/app/closed"),
        "the request went around the waypoint"
    );

    // Restarted, it serves again: 200 keep-alive requests, none failing.
    let waypoint = start_waypoint(&mut c, wp);
    let ns = &c.pods[client].ns;
    let out = ns.run(&[
        "python3",
        probe.to_str().unwrap(),
        &vip,
        "80",
        "/app/again",
        "200",
    ]);
    let counts: Value = serde_json::from_str(out.trim()).expect("probe JSON");
    assert_eq!(counts["served_by"]["echo-v1"], 200, "{counts}");
    assert!(c.pods[wp].extra[waypoint]
        .log_text()
        .contains("path=/app/again"));

    // The destination requires the waypoint's identity (L4 policy at the node daemons):
    // calling a pod IP directly is refused, the Service through the waypoint still works.
    c.extra_yaml.push_str(&format!(
        "---\napiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: echo-via-waypoint, namespace: shop}}\nspec:\n  selector: {{matchLabels: {{app: echo}}}}\n  action: ALLOW\n  rules:\n  - from: [{{source: {{principals: [\"cluster.local/ns/shop/sa/{WAYPOINT}\"]}}}}]\n"
    ));
    c.write_config();
    c.settle();
    let ns = &c.pods[client].ns;
    let bypass = curl(ns, &[&format!("http://{v1_ip}:8080/bypass")]);
    assert!(bypass.is_err(), "a pod IP call got through: {bypass:?}");
    let via = curl(ns, &[&url("/app/via")]).unwrap();
    assert_eq!((via.status, via.served_by()), (200, "echo-v1".to_owned()));

    // Two replicas, one restarted under load: 200 req/s, a new connection each, while the
    // first replica drains on SIGTERM and comes back. Connections its node cannot open to
    // it go to the other replica; none fails, none goes around the waypoint.
    let wp2 = c
        .add_pod(
            1,
            "shop",
            "shop-waypoint-1",
            WAYPOINT,
            &[
                ("app.kubernetes.io/name", WAYPOINT),
                ("weft.dev/dataplane-mode", "none"),
            ],
        )
        .expect("ADD second waypoint");
    c.settle();
    let second = start_waypoint(&mut c, wp2);
    let load_log = c.work.path().join("restart-load.log");
    let load_app = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/http_load.py");
    let mut load_cmd = c.pods[client].ns.command("python3");
    load_cmd
        .arg(&load_app)
        .args([vip.as_str(), "80", "/app/load", "4", "750", "50"]);
    let mut load = Process::spawn(load_cmd, &load_log, "HTTP load through the waypoints");
    let first_log = c.pods[wp].extra[waypoint].log.clone();
    c.pods[wp].extra[waypoint].wait_until(
        "the first replica serves the load",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&first_log)
                .unwrap_or_default()
                .matches("path=/app/load")
                .count()
                >= 100
        },
    );
    let status = c.pods[wp].extra[waypoint]
        .signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(20));
    assert!(
        status.success(),
        "the waypoint did not drain cleanly: {status:?}"
    );
    c.pods[wp].extra.remove(waypoint);
    let restarted = start_waypoint(&mut c, wp);
    load.wait_until("the load to finish", Duration::from_secs(60), || {
        std::fs::read_to_string(&load_log)
            .unwrap_or_default()
            .contains("\"ok\"")
    });
    let outcome: Value = serde_json::from_str(load.log_text().trim()).expect("load JSON");
    assert_eq!(outcome["ok"], 3000, "{outcome}");
    let on_second = c.pods[wp2].extra[second]
        .log_text()
        .matches("path=/app/load")
        .count();
    let after_restart = c.pods[wp].extra[restarted]
        .log_text()
        .matches("path=/app/load")
        .count();
    assert!(on_second > 0, "the second replica took none of the load");
    assert!(
        after_restart > 0,
        "the restarted replica took none of the load"
    );
}
