//! Upstream OAuth auto-discovery: an MCP server route without `upstream_oauth2` whose upstream
//! runs MCP authorization itself (answers 401 with protected resource metadata). The gateway
//! finds out what to do and becomes that server's OAuth client for each user, so the user's MCP
//! client still only holds a TE:
//!
//! 1. protected resource metadata (RFC 9728): the `resource_metadata` hint of the upstream's
//!    `WWW-Authenticate`, then the path-suffixed and the root well-known URLs; its `resource`
//!    must be the upstream URL the route proxies to;
//! 2. authorization server metadata (RFC 8414 and OpenID Connect discovery forms); its `issuer`
//!    must be exactly the URL it was looked up under (RFC 8414 §3.3); PKCE S256 is required;
//! 3. scopes: the challenge's `scope`, else the resource's `scopes_supported`;
//! 4. a client id: the one configured (`upstream_oauth2` with a client but no `endpoint`), else
//!    Postern's client ID metadata document (`/.pomerium/mcp/client/metadata.json`)
//!    when the server supports them, else dynamic registration (RFC 7591) as a public client
//!    with Postern's callback, kept in the store per upstream issuer and Postern origin (every
//!    replica uses the same one) and done again when the server forgets it.
//!
//! The result is an ordinary [`UpstreamOAuth2`] (with `resource` set) kept in the store per route
//! and origin: the TI flow, storage, refresh and injection are those of static routes.
//! Every request goes through [`crate::web::safe_http`], trusting only the route's upstream hosts and
//! `mcp_allowed_as_metadata_domains`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use http::{Response, StatusCode, header};
use postern_config::{AuthStyle, OAuthEndpoint, Secret, ToUrl, UpstreamOAuth2};
use postern_gateway::body::Body;
use postern_gateway::hooks::RequestContext;
use postern_gateway::routes::Route;
use postern_oauth::metadata::same_resource;
use postern_oauth::registration::is_loopback;
use postern_store::{Session, Store};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::web::safe_http::{fetch_json, host_of};
use crate::web::untrusted::Untrusted;

/// How long a route's discovery state is cached in memory before the store is read again.
const CACHE_TTL: Duration = Duration::from_secs(10);

/// At most this many fresh upstream authorizations for `insufficient_scope` per user and route
/// within [`STEP_UP_WINDOW`]: a server that keeps refusing whatever it is given would otherwise
/// send a reconnecting client through the provider forever.
pub(crate) const STEP_UP_LIMIT: usize = 3;
/// See [`STEP_UP_LIMIT`].
pub(crate) const STEP_UP_WINDOW: Duration = Duration::from_secs(10 * 60);

/// How long an upstream found without its own OAuth is not probed again by `/authorize`.
const PROBE_TTL: Duration = Duration::from_secs(5 * 60);

/// Which step of discovery failed, and why: shown to the user and logged.
#[derive(Debug, thiserror::Error)]
#[error("upstream OAuth discovery failed at {step}: {reason}")]
pub struct DiscoveryError {
    /// `protected resource metadata`, `authorization server metadata`, `registration`, ...
    pub step: &'static str,
    /// What was wrong.
    pub reason: String,
}

/// Why an endpoint that authorization server metadata names is refused (see
/// [`Discovery::check_endpoint`]): part of the [`DiscoveryError`] the user sees. The endpoint and
/// issuer are the server's text, so they are shown escaped and capped.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The endpoint does not parse as a URL.
    #[error("its {name} {} is not a URL", Untrusted(.endpoint))]
    NotUrl {
        /// The metadata field, such as `token_endpoint`.
        name: &'static str,
        /// Its value.
        endpoint: String,
    },
    /// The issuer does not parse as a URL.
    #[error("{} is not a URL", Untrusted(.issuer))]
    IssuerNotUrl {
        /// The issuer.
        issuer: String,
    },
    /// The endpoint carries a user name or password.
    #[error("its {name} {} carries credentials", Untrusted(.endpoint))]
    Credentials {
        /// The metadata field.
        name: &'static str,
        /// Its value.
        endpoint: String,
    },
    /// Not `https` (and not `http` to a trusted loopback host).
    #[error("its {name} {} is not https", Untrusted(.endpoint))]
    NotHttps {
        /// The metadata field.
        name: &'static str,
        /// Its value.
        endpoint: String,
    },
    /// On another origin than the issuer's, and its host is not listed.
    #[error(
        "its {name} {} is not on the issuer's origin {issuer_origin}; an administrator can list {host} in mcp_allowed_as_metadata_domains",
        Untrusted(.endpoint)
    )]
    OtherOrigin {
        /// The metadata field.
        name: &'static str,
        /// Its value.
        endpoint: String,
        /// The issuer's origin, serialized.
        issuer_origin: String,
        /// The endpoint's host.
        host: String,
    },
}

fn fail(step: &'static str, reason: impl Into<String>) -> DiscoveryError {
    DiscoveryError {
        step,
        reason: reason.into(),
    }
}

/// What discovery found for a route, as kept in the store.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Discovered {
    /// The upstream resource (the MCP server's URL).
    pub resource: String,
    /// The upstream authorization server.
    pub issuer: String,
    /// Its authorization endpoint.
    pub authorization_endpoint: String,
    /// Its token endpoint.
    pub token_endpoint: String,
    /// Scopes to request.
    pub scopes: Vec<String>,
    /// Postern's client at that server.
    pub client_id: String,
    /// Its secret, when the server issued one.
    pub client_secret: Option<Secret>,
    /// `client_secret_basic` (header) or anything else (body).
    pub token_endpoint_auth_method: String,
    /// [`Discovered::oauth`], built once when the record is read or written (requests use it).
    #[serde(skip)]
    settings: Option<UpstreamOAuth2>,
}

impl Discovered {
    /// With the TI flow's settings built; `None` when the stored endpoints are not URLs.
    fn ready(mut self) -> Option<Self> {
        self.settings = Some(self.oauth()?);
        Some(self)
    }

    /// The settings the TI flow uses.
    pub fn oauth(&self) -> Option<UpstreamOAuth2> {
        Some(UpstreamOAuth2 {
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            client_secret_file: None,
            callback_path: None,
            scopes: self.scopes.clone(),
            endpoint: Some(OAuthEndpoint {
                auth_url: url::Url::parse(&self.authorization_endpoint).ok()?,
                token_url: url::Url::parse(&self.token_endpoint).ok()?,
                auth_style: Some(
                    if self.token_endpoint_auth_method == "client_secret_basic" {
                        AuthStyle::Header
                    } else {
                        AuthStyle::Params
                    },
                ),
            }),
            authorization_url_params: Default::default(),
            resource: Some(self.resource.clone()),
        })
    }
}

/// Where Postern's client ID metadata document lives on `origin`.
pub fn client_metadata_url(origin: &str) -> String {
    format!("{origin}/.pomerium/mcp/client/metadata.json")
}

/// Postern's client ID metadata document on `origin`: a public client whose only redirect URI
/// is the upstream callback.
pub fn client_metadata_document(origin: &str) -> Value {
    json!({
        "client_id": client_metadata_url(origin),
        "client_name": "Postern",
        "redirect_uris": [format!("{origin}/.pomerium/mcp/client/oauth/callback")],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    })
}

/// The parameters of a `Bearer` challenge (`WWW-Authenticate`).
pub fn challenge_params(header: &str) -> Option<HashMap<String, String>> {
    let rest = header.trim();
    let rest = rest
        .get(..6)
        .filter(|s| s.eq_ignore_ascii_case("bearer"))
        .map(|_| &rest[6..])?;
    let mut params = HashMap::new();
    let mut chars = rest.trim_start().chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let name: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        if name.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value = value.trim().to_owned();
        }
        params.insert(name, value);
    }
    Some(params)
}

/// A route's discovery state (or its absence) and when it was read.
type CacheEntry = (Option<Arc<Discovered>>, Instant);

/// Discovery for the routes of one gateway.
pub struct Discovery {
    store: Store,
    extra_trusted: Vec<String>,
    /// Route key, then origin: the hot path looks up without allocating and takes a read lock.
    cache: RwLock<HashMap<String, HashMap<String, CacheEntry>>>,
    /// Step-ups granted per (user, route key), within [`STEP_UP_WINDOW`] (per replica).
    step_ups: Mutex<HashMap<(String, String), Vec<Instant>>>,
    /// When `/authorize` last probed an upstream that showed no OAuth, per route key and origin.
    probed: Mutex<HashMap<String, Instant>>,
}

impl Discovery {
    /// `extra_trusted`: `mcp_allowed_as_metadata_domains`.
    pub fn new(store: Store, extra_trusted: Vec<String>) -> Self {
        Self {
            store,
            extra_trusted: extra_trusted
                .into_iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            cache: RwLock::new(HashMap::new()),
            step_ups: Mutex::new(HashMap::new()),
            probed: Mutex::new(HashMap::new()),
        }
    }

    fn key(route_key: &str, origin: &str) -> String {
        format!("discovery|{route_key}|{origin}")
    }

    /// What discovery found for this route and origin, if it ran.
    pub async fn get(&self, route_key: &str, origin: &str) -> Option<Arc<Discovered>> {
        if let Some((found, at)) = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(route_key)
            .and_then(|origins| origins.get(origin))
            && at.elapsed() < CACHE_TTL
        {
            return found.clone();
        }
        let key = Self::key(route_key, origin);
        let found = match self.store.get_key(&key).await {
            Ok(Some(text)) => serde_json::from_str::<Discovered>(&text)
                .ok()
                .and_then(Discovered::ready)
                .map(Arc::new),
            Ok(None) => None,
            Err(error) => {
                // Keep what was read before, and ask the store again only after CACHE_TTL:
                // requests on this route must not each wait on (and log) a store that is down.
                let known = self
                    .cache
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(route_key)
                    .and_then(|origins| origins.get(origin))
                    .and_then(|(found, _)| found.clone());
                tracing::warn!(%error, retry_in = ?CACHE_TTL, kept = known.is_some(), "cannot read discovered upstream settings; keeping what was read before");
                self.remember(route_key, origin, known.clone());
                return known;
            }
        };
        self.remember(route_key, origin, found.clone());
        found
    }

    fn remember(&self, route_key: &str, origin: &str, found: Option<Arc<Discovered>>) {
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(route_key.to_owned())
            .or_default()
            .insert(origin.to_owned(), (found, Instant::now()));
    }

    pub(crate) async fn put(&self, route_key: &str, origin: &str, found: &Discovered) {
        let key = Self::key(route_key, origin);
        if let Ok(text) = serde_json::to_string(found)
            && let Err(error) = self.store.put_key(&key, &text).await
        {
            tracing::warn!(%error, "cannot store discovered upstream settings");
        }
        self.remember(route_key, origin, found.clone().ready().map(Arc::new));
    }

    /// Forgets what was discovered for this route and origin, and Postern's registration at its
    /// authorization server (which no longer knows the client): the next upstream 401 runs
    /// discovery and registration again.
    ///
    /// A store failure is logged: what is kept would be used again (and refused again by the
    /// provider), which the operator must see.
    pub async fn forget(&self, route_key: &str, origin: &str) {
        let mut keys = vec![Self::key(route_key, origin)];
        if let Some(found) = self.get(route_key, origin).await {
            keys.push(format!("upstream-client|{}|{origin}", found.issuer));
        }
        for key in &keys {
            if let Err(error) = self.store.delete_key(key).await {
                tracing::error!(%error, key = %key, "cannot forget a stale upstream discovery or registration");
            }
        }
        if let Some(origins) = self
            .cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(route_key)
        {
            origins.remove(origin);
        }
    }

    /// Takes one of the user's step-ups on `route_key` (a fresh upstream authorization for
    /// `insufficient_scope`): `Err` with how long until the next one is allowed when
    /// [`STEP_UP_LIMIT`] were taken within [`STEP_UP_WINDOW`]. Checked and taken under one lock.
    pub(crate) fn take_step_up(&self, user_id: &str, route_key: &str) -> Result<(), Duration> {
        let mut step_ups = self.step_ups.lock().unwrap_or_else(|e| e.into_inner());
        step_ups.retain(|_, taken| {
            taken.retain(|at| at.elapsed() < STEP_UP_WINDOW);
            !taken.is_empty()
        });
        let taken = step_ups
            .entry((user_id.to_owned(), route_key.to_owned()))
            .or_default();
        if taken.len() >= STEP_UP_LIMIT {
            return Err(STEP_UP_WINDOW.saturating_sub(taken[0].elapsed()));
        }
        taken.push(Instant::now());
        Ok(())
    }

    /// Checks an endpoint that an authorization server's metadata names, as strictly as the
    /// metadata itself: no credentials; `https`, or `http` to a trusted loopback host; and on the
    /// issuer's own origin unless its host is listed in `mcp_allowed_as_metadata_domains`.
    /// Otherwise a hostile or compromised server could have the gateway send codes, PKCE
    /// verifiers and refresh tokens to any host it can reach (an internal admin API on another
    /// port of the same machine, the cloud metadata address). Whether the address is public is
    /// checked when the endpoint is called ([`crate::web::safe_http`]).
    pub(crate) fn check_endpoint(
        &self,
        route: &Route,
        issuer: &str,
        name: &'static str,
        endpoint: &str,
    ) -> Result<url::Url, EndpointError> {
        let url = url::Url::parse(endpoint).map_err(|_| EndpointError::NotUrl {
            name,
            endpoint: endpoint.to_owned(),
        })?;
        let issuer = url::Url::parse(issuer).map_err(|_| EndpointError::IssuerNotUrl {
            issuer: issuer.to_owned(),
        })?;
        let host = host_of(&url);
        if !url.username().is_empty() || url.password().is_some() {
            return Err(EndpointError::Credentials {
                name,
                endpoint: endpoint.to_owned(),
            });
        }
        if url.origin() != issuer.origin() && !self.listed(&url) {
            return Err(EndpointError::OtherOrigin {
                name,
                endpoint: endpoint.to_owned(),
                issuer_origin: issuer.origin().ascii_serialization(),
                host: host.clone(),
            });
        }
        match url.scheme() {
            "https" => {}
            "http" if self.trusted(route, &url) && is_loopback(&host) => {}
            _ => {
                return Err(EndpointError::NotHttps {
                    name,
                    endpoint: endpoint.to_owned(),
                });
            }
        }
        Ok(url)
    }

    /// Whether requests to `url` are trusted for `route`: its host *and port* are those of one
    /// of the route's upstream URLs (another port of the same machine is another service, such
    /// as an internal admin API), or its host is listed in `mcp_allowed_as_metadata_domains`.
    pub(crate) fn trusted(&self, route: &Route, url: &url::Url) -> bool {
        let (host, port) = (host_of(url), url.port_or_known_default());
        route
            .config
            .to
            .to_vec()
            .iter()
            .any(|to| host_of(&to.0) == host && to.0.port_or_known_default() == port)
            || self.listed(url)
    }

    /// Whether `url`'s host is listed in `mcp_allowed_as_metadata_domains`: as `host` (any
    /// port, the administrator named the machine) or `host:port` (that port only).
    fn listed(&self, url: &url::Url) -> bool {
        let host = host_of(url);
        let with_port = url
            .port_or_known_default()
            .map(|port| format!("{host}:{port}"));
        self.extra_trusted
            .iter()
            .any(|d| *d == host || Some(d) == with_port.as_ref())
    }

    async fn get_json(
        &self,
        route: &Route,
        url: &url::Url,
        step: &'static str,
    ) -> Result<Value, DiscoveryError> {
        let trusted = self.trusted(route, url);
        let answer = fetch_json(url, None, trusted)
            .await
            .map_err(|e| fail(step, with_listing_hint(&e, url, trusted)))?;
        if !answer.status.is_success() {
            return Err(fail(step, format!("{url} answered HTTP {}", answer.status)));
        }
        Ok(answer.body)
    }

    /// Runs discovery for `route` after its upstream answered `challenge` (the value of its
    /// `WWW-Authenticate`), registers Postern if needed, and stores the result. `Ok(None)`: the
    /// upstream gave no MCP authorization metadata (its 401 is passed on as it is).
    pub async fn discover(
        &self,
        route: &Route,
        route_key: &str,
        origin: &str,
        challenge: &str,
    ) -> Result<Option<Arc<Discovered>>, DiscoveryError> {
        let Some(params) = challenge_params(challenge) else {
            return Ok(None);
        };
        let upstream = route.config.to.to_vec();
        let Some(first) = upstream.first() else {
            return Ok(None);
        };
        let upstream_url = &first.0;

        // 1. Protected resource metadata.
        let Some(metadata) = self.resource_metadata(route, upstream_url, &params).await? else {
            return Ok(None);
        };
        let resource = checked_resource(&metadata, &upstream, upstream_url)?;

        // 2. Authorization server metadata.
        let issuer = issuer_of(route, &metadata)?;
        let as_metadata = self.authorization_server_metadata(route, &issuer).await?;
        let (authorization_endpoint, token_endpoint) =
            self.authorization_server_endpoints(route, &issuer, &as_metadata)?;

        // 3. Scopes: configured, else the challenge's, else what the resource lists (with
        //    `offline_access` when the authorization server offers it).
        let scopes = scopes_to_request(route, &params, &metadata, &as_metadata);

        // 4. A client id.
        let client = self.client(route, &issuer, origin, &as_metadata).await?;
        let found = Discovered {
            resource,
            issuer,
            authorization_endpoint,
            token_endpoint,
            scopes,
            client_id: client["client_id"].as_str().unwrap_or_default().to_owned(),
            client_secret: client
                .get("client_secret")
                .and_then(Value::as_str)
                .map(Secret::new),
            token_endpoint_auth_method: client
                .get("token_endpoint_auth_method")
                .and_then(Value::as_str)
                .unwrap_or("none")
                .to_owned(),
            settings: None,
        };
        self.put(route_key, origin, &found).await;
        tracing::info!(target: "postern::audit", event = "upstream_discovered", route = %route.id, issuer = %Untrusted(&found.issuer), client_id = %Untrusted(&found.client_id), "upstream OAuth discovered");
        Ok(Some(Arc::new(found)))
    }

    /// The upstream's protected resource metadata (a document with a `resource`), tried at each
    /// of [`resource_metadata_urls`]; `Ok(None)` when a challenge without a `resource_metadata`
    /// hint leads to none (a plain 401).
    async fn resource_metadata(
        &self,
        route: &Route,
        upstream_url: &url::Url,
        params: &HashMap<String, String>,
    ) -> Result<Option<Value>, DiscoveryError> {
        let candidates = resource_metadata_urls(upstream_url, params)?;
        let mut last_error = None;
        for url in &candidates {
            match self
                .get_json(route, url, "protected resource metadata")
                .await
            {
                Ok(document) if document.get("resource").is_some() => return Ok(Some(document)),
                Ok(_) => {
                    last_error = Some(fail(
                        "protected resource metadata",
                        format!("{url} has no resource"),
                    ))
                }
                Err(error) => last_error = Some(error),
            }
        }
        if params.contains_key("resource_metadata") {
            return Err(
                last_error.unwrap_or_else(|| fail("protected resource metadata", "not found"))
            );
        }
        // A plain 401 without MCP authorization metadata: not ours to handle.
        tracing::debug!(route = %route.id, error = ?last_error, "upstream 401 without protected resource metadata");
        Ok(None)
    }

    /// The authorization server metadata of `issuer` (RFC 8414, then the OpenID Connect
    /// discovery forms), checked to name `issuer` and to support PKCE S256.
    async fn authorization_server_metadata(
        &self,
        route: &Route,
        issuer: &str,
    ) -> Result<Value, DiscoveryError> {
        let issuer_url = url::Url::parse(issuer).map_err(|_| {
            fail(
                "authorization server metadata",
                format!("{issuer} is not a URL"),
            )
        })?;
        let as_path = issuer_url.path().trim_end_matches('/');
        let mut as_candidates = vec![
            format!("/.well-known/oauth-authorization-server{as_path}"),
            format!("/.well-known/openid-configuration{as_path}"),
        ];
        if !as_path.is_empty() {
            as_candidates.push(format!("{as_path}/.well-known/openid-configuration"));
        }
        let mut as_metadata = None;
        let mut last_error = None;
        for path in as_candidates {
            let Ok(url) = issuer_url.join(&path) else {
                continue;
            };
            match self
                .get_json(route, &url, "authorization server metadata")
                .await
            {
                Ok(document) => {
                    as_metadata = Some(document);
                    break;
                }
                Err(error) => last_error = Some(error),
            }
        }
        let as_metadata = as_metadata.ok_or_else(|| {
            last_error.unwrap_or_else(|| fail("authorization server metadata", "not found"))
        })?;
        check_authorization_server(&as_metadata, issuer)?;
        Ok(as_metadata)
    }

    /// The authorization and token endpoints `as_metadata` names, each present and passing
    /// [`Discovery::check_endpoint`].
    fn authorization_server_endpoints(
        &self,
        route: &Route,
        issuer: &str,
        as_metadata: &Value,
    ) -> Result<(String, String), DiscoveryError> {
        let endpoint = |name: &'static str| {
            as_metadata
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| fail("authorization server metadata", format!("no {name}")))
        };
        let authorization_endpoint = endpoint("authorization_endpoint")?;
        let token_endpoint = endpoint("token_endpoint")?;
        for (name, value) in [
            ("authorization_endpoint", &authorization_endpoint),
            ("token_endpoint", &token_endpoint),
        ] {
            self.check_endpoint(route, issuer, name, value)
                .map_err(|e| fail("authorization server metadata", e.to_string()))?;
        }
        Ok((authorization_endpoint, token_endpoint))
    }

    /// Postern's registration at `issuer` for `origin`: from the store, or registered now.
    async fn client(
        &self,
        route: &Route,
        issuer: &str,
        origin: &str,
        as_metadata: &Value,
    ) -> Result<Value, DiscoveryError> {
        if let Some(configured) = configured_client(route) {
            return Ok(configured);
        }
        if let Some(document) = metadata_document_client(origin, as_metadata) {
            return Ok(document);
        }
        let key = format!("upstream-client|{issuer}|{origin}");
        if let Ok(Some(text)) = self.store.get_key(&key).await
            && let Ok(client) = serde_json::from_str::<Value>(&text)
        {
            return Ok(client);
        }
        self.register(route, issuer, origin, as_metadata, &key)
            .await
    }

    /// Postern's client registered now by dynamic registration (RFC 7591), as kept under `key`
    /// (the first replica's registration when several register at once).
    async fn register(
        &self,
        route: &Route,
        issuer: &str,
        origin: &str,
        as_metadata: &Value,
        key: &str,
    ) -> Result<Value, DiscoveryError> {
        let registration = as_metadata
            .get("registration_endpoint")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                fail(
                    "registration",
                    "the authorization server offers no dynamic registration; configure upstream_oauth2 with a client_id for this route",
                )
            })?;
        let url = self
            .check_endpoint(route, issuer, "registration_endpoint", registration)
            .map_err(|e| fail("registration", e.to_string()))?;
        let request = registration_request(origin);
        let answer = fetch_json(&url, Some(&request), self.trusted(route, &url))
            .await
            .map_err(|e| fail("registration", e.to_string()))?;
        if !answer.status.is_success()
            || answer
                .body
                .get("client_id")
                .and_then(Value::as_str)
                .is_none()
        {
            // The answer is logged, not shown: it is the (possibly hostile) server's text.
            tracing::warn!(route = %route.id, %url, status = %answer.status, body = %Untrusted(&answer.body.to_string()), "upstream registration refused");
            return Err(fail(
                "registration",
                format!(
                    "the authorization server at {} answered HTTP {} (details in the gateway's log)",
                    host_of(&url),
                    answer.status
                ),
            ));
        }
        let mut client = answer.body;
        if client.get("token_endpoint_auth_method").is_none() {
            client["token_endpoint_auth_method"] = json!("none");
        }
        // Replicas registering at once all keep the first registration stored.
        let stored = self
            .store
            .get_or_insert_key(key, &client.to_string())
            .await
            .map_err(|e| fail("registration", e.to_string()))?;
        serde_json::from_str(&stored).map_err(|e| fail("registration", e.to_string()))
    }
}

/// The client the administrator configured (`upstream_oauth2` without `endpoint`), if any (one
/// without `client_id` only names the scopes: Postern registers).
fn configured_client(route: &Route) -> Option<Value> {
    let configured = crate::broker::upstream::settings(route)
        .filter(|configured| !configured.client_id.is_empty())?;
    let secret = configured
        .client_secret
        .as_ref()
        .map(|s| s.expose().to_owned());
    Some(json!({
        "client_id": configured.client_id,
        "client_secret": secret,
        "token_endpoint_auth_method": if secret.is_some() { "client_secret_basic" } else { "none" },
    }))
}

/// Postern's client ID metadata document as its client, when the authorization server supports
/// them and `origin` may serve one.
fn metadata_document_client(origin: &str, as_metadata: &Value) -> Option<Value> {
    // A client ID metadata document needs no registration. Its URL must be https, except on
    // loopback, where the upstream can reach it only in development anyway.
    let loopback_origin = url::Url::parse(origin)
        .is_ok_and(|u| postern_oauth::registration::is_loopback(&host_of(&u)));
    if as_metadata
        .get("client_id_metadata_document_supported")
        .and_then(Value::as_bool)
        == Some(true)
        && (origin.starts_with("https://") || loopback_origin)
    {
        return Some(json!({
            "client_id": client_metadata_url(origin),
            "token_endpoint_auth_method": "none",
        }));
    }
    None
}

/// The dynamic registration request (RFC 7591): a public client whose only redirect URI is
/// the upstream callback on `origin`.
fn registration_request(origin: &str) -> Value {
    json!({
        "client_name": "Postern",
        "redirect_uris": [format!("{origin}/.pomerium/mcp/client/oauth/callback")],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    })
}

/// Where to look for the upstream's protected resource metadata, in order: the challenge's
/// `resource_metadata` hint, then the path-suffixed and the root well-known URLs.
fn resource_metadata_urls(
    upstream_url: &url::Url,
    params: &HashMap<String, String>,
) -> Result<Vec<url::Url>, DiscoveryError> {
    let mut candidates = Vec::new();
    if let Some(hint) = params.get("resource_metadata") {
        match upstream_url.join(hint) {
            Ok(url) => candidates.push(url),
            Err(_) => {
                return Err(fail(
                    "protected resource metadata",
                    "the resource_metadata hint is not a URL",
                ));
            }
        }
    }
    let path = upstream_url.path().trim_end_matches('/');
    let root = upstream_url
        .join("/.well-known/oauth-protected-resource")
        .ok();
    if !path.is_empty()
        && let Ok(url) = upstream_url.join(&format!("/.well-known/oauth-protected-resource{path}"))
    {
        candidates.push(url);
    }
    candidates.extend(root);
    Ok(candidates)
}

/// The `resource` of the protected resource metadata, checked to be one of the upstream URLs
/// the route proxies to, or a path prefix of one on the same origin (RFC 9728 §3.3 as both
/// official MCP SDKs apply it in `checkResourceAllowed`: a server at `https://h/mcp` may publish
/// root metadata for `https://h`). Another origin is refused.
fn checked_resource(
    metadata: &Value,
    upstream: &[ToUrl],
    upstream_url: &url::Url,
) -> Result<String, DiscoveryError> {
    let resource = metadata["resource"].as_str().unwrap_or_default().to_owned();
    if !upstream
        .iter()
        .any(|to| same_resource(&resource, to.0.as_str()) || covers(&resource, &to.0))
    {
        return Err(fail(
            "protected resource metadata",
            format!(
                "its resource {} is neither the upstream {upstream_url} this route proxies to nor a path prefix of it on the same origin",
                Untrusted(&resource)
            ),
        ));
    }
    Ok(resource)
}

/// Whether `resource` names `upstream` or a path prefix of it, segment by segment, on the same
/// origin (`https://h/a` covers `https://h/a/mcp`, not `https://h/ab`).
fn covers(resource: &str, upstream: &url::Url) -> bool {
    let Ok(resource) = url::Url::parse(resource) else {
        return false;
    };
    if resource.origin() != upstream.origin()
        || resource.query().is_some()
        || resource.fragment().is_some()
    {
        return false;
    }
    let with_slash = |path: &str| {
        if path.ends_with('/') {
            path.to_owned()
        } else {
            format!("{path}/")
        }
    };
    with_slash(upstream.path()).starts_with(&with_slash(resource.path()))
}

/// The authorization server: the first the resource metadata names, else the route's
/// configured `authorization_server_url`.
fn issuer_of(route: &Route, metadata: &Value) -> Result<String, DiscoveryError> {
    metadata
        .get("authorization_servers")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| match &route.kind {
            postern_gateway::routes::Kind::McpServer(server) => {
                server.authorization_server_url.clone()
            }
            _ => None,
        })
        .ok_or_else(|| {
            fail(
                "protected resource metadata",
                "it names no authorization server",
            )
        })
}

/// `Ok` when the authorization server metadata names exactly `issuer`, the URL it was looked up
/// under (RFC 8414 §3.3), and supports PKCE S256.
fn check_authorization_server(as_metadata: &Value, issuer: &str) -> Result<(), DiscoveryError> {
    if as_metadata.get("issuer").and_then(Value::as_str) != Some(issuer) {
        return Err(fail(
            "authorization server metadata",
            format!(
                "its issuer {} is not {issuer}, the URL it was found under (RFC 8414 §3.3)",
                Untrusted(
                    &as_metadata
                        .get("issuer")
                        .unwrap_or(&Value::Null)
                        .to_string()
                )
            ),
        ));
    }
    let supports_s256 = as_metadata
        .get("code_challenge_methods_supported")
        .and_then(Value::as_array)
        .is_some_and(|m| m.iter().any(|v| v == "S256"));
    if !supports_s256 {
        return Err(fail(
            "authorization server metadata",
            "the authorization server does not support PKCE S256",
        ));
    }
    Ok(())
}

/// The scopes to request: configured (exactly), else the challenge's `scope`, else the
/// resource's `scopes_supported`; and then `offline_access` when the authorization server lists
/// it in its `scopes_supported`, so the TI comes with a refresh token (as the official MCP SDKs
/// ask for it) and the user is not sent back to the provider when it expires.
fn scopes_to_request(
    route: &Route,
    params: &HashMap<String, String>,
    metadata: &Value,
    as_metadata: &Value,
) -> Vec<String> {
    let configured_scopes = crate::broker::upstream::settings(route)
        .map(|c| c.scopes.clone())
        .filter(|s| !s.is_empty());
    if let Some(configured) = configured_scopes {
        return configured;
    }
    let mut scopes = discovered_scopes(params, metadata);
    let offered = as_metadata
        .get("scopes_supported")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|s| s == "offline_access"));
    if offered && !scopes.iter().any(|s| s == "offline_access") {
        scopes.push("offline_access".to_owned());
    }
    scopes
}

/// The challenge's `scope`, else the resource's `scopes_supported`.
fn discovered_scopes(params: &HashMap<String, String>, metadata: &Value) -> Vec<String> {
    if let Some(scope) = params.get("scope") {
        scope.split_whitespace().map(str::to_owned).collect()
    } else {
        metadata
            .get("scopes_supported")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A route's upstream OAuth settings, borrowed from the configuration or shared with the
/// discovery cache: nothing is copied per request.
pub(crate) enum UpstreamSettings<'r> {
    /// `upstream_oauth2` with endpoints.
    Configured(&'r UpstreamOAuth2),
    /// Found by discovery ([`Discovery::get`] only returns records with settings built). Its
    /// endpoints were named by a stranger's metadata: they are called through
    /// [`crate::web::safe_http`] only.
    Discovered {
        /// The record.
        found: Arc<Discovered>,
        /// Whether the token endpoint's host may be private (the route's upstream, or listed).
        token_trusted: bool,
    },
}

impl std::ops::Deref for UpstreamSettings<'_> {
    type Target = UpstreamOAuth2;

    fn deref(&self) -> &UpstreamOAuth2 {
        match self {
            UpstreamSettings::Configured(oauth) => oauth,
            UpstreamSettings::Discovered { found, .. } => found
                .settings
                .as_ref()
                .expect("Discovery::get returns ready records only"),
        }
    }
}

impl crate::broker::UpstreamBroker {
    /// The upstream OAuth settings of `route`: configured (`upstream_oauth2`), or discovered for
    /// this origin. A discovered record whose endpoints fail today's checks (stored by an older
    /// version) is forgotten, so the next upstream 401 runs discovery again.
    pub(crate) async fn upstream_oauth<'r>(
        &self,
        route: &'r Route,
        origin: &str,
    ) -> Option<UpstreamSettings<'r>> {
        if let Some(oauth) = crate::broker::upstream::static_settings(route) {
            return Some(UpstreamSettings::Configured(oauth));
        }
        if !route.is_mcp_server() {
            return None;
        }
        let key = crate::broker::upstream::route_key(route);
        let found = self.discovery.get(&key, origin).await?;
        let checked = [
            ("authorization_endpoint", &found.authorization_endpoint),
            ("token_endpoint", &found.token_endpoint),
        ]
        .into_iter()
        .try_for_each(|(name, endpoint)| {
            self.discovery
                .check_endpoint(route, &found.issuer, name, endpoint)
                .map(drop)
        });
        if let Err(error) = checked {
            tracing::warn!(route = %route.id, %error, "forgetting discovered upstream settings that are no longer accepted");
            self.discovery.forget(&key, origin).await;
            return None;
        }
        let token_trusted = found.settings.as_ref().is_some_and(|oauth| {
            oauth
                .endpoint
                .as_ref()
                .is_some_and(|endpoint| self.discovery.trusted(route, &endpoint.token_url))
        });
        Some(UpstreamSettings::Discovered {
            found,
            token_trusted,
        })
    }
}

impl crate::broker::UpstreamBroker {
    /// Looks at an upstream's 401/403 on an MCP server route without `upstream_oauth2`: an
    /// upstream that runs MCP authorization is discovered (and the client told to authorize
    /// again, which takes the user through the upstream's consent); a TI it rejects is
    /// forgotten; `insufficient_scope` adds the scopes it asks for. `Err` replaces the response.
    pub(crate) async fn upstream_challenge(
        &self,
        ctx: &RequestContext,
        route: &Route,
        session: Option<&Session>,
        response: Response<Body>,
    ) -> Result<Response<Body>, Response<Body>> {
        let status = response.status();
        let (Some(session), true, None) = (
            session,
            route.is_mcp_server(),
            crate::broker::upstream::static_settings(route),
        ) else {
            return Ok(response);
        };
        if status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN {
            return Ok(response);
        }
        let Some(challenge) = response
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
        else {
            return Ok(response);
        };
        let Some(params) = challenge_params(&challenge) else {
            return Ok(response);
        };
        if status == StatusCode::FORBIDDEN
            && params.get("error").map(String::as_str) != Some("insufficient_scope")
        {
            return Ok(response);
        }
        let origin = ctx.origin();
        let key = crate::broker::upstream::route_key(route);
        if let Some(found) = self.discovery.get(&key, &origin).await {
            // A server that keeps answering insufficient_scope to fresh authorizations: stop
            // sending the user back to it, with an error that says why (not a loop).
            if status == StatusCode::FORBIDDEN
                && let Err(wait) = self.discovery.take_step_up(&session.user_id, &key)
            {
                tracing::warn!(target: "postern::audit", event = "upstream_step_up_limit", user = %session.email, route = %route.id, scope = %Untrusted(params.get("scope").map_or("", String::as_str)), "the upstream still answers insufficient_scope; no new authorization");
                return Err(step_up_limit(ctx, params.get("scope"), wait));
            }
            // The upstream refused the TI it was given: forget it (and widen the scopes when it
            // asked for more), so the next authorization gets a new one.
            if status == StatusCode::FORBIDDEN
                && let Some(scope) = params.get("scope")
            {
                let mut wider = (*found).clone();
                for s in scope.split_whitespace() {
                    if !wider.scopes.iter().any(|have| have == s) {
                        wider.scopes.push(s.to_owned());
                    }
                }
                self.discovery.put(&key, &origin, &wider).await;
            }
            // The answer is the same either way (the provider refused this TI; a new
            // authorization replaces it), but a refused TI left in the store is sent again.
            if let Err(error) = self
                .store
                .delete_upstream_token(&session.user_id, &key)
                .await
            {
                tracing::error!(%error, user = %session.email, route = %route.id, "cannot delete an upstream token the provider refused");
            }
            tracing::info!(target: "postern::audit", event = "upstream_token_rejected", user = %session.email, route = %route.id, %status, "the upstream refused the TI; the user must authorize again");
            return Err(crate::broker::not_connected(ctx, route));
        }
        if status != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        self.discover_on_challenge(ctx, route, &key, &origin, &challenge, response)
            .await
    }

    /// For `/authorize` on an MCP server route without `upstream_oauth2` whose upstream was not
    /// discovered (or last probed more than [`PROBE_TTL`] ago): asks the upstream, as an MCP
    /// client would, with an unauthenticated `ping`; when it answers 401 with MCP authorization
    /// metadata, runs discovery now, so the user goes through the upstream's consent in this
    /// browser trip and the client's first request carries the TI (instead of a 401 that needs
    /// a second authorization, which clients that do not retry within a connection fail on).
    /// Returns whether the route now has discovered settings. Only signed-in users the route's
    /// policy allows reach this, and the request goes to the route's own upstream.
    pub(crate) async fn probe_upstream(&self, route: &Route, origin: &str) -> bool {
        if !route.is_mcp_server() || crate::broker::upstream::static_settings(route).is_some() {
            return false;
        }
        let key = crate::broker::upstream::route_key(route);
        let probe_key = format!("{key}|{origin}");
        let recently = self
            .discovery
            .probed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&probe_key)
            .is_some_and(|at| at.elapsed() < PROBE_TTL);
        if recently {
            return false;
        }
        let Some(upstream) = route.config.to.to_vec().first().map(|to| to.0.clone()) else {
            return false;
        };
        let outcome = match probe(&upstream).await {
            Ok(Some(challenge)) => {
                self.discovery
                    .discover(route, &key, origin, &challenge)
                    .await
            }
            Ok(None) => Ok(None),
            Err(error) => {
                tracing::warn!(route = %route.id, %error, "cannot probe the upstream for its own OAuth; its first 401 will discover it");
                return false;
            }
        };
        let found = match outcome {
            Ok(found) => found.is_some(),
            Err(error) => {
                tracing::warn!(route = %route.id, %error, "upstream OAuth discovery during authorization failed; the first request will report it");
                false
            }
        };
        // Not again for a while: no OAuth there, or discovery failed (each attempt fetches
        // metadata; the client's first request reports the failure).
        if !found {
            self.discovery
                .probed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(probe_key, Instant::now());
        }
        found
    }

    /// The answer to an upstream 401 on a route not yet discovered: the client told to
    /// authorize again once discovery succeeds, the 401 as it is when the upstream gave no MCP
    /// authorization metadata, a 502 when discovery failed.
    async fn discover_on_challenge(
        &self,
        ctx: &RequestContext,
        route: &Route,
        key: &str,
        origin: &str,
        challenge: &str,
        response: Response<Body>,
    ) -> Result<Response<Body>, Response<Body>> {
        match self.discovery.discover(route, key, origin, challenge).await {
            Ok(Some(_)) => Err(crate::broker::not_connected(ctx, route)),
            Ok(None) => Ok(response),
            Err(error) => {
                tracing::warn!(request_id = %ctx.request_id, route = %route.id, %error, "upstream OAuth discovery failed");
                Err(crate::web::reply::json_error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_discovery_failed",
                    &format!(
                        "{error}; an administrator can configure upstream_oauth2 for this route instead"
                    ),
                    &ctx.request_id,
                ))
            }
        }
    }
}

/// A refused request's text, with what an administrator can do when the refusal is only because
/// the host is not trusted (plain http, or a private address, on a host and port that are
/// neither the route's upstream nor listed).
fn with_listing_hint(
    error: &crate::web::safe_http::FetchError,
    url: &url::Url,
    trusted: bool,
) -> String {
    use crate::web::safe_http::FetchError;
    let untrusted_refusal = matches!(
        error,
        FetchError::NotHttps { .. } | FetchError::PrivateAddress { .. }
    );
    match (untrusted_refusal && !trusted, url.port_or_known_default()) {
        (true, Some(port)) => format!(
            "{error} (it is not the route's upstream host and port); an administrator who trusts it can list {}:{port} in mcp_allowed_as_metadata_domains",
            host_of(url)
        ),
        _ => error.to_string(),
    }
}

/// The `WWW-Authenticate` of the upstream's 401 to an unauthenticated MCP `ping` (harmless: it
/// opens no session), `"Bearer"` for a 401 without one (discovery then tries the well-known
/// metadata URLs); `None` when the upstream does not ask for authorization.
async fn probe(upstream: &url::Url) -> Result<Option<String>, crate::web::safe_http::FetchError> {
    let http = crate::web::safe_http::pinned_client(upstream, true).await?;
    let response = http
        .post(upstream.clone())
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(r#"{"jsonrpc":"2.0","id":"postern-probe","method":"ping"}"#)
        .send()
        .await
        .map_err(|error| crate::web::safe_http::FetchError::Request {
            url: upstream.to_string(),
            error,
        })?;
    if response.status() != reqwest::StatusCode::UNAUTHORIZED {
        return Ok(None);
    }
    let challenge = response
        .headers()
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| challenge_params(v).is_some())
        .unwrap_or("Bearer")
        .to_owned();
    Ok(Some(challenge))
}

/// 403 for a user who reached [`STEP_UP_LIMIT`] on a route: what the server asks for, that
/// Postern stopped, and what to do.
fn step_up_limit(ctx: &RequestContext, scope: Option<&String>, wait: Duration) -> Response<Body> {
    let asked = scope.map_or_else(
        || "more scopes".to_owned(),
        |s| format!("the scopes {}", Untrusted(s)),
    );
    crate::web::reply::json_error(
        StatusCode::FORBIDDEN,
        "upstream_step_up_limit",
        &format!(
            "the MCP server still refuses this request for lack of {asked} after {STEP_UP_LIMIT} new authorizations within {} minutes, so Postern stopped asking you to authorize again; your account at the server may not be allowed these scopes (ask its administrator), or try again in {} minutes",
            STEP_UP_WINDOW.as_secs() / 60,
            wait.as_secs().div_ceil(60).max(1)
        ),
        &ctx.request_id,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These texts reach the user on the discovery failure page; the server's values are quoted.
    #[test]
    fn refused_endpoints_are_named_and_quoted() {
        let cases = [
            (
                EndpointError::NotUrl {
                    name: "token_endpoint",
                    endpoint: "not a url".into(),
                },
                r#"its token_endpoint "not a url" is not a URL"#,
            ),
            (
                EndpointError::IssuerNotUrl {
                    issuer: "issuer\n".into(),
                },
                r#""issuer\n" is not a URL"#,
            ),
            (
                EndpointError::Credentials {
                    name: "token_endpoint",
                    endpoint: "https://u:p@as.example/token".into(),
                },
                r#"its token_endpoint "https://u:p@as.example/token" carries credentials"#,
            ),
            (
                EndpointError::NotHttps {
                    name: "registration_endpoint",
                    endpoint: "http://as.example/register".into(),
                },
                r#"its registration_endpoint "http://as.example/register" is not https"#,
            ),
            (
                EndpointError::OtherOrigin {
                    name: "token_endpoint",
                    endpoint: "https://elsewhere.example/token".into(),
                    issuer_origin: "https://as.example".into(),
                    host: "elsewhere.example".into(),
                },
                r#"its token_endpoint "https://elsewhere.example/token" is not on the issuer's origin https://as.example; an administrator can list elsewhere.example in mcp_allowed_as_metadata_domains"#,
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
    }

    /// RFC 9728 clients accept metadata for a same-origin path prefix of the server URL, by
    /// whole segments; nothing on another origin (scheme, host or port).
    #[test]
    fn a_resource_covers_the_upstream_by_same_origin_path_prefix() {
        let upstream = url::Url::parse("https://h.example/a/mcp").unwrap();
        for yes in [
            "https://h.example",
            "https://h.example/",
            "https://h.example/a",
            "https://h.example/a/",
            "https://h.example/a/mcp",
            "https://h.example:443/a",
        ] {
            assert!(covers(yes, &upstream), "{yes}");
        }
        for no in [
            "https://h.example/ab",
            "https://h.example/a/mcp/more",
            "http://h.example/a",
            "https://h.example:8443/a",
            "https://other.example/a",
            "https://h.example/a?x=1",
            "not a url",
        ] {
            assert!(!covers(no, &upstream), "{no}");
        }
    }

    #[test]
    fn bearer_challenges_parse() {
        let p = challenge_params(
            r#"Bearer error="insufficient_scope", scope="files:read files:write", resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource/mcp""#,
        )
        .unwrap();
        assert_eq!(p["error"], "insufficient_scope");
        assert_eq!(p["scope"], "files:read files:write");
        assert_eq!(
            p["resource_metadata"],
            "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
        );
        let p = challenge_params("bearer realm=x, error=invalid_token").unwrap();
        assert_eq!(p["realm"], "x");
        assert_eq!(p["error"], "invalid_token");
        assert!(challenge_params("Basic realm=\"x\"").is_none());
        assert!(challenge_params("Bearer").unwrap().is_empty());
    }
}
