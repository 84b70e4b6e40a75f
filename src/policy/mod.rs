//! L4 authorization and peer authentication: the compiled forms of weft's
//! `AuthorizationPolicy` and `PeerAuthentication` kinds (Istio's shapes and semantics) and the
//! engine that decides a connection ([`PolicyIndex`], held and reached through the mesh
//! snapshot). The engine knows a workload only through [`PolicyTarget`], so this module sits
//! below the model and imports nothing of it.
//!
//! The config translation (in the model) validates the YAML and builds these types; every
//! pattern, CIDR and port is parsed there, once, so a decision only compares values. A
//! decision for a workload walks only the policies that apply to it (precomputed per workload
//! when the snapshot is built) and allocates nothing unless it denies.
//!
//! What L4 can see: the peer's principal (from its mTLS certificate; none for plaintext),
//! the peer's namespace, the source and destination IPs and the destination port. Rules that
//! also need L7 (HTTP methods, paths, request principals, ...) are flagged when loaded: in an
//! ALLOW policy such a rule never matches at L4; in a DENY policy it is applied without its
//! L7 parts, so it denies more, never less.

mod index;
mod matchers;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Serialize, Serializer};

pub use index::PolicyIndex;
pub use matchers::{parse_port, port_from_int, IpBlock, StringMatch};

/// The namespace whose selector-less policies apply to the whole mesh (Istio's root
/// namespace, renamed).
pub const ROOT_NAMESPACE: &str = "weft-system";
/// Annotation that makes an `AuthorizationPolicy` dry-run (`"true"`): evaluated and reported,
/// never enforced.
pub const DRY_RUN_ANNOTATION: &str = "weft.dev/dry-run";

/// What the policy engine needs to know of a workload: the uid it is indexed by, and the
/// namespace and labels that policies select it by.
pub trait PolicyTarget {
    /// Unique among the workloads of one index.
    fn uid(&self) -> &str;
    /// What namespace-scoped policies and the root namespace's apply by.
    fn namespace(&self) -> &str;
    /// What `spec.selector.matchLabels` is matched against.
    fn labels(&self) -> &BTreeMap<String, String>;
}

/// Errors of the policy layer: a value that is not a valid pattern, CIDR or port. The model
/// translation wraps them into a `ConfigError` naming the document and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// An IP block that is neither an address nor `address/prefix` with a prefix within the
    /// address width; holds the value as written.
    #[error("{0:?} is not a CIDR; write an IPv4 or IPv6 address or a prefix such as 10.0.0.0/8 or fd00::/64")]
    Cidr(String),
    /// The value, as written (strings quoted).
    #[error("{0} is not a port (1-65535)")]
    Port(String),
    /// A principal or namespace pattern with a `*` anywhere but alone, at the start or at the
    /// end (`a*b`, `*a*`); holds the value as written.
    #[error("{0:?} is not a valid pattern: a * is allowed only alone (\"*\") or once at the start or the end")]
    Wildcard(String),
    /// An empty string where a pattern was expected (it would match nothing).
    #[error("is empty; remove it or write a value")]
    EmptyValue,
}

/// What a policy does when one of its rules matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    /// `ALLOW`: once any enforced ALLOW policy applies to a workload, a connection to it must
    /// match one of them.
    Allow,
    /// `DENY`: a matching connection is refused, whatever the ALLOW policies say.
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
        })
    }
}

/// Whether a workload accepts plaintext (non-mesh) connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Only mTLS (HBONE) connections.
    Strict,
    /// mTLS and plaintext.
    Permissive,
}

impl fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MtlsMode::Strict => "STRICT",
            MtlsMode::Permissive => "PERMISSIVE",
        })
    }
}

/// One `AuthorizationPolicy`, compiled. Build it with [`AuthorizationPolicy::new`], which
/// derives the warnings and the `namespace/name` key; the fields are public for reading.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuthorizationPolicy {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`; in [`ROOT_NAMESPACE`] the policy applies mesh-wide.
    pub namespace: String,
    /// `spec.selector.matchLabels`; `None` selects every workload of the namespace (of the
    /// mesh, in the root namespace).
    pub selector: Option<BTreeMap<String, String>>,
    /// `spec.action` (`ALLOW` when absent).
    pub action: Action,
    /// `spec.rules`, in order. An ALLOW policy with no rules allows nothing; a DENY policy
    /// with no rules denies nothing.
    pub rules: Vec<Rule>,
    /// Set by the [`DRY_RUN_ANNOTATION`]: the policy is evaluated and reported in
    /// [`Verdict::dry_run`] but never decides a connection.
    pub dry_run: bool,
    /// Why parts of the policy cannot be enforced as written at L4 (see [`Rule::l7_fields`]).
    pub warnings: Vec<String>,
    /// `namespace/name`, shared with verdicts without allocating.
    #[serde(skip)]
    key: Arc<str>,
}

/// One rule: it matches when one of `from` (if any) and one of `to` (if any) match and all of
/// `when` hold. A rule with none of them matches every connection.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Rule {
    /// `from[].source`: one must match; empty matches any peer.
    pub from: Vec<Source>,
    /// `to[].operation`: one must match; empty matches any destination port.
    pub to: Vec<Operation>,
    /// The L4 conditions; L7 ones are left out and listed in `l7_fields`.
    pub when: Vec<Condition>,
    /// Fields of the rule that only L7 can evaluate, as paths inside the rule (e.g.
    /// `to[0].operation.paths`, `when[1] (request.headers[x-user])`). They are not part of
    /// `from`/`to`/`when` above. Non-empty means: in an ALLOW policy the rule never matches at
    /// L4; in a DENY policy it matches ignoring them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub l7_fields: Vec<String>,
}

/// `from[].source`, L4 fields. Every non-empty field must match; values within a field are
/// alternatives.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Source {
    /// `principals`: the peer's mTLS principal must match one (a plaintext peer has none, so
    /// never matches).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<StringMatch>,
    /// `notPrincipals`: the peer's principal must match none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<StringMatch>,
    /// `namespaces`: the peer's namespace must match one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<StringMatch>,
    /// `notNamespaces`: the peer's namespace must match none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<StringMatch>,
    /// `ipBlocks`: the connection's source IP must be in one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<IpBlock>,
    /// `notIpBlocks`: the source IP must be in none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<IpBlock>,
}

/// `to[].operation`, L4 fields.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Operation {
    /// `ports`: the destination port must be one of them (any port when empty).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// `notPorts`: the destination port must be none of them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<u16>,
}

/// A `when[]` condition on an L4 attribute. Both `values` (one must match, when non-empty)
/// and `not_values` (none may match) apply.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "key")]
pub enum Condition {
    /// `source.ip`: the connection's source IP, against IP blocks.
    #[serde(rename = "source.ip")]
    SourceIp {
        /// IP blocks the source IP must be in one of (any, when empty).
        values: Vec<IpBlock>,
        /// IP blocks the source IP must be in none of.
        not_values: Vec<IpBlock>,
    },
    /// `source.namespace`: the peer's namespace, against patterns.
    #[serde(rename = "source.namespace")]
    SourceNamespace {
        /// Patterns the peer's namespace must match one of (any, when empty).
        values: Vec<StringMatch>,
        /// Patterns the peer's namespace must match none of.
        not_values: Vec<StringMatch>,
    },
    /// `source.principal`: the peer's mTLS principal, against patterns.
    #[serde(rename = "source.principal")]
    SourcePrincipal {
        /// Patterns the peer's principal must match one of (any, when empty).
        values: Vec<StringMatch>,
        /// Patterns the peer's principal must match none of.
        not_values: Vec<StringMatch>,
    },
    /// `destination.ip`: the address the connection was sent to, against IP blocks.
    #[serde(rename = "destination.ip")]
    DestinationIp {
        /// IP blocks the destination IP must be in one of (any, when empty).
        values: Vec<IpBlock>,
        /// IP blocks the destination IP must be in none of.
        not_values: Vec<IpBlock>,
    },
    /// `destination.port`: the port the connection was sent to.
    #[serde(rename = "destination.port")]
    DestinationPort {
        /// Ports the destination port must be one of (any, when empty).
        values: Vec<u16>,
        /// Ports the destination port must be none of.
        not_values: Vec<u16>,
    },
}

/// The `when` keys L4 can evaluate.
pub const L4_CONDITION_KEYS: [&str; 5] = [
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
];

/// One `PeerAuthentication`, compiled.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerAuthentication {
    /// `metadata.name`; of several at one level, the first by name wins.
    pub name: String,
    /// `metadata.namespace`; selector-less ones in [`ROOT_NAMESPACE`] set the mesh-wide mode.
    pub namespace: String,
    /// `spec.selector.matchLabels`; `None` sets the mode of the whole namespace.
    pub selector: Option<BTreeMap<String, String>>,
    /// `None` is `UNSET`: inherit from the next level.
    pub mode: Option<MtlsMode>,
}

/// What is known about one connection at L4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ConnectionAttrs<'a> {
    /// The peer's principal as Istio writes it (`cluster.local/ns/shop/sa/order`, the SPIFFE
    /// ID without `spiffe://`); `None` for a plaintext connection.
    pub source_principal: Option<&'a str>,
    /// The peer's namespace. When `None`, it is taken from the principal's `/ns/<namespace>/`
    /// segment (as Istio derives `source.namespace`).
    pub source_namespace: Option<&'a str>,
    /// The peer's address (IPv4-mapped IPv6 addresses match IPv4 blocks).
    pub source_ip: IpAddr,
    /// The address the connection was sent to (the workload's IP).
    pub destination_ip: IpAddr,
    /// The port the connection was sent to, on the workload (after any service port
    /// mapping).
    pub destination_port: u16,
}

/// The outcome of [`PolicyIndex::authorize`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Whether the connection may proceed.
    pub allowed: bool,
    /// `namespace/name` of the deciding policy: the DENY policy that denied, or the ALLOW
    /// policy that allowed; `None` when no single policy decided (nothing applies, or no
    /// ALLOW policy matched).
    #[serde(serialize_with = "serialize_opt_arc_str")]
    pub policy: Option<Arc<str>>,
    /// Human-readable. Static on the allow path; formatted only on a deny.
    pub reason: Cow<'static, str>,
    /// What the dry-run policies that apply would have done.
    pub dry_run: Vec<DryRunOutcome>,
}

/// What one dry-run policy would have done, had it been enforced on its own: a DENY policy
/// would deny when it matches, an ALLOW policy would allow only when it matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DryRunOutcome {
    /// `namespace/name` of the dry-run policy.
    #[serde(serialize_with = "serialize_arc_str")]
    pub policy: Arc<str>,
    /// Whether the connection would have been allowed by this policy alone.
    pub would_allow: bool,
}

fn serialize_arc_str<S: Serializer>(value: &Arc<str>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(value)
}

fn serialize_opt_arc_str<S: Serializer>(
    value: &Option<Arc<str>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    value.as_deref().serialize(serializer)
}

impl AuthorizationPolicy {
    /// Compiles a policy: derives its key and the warnings for rules that need L7.
    pub fn new(
        name: String,
        namespace: String,
        selector: Option<BTreeMap<String, String>>,
        action: Action,
        rules: Vec<Rule>,
        dry_run: bool,
    ) -> Self {
        let warnings = rules
            .iter()
            .enumerate()
            .filter(|(_, rule)| !rule.l7_fields.is_empty())
            .map(|(i, rule)| {
                let (fields, need) = match rule.l7_fields.as_slice() {
                    [one] => (one.clone(), "needs"),
                    many => (many.join(", "), "need"),
                };
                let effect = match action {
                    Action::Allow => {
                        "enforced at L4 this ALLOW rule never matches (it allows nothing)"
                    }
                    Action::Deny => {
                        "enforced at L4 it can only deny: the rule is applied without those \
                         fields, so it denies more, never less"
                    }
                };
                format!(
                    "rule {i} (spec.rules[{i}]) uses {fields}, which {need} L7 (a waypoint); \
                     {effect}"
                )
            })
            .collect();
        let key = Arc::from(format!("{namespace}/{name}"));
        Self {
            name,
            namespace,
            selector,
            action,
            rules,
            dry_run,
            warnings,
            key,
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The shared `namespace/name`.
    pub fn key_arc(&self) -> &Arc<str> {
        &self.key
    }

    /// Whether the policy is in force on a workload of `namespace` with `labels`, given the
    /// mesh's root namespace.
    pub fn applies_to(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        root_namespace: &str,
    ) -> bool {
        (self.namespace == namespace || self.namespace == root_namespace)
            && selector_matches(self.selector.as_ref(), labels)
    }

    /// Whether one of the rules matches the connection at L4.
    pub fn matches(&self, attrs: &ConnectionAttrs<'_>) -> bool {
        self.matching_rule(&Peer::new(attrs)).is_some()
    }

    /// The index of the first rule that matches at L4 (rules needing L7 never do in an ALLOW
    /// policy; in a DENY policy they match without their L7 parts).
    fn matching_rule(&self, peer: &Peer<'_>) -> Option<usize> {
        self.rules.iter().position(|rule| {
            (self.action == Action::Deny || rule.l7_fields.is_empty()) && rule.matches(peer)
        })
    }
}

impl Rule {
    /// Whether the rule needs L7 for some of its fields.
    pub fn needs_l7(&self) -> bool {
        !self.l7_fields.is_empty()
    }

    /// Ports first: they are the cheapest to compare.
    #[inline]
    fn matches(&self, peer: &Peer<'_>) -> bool {
        (self.to.is_empty() || self.to.iter().any(|o| o.matches(peer)))
            && (self.from.is_empty() || self.from.iter().any(|s| s.matches(peer)))
            && self.when.iter().all(|c| c.matches(peer))
    }
}

impl Source {
    #[inline]
    fn matches(&self, peer: &Peer<'_>) -> bool {
        any_or_empty(&self.principals, |m| m.matches(peer.principal))
            && none_match(&self.not_principals, |m| m.matches(peer.principal))
            && any_or_empty(&self.namespaces, |m| m.matches(peer.namespace))
            && none_match(&self.not_namespaces, |m| m.matches(peer.namespace))
            && any_or_empty(&self.ip_blocks, |b| b.contains_canonical(peer.source_ip))
            && none_match(&self.not_ip_blocks, |b| {
                b.contains_canonical(peer.source_ip)
            })
    }
}

impl Operation {
    #[inline]
    fn matches(&self, peer: &Peer<'_>) -> bool {
        (self.ports.is_empty() || self.ports.contains(&peer.destination_port))
            && !self.not_ports.contains(&peer.destination_port)
    }
}

impl Condition {
    #[inline]
    fn matches(&self, peer: &Peer<'_>) -> bool {
        match self {
            Condition::SourceIp { values, not_values } => {
                any_or_empty(values, |b| b.contains_canonical(peer.source_ip))
                    && none_match(not_values, |b| b.contains_canonical(peer.source_ip))
            }
            Condition::DestinationIp { values, not_values } => {
                any_or_empty(values, |b| b.contains_canonical(peer.destination_ip))
                    && none_match(not_values, |b| b.contains_canonical(peer.destination_ip))
            }
            Condition::SourceNamespace { values, not_values } => {
                any_or_empty(values, |m| m.matches(peer.namespace))
                    && none_match(not_values, |m| m.matches(peer.namespace))
            }
            Condition::SourcePrincipal { values, not_values } => {
                any_or_empty(values, |m| m.matches(peer.principal))
                    && none_match(not_values, |m| m.matches(peer.principal))
            }
            Condition::DestinationPort { values, not_values } => {
                (values.is_empty() || values.contains(&peer.destination_port))
                    && !not_values.contains(&peer.destination_port)
            }
        }
    }
}

impl PeerAuthentication {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl Verdict {
    /// Shorthand for `!allowed`.
    pub fn denied(&self) -> bool {
        !self.allowed
    }
}

#[inline]
fn any_or_empty<T>(list: &[T], f: impl FnMut(&T) -> bool) -> bool {
    list.is_empty() || list.iter().any(f)
}

#[inline]
fn none_match<T>(list: &[T], f: impl FnMut(&T) -> bool) -> bool {
    !list.iter().any(f)
}

/// Whether `labels` has every label of `selector` (no selector selects everything).
pub(crate) fn selector_matches(
    selector: Option<&BTreeMap<String, String>>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// The connection as the matchers see it: absent principal/namespace are empty strings,
/// which no pattern matches; IPv4-mapped IPv6 addresses are converted to IPv4 once.
struct Peer<'a> {
    principal: &'a str,
    namespace: &'a str,
    source_ip: IpAddr,
    destination_ip: IpAddr,
    destination_port: u16,
}

impl<'a> Peer<'a> {
    fn new(attrs: &ConnectionAttrs<'a>) -> Self {
        let principal = attrs.source_principal.unwrap_or("");
        let namespace = attrs
            .source_namespace
            .or_else(|| namespace_of_principal(principal))
            .unwrap_or("");
        Self {
            principal,
            namespace,
            source_ip: attrs.source_ip.to_canonical(),
            destination_ip: attrs.destination_ip.to_canonical(),
            destination_port: attrs.destination_port,
        }
    }
}

/// `shop` from `td/ns/shop/sa/order`.
fn namespace_of_principal(principal: &str) -> Option<&str> {
    let start = principal.find("/ns/")? + "/ns/".len();
    let rest = &principal[start..];
    Some(rest.split('/').next().unwrap_or(rest)).filter(|ns| !ns.is_empty())
}
