//! The mesh CA: reads and writes the Istio plug-in CA directory layout
//! (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`) and signs workload leaves.
//!
//! A directory holding a self-signed root (`root-cert.pem` + `ca-key.pem` alone is enough) or
//! an intermediate with its chain is loaded as is. The signing key may be ECDSA or RSA
//! (2048 bits or more); leaves are always ECDSA P-256 with the SPIFFE ID as their only SAN.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, UnixTime};
use time::OffsetDateTime;

use super::spiffe::SpiffeId;

/// The signing CA's certificate (PEM): the root itself or an intermediate; when absent, the
/// root in [`ROOT_CERT_FILE`] signs.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// The signing CA's private key (PKCS#8 PEM, ECDSA or RSA); written with mode 0600.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The trust anchors (PEM, one or more certificates) every leaf must chain to.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";
/// The signing CA and the intermediates above it (PEM); sent after each leaf, minus any
/// root. Optional: without it the chain is the signing CA alone.
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";

/// How long a root written by `weft ca init` is valid.
const ROOT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Leaves start this far in the past so that small clock skew between nodes does not matter.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(5 * 60);
/// RSA signing keys below this size are refused.
const MIN_RSA_BITS: usize = 2048;

/// What went wrong reading, writing or using the CA directory.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// `weft ca init` without `--force` found one of the CA files already present.
    #[error("CA directory {dir}: {file} already exists; pass --force to overwrite it")]
    WouldOverwrite {
        /// The CA directory.
        dir: PathBuf,
        /// The first CA file found.
        file: &'static str,
    },
    /// A CA file could not be read or written, or the directory could not be created.
    #[error("CA directory {dir}: cannot {action} {file}: {source}")]
    Io {
        /// The CA directory.
        dir: PathBuf,
        /// The file concerned; empty when creating the directory itself failed.
        file: &'static str,
        /// What was attempted: `"read"`, `"write"` or `"create"`.
        action: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A CA file is missing when required, or its content cannot be used.
    #[error("CA directory {dir}: {file}: {reason}")]
    BadFile {
        /// The CA directory.
        dir: PathBuf,
        /// The file at fault.
        file: &'static str,
        /// What is wrong with it and, where possible, how to fix it.
        reason: String,
    },
    /// The directory holds no signing certificate: neither [`CA_CERT_FILE`] nor
    /// [`ROOT_CERT_FILE`] exists.
    #[error("CA directory {dir}: neither {CA_CERT_FILE} nor {ROOT_CERT_FILE} exists; run `weft ca init --dir {dir}` to create a CA")]
    NoCertificate {
        /// The CA directory.
        dir: PathBuf,
    },
    /// The files load, but a probe leaf signed at load time does not verify against the
    /// roots (e.g. the chain misses an intermediate, or the roots belong to another CA).
    #[error("CA directory {dir}: the signing CA does not chain to {ROOT_CERT_FILE}: {reason}")]
    BrokenChain {
        /// The CA directory.
        dir: PathBuf,
        /// Why verification failed (a [`ChainError`] as text).
        reason: String,
    },
    /// A leaf was asked for with a lifetime (given) below one second.
    #[error("leaf lifetime {0:?} is invalid: it must be at least 1 second")]
    BadTtl(Duration),
    /// Generating a key or signing a certificate failed, or rustls cannot use a leaf's key.
    #[error("signing a leaf for {id} failed: {reason}")]
    Signing {
        /// The identity the certificate was for, as text (`root CA of cluster.local` when
        /// `weft ca init` makes a root).
        id: String,
        /// The underlying error, as text.
        reason: String,
    },
}

/// Why a certificate chain does not lead to the given roots (see [`verify_chain`]).
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The chain holds no certificate, so there is no leaf to verify.
    #[error("empty chain")]
    Empty,
    /// rustls refused one of the roots as a trust anchor.
    #[error("root certificate rejected: {0}")]
    BadRoot(#[source] rustls::Error),
    /// The leaf cannot be parsed as an end-entity certificate.
    #[error(transparent)]
    BadLeaf(rustls::Error),
    /// The leaf does not verify up to a root: a bad signature, a missing intermediate, a
    /// certificate outside its validity period, a wrong key usage, and so on.
    #[error(transparent)]
    Untrusted(rustls::Error),
}

/// A loaded CA, able to sign leaves.
pub struct MeshCa {
    dir: PathBuf,
    signing_key: KeyPair,
    /// The signing certificate re-expressed as rcgen parameters (issuer name, key id).
    signing_cert: rcgen::Certificate,
    /// Certificates a peer needs between a leaf and a root (never a self-signed root).
    chain: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
    signing_not_after: SystemTime,
}

/// One freshly signed leaf with its private key.
pub struct IssuedLeaf {
    /// The identity the leaf carries as its only (URI) SAN.
    pub id: SpiffeId,
    /// Leaf first, then the intermediates a verifier needs.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's ECDSA P-256 private key (PKCS#8 DER), made on this node.
    pub key: PrivatePkcs8KeyDer<'static>,
    /// When it was signed (renewal timing counts from here, not from the backdated start).
    pub issued_at: SystemTime,
    /// Start of validity: `issued_at` backdated by five minutes, so peers with a slightly
    /// slow clock accept the leaf at once.
    pub not_before: SystemTime,
    /// End of validity: `issued_at` plus the requested lifetime, but never later than the
    /// signing CA's own expiry.
    pub not_after: SystemTime,
}

/// A leaf signed over someone else's public key (see [`MeshCa::sign`]): no private key here.
#[derive(Debug, Clone)]
pub struct SignedChain {
    /// Leaf first, then the intermediates a verifier needs (no roots).
    pub chain: Vec<CertificateDer<'static>>,
    /// When it was signed.
    pub issued_at: SystemTime,
    /// Start of validity (`issued_at` backdated by five minutes against clock skew).
    pub not_before: SystemTime,
    /// End of validity (never after the signing CA's own expiry).
    pub not_after: SystemTime,
}

impl SignedChain {
    /// The leaf and its intermediates as PEM, as a CSR's `status.certificate` carries them.
    pub fn chain_pem(&self) -> String {
        chain_to_pem(&self.chain)
    }
}

/// Certificates as concatenated PEM blocks.
pub fn chain_to_pem(chain: &[CertificateDer<'static>]) -> String {
    chain.iter().map(|c| der_to_pem("CERTIFICATE", c)).collect()
}

impl IssuedLeaf {
    /// The leaf and its intermediates as PEM.
    pub fn chain_pem(&self) -> String {
        chain_to_pem(&self.chain)
    }

    /// The PKCS#8 private key as PEM.
    pub fn key_pem(&self) -> String {
        der_to_pem("PRIVATE KEY", self.key.secret_pkcs8_der())
    }
}

impl std::fmt::Debug for IssuedLeaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedLeaf")
            .field("id", &self.id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl MeshCa {
    /// Writes a fresh self-signed root for `trust_domain` into `dir` and loads it.
    pub fn init(dir: &Path, trust_domain: &str, force: bool) -> Result<MeshCa, CaError> {
        let io = |file, action| {
            move |source| CaError::Io {
                dir: dir.to_owned(),
                file,
                action,
                source,
            }
        };
        if !force {
            for file in [CA_CERT_FILE, CA_KEY_FILE, ROOT_CERT_FILE, CERT_CHAIN_FILE] {
                if dir.join(file).exists() {
                    return Err(CaError::WouldOverwrite {
                        dir: dir.to_owned(),
                        file,
                    });
                }
            }
        }
        fs::create_dir_all(dir).map_err(io("", "create"))?;

        let signing = |reason: rcgen::Error| CaError::Signing {
            id: format!("root CA of {trust_domain}"),
            reason: reason.to_string(),
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(signing)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, trust_domain);
        name.push(DnType::CommonName, "weft mesh root CA");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW_ALLOWANCE;
        params.not_after = now + ROOT_VALIDITY;
        params.serial_number = Some(random_serial());
        let root = params.self_signed(&key).map_err(signing)?;

        let root_pem = root.pem();
        write_file(dir, CA_KEY_FILE, &key.serialize_pem(), true)?;
        write_file(dir, CA_CERT_FILE, &root_pem, false)?;
        write_file(dir, ROOT_CERT_FILE, &root_pem, false)?;
        write_file(dir, CERT_CHAIN_FILE, &root_pem, false)?;
        MeshCa::load(dir)
    }

    /// Loads a CA directory in the plug-in CA layout and checks that it can sign leaves that
    /// verify against its root.
    pub fn load(dir: &Path) -> Result<MeshCa, CaError> {
        let key_pem = read_file(dir, CA_KEY_FILE)?.ok_or_else(|| CaError::BadFile {
            dir: dir.to_owned(),
            file: CA_KEY_FILE,
            reason: format!(
                "file is missing; the signing key is required (PKCS#8 PEM). To start a new mesh CA, run `weft ca init --dir {}`",
                dir.display()
            ),
        })?;
        let signing_key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::BadFile {
            dir: dir.to_owned(),
            file: CA_KEY_FILE,
            reason: format!("not a usable private key (PKCS#8, ECDSA or RSA): {e}"),
        })?;

        let ca_cert_file = read_file(dir, CA_CERT_FILE)?;
        let root_file = read_file(dir, ROOT_CERT_FILE)?;
        let (signing_file, signing_pem) = match (&ca_cert_file, &root_file) {
            (Some(pem), _) => (CA_CERT_FILE, pem.clone()),
            (None, Some(pem)) => (ROOT_CERT_FILE, pem.clone()),
            (None, None) => {
                return Err(CaError::NoCertificate {
                    dir: dir.to_owned(),
                })
            }
        };
        let signing_der = parse_certs(dir, signing_file, &signing_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| CaError::BadFile {
                dir: dir.to_owned(),
                file: signing_file,
                reason: "holds no certificate".into(),
            })?;
        let signing_facts = inspect_signing_cert(dir, signing_file, &signing_der, &signing_key)?;

        let roots = match &root_file {
            Some(pem) => parse_certs(dir, ROOT_CERT_FILE, pem)?,
            None if signing_facts.self_signed => vec![signing_der.clone()],
            None => {
                return Err(CaError::BadFile {
                    dir: dir.to_owned(),
                    file: ROOT_CERT_FILE,
                    reason: format!(
                        "file is missing and {signing_file} is not self-signed; add the root certificate"
                    ),
                })
            }
        };
        if roots.is_empty() {
            return Err(CaError::BadFile {
                dir: dir.to_owned(),
                file: ROOT_CERT_FILE,
                reason: "holds no certificate".into(),
            });
        }

        let mut chain = match read_file(dir, CERT_CHAIN_FILE)? {
            Some(pem) => parse_certs(dir, CERT_CHAIN_FILE, &pem)?,
            None => vec![signing_der.clone()],
        };
        if chain.first() != Some(&signing_der) {
            chain.insert(0, signing_der.clone());
        }
        // Peers already hold the roots; sending them again only costs bytes.
        chain.retain(|cert| !roots.contains(cert));

        let signing_params =
            CertificateParams::from_ca_cert_der(&signing_der).map_err(|e| CaError::BadFile {
                dir: dir.to_owned(),
                file: signing_file,
                reason: format!("cannot be used as an issuer: {e}"),
            })?;
        let signing_cert =
            signing_params
                .self_signed(&signing_key)
                .map_err(|e| CaError::BadFile {
                    dir: dir.to_owned(),
                    file: CA_KEY_FILE,
                    reason: format!("cannot sign with this key: {e}"),
                })?;

        let ca = MeshCa {
            dir: dir.to_owned(),
            signing_key,
            signing_cert,
            chain,
            roots,
            signing_not_after: signing_facts.not_after,
        };
        ca.check_chain()?;
        Ok(ca)
    }

    /// Issues a throwaway leaf and verifies it the way a peer will, so a directory whose
    /// pieces do not fit together fails at load time, not at the first handshake.
    fn check_chain(&self) -> Result<(), CaError> {
        let probe_id =
            SpiffeId::new("probe.invalid", "probe", "probe").map_err(|e| CaError::Signing {
                id: "probe".into(),
                reason: e.to_string(),
            })?;
        let leaf = self.issue(&probe_id, Duration::from_secs(60))?;
        verify_chain(&leaf.chain, &self.roots).map_err(|reason| CaError::BrokenChain {
            dir: self.dir.clone(),
            reason: reason.to_string(),
        })
    }

    /// Signs a new ECDSA P-256 leaf for `id`, valid for `ttl` (clamped to the CA's own expiry).
    pub fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<IssuedLeaf, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| CaError::Signing {
            id: id.to_string(),
            reason: e.to_string(),
        })?;
        let signed = self.sign(id, &key, ttl)?;
        Ok(IssuedLeaf {
            id: id.clone(),
            chain: signed.chain,
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            issued_at: signed.issued_at,
            not_before: signed.not_before,
            not_after: signed.not_after,
        })
    }

    /// Signs a leaf for `id` over a public key made elsewhere (a node's CSR): the SPIFFE ID
    /// as the only SAN, serverAuth + clientAuth, valid for `ttl` (clamped to the CA's own
    /// expiry). Nothing of the requester's choosing but the key goes into the certificate.
    pub fn sign(
        &self,
        id: &SpiffeId,
        public_key: &impl rcgen::PublicKeyData,
        ttl: Duration,
    ) -> Result<SignedChain, CaError> {
        if ttl < Duration::from_secs(1) {
            return Err(CaError::BadTtl(ttl));
        }
        let signing = |reason: String| CaError::Signing {
            id: id.to_string(),
            reason,
        };
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, id.trust_domain());
        params.distinguished_name = name;
        let uri = rcgen::Ia5String::try_from(id.to_string()).map_err(|e| signing(e.to_string()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        // ECDSA keys sign; key encipherment is for RSA key transport (RFC 5480).
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let now = SystemTime::now();
        let not_before = now - CLOCK_SKEW_ALLOWANCE;
        let not_after = (now + ttl).min(self.signing_not_after);
        params.not_before = OffsetDateTime::from(not_before);
        params.not_after = OffsetDateTime::from(not_after);
        let cert = params
            .signed_by(public_key, &self.signing_cert, &self.signing_key)
            .map_err(|e| signing(e.to_string()))?;

        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        Ok(SignedChain {
            chain,
            issued_at: now,
            not_before,
            not_after,
        })
    }

    /// The trust anchors peers' chains must lead to.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The CA directory this CA was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Verifies that `chain` (leaf first) leads to one of `roots`, as TLS peers will check it.
pub fn verify_chain(
    chain: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
) -> Result<(), ChainError> {
    let (leaf, intermediates) = chain.split_first().ok_or(ChainError::Empty)?;
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).map_err(ChainError::BadRoot)?;
    }
    let parsed = rustls::server::ParsedCertificate::try_from(leaf).map_err(ChainError::BadLeaf)?;
    let algorithms =
        rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &store,
        intermediates,
        UnixTime::now(),
        algorithms.all,
    )
    .map_err(ChainError::Untrusted)
}

struct SigningFacts {
    self_signed: bool,
    not_after: SystemTime,
}

fn inspect_signing_cert(
    dir: &Path,
    file: &'static str,
    der: &CertificateDer<'static>,
    key: &KeyPair,
) -> Result<SigningFacts, CaError> {
    let bad = |reason: String| CaError::BadFile {
        dir: dir.to_owned(),
        file,
        reason,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| bad(format!("not a valid X.509 certificate: {e}")))?;
    if !is_ca_certificate(&cert) {
        return Err(bad(
            "is not a CA certificate (basicConstraints CA:TRUE is missing)".into(),
        ));
    }
    if cert.public_key().raw != key.public_key_der().as_slice() {
        return Err(bad(format!(
            "its public key does not match {CA_KEY_FILE}; the two files belong to different CAs"
        )));
    }
    if let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = cert.public_key().parsed() {
        if rsa.key_size() < MIN_RSA_BITS {
            return Err(bad(format!(
                "RSA key of {} bits is too weak; at least {MIN_RSA_BITS} bits are required",
                rsa.key_size()
            )));
        }
    }
    let not_after = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0));
    if not_after <= SystemTime::now() {
        return Err(bad("has expired".into()));
    }
    Ok(SigningFacts {
        self_signed: cert.subject() == cert.issuer(),
        not_after,
    })
}

/// Whether `cert` says it is a CA (basicConstraints CA:TRUE).
pub(crate) fn is_ca_certificate(cert: &x509_parser::certificate::X509Certificate<'_>) -> bool {
    cert.basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca)
}

fn read_file(dir: &Path, file: &'static str) -> Result<Option<String>, CaError> {
    match fs::read_to_string(dir.join(file)) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CaError::Io {
            dir: dir.to_owned(),
            file,
            action: "read",
            source,
        }),
    }
}

fn write_file(dir: &Path, file: &'static str, text: &str, secret: bool) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CaError::Io {
        dir: dir.to_owned(),
        file,
        action: "write",
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    options.mode(if secret { 0o600 } else { 0o644 });
    let mut handle = options.open(dir.join(file)).map_err(io)?;
    handle.write_all(text.as_bytes()).map_err(io)
}

fn parse_certs(
    dir: &Path,
    file: &'static str,
    pem: &str,
) -> Result<Vec<CertificateDer<'static>>, CaError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::BadFile {
            dir: dir.to_owned(),
            file,
            reason: format!("not valid PEM certificates: {e}"),
        })
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // keep the DER integer positive
    SerialNumber::from_slice(&bytes)
}

/// Encodes DER bytes as one PEM block.
pub fn der_to_pem(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_errors_keep_their_wording() {
        let err = verify_chain(&[], &[]).unwrap_err();
        assert!(matches!(err, ChainError::Empty));
        assert_eq!(err.to_string(), "empty chain");
        let bad_root = [CertificateDer::from(vec![0u8; 4])];
        let dir = tempfile::tempdir().unwrap();
        let ca = MeshCa::init(dir.path(), "cluster.local", false).unwrap();
        let id = SpiffeId::new("cluster.local", "a", "b").unwrap();
        let leaf = ca.issue(&id, Duration::from_secs(60)).unwrap();
        let err = verify_chain(&leaf.chain, &bad_root).unwrap_err();
        assert!(
            err.to_string().starts_with("root certificate rejected: "),
            "{err}"
        );
        verify_chain(&leaf.chain, ca.roots()).unwrap();
    }
}
