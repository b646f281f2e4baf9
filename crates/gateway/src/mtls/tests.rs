use base64::Engine;
use postern_config::{DownstreamMtls, SanMatcher};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    PublicKeyData, SanType,
};

use super::*;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "CA");
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        issuer: Issuer::new(params, key),
        pem,
    }
}

/// A client certificate with `sans`, its DER and its key.
fn client(ca: &Ca, sans: Vec<SanType>) -> (CertificateDer<'static>, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = sans;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.der().clone(), key)
}

fn auth(ca: &Ca, sans: Vec<SanMatcher>) -> ClientAuth {
    ClientAuth::new(&DownstreamMtls {
        ca: Some(base64::engine::general_purpose::STANDARD.encode(&ca.pem)),
        match_subject_alt_names: sans,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn fingerprint_and_spki_hash_are_the_sha256_of_the_certificate_and_of_its_public_key() {
    let ca = ca();
    let (der, key) = client(&ca, vec![]);
    let seen = auth(&ca, vec![])
        .describe(std::slice::from_ref(&der))
        .unwrap();
    assert!(seen.valid);
    assert_eq!(seen.fingerprint, hex(&sha256(&der)));
    assert_eq!(seen.fingerprint.len(), 64);
    // The SubjectPublicKeyInfo as the key pair itself encodes it.
    let spki =
        base64::engine::general_purpose::STANDARD.encode(sha256(&key.subject_public_key_info()));
    assert_eq!(seen.spki_hash, spki);
    assert!(auth(&ca, vec![]).describe(&[]).is_none(), "no certificate");
}

#[test]
fn each_san_type_matches_only_its_own_names_and_whole() {
    let ca = ca();
    let upn = SanType::OtherName((
        vec![1, 3, 6, 1, 4, 1, 311, 20, 2, 3],
        rcgen::OtherNameValue::Utf8String("ada@corp.example".into()),
    ));
    let (der, _) = client(
        &ca,
        vec![
            SanType::DnsName("host.corp.example".try_into().unwrap()),
            SanType::IpAddress("192.0.2.7".parse().unwrap()),
            SanType::IpAddress("2001:db8::1".parse().unwrap()),
            SanType::URI("spiffe://corp.example/ada".try_into().unwrap()),
            upn,
        ],
    );
    let valid = |matcher: SanMatcher| {
        auth(&ca, vec![matcher])
            .describe(std::slice::from_ref(&der))
            .unwrap()
            .valid
    };
    assert!(valid(SanMatcher::Dns(r".*\.corp\.example".into())));
    assert!(!valid(SanMatcher::Dns("corp".into())), "whole name only");
    assert!(valid(SanMatcher::IpAddress(r"192\.0\.2\.7".into())));
    assert!(
        valid(SanMatcher::IpAddress("2001:db8::1".into())),
        "RFC 5952 text"
    );
    assert!(valid(SanMatcher::Uri("spiffe://corp.example/.*".into())));
    assert!(valid(SanMatcher::UserPrincipalName(
        ".*@corp.example".into()
    )));
    assert!(
        !valid(SanMatcher::Email(".*".into())),
        "no email SAN: a pattern for another type matches nothing"
    );
    assert!(
        !valid(SanMatcher::Dns(r"ada@corp\.example".into())),
        "the UPN is not a DNS name"
    );
}

#[test]
fn a_certificate_for_servers_only_is_not_a_client_certificate() {
    let ca = ca();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["server.example".to_owned()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let der = params.signed_by(&key, &ca.issuer).unwrap().der().clone();
    assert!(!auth(&ca, vec![]).describe(&[der]).unwrap().valid);
}

#[test]
fn the_handshake_names_the_trusted_cas_as_der_names() {
    use x509_parser::prelude::{FromDer, X509Name};
    let ca = ca();
    let auth = auth(&ca, vec![]);
    let hints = auth.root_hint_subjects();
    assert_eq!(hints.len(), 1);
    let (rest, name) = X509Name::from_der(hints[0].as_ref()).expect("a DER Name");
    assert!(rest.is_empty());
    assert_eq!(name.to_string(), "CN=CA");
}
