//! The gateway's public keys, fetched from the configured JWKS URL and cached.

use std::collections::HashMap;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use postern_http::document::{CachedDocument, Limits};

use crate::{VerifierConfig, VerifyError};

/// A JWKS document larger than this is refused (a gateway publishes a handful of keys).
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// One usable public key and the only algorithm it may verify.
#[derive(Clone)]
pub(crate) struct PublicKey {
    pub(crate) key: DecodingKey,
    pub(crate) algorithm: Algorithm,
}

/// The gateway's keys by `kid`, kept by the shared [`CachedDocument`] (its ttl, cooldown,
/// coalescing and last-good-copy rules are the verifier's).
pub(crate) struct KeyCache {
    document: CachedDocument<HashMap<String, PublicKey>>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("url", &self.document.url())
            .finish_non_exhaustive()
    }
}

impl KeyCache {
    pub(crate) fn new(config: &VerifierConfig) -> Self {
        let limits = Limits {
            ttl: config.keys_ttl,
            cooldown: config.refetch_cooldown,
            max_bytes: MAX_JWKS_BYTES,
        };
        let http = postern_http::client(config.fetch_timeout);
        Self {
            document: CachedDocument::new(&config.jwks_url, http, limits, parse_keys),
        }
    }

    /// The key with this `kid`, fetching the JWKS when the cache is empty or stale, or when the
    /// `kid` is unknown and the last fetch is older than the cooldown (keys were rotated).
    pub(crate) async fn get(&self, kid: &str) -> Result<PublicKey, VerifyError> {
        let keys = self
            .document
            .get(|keys| keys.contains_key(kid))
            .await
            .map_err(|error| VerifyError::Jwks {
                jwks_url: error.url,
                reason: error.reason,
            })?;
        keys.get(kid)
            .cloned()
            .ok_or_else(|| VerifyError::UnknownKey {
                kid: kid.to_owned(),
                jwks_url: self.document.url().to_owned(),
            })
    }
}

fn parse_keys(body: &[u8]) -> Result<HashMap<String, PublicKey>, String> {
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    Ok(usable_keys(&set))
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
