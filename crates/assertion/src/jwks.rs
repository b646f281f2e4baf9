//! The gateway's public keys, fetched from the configured JWKS URL and cached.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::{VerifierConfig, VerifyError};

/// A JWKS document larger than this is refused (a gateway publishes a handful of keys).
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// One usable public key and the only algorithm it may verify.
#[derive(Clone)]
pub(crate) struct PublicKey {
    pub(crate) key: DecodingKey,
    pub(crate) algorithm: Algorithm,
}

#[derive(Default)]
struct Snapshot {
    keys: HashMap<String, PublicKey>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
}

pub(crate) struct KeyCache {
    url: String,
    ttl: Duration,
    cooldown: Duration,
    http: reqwest::Client,
    snapshot: RwLock<Snapshot>,
    /// Serialises fetches so concurrent misses make one request.
    fetch: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl KeyCache {
    pub(crate) fn new(config: &VerifierConfig) -> Self {
        let http = postern_http::client(config.fetch_timeout);
        Self {
            url: config.jwks_url.clone(),
            ttl: config.keys_ttl,
            cooldown: config.refetch_cooldown,
            http,
            snapshot: RwLock::default(),
            fetch: tokio::sync::Mutex::new(()),
        }
    }

    /// The key with this `kid`, fetching the JWKS when the cache is empty or stale, or when the
    /// `kid` is unknown and the last fetch is older than the cooldown (keys were rotated).
    pub(crate) async fn get(&self, kid: &str) -> Result<PublicKey, VerifyError> {
        let (cached, stale, may_refetch) = self.lookup(kid);
        if let (Some(key), false) = (&cached, stale) {
            return Ok(key.clone());
        }
        if cached.is_none() && !may_refetch {
            return Err(self.unknown(kid));
        }

        let _guard = self.fetch.lock().await;
        // Another task may have fetched while this one waited.
        let (cached, stale, may_refetch) = self.lookup(kid);
        if let (Some(key), false) = (&cached, stale) {
            return Ok(key.clone());
        }
        if cached.is_none() && !may_refetch {
            return Err(self.unknown(kid));
        }
        match self.fetch_keys().await {
            Ok(keys) => {
                let found = keys.get(kid).cloned();
                let mut snapshot = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
                snapshot.keys = keys;
                snapshot.fetched_at = Some(Instant::now());
                snapshot.last_attempt = snapshot.fetched_at;
                found.ok_or_else(|| self.unknown(kid))
            }
            Err(error) => {
                self.snapshot
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .last_attempt = Some(Instant::now());
                // A stale key still verifies while the gateway is briefly unreachable.
                match cached {
                    Some(key) => {
                        tracing::warn!(%error, "JWKS refresh failed, using the cached key");
                        Ok(key)
                    }
                    None => Err(error),
                }
            }
        }
    }

    fn lookup(&self, kid: &str) -> (Option<PublicKey>, bool, bool) {
        let snapshot = self.snapshot.read().unwrap_or_else(|e| e.into_inner());
        let stale = snapshot.fetched_at.is_none_or(|t| t.elapsed() >= self.ttl);
        let may_refetch = snapshot
            .last_attempt
            .is_none_or(|t| t.elapsed() >= self.cooldown);
        (
            snapshot.keys.get(kid).cloned(),
            stale && may_refetch,
            may_refetch,
        )
    }

    fn unknown(&self, kid: &str) -> VerifyError {
        VerifyError::UnknownKey {
            kid: kid.to_owned(),
            jwks_url: self.url.clone(),
        }
    }

    async fn fetch_keys(&self) -> Result<HashMap<String, PublicKey>, VerifyError> {
        let fail = |reason: String| VerifyError::Jwks {
            jwks_url: self.url.clone(),
            reason,
        };
        let response = self
            .http
            .get(&self.url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| fail(format!("request failed: {e}")))?;
        if !response.status().is_success() {
            return Err(fail(format!("HTTP status {}", response.status())));
        }
        if response.content_length().unwrap_or(0) > MAX_JWKS_BYTES as u64 {
            return Err(fail(format!("document larger than {MAX_JWKS_BYTES} bytes")));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| fail(format!("reading the body failed: {e}")))?;
        if body.len() > MAX_JWKS_BYTES {
            return Err(fail(format!("document larger than {MAX_JWKS_BYTES} bytes")));
        }
        let set: JwkSet =
            serde_json::from_slice(&body).map_err(|e| fail(format!("not a JWKS: {e}")))?;
        Ok(usable_keys(&set))
    }
}

/// The keys of `set` that have a `kid` and are P-256 or RSA public keys. Others are skipped: a
/// gateway may publish keys for other uses, and one odd key must not hide the rest.
pub(crate) fn usable_keys(set: &JwkSet) -> HashMap<String, PublicKey> {
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            _ => continue,
        };
        match DecodingKey::from_jwk(jwk) {
            Ok(key) => {
                keys.insert(kid, PublicKey { key, algorithm });
            }
            Err(error) => tracing::warn!(%kid, %error, "skipping an unreadable JWKS key"),
        }
    }
    keys
}
