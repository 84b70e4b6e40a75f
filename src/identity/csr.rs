//! The certificate signing request (PKCS#10) of one workload identity, from both ends.
//!
//! A node that may not hold the CA key makes the leaf's key pair itself and sends only a CSR:
//! [`WorkloadKey::generate`] builds one with the SPIFFE ID as its only SAN, and
//! [`WorkloadKey::accept_chain`] checks what comes back (the key is ours, the SAN is the
//! identity asked for, the chain leads to the mesh roots) before the daemon presents it.
//!
//! The signer reads a CSR with [`read_request`]: the signature must verify (the requester
//! holds the key), the key must be ECDSA P-256, and the request must name exactly one
//! identity, a `spiffe://` URI in the mesh's trust domain, with no other SAN and no extension
//! beyond subjectAltName (key usages, which the signer sets itself, are tolerated). Every
//! refusal is a [`CsrRejection`] whose text an operator reads in `kubectl describe csr`.

use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivatePkcs8KeyDer};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION};
use x509_parser::prelude::FromDer;

use super::ca::{verify_chain, IssuedLeaf};
use super::spiffe::SpiffeId;

/// The Kubernetes `signerName` of weft's workload certificates.
pub const SIGNER_NAME: &str = "weft.dev/workload";

/// The key usages a node asks for (`spec.usages`, Kubernetes spelling): what an mTLS leaf
/// with an ECDSA key that is both client and server needs.
pub const USAGES: [&str; 3] = ["digital signature", "server auth", "client auth"];

/// Why a CSR is refused; the text is the denial message a human reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrRejection {
    /// `spec.request` is not one PEM `CERTIFICATE REQUEST` block.
    #[error("spec.request is not a PEM CERTIFICATE REQUEST: {0}")]
    NotPem(String),
    /// The PEM holds something that is not a PKCS#10 request.
    #[error("spec.request is not a valid PKCS#10 certificate request: {0}")]
    Malformed(String),
    /// The request's signature does not verify with its own key: the requester does not
    /// hold the private key.
    #[error("spec.request's signature does not verify with its public key")]
    BadSignature,
    /// The key is not ECDSA P-256.
    #[error("spec.request has a {found} key; weft workload certificates use ECDSA P-256 keys")]
    WrongKeyType {
        /// What the key is (e.g. `RSA`, `EC on curve 1.3.132.0.34`).
        found: String,
    },
    /// Not exactly one subject alternative name.
    #[error("spec.request must name exactly one identity (one URI SAN); it has {count} subject alternative names")]
    SanCount {
        /// How many SANs the request carries.
        count: usize,
    },
    /// The one SAN is not a URI.
    #[error("spec.request's subject alternative name is a {kind}, not a spiffe:// URI")]
    NotUri {
        /// The SAN's kind (`DNS name`, `IP address`, ...).
        kind: &'static str,
    },
    /// The URI is not a SPIFFE ID weft issues for.
    #[error("spec.request's URI SAN {uri:?} is not a workload identity: {reason}")]
    NotSpiffe {
        /// The URI as given.
        uri: String,
        /// Why it does not parse as `spiffe://<td>/ns/<ns>/sa/<sa>`.
        reason: String,
    },
    /// The identity is in another trust domain.
    #[error("spec.request asks for {id}, outside this mesh's trust domain {expected}")]
    ForeignTrustDomain {
        /// The identity asked for.
        id: String,
        /// The mesh's trust domain.
        expected: String,
    },
    /// An extension other than subjectAltName and key usages.
    #[error("spec.request carries extension {oid}; only subjectAltName (and key usages) may be requested")]
    Extension {
        /// The extension's OID.
        oid: String,
    },
}

/// A CSR the signer may sign: the identity it names and the requester's public key.
#[derive(Debug, Clone)]
pub struct WorkloadRequest {
    /// The one identity the request names.
    pub id: SpiffeId,
    /// The requester's SubjectPublicKeyInfo (DER), signed over as is.
    spki_der: Vec<u8>,
}

impl WorkloadRequest {
    /// The public key, as the CA signs over it.
    pub fn public_key(&self) -> Result<rcgen::SubjectPublicKeyInfo, rcgen::Error> {
        rcgen::SubjectPublicKeyInfo::from_der(&self.spki_der)
    }
}

/// Reads and checks a CSR (`spec.request`, PEM) for an identity in `trust_domain`.
pub fn read_request(pem: &[u8], trust_domain: &str) -> Result<WorkloadRequest, CsrRejection> {
    let der = CertificateSigningRequestDer::from_pem_slice(pem)
        .map_err(|e| CsrRejection::NotPem(e.to_string()))?;
    let (rest, csr) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|e| CsrRejection::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrRejection::Malformed(format!(
            "{} bytes after the request",
            rest.len()
        )));
    }
    csr.verify_signature()
        .map_err(|_| CsrRejection::BadSignature)?;

    let spki = &csr.certification_request_info.subject_pki;
    let key_oid = &spki.algorithm.algorithm;
    if *key_oid == OID_PKCS1_RSAENCRYPTION {
        return Err(CsrRejection::WrongKeyType {
            found: "RSA".into(),
        });
    }
    if *key_oid != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Err(CsrRejection::WrongKeyType {
            found: format!("{key_oid} (not EC)"),
        });
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if curve.as_ref() != Some(&OID_EC_P256) {
        return Err(CsrRejection::WrongKeyType {
            found: match curve {
                Some(oid) => format!("EC on curve {oid}"),
                None => "EC key without a named curve".into(),
            },
        });
    }

    let extension_requests = csr
        .certification_request_info
        .iter_attributes()
        .filter(|a| {
            matches!(
                a.parsed_attribute(),
                x509_parser::cri_attributes::ParsedCriAttribute::ExtensionRequest(_)
            )
        })
        .count();
    if extension_requests > 1 {
        return Err(CsrRejection::Malformed(format!(
            "{extension_requests} extensionRequest attributes; at most one is allowed"
        )));
    }
    let mut sans: Vec<&GeneralName> = Vec::new();
    for extension in csr.requested_extensions().into_iter().flatten() {
        match extension {
            ParsedExtension::SubjectAlternativeName(san) => {
                sans.extend(san.general_names.iter());
            }
            ParsedExtension::KeyUsage(_) | ParsedExtension::ExtendedKeyUsage(_) => {}
            other => {
                return Err(CsrRejection::Extension {
                    oid: extension_name(other),
                })
            }
        }
    }
    let [san] = sans.as_slice() else {
        return Err(CsrRejection::SanCount { count: sans.len() });
    };
    let uri = match san {
        GeneralName::URI(uri) => *uri,
        other => {
            return Err(CsrRejection::NotUri {
                kind: general_name_kind(other),
            })
        }
    };
    let id: SpiffeId = uri
        .parse()
        .map_err(|e: super::SpiffeIdError| CsrRejection::NotSpiffe {
            uri: uri.to_owned(),
            reason: e.to_string(),
        })?;
    if id.trust_domain() != trust_domain {
        return Err(CsrRejection::ForeignTrustDomain {
            id: id.to_string(),
            expected: trust_domain.to_owned(),
        });
    }
    Ok(WorkloadRequest {
        id,
        spki_der: spki.raw.to_vec(),
    })
}

fn extension_name(extension: &ParsedExtension) -> String {
    match extension {
        ParsedExtension::UnsupportedExtension { oid } => oid.to_id_string(),
        ParsedExtension::BasicConstraints(_) => "basicConstraints".into(),
        ParsedExtension::NameConstraints(_) => "nameConstraints".into(),
        ParsedExtension::IssuerAlternativeName(_) => "issuerAltName".into(),
        other => format!("{other:?}")
            .split(['(', ' ', '{'])
            .next()
            .unwrap_or("unknown")
            .to_owned(),
    }
}

fn general_name_kind(name: &GeneralName) -> &'static str {
    match name {
        GeneralName::DNSName(_) => "DNS name",
        GeneralName::IPAddress(_) => "IP address",
        GeneralName::RFC822Name(_) => "email address",
        GeneralName::DirectoryName(_) => "directory name",
        GeneralName::RegisteredID(_) => "registered ID",
        GeneralName::OtherName(..) => "other name",
        GeneralName::X400Address(_) => "X.400 address",
        GeneralName::EDIPartyName(_) => "EDI party name",
        GeneralName::URI(_) => "URI",
    }
}

/// Why a chain a signer returned is not accepted for the identity asked for.
#[derive(Debug, thiserror::Error)]
pub enum ChainRejection {
    /// Not PEM certificates, or none.
    #[error("status.certificate is not PEM certificates: {0}")]
    NotPem(String),
    /// The leaf cannot be parsed.
    #[error("status.certificate's leaf is not a valid X.509 certificate: {0}")]
    BadLeaf(String),
    /// The leaf carries a key other than the one this node made.
    #[error("status.certificate's leaf is not for the key this node generated")]
    WrongKey,
    /// The leaf does not carry exactly the identity asked for.
    #[error("status.certificate's leaf names {found}, not {wanted}")]
    WrongIdentity {
        /// What the leaf's SANs say.
        found: String,
        /// The identity asked for.
        wanted: String,
    },
    /// The chain does not verify against the mesh roots.
    #[error("status.certificate does not chain to the mesh roots: {0}")]
    Untrusted(String),
}

/// A fresh key pair for one identity and its CSR.
pub struct WorkloadKey {
    id: SpiffeId,
    key: KeyPair,
    request_pem: String,
}

impl WorkloadKey {
    /// Makes an ECDSA P-256 key for `id` and a CSR whose only SAN is `id`.
    pub fn generate(id: &SpiffeId) -> Result<WorkloadKey, rcgen::Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(rcgen::Ia5String::try_from(id.to_string())?)];
        let request_pem = params.serialize_request(&key)?.pem()?;
        Ok(WorkloadKey {
            id: id.clone(),
            key,
            request_pem,
        })
    }

    /// The CSR, PEM (`spec.request`).
    pub fn request_pem(&self) -> &str {
        &self.request_pem
    }

    /// Checks the chain a signer returned (PEM, leaf first) and pairs it with the key.
    pub fn accept_chain(
        self,
        chain_pem: &[u8],
        roots: &[CertificateDer<'static>],
    ) -> Result<IssuedLeaf, ChainRejection> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ChainRejection::NotPem(e.to_string()))?;
        let leaf_der = chain
            .first()
            .ok_or_else(|| ChainRejection::NotPem("no certificate".into()))?;
        let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der)
            .map_err(|e| ChainRejection::BadLeaf(e.to_string()))?;
        if leaf.public_key().raw != self.key.public_key_der().as_slice() {
            return Err(ChainRejection::WrongKey);
        }
        let uris: Vec<String> = leaf
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .map(|name| match name {
                        GeneralName::URI(uri) => (*uri).to_owned(),
                        other => general_name_kind(other).to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        if uris != [self.id.to_string()] {
            return Err(ChainRejection::WrongIdentity {
                found: if uris.is_empty() {
                    "no identity".into()
                } else {
                    uris.join(", ")
                },
                wanted: self.id.to_string(),
            });
        }
        verify_chain(&chain, roots).map_err(|e| ChainRejection::Untrusted(e.to_string()))?;
        let at = |seconds: i64| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
        };
        let not_before = at(leaf.validity().not_before.timestamp());
        let not_after = at(leaf.validity().not_after.timestamp());
        Ok(IssuedLeaf {
            id: self.id,
            key: PrivatePkcs8KeyDer::from(self.key.serialize_der()),
            // Renewal counts from when this node got it: the leaf's start is backdated.
            issued_at: SystemTime::now().clamp(not_before, not_after),
            not_before,
            not_after,
            chain,
        })
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{KeyPair, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256};

    use super::*;
    use crate::identity::MeshCa;

    const TD: &str = "cluster.local";

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::new(TD, "shop", sa).unwrap()
    }

    fn request(sans: Vec<SanType>, key: &KeyPair) -> String {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.serialize_request(key).unwrap().pem().unwrap()
    }

    fn uri(text: &str) -> SanType {
        SanType::URI(rcgen::Ia5String::try_from(text).unwrap())
    }

    fn p256() -> KeyPair {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap()
    }

    #[test]
    fn a_node_made_request_reads_back_as_its_identity() {
        let key = WorkloadKey::generate(&id("cart")).unwrap();
        let read = read_request(key.request_pem().as_bytes(), TD).unwrap();
        assert_eq!(read.id, id("cart"));
        read.public_key().unwrap();
    }

    #[test]
    fn requests_naming_more_or_other_than_one_identity_are_refused() {
        let key = p256();
        let two = request(
            vec![
                uri("spiffe://cluster.local/ns/shop/sa/a"),
                uri("spiffe://cluster.local/ns/shop/sa/b"),
            ],
            &key,
        );
        assert_eq!(
            read_request(two.as_bytes(), TD).unwrap_err(),
            CsrRejection::SanCount { count: 2 }
        );
        let with_dns = request(
            vec![
                uri("spiffe://cluster.local/ns/shop/sa/a"),
                SanType::DnsName("cart.shop".try_into().unwrap()),
            ],
            &key,
        );
        assert_eq!(
            read_request(with_dns.as_bytes(), TD).unwrap_err(),
            CsrRejection::SanCount { count: 2 }
        );
        let none = request(Vec::new(), &key);
        assert_eq!(
            read_request(none.as_bytes(), TD).unwrap_err(),
            CsrRejection::SanCount { count: 0 }
        );
        let dns_only = request(
            vec![SanType::DnsName("cart.shop".try_into().unwrap())],
            &key,
        );
        assert_eq!(
            read_request(dns_only.as_bytes(), TD).unwrap_err(),
            CsrRejection::NotUri { kind: "DNS name" }
        );
        let not_spiffe = request(vec![uri("https://cart.shop/")], &key);
        assert!(matches!(
            read_request(not_spiffe.as_bytes(), TD).unwrap_err(),
            CsrRejection::NotSpiffe { .. }
        ));
    }

    #[test]
    fn a_foreign_trust_domain_is_refused_with_both_names() {
        let csr = request(vec![uri("spiffe://evil.example/ns/shop/sa/a")], &p256());
        let err = read_request(csr.as_bytes(), TD).unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.request asks for spiffe://evil.example/ns/shop/sa/a, outside this mesh's trust domain cluster.local"
        );
    }

    #[test]
    fn keys_other_than_p256_are_refused() {
        let rsa = KeyPair::generate_for(&PKCS_RSA_SHA256);
        // aws-lc-rs can make RSA keys; should the build not, use a fixed one.
        let rsa = rsa.unwrap_or_else(|_| panic!("RSA key generation"));
        let csr = request(vec![uri("spiffe://cluster.local/ns/shop/sa/a")], &rsa);
        assert_eq!(
            read_request(csr.as_bytes(), TD).unwrap_err(),
            CsrRejection::WrongKeyType {
                found: "RSA".into()
            }
        );
        let p384 = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        let csr = request(vec![uri("spiffe://cluster.local/ns/shop/sa/a")], &p384);
        assert!(matches!(
            read_request(csr.as_bytes(), TD).unwrap_err(),
            CsrRejection::WrongKeyType { found } if found.contains("1.3.132.0.34")
        ));
    }

    #[test]
    fn a_tampered_request_fails_its_signature() {
        let csr = request(vec![uri("spiffe://cluster.local/ns/shop/sa/aaaa")], &p256());
        let mut der = CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec();
        let at = der
            .windows(4)
            .position(|w| w == b"aaaa")
            .expect("the SAN is in the DER");
        der[at] = b'b';
        let tampered = crate::identity::ca::der_to_pem("CERTIFICATE REQUEST", &der);
        assert_eq!(
            read_request(tampered.as_bytes(), TD).unwrap_err(),
            CsrRejection::BadSignature
        );
        assert!(matches!(
            read_request(b"hello", TD).unwrap_err(),
            CsrRejection::NotPem(_)
        ));
    }

    /// What the signer does with a node's request: signs `as_id` over its key.
    fn sign_request(ca: &MeshCa, key: &WorkloadKey, as_id: &SpiffeId) -> String {
        let read = read_request(key.request_pem().as_bytes(), TD).unwrap();
        ca.sign(as_id, &read.public_key().unwrap(), Duration::from_secs(600))
            .unwrap()
            .chain_pem()
    }

    #[test]
    fn the_node_accepts_only_a_chain_for_its_key_and_identity() {
        let dir = tempfile::tempdir().unwrap();
        let ca = MeshCa::init(dir.path(), TD, false).unwrap();
        let key = WorkloadKey::generate(&id("cart")).unwrap();
        let signed = sign_request(&ca, &key, &id("cart"));
        let leaf = key.accept_chain(signed.as_bytes(), ca.roots()).unwrap();
        assert_eq!(leaf.id, id("cart"));
        assert!(leaf.not_after > SystemTime::now());

        // Someone else's certificate for the same identity: another key.
        let other = ca.issue(&id("cart"), Duration::from_secs(600)).unwrap();
        let key = WorkloadKey::generate(&id("cart")).unwrap();
        assert!(matches!(
            key.accept_chain(other.chain_pem().as_bytes(), ca.roots()),
            Err(ChainRejection::WrongKey)
        ));
        // Our key, another identity.
        let key = WorkloadKey::generate(&id("cart")).unwrap();
        let wrong = sign_request(&ca, &key, &id("admin"));
        assert!(matches!(
            key.accept_chain(wrong.as_bytes(), ca.roots()),
            Err(ChainRejection::WrongIdentity { .. })
        ));
        // Another CA's roots.
        let other_dir = tempfile::tempdir().unwrap();
        let other_ca = MeshCa::init(other_dir.path(), TD, false).unwrap();
        let key = WorkloadKey::generate(&id("cart")).unwrap();
        let signed = sign_request(&ca, &key, &id("cart"));
        assert!(matches!(
            key.accept_chain(signed.as_bytes(), other_ca.roots()),
            Err(ChainRejection::Untrusted(_))
        ));
    }
}
