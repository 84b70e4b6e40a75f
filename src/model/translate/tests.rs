//! Whole-input (strict) translation tests: a valid config and the error of each kind of
//! mistake, naming the document, the object and the field.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::model::{parse_and_build, MeshSnapshot, TargetPort, DATAPLANE_MODE_LABEL};

const FULL: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    weft.dev/dataplane-mode: ambient
    weft.dev/use-waypoint: shop-waypoint
---
apiVersion: v1
kind: Namespace
metadata:
  name: legacy
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  uid: uid-web-1
  labels: {app: web}
  annotations: {ignored: "yes"}
spec:
  nodeName: node-1
  serviceAccountName: web
  containers:
  - name: web
    image: nginx
    ports:
    - {name: http, containerPort: 8080}
    - {containerPort: 9090}
status:
  phase: Running
  podIP: 10.0.1.10
  podIPs: [{ip: 10.0.1.10}, {ip: "fd00::10"}]
---
apiVersion: v1
kind: Pod
metadata:
  name: web-2
  namespace: shop
  labels: {app: web, weft.dev/use-waypoint: special}
spec:
  nodeName: node-2
  serviceAccount: web-old
  containers:
  - name: web
    ports: [{name: http, containerPort: 8081}]
status:
  podIP: 10.0.2.10
---
apiVersion: v1
kind: Pod
metadata:
  name: batch
  namespace: shop
  labels: {app: web, weft.dev/dataplane-mode: none}
spec:
  nodeName: node-1
  containers: [{name: batch}]
status:
  podIP: 10.0.1.11
---
apiVersion: v1
kind: Pod
metadata:
  name: agent
  namespace: shop
  labels: {app: web}
spec:
  nodeName: node-1
  hostNetwork: true
  containers: [{name: agent, ports: [{name: http, containerPort: 80}]}]
status:
  podIP: 192.168.0.1
---
apiVersion: v1
kind: Pod
metadata:
  name: old
  namespace: legacy
spec:
  nodeName: node-1
status:
  podIP: 10.0.1.20
---
apiVersion: v1
kind: Pod
metadata:
  name: agent
  namespace: legacy
spec:
  nodeName: node-2
  hostNetwork: true
status:
  podIP: 192.168.0.1
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http, appProtocol: http}
  - {name: metrics, port: 9090}
---
apiVersion: v1
kind: Service
metadata:
  name: db
  namespace: legacy
  labels: {weft.dev/use-waypoint: db-waypoint}
spec:
  clusterIP: 10.96.0.20
  ports:
  - {port: 5432, targetPort: 15432}
---
# An empty document, skipped.
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-abc
  namespace: legacy
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
endpoints:
- addresses: [10.0.1.20]
  conditions: {ready: true}
- addresses: [10.0.9.9]
  targetRef: {kind: Pod, name: external, uid: ext-uid}
- addresses: [10.0.9.10]
  conditions: {ready: false}
- addresses: [10.0.9.11]
ports:
- {name: "", port: 15432, protocol: TCP}
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn full_example_builds_expected_snapshot() {
    let snap = parse_and_build(FULL).unwrap();
    assert_eq!(snap.generation, 0);
    assert_eq!(snap.namespaces().count(), 2);
    assert_eq!(
        snap.namespace("shop").unwrap().labels[DATAPLANE_MODE_LABEL],
        "ambient"
    );

    let web1 = snap.workload_by_ip(ip("10.0.1.10")).unwrap();
    assert_eq!(web1.name, "web-1");
    assert_eq!(web1.uid, "uid-web-1");
    assert_eq!(web1.service_account, "web");
    assert_eq!(web1.node.as_deref(), Some("node-1"));
    assert_eq!(web1.ips, vec![ip("10.0.1.10"), ip("fd00::10")]);
    assert!(web1.enrolled);
    assert_eq!(web1.waypoint.as_deref(), Some("shop-waypoint"));
    assert_eq!(
        web1.named_ports,
        BTreeMap::from([("http".to_owned(), 8080)])
    );
    assert_eq!(snap.workload_by_ip(ip("fd00::10")).unwrap().name, "web-1");

    let web2 = snap.workload_by_uid("shop/web-2").unwrap();
    assert_eq!(web2.service_account, "web-old");
    assert!(web2.enrolled);
    assert_eq!(web2.waypoint.as_deref(), Some("special"));

    let batch = snap.workload_by_ip(ip("10.0.1.11")).unwrap();
    assert!(!batch.enrolled, "opted out with dataplane-mode=none");
    assert_eq!(batch.service_account, "default");

    let agent = snap.workload_by_uid("shop/agent").unwrap();
    assert!(agent.host_network);
    assert!(!agent.enrolled, "hostNetwork pods are never enrolled");
    assert!(snap.workload_by_ip(ip("192.168.0.1")).is_none());

    let old = snap.workload_by_ip(ip("10.0.1.20")).unwrap();
    assert!(!old.enrolled, "namespace not enrolled");
    assert_eq!(old.waypoint, None);

    let on_node1: Vec<_> = snap
        .workloads_on_node("node-1")
        .map(|w| format!("{}/{}", w.namespace, w.name))
        .collect();
    assert_eq!(
        on_node1,
        ["legacy/old", "shop/agent", "shop/batch", "shop/web-1"]
    );
    let all: Vec<_> = snap.workloads().map(|w| w.name.as_str()).collect();
    assert_eq!(all, ["agent", "old", "agent", "batch", "web-1", "web-2"]);

    let web = snap.service_by_vip(ip("10.96.0.10")).unwrap();
    assert_eq!(web.hostname(), "web.shop.svc.cluster.local");
    assert_eq!(web.waypoint.as_deref(), Some("shop-waypoint"));
    assert_eq!(web.vips, vec![ip("10.96.0.10")]);
    let http = web.port(80).unwrap();
    assert_eq!(http.target_port, TargetPort::Name("http".into()));
    assert_eq!(http.app_protocol.as_deref(), Some("http"));
    assert_eq!(http.protocol, "TCP");
    assert_eq!(
        web.port(9090).unwrap().target_port,
        TargetPort::Number(9090)
    );
    assert!(web.port(81).is_none());
    // Selector endpoints: web-1 (both IPs), web-2, batch (no named port: only 9090);
    // never the hostNetwork agent.
    let eps: Vec<_> = web
        .endpoints
        .iter()
        .map(|e| {
            (
                e.ip,
                e.workload_uid.clone().unwrap(),
                e.target_ports.clone(),
            )
        })
        .collect();
    assert_eq!(
        eps,
        vec![
            (
                ip("10.0.1.11"),
                "shop/batch".to_owned(),
                BTreeMap::from([(9090, 9090)])
            ),
            (
                ip("10.0.1.10"),
                "uid-web-1".to_owned(),
                BTreeMap::from([(80, 8080), (9090, 9090)])
            ),
            (
                ip("fd00::10"),
                "uid-web-1".to_owned(),
                BTreeMap::from([(80, 8080), (9090, 9090)])
            ),
            (
                ip("10.0.2.10"),
                "shop/web-2".to_owned(),
                BTreeMap::from([(80, 8081), (9090, 9090)])
            ),
        ]
    );

    let db = snap.service("legacy", "db").unwrap();
    assert_eq!(snap.service_by_vip(ip("10.96.0.20")), Some(db));
    assert_eq!(db.waypoint.as_deref(), Some("db-waypoint"));
    let eps: Vec<_> = db
        .endpoints
        .iter()
        .map(|e| (e.ip, e.workload_uid.as_deref(), e.target_ports[&5432]))
        .collect();
    assert_eq!(
        eps,
        vec![
            (ip("10.0.1.20"), Some("legacy/old"), 15432),
            (ip("10.0.9.9"), Some("ext-uid"), 15432),
            (ip("10.0.9.11"), None, 15432),
        ]
    );
    let names: Vec<_> = snap.services().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["db", "web"]);

    // Serializable for the config dump.
    let json = serde_json::to_value(&snap).unwrap();
    assert_eq!(json["workloads"].as_array().unwrap().len(), 6);
    assert_eq!(json["services"][1]["ports"][0]["target_port"], "http");
}

#[test]
fn slice_ports_match_by_name_and_union_across_slices() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: api}
spec:
  clusterIPs: ["10.96.1.1", "fd00::1:1"]
  ports: [{name: http, port: 80}, {name: grpc, port: 90}]
  selector: {app: ignored-because-slices-exist}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, labels: {kubernetes.io/service-name: api}}
endpoints: [{addresses: [10.1.0.1]}]
ports: [{name: http, port: 8080}, {name: grpc, port: 9090}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-2, labels: {kubernetes.io/service-name: api}}
endpoints: [{addresses: [10.1.0.2]}, {addresses: [10.1.0.1]}]
ports: [{name: http, port: 8081}, {name: other, port: 1}]
"#;
    let snap = parse_and_build(yaml).unwrap();
    let api = snap.service("default", "api").unwrap();
    assert_eq!(api.vips, vec![ip("10.96.1.1"), ip("fd00::1:1")]);
    assert_eq!(snap.service_by_vip(ip("fd00::1:1")).unwrap().name, "api");
    let eps: Vec<_> = api
        .endpoints
        .iter()
        .map(|e| (e.ip, e.target_ports.clone()))
        .collect();
    assert_eq!(
        eps,
        vec![
            (ip("10.1.0.1"), BTreeMap::from([(80, 8080), (90, 9090)])),
            (ip("10.1.0.2"), BTreeMap::from([(80, 8081)])),
        ]
    );
}

#[test]
fn headless_service_and_waypoint_opt_out() {
    let yaml = r#"
apiVersion: v1
kind: Namespace
metadata: {name: ns, labels: {weft.dev/use-waypoint: wp}}
---
apiVersion: v1
kind: Service
metadata: {name: h, namespace: ns, labels: {weft.dev/use-waypoint: none}}
spec: {clusterIP: None, ports: [{port: 80, targetPort: "8080"}]}
"#;
    let snap = parse_and_build(yaml).unwrap();
    let h = snap.service("ns", "h").unwrap();
    assert!(h.vips.is_empty());
    assert_eq!(h.waypoint, None);
    assert_eq!(h.ports[0].target_port, TargetPort::Number(8080));
    assert!(h.endpoints.is_empty());
}

#[test]
fn demo_config_is_valid() {
    let yaml = include_str!("../../../deploy/demo/mesh.yaml");
    let snap = parse_and_build(yaml).unwrap();
    let client = snap.workload_by_ip(ip("10.10.1.10")).unwrap();
    assert!(client.enrolled);
    assert_eq!(
        (client.service_account.as_str(), client.node.as_deref()),
        ("client", Some("node-1"))
    );
    let legacy = snap.workload_by_ip(ip("10.10.1.20")).unwrap();
    assert!(!legacy.enrolled);
    let server = snap.service_by_vip(ip("10.96.0.10")).unwrap();
    assert_eq!(server.endpoints.len(), 1);
    assert_eq!(server.endpoints[0].ip, ip("10.10.2.10"));
    assert_eq!(server.endpoints[0].target_ports[&80], 8080);
    let on_node1: Vec<_> = snap.workloads_on_node("node-1").map(|w| &w.name).collect();
    assert_eq!(on_node1, ["client", "legacy"]);
}

#[test]
fn empty_input_is_an_empty_snapshot() {
    assert_eq!(parse_and_build("").unwrap(), MeshSnapshot::empty());
    assert_eq!(
        parse_and_build("---\n# nothing\n---\n").unwrap(),
        MeshSnapshot::empty()
    );
}

const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";

fn pod(name: &str, status: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop}}\n{status}\n")
}

/// The error of building `yaml`.
#[track_caller]
pub(super) fn error(yaml: &str) -> String {
    parse_and_build(yaml).unwrap_err().to_string()
}

/// Asserts the error of `yaml` mentions every fragment.
#[track_caller]
pub(super) fn assert_error(yaml: &str, fragments: &[&str]) {
    let err = error(yaml);
    for fragment in fragments {
        assert!(err.contains(fragment), "{err:?} lacks {fragment:?}");
    }
}

#[test]
fn invalid_pod_ip() {
    let yaml = format!(
        "{NS}---\n{}---\n{}",
        pod("a", "status: {podIP: 10.1.2.3}"),
        pod("order-5d9", "status: {podIP: 10.1.2.300}")
    );
    let err = parse_and_build(&yaml).unwrap_err().to_string();
    assert_eq!(
        err,
        r#"document 3 (Pod shop/order-5d9): status.podIP: "10.1.2.300" is not an IP address"#
    );
    assert_error(
        &pod("p", "status: {podIPs: [{ip: 10.0.0.1}, {ip: bogus}]}"),
        &[
            "document 1",
            "Pod shop/p",
            "status.podIPs[1].ip",
            "\"bogus\"",
        ],
    );
}

#[test]
fn invalid_ports() {
    assert_error(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: x}\n\
         spec: {ports: [{port: 80}, {port: 70000}]}",
        &[
            "document 1",
            "Service x/s",
            "spec.ports[1].port",
            "70000",
            "1-65535",
        ],
    );
    assert_error(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n\
         spec: {ports: [{port: 80, targetPort: 0}]}",
        &[
            "document 1",
            "Service default/s",
            "spec.ports[0].targetPort",
            "0 is not",
        ],
    );
    assert_error(
        &format!(
            "---\n{}",
            pod(
                "p",
                "spec: {containers: [{name: c, ports: [{containerPort: -1}]}]}"
            )
        ),
        &[
            "document 1",
            "Pod shop/p",
            "spec.containers[0].ports[0].containerPort",
            "-1",
        ],
    );
    assert_error(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: s-1, labels: {kubernetes.io/service-name: s}}\n\
         ports: [{port: 65536}]",
        &[
            "document 2",
            "EndpointSlice default/s-1",
            "ports[0].port",
            "65536",
        ],
    );
}

#[test]
fn wrong_types_carry_the_field_path() {
    assert_error(
        &pod("p", "spec: {hostNetwork: \"yes\"}"),
        &[
            "document 1",
            "Pod shop/p",
            "spec.hostNetwork",
            "invalid type",
        ],
    );
    assert_error(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n\
         spec: {ports: [{port: http}]}",
        &[
            "document 1",
            "Service default/s",
            "spec.ports[0].port",
            "invalid type",
        ],
    );
}

#[test]
fn missing_name() {
    assert_error(
        &format!("{NS}---\napiVersion: v1\nkind: Pod\nmetadata: {{namespace: shop}}\n"),
        &[
            "document 2",
            "Pod shop/<no name>",
            "metadata.name",
            "missing",
        ],
    );
}

#[test]
fn duplicate_objects() {
    let yaml = format!("{NS}---\n{}---\n{}", pod("p", ""), pod("p", ""));
    assert_error(
        &yaml,
        &["document 3", "Pod shop/p", "metadata.name", "document 2"],
    );
    assert_error(
        &format!("{NS}---\n{NS}"),
        &[
            "document 2",
            "Namespace shop",
            "metadata.name",
            "document 1",
        ],
    );
    // Same name, different kinds or namespaces: fine.
    let ok = format!(
        "{NS}---\n{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: p, namespace: shop}}\n\
         ---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: other}}\n\
         ---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: other}}\n",
        pod("p", "")
    );
    parse_and_build(&ok).unwrap();
}

#[test]
fn pods_sharing_an_ip() {
    let yaml = format!(
        "{NS}---\n{}---\n{}",
        pod("a", "status: {podIP: 10.0.0.1}"),
        pod("b", "status: {podIPs: [{ip: 10.0.0.2}, {ip: 10.0.0.1}]}")
    );
    assert_error(
        &yaml,
        &[
            "document 3",
            "Pod shop/b",
            "status.podIPs[1].ip",
            "10.0.0.1",
            "Pod shop/a (document 2)",
        ],
    );
    // hostNetwork pods share the node IP with each other and with nothing in the index.
    let ok = format!(
        "{NS}---\n{}---\n{}---\n{}",
        pod("a", "spec: {hostNetwork: true}\nstatus: {podIP: 10.0.0.1}"),
        pod("b", "spec: {hostNetwork: true}\nstatus: {podIP: 10.0.0.1}"),
        pod("c", "status: {podIP: 10.0.0.1}"),
    );
    let snap = parse_and_build(&ok).unwrap();
    assert_eq!(snap.workload_by_ip(ip("10.0.0.1")).unwrap().name, "c");
}

#[test]
fn names_and_labels_are_checked_as_the_api_server_would() {
    let ns =
        |name: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name:?}}}\n");
    assert_error(
        &ns("Shop!/.."),
        &["Namespace Shop!/..", "metadata.name", "lowercase"],
    );
    let long_value = "v".repeat(100_000);
    for (labels, fragments) in [
        (
            "{\"bad key\": x}".to_owned(),
            vec!["metadata.labels.bad key", "key"],
        ),
        ("{\"a/b/c\": x}".to_owned(), vec!["metadata.labels.a/b/c"]),
        (
            format!("{{app: {long_value}}}"),
            vec!["metadata.labels.app", "63 characters"],
        ),
    ] {
        let yaml = format!(
            "{NS}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: shop, labels: {labels}}}\n"
        );
        let mut all = vec!["Pod shop/p"];
        all.extend(fragments);
        assert_error(&yaml, &all);
    }
    for sa in ["../admin", "a/sa/b", "Admin"] {
        let yaml = format!(
            "{NS}---\n{}",
            pod("p", &format!("spec: {{serviceAccountName: {sa:?}}}"))
        );
        assert_error(&yaml, &["Pod shop/p", "spec.serviceAccountName", sa]);
    }
    // A pod in a namespace nobody declared; `default` always exists.
    assert_error(
        &pod("p", ""),
        &["Pod shop/p", "metadata.namespace", "not declared"],
    );
    parse_and_build("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n").unwrap();
}

#[test]
fn unroutable_addresses_are_refused() {
    for raw in ["0.0.0.0", "224.0.0.1", "::"] {
        let yaml = format!(
            "{NS}---\n{}",
            pod("p", &format!("status: {{podIP: {raw:?}}}"))
        );
        assert_error(&yaml, &["Pod shop/p", "status.podIP", raw]);
    }
    for raw in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
        let yaml = format!(
            "{NS}---\napiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: shop}}\n\
             spec: {{clusterIP: {raw:?}}}\n"
        );
        assert_error(&yaml, &["Service shop/s", "spec.clusterIP", "loopback"]);
    }
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
                   spec: {clusterIP: 10.96.0.9, ports: [{port: 80, name: http}]}\n";
    let slice = |addr: &str| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 15001}}]\n\
             endpoints: [{{addresses: [{addr}]}}]\n"
        )
    };
    assert_error(
        &format!("{NS}---\n{service}---\n{}", slice("127.0.0.1")),
        &[
            "EndpointSlice shop/web-1",
            "endpoints[0].addresses[0]",
            "loopback",
        ],
    );
    // A cluster IP that is a pod's address would capture the pod's own traffic.
    let yaml = format!(
        "{NS}---\n{}---\n{}",
        pod("p", "status: {podIP: 10.96.0.9}"),
        service
    );
    assert_error(&yaml, &["Service shop/web", "spec.clusterIP", "Pod shop/p"]);
}

#[test]
fn services_sharing_a_vip() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.1}\n\
                ---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\n\
                spec: {clusterIPs: [10.96.0.1]}\n";
    assert_error(
        yaml,
        &[
            "document 2",
            "Service default/b",
            "spec.clusterIPs[0]",
            "10.96.0.1",
            "Service default/a",
        ],
    );
    assert_error(
        "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.256}\n",
        &[
            "document 1",
            "Service default/a",
            "spec.clusterIP",
            "\"10.96.0.256\" is not an IP",
        ],
    );
}

#[test]
fn endpoint_slice_errors() {
    assert_error(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: s-1, namespace: x, labels: {kubernetes.io/service-name: s}}\n",
        &[
            "document 1",
            "EndpointSlice x/s-1",
            "metadata.labels.kubernetes.io/service-name",
            "Service x/s does not exist",
        ],
    );
    assert_error(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s-1}\n",
        &[
            "document 1",
            "EndpointSlice default/s-1",
            "kubernetes.io/service-name",
            "missing",
        ],
    );
    assert_error(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: s-1, labels: {kubernetes.io/service-name: s}}\n\
         endpoints: [{addresses: [1.2.3]}]\n",
        &[
            "document 2",
            "EndpointSlice default/s-1",
            "endpoints[0].addresses[0]",
            "\"1.2.3\"",
        ],
    );
}

#[test]
fn unknown_or_missing_kind_rejected() {
    assert_error(
        &format!(
            "{NS}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: shop}}\n"
        ),
        &[
            "document 2",
            "Deployment shop/web",
            "kind: \"Deployment\" is not supported",
            "v1 Namespace, v1 Pod, v1 Service, discovery.k8s.io/v1 EndpointSlice, \
             weft.dev/v1alpha1 AuthorizationPolicy, PeerAuthentication, DestinationPolicy and \
             FaultInjection, and gateway.networking.k8s.io/v1 HTTPRoute",
        ],
    );
    assert_error(
        "apiVersion: v1\nmetadata: {name: x}\n",
        &["document 1", "kind", "missing", "v1 Pod"],
    );
    assert_error(
        "apiVersion: apps/v1\nkind: Pod\nmetadata: {name: x}\n",
        &[
            "document 1",
            "Pod default/x",
            "apiVersion",
            "\"apps/v1\"",
            "use \"v1\"",
        ],
    );
    assert_error(
        "kind: Pod\nmetadata: {name: x}\n",
        &["document 1", "apiVersion", "missing apiVersion"],
    );
    assert_error("- a\n- b\n", &["document 1", "found a list"]);
}

#[test]
fn yaml_syntax_error_names_the_document() {
    assert_error(
        &format!("{NS}---\nkind: [unclosed\n"),
        &["document 2", "invalid YAML"],
    );
}

/// The core kinds are read with the Kubernetes types, so every field is typed as the API
/// server types it: numeric quantities are fine (`cpu: 1`), a number for a string is not.
#[test]
fn real_manifest_fields_weft_does_not_read_are_checked_as_kubernetes_does() {
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n\
                spec:\n  overhead: {cpu: 0.25}\n  containers:\n  - name: c\n    \
                resources: {limits: {cpu: 1, memory: 1024}, requests: {cpu: 0.5}}\n    \
                ports: [{containerPort: 8080, name: http}]\n  \
                volumes: [{name: v, emptyDir: {sizeLimit: 1073741824}}]\n\
                status: {podIP: 10.0.0.1}\n";
    let snap = parse_and_build(yaml).unwrap();
    let pod = snap.workload_by_ip("10.0.0.1".parse().unwrap()).unwrap();
    assert_eq!(pod.named_ports["http"], 8080);
    // Elsewhere a number for a string is still refused, as the API server does.
    let err = parse_and_build(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n\
         spec: {containers: [{name: c, env: [{name: X, value: 1}]}]}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("spec.containers[0].env[0].value") && err.contains("quote the value"),
        "{err}"
    );
}

const ROUTE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews-canary, namespace: shop}
spec:
  parentRefs:
  - {group: "", kind: Service, name: reviews, port: 9080}
  rules:
  - backendRefs:
    - {name: reviews-v1, port: 9080, weight: 90}
    - {name: reviews-v2, port: 9080, weight: 10}
status: {parents: []}
"#;

#[test]
fn http_routes_are_kept_for_their_services() {
    let snapshot = parse_and_build(ROUTE).unwrap();
    let routes: Vec<_> = snapshot
        .http_routes_for_service("shop", "reviews")
        .collect();
    assert_eq!(routes.len(), 1);
    let route = &routes[0];
    assert_eq!(route.name, "reviews-canary");
    assert_eq!(route.parents[0].port, Some(9080));
    assert_eq!(route.parents[0].namespace, "shop");
    assert_eq!(route.rules[0].backend_refs[1].weight(), 10);
    assert_eq!(
        snapshot.http_routes_for_service("shop", "ratings").count(),
        0
    );
}

#[test]
fn an_http_route_with_a_bad_parent_names_the_field() {
    let bad_kind = ROUTE.replace(
        "kind: Service, name: reviews",
        "kind: ConfigMap, name: reviews",
    );
    let err = parse_and_build(&bad_kind).unwrap_err().to_string();
    assert!(
        err.contains("HTTPRoute shop/reviews-canary") && err.contains("spec.parentRefs[0].kind"),
        "{err}"
    );
    let bad_port = ROUTE.replace("port: 9080}\n  rules", "port: 0}\n  rules");
    let err = parse_and_build(&bad_port).unwrap_err().to_string();
    assert!(err.contains("spec.parentRefs[0].port"), "{err}");
}
