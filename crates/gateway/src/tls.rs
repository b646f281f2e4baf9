//! Server certificates: loaded from files (several, chosen by SNI) or obtained by ACME, held in
//! a resolver whose contents can be replaced while connections are open (reload, renewal).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert, ResolvesServerCertUsingSni};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct TlsError {
    /// The file.
    pub file: String,
    /// What went wrong.
    pub reason: String,
}

/// A certificate with its key, ready for rustls.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let fail = |file: &Path, reason: String| TlsError {
        file: file.display().to_string(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| fail(cert, format!("cannot read certificates: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| fail(cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(fail(cert, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| fail(key, format!("not a PEM private key: {e}")))?;
    certified(chain, key_der).map_err(|reason| fail(key, reason))
}

/// A certified key from DER parts.
pub fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, String> {
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("unsupported private key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("the key does not match the certificate: {e}"))?;
    Ok(Arc::new(certified))
}

/// Whether `cert` is valid for `host` (checked the way clients will).
pub fn valid_for(cert: &Arc<CertifiedKey>, host: &str) -> bool {
    let mut probe = ResolvesServerCertUsingSni::new();
    probe.add(host, (**cert).clone()).is_ok()
}

/// Certificates by host name, plus a default for other names.
#[derive(Default, Clone)]
pub struct CertMap {
    by_host: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertMap {
    /// Maps each of `hosts` to the first of `certs` valid for it; the first cert is the default.
    pub fn new(certs: &[Arc<CertifiedKey>], hosts: &[String]) -> Self {
        let mut by_host = HashMap::new();
        for host in hosts {
            if let Some(cert) = certs.iter().find(|c| valid_for(c, host)) {
                by_host.insert(host.clone(), cert.clone());
            } else if !certs.is_empty() {
                tracing::warn!(%host, "no configured certificate is valid for this route host; the default one will be served");
            }
        }
        Self {
            by_host,
            default: certs.first().cloned(),
        }
    }

    /// Adds or replaces the certificate for `host`.
    pub fn insert(&mut self, host: &str, cert: Arc<CertifiedKey>) {
        if self.default.is_none() {
            self.default = Some(cert.clone());
        }
        self.by_host.insert(host.to_owned(), cert);
    }

    /// Whether a certificate is configured for `host`.
    pub fn has(&self, host: &str) -> bool {
        self.by_host.contains_key(host)
    }
}

/// Chooses the certificate by SNI; its map can be swapped at any time.
#[derive(Default)]
pub struct CertResolver {
    map: ArcSwap<CertMap>,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertResolver")
            .field("hosts", &self.map.load().by_host.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl CertResolver {
    /// Replaces every certificate.
    pub fn set(&self, map: CertMap) {
        self.map.store(Arc::new(map));
    }

    /// Adds or replaces one host's certificate (ACME issuance or renewal).
    pub fn insert(&self, host: &str, cert: Arc<CertifiedKey>) {
        self.map.rcu(|old| {
            let mut map = (**old).clone();
            map.insert(host, cert.clone());
            map
        });
    }

    /// The current map.
    pub fn current(&self) -> Arc<CertMap> {
        self.map.load_full()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let map = self.map.load();
        if let Some(name) = hello.server_name() {
            let name = name.to_ascii_lowercase();
            if let Some(cert) = map.by_host.get(&name) {
                return Some(cert.clone());
            }
            // `*.example.com` configured as a route host.
            if let Some((_, parent)) = name.split_once('.')
                && let Some(cert) = map.by_host.get(&format!("*.{parent}"))
            {
                return Some(cert.clone());
            }
        }
        map.default.clone()
    }
}

/// A rustls server configuration using `resolver`, offering HTTP/2 and HTTP/1.1 (ALPN), and the
/// ACME TLS-ALPN-01 protocol when `acme_alpn` is set.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    acme_alpn: bool,
) -> Arc<rustls::ServerConfig> {
    server_config_with_client_auth(resolver, acme_alpn, None)
}

/// [`server_config`] that asks for client certificates (`downstream_mtls`) when `client_auth`
/// is given.
pub fn server_config_with_client_auth(
    resolver: Arc<dyn ResolvesServerCert>,
    acme_alpn: bool,
    client_auth: Option<Arc<crate::mtls::ClientAuth>>,
) -> Arc<rustls::ServerConfig> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = rustls::ServerConfig::builder();
    let builder = match client_auth {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if acme_alpn {
        config.alpn_protocols.push(b"acme-tls/1".to_vec());
    }
    Arc::new(config)
}
