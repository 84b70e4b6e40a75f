//! A real Kubernetes API server for end-to-end tests: etcd and kube-apiserver (the binaries
//! `scripts/build-apiserver.sh` builds and caches) started inside a network namespace of the
//! testbed, with authentication (client certificates, service-account tokens) and RBAC on.
//! Nothing is mocked: tests and weft-node daemons talk to it exactly as to a cluster.
//!
//! The PKI (cluster CA, serving certificate, admin client certificate, service-account
//! signing key) is generated with rcgen into the server's temp dir; nothing is committed.
//! Processes inside the namespace (and on its underlay) reach the server at [`ApiServer::url`];
//! the test process, which stays in the host network namespace, reaches it through a port
//! forwarder on host 127.0.0.1 whose outbound connections are made from inside the namespace
//! (the host's own network configuration is never touched).

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, Scope};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;
use serde_json::{json, Value};

use super::testbed::{Netns, Process};

/// The port kube-apiserver serves on.
pub const PORT: u16 = 6443;
/// The field manager of [`ApiServer::apply_yaml`].
pub const FIELD_MANAGER: &str = "weft-tests";
/// Service-account token issuer and API audience.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The Service CIDR (the `kubernetes` Service gets its first address, 10.96.0.1).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// How long a start may take (two shared cores, a cold etcd, a fresh apiserver).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long kube-apiserver may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a kind may take to show up in discovery (a CRD just created is served a moment
/// after it is Established).
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(20);

/// The directory `scripts/apiserver-dir.sh` names for the pinned versions.
pub fn binaries_dir() -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/apiserver-dir.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// A running etcd + kube-apiserver pair. Drop kills both and removes the temp dir (and the
/// namespace, for [`ApiServer::start_alone`]).
pub struct ApiServer {
    apiserver: Option<Process>,
    etcd: Option<Process>,
    forwarder: Option<Forwarder>,
    dialer: NetnsDialer,
    netns: String,
    ip: String,
    bin: PathBuf,
    ca_pem: String,
    admin_cert_pem: String,
    admin_key_pem: String,
    tls: Arc<rustls::ClientConfig>,
    starts: u32,
    dir: tempfile::TempDir,
    /// The namespace of [`ApiServer::start_alone`]; dropped after everything above.
    own_netns: Option<Netns>,
}

impl ApiServer {
    /// Like `testbed::e2e_ready`: true if root and the binaries exist; with `WEFT_E2E=1`
    /// anything missing panics ("run scripts/build-apiserver.sh"); otherwise prints why and
    /// returns false.
    pub fn available() -> bool {
        if !super::testbed::e2e_ready(&["ip"]) {
            return false;
        }
        let required = std::env::var("WEFT_E2E").is_ok_and(|v| v == "1");
        let why = match binaries_dir() {
            Err(e) => e,
            Ok(dir) => {
                let missing: Vec<&str> = ["kube-apiserver", "etcd"]
                    .into_iter()
                    .filter(|b| !dir.join(b).is_file())
                    .collect();
                if missing.is_empty() {
                    return true;
                }
                format!("{} missing in {}", missing.join(" and "), dir.display())
            }
        };
        assert!(
            !required,
            "WEFT_E2E=1 but the API server test cannot run: {why} (run scripts/build-apiserver.sh)"
        );
        eprintln!(
            "skipping API server test: {why} (run scripts/build-apiserver.sh; set WEFT_E2E=1 to make this a failure)"
        );
        false
    }

    /// Starts etcd (on 127.0.0.1 of `netns`, data in a temp dir) and kube-apiserver inside
    /// `netns`, serving on `ip`:6443, and waits until `/readyz` says ok and the `kubernetes`
    /// Service exists.
    pub fn start(netns: &Netns, ip: &str) -> ApiServer {
        ApiServer::launch(netns, ip)
    }

    /// A fresh namespace of its own with the server on its 127.0.0.1.
    pub fn start_alone() -> ApiServer {
        let netns = Netns::new("wkapi");
        // If the start panics, `netns` is deleted while unwinding.
        let mut server = ApiServer::launch(&netns, "127.0.0.1");
        server.own_netns = Some(netns);
        server
    }

    fn launch(netns: &Netns, ip: &str) -> ApiServer {
        let bin = binaries_dir().unwrap_or_else(|e| panic!("{e} (run scripts/build-apiserver.sh)"));
        let dir = tempfile::Builder::new()
            .prefix("weft-kapi")
            .tempdir()
            .expect("tempdir");
        let pki = Pki::generate(dir.path(), ip);
        let tls = tls_config(&pki.ca_pem, &pki.admin_cert_pem, &pki.admin_key_pem);
        let dialer = NetnsDialer::start(&netns.name);
        let target: SocketAddr = format!("{ip}:{PORT}")
            .parse()
            .unwrap_or_else(|e| panic!("bad API server address {ip:?}: {e}"));
        let forwarder = Forwarder::start(dialer.clone(), target);

        let data = dir.path().join("etcd-data");
        let mut etcd_cmd = netns.command(bin.join("etcd"));
        etcd_cmd
            .arg("--name=weft-test")
            .arg(format!("--data-dir={}", data.display()))
            .arg("--listen-client-urls=http://127.0.0.1:2379")
            .arg("--advertise-client-urls=http://127.0.0.1:2379")
            .arg("--listen-peer-urls=http://127.0.0.1:2380")
            .arg("--initial-advertise-peer-urls=http://127.0.0.1:2380")
            .arg("--initial-cluster=weft-test=http://127.0.0.1:2380")
            .arg("--unsafe-no-fsync");
        let etcd = Process::spawn(etcd_cmd, &dir.path().join("etcd.log"), "etcd");

        let mut server = ApiServer {
            apiserver: None,
            etcd: Some(etcd),
            forwarder: Some(forwarder),
            dialer,
            netns: netns.name.clone(),
            ip: ip.to_owned(),
            bin,
            ca_pem: pki.ca_pem,
            admin_cert_pem: pki.admin_cert_pem,
            admin_key_pem: pki.admin_key_pem,
            tls,
            starts: 0,
            dir,
            own_netns: None,
        };
        let cmd = netns.command(server.bin.join("kube-apiserver"));
        server.spawn_apiserver(cmd);
        server.wait_ready();
        server
    }

    /// `https://<ip>:6443`, as processes inside the namespace / on the same network reach it.
    pub fn url(&self) -> String {
        format!("https://{}:{PORT}", self.ip)
    }

    /// The address the server listens on inside its namespace.
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// The name of the network namespace the server runs in.
    pub fn netns_name(&self) -> &str {
        &self.netns
    }

    /// The cluster CA (PEM): it signed the serving certificate and the client certificates.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// `https://127.0.0.1:<port>` of the forwarder, as the test process reaches the server.
    pub fn local_url(&self) -> String {
        let addr = self.forwarder.as_ref().expect("forwarder runs").addr;
        format!("https://{addr}")
    }

    /// The temp dir holding the PKI, etcd's data and the logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client for the test admin (client certificate, O=system:masters), reaching the server
    /// from the test process through the port forwarder.
    pub async fn admin_client(&self) -> kube::Client {
        let text = kubeconfig_text(&self.local_url(), &self.ca_pem, self.admin_user());
        client_from_kubeconfig_text(&text).await
    }

    /// A client from a kubeconfig written by [`ApiServer::node_kubeconfig`] or
    /// [`ApiServer::admin_kubeconfig`] (its credentials exactly), pointed at the forwarder so
    /// the test process can use it.
    pub async fn client_from_kubeconfig(&self, path: &Path) -> kube::Client {
        let mut kubeconfig = Kubeconfig::read_from(path)
            .unwrap_or_else(|e| panic!("cannot read kubeconfig {}: {e}", path.display()));
        for named in &mut kubeconfig.clusters {
            if let Some(cluster) = named.cluster.as_mut() {
                cluster.server = Some(self.local_url());
            }
        }
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .unwrap_or_else(|e| panic!("bad kubeconfig {}: {e}", path.display()));
        kube::Client::try_from(config).expect("kube client")
    }

    /// Stops kube-apiserver (SIGTERM, wait) but keeps etcd and its data.
    pub fn stop(&mut self) {
        let Some(mut process) = self.apiserver.take() else {
            panic!("stop(): kube-apiserver is not running");
        };
        let pid = nix::unistd::Pid::from_raw(process.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Ok(Some(_)) = process.child.try_wait() {
                return;
            }
            if Instant::now() >= deadline {
                let log = tail(&process.log_text(), 40);
                drop(process); // SIGKILL
                panic!("kube-apiserver did not exit within {STOP_TIMEOUT:?} of SIGTERM:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills kube-apiserver outright (SIGKILL), as a crash or a lost control plane would,
    /// keeping etcd and its data.
    pub fn kill(&mut self) {
        let Some(mut process) = self.apiserver.take() else {
            panic!("kill(): kube-apiserver is not running");
        };
        let _ = process.child.kill();
        let _ = process.child.wait();
    }

    /// Brings kube-apiserver back on the same address with the same PKI and waits as
    /// [`ApiServer::start`] does.
    pub fn start_again(&mut self) {
        assert!(
            self.apiserver.is_none(),
            "start_again(): kube-apiserver is already running"
        );
        // The same command `Netns::command` builds; the namespace may be borrowed by start().
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .arg(self.bin.join("kube-apiserver"));
        self.spawn_apiserver(cmd);
        self.wait_ready();
    }

    /// Server-side apply (field manager "weft-tests", forced) of every document of a multi-doc
    /// YAML, each apiVersion/kind resolved with discovery. Returns the first error unchanged.
    pub async fn apply_yaml(&self, yaml: &str) -> Result<(), kube::Error> {
        apply_yaml_with(&self.admin_client().await, yaml).await
    }

    /// Applies deploy/kubernetes/namespace.yaml and rbac.yaml (weft-system, weft-node's
    /// ServiceAccount and its roles, as installed), requests a 1h token for
    /// weft-system/weft-node and writes at `path` a kubeconfig with [`ApiServer::url`], the CA
    /// and that token: what weft-node gets (`--kubeconfig`).
    pub async fn node_kubeconfig(&self, path: &Path) {
        self.apply_install(&["namespace.yaml", "rbac.yaml"]).await;
        let token = self
            .service_account_token("weft-system", "weft-node", 3600)
            .await;
        let text = kubeconfig_text(&self.url(), &self.ca_pem, json!({ "token": token }));
        write_private(path, &text);
    }

    /// Applies these files of deploy/kubernetes as the admin (a Deployment or DaemonSet
    /// among them never runs here: no kubelet; tests run weft's processes themselves).
    pub async fn apply_install(&self, files: &[&str]) {
        for file in files {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy/kubernetes")
                .join(file);
            let yaml = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            self.apply_yaml(&yaml)
                .await
                .unwrap_or_else(|e| panic!("applying {}: {e}", path.display()));
        }
    }

    /// What a kubelet gives weft-node on `node`: a Node object, a weft-node pod in
    /// weft-system scheduled there, and a token bound to that pod (so the API server adds
    /// the pod's and node's names to its user info, as for a projected token). Returns the
    /// token.
    pub async fn node_pod_token(&self, node: &str) -> String {
        self.pod_token(
            "weft-system",
            "weft-node",
            &format!("weft-node-{node}"),
            node,
        )
        .await
    }

    /// Creates node `node` (if missing) and pod `ns/pod_name` running as `ns/sa` on it, and
    /// returns a token of `ns/sa` bound to that pod, as the kubelet projects into a pod.
    pub async fn pod_token(&self, ns: &str, sa: &str, pod_name: &str, node: &str) -> String {
        let client = self.admin_client().await;
        ensure_node(&client, node).await;
        create_pod(&client, ns, pod_name, sa, node, &[]).await;
        self.existing_pod_token(ns, sa, pod_name).await
    }

    /// A token of `ns/sa` bound to the pod `ns/pod_name` that already exists (its node gets
    /// a Node object if it has none, so the token carries the node's name too).
    pub async fn existing_pod_token(&self, ns: &str, sa: &str, pod_name: &str) -> String {
        let client = self.admin_client().await;
        let pod = Api::<Pod>::namespaced(client.clone(), ns)
            .get(pod_name)
            .await
            .unwrap_or_else(|e| panic!("reading pod {ns}/{pod_name}: {e}"));
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            ensure_node(&client, &node).await;
        }
        let bound = k8s_openapi::api::authentication::v1::BoundObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod_name.to_owned()),
            uid: pod.metadata.uid,
        };
        self.token_request(ns, sa, 3600, Some(bound)).await
    }

    /// Writes a kubeconfig with [`ApiServer::url`] (for processes in the namespace or on the
    /// underlay) and a bearer `token`.
    pub fn token_kubeconfig(&self, path: &Path, token: &str) {
        let text = kubeconfig_text(&self.url(), &self.ca_pem, json!({ "token": token }));
        write_private(path, &text);
    }

    /// A client authenticating with `token` (from the host).
    pub async fn token_client(&self, token: &str) -> kube::Client {
        let text = kubeconfig_text(&self.local_url(), &self.ca_pem, json!({ "token": token }));
        client_from_kubeconfig_text(&text).await
    }

    /// A token for service account `ns/name` (TokenRequest API, default audiences).
    pub async fn service_account_token(&self, ns: &str, name: &str, seconds: i64) -> String {
        self.token_request(ns, name, seconds, None).await
    }

    /// A TokenRequest for `ns/name`, bound to `bound` if given.
    async fn token_request(
        &self,
        ns: &str,
        name: &str,
        seconds: i64,
        bound: Option<k8s_openapi::api::authentication::v1::BoundObjectReference>,
    ) -> String {
        let sas: Api<ServiceAccount> = Api::namespaced(self.admin_client().await, ns);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                expiration_seconds: Some(seconds),
                bound_object_ref: bound,
                ..Default::default()
            },
            ..Default::default()
        };
        sas.create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("token request for {ns}/{name}: {e}"))
            .status
            .unwrap_or_else(|| panic!("token request for {ns}/{name}: no status"))
            .token
    }

    /// Writes a kubeconfig for the admin (client certificate) with server [`ApiServer::url`]
    /// (for processes in the namespace / on the underlay).
    pub fn admin_kubeconfig(&self, path: &Path) {
        let text = kubeconfig_text(&self.url(), &self.ca_pem, self.admin_user());
        write_private(path, &text);
    }

    /// Writes an admin kubeconfig for processes on the host (server [`ApiServer::local_url`]).
    pub fn admin_kubeconfig_local(&self, path: &Path) {
        let text = kubeconfig_text(&self.local_url(), &self.ca_pem, self.admin_user());
        write_private(path, &text);
    }

    /// Writes a kubeconfig for processes on the host with a bearer `token`.
    pub fn token_kubeconfig_local(&self, path: &Path, token: &str) {
        let text = kubeconfig_text(&self.local_url(), &self.ca_pem, json!({ "token": token }));
        write_private(path, &text);
    }

    fn admin_user(&self) -> Value {
        json!({
            "client-certificate-data": b64(&self.admin_cert_pem),
            "client-key-data": b64(&self.admin_key_pem),
        })
    }

    fn spawn_apiserver(&mut self, mut cmd: Command) {
        self.starts += 1;
        let d = self.dir.path();
        let file = |name: &str| d.join(name).display().to_string();
        cmd.arg("--etcd-servers=http://127.0.0.1:2379")
            .arg(format!("--bind-address={}", self.ip))
            .arg(format!("--advertise-address={}", self.ip))
            .arg(format!("--secure-port={PORT}"))
            .arg(format!("--cert-dir={}", file("cert-dir")))
            .arg(format!("--tls-cert-file={}", file("apiserver.crt")))
            .arg(format!("--tls-private-key-file={}", file("apiserver.key")))
            .arg(format!("--client-ca-file={}", file("ca.crt")))
            .arg("--authorization-mode=RBAC")
            .arg(format!("--service-account-issuer={ISSUER}"))
            .arg(format!("--api-audiences={ISSUER}"))
            .arg(format!("--service-account-key-file={}", file("sa.pub")))
            .arg(format!(
                "--service-account-signing-key-file={}",
                file("sa.key")
            ))
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
            .arg("--enable-priority-and-fairness=false")
            .arg("--profiling=false");
        if self.ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
            // The `kubernetes` Service's endpoints may not be loopback: on 127.0.0.1 (start_alone)
            // no reconciler publishes them.
            cmd.arg("--endpoint-reconciler-type=none");
        }
        let log = d.join(format!("kube-apiserver-{}.log", self.starts));
        self.apiserver = Some(Process::spawn(cmd, &log, "kube-apiserver"));
    }

    /// Polls `/readyz` (as the admin) until it answers `ok`, then until the bootstrap
    /// objects exist (the `default` namespace and the `kubernetes` Service are created a
    /// moment after readiness); panics with both logs if a process exits or the deadline
    /// passes.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let last = match self
                .get("/readyz", |body| body.trim_end() == "ok")
                .and_then(|()| {
                    self.get("/api/v1/namespaces/default/services/kubernetes", |body| {
                        body.contains("\"clusterIP\"")
                    })
                }) {
                Ok(()) => return,
                Err(e) => e,
            };
            let exited = [
                ("kube-apiserver", &mut self.apiserver),
                ("etcd", &mut self.etcd),
            ]
            .into_iter()
            .find_map(|(what, p)| {
                let status = p.as_mut()?.child.try_wait().ok()??;
                Some(format!("{what} exited ({status}) during start"))
            });
            if let Some(exited) = exited {
                panic!("{exited}\n{}", self.logs());
            }
            if Instant::now() >= deadline {
                panic!(
                    "kube-apiserver not ready within {READY_TIMEOUT:?} (last check: {last})\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// One `GET path` as the admin from inside the namespace, TLS verified against the
    /// cluster CA: Ok if it answers 200 with a body `accept` takes.
    fn get(&self, path: &str, accept: impl Fn(&str) -> bool) -> Result<(), String> {
        let target: SocketAddr = format!("{}:{PORT}", self.ip)
            .parse()
            .expect("checked at start");
        let sock = self
            .dialer
            .connect(target)
            .map_err(|e| format!("connect: {e}"))?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        sock.set_write_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let ip: IpAddr = self.ip.parse().expect("checked at start");
        let conn = rustls::ClientConnection::new(self.tls.clone(), ServerName::from(ip))
            .map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {}:{PORT}\r\nConnection: close\r\n\r\n",
                self.ip
            )
            .as_bytes(),
        )
        .map_err(|e| format!("TLS/write: {e}"))?;
        let mut buf = Vec::new();
        // The server closes after the answer; what was read counts even if it skips
        // close_notify.
        let read = tls.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        if text.starts_with("HTTP/1.1 200") && accept(body) {
            return Ok(());
        }
        match read {
            Err(e) if buf.is_empty() => Err(format!("GET {path}: read: {e}")),
            _ => Err(format!(
                "GET {path}: {} {}",
                text.lines().next().unwrap_or(""),
                tail(&text, 3)
            )),
        }
    }

    /// The last lines of the current kube-apiserver log and of etcd's.
    fn logs(&self) -> String {
        let apiserver = self
            .dir
            .path()
            .join(format!("kube-apiserver-{}.log", self.starts));
        let etcd = self.dir.path().join("etcd.log");
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let apiserver_log = read(&apiserver);
        // klog errors (E...) and fatals (F...) wherever they are, then the tail.
        let errors: Vec<&str> = apiserver_log
            .lines()
            .filter(|l| l.starts_with('E') || l.starts_with('F'))
            .take(20)
            .collect();
        format!(
            "--- {} (errors) ---\n{}\n--- {} (tail) ---\n{}\n--- {} (tail) ---\n{}",
            apiserver.display(),
            errors.join("\n"),
            apiserver.display(),
            tail(&apiserver_log, 40),
            etcd.display(),
            tail(&read(&etcd), 30)
        )
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // Process drop: SIGKILL and reap. The server first, so it never outlives its etcd.
        drop(self.apiserver.take());
        drop(self.etcd.take());
        drop(self.forwarder.take());
        // Then the fields: the dialer thread ends with its last sender, the temp dir is
        // removed, and an own namespace deleted (killing anything left inside).
    }
}

/// Server-side apply of every document of `yaml` with `client` (see
/// [`ApiServer::apply_yaml`]).
pub async fn apply_yaml_with(client: &kube::Client, yaml: &str) -> Result<(), kube::Error> {
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("bad YAML document: {e}"));
        if value.is_null() {
            continue;
        }
        let api_version = value["apiVersion"]
            .as_str()
            .unwrap_or_else(|| panic!("document without apiVersion: {value}"));
        let kind = value["kind"]
            .as_str()
            .unwrap_or_else(|| panic!("document without kind: {value}"));
        let name = value["metadata"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("document without metadata.name: {value}"));
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (resource, caps) = discover(client, &gvk).await?;
        let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
            let ns = value["metadata"]["namespace"].as_str().unwrap_or("default");
            Api::namespaced_with(client.clone(), ns, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&value),
        )
        .await?;
    }
    Ok(())
}

/// Resolves a kind, retrying for a while: a CRD created a moment ago is served shortly after.
async fn discover(
    client: &kube::Client,
    gvk: &GroupVersionKind,
) -> Result<(ApiResource, ApiCapabilities), kube::Error> {
    let deadline = tokio::time::Instant::now() + DISCOVERY_TIMEOUT;
    loop {
        match kube::discovery::pinned_kind(client, gvk).await {
            Ok(found) => return Ok(found),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn labels_json(labels: &[(&str, &str)]) -> Value {
    Value::Object(
        labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
            .collect(),
    )
}

/// Creates a Namespace with `labels`.
pub async fn create_namespace(
    client: &kube::Client,
    name: &str,
    labels: &[(&str, &str)],
) -> Namespace {
    let ns: Namespace = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels_json(labels)},
    }))
    .expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"))
}

/// Creates service account `ns/name` unless it exists (no controller-manager runs, so not
/// even `default` exists in a new namespace).
pub async fn ensure_service_account(client: &kube::Client, ns: &str, name: &str) {
    let sa: ServiceAccount = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": ns},
    }))
    .expect("service account");
    match Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sa)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_already_exists() => {}
        Err(e) => panic!("creating service account {ns}/{name}: {e}"),
    }
}

/// Creates a pod (one container, image "weft.test/app", no service-account token mounted)
/// bound to `node_name` (no scheduler runs). It stays Pending until [`set_pod_ip`].
/// Creates the Node object `name` unless it exists.
async fn ensure_node(client: &kube::Client, name: &str) {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let object = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
    }))
    .expect("node");
    match nodes.create(&PostParams::default(), &object).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_already_exists() => {}
        Err(e) => panic!("creating node {name}: {e}"),
    }
}

pub async fn create_pod(
    client: &kube::Client,
    ns: &str,
    name: &str,
    sa: &str,
    node_name: &str,
    labels: &[(&str, &str)],
) -> Pod {
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels_json(labels)},
        "spec": {
            "serviceAccountName": sa,
            "nodeName": node_name,
            "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": "weft.test/app"}],
        },
    }))
    .expect("pod");
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("creating pod {ns}/{name}: {e}"))
}

/// Sets a pod's IP as kubelet would once its sandbox is up: a patch of the status
/// subresource with podIP, podIPs, phase Running (and the Ready condition).
pub async fn set_pod_ip(client: &kube::Client, ns: &str, name: &str, ip: &str) -> Pod {
    let status = json!({
        "status": {
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
        }
    });
    Api::<Pod>::namespaced(client.clone(), ns)
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("setting the IP of pod {ns}/{name}: {e}"))
}

/// The HTTP status code of an API error, if it is one.
pub fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn kubeconfig_text(server: &str, ca_pem: &str, user: Value) -> String {
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "weft-test", "cluster": {
            "server": server,
            "certificate-authority-data": b64(ca_pem),
        }}],
        "users": [{"name": "weft-test", "user": user}],
        "contexts": [{"name": "weft-test", "context": {
            "cluster": "weft-test", "user": "weft-test", "namespace": "default",
        }}],
        "current-context": "weft-test",
    });
    serde_yaml::to_string(&doc).expect("kubeconfig YAML")
}

async fn client_from_kubeconfig_text(text: &str) -> kube::Client {
    let kubeconfig = Kubeconfig::from_yaml(text).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kube config");
    kube::Client::try_from(config).expect("kube client")
}

/// Writes a credentials file readable by its owner only.
fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The PEMs the test process keeps; everything is also written to the temp dir.
struct Pki {
    ca_pem: String,
    admin_cert_pem: String,
    admin_key_pem: String,
}

impl Pki {
    /// Cluster CA, serving certificate for `ip`, admin client certificate
    /// (O=system:masters) and the ECDSA service-account signing key, into `dir`.
    fn generate(dir: &Path, ip: &str) -> Pki {
        let write = |name: &str, pem: &str| {
            write_private(&dir.join(name), pem);
        };
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "weft-test-kubernetes-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        write("ca.crt", &ca.pem());
        write("ca.key", &ca_key.serialize_pem());

        let sans: Vec<String> = [
            ip,
            "127.0.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "10.96.0.1",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let serving_key = KeyPair::generate().expect("serving key");
        let mut serving = CertificateParams::new(sans).expect("serving params");
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving = serving
            .signed_by(&serving_key, &ca, &ca_key)
            .expect("serving certificate");
        write("apiserver.crt", &serving.pem());
        write("apiserver.key", &serving_key.serialize_pem());

        let admin_key = KeyPair::generate().expect("admin key");
        let mut admin = CertificateParams::new(Vec::<String>::new()).expect("admin params");
        admin
            .distinguished_name
            .push(DnType::CommonName, "weft-test-admin");
        admin
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin = admin
            .signed_by(&admin_key, &ca, &ca_key)
            .expect("admin certificate");
        write("admin.crt", &admin.pem());
        write("admin.key", &admin_key.serialize_pem());

        // ECDSA P-256 (rcgen's default): tokens are ES256.
        let sa_key = KeyPair::generate().expect("service-account key");
        write("sa.key", &sa_key.serialize_pem());
        write("sa.pub", &sa_key.public_key_pem());

        Pki {
            ca_pem: ca.pem(),
            admin_cert_pem: admin.pem(),
            admin_key_pem: admin_key.serialize_pem(),
        }
    }
}

/// A rustls client config trusting the cluster CA and presenting the admin certificate.
fn tls_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .map(|c| c.expect("admin certificate PEM"))
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("admin key PEM");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("admin client certificate");
    Arc::new(config)
}

type ConnectRequest = (SocketAddr, mpsc::Sender<std::io::Result<TcpStream>>);

/// One thread living in a network namespace (setns on itself only) that opens TCP
/// connections from there on request.
#[derive(Clone)]
struct NetnsDialer {
    requests: mpsc::Sender<ConnectRequest>,
}

impl NetnsDialer {
    fn start(netns: &str) -> NetnsDialer {
        let path = format!("/var/run/netns/{netns}");
        let (requests, incoming) = mpsc::channel::<ConnectRequest>();
        let (entered_tx, entered_rx) = mpsc::channel::<Result<(), String>>();
        std::thread::Builder::new()
            .name(format!("dial-{netns}"))
            .spawn(move || {
                let entered = std::fs::File::open(&path)
                    .map_err(|e| format!("open {path}: {e}"))
                    .and_then(|ns| {
                        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                            .map_err(|e| format!("setns {path}: {e}"))
                    });
                let ok = entered.is_ok();
                let _ = entered_tx.send(entered);
                if !ok {
                    return;
                }
                // Ends when every sender (server, forwarder) is gone.
                for (addr, reply) in incoming {
                    let _ = reply.send(TcpStream::connect_timeout(&addr, Duration::from_secs(5)));
                }
            })
            .expect("dialer thread");
        entered_rx
            .recv()
            .expect("dialer thread answers")
            .unwrap_or_else(|e| panic!("cannot enter the network namespace: {e}"));
        NetnsDialer { requests }
    }

    fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let gone = || std::io::Error::other("namespace dialer stopped");
        let (reply, answer) = mpsc::channel();
        self.requests.send((addr, reply)).map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }
}

/// host 127.0.0.1:<ephemeral> -> `target` inside the namespace, both directions copied by
/// std threads.
struct Forwarder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl Forwarder {
    fn start(dialer: NetnsDialer, target: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind forwarder");
        let addr = listener.local_addr().expect("forwarder address");
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let stop = stop.clone();
            let open = open.clone();
            std::thread::Builder::new()
                .name("kapi-forward".into())
                .spawn(move || {
                    for client in listener.incoming() {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let Ok(client) = client else { continue };
                        // Refused (server stopped): the client's connection just closes.
                        let Ok(server) = dialer.connect(target) else {
                            continue;
                        };
                        let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
                            client.try_clone(),
                            server.try_clone(),
                            client.try_clone(),
                            server.try_clone(),
                        ) else {
                            continue;
                        };
                        open.lock().expect("forwarder lock").extend([c3, s3]);
                        std::thread::spawn(move || pipe(client, server));
                        std::thread::spawn(move || pipe(s2, c2));
                    }
                })
                .expect("forwarder thread")
        };
        Forwarder {
            addr,
            stop,
            open,
            acceptor: Some(acceptor),
        }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    match std::io::copy(&mut from, &mut to) {
        Ok(_) => {
            let _ = to.shutdown(Shutdown::Write);
        }
        Err(_) => {
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        if let Ok(open) = self.open.lock() {
            for stream in open.iter() {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}
