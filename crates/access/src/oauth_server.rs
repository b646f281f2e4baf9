//! The access tokens (TE) the authorization server issues and every service checks, and what
//! goes with them: the resource URL of a route, the RFC 6750 challenge, the token endpoint's
//! form, the revocation cache.
//!
//! A TE is `pst_at_` + an AEAD-sealed JSON of the user, its grant (token family), client, resource
//! and expiry: it is checked on every MCP request without a store round-trip. Revocation (Revoke
//! on Connected apps, sign out everywhere, `/revoke`, `postern revoke-user`, refresh-token reuse, a
//! user no longer allowed at refresh) reaches every replica through the store's revocation list,
//! which each gateway polls every [`REVOCATION_POLL`]: that is the longest a revoked TE keeps
//! working.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use postern_gateway::hooks::RequestContext;
use postern_gateway::routes::{Kind, Route};
use postern_oauth::metadata::{protected_resource_metadata_url, resource_url, same_resource};
use postern_store::{Keyring, Revocation, Session, Store, now_ms};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How often revocations are fetched from the store: a revoked TE stops on every replica within
/// this plus one store query, well inside the 2 s a user who clicks Revoke is promised (one
/// indexed query a second per replica).
pub const REVOCATION_POLL: Duration = Duration::from_secs(1);
/// Access token prefix.
pub const ACCESS_PREFIX: &str = "pst_at_";
/// Refresh token prefix.
pub const REFRESH_PREFIX: &str = "pst_rt_";
/// Authorization code prefix.
pub const CODE_PREFIX: &str = "pst_ac_";

/// The audience of TEs handed to MCP client apps: `app:<origin of the client route>`.
pub const APP_AUDIENCE_PREFIX: &str = "app:";
/// Lifetime of a client-route TE (minted again on every request of the app).
pub const APP_TOKEN_TTL_MS: i64 = 5 * 60 * 1000;

/// Opens a TE sealed by this gateway (or a replica sharing its secret) and checks its expiry.
fn open_access_token(keys: &Keyring, token: &str) -> Result<AccessClaims, TokenError> {
    let sealed = token
        .strip_prefix(ACCESS_PREFIX)
        .ok_or(TokenError::Invalid)?;
    let json = keys
        .open("access-token", sealed)
        .map_err(|_| TokenError::Invalid)?;
    let claims: AccessClaims = serde_json::from_slice(&json).map_err(|_| TokenError::Invalid)?;
    if claims.exp <= now_ms() {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// Checks a TE without regard to its resource (for `/.pomerium/mcp/routes`, which only needs
/// to know who asks).
pub fn check_identity_token(
    keys: &Keyring,
    revoked: &RevocationCache,
    token: &str,
) -> Result<AccessClaims, TokenError> {
    let claims = open_access_token(keys, token)?;
    if revoked.contains(&claims.sid, &claims.fam) {
        return Err(TokenError::Revoked);
    }
    Ok(claims)
}

/// What a TE carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// User id.
    pub sub: String,
    /// Email.
    pub email: String,
    /// Name.
    pub name: String,
    /// Groups.
    pub groups: Vec<String>,
    /// For a client's TE, its grant (the token family id: a TE rests on the grant, not on the
    /// browser session it was authorized from); for an app route's TE, the browser session.
    pub sid: String,
    /// Refresh-token family.
    pub fam: String,
    /// Client id.
    pub cid: String,
    /// The resource (MCP route URL) the token is for.
    pub aud: String,
    /// Expiry, ms since the epoch.
    pub exp: i64,
    /// The session's other identity claims (the IdP's, or a local user's `claims`), so the
    /// policy sees the same identity with a TE as with the session cookie.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub clm: serde_json::Map<String, Value>,
}

impl AccessClaims {
    /// The session-like view the policy and the assertion use.
    pub fn session(&self) -> Session {
        self.clone().into_session().0
    }

    /// The session the TE stands for, and the client that holds it, taking the claims apart
    /// (no copies: this runs on every request with a TE).
    pub fn into_session(self) -> (Session, String) {
        let session = Session {
            id: self.sid,
            user_id: self.sub,
            email: self.email,
            name: self.name,
            groups: self.groups,
            claims: self.clm,
            idp: "te".into(),
            created_at: 0,
            expires_at: self.exp,
        };
        (session, self.cid)
    }
}

/// Mints a TE.
pub fn mint_access_token(keys: &Keyring, claims: &AccessClaims) -> Result<String, MintError> {
    let json = serde_json::to_vec(claims)?;
    Ok(format!(
        "{ACCESS_PREFIX}{}",
        keys.seal("access-token", &json)?
    ))
}

/// Why a TE could not be minted (never an empty token instead).
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The claims could not be serialised.
    #[error("the access token's claims cannot be serialised: {0}")]
    Claims(#[from] serde_json::Error),
    /// Sealing failed (no randomness for the nonce).
    #[error("the access token cannot be sealed: {0}")]
    Seal(#[from] postern_store::StoreError),
}

/// Why a TE was refused (`error="invalid_token"`).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not ours, altered, or unreadable.
    #[error("the access token is not valid")]
    Invalid,
    /// Expired.
    #[error("the access token has expired")]
    Expired,
    /// Issued for another resource.
    #[error("the access token was issued for another MCP server ({0})")]
    WrongResource(String),
    /// Revoked (sign-out, revocation, refresh-token reuse).
    #[error("the access token was revoked")]
    Revoked,
}

/// Checks a TE for `resource`.
pub fn check_access_token(
    keys: &Keyring,
    revoked: &RevocationCache,
    token: &str,
    resource: &str,
) -> Result<AccessClaims, TokenError> {
    let claims = open_access_token(keys, token)?;
    // Tokens handed to MCP client apps (client routes) work on every MCP server route, as the
    // seed's section 3 describes; they live minutes, not hours.
    if !claims.aud.starts_with(APP_AUDIENCE_PREFIX) && !same_resource(&claims.aud, resource) {
        return Err(TokenError::WrongResource(claims.aud));
    }
    if revoked.contains(&claims.sid, &claims.fam) {
        return Err(TokenError::Revoked);
    }
    Ok(claims)
}

/// Revoked sessions and token families, kept in memory and refreshed from the store.
#[derive(Default)]
pub struct RevocationCache {
    revoked: RwLock<HashSet<Revocation>>,
}

impl RevocationCache {
    /// Whether the session or the family is revoked.
    pub fn contains(&self, session: &str, family: &str) -> bool {
        let revoked = self.revoked.read().unwrap_or_else(|e| e.into_inner());
        revoked.contains(&Revocation::Session(session.to_owned()))
            || revoked.contains(&Revocation::Family(family.to_owned()))
    }

    /// Records a revocation made by this gateway (visible at once here).
    pub fn insert(&self, revocation: Revocation) {
        self.revoked
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(revocation);
    }

    /// Polls the store until the cache is dropped.
    pub fn spawn_sync(cache: &Arc<Self>, store: Store) {
        let weak: Weak<Self> = Arc::downgrade(cache);
        tokio::spawn(async move {
            // Revocations outlive every access token (the store keeps them a day).
            let mut since = now_ms() - 24 * 3600 * 1000;
            loop {
                let Some(cache) = weak.upgrade() else { return };
                let started = now_ms();
                match store.revocations_since(since).await {
                    Ok(rows) => {
                        let mut revoked = cache.revoked.write().unwrap_or_else(|e| e.into_inner());
                        revoked.extend(rows.into_iter().map(|(r, _)| r));
                        // Overlap: a row committed late may carry an earlier time.
                        since = started - 10_000;
                    }
                    Err(error) => tracing::warn!(%error, "cannot read revocations; retrying"),
                }
                drop(cache);
                tokio::time::sleep(REVOCATION_POLL).await;
            }
        });
    }
}

/// The resource URL an MCP server route is known by on this host.
pub fn route_resource(route: &Route, origin: &str) -> String {
    let path = route
        .config
        .prefix
        .as_deref()
        .or(route.config.path.as_deref())
        .or(match &route.kind {
            Kind::McpServer(server) => server.path.as_deref(),
            _ => None,
        })
        .unwrap_or("/");
    resource_url(origin, path)
}

/// The MCP server route that serves a resource URL on this gateway: a client names a server by
/// the URL it uses, which may be any URL the route serves (`https://mcp.example.com/mcp` for a
/// route on the host's root), as in Pomerium. Tokens are still bound to the route's canonical
/// resource ([`route_resource`]).
pub fn route_for_resource(ctx: &RequestContext, resource: &str) -> Option<Arc<Route>> {
    let url = url::Url::parse(resource).ok()?;
    let host = crate::web::safe_http::host_of(&url);
    let port = url.port_or_known_default()?;
    let route = ctx.runtime.routes.find(&host, port, url.path())?;
    route.is_mcp_server().then_some(route)
}

/// Whether `resource` names the server whose canonical resource is `canonical`: that URL, or
/// another URL on its origin the same route serves (the token endpoint's `resource` may be the
/// URL the client used at `/authorize`).
pub fn names_server(ctx: &RequestContext, resource: &str, canonical: &str) -> bool {
    if same_resource(resource, canonical) {
        return true;
    }
    let Some(origin) = origin_of(resource).filter(|o| origin_of(canonical).as_ref() == Some(o))
    else {
        return false;
    };
    route_for_resource(ctx, resource)
        .is_some_and(|route| route_resource(&route, &origin) == canonical)
}

/// Whether `resource` is a URL on this request's origin (a resource the authorization server of
/// this origin may issue tokens for).
pub fn on_this_origin(ctx: &RequestContext, resource: &str) -> bool {
    match (url::Url::parse(resource), url::Url::parse(&ctx.origin())) {
        (Ok(asked), Ok(here)) => asked.origin() == here.origin(),
        _ => false,
    }
}

/// The origin (`scheme://host[:port]`) of a URL.
pub fn origin_of(url: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    url.has_host().then(|| url.origin().ascii_serialization())
}

/// The port of a URL (the scheme's default when it names none).
pub fn origin_port(url: &str) -> Option<u16> {
    url::Url::parse(url).ok()?.port_or_known_default()
}

/// The only MCP server route of this host, when there is exactly one (the default resource).
pub fn only_mcp_route(ctx: &RequestContext) -> Option<Arc<Route>> {
    let mut routes = ctx.runtime.routes.all().iter().filter(|r| {
        r.is_mcp_server()
            && r.config.from.host == ctx.host
            && r.config.from.port.is_none_or(|p| p == ctx.port)
    });
    let first = routes.next()?.clone();
    routes.next().is_none().then_some(first)
}

/// `WWW-Authenticate` for a 401 on an MCP route.
pub fn challenge(resource: &str, error: Option<&TokenError>) -> String {
    let url = protected_resource_metadata_url(resource);
    match error {
        Some(e) => format!(
            "Bearer resource_metadata=\"{url}\", error=\"invalid_token\", error_description=\"{e}\""
        ),
        None => format!("Bearer resource_metadata=\"{url}\""),
    }
}

/// Parses `application/x-www-form-urlencoded`.
pub fn form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// The token endpoint's successful answer.
pub fn token_response(
    access_token: &str,
    lifetime: Duration,
    refresh_token: &str,
    scope: Option<&str>,
) -> Value {
    let mut body = serde_json::json!({
        "access_token": access_token, "token_type": "Bearer", "expires_in": lifetime.as_secs(), "refresh_token": refresh_token,
    });
    if let Some(scope) = scope {
        body["scope"] = Value::String(scope.to_owned());
    }
    body
}

/// The TE an MCP client app route passes to its upstream (the app) for the signed-in user.
pub fn app_token(
    keys: &Keyring,
    ctx: &RequestContext,
    session: &Session,
) -> Result<String, MintError> {
    let claims = AccessClaims {
        sub: session.user_id.clone(),
        email: session.email.clone(),
        name: session.name.clone(),
        groups: session.groups.clone(),
        sid: session.id.clone(),
        fam: format!("app:{}", session.id),
        cid: "mcp-client-route".into(),
        aud: format!("{APP_AUDIENCE_PREFIX}{}", ctx.origin()),
        exp: (now_ms() + APP_TOKEN_TTL_MS).min(session.expires_at),
        clm: session.claims.clone(),
    };
    mint_access_token(keys, &claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(aud: &str, exp: i64) -> AccessClaims {
        AccessClaims {
            sub: "ada".into(),
            email: "ada@example.com".into(),
            name: "Ada".into(),
            groups: vec![],
            sid: "s1".into(),
            fam: "f1".into(),
            cid: "c1".into(),
            aud: aud.into(),
            exp,
            clm: Default::default(),
        }
    }

    #[test]
    fn access_tokens_are_bound_to_their_resource_and_can_be_revoked() {
        let keys = Keyring::new(b"0123456789abcdef0123456789abcdef", &[]).unwrap();
        let cache = RevocationCache::default();
        let token = mint_access_token(&keys, &claims("https://mcp.test/notion", now_ms() + 60_000))
            .unwrap();
        assert!(token.starts_with("pst_at_"));
        assert!(check_access_token(&keys, &cache, &token, "https://mcp.test/notion/").is_ok());
        assert!(matches!(
            check_access_token(&keys, &cache, &token, "https://mcp.test/sqlite"),
            Err(TokenError::WrongResource(_))
        ));
        let expired =
            mint_access_token(&keys, &claims("https://mcp.test/notion", now_ms() - 1)).unwrap();
        assert_eq!(
            check_access_token(&keys, &cache, &expired, "https://mcp.test/notion"),
            Err(TokenError::Expired)
        );
        // One character of the sealed part changed (in the middle: the last one may only carry
        // base64 padding bits, and must differ from the original).
        let at = token.len() / 2 + 4;
        let replacement = if &token[at..=at] == "A" { "B" } else { "A" };
        let forged = format!("{}{replacement}{}", &token[..at], &token[at + 1..]);
        assert_ne!(forged, token);
        assert_eq!(
            check_access_token(&keys, &cache, &forged, "https://mcp.test/notion"),
            Err(TokenError::Invalid)
        );
        let other_gateway = Keyring::new(b"fedcba9876543210fedcba9876543210", &[]).unwrap();
        let theirs = mint_access_token(
            &other_gateway,
            &claims("https://mcp.test/notion", now_ms() + 60_000),
        )
        .unwrap();
        assert_eq!(
            check_access_token(&keys, &cache, &theirs, "https://mcp.test/notion"),
            Err(TokenError::Invalid)
        );
        cache.insert(Revocation::Family("f1".into()));
        assert_eq!(
            check_access_token(&keys, &cache, &token, "https://mcp.test/notion"),
            Err(TokenError::Revoked)
        );
    }
}

/// Property-based tests (issue 17, hostile input): thousands of generated TEs and session
/// cookies per run (`PROPTEST_CASES` raises it).
#[cfg(test)]
mod properties {
    use http::{HeaderMap, HeaderValue, header};
    use proptest::prelude::*;

    use super::*;
    use crate::sign_in::session::{CookieSettings, session_id};

    fn keys() -> Keyring {
        Keyring::new(b"0123456789abcdef0123456789abcdef", &[]).unwrap()
    }

    fn claims() -> impl Strategy<Value = AccessClaims> {
        (
            "\\PC{0,12}",
            "\\PC{0,12}",
            prop::collection::vec("\\PC{0,6}", 0..3),
            "[a-z0-9]{1,8}",
            "https://[a-z]{1,6}\\.example/[a-z]{0,6}",
            prop::collection::btree_map("[a-z]{1,5}", "\\PC{0,5}", 0..3),
        )
            .prop_map(|(sub, email, groups, sid, aud, clm)| AccessClaims {
                name: sub.to_uppercase(),
                sub,
                email,
                groups,
                fam: format!("fam-{sid}"),
                sid,
                cid: "client".into(),
                aud,
                exp: now_ms() + 600_000,
                clm: clm
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect(),
            })
    }

    /// `token` with one byte's bit flipped, one character replaced, cut short or extended.
    fn altered(token: &str, how: u8, at: prop::sample::Index, bit: u8) -> Option<String> {
        let mut bytes = token.as_bytes().to_vec();
        let i = at.index(bytes.len());
        match how % 4 {
            0 => bytes[i] ^= 1 << (bit % 8),
            1 => bytes[i] = b"AB_-.0az"[usize::from(bit) % 8],
            2 => bytes.truncate(i),
            _ => bytes.extend_from_slice(&b"AAAA"[..usize::from(bit % 4) + 1]),
        }
        String::from_utf8(bytes).ok().filter(|t| t != token)
    }

    fn cookie_settings() -> CookieSettings {
        CookieSettings {
            name: "_postern".into(),
            expire: Duration::from_secs(3600),
            secure: true,
            same_site: cookie::SameSite::Lax,
            domain: None,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(2000)
        ))]

        /// A TE opens to the claims it was minted with, for its resource only; altered in any
        /// way, it never verifies.
        #[test]
        fn access_tokens_round_trip_and_resist_alteration(
            claims in claims(),
            how in any::<u8>(),
            at in any::<prop::sample::Index>(),
            bit in any::<u8>(),
        ) {
            let keys = keys();
            let cache = RevocationCache::default();
            let token = mint_access_token(&keys, &claims).unwrap();
            prop_assert_eq!(check_identity_token(&keys, &cache, &token).unwrap(), claims.clone());
            prop_assert_eq!(check_access_token(&keys, &cache, &token, &claims.aud).unwrap(), claims.clone());
            if let Some(forged) = altered(&token, how, at, bit) {
                prop_assert_eq!(check_identity_token(&keys, &cache, &forged), Err(TokenError::Invalid), "{}", forged);
            }
        }

        /// Arbitrary bearer values never verify, and never panic.
        #[test]
        fn arbitrary_tokens_never_verify(token in "(pst_at_)?(v1\\.[0-9a-f]{0,16}\\.)?[A-Za-z0-9_=.-]{0,120}") {
            let keys = keys();
            let cache = RevocationCache::default();
            prop_assert_eq!(check_identity_token(&keys, &cache, &token), Err(TokenError::Invalid));
        }

        /// The session cookie gives back the id sealed in it; altered, it gives nothing; any
        /// Cookie header never panics.
        #[test]
        fn session_cookies_round_trip_and_resist_alteration(
            id in "[A-Za-z0-9_-]{1,40}",
            how in any::<u8>(),
            at in any::<prop::sample::Index>(),
            bit in any::<u8>(),
            junk in "\\PC{0,60}",
        ) {
            let keys = keys();
            let settings = cookie_settings();
            let sealed = crate::sign_in::session::seal(&id, &keys).unwrap();
            let with = |value: &str| {
                let mut headers = HeaderMap::new();
                if let Ok(v) = HeaderValue::from_str(&format!("other=1; _postern={value}")) {
                    headers.insert(header::COOKIE, v);
                }
                headers
            };
            prop_assert_eq!(session_id(&with(&sealed), &settings, &keys), Some(id.clone()));
            if let Some(forged) = altered(&sealed, how, at, bit) {
                // A cookie value cut at `;` or with a space is another cookie, not a forgery.
                if HeaderValue::from_str(&forged).is_ok() {
                    prop_assert_ne!(session_id(&with(&forged), &settings, &keys), Some(id.clone()));
                    prop_assert_eq!(session_id(&with(&forged), &settings, &keys), None);
                }
            }
            prop_assert_eq!(session_id(&with(&junk), &settings, &keys), None);
        }
    }
}
