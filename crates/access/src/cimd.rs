//! Client ID metadata documents (CIMD): an MCP client may use an https URL as its `client_id`;
//! the document at that URL describes it (the MCP authorization spec's alternative to dynamic
//! registration). Fetching a URL a stranger chose is an SSRF risk, so the fetch is strict:
//!
//! - the host must be allowed by `mcp_allowed_client_id_domains` (`example.com`, `*.example.com`
//!   for one label below it, or `*` for any public host);
//! - the address it resolves to must be public (not loopback, private, link-local such as the
//!   cloud metadata address 169.254.169.254, ...) unless the host is listed exactly, which is how
//!   internal clients and tests are allowed; the connection goes to the address that was checked
//!   (no second DNS lookup);
//! - `https` only, except `http` for an exactly listed loopback host (development and tests);
//! - no redirects, a 5 s time limit, at most 64 KiB;
//! - the document's `client_id` must equal its URL; its metadata passes the same checks as a
//!   registration, and it may not claim a client secret.
//!
//! Documents are cached as their `Cache-Control: max-age` allows (5 minutes by default, at most a
//! day).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use postern_oauth::OAuthError;
use postern_oauth::registration::validate_metadata;
use postern_store::{OAuthClient, now_ms};
use serde_json::Value;

const DEFAULT_TTL: Duration = Duration::from_secs(300);
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// Fetches and caches client ID metadata documents (and clients' JWKS).
pub struct Cimd {
    allowed: Vec<String>,
    cache: Mutex<HashMap<String, (OAuthClient, Instant)>>,
    keys: Mutex<HashMap<String, (jsonwebtoken::jwk::JwkSet, Instant)>>,
}

fn refuse(message: impl Into<String>) -> OAuthError {
    OAuthError::new("invalid_client", message)
}

impl Cimd {
    /// A fetcher for the configured allowlist.
    pub fn new(allowed: Vec<String>) -> Self {
        Self {
            allowed: allowed
                .into_iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            cache: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
        }
    }

    fn exactly_listed(&self, host: &str) -> bool {
        self.allowed.iter().any(|d| d == host)
    }

    fn host_allowed(&self, host: &str) -> bool {
        self.allowed.iter().any(|d| {
            d == "*"
                || d == host
                || d.strip_prefix("*.").is_some_and(|parent| {
                    host.strip_suffix(parent).is_some_and(|sub| {
                        sub.ends_with('.') && !sub[..sub.len() - 1].contains('.')
                    })
                })
        })
    }

    /// The client described at `client_id`.
    pub async fn client(&self, client_id: &str) -> Result<OAuthClient, OAuthError> {
        if let Some((client, until)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(client_id)
            && *until > Instant::now()
        {
            return Ok(client.clone());
        }
        let (document, ttl) = self.fetch_json(client_id, true).await?;
        if document.get("client_id").and_then(Value::as_str) != Some(client_id) {
            return Err(refuse("the document's client_id differs from its URL"));
        }
        let metadata = validate_metadata(&document)?;
        let method = metadata
            .get("token_endpoint_auth_method")
            .and_then(Value::as_str)
            .unwrap_or("none");
        if method.starts_with("client_secret") {
            return Err(refuse(
                "a client ID metadata document can't use a client secret; use none or private_key_jwt",
            ));
        }
        let now = now_ms();
        let client = OAuthClient {
            client_id: client_id.to_owned(),
            metadata: Value::Object(metadata),
            secret: None,
            created_at: now,
            expires_at: now + 3_600_000,
        };
        if let Some(ttl) = ttl {
            self.cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(client_id.to_owned(), (client.clone(), Instant::now() + ttl));
        }
        Ok(client)
    }

    /// The keys at a client's `jwks_uri`, fetched under the same rules as its document.
    pub async fn jwks(&self, jwks_uri: &str) -> Result<jsonwebtoken::jwk::JwkSet, OAuthError> {
        if let Some((keys, until)) = self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(jwks_uri)
            && *until > Instant::now()
        {
            return Ok(keys.clone());
        }
        let (document, ttl) = self.fetch_json(jwks_uri, false).await?;
        let keys: jsonwebtoken::jwk::JwkSet = serde_json::from_value(document)
            .map_err(|e| refuse(format!("the client's jwks_uri is not a JWKS: {e}")))?;
        if let Some(ttl) = ttl {
            self.keys
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(jwks_uri.to_owned(), (keys.clone(), Instant::now() + ttl));
        }
        Ok(keys)
    }

    /// Fetches JSON from a client-chosen URL under the rules at the top of this module.
    async fn fetch_json(
        &self,
        address: &str,
        needs_path: bool,
    ) -> Result<(Value, Option<Duration>), OAuthError> {
        let url = url::Url::parse(address).map_err(|_| refuse("the client's URL is not valid"))?;
        let host = crate::safe_http::host_of(&url);
        if url.fragment().is_some()
            || (needs_path && url.path() == "/")
            || !url.username().is_empty()
        {
            return Err(refuse(
                "a client ID metadata document URL needs a path and no fragment or credentials",
            ));
        }
        if !self.host_allowed(&host) {
            return Err(refuse(format!(
                "client documents from {host} are not accepted: an administrator can add the domain to mcp_allowed_client_id_domains"
            )));
        }
        // Exactly listed hosts are trusted: they may be private (internal clients, tests).
        let answer = crate::safe_http::fetch_json(&url, None, self.exactly_listed(&host))
            .await
            .map_err(refuse)?;
        if !answer.status.is_success() {
            return Err(refuse(format!("{url} answered HTTP {}", answer.status)));
        }
        let ttl = cache_ttl(answer.cache_control.as_deref());
        let document = answer.body;
        Ok((document, ttl))
    }
}

/// How long to cache, from `Cache-Control`; `None` for `no-store`.
fn cache_ttl(header: Option<&str>) -> Option<Duration> {
    let Some(header) = header else {
        return Some(DEFAULT_TTL);
    };
    let mut ttl = DEFAULT_TTL;
    for directive in header.split(',').map(str::trim) {
        if directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("no-cache")
        {
            return None;
        }
        if let Some(age) = directive
            .strip_prefix("max-age=")
            .and_then(|v| v.parse::<u64>().ok())
        {
            ttl = Duration::from_secs(age).min(MAX_TTL);
        }
    }
    Some(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safe_http::is_public;

    #[test]
    fn private_and_metadata_addresses_are_not_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn domains_match_exactly_or_by_one_label_wildcards() {
        let cimd = Cimd::new(vec!["claude.ai".into(), "*.example.com".into()]);
        assert!(cimd.host_allowed("claude.ai"));
        assert!(cimd.host_allowed("app.example.com"));
        assert!(
            !cimd.host_allowed("example.com"),
            "the wildcard needs a label"
        );
        assert!(!cimd.host_allowed("a.b.example.com"), "one label only");
        assert!(!cimd.host_allowed("evilclaude.ai"));
        assert_eq!(
            cache_ttl(Some("public, max-age=60")),
            Some(Duration::from_secs(60))
        );
        assert_eq!(cache_ttl(Some("no-store")), None);
        assert_eq!(cache_ttl(None), Some(DEFAULT_TTL));
    }

    #[tokio::test]
    async fn local_and_metadata_addresses_are_refused_unless_listed_exactly() {
        let any_public = Cimd::new(vec!["*".into()]);
        for url in [
            "https://169.254.169.254/latest/meta-data.json",
            "https://127.0.0.1/client.json",
            "http://127.0.0.1:9/client.json",
        ] {
            let err = any_public.client(url).await.unwrap_err();
            assert_eq!(err.code, "invalid_client", "{url}: {err}");
        }
        let none = Cimd::new(vec![]);
        assert!(
            none.client("https://claude.ai/oauth/client.json")
                .await
                .unwrap_err()
                .description
                .contains("mcp_allowed_client_id_domains")
        );
    }
}
