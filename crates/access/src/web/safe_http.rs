//! HTTP requests to URLs the gateway did not choose itself (client ID metadata documents, a
//! client's `jwks_uri`, an upstream MCP server's OAuth metadata): an SSRF risk, so every request
//! goes through [`fetch_json`]:
//!
//! - the caller says whether the host is *trusted* (listed exactly by an administrator, or the
//!   route's own upstream): only trusted hosts may resolve to private, loopback or link-local
//!   addresses (such as the cloud metadata address 169.254.169.254);
//! - `https` only, except `http` for a trusted host on loopback (development and tests);
//! - the connection goes to the addresses that were checked, each in turn (no second DNS
//!   lookup);
//! - no redirects, a 5 s time limit, at most 64 KiB of JSON.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use postern_http::document::ReadError;
use postern_oauth::registration::is_loopback;
use serde_json::Value;

const MAX_BYTES: usize = 64 * 1024;
const TIME_LIMIT: Duration = Duration::from_secs(5);

/// A JSON answer.
pub struct Answer {
    /// The HTTP status.
    pub status: http::StatusCode,
    /// The body, parsed.
    pub body: Value,
    /// `Cache-Control`, if any.
    pub cache_control: Option<String>,
}

/// Why a request under the rules above was refused or failed. The text names the URL (or host)
/// and is shown to the user: in an OAuth error body or on a failure page. The underlying error
/// is part of the text rather than a `source()`, so a report prints it once.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL carries a user name or password.
    #[error("{url}: URLs with credentials are refused")]
    Credentials {
        /// The URL refused.
        url: String,
    },
    /// Not `https` (and not `http` to a trusted loopback host).
    #[error("{url}: only https is allowed here")]
    NotHttps {
        /// The URL refused.
        url: String,
    },
    /// The host name did not resolve.
    #[error("cannot resolve {host}: {error}")]
    Unresolvable {
        /// The host looked up.
        host: String,
        /// Why the lookup failed.
        error: std::io::Error,
    },
    /// An untrusted host resolves only to private, loopback or link-local addresses.
    #[error("{host} resolves to a private or local address; only trusted hosts may")]
    PrivateAddress {
        /// The host refused.
        host: String,
    },
    /// The HTTP client could not be built.
    #[error("{0}")]
    Client(reqwest::Error),
    /// The request failed (connection, TLS, time limit).
    #[error("cannot fetch {url}: {}", with_causes(.error))]
    Request {
        /// The URL requested.
        url: String,
        /// What failed, with its causes in the text.
        error: reqwest::Error,
    },
    /// The answer is larger than the cap.
    #[error("{url} answered more than {} KiB", .max_bytes / 1024)]
    TooLarge {
        /// The URL requested.
        url: String,
        /// The cap.
        max_bytes: usize,
    },
    /// The connection failed (or the time limit ended it) while reading the answer.
    #[error("{url}: {}", ReadError::Unreadable)]
    Unreadable {
        /// The URL requested.
        url: String,
    },
    /// A successful answer whose body is not JSON.
    #[error("{url} did not answer JSON: {error}")]
    NotJson {
        /// The URL requested.
        url: String,
        /// Why the body did not parse.
        error: serde_json::Error,
    },
}

/// The host of `url`, lower-case, without IPv6 brackets.
pub fn host_of(url: &url::Url) -> String {
    url.host_str()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// GETs `url` (or POSTs `body` as JSON) under the rules above. Errors say what was refused or
/// what failed, naming the URL.
pub async fn fetch_json(
    url: &url::Url,
    body: Option<&Value>,
    trusted: bool,
) -> Result<Answer, FetchError> {
    let http = pinned_client(url, trusted).await?;
    let request = match body {
        Some(body) => http.post(url.clone()).json(body),
        None => http.get(url.clone()),
    };
    let response = request
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|error| FetchError::Request {
            url: url.to_string(),
            error,
        })?;
    let status = response.status();
    let cache_control = response
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = read_capped(url, response, MAX_BYTES).await?;
    let body = if status.is_success() {
        serde_json::from_slice(&bytes).map_err(|error| FetchError::NotJson {
            url: url.to_string(),
            error,
        })?
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    Ok(Answer {
        status: http::StatusCode::from_u16(status.as_u16())
            .unwrap_or(http::StatusCode::BAD_GATEWAY),
        body,
        cache_control,
    })
}

/// A client for requests to `url` alone, after the checks above: no credentials in the URL,
/// `https` (or `http` to a trusted loopback host), an address that is public unless the host is
/// trusted, and that address pinned (no second DNS lookup), no redirects, a 5 s time limit.
/// Read its answers with [`read_capped`].
pub async fn pinned_client(url: &url::Url, trusted: bool) -> Result<reqwest::Client, FetchError> {
    let host = host_of(url);
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FetchError::Credentials {
            url: url.to_string(),
        });
    }
    match url.scheme() {
        "https" => {}
        "http" if trusted && is_loopback(&host) => {}
        _ => {
            return Err(FetchError::NotHttps {
                url: url.to_string(),
            });
        }
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|error| FetchError::Unresolvable {
            host: host.clone(),
            error,
        })?
        .collect();
    let allowed: Vec<SocketAddr> = addresses
        .into_iter()
        .filter(|a| trusted || is_public(a.ip()))
        .collect();
    if allowed.is_empty() {
        return Err(FetchError::PrivateAddress { host: host.clone() });
    }
    client_for(&host, &allowed)
}

/// A client that connects to `host` at `addresses` only (each in turn, as `localhost` may be
/// `::1` with nothing listening and then `127.0.0.1`), never at what a second lookup would say.
fn client_for(host: &str, addresses: &[SocketAddr]) -> Result<reqwest::Client, FetchError> {
    postern_http::builder(TIME_LIMIT)
        .resolve_to_addrs(host, addresses)
        .build()
        .map_err(FetchError::Client)
}

/// The body of `response` to `url`, refused when it is larger than `max` bytes (announced or
/// actual), so a hostile server can't make the gateway buffer without bound.
pub async fn read_capped(
    url: &url::Url,
    response: reqwest::Response,
    max: usize,
) -> Result<bytes::Bytes, FetchError> {
    postern_http::document::read_capped(response, max)
        .await
        .map_err(|error| match error {
            ReadError::TooLarge(_) => FetchError::TooLarge {
                url: url.to_string(),
                max_bytes: max,
            },
            ReadError::Unreadable => FetchError::Unreadable {
                url: url.to_string(),
            },
        })
}

/// Whether `ip` is a public unicast address (not loopback, private, link-local, shared, ...).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                is_public(IpAddr::V4(std::net::Ipv4Addr::from(
                    (u32::from(hi) << 16) | u32::from(lo),
                )))
            };
            // Addresses that carry an IPv4 address reach that address: judge it as IPv4.
            // IPv4-compatible `::a.b.c.d` (::/96, which also holds :: and ::1), NAT64
            // `64:ff9b::a.b.c.d` (RFC 6052), 6to4 `2002:aabb:ccdd::` (RFC 3056).
            if s[..6] == [0; 6] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return !v6.is_loopback() && !v6.is_unspecified() && embedded(s[6], s[7]);
            }
            if s[0] == 0x2002 {
                return embedded(s[1], s[2]);
            }
            !(v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated, still routed inside)
                || (s[0] == 0x64 && s[1] == 0xff9b) // local-use NAT64 64:ff9b:1::/48 (RFC 8215)
                || (s[0] == 0x2001 && s[1] == 0) // Teredo: an IPv4 address in disguise
                || (s[0] == 0x2001 && s[1] == 0x0db8)) // documentation
        }
    }
}

/// An error and its causes, `outer: inner: ...` (reqwest's own message leaves out why a request
/// failed, such as an untrusted certificate).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These texts reach clients (CIMD `error_description`, discovery failure pages).
    #[tokio::test]
    async fn refusals_name_the_url_or_host() {
        let refusal = |url: &str, trusted: bool| {
            let url = url::Url::parse(url).unwrap();
            async move { pinned_client(&url, trusted).await.unwrap_err().to_string() }
        };
        assert_eq!(
            refusal("https://u:p@example.com/doc", true).await,
            "https://u:p@example.com/doc: URLs with credentials are refused"
        );
        assert_eq!(
            refusal("http://127.0.0.1/doc", false).await,
            "http://127.0.0.1/doc: only https is allowed here"
        );
        assert_eq!(
            refusal("https://169.254.169.254/doc", false).await,
            "169.254.169.254 resolves to a private or local address; only trusted hosts may"
        );
        let url = "https://example.com/doc".to_owned();
        assert_eq!(
            FetchError::TooLarge {
                url: url.clone(),
                max_bytes: MAX_BYTES
            }
            .to_string(),
            "https://example.com/doc answered more than 64 KiB"
        );
        assert_eq!(
            FetchError::Unreadable { url }.to_string(),
            "https://example.com/doc: the answer could not be read whole"
        );
    }

    /// `localhost` resolving to `::1` (nothing listening) before `127.0.0.1`: the next allowed
    /// address is tried. (Before, only the first was, and discovery failed.)
    #[tokio::test]
    async fn each_checked_address_is_tried_in_turn() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buffer = [0u8; 1024];
            let _ = socket.read(&mut buffer).await;
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                .await
                .unwrap();
        });
        // The same port on ::1, where nothing listens (the URL's port is the one dialed).
        let client = client_for(
            "probe.test",
            &[
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
                SocketAddr::from(([127, 0, 0, 1], port)),
            ],
        )
        .unwrap();
        let response = client
            .get(format!("http://probe.test:{port}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }

    #[test]
    fn ipv6_addresses_that_carry_a_private_ipv4_address_are_not_public() {
        for private in [
            "::127.0.0.1", // IPv4-compatible (::/96)
            "::a9fe:a9fe", // ::169.254.169.254
            "::10.0.0.1",
            "::",
            "::1",
            "64:ff9b::127.0.0.1", // NAT64 (RFC 6052)
            "64:ff9b::169.254.169.254",
            "64:ff9b::10.1.2.3",
            "64:ff9b:1::1",                         // local-use NAT64 (RFC 8215)
            "2002:7f00:1::",                        // 6to4 of 127.0.0.1
            "2002:a9fe:a9fe::1",                    // 6to4 of 169.254.169.254
            "2001:0:4136:e378:8000:63bf:3fff:fdd2", // Teredo
            "fec0::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "64:ff9b::93.184.216.34",
            "::93.184.216.34",
            "2002:5db8:d822::1",
            "2606:4700::1111",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
