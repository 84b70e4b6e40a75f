//! Per-request telemetry for the waypoint, with Istio's names and labels:
//! `istio_requests_total`, `istio_request_duration_milliseconds`, `istio_request_bytes`,
//! `istio_response_bytes` (reporter `waypoint`), and one access log line per request at
//! target `weft::access`.
//!
//! A [`RequestReport`] is created when a request arrives and records itself once, when it
//! is dropped: after the response body ended, or when the client went away mid-way (then
//! with response flag `DC`), so a cancelled request still counts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::labels::WorkloadLabels;

/// Counter: requests the waypoint answered or forwarded.
pub const REQUESTS_TOTAL: &str = "istio_requests_total";
/// Histogram (ms): from the request's arrival to the end of its response.
pub const REQUEST_DURATION: &str = "istio_request_duration_milliseconds";
/// Histogram (bytes): request body sizes.
pub const REQUEST_BYTES: &str = "istio_request_bytes";
/// Histogram (bytes): response body sizes.
pub const RESPONSE_BYTES: &str = "istio_response_bytes";

/// Buckets for request durations in milliseconds (Istio's default buckets).
pub const REQUEST_DURATION_BUCKETS: [f64; 20] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0, 10000000.0,
];
/// Buckets for body sizes (Istio's defaults: 1 B to 100 MB, by powers of ten).
pub const SIZE_BUCKETS: [f64; 9] = [
    1.0,
    10.0,
    100.0,
    1000.0,
    10000.0,
    100000.0,
    1000000.0,
    10000000.0,
    100000000.0,
];

/// What is known of a request when it arrives.
#[derive(Debug, Clone)]
pub struct RequestInfo {
    /// The tunnel's client address (the calling node).
    pub peer: SocketAddr,
    /// The CONNECT authority: the Service `VIP:port` called.
    pub authority: SocketAddr,
    /// The caller.
    pub source: Arc<WorkloadLabels>,
    /// The Service called: `name.namespace.svc.cluster.local`.
    pub service_host: String,
    /// Its name.
    pub service_name: String,
    /// Its namespace.
    pub service_namespace: String,
    /// `http` or `grpc`.
    pub protocol: &'static str,
    /// The request method.
    pub method: String,
    /// Path and query, as received.
    pub path: String,
    /// Host header or `:authority`.
    pub host: String,
    /// The trace this request belongs to.
    pub trace_id: String,
}

/// A request being served; records its metrics and access log line when dropped.
#[derive(Debug)]
pub struct RequestReport {
    info: RequestInfo,
    started: Instant,
    destination: Arc<WorkloadLabels>,
    upstream: Option<SocketAddr>,
    route: Option<String>,
    status: Option<u16>,
    grpc_status: Option<String>,
    flags: &'static str,
    reason: Option<String>,
    request_bytes: Arc<AtomicU64>,
    response_bytes: u64,
    retries: u32,
    complete: bool,
}

// === impl RequestReport ===

impl RequestReport {
    /// Starts the report of a request that just arrived.
    pub fn new(info: RequestInfo) -> Self {
        RequestReport {
            info,
            started: Instant::now(),
            destination: Arc::new(WorkloadLabels::default()),
            upstream: None,
            route: None,
            status: None,
            grpc_status: None,
            flags: "-",
            reason: None,
            request_bytes: Arc::new(AtomicU64::new(0)),
            response_bytes: 0,
            retries: 0,
            complete: false,
        }
    }

    /// Where the request body's byte count is added as it is read.
    pub fn request_bytes(&self) -> Arc<AtomicU64> {
        self.request_bytes.clone()
    }

    /// The route rule that decided, `namespace/name#rule`.
    pub fn set_route(&mut self, route: Option<String>) {
        self.route = route;
    }

    /// The endpoint the request went to, and its workload.
    pub fn set_upstream(&mut self, addr: SocketAddr, destination: Arc<WorkloadLabels>) {
        self.upstream = Some(addr);
        self.destination = destination;
    }

    /// The status answered (by the waypoint or the upstream).
    pub fn set_status(&mut self, status: u16) {
        self.status = Some(status);
    }

    /// The response's `grpc-status` (header or trailer).
    pub fn set_grpc_status(&mut self, status: &str) {
        self.grpc_status = Some(status.to_owned());
    }

    /// An Envoy-style response flag (`NR` no route, `UF` upstream connect failure, `UH` no
    /// healthy upstream, `DC` downstream went away, `UPE` upstream protocol error) and why.
    pub fn set_flag(&mut self, flag: &'static str, reason: impl Into<String>) {
        self.flags = flag;
        self.reason = Some(reason.into());
    }

    /// The request was sent again this many times (after its first attempt).
    pub fn set_retries(&mut self, retries: u32) {
        self.retries = retries;
    }

    /// Adds response body bytes.
    pub fn add_response_bytes(&mut self, n: u64) {
        self.response_bytes += n;
    }

    /// The response ended as it should (its body was read to the end).
    pub fn complete(&mut self) {
        self.complete = true;
    }

    fn record(&mut self) {
        if !self.complete && self.flags == "-" {
            self.flags = "DC";
            self.reason
                .get_or_insert_with(|| "the client or upstream went away mid-response".into());
        }
        let elapsed = self.started.elapsed();
        let status = self.status.unwrap_or(0).to_string();
        let grpc = self.grpc_status.as_deref().unwrap_or("");
        let source = &self.info.source;
        let destination = &self.destination;
        let labels = [
            ("reporter", "waypoint".to_owned()),
            ("source_workload", source.workload.clone()),
            ("source_workload_namespace", source.namespace.clone()),
            ("source_principal", source.principal.clone()),
            ("source_app", source.app.clone()),
            ("source_version", source.version.clone()),
            ("destination_workload", destination.workload.clone()),
            (
                "destination_workload_namespace",
                destination.namespace.clone(),
            ),
            ("destination_principal", destination.principal.clone()),
            ("destination_app", destination.app.clone()),
            ("destination_version", destination.version.clone()),
            ("destination_service", self.info.service_host.clone()),
            ("destination_service_name", self.info.service_name.clone()),
            (
                "destination_service_namespace",
                self.info.service_namespace.clone(),
            ),
            ("request_protocol", self.info.protocol.to_owned()),
            ("response_code", status.clone()),
            ("grpc_response_status", grpc.to_owned()),
            ("response_flags", self.flags.to_owned()),
            ("connection_security_policy", "mutual_tls".to_owned()),
        ];
        let labels: Vec<metrics::Label> = labels
            .into_iter()
            .map(|(key, value)| metrics::Label::new(key, value))
            .collect();
        metrics::counter!(REQUESTS_TOTAL, labels.clone()).increment(1);
        metrics::histogram!(REQUEST_DURATION, labels.clone())
            .record(elapsed.as_secs_f64() * 1000.0);
        metrics::histogram!(REQUEST_BYTES, labels.clone())
            .record(self.request_bytes.load(Ordering::Relaxed) as f64);
        metrics::histogram!(RESPONSE_BYTES, labels).record(self.response_bytes as f64);
        let upstream = self
            .upstream
            .map_or_else(|| "-".to_owned(), |u| u.to_string());
        tracing::info!(
            target: "weft::access",
            method = %self.info.method,
            path = %self.info.path,
            authority = %self.info.host,
            service = %self.info.service_host,
            vip = %self.info.authority,
            status = %status,
            grpc_status = if grpc.is_empty() { "-" } else { grpc },
            upstream = %upstream,
            dst_workload = %destination.workload,
            src_identity = %source.principal,
            src_workload = %source.workload,
            peer = %self.info.peer,
            route = self.route.as_deref().unwrap_or("-"),
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            bytes_received = self.request_bytes.load(Ordering::Relaxed),
            bytes_sent = self.response_bytes,
            retries = self.retries,
            response_flags = self.flags,
            reason = self.reason.as_deref().unwrap_or("-"),
            trace_id = %self.info.trace_id,
            "request"
        );
    }
}

impl Drop for RequestReport {
    fn drop(&mut self) {
        self.record();
    }
}
