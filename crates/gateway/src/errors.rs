//! Errors the gateway itself answers with, mapped to a status and a body in one place: JSON for
//! API clients, a readable page for browsers; both carry the request id that the log line has.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};

use crate::body::{Body, full};

/// An error answered by the gateway, not the upstream.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No route for this host and path.
    #[error("no route for {host}{path}")]
    NoRoute {
        /// The requested host.
        host: String,
        /// The requested path.
        path: String,
    },
    /// Sign-in is required (the route is not public).
    #[error("this route requires signing in")]
    Unauthenticated,
    /// The body is larger than the route allows.
    #[error(
        "the request body is larger than this route's limit of {limit} bytes (mcp.server.max_request_bytes)"
    )]
    PayloadTooLarge {
        /// The limit.
        limit: u64,
    },
    /// The upstream could not be reached or failed mid-way.
    #[error("the upstream {upstream} could not be reached: {reason}")]
    BadGateway {
        /// The upstream URL.
        upstream: String,
        /// What failed.
        reason: String,
    },
    /// The upstream answered something the gateway will not pass on (a protocol violation the
    /// gateway names: the reason is one of its own fixed texts, never the upstream's words).
    #[error("the upstream {upstream} answered with a response that cannot be passed on: {reason}")]
    BadUpstreamResponse {
        /// The upstream URL.
        upstream: String,
        /// What was wrong, in the gateway's words.
        reason: &'static str,
    },
    /// The upstream did not answer in time.
    #[error("the upstream {upstream} did not answer within {seconds} s (route `timeout`)")]
    GatewayTimeout {
        /// The upstream URL.
        upstream: String,
        /// The timeout.
        seconds: f64,
    },
    /// The request is malformed (no host, bad URI).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The route does not accept this method.
    #[error("this route accepts only {allowed}")]
    MethodNotAllowed {
        /// The methods it accepts, as in the `Allow` header.
        allowed: &'static str,
    },
    /// The route needs a valid client certificate (`downstream_mtls`) and the connection has
    /// none. Pomerium's status for it, 495 (nginx's "SSL Certificate Error").
    #[error(
        "this route requires a valid client certificate, and {}; connect again with a certificate issued by the gateway's client CA",
        if *presented { "the one presented is not trusted" } else { "none was presented" }
    )]
    ClientCertificateRequired {
        /// Whether a certificate was presented (and did not verify).
        presented: bool,
    },
    /// The request asks for a protocol upgrade the route does not allow.
    #[error(
        "this route does not accept {protocol} upgrades; its configuration must set {key}: true (MCP server routes never accept them)"
    )]
    UpgradeRefused {
        /// The protocol asked for.
        protocol: crate::upgrade::Protocol,
        /// The route key that would allow it.
        key: &'static str,
    },
    /// The response did not start within `timeout_write`.
    #[error(
        "the response did not start within {seconds} s (timeout_write, the limit on a whole request)"
    )]
    WriteTimeout {
        /// The limit.
        seconds: f64,
    },
    /// The client stopped sending its request body.
    #[error("the request body stalled: no data for {seconds} s; send the body without long pauses")]
    RequestTimeout {
        /// How long the gateway waited.
        seconds: u64,
    },
}

impl GatewayError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoRoute { .. } => StatusCode::NOT_FOUND,
            GatewayError::Unauthenticated => StatusCode::UNAUTHORIZED,
            GatewayError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BadGateway { .. } | GatewayError::BadUpstreamResponse { .. } => {
                StatusCode::BAD_GATEWAY
            }
            GatewayError::GatewayTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            GatewayError::ClientCertificateRequired { .. } => {
                StatusCode::from_u16(495).unwrap_or(StatusCode::FORBIDDEN)
            }
            GatewayError::UpgradeRefused { .. } => StatusCode::BAD_REQUEST,
            GatewayError::WriteTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            GatewayError::NoRoute { .. } => "no_route",
            GatewayError::Unauthenticated => "unauthenticated",
            GatewayError::PayloadTooLarge { .. } => "payload_too_large",
            GatewayError::BadGateway { .. } | GatewayError::BadUpstreamResponse { .. } => {
                "bad_gateway"
            }
            GatewayError::GatewayTimeout { .. } => "gateway_timeout",
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::RequestTimeout { .. } => "request_timeout",
            GatewayError::ClientCertificateRequired { presented: false } => {
                "client_certificate_required"
            }
            GatewayError::ClientCertificateRequired { presented: true } => {
                "invalid_client_certificate"
            }
            GatewayError::UpgradeRefused { .. } => "upgrade_refused",
            GatewayError::WriteTimeout { .. } => "write_timeout",
        }
    }

    /// What the client is told. An upstream failure is only "upstream unavailable": its
    /// address and the OS error (`tcp connect error: Connection refused`, an internal IP) are
    /// for the log, which the request id leads to, not for whoever sent the request.
    pub fn public_message(&self) -> String {
        match self {
            GatewayError::BadGateway { .. } => {
                "upstream unavailable; try again later, or give an administrator the request id"
                    .into()
            }
            GatewayError::BadUpstreamResponse { reason, .. } => {
                format!("upstream unavailable: {reason}; give an administrator the request id")
            }
            GatewayError::GatewayTimeout { seconds, .. } => format!(
                "upstream unavailable: no answer within {seconds} s (route `timeout`); try again later, or give an administrator the request id"
            ),
            other => other.to_string(),
        }
    }

    /// The response: JSON, or HTML when the client is a browser.
    pub fn into_response(self, request_id: &str, browser: bool) -> Response<Body> {
        let status = self.status();
        let message = self.public_message();
        let allow = match &self {
            GatewayError::MethodNotAllowed { allowed } => Some(*allowed),
            _ => None,
        };
        let (content_type, body) = if browser {
            (
                "text/html; charset=utf-8",
                html_page(status, &message, request_id),
            )
        } else {
            let body = serde_json::json!({
                "error": self.code(), "message": message, "status": status.as_u16(), "request_id": request_id,
            });
            ("application/json", body.to_string())
        };
        let mut response = Response::new(full(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Ok(id) = HeaderValue::from_str(request_id) {
            headers.insert("x-request-id", id);
        }
        if let Some(allow) = allow {
            headers.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

/// Whether the client is a browser navigating (it prefers HTML).
pub fn is_browser<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

fn html_page(status: StatusCode, message: &str, request_id: &str) -> String {
    use crate::html::escape;
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>{code} {reason}</title><style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem;color:#222}}\
h1{{font-size:1.4rem}}code{{background:#f2f2f2;padding:.1rem .3rem;border-radius:3px}}</style></head>\
<body><h1>{code} {reason}</h1><p>{message}</p><p>Request id: <code>{id}</code></p></body></html>",
        code = status.as_u16(),
        reason = status.canonical_reason().unwrap_or(""),
        message = escape(message),
        id = escape(request_id),
    )
}
