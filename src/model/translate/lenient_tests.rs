//! Lenient-build tests: one bad object is left out with its error and the rest is built, and
//! a rejected object leaves no trace in what is built (a rejected security policy fails
//! closed instead); the strict build of the same input fails whole.

use std::net::IpAddr;

use crate::model::{
    build, build_lenient, parse_documents, parse_object, MeshSnapshot, ObjectRef, Rejected,
};
use crate::policy::{ConnectionAttrs, MtlsMode};

const SHOP: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {weft.dev/dataplane-mode: ambient}}\n";

fn pod(name: &str, extra: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop}}\n{extra}\n")
}

fn pod_with_uid(name: &str, uid: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, uid: {uid}}}\n")
}

fn service(name: &str, vip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec: {{clusterIP: {vip}, ports: [{{port: 80}}]}}\n"
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Builds `docs` leniently; asserts the strict build of the same input fails (whole-input
/// semantics) unless nothing is rejected, in which case both agree.
fn lenient(docs: &[String]) -> (MeshSnapshot, Vec<Rejected>) {
    let objects = parse_documents(&docs.join("---\n")).unwrap();
    let (snapshot, rejected) = build_lenient(&objects);
    match build(&objects) {
        Ok(strict) => {
            assert!(rejected.is_empty(), "strict build accepted {rejected:?}");
            assert_eq!(strict, snapshot);
        }
        Err(e) => {
            assert!(
                !rejected.is_empty(),
                "strict build failed ({e}), lenient rejected nothing"
            );
            // The strict error is the first lenient rejection.
            assert_eq!(e.to_string(), rejected[0].error.to_string());
        }
    }
    (snapshot, rejected)
}

/// The one rejection: its object and an error mentioning every fragment.
#[track_caller]
fn only_rejection(rejected: &[Rejected], object: &str, fragments: &[&str]) {
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].object.to_string(), object);
    let err = rejected[0].error.to_string();
    for fragment in fragments {
        assert!(err.contains(fragment), "{err:?} lacks {fragment:?}");
    }
    assert_eq!(rejected[0].error.object(), Some(&rejected[0].object));
}

#[test]
fn valid_input_builds_the_same_in_both_modes() {
    let (snapshot, rejected) = lenient(&[
        SHOP.to_owned(),
        pod("a", "status: {podIP: 10.0.0.1}"),
        service("web", "10.96.0.1"),
    ]);
    assert!(rejected.is_empty());
    assert_eq!(snapshot.workloads().count(), 1);
}

#[test]
fn one_invalid_object_is_left_out_and_the_rest_built() {
    let (snapshot, rejected) = lenient(&[
        SHOP.to_owned(),
        pod("a", "status: {podIP: 10.0.0.1}"),
        pod("bad", "status: {podIP: 10.0.0.300}"),
        pod("c", "status: {podIP: 10.0.0.3}"),
        service("web", "10.96.0.1"),
    ]);
    only_rejection(
        &rejected,
        "Pod shop/bad",
        &["document 3", "status.podIP", "\"10.0.0.300\" is not an IP"],
    );
    assert_eq!(rejected[0].document, Some(3));
    let names: Vec<&str> = snapshot.workloads().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["a", "c"]);
    assert!(snapshot.workload_by_ip(ip("10.0.0.3")).unwrap().enrolled);
    assert!(snapshot.service("shop", "web").is_some());
}

#[test]
fn duplicate_name_rejects_the_later_object_only() {
    let (snapshot, rejected) = lenient(&[
        SHOP.to_owned(),
        pod("a", "status: {podIP: 10.0.0.1}"),
        pod("a", "status: {podIP: 10.0.0.2}"),
    ]);
    only_rejection(
        &rejected,
        "Pod shop/a",
        &[
            "document 3",
            "metadata.name",
            "already defined by document 2",
        ],
    );
    assert_eq!(snapshot.workloads().count(), 1);
    assert!(snapshot.workload_by_ip(ip("10.0.0.1")).is_some());
    assert!(snapshot.workload_by_ip(ip("10.0.0.2")).is_none());
}

#[test]
fn shared_pod_ip_rejects_the_later_pod_and_leaves_no_trace_of_it() {
    let (snapshot, rejected) = lenient(&[
        SHOP.to_owned(),
        pod("a", "status: {podIP: 10.0.0.1}"),
        // Its first IP is free, its second is a's: the whole pod is left out.
        pod("b", "status: {podIPs: [{ip: 10.0.0.2}, {ip: 10.0.0.1}]}"),
        // b's free IP was not taken by b: c may have it.
        pod("c", "status: {podIP: 10.0.0.2}"),
    ]);
    only_rejection(
        &rejected,
        "Pod shop/b",
        &["status.podIPs[1].ip", "Pod shop/a (document 2)"],
    );
    assert_eq!(snapshot.workload_by_ip(ip("10.0.0.1")).unwrap().name, "a");
    assert_eq!(snapshot.workload_by_ip(ip("10.0.0.2")).unwrap().name, "c");
}

#[test]
fn a_rejected_object_claims_neither_its_name_nor_its_uid() {
    let (snapshot, rejected) = lenient(&[
        SHOP.to_owned(),
        pod_with_uid("a", "u1"),
        // Rejected for its uid: the name b stays free for the next object.
        pod_with_uid("b", "u1"),
        pod_with_uid("b", "u2"),
    ]);
    only_rejection(
        &rejected,
        "Pod shop/b",
        &[
            "document 3",
            "metadata.uid",
            "\"u1\" is already used by Pod shop/a",
        ],
    );
    assert_eq!(snapshot.workload_by_uid("u2").unwrap().name, "b");
    assert_eq!(snapshot.workload_by_uid("u1").unwrap().name, "a");
}

#[test]
fn vip_conflicts_reject_the_offending_service_only() {
    let (snapshot, rejected) = lenient(&[
        SHOP.to_owned(),
        pod("p", "status: {podIP: 10.0.0.9}"),
        service("a", "10.96.0.1"),
        service("b", "10.96.0.1"),
        service("c", "10.0.0.9"),
        service("d", "10.96.0.4"),
        // Its second cluster IP is a's: e is left out whole and 10.96.0.5 stays free.
        "apiVersion: v1\nkind: Service\nmetadata: {name: e, namespace: shop}\n\
         spec: {clusterIPs: [10.96.0.5, 10.96.0.1]}\n"
            .to_owned(),
        service("f", "10.96.0.5"),
    ]);
    assert_eq!(rejected.len(), 3, "{rejected:?}");
    assert_eq!(rejected[2].object.to_string(), "Service shop/e");
    assert_eq!(rejected[0].object.to_string(), "Service shop/b");
    assert!(rejected[0]
        .error
        .to_string()
        .contains("already the cluster IP of Service shop/a (document 3)"));
    assert_eq!(rejected[1].object.to_string(), "Service shop/c");
    assert!(rejected[1]
        .error
        .to_string()
        .contains("is the IP of Pod shop/p (document 2)"));
    let names: Vec<&str> = snapshot.services().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a", "d", "f"]);
    assert_eq!(snapshot.service_by_vip(ip("10.96.0.1")).unwrap().name, "a");
    assert!(snapshot.service_by_vip(ip("10.0.0.9")).is_none());
}

#[test]
fn pod_in_an_undeclared_namespace_rejects_that_pod_only() {
    let elsewhere =
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x, namespace: nowhere}\nstatus: {podIP: 10.0.0.5}\n";
    let (snapshot, rejected) = lenient(&[
        SHOP.to_owned(),
        elsewhere.to_owned(),
        pod("a", "status: {podIP: 10.0.0.1}"),
    ]);
    only_rejection(
        &rejected,
        "Pod nowhere/x",
        &["metadata.namespace", "\"nowhere\" is not declared"],
    );
    assert!(snapshot.workload_by_ip(ip("10.0.0.1")).is_some());
    assert!(snapshot.workload_by_ip(ip("10.0.0.5")).is_none());
}

#[test]
fn what_depends_on_a_rejected_object_is_rejected_saying_why() {
    let bad_namespace =
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {\"bad key\": x}}\n";
    let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}\n\
                 endpoints: [{addresses: [10.1.0.1]}]\n";
    let bad_service =
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {clusterIP: 127.0.0.1}\n";
    let (snapshot, rejected) = lenient(&[
        bad_namespace.to_owned(),
        pod("a", ""),
        bad_service.to_owned(),
        slice.to_owned(),
    ]);
    let got: Vec<(String, String)> = rejected
        .iter()
        .map(|r| (r.object.to_string(), r.error.to_string()))
        .collect();
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[0].0, "Namespace shop");
    assert_eq!(got[1].0, "Pod shop/a");
    assert!(
        got[1].1.contains("Namespace \"shop\" was rejected"),
        "{}",
        got[1].1
    );
    assert_eq!(got[2].0, "Service default/web");
    assert!(got[2].1.contains("loopback"), "{}", got[2].1);
    assert_eq!(got[3].0, "EndpointSlice default/web-1");
    assert!(
        got[3].1.contains("Service default/web was rejected"),
        "{}",
        got[3].1
    );
    assert_eq!(snapshot, MeshSnapshot::empty());
}

#[test]
fn objects_without_a_file_are_named_without_a_document() {
    let value = serde_yaml::from_str(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: default}\nstatus: {podIP: nope}\n",
    )
    .unwrap();
    let parsed = parse_object(None, value).unwrap();
    assert_eq!(
        parsed.object_ref(),
        ObjectRef::namespaced("Pod", Some("default"), Some("p"))
    );
    let (snapshot, rejected) = build_lenient(&[parsed]);
    assert_eq!(snapshot.workloads().count(), 0);
    assert_eq!(
        rejected[0].error.to_string(),
        "Pod default/p: status.podIP: \"nope\" is not an IP address"
    );
    assert_eq!(rejected[0].document, None);

    let wrong_type = serde_yaml::from_str(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {hostNetwork: \"yes\"}\n",
    )
    .unwrap();
    let err = parse_object(None, wrong_type).unwrap_err().to_string();
    assert!(
        err.starts_with("Pod default/p: spec.hostNetwork: invalid type"),
        "{err}"
    );
}

fn attrs() -> ConnectionAttrs<'static> {
    ConnectionAttrs {
        source_principal: Some("cluster.local/ns/shop/sa/default"),
        source_namespace: Some("shop"),
        source_ip: ip("10.0.0.7"),
        destination_ip: ip("10.0.0.1"),
        destination_port: 8080,
    }
}

const OTHER: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n";

fn other_pod() -> String {
    "apiVersion: v1\nkind: Pod\nmetadata: {name: o, namespace: other}\nstatus: {podIP: 10.0.1.1}\n"
        .to_owned()
}

#[test]
fn a_rejected_authorization_policy_denies_its_namespace_instead_of_allowing() {
    // A DENY policy with a typo: left out, it would allow what it was written to deny.
    let broken = "apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\n\
                  metadata: {name: deny-all, namespace: shop}\n\
                  spec: {action: DENY, rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]}\n";
    let (snapshot, rejected) = lenient(&[
        SHOP.to_owned(),
        OTHER.to_owned(),
        pod("a", "status: {podIP: 10.0.0.1}"),
        other_pod(),
        broken.to_owned(),
    ]);
    only_rejection(
        &rejected,
        "AuthorizationPolicy shop/deny-all",
        &["ipBlocks[0]"],
    );
    let a = snapshot.workload_by_ip(ip("10.0.0.1")).unwrap();
    let verdict = snapshot.authorize(a, &attrs());
    assert!(!verdict.allowed, "{verdict:?}");
    assert!(
        verdict.reason.contains("shop/deny-all (rejected)"),
        "{}",
        verdict.reason
    );
    let stand_in = snapshot.authorization_policies().next().unwrap();
    assert!(
        stand_in.warnings[0].contains("10.0.0.0/33"),
        "{:?}",
        stand_in.warnings
    );
    // Other namespaces are not affected.
    let o = snapshot.workload_by_ip(ip("10.0.1.1")).unwrap();
    assert!(snapshot.authorize(o, &attrs()).allowed);

    // In the root namespace it stands for the whole mesh.
    let root = "apiVersion: v1\nkind: Namespace\nmetadata: {name: weft-system}\n";
    let broken_root = broken.replace("namespace: shop", "namespace: weft-system");
    let (snapshot, _) = lenient(&[OTHER.to_owned(), root.to_owned(), other_pod(), broken_root]);
    let o = snapshot.workload_by_ip(ip("10.0.1.1")).unwrap();
    assert!(!snapshot.authorize(o, &attrs()).allowed);
}

#[test]
fn a_rejected_peer_authentication_holds_its_namespace_strict() {
    let permissive = "apiVersion: weft.dev/v1alpha1\nkind: PeerAuthentication\n\
                      metadata: {name: open, namespace: shop}\n\
                      spec: {selector: {matchLabels: {app: a}}, mtls: {mode: PERMISSIVE}}\n";
    let broken = "apiVersion: weft.dev/v1alpha1\nkind: PeerAuthentication\n\
                  metadata: {name: strict, namespace: shop}\nspec: {mtls: {mode: STRICTT}}\n";
    let labelled =
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: shop, labels: {app: a}}\n\
                    status: {podIP: 10.0.0.1}\n";
    let (snapshot, rejected) = lenient(&[
        SHOP.to_owned(),
        OTHER.to_owned(),
        labelled.to_owned(),
        other_pod(),
        permissive.to_owned(),
        broken.to_owned(),
    ]);
    only_rejection(
        &rejected,
        "PeerAuthentication shop/strict",
        &["spec.mtls.mode"],
    );
    // Even the workload a valid PERMISSIVE policy selects: the rejected one might have been
    // meant to override it.
    let a = snapshot.workload_by_ip(ip("10.0.0.1")).unwrap();
    assert_eq!(snapshot.mtls_mode(a), MtlsMode::Strict);
    let o = snapshot.workload_by_ip(ip("10.0.1.1")).unwrap();
    assert_eq!(snapshot.mtls_mode(o), MtlsMode::Permissive);

    let root = "apiVersion: v1\nkind: Namespace\nmetadata: {name: weft-system}\n";
    let broken_root = broken.replace("namespace: shop", "namespace: weft-system");
    let (snapshot, _) = lenient(&[OTHER.to_owned(), root.to_owned(), other_pod(), broken_root]);
    let o = snapshot.workload_by_ip(ip("10.0.1.1")).unwrap();
    assert_eq!(snapshot.mtls_mode(o), MtlsMode::Strict);
}
