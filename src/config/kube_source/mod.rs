//! The Kubernetes API source: the mesh model from a cluster's API server, through the same
//! translation the file source uses.
//!
//! One watch per kind (`watch.rs`) feeds a reflector of parsed objects (`reflector.rs`):
//! this node's Pods (field selector `spec.nodeName=<node>`) and the other nodes' Pods
//! (`spec.nodeName!=<node>`), both stripped to the fields routing and identity read
//! (`strip.rs`); Namespaces, Services and EndpointSlices cluster-wide; weft's
//! `AuthorizationPolicy` and `PeerAuthentication`; and, when their CRDs are installed,
//! weft's `DestinationPolicy` and `FaultInjection` and Gateway API `HTTPRoute`. A change marks the model dirty; one rebuild task waits a short coalescing
//! window, then translates everything leniently ([`crate::model::translate::build_lenient_with_unparsed`]:
//! an invalid object is left out alone, named in a log line and in `/config_dump`) and
//! publishes one snapshot, so a burst of a thousand pod events is one rebuild.
//!
//! The first snapshot is published once every kind has listed; until then the daemon waits.
//! After that, a lost API server never drops the model: the last snapshot keeps serving,
//! the watches retry with backoff, and the source says so ([`SourceStatus::degraded`],
//! `last_sync_unix`, per-kind counts and errors).

mod reflector;
mod strip;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::{watch as channel, Notify};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use self::reflector::{KindStore, Stored};
use self::watch::WatchSpec;
use super::source::{ConfigSource, RejectedObject, ReloadStats, SourceStatus};
use crate::model::translate::{build_lenient_with_unparsed, Unparsed};
use crate::model::weft_kinds::WEFT_API_VERSION;
use crate::model::MeshStore;

/// How long the rebuild waits after a change for more changes to arrive.
pub const DEFAULT_COALESCE: Duration = Duration::from_millis(100);
/// While a watch is failing, how often the API server is asked whether it is back.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// A failed watch counts as recovered once the API server answers and the watch reported
/// no new error for this long (longer than its longest backoff: a failed retry would have
/// reported).
const RECOVERY_QUIET: Duration = Duration::from_secs(15);
/// How long a request to the API server may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the Kubernetes source.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    /// The kubeconfig could not be read or used.
    #[error("cannot use kubeconfig {}: {message}", path.display())]
    Kubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// What was wrong with it.
        message: String,
    },
    /// No cluster configuration was found (not in a pod, no kubeconfig).
    #[error(
        "cannot find the Kubernetes API: {0}; run in a pod with a ServiceAccount, or pass \
         --kubeconfig"
    )]
    NoConfig(String),
    /// The client could not be built from the configuration.
    #[error("cannot build the Kubernetes client: {0}")]
    Client(String),
}

/// How the source watches.
#[derive(Debug, Clone)]
pub struct KubeSourceOptions {
    /// This node's name: its pods are watched with all their fields, the others' reduced.
    pub node_name: String,
    /// How long a rebuild waits for more changes ([`DEFAULT_COALESCE`]).
    pub coalesce: Duration,
}

/// A client of one API server.
#[derive(Clone)]
pub struct ApiClient {
    /// The client.
    pub client: Client,
    /// The API server's URL, for logs and the source's name.
    pub server: String,
}

/// A Kubernetes client from `kubeconfig`, or (without one) the in-cluster ServiceAccount
/// config when running in a pod, else the default kubeconfig.
pub async fn client(kubeconfig: Option<&Path>) -> Result<ApiClient, KubeSourceError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let bad = |message: String| KubeSourceError::Kubeconfig {
                path: path.to_owned(),
                message,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .map_err(|e| bad(e.to_string()))?
        }
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            kube::Config::incluster().map_err(|e| KubeSourceError::NoConfig(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| KubeSourceError::NoConfig(e.to_string()))?,
    };
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| KubeSourceError::Client(e.to_string()))?;
    Ok(ApiClient { client, server })
}

#[derive(Debug, Default)]
struct State {
    stats: ReloadStats,
    /// The objects the last build left out, with their errors, and the kind label of each.
    rejected: Vec<(&'static str, RejectedObject)>,
    /// Rejections already logged (object, error), so each is logged once.
    logged: BTreeSet<(String, String)>,
    /// When the model was last known up to date with the API server.
    last_sync: Option<SystemTime>,
}

#[derive(Debug)]
struct Shared {
    name: String,
    store: Arc<MeshStore>,
    kinds: Vec<Arc<KindStore>>,
    changed: Arc<Notify>,
    coalesce: Duration,
    state: Mutex<State>,
    stats_tx: channel::Sender<ReloadStats>,
    /// Sent `true` once the first snapshot is published.
    synced_tx: channel::Sender<bool>,
}

/// The Kubernetes API source (see the module doc).
#[derive(Debug)]
pub struct KubeSource {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

// === impl KubeSource ===

impl KubeSource {
    /// Starts the watches and the rebuild task on the current runtime. The first snapshot
    /// is published once every kind has listed: see [`KubeSource::wait_synced`].
    pub fn start(api: ApiClient, store: Arc<MeshStore>, options: KubeSourceOptions) -> Self {
        let ApiClient { client, server } = api;
        let changed = Arc::new(Notify::new());
        let node = options.node_name.clone();
        let local_pods = Arc::new(KindStore::new("Pod (this node)", "Pod", true, false));
        let remote_pods = Arc::new(KindStore::new("Pod (other nodes)", "Pod", true, false));
        let namespaces = Arc::new(KindStore::new("Namespace", "Namespace", false, false));
        let services = Arc::new(KindStore::new("Service", "Service", true, false));
        let slices = Arc::new(KindStore::new(
            "EndpointSlice",
            "EndpointSlice",
            true,
            false,
        ));
        let authz = Arc::new(KindStore::new(
            "AuthorizationPolicy",
            "AuthorizationPolicy",
            true,
            false,
        ));
        let peer = Arc::new(KindStore::new(
            "PeerAuthentication",
            "PeerAuthentication",
            true,
            false,
        ));
        let routes = Arc::new(KindStore::new("HTTPRoute", "HTTPRoute", true, true));
        // weft's traffic kinds are optional too: an install whose CRDs predate them still
        // serves.
        let destination_policies = Arc::new(KindStore::new(
            "DestinationPolicy",
            "DestinationPolicy",
            true,
            true,
        ));
        let fault_injections = Arc::new(KindStore::new(
            "FaultInjection",
            "FaultInjection",
            true,
            true,
        ));

        let mut tasks = Vec::new();
        let plain = watcher::Config::default();
        tasks.push(watch::spawn(
            WatchSpec {
                api: Api::<core::Pod>::all(client.clone()),
                config: plain.clone().fields(&format!("spec.nodeName={node}")),
                store: local_pods.clone(),
                keep: strip::pod,
            },
            changed.clone(),
        ));
        tasks.push(watch::spawn(
            WatchSpec {
                api: Api::<core::Pod>::all(client.clone()),
                config: plain.clone().fields(&format!("spec.nodeName!={node}")),
                store: remote_pods.clone(),
                keep: strip::pod,
            },
            changed.clone(),
        ));
        tasks.push(watch::spawn(
            WatchSpec {
                api: Api::<core::Namespace>::all(client.clone()),
                config: plain.clone(),
                store: namespaces.clone(),
                keep: |ns| {
                    strip::metadata(&mut ns.metadata);
                    ns.spec = None;
                    ns.status = None;
                    true
                },
            },
            changed.clone(),
        ));
        tasks.push(watch::spawn(
            WatchSpec {
                api: Api::<core::Service>::all(client.clone()),
                config: plain.clone(),
                store: services.clone(),
                keep: strip::service,
            },
            changed.clone(),
        ));
        tasks.push(watch::spawn(
            WatchSpec {
                api: Api::<discovery::EndpointSlice>::all(client.clone()),
                config: plain.clone(),
                store: slices.clone(),
                keep: |slice| {
                    strip::metadata(&mut slice.metadata);
                    true
                },
            },
            changed.clone(),
        ));
        let (group, version) = WEFT_API_VERSION
            .split_once('/')
            .unwrap_or((WEFT_API_VERSION, ""));
        for (kind, plural, kind_store) in [
            ("AuthorizationPolicy", "authorizationpolicies", &authz),
            ("PeerAuthentication", "peerauthentications", &peer),
            (
                "DestinationPolicy",
                "destinationpolicies",
                &destination_policies,
            ),
            ("FaultInjection", "faultinjections", &fault_injections),
        ] {
            tasks.push(watch_dynamic(
                &client,
                GroupVersionKind::gvk(group, version, kind),
                plural,
                kind_store.clone(),
                changed.clone(),
            ));
        }
        tasks.push(watch_dynamic(
            &client,
            GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
            "httproutes",
            routes.clone(),
            changed.clone(),
        ));

        let shared = Shared::new(
            format!("kubernetes {server}"),
            store,
            vec![
                namespaces,
                local_pods,
                remote_pods,
                services,
                slices,
                authz,
                peer,
                routes,
                destination_policies,
                fault_injections,
            ],
            changed,
            options.coalesce,
        );
        tasks.push(tokio::spawn(rebuild_forever(shared.clone())));
        tasks.push(tokio::spawn(probe_forever(shared.clone(), client)));
        KubeSource { shared, tasks }
    }

    /// Waits until the first snapshot is published (every kind listed), logging what is
    /// still missing every `report_every`.
    pub async fn wait_synced(&self, report_every: Duration) {
        let mut synced = self.shared.synced_tx.subscribe();
        loop {
            if *synced.borrow_and_update() {
                return;
            }
            if tokio::time::timeout(report_every, synced.changed())
                .await
                .is_err()
            {
                let waiting: Vec<String> = self
                    .shared
                    .kinds
                    .iter()
                    .filter(|k| !k.synced())
                    .map(|k| match k.error() {
                        Some(error) => format!("{} ({error})", k.label),
                        None => k.label.to_owned(),
                    })
                    .collect();
                warn!(
                    "waiting for the first list from the API server of: {}",
                    waiting.join(", ")
                );
            }
        }
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn watch_dynamic(
    client: &Client,
    gvk: GroupVersionKind,
    plural: &str,
    store: Arc<KindStore>,
    changed: Arc<Notify>,
) -> JoinHandle<()> {
    let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
    watch::spawn(
        WatchSpec {
            api: Api::<DynamicObject>::all_with(client.clone(), &resource),
            config: watcher::Config::default(),
            store,
            keep: |object| {
                strip::metadata(&mut object.metadata);
                true
            },
        },
        changed,
    )
}

// === impl Shared ===

impl Shared {
    fn new(
        name: String,
        store: Arc<MeshStore>,
        kinds: Vec<Arc<KindStore>>,
        changed: Arc<Notify>,
        coalesce: Duration,
    ) -> Arc<Self> {
        let (stats_tx, _) = channel::channel(ReloadStats::default());
        let (synced_tx, _) = channel::channel(false);
        Arc::new(Shared {
            name,
            store,
            kinds,
            changed,
            coalesce,
            state: Mutex::new(State::default()),
            stats_tx,
            synced_tx,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Fields are replaced one at a time; a panic cannot leave the state torn.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn all_synced(&self) -> bool {
        self.kinds.iter().all(|k| k.synced())
    }

    fn lost(&self) -> Vec<String> {
        self.kinds
            .iter()
            .filter_map(|k| k.error().map(|e| format!("{}: {e}", k.label)))
            .collect()
    }

    /// Records that the model is up to date with the API server now, if it is.
    fn note_sync(&self) {
        if self.all_synced() && self.lost().is_empty() {
            self.lock().last_sync = Some(SystemTime::now());
        }
    }

    /// Translates every stored object and publishes the snapshot.
    async fn rebuild(self: &Arc<Self>) {
        let mut objects = Vec::new();
        let mut rejected: Vec<(&'static str, RejectedObject)> = Vec::new();
        // A pod being scheduled onto this node leaves the other-nodes watch as it enters this
        // node's: for a moment both may hold it. The first store (this node's) wins.
        let mut seen = std::collections::HashSet::new();
        let mut unparsed = Vec::new();
        for kind in &self.kinds {
            for stored in kind.objects() {
                match stored {
                    Stored::Parsed(parsed) => {
                        if seen.insert(parsed.object_ref()) {
                            objects.push(parsed)
                        }
                    }
                    Stored::Invalid { object, error } => {
                        rejected.push((
                            kind.label,
                            RejectedObject {
                                object: object.to_string(),
                                error: error.to_string(),
                            },
                        ));
                        // A policy that does not parse must fail closed like one that does
                        // not translate.
                        unparsed.push(Unparsed { object, error });
                    }
                }
            }
        }
        // A cluster's worth of objects takes a while to translate: off the async workers.
        let built = tokio::task::spawn_blocking(move || {
            // Stable order, so a conflict rejects the same (newer) object every time.
            objects.sort_by_cached_key(|o| o.age_order());
            build_lenient_with_unparsed(&objects, &unparsed)
        })
        .await;
        let Ok((snapshot, left_out)) = built else {
            warn!("the model rebuild panicked; the last snapshot stays in force");
            return;
        };
        for r in left_out {
            let label = self.label_of(&r.object);
            rejected.push((
                label,
                RejectedObject {
                    object: r.object.to_string(),
                    error: r.error.to_string(),
                },
            ));
        }
        let counts = (
            snapshot.namespaces().count(),
            snapshot.workloads().count(),
            snapshot.services().count(),
        );
        let mut state = self.lock();
        let generation = self.store.publish(snapshot);
        let mut newly_rejected = 0;
        for (_, r) in &rejected {
            if state.logged.insert((r.object.clone(), r.error.clone())) {
                newly_rejected += 1;
                warn!(
                    object = %r.object,
                    "rejected {}; it is left out of the model until it is fixed, the rest \
                     keeps updating",
                    r.error
                );
            }
        }
        // Forget fixed objects, so that breaking one again is logged again.
        let current: BTreeSet<(String, String)> = rejected
            .iter()
            .map(|(_, r)| (r.object.clone(), r.error.clone()))
            .collect();
        state.logged.retain(|key| current.contains(key));
        state.stats.accepted += 1;
        state.stats.rejected += newly_rejected;
        state.stats.last_error = rejected
            .last()
            .map(|(_, r)| format!("{}: {}", r.object, r.error));
        state.stats.last_loaded_generation = generation;
        state.rejected = rejected;
        self.stats_tx.send_replace(state.stats.clone());
        drop(state);
        info!(
            generation,
            namespaces = counts.0,
            workloads = counts.1,
            services = counts.2,
            "published the mesh model from the Kubernetes API"
        );
        self.note_sync();
        self.synced_tx
            .send_if_modified(|synced| !std::mem::replace(synced, true));
    }

    /// Which kind store an object the build rejected came from.
    fn label_of(&self, object: &crate::model::ObjectRef) -> &'static str {
        let key = (
            object.namespace.clone().unwrap_or_default(),
            object.name.clone().unwrap_or_default(),
        );
        self.kinds
            .iter()
            .filter(|k| k.kind() == object.kind)
            .find(|k| k.contains(&key))
            .or_else(|| self.kinds.iter().find(|k| k.kind() == object.kind))
            .map_or("(unknown kind)", |k| k.label)
    }
}

/// Rebuilds after every change, coalescing the changes of one window into one rebuild.
/// Nothing is published before every kind has listed.
async fn rebuild_forever(shared: Arc<Shared>) {
    loop {
        shared.changed.notified().await;
        tokio::time::sleep(shared.coalesce).await;
        if !shared.all_synced() {
            continue;
        }
        shared.rebuild().await;
    }
}

/// While a watch is failing, asks the API server whether it is back; a watch that has been
/// quiet since counts as recovered. While all is well, notes that the model is in sync.
async fn probe_forever(shared: Arc<Shared>, client: Client) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    loop {
        tick.tick().await;
        if shared.lost().is_empty() {
            shared.note_sync();
            continue;
        }
        if client.apiserver_version().await.is_ok() {
            for kind in &shared.kinds {
                kind.recovered_if_quiet(RECOVERY_QUIET);
            }
            if shared.lost().is_empty() {
                info!("the API server is back and every watch is running again");
                shared.note_sync();
            }
        }
    }
}

impl ConfigSource for KubeSource {
    fn name(&self) -> String {
        self.shared.name.clone()
    }

    fn status(&self) -> SourceStatus {
        let shared = &self.shared;
        let (reloads, rejected, last_sync) = {
            let state = shared.lock();
            (state.stats.clone(), state.rejected.clone(), state.last_sync)
        };
        let mut kinds = BTreeMap::new();
        for kind in &shared.kinds {
            let left_out = rejected.iter().filter(|(l, _)| *l == kind.label).count();
            kinds.insert(kind.label.to_owned(), kind.status(left_out));
        }
        let lost = shared.lost();
        let last_sync_unix = last_sync
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        let degraded = (!lost.is_empty()).then(|| {
            let since =
                last_sync_unix.map_or_else(|| "the start".to_owned(), |t| format!("unix time {t}"));
            format!(
                "the Kubernetes API cannot be watched ({}); serving the model as of {since}",
                lost.join("; ")
            )
        });
        SourceStatus {
            name: self.name(),
            reads: reloads.accepted,
            reloads,
            stalled: None,
            degraded,
            last_sync_unix,
            kinds,
            rejected_objects: rejected.into_iter().map(|(_, r)| r).collect(),
        }
    }

    fn subscribe(&self) -> channel::Receiver<ReloadStats> {
        self.shared.stats_tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MeshSnapshot;
    use serde_json::json;

    /// An object as the API sends it.
    fn object(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).unwrap()
    }

    fn pod(i: usize) -> DynamicObject {
        object(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("p-{i}"), "namespace": "shop", "uid": format!("u-{i}")},
            "spec": {"nodeName": "node-1", "containers": []},
            "status": {"podIP": format!("10.1.{}.{}", i / 250, i % 250 + 1)}}))
    }

    /// The rebuild task with a namespace kind and a pod kind, as the watches feed them.
    fn fixture(coalesce: Duration) -> (Arc<Shared>, Arc<KindStore>, Arc<MeshStore>) {
        let store = Arc::new(MeshStore::new(MeshSnapshot::empty()));
        let namespaces = Arc::new(KindStore::new("Namespace", "Namespace", false, false));
        let pods = Arc::new(KindStore::new("Pod", "Pod", true, false));
        let shared = Shared::new(
            "test".into(),
            store.clone(),
            vec![namespaces.clone(), pods.clone()],
            Arc::new(Notify::new()),
            coalesce,
        );
        let ns =
            object(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}));
        let (key, stored) = namespaces.parse(&ns);
        namespaces.relist_start();
        namespaces.apply(key, Some(stored));
        namespaces.relist_done();
        pods.relist_start();
        pods.relist_done();
        (shared, pods, store)
    }

    #[tokio::test]
    async fn a_burst_of_a_thousand_pod_events_is_one_rebuild() {
        let (shared, pods, store) = fixture(Duration::from_millis(500));
        let mut generations = store.subscribe();
        let task = tokio::spawn(rebuild_forever(shared.clone()));
        for i in 0..1000 {
            let (key, stored) = pods.parse(&pod(i));
            pods.apply(key, Some(stored));
            shared.changed.notify_one();
            // Events arrive spread out, with the rebuild task free to run in between.
            tokio::task::yield_now().await;
        }
        generations.changed().await.unwrap();
        assert_eq!(store.load().workloads().count(), 1000);
        assert_eq!(shared.lock().stats.accepted, 1, "one rebuild for the burst");
        task.abort();
    }

    #[tokio::test]
    async fn nothing_is_published_before_every_kind_listed_and_a_bad_object_is_left_out_alone() {
        let (shared, pods, store) = fixture(Duration::from_millis(1));
        let late = Arc::new(KindStore::new("Service", "Service", true, false));
        let shared = Shared::new(
            "test".into(),
            store.clone(),
            vec![shared.kinds[0].clone(), pods.clone(), late.clone()],
            Arc::new(Notify::new()),
            Duration::from_millis(1),
        );
        let mut generations = store.subscribe();
        let task = tokio::spawn(rebuild_forever(shared.clone()));
        for i in 0..3 {
            let (key, stored) = pods.parse(&pod(i));
            pods.apply(key, Some(stored));
        }
        // A pod claiming p-0's IP: the API server cannot know, the build rejects it.
        let mut twin = serde_json::to_value(pod(0)).unwrap();
        twin["metadata"]["name"] = json!("twin");
        twin["metadata"]["uid"] = json!("u-twin");
        twin["metadata"]["creationTimestamp"] = json!("2030-01-01T00:00:00Z");
        let twin = object(twin);
        let (key, stored) = pods.parse(&twin);
        pods.apply(key, Some(stored));
        shared.changed.notify_one();
        // Give the rebuild task many windows in which it must not publish.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(store.load().generation, 0, "Service has not listed yet");
        late.relist_start();
        late.relist_done();
        shared.changed.notify_one();
        generations.changed().await.unwrap();
        let snapshot = store.load();
        assert_eq!(snapshot.workloads().count(), 3);
        let status = KubeSource {
            shared: shared.clone(),
            tasks: Vec::new(),
        }
        .status();
        assert_eq!(status.rejected_objects.len(), 1);
        assert_eq!(status.rejected_objects[0].object, "Pod shop/twin");
        assert!(status.rejected_objects[0].error.contains("status.podIP"));
        assert_eq!(status.kinds["Pod"].rejected, 1);
        assert_eq!(status.kinds["Pod"].objects, 4);
        task.abort();
    }

    #[tokio::test]
    async fn a_pod_in_both_pod_watches_at_once_is_one_pod() {
        let (shared, local, store) = fixture(Duration::from_millis(1));
        let remote = Arc::new(KindStore::new("Pod (other nodes)", "Pod", true, false));
        remote.relist_start();
        remote.relist_done();
        let shared = Shared::new(
            "test".into(),
            store.clone(),
            vec![shared.kinds[0].clone(), local.clone(), remote.clone()],
            Arc::new(Notify::new()),
            Duration::from_millis(1),
        );
        let mut generations = store.subscribe();
        let task = tokio::spawn(rebuild_forever(shared.clone()));
        for kind in [&local, &remote] {
            let (key, stored) = kind.parse(&pod(7));
            kind.apply(key, Some(stored));
        }
        shared.changed.notify_one();
        generations.changed().await.unwrap();
        assert_eq!(store.load().workloads().count(), 1);
        let status = KubeSource {
            shared: shared.clone(),
            tasks: Vec::new(),
        }
        .status();
        assert!(
            status.rejected_objects.is_empty(),
            "{:?}",
            status.rejected_objects
        );
        task.abort();
    }

    #[tokio::test]
    async fn a_policy_that_does_not_parse_denies_its_namespace() {
        let (shared, pods, store) = fixture(Duration::from_millis(1));
        let policies = Arc::new(KindStore::new(
            "AuthorizationPolicy",
            "AuthorizationPolicy",
            true,
            false,
        ));
        let shared = Shared::new(
            "test".into(),
            store.clone(),
            vec![shared.kinds[0].clone(), pods.clone(), policies.clone()],
            Arc::new(Notify::new()),
            Duration::from_millis(1),
        );
        let (key, stored) = pods.parse(&pod(1));
        pods.apply(key, Some(stored));
        // A DENY policy with a misspelt field: left out, it would allow what it denies.
        let broken = object(
            json!({"apiVersion": "weft.dev/v1alpha1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "deny-all", "namespace": "shop"},
            "spec": {"action": "DENY", "rulez": [{}]}}),
        );
        policies.relist_start();
        let (key, stored) = policies.parse(&broken);
        assert!(matches!(stored, Stored::Invalid { .. }));
        policies.apply(key, Some(stored));
        policies.relist_done();
        let mut generations = store.subscribe();
        let task = tokio::spawn(rebuild_forever(shared.clone()));
        shared.changed.notify_one();
        generations.changed().await.unwrap();
        let snapshot = store.load();
        let workload = snapshot.workloads().next().expect("the pod").clone();
        let attrs = crate::policy::ConnectionAttrs {
            source_principal: Some("cluster.local/ns/shop/sa/default"),
            source_namespace: Some("shop"),
            source_ip: "10.9.0.7".parse().unwrap(),
            destination_ip: workload.ips[0],
            destination_port: 8080,
        };
        let verdict = snapshot.authorize(&workload, &attrs);
        assert!(!verdict.allowed, "{verdict:?}");
        assert!(
            verdict.reason.contains("shop/deny-all (rejected)"),
            "{}",
            verdict.reason
        );
        task.abort();
    }
}
