//! One proxied connection's telemetry: Istio labels looked up once when it opens, byte
//! counters bumped with a single atomic add per read while it is open, and on close the
//! closed counter, the duration histogram and the access log line.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use metrics::{Counter, Label};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::access_log;
use super::registry::{
    CONNECTION_DURATION, OPEN_CONNECTIONS, TCP_CLOSED, TCP_OPENED, TCP_RECEIVED, TCP_SENT,
};
use crate::identity::SpiffeId;
use crate::model::{MeshSnapshot, Workload};

/// Which end of the connection reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    Source,
    Destination,
}

impl Reporter {
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }

    fn direction(self) -> &'static str {
        match self {
            Reporter::Source => "outbound",
            Reporter::Destination => "inbound",
        }
    }
}

/// Whether the connection crossed the mesh tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Security {
    MutualTls,
    None,
}

impl Security {
    pub fn as_str(self) -> &'static str {
        match self {
            Security::MutualTls => "mutual_tls",
            Security::None => "none",
        }
    }
}

const UNKNOWN: &str = "unknown";

/// The Istio labels of one side of a connection; unknown values print `unknown`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadLabels {
    pub workload: String,
    pub namespace: String,
    pub principal: String,
    pub app: String,
    pub version: String,
}

impl Default for WorkloadLabels {
    fn default() -> Self {
        WorkloadLabels {
            workload: UNKNOWN.into(),
            namespace: UNKNOWN.into(),
            principal: UNKNOWN.into(),
            app: UNKNOWN.into(),
            version: UNKNOWN.into(),
        }
    }
}

type LabelKey = (usize, Option<SpiffeId>);

/// Label sets shared by every connection between the same workloads, so a connection holds
/// two pointers instead of a dozen strings. Entries keep their workload alive, so a key's
/// address is never reused while it is cached; the cache is emptied when it grows large.
type LabelCache = HashMap<LabelKey, (Option<Arc<Workload>>, Arc<WorkloadLabels>)>;
static LABEL_CACHE: OnceLock<Mutex<LabelCache>> = OnceLock::new();
const LABEL_CACHE_LIMIT: usize = 4096;

impl WorkloadLabels {
    /// Shared labels for a workload (and principal), built once and reused.
    pub fn shared(workload: Option<&Arc<Workload>>, principal: Option<&SpiffeId>) -> Arc<Self> {
        let key = (
            workload.map_or(0, |w| Arc::as_ptr(w) as usize),
            principal.cloned(),
        );
        let cache = LABEL_CACHE.get_or_init(|| Mutex::new(HashMap::new()));
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, labels)) = cache.get(&key) {
            return labels.clone();
        }
        if cache.len() >= LABEL_CACHE_LIMIT {
            cache.clear();
        }
        let labels = Arc::new(Self::of(workload.map(Arc::as_ref), principal));
        cache.insert(key, (workload.cloned(), labels.clone()));
        labels
    }

    /// Labels for a workload, with its principal if the connection proved or expects one.
    pub fn of(workload: Option<&Workload>, principal: Option<&SpiffeId>) -> Self {
        let mut labels = WorkloadLabels::default();
        if let Some(w) = workload {
            labels.workload = w.name.clone();
            labels.namespace = w.namespace.clone();
            let label = |keys: &[&str]| keys.iter().find_map(|k| w.labels.get(*k)).cloned();
            labels.app =
                label(&["app.kubernetes.io/name", "app"]).unwrap_or_else(|| UNKNOWN.into());
            labels.version =
                label(&["app.kubernetes.io/version", "version"]).unwrap_or_else(|| UNKNOWN.into());
        }
        if let Some(p) = principal {
            labels.principal = p.to_string();
            if labels.namespace == UNKNOWN {
                labels.namespace = p.namespace().to_owned();
            }
        }
        labels
    }

    /// Labels for whatever workload owns `addr` in the snapshot.
    pub fn at(
        snapshot: &MeshSnapshot,
        addr: SocketAddr,
        principal: Option<&SpiffeId>,
    ) -> Arc<Self> {
        Self::shared(snapshot.workload_by_ip(addr.ip()), principal)
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

/// Everything reported about one connection.
#[derive(Debug)]
pub struct ConnectionReport {
    reporter: Reporter,
    src: SocketAddr,
    dst: SocketAddr,
    source: Arc<WorkloadLabels>,
    destination: Arc<WorkloadLabels>,
    destination_service: Option<String>,
    security: Security,
    started: Instant,
    /// Set by `opened()`, reused by `closed()`.
    handles: Option<Arc<Handles>>,
}

/// Counts bytes into the connection's counters while the copy runs.
#[derive(Debug, Clone)]
pub struct ByteMeter {
    pub received: Counter,
    pub sent: Counter,
}

impl ConnectionReport {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        reporter: Reporter,
        src: SocketAddr,
        dst: SocketAddr,
        source: Arc<WorkloadLabels>,
        destination: Arc<WorkloadLabels>,
        destination_service: Option<String>,
        security: Security,
    ) -> Self {
        ConnectionReport {
            reporter,
            src,
            dst,
            source,
            destination,
            destination_service,
            security,
            started: Instant::now(),
            handles: None,
        }
    }

    fn labels(&self, response_flags: &str) -> Vec<Label> {
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
            Label::new("response_flags", response_flags.to_owned()),
        ]
    }

    /// The connection is established: counts it opened and returns the byte counters,
    /// looked up once here so the copy only does atomic adds.
    pub fn opened(&mut self) -> ByteMeter {
        let handles = self.handles();
        self.handles = Some(handles.clone());
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
        let labels = self.labels("-");
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
    pub fn closed(self, bytes: (u64, u64), error: Option<&io::Error>) {
        let handles = self.handles.clone().unwrap_or_else(|| self.handles());
        handles.closed.increment(1);
        handles.open.decrement(1.0);
        handles
            .duration
            .record(self.started.elapsed().as_secs_f64());
        let elapsed = self.started.elapsed();
        let error = error.map(|e| e.to_string());
        access_log::connection_closed(self.access(bytes, elapsed, "-", error.as_deref(), None));
    }

    /// The connection never got going: denied by policy (`DENY`) or the upstream could not
    /// be reached (`CONNECT`). Counted opened and closed with that flag, and logged.
    pub fn refused(self, response_flags: &str, reason: &str, policy: Option<&str>) {
        let labels = self.labels(response_flags);
        metrics::counter!(TCP_OPENED, labels.iter()).increment(1);
        metrics::counter!(TCP_CLOSED, labels.iter()).increment(1);
        let elapsed = self.started.elapsed();
        access_log::connection_closed(self.access(
            (0, 0),
            elapsed,
            response_flags,
            Some(reason),
            policy,
        ));
    }

    fn access<'a>(
        &'a self,
        bytes: (u64, u64),
        elapsed: std::time::Duration,
        response_flags: &'a str,
        error: Option<&'a str>,
        policy: Option<&'a str>,
    ) -> access_log::Entry<'a> {
        access_log::Entry {
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

/// A stream whose reads are counted into a metrics counter and a local total.
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    counter: Counter,
    total: u64,
}

impl<S> Counted<S> {
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
