//! The mesh model: namespaces, workloads, services and security policies as one immutable
//! [`MeshSnapshot`], indexed by IP (and, for policies, by workload) for the data path, and the
//! [`MeshStore`] that publishes snapshots atomically (readers never lock).
//!
//! Snapshots are built by exactly one translation from Kubernetes-shaped objects
//! ([`translate`], one module per kind; the core kinds are `k8s-openapi` types, weft's own
//! are in [`weft_kinds`]);
//! [`parse_and_build`] is the entry point for multi-document YAML. Who is enrolled is decided
//! in [`enrollment`].

pub mod enrollment;
pub mod error;
pub mod gateway_kinds;
pub mod http_route_rules;
pub mod traffic_policies;
pub mod translate;
pub mod waypoints;
pub mod weft_kinds;

#[cfg(test)]
mod policy_tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use serde::ser::SerializeStruct;
use serde::Serialize;
use tokio::sync::watch;
use traffic_policies::{DestinationPolicy, FaultInjection};

pub use enrollment::DATAPLANE_MODE_LABEL;
pub use error::{ConfigError, ObjectRef};
pub use translate::{
    build, build_lenient, build_lenient_with_unparsed, parse_and_build, parse_documents,
    parse_object, ParsedObject, Rejected, Unparsed,
};

use crate::policy::{
    AuthorizationPolicy, ConnectionAttrs, MtlsMode, PeerAuthentication, PolicyIndex, PolicyTarget,
    Verdict, ROOT_NAMESPACE,
};

/// Label naming the waypoint of a pod, a service or (inherited) a whole namespace. The value
/// `none` on a pod or service opts it out of its namespace's waypoint.
pub const USE_WAYPOINT_LABEL: &str = "weft.dev/use-waypoint";

/// A Kubernetes namespace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Namespace {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`: the [`DATAPLANE_MODE_LABEL`] enrolls its pods, the
    /// [`USE_WAYPOINT_LABEL`] is inherited by its pods and services.
    pub labels: BTreeMap<String, String>,
}

impl Namespace {
    /// Whether this namespace enrolls its pods (see [`enrollment`]).
    pub fn is_ambient(&self) -> bool {
        enrollment::namespace_is_ambient(&self.labels)
    }
}

/// A workload (a pod).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Workload {
    /// `metadata.uid`, or `namespace/name` when the pod has none; unique in a snapshot.
    pub uid: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (`default` when absent).
    pub namespace: String,
    /// `default` when the pod does not name one.
    pub service_account: String,
    /// `spec.nodeName`: the node the pod runs on, whose agent serves it; `None` when not
    /// (yet) scheduled.
    pub node: Option<String>,
    /// `status.podIPs` and `status.podIP`, deduplicated; empty before the pod has an
    /// address. A hostNetwork pod's IPs are its node's and are not indexed.
    pub ips: Vec<IpAddr>,
    /// `metadata.labels`, what service and policy selectors match.
    pub labels: BTreeMap<String, String>,
    /// `spec.hostNetwork`: the pod shares its node's network, so it is never enrolled and
    /// never found by IP.
    pub host_network: bool,
    /// Whether weft captures this pod's traffic, as [`enrollment::pod_is_enrolled`] decides
    /// (the design's enrollment section: ../shared/DESIGN.md §6).
    pub enrolled: bool,
    /// The waypoint named by the pod's [`USE_WAYPOINT_LABEL`], else by its namespace's;
    /// `None` when neither names one or the pod opts out with `none`.
    pub waypoint: Option<String>,
    /// `spec.containers[].ports[]` name → containerPort.
    pub named_ports: BTreeMap<String, u16>,
}

impl Workload {
    /// The workload's SPIFFE ID in `trust_domain` (from its namespace and service account).
    pub fn spiffe_id(
        &self,
        trust_domain: &str,
    ) -> Result<crate::identity::SpiffeId, crate::identity::SpiffeIdError> {
        crate::identity::SpiffeId::new(trust_domain, &self.namespace, &self.service_account)
    }
}

impl PolicyTarget for Workload {
    fn uid(&self) -> &str {
        &self.uid
    }

    fn namespace(&self) -> &str {
        &self.namespace
    }

    fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }
}

/// A Service `targetPort`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum TargetPort {
    /// A port number (1-65535) on the endpoint. Only endpoints picked by the selector use
    /// it; EndpointSlices carry their own ports.
    Number(u16),
    /// A container port name, resolved per endpoint.
    Name(String),
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServicePort {
    /// `name`, which EndpointSlice ports are matched by; `None` when unnamed.
    pub name: Option<String>,
    /// `port`: the port clients connect to on the service's cluster IPs.
    pub port: u16,
    /// Defaults to `port`.
    pub target_port: TargetPort,
    /// `appProtocol`, as written; recorded only.
    pub app_protocol: Option<String>,
    /// `TCP` by default.
    pub protocol: String,
}

/// One ready endpoint (one IP) of a Service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    /// The address connections to the service are sent to.
    pub ip: IpAddr,
    /// The uid of the workload behind this IP (from the slice's `targetRef`, else the pod
    /// owning the IP); `None` when no known pod is behind it.
    pub workload_uid: Option<String>,
    /// Service port → port on this endpoint. A service port missing here is not served by
    /// this endpoint.
    pub target_ports: BTreeMap<u16, u16>,
}

/// A Gateway API `HTTPRoute`, kept for the waypoint: where it attaches and its rules as
/// written.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpRoute {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The Services (GAMMA) or Gateways it attaches to.
    pub parents: Vec<RouteParent>,
    /// Host names it matches; empty matches all.
    pub hostnames: Vec<String>,
    /// `metadata.creationTimestamp`, seconds since the epoch: the older of two equally
    /// specific routes wins. `None` (a file source) sorts first.
    pub created_unix: Option<i64>,
    /// `spec.rules`, typed and checked.
    pub rules: Vec<http_route_rules::HttpRouteRule>,
}

/// What the model keeps for waypoints only: HTTPRoutes and weft's traffic kinds.
#[derive(Debug, Clone, Default)]
pub(crate) struct WaypointObjects {
    pub(crate) http_routes: Vec<HttpRoute>,
    pub(crate) destination_policies: Vec<DestinationPolicy>,
    pub(crate) fault_injections: Vec<FaultInjection>,
}

/// One parent of an [`HttpRoute`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteParent {
    /// `Service` or `Gateway`.
    pub kind: String,
    /// The parent's namespace (the route's when not given).
    pub namespace: String,
    /// The parent's name.
    pub name: String,
    /// `sectionName`: a named port of the Service.
    pub section_name: Option<String>,
    /// `port`: a port of the Service.
    pub port: Option<u16>,
}

/// A Kubernetes Service with its resolved endpoints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (`default` when absent).
    pub namespace: String,
    /// Cluster IPs; empty for a headless service.
    pub vips: Vec<IpAddr>,
    /// `spec.ports`, unique by (port, protocol).
    pub ports: Vec<ServicePort>,
    /// `spec.selector`; `None` when absent or empty. Picks the endpoints of a service that
    /// no EndpointSlice names.
    pub selector: Option<BTreeMap<String, String>>,
    /// The ready endpoints: from the EndpointSlices naming the service if there are any,
    /// else from the pods its selector picks. An endpoint serving none of `ports` is left
    /// out.
    pub endpoints: Vec<Endpoint>,
    /// The waypoint named by the service's [`USE_WAYPOINT_LABEL`], else by its namespace's;
    /// `None` when neither names one or the service opts out with `none`.
    pub waypoint: Option<String>,
}

impl Service {
    /// The service port with number `port`, if any.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }

    /// `name.namespace.svc.cluster.local`.
    pub fn hostname(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }
}

/// One immutable, consistent view of the mesh, indexed for the data path.
#[derive(Clone, PartialEq, Default)]
pub struct MeshSnapshot {
    namespaces: BTreeMap<String, Namespace>,
    /// namespace → name → workload.
    workloads: BTreeMap<String, BTreeMap<String, Arc<Workload>>>,
    /// namespace → name → service.
    services: BTreeMap<String, BTreeMap<String, Arc<Service>>>,
    workloads_by_ip: HashMap<IpAddr, Arc<Workload>>,
    workloads_by_uid: HashMap<String, Arc<Workload>>,
    workloads_by_node: HashMap<String, Vec<Arc<Workload>>>,
    services_by_vip: HashMap<IpAddr, Arc<Service>>,
    /// HTTPRoutes, in (namespace, name) order.
    http_routes: Vec<Arc<HttpRoute>>,
    /// DestinationPolicies, oldest first, then by (namespace, name).
    destination_policies: Vec<Arc<DestinationPolicy>>,
    /// FaultInjections, in (namespace, name) order.
    fault_injections: Vec<Arc<FaultInjection>>,
    /// AuthorizationPolicies and PeerAuthentications, indexed by workload.
    policies: PolicyIndex<Workload>,
    /// Assigned by [`MeshStore::publish`]; 0 for a snapshot never published.
    pub generation: u64,
}

impl MeshSnapshot {
    /// A snapshot with nothing in it.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Builds the indexes. The inputs must already be validated by the translation (unique
    /// names, uids, pod IPs and VIPs); on a conflict the later entry wins.
    pub(crate) fn from_parts(
        namespaces: Vec<Namespace>,
        workloads: Vec<Workload>,
        services: Vec<Service>,
        authorization_policies: Vec<AuthorizationPolicy>,
        peer_authentications: Vec<PeerAuthentication>,
        held_strict: BTreeSet<String>,
        l7: WaypointObjects,
    ) -> Self {
        let mut snapshot = Self::empty();
        let WaypointObjects {
            mut http_routes,
            mut destination_policies,
            mut fault_injections,
        } = l7;
        http_routes.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        snapshot.http_routes = http_routes.into_iter().map(Arc::new).collect();
        destination_policies.sort_by(|a, b| {
            (a.created_unix, &a.namespace, &a.name).cmp(&(b.created_unix, &b.namespace, &b.name))
        });
        snapshot.destination_policies = destination_policies.into_iter().map(Arc::new).collect();
        fault_injections.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        snapshot.fault_injections = fault_injections.into_iter().map(Arc::new).collect();
        for ns in namespaces {
            snapshot.namespaces.insert(ns.name.clone(), ns);
        }
        for w in workloads {
            let w = Arc::new(w);
            snapshot
                .workloads
                .entry(w.namespace.clone())
                .or_default()
                .insert(w.name.clone(), Arc::clone(&w));
        }
        // Secondary indexes are filled in (namespace, name) order so that per-node lists
        // come out sorted.
        for w in snapshot.workloads.values().flat_map(BTreeMap::values) {
            snapshot
                .workloads_by_uid
                .insert(w.uid.clone(), Arc::clone(w));
            if !w.host_network {
                for ip in &w.ips {
                    snapshot.workloads_by_ip.insert(*ip, Arc::clone(w));
                }
            }
            if let Some(node) = &w.node {
                snapshot
                    .workloads_by_node
                    .entry(node.clone())
                    .or_default()
                    .push(Arc::clone(w));
            }
        }
        for s in services {
            let s = Arc::new(s);
            for vip in &s.vips {
                snapshot.services_by_vip.insert(*vip, Arc::clone(&s));
            }
            snapshot
                .services
                .entry(s.namespace.clone())
                .or_default()
                .insert(s.name.clone(), s);
        }
        let all: Vec<Arc<Workload>> = snapshot.workloads().cloned().collect();
        snapshot.policies = PolicyIndex::new(
            authorization_policies,
            peer_authentications,
            held_strict,
            &all,
            ROOT_NAMESPACE,
        );
        snapshot
    }

    /// The workload (never a host-network one) that owns `ip`.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workloads_by_ip.get(&ip)
    }

    /// The workload with `uid` (see [`Workload::uid`]), host-network ones included.
    pub fn workload_by_uid(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.workloads_by_uid.get(uid)
    }

    /// The service with cluster IP `ip`.
    pub fn service_by_vip(&self, ip: IpAddr) -> Option<&Arc<Service>> {
        self.services_by_vip.get(&ip)
    }

    /// The service `namespace/name`.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Arc<Service>> {
        self.services.get(namespace)?.get(name)
    }

    /// The declared namespace `name`. Built-in namespaces (`default`, `kube-system`, ...)
    /// that no Namespace object declares are not here.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    /// All namespaces, sorted by name.
    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.namespaces.values()
    }

    /// All workloads, sorted by (namespace, name).
    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.values().flat_map(BTreeMap::values)
    }

    /// All services, sorted by (namespace, name).
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values().flat_map(BTreeMap::values)
    }

    /// Every HTTPRoute, in (namespace, name) order.
    pub fn http_routes(&self) -> impl Iterator<Item = &Arc<HttpRoute>> {
        self.http_routes.iter()
    }

    /// The DestinationPolicy of Service `namespace/name`: the oldest that targets it.
    pub fn destination_policy(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<&Arc<DestinationPolicy>> {
        self.destination_policies
            .iter()
            .find(|p| p.namespace == namespace && p.targets.iter().any(|t| t == name))
    }

    /// Every DestinationPolicy, oldest first.
    pub fn destination_policies(&self) -> impl Iterator<Item = &Arc<DestinationPolicy>> {
        self.destination_policies.iter()
    }

    /// The FaultInjections that target Service `namespace/name`, in (namespace, name)
    /// order.
    pub fn fault_injections_for<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Arc<FaultInjection>> {
        self.fault_injections
            .iter()
            .filter(move |f| f.namespace == namespace && f.targets.iter().any(|t| t == name))
    }

    /// Every FaultInjection.
    pub fn fault_injections(&self) -> impl Iterator<Item = &Arc<FaultInjection>> {
        self.fault_injections.iter()
    }

    /// The HTTPRoutes attached to Service `namespace/name`.
    pub fn http_routes_for_service<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a Arc<HttpRoute>> {
        self.http_routes.iter().filter(move |route| {
            route
                .parents
                .iter()
                .any(|p| p.kind == "Service" && p.namespace == namespace && p.name == name)
        })
    }

    /// Workloads scheduled on `node`, sorted by (namespace, name).
    pub fn workloads_on_node<'a>(
        &'a self,
        node: &'a str,
    ) -> impl Iterator<Item = &'a Arc<Workload>> {
        self.workloads_by_node.get(node).into_iter().flatten()
    }

    /// Decides a connection to `workload` at L4 (see [`PolicyIndex::authorize`]). The
    /// workload need not be in this snapshot: one that is not is evaluated from its namespace
    /// and labels.
    pub fn authorize(&self, workload: &Workload, attrs: &ConnectionAttrs<'_>) -> Verdict {
        self.policies.authorize(workload, attrs)
    }

    /// The mTLS mode of `workload` (see [`PolicyIndex::mtls_mode`]).
    pub fn mtls_mode(&self, workload: &Workload) -> MtlsMode {
        self.policies.mtls_mode(workload)
    }

    /// The AuthorizationPolicies in force on `workload`, dry-run ones included, sorted by
    /// (namespace, name).
    pub fn policies_for(&self, workload: &Workload) -> Vec<&AuthorizationPolicy> {
        self.policies.policies_for(workload)
    }

    /// All AuthorizationPolicies, sorted by (namespace, name).
    pub fn authorization_policies(&self) -> impl Iterator<Item = &Arc<AuthorizationPolicy>> {
        self.policies.authorization_policies()
    }

    /// All PeerAuthentications, sorted by (namespace, name).
    pub fn peer_authentications(&self) -> impl Iterator<Item = &Arc<PeerAuthentication>> {
        self.policies.peer_authentications()
    }

    /// The policy index itself.
    pub fn policy_index(&self) -> &PolicyIndex<Workload> {
        &self.policies
    }
}

/// Shows the content, not the (redundant) indexes.
impl fmt::Debug for MeshSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshSnapshot")
            .field("generation", &self.generation)
            .field("namespaces", &self.namespaces.values().collect::<Vec<_>>())
            .field("workloads", &self.workloads().collect::<Vec<_>>())
            .field("services", &self.services().collect::<Vec<_>>())
            .field(
                "authorization_policies",
                &self.authorization_policies().collect::<Vec<_>>(),
            )
            .field(
                "peer_authentications",
                &self.peer_authentications().collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Serializes as `{generation, namespaces: [..], workloads: [..], services: [..],
/// authorization_policies: [..], peer_authentications: [..], http_routes: [..],
/// destination_policies: [..], fault_injections: [..]}`, each list sorted by (namespace,
/// name) (DestinationPolicies oldest first).
impl Serialize for MeshSnapshot {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let namespaces: Vec<&Namespace> = self.namespaces.values().collect();
        let workloads: Vec<&Workload> = self.workloads().map(|w| &**w).collect();
        let services: Vec<&Service> = self.services().map(|s| &**s).collect();
        let authorization_policies: Vec<&AuthorizationPolicy> =
            self.authorization_policies().map(|p| &**p).collect();
        let peer_authentications: Vec<&PeerAuthentication> =
            self.peer_authentications().map(|p| &**p).collect();
        let http_routes: Vec<&HttpRoute> = self.http_routes().map(|r| &**r).collect();
        let destination_policies: Vec<&DestinationPolicy> =
            self.destination_policies().map(|p| &**p).collect();
        let fault_injections: Vec<&FaultInjection> =
            self.fault_injections().map(|f| &**f).collect();
        let mut st = serializer.serialize_struct("MeshSnapshot", 9)?;
        st.serialize_field("generation", &self.generation)?;
        st.serialize_field("namespaces", &namespaces)?;
        st.serialize_field("workloads", &workloads)?;
        st.serialize_field("services", &services)?;
        st.serialize_field("authorization_policies", &authorization_policies)?;
        st.serialize_field("peer_authentications", &peer_authentications)?;
        st.serialize_field("http_routes", &http_routes)?;
        st.serialize_field("destination_policies", &destination_policies)?;
        st.serialize_field("fault_injections", &fault_injections)?;
        st.end()
    }
}

/// Holds the current snapshot. Readers `load()` without locking; publishers swap in a new
/// snapshot and notify subscribers of its generation.
#[derive(Debug)]
pub struct MeshStore {
    current: ArcSwap<MeshSnapshot>,
    generation_tx: watch::Sender<u64>,
    /// Serializes publishers so generations are assigned and stored in order.
    publish_lock: Mutex<()>,
}

impl MeshStore {
    /// A store holding `initial` (its generation is kept as is).
    pub fn new(initial: MeshSnapshot) -> Self {
        let (generation_tx, _) = watch::channel(initial.generation);
        Self {
            current: ArcSwap::from_pointee(initial),
            generation_tx,
            publish_lock: Mutex::new(()),
        }
    }

    /// The current snapshot (lock-free).
    pub fn load(&self) -> Arc<MeshSnapshot> {
        self.current.load_full()
    }

    /// Replaces the current snapshot, assigning it the next generation, which is returned and
    /// sent to subscribers.
    pub fn publish(&self, mut snapshot: MeshSnapshot) -> u64 {
        // Nothing the lock protects can be left inconsistent by a panic; recover from poison.
        let _guard = self
            .publish_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let generation = self.current.load().generation + 1;
        snapshot.generation = generation;
        self.current.store(Arc::new(snapshot));
        self.generation_tx.send_replace(generation);
        generation
    }

    /// A receiver of the generation of every published snapshot.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation_tx.subscribe()
    }
}

impl Default for MeshStore {
    fn default() -> Self {
        Self::new(MeshSnapshot::empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE_POD: &str =
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {podIP: 10.0.0.1}\n";

    #[tokio::test]
    async fn store_publishes_generations_to_subscribers() {
        let store = MeshStore::new(MeshSnapshot::empty());
        assert_eq!(store.load().generation, 0);
        let mut rx = store.subscribe();
        assert_eq!(*rx.borrow(), 0);

        let first = store.load();
        assert_eq!(store.publish(parse_and_build(ONE_POD).unwrap()), 1);
        rx.changed().await.unwrap();
        assert_eq!(*rx.borrow_and_update(), 1);
        let current = store.load();
        assert_eq!(current.generation, 1);
        assert!(current
            .workload_by_ip("10.0.0.1".parse().unwrap())
            .is_some());
        // Readers holding the old snapshot keep a consistent view.
        assert!(first.workload_by_ip("10.0.0.1".parse().unwrap()).is_none());

        assert_eq!(store.publish(MeshSnapshot::empty()), 2);
        assert_eq!(*rx.borrow_and_update(), 2);
        assert_eq!(store.load().workloads().count(), 0);
    }

    #[test]
    fn snapshot_debug_and_json_show_content() {
        let snap = parse_and_build(ONE_POD).unwrap();
        assert!(format!("{snap:?}").contains("10.0.0.1"));
        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(json["workloads"][0]["ips"][0], "10.0.0.1");
        assert_eq!(json["generation"], 0);
        assert_eq!(snap.workloads_on_node("nowhere").count(), 0);
    }
}
