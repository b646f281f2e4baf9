//! Who may do what, and the OAuth around it: the gateway [`Hooks`](postern_gateway::hooks::Hooks)
//! ([`Access`]), composed of four services that each own their state:
//!
//! - sign-in ([`sign_in`]: local users, OIDC, sessions, the guessing limits, the pages' forms);
//! - the authorization server for MCP clients ([`authorization_server`]: registration,
//!   authorize and consent, token, revoke, client ID metadata documents, the TE format in
//!   [`oauth_server`]);
//! - the upstream-token broker ([`broker`]: users' upstream tokens, discovery of upstream
//!   authorization servers, the app-facing connect/disconnect/routes endpoints);
//! - enforcement ([`enforcement`]: identity from a TE or the cookie, the route's policy, MCP call
//!   inspection, tool-list filtering, the identity assertion, the audit log).
//!
//! [`dispatch`] is the one table of the gateway's own endpoints; [`reply`] builds responses.
#![forbid(unsafe_code)]

mod access;
pub mod assertion;
mod audit;
mod authorization_server;
mod broker;
mod cimd;
mod cookies;
mod discovery;
mod dispatch;
mod enforcement;
mod forms;
mod limiter;
mod mcp;
pub mod oauth_server;
pub mod oidc;
mod pages;
pub mod registration;
mod reply;
mod round_trip;
mod routes_api;
mod safe_http;
pub mod session;
mod settings;
mod sign_in;
mod tool_filter;
mod untrusted;
mod upstream;
pub mod users;

pub use access::Access;
pub use settings::AccessSettings;
