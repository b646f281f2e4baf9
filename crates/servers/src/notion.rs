//! `notion`: exactly `search` and `fetch`, following OpenAI's deep research contract (one text
//! content item holding the JSON, the same object as structured content, `{"results": []}` when
//! nothing matches), over the caller's Notion workspace. The gateway passes the user's Notion
//! token (TI) as `Authorization: Bearer`; this server keeps no state.
//!
//! `fetch` prefers Notion's page-Markdown endpoint and falls back to walking every nested block
//! (the reference dropped content under toggles and lists) when the Markdown is truncated or
//! unavailable.

pub mod api;
pub mod ids;
pub mod render;

use futures::future::{BoxFuture, FutureExt, try_join_all};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::Extension;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::config::NotionConfig;
use api::{Call, NotionApi, NotionError};
use ids::{DATA_SOURCE_PREFIX, Target};
use render::Node;

/// Deepest block nesting followed when walking a page.
const MAX_DEPTH: usize = 12;
/// Most blocks read when walking one page.
const MAX_BLOCKS: usize = 5_000;
/// Length of the `text` snippet in search results.
const SNIPPET_CHARS: usize = 200;

/// Arguments of `search`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct SearchArgs {
    /// Words to look for in page and database titles; empty returns recently edited pages.
    #[serde(default)]
    pub query: String,
}

/// Arguments of `fetch`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct FetchArgs {
    /// An id from search results, a Notion page id (dashes optional) or a Notion page URL.
    pub id: String,
}

/// The `notion` MCP server.
#[derive(Clone)]
pub struct Notion {
    api: NotionApi,
    search_max_pages: usize,
    fetch_max_chars: usize,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Notion {
    /// A server for `config`.
    pub fn new(config: &NotionConfig) -> Self {
        Self {
            api: NotionApi::new(config),
            search_max_pages: config.search_max_pages,
            fetch_max_chars: config.fetch_max_chars,
            tool_router: Self::tool_router(),
        }
    }

    /// Searches page and database titles.
    #[tool(
        name = "search",
        description = "Search the user's Notion workspace by page and database title. Returns {\"results\": [{id, title, url, text}]}; pass an id to `fetch` for the full content. An empty query lists recently edited pages.",
        annotations(
            title = "Search Notion",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = true
        )
    )]
    async fn search(
        &self,
        Parameters(args): Parameters<SearchArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        let call = match self.call(&parts) {
            Ok(call) => call,
            Err(result) => return Ok(result),
        };
        Ok(respond(self.search_results(&call, args.query.trim()).await))
    }

    /// Fetches a page (or data source) in full.
    #[tool(
        name = "fetch",
        description = "Fetch a Notion page (or database) in full as Markdown. Takes an id from search results, a page id or a Notion URL. Returns {id, title, text, url, metadata}.",
        annotations(
            title = "Fetch Notion page",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = true
        )
    )]
    async fn fetch(
        &self,
        Parameters(args): Parameters<FetchArgs>,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        let call = match self.call(&parts) {
            Ok(call) => call,
            Err(result) => return Ok(result),
        };
        let target = match ids::parse(&args.id) {
            Ok(target) => target,
            Err(message) => return Ok(tool_error(message)),
        };
        let document = match target {
            Target::Page(id) => match self.fetch_page(&call, &id).await {
                // An id pasted from a database URL is a data source, not a page.
                Err(NotionError::Api { status: 404, .. })
                    if looks_like_database(&call, &id).await =>
                {
                    self.fetch_data_source(&call, &id).await
                }
                other => other,
            },
            Target::DataSource(id) => self.fetch_data_source(&call, &id).await,
        };
        Ok(respond(document.map(|d| self.cap(d))))
    }
}

impl Notion {
    /// The caller's Notion token (case-insensitive `Bearer`), or a tool error saying what's missing.
    fn call(&self, parts: &http::request::Parts) -> Result<Call, CallToolResult> {
        let token = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().to_owned())
            .filter(|t| !t.is_empty());
        match token {
            Some(token) => Ok(self.api.call(token)),
            None => Err(tool_error(
                "no Notion access token: this server expects the user's Notion token as `Authorization: Bearer`; put it behind the Postern gateway on a route with `upstream_oauth2` for Notion".into(),
            )),
        }
    }

    async fn search_results(&self, call: &Call, query: &str) -> Result<Value, NotionError> {
        let mut body = json!({ "page_size": 100 });
        if query.is_empty() {
            // Notion lists everything shared, newest edit first; keep it to pages.
            body["filter"] = json!({"property": "object", "value": "page"});
            body["sort"] = json!({"direction": "descending", "timestamp": "last_edited_time"});
        } else {
            body["query"] = json!(query);
        }
        let mut results = Vec::new();
        for _ in 0..self.search_max_pages {
            let page = call.post("/v1/search", body.clone()).await?;
            for object in page
                .get("results")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(result) = search_result(object) {
                    results.push(result);
                }
            }
            match page.get("next_cursor").and_then(Value::as_str) {
                Some(cursor) if page.get("has_more") == Some(&json!(true)) => {
                    body["start_cursor"] = json!(cursor);
                }
                _ => break,
            }
        }
        Ok(json!({ "results": results }))
    }

    async fn fetch_page(&self, call: &Call, id: &str) -> Result<Value, NotionError> {
        let page = call.get(&format!("/v1/pages/{id}")).await?;
        let (text, source) = match call.get(&format!("/v1/pages/{id}/markdown")).await {
            Ok(md)
                if md.get("truncated") != Some(&json!(true))
                    && md
                        .get("unknown_block_ids")
                        .and_then(Value::as_array)
                        .is_none_or(|u| u.is_empty()) =>
            {
                let text = md
                    .get("markdown")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                (text, "markdown")
            }
            Ok(_) => (self.walk_page(call, id).await?, "blocks"),
            Err(NotionError::Api { status, code, .. }) if status != 401 && status != 429 => {
                tracing::debug!(%code, "notion: markdown endpoint unavailable, walking blocks");
                (self.walk_page(call, id).await?, "blocks")
            }
            Err(error) => return Err(error),
        };
        let mut metadata = Map::new();
        for key in ["created_time", "last_edited_time"] {
            if let Some(v) = page.get(key).and_then(Value::as_str) {
                metadata.insert(key.into(), json!(v));
            }
        }
        metadata.insert("parent".into(), json!(parent(&page)));
        metadata.insert("object".into(), json!("page"));
        metadata.insert("content_source".into(), json!(source));
        if page.get("in_trash") == Some(&json!(true)) {
            metadata.insert("in_trash".into(), json!("true"));
        }
        Ok(json!({
            "id": page.get("id").and_then(Value::as_str).unwrap_or(id),
            "title": render::title(&page),
            "text": text,
            "url": page.get("url").and_then(Value::as_str).map_or_else(|| render::page_url(id), str::to_owned),
            "metadata": metadata,
        }))
    }

    /// Walks every block of the page, with bounded concurrency, and renders it as Markdown.
    async fn walk_page(&self, call: &Call, id: &str) -> Result<String, NotionError> {
        let budget = std::sync::atomic::AtomicUsize::new(MAX_BLOCKS);
        let nodes = walk(call, id.to_owned(), 0, &budget).await?;
        let mut text = render::blocks(&nodes);
        if budget.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            text.push_str(&format!(
                "\n\n[Only the first {MAX_BLOCKS} blocks of this page were read.]"
            ));
        }
        Ok(text)
    }

    async fn fetch_data_source(&self, call: &Call, id: &str) -> Result<Value, NotionError> {
        let source = call.get(&format!("/v1/data_sources/{id}")).await?;
        let title = render::title(&source);
        let mut text = format!("# {title}\n\n## Properties\n");
        if let Some(props) = source.get("properties").and_then(Value::as_object) {
            for (name, prop) in props {
                let kind = prop
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown");
                text.push_str(&format!("- {name} ({kind})\n"));
            }
        }
        text.push_str("\n## Rows\n");
        let mut body = json!({ "page_size": 100 });
        let mut rows = 0;
        for _ in 0..self.search_max_pages {
            let page = call
                .post(&format!("/v1/data_sources/{id}/query"), body.clone())
                .await?;
            for row in page
                .get("results")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                rows += 1;
                let url = row.get("url").and_then(Value::as_str).unwrap_or_default();
                let summary = properties_summary(row);
                let sep = if summary.is_empty() { "" } else { ": " };
                text.push_str(&format!(
                    "- [{}]({url}){sep}{summary}\n",
                    render::title(row)
                ));
            }
            match page.get("next_cursor").and_then(Value::as_str) {
                Some(cursor) if page.get("has_more") == Some(&json!(true)) => {
                    body["start_cursor"] = json!(cursor)
                }
                _ => break,
            }
        }
        Ok(json!({
            "id": format!("{DATA_SOURCE_PREFIX}{id}"),
            "title": title,
            "text": text,
            "url": source.get("url").and_then(Value::as_str).map_or_else(|| render::page_url(id), str::to_owned),
            "metadata": {
                "object": "data_source",
                "rows": rows.to_string(),
                "last_edited_time": source.get("last_edited_time").and_then(Value::as_str).unwrap_or_default(),
            },
        }))
    }

    /// Caps the document text at the configured size, on a character boundary, saying so.
    fn cap(&self, mut document: Value) -> Value {
        let Some(text) = document.get("text").and_then(Value::as_str) else {
            return document;
        };
        let truncated = text.chars().count() > self.fetch_max_chars;
        if truncated {
            let end = text
                .char_indices()
                .nth(self.fetch_max_chars)
                .map_or(text.len(), |(i, _)| i);
            let cut = format!(
                "{}\n\n[Truncated: the document is longer than {} characters.]",
                &text[..end],
                self.fetch_max_chars
            );
            document["text"] = json!(cut);
        }
        document["metadata"]["truncated"] = json!(truncated.to_string());
        document
    }
}

/// Reads the children of `id` (all pages of them) and, recursively, theirs.
fn walk<'a>(
    call: &'a Call,
    id: String,
    depth: usize,
    budget: &'a std::sync::atomic::AtomicUsize,
) -> BoxFuture<'a, Result<Vec<Node>, NotionError>> {
    use std::sync::atomic::Ordering;
    async move {
        let mut blocks = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/blocks/{id}/children?page_size=100&start_cursor={c}"),
                None => format!("/v1/blocks/{id}/children?page_size=100"),
            };
            let page = call.get(&path).await?;
            blocks.extend(
                page.get("results")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            );
            match page.get("next_cursor").and_then(Value::as_str) {
                Some(c) if page.get("has_more") == Some(&json!(true)) => {
                    cursor = Some(c.to_owned())
                }
                _ => break,
            }
        }
        let taken = blocks.len().min(budget.load(Ordering::Relaxed));
        budget.fetch_sub(taken, Ordering::Relaxed);
        blocks.truncate(taken);
        let children = blocks.iter().map(|block| {
            let kind = block
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let descend = block.get("has_children") == Some(&json!(true))
                && !matches!(kind, "child_page" | "child_database" | "unsupported")
                && depth < MAX_DEPTH;
            let child_id = block
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            async move {
                if !descend {
                    return Ok((Vec::new(), None));
                }
                match walk(call, child_id, depth + 1, budget).await {
                    Ok(nodes) => Ok((nodes, None)),
                    // One unreadable subtree doesn't lose the rest of the page.
                    Err(NotionError::Api {
                        status,
                        code,
                        message,
                    }) if status != 401 && status != 429 => Ok((
                        Vec::new(),
                        Some(format!(
                            "nested content could not be read: {code}: {message}"
                        )),
                    )),
                    Err(e) => Err(e),
                }
            }
        });
        let children = try_join_all(children).await?;
        Ok(blocks
            .into_iter()
            .zip(children)
            .map(|(block, (children, note))| Node {
                block,
                children,
                note,
            })
            .collect())
    }
    .boxed()
}

async fn looks_like_database(call: &Call, id: &str) -> bool {
    call.get(&format!("/v1/data_sources/{id}")).await.is_ok()
}

/// A search hit as the deep research contract wants it, or `None` for objects we can't open.
fn search_result(object: &Value) -> Option<Value> {
    let id = object.get("id").and_then(Value::as_str)?;
    let kind = object
        .get("object")
        .and_then(Value::as_str)
        .unwrap_or("page");
    let title = render::title(object);
    let (result_id, snippet) = match kind {
        "page" => {
            let props = properties_summary(object);
            let edited = object
                .get("last_edited_time")
                .and_then(Value::as_str)
                .unwrap_or("unknown");
            let mut text = format!("{title}. Page, last edited {edited}.");
            if !props.is_empty() {
                text.push(' ');
                text.push_str(&props);
            }
            (id.to_owned(), text)
        }
        "data_source" => (
            format!("{DATA_SOURCE_PREFIX}{id}"),
            format!("{title}. Database (data source)."),
        ),
        _ => return None,
    };
    let url = object
        .get("url")
        .and_then(Value::as_str)
        .map_or_else(|| render::page_url(id), str::to_owned);
    Some(json!({ "id": result_id, "title": title, "url": url, "text": snippet_of(&snippet) }))
}

/// `Name: value; ...` for the non-title properties that have a simple text form.
fn properties_summary(object: &Value) -> String {
    let Some(props) = object.get("properties").and_then(Value::as_object) else {
        return String::new();
    };
    let mut parts = Vec::new();
    for (name, prop) in props {
        let kind = prop.get("type").and_then(Value::as_str).unwrap_or_default();
        let value = match kind {
            "rich_text" => render::plain_text(&prop["rich_text"]),
            "select" | "status" => prop[kind]
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            "multi_select" => prop[kind]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| o.get("name").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(", "),
            "number" => prop["number"]
                .as_f64()
                .map(|n| n.to_string())
                .unwrap_or_default(),
            "checkbox" => prop["checkbox"]
                .as_bool()
                .map(|b| b.to_string())
                .unwrap_or_default(),
            "date" => prop["date"]
                .get("start")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            "url" | "email" | "phone_number" => prop[kind].as_str().unwrap_or_default().to_owned(),
            _ => String::new(),
        };
        if !value.is_empty() {
            parts.push(format!("{name}: {value}"));
        }
    }
    parts.join("; ")
}

fn snippet_of(text: &str) -> String {
    if text.chars().count() <= SNIPPET_CHARS {
        return text.to_owned();
    }
    let cut: String = text.chars().take(SNIPPET_CHARS - 1).collect();
    format!("{cut}…")
}

fn parent(page: &Value) -> String {
    let parent = &page["parent"];
    match parent.get("type").and_then(Value::as_str) {
        Some("workspace") => "workspace".into(),
        Some(kind) => format!(
            "{kind}:{}",
            parent.get(kind).and_then(Value::as_str).unwrap_or_default()
        ),
        None => "unknown".into(),
    }
}

/// The deep research shape: one text item with the JSON, and the same as structured content.
fn respond(result: Result<Value, NotionError>) -> CallToolResult {
    match result {
        Ok(value) => CallToolResult::structured(value),
        Err(error) => {
            tracing::info!(%error, "notion: tool call failed");
            tool_error(error.to_string())
        }
    }
}

fn tool_error(message: String) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message)])
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Notion {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("postern-notion", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Search the user's Notion workspace with `search`, then read documents with `fetch`.",
            )
    }
}
