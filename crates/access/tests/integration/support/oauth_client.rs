//! What an MCP client does against the gateway's authorization server: PKCE values, the
//! callback it registers, and token endpoint requests.

use std::collections::HashMap;

use serde_json::Value;

use super::{client, hidden_fields};

/// The PKCE verifier of every test authorization (RFC 7636 appendix B).
pub const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
/// Its S256 challenge.
pub const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
/// The loopback redirect URI every test client registers.
pub const CALLBACK: &str = "http://127.0.0.1:9999/callback";

/// `s` form-urlencoded, for a query value.
pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The query parameters of a URL.
pub fn query_of(location: &str) -> HashMap<String, String> {
    url::Url::parse(location)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

/// A token endpoint request at `base`: status, body, `Cache-Control`.
pub async fn token(
    base: &str,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> (u16, Value, String) {
    let mut request = client()
        .post(format!("{base}/.pomerium/mcp/token"))
        .form(form);
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let cache = response
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, response.json().await.unwrap(), cache)
}

/// An authorization request at `base` by `client_id` (already encoded for a query) for
/// `resource`, back to `redirect`, with S256 PKCE and `state=st4te`.
pub fn authorize_url(base: &str, client_id: &str, redirect: &str, resource: &str) -> String {
    format!(
        "{base}/.pomerium/mcp/authorize?response_type=code&client_id={client_id}&redirect_uri={}&state=st4te&code_challenge={CHALLENGE}&code_challenge_method=S256&resource={}",
        urlencode(redirect),
        urlencode(resource),
    )
}

/// The fields a person posts by clicking Allow on a consent page.
pub fn allow_fields(consent_page: &str) -> Vec<(String, String)> {
    let mut fields = hidden_fields(consent_page);
    fields.push(("decision".into(), "allow".into()));
    fields
}

/// The code exchange of a public client at `base`, with the test verifier: status and body.
pub async fn exchange_at(base: &str, client_id: &str, code: &str) -> (u16, Value) {
    let (status, body, _) = token(
        base,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", CALLBACK),
            ("client_id", client_id),
            ("code_verifier", VERIFIER),
        ],
        None,
    )
    .await;
    (status, body)
}
