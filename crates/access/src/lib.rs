//! Who may do what, and the OAuth around it: the gateway [`Hooks`](postern_gateway::hooks::Hooks)
//! ([`Access`]), composed of four services, each a folder with a type that owns its state:
//!
//! - `sign_in/` (`SignIn`): local users, OIDC or GitHub, sessions, the sign-in and sign-out pages;
//! - `authorization_server/` (`AuthorizationServer`): client registration and its limits,
//!   authorize and consent, token, revoke, client ID metadata documents;
//! - `broker/` (`UpstreamBroker`): users' upstream tokens (TI), discovery of upstream
//!   authorization servers, the app-facing connect/disconnect/routes endpoints and the portal;
//! - `enforcement/` (`Enforcement`): identity from a TE or the cookie, the route's policy, MCP
//!   call inspection, tool-list filtering, the identity assertion, the audit log.
//! - `aggregate` (`Aggregator`): aggregate MCP routes (`mcp.aggregate`), one URL federating
//!   several MCP server routes; each member call goes through `Enforcement` as a direct call
//!   would (its design is in the module's doc comment).
//!
//! Under them, shared by all: [`oauth_server`], the TE format and its revocation cache, and
//! `web/`, browser and HTTP plumbing (responses, forms and their anti-forgery pair, cookies,
//! round trips through other sites, the pages, rate limits, outbound fetches of URLs others
//! chose). `dispatch` is the one table of the gateway's own endpoints. Services depend only
//! downwards (`web` <- `oauth_server` <- `sign_in` <- `broker` <- `authorization_server`,
//! `enforcement`): no import circles.
#![forbid(unsafe_code)]

mod access;
pub(crate) mod aggregate;
mod authorization_server;
mod broker;
mod dispatch;
mod enforcement;
pub mod oauth_server;
mod settings;
mod sign_in;
mod web;

pub use access::Access;
pub use authorization_server::registration;
pub use enforcement::assertion;
pub use settings::AccessSettings;
pub use sign_in::{github, oidc, session, users};
