//! A Kubernetes-like cluster on network namespaces, for pods-mode end-to-end tests and the
//! demo: N node namespaces joined by an underlay bridge (each node forwarding, with routes
//! to the others' pod CIDRs), pods created by the real CNI reference plugins (`loopback`,
//! then `bridge` + `host-local` chained with `weft-cni`) invoked the way a container runtime
//! does: ADD in order passing prevResult, DEL in reverse with the cached result.
//!
//! One shared mesh config file is written from the namespaces, pods and extra objects the
//! test declares; every daemon watches it. Each write carries a revision (the label of a
//! `weft-test-revision` Namespace), so [`Cluster::settle`] can wait until every daemon has
//! really read that write (applied: the revision shows in its `/config_dump`; rejected: its
//! rejected-reload count went up) instead of sleeping.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::testbed::{binary, sh, unique, Netns, Process};

pub mod kube;

pub const CNI_DIR: &str = "/usr/lib/cni";
pub const AMBIENT: (&str, &str) = ("weft.dev/dataplane-mode", "ambient");

/// Whether a pods-mode end-to-end test can run: `tools` are present (see
/// [`super::testbed::e2e_ready`]) and the CNI reference plugins are installed.
pub fn pods_e2e_ready(tools: &[&str]) -> bool {
    if !super::testbed::e2e_ready(tools) {
        return false;
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        let path = Path::new(CNI_DIR).join(plugin);
        assert!(
            path.exists(),
            "{} missing: run scripts/install-deps.sh",
            path.display()
        );
    }
    true
}

/// Wall-clock seconds since the epoch, as the test apps print them.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Waits for a stream client (tests/apps/stream_client.py) to report "closed <t>" (its
/// connection was cut at time t) or "alive <t>" (it ran its time).
pub fn stream_outcome(p: &Process, timeout: Duration) -> (String, f64) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let log = p.log_text();
        for line in log.lines() {
            let mut parts = line.split_whitespace();
            if let (Some(word @ ("closed" | "alive")), Some(t)) = (parts.next(), parts.next()) {
                return (word.to_owned(), t.parse().expect("a time"));
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stream client never finished: {log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One node: a namespace with a bridge for its pods, an underlay leg and a daemon.
pub struct Node {
    pub name: String,
    pub ns: Netns,
    pub underlay_ip: String,
    pub pod_cidr: String,
    pub run_dir: PathBuf,
    pub daemon: Option<Process>,
    /// The node's CNI conf and bin dirs, as a runtime reads them ([`Cluster::runtime_cni`]).
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
    ipam_dir: PathBuf,
    /// The node's own kubeconfig (a token bound to its weft-node pod), in signer mode
    /// ([`Cluster::with_signer`]); else every daemon shares the API's node kubeconfig.
    pub kubeconfig: Option<PathBuf>,
}

/// One pod sandbox.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub node: usize,
}

pub struct Pod {
    pub spec: PodSpec,
    pub ns: Netns,
    pub container_id: String,
    pub ip: String,
    /// The final CNI result, cached for DEL as a runtime does.
    result: Value,
    /// The plugin chain ADD ran (full confs), for DEL in reverse as a runtime does.
    chain: Vec<Value>,
    /// Other processes started in the pod (killed with it).
    pub extra: Vec<Process>,
}

pub struct Cluster {
    pub work: tempfile::TempDir,
    pub subnet: u8,
    pub config_path: PathBuf,
    pub ca_dir: PathBuf,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub extra_yaml: String,
    /// Extra flags for every daemon this cluster starts.
    pub daemon_args: Vec<String>,
    /// The umask daemons start with (e.g. "000", as a careless operator's shell has).
    pub daemon_umask: Option<String>,
    /// Run pods the way a container runtime does: the chain is the first file of the node's
    /// CNI conf dir (a primary `10-weftnet.conflist` with the bridge plugin alone is written
    /// there), plugins come from its bin dir, and daemons run with `--cni-install`.
    pub runtime_cni: bool,
    weft_node: PathBuf,
    weft_cni: PathBuf,
    _underlay: Netns,
    /// Revision of the last config written.
    revision: Cell<u64>,
    /// Writes not yet confirmed by every running daemon: (node, rejected count before).
    unsettled: RefCell<Vec<(usize, u64)>>,
    /// Signer mode ([`Cluster::with_signer`]): `weft signer` in the underlay, and daemons
    /// without `--ca-dir` (they ask it for certificates through CSRs).
    pub signer: Option<kube::Signer>,
    /// Kubernetes mode ([`Cluster::with_api`]): the API server the daemons watch instead of
    /// the config file. Declared last: it is dropped after the daemons.
    pub api: Option<kube::KubeApi>,
}

/// The Namespace whose label carries the config revision.
const REVISION_NAMESPACE: &str = "weft-test-revision";

impl Cluster {
    /// Builds `nodes` nodes on a fresh underlay; no daemons yet.
    pub fn new(nodes: usize) -> Cluster {
        let work = tempfile::tempdir().expect("tempdir");
        let ca_dir = work.path().join("ca");
        weft::identity::MeshCa::init(&ca_dir, "cluster.local", false).expect("ca");
        // A /16 per test process, so parallel tests never share addresses.
        let subnet = 20 + (std::process::id() % 200) as u8;
        let underlay = Netns::new("wul");
        let bridge = "ulbr";
        underlay.run(&["ip", "link", "add", bridge, "type", "bridge"]);
        underlay.run(&["ip", "link", "set", bridge, "up"]);
        let mut built = Vec::new();
        for i in 0..nodes {
            let ns = Netns::new("wnode");
            ns.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            let leg = unique("ul");
            sh(Command::new("ip").args([
                "link",
                "add",
                "ul0",
                "netns",
                &ns.name,
                "type",
                "veth",
                "peer",
                "name",
                &leg,
                "netns",
                &underlay.name,
            ]));
            underlay.run(&["ip", "link", "set", &leg, "master", bridge]);
            underlay.run(&["ip", "link", "set", &leg, "up"]);
            let underlay_ip = format!("10.{subnet}.0.{}", i + 1);
            ns.run(&[
                "ip",
                "addr",
                "add",
                &format!("{underlay_ip}/24"),
                "dev",
                "ul0",
            ]);
            ns.run(&["ip", "link", "set", "ul0", "up"]);
            let run_dir = work.path().join(format!("node-{}", i + 1));
            std::fs::create_dir_all(&run_dir).unwrap();
            built.push(Node {
                name: format!("node-{}", i + 1),
                ns,
                underlay_ip,
                pod_cidr: format!("10.{subnet}.{}.0/24", i + 1),
                ipam_dir: run_dir.join("ipam"),
                cni_conf_dir: run_dir.join("net.d"),
                cni_bin_dir: run_dir.join("cni-bin"),
                run_dir,
                daemon: None,
                kubeconfig: None,
            });
        }
        for (i, node) in built.iter().enumerate() {
            for (j, other) in built.iter().enumerate() {
                if i != j {
                    node.ns.run(&[
                        "ip",
                        "route",
                        "add",
                        &other.pod_cidr,
                        "via",
                        &other.underlay_ip,
                    ]);
                }
            }
        }
        let config_path = work.path().join("mesh.yaml");
        let cluster = Cluster {
            work,
            subnet,
            config_path,
            ca_dir,
            nodes: built,
            pods: Vec::new(),
            namespaces: BTreeMap::new(),
            extra_yaml: String::new(),
            daemon_args: Vec::new(),
            daemon_umask: None,
            runtime_cni: false,
            weft_node: binary("weft-node"),
            weft_cni: binary("weft-cni"),
            _underlay: underlay,
            revision: Cell::new(0),
            unsettled: RefCell::new(Vec::new()),
            signer: None,
            api: None,
        };
        cluster.write_config();
        cluster
    }

    /// A cluster of `nodes` nodes with every daemon running on a config that declares
    /// `shop` (enrolled) and, if `with_legacy`, `legacy` (not enrolled).
    pub fn running(nodes: usize, with_legacy: bool) -> Cluster {
        let mut c = Cluster::new(nodes);
        c.namespace("shop", &[AMBIENT]);
        if with_legacy {
            c.namespace("legacy", &[]);
        }
        c.write_config();
        for i in 0..nodes {
            c.start_daemon(i);
        }
        c
    }

    /// Declares a mesh namespace with labels (written to the config at the next write).
    pub fn namespace(&mut self, name: &str, labels: &[(&str, &str)]) {
        self.namespaces.insert(
            name.to_owned(),
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
    }

    /// Writes the mesh config (atomically) from everything declared so far.
    pub fn write_config(&self) {
        self.write_config_text(None);
    }

    /// Writes the config with `spec` already listed (no IP yet), as the API server would
    /// know a pod before its sandbox exists.
    fn write_config_with_pending(&self, spec: &PodSpec) {
        self.write_config_text(Some(spec));
    }

    fn write_config_text(&self, pending: Option<&PodSpec>) {
        let revision = self.revision.get() + 1;
        self.revision.set(revision);
        let mut docs = vec![format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {REVISION_NAMESPACE}\n  labels: {{revision: \"{revision}\"}}\n"
        )];
        for (name, labels) in &self.namespaces {
            docs.push(format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels: {}\n",
                json!(labels)
            ));
        }
        for pod in &self.pods {
            docs.push(pod_doc(&pod.spec, Some(&pod.ip)));
        }
        if let Some(spec) = pending {
            docs.push(pod_doc(spec, None));
        }
        let mut text = docs.join("---\n");
        if !self.extra_yaml.is_empty() {
            text.push_str("---\n");
            text.push_str(&self.extra_yaml);
        }
        // Baselines first: a daemon may read the file the moment it is renamed.
        let baselines: Vec<(usize, u64)> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].daemon.is_some())
            .filter_map(|i| self.config_status(i).map(|(_, rejected)| (i, rejected)))
            .collect();
        let tmp = self.config_path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.config_path).unwrap();
        // Only the newest write matters; its baseline is the latest one.
        *self.unsettled.borrow_mut() = baselines;
    }

    /// Node `i`'s daemon's view of the config: (revision in force, rejected reloads).
    /// None while its admin port does not answer.
    pub fn config_status(&self, i: usize) -> Option<(u64, u64)> {
        let dump = self.dump(i)?;
        let revision = dump["mesh"]["namespaces"]
            .as_array()?
            .iter()
            .find(|ns| ns["name"] == REVISION_NAMESPACE)
            .and_then(|ns| ns["labels"]["revision"].as_str()?.parse().ok())
            .unwrap_or(0);
        let rejected = dump["config"]["rejected"].as_u64()?;
        Some((revision, rejected))
    }

    /// Node `i`'s `/config_dump`, or None while its admin port does not answer.
    pub fn dump(&self, i: usize) -> Option<Value> {
        let out = self.nodes[i]
            .ns
            .command("curl")
            .args([
                "-sf",
                "--max-time",
                "2",
                "http://127.0.0.1:15000/config_dump",
            ])
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Starts (or restarts) the daemon of node `i` and waits until it is ready.
    pub fn start_daemon(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let mut cmd = match &self.daemon_umask {
            Some(umask) => {
                let mut cmd = node.ns.command("sh");
                cmd.args(["-c", &format!("umask {umask} && exec \"$0\" \"$@\"")])
                    .arg(&self.weft_node);
                cmd
            }
            None => node.ns.command(&self.weft_node),
        };
        cmd.args(["--mode", "pods", "--node-name", &node.name])
            .args(if self.runtime_cni {
                vec![
                    "--cni-install".into(),
                    "--cni-bin-dir".into(),
                    node.cni_bin_dir.clone().into_os_string(),
                    "--cni-conf-dir".into(),
                    node.cni_conf_dir.clone().into_os_string(),
                ]
            } else {
                Vec::new()
            })
            .args(&self.daemon_args)
            .args(
                std::env::var("WEFT_TEST_DAEMON_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .args(match &self.api {
                Some(api) => vec![
                    "--source".into(),
                    "kube".into(),
                    "--kubeconfig".into(),
                    node.kubeconfig
                        .clone()
                        .unwrap_or_else(|| api.node_kubeconfig.clone())
                        .into_os_string(),
                ],
                None => vec!["--config".into(), self.config_path.clone().into_os_string()],
            })
            .args(match &self.signer {
                Some(_) => Vec::new(),
                None => vec!["--ca-dir".into(), self.ca_dir.clone().into_os_string()],
            })
            .arg("--run-dir")
            .arg(&node.run_dir)
            .env(
                "RUST_LOG",
                std::env::var("WEFT_TEST_DAEMON_LOG")
                    .unwrap_or_else(|_| "info,weft=debug,weft_node=debug".into()),
            );
        let log = node.run_dir.join(format!("daemon-{}.log", unique("r")));
        let mut process = Process::spawn(cmd, &log, &node.name);
        process.wait_for_log("weft-node ready", Duration::from_secs(15));
        node.daemon = Some(process);
    }

    /// Starts a second daemon on node `i` from `binary` (an upgrade: the DaemonSet starts
    /// the new pod before it stops the old one) and returns it once it logs ready; node
    /// `i`'s current daemon stays in `nodes[i].daemon`.
    pub fn start_daemon_beside(&mut self, i: usize, binary: &Path) -> Process {
        let old = self.nodes[i].daemon.take();
        let saved = std::mem::replace(&mut self.weft_node, binary.to_owned());
        self.start_daemon(i);
        self.weft_node = saved;
        let new = self.nodes[i].daemon.take().expect("just started");
        self.nodes[i].daemon = old;
        new
    }

    /// Kills node `i`'s daemon outright (SIGKILL), as a crash would.
    pub fn kill_daemon(&mut self, i: usize) {
        if let Some(mut daemon) = self.nodes[i].daemon.take() {
            let _ = daemon.child.kill();
            let _ = daemon.child.wait();
        }
    }

    pub fn daemon_log(&self, i: usize) -> String {
        self.nodes[i]
            .daemon
            .as_ref()
            .map(|d| d.log_text())
            .unwrap_or_default()
    }

    /// Length of node `i`'s daemon log so far: pass it to [`Cluster::daemon_log_since`].
    pub fn daemon_log_mark(&self, i: usize) -> usize {
        self.daemon_log(i).len()
    }

    /// What node `i`'s daemon logged after `mark`.
    pub fn daemon_log_since(&self, i: usize, mark: usize) -> String {
        let log = self.daemon_log(i);
        String::from_utf8_lossy(log.as_bytes().get(mark..).unwrap_or_default()).into_owned()
    }

    /// The weft-cni entry of node `i`'s conflist, ready to run on its own.
    pub fn weft_cni_conf(&self, i: usize, cni_version: &str) -> Value {
        let mut conf = self.conflist(&self.nodes[i]).pop().expect("weft-cni entry");
        conf["cniVersion"] = json!(cni_version);
        conf["name"] = json!("weftnet");
        conf
    }

    /// The daemon's process id on node `i`.
    pub fn daemon_pid(&self, i: usize) -> u32 {
        self.nodes[i].daemon.as_ref().expect("daemon").child.id()
    }

    /// GET from inside node `i`'s namespace (its metrics, admin or readiness port).
    pub fn node_get(&self, i: usize, url: &str) -> String {
        Cluster::curl(&self.nodes[i].ns, url).unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// The bridge plugin of node `i` (the primary CNI of [`Cluster::runtime_cni`]).
    fn bridge_plugin(node: &Node) -> Value {
        json!({
            "type": "bridge", "bridge": "wbr0", "isGateway": true, "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": node.pod_cidr}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": node.ipam_dir,
            }
        })
    }

    /// Writes node `i`'s primary CNI config (`10-weftnet.conflist`: the bridge plugin,
    /// `extra` merged into it) atomically, as a primary CNI's installer does.
    pub fn write_primary_conflist(&self, i: usize, extra: Value) {
        let node = &self.nodes[i];
        std::fs::create_dir_all(&node.cni_conf_dir).unwrap();
        std::fs::create_dir_all(&node.cni_bin_dir).unwrap();
        let mut bridge = Cluster::bridge_plugin(node);
        if let (Some(bridge), Value::Object(extra)) = (bridge.as_object_mut(), extra) {
            bridge.extend(extra);
        }
        let list = json!({"cniVersion": "1.0.0", "name": "weftnet", "plugins": [bridge]});
        let path = node.cni_conf_dir.join("10-weftnet.conflist");
        let tmp = node.cni_conf_dir.join(".10-weftnet.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(&list).unwrap()).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }

    /// The chain a runtime would run on node `i` now: the first loadable file of its conf
    /// dir (byte order; `.conf`, `.conflist`, `.json`), as full plugin confs.
    pub fn runtime_chain(&self, i: usize) -> (String, Vec<Value>) {
        let dir = &self.nodes[i].cni_conf_dir;
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| {
                [".conf", ".conflist", ".json"]
                    .iter()
                    .any(|ext| n.ends_with(ext))
            })
            .collect();
        names.sort();
        let first = names
            .first()
            .unwrap_or_else(|| panic!("no CNI config in {}", dir.display()));
        let text = std::fs::read_to_string(dir.join(first)).unwrap();
        let list: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{first} is not JSON ({e}): {text}"));
        let plugins = list["plugins"]
            .as_array()
            .unwrap_or_else(|| panic!("{first} has no plugins: {text}"))
            .iter()
            .map(|p| {
                let mut conf = p.clone();
                conf["cniVersion"] = list["cniVersion"].clone();
                conf["name"] = list["name"].clone();
                conf
            })
            .collect();
        (first.clone(), plugins)
    }

    /// The chain ADD runs on node `i`: from its conf dir in runtime mode, else fixed.
    fn chain(&self, i: usize) -> Vec<Value> {
        if self.runtime_cni {
            return self.runtime_chain(i).1;
        }
        self.conflist(&self.nodes[i])
            .into_iter()
            .map(|mut conf| {
                conf["cniVersion"] = json!("1.0.0");
                conf["name"] = json!("weftnet");
                conf
            })
            .collect()
    }

    fn conflist(&self, node: &Node) -> Vec<Value> {
        vec![
            Cluster::bridge_plugin(node),
            json!({
                "type": "weft-cni",
                "socketPath": node.run_dir.join("cni.sock"),
                "runDir": node.run_dir,
            }),
        ]
    }

    fn plugin_path(&self, node: usize, plugin_type: &str) -> PathBuf {
        if self.runtime_cni {
            // As a runtime: the node's bin dir (where weft-node installs weft-cni) first.
            let installed = self.nodes[node].cni_bin_dir.join(plugin_type);
            if installed.exists() {
                return installed;
            }
            return Path::new(CNI_DIR).join(plugin_type);
        }
        if plugin_type == "weft-cni" {
            self.weft_cni.clone()
        } else {
            Path::new(CNI_DIR).join(plugin_type)
        }
    }

    /// Runs one CNI plugin in node `i`'s namespace; Ok(stdout) or Err((exit code, stdout)).
    pub fn run_plugin(
        &self,
        i: usize,
        command: &str,
        conf: &Value,
        container_id: &str,
        netns: &str,
        cni_args: &str,
    ) -> Result<String, (i32, String)> {
        let plugin_type = conf["type"].as_str().expect("type");
        let mut cmd = self.nodes[i].ns.command(self.plugin_path(i, plugin_type));
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", cni_args)
            .env(
                "CNI_PATH",
                format!("{CNI_DIR}:{}", self.weft_cni.parent().unwrap().display()),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("run CNI plugin");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(conf.to_string().as_bytes()).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err((out.status.code().unwrap_or(-1), stdout))
        }
    }

    /// Creates a pod on node `node` through the CNI chain. The pod is listed in the config
    /// first (without an IP), then its IP is added once CNI assigned it.
    pub fn add_pod(
        &mut self,
        node: usize,
        namespace: &str,
        name: &str,
        service_account: &str,
        labels: &[(&str, &str)],
    ) -> Result<usize, (i32, String)> {
        self.add_pod_listed(node, namespace, name, service_account, labels, true)
    }

    /// Creates a pod whose CNI ADD reaches the daemons before the config lists it (as when
    /// the API server's watch lags the kubelet); the config lists it once ADD is done.
    pub fn add_pod_unlisted(
        &mut self,
        node: usize,
        namespace: &str,
        name: &str,
        service_account: &str,
    ) -> Result<usize, (i32, String)> {
        self.add_pod_listed(node, namespace, name, service_account, &[], false)
    }

    fn add_pod_listed(
        &mut self,
        node: usize,
        namespace: &str,
        name: &str,
        service_account: &str,
        labels: &[(&str, &str)],
        listed_before_add: bool,
    ) -> Result<usize, (i32, String)> {
        let mut spec = PodSpec {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            uid: uuid_for(&format!("{}/{namespace}/{name}", self.subnet)),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            node,
        };
        if self.api.is_some() {
            // The API server knows the pod before its sandbox exists, as with a kubelet.
            assert!(
                listed_before_add,
                "Kubernetes mode lists every pod before ADD"
            );
            self.kube_create_pod(&mut spec);
        } else if listed_before_add {
            self.write_config_with_pending(&spec);
            // Every daemon knows the pod before its sandbox appears.
            self.settle();
        }
        let ns = Netns::new("wpod");
        let netns_path = format!("/var/run/netns/{}", ns.name);
        let container_id = unique("ctr");
        let args = pod_args(&spec);
        let lo = json!({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"});
        self.run_plugin(node, "ADD", &lo, &container_id, &netns_path, &args)?;
        let mut prev: Option<Value> = None;
        let chain = self.chain(node);
        for plugin in &chain {
            let mut conf = plugin.clone();
            if let Some(prev) = &prev {
                conf["prevResult"] = prev.clone();
            }
            let out = self.run_plugin(node, "ADD", &conf, &container_id, &netns_path, &args)?;
            prev = Some(serde_json::from_str(&out).unwrap_or_else(|e| {
                panic!("plugin {} printed non-JSON {out:?}: {e}", conf["type"])
            }));
        }
        let result = prev.expect("result");
        let ip = result["ips"][0]["address"]
            .as_str()
            .expect("ip")
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        self.pods.push(Pod {
            spec,
            ns,
            container_id,
            ip,
            result,
            chain,
            extra: Vec::new(),
        });
        // Every daemon knows the pod's IP before a test talks to it.
        if self.api.is_some() {
            let pod = self.pods.last().expect("just pushed");
            self.kube_set_pod_ip(&pod.spec, &pod.ip);
        } else {
            self.write_config();
        }
        self.settle();
        Ok(self.pods.len() - 1)
    }

    /// Deletes a pod the way a runtime does: DEL through the chain in reverse order.
    pub fn del_pod(&mut self, index: usize) {
        self.cni_del(index).expect("DEL succeeds");
        let pod = self.pods.remove(index);
        let netns_path = format!("/var/run/netns/{}", pod.ns.name);
        let lo = json!({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"});
        let _ = self.run_plugin(
            pod.spec.node,
            "DEL",
            &lo,
            &pod.container_id,
            &netns_path,
            &pod_args(&pod.spec),
        );
        self.write_config();
    }

    /// Runs CNI DEL for pod `index` through the chain (reverse order) and keeps the pod's
    /// sandbox, so a test can look at it afterwards or run DEL again.
    pub fn cni_del(&self, index: usize) -> Result<(), (i32, String)> {
        let pod = &self.pods[index];
        let node = pod.spec.node;
        let netns_path = format!("/var/run/netns/{}", pod.ns.name);
        for plugin in pod.chain.iter().rev() {
            let mut conf = plugin.clone();
            conf["prevResult"] = pod.result.clone();
            self.run_plugin(
                node,
                "DEL",
                &conf,
                &pod.container_id,
                &netns_path,
                &pod_args(&pod.spec),
            )?;
        }
        Ok(())
    }

    /// Runs weft-cni's CHECK for pod `index` (with its cached result), as a runtime does.
    pub fn cni_check(&self, index: usize) -> Result<String, (i32, String)> {
        let pod = &self.pods[index];
        let mut conf = self.weft_cni_conf(pod.spec.node, "1.0.0");
        conf["prevResult"] = pod.result.clone();
        let netns_path = format!("/var/run/netns/{}", pod.ns.name);
        self.run_plugin(
            pod.spec.node,
            "CHECK",
            &conf,
            &pod.container_id,
            &netns_path,
            &pod_args(&pod.spec),
        )
    }

    /// The pods node `i`'s state file lists, by container id.
    pub fn state_file_pods(&self, i: usize) -> Vec<String> {
        let path = self.nodes[i].run_dir.join("state.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let state: Value = serde_json::from_str(&text).expect("state.json is JSON");
        state["pods"]
            .as_object()
            .map(|pods| pods.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Starts the test HTTP app in a pod on `port`, answering "<name> sees <client ip>".
    pub fn start_app(&mut self, pod: usize, port: u16) {
        let name = self.pods[pod].spec.name.clone();
        self.start_app_named(pod, port, &name);
    }

    /// Like [`Cluster::start_app`], answering as `name`; several may run in one pod.
    pub fn start_app_named(&mut self, pod: usize, port: u16, name: &str) {
        let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/http_app.py");
        let p = &mut self.pods[pod];
        let mut cmd = p.ns.command("python3");
        cmd.arg(&app).args(["0.0.0.0", &port.to_string(), name]);
        let log = self.work.path().join(format!("app-{name}-{port}.log"));
        p.extra.push(Process::spawn(
            cmd,
            &log,
            &format!("app {name} in {}", p.spec.name),
        ));
        // Wait until it accepts, from inside the pod (loopback is never captured).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ok =
                p.ns.command("curl")
                    .args([
                        "-s",
                        "--max-time",
                        "1",
                        &format!("http://127.0.0.1:{port}/"),
                    ])
                    .output()
                    .is_ok_and(|o| o.status.success());
            if ok {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "app in {} did not start",
                p.spec.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the line echo server (tests/apps/echo_server.py) in a pod on `port`.
    pub fn start_echo(&mut self, pod: usize, port: u16) {
        self.start_tcp_app(pod, "echo_server.py", port);
    }

    /// Starts a TCP app from tests/apps (taking the port as its argument) and waits for it.
    pub fn start_tcp_app(&mut self, pod: usize, script_name: &str, port: u16) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/apps")
            .join(script_name);
        let p = &mut self.pods[pod];
        let mut cmd = p.ns.command("python3");
        cmd.arg(&script).arg(port.to_string());
        let log = self
            .work
            .path()
            .join(format!("{script_name}-{}-{port}.log", p.spec.name));
        p.extra.push(Process::spawn(
            cmd,
            &log,
            &format!("{script_name} in {}", p.spec.name),
        ));
        self.wait_for_port(pod, port, script_name);
    }

    /// Waits until something in the pod accepts TCP on 127.0.0.1:`port`.
    pub fn wait_for_port(&self, pod: usize, port: u16, what: &str) {
        let p = &self.pods[pod];
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let probe =
            format!("import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1)");
        while !p
            .ns
            .command("python3")
            .args(["-c", &probe])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{what} in {} did not start on port {port}",
                p.spec.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts tests/apps/stream_client.py in a pod: one long-lived connection to `target`,
    /// returned once its first ping came back.
    pub fn start_stream_client(&self, pod: usize, host: &str, port: u16, seconds: u32) -> Process {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/stream_client.py");
        let p = &self.pods[pod];
        let mut cmd = p.ns.command("python3");
        cmd.arg(&script)
            .args([host, &port.to_string(), &seconds.to_string()]);
        let log = self.work.path().join(format!(
            "{}.log",
            unique(&format!("stream-{}-", p.spec.name))
        ));
        let mut process = Process::spawn(cmd, &log, &format!("stream client in {}", p.spec.name));
        // Returned only once data went both ways: the connection was admitted and works.
        process.wait_for_log("echoed ", Duration::from_secs(10));
        process
    }

    /// curl from inside a pod's namespace (or any namespace).
    pub fn curl(ns: &Netns, url: &str) -> Result<String, String> {
        Cluster::curl_args(ns, &[url])
    }

    /// curl POSTing `body` from inside a namespace.
    pub fn curl_post(ns: &Netns, url: &str, body: &str) -> Result<String, String> {
        Cluster::curl_args(ns, &["--data", body, url])
    }

    fn curl_args(ns: &Netns, args: &[&str]) -> Result<String, String> {
        let out = ns
            .command("curl")
            .args(["-sS", "--max-time", "3"])
            .args(args)
            .output()
            .expect("curl");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.spec.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    pub fn pod_index(&self, name: &str) -> usize {
        self.pods
            .iter()
            .position(|p| p.spec.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// Waits until every running daemon has read the last config written (applied it, or
    /// rejected it) and is ready (every pod that should be enrolled is serving).
    pub fn settle(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let revision = self.revision.get();
        let unsettled = std::mem::take(&mut *self.unsettled.borrow_mut());
        for (i, rejected_before) in unsettled {
            if self.nodes[i].daemon.is_none() {
                continue;
            }
            loop {
                match self.config_status(i) {
                    Some((seen, _)) if seen == revision => break,
                    Some((_, rejected)) if rejected > rejected_before => break,
                    _ => {}
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} never read config revision {revision} (status {:?})",
                    self.nodes[i].name,
                    self.config_status(i)
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for node in self.nodes.iter().filter(|n| n.daemon.is_some()) {
            loop {
                let ready = node
                    .ns
                    .command("curl")
                    .args([
                        "-sf",
                        "--max-time",
                        "1",
                        "http://127.0.0.1:15021/healthz/ready",
                    ])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if ready {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} never became ready: {:?}\n{}",
                    node.name,
                    Cluster::curl(&node.ns, "http://127.0.0.1:15021/healthz/ready"),
                    node.daemon
                        .as_ref()
                        .map(|d| d.log_text())
                        .unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Apps and daemons first (Process drops kill them), then pods, nodes, underlay.
        for pod in &mut self.pods {
            pod.extra.clear();
        }
        for node in &mut self.nodes {
            node.daemon.take();
        }
        self.pods.clear();
    }
}

/// A stable canonical UUID (8-4-4-4-12 lowercase hex) for a name, as pod UIDs are: the
/// kubelet names pod cgroups after them, and discovery reads them from there.
pub fn uuid_for(name: &str) -> String {
    use std::hash::{Hash, Hasher};
    let half = |salt: u8| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (salt, name).hash(&mut hasher);
        hasher.finish()
    };
    let hex = format!("{:016x}{:016x}", half(1), half(2));
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// CNI_ARGS for a pod, as the kubelet passes them.
fn pod_args(spec: &PodSpec) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={}",
        spec.namespace, spec.name, spec.uid
    )
}

fn pod_doc(spec: &PodSpec, ip: Option<&str>) -> String {
    let status = ip
        .map(|ip| format!("status:\n  podIP: {ip}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}\n  uid: {}\n  labels: {}\nspec:\n  serviceAccountName: {}\n  nodeName: node-{}\n{status}",
        spec.name,
        spec.namespace,
        spec.uid,
        json!(spec.labels),
        spec.service_account,
        spec.node + 1
    )
}

/// The outcome line of `tests/apps/conn_load.py` (`result ok=N refused=N ...`).
pub struct ConnLoadResult {
    pub line: String,
    /// The whole log, for failure messages.
    pub log: String,
}

impl ConnLoadResult {
    /// How many connections ended as `key` (ok, refused, reset, timeout, other).
    pub fn count(&self, key: &str) -> u64 {
        self.line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {}", self.line))
    }

    /// (refused, reset, timeout, other): all zero when no connection failed.
    pub fn failures(&self) -> (u64, u64, u64, u64) {
        (
            self.count("refused"),
            self.count("reset"),
            self.count("timeout"),
            self.count("other"),
        )
    }
}

impl Cluster {
    /// Starts `tests/apps/conn_load.py` in pod `from`: `rate` new connections per second to
    /// `ip:port` for `seconds`, each sending a line and reading the echo; returns once it
    /// has started.
    pub fn start_conn_load(
        &self,
        from: usize,
        ip: &str,
        port: u16,
        rate: u32,
        seconds: u32,
    ) -> Process {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps/conn_load.py");
        let mut cmd = self.pods[from].ns.command("python3");
        cmd.arg(&script).args([
            ip,
            &port.to_string(),
            &rate.to_string(),
            &seconds.to_string(),
        ]);
        let log = self
            .work
            .path()
            .join(format!("{}.log", unique("conn_load")));
        let mut load = Process::spawn(cmd, &log, "connection load");
        load.wait_for_log("started", Duration::from_secs(10));
        load
    }
}

/// Waits (up to `within`) for a connection load's result line.
pub fn conn_load_result(load: &Process, within: Duration) -> ConnLoadResult {
    let deadline = Instant::now() + within;
    loop {
        let log = load.log_text();
        if let Some(line) = log.lines().find(|l| l.starts_with("result ")) {
            return ConnLoadResult {
                line: line.to_owned(),
                log,
            };
        }
        assert!(Instant::now() < deadline, "load never finished: {log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
