//! What every form and JSON body the gateway reads itself goes through: a size cap and a read
//! deadline (the gateway's own endpoints run before any route's body limit, and most of them
//! answer anonymous callers), and the cross-site checks for forms that change state.

use std::time::Duration;

use bytes::Bytes;
use cookie::SameSite;
use http::{HeaderMap, header};
use postern_gateway::body::{self, Body, ReadError};
use postern_store::Keyring;

use crate::web::cookies::CookieSpec;

/// Largest form or JSON body the gateway reads on its own endpoints.
pub const MAX_FORM_BYTES: usize = 64 * 1024;
/// How long a client may take to send such a body.
pub const BODY_DEADLINE: Duration = Duration::from_secs(10);
/// Longest email accepted (RFC 5321 allows 64 + 1 + 255 octets).
pub const MAX_EMAIL_BYTES: usize = 320;

/// Reads a form body of the gateway's own pages (64 KiB, 10 s).
pub async fn read_form(request: http::Request<Body>) -> Result<Bytes, ReadError> {
    let (parts, body) = request.into_parts();
    let declared = body::declared_length(&parts.headers);
    body::read_bounded(body, declared, MAX_FORM_BYTES, Some(BODY_DEADLINE)).await
}

/// Whether a state-changing form post comes from a page of this very origin, as far as the
/// browser tells: `Sec-Fetch-Site` (when sent) is `same-origin` (or `none`: typed or bookmarked),
/// and `Origin` (when sent) is this origin. Clients that send neither (scripts, old browsers)
/// pass this check; what a cross-site page can make a browser send does not.
pub fn same_origin_post(headers: &HeaderMap, origin: &str) -> Result<(), &'static str> {
    if let Some(site) = headers.get("sec-fetch-site")
        && !matches!(site.as_bytes(), b"same-origin" | b"none")
    {
        return Err("the form was sent from another site");
    }
    if let Some(sent) = headers.get(header::ORIGIN)
        && sent.as_bytes() != origin.as_bytes()
    {
        return Err("the form was sent from another origin");
    }
    Ok(())
}

/// Whether a form post was a person's click on a page of this origin: browsers that send
/// `Sec-Fetch-*` headers must say `same-origin`, `navigate` and `?1` (user activation). A script
/// on a page of this origin (a proxied app shares the origin) can submit a form, but not with
/// user activation, and its `fetch` is not a navigation.
pub fn user_activated_post(headers: &HeaderMap, origin: &str) -> Result<(), &'static str> {
    same_origin_post(headers, origin)?;
    if headers.contains_key("sec-fetch-site") {
        let is =
            |name: &str, value: &[u8]| headers.get(name).is_some_and(|v| v.as_bytes() == value);
        if !is("sec-fetch-site", b"same-origin") {
            return Err("the form was not sent from a page of this site");
        }
        if !is("sec-fetch-mode", b"navigate") || !is("sec-fetch-user", b"?1") {
            return Err("the form was not sent by a click");
        }
    }
    Ok(())
}

/// The cookie that carries a form's anti-forgery value.
pub const CSRF_COOKIE: &str = "_postern_csrf";
const CSRF_CONTEXT: &str = "form-csrf";

/// A fresh anti-forgery pair: the cookie value, and the form field that goes with it (the
/// cookie value sealed with the gateway's key, so a cookie planted by a sibling site cannot come
/// with a field that matches it unless the attacker fetched both from the gateway).
pub fn csrf_pair(keys: &Keyring) -> Option<(String, String)> {
    let value = keys.random_token(24).ok()?;
    let field = keys.seal(CSRF_CONTEXT, value.as_bytes()).ok()?;
    Some((value, field))
}

/// How long a form's anti-forgery pair stays valid (a page left open longer is shown again).
pub const CSRF_COOKIE_TTL: Duration = Duration::from_secs(3600);

/// The anti-forgery cookie (the sign-in page): `Strict`, since only this site's own pages post
/// the form it goes with.
pub fn csrf_cookie(secure: bool) -> CookieSpec {
    CookieSpec {
        name: CSRF_COOKIE.into(),
        path: "/.pomerium/",
        same_site: SameSite::Strict,
        secure,
        domain: None,
    }
}

/// Whether the form's `field` goes with the request's anti-forgery cookie.
pub fn csrf_matches(headers: &HeaderMap, field: Option<&str>, keys: &Keyring) -> bool {
    let Some(expected) = field.and_then(|f| keys.open(CSRF_CONTEXT, f).ok()) else {
        return false;
    };
    crate::web::cookies::values(headers, CSRF_COOKIE)
        .any(|value| postern_oauth::Secret::new(value).matches(&String::from_utf8_lossy(&expected)))
}

const SESSION_FORM_CONTEXT: &str = "session-form";

/// The anti-forgery field of a signed-in page's forms (sign-out, Connected apps): the session id
/// sealed with the gateway's key. Another site can neither read it (same-origin policy) nor
/// make one (it has no key), and it is good for this session only.
pub fn session_form_token(keys: &Keyring, session_id: &str) -> Option<String> {
    keys.seal(SESSION_FORM_CONTEXT, session_id.as_bytes()).ok()
}

/// Whether a posted `field` was made by [`session_form_token`] for this session.
pub fn session_form_token_matches(keys: &Keyring, field: Option<&str>, session_id: &str) -> bool {
    field
        .and_then(|f| keys.open(SESSION_FORM_CONTEXT, f).ok())
        .is_some_and(|sealed| {
            postern_oauth::Secret::new(session_id.to_owned())
                .matches(&String::from_utf8_lossy(&sealed))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    const HERE: &str = "https://gw.example";

    #[test]
    fn session_form_tokens_work_for_their_session_only() {
        let keys = Keyring::new(b"0123456789abcdef0123456789abcdef", &[]).unwrap();
        let token = session_form_token(&keys, "session-1").unwrap();
        assert!(session_form_token_matches(&keys, Some(&token), "session-1"));
        assert!(!session_form_token_matches(
            &keys,
            Some(&token),
            "session-2"
        ));
        assert!(!session_form_token_matches(&keys, None, "session-1"));
        assert!(!session_form_token_matches(
            &keys,
            Some("session-1"),
            "session-1"
        ));
        let other = Keyring::new(b"fedcba9876543210fedcba9876543210", &[]).unwrap();
        let forged = session_form_token(&other, "session-1").unwrap();
        assert!(!session_form_token_matches(
            &keys,
            Some(&forged),
            "session-1"
        ));
    }

    #[test]
    fn cross_site_posts_are_refused() {
        assert!(same_origin_post(&headers(&[]), HERE).is_ok());
        assert!(same_origin_post(&headers(&[("sec-fetch-site", "same-origin")]), HERE).is_ok());
        assert!(same_origin_post(&headers(&[("origin", "https://gw.example")]), HERE).is_ok());
        for refused in [
            headers(&[("sec-fetch-site", "cross-site")]),
            headers(&[("sec-fetch-site", "same-site")]),
            headers(&[("origin", "https://evil.example")]),
            headers(&[("origin", "null")]),
            headers(&[("origin", "https://gw.example.evil")]),
        ] {
            assert!(same_origin_post(&refused, HERE).is_err(), "{refused:?}");
        }
    }

    #[test]
    fn consent_needs_a_click_when_the_browser_can_say_so() {
        let click = [
            ("sec-fetch-site", "same-origin"),
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-user", "?1"),
            ("origin", "https://gw.example"),
        ];
        assert!(user_activated_post(&headers(&click), HERE).is_ok());
        assert!(
            user_activated_post(&headers(&[]), HERE).is_ok(),
            "no browser"
        );
        let scripted_submit = [
            ("sec-fetch-site", "same-origin"),
            ("sec-fetch-mode", "navigate"),
        ];
        let scripted_fetch = [
            ("sec-fetch-site", "same-origin"),
            ("sec-fetch-mode", "cors"),
        ];
        let typed = [
            ("sec-fetch-site", "none"),
            ("sec-fetch-mode", "navigate"),
            ("sec-fetch-user", "?1"),
        ];
        for refused in [&scripted_submit[..], &scripted_fetch[..], &typed[..]] {
            assert!(
                user_activated_post(&headers(refused), HERE).is_err(),
                "{refused:?}"
            );
        }
    }
}
