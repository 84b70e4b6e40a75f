//! [`ConfigSource`]: what the rest of weft knows of a config source (the admin API,
//! telemetry and the daemon hold an `Arc<dyn ConfigSource>`), and [`SourceStatus`], what a
//! source reports for readiness, metrics and the config dump.
//!
//! A source reads its input (a file today, the Kubernetes API next), translates it with the
//! one translation of [`crate::model`] and publishes snapshots to a
//! [`crate::model::MeshStore`]; how it reads is its own business.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use tokio::sync::watch;

/// Counters of the loads of a source, sent to subscribers after every accepted or rejected
/// input.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ReloadStats {
    /// Successful loads, the initial one included.
    pub accepted: u64,
    /// Rejected loads (invalid content, unreadable or missing input).
    pub rejected: u64,
    /// Why the latest load attempt was rejected; `None` once a later one succeeds.
    pub last_error: Option<String>,
    /// Generation of the snapshot this source last published.
    pub last_loaded_generation: u64,
}

/// A source's state now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceStatus {
    /// [`ConfigSource::name`].
    pub name: String,
    /// The load counters (flattened into the JSON of `/stats` and `/config_dump`).
    #[serde(flatten)]
    pub reloads: ReloadStats,
    /// How many times the source read its input (a file source skips reads while the file's
    /// metadata is unchanged).
    pub reads: u64,
    /// Why the source counts as stuck (it stopped taking in changes), if it does; the node is
    /// then not ready.
    pub stalled: Option<String>,
    /// Why the source is cut off from its input while the last snapshot keeps serving (the
    /// API server is unreachable), if it is; the node stays ready and says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    /// When the source last knew its snapshot to be up to date (seconds since the epoch), for
    /// sources that can lose their input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sync_unix: Option<u64>,
    /// Per kind: objects in the model and objects rejected (watch-based sources).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub kinds: BTreeMap<String, KindStatus>,
    /// The objects rejected now, each with its error (watch-based sources: each is left out
    /// alone and the rest of the model keeps updating).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rejected_objects: Vec<RejectedObject>,
}

/// One kind of a watch-based source.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct KindStatus {
    /// Objects of this kind known now (rejected ones included).
    pub objects: usize,
    /// Of those, how many are left out of the model because they are invalid.
    pub rejected: usize,
    /// Whether the initial list of this kind completed.
    pub synced: bool,
    /// `false` for an optional kind whose API is not installed (its CRD is missing).
    pub installed: bool,
    /// The last error of this kind's watch, until it recovers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// An object left out of the model, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectedObject {
    /// `Pod shop/a`.
    pub object: String,
    /// Names the field and what is wrong with it.
    pub error: String,
}

/// A config source, as the admin API, telemetry and the daemon see it.
pub trait ConfigSource: fmt::Debug + Send + Sync {
    /// Names the source in logs and reports, e.g. `file /etc/weft/mesh.yaml`.
    fn name(&self) -> String;

    /// The source's counters and health now.
    fn status(&self) -> SourceStatus;

    /// The counters, updated after every input the source accepted or rejected: wait on it
    /// for "my edit was judged" instead of sleeping.
    fn subscribe(&self) -> watch::Receiver<ReloadStats>;
}
