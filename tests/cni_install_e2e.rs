//! weft-node installing itself into a node's CNI configuration, end to end on the netns
//! testbed, with pods created the way a container runtime does (the chain is the first file
//! of the node's conf dir, plugins come from its bin dir): the daemon copies `weft-cni` in
//! and writes `00-weft.conflist` (the primary's chain plus weft-cni) in front of the
//! primary's file; pods then get enrolled through it; the primary rewriting its file, the
//! weft file deleted or edited and the binary deleted are all repaired, and no reader ever
//! sees half a file; restarts leave exactly one weft file with one weft-cni entry; with the
//! daemon down, an enrolled namespace's pod ADD fails closed (code 11). Against a real API
//! server: a restart keeps everything, deleting weft's DaemonSet (or its RBAC) and then
//! stopping the daemon takes weft out of the node's chain, and new pods start without it.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::apiserver::ApiServer;
use common::cluster::{pods_e2e_ready, Cluster, AMBIENT};
use common::testbed::*;
use serde_json::{json, Value};

const OWNED: &str = "00-weft.conflist";

/// Polls `condition` until it holds or `timeout` passes.
fn wait_until(what: &str, timeout: Duration, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn types(chain: &[Value]) -> Vec<String> {
    chain
        .iter()
        .map(|p| p["type"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// The conf dir's file names, sorted.
fn conf_names(c: &Cluster) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(&c.nodes[0].cni_conf_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// weft's file is first and chains bridge then weft-cni (once).
fn installed(c: &Cluster) -> bool {
    let names = conf_names(c);
    if names.first().map(String::as_str) != Some(OWNED) {
        return false;
    }
    let (_, chain) = c.runtime_chain(0);
    types(&chain) == ["bridge", "weft-cni"]
}

#[test]
fn weft_node_installs_its_cni_config_repairs_it_and_survives_restarts() {
    if !pods_e2e_ready(&["ip", "nft", "nsenter", "curl", "python3"]) {
        return;
    }
    let mut c = Cluster::new(1);
    c.runtime_cni = true;
    c.namespace("shop", &[AMBIENT]);
    c.write_config();
    c.write_primary_conflist(0, json!({}));
    let bin = c.nodes[0].cni_bin_dir.join("weft-cni");
    assert!(!bin.exists());
    c.start_daemon(0);

    // Installed at start: the runtime's first file is weft's, the binary is the build's.
    assert!(installed(&c), "conf dir: {:?}", conf_names(&c));
    assert_eq!(conf_names(&c), [OWNED, "10-weftnet.conflist"]);
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        std::fs::read(binary("weft-cni")).unwrap()
    );

    // Pods created through it are enrolled, and talk through the mesh.
    let web = c.add_pod(0, "shop", "web", "web", &[]).expect("ADD web");
    c.start_app(web, 8080);
    let client = c
        .add_pod(0, "shop", "client", "client", &[])
        .expect("ADD client");
    let dump = c.dump(0).expect("dump");
    let states: Vec<&str> = dump["served"]
        .as_array()
        .expect("served pods")
        .iter()
        .map(|p| p["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["enrolled", "enrolled"], "{dump}");
    let answer = Cluster::curl(
        &c.pods[client].ns,
        &format!("http://{}:8080/", c.pods[web].ip),
    )
    .expect("client -> web");
    assert_eq!(answer, format!("web sees {}", c.pods[client].ip));

    // A reader that never may see half a file while everything below rewrites it.
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, torn) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let reader = {
        let (stop, reads, torn) = (stop.clone(), reads.clone(), torn.clone());
        let path = c.nodes[0].cni_conf_dir.join(OWNED);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(text) = std::fs::read_to_string(&path) {
                    reads.fetch_add(1, Ordering::Relaxed);
                    if serde_json::from_str::<Value>(&text).is_err() {
                        torn.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };

    // The primary rewrites its own file: weft's copy follows it.
    for mtu in [1400, 1380, 1360] {
        c.write_primary_conflist(0, json!({"mtu": mtu}));
        wait_until(
            "weft's conflist follows the primary",
            Duration::from_secs(3),
            || installed(&c) && c.runtime_chain(0).1[0]["mtu"] == mtu,
        );
    }
    // Deleted: back within a second or so.
    std::fs::remove_file(c.nodes[0].cni_conf_dir.join(OWNED)).unwrap();
    wait_until("weft's conflist comes back", Duration::from_secs(3), || {
        installed(&c)
    });
    // Edited by someone else (weft-cni dropped from the chain): repaired.
    let edited = json!({"cniVersion": "1.0.0", "name": "weftnet", "weft.dev/generated-from": "x",
        "plugins": [{"type": "bridge", "bridge": "wbr0"}]});
    // (Written atomically itself: the reader judges weft's writes, not this one.)
    let tmp = c.nodes[0].cni_conf_dir.join(".edit.tmp");
    std::fs::write(&tmp, edited.to_string()).unwrap();
    std::fs::rename(&tmp, c.nodes[0].cni_conf_dir.join(OWNED)).unwrap();
    wait_until(
        "weft's conflist is repaired",
        Duration::from_secs(3),
        || installed(&c),
    );
    // The binary deleted: copied back.
    std::fs::remove_file(&bin).unwrap();
    wait_until("weft-cni is copied back", Duration::from_secs(3), || {
        bin.exists()
    });
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert!(
        reads.load(Ordering::Relaxed) > 10,
        "the reader never read the file"
    );
    assert_eq!(
        torn.load(Ordering::Relaxed),
        0,
        "a reader saw a half-written conflist"
    );

    // Two restarts: the file stays in place throughout, one weft file, one weft-cni entry.
    for _ in 0..2 {
        let mut daemon = c.nodes[0].daemon.take().expect("daemon");
        let status =
            daemon.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(20));
        assert!(status.success(), "daemon exit: {status}");
        assert!(installed(&c), "a restart removed weft's CNI config");
        assert!(bin.exists(), "a restart removed weft-cni");
        c.start_daemon(0);
    }
    assert_eq!(conf_names(&c), [OWNED, "10-weftnet.conflist"]);
    assert!(installed(&c));
    let answer = Cluster::curl(
        &c.pods[client].ns,
        &format!("http://{}:8080/", c.pods[web].ip),
    )
    .expect("client -> web after restarts");
    assert_eq!(answer, format!("web sees {}", c.pods[client].ip));

    // Daemon down, conflist in place: an enrolled namespace's new pod fails closed.
    c.kill_daemon(0);
    match c.add_pod(0, "shop", "late", "late", &[]) {
        Err((_, out)) => {
            let error: Value = serde_json::from_str(&out).expect("a CNI error on stdout");
            assert_eq!(error["code"], 11, "ADD with the daemon down: {out}");
        }
        Ok(_) => panic!("a pod of an enrolled namespace started with no daemon"),
    }
}

/// weft's DaemonSet as the install creates it (no controller runs here: the object is what
/// the daemon asks about at shutdown).
fn daemonset_yaml() -> String {
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/daemonset.yaml"),
    )
    .unwrap()
}

/// SIGTERMs node 0's daemon and waits for it to exit cleanly; returns its log.
fn stop_daemon(c: &mut Cluster) -> String {
    let mut daemon = c.nodes[0].daemon.take().expect("daemon");
    let status = daemon.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30));
    assert!(status.success(), "daemon exit: {status}");
    daemon.log_text()
}

#[test]
fn uninstalling_takes_weft_out_of_the_chain_and_a_restart_does_not() {
    if !(pods_e2e_ready(&["ip", "nft", "nsenter", "curl", "python3"]) && ApiServer::available()) {
        return;
    }
    let mut c = Cluster::with_api(1);
    c.runtime_cni = true;
    c.kube_namespace("shop", &[AMBIENT]);
    c.write_primary_conflist(0, json!({}));
    c.kube_apply(&daemonset_yaml())
        .expect("the DaemonSet applies");
    let bin = c.nodes[0].cni_bin_dir.join("weft-cni");
    c.start_daemon(0);
    assert!(installed(&c), "conf dir: {:?}", conf_names(&c));

    // A restart (the DaemonSet is still there): nothing is removed.
    let log = stop_daemon(&mut c);
    assert!(log.contains("a restart or upgrade"), "{log}");
    assert!(
        installed(&c) && bin.exists(),
        "a restart removed weft's CNI files"
    );

    // The DaemonSet deleted: the daemon's SIGTERM takes weft out of the node.
    c.start_daemon(0);
    c.kube_delete("apps/v1", "DaemonSet", Some("weft-system"), "weft-node");
    let log = stop_daemon(&mut c);
    assert!(log.contains("was deleted"), "{log}");
    assert_eq!(conf_names(&c), ["10-weftnet.conflist"]);
    assert!(!bin.exists(), "weft-cni left in the bin dir");
    // New pods start with the primary's chain alone, even in an enrolled namespace.
    let (first, chain) = c.runtime_chain(0);
    assert_eq!(
        (first.as_str(), types(&chain)),
        ("10-weftnet.conflist", vec!["bridge".to_owned()])
    );
    c.add_pod(0, "shop", "after", "after", &[])
        .expect("a pod starts without weft");

    // Installed again, then weft's RBAC removed (`kubectl delete -k` takes it with the rest):
    // the API says Forbidden, which also means uninstall.
    c.kube_apply(&daemonset_yaml())
        .expect("the DaemonSet applies again");
    c.start_daemon(0);
    assert!(installed(&c) && bin.exists());
    c.kube_delete(
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
        Some("weft-system"),
        "weft-node",
    );
    // The API server's authorizer learns of the deletion a moment later: wait until the
    // daemon's own identity is refused the DaemonSet, as it will be at shutdown.
    let api = c.kube();
    let node_client = api
        .runtime
        .block_on(api.server.client_from_kubeconfig(&api.node_kubeconfig));
    let daemonsets: kube::Api<k8s_openapi::api::apps::v1::DaemonSet> =
        kube::Api::namespaced(node_client, "weft-system");
    let started = std::time::Instant::now();
    while !matches!(
        api.runtime.block_on(daemonsets.get("weft-node")),
        Err(kube::Error::Api(ref e)) if e.code == 403
    ) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "weft-node can still read its DaemonSet 20 s after its RoleBinding went"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = stop_daemon(&mut c);
    assert!(log.contains("forbidden"), "{log}");
    assert_eq!(conf_names(&c), ["10-weftnet.conflist"]);
    assert!(!bin.exists());
}

#[test]
fn after_a_reboot_the_stale_state_file_is_cleaned_without_error() {
    if !pods_e2e_ready(&["ip", "nft", "nsenter", "curl", "python3"]) {
        return;
    }
    let mut c = Cluster::new(1);
    c.namespace("shop", &[AMBIENT]);
    c.write_config();
    c.start_daemon(0);
    let web = c.add_pod(0, "shop", "web", "web", &[]).expect("ADD web");
    assert_eq!(c.state_file_pods(0), [c.pods[web].container_id.clone()]);
    // "Reboot": the daemon dies, every pod namespace goes away, the run dir stays.
    c.kill_daemon(0);
    c.pods.clear();
    c.write_config();
    c.start_daemon(0);
    c.settle();
    let log = c.daemon_log(0);
    assert!(log.contains("forgetting a recorded pod"), "{log}");
    assert!(!log.contains(" ERROR "), "errors after a reboot: {log}");
    assert!(
        c.state_file_pods(0).is_empty(),
        "stale pods kept in the state file"
    );
    // And it serves new pods as usual.
    c.add_pod(0, "shop", "fresh", "fresh", &[])
        .expect("ADD after the reboot");
    assert_eq!(c.state_file_pods(0).len(), 1);
}
