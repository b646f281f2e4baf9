//! The protocol core of Postern's OAuth 2.1 authorization server for MCP clients, with no I/O of
//! its own so every rule is tested without a network:
//!
//! - [`metadata`]: protected resource metadata (RFC 9728) and authorization server metadata
//!   (RFC 8414), and the resource URL a route is known by;
//! - [`registration`]: dynamic client registration checks (RFC 7591), redirect URI rules;
//! - [`pkce`]: PKCE S256 (RFC 7636; `plain` is refused);
//! - [`authorize`]: the authorization request (RFC 6749 §4.1.1 with PKCE and RFC 8707
//!   `resource`), and error redirects (RFC 6749 §4.1.2.1).
#![forbid(unsafe_code)]

pub mod authorize;
pub mod metadata;
pub mod pkce;
pub mod registration;

/// An OAuth error (RFC 6749 §5.2 and §4.1.2.1): the code and a description that says what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {description}")]
pub struct OAuthError {
    /// `invalid_request`, `invalid_client`, `invalid_grant`, ...
    pub code: &'static str,
    /// Human-readable detail.
    pub description: String,
}

impl OAuthError {
    /// An error with `code`.
    pub fn new(code: &'static str, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
        }
    }

    /// The RFC 6749 §5.2 JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": self.code, "error_description": self.description})
    }
}
