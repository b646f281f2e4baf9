//! The routing table: which route serves a request, and where upstream it goes.
//!
//! A route matches on the request's host (and port, when `from` names one) and optionally on a
//! path prefix (segment-aligned), an exact path, or a regular expression the whole path matches.
//! The most specific route wins: an exact path, then the regex routes (higher
//! `regex_priority_order` first), then the longest prefix, then a host-only route; ties go to
//! the earlier route in the file. Every matcher sees the canonical path (`crate::path`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use postern_config::{Config, Mcp, McpServer, Route as RouteConfig};

/// How long an upstream that failed is skipped (passive health).
const UNHEALTHY_FOR: Duration = Duration::from_secs(10);

/// What kind of route this is.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // one per route
pub enum Kind {
    /// A plain web route.
    Web,
    /// An MCP server route.
    McpServer(McpServer),
    /// An MCP client app route.
    McpClient,
}

/// A route ready to serve.
#[derive(Debug)]
pub struct Route {
    /// Position in the configuration (stable id for metrics and logs).
    pub index: usize,
    /// A short id: the name, or `from` + prefix.
    pub id: String,
    /// The configuration it came from.
    pub config: RouteConfig,
    /// The kind.
    pub kind: Kind,
    /// Upstreams, balanced round-robin with passive health.
    pub upstreams: Vec<Upstream>,
    /// The upstream timeout in effect.
    pub timeout: Duration,
    /// The idle timeout in effect (`None`: streams may stay quiet forever).
    pub idle_timeout: Option<Duration>,
    /// Largest request body accepted.
    pub max_request_bytes: u64,
    /// The route's authorization policy (its `policy` and the shorthands), compiled.
    pub policy: postern_policy::Policy,
    /// The upstream request's header rewrites, parsed once.
    pub rewrites: HeaderRewrites,
    /// The route's own upstream client, when it trusts its own CA (`tls_custom_ca_file`) or
    /// checks another name (`tls_server_name`).
    pub tls_client: Option<UpstreamTlsClient>,
    /// The groups the identity assertion may carry here (`jwt_groups_filter`, global and the
    /// route's, with the policy's groups when inferred); `None`: all the user's.
    pub assertion_groups: Option<Vec<String>>,
    /// `regex_rewrite_pattern` with its substitution.
    pub path_rewrite: Option<postern_config::PathRewrite>,
    next: AtomicUsize,
}

/// A route's own upstream client.
pub type UpstreamTlsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    crate::body::Body,
>;

/// The route's own upstream client, if it needs other TLS settings than the shared client's
/// (its own CA, another name) or sends its own `Host` to an https upstream (HTTP/1.1 only:
/// over HTTP/2 the authority would say otherwise). The configuration checked the file and
/// name; what still fails here leaves the route with a client that trusts nothing, so its
/// requests fail (502) instead of trusting more.
fn route_tls_client(config: &RouteConfig, id: &str) -> Option<UpstreamTlsClient> {
    // HTTP/1.1 only too on a route that upgrades: an upgrade cannot cross HTTP/2.
    let own_host = config.host_rewrite.is_some()
        || config.preserve_host_header
        || config.allow_websockets
        || config.allow_spdy;
    let https = config.to.to_vec().iter().any(|u| u.0.scheme() == "https");
    let own_tls = config.tls_custom_ca_file.is_some() || config.tls_server_name.is_some();
    if !(own_tls || (own_host && https)) {
        return None;
    }
    if config.tls_skip_verify {
        return Some(crate::proxy::https_client(
            crate::proxy::unverified_tls(),
            None,
            !own_host,
        ));
    }
    let roots = config.tls_custom_ca_file.as_ref().map(|file| {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(file).unwrap_or_default();
        use rustls_pki_types::pem::PemObject;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem).flatten() {
            if let Err(error) = roots.add(cert) {
                tracing::error!(route = %id, %error, "tls_custom_ca_file: a certificate is unusable");
            }
        }
        if roots.is_empty() {
            tracing::error!(route = %id, file = %file.display(), "tls_custom_ca_file: no usable certificate; the route's upstream will not be trusted");
        }
        roots
    });
    let name = config.tls_server_name.as_ref().and_then(|name| {
        rustls_pki_types::ServerName::try_from(name.clone())
            .inspect_err(
                |error| tracing::error!(route = %id, %error, "tls_server_name is not a name"),
            )
            .ok()
    });
    Some(crate::proxy::https_client(
        crate::proxy::verifying_tls(roots),
        name,
        !own_host,
    ))
}

/// `set_request_headers`, `remove_request_headers` and `host_rewrite`, parsed (the
/// configuration checked the names and values, so nothing is dropped here in practice).
#[derive(Debug, Default)]
pub struct HeaderRewrites {
    /// Set on the upstream request.
    pub set: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Removed from the client's headers.
    pub remove: Vec<http::HeaderName>,
    /// The `Host` sent upstream.
    pub host: Option<http::HeaderValue>,
    /// `set_response_headers`: set on the route's responses.
    pub response: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl HeaderRewrites {
    fn new(config: &RouteConfig) -> Self {
        HeaderRewrites {
            set: header_list(&config.set_request_headers),
            remove: config
                .remove_request_headers
                .iter()
                .filter_map(|name| http::HeaderName::from_bytes(name.as_bytes()).ok())
                .collect(),
            host: config
                .host_rewrite
                .as_deref()
                .and_then(|h| http::HeaderValue::from_str(h).ok()),
            response: header_list(&config.set_response_headers),
        }
    }
}

/// The union of the global and the route's `jwt_groups_filter`; `None` when neither is set.
fn assertion_groups(
    global: &Config,
    config: &RouteConfig,
    policy: &postern_policy::Policy,
) -> Option<Vec<String>> {
    let filters: Vec<_> = [&global.jwt_groups_filter, &config.jwt_groups_filter]
        .into_iter()
        .flatten()
        .collect();
    if filters.is_empty() {
        return None;
    }
    let mut groups: Vec<String> = filters.iter().flat_map(|f| f.groups.clone()).collect();
    if filters.iter().any(|f| f.infer_from_ppl) {
        groups.extend(policy.groups());
    }
    groups.sort();
    groups.dedup();
    Some(groups)
}

/// Configured headers, parsed (the configuration checked the names and values).
pub(crate) fn header_list(
    headers: &std::collections::BTreeMap<String, String>,
) -> Vec<(http::HeaderName, http::HeaderValue)> {
    headers
        .iter()
        .filter_map(|(name, value)| {
            Some((
                http::HeaderName::from_bytes(name.as_bytes()).ok()?,
                http::HeaderValue::from_str(value).ok()?,
            ))
        })
        .collect()
}

/// One upstream URL and its health.
#[derive(Debug)]
pub struct Upstream {
    /// The URL.
    pub url: url::Url,
    down_until: std::sync::Mutex<Option<Instant>>,
}

impl Upstream {
    fn healthy(&self, now: Instant) -> bool {
        self.down_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none_or(|until| until <= now)
    }

    /// Marks the upstream as failing: it is skipped for a while when others are healthy.
    pub fn mark_down(&self) {
        *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + UNHEALTHY_FOR);
    }

    /// Marks the upstream as working.
    pub fn mark_up(&self) {
        let mut down = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        if down.is_some() {
            *down = None;
        }
    }
}

impl Route {
    fn new(index: usize, config: &RouteConfig, global: &Config) -> Self {
        let kind = match &config.mcp {
            None => Kind::Web,
            Some(Mcp::Server(server)) => Kind::McpServer(server.clone()),
            Some(Mcp::Client) => Kind::McpClient,
        };
        let id = config
            .id
            .clone()
            .or_else(|| config.name.clone())
            .unwrap_or_else(|| {
                let matcher = match &config.regex {
                    Some(regex) => format!("~{}", regex.as_str()),
                    None => config
                        .prefix
                        .clone()
                        .or(config.path.clone())
                        .unwrap_or_default(),
                };
                format!("{}{matcher}", config.from.origin())
            });
        let shorthands = postern_policy::Shorthands {
            public: config.allow_public_unauthenticated_access,
            any_authenticated_user: config.allow_any_authenticated_user,
            users: config.allowed_users.clone(),
            domains: config.allowed_domains.clone(),
            preflight: config.cors_allow_preflight,
            client_certificate_required: global.downstream_mtls.as_ref().is_some_and(|m| {
                m.enforcement() == postern_config::MtlsEnforcement::PolicyWithDefaultDeny
            }),
            claims: config
                .allowed_idp_claims
                .iter()
                .map(|(name, values)| {
                    let values = values
                        .iter()
                        .map(|v| match v {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect();
                    (name.clone(), values)
                })
                .collect(),
        };
        // The document was checked when the configuration was read.
        let policy = postern_policy::Policy::compile(
            config.policy.as_ref().map(|p| &p.0),
            &shorthands,
        )
        .unwrap_or_else(|error| {
            tracing::error!(route = %id, %error, "invalid policy: the route denies every request");
            postern_policy::Policy::default()
        });
        let tls_client = route_tls_client(config, &id);
        let assertion_groups = assertion_groups(global, config, &policy);
        // Checked when the configuration was read.
        let path_rewrite = config
            .regex_rewrite_pattern
            .as_ref()
            .zip(config.regex_rewrite_substitution.as_deref())
            .and_then(|(pattern, substitution)| {
                postern_config::PathRewrite::new(pattern, substitution).ok()
            });
        Route {
            assertion_groups,
            index,
            id,
            policy,
            kind,
            upstreams: config
                .to
                .to_vec()
                .into_iter()
                .map(|u| Upstream {
                    url: u.0,
                    down_until: std::sync::Mutex::new(None),
                })
                .collect(),
            timeout: config.timeout_in_effect(global),
            idle_timeout: config.idle_timeout_in_effect(),
            max_request_bytes: config.max_request_bytes_in_effect(),
            rewrites: HeaderRewrites::new(config),
            tls_client,
            path_rewrite,
            config: config.clone(),
            next: AtomicUsize::new(0),
        }
    }

    /// Whether this is an MCP server route.
    pub fn is_mcp_server(&self) -> bool {
        matches!(self.kind, Kind::McpServer(_))
    }

    /// The next upstream: round-robin over healthy ones; all failing, round-robin over all.
    pub fn pick_upstream(&self) -> &Upstream {
        let n = self.upstreams.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        (0..n)
            .map(|i| &self.upstreams[(start + i) % n])
            .find(|u| u.healthy(now))
            .unwrap_or(&self.upstreams[start % n])
    }

    /// The upstream path for a (canonical) request path: `regex_rewrite_pattern`'s result, or
    /// a path in `to` replacing the matched prefix and `prefix_rewrite` replacing it after that
    /// path (a regex route's match is the whole path). `Err`: the rewrite made something other
    /// than a canonical absolute path.
    pub fn upstream_path(
        &self,
        upstream: &url::Url,
        request_path: &str,
    ) -> Result<String, crate::errors::GatewayError> {
        if let Some(rewrite) = &self.path_rewrite {
            return checked_rewrite(&rewrite.apply(request_path));
        }
        let matched = match &self.config.regex {
            Some(_) => request_path,
            None => self
                .config
                .prefix
                .as_deref()
                .or(self.config.path.as_deref())
                .unwrap_or(""),
        };
        Ok(self.prefix_path(upstream, request_path, matched))
    }

    fn prefix_path(&self, upstream: &url::Url, request_path: &str, matched: &str) -> String {
        let base = upstream.path();
        let rest = || {
            request_path
                .strip_prefix(matched.trim_end_matches('/'))
                .unwrap_or(request_path)
        };
        if let Some(rewrite) = &self.config.prefix_rewrite {
            return join_path(base, &join_path(rewrite, rest()));
        }
        if base == "/" || base.is_empty() {
            return request_path.to_owned();
        }
        join_path(base, rest())
    }

    fn specificity(&self) -> (u8, i128) {
        if self.config.regex.is_some() {
            return (2, i128::from(self.config.regex_priority_order.unwrap_or(0)));
        }
        match (&self.config.path, &self.config.prefix) {
            (Some(p), _) => (3, p.len() as i128),
            (None, Some(p)) => (1, p.len() as i128),
            (None, None) => (0, 0),
        }
    }

    fn matches(&self, host: &str, port: u16, path: &str) -> bool {
        let from = &self.config.from;
        if from.host != host {
            return false;
        }
        if let Some(p) = from.port
            && p != port
        {
            return false;
        }
        if let Some(regex) = &self.config.regex {
            return regex.is_match(path);
        }
        match (&self.config.path, &self.config.prefix) {
            (Some(exact), _) => path == exact,
            (None, Some(prefix)) => prefix_matches(prefix, path),
            (None, None) => true,
        }
    }
}

/// `/whoami` matches `/whoami`, `/whoami/` and `/whoami/x`, not `/whoamix`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix.ends_with('/') {
        return path.starts_with(prefix) || path == prefix.trim_end_matches('/');
    }
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// All routes, most specific first.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    /// The same routes by host, so a lookup costs what the request's host and path hold, not
    /// the table's size (10,000 routes: one hash lookup per path segment).
    by_host: HashMap<String, HostRoutes>,
    /// `authenticate_service_url`'s host: served (the gateway's own pages) though no route has it.
    authenticate_host: Option<String>,
}

/// One host's routes, as positions in [`RouteTable::routes`] (most specific first), indexed by
/// what a path can match: every exact path under its path, every prefix under the prefix
/// without its trailing `/` (a segment-aligned prefix matches the path itself or one of its
/// `/`-cut heads), the rest (regex, host-only, odd prefixes) listed.
#[derive(Debug, Default)]
struct HostRoutes {
    exact: HashMap<String, Vec<usize>>,
    prefix: HashMap<String, Vec<usize>>,
    other: Vec<usize>,
}

impl HostRoutes {
    fn add(&mut self, position: usize, config: &RouteConfig) {
        match (&config.regex, &config.path, &config.prefix) {
            (None, Some(exact), _) => self.exact.entry(exact.clone()).or_default().push(position),
            (None, None, Some(prefix)) => {
                let key = prefix.strip_suffix('/').unwrap_or(prefix);
                // `/a//` or a prefix without a leading `/` is not cut at segments: listed.
                if (key.is_empty() || key.starts_with('/')) && !key.ends_with('/') {
                    self.prefix
                        .entry(key.to_owned())
                        .or_default()
                        .push(position);
                } else {
                    self.other.push(position);
                }
            }
            _ => self.other.push(position),
        }
    }

    /// The first (most specific) of this host's routes that matches: the smallest position
    /// among the candidates, each confirmed by [`Route::matches`], so the result is the one a
    /// scan of the whole table in order finds.
    fn find(&self, routes: &[Arc<Route>], host: &str, port: u16, path: &str) -> Option<usize> {
        let mut best: Option<usize> = None;
        let mut consider = |positions: Option<&Vec<usize>>| {
            for &i in positions.into_iter().flatten() {
                if best.is_some_and(|b| b < i) {
                    break;
                }
                if routes[i].matches(host, port, path) {
                    best = Some(best.map_or(i, |b| b.min(i)));
                    break;
                }
            }
        };
        consider(self.exact.get(path));
        consider(self.prefix.get(path));
        for (at, _) in path.match_indices('/') {
            consider(self.prefix.get(&path[..at]));
        }
        consider(Some(&self.other));
        best
    }
}

impl RouteTable {
    /// Compiles the routes of `config`.
    pub fn new(config: &Config) -> Self {
        let mut routes: Vec<Arc<Route>> = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| Arc::new(Route::new(i, r, config)))
            .collect();
        // Stable sort: equal specificity keeps file order.
        routes.sort_by_key(|r| std::cmp::Reverse(r.specificity()));
        let mut by_host: HashMap<String, HostRoutes> = HashMap::new();
        for (position, route) in routes.iter().enumerate() {
            by_host
                .entry(route.config.from.host.clone())
                .or_default()
                .add(position, &route.config);
        }
        Self {
            routes,
            by_host,
            authenticate_host: config.authenticate_service().map(|a| a.host),
        }
    }

    /// The first route in order for `host` that matches (no loopback aliasing).
    fn find_on(&self, host: &str, port: u16, path: &str) -> Option<usize> {
        self.by_host.get(host)?.find(&self.routes, host, port, path)
    }

    /// The route for `host` (lower-case, no port), `port` and `path`.
    /// A route for one loopback name also answers the others (`localhost`, `127.0.0.1`, `::1`
    /// all reach this machine, and clients and browsers use them interchangeably), unless a
    /// route names that host itself or it is the sign-in origin's (`authenticate_service_url`:
    /// no route's content may share its origin).
    pub fn find(&self, host: &str, port: u16, path: &str) -> Option<Arc<Route>> {
        self.find_on(host, port, path)
            .or_else(|| {
                if !is_loopback_name(host) || self.authenticate_host.as_deref() == Some(host) {
                    return None;
                }
                // The first in order among every loopback name's routes.
                LOOPBACK_NAMES
                    .iter()
                    .filter_map(|name| self.find_on(name, port, path))
                    .min()
            })
            .map(|position| self.routes[position].clone())
    }

    /// Every route, most specific first.
    pub fn all(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Whether some route is for `host` (lower-case, no port), or it is the sign-in host.
    pub fn serves_host(&self, host: &str) -> bool {
        self.authenticate_host.as_deref() == Some(host)
            || self.by_host.contains_key(host)
            || (is_loopback_name(host)
                && LOOPBACK_NAMES
                    .iter()
                    .any(|name| self.by_host.contains_key(*name)))
    }

    /// The distinct host names of all routes (for certificates).
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .routes
            .iter()
            .map(|r| r.config.from.host.clone())
            .chain(self.authenticate_host.clone())
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }
}

/// Whether `host` (lower-case, IPv6 without brackets) is one of the names of this machine that
/// routes share: `localhost`, `127.0.0.1`, `::1`.
pub fn is_loopback_name(host: &str) -> bool {
    LOOPBACK_NAMES.contains(&host)
}

/// The names of this machine that routes share.
const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Splits a `Host` value into lower-case host (IPv6 without brackets) and port.
pub fn split_host(authority: &str, default_port: u16) -> (String, u16) {
    let authority = authority.trim();
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').unwrap_or((rest, ""));
        let port = after
            .strip_prefix(':')
            .and_then(|p| p.parse().ok())
            .unwrap_or(default_port);
        return (host.to_ascii_lowercase(), port);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (
            host.to_ascii_lowercase(),
            port.parse().unwrap_or(default_port),
        ),
        _ => (authority.to_ascii_lowercase(), default_port),
    }
}

/// A `regex_rewrite_pattern` result, if it is a canonical absolute path: groups copy what the
/// client sent, so they can put together a `..` segment, a `//`, an encoded separator or a backslash that
/// the upstream would resolve to another path than the one the rewrite shows.
fn checked_rewrite(path: &str) -> Result<String, crate::errors::GatewayError> {
    let refused = || {
        crate::errors::GatewayError::BadRequest(format!(
            "this route's regex_rewrite makes {path:?} of the path, which is not a plain absolute path (a '..' or '.' segment, '//', an encoded '/' or '.', or a backslash); request the resource by its plain path"
        ))
    };
    if path.contains(['?', '#']) {
        return Err(refused());
    }
    match crate::path::canonical(path) {
        Ok(canonical) if canonical == path => Ok(path.to_owned()),
        _ => Err(refused()),
    }
}

/// `base` followed by `rest` with one `/` between them; `rest` empty or `/` is `base` itself.
fn join_path(base: &str, rest: &str) -> String {
    let base = base.trim_end_matches('/');
    if rest.is_empty() || rest == "/" {
        if base.is_empty() {
            "/".to_owned()
        } else {
            base.to_owned()
        }
    } else if rest.starts_with('/') {
        format!("{base}{rest}")
    } else {
        format!("{base}/{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(yaml: &str) -> RouteTable {
        let config = postern_config::parse(
            yaml,
            std::path::Path::new("."),
            &std::collections::HashMap::new(),
        )
        .unwrap();
        RouteTable::new(&config)
    }

    #[test]
    fn loopback_names_share_routes_unless_one_is_named() {
        let t = table(
            "insecure_server: true
routes:
  - {from: http://localhost, prefix: /sqlite, to: http://s:1/sqlite, name: sqlite}
  - {from: http://127.0.0.1, prefix: /own, to: http://s:1, name: own}
  - {from: http://example.com, prefix: /ex, to: http://e:1, name: ex}
",
        );
        let name = |host: &str, path: &str| t.find(host, 8080, path).map(|r| r.id.clone());
        for host in ["localhost", "127.0.0.1", "::1"] {
            assert_eq!(name(host, "/sqlite").as_deref(), Some("sqlite"), "{host}");
            assert_eq!(name(host, "/own").as_deref(), Some("own"), "{host}");
            assert!(t.serves_host(host), "{host}");
        }
        // Only loopback names are aliases: another host, or a loopback route's path under a
        // public name, finds nothing.
        assert_eq!(name("example.com", "/sqlite"), None);
        assert_eq!(name("localhost", "/ex"), None);
        assert_eq!(name("127.0.0.2", "/sqlite"), None);
        assert!(!t.serves_host("127.0.0.2"));
    }

    #[test]
    fn the_most_specific_route_wins() {
        let t = table(
            "insecure_server: true
routes:
  - {from: http://localhost, to: http://fallback:1, name: host}
  - {from: http://localhost, prefix: /whoami, to: http://s:8080/whoami, name: whoami}
  - {from: http://localhost, prefix: /who, to: http://s:8080, name: who}
  - {from: http://localhost, path: /whoami/exact, to: http://s:8080, name: exact}
  - {from: http://localhost:9000, to: http://other:1, name: port}
  - {from: http://example.com, to: http://e:1, name: example}
",
        );
        let name =
            |host: &str, port: u16, path: &str| t.find(host, port, path).map(|r| r.id.clone());
        assert_eq!(name("localhost", 80, "/whoami").as_deref(), Some("whoami"));
        assert_eq!(
            name("localhost", 80, "/whoami/x").as_deref(),
            Some("whoami")
        );
        assert_eq!(
            name("localhost", 80, "/whoami/exact").as_deref(),
            Some("exact")
        );
        assert_eq!(
            name("localhost", 80, "/whoamix").as_deref(),
            Some("host"),
            "segment-aligned prefixes"
        );
        assert_eq!(name("localhost", 80, "/who/x").as_deref(), Some("who"));
        assert_eq!(
            name("localhost", 9000, "/x").as_deref(),
            Some("host"),
            "a port-less from matches any port"
        );
        assert_eq!(name("example.com", 443, "/").as_deref(), Some("example"));
        assert_eq!(name("nowhere.com", 80, "/"), None);
    }

    #[test]
    fn a_path_in_to_replaces_the_matched_prefix() {
        let t = table(
            "insecure_server: true
routes:
  - {from: http://a, prefix: /whoami, to: http://s:8080/whoami}
  - {from: http://b, to: http://mcp-servers:8080/notion}
  - {from: http://c, prefix: /api, to: http://s:8080}
  - {from: http://d, prefix: /old, to: http://s:8080/new/}
",
        );
        let path = |host: &str, p: &str| {
            let r = t.find(host, 80, p).unwrap();
            r.upstream_path(&r.upstreams[0].url, p).unwrap()
        };
        assert_eq!(path("a", "/whoami"), "/whoami");
        assert_eq!(path("a", "/whoami/x"), "/whoami/x");
        assert_eq!(path("b", "/"), "/notion");
        assert_eq!(path("b", "/sub"), "/notion/sub");
        assert_eq!(
            path("c", "/api/v1"),
            "/api/v1",
            "no path in to: the request path is kept"
        );
        assert_eq!(path("d", "/old/page"), "/new/page");
    }

    #[test]
    fn regex_routes_rank_between_exact_paths_and_prefixes_by_priority() {
        let t = table(
            r#"insecure_server: true
routes:
  - {from: http://localhost, to: http://fallback:1, name: host}
  - {from: http://localhost, prefix: /api, to: http://s:1, name: prefix}
  - {from: http://localhost, regex: '/api/v[0-9]+/.*', to: http://s:1, name: versioned}
  - {from: http://localhost, regex: '/api/v1/.*', to: http://s:1, name: v1, regex_priority_order: 10}
  - {from: http://localhost, regex: '/api/v2/.*', to: http://s:1, name: v2-later}
  - {from: http://localhost, path: /api/v1/exact, to: http://s:1, name: exact}
"#,
        );
        let name = |path: &str| t.find("localhost", 80, path).map(|r| r.id.clone());
        assert_eq!(
            name("/api/v1/x").as_deref(),
            Some("v1"),
            "higher priority first"
        );
        assert_eq!(
            name("/api/v2/x").as_deref(),
            Some("versioned"),
            "equal priority: file order"
        );
        assert_eq!(name("/api/v1/exact").as_deref(), Some("exact"));
        assert_eq!(
            name("/api/v1").as_deref(),
            Some("prefix"),
            "the regex must match the whole path"
        );
        assert_eq!(name("/x/api/v1/y").as_deref(), Some("host"), "anchored");
    }

    #[test]
    fn regex_rewrites_and_to_paths() {
        let t = table(
            r#"insecure_server: true
routes:
  - {from: http://a, regex: '/svc/.*', to: http://s:1/base, regex_rewrite_pattern: '^/svc/([^/]+)(/.*)?$', regex_rewrite_substitution: '\2/instance/\1'}
  - {from: http://b, regex: '/r/.*', to: http://s:1/only}
  - {from: http://c, regex: '/r/.*', to: http://s:1}
  - {from: http://d, regex: '/p/(.)x(.)', to: http://s:1, regex_rewrite_pattern: '^/p/(.)x(.)$', regex_rewrite_substitution: '/\1\2/secret'}
  - {from: http://e, to: http://s:1, regex_rewrite_pattern: '^/(.*)-(.*)$', regex_rewrite_substitution: '/\1/\2'}
  - {from: http://f, to: http://s:1, regex_rewrite_pattern: '^/a(.*)$', regex_rewrite_substitution: '/%\1'}
"#,
        );
        let path = |host: &str, p: &str| {
            let r = t.find(host, 80, p).unwrap();
            r.upstream_path(&r.upstreams[0].url, p)
        };
        assert_eq!(
            path("a", "/svc/foo/v1").unwrap(),
            "/v1/instance/foo",
            "the rewrite is the whole upstream path (a path in to is not added, as in Pomerium)"
        );
        assert_eq!(
            path("b", "/r/x").unwrap(),
            "/only",
            "to's path replaces the whole match"
        );
        assert_eq!(path("c", "/r/x").unwrap(), "/r/x");
        // Groups copy what the client sent: `.` and `.` make a `..` that would climb.
        let err = path("d", "/p/.x.").unwrap_err();
        assert_eq!(err.status(), http::StatusCode::BAD_REQUEST, "{err}");
        assert_eq!(path("d", "/p/axb").unwrap(), "/ab/secret");
        // An empty group makes `//`, which servers read differently.
        assert!(path("e", "/-x").is_err());
        assert_eq!(path("e", "/a-b").unwrap(), "/a/b");
        // A literal `%` next to client text makes an encoded slash.
        assert!(path("f", "/a2F").is_err(), "%2F");
        assert!(
            path("f", "/a2e").is_err(),
            "an encoded unreserved character"
        );
        assert_eq!(path("f", "/a20").unwrap(), "/%20");
    }

    #[test]
    fn hosts_split() {
        assert_eq!(
            split_host("Example.COM:8443", 443),
            ("example.com".into(), 8443)
        );
        assert_eq!(split_host("example.com", 443), ("example.com".into(), 443));
        assert_eq!(split_host("[::1]:8080", 80), ("::1".into(), 8080));
        assert_eq!(split_host("[::1]", 80), ("::1".into(), 80));
    }

    #[test]
    fn failing_upstreams_are_skipped_for_a_while() {
        let t = table(
            "insecure_server: true\nroutes:\n  - {from: http://a, to: [http://one:1, http://two:2]}\n",
        );
        let r = t.find("a", 80, "/").unwrap();
        r.upstreams[0].mark_down();
        for _ in 0..10 {
            assert_eq!(r.pick_upstream().url.host_str(), Some("two"));
        }
        r.upstreams[1].mark_down();
        let picked: Vec<_> = (0..4)
            .map(|_| r.pick_upstream().url.host_str().unwrap().to_owned())
            .collect();
        assert!(
            picked.contains(&"one".to_owned()) && picked.contains(&"two".to_owned()),
            "all down: spread anyway"
        );
    }

    /// The index answers exactly what a scan of every route in order answers (the definition
    /// of "most specific first"), for exact paths, prefixes with and without a trailing `/`,
    /// odd prefixes, regexes, host-only routes, ports and the loopback aliases.
    #[test]
    fn the_host_and_path_index_finds_what_a_scan_in_order_finds() {
        let t = table(
            r#"insecure_server: true
routes:
  - {from: http://localhost, to: http://s:1, name: lo-host}
  - {from: http://127.0.0.1, prefix: /a, to: http://s:1, name: ip-a}
  - {from: http://localhost, prefix: /a/, to: http://s:1, name: lo-a-slash}
  - {from: http://localhost, prefix: /a/b, to: http://s:1, name: lo-ab}
  - {from: http://localhost:9000, prefix: /a/b, to: http://s:1, name: lo-ab-9000}
  - {from: http://localhost, prefix: /a//, to: http://s:1, name: odd}
  - {from: http://localhost, prefix: /, to: http://s:1, name: root}
  - {from: http://localhost, path: /a/b/c, to: http://s:1, name: exact}
  - {from: http://localhost:9000, path: /a/b/c, to: http://s:1, name: exact-9000}
  - {from: http://localhost, regex: '/a/[0-9]+', to: http://s:1, name: re}
  - {from: http://example.com, prefix: /a, to: http://s:1, name: ex-a}
  - {from: http://example.com, path: /a, to: http://s:1, name: ex-exact}
  - {from: http://example.com, prefix: /a/b/, to: http://s:1, name: ex-ab}
  - {from: http://example.com:8443, to: http://s:1, name: ex-8443}
"#,
        );
        let scan = |host: &str, port: u16, path: &str| {
            let first = t.routes.iter().find(|r| r.matches(host, port, path));
            first
                .or_else(|| {
                    is_loopback_name(host)
                        .then(|| {
                            t.routes.iter().find(|r| {
                                is_loopback_name(&r.config.from.host)
                                    && r.matches(&r.config.from.host, port, path)
                            })
                        })
                        .flatten()
                })
                .map(|r| r.id.clone())
        };
        let paths = [
            "", "/", "/a", "/a/", "/a//", "/a//x", "/ab", "/a/b", "/a/b/", "/a/b/c", "/a/b/c/",
            "/a/12", "/a/12/x", "/x", "/x/a/b",
        ];
        let mut checked = 0;
        for host in ["localhost", "127.0.0.1", "::1", "example.com", "other"] {
            for port in [80, 8443, 9000] {
                for path in paths {
                    let found = t.find(host, port, path).map(|r| r.id.clone());
                    assert_eq!(found, scan(host, port, path), "{host}:{port}{path}");
                    checked += usize::from(found.is_some());
                }
            }
        }
        assert!(checked > 100, "the cases must mostly find a route");
        assert_eq!(
            t.find("localhost", 80, "/a/b/c")
                .map(|r| r.id.clone())
                .as_deref(),
            Some("exact")
        );
        assert_eq!(
            t.find("localhost", 80, "/a//x")
                .map(|r| r.id.clone())
                .as_deref(),
            Some("odd")
        );
    }
}
