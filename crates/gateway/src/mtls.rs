//! Client certificates on the main listener (`downstream_mtls`): the rustls verifier that asks
//! for them, and what a connection's certificate means for policy.
//!
//! Chains are checked with rustls's own path builder (`rustls-webpki`): the trusted CAs, the
//! CRLs, the client-auth key usage, plus `max_verify_depth` on the verified path and
//! `match_subject_alt_names` on the leaf. With `reject_connection` a certificate that fails
//! ends the handshake. In the policy modes, as Pomerium, the handshake accepts any certificate
//! whose key signed the handshake (or none), and each request's policy sees whether it was
//! valid: `policy_with_default_deny` denies every route without a valid one (495).

use std::sync::Arc;

use postern_config::{DownstreamMtls, MtlsEnforcement, SanMatcher};
use postern_policy::ClientCertificate;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, TrustAnchor, UnixTime};

/// Why the `downstream_mtls` settings could not be used.
#[derive(Debug, thiserror::Error)]
#[error("downstream_mtls.{key}: {reason}")]
pub struct MtlsError {
    key: &'static str,
    reason: String,
}

fn fail(key: &'static str, reason: impl Into<String>) -> MtlsError {
    MtlsError {
        key,
        reason: reason.into(),
    }
}

/// Checks client certificates against `downstream_mtls`.
pub struct ClientAuth {
    anchors: Vec<TrustAnchor<'static>>,
    crls: Vec<webpki::CertRevocationList<'static>>,
    hints: Vec<DistinguishedName>,
    sans: Vec<(SanMatcher, regex_automata::meta::Regex)>,
    max_depth: Option<u32>,
    enforcement: MtlsEnforcement,
    algorithms: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("trust_anchors", &self.anchors.len())
            .field("crls", &self.crls.len())
            .field("enforcement", &self.enforcement)
            .finish()
    }
}

impl ClientAuth {
    /// The verifier for `settings` (already validated by the config crate; the certificates
    /// and CRLs themselves are parsed here).
    pub fn new(settings: &DownstreamMtls) -> Result<Self, MtlsError> {
        let ca = settings.ca_pem().map_err(|e| fail("ca", e.message))?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&ca)
            .collect::<Result<_, _>>()
            .map_err(|e| fail("ca", format!("not a PEM certificate bundle: {e}")))?;
        if certs.is_empty() {
            return Err(fail("ca", "no certificate in the bundle"));
        }
        let anchors = certs
            .iter()
            .map(|der| {
                webpki::anchor_from_trusted_cert(der)
                    .map(|a| a.to_owned())
                    .map_err(|e| fail("ca", format!("a certificate cannot be a trust anchor: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A trust anchor's subject is the Name's contents; the hint is the whole DER Name
        // (OpenSSL clients refuse the handshake otherwise).
        let hints = anchors
            .iter()
            .map(|a| DistinguishedName::in_sequence(a.subject.as_ref()))
            .collect();
        let mut crls = Vec::new();
        if let Some(pem) = settings.crl_pem().map_err(|e| fail("crl", e.message))? {
            for der in CertificateRevocationListDer::pem_slice_iter(&pem) {
                let der = der.map_err(|e| fail("crl", format!("not a PEM CRL bundle: {e}")))?;
                let crl = webpki::OwnedCertRevocationList::from_der(&der)
                    .map_err(|e| fail("crl", format!("unreadable CRL: {e}")))?;
                crls.push(webpki::CertRevocationList::from(crl));
            }
        }
        let sans = settings
            .match_subject_alt_names
            .iter()
            .map(|m| {
                m.regex()
                    .map(|r| (m.clone(), r))
                    .map_err(|e| fail("match_subject_alt_names", e))
            })
            .collect::<Result<_, _>>()?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(Self {
            anchors,
            crls,
            hints,
            sans,
            max_depth: settings.max_verify_depth(),
            enforcement: settings.enforcement(),
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        })
    }

    /// What policy sees of a connection's certificate chain (leaf first); `None` without one.
    pub fn describe(&self, chain: &[CertificateDer<'_>]) -> Option<ClientCertificate> {
        use base64::Engine;
        let (leaf, intermediates) = chain.split_first()?;
        let valid = match self.check(leaf, intermediates, UnixTime::now()) {
            Ok(()) => true,
            Err(reason) => {
                tracing::debug!(%reason, "client certificate not valid");
                false
            }
        };
        let spki = x509_parser::parse_x509_certificate(leaf)
            .map(|(_, cert)| sha256(cert.tbs_certificate.subject_pki.raw))
            .unwrap_or_default();
        Some(ClientCertificate {
            valid,
            fingerprint: hex(&sha256(leaf)),
            spki_hash: base64::engine::general_purpose::STANDARD.encode(spki),
        })
    }

    /// Whether the chain is one this listener trusts; the error says why not.
    fn check(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), String> {
        let cert = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| format!("unreadable certificate: {e}"))?;
        let crls: Vec<&webpki::CertRevocationList<'_>> = self.crls.iter().collect();
        let revocation = webpki::RevocationOptionsBuilder::new(&crls)
            .ok()
            .map(|options| {
                // As Pomerium: CRLs revoke leaf certificates; a CRL past its nextUpdate counts
                // only with reject_connection.
                let expiration = if self.enforcement == MtlsEnforcement::RejectConnection {
                    webpki::ExpirationPolicy::Enforce
                } else {
                    webpki::ExpirationPolicy::Ignore
                };
                options
                    .with_depth(webpki::RevocationCheckDepth::EndEntity)
                    .with_status_policy(webpki::UnknownStatusPolicy::Deny)
                    .with_expiration_policy(expiration)
                    .build()
            });
        let depth = |path: &webpki::VerifiedPath<'_>| match self.max_depth {
            Some(max) if path.intermediate_certificates().count() + 1 > max as usize => {
                Err(webpki::Error::MaximumPathDepthExceeded)
            }
            _ => Ok(()),
        };
        cert.verify_for_usage(
            self.algorithms.all,
            &self.anchors,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
            revocation,
            Some(&depth),
        )
        .map_err(|e| format!("{e:?}"))?;
        if !self.sans.is_empty() && !self.san_matches(leaf) {
            return Err("no Subject Alternative Name matches match_subject_alt_names".into());
        }
        Ok(())
    }

    /// Whether one of the leaf's SANs matches one of `match_subject_alt_names` (whole).
    fn san_matches(&self, leaf: &[u8]) -> bool {
        use x509_parser::extensions::GeneralName;
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
            return false;
        };
        let Ok(Some(sans)) = cert.subject_alternative_name() else {
            return false;
        };
        sans.value.general_names.iter().any(|name| {
            let text = match name {
                GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                    Some((*s).to_owned())
                }
                GeneralName::IPAddress(bytes) => ip_text(bytes),
                GeneralName::OtherName(oid, value) => upn(&oid.to_id_string(), value),
                _ => None,
            };
            let Some(text) = text else { return false };
            self.sans.iter().any(|(matcher, regex)| {
                let same_type = matches!(
                    (matcher, name),
                    (SanMatcher::Dns(_), GeneralName::DNSName(_))
                        | (SanMatcher::Email(_), GeneralName::RFC822Name(_))
                        | (SanMatcher::Uri(_), GeneralName::URI(_))
                        | (SanMatcher::IpAddress(_), GeneralName::IPAddress(_))
                        | (SanMatcher::UserPrincipalName(_), GeneralName::OtherName(..))
                );
                same_type && regex.is_match(&text)
            })
        })
    }
}

/// A SAN IP address as text (IPv6 per RFC 5952, as Rust prints it).
fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv4Addr::from(b).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv6Addr::from(b).to_string()),
        _ => None,
    }
}

/// A Microsoft User Principal Name: otherName 1.3.6.1.4.1.311.20.2.3, `[0] EXPLICIT UTF8String`.
fn upn(oid: &str, value: &[u8]) -> Option<String> {
    use x509_parser::asn1_rs::{Any, FromDer, Utf8String};
    if oid != "1.3.6.1.4.1.311.20.2.3" {
        return None;
    }
    let (_, explicit) = Any::from_der(value).ok()?;
    let (_, name) = Utf8String::from_der(explicit.data).ok()?;
    Some(name.string())
}

fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The verifier error carrying the reason, for the handshake failure's log line.
#[derive(Debug, thiserror::Error)]
#[error("client certificate refused: {0}")]
struct Refused(String);

impl ClientCertVerifier for ClientAuth {
    fn client_auth_mandatory(&self) -> bool {
        self.enforcement == MtlsEnforcement::RejectConnection
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.client_auth_mandatory() {
            self.check(end_entity, intermediates, now)
                .map_err(|reason| {
                    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                        Arc::new(Refused(reason)),
                    )))
                })?;
        }
        // Policy modes: the request's policy decides (`describe` checks the chain again once
        // the handshake is done; the handshake signature below still proves the key).
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests;
