//! The label values that describe one connection in metrics and the access log: which end
//! reports, whether it crossed the mesh tunnel, how it ended ([`ResponseFlag`]) and the
//! Istio labels of each side ([`WorkloadLabels`], shared per workload).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use crate::identity::SpiffeId;
use crate::model::{MeshSnapshot, Workload};

/// Which end of the connection reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The client's side: the outbound proxy (15001 capture or SOCKS5).
    Source,
    /// The server's side: the inbound proxy (HBONE 15008 or plaintext 15006).
    Destination,
}

impl Reporter {
    /// The `reporter` label value: `source` or `destination`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }

    /// `outbound` for the source side, `inbound` for the destination side.
    pub fn direction(self) -> &'static str {
        match self {
            Reporter::Source => "outbound",
            Reporter::Destination => "inbound",
        }
    }
}

/// Whether the connection crossed the mesh tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Security {
    /// Carried over HBONE (mutual TLS between the two proxies).
    MutualTls,
    /// Plain TCP: plaintext inbound, or outbound to a destination outside the mesh.
    None,
}

impl Security {
    /// The `connection_security_policy` label value: `mutual_tls` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Security::MutualTls => "mutual_tls",
            Security::None => "none",
        }
    }
}

/// The value of a label nothing is known about.
pub const UNKNOWN: &str = "unknown";

/// The Istio labels of one side of a connection; unknown values print `unknown`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadLabels {
    /// The workload's name.
    pub workload: String,
    /// The workload's namespace, or else the principal's.
    pub namespace: String,
    /// The side's SPIFFE ID: the one it proved or presents, or for an outbound HBONE
    /// destination the one it must prove.
    pub principal: String,
    /// The workload's `app.kubernetes.io/name` label, or else its `app` label.
    pub app: String,
    /// The workload's `app.kubernetes.io/version` label, or else its `version` label.
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
/// Entries a label or handle cache holds before it is emptied.
pub(crate) const LABEL_CACHE_LIMIT: usize = 4096;

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

/// How a connection ended, as Istio's `response_flags` label and the access log show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResponseFlag {
    /// Nothing went wrong (`-`).
    None,
    /// Refused by an authorization policy (or PeerAuthentication STRICT).
    Deny,
    /// The upstream could not be reached.
    Connect,
    /// The target was this proxy itself.
    Loop,
    /// The connection's task ended (cancelled or panicked) before it reported its close.
    Cut,
}

impl ResponseFlag {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlag::None => "-",
            ResponseFlag::Deny => "DENY",
            ResponseFlag::Connect => "CONNECT",
            ResponseFlag::Loop => "LOOP",
            ResponseFlag::Cut => "CUT",
        }
    }
}

impl std::fmt::Display for ResponseFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ResponseFlag;

    #[test]
    fn response_flags_render_as_before() {
        let rendered: Vec<_> = [
            ResponseFlag::None,
            ResponseFlag::Deny,
            ResponseFlag::Connect,
            ResponseFlag::Loop,
            ResponseFlag::Cut,
        ]
        .iter()
        .map(|f| f.as_str())
        .collect();
        assert_eq!(rendered, ["-", "DENY", "CONNECT", "LOOP", "CUT"]);
    }
}
