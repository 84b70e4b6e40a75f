//! The daemon's HTTP endpoints, as operators know them from Istio:
//! - admin on 127.0.0.1:15000: `/config_dump` (JSON: model, policies in force per workload,
//!   served pods and their state, certificates with expiry; never private keys),
//!   `/logging?level=` (change the log filter at runtime), `/healthz/ready`;
//! - metrics on :15020: `/metrics` (Prometheus), `/` (the per-node dashboard), `/stats`
//!   (the JSON the dashboard reads);
//! - readiness on :15021: `/healthz/ready` (200 once the config is loaded and every
//!   enrolled pod has its listeners, 503 with the reason before; a 200 says `degraded` and
//!   why while the source is cut off from its input and the last snapshot serves), and
//!   `/healthz/live` (200 while the process serves HTTP: the liveness probe).
//!
//! All three bind with SO_REUSEPORT, so an upgraded daemon can start beside the old one.

mod http;
pub mod logging;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::config::ConfigSource;
use crate::hbone::server::BoxFuture;
use crate::identity::CertManager;
use crate::model::MeshStore;
use crate::telemetry::MetricsHandle;

pub use http::serve;

/// What only the running mode knows: the workloads it serves and whether it is ready.
pub trait NodeStatus: Send + Sync + 'static {
    /// The pods (or host workloads) served here, with their state, as JSON.
    fn served(&self) -> BoxFuture<'_, Value>;
    /// Ok once every workload that should be served is; Err says what is missing.
    fn ready(&self) -> BoxFuture<'_, Result<(), NotReady>>;
}

/// Why the node is not ready, in words an operator can act on (served by readiness and
/// shown on the dashboard).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotReady(pub String);

/// A log filter the admin API refused, with the parser's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadLogFilter(pub String);

/// Changing the log filter at runtime.
pub trait LogControl: Send + Sync + 'static {
    /// The filter in force, as last set (e.g. `info,weft=debug`).
    fn current(&self) -> String;
    /// Applies a filter such as `debug` or `info,weft::access=debug`; a bad one changes
    /// nothing.
    fn set(&self, filter: &str) -> Result<(), BadLogFilter>;
}

/// Everything the endpoints read.
pub struct AdminContext {
    /// This node's name, as reported in dumps and on the dashboard.
    pub node_name: String,
    /// `host` or `pods`.
    pub mode: &'static str,
    /// The mesh model in force.
    pub store: Arc<MeshStore>,
    /// Where the model comes from, and how its last reads went.
    pub source: Arc<dyn ConfigSource>,
    /// The certificates this node holds (expiry only is shown, never keys).
    pub certs: Arc<CertManager>,
    /// Renders the Prometheus exposition.
    pub metrics: MetricsHandle,
    /// What only the running mode knows: served workloads and readiness.
    pub status: Arc<dyn NodeStatus>,
    /// The runtime log filter.
    pub log: Arc<dyn LogControl>,
}

type HttpResponse = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> HttpResponse {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

fn json_response(status: StatusCode, value: &Value) -> HttpResponse {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    respond(status, "application/json", body)
}

fn query_param(request: &Request<hyper::body::Incoming>, name: &str) -> Option<String> {
    request.uri().query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| {
            value
                .replace("%2C", ",")
                .replace("%3D", "=")
                .replace("%3A", ":")
        })
    })
}

/// The fields of a served workload the dashboard (on the node-wide :15020) shows; container
/// ids, netns paths and uids stay on the loopback admin port's `/config_dump`.
const DASHBOARD_FIELDS: [&str; 5] = ["name", "namespace", "identity", "ips", "state"];

fn dashboard_view(served: Value) -> Value {
    match served {
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|item| match item {
                    Value::Object(fields) => Value::Object(
                        fields
                            .into_iter()
                            .filter(|(key, _)| DASHBOARD_FIELDS.contains(&key.as_str()))
                            .collect(),
                    ),
                    _ => Value::Null,
                })
                .collect(),
        ),
        _ => Value::Array(Vec::new()),
    }
}

impl AdminContext {
    /// The full config dump.
    pub async fn config_dump(&self) -> Value {
        let snapshot = self.store.load();
        let mut in_force = BTreeMap::new();
        for workload in snapshot.workloads() {
            let policies: Vec<Value> = snapshot
                .policies_for(workload)
                .into_iter()
                .map(|p| json!({"policy": p.key(), "action": p.action, "dry_run": p.dry_run, "warnings": p.warnings}))
                .collect();
            in_force.insert(
                format!("{}/{}", workload.namespace, workload.name),
                json!({"authorization_policies": policies, "mtls_mode": snapshot.mtls_mode(workload)}),
            );
        }
        json!({
            "node": self.node_name,
            "mode": self.mode,
            "config": self.source.status(),
            "mesh": &*snapshot,
            "policies_in_force": in_force,
            "route_status": crate::waypoint::route_status::route_statuses(&snapshot),
            "served": self.status.served().await,
            "certificates": self.certs.status(),
        })
    }

    /// The dashboard's JSON: small, refreshed every few seconds.
    pub async fn stats(&self) -> Value {
        let ready = self.ready().await;
        json!({
            "node": self.node_name,
            "mode": self.mode,
            "ready": ready.is_ok(),
            "not_ready_reason": ready.err().map(|e| e.to_string()),
            "config": self.source.status(),
            "served": dashboard_view(self.status.served().await),
            "certificates": self.certs.status(),
            "now_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        })
    }

    /// Ready when the config source is live and the mode says every workload is served.
    async fn ready(&self) -> Result<(), NotReady> {
        if let Some(stalled) = self.source.status().stalled {
            return Err(NotReady(stalled));
        }
        self.status.ready().await
    }

    async fn readiness(&self) -> HttpResponse {
        match self.ready().await {
            Ok(()) => match self.source.status().degraded {
                // Still serving (the last snapshot is in force), but an operator should know.
                Some(degraded) => respond(
                    StatusCode::OK,
                    "text/plain",
                    format!("ready, degraded: {degraded}\n"),
                ),
                None => respond(StatusCode::OK, "text/plain", "ready\n"),
            },
            Err(reason) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {reason}\n"),
            ),
        }
    }

    async fn admin(self: Arc<Self>, request: Request<hyper::body::Incoming>) -> HttpResponse {
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/") => respond(
                StatusCode::OK,
                "text/plain",
                "weft admin\n  /config_dump        JSON dump of the config in force\n  /logging?level=L    show (GET) or set (POST, or GET with level) the log filter\n  /healthz/ready      readiness\n",
            ),
            (&Method::GET, "/config_dump") => json_response(StatusCode::OK, &self.config_dump().await),
            (&Method::GET | &Method::POST, "/logging") => match query_param(&request, "level") {
                None => respond(StatusCode::OK, "text/plain", format!("current log filter: {}\n", self.log.current())),
                Some(level) => match self.log.set(&level) {
                    Ok(()) => {
                        tracing::info!(filter = %level, "log filter changed through the admin API");
                        respond(StatusCode::OK, "text/plain", format!("log filter set to {level}\n"))
                    }
                    Err(reason) => respond(StatusCode::BAD_REQUEST, "text/plain", format!("invalid level {level:?}: {reason}\n")),
                },
            },
            (&Method::GET, "/healthz/ready") => self.readiness().await,
            (_, path) => respond(StatusCode::NOT_FOUND, "text/plain", format!("no such admin endpoint: {path}\n")),
        }
    }

    async fn metrics_port(
        self: Arc<Self>,
        request: Request<hyper::body::Incoming>,
    ) -> HttpResponse {
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/metrics") => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.metrics.render(),
            ),
            (&Method::GET, "/" | "/dashboard") => {
                respond(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD)
            }
            (&Method::GET, "/stats") => json_response(StatusCode::OK, &self.stats().await),
            (_, path) => respond(
                StatusCode::NOT_FOUND,
                "text/plain",
                format!("not found: {path}\n"),
            ),
        }
    }

    async fn readiness_port(
        self: Arc<Self>,
        request: Request<hyper::body::Incoming>,
    ) -> HttpResponse {
        match request.uri().path() {
            "/healthz/ready" => self.readiness().await,
            // Liveness: the process answers HTTP. Never tied to the API server or the
            // pods (a kubelet restarting the daemon for an API outage helps nobody).
            "/healthz/live" => respond(StatusCode::OK, "text/plain", "live\n"),
            path => respond(
                StatusCode::NOT_FOUND,
                "text/plain",
                format!("not found: {path}\n"),
            ),
        }
    }
}

/// The per-node dashboard: one self-contained page (no external assets).
const DASHBOARD: &str = include_str!("dashboard.html");

/// Listening addresses of the three servers.
#[derive(Debug, Clone, Copy)]
pub struct AdminAddrs {
    /// The admin API (loopback only: it dumps config and changes the log level).
    pub admin: SocketAddr,
    /// Metrics, the dashboard and its `/stats` JSON.
    pub metrics: SocketAddr,
    /// Readiness only, for the kubelet's probe.
    pub readiness: SocketAddr,
}

/// Binds and starts the admin, metrics and readiness servers.
pub async fn start(
    ctx: Arc<AdminContext>,
    addrs: AdminAddrs,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let admin = crate::listener::bind_shared(addrs.admin)?;
    let metrics = crate::listener::bind_shared(addrs.metrics)?;
    let readiness = crate::listener::bind_shared(addrs.readiness)?;
    let c = ctx.clone();
    tokio::spawn(serve(admin, shutdown.clone(), "admin", move |r| {
        Box::pin(c.clone().admin(r))
    }));
    let c = ctx.clone();
    tokio::spawn(serve(metrics, shutdown.clone(), "metrics", move |r| {
        Box::pin(c.clone().metrics_port(r))
    }));
    let c = ctx;
    tokio::spawn(serve(readiness, shutdown, "readiness", move |r| {
        Box::pin(c.clone().readiness_port(r))
    }));
    tracing::info!(admin = %addrs.admin, metrics = %addrs.metrics, readiness = %addrs.readiness, "admin, metrics and readiness endpoints up");
    Ok(())
}
