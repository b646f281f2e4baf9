//! `whoami`: one tool that returns the identity the gateway asserted for this request.
//!
//! The identity comes only from a verified `X-Pomerium-Jwt-Assertion` (see `postern-assertion`);
//! anything else (no header, a forged or expired token) is a tool error that names the failed
//! check, so a misconfigured route is easy to diagnose.

use std::sync::Arc;

use postern_assertion::{ASSERTION_HEADER, Verifier};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::Extension;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ErrorData, ServerHandler, tool, tool_handler, tool_router};
use serde_json::json;

/// The `whoami` MCP server.
#[derive(Clone)]
pub struct Whoami {
    verifier: Arc<Verifier>,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Whoami {
    /// A server that verifies assertions with `verifier`.
    pub fn new(verifier: Arc<Verifier>) -> Self {
        Self {
            verifier,
            tool_router: Self::tool_router(),
        }
    }

    /// Returns the verified identity of the signed-in user.
    #[tool(
        name = "whoami",
        description = "Returns the identity of the signed-in user (name, email, user id, groups) as verified from the gateway's signed assertion.",
        annotations(
            title = "Who am I",
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn whoami(
        &self,
        Extension(parts): Extension<http::request::Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        let header = parts
            .headers
            .get(ASSERTION_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        match self.verifier.verify(header).await {
            Ok(id) => Ok(CallToolResult::structured(json!({
                "name": id.name,
                "email": id.email,
                "user": if id.user.is_empty() { &id.sub } else { &id.user },
                "sub": id.sub,
                "groups": id.groups,
                "sid": id.sid,
                "issuer": id.iss,
            }))),
            Err(error) => {
                tracing::info!(%error, "whoami: identity assertion refused");
                Ok(CallToolResult::error(vec![ContentBlock::text(format!(
                    "identity check failed: {error}"
                ))]))
            }
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Whoami {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "postern-whoami",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions("Call `whoami` to learn who the signed-in user is.")
    }
}
