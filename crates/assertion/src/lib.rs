//! Verifies the identity assertion (`X-Pomerium-Jwt-Assertion`) that the Postern gateway sends
//! to the MCP servers behind it, and exposes the signed-in user's identity.
//!
//! Secure by default, unlike the reference SDK this replaces (see `shared/reference/servers.md`
//! §4): the JWKS URL and the accepted issuers are configuration, never taken from the token's own
//! `iss`, so a token minted by anyone who can reach the server directly does not verify. Only
//! ES256 (Postern's and Pomerium's default) and RS256 (Pomerium with an RSA signing key) are
//! accepted, and each key only with the algorithm of its own type.
//!
//! ```no_run
//! # async fn demo(header: &str) -> Result<(), postern_assertion::VerifyError> {
//! use postern_assertion::{Verifier, VerifierConfig};
//! let verifier = Verifier::new(VerifierConfig::new(
//!     "https://mcp.example.com/.well-known/pomerium/jwks.json",
//!     ["mcp.example.com"],
//! ));
//! let identity = verifier.verify(header).await?;
//! println!("{} <{}>", identity.name, identity.email);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod jwks;
#[cfg(feature = "testing")]
pub mod testing;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use crate::jwks::KeyCache;

/// The HTTP header that carries the assertion (Pomerium's name, kept for compatibility).
pub const ASSERTION_HEADER: &str = "x-pomerium-jwt-assertion";

/// What the verifier accepts. Build with [`VerifierConfig::new`] and adjust the public fields.
#[derive(Clone, Debug)]
pub struct VerifierConfig {
    /// Where the gateway publishes its public keys, e.g.
    /// `https://mcp.example.com/.well-known/pomerium/jwks.json`.
    pub jwks_url: String,
    /// Accepted `iss` values (the gateway signs the route host, e.g. `mcp.example.com`, or
    /// `https://mcp.example.com/` with `jwt_issuer_format: uri`). At least one is required.
    pub issuers: Vec<String>,
    /// Accepted `aud` value; `None` skips the audience check (the issuer check still applies).
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// How long fetched keys are used before the JWKS is fetched again.
    pub keys_ttl: Duration,
    /// Minimum time between two fetches caused by an unknown `kid` (a flood of forged `kid`s
    /// must not turn into a flood of JWKS requests).
    pub refetch_cooldown: Duration,
    /// Time limit for one JWKS fetch.
    pub fetch_timeout: Duration,
}

impl VerifierConfig {
    /// A configuration with the defaults: 30 s leeway, keys kept 10 min, at most one refetch
    /// for an unknown `kid` every 5 s, 5 s fetch timeout, no audience check.
    pub fn new(
        jwks_url: impl Into<String>,
        issuers: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            jwks_url: jwks_url.into(),
            issuers: issuers.into_iter().map(Into::into).collect(),
            audience: None,
            leeway: Duration::from_secs(30),
            keys_ttl: Duration::from_secs(600),
            refetch_cooldown: Duration::from_secs(5),
            fetch_timeout: Duration::from_secs(5),
        }
    }

    /// Requires `aud` to equal `audience`.
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }
}

/// The verified identity of the user on whose behalf the gateway forwarded a request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Subject: the user's stable id.
    #[serde(default)]
    pub sub: String,
    /// The user's id as Pomerium names it (same value as `sub`).
    #[serde(default)]
    pub user: String,
    /// Email address.
    #[serde(default)]
    pub email: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Group names and ids.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The gateway session this request belongs to.
    #[serde(default)]
    pub sid: String,
    /// Who signed the assertion (one of the configured issuers).
    #[serde(default)]
    pub iss: String,
    /// Unique id of this assertion.
    #[serde(default)]
    pub jti: String,
    /// Expiry, seconds since the Unix epoch.
    #[serde(default)]
    pub exp: u64,
    /// Issue time, seconds since the Unix epoch.
    #[serde(default)]
    pub iat: u64,
}

/// Why an assertion was refused. Each message names the check that failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// No header at all.
    #[error(
        "no X-Pomerium-Jwt-Assertion header: reach this server through the Postern gateway on a route with `pass_identity_headers: true`"
    )]
    Missing,
    /// Not a JWT, or a JWT whose header or claims can't be read.
    #[error("the assertion is not a well-formed JWT: {0}")]
    Malformed(String),
    /// An algorithm other than ES256/RS256, or one that doesn't match the key's type.
    #[error(
        "the assertion is signed with {0}; only ES256 and RS256 (each with a key of its own type) are accepted"
    )]
    Algorithm(String),
    /// No `kid` in the JWT header.
    #[error("the assertion's header has no `kid`, so no key can be chosen")]
    MissingKeyId,
    /// The `kid` is not in the JWKS, even after a refetch.
    #[error(
        "no key with kid {kid:?} in the JWKS at {jwks_url}: the assertion was not signed by the configured gateway"
    )]
    UnknownKey {
        /// The token's `kid`.
        kid: String,
        /// Where keys were looked for.
        jwks_url: String,
    },
    /// The JWKS could not be fetched or read.
    #[error("could not load the gateway's keys from {jwks_url}: {reason}")]
    Jwks {
        /// Where keys were looked for.
        jwks_url: String,
        /// What went wrong.
        reason: String,
    },
    /// The signature does not match.
    #[error("the assertion's signature is invalid: it was altered or signed by another key")]
    Signature,
    /// `exp` is in the past.
    #[error(
        "the assertion has expired (exp is in the past): the gateway sends a fresh one with every request"
    )]
    Expired,
    /// `nbf` or `iat` is in the future.
    #[error(
        "the assertion is not valid yet (nbf or iat is in the future): check the clocks of the gateway and this server"
    )]
    NotYetValid,
    /// `iss` is not one of the configured issuers.
    #[error(
        "the assertion's issuer {got:?} is not accepted (expected one of {expected:?}): set ASSERTION_ISSUER to the gateway route host"
    )]
    Issuer {
        /// The token's `iss`.
        got: String,
        /// The configured issuers.
        expected: Vec<String>,
    },
    /// `aud` is not the configured audience.
    #[error(
        "the assertion's audience does not include {expected:?}: it was issued for another route"
    )]
    Audience {
        /// The configured audience.
        expected: String,
    },
    /// A required claim is absent.
    #[error("the assertion lacks the required claim `{0}`")]
    MissingClaim(String),
}

/// Verifies assertions against one gateway's JWKS. Cheap to share (`Arc` it); keys are cached.
#[derive(Debug)]
pub struct Verifier {
    config: VerifierConfig,
    keys: KeyCache,
}

impl Verifier {
    /// A verifier for `config`. Keys are fetched on first use.
    pub fn new(config: VerifierConfig) -> Self {
        let keys = KeyCache::new(&config);
        Self { config, keys }
    }

    /// The configuration in force.
    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// Verifies the value of an `X-Pomerium-Jwt-Assertion` header.
    pub async fn verify(&self, token: &str) -> Result<Identity, VerifyError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(VerifyError::Missing);
        }
        if self.config.issuers.is_empty() {
            // Secure by default: without an expected issuer any gateway's token would pass.
            return Err(VerifyError::Issuer {
                got: String::new(),
                expected: Vec::new(),
            });
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| VerifyError::Malformed(e.to_string()))?;
        if !matches!(header.alg, Algorithm::ES256 | Algorithm::RS256) {
            return Err(VerifyError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header.kid.ok_or(VerifyError::MissingKeyId)?;
        let key = self.keys.get(&kid).await?;
        if key.algorithm != header.alg {
            return Err(VerifyError::Algorithm(format!(
                "{:?} with a key meant for {:?}",
                header.alg, key.algorithm
            )));
        }

        let mut validation = Validation::new(header.alg);
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&self.config.issuers);
        validation.set_required_spec_claims(&["exp", "iss"]);
        match &self.config.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<Identity>(token, &key.key, &validation)
            .map_err(|e| self.map_error(token, e))?;
        let identity = data.claims;
        if identity.iat > now() + self.config.leeway.as_secs() {
            return Err(VerifyError::NotYetValid);
        }
        if identity.sub.is_empty() && identity.user.is_empty() {
            return Err(VerifyError::MissingClaim("sub".into()));
        }
        Ok(identity)
    }

    fn map_error(&self, token: &str, error: jsonwebtoken::errors::Error) -> VerifyError {
        match error.kind() {
            ErrorKind::InvalidSignature => VerifyError::Signature,
            ErrorKind::ExpiredSignature => VerifyError::Expired,
            ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
            ErrorKind::InvalidIssuer => VerifyError::Issuer {
                got: unverified_claim(token, "iss").unwrap_or_default(),
                expected: self.config.issuers.clone(),
            },
            ErrorKind::InvalidAudience => VerifyError::Audience {
                expected: self.config.audience.clone().unwrap_or_default(),
            },
            ErrorKind::MissingRequiredClaim(claim) => VerifyError::MissingClaim(claim.clone()),
            ErrorKind::InvalidAlgorithm => VerifyError::Algorithm("a mismatching algorithm".into()),
            _ => VerifyError::Malformed(error.to_string()),
        }
    }
}

/// Reads one claim without verifying, only to say in an error message what was received.
fn unverified_claim(token: &str, name: &str) -> Option<String> {
    let claims: serde_json::Value = jsonwebtoken::dangerous::insecure_decode_claims(token).ok()?;
    claims.get(name)?.as_str().map(str::to_owned)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
