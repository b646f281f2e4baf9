//! Who may do what: the gateway hooks that authorize each request against the route's policy,
//! inspect MCP traffic (`mcp_tool` rules, `tools/list` filtering) and write the audit log.
#![forbid(unsafe_code)]

pub mod assertion;
pub mod audit;
pub mod hooks;
pub mod mcp;
pub mod pages;
pub mod session;
pub mod users;

pub use hooks::{Access, AccessSettings};
pub mod cimd;
pub mod discovery;
pub mod forms;
pub mod limiter;
mod oauth_endpoints;
pub mod oauth_server;
pub mod oidc;
pub mod registration;
mod routes_api;
pub mod safe_http;
pub mod tool_filter;
pub mod untrusted;
pub mod upstream;
