//! `sqlite`: tools over one SQLite database file (`SQLITE_DB_FILE`).
//!
//! `read_query`, `list_tables` and `describe_table` always; `write_query` only with
//! `SQLITE_READ_WRITE=true` (a real write, annotated destructive, handy to demonstrate `mcp_tool`
//! deny rules in the gateway). How read-only is enforced is explained in [`engine`].

pub mod engine;

use std::path::PathBuf;
use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::config::SqliteConfig;
use engine::{Limits, QueryError};

/// Arguments of `read_query` and `write_query`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct QueryArgs {
    /// One SQL statement.
    pub query: String,
}

/// Arguments of `describe_table`.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct TableArgs {
    /// The table or view name, as `list_tables` returns it.
    pub table_name: String,
}

/// The `sqlite` MCP server.
#[derive(Clone)]
pub struct Sqlite {
    db: Arc<PathBuf>,
    limits: Limits,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Sqlite {
    /// Checks that the configured file is a readable database and builds the server.
    pub fn open(config: &SqliteConfig) -> Result<Self, String> {
        engine::check(&config.db_file).map_err(|e| {
            format!(
                "SQLITE_DB_FILE={}: {e} (the sqlite server opens an existing database and never creates one)",
                config.db_file.display()
            )
        })?;
        let mut tool_router = Self::tool_router();
        if !config.read_write {
            tool_router.remove_route("write_query");
        }
        Ok(Self {
            db: Arc::new(config.db_file.clone()),
            limits: Limits {
                max_rows: config.max_rows,
                max_bytes: config.max_bytes,
                timeout: config.timeout,
            },
            tool_router,
        })
    }

    /// Runs one reading SQL statement.
    #[tool(
        name = "read_query",
        description = "Run one read-only SQL statement (SELECT, WITH ... SELECT, VALUES) on the SQLite database and return the columns and rows as JSON. Results are capped; `truncated` says when rows were left out.",
        annotations(
            title = "Read query",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn read_query(
        &self,
        Parameters(args): Parameters<QueryArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let (db, limits) = (self.db.clone(), self.limits);
        blocking(move || engine::read_query(&db, &args.query, limits)).await
    }

    /// Runs one writing SQL statement.
    #[tool(
        name = "write_query",
        description = "Run one SQL statement that changes the database (INSERT, UPDATE, DELETE, CREATE, ...). Returns rows_affected and any RETURNING rows.",
        annotations(
            title = "Write query",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn write_query(
        &self,
        Parameters(args): Parameters<QueryArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let (db, limits) = (self.db.clone(), self.limits);
        blocking(move || engine::write_query(&db, &args.query, limits)).await
    }

    /// Lists the tables and views.
    #[tool(
        name = "list_tables",
        description = "List the tables and views in the SQLite database.",
        annotations(
            title = "List tables",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn list_tables(&self) -> Result<CallToolResult, ErrorData> {
        let db = self.db.clone();
        blocking(move || engine::list_tables(&db)).await
    }

    /// Describes one table's columns.
    #[tool(
        name = "describe_table",
        description = "Describe the columns of a table or view: name, type, not_null, default, primary_key.",
        annotations(
            title = "Describe table",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn describe_table(
        &self,
        Parameters(args): Parameters<TableArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let db = self.db.clone();
        blocking(move || engine::describe_table(&db, &args.table_name)).await
    }
}

/// Runs SQLite work off the async threads; a SQL problem is a tool error the model can act on.
async fn blocking(
    work: impl FnOnce() -> Result<Value, QueryError> + Send + 'static,
) -> Result<CallToolResult, ErrorData> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(CallToolResult::structured(value)),
        Ok(Err(error)) => Ok(CallToolResult::error(vec![ContentBlock::text(
            error.to_string(),
        )])),
        Err(join) => Err(ErrorData::internal_error(
            format!("query task failed: {join}"),
            None,
        )),
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Sqlite {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("postern-sqlite", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Query a SQLite database: list_tables, describe_table, then read_query with one SQL statement.",
            )
    }
}
