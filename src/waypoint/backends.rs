//! Which backend of a rule a request goes to: a weighted choice among its `backendRefs`
//! (weight 0 sends nothing), and what the waypoint answers when it cannot send: 500 for a
//! rule with no usable backend (none listed, all weights 0, or a backendRef that names no
//! Service or a port it does not have), 503 for a backend Service with no ready endpoint.

use std::sync::Arc;

use http::StatusCode;

use super::route_status::backend_permitted;
use crate::model::http_route_rules::HttpBackendRef;
use crate::model::{MeshSnapshot, Service};

/// A backend the request can go to.
#[derive(Debug, Clone)]
pub struct ResolvedBackend<'a> {
    /// The backendRef as written (its filters apply).
    pub backend_ref: &'a HttpBackendRef,
    /// Its Service.
    pub service: Arc<Service>,
    /// The Service port.
    pub port: u16,
}

/// Why a request gets no backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoBackend {
    /// 500 or 503.
    pub status: StatusCode,
    /// For the access log and the response body.
    pub reason: String,
}

/// Where the route that names a backend lives, and the parent Service being called: which
/// namespaces its backends may be in.
#[derive(Debug, Clone, Copy)]
pub struct RouteScope<'a> {
    /// The route's namespace.
    pub route_namespace: &'a str,
    /// The parent Service's namespace.
    pub parent_namespace: &'a str,
}

/// Picks a backend of `backends` with `roll` uniform in [0, 1): each backend's chance is
/// its weight over the sum of weights.
pub fn choose<'a>(
    snapshot: &MeshSnapshot,
    scope: RouteScope<'_>,
    backends: &'a [HttpBackendRef],
    roll: f64,
) -> Result<ResolvedBackend<'a>, NoBackend> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight())).sum();
    if total == 0 {
        return Err(NoBackend {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            reason: if backends.is_empty() {
                "the matched rule has no backendRefs".into()
            } else {
                "every backendRef of the matched rule has weight 0".into()
            },
        });
    }
    let mut point = (roll.clamp(0.0, 1.0) * total as f64) as u64;
    let chosen = backends
        .iter()
        .find(|b| {
            let w = u64::from(b.weight());
            if point < w {
                true
            } else {
                point -= w;
                false
            }
        })
        .or_else(|| backends.iter().rev().find(|b| b.weight() > 0))
        .ok_or_else(|| NoBackend {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            reason: "no backendRef has weight".into(),
        })?;
    resolve(snapshot, scope, chosen)
}

/// The Service and port a backendRef names, or the 500/503 the spec asks for.
pub fn resolve<'a>(
    snapshot: &MeshSnapshot,
    scope: RouteScope<'_>,
    backend: &'a HttpBackendRef,
) -> Result<ResolvedBackend<'a>, NoBackend> {
    let (service, port) = resolve_service(
        snapshot,
        scope,
        backend.namespace.as_deref(),
        &backend.name,
        backend.port,
    )?;
    Ok(ResolvedBackend {
        backend_ref: backend,
        service,
        port,
    })
}

/// The Service `namespace/name` (namespace defaulting to the route's) and its `port`, for a
/// backendRef or a mirror's: 500 when it is out of scope, missing or has no such port, 503
/// when it has no ready endpoint.
pub fn resolve_service(
    snapshot: &MeshSnapshot,
    scope: RouteScope<'_>,
    namespace: Option<&str>,
    name: &str,
    port: Option<i64>,
) -> Result<(Arc<Service>, u16), NoBackend> {
    let namespace = namespace.unwrap_or(scope.route_namespace);
    let invalid = |reason: String| NoBackend {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        reason,
    };
    if !backend_permitted(scope.route_namespace, scope.parent_namespace, namespace) {
        return Err(invalid(format!(
            "backendRef Service {namespace}/{name} is outside the route's and its parent's namespaces"
        )));
    }
    let service = snapshot.service(namespace, name).ok_or_else(|| {
        invalid(format!(
            "backendRef Service {namespace}/{name} does not exist"
        ))
    })?;
    let port = port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| service.port(*p).is_some())
        .ok_or_else(|| {
            invalid(format!(
                "backendRef Service {namespace}/{name} has no port {}",
                port.unwrap_or_default()
            ))
        })?;
    if service.endpoints.is_empty() {
        return Err(NoBackend {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: format!("Service {namespace}/{name} has no ready endpoint"),
        });
    }
    Ok((service.clone(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::translate::parse_and_build;

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: v1-a, namespace: shop, labels: {app: v1}}
spec: {nodeName: node-1, serviceAccountName: v1}
status: {podIP: 10.1.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: v2-a, namespace: shop, labels: {app: v2}}
spec: {nodeName: node-1, serviceAccountName: v2}
status: {podIP: 10.1.1.2}
---
apiVersion: v1
kind: Service
metadata: {name: v1, namespace: shop}
spec: {clusterIP: 10.96.0.1, selector: {app: v1}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: v2, namespace: shop}
spec: {clusterIP: 10.96.0.2, selector: {app: v2}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: shop}
spec: {clusterIP: 10.96.0.3, selector: {app: none}, ports: [{port: 80}]}
"#;

    const SHOP: RouteScope<'static> = RouteScope {
        route_namespace: "shop",
        parent_namespace: "shop",
    };

    fn backend(name: &str, port: i64, weight: i64) -> HttpBackendRef {
        HttpBackendRef {
            group: None,
            kind: None,
            name: name.into(),
            namespace: None,
            port: Some(port),
            weight: Some(weight),
            filters: Vec::new(),
        }
    }

    #[test]
    fn weights_split_the_rolls_and_zero_gets_nothing() {
        let snapshot = parse_and_build(CLUSTER).unwrap();
        let backends = [
            backend("v1", 80, 90),
            backend("v2", 80, 10),
            backend("empty", 80, 0),
        ];
        let mut counts = std::collections::BTreeMap::new();
        for i in 0..1000 {
            let roll = i as f64 / 1000.0;
            let chosen = choose(&snapshot, SHOP, &backends, roll).unwrap();
            *counts.entry(chosen.service.name.clone()).or_insert(0) += 1;
        }
        assert_eq!(counts.get("v1"), Some(&900));
        assert_eq!(counts.get("v2"), Some(&100));
        assert_eq!(counts.get("empty"), None);
    }

    #[test]
    fn unusable_backends_answer_500_and_empty_ones_503() {
        let snapshot = parse_and_build(CLUSTER).unwrap();
        let status = |backends: &[HttpBackendRef]| {
            choose(&snapshot, SHOP, backends, 0.5)
                .map(|b| b.service.name.clone())
                .map_err(|e| e.status)
        };
        assert_eq!(status(&[]), Err(StatusCode::INTERNAL_SERVER_ERROR));
        assert_eq!(
            status(&[backend("v1", 80, 0)]),
            Err(StatusCode::INTERNAL_SERVER_ERROR)
        );
        assert_eq!(
            status(&[backend("missing", 80, 1)]),
            Err(StatusCode::INTERNAL_SERVER_ERROR)
        );
        assert_eq!(
            status(&[backend("v1", 81, 1)]),
            Err(StatusCode::INTERNAL_SERVER_ERROR)
        );
        assert_eq!(
            status(&[backend("empty", 80, 1)]),
            Err(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(status(&[backend("v2", 80, 1)]), Ok("v2".into()));
    }
}
