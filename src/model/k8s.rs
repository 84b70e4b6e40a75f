//! Serde shapes of the Kubernetes objects weft reads (`Namespace`, `Pod`, `Service`,
//! `EndpointSlice`, and weft's own `AuthorizationPolicy` and `PeerAuthentication`).
//!
//! Only the fields the mesh model needs are declared; every other field of a real manifest is
//! ignored, except inside the `spec` of weft's own security kinds: there an unknown field is
//! an error, because a misspelt field (`principal:` for `principals:`) silently dropped
//! would widen a policy. Declared fields are typed, so a wrong type (e.g. `hostNetwork: "yes"`) is an error
//! whose path `serde_path_to_error` reports. Values that need checking beyond their type (IP
//! addresses, port ranges) stay raw here (`String`, `i64`) and are validated in
//! [`super::translate`], which knows the document and field path to blame.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::Deserialize;

/// One parsed Kubernetes object of a supported kind.
#[derive(Debug, Clone, PartialEq)]
pub enum K8sObject {
    Namespace(Namespace),
    Pod(Pod),
    Service(Service),
    EndpointSlice(EndpointSlice),
    AuthorizationPolicy(AuthorizationPolicy),
    PeerAuthentication(PeerAuthentication),
}

impl K8sObject {
    /// The `kind` of the object, as written in manifests.
    pub fn kind(&self) -> &'static str {
        match self {
            K8sObject::Namespace(_) => "Namespace",
            K8sObject::Pod(_) => "Pod",
            K8sObject::Service(_) => "Service",
            K8sObject::EndpointSlice(_) => "EndpointSlice",
            K8sObject::AuthorizationPolicy(_) => "AuthorizationPolicy",
            K8sObject::PeerAuthentication(_) => "PeerAuthentication",
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            K8sObject::Namespace(o) => &o.metadata,
            K8sObject::Pod(o) => &o.metadata,
            K8sObject::Service(o) => &o.metadata,
            K8sObject::EndpointSlice(o) => &o.metadata,
            K8sObject::AuthorizationPolicy(o) => &o.metadata,
            K8sObject::PeerAuthentication(o) => &o.metadata,
        }
    }
}

/// `metadata` (the subset weft reads).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    pub annotations: Option<BTreeMap<String, String>>,
}

/// `v1 Namespace`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Namespace {
    #[serde(default)]
    pub metadata: ObjectMeta,
}

/// `v1 Pod`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: Option<PodSpec>,
    pub status: Option<PodStatus>,
}

/// `Pod.spec` (subset).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub node_name: Option<String>,
    pub service_account_name: Option<String>,
    /// Deprecated alias of `serviceAccountName`, still accepted.
    pub service_account: Option<String>,
    pub host_network: Option<bool>,
    pub containers: Option<Vec<Container>>,
}

/// `Pod.spec.containers[]` (subset).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: Option<String>,
    pub ports: Option<Vec<ContainerPort>>,
}

/// `Pod.spec.containers[].ports[]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    pub name: Option<String>,
    pub container_port: RawPort,
    pub protocol: Option<String>,
}

/// `Pod.status` (subset).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct PodStatus {
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pub pod_ips: Option<Vec<PodIp>>,
}

/// `Pod.status.podIPs[]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct PodIp {
    pub ip: String,
}

/// `v1 Service`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: Option<ServiceSpec>,
}

/// `Service.spec` (subset).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs")]
    pub cluster_ips: Option<Vec<String>>,
    pub ports: Option<Vec<ServicePort>>,
    pub selector: Option<BTreeMap<String, String>>,
}

/// `Service.spec.ports[]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: RawPort,
    pub target_port: Option<IntOrString>,
    pub protocol: Option<String>,
    pub app_protocol: Option<String>,
}

/// `discovery.k8s.io/v1 EndpointSlice`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub address_type: Option<String>,
    pub endpoints: Option<Vec<Endpoint>>,
    pub ports: Option<Vec<EndpointPort>>,
}

/// `EndpointSlice.endpoints[]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub addresses: Option<Vec<String>>,
    pub conditions: Option<EndpointConditions>,
    pub target_ref: Option<ObjectReference>,
}

/// `EndpointSlice.endpoints[].conditions` (subset).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct EndpointConditions {
    /// Absent means ready.
    pub ready: Option<bool>,
}

/// `EndpointSlice.endpoints[].targetRef`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct ObjectReference {
    pub kind: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub uid: Option<String>,
}

/// `EndpointSlice.ports[]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    pub name: Option<String>,
    /// Absent means "all ports" in Kubernetes; weft cannot map such a port and ignores it.
    pub port: Option<RawPort>,
    pub protocol: Option<String>,
    pub app_protocol: Option<String>,
}

/// `weft.dev/v1alpha1 AuthorizationPolicy` (the shape of Istio's
/// `security.istio.io/v1 AuthorizationPolicy`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: Option<AuthorizationPolicySpec>,
}

/// `AuthorizationPolicy.spec`. `targetRef(s)` and `provider` are declared only to be rejected
/// with a clear message.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    pub selector: Option<WorkloadSelector>,
    pub action: Option<String>,
    pub rules: Option<Vec<Rule>>,
    pub target_ref: Option<serde_yaml::Value>,
    pub target_refs: Option<serde_yaml::Value>,
    pub provider: Option<serde_yaml::Value>,
}

/// `spec.selector`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    pub match_labels: Option<BTreeMap<String, String>>,
}

/// `AuthorizationPolicy.spec.rules[]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub from: Option<Vec<RuleFrom>>,
    pub to: Option<Vec<RuleTo>>,
    pub when: Option<Vec<Condition>>,
}

/// `rules[].from[]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFrom {
    pub source: Option<Source>,
}

/// `rules[].from[].source`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    pub principals: Option<Vec<String>>,
    pub not_principals: Option<Vec<String>>,
    pub request_principals: Option<Vec<String>>,
    pub not_request_principals: Option<Vec<String>>,
    pub namespaces: Option<Vec<String>>,
    pub not_namespaces: Option<Vec<String>>,
    pub ip_blocks: Option<Vec<String>>,
    pub not_ip_blocks: Option<Vec<String>>,
    pub remote_ip_blocks: Option<Vec<String>>,
    pub not_remote_ip_blocks: Option<Vec<String>>,
}

/// `rules[].to[]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleTo {
    pub operation: Option<Operation>,
}

/// `rules[].to[].operation`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    pub hosts: Option<Vec<String>>,
    pub not_hosts: Option<Vec<String>>,
    /// Strings in Istio (`"8080"`); numbers are accepted too.
    pub ports: Option<Vec<IntOrString>>,
    pub not_ports: Option<Vec<IntOrString>>,
    pub methods: Option<Vec<String>>,
    pub not_methods: Option<Vec<String>>,
    pub paths: Option<Vec<String>>,
    pub not_paths: Option<Vec<String>>,
}

/// `rules[].when[]`. Values are strings in Istio; numbers (ports) are accepted too.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    pub key: Option<String>,
    pub values: Option<Vec<IntOrString>>,
    pub not_values: Option<Vec<IntOrString>>,
}

/// `weft.dev/v1alpha1 PeerAuthentication` (the shape of Istio's
/// `security.istio.io/v1 PeerAuthentication`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthentication {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: Option<PeerAuthenticationSpec>,
}

/// `PeerAuthentication.spec`. `portLevelMtls` is declared only to be rejected clearly.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    pub selector: Option<WorkloadSelector>,
    pub mtls: Option<Mtls>,
    pub port_level_mtls: Option<serde_yaml::Value>,
}

/// `PeerAuthentication.spec.mtls`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mtls {
    pub mode: Option<String>,
}

/// A port number as written; its range is checked by the translation, which can name the
/// document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawPort(pub i64);

impl<'de> Deserialize<'de> for RawPort {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RawPortVisitor;

        impl Visitor<'_> for RawPortVisitor {
            type Value = RawPort;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number (1-65535)")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawPort, E> {
                Ok(RawPort(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawPort, E> {
                i64::try_from(v)
                    .map(RawPort)
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
            }
        }

        deserializer.deserialize_i64(RawPortVisitor)
    }
}

/// Kubernetes `IntOrString` (used by `targetPort`): a number or a name.
#[derive(Debug, Clone, PartialEq)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntOrStringVisitor;

        impl Visitor<'_> for IntOrStringVisitor {
            type Value = IntOrString;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a port name")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrString, E> {
                Ok(IntOrString::Int(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrString, E> {
                i64::try_from(v)
                    .map(IntOrString::Int)
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrString, E> {
                Ok(IntOrString::String(v.to_owned()))
            }
        }

        deserializer.deserialize_any(IntOrStringVisitor)
    }
}
