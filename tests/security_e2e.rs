//! Attacks from inside the cluster, replayed end to end on the netns testbed with the real
//! CNI plugins and real clients; each test reproduces one class of attack that worked
//! before weft defended against it:
//! - a pod making the daemon connect to itself (127.0.0.1:15001, or a config endpoint);
//! - a pod forging the node-probe source address to reach a STRICT app in clear;
//! - config accidents (empty file, vanished namespaces, a FIFO or /dev/zero at the path)
//!   and a CNI GC without `cni.dev/valid-attachments` releasing every pod;
//! - an unprivileged user on the CNI socket, an ADD for a pod scheduled elsewhere, a netns
//!   path retargeted to the node's own namespace after ADD, and malformed CNI input;
//! - one client holding connections until the daemon runs out of descriptors.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, AMBIENT};
use common::testbed::*;
use serde_json::json;

fn ready() -> bool {
    e2e_ready(&["ip", "nft", "nsenter", "curl", "python3", "setpriv"])
}

/// Waits until `needle` appears at least `count` times in node `i`'s daemon log.
fn wait_for_log_count(c: &Cluster, i: usize, needle: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = c.daemon_log(i);
        if log.matches(needle).count() >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "daemon {i} did not log {needle:?} {count} times:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of the first sample of `metric` whose labels contain `labels`, or 0.
fn metric_value(c: &Cluster, i: usize, metric: &str, labels: &str) -> f64 {
    c.node_get(i, "http://127.0.0.1:15020/metrics")
        .lines()
        .find(|l| l.starts_with(metric) && l.contains(labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn a_pod_cannot_loop_the_daemon_or_forge_the_probe_source() {
    if !ready() {
        return;
    }
    let mut c = Cluster::new(1);
    c.namespace("shop", &[AMBIENT]);
    c.namespace("legacy", &[]);
    c.extra_yaml = "apiVersion: weft.dev/v1alpha1\nkind: PeerAuthentication\n\
                    metadata: {name: strict, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n"
        .into();
    c.write_config();
    c.start_daemon(0);
    let client = c.add_pod(0, "shop", "client", "client", &[]).expect("ADD");
    let web = c.add_pod(0, "shop", "web", "web", &[]).expect("ADD");
    let attacker = c
        .add_pod(0, "legacy", "attacker", "default", &[])
        .expect("ADD");
    c.start_app(web, 8080);
    c.settle();
    let web_url = format!("http://{}:8080/", c.pods[web].ip);
    assert!(Cluster::curl(&c.pods[client].ns, &web_url)
        .unwrap()
        .contains("web sees"));

    // 1. One unprivileged connect to the outbound listener itself.
    let fds_before = open_fds(c.daemon_pid(0));
    let looped = c.pods[client]
        .ns
        .command("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["curl", "-sS", "--max-time", "5", "http://127.0.0.1:15001/"])
        .output()
        .unwrap();
    assert!(!looped.status.success(), "the loop connect got an answer");
    assert!(metric_value(&c, 0, "weft_connections_refused_total", "reason=\"loop\"") >= 1.0);
    let fds_after = open_fds(c.daemon_pid(0));
    assert!(
        fds_after < fds_before + 50,
        "the daemon chained connections: {fds_before} -> {fds_after} fds"
    );
    assert!(
        Cluster::curl(&c.pods[client].ns, &web_url)
            .unwrap()
            .contains("web sees"),
        "mesh traffic still flows after the loop attempt"
    );

    // The same loop from config: an endpoint at 127.0.0.1:15001 behind a VIP is rejected,
    // naming the object, and the last good config stays.
    let good_yaml = c.extra_yaml.clone();
    c.extra_yaml = format!(
        "{good_yaml}---\napiVersion: v1\nkind: Service\nmetadata: {{name: loop, namespace: shop}}\n\
         spec: {{clusterIP: 10.{}.100.9, ports: [{{name: http, port: 80}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: loop-1, namespace: shop, labels: {{kubernetes.io/service-name: loop}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 15001}}]\nendpoints: [{{addresses: [127.0.0.1]}}]\n",
        c.subnet
    );
    c.write_config();
    wait_for_log_count(&c, 0, "EndpointSlice shop/loop-1", 1);
    assert!(c.daemon_log(0).contains("loopback"));
    c.extra_yaml = good_yaml;
    c.write_config();

    // 2. The attacker (not in the mesh, same node) forges the probe source and poisons the
    // victim's neighbour entry for its gateway so replies come back to it.
    let gateway = format!("10.{}.1.1", c.subnet);
    let attacker_ns = &c.pods[attacker].ns;
    let link = attacker_ns.run(&["ip", "-j", "link", "show", "eth0"]);
    let link: serde_json::Value = serde_json::from_str(&link).unwrap();
    let attacker_mac = link[0]["address"].as_str().unwrap().to_owned();
    attacker_ns.run(&["ip", "addr", "add", "169.254.7.127/32", "dev", "eth0"]);
    c.pods[web].ns.run(&[
        "ip",
        "neigh",
        "replace",
        &gateway,
        "lladdr",
        &attacker_mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    let spoofed = attacker_ns
        .command("curl")
        .args([
            "-sS",
            "--max-time",
            "3",
            "--interface",
            "169.254.7.127",
            &web_url,
        ])
        .output()
        .unwrap();
    assert!(
        !spoofed.status.success(),
        "a forged probe source reached a STRICT app in clear: {}",
        String::from_utf8_lossy(&spoofed.stdout)
    );
    let bridge_table = nft_table(&c.nodes[0].ns, "bridge", "weft-node-bridge")
        .expect("the node's anti-spoofing table");
    let dropped: u64 = bridge_table
        .split("counter packets ")
        .skip(1)
        .filter_map(|rest| rest.split(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(
        dropped > 0,
        "the forged packets were not the ones dropped:\n{bridge_table}"
    );
    // Real node probes (SNAT-ed by the node itself) still reach the app.
    c.pods[web]
        .ns
        .run(&["ip", "neigh", "del", &gateway, "dev", "eth0"]);
    assert!(Cluster::curl(&c.nodes[0].ns, &web_url)
        .unwrap()
        .contains("web sees 169.254.7.127"));
}

#[test]
fn config_accidents_and_cni_gc_do_not_release_pods() {
    if !ready() {
        return;
    }
    let mut c = Cluster::running(1, false);
    let client = c.add_pod(0, "shop", "client", "client", &[]).expect("ADD");
    let web = c.add_pod(0, "shop", "web", "web", &[]).expect("ADD");
    c.start_app(web, 8080);
    c.settle();
    let web_url = format!("http://{}:8080/", c.pods[web].ip);
    let still_enrolled = |c: &Cluster, what: &str| {
        for pod in [client, web] {
            assert!(
                nft_table(&c.pods[pod].ns, "inet", "weft").is_some(),
                "{what}: pod {} lost its capture",
                c.pods[pod].spec.name
            );
        }
        assert!(
            Cluster::curl(&c.pods[client].ns, &web_url)
                .unwrap()
                .contains("web sees"),
            "{what}: traffic stopped"
        );
    };
    let good = std::fs::read_to_string(&c.config_path).unwrap();
    let put = |c: &Cluster, text: &str| {
        let tmp = c.config_path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &c.config_path).unwrap();
    };

    put(&c, "");
    wait_for_log_count(&c, 0, "holds no objects", 1);
    still_enrolled(&c, "empty file");
    put(&c, "# nothing here\n---\n# or here\n");
    wait_for_log_count(&c, 0, "holds no objects", 2);
    still_enrolled(&c, "comment-only file");
    // The enrolled namespace vanishes with its pods (a wrong file was deployed).
    put(
        &c,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n",
    );
    wait_for_log_count(&c, 0, "would release every enrolled pod", 1);
    still_enrolled(&c, "namespaces vanished");

    // A FIFO with no writer at the config path must not hang the watcher.
    std::fs::remove_file(&c.config_path).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&c.config_path)
        .status()
        .unwrap();
    assert!(made.success());
    wait_for_log_count(&c, 0, "FIFO", 1);
    std::fs::remove_file(&c.config_path).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &c.config_path).unwrap();
    wait_for_log_count(&c, 0, "character device", 1);
    std::fs::remove_file(&c.config_path).unwrap();
    let reloads = c.daemon_log(0).matches("reloaded mesh config").count();
    put(&c, &good);
    wait_for_log_count(&c, 0, "reloaded mesh config", reloads + 1);
    assert!(c
        .node_get(0, "http://127.0.0.1:15021/healthz/ready")
        .contains("ready"));
    still_enrolled(&c, "after recovery");

    // CNI GC without the runtime's list of valid attachments: nothing is collected.
    let conf = c.weft_cni_conf(0, "1.1.0");
    c.run_plugin(0, "GC", &conf, "", "", "")
        .expect("GC succeeds");
    still_enrolled(&c, "GC without cni.dev/valid-attachments");
    // With the list, the listed pods stay.
    let mut listed = conf.clone();
    listed["cni.dev/valid-attachments"] = json!([
        {"containerID": c.pods[client].container_id, "ifname": "eth0"},
        {"containerID": c.pods[web].container_id, "ifname": "eth0"},
    ]);
    c.run_plugin(0, "GC", &listed, "", "", "")
        .expect("GC succeeds");
    still_enrolled(&c, "GC listing every pod");
}

#[test]
fn the_cni_socket_is_root_only_and_pod_namespaces_are_pinned() {
    if !ready() {
        return;
    }
    let mut c = Cluster::new(1);
    c.namespace("shop", &[AMBIENT]);
    c.namespace("late", &[]);
    c.daemon_umask = Some("000".into());
    c.extra_yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: elsewhere, namespace: shop, uid: uid-elsewhere}\n\
                    spec: {serviceAccountName: payment, nodeName: node-9}\n"
        .into();
    c.write_config();
    c.start_daemon(0);
    let run_dir = c.nodes[0].run_dir.clone();
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let client = c.add_pod(0, "shop", "client", "client", &[]).expect("ADD");
    c.settle();
    assert_eq!(mode(&run_dir), 0o700, "run dir under umask 000");
    assert_eq!(
        mode(&run_dir.join("cni.sock")),
        0o600,
        "CNI socket under umask 000"
    );
    assert_eq!(
        mode(&run_dir.join("state.json")),
        0o600,
        "state file under umask 000"
    );

    // An unprivileged user, even after a careless operator opened the modes up.
    let conf = c.weft_cni_conf(0, "1.1.0");
    let as_nobody = |c: &Cluster| {
        let mut cmd = c.nodes[0].ns.command("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(binary("weft-cni"))
            .env("CNI_COMMAND", "STATUS")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(conf.to_string().as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, out) = as_nobody(&c);
    assert!(!ok, "nobody reached the CNI socket: {out}");
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        run_dir.join("cni.sock"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let (ok, out) = as_nobody(&c);
    assert!(
        !ok && out.contains("only root"),
        "peer credentials not checked: {out}"
    );
    c.run_plugin(0, "STATUS", &conf, "", "", "")
        .expect("root is served");

    // A pod the config schedules on another node: refused permanently, not enrolled.
    let sandbox = Netns::new("wpod");
    let sandbox_path = format!("/var/run/netns/{}", sandbox.name);
    let mut add = c.weft_cni_conf(0, "1.0.0");
    add["prevResult"] =
        json!({"cniVersion": "1.0.0", "ips": [{"address": format!("10.{}.1.77/24", c.subnet)}]});
    let args = |ns: &str, name: &str, uid: &str| {
        format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID={uid}")
    };
    let (code, out) = c
        .run_plugin(
            0,
            "ADD",
            &add,
            &unique("ctr"),
            &sandbox_path,
            &args("shop", "elsewhere", "uid-elsewhere"),
        )
        .expect_err("ADD for a pod of another node");
    assert_eq!(code, 1);
    assert!(
        out.contains("\"code\":100") && out.contains("node-9"),
        "{out}"
    );

    // Malformed input gets permanent errors, and readiness is not held hostage.
    let mut nope = add.clone();
    nope["prevResult"] = json!({"cniVersion": "1.0.0", "ips": "nope"});
    let (_, out) = c
        .run_plugin(
            0,
            "ADD",
            &nope,
            &unique("ctr"),
            &sandbox_path,
            &args("shop", "x", "uid-x"),
        )
        .expect_err("ips: nope");
    assert!(out.contains("\"code\":6"), "{out}");
    let (_, out) = c
        .run_plugin(
            0,
            "ADD",
            &add,
            &"c".repeat(100 * 1024),
            &sandbox_path,
            &args("shop", "x", "uid-x"),
        )
        .expect_err("100 KB container id");
    assert!(out.contains("\"code\":4"), "{out}");
    let bogus = c.work.path().join("not-a-netns");
    std::fs::write(&bogus, "").unwrap();
    let (_, out) = c
        .run_plugin(
            0,
            "ADD",
            &add,
            &unique("ctr"),
            bogus.to_str().unwrap(),
            &args("shop", "y", "uid-y"),
        )
        .expect_err("bogus netns");
    assert!(out.contains("not a network namespace"), "{out}");
    assert!(c
        .node_get(0, "http://127.0.0.1:15021/healthz/ready")
        .contains("ready"));

    // A netns path that is a symlink, retargeted to the node's own namespace after ADD.
    let link = c.work.path().join("late-netns");
    std::os::unix::fs::symlink(&sandbox_path, &link).unwrap();
    let late_ctr = unique("ctr");
    c.run_plugin(
        0,
        "ADD",
        &add,
        &late_ctr,
        link.to_str().unwrap(),
        &args("late", "late", "uid-late"),
    )
    .expect("ADD in a namespace outside the mesh");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(format!("/var/run/netns/{}", c.nodes[0].ns.name), &link).unwrap();
    c.namespace("late", &[AMBIENT]);
    c.write_config();
    wait_for_log_count(&c, 0, "enrolled in the mesh", 2);
    assert!(
        nft_table(&sandbox, "inet", "weft").is_some(),
        "the relabelled pod's own namespace got its rules"
    );
    assert!(
        nft_table(&c.nodes[0].ns, "inet", "weft").is_none(),
        "pod rules landed in the node's namespace"
    );
    // Restored from state.json after a restart: the retargeted path is refused.
    c.kill_daemon(0);
    c.start_daemon(0);
    wait_for_log_count(&c, 0, "forgetting a recorded pod", 1);
    assert!(nft_table(&c.nodes[0].ns, "inet", "weft").is_none());

    // The node-wide dashboard JSON does not show container ids or netns paths; the
    // loopback admin port does.
    let stats = c.node_get(0, "http://127.0.0.1:15020/stats");
    assert!(stats.contains(&c.pods[client].spec.name), "{stats}");
    assert!(
        !stats.contains(&c.pods[client].container_id) && !stats.contains("/var/run/netns"),
        "{stats}"
    );
    let dump = c.node_get(0, "http://127.0.0.1:15000/config_dump");
    assert!(dump.contains(&c.pods[client].container_id));
}

#[test]
fn one_client_cannot_exhaust_the_daemon() {
    if !ready() {
        return;
    }
    let mut c = Cluster::new(1);
    c.namespace("shop", &[AMBIENT]);
    c.namespace("legacy", &[]);
    c.daemon_args = vec!["--max-connections-per-source".into(), "40".into()];
    c.write_config();
    c.start_daemon(0);
    let client = c.add_pod(0, "shop", "client", "client", &[]).expect("ADD");
    let web = c.add_pod(0, "shop", "web", "web", &[]).expect("ADD");
    let hog = c.add_pod(0, "legacy", "hog", "default", &[]).expect("ADD");
    c.start_app(web, 8080);
    c.settle();

    // The hog opens 100 idle plaintext connections to the app (captured by 15006).
    let script = format!(
        "import socket, sys, time\n\
         conns = [socket.create_connection(('{}', 8080), timeout=5) for _ in range(100)]\n\
         time.sleep(1.5)\n\
         shed = 0\n\
         for s in conns:\n\
         \x20   s.setblocking(False)\n\
         \x20   try:\n\
         \x20       shed += s.recv(1) == b''\n\
         \x20   except BlockingIOError:\n\
         \x20       pass\n\
         \x20   except ConnectionResetError:\n\
         \x20       shed += 1\n\
         print(f'shed={{shed}} held={{100 - shed}}', flush=True)\n\
         time.sleep(60)\n",
        c.pods[web].ip
    );
    let mut cmd = c.pods[hog].ns.command("python3");
    cmd.args(["-c", &script]);
    let mut hog_process = Process::spawn(cmd, &c.work.path().join("hog.log"), "hog");
    hog_process.wait_for_log("shed=", Duration::from_secs(20));
    let line = hog_process.log_text();
    assert!(line.contains("shed=60 held=40"), "{line}");
    assert!(
        metric_value(
            &c,
            0,
            "weft_connections_refused_total",
            "reason=\"per_source_limit\""
        ) >= 60.0
    );
    // Everyone else is still served while the hog holds its share, and config reloads work.
    let web_url = format!("http://{}:8080/", c.pods[web].ip);
    assert!(Cluster::curl(&c.pods[client].ns, &web_url)
        .unwrap()
        .contains("web sees"));
    let reloads = c.daemon_log(0).matches("reloaded mesh config").count();
    c.namespace("extra", &[]);
    c.write_config();
    wait_for_log_count(&c, 0, "reloaded mesh config", reloads + 1);
    drop(hog_process);
}
