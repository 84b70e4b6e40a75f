//! `weft`: the operator CLI. `weft ca init` writes a fresh mesh CA in the Istio plug-in CA
//! layout; `weft ca issue` signs one workload leaf (for operators and debugging).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use weft::identity::{MeshCa, SpiffeId, DEFAULT_TRUST_DOMAIN};

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
