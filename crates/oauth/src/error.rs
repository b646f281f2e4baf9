//! OAuth errors: the codes of RFC 6749 §5.2 and §4.1.2.1, RFC 7591 §3.2.2, RFC 8707 §2 and
//! RFC 6750 §3.1, each knowing the HTTP status it is answered with, and the error itself.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// An OAuth error code, serialised as its RFC string (`invalid_grant`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// RFC 6749 §5.2, §4.1.2.1: a parameter is missing, repeated or malformed.
    InvalidRequest,
    /// RFC 6749 §5.2: client authentication failed (401).
    InvalidClient,
    /// RFC 6749 §5.2: the code or refresh token is invalid, expired, revoked or not the
    /// client's.
    InvalidGrant,
    /// RFC 6749 §5.2, §4.1.2.1: the client may not use this grant or flow.
    UnauthorizedClient,
    /// RFC 6749 §5.2: the grant type is not supported.
    UnsupportedGrantType,
    /// RFC 6749 §5.2, §4.1.2.1: the scope is invalid or unknown.
    InvalidScope,
    /// RFC 6749 §4.1.2.1: the user or the server refused (403 where it is a response).
    AccessDenied,
    /// RFC 6749 §4.1.2.1: the response type is not supported.
    UnsupportedResponseType,
    /// RFC 6749 §4.1.2.1: the server failed (500).
    ServerError,
    /// RFC 6749 §4.1.2.1: the server cannot answer now; try again (503).
    TemporarilyUnavailable,
    /// RFC 7009 §2.2.1: the token type cannot be revoked.
    UnsupportedTokenType,
    /// RFC 7591 §3.2.2: a redirect URI is not acceptable.
    InvalidRedirectUri,
    /// RFC 7591 §3.2.2: a client metadata field is not acceptable.
    InvalidClientMetadata,
    /// RFC 8707 §2: the resource is not one this server issues tokens for.
    InvalidTarget,
    /// RFC 6750 §3.1: the access token is invalid, expired or revoked (401).
    InvalidToken,
    /// RFC 6750 §3.1: the access token does not carry the scope needed (403).
    InsufficientScope,
    /// Too many requests from one address (429, RFC 6585 §4); not an RFC 6749 code.
    TooManyRequests,
}

impl ErrorCode {
    /// The RFC string.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::AccessDenied => "access_denied",
            Self::UnsupportedResponseType => "unsupported_response_type",
            Self::ServerError => "server_error",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::UnsupportedTokenType => "unsupported_token_type",
            Self::InvalidRedirectUri => "invalid_redirect_uri",
            Self::InvalidClientMetadata => "invalid_client_metadata",
            Self::InvalidTarget => "invalid_target",
            Self::InvalidToken => "invalid_token",
            Self::InsufficientScope => "insufficient_scope",
            Self::TooManyRequests => "too_many_requests",
        }
    }

    /// The HTTP status of a response carrying this code (RFC 6749 §5.2: 400, and 401 for
    /// `invalid_client`; RFC 6750 §3.1: 401 / 403). At the authorization endpoint the codes
    /// travel in a redirect instead.
    pub const fn status(self) -> u16 {
        match self {
            Self::InvalidClient | Self::InvalidToken => 401,
            Self::AccessDenied | Self::InsufficientScope => 403,
            Self::TooManyRequests => 429,
            Self::ServerError => 500,
            Self::TemporarilyUnavailable => 503,
            Self::InvalidRequest
            | Self::InvalidGrant
            | Self::UnauthorizedClient
            | Self::UnsupportedGrantType
            | Self::InvalidScope
            | Self::UnsupportedResponseType
            | Self::UnsupportedTokenType
            | Self::InvalidRedirectUri
            | Self::InvalidClientMetadata
            | Self::InvalidTarget => 400,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An OAuth error (RFC 6749 §5.2 and §4.1.2.1): the code and a description that says what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {description}")]
pub struct OAuthError {
    /// `invalid_request`, `invalid_client`, `invalid_grant`, ...
    pub code: ErrorCode,
    /// Human-readable detail.
    pub description: String,
    /// When to try again, for `too_many_requests` and `temporarily_unavailable` (sent as
    /// `Retry-After`, never in the body).
    pub retry_after: Option<Duration>,
}

impl OAuthError {
    /// An error with `code`.
    pub fn new(code: ErrorCode, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
            retry_after: None,
        }
    }

    /// The same error, saying when to try again.
    #[must_use]
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// The HTTP status of the error response (the code's).
    pub fn status(&self) -> u16 {
        self.code.status()
    }

    /// The RFC 6749 §5.2 JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": self.code, "error_description": self.description})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_has_its_rfc_string_and_status() {
        use ErrorCode::*;
        let table = [
            (InvalidRequest, "invalid_request", 400),
            (InvalidClient, "invalid_client", 401),
            (InvalidGrant, "invalid_grant", 400),
            (UnauthorizedClient, "unauthorized_client", 400),
            (UnsupportedGrantType, "unsupported_grant_type", 400),
            (InvalidScope, "invalid_scope", 400),
            (AccessDenied, "access_denied", 403),
            (UnsupportedResponseType, "unsupported_response_type", 400),
            (ServerError, "server_error", 500),
            (TemporarilyUnavailable, "temporarily_unavailable", 503),
            (UnsupportedTokenType, "unsupported_token_type", 400),
            (InvalidRedirectUri, "invalid_redirect_uri", 400),
            (InvalidClientMetadata, "invalid_client_metadata", 400),
            (InvalidTarget, "invalid_target", 400),
            (InvalidToken, "invalid_token", 401),
            (InsufficientScope, "insufficient_scope", 403),
            (TooManyRequests, "too_many_requests", 429),
        ];
        for (code, string, status) in table {
            assert_eq!(code.as_str(), string);
            assert_eq!(code.to_string(), string);
            assert_eq!(code.status(), status, "{code}");
            // Serde agrees with `as_str`, both ways.
            assert_eq!(serde_json::to_value(code).unwrap(), string);
            assert_eq!(
                serde_json::from_value::<ErrorCode>(string.into()).unwrap(),
                code
            );
        }
    }

    #[test]
    fn the_body_is_the_rfc_6749_json_and_leaves_retry_after_out() {
        let error = OAuthError::new(ErrorCode::TooManyRequests, "slow down")
            .with_retry_after(Duration::from_secs(7));
        assert_eq!(
            error.body(),
            serde_json::json!({"error": "too_many_requests", "error_description": "slow down"})
        );
        assert_eq!(
            (error.status(), error.retry_after),
            (429, Some(Duration::from_secs(7)))
        );
        assert_eq!(error.to_string(), "too_many_requests: slow down");
    }
}
