//! Host mode end to end: two `weft-node --mode host` daemons in two network namespaces
//! sharing one CA. `curl --socks5` on the first reaches an HTTP server on the second;
//! tcpdump on the link proves only TLS to port 15008 crosses it. Config edits apply live and
//! a broken edit is rejected while traffic continues; SIGTERM lets an open transfer finish,
//! then exits cleanly.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::testbed::*;
use weft::identity::MeshCa;

const MARKER: &str = "WEFT-PLAINTEXT-MARKER-7c1e";

const APP: &str = include_str!("apps/http_app.py");

fn mesh(subnet: u8, extra: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: demo, labels: {{weft.dev/dataplane-mode: ambient}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: demo}}
spec: {{serviceAccountName: client, nodeName: vm-a}}
status: {{podIP: 10.{subnet}.0.1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: demo, labels: {{app: server}}}}
spec: {{serviceAccountName: server, nodeName: vm-b}}
status: {{podIP: 10.{subnet}.0.2}}
---
apiVersion: v1
kind: Service
metadata: {{name: server, namespace: demo}}
spec:
  clusterIP: 10.{subnet}.100.10
  selector: {{app: server}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
{extra}"#
    )
}

fn curl(ns: &Netns, args: &[&str]) -> Result<String, String> {
    let out = ns
        .command("curl")
        .args(["-sS", "--max-time", "5"])
        .args(args)
        .output()
        .expect("curl");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn socks5_through_two_host_daemons_carries_only_tls() {
    if !e2e_ready(&["ip", "curl", "tcpdump", "python3"]) {
        return;
    }
    let weft_node = binary("weft-node");
    let work = tempfile::tempdir().unwrap();
    let ca_dir = work.path().join("ca");
    MeshCa::init(&ca_dir, "cluster.local", false).unwrap();
    let subnet = 100 + (std::process::id() % 100) as u8;
    let config = work.path().join("mesh.yaml");
    std::fs::write(&config, mesh(subnet, "")).unwrap();

    let a = Netns::new("wha");
    let b = Netns::new("whb");
    let (a_if, _) = link(
        &a,
        &format!("10.{subnet}.0.1/24"),
        &b,
        &format!("10.{subnet}.0.2/24"),
    );
    // Service VIPs are virtual: route them towards the link so nothing else sees them.
    a.run(&[
        "ip",
        "route",
        "add",
        &format!("10.{subnet}.100.0/24"),
        "dev",
        &a_if,
    ]);

    let app_path = work.path().join("app.py");
    std::fs::write(&app_path, APP).unwrap();
    let mut app_cmd = b.command("python3");
    app_cmd
        .arg(&app_path)
        .args([&format!("10.{subnet}.0.2"), "8080"]);
    let _app = Process::spawn(app_cmd, &work.path().join("app.log"), "http app");
    // Wait for the app itself (a cold Python start can take a while on a fresh machine).
    let app_url = format!("http://10.{subnet}.0.2:8080/");
    let deadline = Instant::now() + Duration::from_secs(15);
    while curl(&b, &[&app_url]).is_err() {
        assert!(Instant::now() < deadline, "the test app never started");
        std::thread::sleep(Duration::from_millis(100));
    }

    let daemon = |ns: &Netns, node: &str, socks: bool| {
        let mut cmd = ns.command(&weft_node);
        cmd.args([
            "--mode",
            "host",
            "--node-name",
            node,
            "--grace-period",
            "3s",
        ])
        .arg("--config")
        .arg(&config)
        .arg("--ca-dir")
        .arg(&ca_dir)
        .env("RUST_LOG", "info");
        if socks {
            cmd.args(["--socks5", "127.0.0.1:15080"]);
        }
        let mut p = Process::spawn(cmd, &work.path().join(format!("{node}.log")), node);
        p.wait_for_log("weft-node ready", Duration::from_secs(10));
        p
    };
    let mut node_a = daemon(&a, "vm-a", true);
    let mut node_b = daemon(&b, "vm-b", false);
    assert!(
        node_a
            .log_text()
            .contains("spiffe://cluster.local/ns/demo/sa/client"),
        "{}",
        node_a.log_text()
    );
    assert!(
        node_b
            .log_text()
            .contains("spiffe://cluster.local/ns/demo/sa/server"),
        "{}",
        node_b.log_text()
    );

    // Capture everything on the link while traffic flows.
    let capture = Capture::start(&a, &a_if, work.path());

    let socks = ["--socks5", "127.0.0.1:15080"];
    let body_file = work.path().join("body.bin");
    std::fs::write(&body_file, MARKER.repeat(20_000)).unwrap();
    let body_arg = format!("@{}", body_file.display());
    let url = format!("http://10.{subnet}.0.2:8080/");
    let answer = curl(
        &a,
        &[&socks[..], &["--data-binary", &body_arg, &url]].concat(),
    )
    .unwrap_or_else(|e| {
        panic!(
            "POST through the mesh: {e}\n--- vm-a ---\n{}\n--- vm-b ---\n{}",
            node_a.log_text(),
            node_b.log_text()
        )
    });
    assert_eq!(
        answer.trim(),
        format!("got {} bytes, marker True", MARKER.len() * 20_000)
    );

    // By Service name (resolved by the daemon) and VIP: load-balanced to the one endpoint.
    let by_name = curl(
        &a,
        &[
            "--socks5-hostname",
            "127.0.0.1:15080",
            "http://server.demo.svc.cluster.local/",
        ],
    )
    .expect("GET by service name");
    assert_eq!(by_name.trim(), format!("server sees 10.{subnet}.0.2"));
    let by_vip = curl(
        &a,
        &[&socks[..], &[&format!("http://10.{subnet}.100.10/")[..]]].concat(),
    )
    .expect("GET by VIP");
    assert_eq!(by_vip.trim(), format!("server sees 10.{subnet}.0.2"));

    let (raw, lines) = capture.stop();
    assert!(
        !contains_bytes(&raw, MARKER.as_bytes()),
        "the request body crossed the link in clear"
    );
    assert!(lines.len() > 20, "too few packets captured: {lines:?}");
    for line in &lines {
        assert!(is_port(line, 15008), "non-HBONE packet on the link: {line}");
    }
    // A TLS handshake record (content type 22) opened the tunnel.
    assert!(
        contains_bytes(&raw, &[0x16, 0x03, 0x01]) || contains_bytes(&raw, &[0x16, 0x03, 0x03]),
        "no TLS handshake seen on the link"
    );
    // A live config edit: a new Service becomes reachable without a restart.
    let second = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: server2, namespace: demo}}\nspec:\n  clusterIP: 10.{subnet}.100.11\n  selector: {{app: server}}\n  ports: [{{port: 81, targetPort: 8080}}]\n"
    );
    let url2 = "http://server2.demo.svc.cluster.local:81/";
    assert!(
        curl(&a, &["--socks5-hostname", "127.0.0.1:15080", url2]).is_err(),
        "server2 must not exist yet"
    );
    let edited_at = Instant::now();
    std::fs::write(&config, mesh(subnet, &second)).unwrap();
    let mut reached = None;
    while edited_at.elapsed() < Duration::from_secs(5) {
        if let Ok(text) = curl(&a, &["--socks5-hostname", "127.0.0.1:15080", url2]) {
            reached = Some((text, edited_at.elapsed()));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (text, took) = reached.expect("the edited config never took effect");
    assert!(text.starts_with("server sees"), "{text}");
    eprintln!("config edit took effect after {took:?}");

    // A broken edit: rejected with a message naming the document and field; traffic continues.
    let broken =
        mesh(subnet, &second).replace(&format!("podIP: 10.{subnet}.0.2"), "podIP: 10.1.2.300");
    std::fs::write(&config, broken).unwrap();
    node_a.wait_for_log("status.podIP", Duration::from_secs(5));
    let log = node_a.log_text();
    assert!(
        log.contains("document 3") && log.contains("10.1.2.300"),
        "unclear rejection:\n{log}"
    );
    let still = curl(&a, &["--socks5-hostname", "127.0.0.1:15080", url2])
        .expect("traffic after a broken edit");
    assert!(still.starts_with("server sees"), "{still}");

    // SIGTERM with a transfer open through both daemons: each stops accepting, waits for
    // the transfer, which completes byte for byte, and only then exits cleanly.
    let counter = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/counter_server.py");
    let mut counter_cmd = b.command("python3");
    counter_cmd.arg(&counter).arg("9000");
    let _counter = Process::spawn(counter_cmd, &work.path().join("counter.log"), "counter");
    let probe =
        format!("import socket; socket.create_connection(('10.{subnet}.0.2', 9000), timeout=1)");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !b
        .command("python3")
        .args(["-c", &probe])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(Instant::now() < deadline, "the counter app never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let gate = work.path().join("gate");
    let total = 8 * 1024 * 1024u64;
    let mut sender_cmd = a.command("python3");
    sender_cmd
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/gated_sender.py"))
        .args(["--socks5", "127.0.0.1:15080"])
        .args([&format!("10.{subnet}.0.2"), "9000", &total.to_string()])
        .arg(&gate);
    let mut sender = Process::spawn(sender_cmd, &work.path().join("sender.log"), "sender");
    sender.wait_for_log("half-sent", Duration::from_secs(15));
    for node in [&mut node_a, &mut node_b] {
        let pid = nix::unistd::Pid::from_raw(node.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    }
    for node in [&mut node_a, &mut node_b] {
        node.wait_for_log("waiting for open connections", Duration::from_secs(10));
    }
    for node in [&mut node_a, &mut node_b] {
        assert!(
            node.child.try_wait().unwrap().is_none(),
            "{} exited with a transfer open:\n{}",
            node.what,
            node.log_text()
        );
    }
    std::fs::write(&gate, "go").unwrap();
    sender.wait_for_log("answer ", Duration::from_secs(30));
    assert!(
        sender
            .log_text()
            .contains(&format!("answer received {total}")),
        "transfer across SIGTERM: {}",
        sender.log_text()
    );
    for node in [&mut node_a, &mut node_b] {
        let status =
            node.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(8));
        let log = node.log_text();
        assert!(
            status.success(),
            "{} exited with {status}:\n{log}",
            node.what
        );
        assert!(log.contains("all connections finished"), "{log}");
    }
}

/// Readiness must never answer while the HBONE port is not bound: with 15008 taken by
/// another process, the daemon exits with an error naming the port, and its readiness
/// endpoint never came up at all.
#[test]
fn readiness_never_comes_up_without_the_hbone_listener() {
    if !e2e_ready(&["ip", "python3"]) {
        return;
    }
    let weft_node = binary("weft-node");
    let work = tempfile::tempdir().unwrap();
    let ca_dir = work.path().join("ca");
    MeshCa::init(&ca_dir, "cluster.local", false).unwrap();
    let config = work.path().join("mesh.yaml");
    std::fs::write(&config, mesh(250, "")).unwrap();
    let ns = Netns::new("whr");
    let mut squatter = ns.command("python3");
    squatter.args([
        "-c",
        "import socket, time\n\
         s = socket.socket(); s.bind(('0.0.0.0', 15008)); s.listen()\n\
         print('bound', flush=True)\n\
         time.sleep(600)",
    ]);
    let mut squatter = Process::spawn(squatter, &work.path().join("squatter.log"), "squatter");
    squatter.wait_for_log("bound", Duration::from_secs(10));

    let mut cmd = ns.command(&weft_node);
    cmd.args(["--mode", "host", "--node-name", "vm-b"])
        .arg("--config")
        .arg(&config)
        .arg("--ca-dir")
        .arg(&ca_dir)
        .env("RUST_LOG", "info");
    let mut node = Process::spawn(cmd, &work.path().join("vm-b.log"), "vm-b");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon kept running without its HBONE port:\n{}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = node.log_text();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("0.0.0.0:15008"),
        "error must name the port:\n{log}"
    );
    assert!(
        !log.contains("readiness endpoints up"),
        "readiness was served before the HBONE port was bound:\n{log}"
    );
}
