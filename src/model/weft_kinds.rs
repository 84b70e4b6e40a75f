//! Shapes of weft's own kinds, `weft.dev/v1alpha1` `AuthorizationPolicy` and
//! `PeerAuthentication` (the shapes of Istio's `security.istio.io/v1` kinds).
//!
//! Inside `spec` an unknown field is an error, because a misspelt field (`principal:` for
//! `principals:`) silently dropped would widen a policy. Values stay raw (strings) and are
//! parsed by the translation, which names the field of a bad one.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::Deserialize;

/// The API version of weft's own kinds.
pub const WEFT_API_VERSION: &str = "weft.dev/v1alpha1";

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

/// A number or a string, as Istio accepts for ports and condition values.
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
