//! One request's way through a waypoint, decided before any byte goes upstream: the rule
//! that matches ([`route_table`](super::route_table)), the rule's request filters in order
//! (header modifiers, URL rewrite, or a redirect that answers at once), the backend
//! ([`backends`](super::backends)), the backend's own filters, and what is left for the
//! response (response header modifiers) and on the side (mirrors).
//!
//! [`plan`] edits the request head in place and returns a [`Plan`]: answer here (404 when
//! routes apply but no rule matches, 500/503 when there is no backend to send to, a
//! redirect), forward to a rule's backend, or, when no route applies to the caller at all,
//! send it to the Service called as it is.

use http::request::Parts;
use http::uri::{Authority, PathAndQuery};
use std::sync::Arc;

use http::{StatusCode, Uri};

use super::backends::{choose, resolve_service, ResolvedBackend, RouteScope};
use super::filters::{self, Arrival};
use super::route_table::{RequestView, ServicePortRoutes};
use crate::model::http_route_rules::{
    HeaderModifier, HttpRouteFilter, HttpRouteRetry, HttpRouteTimeouts, RequestMirror,
};
use crate::model::{MeshSnapshot, Service};

/// What to do with a request.
#[derive(Debug)]
pub enum Plan<'a> {
    /// Answer it here.
    Respond {
        /// The status.
        status: StatusCode,
        /// `Location`, for a redirect.
        location: Option<String>,
        /// Why, for the access log and the body of an error.
        reason: String,
        /// The route rule that answered, if one matched.
        route: Option<String>,
    },
    /// No route applies to this caller on this port: send it to the Service called, to
    /// one of its own endpoints, unchanged.
    ToService,
    /// Send it to `backend`.
    Forward {
        /// Where.
        backend: ResolvedBackend<'a>,
        /// The route rule, for logs and metrics.
        route: String,
        /// Applied to the response, in order (rule's, then backend's).
        response_headers: Vec<&'a HeaderModifier>,
        /// Copies to send on the side (their answers are dropped).
        mirrors: Vec<MirrorTarget>,
        /// The rule's `timeouts`, if it has them.
        timeouts: Option<&'a HttpRouteTimeouts>,
        /// The rule's `retry`, if it has one.
        retry: Option<&'a HttpRouteRetry>,
    },
}

/// Where a mirrored copy of the request goes.
#[derive(Debug, Clone)]
pub struct MirrorTarget {
    /// The mirror's Service.
    pub service: Arc<Service>,
    /// Its port.
    pub port: u16,
}

/// How the request arrived, for redirects.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The caller's namespace, if it is a known workload (consumer routes).
    pub caller_namespace: Option<&'a str>,
    /// The namespace of the Service called (which namespaces backends may be in).
    pub service_namespace: &'a str,
    /// The Service port the caller addressed.
    pub port: u16,
    /// The host to use when the request names none (the Service's address).
    pub default_host: &'a str,
}

/// Decides what happens to the request whose head is `parts`, editing it as the filters
/// say. `roll` gives uniform numbers in [0, 1) (the weighted backend choice, mirror shares).
pub fn plan<'a>(
    snapshot: &MeshSnapshot,
    routes: &'a ServicePortRoutes,
    origin: Origin<'_>,
    parts: &mut Parts,
    roll: &mut dyn FnMut() -> f64,
) -> Plan<'a> {
    if !routes.applies_to(origin.caller_namespace) {
        return Plan::ToService;
    }
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let view = RequestView {
        method: &parts.method,
        path: &path,
        query: query.as_deref(),
        headers: &parts.headers,
    };
    let Some(selected) = routes.select(origin.caller_namespace, &view) else {
        return Plan::Respond {
            status: StatusCode::NOT_FOUND,
            location: None,
            reason: "no HTTPRoute rule matches this request".into(),
            route: None,
        };
    };
    let route = selected.describe();
    let mut response_headers = Vec::new();
    let mut mirrors = Vec::new();
    let host = request_host(parts).unwrap_or_else(|| origin.default_host.to_owned());
    for filter in &selected.rule.filters {
        if let Some(redirect) = &filter.request_redirect {
            let arrival = Arrival {
                scheme: "http",
                host: &host,
                port: origin.port,
                path: &path,
                query: query.as_deref(),
            };
            let (status, location) = filters::redirect(redirect, &arrival, selected.matched_prefix);
            return Plan::Respond {
                status,
                location: Some(location),
                reason: "redirected by the route".into(),
                route: Some(route),
            };
        }
        apply(
            filter,
            parts,
            selected.matched_prefix,
            &mut response_headers,
            &mut mirrors,
            roll,
        );
    }
    let scope = RouteScope {
        route_namespace: &selected.route.namespace,
        parent_namespace: origin.service_namespace,
    };
    let backend = match choose(snapshot, scope, &selected.rule.backend_refs, roll()) {
        Ok(backend) => backend,
        Err(none) => {
            return Plan::Respond {
                status: none.status,
                location: None,
                reason: none.reason,
                route: Some(route),
            }
        }
    };
    for filter in &backend.backend_ref.filters {
        apply(
            filter,
            parts,
            selected.matched_prefix,
            &mut response_headers,
            &mut mirrors,
            roll,
        );
    }
    let mirrors = mirrors
        .into_iter()
        .filter_map(|mirror| {
            let target = &mirror.backend_ref;
            match resolve_service(
                snapshot,
                scope,
                target.namespace.as_deref(),
                &target.name,
                target.port,
            ) {
                Ok((service, port)) => Some(MirrorTarget { service, port }),
                Err(none) => {
                    tracing::debug!(route = %route, reason = %none.reason, "mirror skipped");
                    None
                }
            }
        })
        .collect();
    Plan::Forward {
        backend,
        route,
        response_headers,
        mirrors,
        timeouts: selected.rule.timeouts.as_ref(),
        retry: selected.rule.retry.as_ref(),
    }
}

fn apply<'a>(
    filter: &'a HttpRouteFilter,
    parts: &mut Parts,
    matched_prefix: Option<&str>,
    response_headers: &mut Vec<&'a HeaderModifier>,
    mirrors: &mut Vec<&'a RequestMirror>,
    roll: &mut dyn FnMut() -> f64,
) {
    if let Some(modifier) = &filter.request_header_modifier {
        filters::modify_headers(&mut parts.headers, modifier);
    }
    if let Some(modifier) = &filter.response_header_modifier {
        response_headers.push(modifier);
    }
    if let Some(rewrite) = &filter.url_rewrite {
        if let Some(path) = &rewrite.path {
            let new_path = filters::modified_path(parts.uri.path(), path, matched_prefix);
            set_path(parts, &new_path);
        }
        if let Some(hostname) = &rewrite.hostname {
            filters::rewrite_host(&mut parts.headers, hostname);
            set_authority(parts, hostname);
        }
    }
    if let Some(mirror) = &filter.request_mirror {
        if filters::mirrors(mirror, roll()) {
            mirrors.push(mirror);
        }
    }
}

/// The Host header, else the URI's authority, without a port.
fn request_host(parts: &Parts) -> Option<String> {
    let raw = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.as_str().to_owned()))?;
    let authority: Authority = raw.parse().ok()?;
    Some(authority.host().to_owned())
}

fn set_path(parts: &mut Parts, path: &str) {
    let with_query = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let Ok(path_and_query) = with_query.parse::<PathAndQuery>() else {
        return;
    };
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.path_and_query = Some(path_and_query);
    if let Ok(rebuilt) = Uri::from_parts(uri) {
        parts.uri = rebuilt;
    }
}

fn set_authority(parts: &mut Parts, host: &str) {
    if parts.uri.authority().is_none() {
        return;
    }
    let port = parts.uri.port_u16();
    let text = match port {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    let Ok(authority) = text.parse::<Authority>() else {
        return;
    };
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.authority = Some(authority);
    if let Ok(rebuilt) = Uri::from_parts(uri) {
        parts.uri = rebuilt;
    }
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
metadata: {name: echo, namespace: shop}
spec: {clusterIP: 10.96.0.10, selector: {app: v1}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo-v1, namespace: shop}
spec: {clusterIP: 10.96.0.11, selector: {app: v1}, ports: [{port: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo-v2, namespace: shop}
spec: {clusterIP: 10.96.0.12, selector: {app: v2}, ports: [{port: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - name: beta
    matches: [{headers: [{name: x-user-group, value: beta}]}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-routed, value: beta}]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-served-by, value: v2}]}
    backendRefs:
    - name: echo-v2
      port: 8080
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier: {add: [{name: x-backend, value: v2}]}
  - name: old
    matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}
  - name: api
    matches: [{path: {type: PathPrefix, value: /api}}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: internal.shop, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v1}}
    - type: RequestMirror
      requestMirror: {backendRef: {name: echo-v2, port: 8080}}
    backendRefs: [{name: echo-v1, port: 8080}]
  - name: broken
    matches: [{path: {type: Exact, value: /broken}}]
    backendRefs: [{name: missing, port: 8080}]
  - name: canary
    matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: echo-v1, port: 8080, weight: 90}, {name: echo-v2, port: 8080, weight: 10}]
"#;

    fn request(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder()
            .uri(uri)
            .header("host", "echo.shop");
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn setup() -> (MeshSnapshot, ServicePortRoutes) {
        let snapshot = parse_and_build(CLUSTER).unwrap();
        let service = snapshot.service("shop", "echo").unwrap();
        let routes = ServicePortRoutes::build(&snapshot, service, service.port(80).unwrap());
        (snapshot, routes)
    }

    const ORIGIN: Origin<'static> = Origin {
        caller_namespace: Some("shop"),
        service_namespace: "shop",
        port: 80,
        default_host: "10.96.0.10",
    };

    #[test]
    fn header_routing_applies_rule_and_backend_filters() {
        let (snapshot, routes) = setup();
        let mut parts = request("/cart", &[("x-user-group", "beta")]);
        let plan = plan(&snapshot, &routes, ORIGIN, &mut parts, &mut || 0.5);
        let Plan::Forward {
            backend,
            route,
            response_headers,
            ..
        } = plan
        else {
            panic!("{plan:?}");
        };
        assert_eq!(backend.service.name, "echo-v2");
        assert_eq!(route, "shop/echo#beta");
        assert_eq!(parts.headers["x-routed"], "beta");
        assert_eq!(parts.headers["x-backend"], "v2");
        assert_eq!(response_headers.len(), 1);
    }

    #[test]
    fn redirects_answer_here_and_rewrites_edit_the_request() {
        let (snapshot, routes) = setup();
        let mut parts = request("/old/page?x=1", &[]);
        match plan(&snapshot, &routes, ORIGIN, &mut parts, &mut || 0.5) {
            Plan::Respond {
                status, location, ..
            } => {
                assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
                assert_eq!(location.as_deref(), Some("http://echo.shop/new/page?x=1"));
            }
            other => panic!("{other:?}"),
        }
        let mut parts = request("/api/users?id=7", &[]);
        match plan(&snapshot, &routes, ORIGIN, &mut parts, &mut || 0.5) {
            Plan::Forward {
                backend, mirrors, ..
            } => {
                assert_eq!(backend.service.name, "echo-v1");
                assert_eq!(parts.uri.path(), "/v1/users");
                assert_eq!(parts.uri.query(), Some("id=7"));
                assert_eq!(parts.headers["host"], "internal.shop");
                assert_eq!(mirrors.len(), 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn canary_split_unmatched_and_broken_backends() {
        let (snapshot, routes) = setup();
        let to = |roll: f64| {
            let mut parts = request("/", &[]);
            match plan(&snapshot, &routes, ORIGIN, &mut parts, &mut || roll) {
                Plan::Forward { backend, .. } => backend.service.name.clone(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(to(0.89), "echo-v1");
        assert_eq!(to(0.91), "echo-v2");
        let mut parts = request("/broken", &[]);
        match plan(&snapshot, &routes, ORIGIN, &mut parts, &mut || 0.5) {
            Plan::Respond { status, route, .. } => {
                assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
                assert_eq!(route.as_deref(), Some("shop/echo#broken"));
            }
            other => panic!("{other:?}"),
        }
        // A port no route is attached to: straight to the Service, not 404.
        let service = snapshot.service("shop", "echo-v1").unwrap();
        let none = ServicePortRoutes::build(&snapshot, service, service.port(8080).unwrap());
        let mut parts = request("/", &[]);
        assert!(matches!(
            plan(&snapshot, &none, ORIGIN, &mut parts, &mut || 0.5),
            Plan::ToService
        ));
        // With routes attached, a request no rule matches is 404.
        let mut parts = request("/", &[]);
        let strict = ServicePortRoutes::build(
            &snapshot,
            snapshot.service("shop", "echo").unwrap(),
            snapshot.service("shop", "echo").unwrap().port(80).unwrap(),
        );
        assert!(!matches!(
            plan(&snapshot, &strict, ORIGIN, &mut parts, &mut || 0.5),
            Plan::ToService
        ));
    }
}
