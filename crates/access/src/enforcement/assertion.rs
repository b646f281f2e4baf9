//! The identity assertion the gateway sends upstream as `X-Pomerium-Jwt-Assertion`: an ES256 JWT
//! (RS256 with an RSA `signing_key`)
//! with `kid` (the key's RFC 7638 thumbprint in hex, as Pomerium writes it), claims `iss`, `aud`
//! (the route host), `sub`, `user`, `email`, `groups`, `name`, `sid`, `jti`, `iat`, `exp`
//! (+5 min). The public key is published at `/.well-known/pomerium/jwks.json`.
//!
//! Each request gets a fresh assertion (new `jti` and `iat`), as from Pomerium: servers that keep
//! a replay cache of `jti`s depend on it. Signing costs tens of microseconds; a deployment whose
//! servers keep no such cache may reuse a still-valid assertion per (session, route host) for
//! most of its life ([`Signer::reusing`], `jwt_assertion_reuse: true`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey;
use postern_store::Session;
use serde_json::Value;

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
    /// PEM, but neither an EC P-256 nor an RSA private key.
    #[error("signing_key must be an EC P-256 (ES256) or RSA (RS256) private key in PEM: {0}")]
    NotP256(jsonwebtoken::errors::Error),
    /// The public key could not be written as a JWK or its thumbprint.
    #[error("{0}")]
    Jwk(jsonwebtoken::errors::Error),
    /// The JWK set could not be serialized.
    #[error("{0}")]
    Jwks(serde_json::Error),
}

/// Signs assertions with one key: EC P-256 (ES256, the default and generated kind) or RSA
/// (RS256, for a `signing_key` Pomerium deployments carry over).
pub struct Signer {
    key: Key,
    /// The JWS header, base64url-encoded once (it names the key and never changes).
    header_b64: String,
    kid: String,
    jwks: Value,
    /// Whether a still-valid assertion is reused (off: every request gets a fresh one).
    reuse: bool,
    cache: Mutex<HashMap<(String, String), (String, u64)>>,
}

/// What one assertion is for: the route host (`aud`), the issuer, the groups it may carry, and
/// the route (assertions are reused per session and route).
#[derive(Clone, Copy, Debug)]
pub struct AssertionFor<'a> {
    /// `aud`: the route's host.
    pub audience: &'a str,
    /// `iss`.
    pub issuer: &'a str,
    /// `groups`: the user's, filtered by `jwt_groups_filter`.
    pub groups: &'a [String],
    /// The route's id.
    pub route: &'a str,
}

/// The assertion's claims.
#[derive(serde::Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    user: &'a str,
    email: &'a str,
    groups: &'a [String],
    name: &'a str,
    sid: &'a str,
    jti: String,
    iat: u64,
    exp: u64,
}

/// The private key as it signs. Every proxied request with an identity signs one assertion, so
/// ES256 goes through ring, whose P-256 signer (assembly, precomputed tables) is several times
/// faster than jsonwebtoken's pure-Rust backend; writing the compact JWS around it is three
/// base64url parts. RS256, rare here, goes through jsonwebtoken.
#[allow(clippy::large_enum_variant)] // one per gateway
enum Key {
    Es256 {
        pair: ring::signature::EcdsaKeyPair,
        rng: ring::rand::SystemRandom,
    },
    Rs256(EncodingKey),
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

    /// A signer for an EC P-256 private key (PKCS#8 or SEC1) or an RSA private key (PKCS#1 or
    /// PKCS#8) in PEM, or base64 of such a PEM.
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
        // An EC key in SEC1 form is re-encoded as PKCS#8, the form both libraries read.
        let pem = match ec_pkcs8_pem(&pem) {
            Some(pkcs8) => pkcs8,
            None => pem,
        };
        let (encoding, algorithm) = match EncodingKey::from_ec_pem(pem.as_bytes()) {
            Ok(key) => (key, Algorithm::ES256),
            Err(ec_error) => match EncodingKey::from_rsa_pem(pem.as_bytes()) {
                Ok(key) => (key, Algorithm::RS256),
                Err(_) => return Err(SigningKeyError::NotP256(ec_error)),
            },
        };
        let mut jwk = Jwk::from_encoding_key(&encoding, algorithm).map_err(SigningKeyError::Jwk)?;
        let kid = hex_kid(
            &jwk.thumbprint(ThumbprintHash::SHA256)
                .map_err(SigningKeyError::Jwk)?,
        );
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        let jwks =
            serde_json::to_value(JwkSet { keys: vec![jwk] }).map_err(SigningKeyError::Jwks)?;
        let mut header = Header::new(algorithm);
        header.kid = Some(kid.clone());
        let header_b64 = {
            use base64::Engine as _;
            let json = serde_json::to_vec(&header).map_err(SigningKeyError::Jwks)?;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        };
        let key = match algorithm {
            Algorithm::ES256 => es256_key(&pem)?,
            _ => Key::Rs256(encoding),
        };
        Ok(Self {
            key,
            header_b64,
            kid,
            jwks,
            reuse: false,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Reuses a still-valid assertion per (session, route host) instead of signing one per
    /// request: only for servers that keep no replay cache of `jti`s.
    pub fn reusing(mut self, reuse: bool) -> Self {
        self.reuse = reuse;
        self
    }

    /// The public keys (`/.well-known/pomerium/jwks.json`).
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// The assertion for `session` on the route host `audience`, issued as `issuer`; `None`
    /// (logged) if it cannot be signed, never an empty header.
    pub fn assertion(&self, session: &Session, audience: &str, issuer: &str) -> Option<String> {
        self.assertion_for(
            session,
            &AssertionFor {
                audience,
                issuer,
                groups: &session.groups,
                route: "",
            },
        )
    }

    /// The assertion for `session` as `what` says; `None` (logged) if it cannot be signed.
    pub fn assertion_for(&self, session: &Session, what: &AssertionFor<'_>) -> Option<String> {
        let AssertionFor {
            audience,
            issuer,
            groups,
            route,
        } = *what;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // Routes on one host may differ in issuer format and groups: a reused assertion is
        // one route's.
        let key = (session.id.clone(), format!("{audience} {route}"));
        if self.reuse {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((token, exp)) = cache.get(&key)
                && *exp > now + REUSE_MARGIN_SECS
            {
                return Some(token.clone());
            }
            cache.retain(|_, (_, exp)| *exp > now);
        }
        // Serialized straight from the session's fields: no intermediate JSON tree per request.
        let claims = Claims {
            iss: issuer,
            aud: audience,
            sub: &session.user_id,
            user: &session.user_id,
            email: &session.email,
            groups,
            name: &session.name,
            sid: &session.id,
            jti: format!("{:032x}", rand::random::<u128>()),
            iat: now,
            exp: now + LIFETIME_SECS,
        };
        let token = self
            .sign(&claims)
            .inspect_err(|error| tracing::error!(%error, "cannot sign the identity assertion"))
            .ok()?;
        if self.reuse {
            self.cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, (token.clone(), now + LIFETIME_SECS));
        }
        Some(token)
    }
}

impl Signer {
    /// The compact JWS of `claims`.
    fn sign(&self, claims: &Claims<'_>) -> Result<String, String> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = serde_json::to_vec(claims).map_err(|e| e.to_string())?;
        let mut token = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 96);
        token.push_str(&self.header_b64);
        token.push('.');
        b64.encode_string(&payload, &mut token);
        let signature = match &self.key {
            Key::Es256 { pair, rng } => pair
                .sign(rng, token.as_bytes())
                .map_err(|_| "the ES256 signature failed".to_owned())?
                .as_ref()
                .to_vec(),
            Key::Rs256(key) => {
                let signed = jsonwebtoken::crypto::sign(token.as_bytes(), key, Algorithm::RS256)
                    .map_err(|e| e.to_string())?;
                return Ok(format!("{token}.{signed}"));
            }
        };
        token.push('.');
        b64.encode_string(&signature, &mut token);
        Ok(token)
    }
}

/// An EC P-256 private key in PEM (PKCS#8 or SEC1) as PKCS#8 PEM; `None` for anything else.
fn ec_pkcs8_pem(pem: &str) -> Option<String> {
    use p256::pkcs8::DecodePrivateKey;
    let secret = p256::SecretKey::from_pkcs8_pem(pem)
        .or_else(|_| p256::SecretKey::from_sec1_pem(pem))
        .ok()?;
    secret
        .to_pkcs8_pem(Default::default())
        .ok()
        .map(|p| p.to_string())
}

/// ring's signer for an EC P-256 key in PKCS#8 PEM.
fn es256_key(pem: &str) -> Result<Key, SigningKeyError> {
    use p256::pkcs8::DecodePrivateKey;
    let secret = p256::SecretKey::from_pkcs8_pem(pem).map_err(|_| SigningKeyError::NotPem)?;
    let der = secret.to_pkcs8_der().map_err(|_| SigningKeyError::NotPem)?;
    let rng = ring::rand::SystemRandom::new();
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        der.as_bytes(),
        &rng,
    )
    .map_err(|_| SigningKeyError::NotPem)?;
    Ok(Key::Es256 { pair, rng })
}

/// An RFC 7638 thumbprint (base64url, as computed) in hex, the form Pomerium gives its `kid`s.
fn hex_kid(thumbprint: &str) -> String {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(thumbprint)
        .unwrap_or_else(|_| thumbprint.as_bytes().to_vec());
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(token: &str) -> Value {
        use base64::Engine as _;
        let payload = token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    }

    fn session() -> Session {
        Session {
            id: "s1".into(),
            user_id: "u1".into(),
            email: "ada@example.com".into(),
            ..Session::default()
        }
    }

    #[test]
    fn every_request_gets_a_fresh_assertion_unless_reuse_is_asked_for() {
        let signer = Signer::from_pem(&Signer::generate_pem()).unwrap();
        let a = signer
            .assertion(&session(), "mcp.test", "mcp.test")
            .unwrap();
        let b = signer
            .assertion(&session(), "mcp.test", "mcp.test")
            .unwrap();
        assert_ne!(
            claims(&a)["jti"],
            claims(&b)["jti"],
            "a replay cache sees two requests"
        );

        let reusing = Signer::from_pem(&Signer::generate_pem())
            .unwrap()
            .reusing(true);
        let a = reusing
            .assertion(&session(), "mcp.test", "mcp.test")
            .unwrap();
        let b = reusing
            .assertion(&session(), "mcp.test", "mcp.test")
            .unwrap();
        assert_eq!(a, b);
        let other_host = reusing.assertion(&session(), "db.test", "db.test").unwrap();
        assert_ne!(a, other_host, "reused per route host only");
    }

    #[test]
    fn the_kid_is_the_hex_thumbprint_pomerium_writes_and_names_the_published_key() {
        let signer = Signer::from_pem(&Signer::generate_pem()).unwrap();
        let token = signer
            .assertion(&session(), "mcp.test", "mcp.test")
            .unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        let kid = header.kid.unwrap();
        assert_eq!(kid.len(), 64, "{kid}");
        assert!(
            kid.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(signer.jwks()["keys"][0]["kid"], Value::String(kid));
    }

    /// An RSA `signing_key` (a Pomerium deployment's, PKCS#1 PEM; a test key made with
    /// `openssl genrsa -traditional 2048`) signs RS256, and its public key is published.
    #[test]
    fn an_rsa_signing_key_signs_rs256_verifiably() {
        let signer = Signer::from_pem(include_str!("testdata/rsa-signing-key.pem")).unwrap();
        let token = signer
            .assertion(&session(), "mcp.test", "mcp.test")
            .unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::RS256);
        let jwks: JwkSet = serde_json::from_value(signer.jwks().clone()).unwrap();
        let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
        validation.set_audience(&["mcp.test"]);
        let data = jsonwebtoken::decode::<Value>(&token, &key, &validation).unwrap();
        assert_eq!(data.claims["email"], "ada@example.com");
        let pkcs8 =
            Signer::from_pem("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n");
        assert!(matches!(pkcs8, Err(SigningKeyError::NotP256(_))));
    }

    /// The ES256 signature ring makes is a standard JWS: jsonwebtoken verifies it with the
    /// published key, for a generated (PKCS#8) key and a SEC1 one alike.
    #[test]
    fn es256_assertions_verify_with_the_published_key() {
        let sec1 = p256::SecretKey::random(&mut rand::rngs::OsRng)
            .to_sec1_pem(Default::default())
            .unwrap()
            .to_string();
        for pem in [Signer::generate_pem(), sec1] {
            let signer = Signer::from_pem(&pem).unwrap();
            let token = signer
                .assertion(&session(), "mcp.test", "mcp.test")
                .unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.alg, Algorithm::ES256);
            let jwks: JwkSet = serde_json::from_value(signer.jwks().clone()).unwrap();
            let jwk = jwks.find(header.kid.as_deref().unwrap()).unwrap();
            let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
            let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
            validation.set_audience(&["mcp.test"]);
            let data = jsonwebtoken::decode::<Value>(&token, &key, &validation).unwrap();
            assert_eq!(data.claims["sub"], "u1");
            let mut forged = token.clone();
            forged.replace_range(forged.len() - 4.., "AAAA");
            assert!(jsonwebtoken::decode::<Value>(&forged, &key, &validation).is_err());
        }
    }
}
