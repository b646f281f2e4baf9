//! Protocol upgrades on the routes that allow them (`allow_websockets`, `allow_spdy`): the
//! HTTP/1.1 upgrade request goes through routing, sign-in and policy like any request, is sent
//! upstream with its `Upgrade` and `Connection: upgrade`, and when the upstream switches to the
//! protocol asked for (101), the client's connection and the upstream's are joined byte for
//! byte until either side closes (or `timeout_write` passes).
//!
//! Other routes refuse a WebSocket or SPDY upgrade with 400 before anything else happens;
//! other `Upgrade` offers (`h2c`) are ignored and the request proxied as plain HTTP.

use std::time::Instant;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::routes::Route;

/// A protocol a route may let requests upgrade to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// `Upgrade: websocket` (RFC 6455).
    WebSocket,
    /// `Upgrade: SPDY/3.1` (Kubernetes `exec`, `port-forward`).
    Spdy,
}

impl Protocol {
    /// The `Upgrade` token.
    fn token(self) -> &'static str {
        match self {
            Protocol::WebSocket => "websocket",
            Protocol::Spdy => "spdy/3.1",
        }
    }

    /// The route key that allows it.
    pub fn key(self) -> &'static str {
        match self {
            Protocol::WebSocket => "allow_websockets",
            Protocol::Spdy => "allow_spdy",
        }
    }

    /// Whether `route` accepts this upgrade. MCP server routes never do: they speak
    /// Streamable HTTP, and their requests are inspected.
    pub fn allowed_by(self, route: &Route) -> bool {
        !route.is_mcp_server()
            && match self {
                Protocol::WebSocket => route.config.allow_websockets,
                Protocol::Spdy => route.config.allow_spdy,
            }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::WebSocket => "WebSocket",
            Protocol::Spdy => "SPDY/3.1",
        })
    }
}

/// The WebSocket or SPDY upgrade an HTTP/1.1 request asks for (`Connection: upgrade` and an
/// `Upgrade` naming it), if any.
pub fn requested<B>(request: &Request<B>) -> Option<Protocol> {
    if request.version() != Version::HTTP_11
        || !has_token(request.headers(), header::CONNECTION, "upgrade")
    {
        return None;
    }
    [Protocol::WebSocket, Protocol::Spdy]
        .into_iter()
        .find(|p| has_token(request.headers(), header::UPGRADE, p.token()))
}

/// Whether a comma-separated header lists `token` (case-insensitively).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// An allowed upgrade on its way upstream: the client's side of it, and the protocol.
pub struct Pending {
    protocol: Protocol,
    upgrade: HeaderValue,
    client: OnUpgrade,
    /// The client connection's place under `max_connections`, held while the tunnel is open.
    hold: Option<crate::server::ConnectionHold>,
}

impl Pending {
    /// Takes the client's connection-to-be out of `request`, when it asks for an upgrade the
    /// route allows (others were refused in `admit`).
    pub fn take<B>(route: &Route, request: &mut Request<B>) -> Option<Self> {
        let protocol = requested(request).filter(|p| p.allowed_by(route))?;
        let upgrade = request.headers().get(header::UPGRADE)?.clone();
        let client = request.extensions_mut().remove::<OnUpgrade>()?;
        let hold = request
            .extensions_mut()
            .remove::<crate::server::ConnectionHold>();
        Some(Self {
            protocol,
            upgrade,
            client,
            hold,
        })
    }

    /// Puts the upgrade back on the upstream request (after its hop-by-hop headers went).
    pub fn ask_upstream(&self, headers: &mut HeaderMap) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, self.upgrade.clone());
    }

    /// On the upstream's 101: checks it switched to the protocol asked for, restores the
    /// upgrade headers for the client, and joins the two connections once both are handed
    /// over (the client's after this response is written). `Err`: why the 101 cannot be
    /// passed on.
    pub fn switch<B>(
        self,
        response: &mut Response<B>,
        deadline: Option<Instant>,
        request_id: &str,
    ) -> Result<(), &'static str> {
        debug_assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let upgrade = response.headers().get(header::UPGRADE).cloned();
        if !has_token(response.headers(), header::UPGRADE, self.protocol.token()) {
            return Err("it switched to another protocol than the client asked for");
        }
        let upstream = response
            .extensions_mut()
            .remove::<OnUpgrade>()
            .ok_or("its connection cannot be handed over")?;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(upgrade) = upgrade {
            headers.insert(header::UPGRADE, upgrade);
        }
        let request_id = request_id.to_owned();
        let protocol = self.protocol;
        tokio::spawn(async move {
            let _hold = self.hold;
            let joined = async {
                let (client, upstream) = tokio::try_join!(self.client, upstream)?;
                let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            };
            let ended = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline.into(), joined)
                    .await
                    .unwrap_or_else(|_| Err("timeout_write passed".into())),
                None => joined.await,
            };
            match ended {
                Ok(()) => tracing::debug!(%request_id, %protocol, "upgraded connection closed"),
                Err(error) => {
                    tracing::debug!(%request_id, %protocol, %error, "upgraded connection ended")
                }
            }
        });
        Ok(())
    }
}
