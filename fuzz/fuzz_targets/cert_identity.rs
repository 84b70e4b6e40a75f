#![no_main]
//! Feeds certificates to `weft::tls::identity_in_cert`, the peer-identity extraction the
//! HBONE server and client run on every handshake. Two modes, by the first byte:
//! - `0x30` (a DER SEQUENCE): the input is the certificate DER itself, arbitrary bytes.
//!   Asserts: an extracted identity is a valid SPIFFE ID that displays back to the one URI
//!   SAN x509-parser finds in the certificate.
//! - anything else: text lines, each a SAN to put in a well-formed self-signed certificate
//!   (`U<uri>`, `D<dns>`, `E<email>`, `I<ip>`, `O<otherName UTF-8>`); lines that rcgen
//!   cannot encode are skipped. Asserts the documented rule exactly: an identity comes out
//!   if and only if there is exactly one URI SAN and it parses as a SpiffeId, and it is that
//!   ID.

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rcgen::{CertificateParams, Ia5String, KeyPair, OtherNameValue, SanType};
use rustls::pki_types::CertificateDer;
use weft::identity::SpiffeId;
use weft::tls::identity_in_cert;
use x509_parser::extensions::GeneralName;

/// Microsoft UPN, a common otherName.
const UPN: [u64; 10] = [1, 3, 6, 1, 4, 1, 311, 20, 2, 3];

fn key() -> &'static KeyPair {
    static KEY: OnceLock<KeyPair> = OnceLock::new();
    KEY.get_or_init(|| KeyPair::generate().expect("key"))
}

fn raw(der: &[u8]) {
    let Ok(id) = identity_in_cert(&CertificateDer::from(der)) else {
        return;
    };
    let shown = id.to_string();
    assert_eq!(shown.parse::<SpiffeId>().as_ref(), Ok(&id));
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("weft parsed it");
    let san = cert
        .subject_alternative_name()
        .expect("weft read the SAN")
        .expect("weft found a SAN");
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    assert_eq!(uris, [shown.as_str()]);
}

fn structured(data: &[u8]) {
    let mut sans = Vec::new();
    let mut uris = Vec::new();
    for line in data.split(|&b| b == b'\n').take(16) {
        let Some((&kind, value)) = line.split_first() else {
            continue;
        };
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        let ia5 = || Ia5String::try_from(value).ok();
        let san = match kind {
            b'U' => ia5().map(|v| {
                uris.push(value.to_owned());
                SanType::URI(v)
            }),
            b'D' => ia5().map(SanType::DnsName),
            b'E' => ia5().map(SanType::Rfc822Name),
            b'I' => value.parse().ok().map(SanType::IpAddress),
            b'O' => Some(SanType::OtherName((
                UPN.to_vec(),
                OtherNameValue::Utf8String(value.to_owned()),
            ))),
            _ => None,
        };
        sans.extend(san);
    }
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    let Ok(cert) = params.self_signed(key()) else {
        return;
    };
    let got = identity_in_cert(cert.der());
    let want = match uris.as_slice() {
        [one] => one.parse::<SpiffeId>().ok(),
        _ => None,
    };
    match (&got, &want) {
        (Ok(got), Some(want)) => assert_eq!(got, want),
        (Err(_), None) => {}
        _ => panic!("URI SANs {uris:?}: identity_in_cert gave {got:?}, expected {want:?}"),
    }
    raw(cert.der());
}

fuzz_target!(|data: &[u8]| {
    match data.first() {
        Some(0x30) => raw(data),
        Some(_) => structured(data),
        None => {}
    }
});
