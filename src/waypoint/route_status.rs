//! The status of every HTTPRoute attached to a Service, as the Gateway API defines it and
//! as `/config_dump` shows it (`route_status`): per parentRef, `Accepted` (the parent is a
//! Service of the model, with the port or named port the ref gives) and `ResolvedRefs`
//! (every backendRef and mirror names an existing Service port the route may reach), each
//! `false` with the spec's reason and a message when it does not hold. A route the model
//! refused outright (an invalid field) is not here: it is in the source's rejected objects.
//!
//! A route may send to Services of its own namespace, and a consumer route (in a caller's
//! namespace) also to those of its parent's namespace; anything else is `RefNotPermitted`
//! (weft reads no ReferenceGrants yet), and such a backend answers 500.

use serde::Serialize;

use crate::model::http_route_rules::BackendRef;
use crate::model::{HttpRoute, MeshSnapshot, RouteParent};

/// One condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Condition {
    /// Whether it holds.
    pub status: bool,
    /// The Gateway API reason.
    pub reason: &'static str,
    /// For a human.
    pub message: String,
}

impl Condition {
    fn holds(reason: &'static str) -> Condition {
        Condition {
            status: true,
            reason,
            message: String::new(),
        }
    }

    fn fails(reason: &'static str, message: String) -> Condition {
        Condition {
            status: false,
            reason,
            message,
        }
    }
}

/// One parentRef's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParentStatus {
    /// `Service namespace/name[:port|/sectionName]`.
    pub parent: String,
    /// `Accepted`.
    pub accepted: Condition,
    /// `ResolvedRefs`.
    pub resolved_refs: Condition,
}

/// One route's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteStatus {
    /// `namespace/name`.
    pub route: String,
    /// Per parentRef.
    pub parents: Vec<ParentStatus>,
}

/// Whether a route in `route_namespace`, attached to a parent in `parent_namespace`, may
/// send to a backend in `backend_namespace`.
pub fn backend_permitted(
    route_namespace: &str,
    parent_namespace: &str,
    backend_namespace: &str,
) -> bool {
    backend_namespace == route_namespace || backend_namespace == parent_namespace
}

/// The status of every route in `snapshot`.
pub fn route_statuses(snapshot: &MeshSnapshot) -> Vec<RouteStatus> {
    snapshot
        .http_routes()
        .map(|route| RouteStatus {
            route: format!("{}/{}", route.namespace, route.name),
            parents: route
                .parents
                .iter()
                .map(|parent| parent_status(snapshot, route, parent))
                .collect(),
        })
        .collect()
}

fn parent_status(snapshot: &MeshSnapshot, route: &HttpRoute, parent: &RouteParent) -> ParentStatus {
    let mut label = format!("{} {}/{}", parent.kind, parent.namespace, parent.name);
    if let Some(port) = parent.port {
        label.push_str(&format!(":{port}"));
    }
    if let Some(section) = &parent.section_name {
        label.push_str(&format!("/{section}"));
    }
    let accepted = accepted(snapshot, parent);
    ParentStatus {
        parent: label,
        resolved_refs: resolved_refs(snapshot, route, &parent.namespace),
        accepted,
    }
}

fn accepted(snapshot: &MeshSnapshot, parent: &RouteParent) -> Condition {
    if parent.kind != "Service" {
        return Condition::fails(
            "NoMatchingParent",
            format!(
                "weft attaches routes to Services (GAMMA), not to a {}",
                parent.kind
            ),
        );
    }
    let Some(service) = snapshot.service(&parent.namespace, &parent.name) else {
        return Condition::fails(
            "NoMatchingParent",
            format!(
                "Service {}/{} does not exist (the route attaches when it appears)",
                parent.namespace, parent.name
            ),
        );
    };
    if let Some(port) = parent.port {
        if service.port(port).is_none() {
            return Condition::fails(
                "NoMatchingParent",
                format!(
                    "Service {}/{} has no port {port}",
                    parent.namespace, parent.name
                ),
            );
        }
    }
    if let Some(section) = &parent.section_name {
        if !service
            .ports
            .iter()
            .any(|p| p.name.as_ref() == Some(section))
        {
            return Condition::fails(
                "NoMatchingParent",
                format!(
                    "Service {}/{} has no port named {section:?}",
                    parent.namespace, parent.name
                ),
            );
        }
    }
    Condition::holds("Accepted")
}

fn resolved_refs(snapshot: &MeshSnapshot, route: &HttpRoute, parent_namespace: &str) -> Condition {
    for (i, rule) in route.rules.iter().enumerate() {
        let mut refs: Vec<(String, BackendRef)> = Vec::new();
        for (j, b) in rule.backend_refs.iter().enumerate() {
            refs.push((
                format!("spec.rules[{i}].backendRefs[{j}]"),
                BackendRef {
                    group: b.group.clone(),
                    kind: b.kind.clone(),
                    name: b.name.clone(),
                    namespace: b.namespace.clone(),
                    port: b.port,
                },
            ));
            for (k, f) in b.filters.iter().enumerate() {
                if let Some(m) = &f.request_mirror {
                    refs.push((format!("spec.rules[{i}].backendRefs[{j}].filters[{k}].requestMirror.backendRef"), m.backend_ref.clone()));
                }
            }
        }
        for (k, f) in rule.filters.iter().enumerate() {
            if let Some(m) = &f.request_mirror {
                refs.push((
                    format!("spec.rules[{i}].filters[{k}].requestMirror.backendRef"),
                    m.backend_ref.clone(),
                ));
            }
        }
        for (field, backend) in refs {
            let namespace = backend.namespace.as_deref().unwrap_or(&route.namespace);
            if !backend_permitted(&route.namespace, parent_namespace, namespace) {
                return Condition::fails(
                    "RefNotPermitted",
                    format!("{field}: Service {namespace}/{} is in another namespace than the route's and its parent's (ReferenceGrants are not read yet); requests to it get 500", backend.name),
                );
            }
            let Some(service) = snapshot.service(namespace, &backend.name) else {
                return Condition::fails(
                    "BackendNotFound",
                    format!(
                        "{field}: Service {namespace}/{} does not exist; requests to it get 500",
                        backend.name
                    ),
                );
            };
            let port = backend.port.and_then(|p| u16::try_from(p).ok());
            if port.is_none_or(|p| service.port(p).is_none()) {
                return Condition::fails(
                    "BackendNotFound",
                    format!(
                        "{field}: Service {namespace}/{} has no port {}; requests to it get 500",
                        backend.name,
                        backend.port.unwrap_or_default()
                    ),
                );
            }
        }
    }
    Condition::holds("ResolvedRefs")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::translate::parse_and_build;

    #[test]
    fn parents_and_backends_are_checked_with_the_spec_reasons() {
        let yaml = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: secret, namespace: other}
spec: {clusterIP: 10.96.0.20, ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: good, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules: [{backendRefs: [{name: echo, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: missing-backend, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, sectionName: grpc}]
  rules: [{backendRefs: [{name: nope, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cross, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: secret, namespace: other, port: 80}}}]
    backendRefs: [{name: echo, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: consumer, namespace: other}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, namespace: shop}]
  rules: [{backendRefs: [{name: echo, namespace: shop, port: 80}]}]
"#;
        let snapshot = parse_and_build(yaml).unwrap();
        let statuses = route_statuses(&snapshot);
        let of = |name: &str| statuses.iter().find(|s| s.route == name).unwrap().parents[0].clone();
        let good = of("shop/good");
        assert!(
            good.accepted.status && good.resolved_refs.status,
            "{good:?}"
        );
        let missing = of("shop/missing-backend");
        assert_eq!(
            (missing.accepted.status, missing.accepted.reason),
            (false, "NoMatchingParent")
        );
        assert!(missing.accepted.message.contains("\"grpc\""), "{missing:?}");
        assert_eq!(missing.resolved_refs.reason, "BackendNotFound");
        let cross = of("shop/cross");
        assert_eq!(cross.resolved_refs.reason, "RefNotPermitted", "{cross:?}");
        assert!(
            cross.resolved_refs.message.contains("requestMirror"),
            "{cross:?}"
        );
        let consumer = of("other/consumer");
        assert!(
            consumer.resolved_refs.status,
            "a consumer route may send to its parent's namespace: {consumer:?}"
        );
    }
}
