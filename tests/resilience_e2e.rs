//! The waypoint's safeguards end to end on the two-node testbed, against real echo servers
//! that misbehave on cue (tests/apps/echo_http.py: `x-fail-on`, `x-fail-status`,
//! `x-fail-delay-ms`): client pod (node 1) -> node daemon -> waypoint -> three echo pods
//! (node 2) behind one Service.
//!
//! Covered: one endpoint of three answering 503 is hidden by a route's `retry` and by the
//! mesh default (GET only), and is ejected after consecutive failures and readmitted
//! later; a POST whose body is over the replay buffer is not retried (flag RBS); with
//! every endpoint failing, the retry budget caps the extra load (the amplification factor
//! is measured against 1.2x plus the floor); an attempt that runs out of
//! `timeouts.backendRequest` is retried elsewhere.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{pods_e2e_ready, Cluster, AMBIENT};
use common::l7::{
    add_echo_pods, curl, dashboard_dom, start_echo, start_waypoint, statuses, waypoint_get,
    EchoPods,
};
use common::prometheus;
use common::testbed::Netns;

const WAYPOINT: &str = "pay-waypoint";

fn ready() -> bool {
    pods_e2e_ready(&[
        "ip",
        "nft",
        "nsenter",
        "curl",
        "python3",
        "chromium",
        "prometheus",
    ])
}

/// `pay` and `ledger` select the same three echo pods; each has its own retry budget.
fn services(pay_vip: &str, ledger_vip: &str, wp_vip: &str) -> String {
    let mut yaml = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {WAYPOINT}, namespace: shop}}
spec:
  clusterIP: {wp_vip}
  selector: {{app.kubernetes.io/name: {WAYPOINT}}}
  ports: [{{name: mesh, port: 15008}}]
"#
    );
    for (name, vip) in [("pay", pay_vip), ("ledger", ledger_vip)] {
        yaml.push_str(&format!(
            r#"---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop, labels: {{weft.dev/use-waypoint: {WAYPOINT}}}}}
spec:
  clusterIP: {vip}
  selector: {{app: echo}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: {name}, port: 80}}]
  rules:
  - name: retry
    matches: [{{path: {{type: PathPrefix, value: /retry}}}}]
    retry: {{codes: [503], attempts: 2, backoff: 5ms}}
    backendRefs: [{{name: {name}, port: 80}}]
  - name: timed
    matches: [{{path: {{type: PathPrefix, value: /timed}}}}]
    timeouts: {{request: 3s, backendRequest: 300ms}}
    retry: {{codes: [503], attempts: 2, backoff: 5ms}}
    backendRefs: [{{name: {name}, port: 80}}]
  - name: plain
    matches: [{{path: {{type: PathPrefix, value: /plain}}}}]
    backendRefs: [{{name: {name}, port: 80}}]
"#
        ));
    }
    // `pay` takes turns over its endpoints (so which one fails is seen, whatever their
    // latencies) and ejects after five failures in a row for 1 s, growing; `ledger` keeps
    // the defaults (least request, 30 s).
    yaml.push_str(
        r#"---
apiVersion: weft.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: pay, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: pay}]
  loadBalancer: {simple: ROUND_ROBIN}
  outlierDetection: {consecutive5xxErrors: 5, baseEjectionTime: 1s, maxEjectionPercent: 50}
"#,
    );
    yaml
}

/// Lines the echo server logged for requests whose path starts with `prefix`.
fn hits(log: &Path, method: &str, prefix: &str) -> usize {
    let start = format!("{method} {prefix}");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(&start))
        .count()
}

/// The sum of a counter's samples whose labels contain every one of `labels`.
fn counter(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Starts both node daemons and adds the [`EchoPods`] plus `echo-v3`: three echo pods
/// (`app: echo`) on node 2.
fn three_echo_pods(c: &mut Cluster) -> (EchoPods, usize) {
    c.start_daemon(0);
    c.start_daemon(1);
    let pods = add_echo_pods(c, WAYPOINT);
    let v3 = c
        .add_pod(
            1,
            "shop",
            "echo-v3",
            "echo",
            &[("app", "echo"), ("version", "v3")],
        )
        .expect("ADD echo-v3");
    (pods, v3)
}

/// Every query of the Grafana dashboard's panels `ids` (deploy/grafana) answers with at
/// least one series from the real Prometheus in `ns`, which scrapes the waypoint; each
/// gets 30 s (a rate needs two scrapes after the series appeared).
fn assert_grafana_panels(ns: &Netns, ids: &[u64]) {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/weft-node-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).expect("JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    for id in ids {
        let panel = panels
            .iter()
            .find(|p| p["id"].as_u64() == Some(*id))
            .unwrap_or_else(|| panic!("no panel {id}"));
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"]
                .as_str()
                .expect("expr")
                .replace("$node", ".+");
            let started = Instant::now();
            while prometheus::query(ns, &expr).is_empty() {
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "Grafana panel {id} ({}): no data for {expr}",
                    panel["title"]
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// The number in attribute `attr` of the dashboard row whose `key` attribute is `value`.
fn dashboard_figure(dom: &str, key: &str, value: &str, attr: &str) -> f64 {
    let row = dom
        .split(&format!("{key}=\"{value}\""))
        .nth(1)
        .unwrap_or_else(|| panic!("no dashboard row with {key}={value}:\n{dom}"));
    let row = row.split("</tr>").next().unwrap_or_default();
    row.split(&format!("{attr}=\""))
        .nth(1)
        .and_then(|r| r.split('"').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {attr} in the row of {value}: {row}"))
}

/// Sends plain GETs to `vip` until `log`'s server answers one (its ejection is over and
/// live traffic probes it), at most 30 s; returns how long that took.
fn wait_readmitted(ns: &Netns, vip: &str, log: &Path) -> Duration {
    let started = Instant::now();
    let before = hits(log, "GET", "/plain/back");
    while hits(log, "GET", "/plain/back") == before {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} was never readmitted",
            log.display()
        );
        statuses(ns, &[], &format!("http://{vip}/plain/back"), 5);
    }
    started.elapsed()
}

#[test]
fn retries_hide_a_failing_endpoint_within_the_budget() {
    if !ready() {
        return;
    }
    let mut c = Cluster::new(2);
    c.namespace("shop", &[AMBIENT]);
    c.write_config();
    let (pods, v3) = three_echo_pods(&mut c);
    let s = c.subnet;
    let (pay, ledger) = (format!("10.{s}.100.20"), format!("10.{s}.100.21"));
    c.extra_yaml = services(&pay, &ledger, &format!("10.{s}.100.22"));
    c.write_config();
    let logs = [
        start_echo(&mut c, pods.v1, "echo-v1"),
        start_echo(&mut c, pods.v2, "echo-v2"),
        start_echo(&mut c, v3, "echo-v3"),
    ];
    let hits_all = |method: &str, prefix: &str| -> usize {
        logs.iter().map(|l| hits(l, method, prefix)).sum()
    };
    c.settle();
    let waypoint = start_waypoint(&mut c, pods.waypoint, WAYPOINT, &[]);
    let scraper = prometheus::start(
        &c.pods[pods.waypoint].ns,
        &c.work.path().join("prometheus"),
        &["127.0.0.1:15020".to_owned()],
    );
    let ns = &c.pods[pods.client].ns;
    let fail_v2 = ["-H", "x-fail-on: echo-v2"];
    let v2_endpoint = format!("endpoint=\"{}:8080\"", c.pods[pods.v2].ip);

    // The mesh default (no retry on the rule) never retries a POST's 503; echo-v2 is
    // ejected after five failures in a row, then readmitted and probed by live traffic.
    let got = statuses(
        ns,
        &["-H", "x-fail-on: echo-v2", "-X", "POST", "-d", "x=1"],
        &format!("http://{pay}/plain/post"),
        60,
    );
    let posts_failed = got.iter().filter(|s| **s == 503).count();
    assert!(
        posts_failed > 0 && posts_failed == hits(&logs[1], "POST", "/plain/post"),
        "a POST's 503 is passed on, never retried: {got:?}"
    );
    let metrics = waypoint_get(&c, pods.waypoint, "http://127.0.0.1:15020/metrics");
    let ejected = counter(
        &metrics,
        "weft_waypoint_outlier_ejections_total",
        &[&v2_endpoint],
    );
    assert!(
        // After its last ejection it may have failed up to four more.
        ejected >= 1.0 && posts_failed as f64 <= 5.0 * ejected + 4.0,
        "five failures in a row eject echo-v2: it failed {posts_failed} POSTs, ejected {ejected} times"
    );
    let back_after = wait_readmitted(ns, &pay, &logs[1]);
    eprintln!("echo-v2 readmitted {back_after:?} after the POSTs");

    // The default retries a GET's 503 once, on another endpoint.
    let got = statuses(ns, &fail_v2, &format!("http://{pay}/plain/get"), 60);
    assert!(got.iter().all(|s| *s == 200), "default retry: {got:?}");
    assert!(
        hits(&logs[1], "GET", "/plain/get") > 0,
        "echo-v2 never tried"
    );
    wait_readmitted(ns, &pay, &logs[1]);

    // A route's retry hides the failing endpoint from every request; each failed attempt
    // is retried once, elsewhere, and ejection keeps echo-v2's share small.
    let n = 150;
    let got = statuses(ns, &fail_v2, &format!("http://{pay}/retry/a"), n);
    assert_eq!(got.len(), n, "{got:?}");
    assert!(got.iter().all(|s| *s == 200), "a 503 got through: {got:?}");
    let failed_on_v2 = hits(&logs[1], "GET", "/retry/a");
    assert!(failed_on_v2 > 0, "echo-v2 was never tried");
    assert_eq!(
        hits_all("GET", "/retry/a"),
        n + failed_on_v2,
        "each failed attempt was retried exactly once, elsewhere"
    );
    let metrics = waypoint_get(&c, pods.waypoint, "http://127.0.0.1:15020/metrics");
    let ejections = counter(
        &metrics,
        "weft_waypoint_outlier_ejections_total",
        &[&v2_endpoint],
    );
    assert!(
        ejections >= 3.0,
        "echo-v2 ejected {ejections} times:\n{metrics}"
    );
    assert!(
        failed_on_v2 as f64 <= 5.0 * ejections + 4.0,
        "echo-v2 failed {failed_on_v2} attempts for {ejections} ejections"
    );

    // A POST with a body over the replay buffer is not retried; a small one is.
    let big = c.work.path().join("big-body");
    std::fs::write(&big, vec![b'x'; 100 * 1024]).expect("write body");
    let big_arg = format!("@{}", big.display());
    let all = ["-H", "x-fail-on: all"];
    let reply = curl(
        ns,
        &[
            all[0],
            all[1],
            "--data-binary",
            &big_arg,
            &format!("http://{pay}/retry/big"),
        ],
    )
    .expect("big POST");
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(
        hits_all("POST", "/retry/big"),
        1,
        "the big POST was retried"
    );
    let reply = curl(
        ns,
        &[
            all[0],
            all[1],
            "-d",
            "small=1",
            &format!("http://{pay}/retry/small"),
        ],
    )
    .expect("small POST");
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(
        hits_all("POST", "/retry/small"),
        3,
        "the small POST: one attempt and two retries, one per endpoint"
    );

    // An attempt slower than timeouts.backendRequest is retried on another endpoint.
    let slow_v2 = [
        "-H",
        "x-fail-on: echo-v2",
        "-H",
        "x-fail-status: 200",
        "-H",
        "x-fail-delay-ms: 1500",
    ];
    wait_readmitted(ns, &pay, &logs[1]);
    let got = statuses(ns, &slow_v2, &format!("http://{pay}/timed/x"), 12);
    assert!(got.iter().all(|s| *s == 200), "slow endpoint: {got:?}");
    assert!(hits(&logs[1], "GET", "/timed/x") > 0, "echo-v2 never tried");

    // Every endpoint fails: the budget (20% of requests plus 3 a second) caps the retries
    // that would otherwise triple the load. `ledger` has a budget of its own.
    let n = 300;
    let started = Instant::now();
    let got = statuses(ns, &all, &format!("http://{ledger}/retry/storm"), n);
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(got.len(), n);
    assert!(got.iter().all(|s| *s == 503), "{got:?}");
    let attempts = hits_all("GET", "/retry/storm");
    let amplification = attempts as f64 / n as f64;
    let allowed = n as f64 * 1.2 + 3.0 * (seconds.ceil() + 1.0);
    eprintln!(
        "retry storm: {n} requests in {seconds:.1} s made {attempts} attempts: amplification {amplification:.3} (bound {:.3})",
        allowed / n as f64
    );
    assert!(
        attempts > n,
        "no retry at all: the budget's floor allows some"
    );
    assert!(
        attempts as f64 <= allowed,
        "{attempts} attempts for {n} requests in {seconds:.1} s: over 1.2x plus the floor"
    );

    let metrics = waypoint_get(&c, pods.waypoint, "http://127.0.0.1:15020/metrics");
    let retried = counter(
        &metrics,
        "weft_waypoint_retries_total",
        &["destination_service=\"shop/pay\"", "reason=\"503\""],
    );
    assert!(retried >= failed_on_v2 as f64, "{metrics}");
    assert!(
        counter(
            &metrics,
            "weft_waypoint_retries_total",
            &["reason=\"backend-timeout\""]
        ) > 0.0,
        "no backend-timeout retry counted:\n{metrics}"
    );
    assert!(
        counter(
            &metrics,
            "weft_waypoint_retry_budget_exhausted_total",
            &["destination_service=\"shop/ledger\""]
        ) > 0.0,
        "{metrics}"
    );
    assert!(
        metrics.contains("weft_waypoint_retry_budget_remaining{destination_service=\"shop/pay\"}"),
        "{metrics}"
    );
    let log = c.pods[pods.waypoint].extra[waypoint].log_text();
    assert!(
        log.contains("endpoint ejected after consecutive failures"),
        "{log}"
    );
    // The waypoint's dashboard shows the same, drawn in headless Chromium.
    let dom = dashboard_dom(&c, pods.waypoint);
    let v2_addr = format!("{}:8080", c.pods[pods.v2].ip);
    assert!(dashboard_figure(&dom, "data-endpoint", &v2_addr, "data-ejections") >= 3.0);
    assert!(dashboard_figure(&dom, "data-backend", "shop/ledger", "data-exhausted") > 0.0);
    assert!(dashboard_figure(&dom, "data-backend", "shop/pay", "data-retries") > 0.0);
    // And the Grafana dashboard's waypoint panels (requests, retries and budget, budget
    // left, circuit breakers, ejections) have data in a real Prometheus.
    assert_grafana_panels(&c.pods[pods.waypoint].ns, &[11, 12, 13, 14, 15]);
    drop(scraper);
    for (path, flag) in [
        ("/retry/big", "RBS"),
        ("/retry/small", "URX"),
        ("/retry/storm", "RBX"),
    ] {
        assert!(
            log.lines().any(|l| l.contains(&format!("path={path}"))
                && l.contains(&format!("response_flags=\"{flag}\""))),
            "no access log line for {path} with flag {flag}:\n{log}"
        );
    }
}

/// Services over the same three echo pods, one per safeguard: `chaos` (FaultInjection),
/// `limited` (at most 2 requests in flight), `pooled` (one connection, one waiting),
/// `balanced` (least request, a request timeout, retries) and `sticky` (consistent hash).
fn safeguard_services(vips: &[String; 5], wp_vip: &str) -> String {
    let mut yaml = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {WAYPOINT}, namespace: shop}}
spec:
  clusterIP: {wp_vip}
  selector: {{app.kubernetes.io/name: {WAYPOINT}}}
  ports: [{{name: mesh, port: 15008}}]
"#
    );
    for (name, vip) in ["chaos", "limited", "pooled", "balanced", "sticky"]
        .iter()
        .zip(vips)
    {
        yaml.push_str(&format!(
            r#"---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop, labels: {{weft.dev/use-waypoint: {WAYPOINT}}}}}
spec:
  clusterIP: {vip}
  selector: {{app: echo}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"#
        ));
    }
    yaml.push_str(
        r#"---
apiVersion: weft.dev/v1alpha1
kind: FaultInjection
metadata: {name: chaos, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: chaos}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /checkout}}]
    sourceNamespaces: [shop]
    abort: {httpStatus: 500, percentage: {value: 10}}
  - matches: [{path: {type: PathPrefix, value: /slow}}]
    delay: {fixedDelay: 300ms}
  - matches: [{path: {type: PathPrefix, value: /grpc.Pay}, headers: [{name: content-type, value: application/grpc}]}]
    abort: {grpcStatus: UNAVAILABLE}
---
apiVersion: weft.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: limited, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: limited}]
  connectionPool: {http: {http2MaxRequests: 2}}
---
apiVersion: weft.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: pooled, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: pooled}]
  loadBalancer: {simple: ROUND_ROBIN}
  connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}
---
apiVersion: weft.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: balanced, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: balanced}]
  # No ejection: what keeps load off the slow endpoint is least request alone.
  outlierDetection: {consecutive5xxErrors: 0}
---
apiVersion: weft.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: sticky, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: sticky}]
  loadBalancer: {consistentHash: {httpHeaderName: x-user}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: balanced, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: balanced, port: 80}]
  rules:
  - timeouts: {request: 1s, backendRequest: 250ms}
    retry: {codes: [503], attempts: 2, backoff: 5ms}
    backendRefs: [{name: balanced, port: 80}]
"#,
    );
    yaml
}

/// `n` requests run at once from `ns` (curl --parallel, one connection each): statuses.
fn parallel_statuses(ns: &Netns, args: &[&str], url: &str, n: usize) -> Vec<u16> {
    let mut cmd = ns.command("curl");
    cmd.args([
        "-s",
        "--max-time",
        "20",
        "--parallel",
        "--parallel-immediate",
    ])
    .args(["--parallel-max", &n.to_string(), "-w", "%{http_code}\\n"])
    .args(args);
    for _ in 0..n {
        cmd.args(["-o", "/dev/null", url]);
    }
    let out = cmd.output().expect("curl");
    let mut got: Vec<u16> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap_or(0))
        .collect();
    got.sort_unstable();
    got
}

#[test]
fn faults_circuit_breakers_and_balancing() {
    if !ready() {
        return;
    }
    let mut c = Cluster::new(2);
    c.namespace("shop", &[AMBIENT]);
    c.namespace("web", &[AMBIENT]);
    c.write_config();
    let (pods, v3) = three_echo_pods(&mut c);
    let web_client = c
        .add_pod(0, "web", "web-client", "web-client", &[])
        .expect("ADD web-client");
    let s = c.subnet;
    let vips = [30, 31, 32, 33, 34].map(|i| format!("10.{s}.100.{i}"));
    let [chaos, limited, pooled, balanced, sticky] = &vips;
    c.extra_yaml = safeguard_services(&vips, &format!("10.{s}.100.35"));
    c.write_config();
    let logs = [
        start_echo(&mut c, pods.v1, "echo-v1"),
        start_echo(&mut c, pods.v2, "echo-v2"),
        start_echo(&mut c, v3, "echo-v3"),
    ];
    c.settle();
    let waypoint = start_waypoint(&mut c, pods.waypoint, WAYPOINT, &[]);
    let scraper = prometheus::start(
        &c.pods[pods.waypoint].ns,
        &c.work.path().join("prometheus"),
        &["127.0.0.1:15020".to_owned()],
    );
    let ns = &c.pods[pods.client].ns;

    // 10% of /checkout calls from namespace shop are aborted with 500: within 4.5
    // standard deviations of 100 in 1,000 (binomial, sd 9.5). Other paths and other
    // namespaces' callers are untouched.
    let n = 1000;
    let got = statuses(ns, &[], &format!("http://{chaos}/checkout/pay"), n);
    assert_eq!(got.len(), n);
    let aborted = got.iter().filter(|s| **s == 500).count();
    let served = got.iter().filter(|s| **s == 200).count();
    eprintln!("injected aborts: {aborted} of {n} (10% asked)");
    assert_eq!(aborted + served, n, "{got:?}");
    assert!(
        (57..=143).contains(&aborted),
        "{aborted} aborts of {n}: not 10%"
    );
    assert_eq!(
        hits(&logs[0], "GET", "/checkout")
            + hits(&logs[1], "GET", "/checkout")
            + hits(&logs[2], "GET", "/checkout"),
        served,
        "an aborted request reached an endpoint"
    );
    let other = statuses(ns, &[], &format!("http://{chaos}/browse"), 200);
    assert!(other.iter().all(|s| *s == 200), "{other:?}");
    let web = &c.pods[web_client].ns;
    let from_web = statuses(web, &[], &format!("http://{chaos}/checkout/pay"), 200);
    assert!(
        from_web.iter().all(|s| *s == 200),
        "web's calls are not in the fault's sourceNamespaces: {from_web:?}"
    );

    // An injected 300 ms delay holds every /slow request at least that long, and they
    // still succeed.
    for _ in 0..5 {
        let out = ns
            .command("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}"])
            .arg(format!("http://{chaos}/slow"))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (code, secs) = text.split_once(' ').expect("code and time");
        let secs: f64 = secs.parse().expect("time");
        assert_eq!(code, "200", "{text}");
        assert!(secs >= 0.3, "a delayed request took {secs} s: {text}");
    }
    // A gRPC abort is a trailers-only answer with the gRPC status.
    let grpc = curl(
        ns,
        &[
            "--http2-prior-knowledge",
            "-H",
            "content-type: application/grpc",
            "-d",
            "",
            &format!("http://{chaos}/grpc.Pay/Charge"),
        ],
    )
    .expect("gRPC abort");
    assert_eq!(grpc.status, 200, "{grpc:?}");
    assert_eq!(
        grpc.headers.get("grpc-status").map(String::as_str),
        Some("14")
    );

    // Least request under concurrency (8 at once) spreads the load over all three
    // endpoints; then one endpoint turns slow (every answer after 1 s): its attempts run
    // out of backendRequest (250 ms) and are retried elsewhere, so every request is
    // answered within timeouts.request (1 s, else 504), and it gets almost no load.
    let n = 150;
    let got = parallel_statuses(
        ns,
        &["--parallel-max", "8"],
        &format!("http://{balanced}/even"),
        n,
    );
    assert!(got.iter().all(|s| *s == 200), "{got:?}");
    let even: Vec<usize> = logs.iter().map(|l| hits(l, "GET", "/even")).collect();
    eprintln!("least request, all fast, 8 at once: {even:?} of {n}");
    assert!(
        even.iter().all(|h| *h > 0),
        "an endpoint got nothing: {even:?}"
    );
    let slow_v2 = [
        "--parallel-max",
        "8",
        "-H",
        "x-fail-on: echo-v2",
        "-H",
        "x-fail-status: 200",
        "-H",
        "x-fail-delay-ms: 1000",
    ];
    let got = parallel_statuses(ns, &slow_v2, &format!("http://{balanced}/work"), n);
    assert!(got.iter().all(|s| *s == 200), "{got:?}");
    let work: Vec<usize> = logs.iter().map(|l| hits(l, "GET", "/work")).collect();
    let share = work[1] as f64 / work.iter().sum::<usize>() as f64;
    eprintln!(
        "least request, echo-v2 slow: attempts {work:?} (echo-v2's share {share:.2}; 0.33 even)"
    );
    assert!(work[1] > 0, "the slow endpoint was never tried");
    assert!(
        share < 0.1,
        "the slow endpoint still got {share:.2} of the attempts"
    );

    // Consistent hashing on x-user: one user always lands on one endpoint; users spread.
    let mut endpoints = std::collections::BTreeSet::new();
    for user in [
        "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
    ] {
        let header = format!("x-user: {user}");
        let served: std::collections::BTreeSet<String> = (0..5)
            .map(|_| {
                curl(ns, &["-H", &header, &format!("http://{sticky}/me")])
                    .expect("sticky")
                    .served_by()
            })
            .collect();
        assert_eq!(served.len(), 1, "{user} moved between {served:?}");
        endpoints.extend(served);
    }
    assert!(endpoints.len() >= 2, "eight users all on {endpoints:?}");

    // Circuit breaking: at most 2 requests in flight to `limited`; of 6 slow ones at once,
    // 2 are served and 4 fail fast with 503; then it takes requests again.
    let slow = ["-H", "x-delay-ms: 1500"];
    let got = parallel_statuses(ns, &slow, &format!("http://{limited}/hold"), 6);
    assert_eq!(got, [200, 200, 503, 503, 503, 503], "{got:?}");
    assert_eq!(
        curl(ns, &[&format!("http://{limited}/after")])
            .unwrap()
            .status,
        200
    );
    // One connection and one waiting request for `pooled`: of 3 at once, one is served,
    // one waits for the connection and is served after it, one overflows.
    let got = parallel_statuses(ns, &slow, &format!("http://{pooled}/hold"), 3);
    assert_eq!(got, [200, 200, 503], "{got:?}");

    let metrics = waypoint_get(&c, pods.waypoint, "http://127.0.0.1:15020/metrics");
    for (name, labels) in [
        (
            "weft_waypoint_faults_injected_total",
            &["destination_service=\"shop/chaos\"", "fault=\"abort\""][..],
        ),
        (
            "weft_waypoint_faults_injected_total",
            &["fault=\"delay\"", "policy=\"shop/chaos\""][..],
        ),
        (
            "weft_waypoint_circuit_breaker_overflows_total",
            &["destination_service=\"shop/limited\"", "limit=\"requests\""][..],
        ),
        (
            "weft_waypoint_circuit_breaker_overflows_total",
            &["destination_service=\"shop/pooled\"", "limit=\"pending\""][..],
        ),
        (
            "weft_waypoint_retries_total",
            &[
                "destination_service=\"shop/balanced\"",
                "reason=\"backend-timeout\"",
            ][..],
        ),
    ] {
        assert!(
            counter(&metrics, name, labels) > 0.0,
            "{name} {labels:?} not counted:\n{metrics}"
        );
    }
    assert_eq!(
        counter(
            &metrics,
            "weft_waypoint_faults_injected_total",
            &["fault=\"abort\"", "destination_service=\"shop/chaos\""]
        ) as usize,
        aborted + 1,
        "the 500s and the gRPC abort"
    );
    let dom = dashboard_dom(&c, pods.waypoint);
    let figure = |backend: &str, attr: &str| dashboard_figure(&dom, "data-backend", backend, attr);
    assert_eq!(figure("shop/chaos", "data-aborts") as usize, aborted + 1);
    assert_eq!(figure("shop/chaos", "data-delays"), 5.0);
    assert!(figure("shop/limited", "data-overflows") >= 4.0);
    assert!(figure("shop/balanced", "data-retries") > 0.0);
    // Grafana: requests, retries, budget, circuit breakers and injected faults.
    assert_grafana_panels(&c.pods[pods.waypoint].ns, &[11, 12, 13, 14, 16]);
    drop(scraper);
    let log = c.pods[pods.waypoint].extra[waypoint].log_text();
    for flag in ["FI", "DI", "UO"] {
        assert!(
            log.contains(&format!("response_flags=\"{flag}\"")),
            "no access log line with flag {flag}"
        );
    }
}
