//! The OAuth 2.1 authorization server for MCP clients: metadata and `/revoke` here; dynamic
//! registration and its limits in `registration`, `/authorize` with sign-in and consent in
//! `authorize`, `/token` (codes, refresh tokens, client authentication incl. `private_key_jwt`)
//! in `token`, client ID metadata documents in `cimd`; the TE format is `crate::oauth_server`.

mod authorization;
pub(crate) mod cimd;
mod grants;
pub mod registration;
mod token;

use std::collections::HashMap;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use postern_gateway::body::Body;
use postern_gateway::hooks::RequestContext;
use postern_gateway::routes::Route;
use postern_oauth::authorize::{self, AuthorizeError, ClientId, VerifiedRedirect};
use postern_oauth::client_auth::{self, ClientCredentials};
use postern_oauth::pkce::PkceVerifier;
use postern_oauth::{ErrorCode, OAuthError, Secret, metadata, pkce};
use postern_store::{
    CodeGrant, GrantIdentity, Keyring, OAuthClient, Redemption, Revocation, Rotation, Store,
    TokenFamily, now_ms,
};
use serde_json::{Value, json};

use crate::broker::UpstreamBroker;
use crate::oauth_server::{self, AccessClaims, CODE_PREFIX, REFRESH_PREFIX, RevocationCache};
use crate::settings::Live;
use crate::sign_in::session;
use crate::web::pages;
use crate::web::reply::{encode, html, json_response, redirect_to};
use crate::web::untrusted::Untrusted;

/// How long a code is valid.
const CODE_TTL_MS: i64 = 60_000;
/// How long a consent is remembered.
const CONSENT_TTL_MS: i64 = 365 * 24 * 3600 * 1000;

/// The authorization server. Owns the client registrations' limits and the client metadata
/// document cache; asks the broker whether a route needs the user's upstream account.
pub struct AuthorizationServer {
    pub(crate) store: Store,
    pub(crate) settings: Live,
    pub(crate) revocations: Arc<RevocationCache>,
    pub(crate) cimd: crate::authorization_server::cimd::Cimd,
    pub(crate) registration_limiter: crate::web::limiter::AddressWindows,
    pub(crate) broker: Arc<UpstreamBroker>,
    /// The local users (`users_file`): a grant of a user no longer there is refused at refresh.
    pub(crate) users: Arc<arc_swap::ArcSwap<crate::sign_in::users::LocalUsers>>,
    /// The identity provider: asked at refresh whether it still vouches for a grant's user.
    pub(crate) idp: Option<Arc<crate::sign_in::provider::IdentityProvider>>,
    /// Where denials, codes, tokens and revocations are recorded.
    pub(crate) audit: crate::enforcement::audit::Audit,
}

impl AuthorizationServer {
    /// The authorization server over `store`.
    pub fn new(
        store: Store,
        settings: Live,
        revocations: Arc<RevocationCache>,
        broker: Arc<UpstreamBroker>,
    ) -> Self {
        Self {
            cimd: crate::authorization_server::cimd::Cimd::new(
                settings.get().allowed_client_id_domains.clone(),
            ),
            registration_limiter: Default::default(),
            store,
            settings,
            revocations,
            broker,
            users: Default::default(),
            idp: None,
            audit: crate::enforcement::audit::Audit::new(None, None),
        }
    }

    /// RFC 8414 authorization server metadata (also served as OpenID configuration).
    pub(crate) fn metadata(&self, ctx: &RequestContext) -> Response<Body> {
        json_response(
            StatusCode::OK,
            &metadata::authorization_server(
                &ctx.origin(),
                self.settings.get().dynamic_registration,
                &["mcp"],
            ),
        )
    }

    pub(crate) fn protected_resource(&self, ctx: &RequestContext, suffix: &str) -> Response<Body> {
        let path = if suffix.is_empty() { "/" } else { suffix };
        let route = ctx
            .runtime
            .routes
            .find(&ctx.host, ctx.port, path)
            .filter(|r| r.is_mcp_server());
        let Some(route) = route else {
            return json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": "not_found", "error_description": format!("no MCP server at {path} on this host")}),
            );
        };
        // The resource is the URL the client asked about (any URL the route serves), as in
        // Pomerium; its token will be bound to the route.
        let resource = metadata::resource_url(&ctx.origin(), path);
        let mut response = json_response(
            StatusCode::OK,
            &metadata::protected_resource(
                &resource,
                &self.settings.get().issuer(ctx),
                route.config.name.as_deref(),
                &["mcp"],
            ),
        );
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300"),
        );
        response
    }

    /// RFC 7009: revoking either token of a family revokes the family. 200 whether or not the
    /// token was known (§2.2); 503 `temporarily_unavailable` when the store could not look it
    /// up or record the revocation, so the client keeps the token and tries again (§2.2.1)
    /// instead of believing it is revoked.
    pub(crate) async fn revoke(
        &self,
        ctx: &RequestContext,
        request: Request<Body>,
    ) -> Response<Body> {
        let Some(body) = read_body(request).await else {
            return EndpointError::TooLarge("the request is too large").into_response();
        };
        let form = oauth_server::form(&body);
        let token = form.get("token").map(String::as_str).unwrap_or_default();
        match self.revoke_token(ctx, token).await {
            Ok(()) => {
                let mut response = Response::new(postern_gateway::body::full(""));
                no_store(&mut response);
                response
            }
            Err(error) => EndpointError::OAuth(error).into_response(),
        }
    }

    async fn revoke_token(&self, ctx: &RequestContext, token: &str) -> Result<(), OAuthError> {
        // The family, and whose it is (for the audit record).
        let family = if token.starts_with(REFRESH_PREFIX) {
            self.store
                .find_refresh_token(token)
                .await
                .map_err(store_unavailable)?
                .map(|f| (f.family_id, f.user_id, f.client_id))
        } else if let Some(sealed) = token.strip_prefix(oauth_server::ACCESS_PREFIX) {
            self.store
                .keyring()
                .open("access-token", sealed)
                .ok()
                .and_then(|json| serde_json::from_slice::<AccessClaims>(&json).ok())
                .map(|c| (c.fam, c.email, c.cid))
        } else {
            None
        };
        if let Some((family, user, client)) = family {
            ctx.metrics.token("revoked");
            self.audit.event(
                crate::enforcement::audit::IdentityEvent::new("token_revoked", ctx)
                    .user(user)
                    .client(client)
                    .reason(format!("revoked by the client (family {family})")),
            );
            // This replica refuses the family's tokens at once, whatever the store says.
            self.revocations.insert(Revocation::Family(family.clone()));
            self.store
                .revoke_family(&family)
                .await
                .map_err(store_unavailable)?;
        }
        Ok(())
    }
}

/// The body of a registration, token, revocation or consent request (64 KiB, 10 s).
async fn read_body(request: Request<Body>) -> Option<bytes::Bytes> {
    crate::web::forms::read_form(request).await.ok()
}

/// Why a registration, token or revocation request failed: answered in one place,
/// [`EndpointError::into_response`].
#[derive(Debug)]
pub(crate) enum EndpointError {
    /// Not a POST: 405 with `invalid_request` saying what to do.
    NotPost(&'static str),
    /// The body is over the limit: 413 with `invalid_request` saying so.
    TooLarge(&'static str),
    /// An OAuth error: the status its code has (RFC 6749 §5.2: 400, `invalid_client` 401, ...).
    OAuth(OAuthError),
}

impl From<OAuthError> for EndpointError {
    fn from(error: OAuthError) -> Self {
        Self::OAuth(error)
    }
}

impl EndpointError {
    /// The RFC 6749 §5.2 JSON error response, never cached; `WWW-Authenticate` on a 401
    /// (§5.2: the client authenticated, or should have, with HTTP Basic); `Retry-After` when
    /// the error says when to try again.
    pub(crate) fn into_response(self) -> Response<Body> {
        let (status, error) = match self {
            Self::NotPost(what) => (
                StatusCode::METHOD_NOT_ALLOWED,
                OAuthError::new(ErrorCode::InvalidRequest, what),
            ),
            Self::TooLarge(what) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                OAuthError::new(ErrorCode::InvalidRequest, what),
            ),
            Self::OAuth(error) => (
                StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST),
                error,
            ),
        };
        let mut response = json_response(status, &error.body());
        no_store(&mut response);
        let headers = response.headers_mut();
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"postern\""),
            );
        }
        // A 503 is always worth retrying (the store or the identity provider is back within
        // seconds): say when, so clients wait instead of dropping their grant.
        let retry_after = error.retry_after.or_else(|| {
            (status == StatusCode::SERVICE_UNAVAILABLE).then_some(UNAVAILABLE_RETRY_AFTER)
        });
        if let Some(after) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs()));
        }
        response
    }
}

/// `Retry-After` of a 503 that names no other time.
const UNAVAILABLE_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

fn no_store(response: &mut Response<Body>) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
        .headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// `n` random bytes as a token (client id, secret, code, family, refresh token): a failing
/// random source is logged and answered `temporarily_unavailable`, never an empty value.
fn random_token(keys: &Keyring, n: usize) -> Result<String, OAuthError> {
    keys.random_token(n).map_err(|error| {
        tracing::error!(%error, "no randomness at the authorization server");
        OAuthError::new(
            ErrorCode::TemporarilyUnavailable,
            "the gateway cannot make a random value now; try again",
        )
    })
}

/// A store failure at the token or authorization endpoint: logged for the operator, and a
/// retryable OAuth error for the client.
fn store_unavailable(error: postern_store::StoreError) -> OAuthError {
    tracing::error!(%error, "store unavailable at the authorization server");
    OAuthError::new(
        ErrorCode::TemporarilyUnavailable,
        format!(
            "{}; try again in a few seconds (see Retry-After): nothing was used up",
            error.public_reason()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_errors_take_their_status_from_the_code_and_are_never_cached() {
        let cases = [
            (
                EndpointError::OAuth(OAuthError::new(ErrorCode::InvalidGrant, "g")),
                400,
                None,
                None,
            ),
            (
                OAuthError::new(ErrorCode::InvalidClient, "c").into(),
                401,
                Some("Basic realm=\"postern\""),
                None,
            ),
            (
                OAuthError::new(ErrorCode::TooManyRequests, "r")
                    .with_retry_after(std::time::Duration::from_secs(9))
                    .into(),
                429,
                None,
                Some("9"),
            ),
            (
                OAuthError::new(ErrorCode::TemporarilyUnavailable, "t").into(),
                503,
                None,
                Some("5"),
            ),
            (EndpointError::NotPost("use POST"), 405, None, None),
            (EndpointError::TooLarge("too large"), 413, None, None),
        ];
        for (error, status, challenge, retry_after) in cases {
            let what = format!("{error:?}");
            let response = error.into_response();
            let header = |name| {
                response
                    .headers()
                    .get(name)
                    .map(|v: &HeaderValue| v.to_str().unwrap())
            };
            assert_eq!(response.status().as_u16(), status, "{what}");
            assert_eq!(header(header::CACHE_CONTROL), Some("no-store"), "{what}");
            assert_eq!(header(header::WWW_AUTHENTICATE), challenge, "{what}");
            assert_eq!(header(header::RETRY_AFTER), retry_after, "{what}");
        }
    }
}
