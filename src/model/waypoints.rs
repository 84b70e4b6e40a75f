//! Which waypoint carries a bound Service's traffic. A Service (or its namespace) labelled
//! `weft.dev/use-waypoint=<name>` is served by the waypoint `<name>` of its namespace: the
//! Service of that name (as `weft waypoint manifests` creates it) and its ready pods. A
//! bound Service whose waypoint is missing or has no ready pod gets no route at all, never a
//! route straight to its endpoints: L7 policy cannot be bypassed by a waypoint outage.
//!
//! The waypoint's own Service is never bound to itself (a namespace-wide label would
//! otherwise send the waypoint's traffic to the waypoint).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use super::{MeshSnapshot, Service, Workload};

/// A waypoint that can take a bound Service's traffic.
#[derive(Debug)]
pub struct WaypointTarget<'a> {
    /// The waypoint's Service.
    pub service: &'a Arc<Service>,
    /// Its ready pods, in endpoint order, one per IP.
    pub pods: Vec<WaypointPod<'a>>,
}

/// One ready waypoint pod.
#[derive(Debug)]
pub struct WaypointPod<'a> {
    /// Where its HBONE listener is (port 15008).
    pub ip: IpAddr,
    /// The pod, when the model knows it (its identity is what the node verifies).
    pub workload: Option<&'a Arc<Workload>>,
}

/// Why a bound Service's traffic has nowhere to go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoWaypoint {
    /// The named waypoint does not exist.
    #[error("service {service} is bound to waypoint {waypoint}, but there is no Service {namespace}/{waypoint}; its traffic is refused until the waypoint is deployed")]
    Missing {
        /// The bound Service, `namespace/name`.
        service: String,
        /// The waypoint's name.
        waypoint: String,
        /// Where it was looked for.
        namespace: String,
    },
    /// The waypoint has no ready pod.
    #[error("service {service} is bound to waypoint {namespace}/{waypoint}, which has no ready pod; its traffic is refused until one is ready")]
    NoReadyPod {
        /// The bound Service, `namespace/name`.
        service: String,
        /// The waypoint's name.
        waypoint: String,
        /// Its namespace.
        namespace: String,
    },
}

impl MeshSnapshot {
    /// The waypoint `service` is bound to: `Ok(None)` when it is bound to none (or is the
    /// waypoint's own Service), `Err` when it is bound but the waypoint cannot take traffic.
    pub fn waypoint_for(
        &self,
        service: &Service,
    ) -> Result<Option<WaypointTarget<'_>>, NoWaypoint> {
        let Some(name) = service.waypoint.as_deref() else {
            return Ok(None);
        };
        if name == service.name {
            return Ok(None);
        }
        let bound = format!("{}/{}", service.namespace, service.name);
        let Some(waypoint) = self.service(&service.namespace, name) else {
            return Err(NoWaypoint::Missing {
                service: bound,
                waypoint: name.to_owned(),
                namespace: service.namespace.clone(),
            });
        };
        let mut seen = BTreeSet::new();
        let pods: Vec<WaypointPod<'_>> = waypoint
            .endpoints
            .iter()
            .filter(|ep| seen.insert(ep.ip))
            .map(|ep| WaypointPod {
                ip: ep.ip,
                workload: ep
                    .workload_uid
                    .as_deref()
                    .and_then(|uid| self.workload_by_uid(uid))
                    .or_else(|| self.workload_by_ip(ep.ip)),
            })
            .collect();
        if pods.is_empty() {
            return Err(NoWaypoint::NoReadyPod {
                service: bound,
                waypoint: name.to_owned(),
                namespace: service.namespace.clone(),
            });
        }
        Ok(Some(WaypointTarget {
            service: waypoint,
            pods,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::translate::parse_and_build;

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {weft.dev/use-waypoint: shop-waypoint}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Pod
metadata: {name: shop-waypoint-1, namespace: shop, labels: {app: shop-waypoint}}
spec: {nodeName: node-1, serviceAccountName: shop-waypoint}
status: {podIP: 10.1.1.9}
---
apiVersion: v1
kind: Service
metadata: {name: shop-waypoint, namespace: shop}
spec: {clusterIP: 10.96.0.9, selector: {app: shop-waypoint}, ports: [{name: hbone, port: 15008}]}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: direct, namespace: shop, labels: {weft.dev/use-waypoint: none}}
spec: {clusterIP: 10.96.0.11, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: orphan, namespace: plain, labels: {weft.dev/use-waypoint: gone}}
spec: {clusterIP: 10.96.0.12, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: idle, namespace: plain, labels: {weft.dev/use-waypoint: idle-waypoint}}
spec: {clusterIP: 10.96.0.13, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: idle-waypoint, namespace: plain}
spec: {clusterIP: 10.96.0.14, selector: {app: nothing}, ports: [{port: 15008}]}
"#;

    #[test]
    fn bound_services_go_to_their_waypoint_or_nowhere() {
        let snapshot = parse_and_build(CLUSTER).unwrap();
        let service = |ns: &str, name: &str| snapshot.service(ns, name).unwrap().clone();

        let target = snapshot
            .waypoint_for(&service("shop", "cart"))
            .unwrap()
            .unwrap();
        assert_eq!(target.service.name, "shop-waypoint");
        assert_eq!(target.pods.len(), 1);
        assert_eq!(target.pods[0].ip, "10.1.1.9".parse::<IpAddr>().unwrap());
        assert_eq!(target.pods[0].workload.unwrap().name, "shop-waypoint-1");

        // Opted out; the waypoint's own Service; not bound at all.
        assert!(snapshot
            .waypoint_for(&service("shop", "direct"))
            .unwrap()
            .is_none());
        assert!(snapshot
            .waypoint_for(&service("shop", "shop-waypoint"))
            .unwrap()
            .is_none());
        assert!(snapshot
            .waypoint_for(&service("plain", "idle-waypoint"))
            .unwrap()
            .is_none());

        // Bound, but nothing can take the traffic: refused, never sent around the waypoint.
        let missing = snapshot
            .waypoint_for(&service("plain", "orphan"))
            .unwrap_err();
        assert!(matches!(missing, NoWaypoint::Missing { .. }), "{missing}");
        assert!(missing.to_string().contains("plain/gone"), "{missing}");
        let idle = snapshot
            .waypoint_for(&service("plain", "idle"))
            .unwrap_err();
        assert!(matches!(idle, NoWaypoint::NoReadyPod { .. }), "{idle}");
    }
}
