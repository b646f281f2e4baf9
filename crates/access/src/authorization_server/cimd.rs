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
//! day), in a bounded cache (least recently used entries go first). The authorization endpoint
//! fetches a document only for a signed-in user, so anonymous requests can't make the gateway
//! fetch.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use postern_oauth::registration::validate_metadata;
use postern_oauth::{ErrorCode, OAuthError};
use postern_store::{OAuthClient, now_ms};
use serde_json::Value;

const DEFAULT_TTL: Duration = Duration::from_secs(300);
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// Most documents (and, separately, key sets) cached.
const CACHE_ENTRIES: usize = 1000;
/// Most bytes of documents (and, separately, key sets) cached, as JSON.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

/// Fetches and caches client ID metadata documents (and clients' JWKS).
pub struct Cimd {
    allowed: Vec<String>,
    cache: Mutex<Lru<OAuthClient>>,
    keys: Mutex<Lru<jsonwebtoken::jwk::JwkSet>>,
}

/// A cache bounded in entries and bytes that drops the least recently used entry first
/// (expired entries are dropped when met). Eviction scans the entries: fine at this size, and
/// only on insertion into a full cache.
pub struct Lru<V> {
    entries: HashMap<String, LruEntry<V>>,
    bytes: usize,
    tick: u64,
    max_entries: usize,
    max_bytes: usize,
}

struct LruEntry<V> {
    value: V,
    until: Instant,
    size: usize,
    used: u64,
}

impl<V: Clone> Lru<V> {
    /// An empty cache of at most `max_entries` entries and `max_bytes` bytes.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            entries: HashMap::new(),
            bytes: 0,
            tick: 0,
            max_entries,
            max_bytes,
        }
    }

    /// The unexpired value under `key`.
    pub fn get(&mut self, key: &str) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        match self.entries.get_mut(key) {
            Some(entry) if entry.until > Instant::now() => {
                entry.used = tick;
                Some(entry.value.clone())
            }
            Some(_) => {
                self.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `value` (of `size` bytes) under `key` until `until`; a value larger than the whole
    /// cache is not kept.
    pub fn insert(&mut self, key: &str, value: V, size: usize, until: Instant) {
        let size = size + key.len();
        self.remove(key);
        if size > self.max_bytes {
            return;
        }
        while self.entries.len() >= self.max_entries || self.bytes + size > self.max_bytes {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.remove(&oldest);
        }
        self.tick += 1;
        self.bytes += size;
        self.entries.insert(
            key.to_owned(),
            LruEntry {
                value,
                until,
                size,
                used: self.tick,
            },
        );
    }

    fn remove(&mut self, key: &str) {
        if let Some(entry) = self.entries.remove(key) {
            self.bytes -= entry.size;
        }
    }

    /// How many entries and bytes are kept.
    #[cfg(test)]
    pub fn usage(&self) -> (usize, usize) {
        (self.entries.len(), self.bytes)
    }
}

fn refuse(message: impl Into<String>) -> OAuthError {
    OAuthError::new(ErrorCode::InvalidClient, message)
}

impl Cimd {
    /// A fetcher for the configured allowlist.
    pub fn new(allowed: Vec<String>) -> Self {
        Self {
            allowed: allowed
                .into_iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            cache: Mutex::new(Lru::new(CACHE_ENTRIES, CACHE_BYTES)),
            keys: Mutex::new(Lru::new(CACHE_ENTRIES, CACHE_BYTES)),
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
        if let Some(client) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(client_id)
        {
            return Ok(client);
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
            let size = client.metadata.to_string().len();
            self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(
                client_id,
                client.clone(),
                size,
                Instant::now() + ttl,
            );
        }
        Ok(client)
    }

    /// The keys at a client's `jwks_uri`, fetched under the same rules as its document.
    pub async fn jwks(&self, jwks_uri: &str) -> Result<jsonwebtoken::jwk::JwkSet, OAuthError> {
        if let Some(keys) = self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(jwks_uri)
        {
            return Ok(keys);
        }
        let (document, ttl) = self.fetch_json(jwks_uri, false).await?;
        let size = document.to_string().len();
        let keys: jsonwebtoken::jwk::JwkSet = serde_json::from_value(document)
            .map_err(|e| refuse(format!("the client's jwks_uri is not a JWKS: {e}")))?;
        if let Some(ttl) = ttl {
            self.keys.lock().unwrap_or_else(|e| e.into_inner()).insert(
                jwks_uri,
                keys.clone(),
                size,
                Instant::now() + ttl,
            );
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
        let host = crate::web::safe_http::host_of(&url);
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
        let answer = crate::web::safe_http::fetch_json(&url, None, self.exactly_listed(&host))
            .await
            .map_err(|e| refuse(e.to_string()))?;
        if !answer.status.is_success() {
            return Err(refuse(format!("{url} answered HTTP {}", answer.status)));
        }
        let ttl = cache_ttl(answer.cache_control.as_deref());
        let document = answer.body;
        Ok((document, ttl))
    }
}

impl crate::authorization_server::AuthorizationServer {
    /// The client described at `client_id`, for the token endpoint, which anyone may call: the
    /// document is fetched only when the code or refresh token presented was issued to that
    /// client (so a signed-in user authorized it), never for a stranger's made-up request.
    pub(crate) async fn document_client_at_token(
        &self,
        client_id: &str,
        form: &std::collections::HashMap<String, String>,
    ) -> Result<OAuthClient, OAuthError> {
        let unavailable = |_| {
            OAuthError::new(
                ErrorCode::TemporarilyUnavailable,
                "the gateway's store is unavailable",
            )
        };
        let issued_to = match form.get("grant_type").map(String::as_str) {
            Some("authorization_code") => match form.get("code") {
                Some(code) => self.store.code_client(code).await.map_err(unavailable)?,
                None => None,
            },
            Some("refresh_token") => match form.get("refresh_token") {
                Some(token) => self
                    .store
                    .find_refresh_token(token)
                    .await
                    .map_err(unavailable)?
                    .map(|family| family.client_id),
                None => None,
            },
            _ => None,
        };
        if issued_to.as_deref() != Some(client_id) {
            return Err(OAuthError::new(
                ErrorCode::InvalidGrant,
                "no current code or refresh token of this client was presented: authorize again",
            ));
        }
        self.cimd.client(client_id).await
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
    use crate::web::safe_http::is_public;

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

    #[test]
    fn the_cache_keeps_the_most_recently_used_entries_within_its_bounds() {
        let later = Instant::now() + Duration::from_secs(60);
        let mut cache = Lru::new(3, 1000);
        for key in ["a", "b", "c"] {
            cache.insert(key, key.to_owned(), 99, later);
        }
        assert_eq!(cache.usage(), (3, 300));
        assert_eq!(cache.get("a").as_deref(), Some("a"));
        cache.insert("d", "d".into(), 99, later); // drops b, the least recently used
        assert_eq!(cache.get("b"), None);
        assert!(cache.get("a").is_some() && cache.get("c").is_some() && cache.get("d").is_some());
        // Full: e pushes out a, now the least recently used. Bytes: a large entry pushes out as
        // many as it needs (f: c and d).
        cache.insert("e", "e".into(), 599, later);
        assert_eq!(cache.usage(), (3, 800));
        assert_eq!(cache.get("a"), None);
        assert!(cache.get("e").is_some());
        cache.insert("f", "f".into(), 399, later);
        assert_eq!(cache.usage(), (2, 1000));
        assert!(cache.get("c").is_none() && cache.get("d").is_none());
        // Larger than the whole cache: not kept. Expired: not returned.
        cache.insert("huge", "h".into(), 5000, later);
        assert_eq!(cache.get("huge"), None);
        cache.insert("old", "o".into(), 1, Instant::now());
        assert_eq!(cache.get("old"), None);
        let (entries, bytes) = cache.usage();
        assert!(entries <= 3 && bytes <= 1000);
        // Many distinct documents: the cache stays bounded.
        let mut cache = Lru::new(CACHE_ENTRIES, CACHE_BYTES);
        for n in 0..5000 {
            cache.insert(&format!("https://c.test/{n}"), n, 60_000, later);
        }
        let (entries, bytes) = cache.usage();
        assert!(
            entries <= CACHE_ENTRIES && bytes <= CACHE_BYTES,
            "{entries} {bytes}"
        );
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
            assert_eq!(err.code, ErrorCode::InvalidClient, "{url}: {err}");
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
