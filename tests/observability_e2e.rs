//! Observability end to end with the real tools: a real Prometheus server scrapes both
//! nodes' daemons while traffic flows and PromQL returns the exact byte count of a known
//! transfer from both reporters; byte counters grow during a 10-second transfer; a denied
//! connection is counted with response_flags="DENY" and logged with its policy;
//! `promtool check metrics` accepts the exposition; headless Chromium renders the node
//! dashboard with the testbed's pods and traffic; the admin API dumps config (no keys),
//! changes the log level and reports readiness.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, AMBIENT};
use common::prometheus::promql;
use common::testbed::*;
use serde_json::Value;

/// Bytes in the known transfer. Counters count payload bytes, not HBONE/TLS framing, so
/// both reporters must match it exactly.
const KNOWN_BYTES: u64 = 3_000_000;

fn ready() -> bool {
    e2e_ready(&[
        "ip",
        "nft",
        "nsenter",
        "curl",
        "python3",
        "prometheus",
        "promtool",
        "chromium",
    ])
}

fn curl_text(ns: &Netns, url: &str) -> String {
    let out = ns
        .command("curl")
        .args(["-sS", "--max-time", "5", url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn http_status(ns: &Netns, url: &str) -> String {
    let out = ns
        .command("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            url,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sum of a metric's samples whose labels contain all of `labels` (exposition text).
fn metric_sum(exposition: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn metrics_access_log_admin_and_dashboard() {
    if !ready() {
        return;
    }
    let mut c = Cluster::new(2);
    c.namespace("shop", &[AMBIENT]);
    c.extra_yaml = r#"apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-intruder, namespace: shop}
spec:
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/intruder"]}}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: to-nowhere, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: server}]
  rules: [{backendRefs: [{name: missing, port: 80}]}]
"#
    .to_owned();
    c.write_config();
    c.start_daemon(0);
    c.start_daemon(1);
    let client = c
        .add_pod(
            0,
            "shop",
            "client",
            "client",
            &[("app", "client"), ("version", "v1")],
        )
        .unwrap();
    let intruder = c.add_pod(0, "shop", "intruder", "intruder", &[]).unwrap();
    let server = c
        .add_pod(
            1,
            "shop",
            "server",
            "server",
            &[("app", "server"), ("version", "v2")],
        )
        .unwrap();
    c.start_tcp_app(server, "counter_server.py", 9000);
    // An HTTP app that answers, so a refused request is refused by policy, not by silence.
    c.start_app(server, 8080);
    c.settle();
    let server_ip = c.pods[server].ip.clone();
    let node1 = &c.nodes[0];
    let node2 = &c.nodes[1];

    // Prometheus in node-1's namespace scrapes both daemons every second.
    let prometheus = common::prometheus::start(
        &node1.ns,
        &c.work.path().join("prometheus"),
        &[
            "127.0.0.1:15020".to_owned(),
            format!("{}:15020", node2.underlay_ip),
        ],
    );

    // A known transfer: exactly KNOWN_BYTES from client to server.
    let sender = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/sender.py");
    let out = c.pods[client]
        .ns
        .command("python3")
        .arg(&sender)
        .args([&server_ip, "9000", &KNOWN_BYTES.to_string(), "0"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("received {KNOWN_BYTES}")
    );
    let answer_len = format!("received {KNOWN_BYTES}\n").len() as f64;

    // Both reporters count it, in the daemon's own exposition...
    let labels = [
        ("source_workload", "client"),
        ("destination_workload", "server"),
    ];
    for (node, reporter) in [(node1, "source"), (node2, "destination")] {
        let text = curl_text(&node.ns, "http://127.0.0.1:15020/metrics");
        let mut l = labels.to_vec();
        l.push(("reporter", reporter));
        assert_eq!(
            metric_sum(&text, "istio_tcp_received_bytes_total", &l),
            KNOWN_BYTES as f64,
            "{reporter} received bytes:\n{text}"
        );
        assert_eq!(
            metric_sum(&text, "istio_tcp_sent_bytes_total", &l),
            answer_len,
            "{reporter} sent bytes"
        );
        assert!(metric_sum(&text, "istio_tcp_connections_closed_total", &l) >= 1.0);
        assert!(
            text.contains("connection_security_policy=\"mutual_tls\""),
            "HBONE must be mutual_tls"
        );
        assert!(text.contains("source_principal=\"spiffe://cluster.local/ns/shop/sa/client\""));
        assert!(
            text.contains("source_app=\"client\"") && text.contains("destination_version=\"v2\"")
        );
    }
    // ...and Prometheus returns them through PromQL.
    for reporter in ["source", "destination"] {
        let query = format!(
            "sum(istio_tcp_received_bytes_total{{reporter=\"{reporter}\",source_workload=\"client\",destination_workload=\"server\"}})"
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let value = loop {
            if let Some(v) = promql(&node1.ns, &query) {
                if v >= KNOWN_BYTES as f64 {
                    break v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never returned {query}"
            );
            std::thread::sleep(Duration::from_millis(500));
        };
        let error = (value - KNOWN_BYTES as f64).abs() / KNOWN_BYTES as f64;
        assert!(
            error <= 0.01,
            "{reporter}: Prometheus says {value}, sent {KNOWN_BYTES}"
        );
    }

    // A 10-second transfer: the counter grows while it is still running.
    let mut slow_cmd = c.pods[client].ns.command("python3");
    slow_cmd
        .arg(&sender)
        .args([&server_ip, "9000", "20000000", "10"]);
    let slow_log = c.work.path().join("slow.log");
    let mut slow = Process::spawn(slow_cmd, &slow_log, "10 s transfer");
    let reading = |at: &str| {
        let text = curl_text(&node2.ns, "http://127.0.0.1:15020/metrics");
        let v = metric_sum(
            &text,
            "istio_tcp_received_bytes_total",
            &[("reporter", "destination"), ("source_workload", "client")],
        );
        eprintln!("{at}: {v} bytes counted");
        v
    };
    // Two readings that each grew past the one before, both taken while the transfer is
    // still running (checked after each): the counter moves with the bytes, not at close.
    let base = KNOWN_BYTES as f64;
    let mut previous = base;
    for step in ["first growth", "second growth"] {
        let deadline = Instant::now() + Duration::from_secs(8);
        let value = loop {
            let value = reading(step);
            if value > previous {
                break value;
            }
            assert!(
                Instant::now() < deadline,
                "{step}: the counter stayed at {value} during the transfer"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(
            slow.child.try_wait().unwrap().is_none(),
            "{step}: the transfer must still be running when the counter grows"
        );
        assert!(
            value < base + 20_000_000.0,
            "not finished yet, so not all bytes counted"
        );
        previous = value;
    }
    let status = slow.child.wait().unwrap();
    assert!(status.success());

    // A denied connection: response_flags="DENY", and the access log names the policy.
    // The same app answers the client, so the intruder's failure is the policy's doing.
    let app_url = format!("http://{server_ip}:8080/");
    assert_eq!(
        Cluster::curl(&c.pods[client].ns, &app_url).expect("client -> server:8080"),
        format!("server sees {}", c.pods[client].ip)
    );
    let denied_count = || {
        metric_sum(
            &curl_text(&node2.ns, "http://127.0.0.1:15020/metrics"),
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("source_workload", "intruder"),
                ("response_flags", "DENY"),
            ],
        )
    };
    let denied_before = denied_count();
    let denied = Cluster::curl(&c.pods[intruder].ns, &app_url);
    assert!(denied.is_err(), "intruder must be denied: {denied:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while denied_count() < denied_before + 1.0 {
        assert!(
            Instant::now() < deadline,
            "denied connection must be counted with DENY (still {denied_before})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = c.daemon_log(1);
    let line = log
        .lines()
        .find(|l| {
            l.contains("weft::access") && l.contains("response_flags=\"DENY\"")
                || (l.contains("weft::access") && l.contains("response_flags=DENY"))
        })
        .unwrap_or_else(|| panic!("no DENY access log line:\n{log}"));
    assert!(
        line.contains("shop/deny-intruder"),
        "access log must name the policy: {line}"
    );
    // Access log lines carry the fields an SRE needs.
    let access = log
        .lines()
        .find(|l| {
            l.contains("weft::access") && l.contains(&format!("bytes_received={KNOWN_BYTES}"))
        })
        .unwrap_or_else(|| panic!("no access log line for the known transfer:\n{log}"));
    for field in [
        "src=",
        "dst=",
        "src_workload=client",
        "dst_workload=server",
        "src_identity=spiffe://",
        "duration_ms=",
        "bytes_sent=",
    ] {
        assert!(access.contains(field), "access log lacks {field}: {access}");
    }

    // Health metrics carry the right values, not just their names. The health task
    // refreshes every few seconds, so poll until it has run once since the pods came up.
    let deadline = Instant::now() + Duration::from_secs(20);
    let exposition = loop {
        let text = curl_text(&node2.ns, "http://127.0.0.1:15020/metrics");
        let expiry = metric_sum(
            &text,
            "weft_certificate_expiry_seconds",
            &[("identity", "spiffe://cluster.local/ns/shop/sa/server")],
        );
        let accepted = metric_sum(
            &text,
            "weft_config_reloads_total",
            &[("result", "accepted")],
        );
        if expiry > 0.0 && accepted >= 1.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "health gauges never filled in:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let gauge = |text: &str, name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name}:\n{text}"))
    };
    assert_eq!(
        gauge(&exposition, "weft_enrolled_pods"),
        1.0,
        "node-2 enrolls only server"
    );
    let node1_metrics = curl_text(&node1.ns, "http://127.0.0.1:15020/metrics");
    assert_eq!(
        gauge(&node1_metrics, "weft_enrolled_pods"),
        2.0,
        "node-1 enrolls client and intruder"
    );
    assert_eq!(
        metric_sum(
            &exposition,
            "weft_config_reloads_total",
            &[("result", "rejected")]
        ),
        0.0,
        "no config was rejected"
    );
    assert_eq!(
        metric_sum(
            &exposition,
            "weft_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    let expiry = metric_sum(
        &exposition,
        "weft_certificate_expiry_seconds",
        &[("identity", "spiffe://cluster.local/ns/shop/sa/server")],
    );
    assert!(
        expiry > 3600.0 && expiry <= 25.0 * 3600.0,
        "the server's leaf lives about a day: {expiry} s left"
    );
    for wanted in ["process_resident_memory_bytes", "process_open_fds"] {
        assert!(
            gauge(&exposition, wanted) > 0.0,
            "{wanted} must be positive"
        );
    }
    // metrics-process counts CPU in whole seconds: a young daemon may still read 0.
    assert!(gauge(&exposition, "process_cpu_seconds_total") >= 0.0);

    // promtool accepts the exposition.
    let mut check = std::process::Command::new("promtool");
    check
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = check.spawn().unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(exposition.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let problems = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && problems.trim().is_empty(),
        "promtool found problems:\n{problems}"
    );

    // Admin API: config dump (no private keys), log level, readiness.
    let dump: Value =
        serde_json::from_str(&curl_text(&node2.ns, "http://127.0.0.1:15000/config_dump"))
            .expect("config dump is JSON");
    assert!(dump["mesh"]["workloads"]
        .as_array()
        .is_some_and(|w| w.len() >= 3));
    assert!(
        dump["policies_in_force"]["shop/server"]["authorization_policies"]
            .to_string()
            .contains("shop/deny-intruder")
    );
    assert!(dump["certificates"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["not_after_unix"].as_u64().is_some())));
    assert!(dump["served"].to_string().contains("\"enrolled\""));
    // A route weft cannot honour says why (its parent Service does not exist here, nor its
    // backend).
    let route = &dump["route_status"][0];
    assert_eq!(route["route"], "shop/to-nowhere", "{route}");
    assert_eq!(
        route["parents"][0]["accepted"]["reason"], "NoMatchingParent",
        "{route}"
    );
    assert_eq!(
        route["parents"][0]["resolved_refs"]["reason"], "BackendNotFound",
        "{route}"
    );
    let raw_dump = dump.to_string();
    assert!(
        !raw_dump.contains("PRIVATE KEY") && !raw_dump.contains("BEGIN"),
        "the dump must never hold keys"
    );
    // The log filter: a bad one is refused and changes nothing; `warn` really silences the
    // access log, and `info` brings it back.
    assert_eq!(
        http_status(
            &node2.ns,
            "http://127.0.0.1:15000/logging?level=not%20a%20level%3D%3D"
        ),
        "400"
    );
    let filter = curl_text(&node2.ns, "http://127.0.0.1:15000/logging");
    assert!(
        filter.contains("weft=debug"),
        "filter unchanged by a bad request: {filter}"
    );
    assert_eq!(
        http_status(&node2.ns, "http://127.0.0.1:15000/logging?level=warn"),
        "200"
    );
    assert_eq!(
        curl_text(&node2.ns, "http://127.0.0.1:15000/logging").trim(),
        "current log filter: warn"
    );
    let closed_count = || {
        metric_sum(
            &curl_text(&node2.ns, "http://127.0.0.1:15020/metrics"),
            "istio_tcp_connections_closed_total",
            &[("reporter", "destination"), ("source_workload", "client")],
        )
    };
    // Transfers of sizes no other connection in this test has, one at each level.
    let transfer = |bytes: u64| {
        let before = closed_count();
        let out = c.pods[client]
            .ns
            .command("python3")
            .arg(&sender)
            .args([&server_ip, "9000", &bytes.to_string(), "0"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("received {bytes}")
        );
        // The close is counted just before its access line is written.
        let deadline = Instant::now() + Duration::from_secs(10);
        while closed_count() < before + 1.0 {
            assert!(
                Instant::now() < deadline,
                "transfer of {bytes} never closed"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    transfer(1_234_567);
    assert_eq!(
        http_status(&node2.ns, "http://127.0.0.1:15000/logging?level=info"),
        "200"
    );
    transfer(7_654_321);
    let log = c.daemon_log(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.daemon_log(1).contains("bytes_received=7654321") {
        assert!(
            Instant::now() < deadline,
            "at level info the access line is written:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !c.daemon_log(1).contains("bytes_received=1234567"),
        "at level warn no access line may be written"
    );
    assert_eq!(
        http_status(&node2.ns, "http://127.0.0.1:15021/healthz/ready"),
        "200"
    );

    // The dashboard: no external assets, and headless Chromium shows pods and traffic.
    let page = curl_text(&node1.ns, "http://127.0.0.1:15020/");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "dashboard must not load anything from outside"
    );
    // Some traffic on node-1 during the render, so throughput is live.
    let mut bg_cmd = c.pods[client].ns.command("python3");
    bg_cmd
        .arg(&sender)
        .args([&server_ip, "9000", "4000000", "8"]);
    let _bg = Process::spawn(bg_cmd, &c.work.path().join("bg.log"), "background transfer");
    let profile = c.work.path().join("chromium-profile");
    let screenshot = c.work.path().join("dashboard.png");
    let chromium = |extra: &[&str]| {
        let mut cmd = node1.ns.command("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
            "--virtual-time-budget=7000",
            "--window-size=1400,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg("http://127.0.0.1:15020/");
        cmd.output().expect("run chromium")
    };
    let dom = String::from_utf8_lossy(&chromium(&["--dump-dom"]).stdout).into_owned();
    assert!(
        dom.contains("data-pod=\"client\"") && dom.contains("data-pod=\"intruder\""),
        "dashboard must list node-1's pods:\n{dom}"
    );
    assert!(
        dom.contains("shop/client") && dom.contains("shop/server"),
        "dashboard must show the client -> server pair:\n{dom}"
    );
    let traffic_bytes: u64 = dom
        .split("data-bytes=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        traffic_bytes >= KNOWN_BYTES,
        "dashboard traffic rows must carry the transfer's bytes"
    );
    assert!(
        dom.contains("<span id=\"ready\" class=\"badge ok\">ready</span>"),
        "readiness badge must say ready:\n{dom}"
    );
    let shot = chromium(&[&format!("--screenshot={}", screenshot.display())]);
    assert!(
        screenshot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&shot.stderr)
    );
    if let Ok(dest) = std::env::var("WEFT_DASHBOARD_SCREENSHOT") {
        std::fs::copy(&screenshot, dest).unwrap();
    }
    drop(prometheus);
}

/// `--log-format json`: every line the daemon writes is one JSON object, and a
/// connection's access line carries its fields as JSON values.
#[test]
fn json_log_format_writes_one_object_per_line() {
    if !ready() {
        return;
    }
    let mut c = Cluster::new(1);
    c.namespace("shop", &[AMBIENT]);
    c.daemon_args = vec!["--log-format".into(), "json".into()];
    c.write_config();
    c.start_daemon(0);
    let client = c.add_pod(0, "shop", "client", "client", &[]).unwrap();
    let server = c.add_pod(0, "shop", "server", "server", &[]).unwrap();
    c.start_app(server, 8080);
    let url = format!("http://{}:8080/", c.pods[server].ip);
    assert_eq!(
        Cluster::curl(&c.pods[client].ns, &url).expect("client -> server"),
        format!("server sees {}", c.pods[client].ip)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let access = loop {
        let log = c.daemon_log(0);
        let lines: Vec<Value> = log
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"))
            })
            .collect();
        assert!(!lines.is_empty());
        let found = lines
            .into_iter()
            .find(|l| l["target"] == "weft::access" && l["fields"]["direction"] == "inbound");
        if let Some(found) = found {
            break found;
        }
        assert!(Instant::now() < deadline, "no JSON access line:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let fields = &access["fields"];
    assert_eq!(fields["src_workload"], "client", "{access}");
    assert_eq!(fields["dst_workload"], "server", "{access}");
    assert_eq!(
        fields["src_identity"], "spiffe://cluster.local/ns/shop/sa/client",
        "{access}"
    );
    assert!(
        fields["bytes_received"].as_u64().is_some_and(|b| b > 0),
        "{access}"
    );
    assert!(
        access["level"] == "INFO" && access["timestamp"].is_string(),
        "{access}"
    );
}
