//! weft's CustomResourceDefinitions (deploy/kubernetes/crds, as its kustomization.yaml lists
//! them) on a real kube-apiserver: both become Established with their names, every
//! AuthorizationPolicy / PeerAuthentication example of README.md and deploy/demo is accepted,
//! and bad objects (wrong action, bad port, wrong type, unknown mTLS mode, each CEL rule
//! broken, ...) are refused by the API server itself with the field named.
//!
//! weft's own parser (src/model/weft_kinds.rs and the translation) is the source of truth, so
//! every case is also fed to `weft::model::parse_and_build`: what the server accepts weft
//! accepts, and what the server refuses weft rejects, naming the same field. The few places
//! where the schema is deliberately stricter than weft (the limits the CEL cost budget needs,
//! addresses the server's CIDR library refuses) are listed and checked as such.
//!
//! Good objects are written with server-side apply (what `kubectl apply --server-side`
//! sends); bad ones are tried both as a strict create (what client-side `kubectl apply` sends
//! for a new object: 422 with the field) and with server-side apply (refused naming the field;
//! a value of the wrong shape fails its typed conversion first, with a 500 of the server's).
//!
//! Needs root and the binaries of scripts/build-apiserver.sh (skipped otherwise, unless
//! WEFT_E2E=1).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use serde::Deserialize;
use serde_json::{json, Value};

use common::apiserver::{self, status_code, ApiServer, FIELD_MANAGER};
use common::testbed::unique;

const GROUP: &str = "weft.dev";
const VERSION: &str = "v1alpha1";
const CRD_DIR: &str = "deploy/kubernetes/crds";

/// Bounds every request so a hang fails the test instead of stalling it.
async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 60s"))
}

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    let path = repo_path(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every document of a multi-document YAML, as JSON values (nulls skipped).
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("bad YAML: {e}\n{yaml}")))
        .filter(|v| !v.is_null())
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Ap,
    Pa,
    Dp,
    Fi,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ap => "AuthorizationPolicy",
            Kind::Pa => "PeerAuthentication",
            Kind::Dp => "DestinationPolicy",
            Kind::Fi => "FaultInjection",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Kind::Ap => "authorizationpolicies",
            Kind::Pa => "peerauthentications",
            Kind::Dp => "destinationpolicies",
            Kind::Fi => "faultinjections",
        }
    }

    fn of(kind: &str) -> Option<Kind> {
        match kind {
            "AuthorizationPolicy" => Some(Kind::Ap),
            "PeerAuthentication" => Some(Kind::Pa),
            "DestinationPolicy" => Some(Kind::Dp),
            "FaultInjection" => Some(Kind::Fi),
            _ => None,
        }
    }
}

/// An object of `kind` named `name` in `ns` with `spec` (YAML; empty: no spec at all).
fn object(kind: Kind, name: &str, ns: &str, spec: &str) -> Value {
    let mut doc = format!(
        "apiVersion: {GROUP}/{VERSION}\nkind: {}\nmetadata: {{name: {name}, namespace: {ns}}}\n",
        kind.name()
    );
    if !spec.is_empty() {
        doc.push_str(&format!("spec: {spec}\n"));
    }
    let mut docs = documents(&doc);
    assert_eq!(docs.len(), 1, "{doc}");
    docs.remove(0)
}

/// weft's verdict on `obj` (in a config with its namespace): the source of truth.
fn weft_verdict(obj: &Value) -> Result<(), String> {
    let ns = obj["metadata"]["namespace"].as_str().expect("namespace");
    let yaml = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n{}",
        serde_yaml::to_string(obj).expect("YAML")
    );
    weft::model::parse_and_build(&yaml)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The AuthorizationPolicy / PeerAuthentication documents of the README's YAML blocks and of
/// deploy/demo/*.yaml, moved into `ns`.
fn examples(ns: &str) -> Vec<(String, Value)> {
    let mut sources: Vec<(String, String)> = Vec::new();
    let readme = read("README.md");
    let mut block: Option<String> = None;
    for line in readme.lines() {
        match block.as_mut() {
            None if line.trim_start().starts_with("```yaml") => block = Some(String::new()),
            None => {}
            Some(text) if line.trim_start().starts_with("```") => {
                sources.push(("README.md".to_owned(), std::mem::take(text)));
                block = None;
            }
            Some(text) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    let demo = repo_path("deploy/demo");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&demo)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", demo.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("demo file");
        sources.push((file.display().to_string(), text));
    }
    let mut out = Vec::new();
    for (origin, text) in sources {
        for mut doc in documents(&text) {
            let is_weft = doc["apiVersion"] == json!(format!("{GROUP}/{VERSION}"))
                && doc["kind"].as_str().and_then(Kind::of).is_some();
            if is_weft {
                doc["metadata"]["namespace"] = json!(ns);
                out.push((origin.clone(), doc));
            }
        }
    }
    out
}

fn api(client: &kube::Client, kind: Kind, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(GROUP, VERSION, kind.name());
    let resource = ApiResource::from_gvk_with_plural(&gvk, kind.plural());
    Api::namespaced_with(client.clone(), ns, &resource)
}

/// Server-side apply with strict field validation, as `kubectl apply --server-side` does.
async fn apply(client: &kube::Client, obj: &Value) -> Result<DynamicObject, kube::Error> {
    let kind = Kind::of(obj["kind"].as_str().expect("kind")).expect("a weft kind");
    let ns = obj["metadata"]["namespace"].as_str().expect("namespace");
    let name = obj["metadata"]["name"].as_str().expect("name");
    let params = PatchParams::apply(FIELD_MANAGER)
        .force()
        .validation_strict();
    bounded(
        &format!("apply {} {ns}/{name}", kind.name()),
        api(client, kind, ns).patch(name, &params, &Patch::Apply(obj)),
    )
    .await
}

/// A dry-run create with strict field validation: what `kubectl apply` (client-side, the
/// default) sends for a new object.
async fn create_strict(client: &kube::Client, obj: &Value) -> Result<DynamicObject, kube::Error> {
    let kind = Kind::of(obj["kind"].as_str().expect("kind")).expect("a weft kind");
    let ns = obj["metadata"]["namespace"].as_str().expect("namespace");
    let uri = format!(
        "/apis/{GROUP}/{VERSION}/namespaces/{ns}/{}?fieldValidation=Strict&dryRun=All&fieldManager={FIELD_MANAGER}",
        kind.plural()
    );
    let request = http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(obj).expect("JSON"))
        .expect("request");
    bounded("create", client.request::<DynamicObject>(request)).await
}

/// Every `message` of an `x-kubernetes-validations` rule in `schema`.
fn rule_messages(schema: &Value, out: &mut BTreeSet<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(rules)) = map.get("x-kubernetes-validations") {
                for rule in rules {
                    let message = rule["message"]
                        .as_str()
                        .unwrap_or_else(|| panic!("CEL rule without a message: {rule}"));
                    out.insert(message.to_owned());
                }
            }
            map.values().for_each(|v| rule_messages(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| rule_messages(v, out)),
        _ => {}
    }
}

/// Installs the CRDs of kustomization.yaml and waits until each is Established with the names
/// it asks for. Returns the CEL rule messages of both.
async fn install_crds(client: &kube::Client) -> BTreeSet<String> {
    let kustomization = documents(&read(&format!("{CRD_DIR}/kustomization.yaml")));
    let resources: Vec<String> = kustomization[0]["resources"]
        .as_array()
        .expect("kustomization.yaml lists resources")
        .iter()
        .map(|r| r.as_str().expect("resource path").to_owned())
        .collect();
    let mut names: Vec<String> = resources.clone();
    names.sort();
    assert_eq!(
        names,
        [
            "authorizationpolicies.weft.dev.yaml",
            "destinationpolicies.weft.dev.yaml",
            "faultinjections.weft.dev.yaml",
            "peerauthentications.weft.dev.yaml"
        ]
    );
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut messages = BTreeSet::new();
    for file in &resources {
        let text = read(&format!("{CRD_DIR}/{file}"));
        assert!(
            text.starts_with("# weft's CustomResourceDefinition")
                && (text.contains("src/model/weft_kinds.rs")
                    || text.contains("src/model/traffic_policies.rs")),
            "{file}: the header names weft and its source of truth"
        );
        let crd: CustomResourceDefinition =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{file}: not a CRD: {e}"));
        let name = crd.metadata.name.clone().expect("CRD name");
        assert_eq!(format!("{name}.yaml"), *file);
        rule_messages(
            &serde_json::to_value(&crd.spec).expect("CRD JSON"),
            &mut messages,
        );
        bounded(
            &format!("apply CRD {name}"),
            crds.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER)
                    .force()
                    .validation_strict(),
                &Patch::Apply(&crd),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("the API server refused CRD {file}: {e}"));
    }
    for (kind, short) in [
        (Kind::Ap, "wap"),
        (Kind::Pa, "wpa"),
        (Kind::Dp, "wdp"),
        (Kind::Fi, "wfi"),
    ] {
        let name = format!("{}.{GROUP}", kind.plural());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let crd = loop {
            let crd = bounded("get CRD", crds.get(&name)).await.expect("CRD");
            let established = crd
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                });
            if established {
                break crd;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "CRD {name} not Established within 30s: {:?}",
                crd.status
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let spec = &crd.spec;
        assert_eq!(spec.group, GROUP);
        assert_eq!(spec.scope, "Namespaced");
        assert_eq!(spec.versions.len(), 1);
        assert_eq!(spec.versions[0].name, VERSION);
        assert!(spec.versions[0].served && spec.versions[0].storage);
        let accepted = crd
            .status
            .as_ref()
            .and_then(|s| s.accepted_names.as_ref())
            .expect("accepted names");
        assert_eq!(accepted.kind, kind.name());
        assert_eq!(accepted.plural, kind.plural());
        assert_eq!(
            accepted.singular.as_deref(),
            Some(kind.name().to_ascii_lowercase().as_str())
        );
        assert_eq!(
            accepted.short_names.as_deref(),
            Some(&[short.to_owned()][..])
        );
        assert_eq!(
            accepted.categories.as_deref(),
            Some(&["weft".to_owned()][..])
        );
    }
    messages
}

/// Objects both weft and the API server accept: every field weft knows, each spelling it
/// accepts.
const GOOD: &[(Kind, &str)] = &[
    (Kind::Ap, ""),
    (Kind::Ap, "{}"),
    (Kind::Ap, "{rules: []}"),
    (Kind::Ap, "{rules: [{}]}"),
    (
        Kind::Ap,
        "{action: DENY, rules: [{from: [], to: [], when: []}]}",
    ),
    (
        Kind::Ap,
        r#"{selector: {matchLabels: {app: payment, tier: backend}}, action: ALLOW, rules: [
          {from: [{source: {principals: ["cluster.local/ns/shop/sa/order", "spiffe://cluster.local/ns/a/sa/b", "*", "cluster.local/ns/shop/*", "*/sa/order", "spiffe://*/sa/x", "spiffe:/x", "spiffe://a"],
                            notPrincipals: ["cluster.local/ns/shop/sa/bad"]}},
                  {source: {namespaces: [shop, "shop-*", "*-prod", "*"], notNamespaces: [kube-system]}},
                  {source: {ipBlocks: [10.0.0.0/8, 10.1.2.3/8, 192.168.1.1, "fd00::/64", "::1", " 10.0.0.0/8 "], notIpBlocks: [10.9.0.0/16]}}],
           to: [{operation: {ports: ["8080", 9090, "+80", "0443", " 7070 ", "65535", 1], notPorts: ["22", 23]}}],
           when: [{key: source.ip, values: [10.0.0.0/8], notValues: ["fd00::1"]},
                  {key: destination.ip, values: [10.96.0.10]},
                  {key: source.namespace, values: ["shop*"], notValues: [kube-system]},
                  {key: source.principal, values: ["cluster.local/ns/shop/sa/order", "spiffe://*x"]},
                  {key: destination.port, values: [8080, "9090"], notValues: ["+22"]}]}]}"#,
    ),
    // L7 fields: accepted (weft makes the rule deny, with a warning), any string.
    (
        Kind::Ap,
        r#"{rules: [{from: [{source: {requestPrincipals: ["iss/sub"], notRequestPrincipals: ["*"],
                                      remoteIpBlocks: [anything], notRemoteIpBlocks: [""]}}],
                     to: [{operation: {hosts: [a.example], notHosts: [b], methods: [GET],
                                       notMethods: [POST], paths: ["/x*y"], notPaths: [""]}}],
                     when: [{key: "request.headers[x-user]", values: [alice, 7]}]}]}"#,
    ),
    (Kind::Ap, "{rules: [{to: [{operation: {methods: [GET]}}]}]}"),
    (Kind::Pa, ""),
    (Kind::Pa, "{}"),
    (Kind::Pa, "{mtls: {}}"),
    (Kind::Pa, "{mtls: {mode: STRICT}}"),
    (
        Kind::Pa,
        "{selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}}",
    ),
    (Kind::Pa, "{mtls: {mode: UNSET}}"),
    (
        Kind::Dp,
        r#"{targetRefs: [{group: "", kind: Service, name: pay}, {kind: Service, name: ledger}],
            loadBalancer: {simple: ROUND_ROBIN},
            connectionPool: {tcp: {maxConnections: 4}, http: {http1MaxPendingRequests: 2, http2MaxRequests: 8}},
            outlierDetection: {consecutive5xxErrors: 3, baseEjectionTime: 10s, maxEjectionPercent: 30},
            retryBudget: {percent: 20, minRetriesPerSecond: 3}}"#,
    ),
    (
        Kind::Dp,
        "{targetRefs: [{kind: Service, name: pay}], loadBalancer: {consistentHash: {httpCookie: {name: session}}}}",
    ),
    (
        Kind::Dp,
        "{targetRefs: [{kind: Service, name: pay}], loadBalancer: {consistentHash: {useSourceIp: true}}}",
    ),
    (
        Kind::Fi,
        r#"{targetRefs: [{kind: Service, name: pay}], rules: [
            {matches: [{path: {type: PathPrefix, value: /checkout}, method: POST}], sourceNamespaces: [test],
             abort: {httpStatus: 500, percentage: {value: 10}}},
            {delay: {fixedDelay: 200ms, percentage: {value: 5.5}}, abort: {grpcStatus: UNAVAILABLE}}]}"#,
    ),
];

/// Objects weft rejects and the API server refuses with 422: (kind, spec, the field both
/// name, a fragment of the server's message).
const BAD: &[(Kind, &str, &str, &str)] = &[
    // Wrong action.
    (
        Kind::Ap,
        "{action: REJECT}",
        "spec.action",
        "Unsupported value: \"REJECT\"",
    ),
    (
        Kind::Ap,
        "{action: AUDIT}",
        "spec.action",
        "Unsupported value",
    ),
    (
        Kind::Ap,
        "{action: CUSTOM}",
        "spec.action",
        "Unsupported value",
    ),
    (
        Kind::Ap,
        "{action: allow}",
        "spec.action",
        "Unsupported value",
    ),
    // Bad ports, as strings and as numbers.
    (
        Kind::Ap,
        r#"{rules: [{to: [{operation: {ports: ["70000"]}}]}]}"#,
        "spec.rules[0].to[0].operation.ports[0]",
        "should match",
    ),
    (
        Kind::Ap,
        r#"{rules: [{to: [{operation: {ports: ["80", "0"]}}]}]}"#,
        "spec.rules[0].to[0].operation.ports[1]",
        "should match",
    ),
    (
        Kind::Ap,
        "{rules: [{to: [{operation: {ports: [http]}}]}]}",
        "spec.rules[0].to[0].operation.ports[0]",
        "should match",
    ),
    (
        Kind::Ap,
        r#"{rules: [{to: [{operation: {ports: ["-80"]}}]}]}"#,
        "spec.rules[0].to[0].operation.ports[0]",
        "should match",
    ),
    (
        Kind::Ap,
        "{rules: [{}, {to: [{operation: {ports: [70000]}}]}]}",
        "spec.rules[1].to[0].operation.ports[0]",
        "less than or equal to 65535",
    ),
    (
        Kind::Ap,
        "{rules: [{to: [{operation: {notPorts: [0]}}]}]}",
        "spec.rules[0].to[0].operation.notPorts[0]",
        "greater than or equal to 1",
    ),
    // Wrong types.
    (
        Kind::Ap,
        "{rules: [{to: [{operation: {ports: [true]}}]}]}",
        "spec.rules[0].to[0].operation.ports[0]",
        "must be of type integer,string",
    ),
    (
        Kind::Ap,
        "{rules: [{to: [{operation: {ports: [80.5]}}]}]}",
        "spec.rules[0].to[0].operation.ports[0]",
        "must be of type integer,string",
    ),
    (
        Kind::Ap,
        "{rules: all}",
        "spec.rules",
        "must be of type array",
    ),
    (
        Kind::Ap,
        "{action: [ALLOW]}",
        "spec.action",
        "must be of type string",
    ),
    (
        Kind::Ap,
        "{rules: [{from: [{source: {principals: cluster.local/ns/a/sa/b}}]}]}",
        "spec.rules[0].from[0].source.principals",
        "must be of type array",
    ),
    (
        Kind::Ap,
        "{selector: {matchLabels: [app]}}",
        "spec.selector.matchLabels",
        "must be of type object",
    ),
    (
        Kind::Ap,
        "{rules: [{when: [{key: source.ip, values: [[10.0.0.0/8]]}]}]}",
        "spec.rules[0].when[0].values[0]",
        "must be of type integer,string",
    ),
    (
        Kind::Pa,
        "{mtls: STRICT}",
        "spec.mtls",
        "must be of type object",
    ),
    // Unknown mTLS modes.
    (
        Kind::Pa,
        "{mtls: {mode: STRICTER}}",
        "spec.mtls.mode",
        "Unsupported value: \"STRICTER\"",
    ),
    (
        Kind::Pa,
        "{mtls: {mode: DISABLE}}",
        "spec.mtls.mode",
        "Unsupported value: \"DISABLE\"",
    ),
    (
        Kind::Pa,
        "{mtls: {mode: strict}}",
        "spec.mtls.mode",
        "Unsupported value",
    ),
    // Required fields.
    (
        Kind::Ap,
        "{rules: [{from: [{}]}]}",
        "spec.rules[0].from[0].source",
        "Required value",
    ),
    (
        Kind::Ap,
        "{rules: [{to: [{}]}]}",
        "spec.rules[0].to[0].operation",
        "Required value",
    ),
    (
        Kind::Ap,
        "{rules: [{when: [{values: [a]}]}]}",
        "spec.rules[0].when[0].key",
        "Required value",
    ),
    (
        Kind::Ap,
        r#"{rules: [{when: [{key: "", values: [a]}]}]}"#,
        "spec.rules[0].when[0].key",
        "at least 1 chars long",
    ),
    // Patterns weft checks.
    (
        Kind::Ap,
        r#"{rules: [{from: [{source: {principals: ["a*b"]}}]}]}"#,
        "spec.rules[0].from[0].source.principals[0]",
        "should match",
    ),
    (
        Kind::Ap,
        r#"{rules: [{from: [{source: {principals: ["spiffe://"]}}]}]}"#,
        "spec.rules[0].from[0].source.principals[0]",
        "should match",
    ),
    (
        Kind::Ap,
        r#"{rules: [{from: [{source: {notPrincipals: ["*a*"]}}]}]}"#,
        "spec.rules[0].from[0].source.notPrincipals[0]",
        "should match",
    ),
    (
        Kind::Ap,
        r#"{rules: [{from: [{source: {namespaces: [""]}}]}]}"#,
        "spec.rules[0].from[0].source.namespaces[0]",
        "should match",
    ),
    (
        Kind::Ap,
        r#"{rules: [{from: [{source: {notNamespaces: ["**"]}}]}]}"#,
        "spec.rules[0].from[0].source.notNamespaces[0]",
        "should match",
    ),
    // Each CEL rule broken.
    (
        Kind::Ap,
        "{targetRef: {kind: Service, name: x}}",
        "spec.targetRef",
        "spec.targetRef is not supported",
    ),
    (
        Kind::Ap,
        "{targetRefs: [{kind: Service, name: x}]}",
        "spec.targetRefs",
        "spec.targetRefs is not supported",
    ),
    (
        Kind::Ap,
        "{action: DENY, provider: {name: ext}}",
        "spec.provider",
        "spec.provider is not supported",
    ),
    (
        Kind::Ap,
        "{rules: [{from: [{source: {}}]}]}",
        "spec.rules[0].from[0].source",
        "from[].source is empty",
    ),
    (
        Kind::Ap,
        "{rules: [{from: [{source: {principals: []}}]}]}",
        "spec.rules[0].from[0].source",
        "from[].source is empty",
    ),
    (
        Kind::Ap,
        "{rules: [{to: [{operation: {}}]}]}",
        "spec.rules[0].to[0].operation",
        "to[].operation is empty",
    ),
    (
        Kind::Ap,
        "{rules: [{to: [{operation: {ports: [], notPorts: []}}]}]}",
        "spec.rules[0].to[0].operation",
        "to[].operation is empty",
    ),
    (
        Kind::Ap,
        "{rules: [{when: [{key: source.ip}]}]}",
        "spec.rules[0].when[0]",
        "when[] has no values or notValues",
    ),
    (
        Kind::Ap,
        "{rules: [{when: [{key: destination.port, values: []}]}]}",
        "spec.rules[0].when[0]",
        "when[] has no values or notValues",
    ),
    (
        Kind::Ap,
        r#"{rules: [{when: [{key: destination.port, values: ["99999"]}]}]}"#,
        "spec.rules[0].when[0].values",
        "when[].values of key destination.port must be ports",
    ),
    (
        Kind::Ap,
        "{rules: [{when: [{key: destination.port, values: [80, 0]}]}]}",
        "spec.rules[0].when[0].values",
        "when[].values of key destination.port must be ports",
    ),
    (
        Kind::Ap,
        "{rules: [{when: [{key: destination.port, notValues: [http]}]}]}",
        "spec.rules[0].when[0].notValues",
        "when[].notValues of key destination.port must be ports",
    ),
    (
        Kind::Ap,
        r#"{rules: [{when: [{key: source.ip, values: ["10.0.0.0/33"]}]}]}"#,
        "spec.rules[0].when[0].values",
        "when[].values of keys source.ip and destination.ip must be CIDRs",
    ),
    (
        Kind::Ap,
        "{rules: [{when: [{key: destination.ip, values: [8080]}]}]}",
        "spec.rules[0].when[0].values",
        "when[].values of keys source.ip and destination.ip must be CIDRs",
    ),
    (
        Kind::Ap,
        r#"{rules: [{when: [{key: destination.ip, notValues: ["fd00::/200"]}]}]}"#,
        "spec.rules[0].when[0].notValues",
        "when[].notValues of keys source.ip and destination.ip must be CIDRs",
    ),
    (
        Kind::Ap,
        r#"{rules: [{when: [{key: source.namespace, values: ["a*b"]}]}]}"#,
        "spec.rules[0].when[0].values",
        "when[].values of key source.namespace must be",
    ),
    (
        Kind::Ap,
        r#"{rules: [{when: [{key: source.namespace, notValues: [""]}]}]}"#,
        "spec.rules[0].when[0].notValues",
        "when[].notValues of key source.namespace must be",
    ),
    (
        Kind::Ap,
        r#"{rules: [{when: [{key: source.principal, values: ["spiffe://"]}]}]}"#,
        "spec.rules[0].when[0].values",
        "when[].values of key source.principal must be",
    ),
    (
        Kind::Ap,
        r#"{rules: [{when: [{key: source.principal, notValues: ["*a*"]}]}]}"#,
        "spec.rules[0].when[0].notValues",
        "when[].notValues of key source.principal must be",
    ),
    (
        Kind::Ap,
        r#"{rules: [{from: [{source: {ipBlocks: [10.0.0.0/8, "10.0.0.0/33"]}}]}]}"#,
        "spec.rules[0].from[0].source.ipBlocks[1]",
        "ipBlocks[] must be a CIDR",
    ),
    (
        Kind::Ap,
        r#"{rules: [{from: [{source: {ipBlocks: ["010.0.0.1"]}}]}]}"#,
        "spec.rules[0].from[0].source.ipBlocks[0]",
        "ipBlocks[] must be a CIDR",
    ),
    (
        Kind::Ap,
        r#"{rules: [{from: [{source: {notIpBlocks: [not-an-ip]}}]}]}"#,
        "spec.rules[0].from[0].source.notIpBlocks[0]",
        "notIpBlocks[] must be a CIDR",
    ),
    (
        Kind::Pa,
        "{mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: DISABLE}}}",
        "spec.portLevelMtls",
        "spec.portLevelMtls is not supported",
    ),
    (
        Kind::Dp,
        "{targetRefs: [{kind: Service, name: pay}], loadBalancer: {simple: ROUND_ROBIN, consistentHash: {useSourceIp: true}}}",
        "spec.loadBalancer",
        "set simple or consistentHash, not both",
    ),
    (
        Kind::Dp,
        "{targetRefs: [{kind: Service, name: pay}], loadBalancer: {simple: RANDOM}}",
        "spec.loadBalancer.simple",
        "Unsupported value",
    ),
    (
        Kind::Dp,
        "{targetRefs: [{kind: Service, name: pay}], outlierDetection: {maxEjectionPercent: 101}}",
        "spec.outlierDetection.maxEjectionPercent",
        "less than or equal to 100",
    ),
    (
        Kind::Dp,
        "{targetRefs: [{kind: Service, name: pay}], connectionPool: {tcp: {maxConnections: 0}}}",
        "spec.connectionPool.tcp.maxConnections",
        "greater than or equal to 1",
    ),
    (
        Kind::Fi,
        "{targetRefs: [{kind: Service, name: pay}], rules: [{abort: {httpStatus: 500, grpcStatus: INTERNAL}}]}",
        "spec.rules[0].abort",
        "set httpStatus or grpcStatus, one of them",
    ),
    (
        Kind::Fi,
        "{targetRefs: [{kind: Service, name: pay}], rules: [{delay: {fixedDelay: 2x}}]}",
        "spec.rules[0].delay.fixedDelay",
        "should match",
    ),
    (
        Kind::Fi,
        "{targetRefs: [{kind: Service, name: pay}], rules: [{abort: {httpStatus: 700}}]}",
        "spec.rules[0].abort.httpStatus",
        "less than or equal to 599",
    ),
];

/// [`BAD`] plus, generated: bad ports (numbers and strings) in each place a port goes, and
/// bad patterns in each principal/namespace list.
fn bad_cases() -> Vec<(Kind, String, String, &'static str)> {
    let mut cases: Vec<(Kind, String, String, &'static str)> = BAD
        .iter()
        .map(|(kind, spec, field, fragment)| {
            (*kind, (*spec).to_owned(), (*field).to_owned(), *fragment)
        })
        .collect();
    for list in ["ports", "notPorts"] {
        let field = format!("spec.rules[0].to[0].operation.{list}[1]");
        for (port, fragment) in [
            ("0", "greater than or equal to 1"),
            ("-1", "greater than or equal to 1"),
            ("65536", "less than or equal to 65535"),
            ("\"0\"", "should match"),
            ("\"65536\"", "should match"),
            ("\"99999\"", "should match"),
            ("\"\"", "should match"),
            ("\"80 443\"", "should match"),
        ] {
            let spec = format!("{{rules: [{{to: [{{operation: {{{list}: [80, {port}]}}}}]}}]}}");
            cases.push((Kind::Ap, spec, field.clone(), fragment));
        }
    }
    for list in ["principals", "notPrincipals", "namespaces", "notNamespaces"] {
        let field = format!("spec.rules[0].from[0].source.{list}[1]");
        let principal = list.ends_with("rincipals");
        let mut values = vec!["\"\"", "\"a*b\"", "\"**\"", "\"*a*\"", "\"a**\""];
        if principal {
            values.extend(["\"spiffe://\"", "\"spiffe://a*b\"", "\"spiffe://**\""]);
        }
        for value in values {
            let spec = format!("{{rules: [{{from: [{{source: {{{list}: [a, {value}]}}}}]}}]}}");
            cases.push((Kind::Ap, spec, field.clone(), "should match"));
        }
    }
    for list in ["values", "notValues"] {
        let field = format!("spec.rules[0].when[0].{list}");
        let fragment = if list == "values" {
            "when[].values of key destination.port must be ports"
        } else {
            "when[].notValues of key destination.port must be ports"
        };
        for port in [
            "0",
            "-1",
            "65536",
            "\"0\"",
            "\"65536\"",
            "\"\"",
            "\"80 443\"",
        ] {
            let spec =
                format!("{{rules: [{{when: [{{key: destination.port, {list}: [80, {port}]}}]}}]}}");
            cases.push((Kind::Ap, spec, field.clone(), fragment));
        }
    }
    cases
}

/// Fields weft does not know: weft rejects them (a misspelt field silently dropped would
/// widen a policy) and server-side apply refuses them ("field not declared in schema").
const UNKNOWN: &[(Kind, &str, &str)] = &[
    (Kind::Ap, "{actions: DENY}", ".spec.actions"),
    (
        Kind::Ap,
        "{rules: [{from: [{source: {principal: [a/ns/b/sa/c]}}]}]}",
        ".spec.rules[0].from[0].source.principal",
    ),
    (
        Kind::Ap,
        "{selector: {matchExpressions: []}}",
        ".spec.selector.matchExpressions",
    ),
    (
        Kind::Ap,
        "{rules: [{from: [{source: {namespaces: [a]}, extra: 1}]}]}",
        ".spec.rules[0].from[0].extra",
    ),
    (
        Kind::Pa,
        "{mtls: {mode: STRICT, extra: 1}}",
        ".spec.mtls.extra",
    ),
    (
        Kind::Dp,
        "{targetRefs: [{kind: Service, name: pay}], connectionPool: {tcp: {maxConnection: 1}}}",
        ".spec.connectionPool.tcp.maxConnection",
    ),
    (
        Kind::Fi,
        "{targetRefs: [{kind: Service, name: pay}], rules: [{abort: {httpStatus: 500}, percent: 5}]}",
        ".spec.rules[0].percent",
    ),
];

/// Where the schema is deliberately stricter than weft: (kind, spec, field, fragment). weft
/// accepts these; the server refuses them.
fn stricter() -> Vec<(Kind, String, &'static str, &'static str)> {
    let rules = ["{}"; 33].join(", ");
    vec![
        // The CEL cost budget needs bounded lists.
        (
            Kind::Ap,
            format!("{{rules: [{rules}]}}"),
            "spec.rules",
            "must have at most 32 items",
        ),
        (
            Kind::Ap,
            format!(
                "{{rules: [{{when: [{}]}}]}}",
                ["{key: source.ip, values: [10.0.0.1]}"; 9].join(", ")
            ),
            "spec.rules[0].when",
            "must have at most 8 items",
        ),
        // The server's CIDR library refuses IPv4-mapped IPv6 addresses and prefixes with
        // leading zeros, which weft's parser takes.
        (
            Kind::Ap,
            r#"{rules: [{from: [{source: {ipBlocks: ["::ffff:10.0.0.0/104"]}}]}]}"#.to_owned(),
            "spec.rules[0].from[0].source.ipBlocks[0]",
            "ipBlocks[] must be a CIDR",
        ),
        (
            Kind::Ap,
            r#"{rules: [{from: [{source: {ipBlocks: ["10.0.0.0/08"]}}]}]}"#.to_owned(),
            "spec.rules[0].from[0].source.ipBlocks[0]",
            "ipBlocks[] must be a CIDR",
        ),
    ]
}

/// The message of an API error (panics on any other error).
fn api_message(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => status.message.clone(),
        other => panic!("not an API error: {other}"),
    }
}

/// The Table the server prints for `kubectl get` of one object: column names and its row.
async fn printed(
    client: &kube::Client,
    kind: Kind,
    ns: &str,
    name: &str,
) -> (Vec<String>, Vec<Value>) {
    let uri = format!(
        "/apis/{GROUP}/{VERSION}/namespaces/{ns}/{}/{name}",
        kind.plural()
    );
    let request = http::Request::get(uri)
        .header(
            http::header::ACCEPT,
            "application/json;as=Table;v=v1;g=meta.k8s.io",
        )
        .body(Vec::new())
        .expect("request");
    let text = bounded("get Table", client.request_text(request))
        .await
        .expect("Table");
    let table: Value = serde_json::from_str(&text).expect("Table JSON");
    let columns = table["columnDefinitions"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| c["name"].as_str().expect("column name").to_owned())
        .collect();
    let cells = table["rows"][0]["cells"].as_array().expect("row").clone();
    (columns, cells)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crds_validate_weft_kinds_on_a_real_apiserver() {
    if !ApiServer::available() {
        return;
    }
    let server = ApiServer::start_alone();
    let client = server.admin_client().await;
    let rule_messages = install_crds(&client).await;
    let ns = unique("crds");
    apiserver::create_namespace(&client, &ns, &[]).await;

    // The kind is served a moment after the CRD is Established.
    let probe = object(Kind::Pa, "probe", &ns, "");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Err(e) = apply(&client, &probe).await {
        assert!(
            status_code(&e) == Some(404) && tokio::time::Instant::now() < deadline,
            "applying a first PeerAuthentication: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every example of the docs is accepted, by weft and by the server.
    let examples = examples(&ns);
    assert!(
        examples.iter().any(|(origin, _)| origin == "README.md"),
        "no AuthorizationPolicy/PeerAuthentication example found in README.md"
    );
    for (origin, doc) in &examples {
        weft_verdict(doc).unwrap_or_else(|e| panic!("weft rejects the example of {origin}: {e}"));
        apply(&client, doc).await.unwrap_or_else(|e| {
            panic!("the API server refused the example of {origin}: {e}\n{doc}")
        });
    }
    let (origin, readme) = &examples[0];
    assert_eq!(origin, "README.md");
    let name = readme["metadata"]["name"].as_str().expect("name");
    let (columns, cells) = printed(&client, Kind::Ap, &ns, name).await;
    assert_eq!(columns, ["Name", "Action", "Age"]);
    assert_eq!(cells[0], json!(name));
    assert_eq!(cells[1], readme["spec"]["action"]);

    // Good objects: accepted and stored as written (nothing weft knows is pruned).
    for (i, (kind, spec)) in GOOD.iter().enumerate() {
        let obj = object(*kind, &format!("good-{i}"), &ns, spec);
        weft_verdict(&obj).unwrap_or_else(|e| panic!("weft rejects good case {i} {spec}: {e}"));
        let stored = apply(&client, &obj)
            .await
            .unwrap_or_else(|e| panic!("the API server refused good case {i} {spec}: {e}"));
        let stored = serde_json::to_value(&stored).expect("JSON");
        assert_eq!(
            stored.get("spec"),
            obj.get("spec"),
            "good case {i} was not stored as written"
        );
    }
    let strict = GOOD
        .iter()
        .position(|case| *case == (Kind::Pa, "{mtls: {mode: STRICT}}"))
        .expect("a STRICT case");
    let (columns, cells) = printed(&client, Kind::Pa, &ns, &format!("good-{strict}")).await;
    assert_eq!(columns, ["Name", "Mode", "Age"]);
    assert_eq!(cells[1], json!("STRICT"));

    // Bad objects: weft rejects them and the server refuses them with 422, both naming the
    // field.
    let mut seen_messages = BTreeSet::new();
    for (i, (kind, spec, field, fragment)) in bad_cases().iter().enumerate() {
        let obj = object(*kind, &format!("bad-{i}"), &ns, spec);
        let weft_error = match weft_verdict(&obj) {
            Ok(()) => panic!("weft accepts bad case {i} {spec}: fix the case or weft"),
            Err(e) => e,
        };
        assert!(
            weft_error.contains(field),
            "bad case {i} {spec}: weft's error does not name {field}: {weft_error}"
        );
        let err = match create_strict(&client, &obj).await {
            Ok(_) => panic!("the API server accepted bad case {i} {spec} (weft: {weft_error})"),
            Err(e) => e,
        };
        let message = api_message(&err);
        assert_eq!(
            status_code(&err),
            Some(422),
            "bad case {i} {spec}: {message}"
        );
        assert!(
            message.contains(&format!("{field}: ")),
            "bad case {i} {spec}: the server's message does not name {field}: {message}"
        );
        assert!(
            message.contains(fragment),
            "bad case {i} {spec}: the server's message lacks {fragment:?}: {message}"
        );
        // Server-side apply refuses it too, naming the field (a value of the wrong shape
        // fails its typed conversion first, with 500: the API server's own quirk).
        match apply(&client, &obj).await {
            Ok(_) => panic!("server-side apply accepted bad case {i} {spec}"),
            Err(e) => assert!(
                api_message(&e).contains(field),
                "bad case {i} {spec}: server-side apply's error does not name {field}: {e}"
            ),
        }
        seen_messages.extend(
            rule_messages
                .iter()
                .filter(|m| message.contains(m.as_str()))
                .cloned(),
        );
    }
    let untested: Vec<&String> = rule_messages.difference(&seen_messages).collect();
    assert!(
        untested.is_empty(),
        "CEL rules no bad case breaks: {untested:#?}"
    );

    // Unknown fields: weft rejects them, server-side apply refuses them naming the field.
    for (i, (kind, spec, field)) in UNKNOWN.iter().enumerate() {
        let obj = object(*kind, &format!("unknown-{i}"), &ns, spec);
        let weft_error = match weft_verdict(&obj) {
            Ok(()) => panic!("weft accepts unknown-field case {i} {spec}"),
            Err(e) => e,
        };
        assert!(weft_error.contains("unknown field"), "{weft_error}");
        match apply(&client, &obj).await {
            Ok(_) => panic!("the API server accepted unknown-field case {i} {spec}"),
            Err(e) => assert!(
                api_message(&e).contains(&format!("{field}: field not declared in schema")),
                "unknown-field case {i} {spec}: {e}"
            ),
        }
    }

    // Deliberately stricter than weft.
    for (i, (kind, spec, field, fragment)) in stricter().iter().enumerate() {
        let obj = object(*kind, &format!("stricter-{i}"), &ns, spec);
        if let Err(e) = weft_verdict(&obj) {
            panic!("stricter case {i}: weft rejects it too, move it to BAD: {e}");
        }
        match apply(&client, &obj).await {
            Ok(_) => panic!("the API server accepted stricter case {i} {spec}"),
            Err(e) => {
                assert_eq!(status_code(&e), Some(422), "stricter case {i}: {e}");
                let text = api_message(&e);
                assert!(
                    text.contains(&format!("{field}: ")) && text.contains(fragment),
                    "stricter case {i} {spec}: {text}"
                );
            }
        }
    }
}
