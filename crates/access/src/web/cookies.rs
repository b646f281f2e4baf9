//! The gateway's own cookies, written and read with the `cookie` crate: one [`CookieSpec`] per
//! cookie (name, path, `SameSite`, `Secure`), so every cookie the gateway sets is `HttpOnly` and
//! the attributes of a cookie are stated once, where it is defined.

use cookie::time::Duration;
use cookie::{Cookie, SameSite};
use http::Response;
use http::header::{self, HeaderMap, HeaderValue};
use postern_gateway::body::Body;

/// One cookie the gateway sets.
#[derive(Clone, Debug)]
pub struct CookieSpec {
    /// The cookie's name.
    pub name: String,
    /// The path the browser sends it on.
    pub path: &'static str,
    /// `Lax` for cookies a top-level navigation from another site must carry (a provider's
    /// redirect back, a link into an app), `Strict` for those only this site's pages use.
    pub same_site: SameSite,
    /// Whether the cookie may only travel over HTTPS.
    pub secure: bool,
    /// `Domain`: the session cookie with `cookie_domain`; `None` (every other cookie):
    /// host-only.
    pub domain: Option<String>,
}

impl CookieSpec {
    /// Sets the cookie to `value` for `max_age` on `response`.
    pub fn set(&self, response: &mut Response<Body>, value: &str, max_age: std::time::Duration) {
        let seconds = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
        self.append(response, value, Duration::seconds(seconds));
    }

    /// Removes the cookie from the browser that gets `response`.
    pub fn clear(&self, response: &mut Response<Body>) {
        self.append(response, "", Duration::ZERO);
    }

    fn append(&self, response: &mut Response<Body>, value: &str, max_age: Duration) {
        let mut cookie = Cookie::build((self.name.as_str(), value))
            .path(self.path)
            .max_age(max_age)
            .http_only(true)
            .same_site(self.same_site)
            .secure(self.secure)
            .build();
        if let Some(domain) = &self.domain {
            cookie.set_domain(domain.clone());
        }
        // A value outside the cookie grammar would fail here; the gateway's values are base64url
        // or hex, so this drops nothing in practice and never sets a malformed header.
        if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
}

/// The values of the cookies named `name` in a request's `Cookie` headers.
pub fn values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .filter(move |cookie| cookie.name_raw() == Some(name))
        .filter_map(|cookie| cookie.value_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(same_site: SameSite, secure: bool) -> CookieSpec {
        CookieSpec {
            name: "_postern_x".into(),
            path: "/.pomerium/",
            same_site,
            secure,
            domain: None,
        }
    }

    fn set_cookie(response: &Response<Body>) -> Vec<String> {
        response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn every_cookie_is_http_only_with_its_own_attributes() {
        let mut response = Response::new(postern_gateway::body::empty());
        spec(SameSite::Strict, true).set(
            &mut response,
            "abc",
            std::time::Duration::from_secs(3600),
        );
        spec(SameSite::Lax, false).clear(&mut response);
        let set = set_cookie(&response);
        let attributes = |line: &str| {
            let mut parts: Vec<String> = line.split("; ").map(str::to_owned).collect();
            parts.sort();
            parts
        };
        assert_eq!(
            attributes(&set[0]),
            attributes(
                "_postern_x=abc; HttpOnly; SameSite=Strict; Secure; Path=/.pomerium/; Max-Age=3600"
            )
        );
        assert_eq!(
            attributes(&set[1]),
            attributes("_postern_x=; HttpOnly; SameSite=Lax; Path=/.pomerium/; Max-Age=0")
        );
    }

    #[test]
    fn values_are_read_from_every_cookie_header_and_only_under_their_exact_name() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; _postern_x=first; _postern_xy=no"),
        );
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("_postern_x=second;_POSTERN_X=no"),
        );
        headers.append(header::COOKIE, HeaderValue::from_static("garbage; =x; ;"));
        assert_eq!(
            values(&headers, "_postern_x").collect::<Vec<_>>(),
            ["first", "second"]
        );
        assert_eq!(values(&headers, "a").collect::<Vec<_>>(), ["1"]);
        assert_eq!(values(&headers, "missing").count(), 0);
    }
}
