//! What every kind's translation shares: the [`KindObject`] trait a kind implements, the
//! [`Ctx`] of the object being translated (its identity, for errors, and the checks that
//! blame a field of it), and the [`BuildState`] that earlier objects leave for later ones.
//!
//! A kind's `translate` validates first and changes the state last, so an object that is
//! rejected leaves no trace in the state (the lenient build relies on it).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use crate::model::error::{ConfigError, ObjectRef};
use crate::model::weft_kinds;
use crate::model::{
    AuthorizationPolicy, Endpoint, Namespace, PeerAuthentication, Service, Workload,
    USE_WAYPOINT_LABEL,
};
use crate::names::{self, NameError};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// A parsed object of a supported kind, as its kind's module translates it.
pub(super) trait KindObject: fmt::Debug + Send + Sync {
    /// The object's metadata.
    fn metadata(&self) -> &ObjectMeta;

    /// Validates the object and adds what it means to `state`. On an error `state` is left
    /// as it was.
    fn translate(&self, ctx: &Ctx, state: &mut BuildState) -> Result<(), ConfigError>;
}

/// Identity of an object: kind, namespace (empty for cluster-scoped kinds), name.
pub(super) type ObjectKey = (&'static str, String, String);

/// An object and where it came from, for "already used by ..." messages.
#[derive(Debug, Clone)]
pub(super) struct Owner {
    pub(super) object: ObjectRef,
    pub(super) document: Option<usize>,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.object.located(self.document))
    }
}

/// A pod IP in use: by which pod (uid) and object.
#[derive(Debug, Clone)]
pub(super) struct PodIpOwner {
    pub(super) uid: String,
    pub(super) owner: Owner,
}

/// What the objects translated so far left for the ones that follow (namespaces before the
/// pods in them, pods before the services whose VIPs must not be pod IPs, services before
/// their EndpointSlices).
#[derive(Debug, Default)]
pub(super) struct BuildState {
    /// Every accepted object, with the document it came from.
    pub(super) seen: HashMap<ObjectKey, Option<usize>>,
    /// Objects that were rejected (lenient build only), so that what depends on them can say
    /// why it is rejected too.
    pub(super) rejected: HashSet<ObjectKey>,
    pub(super) namespaces: BTreeMap<String, Namespace>,
    pub(super) workloads: Vec<Workload>,
    /// (namespace, name) → index into `workloads`.
    pub(super) workload_by_name: HashMap<(String, String), usize>,
    pub(super) pod_uids: HashMap<String, Owner>,
    /// IPs of pods that are not hostNetwork.
    pub(super) pod_ips: HashMap<IpAddr, PodIpOwner>,
    pub(super) services: Vec<Service>,
    /// (namespace, name) → index into `services`.
    pub(super) service_by_name: HashMap<(String, String), usize>,
    pub(super) vips: HashMap<IpAddr, Owner>,
    /// Service index → endpoints from its EndpointSlices.
    pub(super) slice_endpoints: HashMap<usize, Vec<Endpoint>>,
    pub(super) authorization_policies: Vec<AuthorizationPolicy>,
    pub(super) peer_authentications: Vec<PeerAuthentication>,
    /// Namespaces held STRICT because one of their PeerAuthentications was rejected.
    pub(super) held_strict: BTreeSet<String>,
    /// HTTPRoutes, DestinationPolicies and FaultInjections.
    pub(super) waypoint_objects: crate::model::WaypointObjects,
}

/// The object being translated: who it is (for errors) and its resolved namespace and name.
#[derive(Debug, Clone)]
pub(super) struct Ctx {
    pub(super) document: Option<usize>,
    pub(super) object: ObjectRef,
    /// The object's namespace (`default` when it names none); empty for cluster-scoped kinds.
    pub(super) namespace: String,
    pub(super) name: String,
}

impl Ctx {
    /// An error about `field` of this object.
    pub(super) fn err(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            document: self.document,
            object: Some(Box::new(self.object.clone())),
            field: field.into(),
            message: message.into(),
        }
    }

    /// This object, for "already used by ..." messages of later ones.
    pub(super) fn owner(&self) -> Owner {
        Owner {
            object: self.object.clone(),
            document: self.document,
        }
    }

    /// An IP address; unspecified and multicast addresses are refused. Pods may sit on
    /// loopback (host mode on one machine, in-process tests): the outbound loop guard
    /// still refuses to connect to them.
    pub(super) fn ip(&self, field: impl Into<String>, raw: &str) -> Result<IpAddr, ConfigError> {
        self.checked_ip(field.into(), raw, false)
    }

    /// An address traffic is sent to by the proxy (a Service VIP or an endpoint): loopback
    /// is refused too, since an endpoint at 127.0.0.1 would make the proxy connect to
    /// itself.
    pub(super) fn routable_ip(
        &self,
        field: impl Into<String>,
        raw: &str,
    ) -> Result<IpAddr, ConfigError> {
        self.checked_ip(field.into(), raw, true)
    }

    fn checked_ip(&self, field: String, raw: &str, routable: bool) -> Result<IpAddr, ConfigError> {
        let ip: IpAddr = raw
            .trim()
            .parse()
            .map_err(|_| self.err(field.clone(), format!("{raw:?} is not an IP address")))?;
        let canonical = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        let unusable = if routable && canonical.is_loopback() {
            Some("a loopback address; service and endpoint addresses must be routable")
        } else if canonical.is_unspecified() {
            Some("the unspecified address")
        } else if canonical.is_multicast() {
            Some("a multicast address")
        } else {
            None
        };
        match unusable {
            Some(what) => Err(self.err(field, format!("{ip} is {what}"))),
            None => Ok(ip),
        }
    }

    /// Checks a name with one of the [`crate::names`] rules.
    pub(super) fn name(
        &self,
        field: impl Into<String>,
        value: &str,
        check: fn(&str) -> Result<(), NameError>,
    ) -> Result<(), ConfigError> {
        check(value).map_err(|reason| self.err(field, format!("{value:?} {reason}")))
    }

    /// A port number (1-65535).
    pub(super) fn port(&self, field: impl Into<String>, raw: i64) -> Result<u16, ConfigError> {
        match u16::try_from(raw) {
            Ok(port) if port != 0 => Ok(port),
            _ => Err(self.err(
                field,
                format!("{raw} is not a valid port number; use 1-65535"),
            )),
        }
    }
}

/// `s`, unless it is absent or empty.
pub(super) fn non_empty(s: Option<&String>) -> Option<&String> {
    s.filter(|s| !s.is_empty())
}

/// Validates the common metadata of an object (name, namespace, labels) and rejects a
/// duplicate of an object accepted before. Records nothing: the caller records the object
/// once it is accepted whole.
pub(super) fn identify(
    kind: &'static str,
    namespaced: bool,
    document: Option<usize>,
    meta: &ObjectMeta,
    state: &BuildState,
) -> Result<(Ctx, ObjectKey), ConfigError> {
    let name = non_empty(meta.name.as_ref());
    let namespace = if namespaced {
        non_empty(meta.namespace.as_ref()).map_or("default", String::as_str)
    } else {
        ""
    };
    let object = if namespaced {
        ObjectRef::namespaced(kind, Some(namespace), name.map(String::as_str))
    } else {
        ObjectRef::cluster_scoped(kind, name.map(String::as_str))
    };
    let mut ctx = Ctx {
        document,
        object,
        namespace: namespace.to_owned(),
        name: String::new(),
    };
    let Some(name) = name else {
        return Err(ctx.err("metadata.name", "missing; every object needs a name"));
    };
    ctx.name = name.clone();
    if namespaced {
        ctx.name("metadata.namespace", namespace, names::check_dns_label)?;
        ctx.name("metadata.name", name, names::check_dns_subdomain)?;
    } else {
        ctx.name("metadata.name", name, names::check_dns_label)?;
    }
    for (key, value) in meta.labels.iter().flatten() {
        let field = format!("metadata.labels.{key}");
        names::check_label_key(key)
            .map_err(|reason| ctx.err(field.as_str(), format!("key {key:?} {reason}")))?;
        names::check_label_value(value)
            .map_err(|reason| ctx.err(field, format!("value {reason}")))?;
    }
    let key = (kind, namespace.to_owned(), name.clone());
    if let Some(first) = state.seen.get(&key) {
        let first = first.map_or_else(|| "another object".to_owned(), |d| format!("document {d}"));
        return Err(ctx.err(
            "metadata.name",
            format!("{name:?} is already defined by {first}; remove one of the two or rename it"),
        ));
    }
    Ok((ctx, key))
}

/// The waypoint named by `labels`, else the namespace's; `none` opts out.
pub(super) fn waypoint(
    labels: &BTreeMap<String, String>,
    ns: Option<&Namespace>,
) -> Option<String> {
    let own = labels.get(USE_WAYPOINT_LABEL);
    let value = own.or_else(|| ns.and_then(|ns| ns.labels.get(USE_WAYPOINT_LABEL)))?;
    (!value.is_empty() && value != "none").then(|| value.clone())
}

/// `spec.selector.matchLabels`; absent or empty selects everything.
pub(super) fn selector(
    selector: Option<&weft_kinds::WorkloadSelector>,
) -> Option<BTreeMap<String, String>> {
    selector
        .and_then(|s| s.match_labels.clone())
        .filter(|labels| !labels.is_empty())
}
