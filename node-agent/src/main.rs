//! `weft-node`: the per-node weft daemon. Parses flags, sets up logging and runs the
//! selected mode; `host` serves the workloads on this host (a VM or bare-metal machine).

/// jemalloc returns freed memory to the kernel over time (glibc malloc keeps it in per-thread
/// arenas), so the daemon shrinks back after a burst of connections ends.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc settings: purge unused pages after 1 s from a background thread, even when the
/// daemon is otherwise idle; one arena per CPU is plenty for a proxy.
// SAFETY: `_rjem_malloc_conf` is the one symbol jemalloc reads its settings from; nothing
// else in the process defines it, and the value is a NUL-terminated static string.
#[allow(non_upper_case_globals, unsafe_code)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:1000,narenas:2\0";

mod cni_install;
mod cni_server;
mod daemon;
mod discovery;
mod enrollment;
mod handover;
mod host;
mod netns;
mod pod_proxy;
mod pods;
mod rules;
mod state;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::{Parser, ValueEnum};
use weft::dataplane;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Serve the workloads whose IPs are on this network namespace's interfaces.
    Host,
    /// Serve the enrolled pods of this Kubernetes node, handed over by the CNI plugin.
    Pods,
}

/// Where the mesh model comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Source {
    /// A local YAML file (`--config`), for VMs and tests.
    File,
    /// The cluster's Kubernetes API (in-cluster ServiceAccount, or `--kubeconfig`).
    Kube,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

/// weft-node: the per-node weft daemon.
#[derive(Debug, Parser)]
#[command(name = "weft-node", version)]
pub struct Args {
    #[arg(long, value_enum, env = "WEFT_MODE")]
    mode: Mode,
    /// Where the mesh model comes from. Default: `file` when --config is given, else `kube`
    /// (in a pod, or with --kubeconfig).
    #[arg(long, value_enum)]
    source: Option<Source>,
    /// Mesh config for the file source: multi-document YAML of Namespace, Pod, Service,
    /// EndpointSlice and weft's kinds. Hot-reloaded.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Kubeconfig for the kube source; without it, the in-cluster ServiceAccount config.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Mesh CA directory (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem), for host
    /// mode, the file source and tests. Without it (kube source only), the node holds no CA
    /// key: it sends CSRs to `weft signer` and trusts the roots of the trust-bundle ConfigMap.
    #[arg(long, env = "WEFT_CA_DIR")]
    ca_dir: Option<PathBuf>,
    /// Without --ca-dir: the trust-bundle ConfigMap (in --install-namespace) that weft
    /// signer publishes.
    #[arg(long, env = "WEFT_TRUST_BUNDLE", default_value = weft::identity::root_configmap::ROOT_CONFIGMAP)]
    trust_bundle: String,
    /// Without --ca-dir: how long to wait for the signer to answer one CSR.
    #[arg(long, env = "WEFT_CSR_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    csr_timeout: Duration,
    /// This node's name (matches spec.nodeName of its pods).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = weft::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Also accept outbound connections as a SOCKS5 proxy on this address (host mode).
    #[arg(long)]
    socks5: Option<SocketAddr>,
    /// Where the HBONE server listens (host mode).
    #[arg(long, default_value_t = any_v4(dataplane::HBONE_PORT))]
    hbone_listen: SocketAddr,
    /// Lifetime of workload certificates (renewed at half-life).
    #[arg(long, env = "WEFT_CERT_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    cert_ttl: Duration,
    /// On SIGTERM, how long open connections may take to finish.
    #[arg(long, env = "WEFT_GRACE_PERIOD", default_value = "10s", value_parser = humantime::parse_duration)]
    grace_period: Duration,
    /// Idle HBONE connections are closed after this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pool_idle_timeout: Duration,
    /// Pods mode: where the CNI socket and the state file live.
    #[arg(long, default_value = weft_cni::protocol::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    #[arg(long, env = "WEFT_LOG_FORMAT", value_enum, default_value = "plain")]
    log_format: LogFormat,
    /// Admin API (config dump, log level): keep it on loopback.
    #[arg(long, default_value_t = SocketAddr::from((Ipv4Addr::LOCALHOST, dataplane::ADMIN_PORT)))]
    admin_addr: SocketAddr,
    /// Prometheus metrics and the node dashboard.
    #[arg(long, default_value_t = any_v4(dataplane::METRICS_PORT))]
    metrics_addr: SocketAddr,
    /// Async worker threads. Default: 1 on machines with up to 2 CPUs (leaving the other
    /// to the workloads, and avoiding cross-thread wake-ups on the latency path), else 2.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024).map(usize::from))]
    worker_threads: Option<usize>,
    /// A config file larger than this is rejected without being read whole.
    #[arg(long, default_value_t = weft::config::file_source::DEFAULT_MAX_BYTES)]
    config_max_bytes: u64,
    /// Most concurrent connections (and HBONE streams) one source IP may hold; more are
    /// closed at once and counted.
    #[arg(long, default_value_t = weft::limits::DEFAULT_PER_SOURCE)]
    max_connections_per_source: usize,
    /// File descriptors kept free for the daemon's own work (reloads, CNI, admin).
    #[arg(long, default_value_t = weft::limits::DEFAULT_FD_RESERVE)]
    fd_reserve: u64,
    /// Readiness probe (/healthz/ready) and liveness (/healthz/live).
    #[arg(long, default_value_t = any_v4(dataplane::READINESS_PORT))]
    readiness_addr: SocketAddr,
    /// Pods mode: install `weft-cni` into the node's CNI bin dir and a weft conflist (the
    /// primary's chain plus weft-cni) into its conf dir, and keep them there.
    #[arg(long, env = "WEFT_CNI_INSTALL")]
    cni_install: bool,
    /// The node's CNI bin dir, as this process sees it.
    #[arg(long, env = "WEFT_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// The node's CNI conf dir, as this process sees it.
    #[arg(long, env = "WEFT_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// The weft-cni binary to install. Default: `weft-cni` next to this executable.
    #[arg(long, env = "WEFT_CNI_PLUGIN")]
    cni_plugin: Option<PathBuf>,
    /// The node's /proc (its PID namespace's): where pods that already run are found.
    #[arg(long, env = "WEFT_PROC_DIR", default_value = "/proc")]
    proc_dir: PathBuf,
    /// The namespace of weft's DaemonSet (kube source: checked at shutdown to tell an
    /// uninstall from a restart).
    #[arg(long, env = "POD_NAMESPACE", default_value = "weft-system")]
    install_namespace: String,
    /// The name of weft's DaemonSet.
    #[arg(long, env = "WEFT_DAEMONSET", default_value = "weft-node")]
    daemonset: String,
    /// How long a new daemon waits for the one it replaces to hand the node over.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    handover_timeout: Duration,
}

impl Args {
    /// The source in force: `--source`, else `file` with --config, else `kube`.
    pub fn source(&self) -> Source {
        match (self.source, &self.config) {
            (Some(source), _) => source,
            (None, Some(_)) => Source::File,
            (None, None) => Source::Kube,
        }
    }
}

/// `0.0.0.0:<port>`.
fn any_v4(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
}

/// Every proxied connection costs file descriptors on both sides; lift the soft limit to
/// the hard one so a busy node does not run out at the common default of 1024. Returns the
/// limit in force.
fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::debug!(from = soft, to = hard, "raised the open-files limit");
                hard
            }
            Err(error) => {
                tracing::warn!(%error, soft, "cannot raise the open-files limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(error) => {
            tracing::warn!(%error, "cannot read the open-files limit");
            1024
        }
    }
}

/// Name of the async worker threads (`/proc/<pid>/task/*/comm`); the runtime's blocking
/// threads (certificate signing, file reads) are named [`BLOCKING_THREAD_NAME`].
pub const WORKER_THREAD_NAME: &str = "weft-worker";
/// Name of the runtime's blocking-pool threads.
pub const BLOCKING_THREAD_NAME: &str = "weft-blocking";

/// One worker on machines with up to 2 CPUs (the other is left to the workloads, and the
/// latency path avoids cross-thread wake-ups), else 2.
fn default_worker_threads() -> usize {
    match std::thread::available_parallelism() {
        Ok(cpus) if cpus.get() > 2 => 2,
        _ => 1,
    }
}

/// The multi-thread runtime with exactly `workers` async worker threads.
///
/// tokio starts its workers on its blocking pool from inside `build()`, before any task
/// can run; threads spawned while `build()` runs are therefore exactly the workers and get
/// [`WORKER_THREAD_NAME`], every later one (blocking work) [`BLOCKING_THREAD_NAME`].
fn build_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let building = Arc::new(AtomicBool::new(true));
    let runtime = {
        let building = building.clone();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name_fn(move || {
                if building.load(Ordering::Relaxed) {
                    WORKER_THREAD_NAME.to_owned()
                } else {
                    BLOCKING_THREAD_NAME.to_owned()
                }
            })
            .enable_all()
            .build()
    };
    building.store(false, Ordering::Relaxed);
    runtime
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let log_control = weft::admin::logging::init(args.log_format == LogFormat::Json);
    let nofile = raise_fd_limit();
    let limits = weft::limits::Limits::for_fd_limit(
        nofile,
        args.fd_reserve,
        args.max_connections_per_source,
    );
    weft::limits::configure(limits);
    tracing::info!(
        open_files = nofile,
        max_connections = limits.max_total,
        per_source = limits.per_source,
        "connection limits"
    );
    let workers = args.worker_threads.unwrap_or_else(default_worker_threads);
    tracing::info!(workers, "async runtime");
    let runtime = match build_runtime(workers) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("weft-node: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match args.mode {
        Mode::Host => runtime.block_on(host::run(args, log_control)),
        Mode::Pods => runtime.block_on(pods::run(args, log_control)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("weft-node: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
