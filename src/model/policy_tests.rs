//! Unit tests of the policy engine, driven through the YAML translation as operators write
//! policies (here, in the model, since they need the translation: the policy module sits
//! below the model).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;

use super::{parse_and_build, MeshSnapshot, Workload};
use crate::policy::*;

/// Namespace `shop` with three pods, plus a pod in `other` and one in the root namespace.
const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Namespace
metadata: {name: weft-system}
---
apiVersion: v1
kind: Pod
metadata: {name: order, namespace: shop, labels: {app: order}}
spec: {serviceAccountName: order}
status: {podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: payment, namespace: shop, labels: {app: payment}}
spec: {serviceAccountName: payment}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: inventory, namespace: shop, labels: {app: inventory}}
spec: {serviceAccountName: inventory}
status: {podIP: 10.0.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: other, labels: {app: payment}}
spec: {serviceAccountName: web}
status: {podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: ctl, namespace: weft-system}
status: {podIP: 10.0.2.1}
"#;

fn snap(policies: &str) -> MeshSnapshot {
    parse_and_build(&format!("{MESH}---\n{policies}")).unwrap()
}

fn workload<'a>(snap: &'a MeshSnapshot, ns: &str, name: &str) -> &'a Workload {
    snap.workloads()
        .find(|w| w.namespace == ns && w.name == name)
        .unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A connection from pod `src_ns/src` (mTLS, its service account's principal) to `dst:port`.
fn from_pod(snap: &MeshSnapshot, src: (&str, &str), dst: (&str, &str), port: u16) -> Verdict {
    let s = workload(snap, src.0, src.1);
    let principal = format!("cluster.local/ns/{}/sa/{}", s.namespace, s.service_account);
    let d = workload(snap, dst.0, dst.1);
    let attrs = ConnectionAttrs {
        source_principal: Some(&principal),
        source_namespace: None,
        source_ip: s.ips[0],
        destination_ip: d.ips[0],
        destination_port: port,
    };
    snap.authorize(d, &attrs)
}

/// A connection with explicit attributes to `dst_ns/dst`.
fn raw(
    snap: &MeshSnapshot,
    principal: Option<&str>,
    src_ip: &str,
    dst: (&str, &str),
    port: u16,
) -> Verdict {
    let d = workload(snap, dst.0, dst.1);
    let attrs = ConnectionAttrs {
        source_principal: principal,
        source_namespace: None,
        source_ip: ip(src_ip),
        destination_ip: d.ips[0],
        destination_port: port,
    };
    snap.authorize(d, &attrs)
}

const ORDER: (&str, &str) = ("shop", "order");
const PAYMENT: (&str, &str) = ("shop", "payment");
const INVENTORY: (&str, &str) = ("shop", "inventory");
const WEB: (&str, &str) = ("other", "web");
const CTL: (&str, &str) = ("weft-system", "ctl");

const ALLOW_ORDER_TO_PAYMENT: &str = r#"
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: payment-from-order, namespace: shop}
spec:
  selector: {matchLabels: {app: payment}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/order"]}}]
    to: [{operation: {ports: ["8080"]}}]
"#;

#[test]
fn order_payment_inventory() {
    let s = snap(ALLOW_ORDER_TO_PAYMENT);
    let ok = from_pod(&s, ORDER, PAYMENT, 8080);
    assert!(ok.allowed, "{ok:?}");
    assert_eq!(ok.policy.as_deref(), Some("shop/payment-from-order"));
    assert!(ok.dry_run.is_empty());

    let wrong_port = from_pod(&s, ORDER, PAYMENT, 9090);
    assert!(wrong_port.denied());
    assert_eq!(wrong_port.policy, None);
    assert!(
        wrong_port.reason.contains("no ALLOW policy matched")
            && wrong_port.reason.contains("shop/payment-from-order"),
        "{}",
        wrong_port.reason
    );

    assert!(from_pod(&s, INVENTORY, PAYMENT, 8080).denied());
    // Plaintext: no principal.
    assert!(raw(&s, None, "10.0.0.1", PAYMENT, 8080).denied());
    // The policy selects only payment: the others have no ALLOW policy in force.
    assert!(from_pod(&s, INVENTORY, ORDER, 8080).allowed);
    assert!(from_pod(&s, ORDER, INVENTORY, 9090).allowed);
    // Selector labels match in other namespaces too, but a non-root policy stays in its own.
    assert!(from_pod(&s, INVENTORY, WEB, 1).allowed);

    let names: Vec<_> = s
        .policies_for(workload(&s, "shop", "payment"))
        .iter()
        .map(|p| p.key())
        .collect();
    assert_eq!(names, ["shop/payment-from-order"]);
    assert!(s.policies_for(workload(&s, "shop", "order")).is_empty());
}

#[test]
fn no_policies_allow_everything() {
    let s = snap("");
    let v = from_pod(&s, ORDER, PAYMENT, 1);
    assert!(v.allowed);
    assert_eq!(v.policy, None);
    assert!(matches!(v.reason, Cow::Borrowed(_)));
    assert!(raw(&s, None, "192.0.2.1", INVENTORY, 22).allowed);
    assert_eq!(s.authorization_policies().count(), 0);
}

#[test]
fn deny_overrides_namespace_wide_allow() {
    let s = snap(
        r#"
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: allow-shop, namespace: shop}
spec:
  rules: [{from: [{source: {namespaces: [shop]}}]}]
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-inventory, namespace: shop}
spec:
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/inventory]}}]}]
"#,
    );
    assert!(from_pod(&s, ORDER, PAYMENT, 80).allowed);
    let v = from_pod(&s, INVENTORY, PAYMENT, 80);
    assert!(v.denied());
    assert_eq!(v.policy.as_deref(), Some("shop/deny-inventory"));
    assert_eq!(
        v.reason,
        "denied by DENY policy shop/deny-inventory (rule 0 matched)"
    );
    // Not from shop: the namespace-wide ALLOW does not match.
    assert!(from_pod(&s, WEB, PAYMENT, 80).denied());
}

#[test]
fn mesh_wide_deny_applies_everywhere() {
    let s = snap(
        r#"
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-telnet, namespace: weft-system}
spec:
  action: DENY
  rules: [{to: [{operation: {ports: [23]}}]}]
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: payment-anywhere, namespace: weft-system}
spec:
  selector: {matchLabels: {app: payment}}
  action: DENY
  rules: [{to: [{operation: {ports: ["7"]}}]}]
"#,
    );
    for dst in [ORDER, PAYMENT, INVENTORY, WEB, CTL] {
        let v = from_pod(&s, ORDER, dst, 23);
        assert!(v.denied(), "{dst:?}");
        assert_eq!(v.policy.as_deref(), Some("weft-system/no-telnet"));
        assert!(from_pod(&s, ORDER, dst, 24).allowed);
    }
    // A selector in the root namespace selects matching workloads in every namespace.
    assert!(from_pod(&s, ORDER, PAYMENT, 7).denied());
    assert!(from_pod(&s, ORDER, WEB, 7).denied());
    assert!(from_pod(&s, ORDER, INVENTORY, 7).allowed);
    assert_eq!(s.policies_for(workload(&s, "other", "web")).len(), 2);
    assert_eq!(s.policies_for(workload(&s, "shop", "order")).len(), 1);
}

#[test]
fn wildcard_principals_and_namespaces() {
    let s = snap(
        r#"
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  selector: {matchLabels: {app: payment}}
  rules:
  - from: [{source: {principals: ["*/sa/order"]}}]
  - from: [{source: {principals: ["spiffe://cluster.local/ns/other/*"]}}]
    to: [{operation: {ports: ["1"]}}]
  - from: [{source: {principals: ["*"]}}]
    to: [{operation: {ports: ["2"]}}]
  - from: [{source: {namespaces: ["oth*"]}}]
    to: [{operation: {ports: ["3"]}}]
  - from: [{source: {namespaces: ["*"]}}]
    to: [{operation: {ports: ["4"]}}]
"#,
    );
    // Suffix.
    assert!(from_pod(&s, ORDER, PAYMENT, 9).allowed);
    assert!(raw(&s, Some("td/ns/x/sa/order"), "1.1.1.1", PAYMENT, 9).allowed);
    assert!(from_pod(&s, INVENTORY, PAYMENT, 9).denied());
    // Prefix (written with spiffe://).
    assert!(from_pod(&s, WEB, PAYMENT, 1).allowed);
    assert!(from_pod(&s, INVENTORY, PAYMENT, 1).denied());
    // "*": any authenticated peer; never plaintext.
    assert!(from_pod(&s, INVENTORY, PAYMENT, 2).allowed);
    assert!(raw(&s, None, "10.0.0.3", PAYMENT, 2).denied());
    // Namespaces (derived from the principal).
    assert!(from_pod(&s, WEB, PAYMENT, 3).allowed);
    assert!(from_pod(&s, INVENTORY, PAYMENT, 3).denied());
    assert!(from_pod(&s, INVENTORY, PAYMENT, 4).allowed);
    assert!(raw(&s, None, "10.0.0.3", PAYMENT, 4).denied());
    // An explicit source namespace wins over the principal's.
    let d = workload(&s, "shop", "payment");
    let attrs = ConnectionAttrs {
        source_principal: Some("cluster.local/ns/shop/sa/inventory"),
        source_namespace: Some("other"),
        source_ip: ip("10.0.0.3"),
        destination_ip: ip("10.0.0.2"),
        destination_port: 3,
    };
    assert!(s.authorize(d, &attrs).allowed);
}

#[test]
fn negative_fields() {
    let s = snap(
        r#"
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: not-inventory, namespace: shop}
spec:
  selector: {matchLabels: {app: payment}}
  rules:
  - from: [{source: {notPrincipals: ["cluster.local/ns/shop/sa/inventory"], notIpBlocks: ["10.9.0.0/16"]}}]
    to: [{operation: {notPorts: ["22", 23]}}]
"#,
    );
    assert!(from_pod(&s, ORDER, PAYMENT, 80).allowed);
    assert!(from_pod(&s, INVENTORY, PAYMENT, 80).denied());
    assert!(from_pod(&s, ORDER, PAYMENT, 22).denied());
    assert!(from_pod(&s, ORDER, PAYMENT, 23).denied());
    assert!(raw(&s, Some("td/ns/a/sa/b"), "10.9.3.4", PAYMENT, 80).denied());
    assert!(raw(&s, Some("td/ns/a/sa/b"), "10.8.3.4", PAYMENT, 80).allowed);
    // notPrincipals alone does not require a principal.
    assert!(raw(&s, None, "10.8.3.4", PAYMENT, 80).allowed);
}

#[test]
fn ip_blocks_v4_and_v6() {
    let s = snap(
        r#"
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: nets, namespace: shop}
spec:
  selector: {matchLabels: {app: payment}}
  rules:
  - from: [{source: {ipBlocks: ["10.0.0.0/30", "fd00::/64", "192.0.2.7"]}}]
"#,
    );
    assert!(raw(&s, None, "10.0.0.3", PAYMENT, 1).allowed);
    assert!(raw(&s, None, "10.0.0.4", PAYMENT, 1).denied());
    assert!(raw(&s, None, "fd00::abcd", PAYMENT, 1).allowed);
    assert!(raw(&s, None, "fd00:0:0:1::1", PAYMENT, 1).denied());
    assert!(raw(&s, None, "192.0.2.7", PAYMENT, 1).allowed);
    assert!(raw(&s, None, "192.0.2.8", PAYMENT, 1).denied());
    assert!(raw(&s, None, "::ffff:10.0.0.1", PAYMENT, 1).allowed);
}

#[test]
fn when_l4_keys() {
    let s = snap(
        r#"
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: when, namespace: shop}
spec:
  selector: {matchLabels: {app: payment}}
  rules:
  - when:
    - {key: source.ip, values: ["10.0.0.0/24"], notValues: ["10.0.0.3"]}
    - {key: source.namespace, values: [shop]}
    - {key: source.principal, notValues: ["*/sa/inventory"]}
    - {key: destination.ip, values: ["10.0.0.2"]}
    - {key: destination.port, values: ["8080", 8443]}
"#,
    );
    assert!(from_pod(&s, ORDER, PAYMENT, 8080).allowed);
    assert!(from_pod(&s, ORDER, PAYMENT, 8443).allowed);
    assert!(from_pod(&s, ORDER, PAYMENT, 9000).denied());
    assert!(from_pod(&s, INVENTORY, PAYMENT, 8080).denied());
    assert!(
        raw(
            &s,
            Some("cluster.local/ns/shop/sa/x"),
            "10.0.0.9",
            PAYMENT,
            8080
        )
        .allowed
    );
    assert!(raw(
        &s,
        Some("cluster.local/ns/shop/sa/x"),
        "10.0.1.9",
        PAYMENT,
        8080
    )
    .denied());
    assert!(raw(
        &s,
        Some("cluster.local/ns/ext/sa/x"),
        "10.0.0.9",
        PAYMENT,
        8080
    )
    .denied());
    // destination.ip: the connection's, not the workload's.
    let d = workload(&s, "shop", "payment");
    let attrs = ConnectionAttrs {
        source_principal: Some("cluster.local/ns/shop/sa/x"),
        source_namespace: Some("shop"),
        source_ip: ip("10.0.0.9"),
        destination_ip: ip("10.0.0.200"),
        destination_port: 8080,
    };
    assert!(s.authorize(d, &attrs).denied());
    assert!(s
        .authorization_policies()
        .next()
        .unwrap()
        .warnings
        .is_empty());
}

#[test]
fn l7_fields_at_l4() {
    let s = snap(
        r#"
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: allow-paths, namespace: shop}
spec:
  selector: {matchLabels: {app: payment}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/order"]}}]
    to: [{operation: {ports: ["8080"], paths: ["/pay"]}}]
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/order"]}}]
    to: [{operation: {ports: ["9090"]}}]
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-methods, namespace: shop}
spec:
  selector: {matchLabels: {app: inventory}}
  action: DENY
  rules:
  - from: [{source: {requestPrincipals: ["*"]}}]
    to: [{operation: {methods: ["DELETE"]}}]
    when: [{key: "request.headers[x-user]", values: [admin]}]
"#,
    );
    // The ALLOW rule with paths never matches at L4; the plain rule still does.
    assert!(from_pod(&s, ORDER, PAYMENT, 8080).denied());
    assert!(from_pod(&s, ORDER, PAYMENT, 9090).allowed);
    // The DENY rule applies without its L7 parts: it denies everything to inventory.
    let v = from_pod(&s, ORDER, INVENTORY, 80);
    assert!(v.denied());
    assert_eq!(v.policy.as_deref(), Some("shop/deny-methods"));
    assert!(raw(&s, None, "1.2.3.4", INVENTORY, 80).denied());

    let by_name: BTreeMap<&str, &AuthorizationPolicy> = s
        .authorization_policies()
        .map(|p| (p.name.as_str(), &**p))
        .collect();
    let allow = by_name["allow-paths"];
    assert_eq!(allow.rules[0].l7_fields, ["to[0].operation.paths"]);
    assert!(!allow.rules[1].needs_l7());
    assert_eq!(allow.warnings.len(), 1);
    assert!(
        allow.warnings[0].starts_with(
            "rule 0 (spec.rules[0]) uses to[0].operation.paths, which needs L7 (a waypoint)"
        ) && allow.warnings[0].contains("never matches"),
        "{}",
        allow.warnings[0]
    );
    let deny = by_name["deny-methods"];
    assert_eq!(
        deny.rules[0].l7_fields,
        [
            "from[0].source.requestPrincipals",
            "to[0].operation.methods",
            "when[0] (key request.headers[x-user])"
        ]
    );
    assert!(
        deny.warnings[0].contains("can only deny"),
        "{}",
        deny.warnings[0]
    );
    // Kept for the config dump.
    let json = serde_json::to_value(&s).unwrap();
    let dumped = &json["authorization_policies"][0];
    assert_eq!(dumped["name"], "allow-paths");
    assert_eq!(dumped["action"], "ALLOW");
    assert_eq!(
        dumped["rules"][0]["from"][0]["principals"][0],
        "cluster.local/ns/shop/sa/order"
    );
    assert_eq!(dumped["rules"][0]["to"][0]["ports"][0], 8080);
    assert!(dumped["warnings"][0].as_str().unwrap().contains("paths"));
}

#[test]
fn allow_without_rules_denies_and_empty_rule_allows() {
    let deny_all = snap(
        "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\n\
         metadata: {name: deny-all, namespace: shop}\nspec: {}\n",
    );
    let v = from_pod(&deny_all, ORDER, PAYMENT, 80);
    assert!(v.denied());
    assert!(v.reason.contains("shop/deny-all"));
    // No spec at all: the same.
    let no_spec = snap(
        "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\n\
         metadata: {name: deny-all, namespace: shop}\n",
    );
    assert!(from_pod(&no_spec, ORDER, PAYMENT, 80).denied());
    let allow_all = snap(
        "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\n\
         metadata: {name: allow-all, namespace: shop}\nspec: {rules: [{}]}\n",
    );
    assert!(raw(&allow_all, None, "1.2.3.4", PAYMENT, 80).allowed);
    // A DENY without rules matches nothing.
    let deny_nothing = snap(
        "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\n\
         metadata: {name: d, namespace: shop}\nspec: {action: DENY, rules: []}\n",
    );
    assert!(from_pod(&deny_nothing, ORDER, PAYMENT, 80).allowed);
}

#[test]
fn dry_run_reports_but_never_enforces() {
    let s = snap(
        r#"
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: deny-order
  namespace: shop
  annotations: {weft.dev/dry-run: "true"}
spec:
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/order"]}}]}]
---
apiVersion: weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: allow-nobody
  namespace: shop
  annotations: {weft.dev/dry-run: "true"}
spec: {}
"#,
    );
    let v = from_pod(&s, ORDER, PAYMENT, 80);
    assert!(v.allowed);
    assert_eq!(v.policy, None);
    let outcomes: Vec<_> = v
        .dry_run
        .iter()
        .map(|o| (&*o.policy, o.would_allow))
        .collect();
    assert_eq!(
        outcomes,
        [("shop/allow-nobody", false), ("shop/deny-order", false)]
    );
    let v = from_pod(&s, INVENTORY, PAYMENT, 80);
    assert!(v.allowed);
    assert_eq!(v.dry_run[1], {
        DryRunOutcome {
            policy: "shop/deny-order".into(),
            would_allow: true,
        }
    });
    assert!(s.authorization_policies().all(|p| p.dry_run));
    assert_eq!(s.policies_for(workload(&s, "shop", "payment")).len(), 2);
    let json = serde_json::to_value(&v).unwrap();
    assert_eq!(json["dry_run"][1]["policy"], "shop/deny-order");
}

#[test]
fn workloads_outside_the_snapshot_are_evaluated_on_the_fly() {
    let s = snap(&format!(
        "{ALLOW_ORDER_TO_PAYMENT}---\napiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\n\
         metadata: {{name: mesh-deny, namespace: weft-system}}\n\
         spec: {{action: DENY, rules: [{{to: [{{operation: {{ports: [\"23\"]}}}}]}}]}}\n"
    ));
    let mut stranger = workload(&s, "shop", "payment").clone();
    stranger.uid = "not-in-the-config".into();
    stranger.name = "payment-new".into();
    let principal = "cluster.local/ns/shop/sa/order";
    let attrs = |port| ConnectionAttrs {
        source_principal: Some(principal),
        source_namespace: None,
        source_ip: ip("10.0.0.1"),
        destination_ip: ip("10.0.0.99"),
        destination_port: port,
    };
    assert!(s.authorize(&stranger, &attrs(8080)).allowed);
    assert!(s.authorize(&stranger, &attrs(9090)).denied());
    assert_eq!(
        s.authorize(&stranger, &attrs(23)).policy.as_deref(),
        Some("weft-system/mesh-deny")
    );
    assert_eq!(s.policies_for(&stranger).len(), 2);
    // Same uid as an indexed workload but relabelled: evaluated from its own labels.
    let mut relabelled = workload(&s, "shop", "payment").clone();
    relabelled.labels.insert("app".into(), "other".into());
    assert!(s.authorize(&relabelled, &attrs(9090)).allowed);
    assert_eq!(s.policies_for(&relabelled).len(), 1);
}

const PA_MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: a}
---
apiVersion: v1
kind: Namespace
metadata: {name: b}
---
apiVersion: v1
kind: Namespace
metadata: {name: c}
---
apiVersion: v1
kind: Pod
metadata: {name: sel, namespace: a, labels: {app: sel}}
---
apiVersion: v1
kind: Pod
metadata: {name: unset, namespace: a, labels: {app: unset}}
---
apiVersion: v1
kind: Pod
metadata: {name: plain, namespace: a}
---
apiVersion: v1
kind: Pod
metadata: {name: x, namespace: b}
---
apiVersion: v1
kind: Pod
metadata: {name: y, namespace: c}
"#;

fn pa(ns: &str, name: &str, selector: Option<&str>, mode: Option<&str>) -> String {
    let mut spec = Vec::new();
    if let Some(app) = selector {
        spec.push(format!("selector: {{matchLabels: {{app: {app}}}}}"));
    }
    if let Some(mode) = mode {
        spec.push(format!("mtls: {{mode: {mode}}}"));
    }
    format!(
        "---\napiVersion: weft.dev/v1alpha1\nkind: PeerAuthentication\n\
         metadata: {{name: {name}, namespace: {ns}}}\nspec: {{{}}}\n",
        spec.join(", ")
    )
}

fn modes(s: &MeshSnapshot) -> Vec<(String, MtlsMode)> {
    s.workloads()
        .map(|w| (w.name.clone(), s.mtls_mode(w)))
        .collect()
}

#[test]
fn peer_authentication_resolution() {
    use MtlsMode::{Permissive as P, Strict as S};
    let none = parse_and_build(PA_MESH).unwrap();
    assert!(modes(&none).iter().all(|(_, m)| *m == P));

    let yaml = [
        PA_MESH.to_owned(),
        pa("weft-system", "mesh", None, Some("STRICT")),
        pa("a", "ns-wide", None, Some("PERMISSIVE")),
        pa("a", "sel", Some("sel"), Some("STRICT")),
        pa("a", "unset", Some("unset"), Some("UNSET")),
        pa("b", "b-unset", None, None),
    ]
    .concat();
    let s = parse_and_build(&yaml).unwrap();
    let got = modes(&s);
    let want = [("sel", S), ("unset", P), ("plain", P), ("x", S), ("y", S)];
    for (name, mode) in want {
        assert!(got.contains(&(name.to_owned(), mode)), "{name}: {got:?}");
    }
    // Without the namespace-wide level, UNSET inherits from the mesh.
    let yaml = [
        PA_MESH.to_owned(),
        pa("weft-system", "mesh", None, Some("STRICT")),
        pa("a", "unset", Some("unset"), Some("UNSET")),
        pa("a", "sel", Some("sel"), Some("PERMISSIVE")),
    ]
    .concat();
    let s = parse_and_build(&yaml).unwrap();
    let got = modes(&s);
    for (name, mode) in [("sel", P), ("unset", S), ("plain", S)] {
        assert!(got.contains(&(name.to_owned(), mode)), "{name}: {got:?}");
    }
    // A workload the snapshot does not list resolves on the fly.
    let mut stranger = workload(&s, "a", "plain").clone();
    stranger.uid = "new".into();
    stranger.labels.insert("app".into(), "sel".into());
    assert_eq!(s.mtls_mode(&stranger), P);
    assert_eq!(s.peer_authentications().count(), 3);
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["peer_authentications"][0]["name"], "sel");
    assert_eq!(json["peer_authentications"][0]["mode"], "PERMISSIVE");
    assert!(json["peer_authentications"][1]["mode"].is_null());
}

#[test]
fn snapshot_equality_and_default() {
    assert_eq!(parse_and_build("").unwrap(), MeshSnapshot::empty());
    assert_eq!(
        PolicyIndex::<Workload>::default().root_namespace(),
        ROOT_NAMESPACE
    );
    let a = snap(ALLOW_ORDER_TO_PAYMENT);
    assert_eq!(a, snap(ALLOW_ORDER_TO_PAYMENT));
    assert_ne!(a, snap(""));
}
