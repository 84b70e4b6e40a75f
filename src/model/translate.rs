//! The one translation from Kubernetes-shaped objects to a [`MeshSnapshot`], and the
//! [`ConfigError`] type of the model/config layer.
//!
//! [`parse_documents`] reads multi-document YAML into typed objects (errors carry the document
//! number and the field path), [`build`] validates them and derives the model (enrollment,
//! waypoint inheritance, service endpoints, compiled security policies), [`parse_and_build`]
//! does both. The security kinds are translated in `security.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;

use super::k8s::{self, IntOrString, K8sObject};
use super::security::{self, WEFT_API_VERSION};
use super::{
    Endpoint, MeshSnapshot, Namespace, Service, ServicePort, TargetPort, Workload,
    DATAPLANE_MODE_LABEL, USE_WAYPOINT_LABEL,
};
use crate::names;

/// What weft reads, for error messages.
const SUPPORTED_KINDS: &str = "v1 Namespace, v1 Pod, v1 Service, discovery.k8s.io/v1 \
     EndpointSlice, and weft.dev/v1alpha1 AuthorizationPolicy and PeerAuthentication";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Namespaces every cluster has, so a config need not declare them.
const BUILT_IN_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

/// Errors of the model and config layer. Messages name the document (1-based), the object and
/// the field, with the offending value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file as a whole is refused (e.g. it would release every enrolled pod).
    #[error("{path}: {message}")]
    Refused { path: String, message: String },
    /// A document is not valid YAML.
    #[error("document {document}: invalid YAML: {message}")]
    Yaml { document: usize, message: String },
    /// A document is not a supported object, or an object is invalid.
    #[error(
        "document {document}{}: {field}: {message}",
        .object.as_deref().map(|o| format!(" ({o})")).unwrap_or_default()
    )]
    Invalid {
        document: usize,
        /// e.g. `Pod shop/order-5d9`, when known.
        object: Option<String>,
        /// Field path, e.g. `status.podIPs[1].ip`.
        field: String,
        message: String,
    },
}

/// A supported object and the document (1-based) it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedObject {
    pub document: usize,
    pub object: K8sObject,
}

/// Parses YAML and builds a snapshot (generation 0) from it.
pub fn parse_and_build(yaml: &str) -> Result<MeshSnapshot, ConfigError> {
    build(&parse_documents(yaml)?)
}

/// Parses a multi-document YAML stream into typed objects. Empty documents are skipped (but
/// counted, so document numbers match the file).
pub fn parse_documents(yaml: &str) -> Result<Vec<ParsedObject>, ConfigError> {
    let mut objects = Vec::new();
    for (index, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let document = index + 1;
        let value = Value::deserialize(doc).map_err(|e| ConfigError::Yaml {
            document,
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        objects.push(ParsedObject {
            document,
            object: parse_object(document, value)?,
        });
    }
    Ok(objects)
}

fn parse_object(document: usize, value: Value) -> Result<K8sObject, ConfigError> {
    if !value.is_mapping() {
        return Err(ConfigError::Invalid {
            document,
            object: None,
            field: "(document)".into(),
            message: format!(
                "expected a Kubernetes object (a mapping with apiVersion, kind and metadata), \
                 found {}",
                value_type(&value)
            ),
        });
    }
    let str_at = |path: &[&str]| {
        let mut v = &value;
        for key in path {
            v = v.get(*key)?;
        }
        v.as_str()
    };
    let name = str_at(&["metadata", "name"]).filter(|n| !n.is_empty());
    let namespace = str_at(&["metadata", "namespace"]).filter(|n| !n.is_empty());
    let api_version = str_at(&["apiVersion"]);
    let Some(kind) = str_at(&["kind"]) else {
        let found = match value.get("kind") {
            None | Some(Value::Null) => "it is missing".to_owned(),
            Some(other) => format!("found {}", value_type(other)),
        };
        return Err(ConfigError::Invalid {
            document,
            object: name.map(str::to_owned),
            field: "kind".into(),
            message: format!(
                "every document must be a Kubernetes object with a string kind, but {found}; \
                 weft reads {SUPPORTED_KINDS}"
            ),
        });
    };
    let namespaced = kind != "Namespace";
    let object = Some(object_label(kind, namespaced, namespace, name));
    let expected_api = match kind {
        "Namespace" | "Pod" | "Service" => "v1",
        "EndpointSlice" => "discovery.k8s.io/v1",
        "AuthorizationPolicy" | "PeerAuthentication" => WEFT_API_VERSION,
        other => {
            return Err(ConfigError::Invalid {
                document,
                object,
                field: "kind".into(),
                message: format!(
                    "{other:?} is not supported; weft reads {SUPPORTED_KINDS} \
                     (remove this document from the file)"
                ),
            })
        }
    };
    if api_version != Some(expected_api) {
        return Err(ConfigError::Invalid {
            document,
            object,
            field: "apiVersion".into(),
            message: format!(
                "{} is not supported for kind {kind}; use {expected_api:?} \
                 (weft reads {SUPPORTED_KINDS})",
                api_version.map_or_else(|| "a missing apiVersion".to_owned(), |a| format!("{a:?}"))
            ),
        });
    }
    let label = object.as_deref().unwrap_or_default();
    Ok(match kind {
        "Namespace" => K8sObject::Namespace(typed(document, label, value)?),
        "Pod" => K8sObject::Pod(typed(document, label, value)?),
        "Service" => K8sObject::Service(typed(document, label, value)?),
        "AuthorizationPolicy" => K8sObject::AuthorizationPolicy(typed(document, label, value)?),
        "PeerAuthentication" => K8sObject::PeerAuthentication(typed(document, label, value)?),
        _ => K8sObject::EndpointSlice(typed(document, label, value)?),
    })
}

fn typed<T: DeserializeOwned>(
    document: usize,
    object: &str,
    value: Value,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let mut message = e.into_inner().to_string();
        if message.ends_with("expected a string") {
            message.push_str("; quote the value (e.g. \"1\" or \"true\")");
        }
        ConfigError::Invalid {
            document,
            object: Some(object.to_owned()),
            field: if path == "." {
                "(document)".into()
            } else {
                path
            },
            message,
        }
    })
}

fn value_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn object_label(
    kind: &str,
    namespaced: bool,
    namespace: Option<&str>,
    name: Option<&str>,
) -> String {
    let name = name.unwrap_or("<no name>");
    if namespaced {
        format!("{kind} {}/{name}", namespace.unwrap_or("default"))
    } else {
        format!("{kind} {name}")
    }
}

/// Error context of one object.
pub(super) struct Ctx {
    pub(super) document: usize,
    pub(super) object: String,
}

impl Ctx {
    pub(super) fn err(&self, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            document: self.document,
            object: Some(self.object.clone()),
            field: field.into(),
            message: message.into(),
        }
    }

    /// An IP address; unspecified and multicast addresses are refused. Pods may sit on
    /// loopback (host mode on one machine, in-process tests): the outbound loop guard
    /// still refuses to connect to them.
    fn ip(&self, field: impl Into<String>, raw: &str) -> Result<IpAddr, ConfigError> {
        self.checked_ip(field.into(), raw, false)
    }

    /// An address traffic is sent to by the proxy (a Service VIP or an endpoint): loopback
    /// is refused too, since an endpoint at 127.0.0.1 would make the proxy connect to
    /// itself.
    fn routable_ip(&self, field: impl Into<String>, raw: &str) -> Result<IpAddr, ConfigError> {
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
        check: fn(&str) -> Result<(), String>,
    ) -> Result<(), ConfigError> {
        check(value).map_err(|reason| self.err(field, format!("{value:?} {reason}")))
    }

    fn port(&self, field: impl Into<String>, raw: i64) -> Result<u16, ConfigError> {
        match u16::try_from(raw) {
            Ok(port) if port != 0 => Ok(port),
            _ => Err(self.err(
                field,
                format!("{raw} is not a valid port number; use 1-65535"),
            )),
        }
    }
}

pub(super) fn non_empty(s: Option<&String>) -> Option<&String> {
    s.filter(|s| !s.is_empty())
}

/// An IP address and the field path it was read from.
type SourcedIp = (IpAddr, String);

/// Identity of an object: kind, namespace (empty for Namespaces), name.
pub(super) type ObjectKey = (&'static str, String, String);

/// Validates the common metadata of an object and rejects duplicates.
pub(super) fn identify(
    parsed: &ParsedObject,
    seen: &mut HashMap<ObjectKey, usize>,
) -> Result<(Ctx, String, String), ConfigError> {
    let kind = parsed.object.kind();
    let meta = parsed.object.metadata();
    let namespaced = kind != "Namespace";
    let name = non_empty(meta.name.as_ref());
    let namespace = if namespaced {
        non_empty(meta.namespace.as_ref()).map_or("default", String::as_str)
    } else {
        ""
    };
    let ctx = Ctx {
        document: parsed.document,
        object: object_label(kind, namespaced, Some(namespace), name.map(String::as_str)),
    };
    let Some(name) = name else {
        return Err(ctx.err("metadata.name", "missing; every object needs a name"));
    };
    if namespaced {
        ctx.name("metadata.namespace", namespace, names::check_dns_label)?;
        ctx.name("metadata.name", name, names::check_dns_subdomain)?;
    } else {
        ctx.name("metadata.name", name, names::check_dns_label)?;
    }
    for (key, value) in meta.labels.iter().flatten() {
        let field = format!("metadata.labels.{key}");
        check_label(&ctx, &field, key, value)?;
    }
    let key = (kind, namespace.to_owned(), name.clone());
    if let Some(first) = seen.insert(key, parsed.document) {
        return Err(ctx.err(
            "metadata.name",
            format!(
                "{name:?} is already defined by document {first}; \
                 remove one of the two or rename it"
            ),
        ));
    }
    Ok((ctx, namespace.to_owned(), name.clone()))
}

/// Checks one label's key and value as the API server would.
fn check_label(ctx: &Ctx, field: &str, key: &str, value: &str) -> Result<(), ConfigError> {
    names::check_label_key(key)
        .map_err(|reason| ctx.err(field, format!("key {key:?} {reason}")))?;
    names::check_label_value(value).map_err(|reason| ctx.err(field, format!("value {reason}")))
}

/// The waypoint named by `labels`, else the namespace's; `none` opts out.
fn waypoint(labels: &BTreeMap<String, String>, ns: Option<&Namespace>) -> Option<String> {
    let own = labels.get(USE_WAYPOINT_LABEL);
    let value = own.or_else(|| ns.and_then(|ns| ns.labels.get(USE_WAYPOINT_LABEL)))?;
    (!value.is_empty() && value != "none").then(|| value.clone())
}

/// Validates the objects and translates them into a snapshot (generation 0).
///
/// Objects may come in any order. Endpoints of a service come from the EndpointSlices that
/// name it if there is at least one, else from its selector; an endpoint that serves none of
/// the service's ports is left out.
pub fn build(objects: &[ParsedObject]) -> Result<MeshSnapshot, ConfigError> {
    let mut seen = HashMap::new();

    // Namespaces first: pods and services inherit from them.
    let mut namespaces = BTreeMap::new();
    for parsed in objects {
        if let K8sObject::Namespace(ns) = &parsed.object {
            let (_, _, name) = identify(parsed, &mut seen)?;
            let labels = ns.metadata.labels.clone().unwrap_or_default();
            namespaces.insert(name.clone(), Namespace { name, labels });
        }
    }

    let mut workloads = Vec::new();
    let mut pod_ips: HashMap<IpAddr, (usize, String)> = HashMap::new();
    let mut uids: HashMap<String, usize> = HashMap::new();
    for parsed in objects {
        if let K8sObject::Pod(pod) = &parsed.object {
            let (ctx, workload, ip_fields) = translate_pod(parsed, pod, &namespaces, &mut seen)?;
            if let Some(first) = uids.insert(workload.uid.clone(), parsed.document) {
                return Err(ctx.err(
                    "metadata.uid",
                    format!(
                        "{:?} is already used by the pod in document {first}; \
                         every pod needs a unique uid",
                        workload.uid
                    ),
                ));
            }
            if !workload.host_network {
                for (ip, field) in ip_fields {
                    if let Some((doc, other)) = pod_ips.get(&ip) {
                        return Err(ctx.err(
                            field,
                            format!(
                                "{ip} is already used by {other} (document {doc}); two pods \
                                 cannot share an IP: remove the stale pod or fix its IP"
                            ),
                        ));
                    }
                    pod_ips.insert(ip, (parsed.document, ctx.object.clone()));
                }
            }
            workloads.push(workload);
        }
    }

    let mut services = Vec::new();
    let mut vips: HashMap<IpAddr, (usize, String)> = HashMap::new();
    for parsed in objects {
        if let K8sObject::Service(svc) = &parsed.object {
            let (ctx, service, vip_fields) =
                translate_service(parsed, svc, &namespaces, &mut seen)?;
            for (vip, field) in vip_fields {
                if let Some((doc, pod)) = pod_ips.get(&vip) {
                    return Err(ctx.err(
                        field,
                        format!(
                            "{vip} is the IP of {pod} (document {doc}); a cluster IP must not \
                             be a pod's address"
                        ),
                    ));
                }
                if let Some((doc, other)) = vips.get(&vip) {
                    return Err(ctx.err(
                        field,
                        format!(
                            "{vip} is already the cluster IP of {other} (document {doc}); \
                             every service needs its own cluster IP"
                        ),
                    ));
                }
                vips.insert(vip, (parsed.document, ctx.object.clone()));
            }
            services.push(service);
        }
    }

    // Pod lookups for endpoint → workload attribution.
    let pod_uid_by_ip: HashMap<IpAddr, &str> = workloads
        .iter()
        .filter(|w| !w.host_network)
        .flat_map(|w| w.ips.iter().map(move |ip| (*ip, w.uid.as_str())))
        .collect();
    let pod_uid_by_name: HashMap<(&str, &str), &str> = workloads
        .iter()
        .map(|w| ((w.namespace.as_str(), w.name.as_str()), w.uid.as_str()))
        .collect();
    let service_index: HashMap<(&str, &str), usize> = services
        .iter()
        .enumerate()
        .map(|(i, s)| ((s.namespace.as_str(), s.name.as_str()), i))
        .collect();

    let mut slice_endpoints: HashMap<usize, Vec<Endpoint>> = HashMap::new();
    for parsed in objects {
        if let K8sObject::EndpointSlice(slice) = &parsed.object {
            let (ctx, namespace, _) = identify(parsed, &mut seen)?;
            let field = format!("metadata.labels.{SERVICE_NAME_LABEL}");
            let labels = slice.metadata.labels.as_ref();
            let Some(service_name) = non_empty(labels.and_then(|l| l.get(SERVICE_NAME_LABEL)))
            else {
                return Err(ctx.err(
                    field,
                    "missing; label the slice with the name of its Service",
                ));
            };
            let Some(&index) = service_index.get(&(namespace.as_str(), service_name.as_str()))
            else {
                return Err(ctx.err(
                    field,
                    format!(
                        "Service {namespace}/{service_name} does not exist; add the Service \
                         or fix the label"
                    ),
                ));
            };
            let service = &services[index];
            let endpoints = slice_endpoints.entry(index).or_default();
            for endpoint in translate_slice(&ctx, slice, service, &pod_uid_by_name, &pod_uid_by_ip)?
            {
                merge_endpoint(endpoints, endpoint);
            }
        }
    }

    for (index, service) in services.iter_mut().enumerate() {
        let endpoints = match slice_endpoints.remove(&index) {
            Some(endpoints) => endpoints,
            None => match &service.selector {
                Some(selector) => selector_endpoints(service, selector, &workloads),
                None => Vec::new(),
            },
        };
        service.endpoints = endpoints
            .into_iter()
            .filter(|e| service.ports.is_empty() || !e.target_ports.is_empty())
            .collect();
    }

    let mut authorization_policies = Vec::new();
    let mut peer_authentications = Vec::new();
    for parsed in objects {
        match &parsed.object {
            K8sObject::AuthorizationPolicy(ap) => authorization_policies.push(
                security::translate_authorization_policy(parsed, ap, &mut seen)?,
            ),
            K8sObject::PeerAuthentication(pa) => peer_authentications.push(
                security::translate_peer_authentication(parsed, pa, &mut seen)?,
            ),
            _ => {}
        }
    }
    security::log_warnings(&authorization_policies, &peer_authentications);

    Ok(MeshSnapshot::from_parts(
        namespaces.into_values().collect(),
        workloads,
        services,
        authorization_policies,
        peer_authentications,
    ))
}

fn translate_pod(
    parsed: &ParsedObject,
    pod: &k8s::Pod,
    namespaces: &BTreeMap<String, Namespace>,
    seen: &mut HashMap<ObjectKey, usize>,
) -> Result<(Ctx, Workload, Vec<SourcedIp>), ConfigError> {
    let (ctx, namespace, name) = identify(parsed, seen)?;
    let meta = &pod.metadata;
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let labels = meta.labels.clone().unwrap_or_default();
    let host_network = spec.host_network.unwrap_or(false);

    let mut named_ports = BTreeMap::new();
    for (c, container) in spec.containers.iter().flatten().enumerate() {
        for (p, port) in container.ports.iter().flatten().enumerate() {
            let number = ctx.port(
                format!("spec.containers[{c}].ports[{p}].containerPort"),
                port.container_port.0,
            )?;
            if let Some(port_name) = non_empty(port.name.as_ref()) {
                named_ports.entry(port_name.clone()).or_insert(number);
            }
        }
    }

    // Each IP with the field it came from (for conflict messages), deduplicated.
    let mut ip_fields: Vec<SourcedIp> = Vec::new();
    for (i, pod_ip) in status.pod_ips.iter().flatten().enumerate() {
        if !pod_ip.ip.is_empty() {
            let field = format!("status.podIPs[{i}].ip");
            ip_fields.push((ctx.ip(field.clone(), &pod_ip.ip)?, field));
        }
    }
    if let Some(raw) = non_empty(status.pod_ip.as_ref()) {
        ip_fields.push((ctx.ip("status.podIP", raw)?, "status.podIP".to_owned()));
    }
    let mut unique = HashSet::new();
    ip_fields.retain(|(ip, _)| unique.insert(*ip));
    let ips = ip_fields.iter().map(|(ip, _)| *ip).collect();

    let ns = namespaces.get(&namespace);
    if ns.is_none() && !BUILT_IN_NAMESPACES.contains(&namespace.as_str()) {
        return Err(ctx.err(
            "metadata.namespace",
            format!("Namespace {namespace:?} is not declared; add a Namespace object for it"),
        ));
    }
    let service_account = non_empty(spec.service_account_name.as_ref())
        .map(|sa| ("spec.serviceAccountName", sa))
        .or(non_empty(spec.service_account.as_ref()).map(|sa| ("spec.serviceAccount", sa)));
    if let Some((field, sa)) = service_account {
        ctx.name(field, sa, names::check_dns_subdomain)?;
    }
    let enrolled = !host_network
        && ns.is_some_and(|ns| {
            ns.labels.get(DATAPLANE_MODE_LABEL).map(String::as_str) == Some("ambient")
        })
        && labels.get(DATAPLANE_MODE_LABEL).map(String::as_str) != Some("none");

    let workload = Workload {
        uid: non_empty(meta.uid.as_ref())
            .cloned()
            .unwrap_or_else(|| format!("{namespace}/{name}")),
        service_account: service_account
            .map(|(_, sa)| sa.clone())
            .unwrap_or_else(|| "default".to_owned()),
        node: non_empty(spec.node_name.as_ref()).cloned(),
        waypoint: waypoint(&labels, ns),
        name,
        namespace,
        ips,
        labels,
        host_network,
        enrolled,
        named_ports,
    };
    Ok((ctx, workload, ip_fields))
}

fn translate_service(
    parsed: &ParsedObject,
    svc: &k8s::Service,
    namespaces: &BTreeMap<String, Namespace>,
    seen: &mut HashMap<ObjectKey, usize>,
) -> Result<(Ctx, Service, Vec<SourcedIp>), ConfigError> {
    let (ctx, namespace, name) = identify(parsed, seen)?;
    let spec = svc.spec.clone().unwrap_or_default();
    let labels = svc.metadata.labels.clone().unwrap_or_default();

    // Each VIP with the field it came from, deduplicated; "None" or "" means headless.
    let mut vip_fields: Vec<SourcedIp> = Vec::new();
    let is_vip = |raw: &&String| !raw.is_empty() && raw.as_str() != "None";
    for (i, raw) in spec.cluster_ips.iter().flatten().enumerate() {
        if is_vip(&raw) {
            let field = format!("spec.clusterIPs[{i}]");
            vip_fields.push((ctx.routable_ip(field.clone(), raw)?, field));
        }
    }
    if let Some(raw) = spec.cluster_ip.as_ref().filter(is_vip) {
        vip_fields.push((
            ctx.routable_ip("spec.clusterIP", raw)?,
            "spec.clusterIP".to_owned(),
        ));
    }
    let mut unique = HashSet::new();
    vip_fields.retain(|(ip, _)| unique.insert(*ip));
    let vips = vip_fields.iter().map(|(ip, _)| *ip).collect();

    let mut ports: Vec<ServicePort> = Vec::new();
    for (i, port) in spec.ports.iter().flatten().enumerate() {
        let number = ctx.port(format!("spec.ports[{i}].port"), port.port.0)?;
        let target_field = format!("spec.ports[{i}].targetPort");
        let target_port = match &port.target_port {
            None => TargetPort::Number(number),
            Some(IntOrString::Int(n)) => TargetPort::Number(ctx.port(target_field, *n)?),
            Some(IntOrString::String(s)) if s.is_empty() => {
                return Err(ctx.err(
                    target_field,
                    "is empty; use a port number or the name of a container port",
                ))
            }
            Some(IntOrString::String(s)) => match s.parse::<i64>() {
                Ok(n) => TargetPort::Number(ctx.port(target_field, n)?),
                Err(_) => TargetPort::Name(s.clone()),
            },
        };
        let protocol = non_empty(port.protocol.as_ref()).map_or("TCP", String::as_str);
        if let Some(j) = ports
            .iter()
            .position(|p| p.port == number && p.protocol == protocol)
        {
            return Err(ctx.err(
                format!("spec.ports[{i}].port"),
                format!("{number}/{protocol} is already declared by spec.ports[{j}]; remove one"),
            ));
        }
        ports.push(ServicePort {
            name: non_empty(port.name.as_ref()).cloned(),
            port: number,
            target_port,
            app_protocol: non_empty(port.app_protocol.as_ref()).cloned(),
            protocol: protocol.to_owned(),
        });
    }

    let waypoint = waypoint(&labels, namespaces.get(&namespace));
    let service = Service {
        name,
        namespace,
        vips,
        ports,
        selector: spec.selector.filter(|s| !s.is_empty()),
        endpoints: Vec::new(),
        waypoint,
    };
    Ok((ctx, service, vip_fields))
}

fn translate_slice(
    ctx: &Ctx,
    slice: &k8s::EndpointSlice,
    service: &Service,
    pod_uid_by_name: &HashMap<(&str, &str), &str>,
    pod_uid_by_ip: &HashMap<IpAddr, &str>,
) -> Result<Vec<Endpoint>, ConfigError> {
    if let Some(kind) = slice.address_type.as_ref().filter(|t| *t == "FQDN") {
        return Err(ctx.err(
            "addressType",
            format!("{kind:?} is not supported; use IPv4 or IPv6"),
        ));
    }
    // Slice port name → port number.
    let mut slice_ports: Vec<(Option<&String>, u16)> = Vec::new();
    for (i, port) in slice.ports.iter().flatten().enumerate() {
        if let Some(raw) = port.port {
            let number = ctx.port(format!("ports[{i}].port"), raw.0)?;
            slice_ports.push((non_empty(port.name.as_ref()), number));
        }
    }
    let target_ports: BTreeMap<u16, u16> = service
        .ports
        .iter()
        .filter_map(|sp| {
            let (_, target) = slice_ports
                .iter()
                .find(|(name, _)| name.map(String::as_str) == sp.name.as_deref())?;
            Some((sp.port, *target))
        })
        .collect();

    let mut endpoints = Vec::new();
    for (i, endpoint) in slice.endpoints.iter().flatten().enumerate() {
        let mut ips = Vec::new();
        for (j, raw) in endpoint.addresses.iter().flatten().enumerate() {
            ips.push(ctx.routable_ip(format!("endpoints[{i}].addresses[{j}]"), raw)?);
        }
        let ready = endpoint
            .conditions
            .as_ref()
            .and_then(|c| c.ready)
            .unwrap_or(true);
        if !ready {
            continue;
        }
        let target_ref = endpoint.target_ref.as_ref();
        let ref_uid = target_ref.and_then(|r| non_empty(r.uid.as_ref())).cloned();
        let ref_pod = target_ref
            .filter(|r| r.kind.as_deref().is_none_or(|k| k == "Pod"))
            .and_then(|r| {
                let name = non_empty(r.name.as_ref())?;
                let ns = non_empty(r.namespace.as_ref()).unwrap_or(&service.namespace);
                pod_uid_by_name.get(&(ns.as_str(), name.as_str())).copied()
            });
        for ip in ips {
            let workload_uid = ref_uid
                .clone()
                .or_else(|| ref_pod.map(str::to_owned))
                .or_else(|| pod_uid_by_ip.get(&ip).map(|uid| (*uid).to_owned()));
            endpoints.push(Endpoint {
                ip,
                workload_uid,
                target_ports: target_ports.clone(),
            });
        }
    }
    Ok(endpoints)
}

/// Adds `endpoint`, merging it into an existing endpoint with the same IP.
fn merge_endpoint(endpoints: &mut Vec<Endpoint>, endpoint: Endpoint) {
    match endpoints.iter_mut().find(|e| e.ip == endpoint.ip) {
        Some(existing) => {
            for (port, target) in endpoint.target_ports {
                existing.target_ports.entry(port).or_insert(target);
            }
            if existing.workload_uid.is_none() {
                existing.workload_uid = endpoint.workload_uid;
            }
        }
        None => endpoints.push(endpoint),
    }
}

fn selector_endpoints(
    service: &Service,
    selector: &BTreeMap<String, String>,
    workloads: &[Workload],
) -> Vec<Endpoint> {
    let mut selected: Vec<&Workload> = workloads
        .iter()
        .filter(|w| w.namespace == service.namespace && !w.host_network && !w.ips.is_empty())
        .filter(|w| selector.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
        .collect();
    selected.sort_by(|a, b| a.name.cmp(&b.name));
    let mut endpoints = Vec::new();
    for w in selected {
        let target_ports: BTreeMap<u16, u16> = service
            .ports
            .iter()
            .filter_map(|sp| {
                let target = match &sp.target_port {
                    TargetPort::Number(n) => *n,
                    TargetPort::Name(name) => *w.named_ports.get(name)?,
                };
                Some((sp.port, target))
            })
            .collect();
        for ip in &w.ips {
            merge_endpoint(
                &mut endpoints,
                Endpoint {
                    ip: *ip,
                    workload_uid: Some(w.uid.clone()),
                    target_ports: target_ports.clone(),
                },
            );
        }
    }
    endpoints
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    weft.dev/dataplane-mode: ambient
    weft.dev/use-waypoint: shop-waypoint
---
apiVersion: v1
kind: Namespace
metadata:
  name: legacy
---
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  uid: uid-web-1
  labels: {app: web}
  annotations: {ignored: "yes"}
spec:
  nodeName: node-1
  serviceAccountName: web
  containers:
  - name: web
    image: nginx
    ports:
    - {name: http, containerPort: 8080}
    - {containerPort: 9090}
status:
  phase: Running
  podIP: 10.0.1.10
  podIPs: [{ip: 10.0.1.10}, {ip: "fd00::10"}]
---
apiVersion: v1
kind: Pod
metadata:
  name: web-2
  namespace: shop
  labels: {app: web, weft.dev/use-waypoint: special}
spec:
  nodeName: node-2
  serviceAccount: web-old
  containers:
  - name: web
    ports: [{name: http, containerPort: 8081}]
status:
  podIP: 10.0.2.10
---
apiVersion: v1
kind: Pod
metadata:
  name: batch
  namespace: shop
  labels: {app: web, weft.dev/dataplane-mode: none}
spec:
  nodeName: node-1
  containers: [{name: batch}]
status:
  podIP: 10.0.1.11
---
apiVersion: v1
kind: Pod
metadata:
  name: agent
  namespace: shop
  labels: {app: web}
spec:
  nodeName: node-1
  hostNetwork: true
  containers: [{name: agent, ports: [{name: http, containerPort: 80}]}]
status:
  podIP: 192.168.0.1
---
apiVersion: v1
kind: Pod
metadata:
  name: old
  namespace: legacy
spec:
  nodeName: node-1
status:
  podIP: 10.0.1.20
---
apiVersion: v1
kind: Pod
metadata:
  name: agent
  namespace: legacy
spec:
  nodeName: node-2
  hostNetwork: true
status:
  podIP: 192.168.0.1
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http, appProtocol: http}
  - {name: metrics, port: 9090}
---
apiVersion: v1
kind: Service
metadata:
  name: db
  namespace: legacy
  labels: {weft.dev/use-waypoint: db-waypoint}
spec:
  clusterIP: 10.96.0.20
  ports:
  - {port: 5432, targetPort: 15432}
---
# An empty document, skipped.
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-abc
  namespace: legacy
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
endpoints:
- addresses: [10.0.1.20]
  conditions: {ready: true}
- addresses: [10.0.9.9]
  targetRef: {kind: Pod, name: external, uid: ext-uid}
- addresses: [10.0.9.10]
  conditions: {ready: false}
- addresses: [10.0.9.11]
ports:
- {name: "", port: 15432, protocol: TCP}
"#;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn full_example_builds_expected_snapshot() {
        let snap = parse_and_build(FULL).unwrap();
        assert_eq!(snap.generation, 0);
        assert_eq!(snap.namespaces().count(), 2);
        assert_eq!(
            snap.namespace("shop").unwrap().labels[DATAPLANE_MODE_LABEL],
            "ambient"
        );

        let web1 = snap.workload_by_ip(ip("10.0.1.10")).unwrap();
        assert_eq!(web1.name, "web-1");
        assert_eq!(web1.uid, "uid-web-1");
        assert_eq!(web1.service_account, "web");
        assert_eq!(web1.node.as_deref(), Some("node-1"));
        assert_eq!(web1.ips, vec![ip("10.0.1.10"), ip("fd00::10")]);
        assert!(web1.enrolled);
        assert_eq!(web1.waypoint.as_deref(), Some("shop-waypoint"));
        assert_eq!(
            web1.named_ports,
            BTreeMap::from([("http".to_owned(), 8080)])
        );
        assert_eq!(snap.workload_by_ip(ip("fd00::10")).unwrap().name, "web-1");

        let web2 = snap.workload_by_uid("shop/web-2").unwrap();
        assert_eq!(web2.service_account, "web-old");
        assert!(web2.enrolled);
        assert_eq!(web2.waypoint.as_deref(), Some("special"));

        let batch = snap.workload_by_ip(ip("10.0.1.11")).unwrap();
        assert!(!batch.enrolled, "opted out with dataplane-mode=none");
        assert_eq!(batch.service_account, "default");

        let agent = snap.workload_by_uid("shop/agent").unwrap();
        assert!(agent.host_network);
        assert!(!agent.enrolled, "hostNetwork pods are never enrolled");
        assert!(snap.workload_by_ip(ip("192.168.0.1")).is_none());

        let old = snap.workload_by_ip(ip("10.0.1.20")).unwrap();
        assert!(!old.enrolled, "namespace not enrolled");
        assert_eq!(old.waypoint, None);

        let on_node1: Vec<_> = snap
            .workloads_on_node("node-1")
            .map(|w| format!("{}/{}", w.namespace, w.name))
            .collect();
        assert_eq!(
            on_node1,
            ["legacy/old", "shop/agent", "shop/batch", "shop/web-1"]
        );
        let all: Vec<_> = snap.workloads().map(|w| w.name.as_str()).collect();
        assert_eq!(all, ["agent", "old", "agent", "batch", "web-1", "web-2"]);

        let web = snap.service_by_vip(ip("10.96.0.10")).unwrap();
        assert_eq!(web.hostname(), "web.shop.svc.cluster.local");
        assert_eq!(web.waypoint.as_deref(), Some("shop-waypoint"));
        assert_eq!(web.vips, vec![ip("10.96.0.10")]);
        let http = web.port(80).unwrap();
        assert_eq!(http.target_port, TargetPort::Name("http".into()));
        assert_eq!(http.app_protocol.as_deref(), Some("http"));
        assert_eq!(http.protocol, "TCP");
        assert_eq!(
            web.port(9090).unwrap().target_port,
            TargetPort::Number(9090)
        );
        assert!(web.port(81).is_none());
        // Selector endpoints: web-1 (both IPs), web-2, batch (no named port: only 9090);
        // never the hostNetwork agent.
        let eps: Vec<_> = web
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.ip,
                    e.workload_uid.clone().unwrap(),
                    e.target_ports.clone(),
                )
            })
            .collect();
        assert_eq!(
            eps,
            vec![
                (
                    ip("10.0.1.11"),
                    "shop/batch".to_owned(),
                    BTreeMap::from([(9090, 9090)])
                ),
                (
                    ip("10.0.1.10"),
                    "uid-web-1".to_owned(),
                    BTreeMap::from([(80, 8080), (9090, 9090)])
                ),
                (
                    ip("fd00::10"),
                    "uid-web-1".to_owned(),
                    BTreeMap::from([(80, 8080), (9090, 9090)])
                ),
                (
                    ip("10.0.2.10"),
                    "shop/web-2".to_owned(),
                    BTreeMap::from([(80, 8081), (9090, 9090)])
                ),
            ]
        );

        let db = snap.service("legacy", "db").unwrap();
        assert_eq!(snap.service_by_vip(ip("10.96.0.20")), Some(db));
        assert_eq!(db.waypoint.as_deref(), Some("db-waypoint"));
        let eps: Vec<_> = db
            .endpoints
            .iter()
            .map(|e| (e.ip, e.workload_uid.as_deref(), e.target_ports[&5432]))
            .collect();
        assert_eq!(
            eps,
            vec![
                (ip("10.0.1.20"), Some("legacy/old"), 15432),
                (ip("10.0.9.9"), Some("ext-uid"), 15432),
                (ip("10.0.9.11"), None, 15432),
            ]
        );
        let names: Vec<_> = snap.services().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["db", "web"]);

        // Serializable for the config dump.
        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(json["workloads"].as_array().unwrap().len(), 6);
        assert_eq!(json["services"][1]["ports"][0]["target_port"], "http");
    }

    #[test]
    fn slice_ports_match_by_name_and_union_across_slices() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: api}
spec:
  clusterIPs: ["10.96.1.1", "fd00::1:1"]
  ports: [{name: http, port: 80}, {name: grpc, port: 90}]
  selector: {app: ignored-because-slices-exist}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, labels: {kubernetes.io/service-name: api}}
endpoints: [{addresses: [10.1.0.1]}]
ports: [{name: http, port: 8080}, {name: grpc, port: 9090}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-2, labels: {kubernetes.io/service-name: api}}
endpoints: [{addresses: [10.1.0.2]}, {addresses: [10.1.0.1]}]
ports: [{name: http, port: 8081}, {name: other, port: 1}]
"#;
        let snap = parse_and_build(yaml).unwrap();
        let api = snap.service("default", "api").unwrap();
        assert_eq!(api.vips, vec![ip("10.96.1.1"), ip("fd00::1:1")]);
        assert_eq!(snap.service_by_vip(ip("fd00::1:1")).unwrap().name, "api");
        let eps: Vec<_> = api
            .endpoints
            .iter()
            .map(|e| (e.ip, e.target_ports.clone()))
            .collect();
        assert_eq!(
            eps,
            vec![
                (ip("10.1.0.1"), BTreeMap::from([(80, 8080), (90, 9090)])),
                (ip("10.1.0.2"), BTreeMap::from([(80, 8081)])),
            ]
        );
    }

    #[test]
    fn headless_service_and_waypoint_opt_out() {
        let yaml = r#"
apiVersion: v1
kind: Namespace
metadata: {name: ns, labels: {weft.dev/use-waypoint: wp}}
---
apiVersion: v1
kind: Service
metadata: {name: h, namespace: ns, labels: {weft.dev/use-waypoint: none}}
spec: {clusterIP: None, ports: [{port: 80, targetPort: "8080"}]}
"#;
        let snap = parse_and_build(yaml).unwrap();
        let h = snap.service("ns", "h").unwrap();
        assert!(h.vips.is_empty());
        assert_eq!(h.waypoint, None);
        assert_eq!(h.ports[0].target_port, TargetPort::Number(8080));
        assert!(h.endpoints.is_empty());
    }

    #[test]
    fn demo_config_is_valid() {
        let yaml = include_str!("../../deploy/demo/mesh.yaml");
        let snap = parse_and_build(yaml).unwrap();
        let client = snap.workload_by_ip(ip("10.10.1.10")).unwrap();
        assert!(client.enrolled);
        assert_eq!(
            (client.service_account.as_str(), client.node.as_deref()),
            ("client", Some("node-1"))
        );
        let legacy = snap.workload_by_ip(ip("10.10.1.20")).unwrap();
        assert!(!legacy.enrolled);
        let server = snap.service_by_vip(ip("10.96.0.10")).unwrap();
        assert_eq!(server.endpoints.len(), 1);
        assert_eq!(server.endpoints[0].ip, ip("10.10.2.10"));
        assert_eq!(server.endpoints[0].target_ports[&80], 8080);
        let on_node1: Vec<_> = snap.workloads_on_node("node-1").map(|w| &w.name).collect();
        assert_eq!(on_node1, ["client", "legacy"]);
    }

    #[test]
    fn empty_input_is_an_empty_snapshot() {
        assert_eq!(parse_and_build("").unwrap(), MeshSnapshot::empty());
        assert_eq!(
            parse_and_build("---\n# nothing\n---\n").unwrap(),
            MeshSnapshot::empty()
        );
    }

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n";

    fn pod(name: &str, status: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop}}\n{status}\n"
        )
    }

    /// Asserts the error of `yaml` mentions every fragment.
    #[track_caller]
    fn assert_error(yaml: &str, fragments: &[&str]) {
        let err = parse_and_build(yaml).unwrap_err().to_string();
        for fragment in fragments {
            assert!(err.contains(fragment), "{err:?} lacks {fragment:?}");
        }
    }

    #[test]
    fn invalid_pod_ip() {
        let yaml = format!(
            "{NS}---\n{}---\n{}",
            pod("a", "status: {podIP: 10.1.2.3}"),
            pod("order-5d9", "status: {podIP: 10.1.2.300}")
        );
        let err = parse_and_build(&yaml).unwrap_err().to_string();
        assert_eq!(
            err,
            r#"document 3 (Pod shop/order-5d9): status.podIP: "10.1.2.300" is not an IP address"#
        );
        assert_error(
            &pod("p", "status: {podIPs: [{ip: 10.0.0.1}, {ip: bogus}]}"),
            &[
                "document 1",
                "Pod shop/p",
                "status.podIPs[1].ip",
                "\"bogus\"",
            ],
        );
    }

    #[test]
    fn invalid_ports() {
        assert_error(
            "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: x}\n\
             spec: {ports: [{port: 80}, {port: 70000}]}",
            &[
                "document 1",
                "Service x/s",
                "spec.ports[1].port",
                "70000",
                "1-65535",
            ],
        );
        assert_error(
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n\
             spec: {ports: [{port: 80, targetPort: 0}]}",
            &[
                "document 1",
                "Service default/s",
                "spec.ports[0].targetPort",
                "0 is not",
            ],
        );
        assert_error(
            &format!(
                "---\n{}",
                pod(
                    "p",
                    "spec: {containers: [{name: c, ports: [{containerPort: -1}]}]}"
                )
            ),
            &[
                "document 1",
                "Pod shop/p",
                "spec.containers[0].ports[0].containerPort",
                "-1",
            ],
        );
        assert_error(
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: [{port: 80}]}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: s-1, labels: {kubernetes.io/service-name: s}}\n\
             ports: [{port: 65536}]",
            &[
                "document 2",
                "EndpointSlice default/s-1",
                "ports[0].port",
                "65536",
            ],
        );
    }

    #[test]
    fn wrong_types_carry_the_field_path() {
        assert_error(
            &pod("p", "spec: {hostNetwork: \"yes\"}"),
            &[
                "document 1",
                "Pod shop/p",
                "spec.hostNetwork",
                "invalid type",
            ],
        );
        assert_error(
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n\
             spec: {ports: [{port: http}]}",
            &[
                "document 1",
                "Service default/s",
                "spec.ports[0].port",
                "invalid type",
            ],
        );
    }

    #[test]
    fn missing_name() {
        assert_error(
            &format!("{NS}---\napiVersion: v1\nkind: Pod\nmetadata: {{namespace: shop}}\n"),
            &[
                "document 2",
                "Pod shop/<no name>",
                "metadata.name",
                "missing",
            ],
        );
    }

    #[test]
    fn duplicate_objects() {
        let yaml = format!("{NS}---\n{}---\n{}", pod("p", ""), pod("p", ""));
        assert_error(
            &yaml,
            &["document 3", "Pod shop/p", "metadata.name", "document 2"],
        );
        assert_error(
            &format!("{NS}---\n{NS}"),
            &[
                "document 2",
                "Namespace shop",
                "metadata.name",
                "document 1",
            ],
        );
        // Same name, different kinds or namespaces: fine.
        let ok = format!(
            "{NS}---\n{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: p, namespace: shop}}\n\
             ---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: other}}\n\
             ---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: other}}\n",
            pod("p", "")
        );
        parse_and_build(&ok).unwrap();
    }

    #[test]
    fn pods_sharing_an_ip() {
        let yaml = format!(
            "{NS}---\n{}---\n{}",
            pod("a", "status: {podIP: 10.0.0.1}"),
            pod("b", "status: {podIPs: [{ip: 10.0.0.2}, {ip: 10.0.0.1}]}")
        );
        assert_error(
            &yaml,
            &[
                "document 3",
                "Pod shop/b",
                "status.podIPs[1].ip",
                "10.0.0.1",
                "Pod shop/a (document 2)",
            ],
        );
        // hostNetwork pods share the node IP with each other and with nothing in the index.
        let ok = format!(
            "{NS}---\n{}---\n{}---\n{}",
            pod("a", "spec: {hostNetwork: true}\nstatus: {podIP: 10.0.0.1}"),
            pod("b", "spec: {hostNetwork: true}\nstatus: {podIP: 10.0.0.1}"),
            pod("c", "status: {podIP: 10.0.0.1}"),
        );
        let snap = parse_and_build(&ok).unwrap();
        assert_eq!(snap.workload_by_ip(ip("10.0.0.1")).unwrap().name, "c");
    }

    #[test]
    fn names_and_labels_are_checked_as_the_api_server_would() {
        let ns =
            |name: &str| format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name:?}}}\n");
        assert_error(
            &ns("Shop!/.."),
            &["Namespace Shop!/..", "metadata.name", "lowercase"],
        );
        let long_value = "v".repeat(100_000);
        for (labels, fragments) in [
            (
                "{\"bad key\": x}".to_owned(),
                vec!["metadata.labels.bad key", "key"],
            ),
            ("{\"a/b/c\": x}".to_owned(), vec!["metadata.labels.a/b/c"]),
            (
                format!("{{app: {long_value}}}"),
                vec!["metadata.labels.app", "63 characters"],
            ),
        ] {
            let yaml = format!(
                "{NS}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: shop, labels: {labels}}}\n"
            );
            let mut all = vec!["Pod shop/p"];
            all.extend(fragments);
            assert_error(&yaml, &all);
        }
        for sa in ["../admin", "a/sa/b", "Admin"] {
            let yaml = format!(
                "{NS}---\n{}",
                pod("p", &format!("spec: {{serviceAccountName: {sa:?}}}"))
            );
            assert_error(&yaml, &["Pod shop/p", "spec.serviceAccountName", sa]);
        }
        // A pod in a namespace nobody declared; `default` always exists.
        assert_error(
            &pod("p", ""),
            &["Pod shop/p", "metadata.namespace", "not declared"],
        );
        parse_and_build("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n").unwrap();
    }

    #[test]
    fn unroutable_addresses_are_refused() {
        for raw in ["0.0.0.0", "224.0.0.1", "::"] {
            let yaml = format!(
                "{NS}---\n{}",
                pod("p", &format!("status: {{podIP: {raw:?}}}"))
            );
            assert_error(&yaml, &["Pod shop/p", "status.podIP", raw]);
        }
        for raw in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            let yaml = format!(
                "{NS}---\napiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: shop}}\n\
                 spec: {{clusterIP: {raw:?}}}\n"
            );
            assert_error(&yaml, &["Service shop/s", "spec.clusterIP", "loopback"]);
        }
        let service = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
                       spec: {clusterIP: 10.96.0.9, ports: [{port: 80, name: http}]}\n";
        let slice = |addr: &str| {
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\n\
                 addressType: IPv4\nports: [{{name: http, port: 15001}}]\n\
                 endpoints: [{{addresses: [{addr}]}}]\n"
            )
        };
        assert_error(
            &format!("{NS}---\n{service}---\n{}", slice("127.0.0.1")),
            &[
                "EndpointSlice shop/web-1",
                "endpoints[0].addresses[0]",
                "loopback",
            ],
        );
        // A cluster IP that is a pod's address would capture the pod's own traffic.
        let yaml = format!(
            "{NS}---\n{}---\n{}",
            pod("p", "status: {podIP: 10.96.0.9}"),
            service
        );
        assert_error(&yaml, &["Service shop/web", "spec.clusterIP", "Pod shop/p"]);
    }

    #[test]
    fn services_sharing_a_vip() {
        let yaml =
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.1}\n\
                    ---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\n\
                    spec: {clusterIPs: [10.96.0.1]}\n";
        assert_error(
            yaml,
            &[
                "document 2",
                "Service default/b",
                "spec.clusterIPs[0]",
                "10.96.0.1",
                "Service default/a",
            ],
        );
        assert_error(
            "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.96.0.256}\n",
            &[
                "document 1",
                "Service default/a",
                "spec.clusterIP",
                "\"10.96.0.256\" is not an IP",
            ],
        );
    }

    #[test]
    fn endpoint_slice_errors() {
        assert_error(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: s-1, namespace: x, labels: {kubernetes.io/service-name: s}}\n",
            &[
                "document 1",
                "EndpointSlice x/s-1",
                "metadata.labels.kubernetes.io/service-name",
                "Service x/s does not exist",
            ],
        );
        assert_error(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s-1}\n",
            &[
                "document 1",
                "EndpointSlice default/s-1",
                "kubernetes.io/service-name",
                "missing",
            ],
        );
        assert_error(
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {name: s-1, labels: {kubernetes.io/service-name: s}}\n\
             endpoints: [{addresses: [1.2.3]}]\n",
            &[
                "document 2",
                "EndpointSlice default/s-1",
                "endpoints[0].addresses[0]",
                "\"1.2.3\"",
            ],
        );
    }

    #[test]
    fn unknown_or_missing_kind_rejected() {
        assert_error(
            &format!(
                "{NS}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: shop}}\n"
            ),
            &[
                "document 2",
                "Deployment shop/web",
                "kind: \"Deployment\" is not supported",
                "v1 Namespace, v1 Pod, v1 Service, discovery.k8s.io/v1 EndpointSlice, and \
                 weft.dev/v1alpha1 AuthorizationPolicy and PeerAuthentication",
            ],
        );
        assert_error(
            "apiVersion: v1\nmetadata: {name: x}\n",
            &["document 1", "kind", "missing", "v1 Pod"],
        );
        assert_error(
            "apiVersion: apps/v1\nkind: Pod\nmetadata: {name: x}\n",
            &[
                "document 1",
                "Pod default/x",
                "apiVersion",
                "\"apps/v1\"",
                "use \"v1\"",
            ],
        );
        assert_error(
            "kind: Pod\nmetadata: {name: x}\n",
            &["document 1", "apiVersion", "missing apiVersion"],
        );
        assert_error("- a\n- b\n", &["document 1", "found a list"]);
    }

    #[test]
    fn yaml_syntax_error_names_the_document() {
        assert_error(
            &format!("{NS}---\nkind: [unclosed\n"),
            &["document 2", "invalid YAML"],
        );
    }
}
