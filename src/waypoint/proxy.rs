//! One HTTP request through the waypoint, start to end: the trace context, the plan
//! ([`pipeline`]), the endpoint of the chosen backend, the upstream
//! request (origin-form for HTTP/1.1, `:authority` for HTTP/2, hop-by-hop headers
//! removed), mirrors on the side, the timeouts, the retries ([`super::retry`]: another
//! endpoint, after a backoff, while the body can be replayed and the budget allows), the
//! response's header modifiers, and the request's telemetry ([`RequestReport`]), recorded
//! when the response body ends or is dropped.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::balancer::{stable_hash, InFlight, EJECTIONS_TOTAL};
use super::circuit_breaker::{CircuitBreakers, RequestPermit};
use super::faults::{Injected, ServiceFaults, FAULTS_TOTAL};
use super::filters;
use super::mirror_body::{MirrorBody, Tee};
use super::pipeline::{self, MirrorTarget, Origin, Plan};
use super::replay_body::{replayable, NoReplay, Replay, REPLAY_LIMIT};
use super::retry::{Failure, RetryPolicy};
use super::retry_budget::{RetryBudgets, RETRIES_TOTAL};
use super::route_table::{RequestView, ServicePortRoutes};
use super::upstream::{
    BodyError, Endpoint, Lease, ProxyBody, Sent, UpstreamError, UpstreamProtocol, Upstreams,
};
use crate::identity::SpiffeId;
use crate::model::http_route_rules::{HeaderModifier, HttpRouteTimeouts};
use crate::model::traffic_policies::{Abort, HashKey};
use crate::model::{MeshSnapshot, MeshStore, Service};
use crate::telemetry::request::{RequestInfo, RequestReport};
use crate::telemetry::trace_context::TraceContext;
use crate::telemetry::WorkloadLabels;

/// Headers that describe one hop, never forwarded (RFC 9110 7.6.1), plus HTTP/2's
/// forbidden connection-specific ones.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// What the waypoint applies to a request its route says nothing about, and the state its
/// safeguards share across requests.
pub struct ForwardingDefaults {
    /// The response-head timeout of a request whose route sets no `timeouts`.
    pub response_timeout: Option<Duration>,
    /// The retries of a request whose route has no `retry`.
    pub retry: Arc<RetryPolicy>,
    /// Each backend Service's retry budget.
    pub budgets: RetryBudgets,
    /// Each backend Service's connection pool limits.
    pub breakers: CircuitBreakers,
}

/// What every request of one HBONE stream shares: who called, which Service address, and
/// the route table (rebuilt when the model changes).
pub struct StreamContext {
    /// The model.
    pub store: Arc<MeshStore>,
    /// Where forwarded requests go.
    pub upstreams: Arc<Upstreams>,
    /// The caller's identity, proven by mTLS.
    pub peer: Arc<SpiffeId>,
    /// The tunnel's client address.
    pub remote: SocketAddr,
    /// The calling workload's IP (the forwarded client address, else the tunnel's), for
    /// consistent hashing on the source.
    pub caller_ip: IpAddr,
    /// The Service `VIP:port` called (the CONNECT authority).
    pub authority: SocketAddr,
    /// The caller's labels.
    pub source: Arc<WorkloadLabels>,
    /// What applies where the route is silent.
    pub defaults: Arc<ForwardingDefaults>,
    routes: Mutex<Option<(Arc<MeshSnapshot>, Arc<ServicePortRoutes>)>>,
    faults: Mutex<Option<(Arc<MeshSnapshot>, Arc<ServiceFaults>)>>,
}

// === impl StreamContext ===

impl StreamContext {
    /// The context of one stream.
    pub fn new(
        store: Arc<MeshStore>,
        upstreams: Arc<Upstreams>,
        peer: Arc<SpiffeId>,
        remote: SocketAddr,
        authority: SocketAddr,
        source: Arc<WorkloadLabels>,
        defaults: Arc<ForwardingDefaults>,
    ) -> Self {
        StreamContext {
            store,
            upstreams,
            peer,
            remote,
            caller_ip: remote.ip(),
            authority,
            source,
            defaults,
            routes: Mutex::new(None),
            faults: Mutex::new(None),
        }
    }

    /// The fault rules of `service` in `snapshot`, built once per snapshot.
    fn faults(&self, snapshot: &Arc<MeshSnapshot>, service: &Service) -> Arc<ServiceFaults> {
        let mut cached = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((built_for, faults)) = cached.as_ref() {
            if Arc::ptr_eq(built_for, snapshot) {
                return faults.clone();
            }
        }
        let faults = Arc::new(ServiceFaults::build(snapshot, service));
        *cached = Some((snapshot.clone(), faults.clone()));
        faults
    }

    /// The same context, for a caller whose own IP is `ip` (the tunnel says it).
    pub fn with_caller_ip(mut self, ip: Option<IpAddr>) -> Self {
        if let Some(ip) = ip {
            self.caller_ip = ip;
        }
        self
    }

    /// The routes of `service`'s called port in `snapshot`, built once per snapshot.
    fn routes(&self, snapshot: &Arc<MeshSnapshot>, service: &Service) -> Arc<ServicePortRoutes> {
        let mut cached = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((built_for, routes)) = cached.as_ref() {
            if Arc::ptr_eq(built_for, snapshot) {
                return routes.clone();
            }
        }
        let routes = Arc::new(match service.port(self.authority.port()) {
            Some(port) => ServicePortRoutes::build(snapshot, service, port),
            None => ServicePortRoutes::default(),
        });
        *cached = Some((snapshot.clone(), routes.clone()));
        routes
    }
}

/// Serves one request that arrived on `ctx`'s stream.
pub async fn serve(
    ctx: Arc<StreamContext>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let arrived = Instant::now();
    let snapshot = ctx.store.load();
    let (mut parts, body) = request.into_parts();
    let trace = TraceContext::propagate(&mut parts.headers);
    let service = snapshot.service_by_vip(ctx.authority.ip()).cloned();
    let mut report = RequestReport::new(RequestInfo {
        peer: ctx.remote,
        authority: ctx.authority,
        source: ctx.source.clone(),
        service_host: service
            .as_ref()
            .map_or_else(|| ctx.authority.to_string(), |s| s.hostname()),
        service_name: service
            .as_ref()
            .map_or_else(|| "unknown".into(), |s| s.name.clone()),
        service_namespace: service
            .as_ref()
            .map_or_else(|| "unknown".into(), |s| s.namespace.clone()),
        protocol: if is_grpc(&parts.headers) {
            "grpc"
        } else {
            "http"
        },
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".into(), |p| p.as_str().to_owned()),
        host: request_host_with_port(&parts).unwrap_or_default(),
        trace_id: trace.trace_id_hex(),
    });
    let Some(service) = service else {
        return Ok(local(
            report,
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            "UH",
            "the Service called is no longer in the mesh model",
        ));
    };
    let routes = ctx.routes(&snapshot, &service);
    // Faults match the request as it arrived, before any route filter edits it.
    let faults = ctx.faults(&snapshot, &service);
    let injected = if faults.is_empty() {
        None
    } else {
        let view = RequestView {
            method: &parts.method,
            path: parts.uri.path(),
            query: parts.uri.query(),
            headers: &parts.headers,
        };
        faults.decide(&view, ctx.peer.namespace(), &mut || {
            rand::random::<f64>() * 100.0
        })
    };
    let default_host = ctx.authority.ip().to_string();
    let origin = Origin {
        caller_namespace: Some(ctx.peer.namespace()),
        service_namespace: &service.namespace,
        port: ctx.authority.port(),
        default_host: &default_host,
    };
    let decided = pipeline::plan(&snapshot, &routes, origin, &mut parts, &mut rand::random);
    let target = match decided {
        Plan::Respond {
            status,
            location,
            reason,
            route,
        } => {
            report.set_route(route);
            let flag = match status {
                StatusCode::NOT_FOUND => "NR",
                StatusCode::SERVICE_UNAVAILABLE => "UH",
                _ if location.is_some() => "-",
                _ => "NR",
            };
            return Ok(local(report, status, location, flag, &reason));
        }
        Plan::ToService => {
            report.set_route(None);
            Target {
                backend: service.clone(),
                port: ctx.authority.port(),
                response_headers: Vec::new(),
                mirrors: Vec::new(),
                timeouts: None,
                retry: ctx.defaults.retry.clone(),
            }
        }
        Plan::Forward {
            backend,
            route,
            response_headers,
            mirrors,
            timeouts,
            retry,
        } => {
            report.set_route(Some(route));
            Target {
                backend: backend.service.clone(),
                port: backend.port,
                response_headers: response_headers.into_iter().cloned().collect(),
                mirrors,
                timeouts: timeouts.cloned(),
                retry: retry.map_or_else(
                    || ctx.defaults.retry.clone(),
                    |r| Arc::new(RetryPolicy::from_route(r)),
                ),
            }
        }
    };
    if let Some(fault) = injected {
        let service_key = format!("{}/{}", service.namespace, service.name);
        if let Some(answer) = inject(&mut report, fault, &service_key).await {
            return Ok(answer(report));
        }
    }
    Ok(forward(&ctx, &snapshot, report, arrived, parts, body, target).await)
}

/// Applies an injected fault: waits out its delay, and for an abort returns how to answer
/// (the caller hands it the report).
async fn inject(
    report: &mut RequestReport,
    fault: Injected,
    service: &str,
) -> Option<impl FnOnce(RequestReport) -> Response<ProxyBody>> {
    let count = |what: &'static str| {
        metrics::counter!(
            FAULTS_TOTAL,
            "destination_service" => service.to_owned(),
            "fault" => what,
            "policy" => fault.policy.clone()
        )
        .increment(1);
    };
    if let Some(delay) = fault.delay {
        count("delay");
        report.set_flag(
            "DI",
            format!("delayed {delay:?} by FaultInjection {}", fault.policy),
        );
        tokio::time::sleep(delay).await;
    }
    let abort = fault.abort?;
    count("abort");
    let reason = format!("fault injected by FaultInjection {}", fault.policy);
    Some(move |report: RequestReport| match abort {
        Abort::Http(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            local(report, status, None, "FI", &reason)
        }
        Abort::Grpc(code) => grpc_abort(report, code, &reason),
    })
}

/// A gRPC trailers-only answer with status `code`, made here.
fn grpc_abort(mut report: RequestReport, code: u32, reason: &str) -> Response<ProxyBody> {
    report.set_status(200);
    report.set_grpc_status(&code.to_string());
    report.set_flag("FI", reason);
    let empty = http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(ReportingBody::made_here(report, empty).boxed());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code));
    if let Ok(message) = HeaderValue::from_str(reason) {
        headers.insert("grpc-message", message);
    }
    response
}

/// Where a planned request goes, and what applies to it on the way.
struct Target {
    backend: Arc<Service>,
    port: u16,
    response_headers: Vec<HeaderModifier>,
    mirrors: Vec<MirrorTarget>,
    timeouts: Option<HttpRouteTimeouts>,
    retry: Arc<RetryPolicy>,
}

/// What one attempt came to, short of an answer to pass on.
enum Attempt {
    /// The upstream answered with a status the policy retries.
    Answered(Box<Answer>),
    /// The exchange failed.
    Failed(UpstreamError),
    /// The attempt's deadline passed before the response head.
    TimedOut,
}

/// Sends the request to an endpoint of `target`, again on a retryable failure, and
/// answers with the response or the failure.
async fn forward(
    ctx: &Arc<StreamContext>,
    snapshot: &Arc<MeshSnapshot>,
    mut report: RequestReport,
    arrived: Instant,
    mut parts: Parts,
    body: Incoming,
    target: Target,
) -> Response<ProxyBody> {
    let Target {
        backend,
        port,
        response_headers,
        mirrors,
        timeouts,
        retry,
    } = target;
    let default_timeout = ctx.defaults.response_timeout;
    let protocol = upstream_protocol(&parts, &backend, port);
    strip_hop_by_hop(&mut parts.headers);
    let method = parts.method.clone();
    let (body_ended, request_body_ended) = tokio::sync::watch::channel(body.is_end_stream());
    let counted = CountedRequest {
        ended: (!body.is_end_stream()).then_some(body_ended),
        inner: body,
        bytes: report.request_bytes(),
    };
    let client_body = if mirrors.is_empty() {
        counted.map_err(BodyError::from).boxed()
    } else {
        let (tee, copies) = Tee::new(counted, mirrors.len());
        let limit = Deadline::of(timeouts.as_ref(), arrived, default_timeout).mirror_limit();
        for (mirror, copy) in mirrors.into_iter().zip(copies) {
            send_mirror(ctx, snapshot, &parts, mirror, copy, limit);
        }
        tee.map_err(BodyError::from).boxed()
    };
    let head = match upstream_head(parts, protocol, ctx.authority) {
        Ok(parts) => parts,
        Err(reason) => return local(report, StatusCode::BAD_REQUEST, None, "DPE", &reason),
    };
    let (replay, mut attempt_body) = if retry.attempts() > 0 {
        let (replay, first) = replayable(client_body, REPLAY_LIMIT);
        (Some(replay), first.boxed())
    } else {
        (None, client_body)
    };
    let service_key = format!("{}/{}", backend.namespace, backend.name);
    let policy = snapshot.destination_policy(&backend.namespace, &backend.name);
    let budget = ctx.defaults.budgets.of(&service_key, policy.map(|p| &**p));
    let gate = ctx
        .defaults
        .breakers
        .gate(&service_key, policy.map(|p| &**p));
    let permit = match gate.admit_request() {
        Ok(permit) => permit,
        Err(overflow) => {
            let reason = format!("circuit breaker: {overflow}");
            return local(report, StatusCode::SERVICE_UNAVAILABLE, None, "UO", &reason);
        }
    };
    let mut permit = Some(permit);
    budget.deposit();
    let request_deadline = timeouts
        .as_ref()
        .and_then(HttpRouteTimeouts::request)
        .map(|d| arrived + d);
    let hash = policy
        .and_then(|p| p.hash_key.as_ref())
        .and_then(|key| hash_of(key, &head, ctx.caller_ip));
    let mut tried = Vec::new();
    let mut retries = 0;
    loop {
        let endpoint = match ctx.upstreams.pick(snapshot, &backend, port, &tried, hash) {
            Ok(endpoint) => endpoint,
            Err(error) => {
                let reason = error.to_string();
                return local(report, StatusCode::SERVICE_UNAVAILABLE, None, "UH", &reason);
            }
        };
        report.set_upstream(
            endpoint.addr,
            WorkloadLabels::shared(endpoint.workload.as_ref(), endpoint.identity.as_ref()),
        );
        tried.push(endpoint.addr);
        let deadline = Deadline::of(timeouts.as_ref(), arrived, default_timeout);
        let request = Request::from_parts(copy_head(&head), attempt_body);
        let mut in_flight = Some(endpoint.stats.start());
        let sent_at = Instant::now();
        let dispatched = AtomicBool::new(false);
        let sent = ctx
            .upstreams
            .send(&endpoint, protocol, request, Some(&gate), Some(&dispatched));
        let limit = deadline.head_limit(request_body_ended.clone());
        let attempt = tokio::select! {
            answered = sent => match answered {
                Ok(Sent { response, lease, dispatched }) => {
                    let status = response.status().as_u16();
                    observe(&endpoint, dispatched, status >= 500);
                    if !retry.retries_status(&method, status) {
                        let answer = Answer { response, lease, in_flight: in_flight.take(), permit: permit.take() };
                        return respond(report, answer, &response_headers, deadline.body_timer());
                    }
                    Attempt::Answered(Box::new(Answer { response, lease, in_flight: in_flight.take(), permit: None }))
                }
                Err(error) => {
                    // The circuit breaker's refusal says nothing of the endpoint.
                    if !matches!(error, UpstreamError::Overflow(_)) {
                        observe(&endpoint, sent_at, true);
                    }
                    Attempt::Failed(error)
                }
            },
            () = limit => {
                // Time spent waiting for a connection under the circuit breaker's limit
                // says nothing of the endpoint.
                if dispatched.load(Ordering::Acquire) {
                    observe(&endpoint, sent_at, true);
                }
                Attempt::TimedOut
            }
        };
        in_flight.take();
        let failure = match &attempt {
            Attempt::Answered(answer) => Failure::Status(answer.response.status().as_u16()),
            Attempt::Failed(error) => Failure::of_error(error),
            Attempt::TimedOut if deadline.per_attempt => Failure::AttemptTimeout,
            Attempt::TimedOut => {
                return give_up(
                    report,
                    attempt,
                    &deadline,
                    &response_headers,
                    None,
                    permit.take(),
                )
            }
        };
        if !retry.retries(&method, failure) {
            return give_up(
                report,
                attempt,
                &deadline,
                &response_headers,
                None,
                permit.take(),
            );
        }
        if retries >= retry.attempts() {
            let why = format!(
                "retried {retries} times, as many as the {} policy allows",
                retry.source()
            );
            return give_up(
                report,
                attempt,
                &deadline,
                &response_headers,
                Some(("URX", why)),
                permit.take(),
            );
        }
        // Checked without taking the body from the attempt: a refused retry passes that
        // attempt's answer on whole.
        if let Err(why) = replay
            .as_ref()
            .map_or(Err(NoReplay::TooLarge), Replay::check)
        {
            let note = match why {
                NoReplay::TooLarge => ("RBS", format!("not retried: the request body is larger than the {REPLAY_LIMIT} bytes kept for retries")),
                NoReplay::Failed => ("DC", "not retried: the client's request body failed".to_owned()),
            };
            return give_up(
                report,
                attempt,
                &deadline,
                &response_headers,
                Some(note),
                permit.take(),
            );
        }
        let wait = retry.backoff(retries + 1, rand::random());
        if request_deadline.is_some_and(|at| Instant::now() + wait >= at) {
            let why =
                "not retried: the route's timeouts.request leaves no time for another attempt"
                    .to_owned();
            return give_up(
                report,
                attempt,
                &deadline,
                &response_headers,
                Some(("URX", why)),
                permit.take(),
            );
        }
        if !budget.withdraw() {
            let why = format!("not retried: the retry budget of {service_key} is spent");
            return give_up(
                report,
                attempt,
                &deadline,
                &response_headers,
                Some(("RBX", why)),
                permit.take(),
            );
        }
        let Some(next_body) = replay.as_ref().and_then(Replay::next) else {
            let why = "not retried: the request body cannot be sent again".to_owned();
            return give_up(
                report,
                attempt,
                &deadline,
                &response_headers,
                Some(("RBS", why)),
                permit.take(),
            );
        };
        drop(attempt);
        metrics::counter!(RETRIES_TOTAL, "destination_service" => service_key.clone(), "reason" => failure.label())
            .increment(1);
        tracing::debug!(?failure, retry = retries + 1, ?wait, "retrying");
        tokio::time::sleep(wait).await;
        retries += 1;
        report.set_retries(retries);
        attempt_body = next_body.boxed();
    }
}

/// Tells the balancer how an attempt on `endpoint` went; counts and logs an ejection.
fn observe(endpoint: &Endpoint, sent_at: Instant, failed: bool) {
    let outlier = &endpoint.outlier;
    if let Some(length) = endpoint.stats.observe(sent_at.elapsed(), failed, outlier) {
        metrics::counter!(EJECTIONS_TOTAL, "endpoint" => endpoint.addr.to_string()).increment(1);
        tracing::warn!(
            endpoint = %endpoint.addr,
            ejected_for = ?length,
            failures = outlier.consecutive_failures,
            "endpoint ejected after consecutive failures"
        );
    }
}

/// An upstream's response head, what it came on, and the balancer's guard that counts it
/// outstanding until its body ends.
struct Answer {
    response: Response<Incoming>,
    lease: Option<Lease>,
    in_flight: Option<InFlight>,
    /// The backend's circuit-breaker count of requests in flight.
    permit: Option<RequestPermit>,
}

/// The answer when an attempt failed and is not tried again: the upstream's response
/// (flagged `note`), or the waypoint's 502 / 503 / 504.
fn give_up(
    mut report: RequestReport,
    attempt: Attempt,
    deadline: &Deadline,
    response_headers: &[HeaderModifier],
    note: Option<(&'static str, String)>,
    permit: Option<RequestPermit>,
) -> Response<ProxyBody> {
    let (note_flag, note_reason) = match note {
        Some((flag, reason)) => (Some(flag), format!("; {reason}")),
        None => (None, String::new()),
    };
    match attempt {
        Attempt::Answered(answer) => {
            if let Some(flag) = note_flag {
                report.set_flag(flag, note_reason.trim_start_matches("; ").to_owned());
            }
            let mut answer = *answer;
            answer.permit = permit;
            respond(report, answer, response_headers, deadline.body_timer())
        }
        Attempt::Failed(error) => {
            let (status, flag) = match &error {
                UpstreamError::Http { .. } => (StatusCode::BAD_GATEWAY, "UPE"),
                UpstreamError::Overflow(_) => (StatusCode::SERVICE_UNAVAILABLE, "UO"),
                _ => (StatusCode::SERVICE_UNAVAILABLE, "UF"),
            };
            let reason = format!("{error}{note_reason}");
            local(report, status, None, note_flag.unwrap_or(flag), &reason)
        }
        Attempt::TimedOut => {
            let reason = format!(
                "the upstream did not answer within {}{note_reason}",
                deadline.what
            );
            local(
                report,
                StatusCode::GATEWAY_TIMEOUT,
                None,
                note_flag.unwrap_or("UT"),
                &reason,
            )
        }
    }
}

/// The consistent-hash key of a request: the named header's value, the named cookie's, or
/// the caller's IP; `None` when the request has no such header or cookie.
fn hash_of(key: &HashKey, head: &Parts, caller_ip: IpAddr) -> Option<u64> {
    match key {
        HashKey::Header(name) => {
            let value = head.headers.get(name.as_str())?;
            Some(stable_hash(&[value.as_bytes()]))
        }
        HashKey::Cookie(name) => head
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| k == name)
            .map(|(_, v)| stable_hash(&[v.as_bytes()])),
        HashKey::SourceIp => {
            let ip = caller_ip.to_string();
            Some(stable_hash(&[ip.as_bytes()]))
        }
    }
}

/// A copy of a request head (extensions aside), for another attempt or a mirror.
fn copy_head(parts: &Parts) -> Parts {
    let mut copy = Request::new(());
    *copy.method_mut() = parts.method.clone();
    *copy.uri_mut() = parts.uri.clone();
    *copy.version_mut() = parts.version;
    *copy.headers_mut() = parts.headers.clone();
    copy.into_parts().0
}

/// The upstream's answer, with the route's response header modifiers applied and the body
/// wrapped so the report sees its end.
fn respond(
    mut report: RequestReport,
    answer: Answer,
    modifiers: &[HeaderModifier],
    deadline: Option<BodyDeadlineTimer>,
) -> Response<ProxyBody> {
    let Answer {
        response,
        lease,
        in_flight,
        permit,
    } = answer;
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    for modifier in modifiers {
        filters::modify_headers(&mut parts.headers, modifier);
    }
    report.set_status(parts.status.as_u16());
    if let Some(grpc) = parts
        .headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
    {
        report.set_grpc_status(grpc);
    }
    let body = ReportingBody {
        inner: body.map_err(BodyError::from).boxed(),
        report: Some(report),
        lease,
        deadline,
        in_flight,
        permit,
    };
    Response::from_parts(parts, body.boxed())
}

/// A response made here: `status`, an optional `Location`, and `reason` as the body.
fn local(
    mut report: RequestReport,
    status: StatusCode,
    location: Option<String>,
    flag: &'static str,
    reason: &str,
) -> Response<ProxyBody> {
    report.set_status(status.as_u16());
    if flag != "-" {
        report.set_flag(flag, reason);
    }
    let text = Full::new(Bytes::from(format!("{reason}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(ReportingBody::made_here(report, text).boxed());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        headers.insert(header::LOCATION, location);
    }
    response
}

/// HTTP/2 upstream for gRPC (which needs it) or a backend port declared as HTTP/2
/// (`appProtocol` h2c, http2, grpc); HTTP/1.1 otherwise, whatever the client spoke: an
/// application that did not say it speaks HTTP/2 may not.
fn upstream_protocol(parts: &Parts, backend: &Service, port: u16) -> UpstreamProtocol {
    let declared_h2 = backend
        .port(port)
        .and_then(|p| p.app_protocol.as_deref())
        .is_some_and(|p| {
            matches!(
                p.to_ascii_lowercase().as_str(),
                "kubernetes.io/h2c" | "h2c" | "http2" | "grpc"
            )
        });
    if is_grpc(&parts.headers) || declared_h2 {
        UpstreamProtocol::Http2
    } else {
        UpstreamProtocol::Http1
    }
}

/// The request head as the upstream gets it.
fn upstream_head(
    mut parts: Parts,
    protocol: UpstreamProtocol,
    vip: SocketAddr,
) -> Result<Parts, String> {
    let host = request_host_with_port(&parts).unwrap_or_else(|| vip.to_string());
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    match protocol {
        UpstreamProtocol::Http1 => {
            parts.version = Version::HTTP_11;
            parts.uri = path
                .parse::<Uri>()
                .map_err(|e| format!("request path {path:?} is not valid: {e}"))?;
            let value = HeaderValue::from_str(&host)
                .map_err(|_| format!("request host {host:?} is not a valid header value"))?;
            parts.headers.insert(header::HOST, value);
        }
        UpstreamProtocol::Http2 => {
            parts.version = Version::HTTP_2;
            parts.uri = Uri::builder()
                .scheme("http")
                .authority(host.as_str())
                .path_and_query(path.as_str())
                .build()
                .map_err(|e| format!("request host {host:?} or path {path:?} is not valid: {e}"))?;
            parts.headers.remove(header::HOST);
        }
    }
    Ok(parts)
}

/// Sends a copy of the request (its head, and its body as the primary reads it) to a
/// mirror; the answer is dropped, and nothing about the mirror reaches the client.
fn send_mirror(
    ctx: &Arc<StreamContext>,
    snapshot: &Arc<MeshSnapshot>,
    parts: &Parts,
    target: MirrorTarget,
    body: MirrorBody,
    limit: Duration,
) {
    let endpoint = match ctx
        .upstreams
        .pick(snapshot, &target.service, target.port, &[], None)
    {
        Ok(endpoint) => endpoint,
        Err(error) => {
            tracing::debug!(%error, "mirror has no endpoint");
            return;
        }
    };
    let protocol = upstream_protocol(parts, &target.service, target.port);
    let Ok(head) = upstream_head(copy_head(parts), protocol, ctx.authority) else {
        return;
    };
    let upstreams = ctx.upstreams.clone();
    tokio::spawn(async move {
        let request = Request::from_parts(head, body.boxed());
        let exchange = async {
            match upstreams
                .send(&endpoint, protocol, request, None, None)
                .await
            {
                Ok(Sent {
                    response, lease, ..
                }) => {
                    if response.into_body().collect().await.is_ok() {
                        if let Some(lease) = lease {
                            lease.release();
                        }
                    }
                }
                Err(error) => tracing::debug!(%error, "mirrored request failed"),
            }
        };
        if tokio::time::timeout(limit, exchange).await.is_err() {
            tracing::debug!(?limit, "mirrored request timed out");
        }
    });
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named by `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let trailers_te = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    // gRPC needs `te: trailers` end to end; it is the one TE value HTTP/2 allows.
    if trailers_te {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The Host header, else the URI's authority, as written (with its port).
fn request_host_with_port(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.as_str().to_owned()))
}

/// The client's request body, counted as the upstream reads it.
struct CountedRequest {
    inner: Incoming,
    bytes: Arc<AtomicU64>,
    /// Told when the body has been read to its end (dropped: it never will be).
    ended: Option<tokio::sync::watch::Sender<bool>>,
}

impl Body for CountedRequest {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                if self.inner.is_end_stream() {
                    self.ended.take().map(|ended| ended.send_replace(true));
                }
            }
            Poll::Ready(_) => {
                self.ended.take().map(|ended| ended.send_replace(true));
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Longest a mirrored request may take when nothing else bounds it.
const MIRROR_MAX: Duration = Duration::from_secs(60);

/// When a forwarded request must have its answer.
struct Deadline {
    /// A route's timeout: the instant by which the whole response (head and body) must be
    /// there.
    route: Option<(Instant, String)>,
    /// Without route timeouts: how long the response head may take once the request body
    /// has been sent (so streams and downloads that started are never cut).
    default: Option<Duration>,
    /// Which timeout it is, for the 504's reason.
    what: String,
    /// `route` is this attempt's `timeouts.backendRequest` (a retry gets a new one), not
    /// the request's.
    per_attempt: bool,
}

impl Deadline {
    /// The earlier of the rule's `timeouts.request` (from `arrived`) and
    /// `timeouts.backendRequest` (from now, this one attempt); without either, `default`
    /// for the response head.
    fn of(
        timeouts: Option<&HttpRouteTimeouts>,
        arrived: Instant,
        default: Option<Duration>,
    ) -> Self {
        let now = Instant::now();
        let declared = timeouts.is_some_and(|t| t.request.is_some() || t.backend_request.is_some());
        if !declared {
            return Deadline {
                route: None,
                per_attempt: false,
                default,
                what: format!(
                    "the waypoint's default response timeout ({:?} after the request was sent; set timeouts.request on the route to change it, 0s for none)",
                    default.unwrap_or_default()
                ),
            };
        }
        let request = timeouts.and_then(HttpRouteTimeouts::request).map(|d| {
            (
                arrived + d,
                format!("the route's timeouts.request ({d:?})"),
                false,
            )
        });
        let backend = timeouts
            .and_then(HttpRouteTimeouts::backend_request)
            .map(|d| {
                (
                    now + d,
                    format!("the route's timeouts.backendRequest ({d:?})"),
                    true,
                )
            });
        // A timeout set to 0s means none (GEP-1742): no default either.
        let route = match (request, backend) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (one, None) | (None, one) => one,
        };
        let what = route
            .as_ref()
            .map(|(_, w, _)| w.clone())
            .unwrap_or_default();
        let per_attempt = route.as_ref().is_some_and(|(_, _, p)| *p);
        Deadline {
            route: route.map(|(at, what, _)| (at, what)),
            per_attempt,
            default: None,
            what,
        }
    }

    /// Resolves when the response head is late: at a route's deadline, or `default`
    /// after the request body has been sent (`body_ended` turns true), or never.
    async fn head_limit(&self, mut body_ended: tokio::sync::watch::Receiver<bool>) {
        match (self.route.as_ref(), self.default) {
            (Some((at, _)), _) => tokio::time::sleep_until((*at).into()).await,
            (None, Some(default)) => {
                // A body dropped unfinished never ends: the timer starts then.
                let _ = body_ended.wait_for(|ended| *ended).await;
                tokio::time::sleep(default).await;
            }
            (None, None) => std::future::pending().await,
        }
    }

    /// The timer a response body must end by, for a route's deadline.
    fn body_timer(&self) -> Option<BodyDeadlineTimer> {
        self.route.as_ref().map(|(at, _)| BodyDeadlineTimer {
            sleep: Box::pin(tokio::time::sleep_until((*at).into())),
            what: self.what.clone(),
        })
    }

    /// How long a mirror of this request may take: as long as the request, never
    /// unbounded.
    fn mirror_limit(&self) -> Duration {
        match &self.route {
            Some((at, _)) => at.saturating_duration_since(Instant::now()),
            None => self.default.unwrap_or(MIRROR_MAX).min(MIRROR_MAX),
        }
    }
}

/// Why a response body was cut.
#[derive(Debug, thiserror::Error)]
#[error("the response did not end within {0}")]
struct BodyTimedOut(String);

/// A response body that tells the report its size, gRPC status and end, and gives the
/// upstream connection back to the pool once read to the end.
struct ReportingBody {
    inner: ProxyBody,
    report: Option<RequestReport>,
    lease: Option<Lease>,
    /// A route's timeout that the body must end by.
    deadline: Option<BodyDeadlineTimer>,
    /// Counts the request outstanding on its endpoint until the body ends.
    in_flight: Option<InFlight>,
    /// Counts it in flight to its backend (circuit breaking) until the body ends.
    permit: Option<RequestPermit>,
}

/// The timer of [`ReportingBody::deadline`].
struct BodyDeadlineTimer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    what: String,
}

impl ReportingBody {
    /// The body of an answer made here (no upstream, nothing held).
    fn made_here(report: RequestReport, inner: ProxyBody) -> Self {
        ReportingBody {
            inner,
            report: Some(report),
            lease: None,
            deadline: None,
            in_flight: None,
            permit: None,
        }
    }

    fn finish(&mut self) {
        if let Some(mut report) = self.report.take() {
            report.complete();
        }
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
        self.in_flight = None;
        self.permit = None;
    }
}

impl Body for ReportingBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        // The deadline first, so an upstream that always has data ready is cut too.
        let this = &mut *self;
        if let Some(timer) = this.deadline.as_mut() {
            if timer.sleep.as_mut().poll(cx).is_ready() {
                let error = BodyTimedOut(timer.what.clone());
                if let Some(report) = this.report.as_mut() {
                    report.set_flag("UT", error.to_string());
                }
                // The upstream connection is mid-response: never reuse it.
                this.lease = None;
                this.deadline = None;
                return Poll::Ready(Some(Err(Box::new(error))));
            }
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let this = &mut *self;
                if let Some(report) = this.report.as_mut() {
                    if let Some(data) = frame.data_ref() {
                        report.add_response_bytes(data.len() as u64);
                    }
                    if let Some(grpc) = frame
                        .trailers_ref()
                        .and_then(|t| t.get("grpc-status"))
                        .and_then(|v| v.to_str().ok())
                    {
                        report.set_grpc_status(grpc);
                    }
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Err(error))) => {
                if let Some(report) = self.report.as_mut() {
                    report.set_flag("UPE", format!("the response body failed: {error}"));
                }
                self.lease = None;
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeouts(request: Option<&str>, backend: Option<&str>) -> HttpRouteTimeouts {
        HttpRouteTimeouts {
            request: request.map(str::to_owned),
            backend_request: backend.map(str::to_owned),
        }
    }

    #[test]
    fn consistent_hash_keys_come_from_the_header_the_cookie_or_the_caller() {
        let (head, ()) = Request::builder()
            .header("x-user", "alice")
            .header(header::COOKIE, "theme=dark; session=abc123")
            .body(())
            .unwrap()
            .into_parts();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let other: IpAddr = "10.1.2.4".parse().unwrap();
        let by_header = HashKey::Header("x-user".into());
        assert_eq!(
            hash_of(&by_header, &head, ip),
            Some(stable_hash(&[b"alice"]))
        );
        assert_eq!(hash_of(&HashKey::Header("x-none".into()), &head, ip), None);
        let by_cookie = HashKey::Cookie("session".into());
        assert_eq!(
            hash_of(&by_cookie, &head, ip),
            Some(stable_hash(&[b"abc123"]))
        );
        assert_eq!(hash_of(&HashKey::Cookie("sess".into()), &head, ip), None);
        let by_ip = hash_of(&HashKey::SourceIp, &head, ip);
        assert!(by_ip.is_some() && by_ip != hash_of(&HashKey::SourceIp, &head, other));
    }

    #[test]
    fn the_default_applies_only_where_a_route_declares_no_timeouts() {
        let default = Some(Duration::from_secs(15));
        let now = Instant::now();
        let none = Deadline::of(None, now, default);
        assert_eq!((none.route.is_none(), none.default), (true, default));
        let empty = Deadline::of(Some(&timeouts(None, None)), now, default);
        assert_eq!(empty.default, default);
        // 0s turns the timeout off, and the default with it.
        let off = Deadline::of(Some(&timeouts(Some("0s"), None)), now, default);
        assert_eq!((off.route.is_none(), off.default), (true, None));
        // The earlier of request (from arrival) and backendRequest (from now) wins.
        let both = Deadline::of(Some(&timeouts(Some("2s"), Some("500ms"))), now, default);
        assert!(both.mirror_limit() <= Duration::from_millis(500));
        let (at, what) = both.route.expect("a route deadline");
        assert!(at <= Instant::now() + Duration::from_millis(500), "{what}");
        assert!(what.contains("backendRequest"), "{what}");
        assert_eq!(none.mirror_limit(), Duration::from_secs(15));
    }
}
