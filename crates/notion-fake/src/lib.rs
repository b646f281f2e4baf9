//! A fake of the Notion API endpoints that Postern's `notion` MCP server uses, faithful to the
//! documented behaviour (see `shared/reference/servers.md` §2) so tests exercise the real client
//! code: bearer-token and `Notion-Version` checks, cursor pagination with `page_size` capped at
//! 100, nested blocks that are only reachable through `has_children`, data sources, the
//! `/v1/pages/{id}/markdown` endpoint (with `truncated`), Notion's error bodies, and 429
//! `rate_limited` with `Retry-After`.
//!
//! ```no_run
//! # async fn demo() {
//! use postern_notion_fake::{Block, FakeNotion, Page};
//! let notion = FakeNotion::new()
//!     .token("secret-ti")
//!     .page(Page::new("Roadmap").block(Block::paragraph("Ship it")))
//!     .start()
//!     .await;
//! println!("{}", notion.url());
//! # }
//! ```
#![forbid(unsafe_code)]
// Handlers pass ready-made error responses around; their size does not matter in a test fake.
#![allow(clippy::result_large_err)]

mod model;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

pub use model::{Block, DataSource, Page};

/// The API version the markdown endpoint needs, and the oldest that knows data sources.
const MARKDOWN_MIN_VERSION: &str = "2026-03-11";
const DATA_SOURCES_MIN_VERSION: &str = "2025-09-03";

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Received {
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The `Notion-Version` header, if any.
    pub notion_version: Option<String>,
}

/// Builder and handle for a fake Notion API.
#[derive(Default)]
pub struct FakeNotion {
    state: Workspace,
}

#[derive(Default)]
struct Workspace {
    tokens: HashSet<String>,
    pages: Vec<Page>,
    data_sources: Vec<DataSource>,
    /// 1-based request numbers that get a 429 with `Retry-After: 1`.
    rate_limited_requests: HashSet<usize>,
    /// 1-based request numbers that get a 500.
    failing_requests: HashSet<usize>,
    received: Vec<Received>,
}

/// A running fake. Dropping it does not stop the server (it lives until the test runtime ends).
pub struct RunningNotion {
    addr: SocketAddr,
    state: Arc<Mutex<Workspace>>,
}

impl FakeNotion {
    /// An empty workspace that accepts no token.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts `token` as a valid integration/OAuth access token.
    pub fn token(mut self, token: &str) -> Self {
        self.state.tokens.insert(token.to_owned());
        self
    }

    /// Adds a page (and, recursively, its blocks).
    pub fn page(mut self, page: Page) -> Self {
        self.state.pages.push(page);
        self
    }

    /// Adds a data source (and its rows, which become pages with a `data_source_id` parent).
    pub fn data_source(mut self, source: DataSource) -> Self {
        for row in &source.rows {
            let mut row = row.clone();
            row.parent = json!({"type": "data_source_id", "data_source_id": source.id, "database_id": source.database_id});
            self.state.pages.push(row);
        }
        self.state.data_sources.push(source);
        self
    }

    /// Answers the `n`th request (1-based, counting every request) with 429 `rate_limited` and
    /// `Retry-After: 1`.
    pub fn rate_limit_request(mut self, n: usize) -> Self {
        self.state.rate_limited_requests.insert(n);
        self
    }

    /// Answers the `n`th request (1-based) with 500 `internal_server_error`.
    pub fn fail_request(mut self, n: usize) -> Self {
        self.state.failing_requests.insert(n);
        self
    }

    /// Starts serving on an ephemeral loopback port.
    pub async fn start(self) -> RunningNotion {
        let state = Arc::new(Mutex::new(self.state));
        let app = axum::Router::new()
            .route("/v1/search", post(search))
            .route("/v1/pages/{id}", get(retrieve_page))
            .route("/v1/pages/{id}/markdown", get(page_markdown))
            .route("/v1/blocks/{id}/children", get(block_children))
            .route("/v1/data_sources/{id}", get(retrieve_data_source))
            .route("/v1/data_sources/{id}/query", post(query_data_source))
            .fallback(|| async {
                error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_url",
                    "Invalid request URL.",
                )
            })
            .layer(axum::middleware::from_fn_with_state(state.clone(), gate))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        RunningNotion { addr, state }
    }
}

impl RunningNotion {
    /// The base URL to configure as `NOTION_API_BASE_URL`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().expect("state").received.clone()
    }

    /// The requests whose path starts with `prefix`.
    pub fn received_on(&self, prefix: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path.starts_with(prefix))
            .collect()
    }
}

type Shared = Arc<Mutex<Workspace>>;

/// Logs the request, then applies what every Notion endpoint checks first: injected failures,
/// the bearer token and the `Notion-Version` header.
async fn gate(
    State(state): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let received = Received {
        method: request.method().to_string(),
        path: request
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        authorization: header("authorization"),
        notion_version: header("notion-version"),
    };
    let verdict = {
        let mut ws = state.lock().expect("state");
        ws.received.push(received.clone());
        let n = ws.received.len();
        if ws.rate_limited_requests.contains(&n) {
            Some(rate_limited())
        } else if ws.failing_requests.contains(&n) {
            Some(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_server_error",
                "Unexpected error occurred.",
            ))
        } else {
            let token = received
                .authorization
                .as_deref()
                .and_then(|a| a.strip_prefix("Bearer "));
            match token {
                Some(t) if ws.tokens.contains(t) => None,
                _ => Some(error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "API token is invalid.",
                )),
            }
        }
    };
    if let Some(response) = verdict {
        return response;
    }
    if received.notion_version.is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "missing_version",
            "Notion-Version header failed validation: Notion-Version header should be defined.",
        );
    }
    next.run(request).await
}

fn rate_limited() -> Response {
    let mut response = error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "You have been rate limited. Please try again in a few minutes.",
    );
    response
        .headers_mut()
        .insert("retry-after", axum::http::HeaderValue::from_static("1"));
    response
}

/// A Notion error body: `{"object":"error","status","code","message","request_id"}`.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({
        "object": "error", "status": status.as_u16(), "code": code, "message": message,
        "request_id": "fake-request-id",
    });
    (status, Json(body)).into_response()
}

fn not_found(kind: &str, id: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "object_not_found",
        &format!(
            "Could not find {kind} with ID: {id}. Make sure the relevant pages and databases are shared with your integration."
        ),
    )
}

fn version(headers: &HeaderMap) -> String {
    headers
        .get("notion-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Notion accepts ids with or without dashes.
fn same_id(a: &str, b: &str) -> bool {
    a.replace('-', "").eq_ignore_ascii_case(&b.replace('-', ""))
}

/// Validates `page_size` (1..=100, default 100).
fn page_size(requested: Option<Value>) -> Result<usize, Response> {
    match requested {
        None | Some(Value::Null) => Ok(100),
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| (1..=100).contains(&n)) => {
            Ok(n.as_u64().unwrap_or(100) as usize)
        }
        Some(other) => Err(error(
            StatusCode::BAD_REQUEST,
            "validation_error",
            &format!(
                "body failed validation: body.page_size should be ≤ 100 and ≥ 1, instead was `{other}`."
            ),
        )),
    }
}

/// One page of `items` after `cursor` (the id of the first item of the page), as a Notion list.
fn paginate(
    items: Vec<(String, Value)>,
    cursor: Option<&str>,
    size: usize,
    kind: &str,
) -> Result<Value, Response> {
    let start = match cursor {
        None | Some("") => 0,
        Some(c) => items.iter().position(|(id, _)| id == c).ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                "validation_error",
                "start_cursor is invalid.",
            )
        })?,
    };
    let end = (start + size).min(items.len());
    let next = items.get(end).map(|(id, _)| id.clone());
    let results: Vec<Value> = items[start..end].iter().map(|(_, v)| v.clone()).collect();
    Ok(json!({
        "object": "list", "results": results, "next_cursor": next, "has_more": next.is_some(),
        "type": kind, kind: {},
    }))
}

#[derive(Deserialize, Default)]
struct SearchBody {
    query: Option<String>,
    filter: Option<Value>,
    sort: Option<Value>,
    start_cursor: Option<String>,
    page_size: Option<Value>,
}

async fn search(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Option<Json<SearchBody>>,
) -> Response {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let size = match page_size(body.page_size) {
        Ok(size) => size,
        Err(response) => return response,
    };
    let wanted = body
        .filter
        .as_ref()
        .and_then(|f| f.get("value"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    if let Some(w) = &wanted
        && w != "page"
        && w != "data_source"
    {
        return error(
            StatusCode::BAD_REQUEST,
            "validation_error",
            "body failed validation: body.filter.value should be `page` or `data_source`.",
        );
    }
    let ascending = body
        .sort
        .as_ref()
        .and_then(|s| s.get("direction"))
        .and_then(Value::as_str)
        == Some("ascending");
    let query = body.query.unwrap_or_default().to_lowercase();
    let ws = state.lock().expect("state");
    let mut hits: Vec<(String, String, Value)> = Vec::new();
    if wanted.as_deref() != Some("data_source") {
        for page in &ws.pages {
            if page.title.to_lowercase().contains(&query) {
                hits.push((
                    page.id.clone(),
                    page.last_edited_time.clone(),
                    page.to_json(),
                ));
            }
        }
    }
    if wanted.as_deref() != Some("page") && version(&headers).as_str() >= DATA_SOURCES_MIN_VERSION {
        for source in &ws.data_sources {
            if source.title.to_lowercase().contains(&query) {
                hits.push((
                    source.id.clone(),
                    source.last_edited_time.clone(),
                    source.to_json(),
                ));
            }
        }
    }
    // Most recently edited first, as Notion does without a sort.
    hits.sort_by(|a, b| b.1.cmp(&a.1));
    if ascending {
        hits.reverse();
    }
    let items = hits.into_iter().map(|(id, _, v)| (id, v)).collect();
    match paginate(
        items,
        body.start_cursor.as_deref(),
        size,
        "page_or_data_source",
    ) {
        Ok(list) => Json(list).into_response(),
        Err(response) => response,
    }
}

async fn retrieve_page(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let ws = state.lock().expect("state");
    match ws.pages.iter().find(|p| same_id(&p.id, &id)) {
        Some(page) => Json(page.to_json()).into_response(),
        None => not_found("page", &id),
    }
}

async fn page_markdown(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if version(&headers).as_str() < MARKDOWN_MIN_VERSION {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_url",
            "The page-markdown endpoints require Notion-Version 2026-03-11 or later.",
        );
    }
    let ws = state.lock().expect("state");
    let Some(page) = ws.pages.iter().find(|p| same_id(&p.id, &id)) else {
        return not_found("page", &id);
    };
    let (markdown, truncated) = page.markdown_response();
    Json(json!({
        "object": "page_markdown", "id": page.id, "markdown": markdown,
        "truncated": truncated, "unknown_block_ids": [],
    }))
    .into_response()
}

#[derive(Deserialize)]
struct ChildrenQuery {
    start_cursor: Option<String>,
    page_size: Option<u64>,
}

async fn block_children(
    State(state): State<Shared>,
    Path(id): Path<String>,
    Query(query): Query<ChildrenQuery>,
) -> Response {
    let size = match page_size(query.page_size.map(Value::from)) {
        Ok(size) => size,
        Err(response) => return response,
    };
    let ws = state.lock().expect("state");
    let children = ws
        .pages
        .iter()
        .find(|p| same_id(&p.id, &id))
        .map(|p| &p.blocks)
        .or_else(|| {
            ws.pages
                .iter()
                .find_map(|p| model::find_block(&p.blocks, &id))
        });
    let Some(children) = children else {
        // Children of `unsupported` blocks can't be read, as on the real API.
        if ws
            .pages
            .iter()
            .any(|p| model::find_block_kind(&p.blocks, &id) == Some("unsupported"))
        {
            return error(
                StatusCode::BAD_REQUEST,
                "validation_error",
                "Block type unsupported is not supported via the API.",
            );
        }
        return not_found("block", &id);
    };
    let items = children
        .iter()
        .map(|b| (b.id.clone(), b.to_json()))
        .collect();
    match paginate(items, query.start_cursor.as_deref(), size, "block") {
        Ok(list) => Json(list).into_response(),
        Err(response) => response,
    }
}

async fn retrieve_data_source(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let ws = state.lock().expect("state");
    match ws.data_sources.iter().find(|s| same_id(&s.id, &id)) {
        Some(source) => Json(source.to_json()).into_response(),
        None => not_found("data source", &id),
    }
}

async fn query_data_source(
    State(state): State<Shared>,
    Path(id): Path<String>,
    body: Option<Json<SearchBody>>,
) -> Response {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let size = match page_size(body.page_size) {
        Ok(size) => size,
        Err(response) => return response,
    };
    let ws = state.lock().expect("state");
    let Some(source) = ws.data_sources.iter().find(|s| same_id(&s.id, &id)) else {
        return not_found("data source", &id);
    };
    let items = ws
        .pages
        .iter()
        .filter(|p| p.parent.get("data_source_id").and_then(Value::as_str) == Some(&source.id))
        .map(|p| (p.id.clone(), p.to_json()))
        .collect();
    match paginate(
        items,
        body.start_cursor.as_deref(),
        size,
        "page_or_data_source",
    ) {
        Ok(list) => Json(list).into_response(),
        Err(response) => response,
    }
}

/// How long the fake asks clients to wait after a 429.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
