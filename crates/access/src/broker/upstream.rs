//! Upstream OAuth (TI): for routes with `upstream_oauth2`, the gateway is the OAuth client of the
//! upstream provider (Notion, GitHub, ...). It obtains the user's token during `/authorize` (or
//! `/connect`), keeps it sealed in the store per (user, route), refreshes it shortly before it
//! expires (concurrent refreshes coalesce, also across replicas), and sends it to the MCP server
//! as `Authorization: Bearer <TI>`. Clients never see it.

use std::collections::BTreeMap;
use std::time::Duration;

use postern_config::{AuthStyle, OAuthEndpoint, UpstreamOAuth2};
use postern_gateway::routes::{Kind, Route};
use postern_store::{RefreshOutcome, Secret, UpstreamToken, now_ms};
use serde_json::Value;

use crate::broker::discovery::UpstreamSettings;
use crate::web::safe_http::FetchError;
use crate::web::untrusted::Untrusted;

/// Refresh this long before the TI expires.
pub const REFRESH_SKEW: Duration = Duration::from_secs(60);
/// How long a TI with a refresh token is kept (the provider decides when it really ends).
pub const KEEP_WITH_REFRESH: Duration = Duration::from_secs(180 * 24 * 3600);
/// Authorization parameters the gateway sets itself; configured ones with these names are ignored.
const RESERVED: [&str; 8] = [
    "client_id",
    "response_type",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
    "resource",
];

/// The upstream OAuth settings of a route, if it has any.
pub fn settings(route: &Route) -> Option<&UpstreamOAuth2> {
    match &route.kind {
        Kind::McpServer(server) => server.upstream_oauth2.as_ref(),
        _ => None,
    }
}

/// The upstream OAuth settings of a route that names its provider's endpoints. An
/// `upstream_oauth2` block without `endpoint` only supplies a client (id, secret, scopes) for
/// discovery.
pub fn static_settings(route: &Route) -> Option<&UpstreamOAuth2> {
    settings(route).filter(|oauth| oauth.endpoint.is_some())
}

/// The key TIs are stored under: stable across reloads and replicas.
pub fn route_key(route: &Route) -> String {
    format!(
        "{}{}",
        route.config.from.origin(),
        route
            .config
            .prefix
            .as_deref()
            .or(route.config.path.as_deref())
            .unwrap_or("")
    )
}

/// Why an upstream token request failed. The provider's answer itself is only logged (escaped
/// and capped): it is a stranger's text, and a discovered provider may be hostile.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The provider refused (4xx): the grant is gone.
    #[error("the provider at {host} refused: HTTP {status}{}", .error.map(|e| format!(" ({e})")).unwrap_or_default())]
    Refused {
        /// The token endpoint's host.
        host: String,
        /// The HTTP status.
        status: u16,
        /// The OAuth error code of the answer (RFC 6749 §5.2), when it is one of the registered ones.
        error: Option<&'static str>,
    },
    /// The provider failed or could not be reached.
    #[error("the provider at {url} failed: {reason}")]
    Unavailable {
        /// The token endpoint.
        url: String,
        /// What failed.
        reason: String,
    },
    /// A discovered provider's address was refused, or its answer was too large or cut off
    /// ([`crate::web::safe_http`]).
    #[error("the provider at {url} failed: {error}")]
    Fetch {
        /// The token endpoint.
        url: String,
        /// What was refused or failed.
        error: FetchError,
    },
    /// The provider's successful answer holds no access token.
    #[error("the provider at {url} failed: no access_token in the answer")]
    NoAccessToken {
        /// The token endpoint.
        url: String,
    },
    /// The route has no endpoint configured.
    #[error("upstream_oauth2 has no endpoint (auth_url and token_url are required)")]
    NotConfigured,
}

/// Largest token endpoint answer read (a token response is a few KiB at most).
const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

/// The OAuth error codes (RFC 6749 §5.2, RFC 8707) an answer may name to the user.
const OAUTH_ERRORS: [&str; 8] = [
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "invalid_target",
    "access_denied",
];

/// The provider's authorization URL for the user's browser.
pub fn authorization_url(
    oauth: &UpstreamOAuth2,
    redirect_uri: &str,
    state: &str,
    challenge: &str,
) -> Result<String, UpstreamError> {
    let endpoint = oauth
        .endpoint
        .as_ref()
        .ok_or(UpstreamError::NotConfigured)?;
    let mut url = endpoint.auth_url.clone();
    {
        let mut pairs = url.query_pairs_mut();
        pairs
            .append_pair("response_type", "code")
            .append_pair("client_id", &oauth.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("state", state)
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256");
        if !oauth.scopes.is_empty() {
            pairs.append_pair("scope", &oauth.scopes.join(" "));
        }
        if let Some(resource) = &oauth.resource {
            pairs.append_pair("resource", resource);
        }
        for (key, value) in &oauth.authorization_url_params {
            if RESERVED.contains(&key.as_str()) {
                tracing::warn!(%key, "ignoring a reserved authorization_url_params entry");
                continue;
            }
            pairs.append_pair(key, value);
        }
    }
    Ok(url.to_string())
}

/// Calls the provider's token endpoint with `params`, authenticating as `auth_style` says. When
/// it is not set, HTTP Basic first (RFC 6749 §2.3.1; Notion requires it), and on
/// `invalid_client` once more with the credentials in the form (as Pomerium sends them); the
/// style that worked is remembered per token endpoint. A configured provider is called with
/// `http`; a discovered one (a URL a stranger's metadata named) only through
/// [`crate::web::safe_http`]: its address checked and pinned, no redirects, the answer capped.
pub(crate) async fn token_request(
    endpoints: &TokenEndpoints,
    oauth: &UpstreamSettings<'_>,
    params: &BTreeMap<&str, String>,
) -> Result<UpstreamToken, UpstreamError> {
    let endpoint = oauth
        .endpoint
        .as_ref()
        .ok_or(UpstreamError::NotConfigured)?;
    if let Some(style) = endpoint.auth_style {
        return token_request_as(&endpoints.http, oauth, endpoint, params, style).await;
    }
    let url = endpoint.token_url.as_str();
    let first = endpoints.learned(url).unwrap_or(AuthStyle::Header);
    match token_request_as(&endpoints.http, oauth, endpoint, params, first).await {
        Err(UpstreamError::Refused {
            error: Some("invalid_client"),
            ..
        }) => {
            // Client authentication fails before the grant is looked at (RFC 6749 §5.2), so
            // the code or refresh token is still good for the other style.
            let other = match first {
                AuthStyle::Header => AuthStyle::Params,
                AuthStyle::Params => AuthStyle::Header,
            };
            let answer = token_request_as(&endpoints.http, oauth, endpoint, params, other).await;
            if answer.is_ok() {
                endpoints.learn(url, other);
            }
            answer
        }
        answer => answer,
    }
}

/// How the broker calls token endpoints: the HTTP client for configured providers, and the
/// client authentication style learned per token endpoint that has no `auth_style` (a handful
/// of providers, so a small map, capped all the same).
pub(crate) struct TokenEndpoints {
    http: reqwest::Client,
    learned: std::sync::Mutex<std::collections::HashMap<String, AuthStyle>>,
}

impl TokenEndpoints {
    /// Calls configured providers with `http`.
    pub(crate) fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            learned: Default::default(),
        }
    }

    fn learned(&self, token_url: &str) -> Option<AuthStyle> {
        self.learned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(token_url)
            .copied()
    }

    fn learn(&self, token_url: &str, style: AuthStyle) {
        let mut learned = self.learned.lock().unwrap_or_else(|e| e.into_inner());
        if learned.len() < 1024 {
            learned.insert(token_url.to_owned(), style);
        }
    }
}

/// One token endpoint request with the client's credentials as `style` says.
async fn token_request_as(
    http: &reqwest::Client,
    oauth: &UpstreamSettings<'_>,
    endpoint: &OAuthEndpoint,
    params: &BTreeMap<&str, String>,
    style: AuthStyle,
) -> Result<UpstreamToken, UpstreamError> {
    let token_url = &endpoint.token_url;
    let url = token_url.to_string();
    let unavailable = |reason: String| UpstreamError::Unavailable {
        url: url.clone(),
        reason,
    };
    let http = token_client(http, oauth, token_url).await?;
    let (request, form) = authenticated_request(&http, &url, oauth, style, params);
    let response = request
        .form(&form)
        .send()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let status = response.status();
    let bytes = crate::web::safe_http::read_capped(token_url, response, MAX_TOKEN_RESPONSE_BYTES)
        .await
        .map_err(|error| UpstreamError::Fetch {
            url: url.clone(),
            error,
        })?;
    let text = String::from_utf8_lossy(&bytes);
    if !status.is_success() {
        return Err(refusal(token_url, status, &text, &bytes));
    }
    token_from_answer(&text, endpoint, &oauth.client_id)
}

/// The client to call the token endpoint with: `http` for a configured provider, a client
/// pinned to the checked address for a discovered one.
async fn token_client(
    http: &reqwest::Client,
    oauth: &UpstreamSettings<'_>,
    token_url: &url::Url,
) -> Result<reqwest::Client, UpstreamError> {
    match oauth {
        UpstreamSettings::Configured(_) => Ok(http.clone()),
        UpstreamSettings::Discovered { token_trusted, .. } => {
            crate::web::safe_http::pinned_client(token_url, *token_trusted)
                .await
                .map_err(|error| UpstreamError::Fetch {
                    url: token_url.to_string(),
                    error,
                })
        }
    }
}

/// The token request to `url` and its form: `params`, the resource, and the client's
/// credentials in the header or the form as `style` says.
fn authenticated_request<'p>(
    http: &reqwest::Client,
    url: &str,
    oauth: &UpstreamOAuth2,
    style: AuthStyle,
    params: &BTreeMap<&'p str, String>,
) -> (reqwest::RequestBuilder, Vec<(&'p str, String)>) {
    let secret = oauth
        .client_secret
        .as_ref()
        .map(|s| s.expose().to_owned())
        .unwrap_or_default();
    let mut form: Vec<(&str, String)> = params.iter().map(|(k, v)| (*k, v.clone())).collect();
    if let Some(resource) = &oauth.resource {
        form.push(("resource", resource.clone()));
    }
    let mut request = http.post(url).header("accept", "application/json");
    match style {
        AuthStyle::Header => {
            // RFC 6749 §2.3.1: the id and secret are form-encoded before Basic encoding.
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            request = request.basic_auth(enc(&oauth.client_id), Some(enc(&secret)));
        }
        AuthStyle::Params => {
            form.push(("client_id", oauth.client_id.clone()));
            if !secret.is_empty() {
                form.push(("client_secret", secret));
            }
        }
    }
    (request, form)
}

/// The error for a token endpoint's non-success answer (logged here): `Refused` with a
/// registered OAuth error code for a 4xx, `Unavailable` otherwise.
fn refusal(
    token_url: &url::Url,
    status: reqwest::StatusCode,
    text: &str,
    bytes: &[u8],
) -> UpstreamError {
    let host = crate::web::safe_http::host_of(token_url);
    tracing::warn!(provider = %host, %status, body = %Untrusted(text), "the upstream token endpoint refused");
    if !status.is_client_error() {
        return UpstreamError::Unavailable {
            url: token_url.to_string(),
            reason: format!("HTTP {status}"),
        };
    }
    let error = serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|b| b.get("error").and_then(Value::as_str).map(str::to_owned))
        .and_then(|e| OAUTH_ERRORS.into_iter().find(|known| *known == e));
    UpstreamError::Refused {
        host,
        status: status.as_u16(),
        error,
    }
}

/// The TI in a successful token endpoint answer (JSON, or form-encoded as some providers
/// send); `NoAccessToken` when it has none.
fn token_from_answer(
    text: &str,
    endpoint: &OAuthEndpoint,
    client_id: &str,
) -> Result<UpstreamToken, UpstreamError> {
    let body: Value = serde_json::from_str(text)
        .or_else(|_| {
            Ok::<_, ()>(
                url::form_urlencoded::parse(text.as_bytes())
                    .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                    .collect(),
            )
        })
        .unwrap_or_default();
    let access_token = body
        .get("access_token")
        .and_then(Value::as_str)
        .ok_or_else(|| UpstreamError::NoAccessToken {
            url: endpoint.token_url.to_string(),
        })?;
    let expires_in = body.get("expires_in").and_then(|v| {
        v.as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
    });
    Ok(UpstreamToken {
        access_token: Secret::new(access_token),
        refresh_token: body
            .get("refresh_token")
            .and_then(Value::as_str)
            .map(Secret::new),
        token_type: body
            .get("token_type")
            .and_then(Value::as_str)
            .map(str::to_owned),
        expires_at: expires_in.map(|s| now_ms() + s * 1000),
        scope: body.get("scope").and_then(Value::as_str).map(str::to_owned),
        token_endpoint: Some(endpoint.token_url.to_string()),
        client_id: Some(client_id.to_owned()),
    })
}

/// How long to keep a TI in the store.
pub fn keep_for(token: &UpstreamToken) -> Duration {
    match (&token.refresh_token, token.expires_at) {
        (Some(_), _) | (None, None) => KEEP_WITH_REFRESH,
        (None, Some(at)) => Duration::from_millis((at - now_ms()).max(0) as u64),
    }
}

/// Whether the TI should be refreshed now (it expires within the skew and can be refreshed).
pub fn needs_refresh(token: &UpstreamToken) -> bool {
    token.refresh_token.is_some()
        && token
            .expires_at
            .is_some_and(|at| at - (REFRESH_SKEW.as_millis() as i64) <= now_ms())
}

/// Refreshes `old`; a provider that returns no new refresh token keeps the old one.
pub(crate) async fn refresh(
    endpoints: &TokenEndpoints,
    oauth: &UpstreamSettings<'_>,
    old: UpstreamToken,
) -> Result<RefreshOutcome, UpstreamError> {
    let Some(refresh_token) = old.refresh_token.clone() else {
        return Ok(RefreshOutcome::Revoked);
    };
    let params = BTreeMap::from([
        ("grant_type", "refresh_token".to_owned()),
        ("refresh_token", refresh_token.expose().to_owned()),
    ]);
    match token_request(endpoints, oauth, &params).await {
        Ok(mut token) => {
            token.refresh_token.get_or_insert(refresh_token);
            Ok(RefreshOutcome::Refreshed(token))
        }
        Err(refused @ UpstreamError::Refused { .. }) => {
            tracing::info!(reason = %refused, "upstream refresh refused: the user must reconnect");
            Ok(RefreshOutcome::Revoked)
        }
        Err(other) => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text reaches the user on the failure page after a code exchange.
    #[test]
    fn an_answer_without_an_access_token_names_the_provider() {
        let endpoint = OAuthEndpoint {
            auth_url: url::Url::parse("https://as.example/authorize").unwrap(),
            token_url: url::Url::parse("https://as.example/token").unwrap(),
            auth_style: None,
        };
        let error = token_from_answer(r#"{"token_type":"bearer"}"#, &endpoint, "postern")
            .err()
            .unwrap();
        assert_eq!(
            error.to_string(),
            "the provider at https://as.example/token failed: no access_token in the answer"
        );
    }
}
