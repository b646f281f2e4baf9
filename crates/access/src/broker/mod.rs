//! The upstream-token broker: each user's tokens (TI) at the upstream providers of MCP server
//! routes (configured `upstream_oauth2`, or discovered from the server's own authorization
//! server): getting them (the provider's authorization flow and its callback), refreshing them
//! before they are passed upstream, and the app-facing endpoints to list, connect and
//! disconnect them. Its other parts: `discovery` (finding a server's authorization server),
//! `upstream` (the provider protocol), `routes_api` (the endpoints), `safe_http` (outbound
//! requests to hosts a stranger may have named).

pub(crate) mod discovery;
pub(crate) mod routes_api;
pub(crate) mod upstream;

use std::collections::HashMap;
use std::sync::Arc;

use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use postern_gateway::body::Body;
use postern_gateway::hooks::RequestContext;
use postern_gateway::routes::Route;
use postern_oauth::pkce;
use postern_store::{PendingAuthorization, Session, Store, UpstreamToken, now_ms};

use crate::broker::discovery::UpstreamSettings;
use crate::oauth_server::{self, RevocationCache};
use crate::settings::Live;
use crate::sign_in::session;
use crate::web::pages;
use crate::web::reply::{cors, html, json_error, redirect_to};
use crate::web::round_trip::{ROUND_TRIP_TTL_MS, Resume, UPSTREAM};

/// The broker. Shared (`Arc`) by the authorization server, enforcement and the endpoints.
pub struct UpstreamBroker {
    pub(crate) store: Store,
    pub(crate) settings: Live,
    /// Token endpoint calls (and what was learned about them).
    pub(crate) tokens: crate::broker::upstream::TokenEndpoints,
    pub(crate) discovery: crate::broker::discovery::Discovery,
    pub(crate) revocations: Arc<RevocationCache>,
    /// Where upstream accounts connected and disconnected are recorded.
    pub(crate) audit: crate::enforcement::audit::Audit,
}

/// What the provider's callback leads to.
pub(crate) enum Callback {
    /// A page or redirect for the browser.
    Done(Response<Body>),
    /// The TI was for an authorization in progress: resume it with these parameters.
    ResumeAuthorization(HashMap<String, String>),
}

impl UpstreamBroker {
    /// A broker over `store`, calling providers with `http`.
    pub fn new(
        store: Store,
        settings: Live,
        http: reqwest::Client,
        revocations: Arc<RevocationCache>,
    ) -> Self {
        let discovery = crate::broker::discovery::Discovery::new(
            store.clone(),
            settings.get().allowed_as_metadata_domains.clone(),
        );
        Self {
            store,
            settings,
            tokens: crate::broker::upstream::TokenEndpoints::new(http),
            discovery,
            revocations,
            audit: crate::enforcement::audit::Audit::new(None, None),
        }
    }

    /// `Authorization: Bearer <TI>` for the user on `route`, when the route brokers an upstream
    /// account: refreshed first when it is about to expire; 401 when the user must connect it.
    pub(crate) async fn upstream_token_header(
        &self,
        ctx: &RequestContext,
        route: &Route,
        session: &Session,
    ) -> Result<Option<HeaderValue>, Response<Body>> {
        let Some(oauth) = self.upstream_oauth(route, &ctx.origin()).await else {
            return Ok(None);
        };
        let key = crate::broker::upstream::route_key(route);
        let result = self
            .store
            .refresh_upstream_token(
                &session.user_id,
                &key,
                crate::broker::upstream::needs_refresh,
                crate::broker::upstream::KEEP_WITH_REFRESH,
                |old| {
                    let refreshing = crate::broker::upstream::refresh(&self.tokens, &oauth, old);
                    async {
                        let outcome = refreshing.await;
                        ctx.metrics.upstream_token_refresh(match &outcome {
                            Ok(postern_store::RefreshOutcome::Refreshed(_)) => "ok",
                            Ok(_) => "rejected",
                            Err(_) => "failed",
                        });
                        outcome
                    }
                },
            )
            .await;
        match result {
            Ok(Some(token)) => {
                let bearer = format!("Bearer {}", token.access_token.expose());
                // Sensitive: HTTP/2 never puts it in the HPACK table toward the upstream.
                let value = HeaderValue::from_str(&bearer).ok().map(|mut value| {
                    value.set_sensitive(true);
                    value
                });
                Ok(value)
            }
            Ok(None) => Err(not_connected(ctx, route)),
            Err(error) => {
                tracing::warn!(request_id = %ctx.request_id, %error, "upstream token refresh failed");
                self.audit.event(
                    crate::enforcement::audit::IdentityEvent::new(
                        "upstream_token_refresh_failed",
                        ctx,
                    )
                    .user(&session.email)
                    .route(&route.id)
                    .reason(error.to_string()),
                );
                Err(json_error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_token_refresh_failed",
                    // The provider's address and error are for the log (above), not the caller.
                    "upstream unavailable: the upstream provider could not refresh your token; try again shortly, or give an administrator the request id",
                    &ctx.request_id,
                ))
            }
        }
    }
}

impl UpstreamBroker {
    /// Sends the browser to the upstream provider for the user's TI, then back to `resume`.
    pub(crate) async fn start_upstream(
        &self,
        route: &postern_gateway::routes::Route,
        session: &postern_store::Session,
        resume: Resume,
    ) -> Response<Body> {
        // The provider returns to the route's host (the redirect URI registered there).
        let origin = resume.origin().to_owned();
        let Some(oauth) = self.upstream_oauth(route, &origin).await else {
            return html(
                StatusCode::BAD_REQUEST,
                pages::message(
                    "Not connectable",
                    "This MCP server needs no upstream account.",
                ),
            );
        };
        let keys = self.store.keyring();
        let (Ok(state), Ok(verifier)) = (keys.random_token(24), keys.random_token(32)) else {
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::message("Unavailable", "No randomness available."),
            );
        };
        let pending = postern_store::PendingAuthorization {
            user_id: session.user_id.clone(),
            session_id: session.id.clone(),
            route_id: crate::broker::upstream::route_key(route),
            pkce_verifier: verifier.clone(),
            resume: resume.to_value(),
            expires_at: now_ms() + ROUND_TRIP_TTL_MS,
        };
        if self.store.put_pending(&state, &pending).await.is_err() {
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::message(
                    "Unavailable",
                    "The gateway's store is unavailable; try again.",
                ),
            );
        }
        let callback = format!("{origin}{}", oauth.callback_path());
        match crate::broker::upstream::authorization_url(
            &oauth,
            &callback,
            &state,
            &pkce::challenge_of(&verifier),
        ) {
            Ok(url) => {
                let mut response = redirect_to(&url);
                UPSTREAM.set(&mut response, &state, self.settings.get().cookie.secure);
                response
            }
            Err(error) => html(
                StatusCode::BAD_GATEWAY,
                pages::message("Cannot connect", &error.to_string()),
            ),
        }
    }

    /// The upstream provider redirects here with the code for the TI.
    pub(crate) async fn upstream_callback(
        &self,
        ctx: &RequestContext,
        request: &Request<Body>,
    ) -> Callback {
        self.finish_upstream(ctx, request)
            .await
            .unwrap_or_else(Callback::Done)
    }

    /// What the callback leads to; `Err` with the failure page at the first check that fails.
    async fn finish_upstream(
        &self,
        ctx: &RequestContext,
        request: &Request<Body>,
    ) -> Result<Callback, Response<Body>> {
        let query = oauth_server::form(request.uri().query().unwrap_or("").as_bytes());
        if let Some(error) = query.get("error") {
            let detail = query.get("error_description").cloned().unwrap_or_default();
            return Err(failed(
                StatusCode::UNAUTHORIZED,
                &format!("The provider answered {error}: {detail}"),
            ));
        }
        let (Some(code), Some(state)) = (query.get("code"), query.get("state")) else {
            return Err(failed(
                StatusCode::BAD_REQUEST,
                "The provider's answer lacks code or state.",
            ));
        };
        let (session, pending, resume) = self.claim_pending(ctx, request, state).await?;
        let Some(route) = route_by_key(ctx, &pending.route_id) else {
            return Err(failed(
                StatusCode::NOT_FOUND,
                "The MCP server this authorization was for is no longer configured.",
            ));
        };
        let Some(oauth) = self.upstream_oauth(&route, resume.origin()).await else {
            return Err(failed(
                StatusCode::NOT_FOUND,
                "The MCP server no longer needs an upstream account.",
            ));
        };
        let token = self
            .exchange_code(ctx, &route, &oauth, code, &pending, &resume)
            .await?;
        self.keep_token(&session, &pending, &token).await?;
        self.audit.event(
            crate::enforcement::audit::IdentityEvent::new("upstream_connected", ctx)
                .user(&session.email)
                .route(&route.id),
        );
        Ok(resumed(resume))
    }

    /// The signed-in user's session and the pending authorization `state` names, with what it
    /// resumes: the state-binding cookie is checked before the record is consumed, its owner
    /// after.
    async fn claim_pending(
        &self,
        ctx: &RequestContext,
        request: &Request<Body>,
        state: &str,
    ) -> Result<(Session, PendingAuthorization, Resume), Response<Body>> {
        let bound = UPSTREAM.matches(request.headers(), state);
        let Some(session) =
            session::current(request.headers(), &self.settings.get().cookie, &self.store).await
        else {
            return Err(failed(
                StatusCode::UNAUTHORIZED,
                "You are not signed in here; start again from your MCP client.",
            ));
        };
        if !bound {
            tracing::warn!(request_id = %ctx.request_id, user = %session.email, "upstream callback with a state from another browser");
            return Err(failed(
                StatusCode::BAD_REQUEST,
                "This authorization was started in another browser; start again here.",
            ));
        }
        let pending = self.store.take_pending(state).await;
        let pending = match pending {
            Ok(Some(p)) => p,
            _ => {
                return Err(failed(
                    StatusCode::BAD_REQUEST,
                    "This authorization is unknown or expired; start again.",
                ));
            }
        };
        let resume = match Resume::from_value(&pending.resume) {
            Some(resume @ (Resume::Authorize { .. } | Resume::Connect { .. })) => resume,
            _ => {
                return Err(failed(
                    StatusCode::BAD_REQUEST,
                    "This authorization is unknown or expired; start again.",
                ));
            }
        };
        if pending.user_id != session.user_id {
            tracing::warn!(request_id = %ctx.request_id, user = %session.email, "upstream callback with another user's state");
            return Err(failed(
                StatusCode::FORBIDDEN,
                "This authorization belongs to another user.",
            ));
        }
        Ok((session, pending, resume))
    }

    /// The TI the provider gives for `code`; `Err` with the failure page when the exchange
    /// fails.
    async fn exchange_code(
        &self,
        ctx: &RequestContext,
        route: &Route,
        oauth: &UpstreamSettings<'_>,
        code: &str,
        pending: &PendingAuthorization,
        resume: &Resume,
    ) -> Result<UpstreamToken, Response<Body>> {
        let callback = format!("{}{}", resume.origin(), oauth.callback_path());
        let params = std::collections::BTreeMap::from([
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.to_owned()),
            ("redirect_uri", callback),
            ("code_verifier", pending.pkce_verifier.clone()),
        ]);
        match crate::broker::upstream::token_request(&self.tokens, oauth, &params).await {
            Ok(token) => Ok(token),
            Err(error) => {
                tracing::warn!(request_id = %ctx.request_id, %error, "upstream code exchange failed");
                // A discovered upstream that no longer knows Postern's client: register again
                // on the next attempt.
                if matches!(
                    &error,
                    crate::broker::upstream::UpstreamError::Refused {
                        error: Some("invalid_client"),
                        ..
                    }
                ) && crate::broker::upstream::static_settings(route).is_none()
                {
                    self.discovery
                        .forget(&pending.route_id, resume.origin())
                        .await;
                }
                Err(failed(StatusCode::BAD_GATEWAY, &error.to_string()))
            }
        }
    }

    /// `Ok` once the user's TI for the pending authorization's route is stored; `Err` with the
    /// failure page when the store fails.
    async fn keep_token(
        &self,
        session: &Session,
        pending: &PendingAuthorization,
        token: &UpstreamToken,
    ) -> Result<(), Response<Body>> {
        let keep = crate::broker::upstream::keep_for(token);
        if self
            .store
            .put_upstream_token(
                &session.user_id,
                &pending.route_id,
                token,
                now_ms() + keep.as_millis() as i64,
            )
            .await
            .is_err()
        {
            return Err(failed(
                StatusCode::SERVICE_UNAVAILABLE,
                "The gateway's store is unavailable; try again.",
            ));
        }
        Ok(())
    }
}

/// The page shown when connecting the account fails.
fn failed(status: StatusCode, message: &str) -> Response<Body> {
    html(
        status,
        pages::message("Connecting the account failed", message),
    )
}

/// The configured route whose TI key is `route_key`, if there still is one.
fn route_by_key(ctx: &RequestContext, route_key: &str) -> Option<Arc<Route>> {
    ctx.runtime
        .routes
        .all()
        .iter()
        .find(|r| crate::broker::upstream::route_key(r) == route_key)
        .cloned()
}

/// Where the browser goes once the TI is stored: back into the authorization, or to the
/// connect flow's redirect.
fn resumed(resume: Resume) -> Callback {
    match resume {
        Resume::Authorize { query, .. } => Callback::ResumeAuthorization(query),
        Resume::Connect { redirect, .. } => Callback::Done(redirect_to(&redirect)),
        // Refused above; a sign-in or a handoff never resumes here.
        Resume::SignIn { .. } | Resume::Handoff { .. } => Callback::Done(failed(
            StatusCode::BAD_REQUEST,
            "This authorization is unknown.",
        )),
    }
}

/// 401 for a user whose upstream account (TI) for `route` is not connected (never, or the
/// provider revoked it): the client's next authorization takes the user through the provider.
pub(crate) fn not_connected(ctx: &RequestContext, route: &Route) -> Response<Body> {
    let resource = oauth_server::route_resource(route, &ctx.origin());
    let mut response = json_error(
        StatusCode::UNAUTHORIZED,
        "upstream_not_connected",
        "your account at this MCP server's provider is not connected: authorize again",
        &ctx.request_id,
    );
    if let Ok(value) = HeaderValue::from_str(&oauth_server::challenge(
        &resource,
        Some(&crate::oauth_server::TokenError::Revoked),
    )) {
        response
            .headers_mut()
            .insert(http::header::WWW_AUTHENTICATE, value);
    }
    cors(response.headers_mut());
    response
}
