//! The install manifests against a real kube-apiserver (with etcd, RBAC and admission):
//! `kubectl kustomize deploy/kubernetes` renders and matches the committed one-file install
//! (`deploy/kubernetes/weft.yaml`); `kubectl apply --dry-run=server -k` accepts every object
//! (CRDs, namespace, RBAC, ConfigMap, DaemonSet), then the real apply; a Pod made from the
//! DaemonSet's template passes Pod admission in weft-system (priority class, Pod Security)
//! and is refused where Pod Security is `baseline`; broken DaemonSets are refused; and the
//! weft-node ServiceAccount can do exactly what the daemon needs: the verbs it uses succeed,
//! others get 403.
//!
//! Needs root, kubectl and the binaries of scripts/build-apiserver.sh (skipped otherwise,
//! unless WEFT_E2E=1).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use base64::Engine;
use serde_json::{json, Value};

use common::apiserver::ApiServer;
use common::testbed::e2e_ready;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn repo_str(path: &str) -> String {
    repo(path).display().to_string()
}

/// kubectl with one kubeconfig and a discovery cache of the test's own (nothing in ~/.kube).
struct Kubectl {
    kubeconfig: PathBuf,
    cache: PathBuf,
}

impl Kubectl {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .arg("--request-timeout=60s")
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs kubectl; (success, stdout + stderr).
    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = self
            .command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run kubectl {args:?}: {e}"));
        (out.status.success(), output_text(&out))
    }

    fn ok(&self, args: &[&str]) -> String {
        let (success, text) = self.run(args);
        assert!(success, "kubectl {args:?} failed: {text}");
        text
    }

    /// The request is refused by RBAC (403 Forbidden).
    fn forbidden(&self, args: &[&str]) {
        let (success, text) = self.run(args);
        assert!(
            !success && rbac_denied(&text),
            "kubectl {args:?} as weft-node should be forbidden: {text}"
        );
    }

    /// `kubectl <args> -f <file>` with `object` written to a temp file.
    fn with_object(&self, dir: &Path, object: &Value, args: &[&str]) -> (bool, String) {
        let name = object["metadata"]["name"].as_str().unwrap_or("object");
        let file = dir.join(format!("{name}-{}.json", args.join("_")));
        std::fs::write(&file, object.to_string()).unwrap();
        let file = file.display().to_string();
        let mut all = args.to_vec();
        all.extend(["-f", file.as_str()]);
        self.run(&all)
    }
}

/// kubectl's words for a 403 of RBAC to weft-node (not of admission, not another error).
fn rbac_denied(text: &str) -> bool {
    text.contains("is forbidden: User \"system:serviceaccount:weft-system:weft-node\" cannot")
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `kubectl get --raw` of every path at once (watches take their timeout each), each
/// answered with (success, output).
fn raw_all(kubectl: &Kubectl, paths: &[String]) -> Vec<(String, bool, String)> {
    let children: Vec<(String, Child)> = paths
        .iter()
        .map(|path| {
            let child = kubectl
                .command(&["get", "--raw", path])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn kubectl");
            (path.clone(), child)
        })
        .collect();
    children
        .into_iter()
        .map(|(path, child)| {
            let out = child.wait_with_output().expect("kubectl get --raw");
            (path, out.status.success(), output_text(&out))
        })
        .collect()
}

/// The DaemonSet's container, by name.
fn container(daemonset: &Value) -> &Value {
    daemonset["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "weft-node")
        .expect("the weft-node container")
}

#[test]
fn the_install_manifests_are_accepted_and_rbac_is_exactly_what_weft_node_needs() {
    if !(e2e_ready(&["kubectl"]) && ApiServer::available()) {
        return;
    }
    // 1. Rendering: the committed one-file install is what kustomize makes of the directory.
    let rendered = Command::new("kubectl")
        .arg("kustomize")
        .arg(repo("deploy/kubernetes"))
        .output()
        .expect("kubectl kustomize");
    assert!(
        rendered.status.success(),
        "kubectl kustomize deploy/kubernetes: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let committed = std::fs::read_to_string(repo("deploy/kubernetes/weft.yaml")).unwrap();
    assert!(
        committed.starts_with("# Generated by scripts/render-manifests.sh"),
        "weft.yaml must say how it is made"
    );
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
    let tmp = dir.path();
    let admin = Kubectl {
        kubeconfig: tmp.join("admin.yaml"),
        cache: tmp.join("cache-admin"),
    };
    server.admin_kubeconfig_local(&admin.kubeconfig);

    // 2. A server-side dry run of namespaced objects needs their namespace to exist for real,
    //    so the namespace and the CRDs first, then the whole kustomization.
    admin.ok(&["apply", "-f", &repo_str("deploy/kubernetes/namespace.yaml")]);
    admin.ok(&["apply", "-k", &repo_str("deploy/kubernetes/crds")]);
    let kustomization = repo_str("deploy/kubernetes");
    let dry = admin.ok(&[
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-k",
        &kustomization,
    ]);
    for object in [
        "namespace/weft-system",
        "customresourcedefinition.apiextensions.k8s.io/authorizationpolicies.weft.dev",
        "customresourcedefinition.apiextensions.k8s.io/peerauthentications.weft.dev",
        "customresourcedefinition.apiextensions.k8s.io/destinationpolicies.weft.dev",
        "customresourcedefinition.apiextensions.k8s.io/faultinjections.weft.dev",
        "serviceaccount/weft-node",
        "role.rbac.authorization.k8s.io/weft-node",
        "clusterrole.rbac.authorization.k8s.io/weft-node",
        "rolebinding.rbac.authorization.k8s.io/weft-node",
        "clusterrolebinding.rbac.authorization.k8s.io/weft-node",
        "configmap/weft-node-config",
        "daemonset.apps/weft-node",
        "serviceaccount/weft-signer",
        "clusterrole.rbac.authorization.k8s.io/weft-signer",
        "role.rbac.authorization.k8s.io/weft-signer",
        "deployment.apps/weft-signer",
    ] {
        assert!(
            dry.lines()
                .any(|l| l.starts_with(&format!("{object} ")) && l.ends_with("(server dry run)")),
            "the dry run did not cover {object}:\n{dry}"
        );
    }
    // The dry run wrote nothing.
    let (exists, _) = admin.run(&["-n", "weft-system", "get", "daemonset", "weft-node"]);
    assert!(!exists, "a server dry run created the DaemonSet");

    // For real.
    admin.ok(&["apply", "--validate=strict", "-k", &kustomization]);
    let daemonset: Value = serde_json::from_str(&admin.ok(&[
        "-n",
        "weft-system",
        "get",
        "daemonset",
        "weft-node",
        "-o",
        "json",
    ]))
    .unwrap();
    let rolling = &daemonset["spec"]["updateStrategy"]["rollingUpdate"];
    assert_eq!(rolling["maxSurge"], 1, "{rolling}");
    assert_eq!(rolling["maxUnavailable"], 0, "{rolling}");
    let template = &daemonset["spec"]["template"];
    assert_eq!(
        template["spec"]["priorityClassName"],
        "system-node-critical"
    );
    assert_eq!(template["spec"]["hostNetwork"], true);
    let weft_node = container(&daemonset);
    let security = &weft_node["securityContext"];
    assert_eq!(security["privileged"], false, "{security}");
    assert_eq!(security["runAsUser"], 0, "{security}");
    assert_eq!(security["readOnlyRootFilesystem"], true, "{security}");
    assert_eq!(
        security["capabilities"]["drop"],
        json!(["ALL"]),
        "{security}"
    );
    assert_eq!(
        security["capabilities"]["add"],
        json!([
            "NET_ADMIN",
            "SYS_ADMIN",
            "NET_RAW",
            "SYS_PTRACE",
            "DAC_OVERRIDE"
        ]),
        "{security}"
    );
    for port in weft_node["ports"].as_array().expect("ports") {
        assert_eq!(port["hostPort"], port["containerPort"], "{port}");
    }
    assert_eq!(
        weft_node["command"].as_array().unwrap().last().unwrap(),
        "--cni-install"
    );
    // Nodes hold no CA key: no --ca-dir, no Secret volume; only weft-signer mounts weft-ca.
    assert!(
        !weft_node["command"].to_string().contains("--ca-dir"),
        "{}",
        weft_node["command"]
    );
    let volumes = &template["spec"]["volumes"];
    assert!(
        volumes
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v.get("secret").is_none()),
        "the DaemonSet mounts a Secret: {volumes}"
    );
    let signer: Value = serde_json::from_str(&admin.ok(&[
        "-n",
        "weft-system",
        "get",
        "deployment",
        "weft-signer",
        "-o",
        "json",
    ]))
    .unwrap();
    let signer_volumes = &signer["spec"]["template"]["spec"]["volumes"];
    assert_eq!(
        signer_volumes[0]["secret"]["secretName"], "weft-ca",
        "{signer_volumes}"
    );

    // The pod template through Pod admission in weft-system: the priority class resolves,
    // Pod Security (privileged here) admits it, the ServiceAccount exists.
    let pod = |ns: &str| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "weft-node-template-check", "namespace": ns,
                         "labels": template["metadata"]["labels"]},
            "spec": template["spec"],
        })
    };
    let (admitted, text) = admin.with_object(
        tmp,
        &pod("weft-system"),
        &["create", "--dry-run=server", "-o", "json"],
    );
    assert!(admitted, "the DaemonSet's pod was refused: {text}");
    let admitted: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        admitted["spec"]["priority"], 2_000_001_000,
        "{}",
        admitted["spec"]
    );
    // Pod Security is real: where it is `baseline`, the same pod is refused.
    admin.ok(&["create", "namespace", "weft-baseline-check"]);
    admin.ok(&[
        "label",
        "namespace",
        "weft-baseline-check",
        "pod-security.kubernetes.io/enforce=baseline",
    ]);
    admin.ok(&[
        "-n",
        "weft-baseline-check",
        "create",
        "serviceaccount",
        "weft-node",
    ]);
    let (admitted, text) = admin.with_object(
        tmp,
        &pod("weft-baseline-check"),
        &["create", "--dry-run=server"],
    );
    assert!(
        !admitted && text.contains("violates PodSecurity") && text.contains("hostNetwork"),
        "a baseline namespace admitted weft-node's pod: {text}"
    );

    // Validation is real. A copy of weft's DaemonSet under another name, broken each time:
    let copy_named = |name: &str| {
        let mut copy = daemonset.clone();
        copy["metadata"] = json!({"name": name, "namespace": "weft-system"});
        copy
    };
    // One that could never roll:
    let mut broken = copy_named("broken");
    broken["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"] = 0.into();
    let (accepted, text) = admin.with_object(tmp, &broken, &["create", "--dry-run=server"]);
    assert!(
        !accepted && text.contains("maxUnavailable"),
        "a DaemonSet with maxSurge and maxUnavailable 0 was accepted: {text}"
    );
    // A misspelt field, with strict validation:
    let mut broken = copy_named("broken");
    broken["spec"]["template"]["spec"]["containers"][0]["securityContxt"] = json!({});
    let (accepted, text) = admin.with_object(
        tmp,
        &broken,
        &["apply", "--dry-run=server", "--validate=strict"],
    );
    assert!(
        !accepted && text.contains("unknown field") && text.contains("securityContxt"),
        "a DaemonSet with an unknown field was accepted: {text}"
    );
    // And why allowPrivilegeEscalation is true: the server refuses `false` with CAP_SYS_ADMIN.
    let mut broken = copy_named("broken");
    let security = &mut broken["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    security["allowPrivilegeEscalation"] = false.into();
    security["capabilities"]["add"] = json!(["NET_ADMIN", "CAP_SYS_ADMIN"]);
    let (accepted, text) = admin.with_object(tmp, &broken, &["create", "--dry-run=server"]);
    assert!(
        !accepted && text.contains("allowPrivilegeEscalation"),
        "allowPrivilegeEscalation false with CAP_SYS_ADMIN was accepted: {text}"
    );

    // 3. RBAC as the weft-node ServiceAccount. Another DaemonSet beside weft's own first.
    let other = copy_named("other");
    let (created, text) = admin.with_object(tmp, &other, &["create"]);
    assert!(created, "creating weft-system/other: {text}");
    let token = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(server.service_account_token("weft-system", "weft-node", 600));
    let node = Kubectl {
        kubeconfig: tmp.join("node.yaml"),
        cache: tmp.join("cache-node"),
    };
    server.token_kubeconfig_local(&node.kubeconfig, &token);
    let who = node.ok(&["auth", "whoami", "-o", "json"]);
    assert!(
        who.contains("system:serviceaccount:weft-system:weft-node"),
        "{who}"
    );

    // What the daemon reads: list and watch, cluster-wide (a real watch, closed by the server
    // after a second).
    let read = [
        "/api/v1/pods",
        "/api/v1/namespaces",
        "/api/v1/services",
        "/apis/discovery.k8s.io/v1/endpointslices",
        "/apis/weft.dev/v1alpha1/authorizationpolicies",
        "/apis/weft.dev/v1alpha1/peerauthentications",
        "/apis/weft.dev/v1alpha1/destinationpolicies",
        "/apis/weft.dev/v1alpha1/faultinjections",
    ];
    let paths: Vec<String> = read
        .iter()
        .flat_map(|p| [p.to_string(), format!("{p}?watch=true&timeoutSeconds=1")])
        .collect();
    for (path, success, text) in raw_all(&node, &paths) {
        assert!(success, "GET {path} as weft-node failed: {text}");
    }
    // HTTPRoute's CRD is not installed here: RBAC lets the request through to a 404, where a
    // kind weft-node may not read (Gateway) stops at 403.
    let gateway = "/apis/gateway.networking.k8s.io/v1";
    let paths = [
        format!("{gateway}/httproutes"),
        format!("{gateway}/httproutes?watch=true&timeoutSeconds=1"),
        format!("{gateway}/gateways"),
    ];
    let answers = raw_all(&node, &paths);
    for (path, success, text) in &answers[..2] {
        assert!(
            !success && text.contains("(NotFound)"),
            "GET {path} as weft-node: want 404 past RBAC, got {text}"
        );
    }
    let (path, success, text) = &answers[2];
    assert!(
        !success && rbac_denied(text),
        "GET {path} as weft-node: want 403, got {text}"
    );
    // Events: the daemon records them.
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "weft-node-rbac-check", "namespace": "weft-system"},
        "involvedObject": {"kind": "DaemonSet", "namespace": "weft-system", "name": "weft-node"},
        "reason": "Check", "message": "RBAC check", "type": "Normal",
    });
    let (created, text) = node.with_object(tmp, &event, &["create"]);
    assert!(created, "creating an event as weft-node: {text}");
    // Its own DaemonSet, by name, and nothing else of the kind.
    node.ok(&["-n", "weft-system", "get", "daemonset", "weft-node"]);
    node.forbidden(&["-n", "weft-system", "get", "daemonset", "other"]);
    node.forbidden(&["-n", "weft-system", "get", "daemonsets"]);
    node.forbidden(&["get", "daemonsets", "--all-namespaces"]);
    let mut update = daemonset.clone();
    update["metadata"]["labels"]["changed-by"] = "weft-node".into();
    let (updated, text) = node.with_object(tmp, &update, &["replace"]);
    assert!(
        !updated && rbac_denied(&text),
        "weft-node updated its own DaemonSet: {text}"
    );
    node.forbidden(&["-n", "weft-system", "delete", "daemonset", "weft-node"]);
    // No writes to workloads or namespaces, no Secrets, no certificates.
    node.forbidden(&["-n", "default", "run", "x", "--image=weft.test/app"]);
    node.forbidden(&["-n", "default", "delete", "pod", "x"]);
    node.forbidden(&["get", "secrets", "--all-namespaces"]);
    node.forbidden(&["-n", "weft-system", "get", "secret", "weft-ca"]);
    node.forbidden(&["label", "namespace", "default", "x=y"]);
    node.forbidden(&["-n", "weft-system", "get", "configmap", "weft-node-config"]);
    node.forbidden(&["-n", "weft-system", "create", "configmap", "x"]);
    // Certificates: it may ask (create and read CSRs) but never approve its own request.
    let key = weft::identity::csr::WorkloadKey::generate(
        &weft::identity::SpiffeId::new("cluster.local", "default", "x").unwrap(),
    )
    .unwrap();
    let csr = json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": "weft-node-rbac-check"},
        "spec": {"request": base64::engine::general_purpose::STANDARD.encode(key.request_pem()),
                 "signerName": "weft.dev/workload",
                 "usages": ["digital signature", "server auth", "client auth"]},
    });
    let (created, text) = node.with_object(tmp, &csr, &["create"]);
    assert!(created, "weft-node could not create a CSR: {text}");
    node.ok(&["get", "certificatesigningrequests"]);
    node.forbidden(&["certificate", "approve", "weft-node-rbac-check"]);
    node.forbidden(&["certificate", "deny", "weft-node-rbac-check"]);
    node.forbidden(&["-n", "weft-system", "get", "configmap", "weft-node-config"]);
}
