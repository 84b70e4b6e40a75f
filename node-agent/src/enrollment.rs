//! Enrollment: which pods on this node are in the mesh, kept true as CNI events arrive and
//! as the config changes.
//!
//! A pod is enrolled when its namespace is labelled `weft.dev/dataplane-mode=ambient` and
//! the pod is not labelled `none` (never hostNetwork pods). Enrolling applies the pod's
//! rules first (from then on its traffic is captured or refused, never sent around the
//! proxy) and then opens its listeners. Releasing closes the listeners and removes the
//! rules. Every pod reported by CNI ADD is remembered with its netns, enrolled or not, so a
//! later label change can enroll a running pod and a restarted daemon can find them all.
//!
//! A pod's network namespace is opened once, at ADD (or when restored from the run dir),
//! checked to be a network namespace that is not the node's own, and that handle is what
//! every later rule change and listener uses: retargeting the path afterwards changes
//! nothing. ADD is refused for a pod the config schedules on another node, for a pod with
//! no IPs, and for container ids no runtime would send.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::Mutex;

use weft::admin::{NodeStatus, NotReady};
use weft::hbone::server::BoxFuture;

use weft::model::{enrollment, MeshSnapshot, Workload};
use weft_cni::protocol::{check_container_id, PodAttachment, Response};

use crate::discovery;
use crate::netns::Netns;
use crate::pod_proxy::{NodeContext, PodProxy};
use crate::rules;
use crate::state::{self, DaemonState};

struct Inner {
    /// False until the pods recorded before a restart have been brought back.
    restored: bool,
    known: BTreeMap<String, PodAttachment>,
    /// The network namespace of each known pod, opened once and checked.
    handles: HashMap<String, Arc<Netns>>,
    enrolled: HashMap<String, PodProxy>,
    /// The enrolled IPs the node's probe rules were last written for.
    node_rules_for: Option<Vec<IpAddr>>,
    enrolled_namespaces: Vec<String>,
    /// Handed the node over to a newer process: no more changes to pods or the state file.
    handed_over: bool,
}

/// Keeps the node's pods enrolled or released as they should be.
pub struct PodManager {
    ctx: Arc<NodeContext>,
    run_dir: PathBuf,
    inner: Mutex<Inner>,
    cni_serving: std::sync::atomic::AtomicBool,
    /// True once this process owns the node ([`crate::handover`]): until then CNI requests
    /// wait and the state file is not written.
    owner: tokio::sync::watch::Sender<bool>,
    /// Why weft's CNI config is not in place (`--cni-install`), for readiness.
    cni_config_problem: std::sync::Mutex<Option<String>>,
}

/// Whether the config says this pod belongs in the mesh, and as which workload, by the one
/// enrollment rule of the model: the namespace the CNI reported, and the listed workload's
/// labels and hostNetwork (a pod the config does not list yet is judged by its namespace).
fn desired(snapshot: &MeshSnapshot, pod: &PodAttachment) -> (bool, Option<Arc<Workload>>) {
    let workload = snapshot
        .workload_by_uid(&pod.uid)
        .or_else(|| {
            snapshot
                .workloads()
                .find(|w| w.namespace == pod.namespace && w.name == pod.name)
        })
        .cloned();
    let namespace_labels = snapshot.namespace(&pod.namespace).map(|ns| &ns.labels);
    let enrolled = match &workload {
        Some(w) => enrollment::pod_is_enrolled(namespace_labels, &w.labels, w.host_network),
        None => enrollment::pod_is_enrolled(namespace_labels, &BTreeMap::new(), false),
    };
    (enrolled, workload)
}

impl PodManager {
    /// Loads the pods recorded in the run dir (from before a restart).
    pub fn new(
        ctx: Arc<NodeContext>,
        run_dir: &Path,
    ) -> Result<Arc<PodManager>, state::StateError> {
        let saved = load_recorded(&ctx.home, run_dir)?;
        Ok(Arc::new(PodManager {
            ctx,
            run_dir: run_dir.to_owned(),
            cni_serving: std::sync::atomic::AtomicBool::new(false),
            owner: tokio::sync::watch::channel(false).0,
            cni_config_problem: std::sync::Mutex::new(None),
            inner: Mutex::new(Inner {
                restored: false,
                node_rules_for: None,
                known: saved.known,
                handles: saved.handles,
                enrolled: HashMap::new(),
                enrolled_namespaces: saved.enrolled_namespaces,
                handed_over: false,
            }),
        }))
    }

    /// This process now owns the node: the state file is read again (a previous process
    /// may have added or deleted pods since it was first read), every pod is brought to its
    /// desired state and CNI requests are answered from here on.
    pub async fn become_owner(&self) {
        {
            let mut inner = self.inner.lock().await;
            match load_recorded(&self.ctx.home, &self.run_dir) {
                Ok(saved) => {
                    for gone in inner
                        .known
                        .keys()
                        .filter(|id| !saved.known.contains_key(*id))
                        .cloned()
                        .collect::<Vec<_>>()
                    {
                        tracing::info!(container = %gone, "pod deleted while the previous weft-node owned the node");
                        inner.enrolled.remove(&gone);
                    }
                    for (id, handle) in saved.handles {
                        if !inner.known.contains_key(&id) {
                            inner.handles.insert(id, handle);
                        }
                    }
                    inner.handles.retain(|id, _| saved.known.contains_key(id));
                    inner.known = saved.known;
                    inner.enrolled_namespaces = saved.enrolled_namespaces;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot read the state file again; keeping the pods read at start")
                }
            }
        }
        self.owner.send_replace(true);
        self.reconcile_all().await;
    }

    /// A newer process took the node ([`crate::handover`]): finish the request in hand and
    /// change nothing from here on (its listeners and connections keep serving until SIGTERM).
    pub async fn hand_over(&self) {
        let mut inner = self.inner.lock().await;
        inner.handed_over = true;
        self.owner.send_replace(false);
    }

    /// Pods of this node the model lists as enrolled but no CNI call ever reported (they ran
    /// before weft was installed, or started while its CNI config was not in place): their
    /// network namespaces are looked up in `proc_dir` ([`crate::discovery`]) and, when the
    /// namespace holds the pod's IP, enrolled like a CNI ADD would. Cheap when every such
    /// pod is known (nothing is scanned).
    pub async fn discover(&self, proc_dir: &Path) {
        let snapshot = self.ctx.store.load();
        let candidates: Vec<Arc<Workload>> = {
            let inner = self.inner.lock().await;
            if inner.handed_over || !*self.owner.borrow() {
                return;
            }
            let known: BTreeSet<&str> = inner.known.values().map(|p| p.uid.as_str()).collect();
            snapshot
                .workloads()
                .filter(|w| w.node.as_deref() == Some(self.ctx.node_name.as_str()))
                .filter(|w| w.enrolled && !w.host_network && !w.ips.is_empty())
                .filter(|w| !known.contains(w.uid.as_str()))
                .cloned()
                .collect()
        };
        if candidates.is_empty() {
            return;
        }
        let own = match discovery::current_netns_inode() {
            Ok(inode) => inode,
            Err(error) => {
                tracing::warn!(%error, "cannot read the daemon's own network namespace; not looking for running pods");
                return;
            }
        };
        // The scan and the address checks read /proc: off the async workers.
        let dir = proc_dir.to_owned();
        let wanted: Vec<(String, Vec<IpAddr>)> = candidates
            .iter()
            .map(|w| (w.uid.clone(), w.ips.clone()))
            .collect();
        let found = tokio::task::spawn_blocking(move || {
            discovery::scan(&dir, own).map(|sandboxes| {
                sandboxes
                    .into_iter()
                    .filter_map(|sandbox| {
                        let (_, ips) = wanted.iter().find(|(uid, _)| *uid == sandbox.pod_uid)?;
                        // The API's word for the pod's IP must be what the namespace holds.
                        let holds_ip = ips.iter().any(|ip| sandbox.has_local_ip(*ip));
                        Some((sandbox, holds_ip))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .await;
        let found = match found {
            Ok(Ok(found)) => found,
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot look for pods that already run");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "the scan for running pods failed");
                return;
            }
        };
        let mut inner = self.inner.lock().await;
        if inner.handed_over {
            return;
        }
        let mut changed = false;
        for workload in candidates {
            let label = format!("{}/{}", workload.namespace, workload.name);
            let Some((sandbox, holds_ip)) = found.iter().find(|(s, _)| s.pod_uid == workload.uid)
            else {
                continue;
            };
            if !holds_ip {
                tracing::warn!(pod = %label, netns = %sandbox.netns_path.display(), ips = ?workload.ips,
                    "a running pod's network namespace does not hold its IP; not enrolling it");
                continue;
            }
            let pod = PodAttachment {
                container_id: format!("{DISCOVERED_PREFIX}{}", workload.uid),
                netns: sandbox.netns_path.display().to_string(),
                namespace: workload.namespace.clone(),
                name: workload.name.clone(),
                uid: workload.uid.clone(),
                ips: workload.ips.clone(),
            };
            let handle = match open_pod_netns(&self.ctx.home, &pod.netns) {
                Ok(handle) => handle,
                Err(why) => {
                    tracing::warn!(pod = %label, "cannot open a running pod's namespace: {why}");
                    continue;
                }
            };
            // The pid may have been reused between the scan and the open.
            if handle.identity().map(|(_, ino)| ino).ok() != Some(sandbox.netns_inode) {
                continue;
            }
            let id = pod.container_id.clone();
            inner.known.insert(id.clone(), pod);
            inner.handles.insert(id.clone(), handle);
            match self.reconcile_pod(&mut inner, &snapshot, &id).await {
                Ok(enrolled) => {
                    tracing::info!(pod = %label, enrolled, "found a pod that was already running")
                }
                Err(error) => tracing::error!(pod = %label, %error, "cannot enroll a running pod"),
            }
            changed = true;
        }
        if changed {
            self.persist(&mut inner, &snapshot).await;
        }
    }

    /// Whether this process handed the node over to a newer one.
    pub async fn handed_over(&self) -> bool {
        self.inner.lock().await.handed_over
    }

    /// Waits until this process owns the node; false if it handed the node over.
    async fn wait_owner(&self) -> bool {
        let mut owner = self.owner.subscribe();
        if owner.wait_for(|owner| *owner).await.is_err() {
            return false;
        }
        !self.inner.lock().await.handed_over
    }

    /// CNI ADD: remember the pod and enroll it if it should be. Answers when done.
    pub async fn add(&self, pod: PodAttachment) -> Response {
        // Refusals that a retry cannot fix: the runtime should not retry them.
        let refuse = |message: String| Response {
            ok: false,
            enrolled: false,
            message,
            permanent: true,
        };
        if let Err(why) = check_container_id(&pod.container_id) {
            return refuse(why.to_string());
        }
        if !self.wait_owner().await {
            return handed_over_response();
        }
        if pod.ips.is_empty() {
            return refuse(format!(
                "pod {}/{} has no IP addresses in prevResult; weft-cni must run after the IPAM plugin",
                pod.namespace, pod.name
            ));
        }
        let snapshot = self.ctx.store.load();
        // Only the pod object itself (by uid) can say it runs elsewhere; a same-named pod
        // from a stale config cannot.
        if let Some(workload) = snapshot.workload_by_uid(&pod.uid) {
            if let Some(node) = workload.node.as_ref().filter(|n| **n != self.ctx.node_name) {
                return refuse(format!(
                    "pod {}/{} is scheduled on node {node}, not on this node ({}); refusing to serve its identity here",
                    pod.namespace, pod.name, self.ctx.node_name
                ));
            }
        }
        let handle = match open_pod_netns(&self.ctx.home, &pod.netns) {
            Ok(handle) => handle,
            Err(why) => return refuse(why),
        };
        let mut inner = self.inner.lock().await;
        let id = pod.container_id.clone();
        if let Some(previous) = inner.known.insert(id.clone(), pod) {
            tracing::debug!(container = %previous.container_id, "CNI ADD repeated for a known pod");
            inner.enrolled.remove(&id);
        }
        inner.handles.insert(id.clone(), handle);
        let result = self.reconcile_pod(&mut inner, &snapshot, &id).await;
        self.persist(&mut inner, &snapshot).await;
        match result {
            Ok(enrolled) => Response {
                ok: true,
                enrolled,
                message: String::new(),
                permanent: false,
            },
            Err(message) => {
                // Fail closed: forget nothing, but tell the runtime the pod is not ready.
                Response {
                    ok: false,
                    enrolled: false,
                    message,
                    permanent: false,
                }
            }
        }
    }

    /// CNI CHECK: the pod is set up as it should be.
    pub async fn check(&self, pod: &PodAttachment) -> Response {
        if !self.wait_owner().await {
            return handed_over_response();
        }
        let inner = self.inner.lock().await;
        let snapshot = self.ctx.store.load();
        let (should, _) = desired(&snapshot, pod);
        let is = inner.enrolled.contains_key(&pod.container_id);
        let rules_ok = !should
            || inner
                .handles
                .get(&pod.container_id)
                .is_some_and(|netns| rules::pod_rules_present(&netns.pinned_path()));
        let ok = should == is && rules_ok;
        Response {
            ok,
            enrolled: is,
            message: if ok {
                String::new()
            } else {
                format!(
                    "pod {}/{}: should be enrolled: {should}, is: {is}, rules present: {rules_ok}",
                    pod.namespace, pod.name
                )
            },
            permanent: false,
        }
    }

    /// CNI DEL: release and forget the pod (idempotent).
    pub async fn del(&self, container_id: &str) -> Response {
        if !self.wait_owner().await {
            return handed_over_response();
        }
        let mut inner = self.inner.lock().await;
        if let Some(pod) = inner.known.remove(container_id) {
            let handle = inner.handles.remove(container_id);
            if let (Some(_), Some(handle)) = (inner.enrolled.remove(container_id), handle) {
                // The handle keeps the namespace alive, so this cannot hit another one.
                let netns = handle.pinned_path();
                if let Err(error) = run_blocking(move || rules::remove_pod_rules(&netns)).await {
                    tracing::debug!(%error, "removing rules of a deleted pod");
                }
            }
            tracing::info!(pod = %format!("{}/{}", pod.namespace, pod.name), "pod deleted");
        }
        let snapshot = self.ctx.store.load();
        self.persist(&mut inner, &snapshot).await;
        Response {
            ok: true,
            enrolled: false,
            message: String::new(),
            permanent: false,
        }
    }

    /// CNI GC: forget pods the runtime no longer has.
    pub async fn gc(&self, valid: &[String]) -> Response {
        let stale: Vec<String> = {
            let inner = self.inner.lock().await;
            inner
                .known
                .keys()
                .filter(|id| !valid.contains(id))
                .cloned()
                .collect()
        };
        for id in stale {
            self.del(&id).await;
        }
        Response {
            ok: true,
            enrolled: false,
            message: String::new(),
            permanent: false,
        }
    }

    /// Brings every known pod to the state the current config asks for.
    pub async fn reconcile_all(&self) {
        let mut inner = self.inner.lock().await;
        if inner.handed_over {
            return;
        }
        if inner.node_rules_for.is_none() {
            // The node's anti-spoofing rules go in before any pod trusts the probe address.
            match run_blocking(|| rules::apply_node_rules(&[])).await {
                Ok(()) => inner.node_rules_for = Some(Vec::new()),
                Err(error) => tracing::error!(%error, "cannot install the node's probe rules"),
            }
        }
        let snapshot = self.ctx.store.load();
        // Found by discovery, so no CNI DEL will name them: forgotten when the model drops them.
        let vanished: Vec<String> = inner
            .known
            .iter()
            .filter(|(id, pod)| {
                id.starts_with(DISCOVERED_PREFIX) && snapshot.workload_by_uid(&pod.uid).is_none()
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in vanished {
            inner.known.remove(&id);
            inner.handles.remove(&id);
            inner.enrolled.remove(&id);
            tracing::info!(container = %id, "a pod found running is gone from the model; forgotten");
        }
        let ids: Vec<String> = inner.known.keys().cloned().collect();
        for id in ids {
            if let Err(error) = self.reconcile_pod(&mut inner, &snapshot, &id).await {
                tracing::error!(container = %id, %error, "cannot bring pod to its desired state");
            }
        }
        inner.restored = true;
        self.persist(&mut inner, &snapshot).await;
    }

    /// What readiness says about weft's CNI config: `None` when in place (or not managed).
    pub fn set_cni_config_problem(&self, problem: Option<String>) {
        if let Ok(mut current) = self.cni_config_problem.lock() {
            *current = problem;
        }
    }

    /// Marks the CNI socket as serving (readiness needs it).
    pub fn set_serving_cni(&self) {
        self.cni_serving
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Shutdown: every enrolled pod's listeners stop accepting; open connections carry on.
    pub async fn stop_accepting(&self) {
        for proxy in self.inner.lock().await.enrolled.values() {
            proxy.stop_accepting();
        }
    }

    /// Number of pods known on this node, and how many of them are enrolled.
    pub async fn counts(&self) -> (usize, usize) {
        let inner = self.inner.lock().await;
        (inner.known.len(), inner.enrolled.len())
    }

    /// Enrolls or releases one pod; returns whether it ends up enrolled.
    async fn reconcile_pod(
        &self,
        inner: &mut Inner,
        snapshot: &MeshSnapshot,
        id: &str,
    ) -> Result<bool, String> {
        let Some(pod) = inner.known.get(id).cloned() else {
            return Ok(false);
        };
        let (should, workload) = desired(snapshot, &pod);
        let label = format!("{}/{}", pod.namespace, pod.name);
        let Some(handle) = inner.handles.get(id).cloned() else {
            return Err(format!(
                "pod {label}: its network namespace was never opened"
            ));
        };
        // Checked before every change: pod rules in the node's namespace would capture the
        // node's own traffic.
        if handle.same_namespace(&self.ctx.home).unwrap_or(true) {
            inner.enrolled.remove(id);
            return Err(format!(
                "pod {label}: its network namespace is the node's own; refusing to apply pod rules there"
            ));
        }
        if !should {
            if inner.enrolled.remove(id).is_some() {
                let netns = handle.pinned_path();
                run_blocking(move || rules::remove_pod_rules(&netns))
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(pod = %label, "released from the mesh");
            }
            return Ok(false);
        }
        // A pod the config does not list yet runs as its namespace's `default` service
        // account, as Kubernetes does for pods that name none; when the config catches up
        // and says otherwise, the proxy is restarted with the right identity.
        let workload = workload.unwrap_or_else(|| {
            tracing::warn!(pod = %label, "pod not in the mesh config: serving it as service account `default` until it appears");
            Arc::new(Workload {
                uid: pod.uid.clone(),
                name: pod.name.clone(),
                namespace: pod.namespace.clone(),
                service_account: "default".into(),
                node: None,
                ips: pod.ips.clone(),
                labels: Default::default(),
                host_network: false,
                enrolled: true,
                waypoint: None,
                named_ports: Default::default(),
            })
        });
        let up_to_date = inner
            .enrolled
            .get(id)
            .is_some_and(|proxy| proxy.workload.service_account == workload.service_account);
        if up_to_date {
            return Ok(true);
        }
        // Pods trust the probe address: never enroll one before the node drops forged ones.
        if inner.node_rules_for.is_none() {
            let current: Vec<IpAddr> = Vec::new();
            run_blocking(move || rules::apply_node_rules(&current))
                .await
                .map_err(|e| {
                    format!("pod {label}: the node's anti-spoofing rules are not in place: {e}")
                })?;
            inner.node_rules_for = Some(Vec::new());
        }
        // Rules first: from here on the pod's traffic is captured, or refused while the
        // listeners are not up yet, but never bypasses the proxy.
        let netns_path = handle.pinned_path();
        let ips = pod.ips.clone();
        run_blocking(move || rules::apply_pod_rules(&netns_path, &ips))
            .await
            .map_err(|e| format!("pod {label}: {e}"))?;
        inner.enrolled.remove(id);
        allow_listener_handover(&handle, &self.ctx.home, &label);
        let proxy = PodProxy::start(&self.ctx, handle, workload, pod.ips.clone())
            .map_err(|e| format!("pod {label}: {e}"))?;
        tracing::info!(pod = %label, identity = %proxy.identity, ips = ?pod.ips, "enrolled in the mesh");
        inner.enrolled.insert(id.to_owned(), proxy);
        Ok(true)
    }
    /// Writes the state file and the node's probe SNAT rules.
    async fn persist(&self, inner: &mut Inner, snapshot: &MeshSnapshot) {
        let namespaces: BTreeSet<String> = snapshot
            .namespaces()
            .filter(|ns| ns.is_ambient())
            .map(|ns| ns.name.clone())
            .collect();
        inner.enrolled_namespaces = namespaces.into_iter().collect();
        let state = DaemonState {
            enrolled_namespaces: inner.enrolled_namespaces.clone(),
            pods: inner.known.clone(),
        };
        // Only the node's owner writes the state file (a new process next to an old one
        // reads it, it does not overwrite it).
        if *self.owner.borrow() && !inner.handed_over {
            if let Err(error) = state::save(&self.run_dir, &state) {
                tracing::error!(%error, "cannot write the state file");
            }
        }
        metrics::gauge!(weft::telemetry::registry::ENROLLED_PODS).set(inner.enrolled.len() as f64);
        // Identities no enrolled pod has any more stop being renewed.
        self.ctx
            .certs
            .retain(|id| inner.enrolled.values().any(|proxy| &proxy.identity == id));
        // Each enrolled identity's leaf is fetched now, not at its pod's first connection.
        for proxy in inner.enrolled.values() {
            self.ctx.certs.prefetch(&proxy.identity);
        }
        let mut enrolled_ips: Vec<IpAddr> = inner
            .enrolled
            .keys()
            .filter_map(|id| inner.known.get(id))
            .flat_map(|pod| pod.ips.iter().copied())
            .collect();
        enrolled_ips.sort();
        // Every config change lands here; only run nft when the enrolled set changed.
        if inner.node_rules_for.as_ref() == Some(&enrolled_ips) {
            return;
        }
        let ips = enrolled_ips.clone();
        match run_blocking(move || rules::apply_node_rules(&ips)).await {
            Ok(()) => inner.node_rules_for = Some(enrolled_ips),
            Err(error) => tracing::error!(%error, "cannot update the node's probe rules"),
        }
    }
}

/// Container ids of pods found by [`PodManager::discover`] (never a runtime's: those are hex).
const DISCOVERED_PREFIX: &str = "discovered-";

/// The answer to a CNI request that reached this process after it handed the node over:
/// the runtime retries, and the retry reaches the new owner.
fn handed_over_response() -> Response {
    Response {
        ok: false,
        enrolled: false,
        message: "this weft-node handed the node over to a newer one; retry".into(),
        permanent: false,
    }
}

/// The pods of the state file whose network namespaces still exist (the others are gone:
/// deleted while no daemon ran, or the node rebooted), each opened once.
struct Recorded {
    known: BTreeMap<String, PodAttachment>,
    handles: HashMap<String, Arc<Netns>>,
    enrolled_namespaces: Vec<String>,
}

fn load_recorded(home: &Netns, run_dir: &Path) -> Result<Recorded, state::StateError> {
    let saved = state::load(run_dir)?;
    let mut known = BTreeMap::new();
    let mut handles = HashMap::new();
    let mut gone = 0;
    for (id, pod) in saved.pods {
        // Found by a scan (`/proc/<pid>/ns/net`, a pid that may be reused): found again by
        // the next scan rather than trusted from the file.
        if id.starts_with(DISCOVERED_PREFIX) {
            continue;
        }
        match open_pod_netns(home, &pod.netns) {
            Ok(handle) => {
                handles.insert(id.clone(), handle);
                known.insert(id, pod);
            }
            Err(why) => {
                gone += 1;
                tracing::info!(pod = %format!("{}/{}", pod.namespace, pod.name),
                    netns = %pod.netns, "forgetting a recorded pod: {why}");
            }
        }
    }
    if gone > 0 {
        tracing::info!(
            gone,
            kept = known.len(),
            "recorded pods whose network namespaces are gone were forgotten (after a reboot, all of them)"
        );
    }
    Ok(Recorded {
        known,
        handles,
        enrolled_namespaces: saved.enrolled_namespaces,
    })
}

/// Turns on `net.ipv4.tcp_migrate_req` in the pod's namespace: when one of two daemons'
/// SO_REUSEPORT listeners closes (the old one of an upgrade), connections queued on it move
/// to the other listener instead of being reset. A kernel without it (before 5.14) only
/// loses that guarantee.
fn allow_listener_handover(netns: &Netns, home: &Netns, label: &str) {
    const SYSCTL: &str = "/proc/sys/net/ipv4/tcp_migrate_req";
    // /proc/sys/net answers for the network namespace of the thread that opens it.
    match netns.run(home, || std::fs::write(SYSCTL, "1")) {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(pod = %label, %error, "cannot enable tcp_migrate_req; an upgrade may reset connections queued on the old listeners")
        }
        Err(error) => tracing::warn!(pod = %label, %error, "cannot enter the pod's namespace"),
    }
}

/// Opens a pod's network namespace once and checks it: it must be a network namespace, and
/// not the node's own (pod rules there would capture the node's traffic).
fn open_pod_netns(home: &Netns, path: &str) -> Result<Arc<Netns>, String> {
    let netns = Netns::open(Path::new(path)).map_err(|e| e.to_string())?;
    match netns.is_network_namespace_like(home) {
        Ok(true) => {}
        Ok(false) => return Err(format!("{path} is not a network namespace")),
        Err(e) => return Err(format!("cannot inspect {path}: {e}")),
    }
    match netns.same_namespace(home) {
        Ok(false) => Ok(Arc::new(netns)),
        Ok(true) => Err(format!(
            "network namespace {path} is the node's own; a pod must have its own network namespace"
        )),
        Err(e) => Err(format!("cannot inspect {path}: {e}")),
    }
}

async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, rules::RulesError> + Send + 'static,
) -> Result<T, rules::RulesError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(join) => Err(rules::RulesError {
            what: "rule update".into(),
            netns: String::new(),
            detail: join.to_string(),
        }),
    }
}

impl NodeStatus for PodManager {
    fn served(&self) -> BoxFuture<'_, Value> {
        Box::pin(async move {
            let inner = self.inner.lock().await;
            let pods: Vec<Value> = inner
                .known
                .iter()
                .map(|(id, pod)| {
                    let proxy = inner.enrolled.get(id);
                    json!({
                        "name": pod.name,
                        "namespace": pod.namespace,
                        "uid": pod.uid,
                        "container_id": id,
                        "netns": pod.netns,
                        "ips": pod.ips,
                        "identity": proxy.map(|p| p.identity.to_string()),
                        "state": if proxy.is_some() { "enrolled" } else { "not enrolled" },
                    })
                })
                .collect();
            Value::Array(pods)
        })
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), NotReady>> {
        Box::pin(async move {
            if !self.cni_serving.load(std::sync::atomic::Ordering::Acquire) {
                return Err(NotReady("the CNI socket is not serving yet".into()));
            }
            let cni_problem = self
                .cni_config_problem
                .lock()
                .map(|p| p.clone())
                .unwrap_or_default();
            if let Some(problem) = cni_problem {
                return Err(NotReady(format!("CNI config: {problem}")));
            }
            let inner = self.inner.lock().await;
            if inner.handed_over {
                return Err(NotReady(
                    "handed the node over to a newer weft-node; draining".into(),
                ));
            }
            if !*self.owner.borrow() {
                return Err(NotReady(
                    "waiting for the previous weft-node to hand the node over".into(),
                ));
            }
            if !inner.restored {
                return Err(NotReady(
                    "pods from the run dir are still being restored".into(),
                ));
            }
            let snapshot = self.ctx.store.load();
            let missing: Vec<String> = inner
                .known
                .iter()
                .filter(|(id, pod)| desired(&snapshot, pod).0 && !inner.enrolled.contains_key(*id))
                .map(|(_, pod)| format!("{}/{}", pod.namespace, pod.name))
                .collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(NotReady(format!(
                    "enrolled pods without listeners: {}",
                    missing.join(", ")
                )))
            }
        })
    }
}
