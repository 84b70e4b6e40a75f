//! SPIFFE IDs of the form `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`,
//! the only identity format the mesh issues or accepts.

use std::fmt;
use std::str::FromStr;

/// Trust domain used when none is configured (the same default as Istio).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// A workload identity: trust domain, namespace and service account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(into = "String")]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a string is not a mesh SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The text (given) does not start with `spiffe://`.
    #[error("{0:?} is not a SPIFFE ID: it must start with spiffe://")]
    MissingScheme(String),
    /// The text (given) has the scheme, but its path is not exactly
    /// `/ns/NAMESPACE/sa/SERVICE_ACCOUNT` after the trust domain.
    #[error("{0:?} is not a mesh SPIFFE ID: expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
    BadPath(String),
    /// One part of the ID breaks its naming rule.
    #[error("{value:?} has an invalid {part}: {reason}")]
    BadSegment {
        /// The whole ID, as text.
        value: String,
        /// Which part is invalid: `"trust domain"`, `"namespace"` or `"service account"`.
        part: &'static str,
        /// The rule it breaks, e.g. `is longer than 63 characters`.
        reason: String,
    },
}

/// Why a segment is not a valid SPIFFE trust domain; each message reads as the reason in
/// [`SpiffeIdError::BadSegment`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum TrustDomainError {
    #[error("it is empty")]
    Empty,
    #[error("it is longer than {} characters", crate::names::MAX_SUBDOMAIN)]
    TooLong,
    #[error("only lowercase letters, digits, '-', '.' and '_' are allowed")]
    BadCharacters,
    #[error("it must not contain empty parts ('..', or a leading or trailing '.')")]
    EmptyPart,
}

impl SpiffeId {
    /// Builds an ID from its parts, checking each one.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        let whole = format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}");
        check_segment(&whole, "trust domain", trust_domain)?;
        check_segment(&whole, "namespace", namespace)?;
        check_segment(&whole, "service account", service_account)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    /// The trust domain (`cluster.local` by default): the mesh the identity belongs to;
    /// an HBONE server refuses clients of any other.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The Kubernetes namespace of the workload (a DNS label).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Kubernetes service account the workload runs as (a DNS subdomain).
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The ID without its scheme, as Istio writes principals (`td/ns/x/sa/y`).
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

fn check_segment(whole: &str, part: &'static str, segment: &str) -> Result<(), SpiffeIdError> {
    let checked = match part {
        // Kubernetes namespaces are DNS labels, service accounts DNS subdomains.
        "namespace" => crate::names::check_dns_label(segment).map_err(|e| e.to_string()),
        "service account" => crate::names::check_dns_subdomain(segment).map_err(|e| e.to_string()),
        _ => check_trust_domain(segment).map_err(|e| e.to_string()),
    };
    checked.map_err(|reason| SpiffeIdError::BadSegment {
        value: whole.to_owned(),
        part,
        reason,
    })
}

/// A SPIFFE trust domain: lowercase letters, digits, '-', '.' and '_', no empty parts.
fn check_trust_domain(segment: &str) -> Result<(), TrustDomainError> {
    if segment.is_empty() {
        return Err(TrustDomainError::Empty);
    }
    if segment.len() > crate::names::MAX_SUBDOMAIN {
        return Err(TrustDomainError::TooLong);
    }
    let allowed =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_');
    if !segment.chars().all(allowed) {
        return Err(TrustDomainError::BadCharacters);
    }
    if segment.split('.').any(str::is_empty) {
        return Err(TrustDomainError::EmptyPart);
    }
    Ok(())
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let rest = value
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeIdError::MissingScheme(value.to_owned()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => SpiffeId::new(td, ns, sa),
            _ => Err(SpiffeIdError::BadPath(value.to_owned())),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> String {
        id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/order".parse().unwrap();
        assert_eq!(id.namespace(), "shop");
        assert_eq!(id.service_account(), "order");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/order");
        assert_eq!(id.principal(), "cluster.local/ns/shop/sa/order");
    }

    #[test]
    fn rejects_malformed_ids_with_the_reason() {
        let err = "cluster.local/ns/a/sa/b".parse::<SpiffeId>().unwrap_err();
        assert!(err.to_string().contains("spiffe://"), "{err}");
        let err = "spiffe://td/ns/a".parse::<SpiffeId>().unwrap_err();
        assert!(matches!(err, SpiffeIdError::BadPath(_)));
        let err = "spiffe://td/ns//sa/b".parse::<SpiffeId>().unwrap_err();
        assert!(err.to_string().contains("namespace"), "{err}");
        let err = "spiffe://td/ns/a b/sa/b".parse::<SpiffeId>().unwrap_err();
        assert!(err.to_string().contains("namespace"), "{err}");
    }

    #[test]
    fn trust_domain_errors_keep_their_wording() {
        let reason = |td: &str| match SpiffeId::new(td, "a", "b").unwrap_err() {
            SpiffeIdError::BadSegment { part, reason, .. } => {
                assert_eq!(part, "trust domain");
                reason
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(reason(""), "it is empty");
        assert_eq!(reason(&"a".repeat(254)), "it is longer than 253 characters");
        assert_eq!(
            reason("Cluster.local"),
            "only lowercase letters, digits, '-', '.' and '_' are allowed"
        );
        assert_eq!(
            reason("a..b"),
            "it must not contain empty parts ('..', or a leading or trailing '.')"
        );
    }

    #[test]
    fn rejects_path_tricks_and_non_dns_segments() {
        for bad in [
            "spiffe://cluster.local/ns/../sa/x",
            "spiffe://cluster.local/ns/./sa/x",
            "spiffe://cluster.local/ns/shop/sa/..",
            "spiffe://cluster.local/ns/shop/sa/a..b",
            "spiffe://cluster.local/ns/Shop/sa/x",
            "spiffe://cluster.local/ns/shop_1/sa/x",
            "spiffe://../ns/shop/sa/x",
            "spiffe://Cluster.local/ns/shop/sa/x",
            "spiffe://cluster.local/ns/shop/sa/x/extra",
        ] {
            assert!(bad.parse::<SpiffeId>().is_err(), "{bad} was accepted");
        }
        assert!("spiffe://cluster.local/ns/shop/sa/order.v2"
            .parse::<SpiffeId>()
            .is_ok());
    }
}
