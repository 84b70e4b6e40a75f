//! Pods mode end to end on a two-node testbed built with the real CNI plugins: enrolled
//! pods talk over HBONE (same node and across nodes) and the app sees the real client IP;
//! only TLS to 15008 crosses the underlay; non-enrolled clients arrive through 15006;
//! enrolled clients reach non-enrolled servers in plain TCP; node probes reach enrolled
//! apps; a Service VIP balances across both nodes; a dead daemon means refused traffic,
//! never clear text, and a restarted one serves again without CNI; labels enroll and
//! release running pods live; bad CNI input gets the spec's error JSON.

mod common;

use common::cluster::{pods_e2e_ready, Cluster, AMBIENT};
use common::testbed::*;
use serde_json::json;

const MARKER: &str = "WEFT-POD-PLAINTEXT-MARKER-41d";

fn ready() -> bool {
    pods_e2e_ready(&["ip", "nft", "nsenter", "curl", "tcpdump", "python3"])
}

fn nft_table_present(ns: &Netns) -> bool {
    nft_table(ns, "inet", "weft").is_some()
}

/// Whether something listens on TCP `port` inside `ns`.
fn listening(ns: &Netns, port: u16) -> bool {
    !ns.run(&["ss", "-Hltn", &format!("sport = :{port}")])
        .trim()
        .is_empty()
}

/// Polls `condition` until it holds (listeners close when their task is dropped, a moment
/// after the daemon answered).
fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn pods_mode_end_to_end() {
    if !ready() {
        return;
    }
    let mut c = Cluster::running(2, true);

    let client = c
        .add_pod(0, "shop", "client", "client", &[])
        .expect("ADD client");
    let web1 = c
        .add_pod(0, "shop", "web-1", "web", &[("app", "web")])
        .expect("ADD web-1");
    let web2 = c
        .add_pod(1, "shop", "web-2", "web", &[("app", "web")])
        .expect("ADD web-2");
    let legacy = c
        .add_pod(1, "legacy", "legacy", "default", &[])
        .expect("ADD legacy");
    let vip = format!("10.{}.100.10", c.subnet);
    c.extra_yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec:\n  clusterIP: {vip}\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n"
    );
    c.write_config();
    for pod in [web1, web2, legacy] {
        c.start_app(pod, 8080);
    }
    c.settle();
    let log0 = c.daemon_log(0);
    assert!(
        log0.contains("enrolled in the mesh")
            && log0.contains("spiffe://cluster.local/ns/shop/sa/web"),
        "{log0}"
    );
    assert!(
        nft_table_present(&c.pods[client].ns),
        "client pod has no capture rules"
    );
    assert!(
        !nft_table_present(&c.pods[legacy].ns),
        "non-enrolled pod must have no rules"
    );

    let ip = |c: &Cluster, i: usize| c.pods[i].ip.clone();
    let (client_ip, web1_ip, web2_ip, legacy_ip) =
        (ip(&c, client), ip(&c, web1), ip(&c, web2), ip(&c, legacy));

    // Same node: enrolled -> enrolled, the app sees the client pod's IP.
    let same = Cluster::curl(&c.pods[client].ns, &format!("http://{web1_ip}:8080/"))
        .expect("client -> web-1");
    assert_eq!(same, format!("web-1 sees {client_ip}"));

    // Across nodes, with the underlay watched: only TLS to 15008, never the payload.
    let capture = Capture::start(&c.nodes[0].ns, "ul0", c.work.path());
    let cross = Cluster::curl(&c.pods[client].ns, &format!("http://{web2_ip}:8080/"))
        .expect("client -> web-2");
    assert_eq!(cross, format!("web-2 sees {client_ip}"));
    let body = MARKER.repeat(1000);
    let post = Cluster::curl_post(
        &c.pods[client].ns,
        &format!("http://{web2_ip}:8080/"),
        &body,
    )
    .expect("POST client -> web-2");
    assert_eq!(post, format!("got {} bytes, marker True", body.len()));
    let (raw, lines) = capture.stop();
    assert_only_hbone(&raw, &lines, MARKER.as_bytes());

    // Non-enrolled -> enrolled: plain TCP captured by 15006, delivered from the real client IP.
    let plain_in = Cluster::curl(&c.pods[legacy].ns, &format!("http://{web2_ip}:8080/"))
        .expect("legacy -> web-2");
    assert_eq!(plain_in, format!("web-2 sees {legacy_ip}"));
    let plain_in_cross = Cluster::curl(&c.pods[legacy].ns, &format!("http://{web1_ip}:8080/"))
        .expect("legacy -> web-1");
    assert_eq!(plain_in_cross, format!("web-1 sees {legacy_ip}"));
    // Enrolled -> non-enrolled: passes through in plain TCP.
    let capture = Capture::start(&c.nodes[0].ns, "ul0", c.work.path());
    let plain_out = Cluster::curl(&c.pods[client].ns, &format!("http://{legacy_ip}:8080/"))
        .expect("client -> legacy");
    assert_eq!(plain_out, format!("legacy sees {client_ip}"));
    let (_, lines) = capture.stop();
    assert!(
        lines.iter().any(|l| is_port(l, 8080)),
        "expected plain TCP to 8080: {lines:?}"
    );

    // A probe from the node reaches the enrolled app (SNAT to the probe address).
    let probe = Cluster::curl(&c.nodes[0].ns, &format!("http://{web1_ip}:8080/"))
        .expect("node probe -> web-1");
    assert_eq!(probe, "web-1 sees 169.254.7.127");

    // The Service VIP spreads requests over endpoints on both nodes.
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let answer =
            Cluster::curl(&c.pods[client].ns, &format!("http://{vip}/")).expect("client -> VIP");
        served.insert(answer.split(' ').next().unwrap().to_owned());
    }
    assert_eq!(
        served.into_iter().collect::<Vec<_>>(),
        vec!["web-1", "web-2"]
    );

    // Node 2's daemon dies: traffic to its enrolled pod is refused, not sent in clear.
    // Watched where each attempt really goes: node-2's underlay leg (client on node-1 ->
    // web-2) and web-2's own interface (legacy and web-2 are both on node-2's bridge).
    c.kill_daemon(1);
    let underlay = Capture::start(&c.nodes[1].ns, "ul0", c.work.path());
    let pod_link = Capture::start(&c.pods[web2].ns, "eth0", c.work.path());
    let post_marker = |c: &Cluster, from: usize, to: &str| {
        c.pods[from]
            .ns
            .command("curl")
            .args(["-sS", "--max-time", "3", "--data", &body])
            .arg(format!("http://{to}:8080/"))
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(
        !post_marker(&c, client, &web2_ip),
        "client -> web-2 must fail"
    );
    // ...and connections from its enrolled pod are refused too.
    assert!(
        !post_marker(&c, web2, &legacy_ip),
        "web-2 -> legacy must fail while web-2's daemon is down"
    );
    assert!(
        !post_marker(&c, legacy, &web2_ip),
        "legacy -> web-2 must fail"
    );
    let (raw, lines) = underlay.stop();
    assert!(
        !lines.is_empty(),
        "the client's attempt never reached node-2's underlay: the capture proves nothing"
    );
    assert!(
        lines.iter().all(|l| is_port(l, 15008)),
        "only HBONE may cross the underlay while web-2's daemon is down: {lines:?}"
    );
    assert!(!contains_bytes(&raw, MARKER.as_bytes()));
    let (raw, lines) = pod_link.stop();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("{legacy_ip}.")) && is_port(l, 8080)),
        "legacy's attempt never reached web-2's interface: the capture proves nothing: {lines:?}"
    );
    assert!(
        !contains_bytes(&raw, MARKER.as_bytes()),
        "payload reached or left web-2 in clear while its daemon was down"
    );
    for line in lines.iter().filter(|l| is_port(l, 8080)) {
        assert!(
            line.ends_with("length 0"),
            "data to or from port 8080 on web-2 while its daemon was down: {line}"
        );
        assert!(
            !(line.contains(&format!(" {web2_ip}."))
                && line.contains(&format!("> {legacy_ip}.8080:"))),
            "web-2 sent a plain connection to legacy: {line}"
        );
    }
    // CNI ADD with the daemon down: an error for the enrolled namespace, pass-through otherwise.
    let refused = c
        .add_pod(1, "shop", "late", "web", &[])
        .expect_err("ADD in an enrolled namespace must fail");
    let error: serde_json::Value =
        serde_json::from_str(refused.1.trim()).expect("error JSON on stdout");
    assert_eq!(error["code"], json!(11), "{error}");
    assert!(
        error["msg"].as_str().unwrap().contains("unreachable"),
        "{error}"
    );
    c.add_pod(1, "legacy", "late-legacy", "default", &[])
        .expect("ADD in a plain namespace passes through");

    // Restart: rules re-applied and listeners re-opened from the run dir, no CNI call.
    c.start_daemon(1);
    c.settle();
    let back = Cluster::curl(&c.pods[client].ns, &format!("http://{web2_ip}:8080/"))
        .expect("client -> web-2 after restart");
    assert_eq!(back, format!("web-2 sees {client_ip}"));
    let back_plain = Cluster::curl(&c.pods[legacy].ns, &format!("http://{web2_ip}:8080/"))
        .expect("legacy -> web-2 after restart");
    assert_eq!(back_plain, format!("web-2 sees {legacy_ip}"));

    // Label removed: pods released live (no rules, direct traffic). Added back: enrolled.
    assert!(listening(&c.pods[web1].ns, 15008));
    c.namespace("shop", &[]);
    c.write_config();
    c.settle();
    assert!(
        !nft_table_present(&c.pods[web1].ns),
        "released pod still has rules"
    );
    wait_until("the released pod's listeners close", || {
        ![15001, 15006, 15008]
            .iter()
            .any(|&port| listening(&c.pods[web1].ns, port))
    });
    assert!(
        !nft_table_present(&c.pods[client].ns),
        "released pod still has rules"
    );
    let capture = Capture::start(&c.nodes[0].ns, "ul0", c.work.path());
    let direct = Cluster::curl(&c.pods[client].ns, &format!("http://{web2_ip}:8080/"))
        .expect("direct after release");
    assert_eq!(direct, format!("web-2 sees {client_ip}"));
    let (_, lines) = capture.stop();
    assert!(
        lines.iter().any(|l| is_port(l, 8080)),
        "released pods should talk directly: {lines:?}"
    );

    c.namespace("shop", &[AMBIENT]);
    c.write_config();
    c.settle();
    assert!(
        nft_table_present(&c.pods[web1].ns) && nft_table_present(&c.pods[client].ns),
        "re-enrolled pods need rules"
    );
    let capture = Capture::start(&c.nodes[0].ns, "ul0", c.work.path());
    let again = Cluster::curl(&c.pods[client].ns, &format!("http://{web2_ip}:8080/"))
        .expect("client -> web-2 re-enrolled");
    assert_eq!(again, format!("web-2 sees {client_ip}"));
    let (_, lines) = capture.stop();
    assert!(!lines.is_empty(), "nothing captured on the underlay");
    assert!(
        lines.iter().all(|l| is_port(l, 15008)),
        "re-enrolled traffic must be HBONE: {lines:?}"
    );

    // A running pod whose namespace gets the label later is enrolled live.
    c.namespace("legacy", &[AMBIENT]);
    c.write_config();
    c.settle();
    assert!(
        nft_table_present(&c.pods[legacy].ns),
        "legacy pod should be enrolled after labelling"
    );
    let enrolled_later = Cluster::curl(&c.pods[client].ns, &format!("http://{legacy_ip}:8080/"))
        .expect("client -> newly enrolled legacy");
    assert_eq!(enrolled_later, format!("legacy sees {client_ip}"));

    // A pod that opts out by label stays out of an enrolled namespace.
    c.namespace("shop", &[AMBIENT]);
    let opted_out = c
        .add_pod(
            0,
            "shop",
            "opted-out",
            "web",
            &[("weft.dev/dataplane-mode", "none")],
        )
        .expect("ADD opted-out");
    assert!(!nft_table_present(&c.pods[opted_out].ns));
    assert!(!listening(&c.pods[opted_out].ns, 15008));
    assert!(
        nft_table_present(&c.pods[client].ns),
        "its neighbours stay enrolled"
    );

    // DEL releases and forgets an enrolled pod; a second DEL changes nothing and succeeds.
    let web1_id = c.pods[web1].container_id.clone();
    assert!(c.state_file_pods(0).contains(&web1_id));
    assert!(nft_table_present(&c.pods[web1].ns));
    c.cni_del(web1).expect("DEL");
    assert!(
        !c.state_file_pods(0).contains(&web1_id),
        "DEL must forget the pod in the state file"
    );
    assert!(
        !nft_table_present(&c.pods[web1].ns),
        "DEL must remove the pod's rules"
    );
    wait_until("the deleted pod's listeners close", || {
        !listening(&c.pods[web1].ns, 15008)
    });
    c.cni_del(web1).expect("a repeated DEL succeeds");
    assert!(!c.state_file_pods(0).contains(&web1_id));

    // CHECK: an enrolled pod passes; with its rules gone behind the daemon's back it fails.
    c.cni_check(client).expect("CHECK of an enrolled pod");
    c.pods[client]
        .ns
        .run(&["nft", "delete", "table", "inet", "weft"]);
    let (code, out) = c
        .cni_check(client)
        .expect_err("CHECK must notice the missing rules");
    assert_ne!(code, 0);
    assert!(out.contains("rules present: false"), "{out}");

    // GC with the runtime's list forgets (and releases) exactly the pods not on it.
    let web2_id = c.pods[web2].container_id.clone();
    let legacy_id = c.pods[legacy].container_id.clone();
    assert!(c.state_file_pods(1).contains(&legacy_id));
    assert!(nft_table_present(&c.pods[legacy].ns));
    let mut gc = c.weft_cni_conf(1, "1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": web2_id, "ifname": "eth0"}]);
    c.run_plugin(1, "GC", &gc, "", "", "").expect("GC");
    let kept = c.state_file_pods(1);
    assert!(
        kept.contains(&web2_id),
        "GC must keep listed pods: {kept:?}"
    );
    assert!(
        !kept.contains(&legacy_id),
        "GC must forget unlisted pods: {kept:?}"
    );
    assert!(
        !nft_table_present(&c.pods[legacy].ns),
        "GC must release what it forgets"
    );
    assert!(
        nft_table_present(&c.pods[web2].ns),
        "GC must leave listed pods enrolled"
    );

    let late = c.pod_index("late-legacy");
    c.del_pod(late);
}

/// A pod whose CNI ADD arrives before the config lists it is enrolled at once (as its
/// namespace's `default` service account, as Kubernetes would run it) and gets its own
/// identity as soon as the config catches up.
#[test]
fn a_pod_added_before_the_config_lists_it_is_enrolled_then_gets_its_identity() {
    if !ready() {
        return;
    }
    let mut c = Cluster::running(1, false);
    let served = |c: &Cluster| -> serde_json::Value {
        serde_json::from_str(&c.node_get(0, "http://127.0.0.1:15000/config_dump")).unwrap()
    };
    let identity_of = |c: &Cluster, name: &str| -> Option<String> {
        served(c)["served"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["identity"].as_str().map(str::to_owned))
    };
    let early = c
        .add_pod_unlisted(0, "shop", "early", "early")
        .expect("ADD before the config lists the pod");
    // Enrolled at ADD, before any config names it: the capture is in place.
    assert!(nft_table_present(&c.pods[early].ns));
    assert!(
        c.daemon_log(0).contains("pod not in the mesh config"),
        "{}",
        c.daemon_log(0)
    );
    assert!(listening(&c.pods[early].ns, 15008));
    // add_pod_unlisted lists the pod once ADD is done; the daemon switches identities.
    c.settle();
    wait_until("the pod is served with its own service account", || {
        identity_of(&c, "early").as_deref() == Some("spiffe://cluster.local/ns/shop/sa/early")
    });
    let client = c.add_pod(0, "shop", "client", "client", &[]).unwrap();
    c.start_app(early, 8080);
    assert_eq!(
        Cluster::curl(
            &c.pods[client].ns,
            &format!("http://{}:8080/", c.pods[early].ip)
        )
        .expect("client -> early"),
        format!("early sees {}", c.pods[client].ip)
    );
}

#[test]
fn bad_cni_input_gets_spec_errors_and_the_daemon_keeps_serving() {
    if !ready() {
        return;
    }
    let mut c = Cluster::running(1, false);
    let weft = json!({"cniVersion": "1.0.0", "name": "weftnet", "type": "weft-cni",
        "socketPath": c.nodes[0].run_dir.join("cni.sock"), "runDir": c.nodes[0].run_dir,
        "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.9.9.9/24"}]}});
    let args = "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=x;K8S_POD_UID=u";
    let expect_error = |result: Result<String, (i32, String)>, code: u64, what: &str| {
        let (exit, stdout) = result.expect_err(what);
        assert_ne!(exit, 0, "{what}");
        let error: serde_json::Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}): {stdout}"));
        assert_eq!(error["code"], json!(code), "{what}: {error}");
        assert!(
            error["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {error}"
        );
        assert!(error["cniVersion"].is_string(), "{what}: {error}");
    };

    // Garbage on stdin.
    let plugin = binary("weft-cni");
    let run_raw = |env: &[(&str, &str)], stdin: &str| {
        use std::io::Write;
        let mut cmd = std::process::Command::new(&plugin);
        cmd.env_clear()
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err((
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            ))
        }
    };
    let good_env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/proc/self/ns/net"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", args),
    ];
    expect_error(run_raw(&good_env, "this is not json"), 6, "garbage stdin");
    // Missing CNI_COMMAND / CNI_NETNS.
    expect_error(
        run_raw(&[("CNI_CONTAINERID", "c1")], &weft.to_string()),
        4,
        "missing CNI_COMMAND",
    );
    expect_error(
        run_raw(
            &[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1")],
            &weft.to_string(),
        ),
        4,
        "missing CNI_NETNS",
    );
    // Unsupported version.
    let mut old = weft.clone();
    old["cniVersion"] = json!("0.1.0");
    expect_error(
        run_raw(&good_env, &old.to_string()),
        1,
        "unsupported cniVersion",
    );
    // A netns path that does not exist.
    expect_error(
        c.run_plugin(
            0,
            "ADD",
            &weft,
            "c2",
            "/var/run/netns/does-not-exist-weft",
            args,
        ),
        3,
        "missing netns",
    );
    // VERSION works; STATUS reports the daemon ready.
    let version =
        run_raw(&[("CNI_COMMAND", "VERSION")], "{\"cniVersion\":\"1.0.0\"}").expect("VERSION");
    assert!(
        version.contains("supportedVersions") && version.contains("1.1.0"),
        "{version}"
    );
    c.run_plugin(0, "STATUS", &weft, "", "", "")
        .expect("STATUS with the daemon up");
    // DEL and GC of unknown containers succeed.
    c.run_plugin(0, "DEL", &weft, "never-added", "", args)
        .expect("DEL of unknown container");
    let mut gc = weft.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    c.run_plugin(0, "GC", &gc, "", "", "").expect("GC");

    // The node's own namespace given as a pod's: refused (pod rules there would capture the
    // node's traffic), with the reason in the error.
    let node_netns = format!("/var/run/netns/{}", c.nodes[0].ns.name);
    let (_, stdout) = c
        .run_plugin(0, "ADD", &weft, "c3", &node_netns, args)
        .expect_err("the node's own netns must be refused");
    assert!(stdout.contains("node's own"), "{stdout}");
    assert!(
        !c.nodes[0]
            .ns
            .command("nft")
            .args(["list", "table", "inet", "weft"])
            .output()
            .is_ok_and(|o| o.status.success()),
        "no pod rules may land in the node's namespace"
    );

    // The daemon still enrolls a real pod afterwards.
    let pod = c
        .add_pod(0, "shop", "after", "after", &[])
        .expect("ADD after bad input");
    assert!(nft_table_present(&c.pods[pod].ns));

    // STATUS with the daemon gone: code 50.
    c.kill_daemon(0);
    expect_error(
        c.run_plugin(0, "STATUS", &weft, "", "", ""),
        50,
        "STATUS with the daemon down",
    );

    // The daemon down and its state file too: nothing says the namespace is safe to leave
    // unprotected, so even a namespace the mesh never enrolled is refused (code 11).
    let plain_args = "K8S_POD_NAMESPACE=legacy;K8S_POD_NAME=y;K8S_POD_UID=u2";
    let sandbox = Netns::new("wpod");
    let sandbox_path = format!("/var/run/netns/{}", sandbox.name);
    // With the state file, a namespace it does not list as enrolled passes through.
    c.run_plugin(0, "ADD", &weft, "c4", &sandbox_path, plain_args)
        .expect("ADD in a plain namespace passes through with the daemon down");
    std::fs::remove_file(c.nodes[0].run_dir.join("state.json")).expect("state file exists");
    let (_, stdout) = c
        .run_plugin(0, "ADD", &weft, "c5", &sandbox_path, plain_args)
        .expect_err("ADD with neither daemon nor state file must fail");
    let error: serde_json::Value = serde_json::from_str(stdout.trim()).expect("error JSON");
    assert_eq!(error["code"], json!(11), "{error}");
    assert!(
        error["msg"].as_str().unwrap().contains("unknown"),
        "{error}"
    );
}
