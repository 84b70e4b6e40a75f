//! Fault injection: the FaultInjection rules of the Service called, compiled once per model
//! snapshot, and the decision for one request.
//!
//! The first rule whose matches (HTTPRoute matches, tested on the request as it arrived)
//! and source namespaces fit the request decides; its delay and its abort are each drawn
//! with their own percentage. A delayed request waits, then goes on (response flag `DI`);
//! an aborted one is answered here, with the HTTP status or, for gRPC, a trailers-only
//! response carrying the gRPC status (flag `FI`). `weft_waypoint_faults_injected_total`
//! counts both, by destination service, fault and FaultInjection.

use std::time::Duration;

use super::route_table::{RequestMatcher, RequestView};
use crate::model::traffic_policies::Abort;
use crate::model::{MeshSnapshot, Service};

/// Counter: faults injected, by destination service, fault (`delay` or `abort`) and policy.
pub const FAULTS_TOTAL: &str = "weft_waypoint_faults_injected_total";

struct CompiledRule {
    /// `namespace/name` of its FaultInjection.
    policy: String,
    matchers: Vec<RequestMatcher>,
    source_namespaces: Vec<String>,
    delay: Option<(Duration, f64)>,
    abort: Option<(Abort, f64)>,
}

/// The fault rules of one Service, in order.
#[derive(Default)]
pub struct ServiceFaults {
    rules: Vec<CompiledRule>,
}

/// What to do to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Injected {
    /// Hold it this long first.
    pub delay: Option<Duration>,
    /// Answer it with this instead of forwarding it.
    pub abort: Option<Abort>,
    /// `namespace/name` of the FaultInjection, for logs and metrics.
    pub policy: String,
}

// === impl ServiceFaults ===

impl ServiceFaults {
    /// The rules of every FaultInjection that targets `service`, in (namespace, name)
    /// order.
    pub fn build(snapshot: &MeshSnapshot, service: &Service) -> Self {
        let rules = snapshot
            .fault_injections_for(&service.namespace, &service.name)
            .flat_map(|faults| {
                let policy = format!("{}/{}", faults.namespace, faults.name);
                faults.rules.iter().map(move |rule| CompiledRule {
                    policy: policy.clone(),
                    matchers: rule.matches.iter().map(RequestMatcher::compile).collect(),
                    source_namespaces: rule.source_namespaces.clone(),
                    delay: rule.delay,
                    abort: rule.abort,
                })
            })
            .collect();
        ServiceFaults { rules }
    }

    /// Whether no rule targets the Service.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The faults for `request` from a caller in `caller_namespace`, drawn with `roll`
    /// (uniform in [0, 100)); `None` when none applies.
    pub fn decide(
        &self,
        request: &RequestView<'_>,
        caller_namespace: &str,
        roll: &mut impl FnMut() -> f64,
    ) -> Option<Injected> {
        let rule = self.rules.iter().find(|rule| {
            (rule.source_namespaces.is_empty()
                || rule.source_namespaces.iter().any(|n| n == caller_namespace))
                && (rule.matchers.is_empty() || rule.matchers.iter().any(|m| m.matches(request)))
        })?;
        let delay = rule
            .delay
            .and_then(|(delay, percent)| (roll() < percent).then_some(delay));
        let abort = rule
            .abort
            .and_then(|(abort, percent)| (roll() < percent).then_some(abort));
        (delay.is_some() || abort.is_some()).then(|| Injected {
            delay,
            abort,
            policy: rule.policy.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, Method};

    use super::*;
    use crate::model::translate::parse_and_build;

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: pay, namespace: shop}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
---
apiVersion: weft.dev/v1alpha1
kind: FaultInjection
metadata: {name: chaos, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: pay}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /checkout}}]
    sourceNamespaces: [test]
    abort: {httpStatus: 500, percentage: {value: 10}}
  - matches: [{path: {type: PathPrefix, value: /slow}, method: GET}]
    delay: {fixedDelay: 300ms}
"#;

    fn view<'a>(method: &'a Method, path: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
        RequestView {
            method,
            path,
            query: None,
            headers,
        }
    }

    #[test]
    fn the_first_matching_rule_decides_with_its_percentages() {
        let snapshot = parse_and_build(CLUSTER).unwrap();
        let pay = snapshot.service("shop", "pay").unwrap();
        let faults = ServiceFaults::build(&snapshot, pay);
        let headers = HeaderMap::new();
        let get = Method::GET;
        let checkout = view(&get, "/checkout/cart", &headers);
        // 10%: a roll under 10 aborts, one over does not.
        let aborted = faults.decide(&checkout, "test", &mut || 9.9).unwrap();
        assert_eq!(aborted.abort, Some(Abort::Http(500)));
        assert_eq!(aborted.policy, "shop/chaos");
        assert_eq!(faults.decide(&checkout, "test", &mut || 10.0), None);
        // Only callers from namespace test.
        assert_eq!(faults.decide(&checkout, "shop", &mut || 0.0), None);
        // Over 1,000 evenly spread rolls, exactly 10% abort.
        let mut n = 0u32;
        let mut next = || {
            n += 1;
            f64::from(n - 1) / 10.0
        };
        let count = (0..1000)
            .filter(|_| faults.decide(&checkout, "test", &mut next).is_some())
            .count();
        assert_eq!(count, 100);
        let slow = faults
            .decide(&view(&get, "/slow", &headers), "shop", &mut || 50.0)
            .unwrap();
        assert_eq!(
            (slow.delay, slow.abort),
            (Some(Duration::from_millis(300)), None)
        );
        let post = Method::POST;
        assert_eq!(
            faults.decide(&view(&post, "/slow", &headers), "shop", &mut || 0.0),
            None
        );
        let other = parse_and_build(&CLUSTER.replace("name: pay}]", "name: other}]")).unwrap();
        assert!(ServiceFaults::build(&other, other.service("shop", "pay").unwrap()).is_empty());
    }
}
