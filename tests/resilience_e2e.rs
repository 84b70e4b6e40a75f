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
use common::l7::{add_echo_pods, curl, start_echo, start_waypoint, statuses, waypoint_get};
use common::testbed::Netns;

const WAYPOINT: &str = "pay-waypoint";

fn ready() -> bool {
    pods_e2e_ready(&["ip", "nft", "nsenter", "curl", "python3"])
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
    c.start_daemon(0);
    c.start_daemon(1);
    let pods = add_echo_pods(&mut c, WAYPOINT);
    let v3 = c
        .add_pod(
            1,
            "shop",
            "echo-v3",
            "echo",
            &[("app", "echo"), ("version", "v3")],
        )
        .expect("ADD echo-v3");
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
