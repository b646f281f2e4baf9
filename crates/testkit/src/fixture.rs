//! An MCP server with the official conformance suite's fixtures (tools `test_simple_text`,
//! `test_image_content`, ...; resources `test://static-text`, ...; prompts
//! `test_simple_prompt`, ...), built on rmcp, so the whole suite can run against our MCP stack
//! directly and through the gateway. Results are written as the wire JSON the scenarios specify
//! and parsed into rmcp's types.
//!
//! The suite also exercises features the MCP specification now deprecates (sampling, logging);
//! the fixture implements them because the suite checks them.
#![allow(deprecated)]

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::*;
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A 1x1 red PNG.
pub const RED_PIXEL_PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
/// A tiny WAV file (44-byte header, two silent samples).
pub const SILENT_WAV: &str = "UklGRigAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQQAAAAAAAAA";

fn from<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("fixture JSON matches rmcp's model")
}

/// The fixture server.
#[derive(Clone, Default)]
pub struct Fixture;

impl Fixture {
    fn tools() -> Value {
        let no_args = json!({"type": "object", "properties": {}});
        let tool = |name: &str, description: &str| json!({"name": name, "description": description, "inputSchema": no_args});
        json!([
            tool("test_simple_text", "Returns simple text"),
            tool("test_image_content", "Returns an image"),
            tool("test_audio_content", "Returns audio"),
            tool("test_embedded_resource", "Returns an embedded resource"),
            tool("test_multiple_content_types", "Returns text, an image and a resource"),
            tool("test_tool_with_logging", "Sends three log messages"),
            tool("test_error_handling", "Always fails"),
            tool("test_tool_with_progress", "Reports progress"),
            {"name": "test_sampling", "description": "Asks the client's LLM",
             "inputSchema": {"type": "object", "properties": {"prompt": {"type": "string"}}, "required": ["prompt"]}},
            {"name": "test_elicitation", "description": "Asks the user",
             "inputSchema": {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}},
            tool("test_elicitation_sep1034_defaults", "Elicitation with defaults"),
            tool("test_elicitation_sep1330_enums", "Elicitation with enums"),
            {"name": "json_schema_2020_12_tool", "description": "Tool with JSON Schema 2020-12 features",
             "inputSchema": {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
                "$defs": {"address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}},
                "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
                "additionalProperties": false}},
        ])
    }

    async fn log(context: &RequestContext<RoleServer>, message: &str) {
        #[allow(deprecated)]
        let _ = context
            .peer
            .notify_logging_message(from(
                json!({"level": "info", "logger": "fixture", "data": message}),
            ))
            .await;
    }

    async fn elicit(
        context: &RequestContext<RoleServer>,
        params: Value,
    ) -> Result<CallToolResult, ErrorData> {
        let result = context
            .peer
            .create_elicitation(from(params))
            .await
            .map_err(|e| ErrorData::internal_error(format!("elicitation failed: {e}"), None))?;
        let result = serde_json::to_value(&result).unwrap_or_default();
        Ok(from(json!({"content": [{"type": "text", "text": format!(
            "Elicitation completed: action={}, content={}",
            result["action"].as_str().unwrap_or("?"), result.get("content").cloned().unwrap_or(Value::Null)
        )}]})))
    }

    /// `test_tool_with_logging`: three log messages, 50 ms apart.
    async fn with_logging(context: &RequestContext<RoleServer>) -> CallToolResult {
        Self::log(context, "Tool execution started").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        Self::log(context, "Tool processing data").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        Self::log(context, "Tool execution completed").await;
        text("Tool with logging executed successfully")
    }

    /// `test_tool_with_progress`: progress 0, 50 and 100 of 100, 50 ms apart, when the client
    /// asked for progress.
    async fn with_progress(context: &RequestContext<RoleServer>) -> CallToolResult {
        let token = context.meta.get_progress_token();
        for (i, progress) in [0, 50, 100].into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if let Some(token) = &token {
                let _ = context
                    .peer
                    .notify_progress(from(
                        json!({"progressToken": token, "progress": progress, "total": 100}),
                    ))
                    .await;
            }
        }
        text("Tool with progress executed successfully")
    }

    /// `test_sampling`: asks the client's LLM the `prompt` argument and returns its answer.
    async fn sampling(
        context: &RequestContext<RoleServer>,
        args: &JsonObject,
    ) -> Result<CallToolResult, ErrorData> {
        let prompt = args
            .get("prompt")
            .and_then(Value::as_str)
            .unwrap_or_default();
        #[allow(deprecated)]
        let reply = context
            .peer
            .create_message(from(json!({"messages": [{"role": "user", "content": {"type": "text", "text": prompt}}], "maxTokens": 100})))
            .await
            .map_err(|e| ErrorData::internal_error(format!("sampling failed: {e}"), None))?;
        let reply = serde_json::to_value(&reply).unwrap_or_default();
        let answer = reply
            .pointer("/content/text")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Ok(text(&format!("LLM response: {answer}")))
    }
}

/// A tool result of one text block.
fn text(t: &str) -> CallToolResult {
    from(json!({"content": [{"type": "text", "text": t}]}))
}

/// `test_elicitation`'s request: a username and an email, under the `message` argument.
fn user_info_form(args: &JsonObject) -> Value {
    let message = args
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("Please provide your information");
    json!({"message": message, "requestedSchema": {"type": "object", "properties": {
        "username": {"type": "string", "description": "User's response"},
        "email": {"type": "string", "description": "User's email address"}}, "required": ["username", "email"]}})
}

/// SEP-1034: a form whose fields have defaults.
fn defaults_form() -> Value {
    json!({"message": "Please review and update the form fields with defaults", "requestedSchema": {
        "type": "object", "properties": {
            "name": {"type": "string", "description": "User name", "default": "John Doe"},
            "age": {"type": "integer", "description": "User age", "default": 30},
            "score": {"type": "number", "description": "User score", "default": 95.5},
            "status": {"type": "string", "description": "User status", "enum": ["active", "inactive", "pending"], "default": "active"},
            "verified": {"type": "boolean", "description": "Verification status", "default": true}}}})
}

/// SEP-1330: single and multiple choice enums, titled, untitled and legacy.
fn enums_form() -> Value {
    json!({"message": "Please select options from the enum fields", "requestedSchema": {
        "type": "object", "properties": {
            "untitledSingle": {"type": "string", "description": "Select one option", "enum": ["option1", "option2", "option3"]},
            "titledSingle": {"type": "string", "description": "Select one option with titles", "oneOf": [
                {"const": "value1", "title": "First Option"}, {"const": "value2", "title": "Second Option"}, {"const": "value3", "title": "Third Option"}]},
            "legacyEnum": {"type": "string", "description": "Select one option (legacy)", "enum": ["opt1", "opt2", "opt3"],
                "enumNames": ["Option One", "Option Two", "Option Three"]},
            "untitledMulti": {"type": "array", "description": "Select multiple options", "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
            "titledMulti": {"type": "array", "description": "Select multiple options with titles", "items": {"anyOf": [
                {"const": "value1", "title": "First Choice"}, {"const": "value2", "title": "Second Choice"}, {"const": "value3", "title": "Third Choice"}]}}}}})
}

impl ServerHandler for Fixture {
    fn get_info(&self) -> ServerConfig {
        let capabilities: ServerCapabilities = from(json!({
            "tools": {}, "resources": {"subscribe": true, "listChanged": true}, "prompts": {},
            "logging": {}, "completions": {},
        }));
        ServerConfig::new(capabilities).with_server_info(Implementation::new(
            "postern-mcp-fixture",
            env!("CARGO_PKG_VERSION"),
        ))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(from(json!({"tools": Self::tools()})))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.clone().unwrap_or_default();
        let result: CallToolResult = match request.name.as_ref() {
            "test_simple_text" => text("This is a simple text response for testing."),
            "test_image_content" => from(
                json!({"content": [{"type": "image", "data": RED_PIXEL_PNG, "mimeType": "image/png"}]}),
            ),
            "test_audio_content" => from(
                json!({"content": [{"type": "audio", "data": SILENT_WAV, "mimeType": "audio/wav"}]}),
            ),
            "test_embedded_resource" => from(json!({"content": [{"type": "resource", "resource": {
                "uri": "test://embedded-resource", "mimeType": "text/plain", "text": "This is an embedded resource content."}}]})),
            "test_multiple_content_types" => from(json!({"content": [
                {"type": "text", "text": "Multiple content types test:"},
                {"type": "image", "data": RED_PIXEL_PNG, "mimeType": "image/png"},
                {"type": "resource", "resource": {"uri": "test://mixed-content-resource", "mimeType": "application/json",
                    "text": "{\"test\":\"data\",\"value\":123}"}}]})),
            "test_tool_with_logging" => Self::with_logging(&context).await,
            "test_error_handling" => from(json!({"isError": true, "content": [
                {"type": "text", "text": "This tool intentionally returns an error for testing"}]})),
            "test_tool_with_progress" => Self::with_progress(&context).await,
            "test_sampling" => Self::sampling(&context, &args).await?,
            "test_elicitation" => Self::elicit(&context, user_info_form(&args)).await?,
            "test_elicitation_sep1034_defaults" => Self::elicit(&context, defaults_form()).await?,
            "test_elicitation_sep1330_enums" => Self::elicit(&context, enums_form()).await?,
            "json_schema_2020_12_tool" => text("ok"),
            other => {
                return Err(ErrorData::invalid_params(
                    format!("unknown tool {other}"),
                    None,
                ));
            }
        };
        Ok(result.into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(from(json!({"resources": [
            {"uri": "test://static-text", "name": "Static text", "description": "A static text resource", "mimeType": "text/plain"},
            {"uri": "test://static-binary", "name": "Static binary", "description": "A static PNG", "mimeType": "image/png"},
            {"uri": "test://watched-resource", "name": "Watched", "description": "A resource to subscribe to", "mimeType": "text/plain"},
        ]})))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(from(
            json!({"resourceTemplates": [{"uriTemplate": "test://template/{id}/data", "name": "Template",
            "description": "Data by id", "mimeType": "application/json"}]}),
        ))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri.as_str();
        let contents = match uri {
            "test://static-text" => {
                json!([{"uri": uri, "mimeType": "text/plain", "text": "This is the content of the static text resource."}])
            }
            "test://static-binary" => {
                json!([{"uri": uri, "mimeType": "image/png", "blob": RED_PIXEL_PNG}])
            }
            "test://watched-resource" => {
                json!([{"uri": uri, "mimeType": "text/plain", "text": "Watched resource content."}])
            }
            _ => match uri
                .strip_prefix("test://template/")
                .and_then(|r| r.strip_suffix("/data"))
            {
                Some(id) => json!([{"uri": uri, "mimeType": "application/json",
                    "text": json!({"id": id, "templateTest": true, "data": format!("Data for ID: {id}")}).to_string()}]),
                None => {
                    return Err(ErrorData::resource_not_found(
                        format!("no resource {uri}"),
                        None,
                    ));
                }
            },
        };
        Ok(from::<ReadResourceResult>(json!({"contents": contents})).into())
    }

    async fn subscribe(
        &self,
        _request: SubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Ok(())
    }

    async fn unsubscribe(
        &self,
        _request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        Ok(from(json!({"prompts": [
            {"name": "test_simple_prompt", "description": "A simple prompt"},
            {"name": "test_prompt_with_arguments", "description": "A prompt with arguments", "arguments": [
                {"name": "arg1", "description": "First argument", "required": true},
                {"name": "arg2", "description": "Second argument", "required": true}]},
            {"name": "test_prompt_with_embedded_resource", "description": "A prompt with a resource", "arguments": [
                {"name": "resourceUri", "description": "The resource to embed", "required": true}]},
            {"name": "test_prompt_with_image", "description": "A prompt with an image"},
        ]})))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let args = request.arguments.clone().unwrap_or_default();
        let arg = |name: &str| {
            args.get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let messages = match request.name.as_ref() {
            "test_simple_prompt" => {
                json!([{"role": "user", "content": {"type": "text", "text": "This is a simple prompt for testing."}}])
            }
            "test_prompt_with_arguments" => json!([{"role": "user", "content": {"type": "text",
                "text": format!("Prompt with arguments: arg1='{}', arg2='{}'", arg("arg1"), arg("arg2"))}}]),
            "test_prompt_with_embedded_resource" => json!([
                {"role": "user", "content": {"type": "resource", "resource": {"uri": arg("resourceUri"), "mimeType": "text/plain",
                    "text": "Embedded resource content for testing."}}},
                {"role": "user", "content": {"type": "text", "text": "Please process the embedded resource above."}}]),
            "test_prompt_with_image" => json!([
                {"role": "user", "content": {"type": "image", "data": RED_PIXEL_PNG, "mimeType": "image/png"}},
                {"role": "user", "content": {"type": "text", "text": "Please analyze the image above."}}]),
            other => {
                return Err(ErrorData::invalid_params(
                    format!("unknown prompt {other}"),
                    None,
                ));
            }
        };
        Ok(from::<GetPromptResult>(json!({"messages": messages})).into())
    }

    async fn complete(
        &self,
        _request: CompleteRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        Ok(from(
            json!({"completion": {"values": ["paris", "park", "party"], "total": 3, "hasMore": false}}),
        ))
    }

    async fn set_level(
        &self,
        _request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Ok(())
    }
}

/// The fixture as an HTTP service at `/mcp` (sessions on: server-to-client requests need them;
/// DNS-rebinding protection on: only loopback `Host`s).
pub fn router(shutdown: &CancellationToken) -> axum::Router {
    let config =
        StreamableHttpServerConfig::default().with_cancellation_token(shutdown.child_token());
    let service = StreamableHttpService::new(
        || Ok(Fixture),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    axum::Router::new().nest_service("/mcp", service)
}

/// The fixture without sessions, answering with JSON, plus `/events` (an SSE tick every 5 s).
pub fn stateless_router(shutdown: &CancellationToken) -> axum::Router {
    let config = StreamableHttpServerConfig::default()
        .with_cancellation_token(shutdown.child_token())
        .with_legacy_session_mode(false)
        .with_json_response(true);
    let service = StreamableHttpService::new(
        || Ok(Fixture),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    axum::Router::new()
        .nest_service("/mcp", service)
        .route("/events", axum::routing::get(ticks))
}

async fn ticks() -> axum::response::Response {
    let stream = futures_ticks();
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .body(axum::body::Body::from_stream(stream))
        .expect("static response")
}

fn futures_ticks() -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    futures::stream::unfold(0u64, |n| async move {
        if n > 0 {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        Some((Ok(bytes::Bytes::from(format!("data: tick {n}\n\n"))), n + 1))
    })
}
