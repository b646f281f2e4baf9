//! Downstream mTLS (`downstream_mtls`) with a real TLS client: what each enforcement mode does
//! with no certificate, a certificate from another CA, an expired, revoked, too deep or
//! wrongly named one, and a good one; `client_certificate` pins per route.

use std::collections::HashMap;
use std::sync::Arc;

use postern_access::Access;
use postern_gateway::mtls::ClientAuth;
use postern_gateway::tls::{CertMap, CertResolver, certified, server_config_with_client_auth};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber, date_time_ymd,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support;

/// A certificate authority that issues client certificates.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    /// What a client sends after its certificate: an intermediate's own certificate.
    chain: String,
}

/// A client certificate with its key, as reqwest wants it (PEM, certificate then key), and
/// its SHA-256 fingerprint.
struct Client {
    identity_pem: String,
    fingerprint: String,
    serial: u64,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
            chain: String::new(),
        }
    }

    /// An intermediate CA under this one.
    fn intermediate(&self, name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.signed_by(&key, &self.issuer).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            chain: pem.clone(),
            pem,
        }
    }

    /// A client certificate for `email`, valid from 2020 until `until` (a year).
    fn client(&self, email: &str, serial: u64, until: i32) -> Client {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, email);
        params
            .subject_alt_names
            .push(SanType::Rfc822Name(email.try_into().unwrap()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(until, 1, 1);
        params.serial_number = Some(SerialNumber::from(serial));
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let fingerprint = ring::digest::digest(&ring::digest::SHA256, cert.der())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Client {
            identity_pem: format!("{}{}{}", cert.pem(), self.chain, key.serialize_pem()),
            fingerprint,
            serial,
        }
    }

    /// A CRL revoking `serials`.
    fn crl(&self, serials: &[u64]) -> String {
        CertificateRevocationListParams {
            this_update: date_time_ymd(2020, 1, 1),
            next_update: date_time_ymd(2090, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: date_time_ymd(2021, 1, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap()
        .pem()
        .unwrap()
    }
}

/// A TLS gateway for `mtls.test` with `downstream_mtls` as given (`{ca_file}` and
/// `{crl_file}` filled in), proxying to an upstream that answers `ok`; the server certificate
/// is trusted by [`Gateway::client`].
struct Gateway {
    base: String,
    addr: std::net::SocketAddr,
    server_ca: String,
    stop: CancellationToken,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn upstream() -> String {
    let app = axum::Router::new().fallback(|| async { "ok" });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

impl Gateway {
    async fn start(ca: &Ca, crl: Option<String>, mtls: &str, routes: &str) -> Self {
        let dir = tempfile::tempdir().unwrap().keep();
        std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
        if let Some(crl) = crl {
            std::fs::write(dir.join("crl.pem"), crl).unwrap();
        }
        // The server's own certificate, from a CA of its own.
        let server_ca = Ca::new("Server CA");
        let key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["mtls.test".to_owned()])
            .unwrap()
            .signed_by(&key, &server_ca.issuer)
            .unwrap();
        std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        let upstream = upstream().await;
        let yaml = format!(
            "certificate_file: server.pem\ncertificate_key_file: server.key\ndownstream_mtls: {mtls}\nroutes:\n{}",
            routes.replace("{upstream}", &upstream)
        );
        let config = postern_config::parse(&yaml, &dir, &HashMap::<String, String>::new())
            .unwrap_or_else(|e| panic!("{yaml}: {e}"));
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client_auth =
            Arc::new(ClientAuth::new(config.downstream_mtls.as_ref().unwrap()).unwrap());
        let resolver = Arc::new(CertResolver::default());
        let certified = certified(
            vec![CertificateDer::from(server.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
        resolver.set(CertMap::new(&[certified], &["mtls.test".into()]));
        let tls = server_config_with_client_auth(resolver, false, Some(client_auth.clone()));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let signer = postern_access::assertion::Signer::from_pem(
            &postern_access::assertion::Signer::generate_pem(),
        )
        .unwrap();
        let access = Access::new(
            support::memory_store().await,
            postern_access::users::LocalUsers::new(vec![]),
            signer,
            support::settings(),
        );
        let gateway = postern_gateway::Gateway::new(config, Arc::new(access));
        let stop = CancellationToken::new();
        tokio::spawn(postern_gateway::server::serve_mtls(
            listener,
            Some(tls),
            Some(client_auth),
            gateway,
            stop.clone(),
            Default::default(),
        ));
        Self {
            base: format!("https://mtls.test:{}", addr.port()),
            addr,
            server_ca: server_ca.pem,
            stop,
        }
    }

    /// A client that trusts the gateway and presents `identity` (if any).
    fn client(&self, identity: Option<&Client>) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .resolve("mtls.test", self.addr)
            .tls_certs_only([reqwest::Certificate::from_pem(self.server_ca.as_bytes()).unwrap()])
            .redirect(reqwest::redirect::Policy::none());
        if let Some(identity) = identity {
            builder = builder
                .identity(reqwest::Identity::from_pem(identity.identity_pem.as_bytes()).unwrap());
        }
        builder.build().unwrap()
    }

    /// The status and JSON `error` of `GET path` (`None`: the connection failed).
    async fn get(&self, identity: Option<&Client>, path: &str) -> Option<(u16, String)> {
        let response = self
            .client(identity)
            .get(format!("{}{path}", self.base))
            .header("accept", "application/json")
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        let error = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(body);
        Some((status, error))
    }
}

const PUBLIC: &str =
    "  - {from: https://mtls.test, to: '{upstream}', allow_public_unauthenticated_access: true}\n";

#[tokio::test]
async fn default_deny_refuses_every_route_without_a_valid_certificate_with_495() {
    let ca = Ca::new("Client CA");
    let ada = ca.client("ada@example.com", 10, 2090);
    let revoked = ca.client("rev@example.com", 11, 2090);
    let expired = ca.client("old@example.com", 12, 2021);
    let other_ca = Ca::new("Other CA").client("eve@example.com", 10, 2090);
    let deep = ca
        .intermediate("Intermediate")
        .client("deep@example.com", 14, 2090);
    let gw = Gateway::start(
        &ca,
        Some(ca.crl(&[revoked.serial])),
        "{ca_file: ca.pem, crl_file: crl.pem, match_subject_alt_names: [{email: '.*@example\\.com'}]}",
        PUBLIC,
    )
    .await;

    assert_eq!(gw.get(Some(&ada), "/").await, Some((200, "ok".into())));
    assert_eq!(
        gw.get(None, "/").await,
        Some((495, "client_certificate_required".into())),
        "no certificate, on a public route"
    );
    for (who, cert) in [
        ("another CA", &other_ca),
        ("expired", &expired),
        ("revoked by the CRL", &revoked),
        ("issued by an intermediate (max_verify_depth 1)", &deep),
    ] {
        assert_eq!(
            gw.get(Some(cert), "/").await,
            Some((495, "invalid_client_certificate".into())),
            "{who}"
        );
    }
    // The gateway's own endpoints do not need one (as Pomerium).
    assert_eq!(
        gw.get(None, "/.pomerium/ping").await.map(|r| r.0),
        Some(200)
    );
}

#[tokio::test]
async fn default_deny_answers_495_before_any_token_or_body_is_looked_at() {
    let ca = Ca::new("Client CA");
    let routes = "  - {from: https://mtls.test, to: '{upstream}', mcp: {server: {}}, allow_any_authenticated_user: true}\n";
    let gw = Gateway::start(&ca, None, "{ca_file: ca.pem}", routes).await;
    let other = Ca::new("Other CA").client("ada@example.com", 1, 2090);
    for (who, cert, error) in [
        ("none", None, "client_certificate_required"),
        ("another CA", Some(&other), "invalid_client_certificate"),
    ] {
        let response = gw
            .client(cert)
            .post(format!("{}/", gw.base))
            .header("authorization", "Bearer not-a-token")
            .header("content-type", "application/json")
            .body("not json")
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status().as_u16(),
            495,
            "{who}: not 401 for the token"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], error, "{who}");
    }
}

#[tokio::test]
async fn max_verify_depth_admits_longer_chains_only_when_raised() {
    let ca = Ca::new("Client CA");
    let deep = ca
        .intermediate("Intermediate")
        .client("deep@example.com", 1, 2090);
    let gw = Gateway::start(&ca, None, "{ca_file: ca.pem, max_verify_depth: 2}", PUBLIC).await;
    assert_eq!(
        gw.get(Some(&deep), "/").await,
        Some((200, "ok".into())),
        "leaf + 1 intermediate"
    );
    let gw = Gateway::start(&ca, None, "{ca_file: ca.pem}", PUBLIC).await;
    assert_eq!(
        gw.get(Some(&deep), "/").await,
        Some((495, "invalid_client_certificate".into())),
        "the default depth, 1: issued directly by a trusted CA"
    );
}

#[tokio::test]
async fn match_subject_alt_names_refuses_a_certificate_named_otherwise() {
    let ca = Ca::new("Client CA");
    let gw = Gateway::start(
        &ca,
        None,
        "{ca_file: ca.pem, match_subject_alt_names: [{dns: 'x\\.example\\.com'}, {email: '.*@example\\.com'}]}",
        PUBLIC,
    )
    .await;
    let ada = ca.client("ada@example.com", 1, 2090);
    let mallory = ca.client("mallory@example.com.evil.test", 2, 2090);
    assert_eq!(gw.get(Some(&ada), "/").await, Some((200, "ok".into())));
    assert_eq!(
        gw.get(Some(&mallory), "/").await,
        Some((495, "invalid_client_certificate".into())),
        "the pattern must match the whole SAN"
    );
}

#[tokio::test]
async fn policy_mode_asks_only_where_the_route_policy_does() {
    let ca = Ca::new("Client CA");
    let ada = ca.client("ada@example.com", 1, 2090);
    let bob = ca.client("bob@example.com", 2, 2090);
    let eve = Ca::new("Other CA").client("ada@example.com", 1, 2090);
    let routes = format!(
        "{PUBLIC}  - {{from: https://mtls.test, prefix: /pinned, to: '{{upstream}}', policy: {{allow: {{or: [{{client_certificate: {{fingerprint: {fp}}}}}]}}}}}}
  - {{from: https://mtls.test, prefix: /required, to: '{{upstream}}', allow_public_unauthenticated_access: true, policy: {{deny: {{or: [{{invalid_client_certificate: true}}]}}}}}}
",
        fp = ada.fingerprint
    );
    let gw = Gateway::start(&ca, None, "{ca_file: ca.pem, enforcement: policy}", &routes).await;

    assert_eq!(
        gw.get(None, "/").await,
        Some((200, "ok".into())),
        "no certificate needed"
    );
    assert_eq!(
        gw.get(Some(&ada), "/pinned").await,
        Some((200, "ok".into()))
    );
    for (who, cert) in [
        ("another pinned-out certificate", Some(&bob)),
        ("none", None),
    ] {
        let (status, _) = gw.get(cert, "/pinned").await.unwrap();
        assert!(status == 401 || status == 403, "{who}: {status}");
    }
    // A certificate from another CA is not valid, even where the route asks for nothing more.
    assert_eq!(
        gw.get(Some(&eve), "/required").await,
        Some((495, "invalid_client_certificate".into()))
    );
    assert_eq!(
        gw.get(None, "/required").await,
        Some((495, "client_certificate_required".into()))
    );
    assert_eq!(
        gw.get(Some(&bob), "/required").await,
        Some((200, "ok".into()))
    );
}

#[tokio::test]
async fn reject_connection_fails_the_handshake_without_a_valid_certificate() {
    let ca = Ca::new("Client CA");
    let ada = ca.client("ada@example.com", 1, 2090);
    let expired = ca.client("old@example.com", 2, 2021);
    let other = Ca::new("Other CA").client("ada@example.com", 1, 2090);
    let gw = Gateway::start(
        &ca,
        None,
        "{ca_file: ca.pem, enforcement: reject_connection}",
        PUBLIC,
    )
    .await;
    assert_eq!(gw.get(Some(&ada), "/").await, Some((200, "ok".into())));
    for (who, cert) in [
        ("none", None),
        ("another CA", Some(&other)),
        ("expired", Some(&expired)),
    ] {
        assert_eq!(
            gw.get(cert, "/").await,
            None,
            "{who}: the connection must fail"
        );
        assert_eq!(
            gw.get(cert, "/.pomerium/ping").await,
            None,
            "{who}: every path"
        );
    }
}
