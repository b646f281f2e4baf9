//! `autocert`: certificates for every https route host from an ACME CA (Let's Encrypt by
//! default, `autocert_ca` for another), with HTTP-01 challenges answered by the `:80` listener.
//! Certificates and the account key are cached in `autocert_dir`, loaded at start-up, and renewed
//! in the background once less than a third of their lifetime is left.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

use crate::server::Challenges;
use crate::tls::{CertResolver, certified};

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = postern_config::defaults::AUTOCERT_CA;

/// What `autocert` needs.
#[derive(Clone, Debug)]
pub struct AutocertConfig {
    /// Cache directory (account key, certificates).
    pub dir: PathBuf,
    /// ACME directory URL.
    pub directory_url: String,
    /// Contact email.
    pub email: Option<String>,
    /// A CA file to trust for the ACME server's own TLS (test CAs such as pebble).
    pub trusted_ca: Option<PathBuf>,
    /// Renew when less than this fraction of the lifetime is left.
    pub renew_fraction: f64,
    /// How often certificates are checked for renewal.
    pub check_interval: Duration,
}

impl AutocertConfig {
    /// Defaults for `dir` and `directory_url`: renew at a third of the lifetime, check twice a day.
    pub fn new(dir: PathBuf, directory_url: Option<String>) -> Self {
        Self {
            dir,
            directory_url: directory_url.unwrap_or_else(|| LETS_ENCRYPT.into()),
            email: None,
            trusted_ca: None,
            renew_fraction: 1.0 / 3.0,
            check_interval: Duration::from_secs(12 * 3600),
        }
    }
}

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The ACME server refused or failed.
    #[error("ACME ({url}): {reason}")]
    Acme {
        /// The directory URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The cache could not be read or written.
    #[error("autocert cache {path}: {reason}")]
    Cache {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
}

/// Obtains and renews certificates, installing them into the TLS resolver.
pub struct Autocert {
    config: AutocertConfig,
    challenges: Arc<Challenges>,
    resolver: Arc<CertResolver>,
    account: tokio::sync::OnceCell<Account>,
    wake: tokio::sync::Notify,
}

impl Autocert {
    /// An autocert manager publishing challenges to `challenges` and certificates to `resolver`.
    pub fn new(
        config: AutocertConfig,
        challenges: Arc<Challenges>,
        resolver: Arc<CertResolver>,
    ) -> Self {
        Self {
            config,
            challenges,
            resolver,
            account: tokio::sync::OnceCell::new(),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Checks the hosts again now (after a reload added routes).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn cert_paths(&self, host: &str) -> (PathBuf, PathBuf) {
        let dir = self.config.dir.join("certs");
        (
            dir.join(format!("{host}.pem")),
            dir.join(format!("{host}.key")),
        )
    }

    /// Installs cached, still valid certificates; returns the hosts that need one.
    pub fn load_cached(&self, hosts: &[String]) -> Vec<String> {
        let mut missing = Vec::new();
        for host in hosts {
            let (cert, key) = self.cert_paths(host);
            match (std::fs::read(&cert), std::fs::read(&key)) {
                (Ok(chain), Ok(key_pem)) => match self.install(host, &chain, &key_pem) {
                    Ok(needs_renewal) if !needs_renewal => {}
                    Ok(_) => missing.push(host.clone()),
                    Err(error) => {
                        tracing::warn!(%host, %error, "ignoring an unreadable cached certificate");
                        missing.push(host.clone());
                    }
                },
                _ => missing.push(host.clone()),
            }
        }
        missing
    }

    /// Installs a certificate; returns whether it is due for renewal.
    fn install(&self, host: &str, chain_pem: &[u8], key_pem: &[u8]) -> Result<bool, String> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("bad certificate PEM: {e}"))?;
        let leaf = chain.first().ok_or("empty certificate chain")?.clone();
        let key =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("bad key PEM: {e}"))?;
        self.resolver.insert(host, certified(chain, key)?);
        due_for_renewal(&leaf, self.config.renew_fraction)
    }

    /// Makes sure every host has a current certificate, issuing or renewing as needed.
    pub async fn ensure(&self, hosts: &[String]) -> Result<(), AcmeError> {
        let mut first_error = None;
        for host in self.load_cached(hosts) {
            tracing::info!(%host, ca = %self.config.directory_url, "autocert: requesting a certificate");
            match self.issue(&host).await {
                Ok(()) => tracing::info!(%host, "autocert: certificate installed"),
                Err(error) => {
                    tracing::error!(%host, %error, "autocert: no certificate obtained; will retry");
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Checks and renews until `shutdown`; `hosts` gives the route hosts in force.
    pub async fn run(
        self: Arc<Self>,
        hosts: impl Fn() -> Vec<String> + Send + Sync + 'static,
        shutdown: CancellationToken,
    ) {
        let mut retry = Duration::from_secs(10);
        loop {
            let wait = match self.ensure(&hosts()).await {
                Ok(()) => {
                    retry = Duration::from_secs(10);
                    self.config.check_interval
                }
                Err(_) => {
                    retry = (retry * 2).min(Duration::from_secs(3600));
                    retry.min(self.config.check_interval)
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    async fn account(&self) -> Result<&Account, AcmeError> {
        self.account
            .get_or_try_init(|| self.load_or_create_account())
            .await
    }

    async fn load_or_create_account(&self) -> Result<Account, AcmeError> {
        let fail = |reason: String| AcmeError::Acme {
            url: self.config.directory_url.clone(),
            reason,
        };
        let path = self.config.dir.join("account.json");
        let builder = || match &self.config.trusted_ca {
            Some(ca) => Account::builder_with_root(ca)
                .map_err(|e| fail(format!("trusted CA {}: {e}", ca.display()))),
            None => Account::builder().map_err(|e| fail(e.to_string())),
        };
        if let Ok(text) = std::fs::read_to_string(&path) {
            let credentials: AccountCredentials =
                serde_json::from_str(&text).map_err(|e| AcmeError::Cache {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
            return builder()?
                .from_credentials(credentials)
                .await
                .map_err(|e| fail(e.to_string()));
        }
        let contact: Vec<String> = self
            .config
            .email
            .iter()
            .map(|e| format!("mailto:{e}"))
            .collect();
        let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, credentials) = builder()?
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.config.directory_url.clone(),
                None,
            )
            .await
            .map_err(|e| fail(format!("creating the account failed: {e}")))?;
        let json = serde_json::to_string(&credentials).map_err(|e| fail(e.to_string()))?;
        write_private(&path, json.as_bytes())?;
        Ok(account)
    }

    async fn issue(&self, host: &str) -> Result<(), AcmeError> {
        let fail = |reason: String| AcmeError::Acme {
            url: self.config.directory_url.clone(),
            reason,
        };
        let account = self.account().await?;
        let identifiers = [Identifier::Dns(host.to_owned())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| fail(format!("new order for {host}: {e}")))?;
        let mut tokens = Vec::new();
        {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz =
                    authz.map_err(|e| fail(format!("authorization for {host}: {e}")))?;
                if authz.status == AuthorizationStatus::Valid {
                    continue;
                }
                let mut challenge = authz.challenge(ChallengeType::Http01).ok_or_else(|| {
                    fail(format!("the CA offers no http-01 challenge for {host}"))
                })?;
                self.challenges
                    .insert(&challenge.token, challenge.key_authorization().as_str());
                tokens.push(challenge.token.clone());
                challenge
                    .set_ready()
                    .await
                    .map_err(|e| fail(format!("challenge for {host}: {e}")))?;
            }
        }
        let retries = RetryPolicy::new().timeout(Duration::from_secs(60));
        let status = order.poll_ready(&retries).await;
        for token in &tokens {
            self.challenges.remove(token);
        }
        let status = status.map_err(|e| fail(format!("validating {host}: {e}")))?;
        if status != OrderStatus::Ready {
            return Err(fail(format!(
                "the order for {host} ended {status:?} (is port 80 of {host} reaching this gateway?)"
            )));
        }
        let key_pem = order
            .finalize()
            .await
            .map_err(|e| fail(format!("finalizing {host}: {e}")))?;
        let chain_pem = order
            .poll_certificate(&retries)
            .await
            .map_err(|e| fail(format!("downloading {host}: {e}")))?;
        let (cert_path, key_path) = self.cert_paths(host);
        write_private(&key_path, key_pem.as_bytes())?;
        write_private(&cert_path, chain_pem.as_bytes())?;
        self.install(host, chain_pem.as_bytes(), key_pem.as_bytes())
            .map_err(fail)?;
        Ok(())
    }
}

/// Whether less than `fraction` of the certificate's lifetime is left.
fn due_for_renewal(leaf: &CertificateDer<'_>, fraction: f64) -> Result<bool, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("bad certificate: {e}"))?;
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let lifetime = (not_after - not_before).max(1) as f64;
    Ok(((not_after - now) as f64) < lifetime * fraction)
}

/// Writes a file readable only by its owner, atomically (write then rename).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AcmeError> {
    let fail = |e: std::io::Error| AcmeError::Cache {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(fail)?;
        file.write_all(bytes).map_err(fail)?;
        file.sync_all().map_err(fail)?;
    }
    std::fs::rename(&tmp, path).map_err(fail)
}
