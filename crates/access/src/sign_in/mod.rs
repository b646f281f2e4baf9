//! Signing users in and out: the local users' form (with its anti-forgery pair and guessing
//! limits), OpenID Connect or GitHub, and the browser sessions they start.

pub mod github;
mod handoff;
pub mod oidc;
pub mod provider;
pub mod session;
pub mod users;

use std::sync::Arc;

use arc_swap::ArcSwap;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use postern_config::defaults::AuthenticateService;
use postern_gateway::body::Body;
use postern_gateway::hooks::RequestContext;
use postern_store::{PendingAuthorization, Session, Store, now_ms};

use crate::enforcement::audit::{Audit, IdentityEvent};
use crate::settings::Live;
use crate::sign_in::github::GitHub;
use crate::sign_in::oidc::Oidc;
use crate::sign_in::provider::IdentityProvider;
use crate::sign_in::users::{LocalUser, LocalUsers};
use crate::web::limiter::SignInLimiter;
use crate::web::pages;
use crate::web::reply::{form_value, html, redirect_to, safe_redirect};
use crate::web::round_trip::{OIDC_SIGN_IN, ROUND_TRIP_TTL_MS, Resume};

/// A sign-in form as posted.
struct Posted {
    headers: http::HeaderMap,
    email: String,
    password: String,
    redirect: String,
}

/// The sign-in service: owns the local users, the password-check slots, the guessing limits and
/// the identity provider.
pub struct SignIn {
    store: Store,
    /// The settings in force (the cookie's follow reloads).
    settings: Live,
    /// The local users in force: `users_file` is read again on reload.
    users: Arc<ArcSwap<LocalUsers>>,
    /// Password checks at once (argon2id takes 19 MiB and tens of ms of CPU each).
    password_checks: Arc<tokio::sync::Semaphore>,
    limiter: SignInLimiter,
    /// The identity provider (OpenID Connect or GitHub), if one is configured.
    idp: Option<Arc<IdentityProvider>>,
    /// Where sign-ins, failed ones and rate-limit hits are recorded.
    pub(crate) audit: Audit,
    /// `authenticate_service_url`: sign-in happens there, route hosts get the session handed.
    authenticate: Option<AuthenticateService>,
    /// The email the sign-in form starts with (`postern up`'s generated user).
    email_hint: Option<String>,
}

impl SignIn {
    /// Signs `users` in, sessions kept in `store`.
    pub fn new(store: Store, users: LocalUsers, settings: Live) -> Self {
        Self {
            store,
            settings,
            users: Arc::new(ArcSwap::from_pointee(users)),
            password_checks: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            limiter: SignInLimiter::default(),
            idp: None,
            authenticate: None,
            email_hint: None,
            audit: Audit::new(None, None),
        }
    }

    /// Starts the sign-in form with `email` filled in.
    pub fn with_email_hint(mut self, email: Option<String>) -> Self {
        self.email_hint = email;
        self
    }

    /// The identity provider, if any (the authorization server asks it about grants' users).
    pub(crate) fn identity_provider(&self) -> Option<Arc<IdentityProvider>> {
        self.idp.clone()
    }

    /// The local users (the authorization server checks grants against them at refresh).
    pub(crate) fn users(&self) -> Arc<ArcSwap<LocalUsers>> {
        self.users.clone()
    }

    /// Signs users in on the dedicated sign-in origin `service`, handing sessions to route hosts.
    pub fn with_authenticate(mut self, service: Option<AuthenticateService>) -> Self {
        self.authenticate = service;
        self
    }

    /// Puts a new list of local users in force (a reload read `users_file` again): sign-ins from
    /// now on check it.
    pub(crate) fn set_users(&self, users: LocalUsers) {
        self.users.store(Arc::new(users));
    }

    /// Signs users in with an OpenID Connect provider (local users may still post the form).
    pub fn with_oidc(mut self, oidc: Oidc) -> Self {
        self.idp = Some(Arc::new(IdentityProvider::Oidc(oidc)));
        self
    }

    /// Signs users in with GitHub (local users may still post the form).
    pub fn with_github(mut self, github: GitHub) -> Self {
        self.idp = Some(Arc::new(IdentityProvider::GitHub(github)));
        self
    }

    /// The local user with this email and password. The check runs on the blocking pool, so a
    /// sign-in never stalls the proxy's worker threads, and at most one per core runs at once,
    /// so a burst of sign-ins cannot take 19 MiB each without bound.
    async fn check_password(&self, email: &str, password: &str) -> Option<LocalUser> {
        let _permit = self.password_checks.acquire().await.ok()?;
        let users = self.users.load_full();
        let (email, password) = (email.to_owned(), password.to_owned());
        tokio::task::spawn_blocking(move || users.verify(&email, &password).cloned())
            .await
            .ok()
            .flatten()
    }

    /// Sends the browser to the provider; the sign-in is bound to this browser by a cookie.
    async fn start_oidc(
        &self,
        oidc: &IdentityProvider,
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
            route_id: String::new(),
            pkce_verifier: verifier.clone(),
            resume: Resume::SignIn {
                nonce: nonce.clone(),
                redirect: safe_redirect(redirect, ctx),
                origin: ctx.origin(),
            }
            .to_value(),
            expires_at: now_ms() + ROUND_TRIP_TTL_MS,
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
                OIDC_SIGN_IN.set(&mut response, &state, self.settings.get().cookie.secure);
                response
            }
            Err(error) => {
                tracing::error!(%error, idp = oidc.name(), "sign-in could not start");
                html(
                    StatusCode::BAD_GATEWAY,
                    pages::message("Sign-in is unavailable", &error.to_string()),
                )
            }
        }
    }

    /// The sign-in the provider's answer resumes: its code, and the PKCE verifier, nonce,
    /// return target and origin kept under its `state`, if this browser started it (checked
    /// before the sign-in is consumed, so a foreign browser cannot burn it).
    async fn resumed_sign_in(
        &self,
        ctx: &RequestContext,
        request: &Request<Body>,
    ) -> Result<(String, String, String, String, String), Response<Body>> {
        let failed = |status, text: &str| html(status, pages::message("Sign-in failed", text));
        let query = request.uri().query().unwrap_or("");
        if let Some(error) = form_value(query, "error") {
            let detail = form_value(query, "error_description").unwrap_or_default();
            return Err(failed(
                StatusCode::UNAUTHORIZED,
                &format!("The identity provider answered {error}: {detail}"),
            ));
        }
        let (Some(code), Some(state)) = (form_value(query, "code"), form_value(query, "state"))
        else {
            return Err(failed(
                StatusCode::BAD_REQUEST,
                "The provider's answer lacks code or state.",
            ));
        };
        if !OIDC_SIGN_IN.matches(request.headers(), &state) {
            tracing::warn!(request_id = %ctx.request_id, "OIDC callback from a browser that did not start the sign-in");
            return Err(failed(
                StatusCode::BAD_REQUEST,
                "This sign-in was started in another browser. Start again here.",
            ));
        }
        let pending = self.store.take_pending(&state).await;
        match pending
            .ok()
            .flatten()
            .map(|p| (Resume::from_value(&p.resume), p))
        {
            Some((
                Some(Resume::SignIn {
                    nonce,
                    redirect,
                    origin,
                }),
                p,
            )) => Ok((code, p.pkce_verifier, nonce, redirect, origin)),
            _ => Err(failed(
                StatusCode::BAD_REQUEST,
                "This sign-in is unknown or expired. Start again.",
            )),
        }
    }

    /// The provider sends the browser back here with the code.
    pub(crate) async fn oidc_callback(
        &self,
        ctx: &RequestContext,
        request: &Request<Body>,
    ) -> Response<Body> {
        let Some(oidc) = &self.idp else {
            return html(
                StatusCode::NOT_FOUND,
                pages::message("Not found", "No identity provider is configured."),
            );
        };
        let (code, verifier, nonce, redirect, origin) =
            match self.resumed_sign_in(ctx, request).await {
                Ok(resumed) => resumed,
                Err(response) => return response,
            };
        let callback = format!("{origin}/.pomerium/callback");
        let identity = match oidc.finish(&code, &callback, &verifier, &nonce).await {
            Ok(identity) => identity,
            Err(error) => {
                tracing::warn!(request_id = %ctx.request_id, %error, idp = oidc.name(), "sign-in refused");
                ctx.metrics.sign_in("failed");
                self.audit.event(
                    IdentityEvent::new("sign_in_failed", ctx)
                        .reason(format!("{}: {error}", oidc.name())),
                );
                return html(
                    StatusCode::UNAUTHORIZED,
                    pages::message("Sign-in failed", &error.to_string()),
                );
            }
        };
        if let Some(current) =
            session::current(request.headers(), &self.settings.get().cookie, &self.store)
                .await
                .filter(|c| c.user_id != identity.subject)
        {
            return html(
                StatusCode::CONFLICT,
                pages::signed_in_as_other(&current.email),
            );
        }
        let idp_refresh = identity.refresh_token.clone();
        let cookie = match self
            .start_session_keeping(
                ctx,
                Session {
                    user_id: identity.subject,
                    email: identity.email,
                    name: identity.name,
                    groups: identity.groups,
                    claims: identity.claims,
                    idp: oidc.name().into(),
                    ..Session::default()
                },
                idp_refresh.as_ref(),
            )
            .await
        {
            Ok(cookie) => cookie,
            Err(reason) => {
                return html(
                    StatusCode::SERVICE_UNAVAILABLE,
                    pages::message(
                        "Sign-in failed",
                        &format!(
                            "Sign-in is unavailable right now ({reason}); try again in a moment."
                        ),
                    ),
                );
            }
        };
        let mut response = self.settings.get().cookie.arrive(&redirect);
        self.settings.get().cookie.spec().set(
            &mut response,
            &cookie,
            self.settings.get().cookie.expire,
        );
        OIDC_SIGN_IN.clear(&mut response, self.settings.get().cookie.secure);
        response
    }

    /// The sign-in page with a fresh anti-forgery pair (the field in the form, the cookie
    /// beside it), with `status` and an optional error.
    fn sign_in_page(
        &self,
        ctx: &RequestContext,
        status: StatusCode,
        redirect: &str,
        error: Option<&str>,
    ) -> Response<Body> {
        let Some((cookie, field)) = crate::web::forms::csrf_pair(self.store.keyring()) else {
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::message("Sign-in is unavailable", "No randomness available."),
            );
        };
        let site = pages::Site {
            host: &ctx.origin(),
            email: self.email_hint.as_deref(),
        };
        let mut response = html(status, pages::sign_in(&site, redirect, &field, error));
        crate::web::forms::csrf_cookie(self.settings.get().cookie.secure).set(
            &mut response,
            &cookie,
            crate::web::forms::CSRF_COOKIE_TTL,
        );
        response
    }

    /// `GET /.pomerium/sign_in` shows the form (or goes to the identity provider); `POST` signs
    /// a local user in. The post must come from this site's own form: no cross-site `Origin` or
    /// `Sec-Fetch-Site`, and the anti-forgery field that goes with this browser's cookie (a
    /// forged sign-in would put the victim's browser in the attacker's account, and what the
    /// victim connects next, e.g. an upstream account, would be stored under the attacker).
    pub(crate) async fn sign_in_form(
        &self,
        ctx: &RequestContext,
        request: Request<Body>,
    ) -> Response<Body> {
        let query = request.uri().query().unwrap_or("").to_owned();
        let mut redirect =
            form_value(&query, "redirect_uri").unwrap_or_else(|| "/.pomerium/".into());
        if let Some(service) = &self.authenticate {
            if !self.on_sign_in_origin(&ctx.host) {
                // A route host has no sign-in form: the sign-in origin hands the session back.
                if request.method() == Method::POST {
                    return html(
                        StatusCode::NOT_FOUND,
                        pages::message(
                            "Sign in elsewhere",
                            &format!("Sign-in happens at {}.", service.origin),
                        ),
                    );
                }
                return self.start_handoff(ctx, &service.origin, &redirect);
            }
            if request.method() != Method::POST
                && let Some(state) = form_value(&query, "handoff")
                && let Some(to) = self.handoff_target(ctx, &redirect)
            {
                if let Some(session) =
                    session::current(request.headers(), &self.settings.get().cookie, &self.store)
                        .await
                {
                    return self.issue_handoff(&session, &to, &state).await;
                }
                // Sign in here first, then back to this request, which hands the session over.
                redirect = format!("/.pomerium/sign_in?{query}");
            }
        }
        if request.method() != Method::POST {
            if let Some(oidc) = &self.idp {
                return self.start_oidc(oidc, ctx, &redirect).await;
            }
            return self.sign_in_page(ctx, StatusCode::OK, &redirect, None);
        }
        let posted = match self.read_posted(ctx, request, redirect).await {
            Ok(posted) => posted,
            Err(response) => return response,
        };
        let Posted {
            headers,
            email,
            password,
            redirect,
        } = posted;
        // Signing in over another user's session would silently switch accounts under the
        // pages and clients of the first one.
        let current = session::current(&headers, &self.settings.get().cookie, &self.store).await;
        if let Some(current) = current
            .as_ref()
            .filter(|c| !c.email.eq_ignore_ascii_case(&email))
        {
            return html(
                StatusCode::CONFLICT,
                pages::signed_in_as_other(&current.email),
            );
        }
        let user = match self
            .check_credentials(ctx, &email, &password, &redirect)
            .await
        {
            Ok(user) => user,
            Err(response) => return response,
        };
        let email = user.email.to_ascii_lowercase();
        // `claim/name` for local users: their display name, once at sign-in (the policy finds
        // `email`, `groups` and `sub` in the session's own fields).
        let mut claims = user.claims;
        if !user.name.is_empty() {
            claims
                .entry("name")
                .or_insert_with(|| serde_json::Value::String(user.name.clone()));
        }
        let cookie = match self
            .start_session(
                ctx,
                Session {
                    user_id: email.clone(),
                    email,
                    name: user.name,
                    groups: user.groups,
                    claims,
                    idp: "local".into(),
                    ..Session::default()
                },
            )
            .await
        {
            Ok(cookie) => cookie,
            Err(reason) => {
                return self.sign_in_page(
                    ctx,
                    StatusCode::SERVICE_UNAVAILABLE,
                    &redirect,
                    Some(&format!(
                        "Sign-in is unavailable right now ({reason}); try again in a moment."
                    )),
                );
            }
        };
        let target = safe_redirect(&redirect, ctx);
        let mut response = redirect_to(&target);
        self.settings.get().cookie.spec().set(
            &mut response,
            &cookie,
            self.settings.get().cookie.expire,
        );
        response
    }

    /// The posted sign-in form, if it came from this site's own form: no cross-site `Origin` or
    /// `Sec-Fetch-Site`, within the size and time limits, with the anti-forgery field that goes
    /// with this browser's cookie, and an email and password of sane length.
    async fn read_posted(
        &self,
        ctx: &RequestContext,
        request: Request<Body>,
        redirect: String,
    ) -> Result<Posted, Response<Body>> {
        if let Err(why) = crate::web::forms::same_origin_post(request.headers(), &ctx.origin()) {
            tracing::warn!(request_id = %ctx.request_id, client = %ctx.client_addr.ip(), why, "cross-site sign-in refused");
            return Err(self.sign_in_page(
                ctx,
                StatusCode::FORBIDDEN,
                &redirect,
                Some(
                    "This sign-in came from another site, so it was refused. Sign in here instead.",
                ),
            ));
        }
        let headers = request.headers().clone();
        let body = match crate::web::forms::read_form(request).await {
            Ok(body) => body,
            Err(error) => {
                return Err(self.sign_in_page(
                    ctx,
                    error.status(),
                    &redirect,
                    Some(&format!("The form could not be read: {error}.")),
                ));
            }
        };
        let form = String::from_utf8_lossy(&body).into_owned();
        let redirect = form_value(&form, "redirect_uri").unwrap_or(redirect);
        if !crate::web::forms::csrf_matches(
            &headers,
            form_value(&form, "csrf_token").as_deref(),
            self.store.keyring(),
        ) {
            return Err(self.sign_in_page(
                ctx,
                StatusCode::FORBIDDEN,
                &redirect,
                Some(
                    "This sign-in form has expired or was not sent from this site. Sign in again.",
                ),
            ));
        }
        let email = form_value(&form, "email").unwrap_or_default();
        let password = form_value(&form, "password").unwrap_or_default();
        if email.len() > crate::web::forms::MAX_EMAIL_BYTES || password.len() > 1024 {
            return Err(self.sign_in_page(
                ctx,
                StatusCode::BAD_REQUEST,
                &redirect,
                Some("Wrong email or password."),
            ));
        }
        Ok(Posted {
            headers,
            email,
            password,
            redirect,
        })
    }

    /// The local user, if the password is right: the attempt is reserved first (guessing
    /// limits), delayed when the account has recent failures, and recorded.
    async fn check_credentials(
        &self,
        ctx: &RequestContext,
        email: &str,
        password: &str,
        redirect: &str,
    ) -> Result<LocalUser, Response<Body>> {
        let address = ctx.client_addr.ip();
        let attempt = match self.limiter.reserve(email, address) {
            Ok(attempt) => attempt,
            Err(refused) => {
                tracing::warn!(request_id = %ctx.request_id, client = %address, "sign-in rate limited");
                ctx.metrics.rate_limit_hit("sign_in");
                self.audit
                    .event(IdentityEvent::new("sign_in_rate_limited", ctx).user(email));
                let mut response = self.sign_in_page(
                ctx,
                    StatusCode::TOO_MANY_REQUESTS,
                    redirect,
                    Some(&format!(
                        "Too many failed attempts from your address. Wait {} seconds, then try again.",
                        refused.retry_after.as_secs()
                    )),
                );
                if let Ok(value) = HeaderValue::from_str(&refused.retry_after.as_secs().to_string())
                {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                return Err(response);
            }
        };
        if !attempt.delay.is_zero() {
            tokio::time::sleep(attempt.delay).await;
        }
        let Some(user) = self.check_password(email, password).await else {
            attempt.failed();
            // What was typed, capped and escaped: a guess at a name, or a password typed in
            // the wrong box; the file is readable by the gateway's user only.
            ctx.metrics.sign_in("failed");
            self.audit.event(
                IdentityEvent::new("sign_in_failed", ctx)
                    .user(email)
                    .reason("wrong email or password"),
            );
            return Err(self.sign_in_page(
                ctx,
                StatusCode::UNAUTHORIZED,
                redirect,
                Some("Wrong email or password."),
            ));
        };
        attempt.succeeded();
        Ok(user)
    }

    /// Stores a new session for the user described by `session` (its id and times are set
    /// here) and records the sign-in; the sealed cookie value that carries it, or why it could
    /// not be stored (the store or the random source failed), as a user may be told.
    async fn start_session(
        &self,
        ctx: &RequestContext,
        session: Session,
    ) -> Result<String, &'static str> {
        self.start_session_keeping(ctx, session, None).await
    }

    /// [`Self::start_session`], keeping the identity provider's refresh token of the sign-in
    /// with the session (for the grants authorized from it).
    async fn start_session_keeping(
        &self,
        ctx: &RequestContext,
        mut session: Session,
        idp_refresh: Option<&postern_oauth::Secret>,
    ) -> Result<String, &'static str> {
        let now = now_ms();
        session.id = match self.store.keyring().random_token(24) {
            Ok(id) => id,
            Err(error) => {
                tracing::error!(%error, "cannot make a session id");
                return Err(error.public_reason());
            }
        };
        session.created_at = now;
        session.expires_at = now + self.settings.get().cookie.expire.as_millis() as i64;
        // Kept first: a session whose grants could not be re-checked with the provider is not
        // started at all.
        if let Some(token) = idp_refresh
            && let Err(error) = self
                .store
                .put_idp_refresh_token(&session.id, token.expose(), session.expires_at)
                .await
        {
            tracing::error!(%error, "cannot keep the identity provider's refresh token");
            return Err(error.public_reason());
        }
        if let Err(error) = self.store.put_session(&session).await {
            tracing::error!(%error, "cannot save the session");
            return Err(error.public_reason());
        }
        ctx.metrics.sign_in("ok");
        self.audit.event(
            IdentityEvent::new("sign_in", ctx)
                .user(&session.email)
                .reason(format!("idp={}", session.idp)),
        );
        session::seal(&session.id, self.store.keyring()).ok_or("the gateway cannot seal a session")
    }

    /// `/.pomerium/sign_out`: GET shows a page with the sign-out button (a link or image on
    /// another site ends nothing); a POST from a page of this site, with the session's form
    /// token, ends this browser's session. Client grants keep working: the page says how many
    /// and where to revoke them. `redirect_uri` is honoured on this origin only.
    pub(crate) async fn sign_out(
        &self,
        ctx: &RequestContext,
        request: Request<Body>,
    ) -> Response<Body> {
        let keys = self.store.keyring();
        let session =
            session::current(request.headers(), &self.settings.get().cookie, &self.store).await;
        let query_redirect = request
            .uri()
            .query()
            .and_then(|q| form_value(q, "redirect_uri"));
        if request.method() != Method::POST {
            let csrf = session
                .as_ref()
                .and_then(|s| crate::web::forms::session_form_token(keys, &s.id));
            let mut response = html(
                StatusCode::OK,
                pages::sign_out(
                    session.as_ref().map(|s| s.email.as_str()),
                    csrf.as_deref(),
                    query_redirect.as_deref(),
                ),
            );
            if session.is_none() {
                // A stale or forged cookie is cleared; nothing is ended.
                self.settings.get().cookie.spec().clear(&mut response);
            }
            return response;
        }
        if let Err(why) = crate::web::forms::same_origin_post(request.headers(), &ctx.origin()) {
            tracing::warn!(request_id = %ctx.request_id, client = %ctx.client_addr.ip(), why, "cross-site sign-out refused");
            return html(
                StatusCode::FORBIDDEN,
                pages::message(
                    "Not signed out",
                    "This sign-out came from another site, so nothing was ended. Open /.pomerium/sign_out on this site to sign out.",
                ),
            );
        }
        let body = match crate::web::forms::read_form(request).await {
            Ok(body) => body,
            Err(error) => {
                return html(
                    error.status(),
                    pages::message(
                        "Not signed out",
                        &format!("The form could not be read: {error}."),
                    ),
                );
            }
        };
        let form = String::from_utf8_lossy(&body).into_owned();
        let target = form_value(&form, "redirect_uri")
            .or(query_redirect)
            .map(|r| safe_redirect(&r, ctx));
        let apps = match &session {
            None => None,
            Some(session) => {
                if !crate::web::forms::session_form_token_matches(
                    keys,
                    form_value(&form, "csrf_token").as_deref(),
                    &session.id,
                ) {
                    tracing::warn!(request_id = %ctx.request_id, user = %session.email, "sign-out without this session's form token refused");
                    return html(
                        StatusCode::FORBIDDEN,
                        pages::message(
                            "Not signed out",
                            "This sign-out form is not from this session, so nothing was ended. Open /.pomerium/sign_out and use its button.",
                        ),
                    );
                }
                if let Err(error) = self.store.end_session(&session.id).await {
                    tracing::error!(%error, "cannot end the session");
                    return html(
                        StatusCode::SERVICE_UNAVAILABLE,
                        pages::message(
                            "Not signed out",
                            "The gateway's store is unavailable, so the session could not be ended; try again.",
                        ),
                    );
                }
                tracing::info!(target: "postern::audit", event = "sign_out", user = %session.email, session = %session.id, "signed out");
                Some(
                    self.store
                        .user_grants(&session.user_id)
                        .await
                        .map_or(0, |g| g.len()),
                )
            }
        };
        let mut response = match target {
            Some(target) => redirect_to(&target),
            None => html(StatusCode::OK, pages::signed_out(apps)),
        };
        self.settings.get().cookie.spec().clear(&mut response);
        response
    }
}
