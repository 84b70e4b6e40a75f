//! Which HTTPRoute rule answers a request to one Service port.
//!
//! [`ServicePortRoutes::build`] gathers the routes whose parentRef is the Service (all its
//! ports, or this one by `port` / `sectionName`), compiles every match of every rule, and
//! orders them by the Gateway API's precedence: an `Exact` path first; then `PathPrefix` and
//! `RegularExpression` paths by length, longer first (the spec leaves regex precedence to
//! the implementation: a pattern counts as specific as its text is long, and loses a tie to
//! a prefix, so a catch-all `/` never hides it); then a match with a method; then the
//! one with more header matches; then more query-param matches; then the older route
//! (creationTimestamp), then `namespace/name` alphabetically, then rule and match order.
//! [`ServicePortRoutes::select`] walks that order and returns the first match.
//!
//! Producer routes live in the Service's namespace and apply to every caller; consumer
//! routes live in a caller's namespace and, for callers from that namespace, replace the
//! producer routes. Routes in any other namespace do not apply. A Service parent's routes
//! ignore `hostnames` (the caller addressed the Service by its cluster IP, whatever Host it
//! sent).

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method};
use regex::Regex;

use crate::model::http_route_rules::{
    compile_regex, HttpHeaderMatch, HttpRouteMatch, HttpRouteRule, PathMatchType, StringMatchType,
};
use crate::model::{HttpRoute, MeshSnapshot, Service, ServicePort};

/// A request as routing sees it.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The method.
    pub method: &'a Method,
    /// The path, without the query.
    pub path: &'a str,
    /// The query string, without `?`.
    pub query: Option<&'a str>,
    /// The headers.
    pub headers: &'a HeaderMap,
}

/// The rule chosen for a request.
#[derive(Debug, Clone, Copy)]
pub struct Selected<'a> {
    /// The route.
    pub route: &'a Arc<HttpRoute>,
    /// The rule's index in `spec.rules`.
    pub rule_index: usize,
    /// The rule.
    pub rule: &'a HttpRouteRule,
    /// The path prefix that matched, for `ReplacePrefixMatch` (`None` for other matches).
    pub matched_prefix: Option<&'a str>,
}

impl Selected<'_> {
    /// `namespace/name` of the route, with the rule's name or index: what logs and metrics
    /// call the route.
    pub fn describe(&self) -> String {
        match &self.rule.name {
            Some(name) => format!("{}/{}#{name}", self.route.namespace, self.route.name),
            None => format!(
                "{}/{}#{}",
                self.route.namespace, self.route.name, self.rule_index
            ),
        }
    }
}

enum PathMatcher {
    Exact(String),
    /// The prefix without a trailing `/` (empty for `/`).
    Prefix(String),
    Regex(Regex),
    /// A pattern that no longer compiles (it did when the model was built): matches nothing.
    Never,
}

impl PathMatcher {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatcher::Exact(want) => path == want,
            PathMatcher::Prefix(prefix) => {
                prefix.is_empty()
                    || path
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            PathMatcher::Regex(re) => re.is_match(path),
            PathMatcher::Never => false,
        }
    }
}

enum ValueMatcher {
    Exact(String),
    Regex(Regex),
    Never,
}

impl ValueMatcher {
    fn of(m: &HttpHeaderMatch) -> ValueMatcher {
        match m.kind {
            StringMatchType::Exact => ValueMatcher::Exact(m.value.clone()),
            // Checked when the model was built; a pattern that fails now matches nothing.
            StringMatchType::RegularExpression => {
                compile_regex(&m.value).map_or(ValueMatcher::Never, ValueMatcher::Regex)
            }
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatcher::Exact(want) => value == want,
            ValueMatcher::Regex(re) => re.is_match(value),
            ValueMatcher::Never => false,
        }
    }
}

/// Precedence key: (exact first, longer path value, prefix before regex, has method,
/// headers, query params, age, namespace/name, rule, match); smallest first.
type Precedence = (
    u8,
    Reverse<usize>,
    u8,
    u8,
    Reverse<usize>,
    Reverse<usize>,
    Option<i64>,
    String,
    usize,
    usize,
);

/// The conditions of one HTTPRoute match (path, headers, query params, method), compiled:
/// what route rules and fault rules test a request with.
pub struct RequestMatcher {
    path: PathMatcher,
    headers: Vec<(HeaderName, ValueMatcher)>,
    query: Vec<(String, ValueMatcher)>,
    method: Option<Method>,
}

// === impl RequestMatcher ===

impl RequestMatcher {
    /// `m`, compiled (checked when the model was built: a regex that fails now matches
    /// nothing).
    pub fn compile(m: &HttpRouteMatch) -> RequestMatcher {
        let (kind, value) = m
            .path
            .as_ref()
            .map_or((PathMatchType::PathPrefix, "/"), |p| {
                (p.kind, p.value.as_str())
            });
        let path = match kind {
            PathMatchType::Exact => PathMatcher::Exact(value.to_owned()),
            PathMatchType::PathPrefix => {
                PathMatcher::Prefix(value.trim_end_matches('/').to_owned())
            }
            PathMatchType::RegularExpression => {
                compile_regex(value).map_or(PathMatcher::Never, PathMatcher::Regex)
            }
        };
        let headers = m
            .headers
            .iter()
            .filter_map(|h| {
                HeaderName::from_bytes(h.name.as_bytes())
                    .ok()
                    .map(|name| (name, ValueMatcher::of(h)))
            })
            .collect::<Vec<_>>();
        let query = m
            .query_params
            .iter()
            .map(|q| (q.name.clone(), ValueMatcher::of(q)))
            .collect::<Vec<_>>();
        let method = m
            .method
            .as_deref()
            .and_then(|s| Method::from_bytes(s.as_bytes()).ok());
        RequestMatcher {
            path,
            headers,
            query,
            method,
        }
    }

    /// Whether `request` meets every condition.
    pub fn matches(&self, request: &RequestView<'_>) -> bool {
        if self.method.as_ref().is_some_and(|m| m != request.method) {
            return false;
        }
        if !self.path.matches(request.path) {
            return false;
        }
        for (name, want) in &self.headers {
            let values: Vec<&str> = request
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if values.is_empty() || !want.matches(&values.join(",")) {
                return false;
            }
        }
        for (name, want) in &self.query {
            let value = request.query.and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.into_owned())
            });
            if !value.is_some_and(|v| want.matches(&v)) {
                return false;
            }
        }
        true
    }
}

struct CompiledMatch {
    route: Arc<HttpRoute>,
    rule_index: usize,
    matcher: RequestMatcher,
    prefix_text: Option<String>,
    order: Precedence,
}

impl CompiledMatch {
    fn compile(
        route: &Arc<HttpRoute>,
        rule_index: usize,
        match_index: usize,
        m: &HttpRouteMatch,
    ) -> CompiledMatch {
        let (kind, value) = m
            .path
            .as_ref()
            .map_or((PathMatchType::PathPrefix, "/"), |p| {
                (p.kind, p.value.as_str())
            });
        let (rank, prefix_text) = match kind {
            PathMatchType::Exact => ((0, 0), None),
            PathMatchType::PathPrefix => ((1, 0), Some(value.to_owned())),
            PathMatchType::RegularExpression => ((1, 1), None),
        };
        let matcher = RequestMatcher::compile(m);
        let order = (
            rank.0,
            Reverse(value.len()),
            rank.1,
            u8::from(matcher.method.is_none()),
            Reverse(matcher.headers.len()),
            Reverse(matcher.query.len()),
            route.created_unix,
            format!("{}/{}", route.namespace, route.name),
            rule_index,
            match_index,
        );
        CompiledMatch {
            route: route.clone(),
            rule_index,
            matcher,
            prefix_text,
            order,
        }
    }

    fn matches(&self, request: &RequestView<'_>) -> bool {
        self.matcher.matches(request)
    }
}

/// The compiled routes of one Service port.
#[derive(Default)]
pub struct ServicePortRoutes {
    producer: Vec<CompiledMatch>,
    consumers: BTreeMap<String, Vec<CompiledMatch>>,
}

impl ServicePortRoutes {
    /// The routes of `service`'s `port` in `snapshot`.
    pub fn build(
        snapshot: &MeshSnapshot,
        service: &Service,
        port: &ServicePort,
    ) -> ServicePortRoutes {
        let mut table = ServicePortRoutes::default();
        for route in snapshot.http_routes_for_service(&service.namespace, &service.name) {
            let applies = route.parents.iter().any(|p| {
                p.kind == "Service"
                    && p.namespace == service.namespace
                    && p.name == service.name
                    && p.port.is_none_or(|n| n == port.port)
                    && p.section_name
                        .as_ref()
                        .is_none_or(|s| port.name.as_ref() == Some(s))
            });
            if !applies {
                continue;
            }
            let mut compiled = Vec::new();
            for (rule_index, rule) in route.rules.iter().enumerate() {
                if rule.matches.is_empty() {
                    compiled.push(CompiledMatch::compile(
                        route,
                        rule_index,
                        0,
                        &HttpRouteMatch::default(),
                    ));
                }
                for (match_index, m) in rule.matches.iter().enumerate() {
                    compiled.push(CompiledMatch::compile(route, rule_index, match_index, m));
                }
            }
            if route.namespace == service.namespace {
                table.producer.extend(compiled);
            } else {
                table
                    .consumers
                    .entry(route.namespace.clone())
                    .or_default()
                    .extend(compiled);
            }
        }
        table.producer.sort_by(|a, b| a.order.cmp(&b.order));
        for list in table.consumers.values_mut() {
            list.sort_by(|a, b| a.order.cmp(&b.order));
        }
        table
    }

    /// No route applies to any caller.
    pub fn is_empty(&self) -> bool {
        self.producer.is_empty() && self.consumers.is_empty()
    }

    /// Whether any route applies to a caller in `caller_namespace`: its namespace's
    /// consumer routes, else the producer routes. A caller no route applies to is sent to
    /// the Service itself, as if there were no waypoint routes at all.
    pub fn applies_to(&self, caller_namespace: Option<&str>) -> bool {
        let applicable = caller_namespace
            .and_then(|ns| self.consumers.get(ns))
            .unwrap_or(&self.producer);
        !applicable.is_empty()
    }

    /// The rule that answers `request` from a caller in `caller_namespace` (`None`: not a
    /// known workload), if any.
    pub fn select(
        &self,
        caller_namespace: Option<&str>,
        request: &RequestView<'_>,
    ) -> Option<Selected<'_>> {
        let list = caller_namespace
            .and_then(|ns| self.consumers.get(ns))
            .unwrap_or(&self.producer);
        let found = list.iter().find(|m| m.matches(request))?;
        let rule = found.route.rules.get(found.rule_index)?;
        Some(Selected {
            route: &found.route,
            rule_index: found.rule_index,
            rule,
            matched_prefix: found.prefix_text.as_deref(),
        })
    }
}

#[cfg(test)]
mod tests {
    //! Weft's own vectors for the Gateway API mesh (GAMMA) conformance scenarios about
    //! matching and precedence: path segment boundaries, exact vs prefix, header, query and
    //! method matches, precedence across routes, parentRef port scoping, producer and
    //! consumer routes.

    use http::HeaderValue;

    use super::*;
    use crate::model::translate::parse_and_build;

    const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: client}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 80}
  - {name: admin, port: 8080}
"#;

    fn table(routes: &str, port: u16) -> ServicePortRoutes {
        let snapshot = parse_and_build(&format!("{BASE}---\n{routes}")).unwrap();
        let service = snapshot.service("shop", "echo").unwrap();
        ServicePortRoutes::build(&snapshot, service, service.port(port).unwrap())
    }

    /// The backend the selected rule sends to (its first backendRef's name), or "-".
    fn pick(
        t: &ServicePortRoutes,
        caller: Option<&str>,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> String {
        let (path, query) = match uri.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (uri, None),
        };
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let request = RequestView {
            method: &method,
            path,
            query,
            headers: &map,
        };
        t.select(caller, &request)
            .map(|s| s.rule.backend_refs[0].name.clone())
            .unwrap_or_else(|| "-".into())
    }

    fn route(name: &str, ns: &str, parent: &str, rules: &str) -> String {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  parentRefs:\n  - {parent}\n  rules:\n{rules}\n---\n"
        )
    }

    const PARENT: &str = r#"{group: "", kind: Service, name: echo, namespace: shop}"#;

    #[test]
    fn path_prefixes_match_whole_segments_and_exact_beats_prefix() {
        let t = table(
            &route(
                "paths",
                "shop",
                PARENT,
                r#"  - matches: [{path: {type: PathPrefix, value: /v2}}]
    backendRefs: [{name: v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /v2/example/}}]
    backendRefs: [{name: v2-example, port: 80}]
  - matches: [{path: {type: Exact, value: /v2/exact}}]
    backendRefs: [{name: exact, port: 80}]
  - matches: [{path: {type: RegularExpression, value: "/v[0-9]+/re.*"}}]
    backendRefs: [{name: regex, port: 80}]
  - backendRefs: [{name: v1, port: 80}]"#,
            ),
            80,
        );
        for (path, want) in [
            ("/v2", "v2"),
            ("/v2/", "v2"),
            ("/v2/other", "v2"),
            ("/v2example", "v1"),
            ("/v2/example", "v2-example"),
            ("/v2/example/x", "v2-example"),
            ("/v2/examplex", "v2"),
            ("/v2/exact", "exact"),
            ("/v2/exact/", "v2"),
            ("/v3/regex", "regex"),
            ("/", "v1"),
            ("/anything", "v1"),
        ] {
            assert_eq!(pick(&t, None, "GET", path, &[]), want, "{path}");
        }
    }

    #[test]
    fn headers_query_params_and_methods_all_must_match_and_the_most_specific_wins() {
        let t = table(
            &route(
                "conditions",
                "shop",
                PARENT,
                r#"  - matches: [{headers: [{name: X-User-Group, value: beta}]}]
    backendRefs: [{name: beta, port: 80}]
  - matches: [{headers: [{name: x-user-group, value: beta}, {name: x-region, type: RegularExpression, value: "eu-.*"}]}]
    backendRefs: [{name: beta-eu, port: 80}]
  - matches: [{queryParams: [{name: canary, value: "true"}]}]
    backendRefs: [{name: canary, port: 80}]
  - matches: [{method: POST}]
    backendRefs: [{name: writes, port: 80}]
  - backendRefs: [{name: v1, port: 80}]"#,
            ),
            80,
        );
        assert_eq!(
            pick(&t, None, "GET", "/", &[("x-user-group", "beta")]),
            "beta"
        );
        assert_eq!(
            pick(
                &t,
                None,
                "GET",
                "/",
                &[("X-USER-GROUP", "beta"), ("x-region", "eu-west")]
            ),
            "beta-eu"
        );
        assert_eq!(
            pick(
                &t,
                None,
                "GET",
                "/",
                &[("x-user-group", "beta"), ("x-region", "us-east")]
            ),
            "beta"
        );
        assert_eq!(
            pick(&t, None, "GET", "/", &[("x-user-group", "Beta")]),
            "v1",
            "values are case-sensitive"
        );
        assert_eq!(pick(&t, None, "GET", "/?canary=true", &[]), "canary");
        assert_eq!(pick(&t, None, "GET", "/?a=1&canary=true", &[]), "canary");
        assert_eq!(pick(&t, None, "GET", "/?canary=false", &[]), "v1");
        assert_eq!(
            pick(&t, None, "GET", "/?Canary=true", &[]),
            "v1",
            "names are case-sensitive"
        );
        // A method match outranks header matches (precedence 3 before 4).
        assert_eq!(
            pick(&t, None, "POST", "/", &[("x-user-group", "beta")]),
            "writes"
        );
        assert_eq!(pick(&t, None, "GET", "/", &[]), "v1");
    }

    #[test]
    fn across_routes_specificity_then_age_then_name_decide() {
        let older = route(
            "b-older",
            "shop",
            PARENT,
            "  - matches: [{path: {type: PathPrefix, value: /api}}]\n    backendRefs: [{name: b, port: 80}]",
        )
        .replace("namespace: shop}", "namespace: shop, creationTimestamp: \"2026-01-01T00:00:00Z\"}");
        let newer = route(
            "a-newer",
            "shop",
            PARENT,
            "  - matches: [{path: {type: PathPrefix, value: /api}}]\n    backendRefs: [{name: a, port: 80}]\n  - matches: [{path: {type: PathPrefix, value: /api/v2}}]\n    backendRefs: [{name: a-v2, port: 80}]",
        )
        .replace("namespace: shop}", "namespace: shop, creationTimestamp: \"2026-06-01T00:00:00Z\"}");
        let t = table(&format!("{older}{newer}"), 80);
        assert_eq!(
            pick(&t, None, "GET", "/api/x", &[]),
            "b",
            "the older route wins a tie"
        );
        assert_eq!(
            pick(&t, None, "GET", "/api/v2/x", &[]),
            "a-v2",
            "a longer prefix beats age"
        );
        // Same age: alphabetical by namespace/name.
        let t = table(
            &format!(
                "{}{}",
                route(
                    "zeta",
                    "shop",
                    PARENT,
                    "  - backendRefs: [{name: zeta, port: 80}]"
                ),
                route(
                    "alpha",
                    "shop",
                    PARENT,
                    "  - backendRefs: [{name: alpha, port: 80}]"
                )
            ),
            80,
        );
        assert_eq!(pick(&t, None, "GET", "/", &[]), "alpha");
    }

    #[test]
    fn parent_ref_port_and_section_name_scope_a_route() {
        let routes = format!(
            "{}{}{}",
            route("by-port", "shop", r#"{group: "", kind: Service, name: echo, port: 8080}"#, "  - matches: [{path: {value: /p}}]\n    backendRefs: [{name: port-8080, port: 8080}]"),
            route("by-name", "shop", r#"{group: "", kind: Service, name: echo, sectionName: http}"#, "  - matches: [{path: {value: /s}}]\n    backendRefs: [{name: section-http, port: 80}]"),
            route("other-service", "shop", r#"{group: "", kind: Service, name: other}"#, "  - backendRefs: [{name: other, port: 80}]"),
        );
        let on_80 = table(&routes, 80);
        let on_8080 = table(&routes, 8080);
        assert_eq!(pick(&on_80, None, "GET", "/p", &[]), "-");
        assert_eq!(pick(&on_80, None, "GET", "/s", &[]), "section-http");
        assert_eq!(pick(&on_8080, None, "GET", "/p", &[]), "port-8080");
        assert_eq!(pick(&on_8080, None, "GET", "/s", &[]), "-");
        assert!(
            pick(&on_80, None, "GET", "/", &[]) == "-",
            "a route of another Service applied"
        );
    }

    #[test]
    fn consumer_routes_replace_producer_routes_for_their_namespace_only() {
        let routes = format!(
            "{}{}",
            route(
                "producer",
                "shop",
                PARENT,
                "  - backendRefs: [{name: producer, port: 80}]"
            ),
            route(
                "consumer",
                "client",
                PARENT,
                "  - backendRefs: [{name: consumer, port: 80, namespace: shop}]"
            ),
        );
        let t = table(&routes, 80);
        assert_eq!(pick(&t, Some("client"), "GET", "/", &[]), "consumer");
        assert_eq!(pick(&t, Some("shop"), "GET", "/", &[]), "producer");
        assert_eq!(pick(&t, Some("elsewhere"), "GET", "/", &[]), "producer");
        assert_eq!(pick(&t, None, "GET", "/", &[]), "producer");
        assert!(!t.is_empty());
        assert!(table("", 80).is_empty());
    }
}
