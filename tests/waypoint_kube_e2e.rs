//! The waypoint with the Kubernetes source end to end, as installed: a real kube-apiserver
//! (with etcd, authentication and RBAC) holds everything, both nodes' daemons and the
//! waypoint watch it, and no node nor the waypoint holds the CA key (weft signer signs their
//! certificates). The waypoint authenticates with a token bound to its own pod, through the
//! RBAC `weft waypoint manifests` binds. The routes are Gateway API `HTTPRoute` objects (under a
//! stand-in for the Gateway API CRD): header routing, an endpoint outside the mesh reached by
//! plain TCP, 503 for a backend with no ready endpoint, a route changed and deleted in the
//! API taking effect on the waypoint, an invalid route rejected alone naming its field, and
//! a parentRef to a port the Service lacks shown as not Accepted in `/config_dump`.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{pods_e2e_ready, Cluster, AMBIENT};
use common::l7::{add_echo_pods, curl, start_echo, EchoPods, Reply};
use common::testbed::*;
use serde_json::Value;

const WAYPOINT: &str = "shop-waypoint";
const VIP: &str = "10.96.50.10";

fn ready() -> bool {
    pods_e2e_ready(&["ip", "nft", "nsenter", "curl", "python3"])
        && common::apiserver::ApiServer::available()
}

/// The Services and their EndpointSlices (no endpoint controller runs here, so the test
/// writes the slices as kube-controller-manager would).
fn services(v1: &str, v2: &str, outside: &str, waypoint: &str) -> String {
    let slice = |name: &str, service: &str, port_name: &str, port: u16, ips: &[&str]| {
        let endpoints: Vec<String> = ips
            .iter()
            .map(|ip| format!("{{addresses: [\"{ip}\"]}}"))
            .collect();
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: shop, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nendpoints: [{}]\nports: [{{name: {port_name}, port: {port}, protocol: TCP}}]\n",
            endpoints.join(", ")
        )
    };
    let mut yaml = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: shop, labels: {{weft.dev/use-waypoint: {WAYPOINT}}}}}
spec:
  clusterIP: {VIP}
  selector: {{app: echo}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo-v1, namespace: shop}}
spec:
  selector: {{app: echo, version: v1}}
  ports: [{{name: http, port: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo-v2, namespace: shop}}
spec:
  selector: {{app: echo, version: v2}}
  ports: [{{name: http, port: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: outside, namespace: shop}}
spec:
  ports: [{{name: http, port: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: idle, namespace: shop}}
spec:
  selector: {{app: nobody}}
  ports: [{{name: http, port: 8080}}]
"#
    );
    yaml.push_str(&slice("echo-1", "echo", "http", 8080, &[v1, v2]));
    yaml.push_str(&slice("echo-v1-1", "echo-v1", "http", 8080, &[v1]));
    yaml.push_str(&slice("echo-v2-1", "echo-v2", "http", 8080, &[v2]));
    yaml.push_str(&slice("outside-1", "outside", "http", 8080, &[outside]));
    yaml.push_str(&slice(
        "shop-waypoint-1",
        WAYPOINT,
        "mesh",
        15008,
        &[waypoint],
    ));
    yaml
}

/// The route under test; `default_to` is where a request no other rule matches goes.
fn echo_route(default_to: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: echo, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo, port: 80}}]
  rules:
  - name: beta
    matches: [{{headers: [{{name: x-user-group, value: beta}}]}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: x-routed, value: beta}}]}}
    backendRefs: [{{name: echo-v2, port: 8080}}]
  - name: outside
    matches: [{{path: {{type: PathPrefix, value: /outside}}}}]
    backendRefs: [{{name: outside, port: 8080}}]
  - name: idle
    matches: [{{path: {{type: PathPrefix, value: /idle}}}}]
    backendRefs: [{{name: idle, port: 8080}}]
  - name: default
    backendRefs: [{{name: {default_to}, port: 8080}}]
"#
    )
}

const BAD_ROUTE: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /bad}}]
    filters: [{type: ExtensionRef, extensionRef: {group: x, kind: y, name: z}}]
    backendRefs: [{name: echo-v1, port: 8080}]
"#;

const WRONG_PORT_ROUTE: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: wrong-port, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 9999}]
  rules:
  - backendRefs: [{name: echo-v2, port: 8080}]
"#;

/// The waypoint's `/config_dump`, read from inside its pod.
fn waypoint_dump(c: &Cluster, pod: usize) -> Value {
    let out = c.pods[pod]
        .ns
        .command("curl")
        .args([
            "-s",
            "--max-time",
            "3",
            "http://127.0.0.1:15000/config_dump",
        ])
        .output()
        .expect("curl");
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// The status the waypoint reports for route `ns/name`, if it has the route.
fn route_status(dump: &Value, route: &str) -> Option<Value> {
    dump["route_status"]
        .as_array()?
        .iter()
        .find(|r| r["route"] == route)
        .cloned()
}

/// Polls `condition` until it holds (then returns how long that took) or 20 s pass.
fn eventually(what: &str, mut condition: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < Duration::from_secs(20), "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

fn get(c: &Cluster, client: usize, args: &[&str]) -> Reply {
    curl(&c.pods[client].ns, args).unwrap_or_else(|e| panic!("curl {args:?}: {e}"))
}

#[test]
fn httproutes_from_the_api_server() {
    if !ready() {
        return;
    }
    // As installed: no node and no waypoint holds the CA key; weft signer signs them all.
    let mut c = Cluster::with_signer(2, &[]);
    c.kube_namespace("shop", &[AMBIENT]);
    c.kube_namespace("legacy", &[]);
    c.start_daemon(0);
    c.start_daemon(1);
    c.route_pod_cidrs_from_underlay();
    c.install_httproute_crd();
    c.block(c.kube().server.apply_install(&["waypoint-rbac.yaml"]));
    let manifests = std::process::Command::new(binary("weft"))
        .args(["waypoint", "manifests", "--namespace", "shop", "--name"])
        .arg(WAYPOINT)
        .output()
        .expect("weft waypoint manifests");
    assert!(manifests.status.success(), "{manifests:?}");
    c.kube_apply(&String::from_utf8_lossy(&manifests.stdout))
        .expect("the waypoint's manifests apply");

    let EchoPods {
        client,
        v1,
        v2,
        waypoint: wp,
    } = add_echo_pods(&mut c, WAYPOINT);
    let outside = c
        .add_pod(1, "legacy", "outside", "outside", &[("app", "outside")])
        .expect("ADD outside");
    start_echo(&mut c, v1, "echo-v1");
    start_echo(&mut c, v2, "echo-v2");
    start_echo(&mut c, outside, "outside");
    let (v1_ip, v2_ip) = (c.pods[v1].ip.clone(), c.pods[v2].ip.clone());
    let (outside_ip, wp_ip) = (c.pods[outside].ip.clone(), c.pods[wp].ip.clone());
    c.kube_apply(&services(&v1_ip, &v2_ip, &outside_ip, &wp_ip))
        .expect("Services and EndpointSlices apply");
    c.kube_apply(&echo_route("echo-v1"))
        .expect("the HTTPRoute applies");
    c.wait_dumps("the waypoint's Service with its pod", |d| {
        d["mesh"]["services"].as_array().is_some_and(|ss| {
            ss.iter()
                .any(|s| s["name"] == WAYPOINT && s["endpoints"].to_string().contains(&wp_ip))
        })
    });

    // The waypoint, in its pod, with the Kubernetes source and its pod's token; its
    // certificate comes from weft signer.
    let kubeconfig = c.pod_kubeconfig("shop", WAYPOINT, "shop-waypoint-0");
    let log = c.work.path().join(format!("{}.log", unique("waypoint")));
    let mut cmd = c.pods[wp].ns.command(binary("weft"));
    cmd.args(["waypoint", "--namespace", "shop", "--name", WAYPOINT])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--pod-name", "shop-waypoint-0"])
        .env("RUST_LOG", "info");
    c.pods[wp]
        .extra
        .push(Process::spawn(cmd, &log, "weft waypoint"));
    let waypoint = c.pods[wp].extra.len() - 1;
    let started = Instant::now();
    loop {
        let dump = waypoint_dump(&c, wp);
        if route_status(&dump, "shop/echo")
            .is_some_and(|r| r["parents"][0]["accepted"]["status"] == true)
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the waypoint never accepted shop/echo from the API: {}\n{}",
            dump,
            c.pods[wp].extra[waypoint].log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let dump = waypoint_dump(&c, wp);
    let source = dump["config"]["name"].as_str().unwrap_or_default();
    assert!(source.starts_with("kubernetes "), "{source}");
    assert_eq!(
        dump["config"]["kinds"]["HTTPRoute"]["installed"], true,
        "{}",
        dump["config"]
    );
    let signed = c.signer_log();
    assert!(
        signed.lines().any(|l| l.contains("signed")
            && l.contains("spiffe://cluster.local/ns/shop/sa/shop-waypoint")),
        "weft signer never signed the waypoint's certificate:\n{signed}"
    );
    let url = |path: &str| format!("http://{VIP}{path}");

    // Header routing, with the rule's filter, and the default rule.
    let beta = get(&c, client, &["-H", "x-user-group: beta", &url("/cart")]);
    assert_eq!(
        (beta.status, beta.served_by()),
        (200, "echo-v2".into()),
        "{beta:?}"
    );
    assert_eq!(beta.received("x-routed").as_deref(), Some("beta"));
    assert!(
        beta.received("traceparent").is_some(),
        "not through the waypoint"
    );
    let plain = get(&c, client, &[&url("/cart")]);
    assert_eq!(
        (plain.status, plain.served_by()),
        (200, "echo-v1".into()),
        "{plain:?}"
    );

    // An endpoint outside the mesh (legacy is not enrolled) is reached by plain TCP, from
    // the waypoint's pod.
    let out = get(&c, client, &[&url("/outside/x")]);
    assert_eq!(
        (out.status, out.served_by()),
        (200, "outside".into()),
        "{out:?}"
    );
    assert_eq!(
        out.json()["client"].as_str(),
        Some(wp_ip.as_str()),
        "the outside endpoint sees the waypoint: {out:?}"
    );

    // A backend Service with no ready endpoint: 503, saying so.
    let idle = get(&c, client, &[&url("/idle")]);
    assert_eq!(idle.status, 503, "{idle:?}");
    assert!(
        idle.body.contains("shop/idle has no ready endpoint"),
        "{idle:?}"
    );

    // The route changed in the API takes effect on the waypoint.
    c.kube_apply(&echo_route("echo-v2")).expect("route update");
    let took = eventually("the default rule sends to echo-v2", || {
        get(&c, client, &[&url("/cart")]).served_by() == "echo-v2"
    });
    eprintln!("route update served {took:?} after the apply");

    // An invalid route is rejected alone, naming its field; the good route keeps serving.
    c.kube_apply(BAD_ROUTE)
        .expect("the API server stores the bad route");
    let mut rejected = Value::Null;
    eventually("the bad route rejected", || {
        rejected = waypoint_dump(&c, wp)["config"]["rejected_objects"].clone();
        rejected.as_array().is_some_and(|rs| {
            rs.iter().any(|r| {
                r["object"] == "HTTPRoute shop/bad"
                    && r["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("spec.rules[0].filters[0].type"))
            })
        })
    });
    let still = get(&c, client, &["-H", "x-user-group: beta", &url("/bad")]);
    assert_eq!(still.served_by(), "echo-v2", "{still:?} {rejected}");

    // A parentRef to a port the Service does not have: not Accepted, with the reason.
    c.kube_apply(WRONG_PORT_ROUTE).expect("wrong-port route");
    let mut status = None;
    eventually("wrong-port's status", || {
        status = route_status(&waypoint_dump(&c, wp), "shop/wrong-port");
        status.is_some()
    });
    let parent = &status.as_ref().unwrap()["parents"][0];
    assert_eq!(parent["accepted"]["status"], false, "{parent}");
    assert_eq!(parent["accepted"]["reason"], "NoMatchingParent", "{parent}");

    // The route deleted: a bound Service without routes goes to the Service itself, still
    // through the waypoint.
    c.kube_delete(
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        Some("shop"),
        "echo",
    );
    eventually("shop/echo gone from the waypoint", || {
        route_status(&waypoint_dump(&c, wp), "shop/echo").is_none()
    });
    let unrouted = get(&c, client, &[&url("/idle")]);
    assert_eq!(
        unrouted.status, 200,
        "no route: the Service itself; {unrouted:?}"
    );
    assert!(
        ["echo-v1", "echo-v2"].contains(&unrouted.served_by().as_str()),
        "{unrouted:?}"
    );
    assert!(unrouted.received("traceparent").is_some(), "{unrouted:?}");
}
