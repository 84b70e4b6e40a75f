//! One proxied connection's telemetry: its [`ConnectionId`], Istio labels looked up once
//! when it opens, byte counters bumped with a single atomic add per read while it is open,
//! and on close the closed counter, the duration histogram and the access log line. A
//! report that is dropped without being closed (its task was cancelled or panicked) still
//! records its close, flagged [`ResponseFlag::Cut`].

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use metrics::{Counter, Label};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::access_log;
use super::labels::{Reporter, ResponseFlag, Security, WorkloadLabels, LABEL_CACHE_LIMIT, UNKNOWN};
use super::registry::{
    CONNECTION_DURATION, OPEN_CONNECTIONS, TCP_CLOSED, TCP_OPENED, TCP_RECEIVED, TCP_SENT,
};

/// A process-wide number for one proxied connection (or HBONE stream): it names the
/// connection's tracing span and its access log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

impl ConnectionId {
    /// A number no other connection of this process has.
    pub fn next() -> ConnectionId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ConnectionId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The metric handles of one label set.
#[derive(Debug)]
struct Handles {
    opened: Counter,
    closed: Counter,
    received: Counter,
    sent: Counter,
    open: metrics::Gauge,
    duration: metrics::Histogram,
}

#[derive(PartialEq, Eq, Hash)]
struct HandleKey {
    reporter: Reporter,
    source: usize,
    destination: usize,
    service: Option<String>,
    security: Security,
}

struct HandleEntry {
    handles: Arc<Handles>,
    /// Keeps the label sets (whose addresses are in the key) alive while cached.
    _labels: (Arc<WorkloadLabels>, Arc<WorkloadLabels>),
    created: Instant,
}

/// Cached handles are refreshed well within the recorder's idle timeout, so a handle is
/// never kept after the registry dropped its series.
const HANDLE_TTL: std::time::Duration = std::time::Duration::from_secs(300);
static HANDLE_CACHE: OnceLock<Mutex<HashMap<HandleKey, HandleEntry>>> = OnceLock::new();

/// Where a report is in its life; only `Pending` and `Open` still owe a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Created, not yet established or refused.
    Pending,
    /// `opened()` was called; the close is still to be recorded.
    Open,
    /// Closed or refused: everything is recorded.
    Recorded,
}

/// Everything reported about one connection. Exactly one close is recorded per report:
/// by [`ConnectionReport::closed`], [`ConnectionReport::refused`], or, if neither ran, by
/// `Drop` with [`ResponseFlag::Cut`].
#[derive(Debug)]
pub struct ConnectionReport {
    id: ConnectionId,
    reporter: Reporter,
    src: SocketAddr,
    dst: SocketAddr,
    source: Arc<WorkloadLabels>,
    destination: Arc<WorkloadLabels>,
    destination_service: Option<String>,
    security: Security,
    started: Instant,
    stage: Stage,
    /// Set by `opened()`, reused by the close.
    handles: Option<Arc<Handles>>,
}

/// Counts bytes into the connection's counters while the copy runs.
#[derive(Debug, Clone)]
pub struct ByteMeter {
    /// Request direction (client to upstream): the `istio_tcp_received_bytes_total`
    /// series.
    pub received: Counter,
    /// Response direction (upstream to client): the `istio_tcp_sent_bytes_total` series.
    pub sent: Counter,
}

impl ConnectionReport {
    /// A pending report for connection `id`, reported by `reporter`, from the client at
    /// `src` to `dst` (the original destination or CONNECT authority), with each side's
    /// labels, the Service hostname dialled (if any) and whether it crosses HBONE. Its
    /// duration starts now; nothing is counted until it is opened, refused or dropped.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: ConnectionId,
        reporter: Reporter,
        src: SocketAddr,
        dst: SocketAddr,
        source: Arc<WorkloadLabels>,
        destination: Arc<WorkloadLabels>,
        destination_service: Option<String>,
        security: Security,
    ) -> Self {
        ConnectionReport {
            id,
            reporter,
            src,
            dst,
            source,
            destination,
            destination_service,
            security,
            started: Instant::now(),
            stage: Stage::Pending,
            handles: None,
        }
    }

    /// The connection this report is about.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    fn labels(&self, response_flags: ResponseFlag) -> Vec<Label> {
        vec![
            Label::new("reporter", self.reporter.as_str()),
            Label::new("source_workload", self.source.workload.clone()),
            Label::new("source_workload_namespace", self.source.namespace.clone()),
            Label::new("source_principal", self.source.principal.clone()),
            Label::new("source_app", self.source.app.clone()),
            Label::new("source_version", self.source.version.clone()),
            Label::new("destination_workload", self.destination.workload.clone()),
            Label::new(
                "destination_workload_namespace",
                self.destination.namespace.clone(),
            ),
            Label::new("destination_principal", self.destination.principal.clone()),
            Label::new("destination_app", self.destination.app.clone()),
            Label::new("destination_version", self.destination.version.clone()),
            Label::new(
                "destination_service",
                self.destination_service
                    .clone()
                    .unwrap_or_else(|| UNKNOWN.into()),
            ),
            Label::new("request_protocol", "tcp"),
            Label::new("connection_security_policy", self.security.as_str()),
            Label::new("response_flags", response_flags.as_str()),
        ]
    }

    /// The connection is established: counts it opened and returns the byte counters,
    /// looked up once here so the copy only does atomic adds.
    pub fn opened(&mut self) -> ByteMeter {
        let handles = self.handles();
        self.handles = Some(handles.clone());
        self.stage = Stage::Open;
        handles.opened.increment(1);
        handles.open.increment(1.0);
        ByteMeter {
            received: handles.received.clone(),
            sent: handles.sent.clone(),
        }
    }

    /// The counters of this connection's label set, from the handle cache when another
    /// connection between the same workloads looked them up recently (building 15 labels
    /// and hashing them into the registry is most of a connection's telemetry cost).
    fn handles(&self) -> Arc<Handles> {
        let key = HandleKey {
            reporter: self.reporter,
            source: Arc::as_ptr(&self.source) as usize,
            destination: Arc::as_ptr(&self.destination) as usize,
            service: self.destination_service.clone(),
            security: self.security,
        };
        let cache = HANDLE_CACHE.get_or_init(|| Mutex::new(HashMap::new()));
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = cache.get(&key) {
            if entry.created.elapsed() < HANDLE_TTL {
                return entry.handles.clone();
            }
        }
        if cache.len() >= LABEL_CACHE_LIMIT {
            cache.clear();
        }
        let labels = self.labels(ResponseFlag::None);
        let handles = Arc::new(Handles {
            opened: metrics::counter!(TCP_OPENED, labels.iter()),
            closed: metrics::counter!(TCP_CLOSED, labels.iter()),
            received: metrics::counter!(TCP_RECEIVED, labels.iter()),
            sent: metrics::counter!(TCP_SENT, labels.iter()),
            open: metrics::gauge!(OPEN_CONNECTIONS, "direction" => self.reporter.direction()),
            duration: metrics::histogram!(CONNECTION_DURATION, "reporter" => self.reporter.as_str()),
        });
        cache.insert(
            key,
            HandleEntry {
                handles: handles.clone(),
                _labels: (self.source.clone(), self.destination.clone()),
                created: Instant::now(),
            },
        );
        handles
    }

    /// The established connection ended (`error` if it ended badly).
    pub fn closed(mut self, bytes: (u64, u64), error: Option<&io::Error>) {
        let error = error.map(|e| e.to_string());
        self.record_close(ResponseFlag::None, bytes, error.as_deref());
    }

    /// The connection never got going: denied by policy ([`ResponseFlag::Deny`]), the
    /// upstream could not be reached ([`ResponseFlag::Connect`]) or it would loop
    /// ([`ResponseFlag::Loop`]). Counted opened and closed with that flag, and logged.
    pub fn refused(mut self, response_flags: ResponseFlag, reason: &str, policy: Option<&str>) {
        self.record_refusal(response_flags, reason, policy);
    }

    /// Counts the close of an opened connection (closed with `flag`'s label set unless
    /// the flag is none) and writes its access log line.
    fn record_close(&mut self, flag: ResponseFlag, bytes: (u64, u64), error: Option<&str>) {
        self.stage = Stage::Recorded;
        let handles = self.handles.clone().unwrap_or_else(|| self.handles());
        match flag {
            ResponseFlag::None => handles.closed.increment(1),
            other => metrics::counter!(TCP_CLOSED, self.labels(other).iter()).increment(1),
        }
        handles.open.decrement(1.0);
        let elapsed = self.started.elapsed();
        handles.duration.record(elapsed.as_secs_f64());
        access_log::connection_closed(self.access(bytes, elapsed, flag, error, None));
    }

    fn record_refusal(&mut self, flag: ResponseFlag, reason: &str, policy: Option<&str>) {
        self.stage = Stage::Recorded;
        let labels = self.labels(flag);
        metrics::counter!(TCP_OPENED, labels.iter()).increment(1);
        metrics::counter!(TCP_CLOSED, labels.iter()).increment(1);
        let elapsed = self.started.elapsed();
        access_log::connection_closed(self.access((0, 0), elapsed, flag, Some(reason), policy));
    }

    fn access<'a>(
        &'a self,
        bytes: (u64, u64),
        elapsed: std::time::Duration,
        response_flags: ResponseFlag,
        error: Option<&'a str>,
        policy: Option<&'a str>,
    ) -> access_log::Entry<'a> {
        access_log::Entry {
            connection_id: self.id.0,
            direction: self.reporter.direction(),
            src: self.src,
            dst: self.dst,
            source: &self.source,
            destination: &self.destination,
            destination_service: self.destination_service.as_deref().unwrap_or(UNKNOWN),
            security: self.security.as_str(),
            bytes_received: bytes.0,
            bytes_sent: bytes.1,
            duration: elapsed,
            response_flags,
            error,
            policy,
        }
    }
}

impl Drop for ConnectionReport {
    fn drop(&mut self) {
        // The byte totals live in the copy that was cut short; the counters already hold
        // what moved, the access line says 0.
        match self.stage {
            Stage::Recorded => {}
            Stage::Open => self.record_close(
                ResponseFlag::Cut,
                (0, 0),
                Some("the connection's task ended before it reported the close"),
            ),
            Stage::Pending => self.record_refusal(
                ResponseFlag::Cut,
                "the connection's task ended before the connection was set up",
                None,
            ),
        }
    }
}

/// A stream whose reads are counted into a metrics counter and a local total.
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    counter: Counter,
    total: u64,
}

impl<S> Counted<S> {
    /// Wraps `inner`, adding every byte read from it to `counter`.
    pub fn new(inner: S, counter: Counter) -> Self {
        Counted {
            inner,
            counter,
            total: 0,
        }
    }

    /// Bytes read through this wrapper so far.
    pub fn total(&self) -> u64 {
        self.total
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        if read > 0 {
            self.total += read;
            self.counter.increment(read);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use metrics::{Key, KeyName, Metadata, SharedString, Unit};
    use metrics_util::registry::{AtomicStorage, Registry};
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// A recorder of its own, so the test reads exactly what one report recorded.
    struct TestRecorder(Registry<Key, AtomicStorage>);

    impl metrics::Recorder for TestRecorder {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            self.0
                .get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> metrics::Gauge {
            self.0
                .get_or_create_gauge(key, |g| metrics::Gauge::from_arc(g.clone()))
        }
        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> metrics::Histogram {
            self.0
                .get_or_create_histogram(key, |h| metrics::Histogram::from_arc(h.clone()))
        }
    }

    impl TestRecorder {
        /// Sum of a counter over the series whose `response_flags` is `flag`.
        fn counter(&self, name: &str, flag: &str) -> u64 {
            self.0
                .get_counter_handles()
                .iter()
                .filter(|(key, _)| {
                    key.name() == name
                        && key
                            .labels()
                            .any(|l| l.key() == "response_flags" && l.value() == flag)
                })
                .map(|(_, value)| value.load(Ordering::Relaxed))
                .sum()
        }

        fn open_gauge(&self) -> f64 {
            self.0
                .get_gauge_handles()
                .iter()
                .filter(|(key, _)| key.name() == OPEN_CONNECTIONS)
                .map(|(_, value)| f64::from_bits(value.load(Ordering::Relaxed)))
                .sum()
        }
    }

    /// Counts access log lines and keeps their `response_flags`.
    #[derive(Clone, Default)]
    struct AccessLines(Arc<Mutex<Vec<String>>>, Arc<AtomicUsize>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AccessLines {
        fn on_event(
            &self,
            event: &tracing::Event<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            struct Flags(Option<String>);
            impl tracing::field::Visit for Flags {
                fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                    if field.name() == "response_flags" {
                        self.0 = Some(value.to_owned());
                    }
                }
                fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
            }
            if event.metadata().target() == "weft::access" {
                let mut flags = Flags(None);
                event.record(&mut flags);
                self.1.fetch_add(1, Ordering::Relaxed);
                if let Some(flags) = flags.0 {
                    self.0.lock().unwrap().push(flags);
                }
            }
        }
    }

    fn report() -> ConnectionReport {
        // Fresh label sets: their addresses key the handle cache, so no other test's
        // handles (from another recorder) are reused.
        ConnectionReport::new(
            ConnectionId::next(),
            Reporter::Destination,
            "10.0.0.1:1234".parse().unwrap(),
            "10.0.0.2:8080".parse().unwrap(),
            Arc::new(WorkloadLabels::default()),
            Arc::new(WorkloadLabels::default()),
            None,
            Security::MutualTls,
        )
    }

    /// Runs `body` with a private recorder and access-log capture.
    fn recorded(body: impl FnOnce()) -> (TestRecorder, AccessLines) {
        let recorder = TestRecorder(Registry::atomic());
        let lines = AccessLines::default();
        let subscriber = tracing_subscriber::registry().with(lines.clone());
        tracing::subscriber::with_default(subscriber, || {
            metrics::with_local_recorder(&recorder, body)
        });
        (recorder, lines)
    }

    #[test]
    fn a_dropped_open_report_still_records_its_close_once() {
        let (recorder, lines) = recorded(|| {
            let mut report = report();
            let _meter = report.opened();
            drop(report);
        });
        assert_eq!(recorder.counter(TCP_OPENED, "-"), 1);
        assert_eq!(recorder.counter(TCP_CLOSED, "-"), 0);
        assert_eq!(recorder.counter(TCP_CLOSED, "CUT"), 1);
        assert_eq!(recorder.open_gauge(), 0.0);
        assert_eq!(lines.1.load(Ordering::Relaxed), 1);
        assert_eq!(*lines.0.lock().unwrap(), ["CUT"]);
    }

    #[test]
    fn a_closed_report_is_not_recorded_again_on_drop() {
        let (recorder, lines) = recorded(|| {
            let mut report = report();
            let _meter = report.opened();
            report.closed((3, 4), None);
        });
        assert_eq!(recorder.counter(TCP_OPENED, "-"), 1);
        assert_eq!(recorder.counter(TCP_CLOSED, "-"), 1);
        assert_eq!(recorder.counter(TCP_CLOSED, "CUT"), 0);
        assert_eq!(recorder.open_gauge(), 0.0);
        assert_eq!(*lines.0.lock().unwrap(), ["-"]);
    }

    #[test]
    fn a_report_dropped_before_it_opened_counts_as_cut_and_a_refusal_once() {
        let (recorder, lines) = recorded(|| {
            drop(report());
            report().refused(ResponseFlag::Deny, "test", Some("demo/deny"));
        });
        assert_eq!(recorder.counter(TCP_OPENED, "CUT"), 1);
        assert_eq!(recorder.counter(TCP_CLOSED, "CUT"), 1);
        assert_eq!(recorder.counter(TCP_OPENED, "DENY"), 1);
        assert_eq!(recorder.counter(TCP_CLOSED, "DENY"), 1);
        assert_eq!(recorder.open_gauge(), 0.0);
        assert_eq!(*lines.0.lock().unwrap(), ["CUT", "DENY"]);
    }
}
