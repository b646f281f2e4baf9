//! The HTTP client Postern's crates make their own requests with: the assertion verifier's JWKS
//! fetch, the gateway's calls to OAuth providers and client metadata documents, the Notion API.
//! One place decides the TLS provider (rustls with ring: reqwest is built without a bundled
//! one), that every request has a time limit, and that redirects are not followed unless a caller
//! asks (a redirect could send a token or a fetch somewhere the caller did not check).
//!
//! [`document`] keeps fetched documents (every JWKS) and reads answers within a size cap.
//!
//! The gateway's reverse proxy has its own hyper client (`postern_gateway::proxy`): it streams
//! bodies and pools connections per upstream, which this client is not for.

#![forbid(unsafe_code)]

pub mod document;

use std::time::Duration;

/// A client builder with rustls on ring, a `timeout` for each whole request and no redirects;
/// add what a caller needs (a pinned address, a user agent) before `build`.
pub fn builder(timeout: Duration) -> reqwest::ClientBuilder {
    // Installing twice is a harmless no-op; a provider the process already chose is kept.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
}

/// A client with a `timeout` for each whole request that does not follow redirects.
pub fn client(timeout: Duration) -> reqwest::Client {
    build(builder(timeout))
}

/// Builds `builder`; it fails only if the TLS backend cannot start, which no request could
/// survive either, so that is a panic at startup rather than a client without its limits.
pub fn build(builder: reqwest::ClientBuilder) -> reqwest::Client {
    builder
        .build()
        .expect("the HTTP client builds (rustls with ring)")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn a_client_builds_with_its_limits() {
        let _client = super::client(Duration::from_secs(1));
        let _pinned = super::build(
            super::builder(Duration::from_secs(1))
                .resolve("example.test", ([127, 0, 0, 1], 443).into()),
        );
    }
}
