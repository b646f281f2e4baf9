//! Browser sessions: kept server-side in the store; the cookie carries only the session id,
//! sealed (encrypted and authenticated), `HttpOnly; SameSite=Lax`, and `Secure` unless the
//! gateway serves plain HTTP on localhost. (Sign-in guessing limits: `limiter`.)

use std::time::Duration;

use cookie::SameSite;
use http::HeaderMap;
use postern_policy::User;
use postern_store::{Keyring, Session, Store};

use crate::web::cookies::CookieSpec;

/// Cookie settings.
#[derive(Clone, Debug)]
pub struct CookieSettings {
    /// Cookie name.
    pub name: String,
    /// Session lifetime.
    pub expire: Duration,
    /// Whether the cookie may only travel over HTTPS.
    pub secure: bool,
    /// `cookie_same_site` (default `Lax`).
    pub same_site: SameSite,
    /// `cookie_domain`: `None` for a host-only cookie.
    pub domain: Option<String>,
}

/// The session id inside a request's cookie, if the cookie is present and authentic.
pub fn session_id(
    headers: &HeaderMap,
    settings: &CookieSettings,
    keys: &Keyring,
) -> Option<String> {
    let sealed = crate::web::cookies::values(headers, &settings.name).next()?;
    let id = keys.open("session-cookie", sealed).ok()?;
    String::from_utf8(id).ok()
}

/// The signed-in session of a request.
pub async fn current(
    headers: &HeaderMap,
    settings: &CookieSettings,
    store: &Store,
) -> Option<Session> {
    lookup(headers, settings, store).await.ok().flatten()
}

/// As [`current`], but a store that cannot answer is an error, not "signed out": the proxy path
/// answers 503 then, instead of sending a signed-in user to a sign-in that cannot work either.
pub(crate) async fn lookup(
    headers: &HeaderMap,
    settings: &CookieSettings,
    store: &Store,
) -> Result<Option<Session>, postern_store::StoreError> {
    let Some(id) = session_id(headers, settings, store.keyring()) else {
        return Ok(None);
    };
    store.get_session(&id).await
}

/// The session id sealed for its cookie; `None` (logged) when it cannot be sealed, never a
/// cookie with an empty value.
pub(crate) fn seal(session_id: &str, keys: &Keyring) -> Option<String> {
    keys.seal("session-cookie", session_id.as_bytes())
        .inspect_err(|error| tracing::error!(%error, "cannot seal the session cookie"))
        .ok()
}

impl CookieSettings {
    /// The session cookie: on every path (a session signs the user in to every route), `Lax`
    /// by default so a link from another site into an app arrives signed in.
    pub(crate) fn spec(&self) -> CookieSpec {
        CookieSpec {
            name: self.name.clone(),
            path: "/",
            same_site: self.same_site,
            secure: self.secure,
            domain: self.domain.clone(),
        }
    }

    /// Whether the browser would drop the session cookie on a navigation another site started
    /// (`SameSite=Strict`): the end of a trip through another site then continues with a page
    /// of this site instead of a redirect.
    pub(crate) fn strict(&self) -> bool {
        self.same_site == SameSite::Strict
    }

    /// The answer that takes a browser just signed in at the end of a trip through another site
    /// on to `target` (a path on this site): a redirect, or with a strict cookie a page of this
    /// site that goes on (see [`pages::continue_to`](crate::web::pages::continue_to)).
    pub(crate) fn arrive(&self, target: &str) -> http::Response<postern_gateway::body::Body> {
        if self.strict() {
            crate::web::reply::html(http::StatusCode::OK, crate::web::pages::continue_to(target))
        } else {
            crate::web::reply::redirect_to(target)
        }
    }
}

/// The user as the policy sees them (`claim/email`, `claim/groups` and `claim/sub` fall back
/// to these fields in the policy itself, so nothing is copied per request for them).
pub fn user_of(session: &Session) -> User {
    let claims = session.claims.clone();
    User {
        id: session.user_id.clone(),
        email: session.email.clone(),
        groups: session.groups.clone(),
        claims,
    }
}
