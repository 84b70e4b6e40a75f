//! The cluster's Kubernetes mode: a real kube-apiserver (with etcd) runs in the underlay
//! namespace on `10.<subnet>.0.254:6443`, reached by the nodes over the underlay as a real
//! cluster's nodes reach theirs; every daemon runs `--source kube` with the ServiceAccount
//! token of `weft-system/weft-node` (so its ClusterRole is what it gets). Tests create
//! Namespaces, Pods (IP set through the status subresource, as kubelet does), Services,
//! EndpointSlices and policies through the API, and wait on what each daemon's
//! `/config_dump` shows (watches of different kinds are independent streams, so there is no
//! single revision to wait for).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Cluster, PodSpec, AMBIENT};
use crate::common::apiserver::{self, ApiServer};
use crate::common::testbed::{binary, unique, Process};

/// The API server of a cluster in Kubernetes mode, and how tests talk to it.
pub struct KubeApi {
    pub server: ApiServer,
    pub runtime: tokio::runtime::Runtime,
    pub client: kube::Client,
    /// The kubeconfig every daemon gets (the weft-node ServiceAccount's token).
    pub node_kubeconfig: PathBuf,
}

/// `weft signer` of a cluster in signer mode.
pub struct Signer {
    /// Its kubeconfig (the weft-signer ServiceAccount's token).
    pub kubeconfig: PathBuf,
    /// Extra flags.
    pub args: Vec<String>,
    /// The process, while it runs.
    pub process: Option<Process>,
}

/// weft's CRDs, as an admin applies them.
pub fn crd_yaml() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/crds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml")
        })
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

impl Cluster {
    /// `nodes` nodes and a real API server on the underlay, weft's CRDs installed, the
    /// weft-node RBAC applied; no daemons yet.
    pub fn with_api(nodes: usize) -> Cluster {
        let mut c = Cluster::new(nodes);
        let ip = format!("10.{}.0.254", c.subnet);
        c._underlay
            .run(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "ulbr"]);
        let server = ApiServer::start(&c._underlay, &ip);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let client = runtime.block_on(server.admin_client());
        let node_kubeconfig = c.work.path().join("node-kubeconfig.yaml");
        runtime.block_on(server.node_kubeconfig(&node_kubeconfig));
        runtime
            .block_on(server.apply_yaml(&crd_yaml()))
            .expect("weft's CRDs apply");
        runtime.block_on(wait_crds_established(&client, "weft.dev"));
        c.api = Some(KubeApi {
            server,
            runtime,
            client,
            node_kubeconfig,
        });
        c
    }

    /// A Kubernetes-mode cluster whose nodes hold no CA key, as installed: each node's
    /// daemon authenticates with a token bound to its own weft-node pod (the API server
    /// names the node in its user info), and `weft signer` (with `signer_args`) runs in the
    /// underlay with the cluster's CA directory as its mounted Secret. No daemons yet.
    pub fn with_signer(nodes: usize, signer_args: &[&str]) -> Cluster {
        let mut c = Cluster::with_api(nodes);
        c.block(c.kube().server.apply_install(&["signer.yaml"]));
        for i in 0..nodes {
            let name = c.nodes[i].name.clone();
            let token = c.block(c.kube().server.node_pod_token(&name));
            let path = c.nodes[i].run_dir.join("kubeconfig.yaml");
            c.kube().server.token_kubeconfig(&path, &token);
            c.nodes[i].kubeconfig = Some(path);
        }
        let token = c.block(c.kube().server.service_account_token(
            "weft-system",
            "weft-signer",
            3600,
        ));
        let kubeconfig = c.work.path().join("signer-kubeconfig.yaml");
        c.kube().server.token_kubeconfig(&kubeconfig, &token);
        c.signer = Some(Signer {
            kubeconfig,
            args: signer_args.iter().map(|a| (*a).to_owned()).collect(),
            process: None,
        });
        c.start_signer();
        c
    }

    /// Starts `weft signer` (again) and waits until it is ready.
    pub fn start_signer(&mut self) {
        let signer = self.signer.as_ref().expect("a cluster in signer mode");
        let mut cmd = self._underlay.command(binary("weft"));
        cmd.arg("signer")
            .arg("--kubeconfig")
            .arg(&signer.kubeconfig)
            .arg("--ca-dir")
            .arg(&self.ca_dir)
            .args(["--http-addr", "127.0.0.1:15014"])
            .args(&signer.args)
            .env("RUST_LOG", "info,weft=debug");
        let log = self.work.path().join(format!("signer-{}.log", unique("s")));
        let mut process = Process::spawn(cmd, &log, "weft signer");
        let underlay = &self._underlay;
        process.wait_until("ready", Duration::from_secs(60), || {
            underlay
                .command("curl")
                .args([
                    "-sf",
                    "--max-time",
                    "3",
                    "http://127.0.0.1:15014/healthz/ready",
                ])
                .output()
                .is_ok_and(|out| out.status.success())
        });
        self.signer.as_mut().expect("signer").process = Some(process);
    }

    /// Stops `weft signer` (SIGTERM) and returns its log.
    pub fn stop_signer(&mut self) -> String {
        let mut process = self
            .signer
            .as_mut()
            .and_then(|s| s.process.take())
            .expect("a running signer");
        process.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30));
        process.log_text()
    }

    /// The running signer's log.
    pub fn signer_log(&self) -> String {
        self.signer
            .as_ref()
            .and_then(|s| s.process.as_ref())
            .map(Process::log_text)
            .unwrap_or_default()
    }

    /// A Kubernetes-mode cluster with `shop` (enrolled) and, if `with_legacy`, `legacy`
    /// created through the API and every daemon running.
    pub fn running_kube(nodes: usize, with_legacy: bool) -> Cluster {
        let mut c = Cluster::with_api(nodes);
        c.kube_namespace("shop", &[AMBIENT]);
        if with_legacy {
            c.kube_namespace("legacy", &[]);
        }
        for i in 0..nodes {
            c.start_daemon(i);
        }
        c
    }

    pub fn kube(&self) -> &KubeApi {
        self.api
            .as_ref()
            .expect("a cluster with an API server (Cluster::with_api)")
    }

    /// Runs a future on the cluster's client runtime.
    pub fn block<F: Future>(&self, f: F) -> F::Output {
        self.kube().runtime.block_on(f)
    }

    /// Applies (server-side) every document of `yaml` as the test admin.
    pub fn kube_apply(&self, yaml: &str) -> Result<(), kube::Error> {
        self.block(self.kube().server.apply_yaml(yaml))
    }

    /// Deletes an object through the API (`resource` as `kubectl delete` names it).
    pub fn kube_delete(&self, api_version: &str, kind: &str, ns: Option<&str>, name: &str) {
        let client = self.kube().client.clone();
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = kube::api::GroupVersionKind::gvk(group, version, kind);
        self.block(async move {
            let (resource, _) = kube::discovery::pinned_kind(&client, &gvk)
                .await
                .unwrap_or_else(|e| panic!("discovering {api_version} {kind}: {e}"));
            let api: kube::Api<kube::api::DynamicObject> = match ns {
                Some(ns) => kube::Api::namespaced_with(client, ns, &resource),
                None => kube::Api::all_with(client, &resource),
            };
            // No kubelet confirms a pod's end here: delete at once, as `--force` does.
            let now = kube::api::DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            };
            api.delete(name, &now)
                .await
                .unwrap_or_else(|e| panic!("deleting {kind} {name}: {e}"));
        });
    }

    /// Creates or relabels a Namespace through the API and waits until every running
    /// daemon's model shows it with exactly these labels.
    pub fn kube_namespace(&mut self, name: &str, labels: &[(&str, &str)]) {
        let labels_map: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        let doc = serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels_map},
        });
        self.kube_apply(&serde_yaml::to_string(&doc).unwrap())
            .unwrap_or_else(|e| panic!("applying Namespace {name}: {e}"));
        self.namespace(name, labels);
        let want = Value::Object(labels_map);
        self.wait_dumps(&format!("Namespace {name} with labels {want}"), |dump| {
            dump["mesh"]["namespaces"].as_array().is_some_and(|all| {
                all.iter()
                    .any(|ns| ns["name"] == name && without_api_labels(&ns["labels"]) == want)
            })
        });
    }

    /// Waits until `check` holds for the dump of every running daemon; returns how long
    /// that took.
    pub fn wait_dumps(&self, what: &str, check: impl Fn(&Value) -> bool) -> Duration {
        let start = Instant::now();
        let deadline = start + Duration::from_secs(20);
        for (i, node) in self.nodes.iter().enumerate() {
            if node.daemon.is_none() {
                continue;
            }
            loop {
                if self.dump(i).is_some_and(|d| check(&d)) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{}: never saw {what}; config: {}",
                    node.name,
                    self.dump(i)
                        .map(|d| d["config"].to_string())
                        .unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        start.elapsed()
    }

    /// Before a pod's sandbox exists: the pod is created in the API (bound to its node, no
    /// IP yet) and every daemon knows it. Records the uid the API server gave it.
    pub(super) fn kube_create_pod(&self, spec: &mut PodSpec) {
        let client = self.kube().client.clone();
        let node = self.nodes[spec.node].name.clone();
        let labels: Vec<(&str, &str)> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let pod = self.block(async {
            apiserver::ensure_service_account(&client, &spec.namespace, &spec.service_account)
                .await;
            apiserver::create_pod(
                &client,
                &spec.namespace,
                &spec.name,
                &spec.service_account,
                &node,
                &labels,
            )
            .await
        });
        spec.uid = pod
            .metadata
            .uid
            .expect("the API server gives every pod a uid");
        let uid = spec.uid.clone();
        self.wait_dumps(&format!("pod {}/{}", spec.namespace, spec.name), |dump| {
            workload(dump, &uid).is_some()
        });
    }

    /// Once CNI gave the pod its IP: set it through the status subresource and wait until
    /// every daemon's model has it.
    pub(super) fn kube_set_pod_ip(&self, spec: &PodSpec, ip: &str) {
        let client = self.kube().client.clone();
        self.block(apiserver::set_pod_ip(
            &client,
            &spec.namespace,
            &spec.name,
            ip,
        ));
        self.wait_dumps(
            &format!("pod {}/{} at {ip}", spec.namespace, spec.name),
            |dump| {
                workload(dump, &spec.uid).is_some_and(|w| {
                    w["ips"]
                        .as_array()
                        .is_some_and(|ips| ips.iter().any(|i| i == ip))
                })
            },
        );
    }

    /// Installs a stand-in for Gateway API's HTTPRoute CRD (tests/fixtures/httproute-crd.yaml)
    /// and waits until the API server serves it.
    pub fn install_httproute_crd(&self) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/httproute-crd.yaml");
        let yaml = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        self.kube_apply(&yaml)
            .unwrap_or_else(|e| panic!("applying {}: {e}", path.display()));
        self.block(wait_crds_established(
            &self.kube().client,
            "gateway.networking.k8s.io",
        ));
    }

    /// Routes from the underlay to every node's pod CIDR (via that node), so a pod that is
    /// not captured (a waypoint) reaches the API server as a real cluster's pods do.
    pub fn route_pod_cidrs_from_underlay(&self) {
        for node in &self.nodes {
            self._underlay.run(&[
                "ip",
                "route",
                "replace",
                &node.pod_cidr,
                "via",
                &node.underlay_ip,
            ]);
        }
    }

    /// A kubeconfig (written under the cluster's work directory) with a token of `ns/sa`
    /// bound to the existing pod `ns/pod`, as the kubelet projects into that pod.
    pub fn pod_kubeconfig(&self, ns: &str, sa: &str, pod: &str) -> PathBuf {
        let server = &self.kube().server;
        let token = self.block(server.existing_pod_token(ns, sa, pod));
        let path = self.work.path().join(format!("kubeconfig-{ns}-{pod}.yaml"));
        server.token_kubeconfig(&path, &token);
        path
    }

    /// Deletes a pod from the API (its sandbox is left to [`Cluster::del_pod`]).
    pub fn kube_delete_pod(&self, ns: &str, name: &str) {
        self.kube_delete("v1", "Pod", Some(ns), name);
    }
}

/// The workload with this uid in a dump.
pub fn workload<'a>(dump: &'a Value, uid: &str) -> Option<&'a Value> {
    dump["mesh"]["workloads"]
        .as_array()?
        .iter()
        .find(|w| w["uid"] == uid)
}

/// A namespace's labels without the one the API server adds to every namespace.
fn without_api_labels(labels: &Value) -> Value {
    let mut labels = labels.clone();
    if let Some(map) = labels.as_object_mut() {
        map.remove("kubernetes.io/metadata.name");
    }
    labels
}

async fn wait_crds_established(client: &kube::Client, group: &str) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api = kube::Api::<CustomResourceDefinition>::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let crds = api.list(&Default::default()).await.expect("listing CRDs");
        let established = crds
            .items
            .iter()
            .filter(|crd| crd.spec.group == group)
            .all(|crd| {
                crd.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|conds| {
                        conds
                            .iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    })
            });
        if established && crds.items.iter().any(|crd| crd.spec.group == group) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the CRDs of {group} never became Established"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
