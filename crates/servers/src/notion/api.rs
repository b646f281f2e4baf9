//! A small Notion API client: bearer token per call, pinned `Notion-Version`, retries for 429 /
//! 529 / 5xx with `Retry-After` honoured, bounded concurrency, and Notion's error bodies turned
//! into errors that carry Notion's code and message.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::config::NotionConfig;

/// What went wrong talking to Notion.
#[derive(Debug, thiserror::Error)]
pub enum NotionError {
    /// Notion answered with an error body.
    #[error("Notion API error {status} {code}: {message}{hint}", hint = hint(code))]
    Api {
        /// HTTP status.
        status: u16,
        /// Notion's error code (`object_not_found`, `unauthorized`, ...).
        code: String,
        /// Notion's message.
        message: String,
    },
    /// Still rate limited after the allowed retries.
    #[error(
        "Notion is rate limiting requests (429 rate_limited) and the retry budget is spent: try again in {retry_after_secs} s"
    )]
    RateLimited {
        /// Notion's `Retry-After`.
        retry_after_secs: u64,
    },
    /// The request did not get an answer.
    #[error("could not reach the Notion API at {base}: {reason}")]
    Transport {
        /// The configured base URL.
        base: String,
        /// What failed.
        reason: String,
    },
    /// Not the JSON Notion documents.
    #[error("the Notion API sent an unreadable answer: {0}")]
    Decode(String),
}

fn hint(code: &str) -> &'static str {
    match code {
        "object_not_found" => " (share the page with the integration, or check the id)",
        "unauthorized" => {
            " (the Notion token is invalid or revoked: reconnect Notion in the gateway)"
        }
        "restricted_resource" => " (the integration lacks the capability to read this content)",
        _ => "",
    }
}

/// The client, shared by all calls.
#[derive(Clone)]
pub struct NotionApi {
    http: reqwest::Client,
    base: String,
    version: String,
    max_retries: u32,
    max_retry_wait: Duration,
    concurrency: usize,
}

/// One tool call's view of the API: the caller's token, a shared retry budget and a bound on
/// concurrent requests.
pub struct Call {
    api: NotionApi,
    token: String,
    waited_ms: AtomicU64,
    permits: Arc<Semaphore>,
}

impl NotionApi {
    /// A client for `config`.
    pub fn new(config: &NotionConfig) -> Self {
        let http = postern_http::build(
            postern_http::builder(Duration::from_secs(30))
                // As before the shared client: the Notion API's redirects are followed.
                .redirect(reqwest::redirect::Policy::default())
                .connect_timeout(Duration::from_secs(5))
                .user_agent(concat!("postern-notion/", env!("CARGO_PKG_VERSION"))),
        );
        Self {
            http,
            base: config.api_base_url.clone(),
            version: config.version.clone(),
            max_retries: config.max_retries,
            max_retry_wait: config.max_retry_wait,
            concurrency: config.fetch_concurrency,
        }
    }

    /// Starts a tool call made with `token`.
    pub fn call(&self, token: String) -> Call {
        Call {
            api: self.clone(),
            token,
            waited_ms: AtomicU64::new(0),
            permits: Arc::new(Semaphore::new(self.concurrency)),
        }
    }
}

impl Call {
    /// `GET {path}`.
    pub async fn get(&self, path: &str) -> Result<Value, NotionError> {
        self.send(Method::GET, path, None).await
    }

    /// `POST {path}` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> Result<Value, NotionError> {
        self.send(Method::POST, path, Some(body)).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, NotionError> {
        let api = &self.api;
        let url = format!("{}{}", api.base, path);
        let mut attempt = 0u32;
        loop {
            let (error, wait) = match self.attempt(&method, &url, body.as_ref(), attempt).await {
                Ok(value) => return Ok(value),
                Err((error, None)) => return Err(error),
                Err((error, Some(wait))) => (error, wait),
            };
            let waited = Duration::from_millis(self.waited_ms.load(Ordering::Relaxed));
            if attempt >= api.max_retries || waited + wait > api.max_retry_wait {
                return Err(error);
            }
            tracing::debug!(%url, attempt, wait_ms = wait.as_millis() as u64, "notion: retrying");
            self.waited_ms
                .fetch_add(wait.as_millis() as u64, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    /// One request, holding a concurrency permit until the answer's headers arrive.
    async fn attempt(
        &self,
        method: &Method,
        url: &str,
        body: Option<&Value>,
        attempt: u32,
    ) -> Result<Value, Failure> {
        let api = &self.api;
        let result = {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|e| (NotionError::Decode(e.to_string()), None))?;
            let mut request = api
                .http
                .request(method.clone(), url)
                .bearer_auth(&self.token)
                .header("Notion-Version", &api.version);
            if let Some(body) = body {
                request = request.json(body);
            }
            request.send().await
        };
        match result {
            Ok(response) if response.status().is_success() => response
                .json()
                .await
                .map_err(|e| (NotionError::Decode(e.to_string()), None)),
            Ok(response) => Err(failed_response(response, attempt).await),
            Err(e) => {
                let retry = (e.is_connect() || e.is_timeout()).then(|| backoff(attempt));
                let error = NotionError::Transport {
                    base: api.base.clone(),
                    reason: e.to_string(),
                };
                Err((error, retry))
            }
        }
    }
}

/// A failed attempt: the error, and how long to wait before retrying (none: do not retry).
type Failure = (NotionError, Option<Duration>);

/// An error status: rate limits and overload wait for `Retry-After`, other server errors back
/// off, the rest are final.
async fn failed_response(response: reqwest::Response, attempt: u32) -> Failure {
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let error = api_error(status, response.text().await.unwrap_or_default());
    let wait = match status.as_u16() {
        429 | 529 | 503 => Some(Duration::from_secs(retry_after.unwrap_or(1))),
        500 | 502 | 504 => Some(backoff(attempt)),
        _ => None,
    };
    match (wait, status) {
        (Some(w), StatusCode::TOO_MANY_REQUESTS) => (
            NotionError::RateLimited {
                retry_after_secs: w.as_secs(),
            },
            wait,
        ),
        _ => (error, wait),
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250 * 2u64.pow(attempt.min(6)))
}

/// Notion's `{"object":"error","code","message"}` body, or a description of what came instead.
fn api_error(status: StatusCode, body: String) -> NotionError {
    let parsed: Option<Value> = serde_json::from_str(&body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    NotionError::Api {
        status: status.as_u16(),
        code: field("code").unwrap_or_else(|| "http_error".into()),
        message: field("message").unwrap_or_else(|| {
            let snippet: String = body.chars().take(200).collect();
            format!("HTTP {status}: {snippet}")
        }),
    }
}
