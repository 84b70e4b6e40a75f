//! The process-wide Prometheus recorder: metric names and descriptions, explicit histogram
//! buckets, idle expiry of label sets, the upkeep task, and process/daemon health metrics
//! refreshed at scrape time.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

use super::request;

/// Counter: proxied connections opened, with the full Istio label set; a refused
/// connection counts here too, with its `response_flags`.
pub const TCP_OPENED: &str = "istio_tcp_connections_opened_total";
/// Counter: proxied connections closed, with the full Istio label set and how each ended
/// in `response_flags`.
pub const TCP_CLOSED: &str = "istio_tcp_connections_closed_total";
/// Counter: bytes in the response direction (upstream to client), Istio labels, counted
/// while the connection is open.
pub const TCP_SENT: &str = "istio_tcp_sent_bytes_total";
/// Counter: bytes in the request direction (client to upstream), Istio labels, counted
/// while the connection is open.
pub const TCP_RECEIVED: &str = "istio_tcp_received_bytes_total";
/// Histogram: how long established connections lasted, in seconds, by `reporter`.
pub const CONNECTION_DURATION: &str = "weft_tcp_connection_duration_seconds";
/// Gauge: established proxied connections open now, by `direction` (`inbound` or
/// `outbound`).
pub const OPEN_CONNECTIONS: &str = "weft_open_connections";
/// Gauge: pods on this node enrolled in the mesh (pods mode; set by the node agent).
pub const ENROLLED_PODS: &str = "weft_enrolled_pods";
/// Gauge: seconds until the certificate of each `identity` expires (negative once
/// expired).
pub const CERT_EXPIRY: &str = "weft_certificate_expiry_seconds";
/// Counter: config loads by `result` (`accepted` or `rejected`), copied from the source's
/// [`crate::config::ReloadStats`].
pub const CONFIG_RELOADS: &str = "weft_config_reloads_total";
/// Gauge: always 1, with the crate version in `version`.
pub const BUILD_INFO: &str = "weft_build_info";
/// Gauge: 1 while the config source reports itself stalled, else 0.
pub const CONFIG_STALLED: &str = "weft_config_source_stalled";
/// Gauge: 1 while the config source is cut off from its input (the API server is lost)
/// and the last snapshot serves, else 0.
pub const CONFIG_DEGRADED: &str = "weft_config_source_degraded";
/// Gauge: when the config source last knew its model to be up to date (seconds since the
/// epoch; Kubernetes source only).
pub const CONFIG_LAST_SYNC: &str = "weft_config_source_last_sync_timestamp_seconds";
/// Gauge: objects the config source holds, by `kind` (Kubernetes source only).
pub const CONFIG_OBJECTS: &str = "weft_config_source_objects";
/// Gauge: objects left out of the model because they are invalid, by `kind`.
pub const CONFIG_REJECTED_OBJECTS: &str = "weft_config_source_rejected_objects";
/// Counter: connections the daemon refused to protect itself, by `reason` (`loop`,
/// `per_source_limit`, `fd_reserve`, `cni_peer`).
pub const CONNECTIONS_REFUSED: &str = "weft_connections_refused_total";

/// Buckets for connection durations (seconds): sub-millisecond to an hour.
const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// A label set untouched this long is dropped from the exposition.
const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Renders the exposition and refreshes process metrics first.
#[derive(Clone)]
pub struct MetricsHandle {
    prometheus: PrometheusHandle,
    process: Arc<Mutex<metrics_process::Collector>>,
}

impl MetricsHandle {
    /// The Prometheus text exposition, with process metrics as of now.
    pub fn render(&self) -> String {
        if let Ok(collector) = self.process.lock() {
            collector.collect();
        }
        self.prometheus.render()
    }
}

/// Why metrics could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The recorder's configuration (the histogram buckets) was rejected; the exporter's
    /// message.
    #[error("building the Prometheus recorder: {0}")]
    Build(String),
    /// Some other global `metrics` recorder was installed first.
    #[error("another metrics recorder is already installed in this process")]
    AlreadyInstalled,
}

static INSTALLED: OnceLock<MetricsHandle> = OnceLock::new();

/// Installs the global recorder once (later calls return the same handle) and starts
/// its upkeep task on the current tokio runtime.
pub fn install() -> Result<MetricsHandle, MetricsError> {
    if let Some(handle) = INSTALLED.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(CONNECTION_DURATION.into()), &DURATION_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(request::REQUEST_DURATION.into()),
                &request::REQUEST_DURATION_BUCKETS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(request::REQUEST_BYTES.into()),
                &request::SIZE_BUCKETS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(request::RESPONSE_BYTES.into()),
                &request::SIZE_BUCKETS,
            )
        })
        .map_err(|e| MetricsError::Build(e.to_string()))?
        .idle_timeout(
            MetricKindMask::COUNTER | MetricKindMask::HISTOGRAM,
            Some(IDLE_TIMEOUT),
        )
        .build_recorder();
    let prometheus = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| MetricsError::AlreadyInstalled)?;
    describe();
    let collector = metrics_process::Collector::default();
    collector.describe();
    let handle = MetricsHandle {
        prometheus,
        process: Arc::new(Mutex::new(collector)),
    };
    let upkeep = handle.prometheus.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(INSTALLED.get_or_init(|| handle).clone())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(TCP_OPENED, "TCP connections opened");
    describe_counter!(
        request::REQUESTS_TOTAL,
        "HTTP requests a waypoint answered or forwarded"
    );
    describe_histogram!(
        request::REQUEST_DURATION,
        Unit::Milliseconds,
        "From a request's arrival at the waypoint to the end of its response"
    );
    describe_histogram!(request::REQUEST_BYTES, Unit::Bytes, "Request body sizes");
    describe_histogram!(request::RESPONSE_BYTES, Unit::Bytes, "Response body sizes");
    describe_counter!(TCP_CLOSED, "TCP connections closed");
    describe_counter!(TCP_SENT, Unit::Bytes, "Bytes sent in the response direction (server to client), counted while the connection is open");
    describe_counter!(TCP_RECEIVED, Unit::Bytes, "Bytes received in the request direction (client to server), counted while the connection is open");
    describe_histogram!(
        CONNECTION_DURATION,
        Unit::Seconds,
        "How long proxied TCP connections lasted"
    );
    describe_gauge!(
        OPEN_CONNECTIONS,
        "Proxied TCP connections open now, by direction"
    );
    describe_gauge!(ENROLLED_PODS, "Pods on this node enrolled in the mesh");
    describe_gauge!(
        CERT_EXPIRY,
        Unit::Seconds,
        "Seconds until the identity's certificate expires"
    );
    describe_counter!(
        CONFIG_RELOADS,
        "Config reloads, by result (accepted or rejected)"
    );
    describe_gauge!(BUILD_INFO, "weft build information (always 1)");
    describe_gauge!(
        CONFIG_STALLED,
        "1 while the config source has not completed a poll for a long time (edits are not applied)"
    );
    describe_gauge!(
        CONFIG_DEGRADED,
        "1 while the config source cannot reach its input (API server lost) and the last snapshot serves"
    );
    describe_gauge!(
        CONFIG_LAST_SYNC,
        "When the config source last knew its model to be up to date, seconds since the epoch"
    );
    describe_gauge!(CONFIG_OBJECTS, "Objects the config source holds, by kind");
    describe_gauge!(
        CONFIG_REJECTED_OBJECTS,
        "Objects left out of the model because they are invalid, by kind"
    );
    describe_counter!(
        crate::identity::csr_issuer::CSR_REQUESTS,
        "Certificate signing requests this node sent to weft signer, by result (issued, denied, failed, timeout, error)"
    );
    describe_histogram!(
        crate::identity::csr_issuer::CSR_WAIT,
        Unit::Seconds,
        "From creating a CSR to holding its certificate"
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections the daemon refused to protect itself, by reason (loop, per-source limit, fd reserve)"
    );
}

/// Keeps the daemon health gauges current: certificate expiry per identity and config
/// reload counts. Runs until the task is dropped.
pub async fn update_health_forever(
    certs: Arc<crate::identity::CertManager>,
    source: Arc<dyn crate::config::ConfigSource>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        for cert in certs.status() {
            let remaining = cert.not_after_unix as f64 - now as f64;
            metrics::gauge!(CERT_EXPIRY, "identity" => cert.identity).set(remaining);
        }
        let status = source.status();
        metrics::counter!(CONFIG_RELOADS, "result" => "accepted").absolute(status.reloads.accepted);
        metrics::counter!(CONFIG_RELOADS, "result" => "rejected").absolute(status.reloads.rejected);
        let stalled = if status.stalled.is_some() { 1.0 } else { 0.0 };
        metrics::gauge!(CONFIG_STALLED).set(stalled);
        let degraded = if status.degraded.is_some() { 1.0 } else { 0.0 };
        metrics::gauge!(CONFIG_DEGRADED).set(degraded);
        if let Some(at) = status.last_sync_unix {
            metrics::gauge!(CONFIG_LAST_SYNC).set(at as f64);
        }
        for (kind, counts) in &status.kinds {
            metrics::gauge!(CONFIG_OBJECTS, "kind" => kind.clone()).set(counts.objects as f64);
            metrics::gauge!(CONFIG_REJECTED_OBJECTS, "kind" => kind.clone())
                .set(counts.rejected as f64);
        }
    }
}
