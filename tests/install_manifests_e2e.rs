//! The install manifests against a real kube-apiserver (with etcd, RBAC and admission):
//! `kubectl kustomize deploy/kubernetes` renders and matches the committed one-file install
//! (`deploy/kubernetes/weft.yaml`); `kubectl apply --dry-run=server -k` accepts every object
//! (CRDs, RBAC, ConfigMap, DaemonSet) and a Pod made from the DaemonSet's template passes
//! Pod admission in weft-system; a broken DaemonSet is refused; and the weft-node
//! ServiceAccount can do exactly what the daemon needs: the verbs it uses succeed, others
//! get 403.

mod common;

use std::path::Path;
use std::process::Command;

use common::apiserver::ApiServer;
use common::testbed::e2e_ready;
use serde_json::Value;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs kubectl; (success, stdout + stderr).
fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn ok(kubeconfig: &Path, args: &[&str]) -> String {
    let (success, text) = kubectl(kubeconfig, args);
    assert!(success, "kubectl {args:?} failed: {text}");
    text
}

/// The verb is refused by RBAC (403 Forbidden).
fn forbidden(kubeconfig: &Path, args: &[&str]) {
    let (success, text) = kubectl(kubeconfig, args);
    assert!(
        !success && text.to_lowercase().contains("forbidden"),
        "kubectl {args:?} as weft-node should be forbidden: {text}"
    );
}

#[test]
fn the_install_manifests_are_accepted_and_rbac_is_exactly_what_weft_node_needs() {
    if !(e2e_ready(&["kubectl"]) && ApiServer::available()) {
        return;
    }
    // Rendering: the committed one-file install is what kustomize makes of the directory.
    let rendered = Command::new("kubectl")
        .args(["kustomize"])
        .arg(repo("deploy/kubernetes"))
        .output()
        .expect("kubectl kustomize");
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let committed = std::fs::read_to_string(repo("deploy/kubernetes/weft.yaml")).unwrap();
    let body: String = committed
        .lines()
        .skip_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        body,
        String::from_utf8_lossy(&rendered.stdout),
        "deploy/kubernetes/weft.yaml is stale: run scripts/render-manifests.sh"
    );

    let server = ApiServer::start_alone();
    let dir = tempfile::tempdir().unwrap();
    let admin = dir.path().join("admin.yaml");
    server.admin_kubeconfig_local(&admin);

    // A server-side dry run needs the namespace and the CRDs' API to exist for real.
    ok(
        &admin,
        &[
            "apply",
            "-f",
            repo("deploy/kubernetes/namespace.yaml").to_str().unwrap(),
        ],
    );
    let dry = ok(
        &admin,
        &[
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "-k",
            repo("deploy/kubernetes").to_str().unwrap(),
        ],
    );
    for object in [
        "customresourcedefinition.apiextensions.k8s.io/authorizationpolicies.weft.dev",
        "serviceaccount/weft-node",
        "role.rbac.authorization.k8s.io/weft-node",
        "clusterrole.rbac.authorization.k8s.io/weft-node",
        "rolebinding.rbac.authorization.k8s.io/weft-node",
        "clusterrolebinding.rbac.authorization.k8s.io/weft-node",
        "configmap/weft-node-config",
        "daemonset.apps/weft-node",
    ] {
        assert!(
            dry.contains(object),
            "dry run did not cover {object}: {dry}"
        );
    }
    // For real, then the DaemonSet's pod template through Pod admission (priority class,
    // Pod Security in weft-system, the pod spec's validation).
    ok(
        &admin,
        &[
            "apply",
            "--validate=strict",
            "-k",
            repo("deploy/kubernetes").to_str().unwrap(),
        ],
    );
    let daemonset: Value = serde_json::from_str(&ok(
        &admin,
        &[
            "-n",
            "weft-system",
            "get",
            "daemonset",
            "weft-node",
            "-o",
            "json",
        ],
    ))
    .unwrap();
    assert_eq!(
        daemonset["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"],
        1
    );
    assert_eq!(
        daemonset["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    let template = &daemonset["spec"]["template"];
    assert_eq!(
        template["spec"]["priorityClassName"],
        "system-node-critical"
    );
    assert_eq!(template["spec"]["securityContext"].get("privileged"), None);
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "weft-node-template-check", "namespace": "weft-system",
                     "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    });
    let pod_file = dir.path().join("pod.json");
    std::fs::write(&pod_file, pod.to_string()).unwrap();
    ok(
        &admin,
        &[
            "create",
            "--dry-run=server",
            "-f",
            pod_file.to_str().unwrap(),
        ],
    );

    // Validation is real: a DaemonSet that could never roll is refused.
    let mut broken = daemonset.clone();
    broken["metadata"] = serde_json::json!({"name": "broken", "namespace": "weft-system"});
    broken["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"] = 0.into();
    let broken_file = dir.path().join("broken.json");
    std::fs::write(&broken_file, broken.to_string()).unwrap();
    let (accepted, text) = kubectl(
        &admin,
        &[
            "create",
            "--dry-run=server",
            "-f",
            broken_file.to_str().unwrap(),
        ],
    );
    assert!(
        !accepted && text.contains("maxUnavailable"),
        "a DaemonSet with maxSurge and maxUnavailable 0 was accepted: {text}"
    );

    // RBAC as the weft-node ServiceAccount.
    let other = serde_json::json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "other", "namespace": "weft-system"}, "spec": daemonset["spec"]});
    let other_file = dir.path().join("other.json");
    std::fs::write(&other_file, other.to_string()).unwrap();
    ok(&admin, &["create", "-f", other_file.to_str().unwrap()]);
    let token = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(server.service_account_token("weft-system", "weft-node", 600));
    let node = dir.path().join("node.yaml");
    server.token_kubeconfig_local(&node, &token);
    for resource in [
        "pods",
        "namespaces",
        "services",
        "endpointslices.discovery.k8s.io",
        "authorizationpolicies.weft.dev",
        "peerauthentications.weft.dev",
    ] {
        ok(&node, &["get", resource, "--all-namespaces"]);
    }
    ok(
        &node,
        &["-n", "weft-system", "get", "daemonset", "weft-node"],
    );
    forbidden(&node, &["-n", "weft-system", "get", "daemonset", "other"]);
    forbidden(&node, &["-n", "weft-system", "get", "daemonsets"]);
    forbidden(
        &node,
        &["-n", "weft-system", "delete", "daemonset", "weft-node"],
    );
    forbidden(
        &node,
        &[
            "-n",
            "weft-system",
            "label",
            "daemonset",
            "weft-node",
            "x=y",
        ],
    );
    forbidden(&node, &["get", "secrets", "--all-namespaces"]);
    forbidden(
        &node,
        &["-n", "weft-system", "get", "configmap", "weft-node-config"],
    );
    forbidden(&node, &["-n", "default", "run", "x", "--image=busybox"]);
    forbidden(&node, &["-n", "default", "delete", "pod", "x"]);
    forbidden(&node, &["label", "namespace", "default", "x=y"]);
    forbidden(&node, &["get", "certificatesigningrequests"]);
    forbidden(&node, &["-n", "weft-system", "create", "configmap", "x"]);
}
