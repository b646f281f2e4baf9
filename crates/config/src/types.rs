//! The configuration file's shape. Every struct rejects unknown keys; field docs are the
//! configuration reference. Keys follow the seed's and Pomerium's names.
//! The values in effect when a key is left out are in [`crate::defaults`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::Secret;
use crate::values::{FromUrl, GoDuration, PolicyDocument, ToUrl};

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listen address (`:443`; `:8080` with `insecure_server`). `host:port` or `:port`.
    #[serde(default)]
    pub address: Option<String>,
    /// Serve plain HTTP (localhost, development, or behind a TLS-terminating load balancer).
    #[serde(default)]
    pub insecure_server: bool,
    /// Where plain-HTTP requests are redirected to HTTPS and ACME HTTP-01 challenges answered
    /// (`:80` by default when TLS is on; empty string turns it off). Pomerium's
    /// `http_redirect_addr` is the same key.
    #[serde(default, alias = "http_redirect_addr")]
    pub http_redirect_address: Option<String>,
    /// Obtain and renew certificates for every route host with ACME.
    #[serde(default)]
    pub autocert: bool,
    /// Where ACME account and certificates are kept (default `<data_dir>/autocert`).
    #[serde(default)]
    pub autocert_dir: Option<PathBuf>,
    /// ACME directory URL (default Let's Encrypt production).
    #[serde(default)]
    pub autocert_ca: Option<String>,
    /// Contact email for the ACME account.
    #[serde(default)]
    pub autocert_email: Option<String>,
    /// A PEM file with the CA to trust for `autocert_ca` (e.g. a test ACME server).
    #[serde(default)]
    pub autocert_trusted_ca_file: Option<PathBuf>,
    /// Certificate chain file (PEM), with `certificate_key_file`.
    #[serde(default)]
    pub certificate_file: Option<PathBuf>,
    /// Private key file (PEM) for `certificate_file`.
    #[serde(default)]
    pub certificate_key_file: Option<PathBuf>,
    /// Several certificates, chosen by SNI.
    #[serde(default)]
    pub certificates: Vec<CertificatePair>,
    /// Client certificates (mutual TLS) on the main listener: the CA they must chain to and
    /// what happens without one. Needs TLS.
    #[serde(default)]
    pub downstream_mtls: Option<DownstreamMtls>,
    /// Pomerium's older name for `downstream_mtls.ca` (base64 of a PEM bundle).
    #[serde(default)]
    pub client_ca: Option<String>,
    /// Pomerium's older name for `downstream_mtls.ca_file`.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Where the gateway keeps its state (SQLite store, autocert cache). Default `./postern-data`.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// 32 random bytes, base64: keys for token and store encryption are derived from it.
    #[serde(default)]
    pub shared_secret: Option<Secret>,
    /// Identity claims sent upstream as headers: a map of header name to claim (`X-Email:
    /// email`), or a list of claims, each sent as `X-Pomerium-Claim-<Claim>`. Lists (groups)
    /// are joined with commas. Claims: `email`, `groups`, `user`/`sub`, `name`, `sid`, `iss`,
    /// `aud`, or any claim of the user's identity provider.
    #[serde(default)]
    pub jwt_claims_headers: Option<ClaimHeaders>,
    /// Reuse a still-valid identity assertion per (session, route host) instead of signing a
    /// fresh one (new `jti`, `iat`) for every request: faster, but only for servers that keep
    /// no replay cache of `jti`s. Default `false`, as Pomerium.
    #[serde(default)]
    pub jwt_assertion_reuse: bool,
    /// File holding `shared_secret`.
    #[serde(default)]
    pub shared_secret_file: Option<PathBuf>,
    /// Earlier shared secrets: still open values sealed before a rotation.
    #[serde(default)]
    pub previous_shared_secrets: Vec<Secret>,
    /// 32 random bytes, base64: encrypts the session cookie (derived from `shared_secret` if absent).
    #[serde(default)]
    pub cookie_secret: Option<Secret>,
    /// File holding `cookie_secret`.
    #[serde(default)]
    pub cookie_secret_file: Option<PathBuf>,
    /// Session cookie name (default `_postern`).
    #[serde(default)]
    pub cookie_name: Option<String>,
    /// Session lifetime (default `14h`).
    #[serde(default)]
    pub cookie_expire: Option<GoDuration>,
    /// The session cookie's `Domain` (`example.com`: every host under it gets the session);
    /// absent: host-only, the narrowest scope.
    #[serde(default)]
    pub cookie_domain: Option<String>,
    /// The session cookie's `SameSite`: `lax` (default), `strict` or `none` (https only).
    #[serde(default)]
    pub cookie_same_site: Option<CookieSameSite>,
    /// Pomerium's `cookie_http_only`: Postern's cookies are always `HttpOnly`; `false` is
    /// ignored with a warning.
    #[serde(default)]
    pub cookie_http_only: Option<bool>,
    /// EC P-256 private key (PEM, or base64 of PEM) that signs the identity assertion;
    /// generated once and kept in the store when absent.
    #[serde(default)]
    pub signing_key: Option<Secret>,
    /// File holding `signing_key`.
    #[serde(default)]
    pub signing_key_file: Option<PathBuf>,
    /// A dedicated origin (`https://authenticate.example.com`) for sign-in, consent, the portal
    /// and the OAuth authorization server; route hosts send browsers there to sign in and get
    /// their session handed back. Absent: every route host serves them itself.
    #[serde(default)]
    pub authenticate_service_url: Option<String>,
    /// Identity provider: `oidc`, or one of Pomerium's OIDC provider names (`google`, `gitlab`,
    /// `okta`, `auth0`, `azure`, `cognito`, `onelogin`, `ping`, `keycloak`), or `github` (OAuth 2).
    /// Absent: local users (`users_file`).
    #[serde(default)]
    pub idp_provider: Option<String>,
    /// OIDC issuer URL (discovery at `/.well-known/openid-configuration`); with `github`, a
    /// GitHub Enterprise Server's URL.
    #[serde(default)]
    pub idp_provider_url: Option<String>,
    /// OIDC client id.
    #[serde(default)]
    pub idp_client_id: Option<String>,
    /// OIDC client secret.
    #[serde(default)]
    pub idp_client_secret: Option<Secret>,
    /// File holding `idp_client_secret`.
    #[serde(default)]
    pub idp_client_secret_file: Option<PathBuf>,
    /// OIDC scopes (default `openid profile email`).
    #[serde(default)]
    pub idp_scopes: Vec<String>,
    /// The ID-token claim that lists the user's groups (default `groups`).
    #[serde(default)]
    pub idp_groups_claim: Option<String>,
    /// Local users: a YAML list of `{email, name, groups, password_hash}` (argon2id).
    #[serde(default)]
    pub users_file: Option<PathBuf>,
    /// `sqlite` (default), `postgres`, or `memory` (tests).
    #[serde(default)]
    pub databroker_storage_type: Option<StorageType>,
    /// PostgreSQL connection string, for `postgres`.
    #[serde(default)]
    pub databroker_storage_connection_string: Option<Secret>,
    /// File holding the connection string.
    #[serde(default)]
    pub databroker_storage_connection_string_file: Option<PathBuf>,
    /// Send `X-Pomerium-Jwt-Assertion` upstream on every route (routes may override).
    #[serde(default)]
    pub pass_identity_headers: Option<bool>,
    /// The assertion's `iss`: `hostOnly` (default, `mcp.example.com`) or `uri` (`https://mcp.example.com/`).
    #[serde(default)]
    pub jwt_issuer_format: Option<IssuerFormat>,
    /// Only these groups go into the assertion's `groups` claim and the `groups` claim header
    /// (a list, or `{groups: [...], infer_from_ppl: true}`); routes may add to it. Absent: all.
    #[serde(default)]
    pub jwt_groups_filter: Option<GroupsFilter>,
    /// Where Prometheus metrics and `/healthz` are served (e.g. `127.0.0.1:9090`); off when absent.
    #[serde(default)]
    pub metrics_address: Option<String>,
    /// Log level: `error`, `warn`, `info` (default), `debug`, `trace`.
    #[serde(default)]
    pub log_level: Option<String>,
    /// Pomerium's `authorize_log_fields`: the optional fields of each audit record, in
    /// Pomerium's names (`email`, `mcp-tool`, `headers.X-Client`, ...). Absent: the record's
    /// own fixed fields.
    #[serde(default)]
    pub authorize_log_fields: Option<Vec<AuthorizeLogField>>,
    /// How many `X-Forwarded-For` hops to trust (behind a load balancer: 1). Default 0: the
    /// client's own address and scheme are used.
    #[serde(default)]
    pub xff_num_trusted_hops: u32,
    /// Time limit for an upstream to answer, unless a route sets `timeout` (default `30s`;
    /// `0`: none, as in Pomerium).
    #[serde(default)]
    pub default_upstream_timeout: Option<GoDuration>,
    /// How long a client may take to send a request's head, and may leave its body stalled,
    /// before it gets 408 (default `30s`, as Pomerium).
    #[serde(default)]
    pub timeout_read: Option<GoDuration>,
    /// A client connection with no request in flight is closed after this (default `75s`).
    #[serde(default)]
    pub timeout_idle: Option<GoDuration>,
    /// The longest a request may take from its arrival to the end of its response (streams
    /// and WebSockets included), as Pomerium's (Envoy's `max_stream_duration`); unset or `0`:
    /// no limit.
    #[serde(default)]
    pub timeout_write: Option<GoDuration>,
    /// Most client connections open at once on the main listener (default 10000); over it, a
    /// new connection is closed as soon as it is accepted.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Hosts whose client ID metadata documents (https `client_id` URLs) are accepted.
    #[serde(default)]
    pub mcp_allowed_client_id_domains: Vec<String>,
    /// Extra hosts upstream OAuth discovery may contact besides the routes' upstream hosts.
    #[serde(default)]
    pub mcp_allowed_as_metadata_domains: Vec<String>,
    /// Lifetime of the access tokens (TE) issued to MCP clients (default `1h`, 1 minute to 24 hours).
    #[serde(default)]
    pub mcp_access_token_ttl: Option<GoDuration>,
    /// How long an MCP client's refresh token lasts unused (default `720h`, 30 days); each
    /// refresh starts it again, up to `mcp_refresh_token_max_ttl`.
    #[serde(default)]
    pub mcp_refresh_token_idle_ttl: Option<GoDuration>,
    /// How long a client grant lasts from its authorization, however often it is refreshed
    /// (default `2160h`, 90 days).
    #[serde(default)]
    pub mcp_refresh_token_max_ttl: Option<GoDuration>,
    /// Accept RFC 7591 dynamic client registration (default on).
    #[serde(default)]
    pub mcp_dynamic_client_registration: Option<bool>,
    /// Headers set on every response. Absent: Pomerium's security headers
    /// (`X-Frame-Options: SAMEORIGIN`, `X-Content-Type-Options: nosniff`,
    /// `X-XSS-Protection: 1; mode=block`, and over https `Strict-Transport-Security`). Given:
    /// exactly these instead; with a `disable` key: none. Postern's own pages keep their
    /// stricter values.
    #[serde(default)]
    pub set_response_headers: Option<BTreeMap<String, String>>,
    /// Pomerium's feature flags; accepted for compatibility (`mcp` is always on here).
    #[serde(default)]
    pub runtime_flags: BTreeMap<String, bool>,
    /// The routes (Pomerium's older name, `policy`, works too).
    #[serde(default, alias = "policy")]
    pub routes: Vec<Route>,
    /// What loading the file noticed but did not refuse (Pomerium keys Postern ignores), each
    /// `path: message`; `check-config` prints them and `serve` logs them.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// One certificate and its key.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificatePair {
    /// Certificate chain file (PEM).
    pub cert: PathBuf,
    /// Private key file (PEM).
    pub key: PathBuf,
}

/// The session cookie's `SameSite`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CookieSameSite {
    /// Sent on same-site requests and top-level navigations from other sites (the default).
    #[serde(alias = "Lax", alias = "LAX")]
    Lax,
    /// Sent on same-site requests only.
    #[serde(alias = "Strict", alias = "STRICT")]
    Strict,
    /// Sent on every request, other sites' included (needs https).
    #[serde(alias = "None", alias = "NONE")]
    None,
}

/// `downstream_mtls`: client certificates, as Pomerium's keys of that name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownstreamMtls {
    /// The trusted CA certificates: base64 of a PEM bundle (roots or intermediates).
    #[serde(default)]
    pub ca: Option<String>,
    /// A PEM file of the trusted CA certificates.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Certificate revocation lists: base64 of a PEM bundle.
    #[serde(default)]
    pub crl: Option<String>,
    /// A PEM file of certificate revocation lists.
    #[serde(default)]
    pub crl_file: Option<PathBuf>,
    /// What a client without a valid certificate gets (default `policy_with_default_deny`).
    #[serde(default)]
    pub enforcement: Option<MtlsEnforcement>,
    /// A certificate must have a Subject Alternative Name matching one of these (none: no
    /// such condition).
    #[serde(default)]
    pub match_subject_alt_names: Vec<SanMatcher>,
    /// Most certificates in the verified chain below the trust anchor (default 1: issued
    /// directly by a trusted CA; 0: no limit).
    #[serde(default)]
    pub max_verify_depth: Option<u32>,
}

/// `downstream_mtls.enforcement`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MtlsEnforcement {
    /// Every route denies a request without a valid certificate (495); the gateway's own
    /// endpoints (`/.pomerium/...`, OAuth) do not need one.
    #[default]
    PolicyWithDefaultDeny,
    /// Only routes whose policy asks (`invalid_client_certificate`, `client_certificate`).
    Policy,
    /// The TLS handshake fails without a valid certificate.
    RejectConnection,
}

/// One `match_subject_alt_names` entry: a SAN type and a regular expression that must match a
/// SAN of that type whole.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "BTreeMap<String, String>")]
pub enum SanMatcher {
    /// A DNS name.
    Dns(String),
    /// An email address (rfc822Name).
    Email(String),
    /// An IP address (`192.0.2.1`, `2001:db8::1`).
    IpAddress(String),
    /// A URI.
    Uri(String),
    /// A Microsoft User Principal Name (otherName 1.3.6.1.4.1.311.20.2.3).
    UserPrincipalName(String),
}

/// Where state is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageType {
    /// A SQLite file in `data_dir`.
    Sqlite,
    /// PostgreSQL (several replicas).
    Postgres,
    /// Pomerium's file-backed store: a SQLite file in the directory
    /// `databroker_storage_connection_string` names (`file:///var/lib/postern` or a path),
    /// else in `data_dir`.
    File,
    /// In memory (tests only).
    Memory,
}

/// `jwt_groups_filter`: the groups the assertion may carry.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(from = "RawGroupsFilter")]
pub struct GroupsFilter {
    /// Groups named outright.
    pub groups: Vec<String>,
    /// Also the groups the route's policy names in `groups` criteria.
    pub infer_from_ppl: bool,
}

/// `jwt_groups_filter` as written: Pomerium's list, or its object form.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "a list of groups, or {groups: [...], infer_from_ppl: true|false}"
)]
enum RawGroupsFilter {
    List(Vec<String>),
    Object(GroupsFilterObject),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupsFilterObject {
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    infer_from_ppl: bool,
}

impl From<RawGroupsFilter> for GroupsFilter {
    fn from(raw: RawGroupsFilter) -> Self {
        match raw {
            RawGroupsFilter::List(groups) => GroupsFilter {
                groups,
                infer_from_ppl: false,
            },
            RawGroupsFilter::Object(o) => GroupsFilter {
                groups: o.groups,
                infer_from_ppl: o.infer_from_ppl,
            },
        }
    }
}

/// The assertion's issuer format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum IssuerFormat {
    /// `mcp.example.com`.
    #[serde(rename = "hostOnly")]
    HostOnly,
    /// `https://mcp.example.com/`.
    #[serde(rename = "uri")]
    Uri,
}

/// A route: requests for `from` (and `prefix`/`path`) go to `to`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// `scheme://host[:port]` matched against the request's host.
    pub from: FromUrl,
    /// One or more upstream URLs; a path in `to` replaces the matched prefix. Empty only on an
    /// aggregate MCP route (`mcp.aggregate`), which has no upstream of its own.
    #[serde(default = "OneOrMany::none")]
    pub to: OneOrMany<ToUrl>,
    /// Match requests whose path starts with this (on a segment boundary).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Match requests with exactly this path.
    #[serde(default)]
    pub path: Option<String>,
    /// Match requests whose whole (canonical) path matches this regular expression (RE2
    /// syntax, anchored at both ends as in Pomerium).
    #[serde(default)]
    pub regex: Option<crate::PathRegex>,
    /// Order among the `regex` routes of a host: higher first (default 0; ties keep file order).
    #[serde(default)]
    pub regex_priority_order: Option<i64>,
    /// Rewrite the upstream path: every match of this pattern is replaced by
    /// `regex_rewrite_substitution`. Set both or neither.
    #[serde(default)]
    pub regex_rewrite_pattern: Option<crate::RewritePattern>,
    /// What replaces each match of `regex_rewrite_pattern` (`\1` ... `\9` for its groups).
    #[serde(default)]
    pub regex_rewrite_substitution: Option<String>,
    /// A stable id for the route (logs, metrics, the audit log); default the name, or `from`
    /// and the prefix. Unique.
    #[serde(default)]
    pub id: Option<String>,
    /// Display name (MCP server listings, consent page).
    #[serde(default)]
    pub name: Option<String>,
    /// Description for listings.
    #[serde(default)]
    pub description: Option<String>,
    /// Logo URL for listings.
    #[serde(default)]
    pub logo_url: Option<String>,
    /// Authorization policy (PPL; see `postern-policy` for what is supported).
    #[serde(default)]
    pub policy: Option<PolicyDocument>,
    /// Proxy without sign-in.
    #[serde(default)]
    pub allow_public_unauthenticated_access: bool,
    /// Any signed-in user may use the route.
    #[serde(default)]
    pub allow_any_authenticated_user: bool,
    /// These users (emails or ids) may use the route.
    #[serde(default)]
    pub allowed_users: Vec<String>,
    /// Users of these email domains may use the route.
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    /// CORS preflights (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) go to the
    /// upstream without sign-in (browsers send them without credentials).
    #[serde(default)]
    pub cors_allow_preflight: bool,
    /// Users with any of these values of these identity provider claims may use the route
    /// (`{department: [engineering], org: [acme]}`).
    #[serde(default)]
    pub allowed_idp_claims: BTreeMap<String, Vec<serde_json::Value>>,
    /// Send `X-Pomerium-Jwt-Assertion` upstream (overrides the global setting).
    #[serde(default)]
    pub pass_identity_headers: Option<bool>,
    /// The assertion's `iss` on this route (overrides the global `jwt_issuer_format`).
    #[serde(default)]
    pub jwt_issuer_format: Option<IssuerFormat>,
    /// More groups the assertion may carry on this route (with no global filter: this route's
    /// filter alone); the same forms as the global `jwt_groups_filter`.
    #[serde(default)]
    pub jwt_groups_filter: Option<GroupsFilter>,
    /// Send the client's `Host` upstream instead of the upstream's.
    #[serde(default)]
    pub preserve_host_header: bool,
    /// Send this `Host` upstream (`host[:port]`) instead of the upstream's.
    #[serde(default)]
    pub host_rewrite: Option<String>,
    /// Replace the matched `prefix` (or `path`) with this in the upstream path (after the path
    /// in `to`, if any): `prefix: /admin`, `prefix_rewrite: /` sends `/admin/users` as `/users`.
    #[serde(default)]
    pub prefix_rewrite: Option<String>,
    /// Headers set on the upstream request (replacing the client's of the same name).
    #[serde(default)]
    pub set_request_headers: BTreeMap<String, String>,
    /// Client headers removed before the request goes upstream.
    #[serde(default)]
    pub remove_request_headers: Vec<String>,
    /// Headers set on the route's responses (over the global `set_response_headers`).
    #[serde(default)]
    pub set_response_headers: BTreeMap<String, String>,
    /// Time limit for the upstream's response headers (default `default_upstream_timeout`;
    /// `0s`: none, as in Pomerium, whose configurations give it to long-lived streams).
    #[serde(default)]
    pub timeout: Option<GoDuration>,
    /// Close a response stream with no data for this long (off by default on MCP routes).
    #[serde(default)]
    pub idle_timeout: Option<GoDuration>,
    /// Accept invalid upstream TLS certificates (self-signed internal servers).
    #[serde(default)]
    pub tls_skip_verify: bool,
    /// A PEM file with the CA certificates that sign the upstream's certificate, trusted for
    /// this route instead of the system's (an internal CA). Relative to the configuration file.
    #[serde(default)]
    pub tls_custom_ca_file: Option<PathBuf>,
    /// The name the upstream's certificate is checked against and sent as SNI, instead of the
    /// host in `to` (an upstream reached by address). Pomerium's `tls_upstream_server_name` too.
    #[serde(default, alias = "tls_upstream_server_name")]
    pub tls_server_name: Option<String>,
    /// Proxy WebSocket upgrades (`Upgrade: websocket`) to the upstream, after the same sign-in
    /// and policy as any request; the tunnel then has no request or idle timeout of its own.
    #[serde(default)]
    pub allow_websockets: bool,
    /// Proxy SPDY/3.1 upgrades (`kubectl exec`) like WebSockets.
    #[serde(default)]
    pub allow_spdy: bool,
    /// Marks an MCP route, in the seed's or the current form.
    #[serde(default)]
    pub mcp: Option<Mcp>,
}

/// One value or a list.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// A single value.
    One(T),
    /// A list.
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    /// No value (a route without `to`: an aggregate MCP route).
    pub fn none() -> Self {
        OneOrMany::Many(Vec::new())
    }

    /// The values as a list.
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// The route's `mcp` block, normalised from any of its accepted forms:
/// `mcp: {}` and `mcp: {upstream_oauth2: ...}` (seed: server), `mcp: {pass_upstream_access_token: true}`
/// (seed: client), `mcp: {server: {...}}`, `mcp: {client: {}}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "RawMcp")]
#[allow(clippy::large_enum_variant)] // one per route, parsed once
pub enum Mcp {
    /// An MCP server route.
    Server(McpServer),
    /// An MCP client app route: its upstream gets `Authorization: Bearer <TE>`.
    Client,
}

/// Options of an MCP server route.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServer {
    /// The upstream OAuth client that obtains the user's TI; absent: none (or discovery).
    #[serde(default)]
    pub upstream_oauth2: Option<UpstreamOAuth2>,
    /// Where the MCP endpoint lives on the upstream (default `/`).
    #[serde(default)]
    pub path: Option<String>,
    /// The upstream authorization server, when discovery finds none.
    #[serde(default)]
    pub authorization_server_url: Option<String>,
    /// Largest request body accepted; larger get 413 (default 1 MiB).
    #[serde(default)]
    pub max_request_bytes: Option<u64>,
    /// `mcp.aggregate`: this route federates other MCP server routes of the configuration
    /// instead of proxying to an upstream of its own (given as `mcp: {aggregate: ...}`).
    #[serde(skip)]
    pub aggregate: Option<Aggregate>,
}

/// `mcp.aggregate`: the MCP server routes an aggregate route federates behind its one URL.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aggregate {
    /// The members: routes of this configuration, each by `id`, else by `name`.
    pub servers: Vec<AggregateMember>,
}

/// One member of an aggregate route: a route reference, or the reference with options.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum AggregateMember {
    /// `- sqlite`: the route with that id (else name), default prefix and timeout.
    Route(String),
    /// `- {route: notion, prefix: docs_, timeout: 20s}`.
    Detailed(AggregateMemberOptions),
}

/// A member with options.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateMemberOptions {
    /// The member route's `id`, else its `name`.
    pub route: String,
    /// Put before the member's tool and prompt names (and resource URIs, as `prefix+uri`);
    /// default the slug of the member's name (else id) and `_`; `""` keeps them as they are.
    #[serde(default)]
    pub prefix: Option<String>,
    /// How long each call to this member may take (default 30s).
    #[serde(default)]
    pub timeout: Option<GoDuration>,
}

impl AggregateMember {
    /// The member route's reference (`id`, else `name`).
    pub fn route(&self) -> &str {
        match self {
            AggregateMember::Route(route) => route,
            AggregateMember::Detailed(options) => &options.route,
        }
    }

    /// The prefix given, if any.
    pub fn prefix(&self) -> Option<&str> {
        match self {
            AggregateMember::Route(_) => None,
            AggregateMember::Detailed(options) => options.prefix.as_deref(),
        }
    }

    /// The per-call timeout given, if any.
    pub fn timeout(&self) -> Option<std::time::Duration> {
        match self {
            AggregateMember::Route(_) => None,
            AggregateMember::Detailed(options) => options.timeout.map(|t| t.0),
        }
    }
}

/// A member's per-call timeout when the configuration gives none.
pub const AGGREGATE_MEMBER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The default tool-name prefix of a member named `name`: lower-case letters and digits, every
/// other run of characters one `_`, then `_` (`"Notion Docs"` -> `notion_docs_`).
pub fn aggregate_prefix(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('_') && !slug.is_empty() {
            slug.push('_');
        }
    }
    let slug = slug.trim_end_matches('_');
    format!("{slug}_")
}

/// A statically configured upstream OAuth client.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamOAuth2 {
    /// Client id registered with the provider. Optional without `endpoint`: Postern then
    /// registers itself with the discovered authorization server (or uses its client ID
    /// metadata document), with these `scopes`.
    #[serde(default)]
    pub client_id: String,
    /// Client secret.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// File holding the client secret.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Scopes to request.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The provider's endpoints.
    #[serde(default)]
    pub endpoint: Option<OAuthEndpoint>,
    /// Extra authorize-URL parameters (e.g. `prompt: consent`, `owner: user`).
    #[serde(default)]
    pub authorization_url_params: BTreeMap<String, String>,
    /// The path of the redirect URI registered at the provider (on the route's host):
    /// `/.pomerium/mcp/client/oauth/callback` (default, as current Pomerium sends) or
    /// `/.pomerium/mcp/oauth/callback` (the seed's and older Pomerium documentation's). Both
    /// are served; this picks the one Postern sends, which must be the registered one.
    #[serde(default)]
    pub callback_path: Option<String>,
    /// The upstream resource (RFC 8707 `resource`) the TI is requested for. With `endpoint`:
    /// default the route's (first) `to` URL, as the MCP authorization spec asks of clients;
    /// `""` sends none (a provider that refuses the parameter). Without `endpoint` discovery
    /// sets it from the server's protected resource metadata, and the file may not.
    #[serde(default)]
    pub resource: Option<String>,
}

/// The provider's endpoints.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthEndpoint {
    /// Authorization endpoint.
    pub auth_url: url::Url,
    /// Token endpoint.
    pub token_url: url::Url,
    /// How the client authenticates at the token endpoint: `header` (HTTP Basic; Notion needs
    /// it) or `params` (form body). Default `header`, as RFC 6749 §2.3.1 recommends. Pomerium's
    /// spellings are accepted too: `OAUTH2_AUTH_STYLE_IN_HEADER`, `OAUTH2_AUTH_STYLE_IN_PARAMS`,
    /// and `OAUTH2_AUTH_STYLE_UNSPECIFIED` (the default), in any case.
    #[serde(default, deserialize_with = "auth_style")]
    pub auth_style: Option<AuthStyle>,
}

/// `auth_style` in Postern's or Pomerium's spelling.
fn auth_style<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<AuthStyle>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    match text.to_ascii_lowercase().as_str() {
        "header" | "oauth2_auth_style_in_header" => Ok(Some(AuthStyle::Header)),
        "params" | "oauth2_auth_style_in_params" => Ok(Some(AuthStyle::Params)),
        "oauth2_auth_style_unspecified" => Ok(None),
        _ => Err(serde::de::Error::custom(format!(
            "unknown auth_style `{text}`: use header (HTTP Basic) or params (form body); Pomerium's OAUTH2_AUTH_STYLE_IN_HEADER and OAUTH2_AUTH_STYLE_IN_PARAMS work too"
        ))),
    }
}

/// Token endpoint client authentication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthStyle {
    /// HTTP Basic.
    Header,
    /// `client_id` and `client_secret` in the form body.
    Params,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMcp {
    #[serde(default)]
    server: Option<McpServer>,
    #[serde(default)]
    client: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    upstream_oauth2: Option<UpstreamOAuth2>,
    #[serde(default)]
    pass_upstream_access_token: Option<bool>,
    #[serde(default)]
    aggregate: Option<Aggregate>,
}

impl TryFrom<RawMcp> for Mcp {
    type Error = String;

    fn try_from(raw: RawMcp) -> Result<Self, String> {
        let client = raw.client.is_some() || raw.pass_upstream_access_token == Some(true);
        let server = raw.server.is_some() || raw.upstream_oauth2.is_some();
        if let Some(aggregate) = raw.aggregate {
            if client || server {
                return Err("an aggregate route (`aggregate`) has no upstream of its own: remove `server`, `client`, `upstream_oauth2` and `pass_upstream_access_token` (each member keeps its own on its route)".into());
            }
            return Ok(Mcp::Server(McpServer {
                aggregate: Some(aggregate),
                ..McpServer::default()
            }));
        }
        if let Some(extra) = raw.client.as_ref().and_then(|c| c.keys().next()) {
            return Err(format!("mcp.client takes no options (found `{extra}`)"));
        }
        match (server, client) {
            (true, true) => Err(
                "an MCP route is either a server (`server`, `upstream_oauth2`) or a client app (`client`, `pass_upstream_access_token`), not both"
                    .into(),
            ),
            (false, true) => Ok(Mcp::Client),
            _ => {
                let mut server = raw.server.unwrap_or_default();
                if let Some(oauth) = raw.upstream_oauth2 {
                    if server.upstream_oauth2.is_some() {
                        return Err("upstream_oauth2 is given twice (mcp.upstream_oauth2 and mcp.server.upstream_oauth2): keep one".into());
                    }
                    server.upstream_oauth2 = Some(oauth);
                }
                Ok(Mcp::Server(server))
            }
        }
    }
}

/// `jwt_claims_headers` in either of Pomerium's forms.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum ClaimHeaders {
    /// Header name to claim.
    Map(BTreeMap<String, String>),
    /// Claims, each as `X-Pomerium-Claim-<Claim>`.
    List(Vec<String>),
}

impl ClaimHeaders {
    /// `(header, claim)` pairs.
    pub fn pairs(&self) -> Vec<(String, String)> {
        match self {
            ClaimHeaders::Map(map) => map.iter().map(|(h, c)| (h.clone(), c.clone())).collect(),
            ClaimHeaders::List(claims) => claims
                .iter()
                .map(|claim| (format!("x-pomerium-claim-{claim}"), claim.clone()))
                .collect(),
        }
    }
}

/// One of Pomerium's `authorize_log_fields`: an optional field of the audit record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthorizeLogField {
    /// `request-id`, `check-request-id`: the gateway's request id.
    RequestId,
    /// `email`: the user's email.
    Email,
    /// `user`: the user's id.
    User,
    /// `session-id`: the session.
    SessionId,
    /// `host`: the host the client asked for.
    Host,
    /// `ip`: the client's address (after `xff_num_trusted_hops`).
    Ip,
    /// `method`: the HTTP method.
    Method,
    /// `path`: the request path.
    Path,
    /// `query`: the request's query string.
    Query,
    /// `mcp-method`: the JSON-RPC method.
    McpMethod,
    /// `mcp-tool`: the tool of a `tools/call`.
    McpTool,
    /// `mcp-tool-parameters`: the arguments of a `tools/call`.
    McpToolParameters,
    /// `headers`: every request header (credentials redacted).
    Headers,
    /// `headers.<Name>`: one request header (lower-case name; credentials redacted).
    Header(String),
    /// `id-token-claims`: the user's identity provider claims.
    IdTokenClaims,
    /// `removed-groups-count`: how many of the user's groups `jwt_groups_filter` kept out of
    /// the route's assertion.
    RemovedGroupsCount,
    /// A Pomerium field Postern cannot provide: it loads with a warning that says why.
    Unavailable {
        /// Pomerium's name.
        name: String,
        /// Why Postern has no such value, and what to use instead.
        why: &'static str,
    },
}

/// Pomerium's authorize log field names (its `authorizeLogFieldLookup`), `headers.<Name>` aside.
pub const AUTHORIZE_LOG_FIELD_NAMES: [&str; 27] = [
    "body",
    "check-request-id",
    "cluster-stat-name",
    "email",
    "envoy-route-checksum",
    "envoy-route-id",
    "headers",
    "host",
    "id-token",
    "id-token-claims",
    "impersonate-email",
    "impersonate-session-id",
    "impersonate-user-id",
    "ip",
    "mcp-method",
    "mcp-tool",
    "mcp-tool-parameters",
    "method",
    "path",
    "query",
    "removed-groups-count",
    "request-id",
    "route-checksum",
    "route-id",
    "service-account-id",
    "session-id",
    "user",
];

impl<'de> Deserialize<'de> for AuthorizeLogField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::try_from(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<String> for AuthorizeLogField {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        use AuthorizeLogField::*;
        const ROUTE: &str = "the record always names its route (`route`)";
        const IMPERSONATION: &str = "Postern has no impersonation";
        let unavailable = |why: &'static str| Unavailable {
            name: name.clone(),
            why,
        };
        Ok(match name.as_str() {
            "request-id" | "check-request-id" => RequestId,
            "email" => Email,
            "user" => User,
            "session-id" => SessionId,
            "host" => Host,
            "ip" => Ip,
            "method" => Method,
            "path" => Path,
            "query" => Query,
            "mcp-method" => McpMethod,
            "mcp-tool" => McpTool,
            "mcp-tool-parameters" => McpToolParameters,
            "headers" => Headers,
            "id-token-claims" => IdTokenClaims,
            "removed-groups-count" => RemovedGroupsCount,
            "body" => unavailable(
                "Postern does not log request bodies; `mcp-tool-parameters` logs a tool call's arguments",
            ),
            "id-token" => unavailable(
                "Postern keeps no ID token after sign-in; `id-token-claims` logs the claims it keeps",
            ),
            "impersonate-email" | "impersonate-session-id" | "impersonate-user-id" => {
                unavailable(IMPERSONATION)
            }
            "service-account-id" => unavailable("Postern has no service accounts"),
            "envoy-route-checksum"
            | "envoy-route-id"
            | "route-checksum"
            | "route-id"
            | "cluster-stat-name" => unavailable(ROUTE),
            _ => match name.strip_prefix("headers.") {
                Some(header) => {
                    let token =
                        |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
                    if header.is_empty() || !header.bytes().all(token) {
                        return Err(format!(
                            "`{name}`: `{header}` is not a header name (write headers.<Name>, e.g. headers.User-Agent)"
                        ));
                    }
                    Header(header.to_ascii_lowercase())
                }
                None => {
                    let hint = crate::pomerium::closest(&name, AUTHORIZE_LOG_FIELD_NAMES)
                        .map(|known| format!(" (did you mean `{known}`?)"))
                        .unwrap_or_default();
                    return Err(format!(
                        "`{name}` is not an authorize log field{hint}; the fields are {}, and headers.<Name>",
                        AUTHORIZE_LOG_FIELD_NAMES.join(", ")
                    ));
                }
            },
        })
    }
}
