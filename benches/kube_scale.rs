//! The Kubernetes source at scale (see benches/README.md): a real kube-apiserver + etcd
//! (tests/common/apiserver.rs) in a network namespace of its own, N pods in M ambient
//! namespaces over 100 node names (IPs set through the status subresource) and S services
//! with selectors, created through the admin client with bounded concurrency, and two release
//! `weft-node --mode host --source kube` daemons inside the namespace:
//!
//! - A starts on the empty cluster: RSS at rest, then how it absorbs the creation;
//! - B starts once everything exists: time to its first full sync (`/config_dump` shows all N
//!   workloads and S services), RSS after it, memory per pod;
//! - churn: pods created (IP set) and deleted (grace period 0) at a fixed rate while both run,
//!   a raw watch of all pods counting the events and bytes the API server sends each watcher,
//!   the daemons' rebuilds and CPU seconds, and how long until each dump matches the API.
//!
//! Run as root through `bash benches/kube_scale.sh` (it builds the release binaries and the
//! API server first). Arguments: `--pods N --namespaces M --services S --nodes K --inflight C
//! --churn-rate R --churn-secs T --churn-lifetime-secs L --no-write`. The figures are printed
//! and written into the `## Kubernetes source at scale` section of `benches/RESULTS.md` (the
//! rest of the file is left as it is).

#[path = "../tests/common/mod.rs"]
mod common;
// Only its RESULTS.md section helper is used here.
#[allow(dead_code)]
#[path = "support/mesh_report.rs"]
mod report;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use common::apiserver::{self, ApiServer};
use common::testbed::{self, Process};

/// Namespaces of the benchmark's objects are named `scale-<i>`.
const NS_PREFIX: &str = "scale-";
/// The node both daemons run as.
const NODE: &str = "node-7";
/// How long a daemon may take to show what the API holds before the run fails.
const SYNC_TIMEOUT: Duration = Duration::from_secs(600);
/// Scale of the fan-out paragraph.
const BIG_NODES: f64 = 5000.0;
const BIG_PODS: f64 = 150_000.0;

#[derive(Debug, Clone)]
struct Opts {
    pods: usize,
    namespaces: usize,
    services: usize,
    nodes: usize,
    inflight: usize,
    churn_rate: u64,
    churn_secs: u64,
    churn_lifetime_secs: u64,
    write: bool,
}

impl Opts {
    fn parse() -> Opts {
        let mut o = Opts {
            pods: 10_000,
            namespaces: 20,
            services: 2_000,
            nodes: 100,
            inflight: 32,
            churn_rate: 100,
            churn_secs: 30,
            churn_lifetime_secs: 2,
            write: true,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut num = |what: &str| -> u64 {
                let v = args
                    .next()
                    .unwrap_or_else(|| panic!("{what} needs a value"));
                v.parse().unwrap_or_else(|e| panic!("{what} {v:?}: {e}"))
            };
            match arg.as_str() {
                "--pods" => o.pods = num("--pods") as usize,
                "--namespaces" => o.namespaces = num("--namespaces") as usize,
                "--services" => o.services = num("--services") as usize,
                "--nodes" => o.nodes = num("--nodes") as usize,
                "--inflight" => o.inflight = num("--inflight") as usize,
                "--churn-rate" => o.churn_rate = num("--churn-rate"),
                "--churn-secs" => o.churn_secs = num("--churn-secs"),
                "--churn-lifetime-secs" => o.churn_lifetime_secs = num("--churn-lifetime-secs"),
                "--no-write" => o.write = false,
                // cargo bench passes --bench to harness = false targets.
                "--bench" => {}
                other => panic!("unknown argument {other:?}"),
            }
        }
        assert!(o.namespaces >= 1 && o.nodes >= 8 && o.inflight >= 1);
        assert!(o.pods <= 60_000, "pod IPs are numbered in 10.128.0.0/10");
        o
    }

    fn is_default(&self) -> bool {
        self.pods == 10_000 && self.services == 2_000 && self.churn_secs == 30
    }
}

// === the daemons ===

/// One `weft-node --mode host --source kube` inside the API server's namespace; killed on
/// drop (the Process drop), and the namespace's deletion kills anything left.
struct Daemon {
    name: &'static str,
    process: Process,
    pid: i32,
    netns: String,
    admin_port: u16,
}

impl Daemon {
    fn start(
        name: &'static str,
        server: &ApiServer,
        kubeconfig: &Path,
        ca_dir: &Path,
        log_dir: &Path,
        base_port: u16,
    ) -> Daemon {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", server.netns_name()])
            .arg(testbed::binary("weft-node"))
            .args(["--mode", "host", "--source", "kube", "--node-name", NODE])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--ca-dir")
            .arg(ca_dir)
            .arg(format!("--admin-addr=127.0.0.1:{base_port}"))
            .arg(format!("--metrics-addr=127.0.0.1:{}", base_port + 1))
            .arg(format!("--readiness-addr=127.0.0.1:{}", base_port + 2))
            .arg(format!("--hbone-listen=127.0.0.1:{}", base_port + 3))
            .env("RUST_LOG", "info");
        let log = log_dir.join(format!("weft-node-{name}.log"));
        let process = Process::spawn(cmd, &log, name);
        // `ip netns exec` execs the program: the child is the daemon.
        let pid = process.child.id() as i32;
        Daemon {
            name,
            process,
            pid,
            netns: server.netns_name().to_owned(),
            admin_port: base_port,
        }
    }

    fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.process.child.try_wait() {
            let log = self.process.log_text();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "daemon {} exited ({status}):\n{}",
                self.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }

    /// `/config_dump`, fetched with curl inside the namespace; None while it does not answer.
    fn dump(&mut self) -> Option<Value> {
        self.check_alive();
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "curl",
                "-sf",
                "--max-time",
                "30",
            ])
            .arg(format!("http://127.0.0.1:{}/config_dump", self.admin_port))
            .output()
            .expect("run curl");
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The figures are the daemon's own: `ip netns exec` has exec'd it by now.
    fn check_comm(&self) {
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", self.pid)).unwrap_or_default();
        assert_eq!(
            comm.trim(),
            "weft-node",
            "pid {} is not the daemon",
            self.pid
        );
    }

    fn rss_kib(&self) -> u64 {
        self.check_comm();
        status_kib(self.pid, "VmRSS:")
    }

    fn hwm_kib(&self) -> u64 {
        status_kib(self.pid, "VmHWM:")
    }

    /// utime + stime, in seconds.
    fn cpu_secs(&self) -> f64 {
        self.check_comm();
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .unwrap_or_else(|e| panic!("/proc/{}/stat: {e}", self.pid));
        // Fields after the parenthesised comm; utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')').expect("stat comm") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        ticks as f64 / clock_ticks()
    }

    /// Polls the dump every `every` until `done` holds; returns the dump and the time.
    fn wait_for(&mut self, every: Duration, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + SYNC_TIMEOUT;
        loop {
            if let Some(dump) = self.dump() {
                if done(&dump) {
                    return dump;
                }
            }
            assert!(
                Instant::now() < deadline,
                "daemon {}: {what} not within {SYNC_TIMEOUT:?}",
                self.name
            );
            std::thread::sleep(every);
        }
    }
}

fn status_kib(pid: i32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output();
    out.ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// What a dump shows of the benchmark's objects.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    /// Workloads in the benchmark's namespaces.
    workloads: usize,
    /// Of those, the ones with an IP.
    with_ip: usize,
    services: usize,
    /// `config.accepted`: rebuilds published.
    accepted: u64,
    /// Every kind listed.
    synced: bool,
}

fn counts(dump: &Value) -> Counts {
    let ours = |v: &Value| {
        v["namespace"]
            .as_str()
            .is_some_and(|ns| ns.starts_with(NS_PREFIX))
    };
    let workloads: Vec<&Value> = dump["mesh"]["workloads"]
        .as_array()
        .map(|a| a.iter().filter(|w| ours(w)).collect())
        .unwrap_or_default();
    let with_ip = workloads
        .iter()
        .filter(|w| w["ips"].as_array().is_some_and(|ips| !ips.is_empty()))
        .count();
    let services = dump["mesh"]["services"]
        .as_array()
        .map(|a| a.iter().filter(|s| ours(s)).count())
        .unwrap_or(0);
    let synced = dump["config"]["kinds"].as_object().is_some_and(|kinds| {
        kinds
            .values()
            .all(|k| k["synced"].as_bool() == Some(true) || k["installed"] == json!(false))
    }) && dump["config"]["accepted"].as_u64().unwrap_or(0) > 0;
    Counts {
        workloads: workloads.len(),
        with_ip,
        services,
        accepted: dump["config"]["accepted"].as_u64().unwrap_or(0),
        synced,
    }
}

// === creating the objects ===

fn ns_name(i: usize) -> String {
    format!("{NS_PREFIX}{i:02}")
}

fn pod_ip(i: usize, base: u8) -> String {
    format!(
        "10.{}.{}.{}",
        base as usize + i / 65536,
        (i / 256) % 256,
        i % 256
    )
}

/// Pod `i` of the initial set: namespace i % M, node i % nodes, label `app=g<q % per_ns>` where
/// q is its index in its namespace (so service k of a namespace selects pods_per_ns/per_ns pods).
fn pod_placement(o: &Opts, i: usize) -> (String, String, String) {
    let per_ns_services = (o.services / o.namespaces).max(1);
    let q = i / o.namespaces;
    (
        ns_name(i % o.namespaces),
        format!("node-{}", i % o.nodes),
        format!("g{}", q % per_ns_services),
    )
}

async fn create_service(client: &kube::Client, ns: &str, name: &str, app: &str) {
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": {"app": app},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
        },
    }))
    .expect("service");
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap_or_else(|e| panic!("creating service {ns}/{name}: {e}"));
}

/// Runs `count` jobs with at most `inflight` at once (spawned, so both cores serialize).
async fn bounded<F, Fut>(count: usize, inflight: usize, job: F)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(inflight));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let permit = permits.clone().acquire_owned().await.expect("semaphore");
        let fut = job(i);
        tasks.spawn(async move {
            fut.await;
            drop(permit);
        });
        // Reap as we go so the set stays small.
        while let Some(done) = tasks.try_join_next() {
            done.expect("job panicked");
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("job panicked");
    }
}

async fn wait_crds_established(client: &kube::Client) {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let crds = api
            .list(&ListParams::default())
            .await
            .expect("listing CRDs");
        let ours: Vec<_> = crds
            .items
            .iter()
            .filter(|c| c.spec.group == "weft.dev")
            .collect();
        let established = !ours.is_empty()
            && ours.iter().all(|crd| {
                crd.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    })
            });
        if established {
            return;
        }
        assert!(Instant::now() < deadline, "weft's CRDs not Established");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Pods in the benchmark's namespaces, as the API lists them.
async fn api_pod_count(client: &kube::Client) -> usize {
    let list = Api::<Pod>::all(client.clone())
        .list_metadata(&ListParams::default())
        .await
        .expect("listing pods");
    list.items
        .iter()
        .filter(|p| {
            p.metadata
                .namespace
                .as_deref()
                .is_some_and(|ns| ns.starts_with(NS_PREFIX))
        })
        .count()
}

/// Bytes of one unpaginated LIST of every pod (what a relisting watcher receives).
async fn list_bytes(client: &kube::Client) -> usize {
    let req = http::Request::get("/api/v1/pods")
        .body(Vec::new())
        .expect("request");
    client.request_text(req).await.expect("LIST pods").len()
}

/// A raw watch of every pod from `rv`: counts the events (by type) and the bytes of the
/// stream, as each of the daemons' watches receives them (JSON, as kube-rs asks for).
#[derive(Debug, Default)]
struct WatchTally {
    bytes: AtomicU64,
    added: AtomicU64,
    modified: AtomicU64,
    deleted: AtomicU64,
    other: AtomicU64,
}

async fn raw_watch(client: kube::Client, rv: String, tally: Arc<WatchTally>) {
    let uri = format!("/api/v1/pods?watch=true&resourceVersion={rv}&timeoutSeconds=600");
    let req = http::Request::get(uri)
        .body(kube::client::Body::empty())
        .expect("request");
    let resp = client.send(req).await.expect("watch pods");
    assert!(resp.status().is_success(), "watch: {}", resp.status());
    let mut body = resp.into_body();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        buf.extend_from_slice(data);
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            tally.bytes.fetch_add(line.len() as u64, Ordering::Relaxed);
            let kind = serde_json::from_slice::<Value>(&line)
                .ok()
                .and_then(|v| v["type"].as_str().map(str::to_owned));
            let counter = match kind.as_deref() {
                Some("ADDED") => &tally.added,
                Some("MODIFIED") => &tally.modified,
                Some("DELETED") => &tally.deleted,
                _ => &tally.other,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// === the run ===

#[derive(Debug, Default)]
struct Figures {
    rows: Vec<(String, String)>,
    numbers: BTreeMap<&'static str, f64>,
}

impl Figures {
    fn row(&mut self, what: impl Into<String>, value: impl Into<String>) {
        let (what, value) = (what.into(), value.into());
        println!("== {what}: {value}");
        self.rows.push((what, value));
    }

    fn set(&mut self, key: &'static str, v: f64) -> f64 {
        self.numbers.insert(key, v);
        v
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// weft's CRDs and the weft-node RBAC and kubeconfig. Not spawned: apply_yaml's future is
/// not Send (serde_yaml's deserializer is held across an await).
async fn setup(server: &ApiServer, work: &Path) -> PathBuf {
    let client = server.admin_client().await;
    let kubeconfig = work.join("node-kubeconfig.yaml");
    server.node_kubeconfig(&kubeconfig).await;
    server
        .apply_yaml(&common::cluster::kube::crd_yaml())
        .await
        .expect("weft's CRDs apply");
    wait_crds_established(&client).await;
    kubeconfig
}

async fn run(o: Opts, server: Arc<ApiServer>, work: PathBuf, kubeconfig: PathBuf) -> Figures {
    let mut fig = Figures::default();
    let client = server.admin_client().await;
    let ca_dir = work.join("ca");
    let out = Command::new(testbed::binary("weft"))
        .args(["ca", "init", "--dir"])
        .arg(&ca_dir)
        .output()
        .expect("weft ca init");
    assert!(
        out.status.success(),
        "weft ca init: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // (a) daemon A on the empty cluster.
    let a = {
        let (server, k, c, w) = (
            server.clone(),
            kubeconfig.clone(),
            ca_dir.clone(),
            work.clone(),
        );
        blocking(move || Daemon::start("A", &server, &k, &c, &w, 15100)).await
    };
    let a = Arc::new(std::sync::Mutex::new(a));
    let wait_a = |every: Duration, what: &'static str, done: fn(&Value) -> bool| {
        let a = a.clone();
        blocking(move || a.lock().unwrap().wait_for(every, what, done))
    };
    wait_a(Duration::from_millis(200), "first sync", |d| {
        counts(d).synced
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss_empty, a_cpu0) = {
        let a = a.lock().unwrap();
        (a.rss_kib(), a.cpu_secs())
    };
    fig.set("rss_empty_kib", rss_empty as f64);
    fig.row("A: RSS at rest, empty cluster", mib(rss_empty));
    let a_accepted0 = counts(&wait_a(Duration::from_millis(200), "dump", |_| true).await).accepted;

    // Namespaces and service accounts.
    for n in 0..o.namespaces {
        apiserver::create_namespace(
            &client,
            &ns_name(n),
            &[("weft.dev/dataplane-mode", "ambient")],
        )
        .await;
        apiserver::ensure_service_account(&client, &ns_name(n), "app").await;
    }

    // Pods: create, then the IP through the status subresource, 'inflight' pods at a time.
    let t = Instant::now();
    {
        let o2 = o.clone();
        let client = client.clone();
        bounded(o.pods, o.inflight, move |i| {
            let (ns, node, app) = pod_placement(&o2, i);
            let client = client.clone();
            async move {
                let name = format!("p-{i:05}");
                apiserver::create_pod(&client, &ns, &name, "app", &node, &[("app", &app)]).await;
                apiserver::set_pod_ip(&client, &ns, &name, &pod_ip(i, 128)).await;
            }
        })
        .await;
    }
    let pods_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    {
        let o2 = o.clone();
        let client = client.clone();
        bounded(o.services, o.inflight, move |k| {
            let ns = ns_name(k % o2.namespaces);
            let app = format!("g{}", k / o2.namespaces);
            let client = client.clone();
            async move {
                create_service(&client, &ns, &format!("s-{k:05}"), &app).await;
            }
        })
        .await;
    }
    let svc_secs = t.elapsed().as_secs_f64();
    let created_at = Instant::now();
    fig.row(
        format!(
            "pod creation ({} pods in {} namespaces on {} node names; create + status patch, {} in flight)",
            o.pods, o.namespaces, o.nodes, o.inflight
        ),
        format!(
            "{:.0} pods/s ({:.0} requests/s, {:.1} s)",
            o.pods as f64 / pods_secs,
            2.0 * o.pods as f64 / pods_secs,
            pods_secs
        ),
    );
    fig.row(
        format!("service creation ({} services with selectors)", o.services),
        format!(
            "{:.0} services/s ({:.1} s)",
            o.services as f64 / svc_secs,
            svc_secs
        ),
    );

    // (a) how A absorbed it.
    let (n, s) = (o.pods, o.services);
    let full = move |d: &Value| {
        let c = counts(d);
        c.with_ip == n && c.workloads == n && c.services == s
    };
    let a_full = {
        let a = a.clone();
        blocking(move || {
            a.lock()
                .unwrap()
                .wait_for(Duration::from_millis(500), "all objects", full)
        })
        .await
    };
    let lag = created_at.elapsed().as_secs_f64();
    let (a_rss_full, a_hwm, a_cpu1) = {
        let a = a.lock().unwrap();
        (a.rss_kib(), a.hwm_kib(), a.cpu_secs())
    };
    // As for B: the dump's own transient buffers (megabytes of JSON) are not the model.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let a_rss_settled = a.lock().unwrap().rss_kib();
    let a_rebuilds = counts(&a_full).accepted - a_accepted0;
    let create_wall = pods_secs + svc_secs + lag;
    fig.row(
        "A: absorbing the creation",
        format!(
            "{a_rebuilds} rebuilds ({:.2}/s), {:.1} CPU s over {:.1} s ({:.0}% of a core); dump complete {:.1} s after the last create",
            a_rebuilds as f64 / create_wall,
            a_cpu1 - a_cpu0,
            create_wall,
            100.0 * (a_cpu1 - a_cpu0) / create_wall,
            lag
        ),
    );
    fig.row(
        "A: RSS holding everything (when its dump was complete; 5 s later; peak VmHWM)",
        format!(
            "{}; {}; peak {}; {:.2} KiB per pod over empty (5 s later)",
            mib(a_rss_full),
            mib(a_rss_settled),
            mib(a_hwm),
            (a_rss_settled as f64 - rss_empty as f64) / o.pods as f64
        ),
    );

    // (b) daemon B on the full cluster.
    let b_start = Instant::now();
    let b = {
        let (server, k, c, w) = (
            server.clone(),
            kubeconfig.clone(),
            ca_dir.clone(),
            work.clone(),
        );
        blocking(move || Daemon::start("B", &server, &k, &c, &w, 15200)).await
    };
    let b = Arc::new(std::sync::Mutex::new(b));
    let b_full = {
        let b = b.clone();
        blocking(move || {
            b.lock()
                .unwrap()
                .wait_for(Duration::from_millis(250), "first full sync", full)
        })
        .await
    };
    let b_sync = b_start.elapsed().as_secs_f64();
    let b_rss_sync = b.lock().unwrap().rss_kib();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (b_rss, b_hwm) = {
        let b = b.lock().unwrap();
        (b.rss_kib(), b.hwm_kib())
    };
    let per_pod_kib = fig.set(
        "per_pod_kib",
        (b_rss as f64 - rss_empty as f64) / o.pods as f64,
    );
    fig.row(
        "B: time to first full sync (process start to a dump with every workload and service)",
        format!(
            "{b_sync:.1} s (rebuilds published by then: {})",
            counts(&b_full).accepted
        ),
    );
    fig.row(
        "B: RSS after sync (at sync; 5 s later; peak VmHWM)",
        format!("{}; {}; peak {}", mib(b_rss_sync), mib(b_rss), mib(b_hwm)),
    );
    fig.row(
        "memory per pod ((B 5 s after sync − A empty) / N; services included)",
        format!("{per_pod_kib:.2} KiB"),
    );
    let list = list_bytes(&client).await;
    fig.set("list_bytes_per_pod", list as f64 / o.pods as f64);
    fig.row(
        "one LIST of every pod (what a relisting watcher receives)",
        format!(
            "{:.1} MB, {:.0} bytes per pod",
            list as f64 / 1e6,
            list as f64 / o.pods as f64
        ),
    );

    // (c) churn.
    let rv = Api::<Pod>::all(client.clone())
        .list_metadata(&ListParams::default().limit(1))
        .await
        .expect("list for resourceVersion")
        .metadata
        .resource_version
        .expect("list resourceVersion");
    let tally = Arc::new(WatchTally::default());
    let watch = tokio::spawn(raw_watch(client.clone(), rv, tally.clone()));
    let dump_counts = |d: &Arc<std::sync::Mutex<Daemon>>| {
        let d = d.clone();
        blocking(move || {
            counts(
                &d.lock()
                    .unwrap()
                    .wait_for(Duration::from_millis(200), "dump", |_| true),
            )
        })
    };
    let (a_acc0, b_acc0) = (
        dump_counts(&a).await.accepted,
        dump_counts(&b).await.accepted,
    );
    let a_c0 = a.lock().unwrap().cpu_secs();
    let b_c0 = b.lock().unwrap().cpu_secs();
    let churn_start = Instant::now();
    let creates = Arc::new(AtomicU64::new(0));
    let statuses = Arc::new(AtomicU64::new(0));
    let deletes = Arc::new(AtomicU64::new(0));
    // When the last create returned, in ms since the churn started.
    let last_create_ms = Arc::new(AtomicU64::new(0));
    {
        let permits = Arc::new(Semaphore::new(o.inflight));
        let mut tasks = tokio::task::JoinSet::new();
        let total = o.churn_rate * o.churn_secs;
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / o.churn_rate as f64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let lifetime = Duration::from_secs(o.churn_lifetime_secs);
        for k in 0..total as usize {
            tick.tick().await;
            let (client, permits) = (client.clone(), permits.clone());
            let (creates, statuses, deletes) = (creates.clone(), statuses.clone(), deletes.clone());
            let last_create_ms = last_create_ms.clone();
            let ns = ns_name(k % o.namespaces);
            let node = format!("node-{}", k % o.nodes);
            tasks.spawn(async move {
                let name = format!("c-{k:05}");
                let born = Instant::now();
                {
                    let _p = permits.acquire().await.expect("semaphore");
                    apiserver::create_pod(&client, &ns, &name, "app", &node, &[("app", "churn")])
                        .await;
                    creates.fetch_add(1, Ordering::Relaxed);
                    last_create_ms
                        .fetch_max(churn_start.elapsed().as_millis() as u64, Ordering::Relaxed);
                }
                {
                    let _p = permits.acquire().await.expect("semaphore");
                    apiserver::set_pod_ip(&client, &ns, &name, &pod_ip(k, 192)).await;
                    statuses.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep_until((born + lifetime).into()).await;
                let _p = permits.acquire().await.expect("semaphore");
                Api::<Pod>::namespaced(client.clone(), &ns)
                    .delete(&name, &DeleteParams::default().grace_period(0))
                    .await
                    .unwrap_or_else(|e| panic!("deleting pod {ns}/{name}: {e}"));
                deletes.fetch_add(1, Ordering::Relaxed);
            });
            while let Some(done) = tasks.try_join_next() {
                done.expect("churn task panicked");
            }
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("churn task panicked");
        }
    }
    let churn_secs = churn_start.elapsed().as_secs_f64();
    let churn_end = Instant::now();
    let a_c1 = a.lock().unwrap().cpu_secs();
    let b_c1 = b.lock().unwrap().cpu_secs();
    let api_pods = api_pod_count(&client).await;
    let mut converged = Vec::new();
    for d in [&a, &b] {
        let d = d.clone();
        let c = blocking(move || {
            let mut d = d.lock().unwrap();
            let c = counts(&d.wait_for(
                Duration::from_millis(250),
                "churn convergence",
                move |v| counts(v).workloads == api_pods,
            ));
            (c, churn_end.elapsed().as_secs_f64(), d.cpu_secs())
        })
        .await;
        converged.push(c);
    }
    // Let the watch deliver the last events, then stop it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    watch.abort();
    let _ = watch.await;
    let (nc, ns_, nd) = (
        creates.load(Ordering::Relaxed),
        statuses.load(Ordering::Relaxed),
        deletes.load(Ordering::Relaxed),
    );
    let sent = nc + ns_ + nd;
    let events_per_s = fig.set("events_per_s", sent as f64 / churn_secs);
    let (added, modified, deleted, other) = (
        tally.added.load(Ordering::Relaxed),
        tally.modified.load(Ordering::Relaxed),
        tally.deleted.load(Ordering::Relaxed),
        tally.other.load(Ordering::Relaxed),
    );
    let seen = added + modified + deleted;
    let bytes_per_event = fig.set(
        "bytes_per_event",
        tally.bytes.load(Ordering::Relaxed) as f64 / (seen + other).max(1) as f64,
    );
    let watched_per_s = fig.set("watched_events_per_s", seen as f64 / churn_secs);
    fig.row(
        format!(
            "churn: offered {} pods/s created and deleted (grace 0, {} s lifetime) for {} s",
            o.churn_rate, o.churn_lifetime_secs, o.churn_secs
        ),
        format!(
            "{nc} creates + {ns_} status updates + {nd} deletes = {sent} pod events in {churn_secs:.1} s: {events_per_s:.0} events/s (creates kept {:.0}/s: the last returned {:.1} s in)",
            nc as f64 * 1000.0 / last_create_ms.load(Ordering::Relaxed).max(1) as f64,
            last_create_ms.load(Ordering::Relaxed) as f64 / 1000.0
        ),
    );
    fig.row(
        "churn: what one watch of every pod received",
        format!(
            "{added} ADDED + {modified} MODIFIED + {deleted} DELETED ({other} other) = {:.1} events per churned pod, {watched_per_s:.0} events/s, {bytes_per_event:.0} bytes per event (JSON)",
            seen as f64 / nc.max(1) as f64
        ),
    );
    for (d, (c, conv, _), (acc0, c0, c1)) in [
        ("A", converged[0], (a_acc0, a_c0, a_c1)),
        ("B", converged[1], (b_acc0, b_c0, b_c1)),
    ] {
        let span = churn_secs + conv;
        let rebuilds = c.accepted - acc0;
        let cpu = c1 - c0;
        fig.row(
            format!("churn, daemon {d}"),
            format!(
                "{:.1} rebuilds/s ({rebuilds} in {span:.1} s); {cpu:.1} CPU s during churn ({:.0}% of a core); dump matched the API's {api_pods} pods {conv:.1} s after the last API call",
                rebuilds as f64 / span,
                100.0 * cpu / churn_secs
            ),
        );
        if d == "B" {
            fig.set("cpu_share", cpu / churn_secs);
        }
    }
    fig.set("rss_b_kib", b_rss as f64);
    fig
}

fn fanout_paragraph(f: &Figures) -> String {
    let n = |k: &str| f.numbers.get(k).copied().unwrap_or(f64::NAN);
    let bpe = n("bytes_per_event");
    let eps = n("watched_events_per_s");
    let requests = n("events_per_s");
    let fan_bytes = bpe * eps * BIG_NODES;
    let per_pod = n("per_pod_kib");
    let empty = n("rss_empty_kib");
    let node_mib = (empty + per_pod * BIG_PODS) / 1024.0;
    let fleet_tib = node_mib * BIG_NODES / 1024.0 / 1024.0;
    let relist = n("list_bytes_per_pod") * BIG_PODS;
    format!(
        "**What this means for a 5,000-node cluster.** Every weft-node watches every pod (two \
         field-selected watches: its own node's and everyone else's, which together are the \
         whole cluster), and the API server sends each of them every pod event as the full \
         pod JSON. At this run's {bpe:.0} bytes per event and {eps:.0} events/s (what one \
         watch of every pod received while {requests:.0} pod writes/s were made), 5,000 \
         watchers make the API server send {bpe:.0} × {eps:.0} × 5,000 = {:.0} MB/s \
         ({:.1} Gbit/s) of watch traffic, and one full relist of 150,000 pods by every node \
         (after an API server restart) is {:.1} GB each, {:.1} TB in all. Each node holds \
         every pod: at {per_pod:.2} KiB per pod plus {:.0} MiB at rest, 150,000 pods cost \
         {node_mib:.0} MiB per node ({fleet_tib:.1} TiB over the fleet), and every change \
         rebuilds the whole model, so per-node CPU grows with the cluster's churn rather than \
         with the node's own pods (here {:.0}% of a core at {eps:.0} events/s for one daemon). \
         What would change it is a control plane between the API server and the nodes, as \
         Istio does: istiod watches the API server once and sends each ztunnel, over delta \
         xDS, a compact per-node stream of the workload records it needs rather than full \
         pod objects. The API server's fan-out drops from 5,000 watches to the control \
         plane's few, the bytes per event from the pod JSON to a small record, and each \
         node's memory and rebuild work from the whole cluster to what it is sent; the cost \
         is a new component to run and keep available (the nodes would serve their last \
         snapshot while it is away, as weft already does when the API server is lost).",
        fan_bytes / 1e6,
        fan_bytes * 8.0 / 1e9,
        relist / 1e9,
        relist * BIG_NODES / 1e12,
        empty / 1024.0,
        100.0 * n("cpu_share"),
    )
}

fn section(o: &Opts, f: &Figures, command: &str, date: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Kubernetes source at scale\n");
    let _ = writeln!(
        s,
        "{date}, `{command}`: a real kube-apiserver v1.37.2 + etcd 3.7.0 (tests/common/apiserver.rs) \
         and two release `weft-node --mode host --source kube --node-name {NODE}` daemons in one \
         network namespace, all on this 2-core machine; objects created through the admin \
         client. A starts on the empty cluster, B once everything exists; both run during the \
         churn. Computed by `benches/kube_scale.rs`, not typed by hand."
    );
    if !o.is_default() {
        let _ = writeln!(
            s,
            "\n**Smaller than the default run** ({} pods, {} services, {} s of churn; the defaults are 10,000 / 2,000 / 30 s).",
            o.pods, o.services, o.churn_secs
        );
    }
    let _ = writeln!(s, "\n| what | measured |\n|---|---|");
    for (what, value) in &f.rows {
        let _ = writeln!(s, "| {what} | {value} |");
    }
    let _ = writeln!(s, "\n{}", fanout_paragraph(f));
    s
}

/// Replaces (or appends) the section in RESULTS.md, leaving the rest as it is.
fn write_section(path: &Path, text: &str) {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let new = report::replace_section(&old, "## Kubernetes source at scale", text);
    std::fs::write(path, new).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn main() {
    let o = Opts::parse();
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the kube scale benchmark needs root (network namespaces): bash benches/kube_scale.sh"
    );
    assert!(
        ApiServer::available(),
        "kube-apiserver/etcd missing: run bash scripts/build-apiserver.sh"
    );
    let command = std::env::var("KUBE_SCALE_COMMAND")
        .unwrap_or_else(|_| "bash benches/kube_scale.sh".to_owned());
    let date = String::from_utf8_lossy(
        &Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .expect("date")
            .stdout,
    )
    .trim()
    .to_owned();
    println!("== kube scale benchmark: {o:?}");
    let work = tempfile::Builder::new()
        .prefix("weft-kscale")
        .tempdir()
        .expect("tempdir");
    let server = Arc::new(ApiServer::start_alone());
    if let Ok(state) = std::env::var("KUBE_SCALE_NETNS_FILE") {
        // For the script's cleanup if this process is killed outright.
        let _ = std::fs::write(state, server.netns_name());
    }
    println!("== API server up in netns {}", server.netns_name());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let kubeconfig = runtime.block_on(setup(&server, work.path()));
    let figures = runtime.block_on(async {
        let run = tokio::spawn(run(
            o.clone(),
            server.clone(),
            work.path().to_owned(),
            kubeconfig,
        ));
        let abort = run.abort_handle();
        tokio::select! {
            r = run => Some(r),
            _ = tokio::signal::ctrl_c() => { abort.abort(); None }
        }
    });
    // Daemons die with the run's future (dropped above, or unwound); then the API server.
    drop(runtime);
    let figures = match figures {
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            drop(server);
            panic!("the benchmark failed: {e}");
        }
        None => {
            drop(server);
            eprintln!("interrupted; everything stopped");
            std::process::exit(130);
        }
    };
    drop(server);
    let text = section(&o, &figures, &command, &date);
    println!("\n{text}");
    if o.write {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/RESULTS.md");
        write_section(&path, &text);
        println!("== wrote the `## Kubernetes source at scale` section of benches/RESULTS.md");
    } else {
        println!("== --no-write: benches/RESULTS.md left as it is");
    }
}
