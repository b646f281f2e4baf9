//! [`Access`]: the gateway hooks for sign-in (local users), sessions, policy, MCP tool checks,
//! `tools/list` filtering, the identity assertion and the audit log.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use postern_config::{Config, IssuerFormat};
use postern_gateway::body::{Body, Observed, full};
use postern_gateway::errors::GatewayError;
use postern_gateway::hooks::{Grant, Hooks, RequestContext};
use postern_gateway::routes::Route;
use postern_policy::{Input, McpRequest, User};
use postern_store::{PendingAuthorization, Session, Store, hash_secret, now_ms};
use serde_json::{Value, json};

use crate::assertion::Signer;
use crate::audit::{Audit, AuditEvent};
use crate::limiter::SignInLimiter;
use crate::mcp::{self, Call};
use crate::oauth_server::{self, RevocationCache, TokenError};
use crate::oidc::Oidc;
use crate::pages;
use crate::session::{self, CookieSettings};
use crate::users::{LocalUser, LocalUsers};

/// What the hooks need from the configuration.
#[derive(Clone, Debug)]
pub struct AccessSettings {
    /// Cookie settings.
    pub cookie: CookieSettings,
    /// Send the assertion on every route unless the route says otherwise.
    pub pass_identity_headers: bool,
    /// `iss` format.
    pub issuer_format: IssuerFormat,
    /// Where the audit log is appended (JSON lines).
    pub audit_file: Option<PathBuf>,
    /// Accept RFC 7591 dynamic client registration.
    pub dynamic_registration: bool,
    /// Lifetime of access tokens (TE).
    pub access_token_ttl: Duration,
    /// A refresh token presented again within this time after its rotation is refused without
    /// revoking its family (two requests of one client racing); later it is reuse.
    pub refresh_reuse_grace: Duration,
    /// Hosts whose client ID metadata documents are accepted (`mcp_allowed_client_id_domains`).
    pub allowed_client_id_domains: Vec<String>,
    /// Hosts upstream OAuth discovery may contact besides the routes' upstream hosts
    /// (`mcp_allowed_as_metadata_domains`).
    pub allowed_as_metadata_domains: Vec<String>,
    /// Limits on dynamic client registration.
    pub registration: crate::registration::RegistrationLimits,
}

impl AccessSettings {
    /// From the configuration.
    pub fn from_config(config: &Config) -> Self {
        let localhost_only = config
            .routes
            .iter()
            .all(|r| matches!(r.from.host.as_str(), "localhost" | "127.0.0.1" | "::1"));
        Self {
            cookie: CookieSettings {
                name: config
                    .cookie_name
                    .clone()
                    .unwrap_or_else(|| "_postern".into()),
                expire: config
                    .cookie_expire
                    .map_or(Duration::from_secs(14 * 3600), |d| d.0),
                // Browsers keep `Secure` cookies from plain-HTTP localhost, but not from other
                // plain-HTTP hosts: only there is the flag left out.
                secure: !(config.insecure_server && localhost_only),
            },
            pass_identity_headers: config.pass_identity_headers.unwrap_or(false),
            issuer_format: config.jwt_issuer_format.unwrap_or(IssuerFormat::HostOnly),
            audit_file: Some(config.data_dir().join("audit.jsonl")),
            dynamic_registration: config.mcp_dynamic_client_registration.unwrap_or(true),
            access_token_ttl: config
                .mcp_access_token_ttl
                .map_or(Duration::from_secs(3600), |d| d.0),
            refresh_reuse_grace: Duration::from_secs(5),
            allowed_client_id_domains: config.mcp_allowed_client_id_domains.clone(),
            allowed_as_metadata_domains: config.mcp_allowed_as_metadata_domains.clone(),
            registration: Default::default(),
        }
    }
}

/// The gateway hooks.
pub struct Access {
    pub(crate) store: Store,
    users: Arc<LocalUsers>,
    /// Password checks at once (argon2id takes 19 MiB and tens of ms of CPU each).
    password_checks: Arc<tokio::sync::Semaphore>,
    signer: Signer,
    pub(crate) settings: AccessSettings,
    limiter: SignInLimiter,
    audit: Audit,
    oidc: Option<Oidc>,
    pub(crate) revocations: Arc<RevocationCache>,
    pub(crate) http: reqwest::Client,
    pub(crate) cimd: crate::cimd::Cimd,
    pub(crate) discovery: crate::discovery::Discovery,
    pub(crate) registration_limiter: crate::registration::RegistrationLimiter,
}

/// How long an OIDC sign-in may take.
const OIDC_SIGN_IN_TTL_MS: i64 = 10 * 60 * 1000;
const OIDC_STATE_COOKIE: &str = "_postern_oidc";

/// Facts about an allowed request that later hooks use.
#[derive(Clone)]
struct Allowed {
    session: Option<Session>,
    calls: Vec<Call>,
    decision: String,
    filter_tools: bool,
}

impl Access {
    /// Hooks over `store` with `users` signing in and `signer` making assertions.
    pub fn new(store: Store, users: LocalUsers, signer: Signer, settings: AccessSettings) -> Self {
        let audit = Audit::new(settings.audit_file.clone());
        let store_for_sync = store.clone();
        let cimd = crate::cimd::Cimd::new(settings.allowed_client_id_domains.clone());
        let discovery = crate::discovery::Discovery::new(
            store.clone(),
            settings.allowed_as_metadata_domains.clone(),
        );
        Self {
            discovery,
            store,
            users: Arc::new(users),
            password_checks: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            signer,
            settings,
            limiter: SignInLimiter::default(),
            audit,
            oidc: None,
            cimd,
            registration_limiter: Default::default(),
            http: {
                let _ = rustls::crypto::ring::default_provider().install_default();
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(15))
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .unwrap_or_default()
            },
            revocations: {
                let cache = Arc::new(RevocationCache::default());
                RevocationCache::spawn_sync(&cache, store_for_sync);
                cache
            },
        }
    }

    /// The local user with this email and password. The check runs on the blocking pool, so a
    /// sign-in never stalls the proxy's worker threads, and at most one per core runs at once,
    /// so a burst of sign-ins cannot take 19 MiB each without bound.
    async fn check_password(&self, email: &str, password: &str) -> Option<LocalUser> {
        let _permit = self.password_checks.acquire().await.ok()?;
        let users = self.users.clone();
        let (email, password) = (email.to_owned(), password.to_owned());
        tokio::task::spawn_blocking(move || users.verify(&email, &password).cloned())
            .await
            .ok()
            .flatten()
    }

    /// `Authorization: Bearer <TI>` for the user on `route`, when the route brokers an upstream
    /// account: refreshed first when it is about to expire; 401 when the user must connect it.
    async fn upstream_token_header(
        &self,
        ctx: &RequestContext,
        route: &Route,
        session: &Session,
    ) -> Result<Option<HeaderValue>, Response<Body>> {
        let Some(oauth) = self.upstream_oauth(route, &ctx.origin()).await else {
            return Ok(None);
        };
        let key = crate::upstream::route_key(route);
        let result = self
            .store
            .refresh_upstream_token(
                &session.user_id,
                &key,
                crate::upstream::needs_refresh,
                crate::upstream::KEEP_WITH_REFRESH,
                |old| crate::upstream::refresh(&self.http, &oauth, old),
            )
            .await;
        match result {
            Ok(Some(token)) => {
                Ok(HeaderValue::from_str(&format!("Bearer {}", token.access_token)).ok())
            }
            Ok(None) => Err(not_connected(ctx, route)),
            Err(error) => {
                tracing::warn!(request_id = %ctx.request_id, %error, "upstream token refresh failed");
                Err(json_error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_token_refresh_failed",
                    &format!(
                        "the upstream provider could not refresh your token, try again shortly: {error}"
                    ),
                    &ctx.request_id,
                ))
            }
        }
    }

    /// Signs users in with an OpenID Connect provider (local users may still post the form).
    pub fn with_oidc(mut self, oidc: Oidc) -> Self {
        self.oidc = Some(oidc);
        self
    }

    /// Sends the browser to the provider; the sign-in is bound to this browser by a cookie.
    async fn start_oidc(
        &self,
        oidc: &Oidc,
        ctx: &RequestContext,
        redirect: &str,
    ) -> Response<Body> {
        let keys = self.store.keyring();
        let (Ok(state), Ok(nonce), Ok(verifier)) = (
            keys.random_token(24),
            keys.random_token(24),
            keys.random_token(32),
        ) else {
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::message("Sign-in is unavailable", "No randomness available."),
            );
        };
        let pending = PendingAuthorization {
            user_id: String::new(),
            session_id: String::new(),
            route_id: "oidc-sign-in".into(),
            pkce_verifier: verifier.clone(),
            resume: json!({"nonce": nonce, "redirect": safe_redirect(redirect, ctx), "origin": ctx.origin()}),
            expires_at: now_ms() + OIDC_SIGN_IN_TTL_MS,
        };
        if let Err(error) = self.store.put_pending(&state, &pending).await {
            tracing::error!(%error, "cannot save the sign-in");
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::message("Sign-in is unavailable", "Try again in a moment."),
            );
        }
        let callback = format!("{}/.pomerium/callback", ctx.origin());
        match oidc
            .authorization_url(&callback, &state, &nonce, &verifier)
            .await
        {
            Ok(url) => {
                let mut response = redirect_to(&url);
                let secure = if self.settings.cookie.secure {
                    "; Secure"
                } else {
                    ""
                };
                set_cookie(
                    &mut response,
                    &format!(
                        "{OIDC_STATE_COOKIE}={}; Path=/.pomerium/callback; Max-Age=600; HttpOnly; SameSite=Lax{secure}",
                        hash_secret(&state)
                    ),
                );
                response
            }
            Err(error) => {
                tracing::error!(%error, "OIDC sign-in could not start");
                html(
                    StatusCode::BAD_GATEWAY,
                    pages::message("Sign-in is unavailable", &error.to_string()),
                )
            }
        }
    }

    /// The provider sends the browser back here with the code.
    async fn oidc_callback(&self, ctx: &RequestContext, request: &Request<Body>) -> Response<Body> {
        let Some(oidc) = &self.oidc else {
            return html(
                StatusCode::NOT_FOUND,
                pages::message("Not found", "No identity provider is configured."),
            );
        };
        let query = request.uri().query().unwrap_or("");
        if let Some(error) = form_value(query, "error") {
            let detail = form_value(query, "error_description").unwrap_or_default();
            return html(
                StatusCode::UNAUTHORIZED,
                pages::message(
                    "Sign-in failed",
                    &format!("The identity provider answered {error}: {detail}"),
                ),
            );
        }
        let (Some(code), Some(state)) = (form_value(query, "code"), form_value(query, "state"))
        else {
            return html(
                StatusCode::BAD_REQUEST,
                pages::message(
                    "Sign-in failed",
                    "The provider's answer lacks code or state.",
                ),
            );
        };
        let expected = hash_secret(&state);
        let bound = session::cookies(request.headers(), OIDC_STATE_COOKIE).any(|v| v == expected);
        // Checked before the sign-in is consumed, so a foreign browser can't burn it.
        if !bound {
            tracing::warn!(request_id = %ctx.request_id, "OIDC callback from a browser that did not start the sign-in");
            return html(
                StatusCode::BAD_REQUEST,
                pages::message(
                    "Sign-in failed",
                    "This sign-in was started in another browser. Start again here.",
                ),
            );
        }
        let pending = match self.store.take_pending(&state).await {
            Ok(Some(p)) if p.route_id == "oidc-sign-in" => p,
            _ => {
                return html(
                    StatusCode::BAD_REQUEST,
                    pages::message(
                        "Sign-in failed",
                        "This sign-in is unknown or expired. Start again.",
                    ),
                );
            }
        };
        let resume = &pending.resume;
        let text = |k: &str| {
            resume
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let callback = format!("{}/.pomerium/callback", text("origin"));
        let identity = match oidc
            .finish(&code, &callback, &pending.pkce_verifier, &text("nonce"))
            .await
        {
            Ok(identity) => identity,
            Err(error) => {
                tracing::warn!(request_id = %ctx.request_id, %error, "OIDC sign-in refused");
                return html(
                    StatusCode::UNAUTHORIZED,
                    pages::message("Sign-in failed", &error.to_string()),
                );
            }
        };
        if let Some(current) =
            session::current(request.headers(), &self.settings.cookie, &self.store)
                .await
                .filter(|c| c.user_id != identity.subject)
        {
            return html(
                StatusCode::CONFLICT,
                pages::signed_in_as_other(&current.email),
            );
        }
        let Some(cookie) = self
            .start_session(Session {
                user_id: identity.subject,
                email: identity.email,
                name: identity.name,
                groups: identity.groups,
                claims: identity.claims,
                idp: "oidc".into(),
                ..Session::default()
            })
            .await
        else {
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::message(
                    "Sign-in failed",
                    "Sign-in is unavailable right now (the gateway's store failed); try again in a moment.",
                ),
            );
        };
        let mut response = redirect_to(&text("redirect"));
        set_cookie(&mut response, &cookie);
        set_cookie(
            &mut response,
            &format!(
                "{OIDC_STATE_COOKIE}=; Path=/.pomerium/callback; Max-Age=0; HttpOnly; SameSite=Lax"
            ),
        );
        response
    }

    /// The user as the policy sees them. `claim/email`, `claim/name` and `claim/groups` match
    /// the session's own fields when the identity source sent no such claim (local users, and
    /// providers that keep them out of the ID token).
    pub(crate) fn user_of(session: &Session) -> User {
        let mut claims = session.claims.clone();
        claims
            .entry("email")
            .or_insert_with(|| Value::String(session.email.clone()));
        if !session.name.is_empty() {
            claims
                .entry("name")
                .or_insert_with(|| Value::String(session.name.clone()));
        }
        claims
            .entry("groups")
            .or_insert_with(|| json!(session.groups));
        User {
            id: session.user_id.clone(),
            email: session.email.clone(),
            groups: session.groups.clone(),
            claims,
        }
    }

    /// The sign-in page with a fresh anti-forgery pair (the field in the form, the cookie
    /// beside it), with `status` and an optional error.
    fn sign_in_page(
        &self,
        status: StatusCode,
        redirect: &str,
        error: Option<&str>,
    ) -> Response<Body> {
        let Some((cookie, field)) = crate::forms::csrf_pair(self.store.keyring()) else {
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::message("Sign-in is unavailable", "No randomness available."),
            );
        };
        let mut response = html(status, pages::sign_in(redirect, &field, error));
        set_cookie(
            &mut response,
            &crate::forms::csrf_cookie(&cookie, self.settings.cookie.secure),
        );
        response
    }

    /// `GET /.pomerium/sign_in` shows the form (or goes to the identity provider); `POST` signs
    /// a local user in. The post must come from this site's own form: no cross-site `Origin` or
    /// `Sec-Fetch-Site`, and the anti-forgery field that goes with this browser's cookie (a
    /// forged sign-in would put the victim's browser in the attacker's account, and what the
    /// victim connects next, e.g. an upstream account, would be stored under the attacker).
    async fn sign_in_form(&self, ctx: &RequestContext, request: Request<Body>) -> Response<Body> {
        let query = request.uri().query().unwrap_or("").to_owned();
        let redirect = form_value(&query, "redirect_uri").unwrap_or_else(|| "/.pomerium/".into());
        if request.method() != Method::POST {
            if let Some(oidc) = &self.oidc {
                return self.start_oidc(oidc, ctx, &redirect).await;
            }
            return self.sign_in_page(StatusCode::OK, &redirect, None);
        }
        if let Err(why) = crate::forms::same_origin_post(request.headers(), &ctx.origin()) {
            tracing::warn!(request_id = %ctx.request_id, client = %ctx.client_addr.ip(), why, "cross-site sign-in refused");
            return self.sign_in_page(
                StatusCode::FORBIDDEN,
                &redirect,
                Some(
                    "This sign-in came from another site, so it was refused. Sign in here instead.",
                ),
            );
        }
        let headers = request.headers().clone();
        let body = match crate::forms::read_form(request).await {
            Ok(body) => body,
            Err(error) => {
                return self.sign_in_page(
                    error.status(),
                    &redirect,
                    Some(&format!("The form could not be read: {error}.")),
                );
            }
        };
        let form = String::from_utf8_lossy(&body).into_owned();
        let redirect = form_value(&form, "redirect_uri").unwrap_or(redirect);
        if !crate::forms::csrf_matches(
            &headers,
            form_value(&form, "csrf_token").as_deref(),
            self.store.keyring(),
        ) {
            return self.sign_in_page(
                StatusCode::FORBIDDEN,
                &redirect,
                Some(
                    "This sign-in form has expired or was not sent from this site. Sign in again.",
                ),
            );
        }
        let email = form_value(&form, "email").unwrap_or_default();
        let password = form_value(&form, "password").unwrap_or_default();
        if email.len() > crate::forms::MAX_EMAIL_BYTES || password.len() > 1024 {
            return self.sign_in_page(
                StatusCode::BAD_REQUEST,
                &redirect,
                Some("Wrong email or password."),
            );
        }
        // Signing in over another user's session would silently switch accounts under the
        // pages and clients of the first one.
        let current = session::current(&headers, &self.settings.cookie, &self.store).await;
        if let Some(current) = current
            .as_ref()
            .filter(|c| !c.email.eq_ignore_ascii_case(&email))
        {
            return html(
                StatusCode::CONFLICT,
                pages::signed_in_as_other(&current.email),
            );
        }
        let address = ctx.client_addr.ip().to_string();
        let attempt = match self.limiter.reserve(&email, &address) {
            Ok(attempt) => attempt,
            Err(refused) => {
                tracing::warn!(request_id = %ctx.request_id, client = %address, "sign-in rate limited");
                let mut response = self.sign_in_page(
                    StatusCode::TOO_MANY_REQUESTS,
                    &redirect,
                    Some(&format!(
                        "Too many failed attempts from your address. Wait {} seconds, then try again.",
                        refused.retry_after.as_secs()
                    )),
                );
                if let Ok(value) = HeaderValue::from_str(&refused.retry_after.as_secs().to_string())
                {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                return response;
            }
        };
        if !attempt.delay.is_zero() {
            tokio::time::sleep(attempt.delay).await;
        }
        let Some(user) = self.check_password(&email, &password).await else {
            attempt.failed();
            return self.sign_in_page(
                StatusCode::UNAUTHORIZED,
                &redirect,
                Some("Wrong email or password."),
            );
        };
        attempt.succeeded();
        let email = user.email.to_ascii_lowercase();
        let Some(cookie) = self
            .start_session(Session {
                user_id: email.clone(),
                email,
                name: user.name,
                groups: user.groups,
                claims: user.claims,
                idp: "local".into(),
                ..Session::default()
            })
            .await
        else {
            return self.sign_in_page(
                StatusCode::SERVICE_UNAVAILABLE,
                &redirect,
                Some(
                    "Sign-in is unavailable right now (the gateway's store failed); try again in a moment.",
                ),
            );
        };
        let target = safe_redirect(&redirect, ctx);
        let mut response = redirect_to(&target);
        set_cookie(&mut response, &cookie);
        response
    }

    /// Stores a new session for the user described by `session` (its id and times are set
    /// here) and records the sign-in; the `Set-Cookie` value that carries it, or `None` when
    /// the store (or the random source) failed.
    async fn start_session(&self, mut session: Session) -> Option<String> {
        let now = now_ms();
        session.id = match self.store.keyring().random_token(24) {
            Ok(id) => id,
            Err(error) => {
                tracing::error!(%error, "cannot make a session id");
                return None;
            }
        };
        session.created_at = now;
        session.expires_at = now + self.settings.cookie.expire.as_millis() as i64;
        if let Err(error) = self.store.put_session(&session).await {
            tracing::error!(%error, "cannot save the session");
            return None;
        }
        tracing::info!(target: "postern::audit", event = "sign_in", idp = %session.idp, user = %session.email, session = %session.id, "signed in");
        Some(session::cookie_for(
            &session.id,
            &self.settings.cookie,
            self.store.keyring(),
        ))
    }

    async fn sign_out(&self, ctx: &RequestContext, request: &Request<Body>) -> Response<Body> {
        if let Some(id) = session::session_id(
            request.headers(),
            &self.settings.cookie,
            self.store.keyring(),
        ) {
            match self.store.end_session(&id).await {
                Ok(_) => {
                    tracing::info!(target: "postern::audit", event = "sign_out", session = %id, "signed out")
                }
                Err(error) => tracing::error!(%error, "cannot end the session"),
            }
        }
        let target = request
            .uri()
            .query()
            .and_then(|q| form_value(q, "redirect_uri"))
            .map(|r| safe_redirect(&r, ctx));
        let mut response = match target {
            Some(target) => redirect_to(&target),
            None => html(StatusCode::OK, pages::signed_out()),
        };
        set_cookie(&mut response, &session::clear_cookie(&self.settings.cookie));
        response
    }

    fn unauthenticated(
        &self,
        ctx: &RequestContext,
        route: &Route,
        original: &str,
    ) -> Response<Body> {
        if ctx.browser && !route.is_mcp_server() {
            let target = format!("/.pomerium/sign_in?redirect_uri={}", encode(original));
            return redirect_to(&target);
        }
        let mut response = GatewayError::Unauthenticated.into_response(&ctx.request_id, false);
        let challenge = if route.is_mcp_server() {
            oauth_server::challenge(&oauth_server::route_resource(route, &ctx.origin()), None)
        } else {
            "Bearer".to_owned()
        };
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        cors(response.headers_mut());
        response
    }

    /// 401 for a bad TE: the client should run its authorization again.
    fn invalid_token(
        &self,
        ctx: &RequestContext,
        resource: &str,
        error: &TokenError,
    ) -> Response<Body> {
        tracing::info!(request_id = %ctx.request_id, %error, "access token refused");
        let mut response = json_error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            &error.to_string(),
            &ctx.request_id,
        );
        if let Ok(value) = HeaderValue::from_str(&oauth_server::challenge(resource, Some(error))) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        cors(response.headers_mut());
        response
    }
}

#[async_trait]
impl Hooks for Access {
    fn intercepts(
        &self,
        _ctx: &RequestContext,
        route: Option<&Arc<Route>>,
        request: &Request<Body>,
    ) -> bool {
        // Everything `intercept` answers: its own paths, and CORS preflights on MCP routes.
        let path = request.uri().path();
        path.starts_with("/.pomerium/")
            || path.starts_with("/.well-known/")
            || (request.method() == Method::OPTIONS && route.is_some_and(|r| r.is_mcp_server()))
    }

    async fn intercept(
        &self,
        ctx: &RequestContext,
        route: Option<&Arc<Route>>,
        request: Request<Body>,
    ) -> Result<Response<Body>, Request<Body>> {
        let request = match self.oauth_endpoint(ctx, route, request).await {
            Ok(response) => return Ok(response),
            Err(request) => request,
        };
        let request = match self.routes_api(ctx, request).await {
            Ok(response) => return Ok(response),
            Err(request) => request,
        };
        match request.uri().path() {
            "/.pomerium/sign_in" => Ok(self.sign_in_form(ctx, request).await),
            "/.pomerium/sign_out" => Ok(self.sign_out(ctx, &request).await),
            "/.pomerium/callback" => Ok(self.oidc_callback(ctx, &request).await),
            "/.pomerium/mcp/client/metadata.json" => {
                // Postern's own client ID metadata document, for upstream authorization
                // servers that accept one instead of dynamic registration.
                let origin = ctx.origin();
                let mut response = json_response(
                    StatusCode::OK,
                    &crate::discovery::client_metadata_document(&origin),
                );
                response.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=3600"),
                );
                Ok(response)
            }
            "/.well-known/pomerium/jwks.json" => {
                let mut response = json_response(StatusCode::OK, self.signer.jwks());
                response.headers_mut().insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=300"),
                );
                Ok(response)
            }
            _ => Err(request),
        }
    }

    async fn authorize(
        &self,
        ctx: &RequestContext,
        route: &Arc<Route>,
        request: Request<Body>,
    ) -> Result<(Request<Body>, Grant), Response<Body>> {
        // MCP clients present a TE; browsers (and apps signed in through them) a session cookie.
        let bearer = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().to_owned());
        let session = match (&bearer, route.is_mcp_server()) {
            (Some(token), true) => {
                let resource = oauth_server::route_resource(route, &ctx.origin());
                match oauth_server::check_access_token(
                    self.store.keyring(),
                    &self.revocations,
                    token,
                    &resource,
                ) {
                    Ok(claims) => Some(claims.session()),
                    Err(error) => return Err(self.invalid_token(ctx, &resource, &error)),
                }
            }
            _ if request.headers().contains_key(header::COOKIE) => {
                Box::pin(session::current(
                    request.headers(),
                    &self.settings.cookie,
                    &self.store,
                ))
                .await
            }
            _ => None,
        };
        let user = session.as_ref().map(Self::user_of);
        let method = request.method().as_str().to_owned();
        let path = request.uri().path().to_owned();
        // Where to return after sign-in (only needed when the request is refused for it).
        let original =
            |uri: &http::Uri| uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();

        // MCP POSTs are read whole and checked call by call; nothing unreadable goes through.
        let (request, calls) = if route.is_mcp_server() && request.method() == Method::POST {
            let (parts, body) = request.into_parts();
            let bytes = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => {
                    let error = GatewayError::PayloadTooLarge {
                        limit: route.max_request_bytes,
                    };
                    return Err(error.into_response(&ctx.request_id, false));
                }
            };
            let content_type = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            let calls = match mcp::inspect(content_type, &bytes) {
                Ok(calls) => calls,
                Err(error) => {
                    // Nobody signed in on a route that needs a user: the client learns to sign
                    // in first (401), not what is wrong with a body nobody may send yet.
                    let anonymous = route.policy.evaluate(&Input {
                        user: None,
                        method: &method,
                        path: &path,
                        mcp: None,
                    });
                    if user.is_none() && anonymous.needs_sign_in {
                        return Err(self.unauthenticated(ctx, route, &original(&parts.uri)));
                    }
                    let status = match error {
                        mcp::InspectError::ContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        mcp::InspectError::Malformed(_) => StatusCode::BAD_REQUEST,
                    };
                    return Err(json_error(
                        status,
                        "invalid_mcp_request",
                        &error.to_string(),
                        &ctx.request_id,
                    ));
                }
            };
            (Request::from_parts(parts, full(bytes)), calls)
        } else {
            (request, Vec::new())
        };

        let evaluate = |mcp: Option<&McpRequest>| {
            route.policy.evaluate(&Input {
                user: user.as_ref(),
                method: &method,
                path: &path,
                mcp,
            })
        };
        let decisions: Vec<_> = if calls.is_empty() {
            vec![(None, evaluate(None))]
        } else {
            calls
                .iter()
                .map(|c| (Some(c), evaluate(Some(&c.request))))
                .collect()
        };
        let denied: Vec<_> = decisions.iter().filter(|(_, d)| !d.allowed).collect();
        if let Some((_, first)) = denied.first() {
            if first.needs_sign_in {
                return Err(self.unauthenticated(ctx, route, &original(request.uri())));
            }
            for (call, decision) in &denied {
                self.audit.record(AuditEvent::decision(
                    ctx,
                    route,
                    session.as_ref(),
                    call.map(|c| &c.request),
                    &decision.reason,
                    false,
                ));
            }
            if !calls.is_empty() {
                // MCP clients get a JSON-RPC error per denied request (a batch gets a batch).
                let errors: Vec<Value> = denied
                    .iter()
                    .map(|(call, _)| {
                        let call = call.expect("MCP decisions carry their call");
                        mcp::denial(
                            call.id.as_ref(),
                            call.request.tool.as_deref(),
                            &ctx.request_id,
                        )
                    })
                    .collect();
                let body = if calls.len() == 1 {
                    errors[0].clone()
                } else {
                    Value::Array(errors)
                };
                return Err(json_response(StatusCode::OK, &body));
            }
            return Err(json_error(
                StatusCode::FORBIDDEN,
                "forbidden",
                &format!(
                    "the route's policy does not allow this request ({})",
                    first.reason
                ),
                &ctx.request_id,
            ));
        }
        let decision = decisions
            .first()
            .map(|(_, d)| d.reason.clone())
            .unwrap_or_default();
        // Every response of a route with tool rules: a tool list can come on a GET stream, in
        // a batch, or replayed after a reconnect, not only as the answer to `tools/list`.
        let filter_tools = route.is_mcp_server() && route.policy.uses_mcp_tool();
        let mut grant = Grant {
            principal: session.as_ref().map(|s| s.email.clone()),
            extensions: http::Extensions::new(),
        };
        grant.extensions.insert(Allowed {
            session,
            calls,
            decision,
            filter_tools,
        });
        Ok((request, grant))
    }

    async fn upstream_headers(
        &self,
        ctx: &RequestContext,
        route: &Arc<Route>,
        grant: &Grant,
    ) -> Result<HeaderMap, Response<Body>> {
        let mut headers = HeaderMap::new();
        let session = grant
            .extensions
            .get::<Allowed>()
            .and_then(|a| a.session.as_ref());
        if route.is_mcp_server() {
            // Bodies the gateway can read (tool lists are filtered): no compression.
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        if let (Some(session), true) = (session, route.is_mcp_server()) {
            // Boxed: the TI path (discovery, store, provider refresh) is a large future that
            // requests without a session never need.
            if let Some(value) = Box::pin(self.upstream_token_header(ctx, route, session)).await? {
                headers.insert(header::AUTHORIZATION, value);
            }
        }
        if let (postern_gateway::routes::Kind::McpClient, Some(session)) = (&route.kind, session) {
            let token = self.app_token(ctx, session);
            if let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) {
                headers.insert(header::AUTHORIZATION, value);
            }
        }
        let pass = route
            .config
            .pass_identity_headers
            .unwrap_or(self.settings.pass_identity_headers);
        if let (true, Some(session)) = (pass, session) {
            let issuer = match self.settings.issuer_format {
                IssuerFormat::HostOnly => ctx.host.clone(),
                IssuerFormat::Uri => format!("https://{}/", ctx.host),
            };
            let token = self.signer.assertion(session, &ctx.host, &issuer);
            if let Ok(value) = HeaderValue::from_str(&token) {
                headers.insert("x-pomerium-jwt-assertion", value);
            }
        }
        Ok(headers)
    }

    async fn filter_response(
        &self,
        ctx: &RequestContext,
        route: &Arc<Route>,
        grant: &Grant,
        response: Response<Body>,
    ) -> Response<Body> {
        let Some(allowed) = grant.extensions.get::<Allowed>().cloned() else {
            return response;
        };
        // The rare paths are boxed: their futures are large, and every response would pay for
        // them otherwise.
        let response = if matches!(
            response.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            match Box::pin(self.upstream_challenge(ctx, route, allowed.session.as_ref(), response))
                .await
            {
                Ok(response) => response,
                Err(replaced) => return replaced,
            }
        } else {
            response
        };
        let response = if allowed.filter_tools {
            Box::pin(filter_tool_lists(ctx, route, &allowed, response)).await
        } else {
            response
        };
        let tool_calls: Vec<McpRequest> = allowed
            .calls
            .iter()
            .filter(|c| c.request.method == "tools/call")
            .map(|c| c.request.clone())
            .collect();
        if tool_calls.is_empty() {
            return response;
        }
        // The audit line is written when the response has been sent.
        let (audit, ctx, route_id, status) = (
            self.audit.clone(),
            ctx.clone(),
            route.id.clone(),
            response.status(),
        );
        let session = allowed.session.clone();
        let decision = allowed.decision.clone();
        let started = ctx.started;
        response.map(move |body| {
            let on_end = move |_bytes: u64, complete: bool| {
                for call in &tool_calls {
                    let mut event = AuditEvent::decision_for(
                        &ctx,
                        &route_id,
                        session.as_ref(),
                        Some(call),
                        &decision,
                        true,
                    );
                    event.status = Some(status.as_u16());
                    event.latency_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
                    event.complete = Some(complete);
                    audit.record(event);
                }
            };
            Observed::new(body, None, Box::new(on_end)).boxed()
        })
    }
}

/// Removes the tools the user may not call from every tool list in the response.
async fn filter_tool_lists(
    ctx: &RequestContext,
    route: &Route,
    allowed: &Allowed,
    response: Response<Body>,
) -> Response<Body> {
    let user = allowed.session.as_ref().map(Access::user_of);
    let policy = route.policy.clone();
    let may_call = move |tool: &str| {
        let request = McpRequest {
            method: "tools/call".into(),
            tool: Some(tool.to_owned()),
        };
        policy
            .evaluate(&Input {
                user: user.as_ref(),
                method: "POST",
                path: "",
                mcp: Some(&request),
            })
            .allowed
    };
    crate::tool_filter::filter_response(Arc::new(may_call), response, &ctx.request_id).await
}

/// CORS for browser-based MCP clients: any origin, no cookies (they use bearer tokens).
pub(crate) fn cors(headers: &mut HeaderMap) {
    headers.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    headers.insert(
        "access-control-expose-headers",
        HeaderValue::from_static(
            "mcp-session-id, mcp-protocol-version, www-authenticate, x-request-id",
        ),
    );
}

pub(crate) fn html(status: StatusCode, page: String) -> Response<Body> {
    let mut response = Response::new(full(page));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    // The pages are never framed (clickjacking a consent), and run no script but the portal's
    // one inline copy button.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "frame-ancestors 'none'; default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src * data:; base-uri 'none'",
        ),
    );
    // Not `no-referrer`: with it, browsers send `Origin: null` on the pages' own form posts.
    headers.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    response
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn json_error(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: &str,
) -> Response<Body> {
    json_response(
        status,
        &json!({"error": code, "message": message, "status": status.as_u16(), "request_id": request_id}),
    )
}

pub(crate) fn redirect_to(target: &str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(location) = HeaderValue::from_str(target) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn set_cookie(response: &mut Response<Body>, cookie: &str) {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
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
        Some(&TokenError::Revoked),
    )) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    cors(response.headers_mut());
    response
}

/// A redirect target on this gateway, or the portal.
fn safe_redirect(target: &str, ctx: &RequestContext) -> String {
    same_origin_target(target, &ctx.origin()).unwrap_or_else(|| "/.pomerium/".into())
}

/// `target` as a path on `origin`, if a browser told to go there would stay on `origin`. The
/// target is resolved as a browser resolves a `Location` (against the origin) and the result's
/// origin compared, so `//evil`, `/\evil` and `https:evil` are caught by what they mean, not by
/// their spelling; anything with whitespace, control characters or backslashes is refused
/// outright (browsers drop tabs and newlines, `/<TAB>/evil.example/` becomes `//evil.example/`).
pub(crate) fn same_origin_target(target: &str, origin: &str) -> Option<String> {
    if target.is_empty()
        || target
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        return None;
    }
    let base = url::Url::parse(origin).ok()?;
    let resolved = base.join(target).ok()?;
    if resolved.origin() != base.origin() {
        return None;
    }
    Some(resolved[url::Position::BeforePath..].to_owned())
}

pub(crate) fn form_value(form: &str, key: &str) -> Option<String> {
    url::form_urlencoded::parse(form.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

pub(crate) fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;
    use std::time::Duration;

    use super::AccessSettings;

    fn settings(yaml: &str) -> AccessSettings {
        let config = postern_config::parse(yaml, Path::new("."), &HashMap::new()).unwrap();
        AccessSettings::from_config(&config)
    }

    #[test]
    fn redirect_targets_resolve_as_a_browser_resolves_them() {
        let origin = "https://gw.example";
        for evil in [
            "/\t/evil.example/",
            "/\n/evil.example/",
            "//evil.example/",
            "/\\evil.example/",
            "\\\\evil.example",
            " //evil.example",
            "http:evil.example",
            "https://evil.example/",
            "https://gw.example.evil.example/",
            "http://gw.example/",
            "javascript:alert(1)",
            "data:text/html,x",
            "/a\u{2028}/b",
            "",
        ] {
            assert_eq!(super::same_origin_target(evil, origin), None, "{evil:?}");
        }
        for (fine, path) in [
            ("/tools", "/tools"),
            ("/tools/a?b=1#c", "/tools/a?b=1#c"),
            ("https://gw.example/x", "/x"),
            ("/a/../b", "/b"),
            ("/%09/x", "/%09/x"),
            // A browser reads a same-scheme URL without `//` as a relative path.
            ("https:evil.example", "/evil.example"),
        ] {
            assert_eq!(
                super::same_origin_target(fine, origin).as_deref(),
                Some(path),
                "{fine:?}"
            );
        }
    }

    #[test]
    fn access_token_lifetime_comes_from_the_config() {
        let default = settings("insecure_server: true\n");
        assert_eq!(default.access_token_ttl, Duration::from_secs(3600));
        let short = settings("insecure_server: true\nmcp_access_token_ttl: 5m\n");
        assert_eq!(short.access_token_ttl, Duration::from_secs(300));
    }
}
