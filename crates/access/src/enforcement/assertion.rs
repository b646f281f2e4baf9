//! The identity assertion the gateway sends upstream as `X-Pomerium-Jwt-Assertion`: an ES256 JWT
//! with `kid` (the key's RFC 7638 thumbprint), claims `iss`, `aud` (the route host), `sub`,
//! `user`, `email`, `groups`, `name`, `sid`, `jti`, `iat`, `exp` (+5 min). The public key is
//! published at `/.well-known/pomerium/jwks.json`. Signing costs tens of microseconds, so a
//! still-valid assertion is reused per (session, route host) for most of its life.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey;
use postern_store::Session;
use serde_json::{Value, json};

/// How long an assertion is valid.
const LIFETIME_SECS: u64 = 300;
/// A cached assertion is reused while at least this much of its life is left.
const REUSE_MARGIN_SECS: u64 = 120;

/// Why `signing_key` cannot sign assertions. The underlying error is part of the text rather
/// than a `source()`, so a report prints it once.
#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    /// Not PEM, and not base64 either.
    #[error("signing_key is neither PEM nor base64 of PEM")]
    NotPemOrBase64,
    /// Base64 of something that is not text.
    #[error("signing_key is not PEM")]
    NotPem,
    /// PEM, but not of an EC P-256 private key.
    #[error("signing_key must be an EC P-256 private key in PEM: {0}")]
    NotP256(jsonwebtoken::errors::Error),
    /// The public key could not be written as a JWK or its thumbprint.
    #[error("{0}")]
    Jwk(jsonwebtoken::errors::Error),
    /// The JWK set could not be serialized.
    #[error("{0}")]
    Jwks(serde_json::Error),
}

/// Signs assertions with one P-256 key.
pub struct Signer {
    key: EncodingKey,
    kid: String,
    jwks: Value,
    cache: Mutex<HashMap<(String, String), (String, u64)>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A fresh key as PKCS#8 PEM (kept in the store when `signing_key` is not configured).
    pub fn generate_pem() -> String {
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        secret
            .to_pkcs8_pem(Default::default())
            .map(|p| p.to_string())
            .unwrap_or_default()
    }

    /// A signer for an EC P-256 private key in PEM (PKCS#8 or SEC1), or base64 of such a PEM.
    pub fn from_pem(pem: &str) -> Result<Self, SigningKeyError> {
        let pem = if pem.contains("-----BEGIN") {
            pem.to_owned()
        } else {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(pem.trim())
                .map_err(|_| SigningKeyError::NotPemOrBase64)?;
            String::from_utf8(bytes).map_err(|_| SigningKeyError::NotPem)?
        };
        let key = EncodingKey::from_ec_pem(pem.as_bytes()).map_err(SigningKeyError::NotP256)?;
        let mut jwk =
            Jwk::from_encoding_key(&key, Algorithm::ES256).map_err(SigningKeyError::Jwk)?;
        let kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(SigningKeyError::Jwk)?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        let jwks =
            serde_json::to_value(JwkSet { keys: vec![jwk] }).map_err(SigningKeyError::Jwks)?;
        Ok(Self {
            key,
            kid,
            jwks,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The public keys (`/.well-known/pomerium/jwks.json`).
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// The assertion for `session` on the route host `audience`, issued as `issuer`.
    pub fn assertion(&self, session: &Session, audience: &str, issuer: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let key = (session.id.clone(), audience.to_owned());
        {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((token, exp)) = cache.get(&key)
                && *exp > now + REUSE_MARGIN_SECS
            {
                return token.clone();
            }
            cache.retain(|_, (_, exp)| *exp > now);
        }
        let claims = json!({
            "iss": issuer, "aud": audience, "sub": session.user_id, "user": session.user_id,
            "email": session.email, "groups": session.groups, "name": session.name, "sid": session.id,
            "jti": format!("{:032x}", rand::random::<u128>()), "iat": now, "exp": now + LIFETIME_SECS,
        });
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.key).unwrap_or_default();
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (token.clone(), now + LIFETIME_SECS));
        token
    }
}
