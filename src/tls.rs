//! TLS for HBONE: TLS 1.3 only, ALPN `h2`, both sides present mesh certificates.
//!
//! Clients check the server's chain against the mesh roots and its URI SAN against the SPIFFE
//! ID the mesh model expects for the destination (DNS/IP names play no part). Servers require a
//! client certificate chaining to the roots and record its SPIFFE ID as the peer identity.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::identity::manager::IdentityCert;
use crate::identity::SpiffeId;

/// ALPN protocol HBONE speaks.
pub const ALPN_H2: &[u8] = b"h2";

/// What went wrong building a TLS configuration or reading a peer's identity.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused one of the mesh roots as a trust anchor (the reason is given).
    #[error("mesh root certificate rejected: {0}")]
    BadRoot(String),
    /// rustls refused the configuration itself, e.g. the client verifier or the TLS 1.3
    /// protocol choice (the reason is given).
    #[error("building TLS configuration failed: {0}")]
    Config(String),
    /// The handshake completed without a peer certificate.
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    /// The peer's leaf cannot be parsed, or does not hold exactly one URI SAN that is a
    /// mesh SPIFFE ID (the reason is given).
    #[error("peer certificate carries no SPIFFE ID: {0}")]
    NoPeerIdentity(String),
}

/// The one crypto provider weft uses (aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn root_store(roots: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(|e| TlsError::BadRoot(e.to_string()))?;
    }
    Ok(Arc::new(store))
}

/// Server side of HBONE for one identity; follows certificate renewals automatically.
pub fn server_config(
    roots: &[CertificateDer<'static>],
    identity: Arc<IdentityCert>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(root_store(roots)?, provider.clone())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(CurrentLeaf(identity)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// Client side of HBONE: presents `identity`, accepts only a server whose SAN is `expected`.
pub fn client_config(
    roots: &[CertificateDer<'static>],
    identity: Arc<IdentityCert>,
    expected: SpiffeId,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = SpiffeServerVerifier {
        roots: root_store(roots)?,
        expected,
        provider: provider.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(CurrentLeaf(identity)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The SPIFFE ID of the peer that completed a handshake.
pub fn peer_identity(state: &rustls::CommonState) -> Result<SpiffeId, TlsError> {
    let leaf = state
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or(TlsError::NoPeerCertificate)?;
    identity_in_cert(leaf)
}

/// The SPIFFE ID in a certificate's URI SAN (exactly one is allowed).
pub fn identity_in_cert(cert: &CertificateDer<'_>) -> Result<SpiffeId, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| TlsError::NoPeerIdentity(format!("unparseable certificate: {e}")))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| TlsError::NoPeerIdentity(e.to_string()))?
        .ok_or_else(|| TlsError::NoPeerIdentity("no subjectAltName extension".into()))?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [uri] => uri
            .parse::<SpiffeId>()
            .map_err(|e| TlsError::NoPeerIdentity(e.to_string())),
        [] => Err(TlsError::NoPeerIdentity("no URI SAN".into())),
        many => Err(TlsError::NoPeerIdentity(format!(
            "{} URI SANs; exactly one is allowed",
            many.len()
        ))),
    }
}

/// Hands rustls whatever leaf the identity holds right now.
#[derive(Debug)]
struct CurrentLeaf(Arc<IdentityCert>);

impl std::fmt::Debug for IdentityCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdentityCert({})", self.id())
    }
}

impl ResolvesServerCert for CurrentLeaf {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified_key.clone())
    }
}

impl ResolvesClientCert for CurrentLeaf {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified_key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Checks the server chain against the mesh roots and its SAN against the expected identity.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: SpiffeId,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let presented = identity_in_cert(end_entity)
            .map_err(|e| rustls::Error::General(format!("server identity: {e}")))?;
        if presented != self.expected {
            return Err(rustls::Error::General(format!(
                "server identity {presented} is not the expected {}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
