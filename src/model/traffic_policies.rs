//! weft's own traffic kinds for the waypoint, where Gateway API has no field:
//! `weft.dev/v1alpha1` `DestinationPolicy` (load balancing, connection pool limits that
//! trip a circuit breaker, outlier ejection, the retry budget) and `FaultInjection`
//! (delays and aborts for a share of matching requests). Both attach to Services of their
//! own namespace through `targetRefs`, and their fields are shaped after Istio's
//! `DestinationRule.trafficPolicy` and `VirtualService.http[].fault`, which operators
//! already know.
//!
//! The shapes ([`DestinationPolicyObject`], [`FaultInjectionObject`]) refuse unknown
//! fields; [`DestinationPolicy::parse`] and [`FaultInjection::parse`] check values and
//! return what the waypoint applies, or the first problem with its field.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use super::http_route_rules::{check_match, parse_gateway_duration, HttpRouteMatch, RuleError};

/// Most targetRefs, fault rules, matches per rule.
const MAX_ITEMS: usize = 16;

/// `targetRefs[]`: a Service of the policy's namespace.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    /// `""` (core).
    #[serde(default)]
    pub group: String,
    /// `Service`.
    pub kind: String,
    /// The Service's name.
    pub name: String,
}

/// `weft.dev/v1alpha1 DestinationPolicy`, as written.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationPolicyObject {
    /// Name and namespace.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy.
    #[serde(default)]
    pub spec: DestinationPolicySpec,
}

/// `DestinationPolicy.spec`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationPolicySpec {
    /// The Services it applies to.
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    /// How requests are spread over the endpoints.
    pub load_balancer: Option<LoadBalancerSpec>,
    /// Limits that fail requests fast when the backend is saturated.
    pub connection_pool: Option<ConnectionPoolSpec>,
    /// When endpoints are sat out.
    pub outlier_detection: Option<OutlierDetectionSpec>,
    /// How much extra load retries may add.
    pub retry_budget: Option<RetryBudgetSpec>,
}

/// `spec.loadBalancer`: `simple` or `consistentHash`, not both.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSpec {
    /// `LEAST_REQUEST` (power of two choices over peak-EWMA latency, the default) or
    /// `ROUND_ROBIN`.
    pub simple: Option<String>,
    /// Requests with the same key go to the same endpoint while it is there.
    pub consistent_hash: Option<ConsistentHashSpec>,
}

/// `spec.loadBalancer.consistentHash`: exactly one key.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHashSpec {
    /// A request header's value.
    pub http_header_name: Option<String>,
    /// A cookie's value.
    pub http_cookie: Option<HttpCookieSpec>,
    /// The calling workload's IP.
    pub use_source_ip: Option<bool>,
}

/// `consistentHash.httpCookie`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCookieSpec {
    /// The cookie's name.
    pub name: String,
}

/// `spec.connectionPool` (Istio's `tcp` / `http` split).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSpec {
    /// `tcp.maxConnections`.
    pub tcp: Option<TcpPoolSpec>,
    /// `http.http1MaxPendingRequests`, `http.http2MaxRequests`.
    pub http: Option<HttpPoolSpec>,
}

/// `connectionPool.tcp`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpPoolSpec {
    /// Connections open to the backend's endpoints at once.
    pub max_connections: Option<i64>,
}

/// `connectionPool.http`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPoolSpec {
    /// Requests waiting for a connection when `maxConnections` are all busy.
    pub http1_max_pending_requests: Option<i64>,
    /// Requests in flight to the backend at once.
    pub http2_max_requests: Option<i64>,
}

/// `spec.outlierDetection`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetectionSpec {
    /// Failed attempts in a row (any 5xx, connect failure, reset, timeout) that eject an
    /// endpoint; 0 turns ejection off.
    pub consecutive5xx_errors: Option<i64>,
    /// The first ejection's length; later ones are that many times longer.
    pub base_ejection_time: Option<String>,
    /// The largest share (percent) of the endpoints ejected at once.
    pub max_ejection_percent: Option<i64>,
}

/// `spec.retryBudget` (weft's; Istio has none).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudgetSpec {
    /// Extra load retries may add, in percent of requests over 10 s.
    pub percent: Option<f64>,
    /// Retries allowed per second whatever the traffic.
    pub min_retries_per_second: Option<i64>,
}

/// How a backend's endpoints share its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum LoadBalancing {
    /// Power of two choices over peak-EWMA latency times outstanding requests.
    #[default]
    LeastRequest,
    /// In turn.
    RoundRobin,
    /// By a hash of the request's key (rendezvous hashing).
    ConsistentHash,
}

/// What a consistent hash is computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum HashKey {
    /// This request header's value.
    Header(String),
    /// This cookie's value.
    Cookie(String),
    /// The caller's IP.
    SourceIp,
}

/// A [`DestinationPolicySpec`], checked: what the waypoint applies to its Services.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DestinationPolicy {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The Services (of `namespace`) it applies to.
    pub targets: Vec<String>,
    /// How requests are spread.
    pub load_balancing: LoadBalancing,
    /// The key of [`LoadBalancing::ConsistentHash`].
    pub hash_key: Option<HashKey>,
    /// `tcp.maxConnections`.
    pub max_connections: Option<u32>,
    /// `http.http1MaxPendingRequests`.
    pub max_pending_requests: Option<u32>,
    /// `http.http2MaxRequests`.
    pub max_requests: Option<u32>,
    /// `outlierDetection.consecutive5xxErrors`.
    pub consecutive_errors: Option<u32>,
    /// `outlierDetection.baseEjectionTime`.
    #[serde(with = "humantime_serde_opt")]
    pub base_ejection: Option<Duration>,
    /// `outlierDetection.maxEjectionPercent`.
    pub max_ejection_percent: Option<u32>,
    /// `retryBudget.percent`.
    pub retry_budget_percent: Option<f64>,
    /// `retryBudget.minRetriesPerSecond`.
    pub min_retries_per_second: Option<u32>,
    /// `metadata.creationTimestamp` (seconds): the oldest policy of a Service wins.
    pub created_unix: Option<i64>,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> RuleError {
    RuleError {
        field: field.into(),
        message: message.into(),
    }
}

/// `value` as a count in `min..=max`, or an error naming `field`.
fn count(value: i64, min: i64, max: i64, field: &str) -> Result<u32, RuleError> {
    if !(min..=max).contains(&value) {
        return Err(bad(
            field,
            format!("{value} is out of range; use {min}-{max}"),
        ));
    }
    u32::try_from(value).map_err(|_| bad(field, format!("{value} is out of range")))
}

fn check_targets(targets: &[TargetRef]) -> Result<Vec<String>, RuleError> {
    if targets.is_empty() {
        return Err(bad(
            "spec.targetRefs",
            "name at least one Service; a policy without targets would apply to nothing",
        ));
    }
    if targets.len() > MAX_ITEMS {
        return Err(bad(
            "spec.targetRefs",
            format!("at most {MAX_ITEMS} targetRefs"),
        ));
    }
    let mut names = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        if !target.group.is_empty() || target.kind != "Service" {
            return Err(bad(
                format!("spec.targetRefs[{i}].kind"),
                format!(
                    "{:?}/{:?} is not a target; use group \"\" and kind Service",
                    target.group, target.kind
                ),
            ));
        }
        crate::names::check_dns_label(&target.name).map_err(|reason| {
            bad(
                format!("spec.targetRefs[{i}].name"),
                format!("{:?} {reason}", target.name),
            )
        })?;
        names.push(target.name.clone());
    }
    Ok(names)
}

// === impl DestinationPolicy ===

impl DestinationPolicy {
    /// Checks `object`'s spec.
    pub fn parse(
        namespace: &str,
        name: &str,
        object: &DestinationPolicyObject,
    ) -> Result<Self, RuleError> {
        let spec = &object.spec;
        let mut policy = DestinationPolicy {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            targets: check_targets(&spec.target_refs)?,
            load_balancing: LoadBalancing::LeastRequest,
            hash_key: None,
            max_connections: None,
            max_pending_requests: None,
            max_requests: None,
            consecutive_errors: None,
            base_ejection: None,
            max_ejection_percent: None,
            retry_budget_percent: None,
            min_retries_per_second: None,
            created_unix: object
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second()),
        };
        if let Some(lb) = &spec.load_balancer {
            match (&lb.simple, &lb.consistent_hash) {
                (Some(_), Some(_)) => {
                    return Err(bad(
                        "spec.loadBalancer",
                        "set simple or consistentHash, not both",
                    ))
                }
                (Some(simple), None) => {
                    policy.load_balancing = match simple.as_str() {
                        "LEAST_REQUEST" => LoadBalancing::LeastRequest,
                        "ROUND_ROBIN" => LoadBalancing::RoundRobin,
                        other => {
                            return Err(bad(
                                "spec.loadBalancer.simple",
                                format!("{other:?} is not supported; use LEAST_REQUEST (the default) or ROUND_ROBIN"),
                            ))
                        }
                    }
                }
                (None, Some(hash)) => {
                    policy.load_balancing = LoadBalancing::ConsistentHash;
                    policy.hash_key = Some(check_hash(hash)?);
                }
                (None, None) => {}
            }
        }
        if let Some(pool) = &spec.connection_pool {
            let at = "spec.connectionPool";
            if let Some(v) = pool.tcp.as_ref().and_then(|t| t.max_connections) {
                policy.max_connections =
                    Some(count(v, 1, 1 << 20, &format!("{at}.tcp.maxConnections"))?);
            }
            if let Some(http) = &pool.http {
                if let Some(v) = http.http1_max_pending_requests {
                    policy.max_pending_requests = Some(count(
                        v,
                        0,
                        1 << 20,
                        &format!("{at}.http.http1MaxPendingRequests"),
                    )?);
                }
                if let Some(v) = http.http2_max_requests {
                    policy.max_requests = Some(count(
                        v,
                        1,
                        1 << 20,
                        &format!("{at}.http.http2MaxRequests"),
                    )?);
                }
            }
            if policy.max_pending_requests.is_some() && policy.max_connections.is_none() {
                return Err(bad(
                    format!("{at}.http.http1MaxPendingRequests"),
                    "requests wait only when tcp.maxConnections are all busy; set tcp.maxConnections too",
                ));
            }
        }
        if let Some(outlier) = &spec.outlier_detection {
            let at = "spec.outlierDetection";
            if let Some(v) = outlier.consecutive5xx_errors {
                policy.consecutive_errors =
                    Some(count(v, 0, 1000, &format!("{at}.consecutive5xxErrors"))?);
            }
            if let Some(v) = &outlier.base_ejection_time {
                let field = format!("{at}.baseEjectionTime");
                let d = parse_gateway_duration(v).map_err(|m| bad(&field, m))?;
                if d.is_zero() || d > Duration::from_secs(3600) {
                    return Err(bad(
                        field,
                        format!("{v:?}: use more than 0s and at most 1h"),
                    ));
                }
                policy.base_ejection = Some(d);
            }
            if let Some(v) = outlier.max_ejection_percent {
                policy.max_ejection_percent =
                    Some(count(v, 0, 100, &format!("{at}.maxEjectionPercent"))?);
            }
        }
        if let Some(budget) = &spec.retry_budget {
            if let Some(percent) = budget.percent {
                if !(0.0..=100.0).contains(&percent) {
                    return Err(bad(
                        "spec.retryBudget.percent",
                        format!("{percent} is out of range; use 0-100"),
                    ));
                }
                policy.retry_budget_percent = Some(percent);
            }
            if let Some(v) = budget.min_retries_per_second {
                policy.min_retries_per_second =
                    Some(count(v, 0, 10_000, "spec.retryBudget.minRetriesPerSecond")?);
            }
        }
        Ok(policy)
    }
}

fn check_hash(hash: &ConsistentHashSpec) -> Result<HashKey, RuleError> {
    let at = "spec.loadBalancer.consistentHash";
    let mut keys = Vec::new();
    if let Some(header) = &hash.http_header_name {
        http::HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
            bad(
                format!("{at}.httpHeaderName"),
                format!("{header:?} is not a header name"),
            )
        })?;
        keys.push(HashKey::Header(header.to_ascii_lowercase()));
    }
    if let Some(cookie) = &hash.http_cookie {
        let valid = !cookie.name.is_empty()
            && cookie
                .name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
        if !valid {
            return Err(bad(
                format!("{at}.httpCookie.name"),
                format!("{:?} is not a cookie name", cookie.name),
            ));
        }
        keys.push(HashKey::Cookie(cookie.name.clone()));
    }
    if hash.use_source_ip == Some(true) {
        keys.push(HashKey::SourceIp);
    }
    match keys.len() {
        1 => Ok(keys.remove(0)),
        0 => Err(bad(
            at,
            "name the key: httpHeaderName, httpCookie or useSourceIp: true",
        )),
        _ => Err(bad(
            at,
            "set one key only: httpHeaderName, httpCookie or useSourceIp",
        )),
    }
}

/// `weft.dev/v1alpha1 FaultInjection`, as written.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultInjectionObject {
    /// Name and namespace.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The faults.
    #[serde(default)]
    pub spec: FaultInjectionSpec,
}

/// `FaultInjection.spec`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultInjectionSpec {
    /// The Services whose requests get the faults.
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    /// The faults; the first rule that matches a request applies.
    #[serde(default)]
    pub rules: Vec<FaultRuleSpec>,
}

/// `spec.rules[]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultRuleSpec {
    /// HTTPRoute matches, any of which selects the request; none selects every request.
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
    /// Only callers from these namespaces; none means every caller.
    #[serde(default)]
    pub source_namespaces: Vec<String>,
    /// Hold the request before forwarding it.
    pub delay: Option<DelaySpec>,
    /// Answer the request here with an error.
    pub abort: Option<AbortSpec>,
}

/// `rules[].delay` (Istio's `fault.delay`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DelaySpec {
    /// How long, as a Gateway API duration.
    pub fixed_delay: String,
    /// The share of matching requests delayed; default 100.
    pub percentage: Option<PercentageSpec>,
}

/// `rules[].abort` (Istio's `fault.abort`): `httpStatus` or `grpcStatus`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AbortSpec {
    /// The HTTP status answered.
    pub http_status: Option<i64>,
    /// The gRPC status answered (a name as `UNAVAILABLE`, as Istio writes it).
    pub grpc_status: Option<String>,
    /// The share of matching requests aborted; default 100.
    pub percentage: Option<PercentageSpec>,
}

/// `percentage`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PercentageSpec {
    /// 0 to 100.
    pub value: f64,
}

/// gRPC's status codes by name (in code order).
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// A fault's abort: what the waypoint answers instead of forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Abort {
    /// This HTTP status.
    Http(u16),
    /// This gRPC status (HTTP 200 with `grpc-status`).
    Grpc(u32),
}

/// One checked fault rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultRule {
    /// Matches (any); empty: every request.
    pub matches: Vec<HttpRouteMatch>,
    /// Caller namespaces (any); empty: every caller.
    pub source_namespaces: Vec<String>,
    /// Delay and the percentage of matching requests it applies to.
    #[serde(skip)]
    pub delay: Option<(Duration, f64)>,
    /// Abort and the percentage of matching requests it applies to.
    pub abort: Option<(Abort, f64)>,
}

/// A [`FaultInjectionSpec`], checked.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultInjection {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The Services (of `namespace`) whose requests get the faults.
    pub targets: Vec<String>,
    /// The rules, in order.
    pub rules: Vec<FaultRule>,
}

fn percentage(p: Option<&PercentageSpec>, field: String) -> Result<f64, RuleError> {
    let value = p.map_or(100.0, |p| p.value);
    if !(0.0..=100.0).contains(&value) {
        return Err(bad(field, format!("{value} is out of range; use 0-100")));
    }
    Ok(value)
}

// === impl FaultInjection ===

impl FaultInjection {
    /// Checks `object`'s spec.
    pub fn parse(
        namespace: &str,
        name: &str,
        object: &FaultInjectionObject,
    ) -> Result<Self, RuleError> {
        let spec = &object.spec;
        let targets = check_targets(&spec.target_refs)?;
        if spec.rules.is_empty() || spec.rules.len() > MAX_ITEMS {
            return Err(bad("spec.rules", format!("give 1 to {MAX_ITEMS} rules")));
        }
        let mut rules = Vec::new();
        for (i, rule) in spec.rules.iter().enumerate() {
            let at = format!("spec.rules[{i}]");
            if rule.matches.len() > MAX_ITEMS {
                return Err(bad(
                    format!("{at}.matches"),
                    format!("at most {MAX_ITEMS} matches"),
                ));
            }
            for (j, m) in rule.matches.iter().enumerate() {
                check_match(m, &format!("{at}.matches[{j}]"))?;
            }
            for (j, ns) in rule.source_namespaces.iter().enumerate() {
                crate::names::check_dns_label(ns).map_err(|reason| {
                    bad(
                        format!("{at}.sourceNamespaces[{j}]"),
                        format!("{ns:?} {reason}"),
                    )
                })?;
            }
            let delay = match &rule.delay {
                Some(delay) => {
                    let field = format!("{at}.delay.fixedDelay");
                    let d =
                        parse_gateway_duration(&delay.fixed_delay).map_err(|m| bad(&field, m))?;
                    if d > Duration::from_secs(60) {
                        return Err(bad(field, "at most 1m"));
                    }
                    let p = percentage(
                        delay.percentage.as_ref(),
                        format!("{at}.delay.percentage.value"),
                    )?;
                    Some((d, p))
                }
                None => None,
            };
            let abort = match &rule.abort {
                Some(abort) => {
                    let what = match (abort.http_status, &abort.grpc_status) {
                        (Some(code), None) => {
                            if !(200..=599).contains(&code) {
                                return Err(bad(
                                    format!("{at}.abort.httpStatus"),
                                    format!("{code} is not an HTTP status; use 200-599"),
                                ));
                            }
                            Abort::Http(code as u16)
                        }
                        (None, Some(name)) => {
                            let code = GRPC_CODES
                                .iter()
                                .position(|c| c == name)
                                .filter(|c| *c != 0)
                                .ok_or_else(|| {
                                    bad(
                                        format!("{at}.abort.grpcStatus"),
                                        format!(
                                            "{name:?} is not a gRPC error status; use one of {}",
                                            GRPC_CODES[1..].join(", ")
                                        ),
                                    )
                                })?;
                            Abort::Grpc(code as u32)
                        }
                        _ => {
                            return Err(bad(
                                format!("{at}.abort"),
                                "set httpStatus or grpcStatus, one of them",
                            ))
                        }
                    };
                    let p = percentage(
                        abort.percentage.as_ref(),
                        format!("{at}.abort.percentage.value"),
                    )?;
                    Some((what, p))
                }
                None => None,
            };
            if delay.is_none() && abort.is_none() {
                return Err(bad(&at, "a fault rule needs a delay, an abort or both"));
            }
            rules.push(FaultRule {
                matches: rule.matches.clone(),
                source_namespaces: rule.source_namespaces.clone(),
                delay,
                abort,
            });
        }
        Ok(FaultInjection {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            targets,
            rules,
        })
    }
}

/// Serializes an optional duration as text (`30s`), for `/config_dump`.
mod humantime_serde_opt {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Result<DestinationPolicy, RuleError> {
        let object: DestinationPolicyObject = serde_yaml::from_str(yaml).unwrap();
        DestinationPolicy::parse("shop", "p", &object)
    }

    fn faults(yaml: &str) -> Result<FaultInjection, RuleError> {
        let object: FaultInjectionObject = serde_yaml::from_str(yaml).unwrap();
        FaultInjection::parse("shop", "f", &object)
    }

    #[test]
    fn a_destination_policy_parses_every_field() {
        let p = policy(
            r#"
spec:
  targetRefs: [{group: "", kind: Service, name: pay}]
  loadBalancer: {consistentHash: {httpHeaderName: X-User}}
  connectionPool: {tcp: {maxConnections: 4}, http: {http1MaxPendingRequests: 2, http2MaxRequests: 8}}
  outlierDetection: {consecutive5xxErrors: 3, baseEjectionTime: 10s, maxEjectionPercent: 30}
  retryBudget: {percent: 10, minRetriesPerSecond: 1}
"#,
        )
        .unwrap();
        assert_eq!(p.targets, ["pay"]);
        assert_eq!(p.load_balancing, LoadBalancing::ConsistentHash);
        assert_eq!(p.hash_key, Some(HashKey::Header("x-user".into())));
        assert_eq!(
            (p.max_connections, p.max_pending_requests, p.max_requests),
            (Some(4), Some(2), Some(8))
        );
        assert_eq!(p.base_ejection, Some(Duration::from_secs(10)));
        assert_eq!(
            (p.consecutive_errors, p.max_ejection_percent),
            (Some(3), Some(30))
        );
        assert_eq!(
            (p.retry_budget_percent, p.min_retries_per_second),
            (Some(10.0), Some(1))
        );
        let rr = policy(
            "spec: {targetRefs: [{kind: Service, name: pay}], loadBalancer: {simple: ROUND_ROBIN}}",
        )
        .unwrap();
        assert_eq!(rr.load_balancing, LoadBalancing::RoundRobin);
    }

    #[test]
    fn bad_destination_policies_name_their_field() {
        let target = r#"targetRefs: [{kind: Service, name: pay}]"#;
        for (spec, field) in [
            ("{}".to_owned(), "spec.targetRefs"),
            (
                "{targetRefs: [{kind: Deployment, name: pay}]}".to_owned(),
                "spec.targetRefs[0].kind",
            ),
            (
                "{targetRefs: [{kind: Service, name: Pay_1}]}".to_owned(),
                "spec.targetRefs[0].name",
            ),
            (
                format!("{{{target}, loadBalancer: {{simple: RANDOM}}}}"),
                "spec.loadBalancer.simple",
            ),
            (
                format!("{{{target}, loadBalancer: {{simple: ROUND_ROBIN, consistentHash: {{useSourceIp: true}}}}}}"),
                "spec.loadBalancer",
            ),
            (
                format!("{{{target}, loadBalancer: {{consistentHash: {{}}}}}}"),
                "spec.loadBalancer.consistentHash",
            ),
            (
                format!("{{{target}, loadBalancer: {{consistentHash: {{httpHeaderName: 'a b'}}}}}}"),
                "spec.loadBalancer.consistentHash.httpHeaderName",
            ),
            (
                format!("{{{target}, connectionPool: {{tcp: {{maxConnections: 0}}}}}}"),
                "spec.connectionPool.tcp.maxConnections",
            ),
            (
                format!("{{{target}, connectionPool: {{http: {{http1MaxPendingRequests: 1}}}}}}"),
                "spec.connectionPool.http.http1MaxPendingRequests",
            ),
            (
                format!("{{{target}, outlierDetection: {{baseEjectionTime: 0s}}}}"),
                "spec.outlierDetection.baseEjectionTime",
            ),
            (
                format!("{{{target}, outlierDetection: {{maxEjectionPercent: 101}}}}"),
                "spec.outlierDetection.maxEjectionPercent",
            ),
            (
                format!("{{{target}, retryBudget: {{percent: -1}}}}"),
                "spec.retryBudget.percent",
            ),
        ] {
            let e = policy(&format!("spec: {spec}")).unwrap_err();
            assert_eq!(e.field, field, "{spec}: {e:?}");
        }
        // Unknown fields are refused by the shape.
        let unknown: Result<DestinationPolicyObject, _> = serde_yaml::from_str(
            "spec: {targetRefs: [], connectionPool: {tcp: {maxConnection: 1}}}",
        );
        assert!(unknown.unwrap_err().to_string().contains("maxConnection"));
    }

    #[test]
    fn fault_injection_parses_and_checks_its_rules() {
        let f = faults(
            r#"
spec:
  targetRefs: [{kind: Service, name: pay}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /checkout}}]
    sourceNamespaces: [test]
    abort: {httpStatus: 500, percentage: {value: 10}}
  - delay: {fixedDelay: 200ms}
    abort: {grpcStatus: UNAVAILABLE, percentage: {value: 1.5}}
"#,
        )
        .unwrap();
        assert_eq!(f.rules[0].abort, Some((Abort::Http(500), 10.0)));
        assert_eq!(f.rules[0].source_namespaces, ["test"]);
        assert_eq!(f.rules[1].delay, Some((Duration::from_millis(200), 100.0)));
        assert_eq!(f.rules[1].abort, Some((Abort::Grpc(14), 1.5)));
        let target = "targetRefs: [{kind: Service, name: pay}]";
        for (spec, field) in [
            (format!("{{{target}}}"), "spec.rules"),
            (format!("{{{target}, rules: [{{}}]}}"), "spec.rules[0]"),
            (
                format!("{{{target}, rules: [{{abort: {{httpStatus: 99}}}}]}}"),
                "spec.rules[0].abort.httpStatus",
            ),
            (
                format!("{{{target}, rules: [{{abort: {{grpcStatus: OK}}}}]}}"),
                "spec.rules[0].abort.grpcStatus",
            ),
            (
                format!("{{{target}, rules: [{{abort: {{httpStatus: 500, grpcStatus: INTERNAL}}}}]}}"),
                "spec.rules[0].abort",
            ),
            (
                format!("{{{target}, rules: [{{abort: {{httpStatus: 500, percentage: {{value: 120}}}}}}]}}"),
                "spec.rules[0].abort.percentage.value",
            ),
            (
                format!("{{{target}, rules: [{{delay: {{fixedDelay: 2x}}}}]}}"),
                "spec.rules[0].delay.fixedDelay",
            ),
            (
                format!("{{{target}, rules: [{{delay: {{fixedDelay: 1s}}, matches: [{{path: {{value: nope}}}}]}}]}}"),
                "spec.rules[0].matches[0].path.value",
            ),
            (
                format!("{{{target}, rules: [{{delay: {{fixedDelay: 1s}}, sourceNamespaces: [Bad_ns]}}]}}"),
                "spec.rules[0].sourceNamespaces[0]",
            ),
        ] {
            let e = faults(&format!("spec: {spec}")).unwrap_err();
            assert_eq!(e.field, field, "{spec}: {e:?}");
        }
    }
}
