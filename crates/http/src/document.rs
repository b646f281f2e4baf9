//! A document fetched from a fixed URL and kept: the one cache behind every JWKS Postern reads
//! (the gateway's own keys in the assertion verifier, an OpenID provider's keys at sign-in).
//!
//! - kept for `ttl`, then fetched again;
//! - fetched early when a caller needs something the kept copy lacks (a new `kid` after a key
//!   rotation), at most once per `cooldown`, so tokens naming made-up keys cannot make Postern
//!   hammer the URL;
//! - concurrent fetches are one request;
//! - a failed fetch keeps the last good copy (a provider's short outage does not stop
//!   verification with keys it published before);
//! - a body over `max_bytes` is refused, declared or sent.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;

/// How a [`CachedDocument`] is kept and fetched.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long a fetched copy is used before it is fetched again.
    pub ttl: Duration,
    /// The least time between two fetches that the kept copy did not need.
    pub cooldown: Duration,
    /// The largest body accepted.
    pub max_bytes: usize,
}

/// Why no copy of the document is available.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url}: {reason}")]
pub struct DocumentError {
    /// Where it was fetched from.
    pub url: String,
    /// What went wrong.
    pub reason: String,
}

/// A document at one URL, parsed by `parse` once per fetch.
pub struct CachedDocument<T> {
    url: String,
    limits: Limits,
    http: reqwest::Client,
    parse: fn(&[u8]) -> Result<T, String>,
    kept: RwLock<Kept<T>>,
    /// Serialises fetches so concurrent misses make one request.
    fetching: tokio::sync::Mutex<()>,
}

struct Kept<T> {
    document: Option<Arc<T>>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
}

impl<T> std::fmt::Debug for CachedDocument<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedDocument")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl<T> CachedDocument<T> {
    /// A cache for the document at `url`, fetched with `http` and read by `parse`.
    pub fn new(
        url: impl Into<String>,
        http: reqwest::Client,
        limits: Limits,
        parse: fn(&[u8]) -> Result<T, String>,
    ) -> Self {
        CachedDocument {
            url: url.into(),
            limits,
            http,
            parse,
            kept: RwLock::new(Kept {
                document: None,
                fetched_at: None,
                last_attempt: None,
            }),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The document, as long as it is fresh and `enough` says it has what the caller needs;
    /// otherwise fetched again (unless the cooldown forbids it). A caller that needs something
    /// the returned copy lacks gets the copy anyway and says what is missing.
    pub async fn get(&self, enough: impl Fn(&T) -> bool) -> Result<Arc<T>, DocumentError> {
        if let Some(kept) = self.kept_answer(&enough) {
            return kept;
        }
        let _fetching = self.fetching.lock().await;
        // Another task may have fetched while this one waited.
        if let Some(kept) = self.kept_answer(&enough) {
            return kept;
        }
        let fetched = self.fetch().await;
        let mut kept = self.kept.write().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        kept.last_attempt = Some(now);
        match fetched {
            Ok(document) => {
                let document = Arc::new(document);
                kept.document = Some(document.clone());
                kept.fetched_at = Some(now);
                Ok(document)
            }
            Err(error) => match &kept.document {
                Some(document) => {
                    tracing::warn!(%error, "fetching again failed; the last good copy is used");
                    Ok(document.clone())
                }
                None => Err(error),
            },
        }
    }

    /// The answer from the kept copy, or `None` when a fetch is due.
    fn kept_answer(&self, enough: &impl Fn(&T) -> bool) -> Option<Result<Arc<T>, DocumentError>> {
        let kept = self.kept.read().unwrap_or_else(|e| e.into_inner());
        let fresh = kept
            .fetched_at
            .is_some_and(|t| t.elapsed() < self.limits.ttl);
        let may_fetch = kept
            .last_attempt
            .is_none_or(|t| t.elapsed() >= self.limits.cooldown);
        match &kept.document {
            Some(document) if (fresh && enough(document)) || !may_fetch => {
                Some(Ok(document.clone()))
            }
            None if !may_fetch => Some(Err(self.error(format!(
                "the last fetch failed less than {:?} ago",
                self.limits.cooldown
            )))),
            _ => None,
        }
    }

    async fn fetch(&self) -> Result<T, DocumentError> {
        let response = self
            .http
            .get(&self.url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| self.error(format!("request failed: {e}")))?;
        if !response.status().is_success() {
            return Err(self.error(format!("HTTP status {}", response.status())));
        }
        let body = read_capped(response, self.limits.max_bytes)
            .await
            .map_err(|e| self.error(e.to_string()))?;
        (self.parse)(&body).map_err(|reason| self.error(reason))
    }

    fn error(&self, reason: String) -> DocumentError {
        DocumentError {
            url: self.url.clone(),
            reason,
        }
    }
}

/// Why a response body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Over the cap, declared or sent.
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    /// The connection failed (or the client's time limit ended it) while reading.
    #[error("the answer could not be read whole")]
    Unreadable,
}

/// The body of `response`, refused when it is larger than `max` bytes (announced or actual), so
/// a hostile or broken server cannot make Postern buffer without bound.
pub async fn read_capped(response: reqwest::Response, max: usize) -> Result<Bytes, ReadError> {
    if response
        .content_length()
        .is_some_and(|length| length > max as u64)
    {
        return Err(ReadError::TooLarge(max));
    }
    let body = http::Response::from(response).into_body();
    match http_body_util::Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(ReadError::TooLarge(max))
        }
        Err(_) => Err(ReadError::Unreadable),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A server whose document is `{"keys": [..names]}`, counting fetches; `fail` makes it
    /// answer 500.
    struct Server {
        url: String,
        fetches: Arc<AtomicUsize>,
        names: Arc<RwLock<Vec<String>>>,
        fail: Arc<std::sync::atomic::AtomicBool>,
    }

    async fn serve(body_padding: usize) -> Server {
        let fetches = Arc::new(AtomicUsize::new(0));
        let names = Arc::new(RwLock::new(vec!["a".to_owned()]));
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (f, n, x) = (fetches.clone(), names.clone(), fail.clone());
        let app = axum::Router::new().route(
            "/doc",
            axum::routing::get(move || {
                let (f, n, x) = (f.clone(), n.clone(), x.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if x.load(Ordering::SeqCst) {
                        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, String::new());
                    }
                    let names = n.read().unwrap().join(",");
                    (
                        axum::http::StatusCode::OK,
                        format!("{names}{}", " ".repeat(body_padding)),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/doc", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Server {
            url,
            fetches,
            names,
            fail,
        }
    }

    fn names(body: &[u8]) -> Result<Vec<String>, String> {
        let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
        Ok(text.trim().split(',').map(str::to_owned).collect())
    }

    fn cache(server: &Server, ttl: Duration, cooldown: Duration) -> CachedDocument<Vec<String>> {
        let limits = Limits {
            ttl,
            cooldown,
            max_bytes: 1024,
        };
        CachedDocument::new(
            &server.url,
            crate::client(Duration::from_secs(5)),
            limits,
            names,
        )
    }

    fn has(name: &'static str) -> impl Fn(&Vec<String>) -> bool {
        move |names| names.iter().any(|n| n == name)
    }

    #[tokio::test]
    async fn a_kept_copy_serves_until_it_lacks_something_and_the_cooldown_limits_refetches() {
        let server = serve(0).await;
        let cache = cache(
            &server,
            Duration::from_secs(600),
            Duration::from_millis(300),
        );
        let copies = futures_join(&cache, 8).await;
        assert!(copies.iter().all(|c| c.as_slice() == ["a"]));
        assert_eq!(
            server.fetches.load(Ordering::SeqCst),
            1,
            "concurrent misses fetch once"
        );
        cache.get(has("a")).await.unwrap();
        assert_eq!(
            server.fetches.load(Ordering::SeqCst),
            1,
            "a fresh copy is served"
        );

        // A name nobody published: within the cooldown no fetch, however often it is asked.
        for _ in 0..20 {
            assert!(!has("forged")(&cache.get(has("forged")).await.unwrap()));
        }
        assert_eq!(server.fetches.load(Ordering::SeqCst), 1);

        // A rotation: after the cooldown, the missing name is fetched once.
        server.names.write().unwrap().push("b".into());
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(has("b")(&cache.get(has("b")).await.unwrap()));
        assert_eq!(server.fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_stale_copy_is_fetched_again_and_kept_when_the_fetch_fails() {
        let server = serve(0).await;
        let cache = cache(&server, Duration::from_millis(100), Duration::ZERO);
        cache.get(has("a")).await.unwrap();
        server.fail.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(150)).await;
        let kept = cache.get(has("a")).await.unwrap();
        assert_eq!(
            kept.as_slice(),
            ["a"],
            "the last good copy outlives an outage"
        );
        assert_eq!(server.fetches.load(Ordering::SeqCst), 2);

        let empty = CachedDocument::new(
            &server.url,
            crate::client(Duration::from_secs(5)),
            Limits {
                ttl: Duration::from_secs(1),
                cooldown: Duration::from_secs(60),
                max_bytes: 1024,
            },
            names,
        );
        let error = empty.get(has("a")).await.unwrap_err();
        assert!(error.reason.contains("500"), "{error}");
        let again = empty.get(has("a")).await.unwrap_err();
        assert!(again.reason.contains("less than"), "{again}");
        assert_eq!(
            server.fetches.load(Ordering::SeqCst),
            3,
            "no fetch within the cooldown"
        );
    }

    #[tokio::test]
    async fn an_oversized_document_is_refused() {
        let server = serve(2048).await;
        let cache = cache(&server, Duration::from_secs(1), Duration::ZERO);
        let error = cache.get(has("a")).await.unwrap_err();
        assert!(error.reason.contains("larger than 1024 bytes"), "{error}");
    }

    async fn futures_join(cache: &CachedDocument<Vec<String>>, n: usize) -> Vec<Arc<Vec<String>>> {
        let mut set = Vec::new();
        for _ in 0..n {
            set.push(cache.get(has("a")));
        }
        let mut copies = Vec::new();
        for result in futures::future::join_all(set).await {
            copies.push(result.unwrap());
        }
        copies
    }
}
