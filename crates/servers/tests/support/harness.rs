//! Starts the servers on an ephemeral port and connects MCP clients to them.

use std::collections::HashMap;
use std::path::Path;

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
    ProtocolVersion,
};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt, ServiceExt};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub type Client = RunningService<RoleClient, Versioned>;

/// Running servers; stopped when dropped.
pub struct Servers {
    pub base: String,
    shutdown: CancellationToken,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A client that asks for a given protocol revision.
#[derive(Clone)]
pub struct Versioned(ProtocolVersion);

impl ClientHandler for Versioned {
    fn get_info(&self) -> ClientConfig {
        let mut config = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("postern-tests", "0"),
        );
        config.protocol_version = self.0.clone();
        config
    }
}

impl Servers {
    /// Starts the servers configured by `env`.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let config = postern_servers::ServersConfig::from_env(&env).expect("valid test config");
        let shutdown = CancellationToken::new();
        let servers = postern_servers::build(&config, &shutdown).expect("servers start");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(postern_servers::serve(
            listener,
            servers.router,
            shutdown.clone(),
        ));
        Self { base, shutdown }
    }

    fn transport(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> StreamableHttpClientTransport<reqwest::Client> {
        let headers = headers
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
            .collect();
        StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(format!("{}{path}", self.base))
                .custom_headers(headers),
        )
    }

    /// An initialized client (protocol 2025-11-25) sending `headers` with every request.
    pub async fn client(&self, path: &str, headers: &[(&str, &str)]) -> Client {
        Versioned(ProtocolVersion::V_2025_11_25)
            .serve(self.transport(path, headers))
            .await
            .expect("MCP initialize")
    }

    /// An initialized client asking for `version`.
    pub async fn client_with_version(&self, path: &str, version: ProtocolVersion) -> Client {
        Versioned(version)
            .serve(self.transport(path, &[]))
            .await
            .expect("MCP initialize")
    }

    /// A client on the stateless 2026-07-28 lifecycle (`server/discover`, no initialize).
    pub async fn client_discover(&self, path: &str) -> Client {
        Versioned(ProtocolVersion::V_2026_07_28)
            .serve_with_lifecycle(
                self.transport(path, &[]),
                ClientLifecycleMode::Discover {
                    preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                },
            )
            .await
            .expect("MCP discover")
    }

    /// Status of a raw `initialize` POST with the given `Host` (and `Origin`).
    pub async fn raw_initialize(&self, path: &str, host: &str, origin: Option<&str>) -> u16 {
        let mut request = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .header("host", host)
            .header("accept", "application/json, text/event-stream")
            .json(
                &serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "t", "version": "0"}}}),
            );
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send().await.unwrap().status().as_u16()
    }
}

/// Calls `name` with `arguments`.
pub async fn call(client: &Client, name: &'static str, arguments: Value) -> CallToolResult {
    client
        .call_tool(
            CallToolRequestParams::new(name)
                .with_arguments(arguments.as_object().cloned().unwrap_or_default()),
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The one text content item.
pub fn text(result: &CallToolResult) -> String {
    result
        .content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .unwrap_or_default()
}

/// The one text content item, parsed as JSON.
pub fn text_json(result: &CallToolResult) -> Value {
    serde_json::from_str(&text(result))
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(result)))
}

/// A small database: `people(id, name, score)`.
pub fn demo_db(dir: &Path) -> String {
    let path = dir.join("people.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL, score REAL);
         INSERT INTO people VALUES (1, 'Ada', 9.5), (2, 'Grace', NULL);",
    )
    .unwrap();
    path.display().to_string()
}
