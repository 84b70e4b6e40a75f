//! Pods that already run when weft-node starts (a fresh install): created through the
//! node's primary CNI alone, each with a "pause" process in a cgroup named the way the
//! kubelet names pod cgroups (`.../kubepods/besteffort/pod<uid>/...`). The daemon, started
//! afterwards with `--cni-install`, finds their network namespaces in /proc, checks each
//! holds the pod's IP, and enrolls them without a restart: their traffic then crosses the
//! underlay only as HBONE (TLS to 15008), and the apps see the real client IP.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::cluster::{pods_e2e_ready, Cluster, AMBIENT};
use common::testbed::*;
use serde_json::json;

const MARKER: &str = "MARKER-already-running";

/// A process holding a pod's network namespace inside a kubelet-style pod cgroup; killed
/// and its cgroup removed on drop.
struct Pause {
    process: std::process::Child,
    cgroups: Vec<PathBuf>,
}

impl Pause {
    fn start(netns: &str, pod_uid: &str) -> Pause {
        // A cgroup v1 hierarchy if one is mounted (no controller needs enabling), else v2.
        let root = [
            "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists())
        .expect("a writable cgroup hierarchy");
        let top = root.join(unique("weft-e2e-"));
        let pod = top
            .join("kubepods/besteffort")
            .join(format!("pod{pod_uid}"));
        std::fs::create_dir_all(&pod).unwrap_or_else(|e| panic!("mkdir {}: {e}", pod.display()));
        let process = std::process::Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{netns}"))
            .args(["sleep", "600"])
            .spawn()
            .expect("start the pause process");
        std::fs::write(pod.join("cgroup.procs"), process.id().to_string()).unwrap();
        let cgroups = vec![
            pod.clone(),
            top.join("kubepods/besteffort"),
            top.join("kubepods"),
            top,
        ];
        Pause { process, cgroups }
    }
}

impl Drop for Pause {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        for dir in &self.cgroups {
            // A cgroup dir goes once its process has exited; retry briefly.
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn wait_until(what: &str, timeout: Duration, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn pods_running_before_the_install_are_enrolled_without_a_restart() {
    if !pods_e2e_ready(&["ip", "nft", "nsenter", "curl", "tcpdump", "python3"]) {
        return;
    }
    let mut c = Cluster::new(2);
    c.runtime_cni = true;
    c.namespace("shop", &[AMBIENT]);
    c.namespace("legacy", &[]);
    c.write_config();
    for i in 0..2 {
        c.write_primary_conflist(i, json!({}));
    }
    // Before weft: the runtime's chain is the primary's alone.
    let server = c
        .add_pod(1, "shop", "server", "server", &[])
        .expect("ADD server");
    let client = c
        .add_pod(0, "shop", "client", "client", &[])
        .expect("ADD client");
    let outside = c
        .add_pod(0, "legacy", "outside", "outside", &[])
        .expect("ADD outside");
    c.start_app(server, 8080);
    let pauses: Vec<Pause> = [server, client, outside]
        .iter()
        .map(|&p| Pause::start(&c.pods[p].ns.name, &c.pods[p].spec.uid))
        .collect();
    let url = format!("http://{}:8080/", c.pods[server].ip);
    assert_eq!(
        Cluster::curl(&c.pods[client].ns, &url).expect("plain before weft"),
        format!("server sees {}", c.pods[client].ip)
    );

    // Install: the daemons start and find them.
    c.start_daemon(0);
    c.start_daemon(1);
    let enrolled = |c: &Cluster, node: usize, name: &str| {
        c.dump(node).is_some_and(|dump| {
            dump["served"].as_array().is_some_and(|pods| {
                pods.iter()
                    .any(|p| p["name"] == name && p["state"] == "enrolled")
            })
        })
    };
    wait_until(
        "the running server pod is enrolled",
        Duration::from_secs(15),
        || enrolled(&c, 1, "server"),
    );
    wait_until(
        "the running client pod is enrolled",
        Duration::from_secs(15),
        || enrolled(&c, 0, "client"),
    );
    assert!(
        !enrolled(&c, 0, "outside"),
        "a pod of a namespace outside the mesh was enrolled"
    );
    assert!(c
        .daemon_log(0)
        .contains("found a pod that was already running"));

    // Their traffic now goes through the mesh: only HBONE on the underlay.
    let capture = Capture::start(&c.nodes[0].ns, "ul0", c.work.path());
    let body = MARKER.repeat(100);
    let post = Cluster::curl_post(&c.pods[client].ns, &url, &body).expect("POST client -> server");
    assert_eq!(post, format!("got {} bytes, marker True", body.len()));
    assert_eq!(
        Cluster::curl(&c.pods[client].ns, &url).expect("client -> server in the mesh"),
        format!("server sees {}", c.pods[client].ip)
    );
    let (raw, lines) = capture.stop();
    assert_only_hbone(&raw, &lines, MARKER.as_bytes());
    drop(pauses);
}
