//! Sign-in with a generic OpenID Connect provider: discovery, the authorization code flow with
//! PKCE (S256), `state` and `nonce`, and ID token checks (signature against the provider's JWKS,
//! `iss`, `aud`, `exp`, `nonce`). Groups come from a configurable claim.

use std::sync::OnceLock;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use postern_http::document::{CachedDocument, Limits, read_capped};
use postern_oauth::Secret;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::web::untrusted::Untrusted;

/// The provider settings.
#[derive(Clone, Debug)]
pub struct OidcSettings {
    /// The issuer URL (discovery at `/.well-known/openid-configuration`).
    pub issuer: String,
    /// Client id.
    pub client_id: String,
    /// Client secret (HTTP Basic at the token endpoint).
    pub client_secret: Secret,
    /// Scopes (default `openid profile email`).
    pub scopes: Vec<String>,
    /// The claim that lists groups.
    pub groups_claim: String,
}

impl OidcSettings {
    /// The settings `config` gives (its `idp_provider` preset's defaults applied); `None`
    /// without an OpenID Connect `idp_provider`.
    pub fn from_config(config: &postern_config::Config) -> Option<Self> {
        Some(Self {
            issuer: config.oidc_issuer()?,
            // `check-config` requires it with every `idp_provider`.
            client_id: config.idp_client_id.clone().unwrap_or_default(),
            client_secret: config.idp_client_secret.clone().unwrap_or_default(),
            scopes: config.idp_scopes(),
            groups_claim: config.idp_groups_claim().to_owned(),
        })
    }
}

/// Why sign-in with the provider failed. Messages say which check failed.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// Discovery, JWKS or token request failed.
    #[error("the identity provider at {url} could not be used: {reason}")]
    Provider {
        /// What was requested.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The ID token failed a check.
    #[error("the ID token was refused: {0}")]
    IdToken(String),
    /// The provider says the user's email address is not verified (`email_verified: false`):
    /// whoever typed it in at the provider may not own it.
    #[error(
        "the identity provider has not verified the email address {}; verify it there, then sign in again",
        Untrusted(.0)
    )]
    EmailNotVerified(String),
    /// The provider sent an email address that can't be one (control characters, spaces, too
    /// long).
    #[error("the identity provider sent an email address that is not valid: {}", Untrusted(.0))]
    InvalidEmail(String),
}

/// Largest answer read from the provider's token endpoint (ID tokens with many groups are
/// large, but not this large).
const MAX_TOKEN_RESPONSE_BYTES: usize = 1024 * 1024;
/// Longest email address accepted (RFC 5321 §4.5.3.1: 64 + 1 + 255).
const MAX_EMAIL_BYTES: usize = 320;

#[derive(Clone, Debug, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    userinfo_endpoint: Option<String>,
}

/// The identity an ID token establishes.
#[derive(Clone, Debug, PartialEq)]
pub struct OidcIdentity {
    /// `sub`.
    pub subject: String,
    /// `email`.
    pub email: String,
    /// `name`.
    pub name: String,
    /// From the groups claim.
    pub groups: Vec<String>,
    /// Every claim.
    pub claims: Map<String, Value>,
    /// The provider's refresh token, when it gave one (kept so client grants can ask the
    /// provider, at each refresh, whether it still vouches for the user).
    pub refresh_token: Option<postern_oauth::Secret>,
}

/// What the provider says when asked again about a signed-in user (a refresh of its token).
#[derive(Debug)]
pub enum Vouch {
    /// It still vouches; its new refresh token, when it rotated it.
    Yes(Option<String>),
    /// It refuses (`invalid_grant`: the account is disabled or gone, or the grant revoked).
    No(String),
}

/// An OpenID Connect client.
pub struct Oidc {
    settings: OidcSettings,
    http: reqwest::Client,
    discovery: tokio::sync::OnceCell<Discovery>,
    /// The provider's keys, at the `jwks_uri` discovery names.
    keys: OnceLock<CachedDocument<JwkSet>>,
}

/// How the provider's keys are kept: an hour, fetched early for a new `kid` at most every 10 s
/// (an ID token naming a made-up key cannot make the gateway hammer the provider), at most
/// 256 KiB.
const KEY_LIMITS: Limits = Limits {
    ttl: Duration::from_secs(3600),
    cooldown: Duration::from_secs(10),
    max_bytes: 256 * 1024,
};

/// What Microsoft's multi-tenant endpoints (`.../common/v2.0`, `organizations`, `consumers`)
/// publish in place of the tenant in their issuer: each ID token's `iss` names the user's own
/// tenant, the one its `tid` claim gives.
const TENANT_PLACEHOLDER: &str = "{tenantid}";
/// The multi-tenant endpoints' names for "any tenant" (Microsoft identity platform).
const MULTI_TENANT: [&str; 3] = ["common", "organizations", "consumers"];
/// Google's issuer, and the other spelling its ID tokens may carry in `iss` ("accounts.google.com
/// or https://accounts.google.com", Google's OpenID Connect guide).
const GOOGLE_ISSUER: (&str, &str) = ("https://accounts.google.com", "accounts.google.com");

/// Whether the issuer a discovery document names is the configured one: the same URL, or for a
/// Microsoft multi-tenant endpoint the template `.../{tenantid}/v2.0` it publishes.
fn discovered_issuer_matches(configured: &str, discovered: &str) -> bool {
    let (configured, discovered) = (
        configured.trim_end_matches('/'),
        discovered.trim_end_matches('/'),
    );
    if configured == discovered {
        return true;
    }
    let Some((before, after)) = discovered.split_once(TENANT_PLACEHOLDER) else {
        return false;
    };
    MULTI_TENANT
        .iter()
        .any(|tenant| configured == format!("{before}{tenant}{after}"))
}

/// Largest discovery document (and UserInfo response) accepted.
const MAX_DISCOVERY_BYTES: usize = 256 * 1024;

fn parse_jwks(body: &[u8]) -> Result<JwkSet, String> {
    serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))
}

/// Whether `keys` can check a token signed with `kid` (a token without one is checked with the
/// provider's only key).
fn has_key(keys: &JwkSet, kid: Option<&str>) -> bool {
    match kid {
        Some(kid) => keys.find(kid).is_some(),
        None => keys.keys.len() == 1,
    }
}

impl Oidc {
    /// A client for `settings`; discovery happens on first use.
    pub fn new(settings: OidcSettings) -> Self {
        let http = postern_http::client(Duration::from_secs(10));
        Self {
            settings,
            http,
            discovery: tokio::sync::OnceCell::new(),
            keys: OnceLock::new(),
        }
    }

    async fn discovery(&self) -> Result<&Discovery, OidcError> {
        self.discovery
            .get_or_try_init(|| async {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.settings.issuer.trim_end_matches('/')
                );
                let fail = |reason: String| OidcError::Provider {
                    url: url.clone(),
                    reason,
                };
                let discovery = self
                    .http
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| fail(e.to_string()))?
                    .error_for_status()
                    .map_err(|e| fail(e.to_string()))?;
                let body = read_capped(discovery, MAX_DISCOVERY_BYTES)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                let discovery: Discovery = serde_json::from_slice(&body)
                    .map_err(|e| fail(format!("not a discovery document: {e}")))?;
                if !discovered_issuer_matches(&self.settings.issuer, &discovery.issuer) {
                    return Err(fail(format!(
                        "it names another issuer ({})",
                        Untrusted(&discovery.issuer)
                    )));
                }
                Ok(discovery)
            })
            .await
    }

    /// Where to send the browser to sign in.
    pub async fn authorization_url(
        &self,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        verifier: &str,
    ) -> Result<String, OidcError> {
        let discovery = self.discovery().await?;
        let challenge = postern_oauth::pkce::challenge_of(verifier);
        let scopes = if self.settings.scopes.is_empty() {
            "openid profile email".to_owned()
        } else {
            self.settings.scopes.join(" ")
        };
        let mut url = url::Url::parse(&discovery.authorization_endpoint).map_err(|e| {
            OidcError::Provider {
                url: discovery.authorization_endpoint.clone(),
                reason: e.to_string(),
            }
        })?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.settings.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &scopes)
            .append_pair("state", state)
            .append_pair("nonce", nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        Ok(url.to_string())
    }

    /// Exchanges the code and checks the ID token.
    pub async fn finish(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
        nonce: &str,
    ) -> Result<OidcIdentity, OidcError> {
        let discovery = self.discovery().await?;
        let body = self
            .exchange_code(discovery, code, redirect_uri, verifier)
            .await?;
        let id_token = body
            .get("id_token")
            .and_then(Value::as_str)
            .ok_or_else(|| OidcError::Provider {
                url: discovery.token_endpoint.clone(),
                reason: "no id_token in the token response".into(),
            })?;
        let identity = self.identity_in(discovery, id_token, nonce).await?;
        // Providers that follow OpenID Connect Core §5.4 return the claims asked for by scope
        // (email, profile, groups) from the UserInfo endpoint, not in the ID token.
        let missing =
            identity.email.is_empty() || !identity.claims.contains_key(&self.settings.groups_claim);
        let identity = match (
            missing,
            &discovery.userinfo_endpoint,
            body.get("access_token").and_then(Value::as_str),
        ) {
            (true, Some(endpoint), Some(access_token)) => {
                self.with_userinfo(identity, endpoint, access_token).await?
            }
            _ => identity,
        };
        check_email(&identity)?;
        let refresh_token = body
            .get("refresh_token")
            .and_then(Value::as_str)
            .map(|t| postern_oauth::Secret::new(t.to_owned()));
        Ok(OidcIdentity {
            refresh_token,
            ..identity
        })
    }

    /// Asks the provider whether it still vouches for the user of `refresh_token`: a refresh
    /// (RFC 6749 §6) that succeeds, or `invalid_grant` (the account disabled or deleted, the
    /// user's grant revoked). Any other failure (the provider unreachable, a 5xx) is an error:
    /// the caller cannot tell, and must not decide either way.
    pub async fn vouches(&self, refresh_token: &str) -> Result<Vouch, OidcError> {
        let discovery = self.discovery().await?;
        let fail = |reason: String| OidcError::Provider {
            url: discovery.token_endpoint.clone(),
            reason,
        };
        let response = self
            .http
            .post(&discovery.token_endpoint)
            .basic_auth(
                &self.settings.client_id,
                Some(self.settings.client_secret.expose()),
            )
            .form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
            ])
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = response.status();
        let token_url = url::Url::parse(&discovery.token_endpoint)
            .map_err(|e| fail(format!("not a URL: {e}")))?;
        let bytes =
            crate::web::safe_http::read_capped(&token_url, response, MAX_TOKEN_RESPONSE_BYTES)
                .await
                .map_err(|e| fail(e.to_string()))?;
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(Vouch::Yes(
                body.get("refresh_token")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            ));
        }
        if status == reqwest::StatusCode::BAD_REQUEST
            && body.get("error").and_then(Value::as_str) == Some("invalid_grant")
        {
            tracing::info!(body = %Untrusted(&String::from_utf8_lossy(&bytes)), "the identity provider no longer vouches for a user");
            return Ok(Vouch::No("invalid_grant".into()));
        }
        tracing::warn!(%status, body = %Untrusted(&String::from_utf8_lossy(&bytes)), "the identity provider's refresh failed");
        Err(fail(format!(
            "HTTP {status} (details in the gateway's log)"
        )))
    }

    /// The provider's token response for `code` (RFC 6749 §4.1.3, with the PKCE verifier).
    async fn exchange_code(
        &self,
        discovery: &Discovery,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<Value, OidcError> {
        let fail = |reason: String| OidcError::Provider {
            url: discovery.token_endpoint.clone(),
            reason,
        };
        let response = self
            .http
            .post(&discovery.token_endpoint)
            .basic_auth(
                &self.settings.client_id,
                Some(self.settings.client_secret.expose()),
            )
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", verifier),
            ])
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = response.status();
        let token_url = url::Url::parse(&discovery.token_endpoint)
            .map_err(|e| fail(format!("not a URL: {e}")))?;
        let bytes =
            crate::web::safe_http::read_capped(&token_url, response, MAX_TOKEN_RESPONSE_BYTES)
                .await
                .map_err(|e| fail(e.to_string()))?;
        if !status.is_success() {
            // The provider's text goes to the log only (escaped and capped), not to the page.
            tracing::warn!(%status, body = %Untrusted(&String::from_utf8_lossy(&bytes)), "the identity provider refused the code");
            return Err(fail(format!(
                "HTTP {status} (details in the gateway's log)"
            )));
        }
        serde_json::from_slice(&bytes).map_err(|e| fail(format!("unreadable token response: {e}")))
    }

    /// The identity in a checked ID token; the provider's keys are fetched once more when the
    /// token is signed with a key not seen yet (a rotation).
    async fn identity_in(
        &self,
        discovery: &Discovery,
        id_token: &str,
        nonce: &str,
    ) -> Result<OidcIdentity, OidcError> {
        let kid = jsonwebtoken::decode_header(id_token)
            .ok()
            .and_then(|header| header.kid);
        let keys = self
            .keys
            .get_or_init(|| {
                CachedDocument::new(
                    &discovery.jwks_uri,
                    self.http.clone(),
                    KEY_LIMITS,
                    parse_jwks,
                )
            })
            .get(|keys| has_key(keys, kid.as_deref()))
            .await
            .map_err(|error| OidcError::Provider {
                url: error.url,
                reason: error.reason,
            })?;
        validate_id_token(
            id_token,
            &keys,
            &discovery.issuer,
            &self.settings.client_id,
            nonce,
            &self.settings.groups_claim,
        )
    }

    /// Fills in what the ID token left out from the UserInfo response, which must be about the
    /// same subject (§5.3.2); the ID token's own claims win.
    async fn with_userinfo(
        &self,
        mut identity: OidcIdentity,
        endpoint: &str,
        access_token: &str,
    ) -> Result<OidcIdentity, OidcError> {
        let fail = |reason: String| OidcError::Provider {
            url: endpoint.to_owned(),
            reason,
        };
        let response = self
            .http
            .get(endpoint)
            .bearer_auth(access_token)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(fail(format!("HTTP {status}")));
        }
        let body = read_capped(response, MAX_DISCOVERY_BYTES)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let info: Map<String, Value> = serde_json::from_slice(&body)
            .map_err(|e| fail(format!("not a JSON UserInfo response: {e}")))?;
        if info.get("sub").and_then(Value::as_str) != Some(identity.subject.as_str()) {
            return Err(fail(
                "the UserInfo response is about another subject than the ID token".into(),
            ));
        }
        for (name, value) in info {
            identity.claims.entry(name).or_insert(value);
        }
        let text = |name: &str| {
            identity
                .claims
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        identity.email = text("email").to_ascii_lowercase();
        identity.name = text("name");
        identity.groups = groups_of(&identity.claims, &self.settings.groups_claim);
        Ok(identity)
    }
}

/// Checks an ID token: a signature by one of `keys` with an asymmetric algorithm, `iss`, `aud`
/// (contains `client_id`), `exp`/`nbf`/`iat` (60 s leeway) and `nonce`.
pub fn validate_id_token(
    token: &str,
    keys: &JwkSet,
    issuer: &str,
    client_id: &str,
    nonce: &str,
    groups_claim: &str,
) -> Result<OidcIdentity, OidcError> {
    let refuse = |m: String| OidcError::IdToken(m);
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| refuse(format!("not a JWT: {e}")))?;
    if !matches!(
        header.alg,
        Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::ES256
            | Algorithm::ES384
            | Algorithm::PS256
            | Algorithm::EdDSA
    ) {
        return Err(refuse(format!(
            "algorithm {:?} is not accepted",
            header.alg
        )));
    }
    let jwk = match &header.kid {
        Some(kid) => keys.find(kid),
        None if keys.keys.len() == 1 => keys.keys.first(),
        None => None,
    }
    .ok_or_else(|| refuse(format!("signed with an unknown key ({:?})", header.kid)))?;
    let key =
        DecodingKey::from_jwk(jwk).map_err(|e| refuse(format!("unusable provider key: {e}")))?;
    let mut validation = Validation::new(header.alg);
    // A multi-tenant issuer is checked below, against the token's own tenant.
    let tenant_template = issuer.contains(TENANT_PLACEHOLDER);
    if issuer == GOOGLE_ISSUER.0 {
        validation.set_issuer(&[GOOGLE_ISSUER.0, GOOGLE_ISSUER.1]);
    } else if !tenant_template {
        validation.set_issuer(&[issuer]);
    }
    validation.set_audience(&[client_id]);
    validation.leeway = 60;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data =
        jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            refuse(match e.kind() {
                ErrorKind::InvalidSignature => {
                    "bad signature (the token was altered or not signed by the provider)".into()
                }
                ErrorKind::ExpiredSignature => "expired".into(),
                ErrorKind::InvalidIssuer => format!("wrong issuer (expected {issuer})"),
                ErrorKind::InvalidAudience => {
                    format!("issued for another client (expected audience {client_id})")
                }
                other => format!("{other:?}"),
            })
        })?;
    let claims = data.claims;
    if tenant_template {
        check_tenant_issuer(&claims, issuer).map_err(refuse)?;
    }
    if claims.get("nonce").and_then(Value::as_str) != Some(nonce) {
        return Err(refuse(
            "the nonce does not match this sign-in (a replayed or injected token)".into(),
        ));
    }
    let text = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let groups = groups_of(&claims, groups_claim);
    Ok(OidcIdentity {
        subject: text("sub"),
        email: text("email").to_ascii_lowercase(),
        name: text("name"),
        groups,
        claims,
        refresh_token: None,
    })
}

/// A token from a multi-tenant issuer (`https://login.microsoftonline.com/{tenantid}/v2.0`)
/// must name its own tenant: `iss` is the template with the token's `tid` in it.
fn check_tenant_issuer(claims: &Map<String, Value>, template: &str) -> Result<(), String> {
    let tid = claims
        .get("tid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if tid.is_empty()
        || tid.len() > 64
        || !tid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(format!(
            "no usable tenant (tid) for the multi-tenant issuer {template}"
        ));
    }
    let expected = template.replace(TENANT_PLACEHOLDER, tid);
    if claims.get("iss").and_then(Value::as_str) != Some(expected.as_str()) {
        return Err(format!("wrong issuer (expected {expected})"));
    }
    Ok(())
}

/// Refuses an email address the provider marks unverified (`email_verified: false`, also as
/// the string `"false"` some providers send), and one that can't be an address. A provider
/// that doesn't send `email_verified` is trusted for its addresses, as before.
pub fn check_email(identity: &OidcIdentity) -> Result<(), OidcError> {
    let email = &identity.email;
    if email.len() > MAX_EMAIL_BYTES || email.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(OidcError::InvalidEmail(email.clone()));
    }
    let unverified = match identity.claims.get("email_verified") {
        Some(Value::Bool(verified)) => !verified,
        Some(Value::String(verified)) => verified.eq_ignore_ascii_case("false"),
        _ => false,
    };
    if unverified && !email.is_empty() {
        return Err(OidcError::EmailNotVerified(email.clone()));
    }
    Ok(())
}

/// The groups in `claim`: a list of strings, or one string.
fn groups_of(claims: &Map<String, Value>, claim: &str) -> Vec<String> {
    match claims.get(claim) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    fn new_key() -> (EncodingKey, JwkSet) {
        let pem = crate::enforcement::assertion::Signer::generate_pem();
        let encoding = EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some(jwk.thumbprint(ThumbprintHash::SHA256).unwrap());
        (encoding, JwkSet { keys: vec![jwk] })
    }

    fn token(key: &EncodingKey, keys: &JwkSet, claims: Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = keys.keys[0].common.key_id.clone();
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    }

    fn claims() -> Value {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        json!({"iss": "https://idp.test", "aud": "postern", "sub": "u1", "email": "Ada@Example.com", "name": "Ada",
               "groups": ["staff"], "nonce": "n-1", "iat": now, "exp": now + 300})
    }

    /// A provider that keeps email and groups out of the ID token (OIDC Core §5.4): UserInfo
    /// fills them in, but only when it speaks for the ID token's subject.
    #[tokio::test]
    async fn userinfo_fills_in_claims_only_for_the_same_subject() {
        use axum::routing::{get, post};
        let (key, keys) = new_key();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let mut id_claims = claims();
        id_claims["iss"] = json!(issuer);
        for name in ["email", "name", "groups"] {
            id_claims.as_object_mut().unwrap().remove(name);
        }
        let id_token = token(&key, &keys, id_claims);
        let userinfo_sub = std::sync::Arc::new(std::sync::Mutex::new("u1".to_owned()));
        let discovery = json!({"issuer": issuer, "authorization_endpoint": format!("{issuer}/auth"),
            "token_endpoint": format!("{issuer}/token"), "jwks_uri": format!("{issuer}/jwks"),
            "userinfo_endpoint": format!("{issuer}/userinfo")});
        let email_verified = std::sync::Arc::new(std::sync::Mutex::new(json!(true)));
        let verified = email_verified.clone();
        let sub = userinfo_sub.clone();
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || async move { axum::Json(discovery) }),
            )
            .route(
                "/token",
                post(move || async move {
                    axum::Json(json!({"access_token": "at-1", "token_type": "Bearer", "id_token": id_token}))
                }),
            )
            .route("/jwks", get(move || async move { axum::Json(keys) }))
            .route(
                "/userinfo",
                get(move |headers: axum::http::HeaderMap| async move {
                    assert_eq!(headers["authorization"], "Bearer at-1");
                    let sub = sub.lock().unwrap().clone();
                    let verified = verified.lock().unwrap().clone();
                    axum::Json(json!({"sub": sub, "email": "Ada@Example.com", "name": "Ada", "groups": ["staff"], "email_verified": verified}))
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await });
        let oidc = Oidc::new(OidcSettings {
            issuer: issuer.clone(),
            client_id: "postern".into(),
            client_secret: "s".into(),
            scopes: vec!["openid".into(), "email".into()],
            groups_claim: "groups".into(),
        });

        let identity = oidc
            .finish("code", "https://gw/cb", "v", "n-1")
            .await
            .unwrap();
        assert_eq!(
            (
                identity.subject.as_str(),
                identity.email.as_str(),
                identity.name.as_str()
            ),
            ("u1", "ada@example.com", "Ada")
        );
        assert_eq!(identity.groups, ["staff"]);

        *userinfo_sub.lock().unwrap() = "someone-else".into();
        let error = oidc
            .finish("code", "https://gw/cb", "v", "n-1")
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("another subject"), "{error}");

        // The provider says the address is unverified: no sign-in with it.
        *userinfo_sub.lock().unwrap() = "u1".into();
        *email_verified.lock().unwrap() = json!(false);
        let error = oidc
            .finish("code", "https://gw/cb", "v", "n-1")
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("not verified"), "{error}");
    }

    #[test]
    fn a_multi_tenant_issuer_takes_each_tokens_own_tenant() {
        let template = "https://login.microsoftonline.com/{tenantid}/v2.0";
        for tenant in ["common", "organizations", "consumers"] {
            let configured = format!("https://login.microsoftonline.com/{tenant}/v2.0");
            assert!(discovered_issuer_matches(&configured, template), "{tenant}");
        }
        assert!(!discovered_issuer_matches(
            "https://login.microsoftonline.com/my-tenant/v2.0",
            template
        ));
        assert!(!discovered_issuer_matches(
            "https://idp.test",
            "https://evil.test/{tenantid}"
        ));
        assert!(discovered_issuer_matches(
            "https://idp.test/",
            "https://idp.test"
        ));

        let (key, keys) = new_key();
        let check = |claims: Value| {
            validate_id_token(
                &token(&key, &keys, claims),
                &keys,
                template,
                "postern",
                "n-1",
                "groups",
            )
        };
        let tenant = |iss: &str, tid: Option<&str>| {
            let mut c = claims();
            c["iss"] = json!(iss);
            if let Some(tid) = tid {
                c["tid"] = json!(tid);
            }
            c
        };
        let t1 = "https://login.microsoftonline.com/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0";
        assert!(check(tenant(t1, Some("9188040d-6c67-4c5b-b112-36a304b66dad"))).is_ok());
        for (iss, tid, expected) in [
            (
                t1,
                Some("72f988bf-86f1-41af-91ab-2d7cd011db47"),
                "wrong issuer",
            ),
            (t1, None, "no usable tenant"),
            (
                "https://evil.test/9188040d/v2.0",
                Some("9188040d"),
                "wrong issuer",
            ),
            (template, Some("{tenantid}"), "no usable tenant"),
        ] {
            let error = check(tenant(iss, tid)).unwrap_err().to_string();
            assert!(error.contains(expected), "{iss} {tid:?}: {error}");
        }
    }

    #[test]
    fn google_tokens_may_name_the_issuer_without_its_scheme() {
        let (key, keys) = new_key();
        let check = |iss: &str| {
            let mut c = claims();
            c["iss"] = json!(iss);
            validate_id_token(
                &token(&key, &keys, c),
                &keys,
                "https://accounts.google.com",
                "postern",
                "n-1",
                "groups",
            )
        };
        assert!(check("https://accounts.google.com").is_ok());
        assert!(check("accounts.google.com").is_ok());
        assert!(check("evil.google.com").is_err());
        // Only Google's: another issuer's tokens must carry it exactly.
        let mut c = claims();
        c["iss"] = json!("idp.test");
        assert!(
            validate_id_token(
                &token(&key, &keys, c),
                &keys,
                "https://idp.test",
                "postern",
                "n-1",
                "groups"
            )
            .is_err()
        );
    }

    #[test]
    fn unverified_or_malformed_email_addresses_are_refused() {
        let identity = |email: &str, verified: Option<Value>| {
            let mut claims = Map::new();
            if let Some(v) = verified {
                claims.insert("email_verified".into(), v);
            }
            OidcIdentity {
                subject: "u1".into(),
                email: email.into(),
                name: String::new(),
                groups: vec![],
                claims,
                refresh_token: None,
            }
        };
        for verified in [None, Some(json!(true)), Some(json!("true"))] {
            assert!(check_email(&identity("ada@example.com", verified)).is_ok());
        }
        for unverified in [json!(false), json!("false"), json!("FALSE")] {
            let error = check_email(&identity("admin@corp.example", Some(unverified)))
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("not verified the email address \"admin@corp.example\""),
                "{error}"
            );
        }
        for bad in [
            "ada@example.com\n2026 INFO postern::audit: event=\"sign_in\"".to_owned(),
            "a\u{1b}[31m@example.com".to_owned(),
            format!("{}@example.com", "a".repeat(320)),
        ] {
            let error = check_email(&identity(&bad, None)).unwrap_err().to_string();
            assert!(error.contains("not valid"), "{error}");
            assert!(!error.chars().any(char::is_control), "{error:?}");
        }
    }

    #[test]
    fn accepts_a_good_token_and_refuses_each_bad_one() {
        let (key, keys) = new_key();
        let check =
            |t: &str| validate_id_token(t, &keys, "https://idp.test", "postern", "n-1", "groups");
        let identity = check(&token(&key, &keys, claims())).unwrap();
        assert_eq!(
            (identity.email.as_str(), identity.groups.clone()),
            ("ada@example.com", vec!["staff".to_owned()])
        );

        let refusals = [
            (vec![("aud", json!("someone-else"))], "another client"),
            (vec![("nonce", json!("other"))], "nonce"),
            (vec![("exp", json!(1000)), ("iat", json!(900))], "expired"),
            (vec![("iss", json!("https://evil.test"))], "wrong issuer"),
        ];
        for (changes, expected) in refusals {
            let mut c = claims();
            for (name, value) in &changes {
                c[*name] = value.clone();
            }
            let error = check(&token(&key, &keys, c)).unwrap_err().to_string();
            assert!(error.contains(expected), "{changes:?}: {error}");
        }
        // Tampered: the payload of one token with the signature of another.
        let good = token(&key, &keys, claims());
        let mut other = claims();
        other["email"] = json!("root@example.com");
        let forged = token(&key, &keys, other);
        let mut parts: Vec<&str> = good.split('.').collect();
        parts[1] = forged.split('.').nth(1).unwrap();
        assert!(
            check(&parts.join("."))
                .unwrap_err()
                .to_string()
                .contains("bad signature")
        );
        // Signed by a key the provider doesn't publish.
        let (stranger, stranger_keys) = new_key();
        assert!(
            check(&token(&stranger, &stranger_keys, claims()))
                .unwrap_err()
                .to_string()
                .contains("unknown key")
        );
        // HMAC with a guessable secret.
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(b"postern"),
        )
        .unwrap();
        assert!(check(&hs).unwrap_err().to_string().contains("not accepted"));
    }
}
