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
    /// Name, namespace, labels and annotations (the dry-run annotation among them).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Absent: an ALLOW policy without rules for the whole namespace, which allows nothing.
    pub spec: Option<AuthorizationPolicySpec>,
}

/// `AuthorizationPolicy.spec`. `targetRef(s)` and `provider` are declared only to be rejected
/// with a clear message.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// Which workloads of the namespace the policy applies to; absent: all of them.
    pub selector: Option<WorkloadSelector>,
    /// `ALLOW` (the default) or `DENY`; anything else is rejected.
    pub action: Option<String>,
    /// The rules; the action applies when any one matches.
    pub rules: Option<Vec<Rule>>,
    /// Istio's Gateway API attachment; rejected when set.
    pub target_ref: Option<serde_yaml::Value>,
    /// Plural form of `target_ref`; rejected when set.
    pub target_refs: Option<serde_yaml::Value>,
    /// The external authorizer of action `CUSTOM`; rejected when set.
    pub provider: Option<serde_yaml::Value>,
}

/// `spec.selector`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Labels a workload must all carry; absent or empty selects every workload.
    pub match_labels: Option<BTreeMap<String, String>>,
}

/// `AuthorizationPolicy.spec.rules[]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Sources, one of which must match; absent: any source.
    pub from: Option<Vec<RuleFrom>>,
    /// Operations, one of which must match; absent: any destination.
    pub to: Option<Vec<RuleTo>>,
    /// Conditions, all of which must hold.
    pub when: Option<Vec<Condition>>,
}

/// `rules[].from[]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFrom {
    /// Required: an entry without a source is rejected.
    pub source: Option<Source>,
}

/// `rules[].from[].source`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer principal patterns (`cluster.local/ns/shop/sa/order`, `*` wildcards), one of
    /// which must match.
    pub principals: Option<Vec<String>>,
    /// Peer principal patterns none of which may match.
    pub not_principals: Option<Vec<String>>,
    /// JWT request principals: L7 only, recorded in the rule's L7 fields.
    pub request_principals: Option<Vec<String>>,
    /// Negated JWT request principals: L7 only.
    pub not_request_principals: Option<Vec<String>>,
    /// Peer namespace patterns, one of which must match.
    pub namespaces: Option<Vec<String>>,
    /// Peer namespace patterns none of which may match.
    pub not_namespaces: Option<Vec<String>>,
    /// Source CIDRs or addresses, one of which must contain the peer's IP.
    pub ip_blocks: Option<Vec<String>>,
    /// Source CIDRs or addresses none of which may contain the peer's IP.
    pub not_ip_blocks: Option<Vec<String>>,
    /// Original client CIDRs (from `X-Forwarded-For`): L7 only.
    pub remote_ip_blocks: Option<Vec<String>>,
    /// Negated original client CIDRs: L7 only.
    pub not_remote_ip_blocks: Option<Vec<String>>,
}

/// `rules[].to[]`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleTo {
    /// Required: an entry without an operation is rejected.
    pub operation: Option<Operation>,
}

/// `rules[].to[].operation`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    /// HTTP hosts: L7 only, recorded in the rule's L7 fields.
    pub hosts: Option<Vec<String>>,
    /// Negated HTTP hosts: L7 only.
    pub not_hosts: Option<Vec<String>>,
    /// Strings in Istio (`"8080"`); numbers are accepted too.
    pub ports: Option<Vec<IntOrString>>,
    /// Destination ports none of which may be the connection's.
    pub not_ports: Option<Vec<IntOrString>>,
    /// HTTP methods: L7 only.
    pub methods: Option<Vec<String>>,
    /// Negated HTTP methods: L7 only.
    pub not_methods: Option<Vec<String>>,
    /// HTTP paths: L7 only.
    pub paths: Option<Vec<String>>,
    /// Negated HTTP paths: L7 only.
    pub not_paths: Option<Vec<String>>,
}

/// `rules[].when[]`. Values are strings in Istio; numbers (ports) are accepted too.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// The attribute tested (`source.ip`, `destination.port`, ...). Required; a key outside
    /// the L4 ones ([`crate::policy::L4_CONDITION_KEYS`]) makes the condition L7 only.
    pub key: Option<String>,
    /// Values one of which must match the attribute.
    pub values: Option<Vec<IntOrString>>,
    /// Values none of which may match the attribute.
    pub not_values: Option<Vec<IntOrString>>,
}

/// `weft.dev/v1alpha1 PeerAuthentication` (the shape of Istio's
/// `security.istio.io/v1 PeerAuthentication`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthentication {
    /// Name, namespace and labels.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// `None` is a namespace-wide `UNSET` mode (inherit).
    pub spec: Option<PeerAuthenticationSpec>,
}

/// `PeerAuthentication.spec`. `portLevelMtls` is declared only to be rejected clearly.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// Which workloads of the namespace it sets the mode of; absent: the whole namespace.
    pub selector: Option<WorkloadSelector>,
    /// The mode; absent is `UNSET`.
    pub mtls: Option<Mtls>,
    /// Per-port modes; rejected when set (one mode applies to all ports).
    pub port_level_mtls: Option<serde_yaml::Value>,
}

/// `PeerAuthentication.spec.mtls`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mtls {
    /// `STRICT`, `PERMISSIVE` or `UNSET` (the default, inherit); anything else, `DISABLE`
    /// included, is rejected.
    pub mode: Option<String>,
}

/// A number or a string, as Istio accepts for ports and condition values.
#[derive(Debug, Clone, PartialEq)]
pub enum IntOrString {
    /// Written as a YAML number.
    Int(i64),
    /// Written as a YAML string, possibly a number in quotes (`"8080"`).
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
