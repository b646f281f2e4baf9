//! Browser sessions: kept server-side in the store; the cookie carries only the session id,
//! sealed (encrypted and authenticated), `HttpOnly; SameSite=Lax`, and `Secure` unless the
//! gateway serves plain HTTP on localhost. (Sign-in guessing limits: `limiter`.)

use std::time::Duration;

use http::HeaderMap;
use postern_policy::User;
use postern_store::{Keyring, Session, Store};

/// Cookie settings.
#[derive(Clone, Debug)]
pub struct CookieSettings {
    /// Cookie name.
    pub name: String,
    /// Session lifetime.
    pub expire: Duration,
    /// Whether the cookie may only travel over HTTPS.
    pub secure: bool,
}

/// The values of the cookies named `name` in a request's `Cookie` headers (a browser may send
/// several, set for different paths or domains).
pub fn cookies<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(move |(n, _)| *n == name)
        .map(|(_, value)| value)
}

/// The session id inside a request's cookie, if the cookie is present and authentic.
pub fn session_id(
    headers: &HeaderMap,
    settings: &CookieSettings,
    keys: &Keyring,
) -> Option<String> {
    let sealed = cookies(headers, &settings.name).next()?;
    let id = keys.open("session-cookie", sealed).ok()?;
    String::from_utf8(id).ok()
}

/// The signed-in session of a request.
pub async fn current(
    headers: &HeaderMap,
    settings: &CookieSettings,
    store: &Store,
) -> Option<Session> {
    let id = session_id(headers, settings, store.keyring())?;
    store.get_session(&id).await.ok().flatten()
}

/// `Set-Cookie` for a new session; `None` (logged) when the id cannot be sealed, never a cookie
/// with an empty value.
pub fn cookie_for(session_id: &str, settings: &CookieSettings, keys: &Keyring) -> Option<String> {
    let sealed = keys
        .seal("session-cookie", session_id.as_bytes())
        .inspect_err(|error| tracing::error!(%error, "cannot seal the session cookie"))
        .ok()?;
    Some(format!(
        "{}={sealed}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{}",
        settings.name,
        settings.expire.as_secs(),
        if settings.secure { "; Secure" } else { "" }
    ))
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie(settings: &CookieSettings) -> String {
    format!(
        "{}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax{}",
        settings.name,
        if settings.secure { "; Secure" } else { "" }
    )
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
