//! The protocol core of Postern's OAuth 2.1 authorization server for MCP clients, with no I/O of
//! its own so every rule is tested without a network:
//!
//! - [`metadata`]: protected resource metadata (RFC 9728) and authorization server metadata
//!   (RFC 8414), and the resource URL a route is known by;
//! - [`registration`]: dynamic client registration checks (RFC 7591), redirect URI rules;
//! - [`pkce`]: PKCE S256 (RFC 7636; `plain` is refused);
//! - [`client_auth`]: the credentials a client authenticates with (RFC 6749 §2.3.1), the
//!   secret redacted;
//! - [`secret`]: [`Secret`], a credential whose `Debug` is redacted;
//! - [`error`]: OAuth error codes (RFC 6749 §5.2, RFC 7591, RFC 8707, RFC 6750) and the HTTP
//!   status each is answered with;
//! - [`authorize`]: the authorization request (RFC 6749 §4.1.1 with PKCE and RFC 8707
//!   `resource`), and error redirects (RFC 6749 §4.1.2.1).
#![forbid(unsafe_code)]

pub mod authorize;
pub mod client_auth;
pub mod error;
pub mod metadata;
pub mod pkce;
pub mod registration;
pub mod secret;

pub use error::{ErrorCode, OAuthError};
pub use secret::Secret;
