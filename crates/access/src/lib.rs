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
pub mod audit;
pub mod authorization_server;
pub mod broker;
pub mod cimd;
pub mod discovery;
mod dispatch;
pub mod enforcement;
pub mod forms;
pub mod limiter;
pub mod mcp;
pub mod oauth_server;
pub mod oidc;
pub mod pages;
pub mod registration;
mod reply;
pub mod round_trip;
mod routes_api;
pub mod safe_http;
pub mod session;
pub mod settings;
pub mod sign_in;
pub mod tool_filter;
pub mod untrusted;
pub mod upstream;
pub mod users;

pub use access::Access;
pub use settings::AccessSettings;
