//! The daemon's own lifecycle end to end: the async runtime it really builds
//! (`--worker-threads`), and how it shuts down on SIGTERM in pods mode (open connections
//! finish, then it exits; one that never finishes is cut at `--grace-period`).

mod common;

use std::path::Path;
use std::time::Duration;

use common::testbed::*;
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

/// Names of the threads of process `pid`, from `/proc/<pid>/task/*/comm`.
fn thread_names(pid: u32) -> Vec<String> {
    let mut names = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/<pid>/task") {
        let comm = task.expect("task entry").path().join("comm");
        if let Ok(name) = std::fs::read_to_string(comm) {
            names.push(name.trim().to_owned());
        }
    }
    names
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
        let names = thread_names(daemon.child.id());
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
