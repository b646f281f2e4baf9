//! A Pomerium MCP deployment moves to Postern without changing its configuration: for each page
//! of Pomerium's MCP documentation (pomerium/documentation `content/docs/capabilities/mcp.mdx`
//! and `mcp/*.mdx`) and for its MCP acceptance configuration (pomerium/pomerium
//! `internal/acceptance/pomerium/config-mcp.yaml`), a configuration of our own that uses every
//! key the page uses, in the page's shape, loads, and each key takes its effect on the parsed
//! `Config` (policies are compiled and evaluated as the gateway does).
//!
//! Warnings are checked both ways, like a known-failures list: a configuration may warn only
//! with the warnings listed next to it (each with the reason the key is legitimately ignored),
//! and every listed warning must still appear.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use postern_config::{
    AuthStyle, AuthorizeLogField, Config, CookieSameSite, Mcp, McpServer, Route, UpstreamOAuth2,
};
use postern_policy::{Input, McpRequest, Policy, Shorthands, User};

/// Base64 of 32 bytes, for `shared_secret` and `cookie_secret`.
const SECRET: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn load(yaml: &str) -> Config {
    postern_config::parse(yaml, Path::new("."), &HashMap::new())
        .unwrap_or_else(|e| panic!("{e}\n--- in ---\n{yaml}"))
}

fn refused(yaml: &str) -> String {
    match postern_config::parse(yaml, Path::new("."), &HashMap::new()) {
        Ok(_) => panic!("loaded, but must be refused:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

/// Every warning is one of `expected` (`(start of the warning, part of its reason)`), and every
/// expected warning is there.
fn assert_warnings(config: &Config, expected: &[(&str, &str)]) {
    for warning in &config.warnings {
        assert!(
            expected
                .iter()
                .any(|(at, why)| warning.starts_with(at) && warning.contains(why)),
            "unexpected warning (a key of Pomerium's MCP documentation must take effect): {warning}"
        );
    }
    for (at, why) in expected {
        assert!(
            config
                .warnings
                .iter()
                .any(|w| w.starts_with(at) && w.contains(why)),
            "the expected warning `{at}` ({why}) is gone: {:?}",
            config.warnings
        );
    }
}

/// The route's policy as the gateway compiles it: the document and the shorthands.
fn policy(route: &Route) -> Policy {
    let shorthands = Shorthands {
        public: route.allow_public_unauthenticated_access,
        any_authenticated_user: route.allow_any_authenticated_user,
        users: route.allowed_users.clone(),
        domains: route.allowed_domains.clone(),
        preflight: route.cors_allow_preflight,
        client_certificate_required: false,
        claims: route
            .allowed_idp_claims
            .iter()
            .map(|(k, v)| (k.clone(), v.iter().map(|v| v.to_string()).collect()))
            .collect(),
    };
    Policy::compile(route.policy.as_ref().map(|p| &p.0), &shorthands).unwrap()
}

fn person(email: &str, groups: &[&str]) -> User {
    User {
        id: format!("id-{email}"),
        email: email.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        claims: Default::default(),
    }
}

/// Whether `user` may make this MCP request (`tool`: a `tools/call` of it; `None`:
/// `tools/list`).
fn may(route: &Route, user: &User, tool: Option<&str>) -> bool {
    let mcp = McpRequest {
        method: if tool.is_some() {
            "tools/call"
        } else {
            "tools/list"
        }
        .into(),
        tool: tool.map(str::to_owned),
    };
    policy(route)
        .evaluate(&Input {
            user: Some(user),
            method: "POST",
            path: "/",
            mcp: Some(&mcp),
            ..Default::default()
        })
        .allowed
}

/// Whether `user` (`None`: nobody signed in) may `GET path`.
fn may_get(route: &Route, user: Option<&User>, path: &str) -> bool {
    policy(route)
        .evaluate(&Input {
            user,
            method: "GET",
            path,
            ..Default::default()
        })
        .allowed
}

fn server(route: &Route) -> &McpServer {
    match &route.mcp {
        Some(Mcp::Server(server)) => server,
        other => panic!(
            "{} is not an MCP server route: {other:?}",
            route.from.origin()
        ),
    }
}

fn oauth(route: &Route) -> &UpstreamOAuth2 {
    server(route)
        .upstream_oauth2
        .as_ref()
        .expect("upstream_oauth2")
}

fn to(route: &Route) -> String {
    route.to.to_vec()[0].0.to_string()
}

/// `runtime_flags: {mcp: true}`, which every page starts with: Postern's MCP support is always
/// on, and the flag loads without a word.
#[test]
fn the_mcp_runtime_flag_loads_quietly() {
    let config = load("insecure_server: true\nruntime_flags:\n  mcp: true\n");
    assert_eq!(config.runtime_flags.get("mcp"), Some(&true));
    assert_warnings(&config, &[]);
}

/// "Protect an MCP Server": a server route with a name, a domain allow rule and a deny rule on
/// a tool-name prefix.
#[test]
fn protect_an_mcp_server() {
    let config = load(
        "insecure_server: true
runtime_flags:
  mcp: true
routes:
  - from: https://tickets-mcp.corp.test
    to: http://tickets.internal:9000/mcp
    name: Ticket tracker
    mcp:
      server: {}
    policy:
      allow:
        and:
          - domain:
              is: corp.test
      deny:
        and:
          - mcp_tool:
              starts_with: 'admin_'
",
    );
    assert_warnings(&config, &[]);
    let route = &config.routes[0];
    assert_eq!(route.from.origin(), "https://tickets-mcp.corp.test");
    assert_eq!(to(route), "http://tickets.internal:9000/mcp");
    assert_eq!(route.name.as_deref(), Some("Ticket tracker"));
    assert!(server(route).upstream_oauth2.is_none());
    let staff = person("kim@corp.test", &[]);
    assert!(may(route, &staff, None), "tools/list passes the deny rule");
    assert!(may(route, &staff, Some("search_tickets")));
    assert!(!may(route, &staff, Some("admin_purge")));
    assert!(!may(route, &person("eve@elsewhere.test", &[]), None));
}

/// "MCP + Upstream OAuth", its three forms: static credentials and endpoints (with the
/// commented `authorization_url_params`), pre-registered credentials found by discovery (with
/// `path` and `mcp_allowed_as_metadata_domains`), and discovery alone (with
/// `authorization_server_url` and both domain allowlists).
#[test]
fn mcp_with_upstream_oauth() {
    let config = load(
        "insecure_server: true
runtime_flags:
  mcp: true
mcp_allowed_client_id_domains:
  - 'editor.example'
  - '*.trusted-apps.test'
mcp_allowed_as_metadata_domains:
  - 'login.provider.test'
  - '*.idp.test'
routes:
  - from: https://code-mcp.corp.test
    to: http://code-mcp.internal:9000/mcp
    name: Code host
    mcp:
      server:
        upstream_oauth2:
          client_id: code-client
          client_secret: code-secret
          scopes: ['read:user', 'user:email']
          endpoint:
            auth_url: 'https://code.example/login/oauth/authorize'
            token_url: 'https://code.example/login/oauth/access_token'
          authorization_url_params:
            access_type: 'offline'
            prompt: 'consent'
    policy:
      allow:
        and:
          - domain:
              is: corp.test
      deny:
        and:
          - mcp_tool:
              starts_with: 'admin_'
  - from: https://docs-db.corp.test
    to: https://docs-db.provider.test/
    name: Document database
    mcp:
      server:
        path: /mcp
        upstream_oauth2:
          client_id: docs-client
          client_secret: docs-secret
          scopes: [\"https://provider.test/auth/datastore\"]
          authorization_url_params:
            access_type: \"offline\"
            prompt: \"consent\"
    policy:
      allow:
        and:
          - domain:
              is: corp.test
  - from: https://wiki.corp.test
    to: https://mcp.wiki.test
    name: Wiki
    mcp:
      server:
        path: /mcp
        authorization_server_url: https://login.wiki.test
    policy:
      allow:
        and:
          - domain:
              is: corp.test
",
    );
    assert_warnings(&config, &[]);
    assert_eq!(
        config.mcp_allowed_client_id_domains,
        ["editor.example", "*.trusted-apps.test"]
    );
    assert_eq!(
        config.mcp_allowed_as_metadata_domains,
        ["login.provider.test", "*.idp.test"]
    );

    let fixed = &config.routes[0];
    let oauth2 = oauth(fixed);
    assert_eq!(oauth2.client_id, "code-client");
    assert_eq!(
        oauth2.client_secret.as_ref().unwrap().expose(),
        "code-secret"
    );
    assert_eq!(oauth2.scopes, ["read:user", "user:email"]);
    let endpoint = oauth2.endpoint.as_ref().unwrap();
    assert_eq!(
        endpoint.auth_url.as_str(),
        "https://code.example/login/oauth/authorize"
    );
    assert_eq!(
        endpoint.token_url.as_str(),
        "https://code.example/login/oauth/access_token"
    );
    assert_eq!(
        oauth2.authorization_url_params["access_type"], "offline",
        "{oauth2:?}"
    );
    assert_eq!(oauth2.authorization_url_params["prompt"], "consent");
    // The redirect URI the page tells users to register at the provider.
    assert_eq!(
        oauth2.callback_path(),
        "/.pomerium/mcp/client/oauth/callback"
    );
    assert!(!may(fixed, &person("kim@corp.test", &[]), Some("admin_x")));

    let registered = &config.routes[1];
    assert_eq!(server(registered).path.as_deref(), Some("/mcp"));
    let oauth2 = oauth(registered);
    assert_eq!(oauth2.client_id, "docs-client");
    assert!(oauth2.endpoint.is_none(), "endpoints come from discovery");
    assert_eq!(oauth2.scopes, ["https://provider.test/auth/datastore"]);
    assert_eq!(oauth2.authorization_url_params.len(), 2);

    let discovered = &config.routes[2];
    let wiki = server(discovered);
    assert!(wiki.upstream_oauth2.is_none(), "no block: discovery");
    assert_eq!(wiki.path.as_deref(), Some("/mcp"));
    assert_eq!(
        wiki.authorization_server_url.as_deref(),
        Some("https://login.wiki.test")
    );
    assert!(may(discovered, &person("kim@corp.test", &[]), None));
}

/// "Limit MCP Tool Calling" (and the reference's policy section): every operator of the
/// `mcp_tool` string matcher, `groups: has`, `deny` with `and` and with `or`, the `email`
/// allow rule with an `mcp_tool` in `allow`, and the audit fields the page turns on.
#[test]
fn limit_mcp_tool_calling() {
    let config = load(
        "insecure_server: true
authorize_log_fields:
  - request-id
  - email
  - mcp-method
  - mcp-tool
routes:
  - from: https://db.corp.test
    to: http://db.internal:9000/mcp
    mcp:
      server: {}
    policy:
      allow:
        and:
          - domain:
              is: corp.test
      deny:
        and:
          - mcp_tool:
              is: drop_table
  - from: https://db.corp.test
    prefix: /analysts
    to: http://db.internal:9000/mcp
    mcp:
      server: {}
    policy:
      allow:
        and:
          - groups:
              has: analysts
      deny:
        and:
          - mcp_tool:
              starts_with: 'admin_'
  - from: https://db.corp.test
    prefix: /allowlist
    to: http://db.internal:9000/mcp
    mcp:
      server: {}
    policy:
      allow:
        and:
          - domain:
              is: corp.test
      deny:
        and:
          - mcp_tool:
              not_in: ['query', 'list_tables']
  - from: https://db.corp.test
    prefix: /combined
    to: http://db.internal:9000/mcp
    mcp:
      server: {}
    policy:
      allow:
        and:
          - domain:
              is: corp.test
          - groups:
              has: 'data-analysts'
      deny:
        or:
          - mcp_tool:
              in: ['update_data', 'drop_table', 'delete_records']
          - mcp_tool:
              starts_with: 'admin_'
          - mcp_tool:
              ends_with: '_unsafe'
          - mcp_tool:
              contains: 'shell'
  - from: https://db.corp.test
    prefix: /one-analyst
    to: http://db.internal:9000/mcp
    mcp:
      server: {}
    policy:
      allow:
        and:
          - email:
              is: analyst@corp.test
          - mcp_tool:
              is: database_query
",
    );
    assert_warnings(&config, &[]);
    assert_eq!(
        config.authorize_log_fields.as_deref(),
        Some(
            &[
                AuthorizeLogField::RequestId,
                AuthorizeLogField::Email,
                AuthorizeLogField::McpMethod,
                AuthorizeLogField::McpTool,
            ][..]
        )
    );
    let staff = person("kim@corp.test", &[]);
    let analyst = person("lee@corp.test", &["analysts", "data-analysts"]);
    let [single, prefix, allowlist, combined, one] = &config.routes[..] else {
        panic!("five routes");
    };
    assert!(may(single, &staff, Some("query")) && !may(single, &staff, Some("drop_table")));

    assert!(!may(prefix, &staff, None), "groups has: analysts");
    assert!(may(prefix, &analyst, Some("query")));
    assert!(!may(prefix, &analyst, Some("admin_reset")));

    assert!(
        may(allowlist, &staff, None),
        "not_in leaves tools/list alone"
    );
    assert!(may(allowlist, &staff, Some("list_tables")));
    assert!(!may(allowlist, &staff, Some("drop_table")));

    assert!(!may(combined, &staff, Some("query")), "not a data analyst");
    assert!(may(combined, &analyst, Some("query")));
    for tool in [
        "update_data",
        "delete_records",
        "admin_reset",
        "copy_unsafe",
        "run_shell_command",
    ] {
        assert!(!may(combined, &analyst, Some(tool)), "{tool}");
    }

    // The page's gotcha, as in Pomerium: `mcp_tool` under `allow` refuses everything that is
    // not that tool call, tools/list included.
    let the_analyst = person("analyst@corp.test", &[]);
    assert!(may(one, &the_analyst, Some("database_query")));
    assert!(!may(one, &the_analyst, Some("other_tool")));
    assert!(!may(one, &the_analyst, None));
    assert!(!may(one, &staff, Some("database_query")));
}

/// "MCP Full Reference": the client-ID domain allowlist, the whole `mcp.server` block
/// (`auth_style` in both spellings, `max_request_bytes`), the `mcp.client` route, the access
/// control example and the observability fields.
#[test]
fn the_full_reference() {
    let config = load(
        "insecure_server: true
runtime_flags:
  mcp: true
mcp_allowed_client_id_domains:
  - 'apps.example'
  - '*.partner.test'
authorize_log_fields:
  - request-id
  - user
  - email
  - mcp-method
  - mcp-tool
  - mcp-tool-parameters
routes:
  - from: https://crm-mcp.corp.test
    to: http://crm.internal:9000/mcp
    mcp:
      server:
        upstream_oauth2:
          client_id: 'crm-client'
          client_secret: 'crm-secret'
          endpoint:
            auth_url: 'https://crm.example/oauth/authorize'
            token_url: 'https://crm.example/oauth/token'
            auth_style: 'header'
          scopes: ['contacts.read', 'deals.read']
        max_request_bytes: 1048576
  - from: https://billing-mcp.corp.test
    to: http://billing.internal:9000/mcp
    mcp:
      server:
        upstream_oauth2:
          client_id: 'billing-client'
          client_secret: 'billing-secret'
          endpoint:
            auth_url: 'https://billing.example/oauth/authorize'
            token_url: 'https://billing.example/oauth/token'
            auth_style: 'params'
    policy:
      allow:
        and:
          - domain:
              is: trusted.corp.test
  - from: https://assistant.corp.test
    to: http://assistant.internal:3000
    mcp:
      # the application gets the user's TE
      client: {}
    policy:
      allow:
        and:
          - domain:
              is: corp.test
",
    );
    assert_warnings(&config, &[]);
    assert_eq!(
        config.mcp_allowed_client_id_domains,
        ["apps.example", "*.partner.test"]
    );
    use AuthorizeLogField::*;
    assert_eq!(
        config.authorize_log_fields.as_deref(),
        Some(
            &[
                RequestId,
                User,
                Email,
                McpMethod,
                McpTool,
                McpToolParameters
            ][..]
        )
    );
    let [crm, billing, app] = &config.routes[..] else {
        panic!("three routes");
    };
    let crm_oauth = oauth(crm);
    assert_eq!(crm_oauth.scopes, ["contacts.read", "deals.read"]);
    assert_eq!(
        crm_oauth.endpoint.as_ref().unwrap().auth_style(),
        AuthStyle::Header
    );
    assert_eq!(
        oauth(billing).endpoint.as_ref().unwrap().auth_style(),
        AuthStyle::Params
    );
    assert_eq!(crm.max_request_bytes_in_effect(), 1_048_576);
    // With endpoints given, the TI is requested for the MCP server (RFC 8707 `resource`).
    assert_eq!(
        crm_oauth.resource.as_deref(),
        Some("http://crm.internal:9000/mcp")
    );
    assert!(may(billing, &person("a@trusted.corp.test", &[]), None));
    assert!(!may(billing, &person("a@corp.test", &[]), None));
    assert!(matches!(app.mcp, Some(Mcp::Client)));
    assert!(may_get(app, Some(&person("a@corp.test", &[])), "/"));
}

/// "Delegate MCP Access to an LLM" (and its earlier name, "Build an MCP Chat App"): a client
/// route with `policy: {}`, a plain server and a server with upstream OAuth.
#[test]
fn delegate_mcp_access_to_an_llm() {
    let config = load(
        "insecure_server: true
runtime_flags:
  mcp: true
authorize_log_fields:
  - request-id
  - email
  - mcp-method
  - mcp-tool
  - mcp-tool-parameters
routes:
  - from: https://chat.corp.test
    to: http://chat.internal:3000
    mcp:
      client: {}
    policy: {}
  - from: https://warehouse-mcp.corp.test
    to: http://warehouse.internal:8080/mcp
    name: Warehouse
    mcp:
      server: {}
    policy:
      allow:
        and:
          - domain:
              is: corp.test
  - from: https://code-mcp.corp.test
    to: http://code.internal:8080/mcp
    name: Code host
    mcp:
      server:
        upstream_oauth2:
          client_id: code-client
          client_secret: code-secret
          scopes: ['read:user', 'repo']
          endpoint:
            auth_url: 'https://code.example/login/oauth/authorize'
            token_url: 'https://code.example/login/oauth/access_token'
    policy:
      allow:
        and:
          - domain:
              is: corp.test
",
    );
    assert_warnings(&config, &[]);
    let [chat, warehouse, code] = &config.routes[..] else {
        panic!("three routes");
    };
    assert!(matches!(chat.mcp, Some(Mcp::Client)));
    // `policy: {}` has no allow rule: as in Pomerium, which denies by default, nobody gets
    // through until the route says who may.
    assert!(!may_get(chat, Some(&person("a@corp.test", &[])), "/"));
    assert_eq!(warehouse.name.as_deref(), Some("Warehouse"));
    assert!(server(warehouse).upstream_oauth2.is_none());
    assert_eq!(oauth(code).scopes, ["read:user", "repo"]);
    assert_eq!(config.authorize_log_fields.as_ref().unwrap().len(), 5);
}

/// "Develop an MCP App" (production): the gated server route and the public widget route.
/// "Develop an MCP UI App" has the server route alone; "Tunnel to ChatGPT" has no
/// configuration.
#[test]
fn develop_an_mcp_app() {
    let config = load(
        "insecure_server: true
runtime_flags:
  mcp: true
routes:
  - from: https://notes-app.corp.test
    to: http://notes-app:8080/mcp
    name: Notes app (server)
    mcp:
      server: {}
    policy:
      allow:
        and:
          - domain:
              is: corp.test
  - from: https://notes-app-ui.corp.test
    to: http://notes-app-widgets:4444
    name: Notes app (widgets)
    allow_public_unauthenticated_access: true
",
    );
    assert_warnings(&config, &[]);
    let [app, widgets] = &config.routes[..] else {
        panic!("two routes");
    };
    assert!(!may(app, &person("eve@elsewhere.test", &[]), None));
    assert!(may(app, &person("kim@corp.test", &[]), Some("echo")));
    assert!(widgets.mcp.is_none());
    assert!(may_get(widgets, None, "/assets/widget.js"), "no sign-in");
}

/// The landing page's route examples write the rule without `allow`. Pomerium's own parser
/// refuses that form too (an action must be `allow` or `deny`); Postern says what to write.
#[test]
fn a_rule_without_its_action_says_to_put_it_under_allow() {
    let error = refused(
        "insecure_server: true
routes:
  - from: https://reader.corp.test
    to: http://reader.internal:8080/mcp
    mcp:
      server: {}
    policy:
      and:
        - domain:
            is: corp.test
        - mcp_tool:
            starts_with: 'read_'
",
    );
    assert!(
        error.contains("routes[0].policy") && error.contains("allow:"),
        "{error}"
    );
    // The form the other pages use loads.
    let config = load(
        "insecure_server: true
routes:
  - from: https://reader.corp.test
    to: http://reader.internal:8080/mcp
    mcp:
      server: {}
    policy:
      allow:
        and:
          - domain:
              is: corp.test
          - mcp_tool:
              starts_with: 'read_'
  - from: https://app.corp.test
    to: http://app.internal:3000
    mcp:
      client: {}
    policy: {}
",
    );
    let reader = &config.routes[0];
    assert!(may(reader, &person("a@corp.test", &[]), Some("read_file")));
    assert!(!may(
        reader,
        &person("a@corp.test", &[]),
        Some("write_file")
    ));
}

/// The keys of Pomerium's MCP acceptance configuration, in a configuration of our own.
fn acceptance(ca_file_route: &str) -> String {
    format!(
        "address: :8443
authenticate_service_url: https://login.localtest.test:8443
idp_provider: oidc
idp_provider_url: http://idp.localtest.test:8080/realms/acceptance
idp_client_id: gateway
idp_client_secret: gateway-idp-secret
idp_scopes:
  - openid
  - profile
  - email
  - groups
  - offline_access
certificate_file: /certs/gateway.crt
certificate_key_file: /certs/gateway.key
cookie_secret: {SECRET}
shared_secret: {SECRET}
log_level: debug
jwt_claims_headers:
  X-Pomerium-Claim-Groups: groups
  X-Pomerium-Claim-Email: email
  X-Pomerium-Claim-Department: department
cookie_expire: 14h
cookie_http_only: true
cookie_same_site: lax
programmatic_redirect_domain_whitelist:
  - localtest.test
runtime_flags:
  mcp: true
mcp_allowed_client_id_domains:
  - \"*.localtest.test\"
routes:
  - from: https://web.localtest.test:8443
    to: http://echo:8080
    prefix: /ws
    allow_websockets: true
    timeout: 0s
    pass_identity_headers: true
    policy:
      - allow:
          or:
            - authenticated_user: true
  - from: https://web.localtest.test:8443
    to: http://echo:8080
    prefix: /ws-keep-host
    allow_websockets: true
    preserve_host_header: true
    timeout: 0s
    pass_identity_headers: true
    policy:
      - allow:
          or:
            - authenticated_user: true
  - from: https://web.localtest.test:8443
    to: http://echo:8080
    prefix: /preflight
    cors_allow_preflight: true
    pass_identity_headers: true
    policy:
      - allow:
          or:
            - authenticated_user: true
  - from: https://web.localtest.test:8443
    to: http://echo:8080
    prefix: /open
    cors_allow_preflight: true
    allow_public_unauthenticated_access: true
    pass_identity_headers: true
{ca_file_route}  - from: https://web.localtest.test:8443
    to: http://upstream:8000
    prefix: /by-domain
    pass_identity_headers: true
    policy:
      - allow:
          or:
            - domain:
                is: corp.test
  - from: https://web.localtest.test:8443
    to: http://upstream:8000
    prefix: /by-group-and-claim
    pass_identity_headers: true
    policy:
      - allow:
          and:
            - claim/groups: admins
            - claim/department: engineering
  - from: https://web.localtest.test:8443
    to: http://upstream:8000
    prefix: /not-bob
    pass_identity_headers: true
    policy:
      - deny:
          or:
            - email:
                is: bob@corp.test
      - allow:
          or:
            - authenticated_user: true
  - from: https://web.localtest.test:8443
    to: http://upstream:8000
    prefix: /assertion
    pass_identity_headers: true
    set_request_headers:
      x-pomerium-jwt-assertion: ${{pomerium.jwt}}
    policy:
      - allow:
          or:
            - authenticated_user: true
  - from: https://mcp.localtest.test:8443
    to: http://mcp-server:3000
    mcp:
      server: {{}}
    allow_websockets: true
    timeout: 0s
    allowed_domains:
      - corp.test
      - example.com
"
    )
}

/// Pomerium's MCP acceptance configuration's keys: all load and take effect, except the one
/// Postern refuses on purpose (a per-route client CA: ignoring it would let clients without
/// that certificate through) and says what to write instead.
#[test]
fn the_mcp_acceptance_configuration() {
    let per_route_ca = "  - from: https://mtls.localtest.test:8443
    to: http://upstream:8000
    tls_downstream_client_ca_file: /certs/mtls/ca-chain.crt
    pass_identity_headers: true
    allow_public_unauthenticated_access: true
";
    let error = refused(&acceptance(per_route_ca));
    assert!(
        error.contains("routes[4].tls_downstream_client_ca_file")
            && error.contains("downstream_mtls.ca_file"),
        "{error}"
    );

    let config = load(&acceptance(""));
    assert_warnings(
        &config,
        &[
            (
                "programmatic_redirect_domain_whitelist: Pomerium key",
                "returns only to this host or an MCP client app's own host",
            ),
            (
                "routes[8].allow_websockets: has no effect",
                "Streamable HTTP",
            ),
        ],
    );
    assert_eq!(config.listen_address(), ":8443");
    let login = config
        .authenticate_service()
        .expect("authenticate_service_url");
    assert_eq!(login.origin, "https://login.localtest.test:8443");
    assert_eq!(config.idp_provider.as_deref(), Some("oidc"));
    assert_eq!(
        config.oidc_issuer().as_deref(),
        Some("http://idp.localtest.test:8080/realms/acceptance")
    );
    assert_eq!(config.idp_client_id.as_deref(), Some("gateway"));
    assert_eq!(
        config.idp_client_secret.as_ref().unwrap().expose(),
        "gateway-idp-secret"
    );
    assert_eq!(
        config.idp_scopes(),
        ["openid", "profile", "email", "groups", "offline_access"]
    );
    assert_eq!(
        config.certificate_file.as_deref(),
        Some(Path::new("/certs/gateway.crt"))
    );
    assert_eq!(
        config.certificate_key_file.as_deref(),
        Some(Path::new("/certs/gateway.key"))
    );
    assert!(config.cookie_secret.is_some() && config.shared_secret.is_some());
    assert_eq!(config.log_level(), "debug");
    let mut headers = config.jwt_claims_headers.as_ref().unwrap().pairs();
    headers.sort();
    assert_eq!(
        headers,
        [
            ("X-Pomerium-Claim-Department".into(), "department".into()),
            ("X-Pomerium-Claim-Email".into(), "email".into()),
            ("X-Pomerium-Claim-Groups".into(), "groups".into()),
        ]
    );
    assert_eq!(config.cookie_expire(), Duration::from_secs(14 * 3600));
    assert_eq!(config.cookie_http_only, Some(true));
    assert_eq!(config.cookie_same_site, Some(CookieSameSite::Lax));
    assert_eq!(config.runtime_flags.get("mcp"), Some(&true));
    assert_eq!(config.mcp_allowed_client_id_domains, ["*.localtest.test"]);

    let routes = &config.routes;
    assert_eq!(routes.len(), 9);
    let [
        ws,
        keep_host,
        preflight,
        open,
        by_domain,
        by_claims,
        not_bob,
        assertion,
        mcp,
    ] = &routes[..]
    else {
        unreachable!()
    };
    let anyone = person("kim@corp.test", &[]);
    assert_eq!(ws.prefix.as_deref(), Some("/ws"));
    assert!(ws.allow_websockets);
    // `timeout: 0s` is Pomerium's "no time limit" for the long-lived streams.
    assert_eq!(ws.timeout_in_effect(&config), Duration::ZERO);
    assert!(
        routes
            .iter()
            .all(|r| r.pass_identity_headers_in_effect(&config) == (r.mcp.is_none()))
    );
    assert!(may_get(ws, Some(&anyone), "/ws") && !may_get(ws, None, "/ws"));
    assert!(keep_host.preserve_host_header);

    let preflight_request = |route: &Route| {
        policy(route)
            .evaluate(&Input {
                method: "OPTIONS",
                path: "/preflight",
                preflight: true,
                ..Default::default()
            })
            .allowed
    };
    assert!(preflight.cors_allow_preflight && preflight_request(preflight));
    assert!(!preflight_request(by_domain), "no cors_allow_preflight");
    assert!(may_get(open, None, "/open"));

    assert!(may_get(by_domain, Some(&anyone), "/"));
    assert!(!may_get(by_domain, Some(&person("a@other.test", &[])), "/"));

    let with_claims = |groups: &[&str], department: &str| {
        let mut user = person("kim@corp.test", groups);
        user.claims
            .insert("groups".into(), serde_json::json!(groups));
        user.claims
            .insert("department".into(), serde_json::json!(department));
        user
    };
    assert!(may_get(
        by_claims,
        Some(&with_claims(&["admins"], "engineering")),
        "/"
    ));
    assert!(!may_get(
        by_claims,
        Some(&with_claims(&["admins"], "sales")),
        "/"
    ));
    assert!(!may_get(
        by_claims,
        Some(&with_claims(&["staff"], "engineering")),
        "/"
    ));

    assert!(!may_get(not_bob, Some(&person("bob@corp.test", &[])), "/"));
    assert!(may_get(not_bob, Some(&anyone), "/"));

    assert!(assertion.pass_identity_headers_in_effect(&config));
    assert!(
        assertion.set_request_headers.is_empty(),
        "the placeholder is never sent as text: {:?}",
        assertion.set_request_headers
    );

    assert!(server(mcp).upstream_oauth2.is_none());
    assert_eq!(mcp.allowed_domains, ["corp.test", "example.com"]);
    assert!(may(mcp, &anyone, Some("echo")));
    assert!(!may(mcp, &person("a@other.test", &[]), None));
    assert_eq!(mcp.timeout_in_effect(&config), Duration::ZERO);
}

/// `X-Pomerium-Jwt-Assertion: ${pomerium.jwt}` (the acceptance configuration's way of passing
/// the identity) is `pass_identity_headers: true` on its route; every other substitution is
/// still refused, since the upstream would get the placeholder's text.
#[test]
fn the_assertion_placeholder_passes_the_identity_and_nothing_else_does() {
    let route = |extra: &str| {
        format!(
            "insecure_server: true\nroutes:\n  - from: https://app.corp.test\n    to: http://app.internal:3000\n    allow_any_authenticated_user: true\n{extra}"
        )
    };
    let config = load(&route(
        "    set_request_headers:\n      X-Pomerium-JWT-Assertion: ${pomerium.jwt}\n      X-Team: platform\n",
    ));
    let app = &config.routes[0];
    assert!(!config.pass_identity_headers(), "off globally");
    assert!(app.pass_identity_headers_in_effect(&config));
    assert_eq!(
        app.set_request_headers.keys().collect::<Vec<_>>(),
        ["X-Team"]
    );
    for (extra, needle) in [
        (
            "    set_request_headers:\n      X-Identity: ${pomerium.jwt}\n",
            "not supported",
        ),
        (
            "    set_request_headers:\n      X-Pomerium-Jwt-Assertion: ${pomerium.access_token}\n",
            "set by the gateway",
        ),
        (
            "    pass_identity_headers: false\n    set_request_headers:\n      X-Pomerium-Jwt-Assertion: ${pomerium.jwt}\n",
            "pass_identity_headers: false",
        ),
    ] {
        let error = refused(&route(extra));
        assert!(error.contains(needle), "{extra}: {error}");
    }
}

/// The MCP landing page: its client-and-server pair with `policy: {}` on both, and its
/// allow-list example, every criterion under `allow` (`email: ends_with`, `mcp_tool: in`,
/// `groups: has`). Its route examples with a bare `and` are refused (see above).
#[test]
fn the_landing_page() {
    let config = load(
        "insecure_server: true
runtime_flags:
  mcp: true
routes:
  - from: https://assistant-demo.corp.test
    to: http://assistant-demo:3000
    mcp:
      client: {}
    policy: {}
  - from: https://tools-mcp.corp.test
    to: http://tools.internal:8080/mcp
    name: Team tools
    mcp:
      server: {}
    policy: {}
  - from: https://warehouse-mcp.corp.test
    to: http://warehouse.internal:8080/mcp
    mcp:
      server: {}
    policy:
      allow:
        and:
          - email:
              ends_with: '@corp.test'
          - mcp_tool:
              in: ['database_query', 'list_tables', 'describe_table']
          - groups:
              has: 'data-analysts'
",
    );
    assert_warnings(&config, &[]);
    let [app, tools, warehouse] = &config.routes[..] else {
        panic!("three routes");
    };
    assert!(matches!(app.mcp, Some(Mcp::Client)));
    assert_eq!(tools.name.as_deref(), Some("Team tools"));
    let kim = person("kim@corp.test", &["data-analysts"]);
    assert!(!may(tools, &kim, None), "policy: {{}} allows nobody");
    assert!(may(warehouse, &kim, Some("list_tables")));
    assert!(!may(warehouse, &kim, Some("drop_table")));
    assert!(!may(
        warehouse,
        &person("kim@corp.test.evil", &["data-analysts"]),
        Some("list_tables")
    ));
    assert!(!may(
        warehouse,
        &person("lee@corp.test", &[]),
        Some("list_tables")
    ));
}
