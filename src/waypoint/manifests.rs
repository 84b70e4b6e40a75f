//! `weft waypoint manifests`: the objects that make a waypoint, so deploying one is a
//! single `kubectl apply`: its ServiceAccount (its identity) bound to the `weft-waypoint`
//! ClusterRole and the `weft-ca-root-reader` Role (deploy/kubernetes/waypoint-rbac.yaml:
//! read the model, ask weft signer for its own certificate, read the trust bundle), a
//! Deployment of `weft waypoint` (two replicas spread across nodes, readiness on 15021, not
//! captured by the node daemons: the waypoint does its own mTLS), a PodDisruptionBudget that
//! keeps one replica through drains, and the Service of that name that
//! `weft.dev/use-waypoint` points at (HBONE on 15008).

use serde_json::{json, Value};

use crate::model::enrollment::DATAPLANE_MODE_LABEL;
use crate::names::{check_dns_label, NameError};

/// The image `weft waypoint manifests` uses unless told otherwise.
pub const DEFAULT_IMAGE: &str = "ghcr.io/weft-mesh/weft:0.1.0";

/// What to render.
#[derive(Debug, Clone)]
pub struct Options {
    /// The namespace served.
    pub namespace: String,
    /// The waypoint's name.
    pub name: String,
    /// The weft image.
    pub image: String,
    /// Deployment replicas.
    pub replicas: u32,
}

/// Why the manifests could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// `--namespace` or `--name` is not a DNS label.
    #[error("--{flag} {value:?}: {source}")]
    BadName {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
        /// Why.
        source: NameError,
    },
    /// `--replicas 0`.
    #[error("--replicas must be at least 1")]
    NoReplicas,
    /// YAML rendering failed.
    #[error("rendering YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// The manifests as multi-document YAML (the ClusterRole and Role they bind come with the
/// install, deploy/kubernetes/waypoint-rbac.yaml).
pub fn render(options: &Options) -> Result<String, ManifestError> {
    for (flag, value) in [("namespace", &options.namespace), ("name", &options.name)] {
        check_dns_label(value).map_err(|source| ManifestError::BadName {
            flag,
            value: value.clone(),
            source,
        })?;
    }
    if options.replicas == 0 {
        return Err(ManifestError::NoReplicas);
    }
    let mut out = String::new();
    for doc in objects(options) {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&doc)?);
    }
    Ok(out)
}

fn objects(o: &Options) -> Vec<Value> {
    let (ns, name) = (o.namespace.as_str(), o.name.as_str());
    let labels = json!({
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": "waypoint",
        "app.kubernetes.io/part-of": "weft",
    });
    let selector =
        json!({"app.kubernetes.io/name": name, "app.kubernetes.io/component": "waypoint"});
    let mut pod_labels = labels.clone();
    pod_labels[DATAPLANE_MODE_LABEL] = json!("none");
    let service_account = json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
    });
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "replicas": o.replicas,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "serviceAccountName": name,
                    "terminationGracePeriodSeconds": 15,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "topologySpreadConstraints": [{
                        "maxSkew": 1,
                        "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {"matchLabels": selector},
                    }],
                    "containers": [{
                        "name": "waypoint",
                        "image": o.image,
                        "args": ["waypoint", "--name", name, "--log-format", "json"],
                        "env": [
                            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "WEFT_GRACE_PERIOD", "value": "10s"},
                        ],
                        "ports": [
                            {"name": "hbone", "containerPort": 15008, "protocol": "TCP"},
                            {"name": "metrics", "containerPort": 15020, "protocol": "TCP"},
                            {"name": "readiness", "containerPort": 15021, "protocol": "TCP"},
                        ],
                        "readinessProbe": {
                            "httpGet": {"path": "/healthz/ready", "port": 15021},
                            "periodSeconds": 2,
                        },
                        "resources": {
                            "requests": {"cpu": "50m", "memory": "32Mi"},
                            "limits": {"memory": "256Mi"},
                        },
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }],
                },
            },
        },
    });
    let budget = json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": selector}},
    });
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "selector": selector,
            "ports": [{"name": "mesh", "port": 15008, "targetPort": 15008, "protocol": "TCP"}],
        },
    });
    let binding_name = format!("weft-waypoint-{ns}-{name}");
    let subject = json!([{"kind": "ServiceAccount", "name": name, "namespace": ns}]);
    let cluster_binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": binding_name, "labels": labels},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "weft-waypoint"},
        "subjects": subject,
    });
    let root_binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": binding_name, "namespace": "weft-system", "labels": labels},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "weft-ca-root-reader"},
        "subjects": subject,
    });
    vec![
        service_account,
        cluster_binding,
        root_binding,
        deployment,
        budget,
        service,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(namespace: &str, name: &str) -> Options {
        Options {
            namespace: namespace.into(),
            name: name.into(),
            image: DEFAULT_IMAGE.into(),
            replicas: 2,
        }
    }

    #[test]
    fn renders_the_waypoint_and_its_bindings() {
        let text = render(&options("shop", "shop-waypoint")).unwrap();
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde_yaml::with::singleton_map_recursive::deserialize(d).unwrap())
            .collect();
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "ServiceAccount",
                "ClusterRoleBinding",
                "RoleBinding",
                "Deployment",
                "PodDisruptionBudget",
                "Service"
            ]
        );
        let pod = &docs[3]["spec"]["template"];
        assert_eq!(pod["metadata"]["labels"][DATAPLANE_MODE_LABEL], "none");
        assert_eq!(pod["spec"]["serviceAccountName"], "shop-waypoint");
        assert_eq!(docs[3]["spec"]["replicas"], 2);
        assert_eq!(docs[5]["spec"]["ports"][0]["port"], 15008);
        assert_eq!(docs[1]["subjects"][0]["namespace"], "shop");
        assert_eq!(docs[2]["metadata"]["namespace"], "weft-system");
    }

    #[test]
    fn refuses_bad_names() {
        let error = render(&options("Shop", "w")).unwrap_err().to_string();
        assert!(error.starts_with("--namespace \"Shop\""), "{error}");
        let mut zero = options("shop", "w");
        zero.replicas = 0;
        assert!(render(&zero).is_err());
    }
}
