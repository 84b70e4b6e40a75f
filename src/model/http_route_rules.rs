//! The rules of a Gateway API `HTTPRoute` (`spec.rules[]`), typed as weft honours them on a
//! waypoint: matches (path Exact / PathPrefix / RegularExpression, headers, query params,
//! method), filters (RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect,
//! URLRewrite, RequestMirror) at rule and backend level, weighted `backendRefs`, rule
//! names, `timeouts` (`request`, `backendRequest`) and `retry` (`codes`, `attempts`,
//! `backoff`).
//!
//! Nothing is ignored silently: a field weft does not know, or knows but does not honour
//! yet (`sessionPersistence`, `CORS`, `ExtensionRef` filters), refuses
//! the route with the field's path, as does a value the Gateway API spec forbids (a path
//! not starting with `/`, a regex that does not compile, a redirect and a rewrite in one
//! rule, a `ReplacePrefixMatch` without a `PathPrefix` match, ...).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Most rules per route, matches per rule, etc., as the Gateway API CRDs bound them.
const MAX_RULES: usize = 16;
const MAX_MATCHES: usize = 64;
const MAX_ITEMS: usize = 16;
/// Largest backend weight the spec allows.
const MAX_WEIGHT: u32 = 1_000_000;

/// One `spec.rules[]` entry.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRule {
    /// `name` (Gateway API named rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `matches`; none means one match of every path (`PathPrefix /`).
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
    /// `filters`, applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpRouteFilter>,
    /// `backendRefs`; none means the rule answers every request itself (a redirect) or
    /// with 500.
    #[serde(default)]
    pub backend_refs: Vec<HttpBackendRef>,
    /// `timeouts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<HttpRouteTimeouts>,
    /// `retry`: which failed attempts to try again, how often, how far apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<HttpRouteRetry>,
    /// `sessionPersistence`: not honoured, so refused.
    #[serde(default, skip_serializing)]
    pub session_persistence: Option<serde_json::Value>,
}

/// `timeouts`, as Gateway API durations (`1s`, `500ms`, `1m30s`; `0s` means none).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteTimeouts {
    /// `request`: from the request's arrival to the end of its response, all attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// `backendRequest`: one attempt, from sending it to the backend to the end of the
    /// backend's response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<String>,
}

impl HttpRouteTimeouts {
    /// `request`, if set and not `0s` (checked when the route was loaded).
    pub fn request(&self) -> Option<Duration> {
        nonzero(self.request.as_deref())
    }

    /// `backendRequest`, if set and not `0s`.
    pub fn backend_request(&self) -> Option<Duration> {
        nonzero(self.backend_request.as_deref())
    }
}

fn nonzero(value: Option<&str>) -> Option<Duration> {
    value
        .and_then(|v| parse_gateway_duration(v).ok())
        .filter(|d| !d.is_zero())
}

/// A Gateway API duration (GEP-2257): one to four `<1-5 digits><h|m|s|ms>` parts, as
/// `1h`, `2m30s`, `500ms`; `0s` is zero.
pub fn parse_gateway_duration(value: &str) -> Result<Duration, String> {
    let mut rest = value;
    let mut total = Duration::ZERO;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(format!(
                "{value:?} is not a Gateway API duration: expected 1 to 5 digits then h, m, s or ms (as 1s, 500ms, 1m30s)"
            ));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{value:?}: bad number"))?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return Err(format!(
                "{value:?} is not a Gateway API duration: each number needs a unit, h, m, s or ms"
            ));
        };
        rest = &rest[len..];
        total += unit * u32::try_from(number).unwrap_or(u32::MAX);
        parts += 1;
        if parts > 4 {
            return Err(format!(
                "{value:?} is not a Gateway API duration: at most 4 parts"
            ));
        }
    }
    if parts == 0 {
        return Err("an empty duration; give one as 1s, 500ms or 1m30s".into());
    }
    Ok(total)
}

/// Most retries one rule may ask for: a route cannot turn one request into a storm (the
/// retry budget bounds the total too).
pub const MAX_RETRY_ATTEMPTS: i64 = 10;

/// `retry` (GEP-1731): a failed attempt is tried again, on another endpoint where there is
/// one, when its response has one of `codes`, its connection failed, or its
/// `timeouts.backendRequest` ran out.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteRetry {
    /// `codes`: the response statuses (400-599) that are retried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<i64>,
    /// `attempts`: how many times a request may be retried (not counting the first
    /// attempt); default [`DEFAULT_RETRY_ATTEMPTS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i64>,
    /// `backoff`: the least wait before a retry, as a Gateway API duration; later retries
    /// wait longer (exponential, with jitter). Default [`DEFAULT_RETRY_BACKOFF`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
}

/// Retries of a `retry` that does not say `attempts`.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
/// Least wait before a retry when `backoff` is not given.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(25);

impl HttpRouteRetry {
    /// `attempts`, or the default (checked when the route was loaded).
    pub fn attempts(&self) -> u32 {
        self.attempts
            .and_then(|a| u32::try_from(a).ok())
            .unwrap_or(DEFAULT_RETRY_ATTEMPTS)
    }

    /// `backoff`, or the default.
    pub fn backoff(&self) -> Duration {
        self.backoff
            .as_deref()
            .and_then(|b| parse_gateway_duration(b).ok())
            .unwrap_or(DEFAULT_RETRY_BACKOFF)
    }

    /// `codes`, as statuses.
    pub fn codes(&self) -> Vec<u16> {
        self.codes
            .iter()
            .filter_map(|c| u16::try_from(*c).ok())
            .collect()
    }
}

/// `matches[]`: every condition given must hold.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteMatch {
    /// `path`; default `PathPrefix /`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathMatch>,
    /// `headers`: each must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HttpHeaderMatch>,
    /// `queryParams`: each must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<HttpHeaderMatch>,
    /// `method`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// `matches[].path`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpPathMatch {
    /// `type`; default `PathPrefix`.
    #[serde(rename = "type", default)]
    pub kind: PathMatchType,
    /// `value`; default `/`.
    #[serde(default = "root_path")]
    pub value: String,
}

fn root_path() -> String {
    "/".into()
}

/// `path.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum PathMatchType {
    /// The whole path, case-sensitive.
    Exact,
    /// A prefix of `/`-separated segments (`/abc` matches `/abc` and `/abc/d`, not `/abcd`).
    #[default]
    PathPrefix,
    /// A regular expression over the whole path.
    RegularExpression,
}

/// `matches[].headers[]` and `matches[].queryParams[]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHeaderMatch {
    /// `type`; default `Exact`.
    #[serde(rename = "type", default)]
    pub kind: StringMatchType,
    /// Header name (case-insensitive) or query parameter name (case-sensitive).
    pub name: String,
    /// The value to match.
    pub value: String,
}

/// `headers[].type` / `queryParams[].type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum StringMatchType {
    /// The whole value.
    #[default]
    Exact,
    /// A regular expression over the whole value.
    RegularExpression,
}

/// `filters[]`: a `type` and the field of that type.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRouteFilter {
    /// `type`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `requestHeaderModifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    /// `responseHeaderModifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    /// `requestRedirect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirect>,
    /// `urlRewrite`.
    #[serde(
        default,
        rename = "urlRewrite",
        skip_serializing_if = "Option::is_none"
    )]
    pub url_rewrite: Option<UrlRewrite>,
    /// `requestMirror`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirror>,
    /// `extensionRef`: not honoured, so refused.
    #[serde(default, skip_serializing)]
    pub extension_ref: Option<serde_json::Value>,
    /// `cors`: not honoured, so refused.
    #[serde(default, skip_serializing)]
    pub cors: Option<serde_json::Value>,
}

/// What a filter does, once checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterKind {
    /// `RequestHeaderModifier`.
    RequestHeaderModifier,
    /// `ResponseHeaderModifier`.
    ResponseHeaderModifier,
    /// `RequestRedirect`.
    RequestRedirect,
    /// `URLRewrite`.
    UrlRewrite,
    /// `RequestMirror`.
    RequestMirror,
}

/// `requestHeaderModifier` / `responseHeaderModifier`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderModifier {
    /// Replace (or add) these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HttpHeader>,
    /// Append these values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HttpHeader>,
    /// Remove these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHeader {
    /// The name.
    pub name: String,
    /// The value.
    pub value: String,
}

/// `requestRedirect`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestRedirect {
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// The host to redirect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The path to redirect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    /// The port to redirect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// 301, 302 (default), 303, 307 or 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<i64>,
}

/// `urlRewrite`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UrlRewrite {
    /// The Host to send upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The path to send upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

/// `path` of a redirect or rewrite.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub kind: String,
    /// With `ReplaceFullPath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    /// With `ReplacePrefixMatch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

/// `requestMirror`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMirror {
    /// Where copies go.
    pub backend_ref: BackendRef,
    /// Share of requests mirrored, 0-100 (default all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i64>,
    /// Share of requests mirrored as a fraction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<Fraction>,
}

/// `requestMirror.fraction`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fraction {
    /// Numerator.
    pub numerator: i64,
    /// Denominator (default 100).
    #[serde(default = "hundred")]
    pub denominator: i64,
}

fn hundred() -> i64 {
    100
}

/// A backend object: a Service and port.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendRef {
    /// API group; `""` (core, the default) for a Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind; `Service` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The Service's name.
    pub name: String,
    /// Its namespace; default the route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The Service port (required for a Service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
}

/// `backendRefs[]`: a backend, its weight and its own filters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpBackendRef {
    /// API group; `""` for a Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind; `Service` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The Service's name.
    pub name: String,
    /// Its namespace; default the route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The Service port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// Relative weight (default 1; 0 sends nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    /// Filters for requests sent to this backend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<HttpRouteFilter>,
}

impl HttpBackendRef {
    /// The weight, defaulted.
    pub fn weight(&self) -> u32 {
        self.weight.and_then(|w| u32::try_from(w).ok()).unwrap_or(1)
    }
}

/// A rule that cannot be honoured: the field (relative to `spec.rules`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// The field, e.g. `spec.rules[0].matches[1].path.value`.
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// Parses `spec.rules` as written and checks every rule; the first problem is returned with
/// its field.
pub fn parse_rules(raw: &[serde_json::Value]) -> Result<Vec<HttpRouteRule>, RuleError> {
    if raw.len() > MAX_RULES {
        return Err(RuleError {
            field: "spec.rules".into(),
            message: format!("{} rules; at most {MAX_RULES} are allowed", raw.len()),
        });
    }
    let mut rules = Vec::with_capacity(raw.len());
    for (i, value) in raw.iter().enumerate() {
        let rule: HttpRouteRule = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                format!("spec.rules[{i}]")
            } else {
                format!("spec.rules[{i}].{path}")
            };
            RuleError {
                field,
                message: e.into_inner().to_string(),
            }
        })?;
        check_rule(&rule, &format!("spec.rules[{i}]"))?;
        rules.push(rule);
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, rule) in rules.iter().enumerate() {
        if let Some(name) = &rule.name {
            if !names.insert(name.as_str()) {
                return Err(RuleError {
                    field: format!("spec.rules[{i}].name"),
                    message: format!(
                        "{name:?} names another rule of this route too; rule names must be unique"
                    ),
                });
            }
        }
    }
    Ok(rules)
}

fn bad(field: String, message: impl Into<String>) -> RuleError {
    RuleError {
        field,
        message: message.into(),
    }
}

fn check_timeouts(timeouts: &HttpRouteTimeouts, at: &str) -> Result<(), RuleError> {
    let mut parsed = [None, None];
    for (i, (field, value)) in [
        ("request", &timeouts.request),
        ("backendRequest", &timeouts.backend_request),
    ]
    .into_iter()
    .enumerate()
    {
        if let Some(value) = value {
            parsed[i] =
                Some(parse_gateway_duration(value).map_err(|m| bad(format!("{at}.{field}"), m))?);
        }
    }
    if let [Some(request), Some(backend)] = parsed {
        if !request.is_zero() && backend > request {
            return Err(bad(
                format!("{at}.backendRequest"),
                format!(
                    "{:?} is longer than timeouts.request {:?}, which covers every attempt; make it no longer",
                    timeouts.backend_request.as_deref().unwrap_or_default(),
                    timeouts.request.as_deref().unwrap_or_default()
                ),
            ));
        }
    }
    Ok(())
}

fn check_retry(retry: &HttpRouteRetry, at: &str) -> Result<(), RuleError> {
    if retry.codes.len() > MAX_ITEMS * 2 {
        return Err(bad(
            format!("{at}.codes"),
            format!("at most {} codes", MAX_ITEMS * 2),
        ));
    }
    for (i, code) in retry.codes.iter().enumerate() {
        if !(400..=599).contains(code) {
            return Err(bad(
                format!("{at}.codes[{i}]"),
                format!("{code} is not a retryable status; use 400-599"),
            ));
        }
    }
    if let Some(attempts) = retry.attempts {
        if !(0..=MAX_RETRY_ATTEMPTS).contains(&attempts) {
            return Err(bad(
                format!("{at}.attempts"),
                format!("{attempts} is out of range; use 0-{MAX_RETRY_ATTEMPTS} (retries after the first attempt)"),
            ));
        }
    }
    if let Some(backoff) = &retry.backoff {
        let parsed =
            parse_gateway_duration(backoff).map_err(|m| bad(format!("{at}.backoff"), m))?;
        if parsed > Duration::from_secs(60) {
            return Err(bad(
                format!("{at}.backoff"),
                format!("{backoff:?} is longer than a minute; a retry that late helps no client"),
            ));
        }
    }
    Ok(())
}

fn check_rule(rule: &HttpRouteRule, at: &str) -> Result<(), RuleError> {
    if let Some(timeouts) = &rule.timeouts {
        check_timeouts(timeouts, &format!("{at}.timeouts"))?;
    }
    if let Some(retry) = &rule.retry {
        check_retry(retry, &format!("{at}.retry"))?;
    }
    for (field, present, what) in [(
        "sessionPersistence",
        rule.session_persistence.is_some(),
        "session persistence",
    )] {
        if present {
            return Err(bad(
                format!("{at}.{field}"),
                format!("weft's waypoint does not honour {what} yet; remove the field (it is never ignored silently)"),
            ));
        }
    }
    if let Some(name) = &rule.name {
        crate::names::check_dns_label(name)
            .map_err(|reason| bad(format!("{at}.name"), format!("{name:?} {reason}")))?;
    }
    if rule.matches.len() > MAX_MATCHES {
        return Err(bad(
            format!("{at}.matches"),
            format!("at most {MAX_MATCHES} matches per rule"),
        ));
    }
    for (j, m) in rule.matches.iter().enumerate() {
        check_match(m, &format!("{at}.matches[{j}]"))?;
    }
    let kinds = check_filters(&rule.filters, &format!("{at}.filters"), rule, false)?;
    if kinds.contains(&FilterKind::RequestRedirect) && !rule.backend_refs.is_empty() {
        return Err(bad(
            format!("{at}.backendRefs"),
            "a rule with a RequestRedirect filter answers every request itself; it cannot also have backendRefs",
        ));
    }
    if rule.backend_refs.len() > MAX_ITEMS {
        return Err(bad(
            format!("{at}.backendRefs"),
            format!("at most {MAX_ITEMS} backendRefs per rule"),
        ));
    }
    for (j, backend) in rule.backend_refs.iter().enumerate() {
        let field = format!("{at}.backendRefs[{j}]");
        check_backend(
            backend.group.as_deref(),
            backend.kind.as_deref(),
            &backend.name,
            backend.namespace.as_deref(),
            backend.port,
            &field,
        )?;
        if let Some(weight) = backend.weight {
            if !(0..=i64::from(MAX_WEIGHT)).contains(&weight) {
                return Err(bad(
                    format!("{field}.weight"),
                    format!("{weight} is out of range; use 0-{MAX_WEIGHT}"),
                ));
            }
        }
        let kinds = check_filters(&backend.filters, &format!("{field}.filters"), rule, true)?;
        if kinds.contains(&FilterKind::RequestRedirect) {
            return Err(bad(
                format!("{field}.filters"),
                "RequestRedirect is a rule filter; a backend cannot redirect",
            ));
        }
    }
    Ok(())
}

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

pub(crate) fn check_match(m: &HttpRouteMatch, at: &str) -> Result<(), RuleError> {
    if let Some(path) = &m.path {
        let field = format!("{at}.path.value");
        match path.kind {
            PathMatchType::Exact | PathMatchType::PathPrefix => {
                if !path.value.starts_with('/') {
                    return Err(bad(
                        field,
                        format!("{:?} must start with \"/\"", path.value),
                    ));
                }
                if path.value.contains("//") || path.value.contains('?') || path.value.contains('#')
                {
                    return Err(bad(
                        field,
                        format!("{:?} may not contain \"//\", \"?\" or \"#\"", path.value),
                    ));
                }
            }
            PathMatchType::RegularExpression => {
                compile_regex(&path.value).map_err(|message| bad(field, message))?;
            }
        }
    }
    for (list, what) in [(&m.headers, "headers"), (&m.query_params, "queryParams")] {
        if list.len() > MAX_ITEMS {
            return Err(bad(
                format!("{at}.{what}"),
                format!("at most {MAX_ITEMS} {what} matches"),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (k, h) in list.iter().enumerate() {
            let field = format!("{at}.{what}[{k}]");
            if what == "headers" {
                http::HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
                    bad(
                        format!("{field}.name"),
                        format!("{:?} is not a valid header name", h.name),
                    )
                })?;
            } else if h.name.is_empty() {
                return Err(bad(
                    format!("{field}.name"),
                    "a query parameter name is required",
                ));
            }
            let key = if what == "headers" {
                h.name.to_ascii_lowercase()
            } else {
                h.name.clone()
            };
            if !seen.insert(key) {
                return Err(bad(
                    format!("{field}.name"),
                    format!(
                        "{:?} is matched twice in this match; name each once",
                        h.name
                    ),
                ));
            }
            if h.kind == StringMatchType::RegularExpression {
                compile_regex(&h.value)
                    .map_err(|message| bad(format!("{field}.value"), message))?;
            }
        }
    }
    if let Some(method) = &m.method {
        if !METHODS.contains(&method.as_str()) {
            return Err(bad(
                format!("{at}.method"),
                format!("{method:?} is not one of {METHODS:?}"),
            ));
        }
    }
    Ok(())
}

/// Compiles a Gateway API regular expression: it must match the whole value.
pub fn compile_regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("{pattern:?} is not a valid regular expression: {e}"))
}

fn check_filters(
    filters: &[HttpRouteFilter],
    at: &str,
    rule: &HttpRouteRule,
    backend: bool,
) -> Result<Vec<FilterKind>, RuleError> {
    if filters.len() > MAX_ITEMS {
        return Err(bad(at.to_owned(), format!("at most {MAX_ITEMS} filters")));
    }
    let mut kinds = Vec::new();
    for (k, filter) in filters.iter().enumerate() {
        let field = format!("{at}[{k}]");
        let kind = filter_kind(filter, &field)?;
        if kinds.contains(&kind)
            && matches!(
                kind,
                FilterKind::RequestHeaderModifier
                    | FilterKind::ResponseHeaderModifier
                    | FilterKind::RequestRedirect
                    | FilterKind::UrlRewrite
            )
        {
            return Err(bad(
                format!("{field}.type"),
                format!("{} appears twice; use one filter of each type", filter.kind),
            ));
        }
        kinds.push(kind);
        match kind {
            FilterKind::RequestHeaderModifier | FilterKind::ResponseHeaderModifier => {
                let modifier = filter
                    .request_header_modifier
                    .as_ref()
                    .or(filter.response_header_modifier.as_ref())
                    .cloned()
                    .unwrap_or_default();
                check_header_modifier(&modifier, &field)?;
            }
            FilterKind::RequestRedirect => {
                let redirect = filter.request_redirect.clone().unwrap_or_default();
                let sub = format!("{field}.requestRedirect");
                if let Some(scheme) = &redirect.scheme {
                    if scheme != "http" && scheme != "https" {
                        return Err(bad(
                            format!("{sub}.scheme"),
                            format!("{scheme:?} is not http or https"),
                        ));
                    }
                }
                if let Some(port) = redirect.port {
                    if !(1..=65535).contains(&port) {
                        return Err(bad(
                            format!("{sub}.port"),
                            format!("{port} is not a valid port"),
                        ));
                    }
                }
                if let Some(code) = redirect.status_code {
                    if ![301, 302, 303, 307, 308].contains(&code) {
                        return Err(bad(
                            format!("{sub}.statusCode"),
                            format!("{code} is not a redirect status weft sends; use 301, 302, 303, 307 or 308"),
                        ));
                    }
                }
                if let Some(host) = &redirect.hostname {
                    crate::names::check_dns_subdomain(host).map_err(|reason| {
                        bad(format!("{sub}.hostname"), format!("{host:?} {reason}"))
                    })?;
                }
                if let Some(path) = &redirect.path {
                    check_path_modifier(path, &format!("{sub}.path"), rule)?;
                }
            }
            FilterKind::UrlRewrite => {
                let rewrite = filter.url_rewrite.clone().unwrap_or_default();
                let sub = format!("{field}.urlRewrite");
                if let Some(host) = &rewrite.hostname {
                    crate::names::check_dns_subdomain(host).map_err(|reason| {
                        bad(format!("{sub}.hostname"), format!("{host:?} {reason}"))
                    })?;
                }
                if let Some(path) = &rewrite.path {
                    check_path_modifier(path, &format!("{sub}.path"), rule)?;
                }
            }
            FilterKind::RequestMirror => {
                let mirror = filter.request_mirror.as_ref().ok_or_else(|| {
                    bad(
                        format!("{field}.requestMirror"),
                        "required with type RequestMirror",
                    )
                })?;
                let sub = format!("{field}.requestMirror");
                let b = &mirror.backend_ref;
                check_backend(
                    b.group.as_deref(),
                    b.kind.as_deref(),
                    &b.name,
                    b.namespace.as_deref(),
                    b.port,
                    &format!("{sub}.backendRef"),
                )?;
                if mirror.percent.is_some() && mirror.fraction.is_some() {
                    return Err(bad(sub, "give percent or fraction, not both"));
                }
                if let Some(percent) = mirror.percent {
                    if !(0..=100).contains(&percent) {
                        return Err(bad(
                            format!("{sub}.percent"),
                            format!("{percent} is not 0-100"),
                        ));
                    }
                }
                if let Some(f) = &mirror.fraction {
                    if f.denominator < 1 || f.numerator < 0 || f.numerator > f.denominator {
                        return Err(bad(
                            format!("{sub}.fraction"),
                            "numerator must be 0..=denominator and denominator at least 1",
                        ));
                    }
                }
            }
        }
    }
    if kinds.contains(&FilterKind::RequestRedirect) && kinds.contains(&FilterKind::UrlRewrite) {
        return Err(bad(
            at.to_owned(),
            "RequestRedirect and URLRewrite cannot be used together",
        ));
    }
    let _ = backend;
    Ok(kinds)
}

fn filter_kind(filter: &HttpRouteFilter, field: &str) -> Result<FilterKind, RuleError> {
    let present = [
        (
            "requestHeaderModifier",
            filter.request_header_modifier.is_some(),
        ),
        (
            "responseHeaderModifier",
            filter.response_header_modifier.is_some(),
        ),
        ("requestRedirect", filter.request_redirect.is_some()),
        ("urlRewrite", filter.url_rewrite.is_some()),
        ("requestMirror", filter.request_mirror.is_some()),
        ("extensionRef", filter.extension_ref.is_some()),
        ("cors", filter.cors.is_some()),
    ];
    let (kind, own) = match filter.kind.as_str() {
        "RequestHeaderModifier" => (FilterKind::RequestHeaderModifier, "requestHeaderModifier"),
        "ResponseHeaderModifier" => (FilterKind::ResponseHeaderModifier, "responseHeaderModifier"),
        "RequestRedirect" => (FilterKind::RequestRedirect, "requestRedirect"),
        "URLRewrite" => (FilterKind::UrlRewrite, "urlRewrite"),
        "RequestMirror" => (FilterKind::RequestMirror, "requestMirror"),
        "ExtensionRef" | "CORS" | "ExternalAuth" => {
            return Err(bad(
                format!("{field}.type"),
                format!("{} filters are not supported by weft's waypoint; remove the filter", filter.kind),
            ))
        }
        other => {
            return Err(bad(
                format!("{field}.type"),
                format!("{other:?} is not a filter type; use RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite or RequestMirror"),
            ))
        }
    };
    for (name, is_set) in present {
        if is_set && name != own {
            return Err(bad(
                format!("{field}.{name}"),
                format!(
                    "set, but the filter's type is {}; give only {own}",
                    filter.kind
                ),
            ));
        }
    }
    if !present.iter().any(|(name, set)| *set && *name == own) {
        return Err(bad(
            format!("{field}.{own}"),
            format!("required with type {}", filter.kind),
        ));
    }
    Ok(kind)
}

fn check_header_modifier(modifier: &HeaderModifier, at: &str) -> Result<(), RuleError> {
    let mut seen = std::collections::BTreeSet::new();
    for (list, what) in [(&modifier.set, "set"), (&modifier.add, "add")] {
        for (k, header) in list.iter().enumerate() {
            let field = format!("{at}.{what}[{k}]");
            http::HeaderName::from_bytes(header.name.as_bytes()).map_err(|_| {
                bad(
                    format!("{field}.name"),
                    format!("{:?} is not a valid header name", header.name),
                )
            })?;
            http::HeaderValue::from_str(&header.value).map_err(|_| {
                bad(
                    format!("{field}.value"),
                    format!("{:?} is not a valid header value", header.value),
                )
            })?;
            if !seen.insert((what, header.name.to_ascii_lowercase())) {
                return Err(bad(
                    format!("{field}.name"),
                    format!("{:?} appears twice in {what}", header.name),
                ));
            }
        }
    }
    for (k, name) in modifier.remove.iter().enumerate() {
        http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            bad(
                format!("{at}.remove[{k}]"),
                format!("{name:?} is not a valid header name"),
            )
        })?;
    }
    Ok(())
}

fn check_path_modifier(
    path: &PathModifier,
    at: &str,
    rule: &HttpRouteRule,
) -> Result<(), RuleError> {
    let value = match path.kind.as_str() {
        "ReplaceFullPath" => {
            if path.replace_prefix_match.is_some() {
                return Err(bad(
                    format!("{at}.replacePrefixMatch"),
                    "set, but the type is ReplaceFullPath",
                ));
            }
            path.replace_full_path.as_deref()
        }
        "ReplacePrefixMatch" => {
            if path.replace_full_path.is_some() {
                return Err(bad(
                    format!("{at}.replaceFullPath"),
                    "set, but the type is ReplacePrefixMatch",
                ));
            }
            let prefix_only = !rule.matches.is_empty()
                && rule.matches.iter().all(|m| {
                    m.path
                        .as_ref()
                        .is_none_or(|p| p.kind == PathMatchType::PathPrefix)
                });
            if !prefix_only && !rule.matches.is_empty() {
                return Err(bad(
                    format!("{at}.type"),
                    "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match",
                ));
            }
            path.replace_prefix_match.as_deref()
        }
        other => {
            return Err(bad(
                format!("{at}.type"),
                format!("{other:?} is not ReplaceFullPath or ReplacePrefixMatch"),
            ))
        }
    };
    let value = value.unwrap_or("/");
    if !value.starts_with('/') {
        return Err(bad(
            at.to_owned(),
            format!("{value:?} must start with \"/\""),
        ));
    }
    Ok(())
}

fn check_backend(
    group: Option<&str>,
    kind: Option<&str>,
    name: &str,
    namespace: Option<&str>,
    port: Option<i64>,
    at: &str,
) -> Result<(), RuleError> {
    let (group, kind) = (group.unwrap_or(""), kind.unwrap_or("Service"));
    if (group, kind) != ("", "Service") {
        return Err(bad(
            format!("{at}.kind"),
            format!("{group:?}/{kind:?} is not a backend weft can send to; use a Service (group \"\", kind Service)"),
        ));
    }
    crate::names::check_dns_label(name)
        .map_err(|reason| bad(format!("{at}.name"), format!("{name:?} {reason}")))?;
    if let Some(ns) = namespace {
        crate::names::check_dns_label(ns)
            .map_err(|reason| bad(format!("{at}.namespace"), format!("{ns:?} {reason}")))?;
    }
    match port {
        None => Err(bad(format!("{at}.port"), "required for a Service backend")),
        Some(p) if !(1..=65535).contains(&p) => Err(bad(
            format!("{at}.port"),
            format!("{p} is not a valid port; use 1-65535"),
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn err(rules: serde_json::Value) -> RuleError {
        let rules: Vec<serde_json::Value> = serde_json::from_value(rules).unwrap();
        parse_rules(&rules).unwrap_err()
    }

    #[test]
    fn a_canary_and_header_route_parse_with_defaults() {
        let rules: Vec<serde_json::Value> = serde_json::from_value(json!([
            {"name": "beta", "matches": [{"headers": [{"name": "x-user-group", "value": "beta"}]}],
             "backendRefs": [{"name": "reviews-v2", "port": 9080}]},
            {"backendRefs": [{"name": "reviews-v1", "port": 9080, "weight": 90},
                             {"name": "reviews-v2", "port": 9080, "weight": 10}]},
        ]))
        .unwrap();
        let parsed = parse_rules(&rules).unwrap();
        assert_eq!(parsed[0].name.as_deref(), Some("beta"));
        assert_eq!(parsed[0].matches[0].headers[0].kind, StringMatchType::Exact);
        assert_eq!(parsed[1].backend_refs[0].weight(), 90);
        assert_eq!(parsed[0].backend_refs[0].weight(), 1);
    }

    #[test]
    fn unknown_and_unsupported_fields_are_refused_with_their_path() {
        let e = err(json!([{"matches": [{"path": {"type": "Exact", "value": "/a", "extra": 1}}]}]));
        assert_eq!(e.field, "spec.rules[0].matches[0].path.extra", "{e:?}");
        assert!(e.message.contains("extra"), "{e:?}");
        let e = err(json!([{"retry": {"attempts": 2, "perTryTimeout": "1s"}}]));
        assert_eq!(e.field, "spec.rules[0].retry.perTryTimeout", "{e:?}");
        let e = err(json!([{"sessionPersistence": {"type": "Cookie"}}]));
        assert_eq!(e.field, "spec.rules[0].sessionPersistence", "{e:?}");
        let e = err(json!([{"timeouts": {"request": "1s", "idle": "2s"}}]));
        assert_eq!(e.field, "spec.rules[0].timeouts.idle", "{e:?}");
        let e =
            err(json!([{"filters": [{"type": "ExtensionRef", "extensionRef": {"name": "x"}}]}]));
        assert_eq!(e.field, "spec.rules[0].filters[0].type");
        let e = err(json!([{"matches": [{"path": {"type": "Glob", "value": "/a"}}]}]));
        assert_eq!(e.field, "spec.rules[0].matches[0].path.type", "{e:?}");
    }

    #[test]
    fn values_the_spec_forbids_name_their_field() {
        for (rules, field) in [
            (
                json!([{"matches": [{"path": {"value": "a"}}]}]),
                "spec.rules[0].matches[0].path.value",
            ),
            (
                json!([{"matches": [{"path": {"type": "RegularExpression", "value": "(["}}]}]),
                "spec.rules[0].matches[0].path.value",
            ),
            (
                json!([{"matches": [{"method": "FETCH"}]}]),
                "spec.rules[0].matches[0].method",
            ),
            (
                json!([{"matches": [{"headers": [{"name": "bad name", "value": "x"}]}]}]),
                "spec.rules[0].matches[0].headers[0].name",
            ),
            (
                json!([{"backendRefs": [{"name": "v1"}]}]),
                "spec.rules[0].backendRefs[0].port",
            ),
            (
                json!([{"backendRefs": [{"name": "v1", "port": 80, "weight": -1}]}]),
                "spec.rules[0].backendRefs[0].weight",
            ),
            (
                json!([{"backendRefs": [{"kind": "ConfigMap", "name": "v1", "port": 80}]}]),
                "spec.rules[0].backendRefs[0].kind",
            ),
            (
                json!([{"filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 304}}]}]),
                "spec.rules[0].filters[0].requestRedirect.statusCode",
            ),
            (
                json!([{"filters": [{"type": "RequestRedirect"}]}]),
                "spec.rules[0].filters[0].requestRedirect",
            ),
            (
                json!([{"filters": [{"type": "RequestRedirect", "urlRewrite": {}}]}]),
                "spec.rules[0].filters[0].urlRewrite",
            ),
            (
                json!([{"filters": [{"type": "RequestRedirect", "requestRedirect": {}}, {"type": "URLRewrite", "urlRewrite": {}}]}]),
                "spec.rules[0].filters",
            ),
            (
                json!([{"matches": [{"path": {"type": "Exact", "value": "/a"}}],
                     "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}}}]}]),
                "spec.rules[0].filters[0].urlRewrite.path.type",
            ),
            (json!([{"name": "a"}, {"name": "a"}]), "spec.rules[1].name"),
            (
                json!([{"filters": [{"type": "RequestRedirect", "requestRedirect": {}}], "backendRefs": [{"name": "v1", "port": 80}]}]),
                "spec.rules[0].backendRefs",
            ),
        ] {
            let e = err(rules.clone());
            assert_eq!(e.field, field, "{rules}: {e:?}");
        }
    }

    #[test]
    fn timeouts_are_gateway_durations_and_backend_fits_in_request() {
        assert_eq!(parse_gateway_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(
            parse_gateway_duration("500ms"),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(
            parse_gateway_duration("1h2m3s4ms"),
            Ok(Duration::from_millis(3_723_004))
        );
        assert_eq!(parse_gateway_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "1", "s", "1.5s", "123456s", "1d", "1s1s1s1s1s", "-1s"] {
            assert!(parse_gateway_duration(bad).is_err(), "{bad:?} accepted");
        }
        let rules: Vec<serde_json::Value> = serde_json::from_value(json!([
            {"timeouts": {"request": "2s", "backendRequest": "500ms"}},
            {"timeouts": {"request": "0s"}},
        ]))
        .unwrap();
        let parsed = parse_rules(&rules).unwrap();
        let timeouts = parsed[0].timeouts.as_ref().unwrap();
        assert_eq!(timeouts.request(), Some(Duration::from_secs(2)));
        assert_eq!(timeouts.backend_request(), Some(Duration::from_millis(500)));
        assert_eq!(parsed[1].timeouts.as_ref().unwrap().request(), None);
        let e = err(json!([{"timeouts": {"request": "1x"}}]));
        assert_eq!(e.field, "spec.rules[0].timeouts.request", "{e:?}");
        let zero_backend: Vec<serde_json::Value> = serde_json::from_value(
            json!([{"timeouts": {"request": "1s", "backendRequest": "0s"}}]),
        )
        .unwrap();
        assert!(
            parse_rules(&zero_backend).is_ok(),
            "backendRequest 0s is allowed"
        );
        let e = err(json!([{"timeouts": {"request": "1s", "backendRequest": "2s"}}]));
        assert_eq!(e.field, "spec.rules[0].timeouts.backendRequest", "{e:?}");
    }

    #[test]
    fn retries_parse_with_defaults_and_bad_values_name_their_field() {
        let rules: Vec<serde_json::Value> = serde_json::from_value(json!([
            {"retry": {"codes": [500, 503], "attempts": 3, "backoff": "100ms"}},
            {"retry": {}},
        ]))
        .unwrap();
        let parsed = parse_rules(&rules).unwrap();
        let retry = parsed[0].retry.as_ref().unwrap();
        assert_eq!(
            (retry.codes(), retry.attempts(), retry.backoff()),
            (vec![500, 503], 3, Duration::from_millis(100))
        );
        let defaults = parsed[1].retry.as_ref().unwrap();
        assert_eq!(
            (defaults.codes(), defaults.attempts(), defaults.backoff()),
            (vec![], DEFAULT_RETRY_ATTEMPTS, DEFAULT_RETRY_BACKOFF)
        );
        for (retry, field) in [
            (json!({"codes": [200]}), "spec.rules[0].retry.codes[0]"),
            (json!({"codes": [503, 600]}), "spec.rules[0].retry.codes[1]"),
            (json!({"attempts": -1}), "spec.rules[0].retry.attempts"),
            (json!({"attempts": 11}), "spec.rules[0].retry.attempts"),
            (json!({"backoff": "fast"}), "spec.rules[0].retry.backoff"),
            (json!({"backoff": "2m"}), "spec.rules[0].retry.backoff"),
            (json!({"codes": "503"}), "spec.rules[0].retry.codes"),
        ] {
            let e = err(json!([{ "retry": retry }]));
            assert_eq!(e.field, field, "{retry}: {e:?}");
        }
    }
}
