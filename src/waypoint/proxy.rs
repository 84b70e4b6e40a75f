//! One HTTP request through the waypoint, start to end: the trace context, the plan
//! ([`pipeline`]), the endpoint of the chosen backend, the upstream
//! request (origin-form for HTTP/1.1, `:authority` for HTTP/2, hop-by-hop headers
//! removed), mirrors on the side, the response's header modifiers, and the request's
//! telemetry ([`RequestReport`]), recorded when the response body ends or is dropped.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::filters;
use super::mirror_body::{MirrorBody, Tee};
use super::pipeline::{self, MirrorTarget, Origin, Plan};
use super::route_table::ServicePortRoutes;
use super::upstream::{BodyError, Lease, ProxyBody, UpstreamError, UpstreamProtocol, Upstreams};
use crate::identity::SpiffeId;
use crate::model::http_route_rules::{HeaderModifier, HttpRouteTimeouts};
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
    /// The Service `VIP:port` called (the CONNECT authority).
    pub authority: SocketAddr,
    /// The caller's labels.
    pub source: Arc<WorkloadLabels>,
    /// The response-head timeout of a request whose route sets no `timeouts`.
    pub default_timeout: Option<Duration>,
    routes: Mutex<Option<(Arc<MeshSnapshot>, Arc<ServicePortRoutes>)>>,
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
        default_timeout: Option<Duration>,
    ) -> Self {
        StreamContext {
            store,
            upstreams,
            peer,
            remote,
            authority,
            source,
            default_timeout,
            routes: Mutex::new(None),
        }
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
    let default_host = ctx.authority.ip().to_string();
    let origin = Origin {
        caller_namespace: Some(ctx.peer.namespace()),
        service_namespace: &service.namespace,
        port: ctx.authority.port(),
        default_host: &default_host,
    };
    let decided = pipeline::plan(&snapshot, &routes, origin, &mut parts, &mut rand::random);
    let (backend, port, response_headers, mirrors, timeouts) = match decided {
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
            (
                service.clone(),
                ctx.authority.port(),
                Vec::new(),
                Vec::new(),
                None,
            )
        }
        Plan::Forward {
            backend,
            route,
            response_headers,
            mirrors,
            timeouts,
        } => {
            report.set_route(Some(route));
            let modifiers: Vec<HeaderModifier> = response_headers.into_iter().cloned().collect();
            let timeouts = timeouts.cloned();
            (
                backend.service.clone(),
                backend.port,
                modifiers,
                mirrors,
                timeouts,
            )
        }
    };
    let endpoint = match ctx.upstreams.pick(&snapshot, &backend, port) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            let reason = error.to_string();
            return Ok(local(
                report,
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "UH",
                &reason,
            ));
        }
    };
    report.set_upstream(
        endpoint.addr,
        WorkloadLabels::shared(endpoint.workload.as_ref(), endpoint.identity.as_ref()),
    );
    let protocol = upstream_protocol(&parts, &backend, port);
    strip_hop_by_hop(&mut parts.headers);
    let deadline = Deadline::of(timeouts.as_ref(), arrived, ctx.default_timeout);
    let (body_ended, request_body_ended) = tokio::sync::oneshot::channel();
    let counted = CountedRequest {
        ended: (!body.is_end_stream()).then_some(body_ended),
        inner: body,
        bytes: report.request_bytes(),
    };
    let body = if mirrors.is_empty() {
        counted.map_err(BodyError::from).boxed()
    } else {
        let (tee, copies) = Tee::new(counted, mirrors.len());
        let limit = deadline.mirror_limit();
        for (target, copy) in mirrors.into_iter().zip(copies) {
            send_mirror(&ctx, &snapshot, &parts, target, copy, limit);
        }
        tee.map_err(BodyError::from).boxed()
    };
    let upstream_parts = match upstream_head(parts, protocol, ctx.authority) {
        Ok(parts) => parts,
        Err(reason) => return Ok(local(report, StatusCode::BAD_REQUEST, None, "DPE", &reason)),
    };
    let request = Request::from_parts(upstream_parts, body);
    let sent = ctx.upstreams.send(&endpoint, protocol, request);
    // A route's timeout runs from its start; the default one from the end of the request
    // body (an upload's own time is not the upstream's), or from now without one.
    let limit = async {
        match (deadline.route.as_ref(), deadline.default) {
            (Some((at, _)), _) => tokio::time::sleep_until((*at).into()).await,
            (None, Some(default)) => {
                let _ = request_body_ended.await;
                tokio::time::sleep(default).await;
            }
            (None, None) => std::future::pending().await,
        }
    };
    let answered = tokio::select! {
        answered = sent => answered,
        () = limit => {
            let reason = format!("the upstream did not answer within {}", deadline.what);
            return Ok(local(
                report,
                StatusCode::GATEWAY_TIMEOUT,
                None,
                "UT",
                &reason,
            ));
        }
    };
    match answered {
        Ok((response, lease)) => {
            let body_deadline = deadline.route.map(|(at, _)| BodyDeadlineTimer {
                sleep: Box::pin(tokio::time::sleep_until(at.into())),
                what: deadline.what.clone(),
            });
            Ok(respond(
                report,
                response,
                lease,
                &response_headers,
                body_deadline,
            ))
        }
        Err(error) => {
            let (status, flag) = match &error {
                UpstreamError::Http { .. } => (StatusCode::BAD_GATEWAY, "UPE"),
                _ => (StatusCode::SERVICE_UNAVAILABLE, "UF"),
            };
            let reason = error.to_string();
            Ok(local(report, status, None, flag, &reason))
        }
    }
}

/// The upstream's answer, with the route's response header modifiers applied and the body
/// wrapped so the report sees its end.
fn respond(
    mut report: RequestReport,
    response: Response<Incoming>,
    lease: Option<Lease>,
    modifiers: &[HeaderModifier],
    deadline: Option<BodyDeadlineTimer>,
) -> Response<ProxyBody> {
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
    let text = format!("{reason}\n");
    let mut response = Response::new(
        ReportingBody {
            inner: Full::new(Bytes::from(text))
                .map_err(|never| match never {})
                .boxed(),
            report: Some(report),
            lease: None,
            deadline: None,
        }
        .boxed(),
    );
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
    snapshot: &MeshSnapshot,
    parts: &Parts,
    target: MirrorTarget,
    body: MirrorBody,
    limit: Duration,
) {
    let endpoint = match ctx.upstreams.pick(snapshot, &target.service, target.port) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            tracing::debug!(%error, "mirror has no endpoint");
            return;
        }
    };
    let protocol = upstream_protocol(parts, &target.service, target.port);
    let mut copy = Request::new(());
    *copy.method_mut() = parts.method.clone();
    *copy.uri_mut() = parts.uri.clone();
    *copy.version_mut() = parts.version;
    *copy.headers_mut() = parts.headers.clone();
    let (copy_parts, ()) = copy.into_parts();
    let Ok(head) = upstream_head(copy_parts, protocol, ctx.authority) else {
        return;
    };
    let upstreams = ctx.upstreams.clone();
    tokio::spawn(async move {
        let request = Request::from_parts(head, body.boxed());
        let exchange = async {
            match upstreams.send(&endpoint, protocol, request).await {
                Ok((response, lease)) => {
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
    ended: Option<tokio::sync::oneshot::Sender<()>>,
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
                    self.ended.take().map(|ended| ended.send(()));
                }
            }
            Poll::Ready(_) => {
                self.ended.take().map(|ended| ended.send(()));
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
                default,
                what: format!(
                    "the waypoint's default response timeout ({:?} after the request was sent; set timeouts.request on the route to change it, 0s for none)",
                    default.unwrap_or_default()
                ),
            };
        }
        let request = timeouts
            .and_then(HttpRouteTimeouts::request)
            .map(|d| (arrived + d, format!("the route's timeouts.request ({d:?})")));
        let backend = timeouts
            .and_then(HttpRouteTimeouts::backend_request)
            .map(|d| {
                (
                    now + d,
                    format!("the route's timeouts.backendRequest ({d:?})"),
                )
            });
        // A timeout set to 0s means none (GEP-1742): no default either.
        let route = match (request, backend) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (one, None) | (None, one) => one,
        };
        let what = route.as_ref().map(|(_, w)| w.clone()).unwrap_or_default();
        Deadline {
            route,
            default: None,
            what,
        }
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
}

/// The timer of [`ReportingBody::deadline`].
struct BodyDeadlineTimer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    what: String,
}

impl ReportingBody {
    fn finish(&mut self) {
        if let Some(mut report) = self.report.take() {
            report.complete();
        }
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
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
