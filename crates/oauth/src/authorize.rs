//! The authorization request (RFC 6749 §4.1.1 with PKCE and RFC 8707 `resource`), and where its
//! errors go: before the client and redirect URI are validated, to a page (never redirect to an
//! unverified URI); after, back to the client (RFC 6749 §4.1.2.1), with `state` and `iss`.

use std::collections::HashMap;

use crate::pkce;
use crate::registration::redirect_uri_matches;
use crate::{ErrorCode, OAuthError};

/// A `client_id` as a client presented it: a registered id, or the URL of a client ID metadata
/// document.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientId(String);

impl ClientId {
    /// Wraps a presented id.
    pub fn new(id: impl Into<String>) -> Self {
        ClientId(id.into())
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the id is the URL of a client ID metadata document (the client is described by
    /// the document, not by a registration).
    pub fn is_metadata_document(&self) -> bool {
        self.0.starts_with("https://") || self.0.starts_with("http://")
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A redirect URI checked against the client's registered ones: the only kind of URI an
/// authorization response (code or error) can be sent to, so no code path can redirect a
/// browser to a URI nobody checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedRedirect {
    /// As presented (the token request must present the same string).
    presented: String,
    /// Boxed: errors carry a `VerifiedRedirect`, and a bare `Url` would make them large.
    url: Box<url::Url>,
}

impl VerifiedRedirect {
    /// `presented`, if it matches one of `registered` ([`redirect_uri_matches`]) and parses.
    pub fn check<'a>(
        registered: impl IntoIterator<Item = &'a str>,
        presented: &str,
    ) -> Option<Self> {
        if !registered
            .into_iter()
            .any(|r| redirect_uri_matches(r, presented))
        {
            return None;
        }
        let url = url::Url::parse(presented).ok()?;
        Some(VerifiedRedirect {
            presented: presented.to_owned(),
            url: Box::new(url),
        })
    }

    /// The URI as the client presented it.
    pub fn as_str(&self) -> &str {
        &self.presented
    }

    /// The URI with `pairs` added to its query.
    fn with(&self, pairs: &[(&str, &str)]) -> String {
        let mut url = (*self.url).clone();
        url.query_pairs_mut().extend_pairs(pairs);
        url.to_string()
    }
}

/// A parsed authorization request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizationRequest {
    /// `client_id`.
    pub client_id: ClientId,
    /// `redirect_uri` (required: MCP clients register several), checked.
    pub redirect_uri: VerifiedRedirect,
    /// `state`, echoed back.
    pub state: Option<String>,
    /// The S256 challenge.
    pub code_challenge: String,
    /// `resource` (RFC 8707), if given.
    pub resource: Option<String>,
    /// `scope`, if given.
    pub scope: Option<String>,
}

/// Why a request failed, and where the error goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthorizeError {
    /// Shown as a page: the client or its redirect URI can't be trusted.
    Page(String),
    /// Sent back to the client's redirect URI.
    Redirect {
        /// The redirect URI.
        redirect_uri: VerifiedRedirect,
        /// The error.
        error: OAuthError,
        /// `state` to echo.
        state: Option<String>,
    },
}

/// Reads the client and redirect URI only (for the checks that decide where errors go).
pub fn client_and_redirect(
    query: &HashMap<String, String>,
) -> Result<(ClientId, String), AuthorizeError> {
    let client_id = query.get("client_id").filter(|c| !c.is_empty()).ok_or_else(|| {
        AuthorizeError::Page("The authorization request has no client_id: the MCP client that sent you here is misconfigured.".into())
    })?;
    let redirect_uri = query.get("redirect_uri").filter(|r| !r.is_empty()).ok_or_else(|| {
        AuthorizeError::Page("The authorization request has no redirect_uri: the MCP client that sent you here is misconfigured.".into())
    })?;
    Ok((ClientId::new(client_id.as_str()), redirect_uri.clone()))
}

/// A resource indicator must be an absolute URI without a fragment (RFC 8707 §2).
fn bad_resource(resource: &str) -> bool {
    match url::Url::parse(resource) {
        Ok(url) => url.fragment().is_some(),
        Err(_) => true,
    }
}

/// Parses the rest once the client and its redirect URI are known to be good.
pub fn parse(
    query: &HashMap<String, String>,
    redirect_uri: &VerifiedRedirect,
) -> Result<AuthorizationRequest, AuthorizeError> {
    let state = query.get("state").cloned();
    let fail = |error: OAuthError| AuthorizeError::Redirect {
        redirect_uri: redirect_uri.clone(),
        error,
        state: state.clone(),
    };
    match query.get("response_type").map(String::as_str) {
        Some("code") => {}
        Some(other) => {
            return Err(fail(OAuthError::new(
                ErrorCode::UnsupportedResponseType,
                format!("response_type {other:?} is not supported; use code"),
            )));
        }
        None => {
            return Err(fail(OAuthError::new(
                ErrorCode::InvalidRequest,
                "response_type is required (code)",
            )));
        }
    }
    let code_challenge = pkce::check_challenge(
        query.get("code_challenge").map(String::as_str),
        query.get("code_challenge_method").map(String::as_str),
    )
    .map_err(fail)?;
    let resource = query.get("resource").cloned();
    if let Some(resource) = &resource
        && bad_resource(resource)
    {
        return Err(fail(OAuthError::new(
            ErrorCode::InvalidTarget,
            "resource must be an absolute URI without a fragment",
        )));
    }
    Ok(AuthorizationRequest {
        client_id: ClientId::new(query.get("client_id").cloned().unwrap_or_default()),
        redirect_uri: redirect_uri.clone(),
        state,
        code_challenge,
        resource,
        scope: query.get("scope").cloned(),
    })
}

/// The redirect carrying an error back to the client (RFC 6749 §4.1.2.1, RFC 9207 `iss`).
pub fn error_redirect(
    redirect_uri: &VerifiedRedirect,
    error: &OAuthError,
    state: Option<&str>,
    issuer: &str,
) -> String {
    let mut pairs = vec![
        ("error", error.code.as_str()),
        ("error_description", error.description.as_str()),
    ];
    pairs.extend(state.map(|state| ("state", state)));
    pairs.push(("iss", issuer));
    redirect_uri.with(&pairs)
}

/// The redirect carrying the code (RFC 6749 §4.1.2, RFC 9207 `iss`).
pub fn code_redirect(
    redirect_uri: &VerifiedRedirect,
    code: &str,
    state: Option<&str>,
    issuer: &str,
) -> String {
    let mut pairs = vec![("code", code)];
    pairs.extend(state.map(|state| ("state", state)));
    pairs.push(("iss", issuer));
    redirect_uri.with(&pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    fn verified(uri: &str) -> VerifiedRedirect {
        VerifiedRedirect::check([uri], uri).unwrap()
    }

    #[test]
    fn only_a_registered_redirect_uri_is_verified_and_it_keeps_its_presented_form() {
        let registered = ["https://app.test/cb", "http://127.0.0.1/cb"];
        for refused in [
            "https://app.test/cb/",
            "https://app.test/cb?x=1",
            "https://evil.test/cb",
            "http://127.0.0.1.evil.test/cb",
            "not a uri",
        ] {
            assert_eq!(
                VerifiedRedirect::check(registered, refused),
                None,
                "{refused}"
            );
        }
        let loopback = VerifiedRedirect::check(registered, "http://127.0.0.1:5123/cb").unwrap();
        assert_eq!(loopback.as_str(), "http://127.0.0.1:5123/cb");
        assert_eq!(
            code_redirect(&loopback, "c0de", None, "https://gw.test"),
            "http://127.0.0.1:5123/cb?code=c0de&iss=https%3A%2F%2Fgw.test"
        );
        assert!(ClientId::new("https://app.test/client.json").is_metadata_document());
        assert!(!ClientId::new("abc").is_metadata_document());
    }

    #[test]
    fn a_good_request_parses() {
        let q = query(&[
            ("response_type", "code"),
            ("client_id", "c"),
            ("redirect_uri", "http://127.0.0.1/cb"),
            ("state", "s"),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
            ("resource", "https://mcp.test/notion"),
        ]);
        let (client, redirect) = client_and_redirect(&q).unwrap();
        let redirect = VerifiedRedirect::check(["http://127.0.0.1/cb"], &redirect).unwrap();
        let request = parse(&q, &redirect).unwrap();
        assert_eq!(
            (client.as_str(), request.resource.as_deref()),
            ("c", Some("https://mcp.test/notion"))
        );
    }

    #[test]
    fn errors_before_the_client_is_known_are_pages_and_after_are_redirects() {
        assert!(matches!(
            client_and_redirect(&query(&[("redirect_uri", "https://evil.test")])),
            Err(AuthorizeError::Page(_))
        ));
        let q = query(&[
            ("response_type", "code"),
            ("client_id", "c"),
            ("redirect_uri", "https://a.test/cb"),
            ("state", "s"),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "plain"),
        ]);
        let cb = verified("https://a.test/cb");
        match parse(&q, &cb) {
            Err(AuthorizeError::Redirect { error, state, .. }) => {
                assert_eq!(error.code, ErrorCode::InvalidRequest);
                assert_eq!(state.as_deref(), Some("s"));
            }
            other => panic!("{other:?}"),
        }
        let url = error_redirect(
            &verified("https://a.test/cb?x=1"),
            &OAuthError::new(ErrorCode::AccessDenied, "no"),
            Some("s"),
            "https://mcp.test",
        );
        assert_eq!(
            url,
            "https://a.test/cb?x=1&error=access_denied&error_description=no&state=s&iss=https%3A%2F%2Fmcp.test"
        );
        let q = query(&[
            ("response_type", "token"),
            ("client_id", "c"),
            ("redirect_uri", "https://a.test/cb"),
        ]);
        assert!(
            matches!(parse(&q, &cb), Err(AuthorizeError::Redirect { error, .. }) if error.code == ErrorCode::UnsupportedResponseType)
        );
    }
}
