//! Shapes of the core Kubernetes objects weft reads (`v1 Namespace`, `Pod`, `Service` and
//! `discovery.k8s.io/v1 EndpointSlice`), and the value types shared with weft's own kinds.
//!
//! Only the fields the mesh model needs are declared; every other field of a real manifest is
//! ignored. Declared fields are typed, so a wrong type (e.g. `hostNetwork: "yes"`) is an
//! error whose path `serde_path_to_error` reports. Values that need checking beyond their
//! type (IP addresses, port ranges) stay raw here (`String`, `i64`) and are validated by the
//! translation, which knows the object and field path to blame.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::Deserialize;

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
