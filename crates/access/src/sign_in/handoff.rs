//! Sessions handed from the sign-in origin to route hosts (`authenticate_service_url`).
//!
//! A route host never shows a sign-in form: its sign-in sends the browser to the sign-in origin
//! with the page to return to and a fresh `state`, bound to this browser by a cookie on the route
//! host. The sign-in origin signs the user in (or finds them signed in) and hands the session
//! back through a one-time code, valid for a minute and bound to that route host's origin and
//! that `state`. The route host redeems it only in the browser holding the binding cookie: a
//! code carried to another browser (to sign a victim in to the attacker's account) is refused.
//! Every host's cookie names the same session, so signing out anywhere ends it everywhere.

use http::{Request, Response, StatusCode};
use postern_gateway::body::Body;
use postern_gateway::hooks::RequestContext;
use postern_store::{PendingAuthorization, Session, hash_secret, now_ms};

use super::{SignIn, session};
use crate::web::pages;
use crate::web::reply::{encode, form_value, html, redirect_to, same_origin_target};
use crate::web::round_trip::{HANDOFF, Resume};

/// How long a handoff code may wait to be redeemed.
const HANDOFF_TTL_MS: i64 = 60_000;

/// A route host's page to return to after sign-in, as the sign-in origin checked it.
pub(crate) struct ReturnTo {
    /// The route host's origin.
    origin: String,
    /// The page on it (path and query).
    path: String,
}

impl SignIn {
    /// On a route host: off to the sign-in origin, which hands the session back here.
    pub(crate) fn start_handoff(
        &self,
        ctx: &RequestContext,
        sign_in_origin: &str,
        redirect: &str,
    ) -> Response<Body> {
        let Ok(state) = self.store.keyring().random_token(24) else {
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::message("Sign-in is unavailable", "No randomness available."),
            );
        };
        let back = format!(
            "{}{}",
            ctx.origin(),
            crate::web::reply::safe_redirect(redirect, ctx)
        );
        let mut response = redirect_to(&format!(
            "{sign_in_origin}/.pomerium/sign_in?redirect_uri={}&handoff={}",
            encode(&back),
            encode(&state)
        ));
        HANDOFF.set(&mut response, &state, self.settings.get().cookie.secure);
        response
    }

    /// On the sign-in origin: the route host page a handoff sign-in returns to, if `redirect`
    /// is one (an absolute URL on a host this gateway serves a route for, on the port this
    /// request came in on: nothing else gets a session handed to it).
    pub(crate) fn handoff_target(&self, ctx: &RequestContext, redirect: &str) -> Option<ReturnTo> {
        let url = url::Url::parse(redirect).ok()?;
        let secure = ctx.scheme == "https";
        let scheme_ok = url.scheme() == "https" || (!secure && url.scheme() == "http");
        let host = crate::web::safe_http::host_of(&url);
        if !scheme_ok
            || self.on_sign_in_origin(&host)
            || !ctx.runtime.routes.serves_host(&host)
            || url.port_or_known_default() != Some(ctx.port)
        {
            return None;
        }
        let origin = url.origin().ascii_serialization();
        let path = same_origin_target(redirect, &origin)?;
        Some(ReturnTo { origin, path })
    }

    /// On the sign-in origin, for a signed-in user: the one-time code that hands `session` to
    /// the route host, and the redirect that takes it there.
    pub(crate) async fn issue_handoff(
        &self,
        session: &Session,
        to: &ReturnTo,
        state: &str,
    ) -> Response<Body> {
        let Ok(code) = self.store.keyring().random_token(32) else {
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::message("Sign-in is unavailable", "No randomness available."),
            );
        };
        let pending = PendingAuthorization {
            user_id: session.user_id.clone(),
            session_id: session.id.clone(),
            route_id: String::new(),
            pkce_verifier: String::new(),
            resume: Resume::Handoff {
                redirect: to.path.clone(),
                origin: to.origin.clone(),
                binding: hash_secret(state),
            }
            .to_value(),
            expires_at: now_ms() + HANDOFF_TTL_MS,
        };
        if let Err(error) = self.store.put_pending(&code, &pending).await {
            tracing::error!(%error, "cannot save the session handoff");
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::message("Sign-in is unavailable", "Try again in a moment."),
            );
        }
        redirect_to(&format!(
            "{}/.pomerium/handoff?code={}&state={}",
            to.origin,
            encode(&code),
            encode(state)
        ))
    }

    /// `GET /.pomerium/handoff` on a route host: the session the sign-in origin hands over,
    /// taken in the browser that asked for it.
    pub(crate) async fn handoff(
        &self,
        ctx: &RequestContext,
        request: &Request<Body>,
    ) -> Response<Body> {
        let failed = |status, text: &str| {
            let mut response = html(status, pages::message("Sign-in failed", text));
            HANDOFF.clear(&mut response, self.settings.get().cookie.secure);
            response
        };
        if self.authenticate.is_none() {
            return html(
                StatusCode::NOT_FOUND,
                pages::message("Not found", "This gateway signs users in on every host."),
            );
        }
        let query = request.uri().query().unwrap_or("");
        let (Some(code), Some(state)) = (form_value(query, "code"), form_value(query, "state"))
        else {
            return failed(StatusCode::BAD_REQUEST, "The sign-in link lacks its code.");
        };
        // Checked before the code is spent, so another browser cannot burn it either.
        if !HANDOFF.matches(request.headers(), &state) {
            tracing::warn!(request_id = %ctx.request_id, client = %ctx.client_addr.ip(), "session handoff in a browser that did not ask for it");
            return failed(
                StatusCode::BAD_REQUEST,
                "This sign-in was started in another browser. Open the page you wanted again.",
            );
        }
        let resumed = match self.store.take_pending(&code).await {
            Ok(Some(pending)) => Resume::from_value(&pending.resume).map(|r| (r, pending)),
            Ok(None) => None,
            Err(error) => {
                tracing::error!(%error, "cannot read the session handoff");
                return failed(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Sign-in is unavailable right now; try again in a moment.",
                );
            }
        };
        let Some((
            Resume::Handoff {
                redirect,
                origin,
                binding,
            },
            pending,
        )) = resumed
        else {
            return failed(
                StatusCode::BAD_REQUEST,
                "This sign-in link is unknown, used or expired. Open the page you wanted again.",
            );
        };
        if origin != ctx.origin() || binding != hash_secret(&state) {
            tracing::warn!(request_id = %ctx.request_id, "session handoff for another host or browser");
            return failed(
                StatusCode::BAD_REQUEST,
                "This sign-in link is not for this page. Open the page you wanted again.",
            );
        }
        let alive = self
            .store
            .get_session(&pending.session_id)
            .await
            .ok()
            .flatten()
            .is_some();
        let sealed = alive
            .then(|| session::seal(&pending.session_id, self.store.keyring()))
            .flatten();
        let Some(sealed) = sealed else {
            return failed(
                StatusCode::UNAUTHORIZED,
                "Your sign-in has ended. Open the page you wanted again to sign in.",
            );
        };
        let mut response = self.settings.get().cookie.arrive(&redirect);
        self.settings.get().cookie.spec().set(
            &mut response,
            &sealed,
            self.settings.get().cookie.expire,
        );
        HANDOFF.clear(&mut response, self.settings.get().cookie.secure);
        response
    }

    /// Whether `host` is the sign-in origin's.
    pub(crate) fn on_sign_in_origin(&self, host: &str) -> bool {
        self.authenticate.as_ref().is_some_and(|a| a.host == host)
    }
}
