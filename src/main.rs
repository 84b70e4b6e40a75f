//! `weft`: the operator CLI. `weft ca init` writes a fresh mesh CA in the Istio plug-in CA
//! layout; `weft ca issue` signs one workload leaf (for operators and debugging); `weft
//! signer` runs the cluster's CSR signer (the Deployment in `deploy/kubernetes/signer.yaml`);
//! `weft waypoint` runs an L7 waypoint and `weft waypoint manifests` prints one's manifests.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use weft::identity::{MeshCa, SpiffeId, DEFAULT_TRUST_DOMAIN};

#[path = "cli/waypoint.rs"]
mod waypoint_cli;

#[derive(Parser)]
#[command(name = "weft", version, about = "weft service mesh: operator tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mesh certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Sign weft.dev/workload CertificateSigningRequests for weft-node (in a cluster: the
    /// only holder of the CA key) and publish the trust bundle.
    Signer(SignerArgs),
    /// Run an L7 waypoint (HTTPRoute routing for the Services bound to it), or print its
    /// manifests (`weft waypoint manifests`).
    #[command(args_conflicts_with_subcommands = true)]
    Waypoint {
        #[command(subcommand)]
        command: Option<WaypointCommand>,
        #[command(flatten)]
        args: Box<WaypointArgs>,
    },
}

#[derive(Subcommand)]
enum WaypointCommand {
    /// Print the ServiceAccount, Deployment, PodDisruptionBudget and Service of a waypoint,
    /// ready for `kubectl apply -f -`.
    Manifests {
        /// The namespace whose Services it will serve.
        #[arg(long)]
        namespace: String,
        /// Its name (what `weft.dev/use-waypoint` names).
        #[arg(long)]
        name: String,
        /// The weft image.
        #[arg(long, default_value = weft::waypoint::manifests::DEFAULT_IMAGE)]
        image: String,
        /// Replicas (a PodDisruptionBudget keeps one up through node drains).
        #[arg(long, default_value_t = 2)]
        replicas: u32,
    },
}

#[derive(clap::Args)]
pub(crate) struct WaypointArgs {
    /// The namespace it serves (its own).
    #[arg(long, env = "POD_NAMESPACE")]
    pub(crate) namespace: Option<String>,
    /// Its name, as Services name it in weft.dev/use-waypoint.
    #[arg(long, env = "WEFT_WAYPOINT_NAME")]
    pub(crate) name: Option<String>,
    /// Its ServiceAccount (its identity); default: its name.
    #[arg(long, env = "WEFT_WAYPOINT_SERVICE_ACCOUNT")]
    pub(crate) service_account: Option<String>,
    /// Trust domain of the mesh.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    pub(crate) trust_domain: String,
    /// Mesh config file (the file source); without it, the Kubernetes API.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Kubeconfig for the Kubernetes source; default the in-cluster ServiceAccount.
    #[arg(long)]
    pub(crate) kubeconfig: Option<PathBuf>,
    /// Mesh CA directory its certificate is issued from; without it (Kubernetes source),
    /// weft signer issues it through a CSR made with the pod's own token.
    #[arg(long, env = "WEFT_CA_DIR")]
    pub(crate) ca_dir: Option<PathBuf>,
    /// Its pod's name (names its CSRs).
    #[arg(long, env = "POD_NAME", default_value = "waypoint")]
    pub(crate) pod_name: String,
    /// weft's namespace, where the trust bundle is published.
    #[arg(long, env = "WEFT_INSTALL_NAMESPACE", default_value = "weft-system")]
    pub(crate) install_namespace: String,
    /// The trust-bundle ConfigMap weft signer publishes.
    #[arg(long, default_value = weft::identity::root_configmap::ROOT_CONFIGMAP)]
    pub(crate) trust_bundle: String,
    /// How long one CSR is waited for.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub(crate) csr_timeout: Duration,
    /// Lifetime of its certificates.
    #[arg(long, env = "WEFT_CERT_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub(crate) cert_ttl: Duration,
    /// HBONE listener.
    #[arg(long, default_value = "0.0.0.0:15008")]
    pub(crate) hbone_addr: std::net::SocketAddr,
    /// Admin API (config_dump with route status, logging).
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub(crate) admin_addr: std::net::SocketAddr,
    /// Prometheus metrics and the dashboard.
    #[arg(long, default_value = "0.0.0.0:15020")]
    pub(crate) metrics_addr: std::net::SocketAddr,
    /// Readiness.
    #[arg(long, default_value = "0.0.0.0:15021")]
    pub(crate) readiness_addr: std::net::SocketAddr,
    /// How long to wait for a client's first bytes, on a port whose protocol is not
    /// declared, before passing the stream through as TCP.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub(crate) protocol_detection_timeout: Duration,
    /// How long a forwarded request waits for its response head (then 504) when its
    /// HTTPRoute rule sets no `timeouts`; `0s` for no limit. A rule's `timeouts.request`
    /// / `backendRequest` replace it and bound the whole response.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub(crate) default_response_timeout: Duration,
    /// Retries of a request whose HTTPRoute rule has no `retry`: connect failures and
    /// refused streams (never processed, so any method), and 503 of idempotent methods;
    /// each to another endpoint, within the Service's retry budget. 0 for none.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=3))]
    pub(crate) default_retry_attempts: u32,
    /// Failed attempts in a row (5xx, connect failure, reset, timeout) that eject an
    /// endpoint from load balancing; 0 never ejects.
    #[arg(long, default_value_t = 5)]
    pub(crate) outlier_consecutive_failures: u32,
    /// How long an endpoint's first ejection lasts; each further one lasts that much
    /// longer (at most 5 minutes), and at most half a backend's endpoints are out at once.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) outlier_base_ejection: Duration,
    /// How long open connections may finish after SIGTERM.
    #[arg(long, env = "WEFT_GRACE_PERIOD", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) grace_period: Duration,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    pub(crate) worker_threads: usize,
    /// Log lines as JSON.
    #[arg(long, env = "WEFT_LOG_FORMAT", default_value = "plain", value_parser = ["plain", "json"])]
    pub(crate) log_format: String,
}

#[derive(clap::Args)]
struct SignerArgs {
    /// The mesh CA directory (the CA Secret, mounted).
    #[arg(long, env = "WEFT_CA_DIR", default_value = "/etc/weft/ca")]
    ca_dir: PathBuf,
    /// Kubeconfig; without it, the in-cluster ServiceAccount config.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Trust domain of the mesh: CSRs for any other are denied.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// weft-node's ServiceAccount, NAMESPACE/NAME: the only requester signed for.
    #[arg(
        long,
        env = "WEFT_NODE_SERVICE_ACCOUNT",
        default_value = "weft-system/weft-node"
    )]
    node_service_account: String,
    /// The namespace of the trust-bundle ConfigMap (weft's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "weft-system")]
    namespace: String,
    /// The trust-bundle ConfigMap nodes watch.
    #[arg(long, default_value = weft::identity::root_configmap::ROOT_CONFIGMAP)]
    root_configmap: String,
    /// Lifetime of a leaf whose CSR asks for none.
    #[arg(long, env = "WEFT_CERT_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    default_cert_ttl: Duration,
    /// Longest lifetime signed, whatever a CSR asks.
    #[arg(long, env = "WEFT_MAX_CERT_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    max_cert_ttl: Duration,
    /// A CSR older than this when reviewed is denied (`Expired`): its node asked again.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    max_csr_age: Duration,
    /// How often the trust bundle is checked against the CA directory (and put back if it
    /// was edited, or updated after a CA rotation).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    republish_interval: Duration,
    /// `/metrics` and `/healthz/ready`.
    #[arg(long, default_value = "0.0.0.0:15014")]
    http_addr: std::net::SocketAddr,
    /// Log lines as JSON.
    #[arg(long, env = "WEFT_LOG_FORMAT", default_value = "plain", value_parser = ["plain", "json"])]
    log_format: String,
}

#[derive(Subcommand)]
enum CaCommand {
    /// Write a new self-signed root CA (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem).
    Init {
        /// Directory to write the CA into (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Trust domain of the mesh.
        #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Overwrite an existing CA in DIR.
        #[arg(long)]
        force: bool,
    },
    /// Issue one workload certificate (ECDSA P-256, SPIFFE URI SAN) from the CA in DIR.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>
        #[arg(long)]
        spiffe_id: String,
        /// Where to write the certificate chain (leaf first), PEM.
        #[arg(long)]
        out_cert: PathBuf,
        /// Where to write the PKCS#8 private key, PEM (mode 0600).
        #[arg(long)]
        out_key: PathBuf,
        /// Lifetime, e.g. 24h, 90m, 3600s.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Signer(args) => run_signer(args)?,
        Command::Waypoint {
            command:
                Some(WaypointCommand::Manifests {
                    namespace,
                    name,
                    image,
                    replicas,
                }),
            ..
        } => {
            let text = weft::waypoint::manifests::render(&weft::waypoint::manifests::Options {
                namespace,
                name,
                image,
                replicas,
            })?;
            print!("{text}");
        }
        Command::Waypoint {
            command: None,
            args,
        } => waypoint_cli::run(*args)?,
        Command::Ca(CaCommand::Init {
            dir,
            trust_domain,
            force,
        }) => {
            SpiffeId::new(&trust_domain, "x", "x")
                .with_context(|| format!("--trust-domain {trust_domain:?} is not valid"))?;
            MeshCa::init(&dir, &trust_domain, force)?;
            println!(
                "wrote a new root CA for trust domain {trust_domain} to {}",
                dir.display()
            );
        }
        Command::Ca(CaCommand::Issue {
            dir,
            spiffe_id,
            out_cert,
            out_key,
            ttl,
        }) => {
            let id: SpiffeId = spiffe_id.parse().context("--spiffe-id")?;
            let ca = MeshCa::load(&dir)?;
            let leaf = ca.issue(&id, ttl)?;
            write_private(&out_key, &leaf.key_pem())
                .with_context(|| format!("writing {}", out_key.display()))?;
            std::fs::write(&out_cert, leaf.chain_pem())
                .with_context(|| format!("writing {}", out_cert.display()))?;
            println!(
                "issued {id} (valid until {}) to {}",
                humantime::format_rfc3339_seconds(leaf.not_after),
                out_cert.display()
            );
        }
    }
    Ok(())
}

fn run_signer(args: SignerArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if args.log_format == "json" {
        logs.json().init();
    } else {
        logs.init();
    }
    SpiffeId::new(&args.trust_domain, "x", "x")
        .with_context(|| format!("--trust-domain {:?} is not valid", args.trust_domain))?;
    let (sa_namespace, sa_name) = args
        .node_service_account
        .split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
        .with_context(|| {
            format!(
                "--node-service-account {:?} must be NAMESPACE/NAME",
                args.node_service_account
            )
        })?;
    if args.max_cert_ttl < Duration::from_secs(1) || args.default_cert_ttl < Duration::from_secs(1)
    {
        anyhow::bail!("--max-cert-ttl and --default-cert-ttl must be at least 1s");
    }
    let config = weft::signer::SignerConfig {
        policy: weft::signer::ReviewPolicy {
            trust_domain: args.trust_domain,
            node_service_account: (sa_namespace.to_owned(), sa_name.to_owned()),
            default_ttl: args.default_cert_ttl,
            max_ttl: args.max_cert_ttl,
            max_csr_age: args.max_csr_age,
        },
        ca_dir: args.ca_dir,
        namespace: args.namespace,
        root_configmap: args.root_configmap,
        http_addr: args.http_addr,
        republish_every: args.republish_interval.max(Duration::from_secs(1)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let api = weft::config::kube_source::client(args.kubeconfig.as_deref())
            .await
            .context("connecting to the Kubernetes API")?;
        tracing::info!(server = %api.server, "weft signer starting");
        let signing = weft::signer::run(api.client, config);
        tokio::select! {
            outcome = signing => outcome.context("weft signer"),
            _ = weft::shutdown::signal() => {
                tracing::info!("weft signer stopping");
                Ok(())
            }
        }
    })
}

fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}
