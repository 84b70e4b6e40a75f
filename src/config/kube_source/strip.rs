//! What of each object the API server sends is kept: only the fields routing, identity,
//! enrollment and policy read. Every pod of the cluster is held on every node, so a pod
//! keeps its names, uid, labels, service account, node, host-network flag, container ports
//! and IPs, and nothing else (a full pod is typically 5-20 KiB of JSON; what is kept is a
//! few hundred bytes). Every kind loses `managedFields` and the client-side-apply copy of
//! itself in annotations.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The annotation `kubectl apply` stores the whole object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what no kind's translation reads from metadata.
pub(super) fn metadata(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.generate_name = None;
    meta.self_link = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// A pod reduced to what the mesh reads; `false` when the pod is to be treated as absent
/// (it finished: its IP may already belong to a new pod).
pub(super) fn pod(pod: &mut core::Pod) -> bool {
    metadata(&mut pod.metadata);
    // Pods carry many annotations of other tools; weft reads none of a pod's.
    pod.metadata.annotations = None;
    if let Some(spec) = pod.spec.as_mut() {
        let containers = std::mem::take(&mut spec.containers)
            .into_iter()
            .filter(|c| c.ports.as_ref().is_some_and(|p| !p.is_empty()))
            .map(|c| core::Container {
                name: c.name,
                ports: c.ports.map(|ports| {
                    ports
                        .into_iter()
                        .map(|p| core::ContainerPort {
                            container_port: p.container_port,
                            name: p.name,
                            protocol: p.protocol,
                            ..core::ContainerPort::default()
                        })
                        .collect()
                }),
                ..core::Container::default()
            })
            .collect();
        *spec = core::PodSpec {
            containers,
            host_network: spec.host_network,
            node_name: spec.node_name.take(),
            service_account_name: spec.service_account_name.take(),
            service_account: spec.service_account.take(),
            ..core::PodSpec::default()
        };
    }
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|phase| phase == "Succeeded" || phase == "Failed");
    if let Some(status) = pod.status.as_mut() {
        *status = core::PodStatus {
            phase: status.phase.take(),
            pod_ip: status.pod_ip.take(),
            pod_ips: status.pod_ips.take(),
            ..core::PodStatus::default()
        };
    }
    !finished
}

/// A Service keeps its spec (ports, selector, cluster IPs) and loses its status.
pub(super) fn service(service: &mut core::Service) -> bool {
    metadata(&mut service.metadata);
    service.status = None;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pod_keeps_only_what_the_mesh_reads() {
        let mut p: core::Pod = serde_json::from_value(json!({
            "metadata": {"name": "a", "namespace": "shop", "uid": "u1",
                "labels": {"app": "a"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{..}", "x": "y"},
                "managedFields": [{"manager": "kubectl"}]},
            "spec": {"nodeName": "node-1", "serviceAccountName": "order",
                "containers": [
                    {"name": "app", "image": "shop/app:1", "env": [{"name": "A", "value": "1"}],
                     "ports": [{"name": "http", "containerPort": 8080, "hostPort": 80}]},
                    {"name": "sidecar", "image": "log:1"}],
                "volumes": [{"name": "v", "emptyDir": {}}]},
            "status": {"phase": "Running", "podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}],
                "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let before = serde_json::to_vec(&p).unwrap().len();
        assert!(pod(&mut p));
        let kept = serde_json::to_value(&p).unwrap();
        assert_eq!(
            kept,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "a", "namespace": "shop", "uid": "u1", "labels": {"app": "a"}},
                "spec": {"nodeName": "node-1", "serviceAccountName": "order",
                    "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"phase": "Running", "podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}]}
            })
        );
        assert!(serde_json::to_vec(&p).unwrap().len() < before);
    }

    #[test]
    fn a_finished_pod_is_absent() {
        for phase in ["Succeeded", "Failed"] {
            let mut p: core::Pod = serde_json::from_value(json!({
                "metadata": {"name": "job", "namespace": "shop"},
                "status": {"phase": phase, "podIP": "10.1.0.9"}
            }))
            .unwrap();
            assert!(!pod(&mut p), "{phase}");
        }
    }
}
