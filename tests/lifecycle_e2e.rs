//! The daemon's own lifecycle end to end: the async runtime it really builds
//! (`--worker-threads`), how it shuts down on SIGTERM in pods mode (open connections
//! finish, then it exits; one that never finishes is cut at `--grace-period`), and a
//! renewed certificate really being presented in the next TLS handshake (in process).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{pods_e2e_ready, Cluster, AMBIENT};
use common::testbed::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use weft::identity::MeshCa;

/// A one-pod mesh for a host-mode daemon that serves nothing in particular.
const HOST_MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {weft.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: demo}
spec: {serviceAccountName: server, nodeName: vm-a}
status: {podIP: 10.254.0.2}
"#;

/// (thread id, name) of every thread of process `pid`, from `/proc/<pid>/task/*/comm`.
fn threads(pid: u32) -> Vec<(String, String)> {
    let mut list = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/<pid>/task") {
        let task = task.expect("task entry");
        if let Ok(name) = std::fs::read_to_string(task.path().join("comm")) {
            list.push((
                task.file_name().to_string_lossy().into_owned(),
                name.trim().to_owned(),
            ));
        }
    }
    list.sort();
    list
}

/// The thread names of `pid` once two reads in a row agree: a thread that is just being
/// created still shows its creator's name until it sets its own.
fn settled_thread_names(pid: u32) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut previous = threads(pid);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = threads(pid);
        if now == previous {
            return now.into_iter().map(|(_, name)| name).collect();
        }
        assert!(Instant::now() < deadline, "threads never settled: {now:?}");
        previous = now;
    }
}

/// Starts `weft-node --mode host` in `ns` with `extra` flags and waits until it is ready.
fn start_host_daemon(ns: &Netns, work: &Path, extra: &[&str]) -> Process {
    let ca_dir = work.join("ca");
    if !ca_dir.exists() {
        MeshCa::init(&ca_dir, "cluster.local", false).expect("ca init");
    }
    let config = work.join("mesh.yaml");
    std::fs::write(&config, HOST_MESH).expect("config");
    let mut cmd = ns.command(binary("weft-node"));
    cmd.args(["--mode", "host", "--node-name", "vm-a"])
        .args(extra)
        .arg("--config")
        .arg(&config)
        .arg("--ca-dir")
        .arg(&ca_dir)
        .env("RUST_LOG", "info");
    let mut daemon = Process::spawn(cmd, &work.join(unique("daemon-")), "weft-node");
    daemon.wait_for_log("weft-node ready", Duration::from_secs(15));
    daemon
}

#[test]
fn worker_threads_flag_sets_the_number_of_async_workers() {
    if !e2e_ready(&["ip"]) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    for (flag, expected) in [(Some("3"), 3), (Some("1"), 1), (None, default_workers())] {
        let ns = Netns::new("wlt");
        let extra: Vec<&str> = flag
            .map(|n| vec!["--worker-threads", n])
            .unwrap_or_default();
        let mut daemon = start_host_daemon(&ns, work.path(), &extra);
        let names = settled_thread_names(daemon.child.id());
        let workers = names.iter().filter(|n| *n == "weft-worker").count();
        assert_eq!(
            workers,
            expected,
            "--worker-threads {flag:?}: threads {names:?}\n{}",
            daemon.log_text()
        );
        let status =
            daemon.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(15));
        assert!(status.success(), "{}", daemon.log_text());
    }
    // Nonsense is refused, naming the flag.
    let ns = Netns::new("wlt");
    let out = ns
        .command(binary("weft-node"))
        .args([
            "--mode",
            "host",
            "--node-name",
            "vm-a",
            "--config",
            "/nonexistent",
        ])
        .args(["--ca-dir", "/nonexistent", "--worker-threads", "0"])
        .output()
        .expect("weft-node");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--worker-threads"), "{stderr}");
}

/// The documented default: 1 worker with up to 2 CPUs, else 2.
fn default_workers() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus > 2 {
        2
    } else {
        1
    }
}

const GATED_SENDER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps/gated_sender.py");
/// Bytes one transfer carries across SIGTERM.
const TRANSFER_BYTES: u64 = 8 * 1024 * 1024;

fn pods_ready() -> bool {
    pods_e2e_ready(&["ip", "nft", "nsenter", "curl", "python3"])
}

/// Starts tests/apps/gated_sender.py in pod `from` towards `to_ip:port`; returns once the
/// first half is sent. The second half follows when `gate` exists.
fn start_gated_sender(c: &Cluster, from: usize, to_ip: &str, port: u16, gate: &Path) -> Process {
    let mut cmd = c.pods[from].ns.command("python3");
    cmd.arg(GATED_SENDER)
        .args([to_ip, &port.to_string(), &TRANSFER_BYTES.to_string()])
        .arg(gate);
    let log = c.work.path().join(unique("sender-"));
    let mut sender = Process::spawn(cmd, &log, "gated sender");
    sender.wait_for_log("half-sent", Duration::from_secs(15));
    sender
}

/// Waits until `process` exits by itself.
fn wait_for_exit(process: &mut Process, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = process.child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not exit within {timeout:?}:\n{}",
            process.what,
            process.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a new TCP connection from pod `from` to `ip:port` is accepted end to end.
fn connects(c: &Cluster, from: usize, ip: &str, port: u16) -> bool {
    let probe = format!(
        "import socket\ns = socket.create_connection(('{ip}', {port}), timeout=3)\n\
         s.shutdown(socket.SHUT_WR)\nassert s.recv(64).startswith(b'received 0')"
    );
    c.pods[from]
        .ns
        .command("python3")
        .args(["-c", &probe])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// SIGTERM in pods mode: the daemon stops accepting (new connections are refused: the
/// rules stay, the listeners are gone), lets an open transfer finish intact, and exits
/// only then; a connection that never finishes is cut at `--grace-period`.
#[test]
fn pods_mode_drains_open_connections_on_sigterm() {
    if !pods_ready() {
        return;
    }
    let mut c = Cluster::new(1);
    c.namespace("shop", &[AMBIENT]);
    c.write_config();
    c.daemon_args = vec!["--grace-period".into(), "60s".into()];
    c.start_daemon(0);
    let client = c
        .add_pod(0, "shop", "client", "client", &[])
        .expect("ADD client");
    let server = c
        .add_pod(0, "shop", "server", "server", &[])
        .expect("ADD server");
    c.settle();
    c.start_tcp_app(server, "counter_server.py", 9000);
    let server_ip = c.pods[server].ip.clone();
    assert!(connects(&c, client, &server_ip, 9000), "mesh path not up");

    // 1. A transfer open across SIGTERM completes, byte for byte; the daemon waits for it.
    let gate = c.work.path().join("gate-1");
    let mut sender = start_gated_sender(&c, client, &server_ip, 9000, &gate);
    kill(Pid::from_raw(c.daemon_pid(0) as i32), Signal::SIGTERM).expect("SIGTERM");
    let daemon = c.nodes[0].daemon.as_mut().expect("daemon");
    daemon.wait_for_log("waiting for open connections", Duration::from_secs(10));
    assert!(
        daemon.child.try_wait().expect("try_wait").is_none(),
        "the daemon exited with a transfer open:\n{}",
        daemon.log_text()
    );
    assert!(
        !connects(&c, client, &server_ip, 9000),
        "a draining daemon must not accept new connections"
    );
    std::fs::write(&gate, "go").unwrap();
    assert!(wait_for_exit(&mut sender, Duration::from_secs(30)).success());
    assert!(
        sender
            .log_text()
            .contains(&format!("answer received {TRANSFER_BYTES}")),
        "transfer across SIGTERM: {}",
        sender.log_text()
    );
    let daemon = c.nodes[0].daemon.as_mut().expect("daemon");
    let status = wait_for_exit(daemon, Duration::from_secs(30));
    let log = daemon.log_text();
    assert!(status.success(), "{log}");
    assert!(log.contains("all connections finished"), "{log}");
    assert!(!log.contains("grace period over"), "{log}");

    // 2. A connection that stays open: the daemon exits once the grace period is over, and
    // not before.
    let grace = Duration::from_secs(2);
    c.daemon_args = vec!["--grace-period".into(), "2s".into()];
    c.start_daemon(0);
    c.settle();
    let gate = c.work.path().join("gate-never");
    let _stuck = start_gated_sender(&c, client, &server_ip, 9000, &gate);
    let signalled = Instant::now();
    kill(Pid::from_raw(c.daemon_pid(0) as i32), Signal::SIGTERM).expect("SIGTERM");
    let daemon = c.nodes[0].daemon.as_mut().expect("daemon");
    let status = wait_for_exit(daemon, Duration::from_secs(30));
    let took = signalled.elapsed();
    let log = daemon.log_text();
    assert!(status.success(), "{log}");
    assert!(log.contains("grace period over"), "{log}");
    assert!(
        took >= grace,
        "exited after {took:?}, before the {grace:?} grace period"
    );
}

/// The leaf a TLS server presents changes when the CertManager renews it: a handshake
/// after the renewal sees a new certificate (another serial, a later notBefore) without
/// any restart or config rebuild.
#[tokio::test]
async fn a_renewed_certificate_is_served_in_the_next_handshake() {
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::AsyncWriteExt;
    use tokio_rustls::{TlsAcceptor, TlsConnector};
    use weft::identity::{CertManager, RenewalPolicy, SpiffeId};

    let dir = tempfile::tempdir().unwrap();
    MeshCa::init(dir.path(), "cluster.local", false).unwrap();
    let policy = RenewalPolicy {
        ttl: Duration::from_secs(2),
        renew_at_fraction: 0.5,
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_millis(400),
    };
    let certs = CertManager::new(dir.path().to_owned(), policy).unwrap();
    let server_id = SpiffeId::new("cluster.local", "demo", "server").unwrap();
    let client_id = SpiffeId::new("cluster.local", "demo", "client").unwrap();
    let server_slot = certs.get_or_issue(&server_id).await.unwrap();
    let server_config = weft::tls::server_config(&certs.roots(), server_slot.clone()).unwrap();
    let client_slot = certs.get_or_issue(&client_id).await.unwrap();
    let client_config =
        weft::tls::client_config(&certs.roots(), client_slot, server_id.clone()).unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server_config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    let connector = TlsConnector::from(client_config);
    let handshake = || {
        let connector = connector.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = ServerName::IpAddress(addr.ip().into());
            let tls = connector.connect(name, tcp).await.expect("handshake");
            let presented: Vec<CertificateDer<'static>> = tls
                .get_ref()
                .1
                .peer_certificates()
                .expect("server chain")
                .to_vec();
            Arc::new(presented[0].clone())
        }
    };
    let facts = |der: &CertificateDer<'_>| {
        let (_, cert) = x509_parser::parse_x509_certificate(der).expect("x509");
        (
            cert.raw_serial().to_vec(),
            cert.validity().not_before.timestamp(),
        )
    };

    let first = handshake().await;
    assert_eq!(*first, server_slot.current().chain[0]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while server_slot.current().chain[0] == *first {
        assert!(
            Instant::now() < deadline,
            "the server leaf was never renewed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = handshake().await;
    let (first_serial, first_not_before) = facts(&first);
    let (second_serial, second_not_before) = facts(&second);
    assert_ne!(
        second_serial, first_serial,
        "the handshake after a renewal still presented the old certificate"
    );
    assert!(second_not_before > first_not_before);
}
