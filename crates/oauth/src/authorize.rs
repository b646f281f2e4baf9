//! The authorization request (RFC 6749 §4.1.1 with PKCE and RFC 8707 `resource`), and where its
//! errors go: before the client and redirect URI are validated, to a page (never redirect to an
//! unverified URI); after, back to the client (RFC 6749 §4.1.2.1), with `state` and `iss`.

use std::collections::HashMap;

use crate::pkce;
use crate::{ErrorCode, OAuthError};

/// A parsed authorization request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizationRequest {
    /// `client_id`.
    pub client_id: String,
    /// `redirect_uri` (required: MCP clients register several).
    pub redirect_uri: String,
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
        /// The redirect URI (validated).
        redirect_uri: String,
        /// The error.
        error: OAuthError,
        /// `state` to echo.
        state: Option<String>,
    },
}

/// Reads the client and redirect URI only (for the checks that decide where errors go).
pub fn client_and_redirect(
    query: &HashMap<String, String>,
) -> Result<(String, String), AuthorizeError> {
    let client_id = query.get("client_id").filter(|c| !c.is_empty()).ok_or_else(|| {
        AuthorizeError::Page("The authorization request has no client_id: the MCP client that sent you here is misconfigured.".into())
    })?;
    let redirect_uri = query.get("redirect_uri").filter(|r| !r.is_empty()).ok_or_else(|| {
        AuthorizeError::Page("The authorization request has no redirect_uri: the MCP client that sent you here is misconfigured.".into())
    })?;
    Ok((client_id.clone(), redirect_uri.clone()))
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
    redirect_uri: &str,
) -> Result<AuthorizationRequest, AuthorizeError> {
    let state = query.get("state").cloned();
    let fail = |error: OAuthError| AuthorizeError::Redirect {
        redirect_uri: redirect_uri.to_owned(),
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
        client_id: query.get("client_id").cloned().unwrap_or_default(),
        redirect_uri: redirect_uri.to_owned(),
        state,
        code_challenge,
        resource,
        scope: query.get("scope").cloned(),
    })
}

/// The redirect carrying an error back to the client (RFC 6749 §4.1.2.1, RFC 9207 `iss`).
pub fn error_redirect(
    redirect_uri: &str,
    error: &OAuthError,
    state: Option<&str>,
    issuer: &str,
) -> String {
    let mut url = url::Url::parse(redirect_uri).expect("validated redirect URI");
    {
        let mut pairs = url.query_pairs_mut();
        pairs
            .append_pair("error", error.code.as_str())
            .append_pair("error_description", &error.description);
        if let Some(state) = state {
            pairs.append_pair("state", state);
        }
        pairs.append_pair("iss", issuer);
    }
    url.to_string()
}

/// The redirect carrying the code (RFC 6749 §4.1.2, RFC 9207 `iss`).
pub fn code_redirect(redirect_uri: &str, code: &str, state: Option<&str>, issuer: &str) -> String {
    let mut url = url::Url::parse(redirect_uri).expect("validated redirect URI");
    {
        let mut pairs = url.query_pairs_mut();
        pairs.append_pair("code", code);
        if let Some(state) = state {
            pairs.append_pair("state", state);
        }
        pairs.append_pair("iss", issuer);
    }
    url.to_string()
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
        match parse(&q, "https://a.test/cb") {
            Err(AuthorizeError::Redirect { error, state, .. }) => {
                assert_eq!(error.code, ErrorCode::InvalidRequest);
                assert_eq!(state.as_deref(), Some("s"));
            }
            other => panic!("{other:?}"),
        }
        let url = error_redirect(
            "https://a.test/cb?x=1",
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
            matches!(parse(&q, "https://a.test/cb"), Err(AuthorizeError::Redirect { error, .. }) if error.code == ErrorCode::UnsupportedResponseType)
        );
    }
}
