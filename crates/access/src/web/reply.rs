//! Building the gateway's own responses: pages, JSON, redirects, cookies and CORS, and the
//! checks every redirect target goes through.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use postern_gateway::body::{Body, full};
use postern_gateway::hooks::RequestContext;
use serde_json::{Value, json};

/// CORS for browser-based MCP clients: any origin, no cookies (they use bearer tokens). An
/// upstream's own `Access-Control-Allow-Credentials` is removed: with it, a browser would send
/// cookies along.
pub(crate) fn cors(headers: &mut HeaderMap) {
    headers.remove("access-control-allow-credentials");
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
    retry_after_if_unavailable(&mut response);
    response
}

/// `Retry-After` of a 503 that names no other time: the store or the identity provider is
/// usually back within seconds, and a client told when waits instead of giving up.
const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 5;

/// Gives a 503 a `Retry-After` (unless it has one): every page and JSON answer of the gateway
/// that says "unavailable" also says when to try again.
fn retry_after_if_unavailable(response: &mut Response<Body>) {
    if response.status() == StatusCode::SERVICE_UNAVAILABLE
        && !response.headers().contains_key(header::RETRY_AFTER)
    {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(UNAVAILABLE_RETRY_AFTER_SECS),
        );
    }
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    retry_after_if_unavailable(&mut response);
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

/// A redirect target on this gateway, or the portal.
pub(crate) fn safe_redirect(target: &str, ctx: &RequestContext) -> String {
    same_origin_target(target, &ctx.origin()).unwrap_or_else(|| "/.pomerium/".into())
}

/// Whether a redirect target holds what browsers strip or read differently (whitespace, control
/// characters, backslashes): such a target is refused, never resolved.
pub(crate) fn has_ambiguous_chars(target: &str) -> bool {
    target
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
}

/// `target` as a path on `origin`, if a browser told to go there would stay on `origin`. The
/// target is resolved as a browser resolves a `Location` (against the origin) and the result's
/// origin compared, so `//evil`, `/\evil` and `https:evil` are caught by what they mean, not by
/// their spelling; anything with whitespace, control characters or backslashes is refused
/// outright (browsers drop tabs and newlines, `/<TAB>/evil.example/` becomes `//evil.example/`).
pub(crate) fn same_origin_target(target: &str, origin: &str) -> Option<String> {
    if target.is_empty() || has_ambiguous_chars(target) {
        return None;
    }
    let base = url::Url::parse(origin).ok()?;
    let resolved = base.join(target).ok()?;
    if resolved.origin() != base.origin() {
        return None;
    }
    let path = &resolved[url::Position::BeforePath..];
    // `.//evil.example/` resolves to the path `//evil.example/` on this origin, which a browser
    // given it as `Location` reads as another host.
    if path.starts_with("//") {
        return None;
    }
    Some(path.to_owned())
}

pub(crate) fn form_value(form: &str, key: &str) -> Option<String> {
    url::form_urlencoded::parse(form.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

pub(crate) fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// The answer to a CORS preflight on the OAuth endpoints and MCP routes: the headers MCP
/// clients send, up to the 2026-07-28 revision's `mcp-method` and `mcp-name`, and the
/// `mcp-param-*` headers (SEP-2243) the preflight asks for, which a fixed list cannot name.
/// Only those are taken from the request: nothing else it asks for is allowed.
pub(crate) fn preflight(requested: Option<&HeaderValue>) -> Response<Body> {
    let mut response = Response::new(postern_gateway::body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let h = response.headers_mut();
    cors(h);
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
    );
    let mut allowed = String::from(
        "authorization, content-type, accept, last-event-id, mcp-session-id, mcp-protocol-version, mcp-method, mcp-name",
    );
    for name in requested_params(requested) {
        allowed.push_str(", ");
        allowed.push_str(&name);
    }
    if let Ok(value) = HeaderValue::from_str(&allowed) {
        h.insert("access-control-allow-headers", value);
    }
    // The answer depends on what was asked (a cache must not give it for another question).
    h.insert(
        header::VARY,
        HeaderValue::from_static("access-control-request-headers"),
    );
    h.insert("access-control-max-age", HeaderValue::from_static("600"));
    response
}

/// The `mcp-param-*` names in a preflight's `Access-Control-Request-Headers`: valid header
/// names, lowercased, at most 32 of at most 100 bytes each (what a browser asks is echoed back,
/// so its size is bounded).
fn requested_params(requested: Option<&HeaderValue>) -> Vec<String> {
    let Some(list) = requested.and_then(|v| v.to_str().ok()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = list
        .split(',')
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| {
            name.len() > "mcp-param-".len()
                && name.len() <= 100
                && name.starts_with("mcp-param-")
                && http::HeaderName::from_bytes(name.as_bytes()).is_ok()
        })
        .collect();
    // Repeats do not use up the 32.
    names.sort();
    names.dedup();
    names.truncate(32);
    names
}

#[cfg(test)]
mod tests {
    /// A 503 page or JSON answer (the store or the identity provider down) says when to try
    /// again; the sign-in page's 503 used to say nothing.
    #[test]
    fn every_unavailable_answer_says_when_to_retry() {
        use http::header::RETRY_AFTER;
        let unavailable = [
            super::html(super::StatusCode::SERVICE_UNAVAILABLE, String::new()),
            super::json_error(super::StatusCode::SERVICE_UNAVAILABLE, "c", "m", "r"),
        ];
        for response in unavailable {
            assert_eq!(response.headers()[RETRY_AFTER], "5");
        }
        let other = super::html(super::StatusCode::BAD_REQUEST, String::new());
        assert!(!other.headers().contains_key(RETRY_AFTER));
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
            // Found by the properties below: the path `//evil.example/` on this origin.
            ".//evil.example/",
            "/.//evil.example/",
            "/a/..//evil.example/",
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
}

/// Property-based tests (issue 17, hostile input): thousands of generated redirect targets per
/// run (`PROPTEST_CASES` raises it).
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    const ORIGIN: &str = "https://gw.example";

    /// What open-redirect payloads are made of: separators of every spelling, whitespace,
    /// userinfo, schemes, dot segments, IDNA look-alikes of the gateway's host and of `.`.
    const PIECES: &[&str] = &[
        "/",
        "//",
        "\\",
        "%2f",
        "%2F",
        "%5c",
        "%09",
        " ",
        "\t",
        "\n",
        "\r",
        "\u{0}",
        "\u{a0}",
        "\u{2028}",
        "\u{3000}",
        "@",
        ":",
        "user:pw@",
        "evil.example",
        "gw.example",
        "gw.example.",
        "GW.EXAMPLE",
        "g\u{ff57}.example",
        "gw\u{3002}example",
        "evil\u{3002}example",
        "xn--gw-example",
        ".",
        "..",
        "./",
        "../",
        "?",
        "#",
        "&",
        "=",
        "https:",
        "http:",
        "HTTPS:",
        "javascript:",
        "data:",
        "https://",
        "https://gw.example",
        ":443",
        ":8443",
        "a",
        "%",
        "%2e%2e",
        "\u{ff0f}",
        "\u{2215}",
    ];

    fn target() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(PIECES), 0..10).prop_map(|p| p.concat())
    }

    fn check(target: &str) -> Result<(), TestCaseError> {
        let Some(path) = super::same_origin_target(target, ORIGIN) else {
            return Ok(());
        };
        // A path on this origin, which a browser given it as `Location` keeps on this origin:
        // one leading `/`, never `//` or `/\` (a network-path reference to another host).
        prop_assert!(path.starts_with('/'), "{:?} -> {:?}", target, path);
        prop_assert!(
            !path.starts_with("//") && !path.starts_with("/\\"),
            "{:?} -> {:?}",
            target,
            path
        );
        prop_assert!(
            !super::has_ambiguous_chars(&path),
            "{:?} -> {:?}",
            target,
            path
        );
        let base = url::Url::parse(ORIGIN).unwrap();
        let resolved = base.join(&path).unwrap();
        prop_assert_eq!(
            resolved.origin(),
            base.origin(),
            "{:?} -> {:?}",
            target,
            path
        );
        // Round trip: the answer is its own answer.
        let again = super::same_origin_target(&path, ORIGIN);
        prop_assert_eq!(again.as_deref(), Some(&*path), "{:?}", target);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(4000)
        ))]

        #[test]
        fn hostile_redirect_targets_stay_on_the_origin(target in target()) {
            check(&target)?;
        }

        #[test]
        fn arbitrary_redirect_targets_stay_on_the_origin(target in "\\PC{0,30}") {
            check(&target)?;
        }
    }
}
