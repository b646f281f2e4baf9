use std::collections::HashMap;
use std::path::Path;

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn parse_ok(yaml: &str) -> Config {
    parse(yaml, Path::new("."), &env(&[])).unwrap_or_else(|e| panic!("{e}"))
}

fn parse_err(yaml: &str) -> ConfigError {
    parse(yaml, Path::new("."), &env(&[])).expect_err("must be refused")
}

const SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==";

#[test]
fn the_seed_mcp_forms_normalise() {
    let config = parse_ok(
        "insecure_server: true
routes:
  - from: https://my-mcp-server.your-domain.com
    to: http://my-mcp-server.int:8080/mcp
    name: My MCP Server
    mcp: {}
  - from: https://github.your-domain
    to: http://github-mcp.int:8080/mcp
    name: GitHub
    mcp:
      upstream_oauth2:
        client_id: xxxxxxxxxxxx
        client_secret: yyyyyyyyy
        scopes: ['read:user', 'user:email']
        endpoint:
          auth_url: 'https://github.com/login/oauth/authorize'
          token_url: 'https://github.com/login/oauth/access_token'
  - from: https://mcp-app-demo.your-domain.com
    to: http://mcp-app-demo:3000
    mcp:
      pass_upstream_access_token: true
    policy: {}
  - from: https://notion.example.com
    to: [http://a:8080/notion, http://b:8080/notion]
    mcp:
      server:
        path: /notion
        max_request_bytes: 65536
        upstream_oauth2:
          client_id: n
          client_secret: s
          endpoint: {auth_url: 'https://api.notion.com/v1/oauth/authorize', token_url: 'https://api.notion.com/v1/oauth/token', auth_style: header}
          authorization_url_params: {owner: user}
  - from: https://chat.example.com
    to: http://chat:3000
    mcp: {client: {}}
",
    );
    assert!(matches!(&config.routes[0].mcp, Some(Mcp::Server(s)) if s.upstream_oauth2.is_none()));
    let Some(Mcp::Server(github)) = &config.routes[1].mcp else {
        panic!()
    };
    let oauth = github.upstream_oauth2.as_ref().unwrap();
    assert_eq!(oauth.scopes, ["read:user", "user:email"]);
    assert_eq!(oauth.client_secret.as_ref().unwrap().expose(), "yyyyyyyyy");
    assert!(matches!(config.routes[2].mcp, Some(Mcp::Client)));
    assert_eq!(config.routes[3].to.to_vec().len(), 2);
    let Some(Mcp::Server(notion)) = &config.routes[3].mcp else {
        panic!()
    };
    assert_eq!(
        notion
            .upstream_oauth2
            .as_ref()
            .unwrap()
            .endpoint
            .as_ref()
            .unwrap()
            .auth_style,
        Some(AuthStyle::Header)
    );
    assert!(matches!(config.routes[4].mcp, Some(Mcp::Client)));
    assert_eq!(
        config.routes[0].from.origin(),
        "https://my-mcp-server.your-domain.com"
    );
}

#[test]
fn a_missing_key_is_named_with_its_full_path_and_line() {
    let err = parse_err(
        "insecure_server: true
routes:
  - from: https://a.example.com
    to: http://a:8080
  - from: https://b.example.com
    to: http://b:8080
    mcp:
      server:
        upstream_oauth2:
          client_id: x
          endpoint:
            auth_url: https://auth.example.com/authorize
",
    );
    assert_eq!(
        err.path,
        "routes[1].mcp.server.upstream_oauth2.endpoint.token_url"
    );
    assert_eq!(err.message, "required");
    assert!(err.line.is_some_and(|l| (11..=13).contains(&l)), "{err:?}");
    assert!(
        err.to_string().starts_with(
            "routes[1].mcp.server.upstream_oauth2.endpoint.token_url: required (line "
        ),
        "{err}"
    );
}

#[test]
fn unknown_keys_are_refused_with_path_and_line() {
    let err = parse_err(
        "insecure_server: true\nroutes:\n  - from: https://a.example.com\n    to: http://a:8080\n    prefixx: /x\n",
    );
    assert_eq!(err.path, "routes[0].prefixx");
    assert!(err.message.contains("unknown field `prefixx`"), "{err}");
    assert_eq!(err.line, Some(5));
    let err = parse_err("insecure_server: true\nadress: ':80'\n");
    assert_eq!(err.path, "adress");
}

#[test]
fn bad_values_say_what_is_expected() {
    let err = parse_err(
        "insecure_server: true\nroutes:\n  - from: https://a.example.com/path\n    to: http://a\n",
    );
    assert_eq!(err.path, "routes[0].from");
    assert!(err.message.contains("prefix"), "{err}");
    let err = parse_err(
        "insecure_server: true\nroutes:\n  - from: https://a.example.com\n    to: http://a\n    timeout: soon\n",
    );
    assert_eq!(err.path, "routes[0].timeout");
    assert!(err.message.contains("30s"), "{err}");
    let err = parse_err(
        "insecure_server: true\nroutes:\n  - from: https://a.example.com\n    to: ftp://a\n",
    );
    assert_eq!(err.path, "routes[0].to");
    let err = parse_err(
        "insecure_server: true\nroutes:\n  - from: https://a.example.com\n    to: http://a\n    mcp: {server: {}, client: {}}\n",
    );
    assert!(err.message.contains("not both"), "{err}");
    let err = parse_err(
        "insecure_server: true\nroutes:\n  - from: https://a.example.com\n    to: http://a\n    mcp: {server: {upstream_oauth2: {client_id: x, endpoint: {auth_url: 'https://a', token_url: 'https://b', auth_style: basic}}}}\n",
    );
    assert!(err.path.ends_with("auth_style"), "{err}");
    let err = parse_err(
        "insecure_server: true\nroutes:\n  - from: https://a.example.com\n    to: http://a\n    policy:\n      deny:\n        or:\n          - mcp_tool: {begins_with: admin}\n",
    );
    assert_eq!(err.path, "routes[0].policy");
    assert!(
        err.message
            .starts_with("deny.or[0].mcp_tool.begins_with: unknown operator"),
        "{err}"
    );
    assert!(err.line.is_some(), "{err:?}");
    let err = parse_err("routes: []\n");
    assert!(err.message.contains("insecure_server"), "{err}");
    let err = parse_err("insecure_server: true\ndatabroker_storage_type: postgres\n");
    assert_eq!(err.path, "databroker_storage_connection_string");
    for ttl in ["30s", "25h"] {
        let err = parse_err(&format!(
            "insecure_server: true\nmcp_access_token_ttl: {ttl}\n"
        ));
        assert_eq!(err.path, "mcp_access_token_ttl");
        assert!(err.message.contains("1m to 24h"), "{err}");
    }
    let config = parse_ok("insecure_server: true\nmcp_access_token_ttl: 15m\n");
    assert_eq!(
        config.mcp_access_token_ttl.map(|d| d.0),
        Some(std::time::Duration::from_secs(900))
    );
}

#[test]
fn secrets_come_inline_from_env_or_files_and_never_print() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notion-secret"), "from-file\n").unwrap();
    let yaml = String::from(
        "insecure_server: true
shared_secret: ${POSTERN_SECRET}
routes:
  - from: https://n.example.com
    to: http://n:8080
    mcp:
      upstream_oauth2:
        client_id: n
        client_secret_file: notion-secret
        endpoint: {auth_url: 'https://a.example.com', token_url: 'https://t.example.com'}
",
    );
    let config = parse(
        &yaml,
        dir.path(),
        &env(&[("POSTERN_SECRET", SECRET), ("IDP_CLIENT_SECRET", "idp-env")]),
    )
    .unwrap();
    assert_eq!(config.shared_secret.as_ref().unwrap().expose(), SECRET);
    assert_eq!(
        config.idp_client_secret.as_ref().unwrap().expose(),
        "idp-env",
        "upper-case env fallback"
    );
    let Some(Mcp::Server(s)) = &config.routes[0].mcp else {
        panic!()
    };
    assert_eq!(
        s.upstream_oauth2
            .as_ref()
            .unwrap()
            .client_secret
            .as_ref()
            .unwrap()
            .expose(),
        "from-file"
    );
    let printed = format!("{config:?}");
    assert!(
        !printed.contains(SECRET) && !printed.contains("from-file") && !printed.contains("idp-env"),
        "{printed}"
    );

    let err = parse(&yaml, dir.path(), &env(&[])).unwrap_err();
    assert!(
        err.to_string().contains("POSTERN_SECRET, which is not set"),
        "{err}"
    );
    let err = parse(
        "insecure_server: true\nshared_secret: short\n",
        dir.path(),
        &env(&[]),
    )
    .unwrap_err();
    assert!(err.message.contains("32 random bytes"), "{err}");
    let err = parse(
        "insecure_server: true\nshared_secret_file: nope\n",
        dir.path(),
        &env(&[]),
    )
    .unwrap_err();
    assert_eq!(err.path, "shared_secret_file");
}

#[test]
fn auth_style_takes_postern_and_pomerium_spellings() {
    let with = |style: &str| {
        format!(
            "insecure_server: true
routes:
  - from: https://gh.example.com
    to: http://gh:8080/mcp
    mcp:
      upstream_oauth2:
        client_id: c
        endpoint: {{auth_url: 'https://gh.test/a', token_url: 'https://gh.test/t', auth_style: {style}}}
"
        )
    };
    let style = |config: &Config| {
        let Some(Mcp::Server(server)) = &config.routes[0].mcp else {
            panic!("an MCP server route")
        };
        server
            .upstream_oauth2
            .as_ref()
            .and_then(|o| o.endpoint.as_ref())
            .and_then(|e| e.auth_style)
    };
    for (spelling, expected) in [
        ("header", Some(AuthStyle::Header)),
        ("params", Some(AuthStyle::Params)),
        ("OAUTH2_AUTH_STYLE_IN_HEADER", Some(AuthStyle::Header)),
        ("OAUTH2_AUTH_STYLE_IN_PARAMS", Some(AuthStyle::Params)),
        ("oauth2_auth_style_in_params", Some(AuthStyle::Params)),
        ("OAUTH2_AUTH_STYLE_UNSPECIFIED", None),
    ] {
        assert_eq!(style(&parse_ok(&with(spelling))), expected, "{spelling}");
    }
    let err = parse_err(&with("basic"));
    assert!(
        err.message.contains("unknown auth_style `basic`") && err.message.contains("params"),
        "{err}"
    );
}

/// The keys a level accepts, from serde's "unknown field ..., expected one of ..." message.
fn accepted_keys(yaml: &str) -> Vec<String> {
    let message = parse_err(yaml).message;
    let expected = message.split_once("expected ").expect("a list").1;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_pomerium_deployment_loads_with_warnings_for_the_keys_postern_ignores() {
    // Keys from Pomerium's MCP documentation and acceptance configuration that Postern does
    // not implement and may safely ignore.
    let config = parse_ok(
        "insecure_server: true
tracing_provider: jaeger
access_log_fields: [method, path]
http_redirect_addr: ':8081'
timeout_idle: 5m
policy:
  - from: https://mcp.localhost.pomerium.io
    to: http://mcp:8080/mcp
    id: my-server
    show_error_details: true
    depends_on: [auth.example.com]
    allow_websockets: true
    set_request_headers: {X-Custom: value}
    mcp: {}
",
    );
    assert_eq!(config.routes.len(), 1, "`policy` is `routes`");
    assert_eq!(config.http_redirect_address.as_deref(), Some(":8081"));
    assert_eq!(
        config.routes[0]
            .set_request_headers
            .get("X-Custom")
            .map(String::as_str),
        Some("value"),
        "implemented, not ignored"
    );
    assert_eq!(
        config.idle_connection_timeout(),
        std::time::Duration::from_secs(300)
    );
    let ignored = [
        "tracing_provider",
        "access_log_fields",
        "policy[0].show_error_details",
        "policy[0].depends_on",
    ];
    // allow_websockets is implemented, but not on MCP server routes: said, not refused.
    assert!(
        config
            .warnings
            .iter()
            .any(|w| w.starts_with("routes[0].allow_websockets: ")),
        "{:?}",
        config.warnings
    );
    assert_eq!(
        config.warnings.len(),
        ignored.len() + 1,
        "{:?}",
        config.warnings
    );
    for key in ignored {
        assert!(
            config
                .warnings
                .iter()
                .any(|w| w.starts_with(&format!("{key}: Pomerium key"))
                    && w.contains("is not supported by Postern")),
            "{key}: {:?}",
            config.warnings
        );
    }
    assert!(parse_ok("insecure_server: true\n").warnings.is_empty());
}

#[test]
fn pomerium_keys_whose_absence_could_widen_access_are_refused_with_the_reason() {
    let err = parse_err(
        "insecure_server: true
routes:
  - from: https://mcp.example.com
    to: http://mcp:8080
    host_path_regex_rewrite_pattern: '^/(.+)/.+$'
    allow_any_authenticated_user: true
",
    );
    assert_eq!(err.path, "routes[0].host_path_regex_rewrite_pattern");
    assert!(
        err.message
            .contains("Pomerium key `host_path_regex_rewrite_pattern` is not supported by Postern")
            && err.message.contains("another Host header"),
        "{err}"
    );
    for (yaml, path) in [
        (
            "insecure_server: true\nmetrics_client_ca_file: ca.pem\n",
            "metrics_client_ca_file",
        ),
        (
            "insecure_server: true\nmetrics_basic_auth: dXNlcjpwYXNz\n",
            "metrics_basic_auth",
        ),
        (
            "insecure_server: true\nroutes:\n  - {from: http://a, to: http://b, tls_downstream_client_ca_file: ca.pem}\n",
            "routes[0].tls_downstream_client_ca_file",
        ),
    ] {
        assert_eq!(parse_err(yaml).path, path, "{yaml}");
    }
}

#[test]
fn a_key_nobody_has_is_still_an_error_with_a_suggestion() {
    let err = parse_err("insecure_sever: true\n");
    assert!(
        err.message.contains("unknown field `insecure_sever`"),
        "{err}"
    );
    assert!(
        err.message.contains("(did you mean `insecure_server`?)"),
        "{err}"
    );
    assert_eq!(
        err.line,
        Some(1),
        "a file without Pomerium keys keeps its line numbers"
    );
    let err = parse_err(
        "insecure_server: true\nroutes:\n  - {from: http://a, to: http://b, allow_any_authenticated_usr: true}\n",
    );
    assert!(
        err.message
            .contains("did you mean `allow_any_authenticated_user`?"),
        "{err}"
    );
    let err = parse_err("insecure_server: true\nzzz_nothing_like_it: 1\n");
    assert!(!err.message.contains("did you mean"), "{err}");
}

#[test]
fn no_pomerium_key_postern_ignores_is_one_postern_implements() {
    let top = accepted_keys("zzz_unknown: 1\n");
    let route = accepted_keys("routes:\n  - {from: http://a, to: http://b, zzz_unknown: 1}\n");
    for (key, _) in pomerium::TOP_LEVEL {
        assert!(
            !top.iter().any(|k| k == key),
            "top-level {key} is implemented"
        );
    }
    for (key, _) in pomerium::ROUTE {
        assert!(
            !route.iter().any(|k| k == key),
            "route {key} is implemented"
        );
    }
}

#[test]
fn the_reference_lists_every_pomerium_key_postern_does_not_implement() {
    let reference = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
    )
    .unwrap();
    for (key, what) in pomerium::TOP_LEVEL.iter().chain(pomerium::ROUTE) {
        let kind = match what {
            pomerium::Unsupported::Ignored(_) => "ignored",
            pomerium::Unsupported::Refused(_) => "**error**",
        };
        assert!(
            reference.contains(&format!("| {key} | {kind} |")),
            "docs/configuration.md does not list {key} as {kind} in its Pomerium keys section"
        );
    }
}

#[test]
fn a_request_limit_that_refuses_ordinary_tool_calls_is_pointed_out() {
    let with = |limit: u64| {
        parse_ok(&format!(
            "insecure_server: true\nroutes:\n  - {{from: http://a, to: http://b, mcp: {{server: {{max_request_bytes: {limit}}}}}}}\n"
        ))
        .warnings
    };
    let warnings = with(4096);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with(
            "routes[0].mcp.server.max_request_bytes: 4096 bytes will refuse ordinary tool calls"
        ) && warnings[0].contains("inspection buffer"),
        "{warnings:?}"
    );
    assert!(with(65536).is_empty());
}

#[test]
fn an_upstream_callback_path_must_be_one_postern_answers() {
    let with = |path: &str| {
        format!(
            "insecure_server: true\nroutes:\n  - from: https://n.example.com\n    to: http://n:8080\n    mcp:\n      upstream_oauth2:\n        client_id: c\n        callback_path: {path}\n        endpoint: {{auth_url: 'https://p.test/a', token_url: 'https://p.test/t'}}\n"
        )
    };
    parse_ok(&with("/.pomerium/mcp/oauth/callback"));
    parse_ok(&with("/.pomerium/mcp/client/oauth/callback"));
    let err = parse_err(&with("/callback"));
    assert_eq!(
        err.path,
        "routes[0].mcp.server.upstream_oauth2.callback_path"
    );
    assert!(
        err.message.contains("/.pomerium/mcp/oauth/callback"),
        "{err}"
    );
}

#[test]
fn a_static_provider_is_asked_for_the_upstream_resource_by_default() {
    let with = |extra: &str, endpoint: bool| {
        let endpoint = if endpoint {
            "        endpoint: {auth_url: 'https://p.test/a', token_url: 'https://p.test/t'}\n"
        } else {
            ""
        };
        format!(
            "insecure_server: true\nroutes:\n  - from: https://n.example.com\n    to: http://n:8080\n    mcp:\n      upstream_oauth2:\n        client_id: c\n{endpoint}{extra}"
        )
    };
    let resource = |config: Config| match &config.routes[0].mcp {
        Some(Mcp::Server(s)) => s.upstream_oauth2.as_ref().unwrap().resource.clone(),
        _ => unreachable!(),
    };
    assert_eq!(
        resource(parse_ok(&with("", true))).as_deref(),
        Some("http://n:8080"),
        "a root upstream URL has no trailing slash"
    );
    assert_eq!(
        resource(parse_ok(&with(
            "        resource: https://mcp.n.test/mcp\n",
            true
        )))
        .as_deref(),
        Some("https://mcp.n.test/mcp")
    );
    assert_eq!(
        resource(parse_ok(&with("        resource: ''\n", true))),
        None
    );
    assert_eq!(
        resource(parse_ok(&with("", false))),
        None,
        "discovery sets it"
    );
    for (extra, endpoint, says) in [
        (
            "        resource: https://x.test/\n",
            false,
            "only with endpoint",
        ),
        ("        resource: /relative\n", true, "absolute"),
        ("        resource: https://x.test/#f\n", true, "fragment"),
    ] {
        let err = parse_err(&with(extra, endpoint));
        assert_eq!(err.path, "routes[0].mcp.server.upstream_oauth2.resource");
        assert!(err.message.contains(says), "{err}");
    }
}

#[test]
fn response_headers_are_checked() {
    let base = "insecure_server: true\nroutes:\n  - {from: http://a.test, to: http://up:1, allow_public_unauthenticated_access: true";
    parse_ok(&format!(
        "set_response_headers: {{disable: 'true', X-A: b}}\n{base}, set_response_headers: {{X-B: c}}}}\n"
    ));
    let route_disable = parse_err(&format!(
        "{base}, set_response_headers: {{disable: 'true'}}}}\n"
    ));
    assert_eq!(route_disable.path, "routes[0].set_response_headers.disable");
    let owned = parse_err("insecure_server: true\nset_response_headers: {Content-Length: '5'}\n");
    assert_eq!(owned.path, "set_response_headers.Content-Length");
    let broken = parse_err(&format!(
        "{base}, set_response_headers: {{X-A: \"a\\nb\"}}}}\n"
    ));
    assert!(broken.message.contains("control characters"), "{broken}");
}

#[test]
fn the_sign_in_origin_is_an_origin_of_its_own() {
    let with = |url: &str, insecure: bool| {
        format!(
            "insecure_server: {insecure}\nautocert: {}\nauthenticate_service_url: {url}\nroutes:\n  - {{from: https://mcp.example.com, to: http://up:1, allow_any_authenticated_user: true}}\n",
            !insecure
        )
    };
    let config = parse_ok(&with("https://Auth.Example.com", false));
    let service = config.authenticate_service().unwrap();
    assert_eq!(service.origin, "https://auth.example.com");
    assert_eq!(
        (service.host.as_str(), service.port),
        ("auth.example.com", 443)
    );
    assert_eq!(
        parse_ok(&with("http://auth.localhost:8080/", true))
            .authenticate_service()
            .unwrap()
            .origin,
        "http://auth.localhost:8080"
    );
    for (url, insecure, says) in [
        ("http://auth.example.com", false, "plain http"),
        ("https://auth.example.com/login", false, "origin only"),
        ("https://auth.example.com/?x=1", false, "origin only"),
        ("auth.example.com", false, "not a URL"),
    ] {
        let err = parse_err(&with(url, insecure));
        assert_eq!(err.path, "authenticate_service_url", "{url}");
        assert!(err.message.contains(says), "{url}: {err}");
    }
    let shared = parse_err(&with("https://mcp.example.com", false));
    assert_eq!(shared.path, "routes[0].from");
    assert!(shared.message.contains("its own host"), "{shared}");
}

#[test]
fn cookie_keys_are_checked_against_the_hosts_and_the_scheme() {
    let routes = "routes:\n  - {from: https://mcp.example.com, to: http://up:1}\n  - {from: https://db.example.com, to: http://up:1}\n";
    let tls = format!("autocert: true\n{routes}");
    parse_ok(&format!(
        "cookie_domain: example.com\ncookie_same_site: none\n{tls}"
    ));
    let uncovered = parse_err(&format!("cookie_domain: mcp.example.com\n{tls}"));
    assert_eq!(uncovered.path, "cookie_domain");
    assert!(
        uncovered.message.contains("does not cover db.example.com"),
        "{uncovered}"
    );
    let ip = parse_err(&format!("cookie_domain: 10.0.0.1\n{tls}"));
    assert!(ip.message.contains("not a domain name"), "{ip}");
    let plain = parse_err(
        "insecure_server: true\ncookie_same_site: none\nroutes:\n  - {from: http://localhost, to: http://up:1}\n",
    );
    assert_eq!(plain.path, "cookie_same_site");
    assert!(plain.message.contains("needs https"), "{plain}");
    let bad = parse_err(&format!("cookie_same_site: sometimes\n{tls}"));
    assert_eq!(bad.path, "cookie_same_site");
    let loose = parse_ok(&format!("cookie_http_only: false\n{tls}"));
    assert!(
        loose.warnings.iter().any(|w| w.contains("always HttpOnly")),
        "{:?}",
        loose.warnings
    );
    assert!(
        parse_ok(&format!("cookie_http_only: true\n{tls}"))
            .warnings
            .is_empty()
    );
}

#[test]
fn request_rewrites_are_checked() {
    let route = |extra: &str| {
        format!(
            "insecure_server: true\nroutes:\n  - {{from: http://a, to: http://b, prefix: /p, {extra}}}\n"
        )
    };
    parse_ok(&route(
        "prefix_rewrite: /, host_rewrite: 'up.internal:8080', set_request_headers: {X-A: b}, remove_request_headers: [X-B]",
    ));
    for (extra, path, needle) in [
        (
            "prefix_rewrite: x",
            "routes[0].prefix_rewrite",
            "must start with /",
        ),
        (
            "host_rewrite: 'a/b'",
            "routes[0].host_rewrite",
            "host[:port]",
        ),
        (
            "host_rewrite: a, preserve_host_header: true",
            "routes[0].host_rewrite",
            "not both",
        ),
        (
            "set_request_headers: {Host: x}",
            "routes[0].set_request_headers.Host",
            "set by the gateway",
        ),
        (
            "set_request_headers: {X-Pomerium-Jwt-Assertion: x}",
            "routes[0].set_request_headers.X-Pomerium-Jwt-Assertion",
            "set by the gateway",
        ),
        (
            "set_request_headers: {'bad name': x}",
            "routes[0].set_request_headers.bad name",
            "not a header name",
        ),
        (
            "set_request_headers: {X-A: \"a\\r\\nX-Evil: 1\"}",
            "routes[0].set_request_headers.X-A",
            "control characters",
        ),
        (
            "set_request_headers: {X-Token: '${pomerium.id_token}'}",
            "routes[0].set_request_headers.X-Token",
            "not supported",
        ),
        (
            "remove_request_headers: [X-Forwarded-For]",
            "routes[0].remove_request_headers[0]",
            "set by the gateway",
        ),
    ] {
        let err = parse_err(&route(extra));
        assert_eq!(err.path, path, "{extra}: {err}");
        assert!(err.message.contains(needle), "{extra}: {err}");
    }
    let no_prefix = parse_err(
        "insecure_server: true\nroutes:\n  - {from: http://a, to: http://b, prefix_rewrite: /x}\n",
    );
    assert_eq!(no_prefix.path, "routes[0].prefix_rewrite");
}

#[test]
fn claim_headers_take_both_of_pomeriums_forms() {
    let map =
        parse_ok("insecure_server: true\njwt_claims_headers: {X-Email: email, X-Groups: groups}\n");
    assert_eq!(
        map.jwt_claims_headers.unwrap().pairs(),
        [
            ("X-Email".to_owned(), "email".to_owned()),
            ("X-Groups".to_owned(), "groups".to_owned())
        ]
    );
    let list = parse_ok("insecure_server: true\njwt_claims_headers: [email, groups]\n");
    assert_eq!(
        list.jwt_claims_headers.unwrap().pairs(),
        [
            ("x-pomerium-claim-email".to_owned(), "email".to_owned()),
            ("x-pomerium-claim-groups".to_owned(), "groups".to_owned())
        ]
    );
    let err = parse_err("insecure_server: true\njwt_claims_headers: {Host: email}\n");
    assert_eq!(err.path, "jwt_claims_headers.Host");
}

#[test]
fn allowed_idp_claims_take_any_scalar_values() {
    let config = parse_ok(
        "insecure_server: true\nroutes:\n  - {from: http://a, to: http://b, allowed_idp_claims: {org: [acme], verified: [true], level: [3]}}\n",
    );
    let claims = &config.routes[0].allowed_idp_claims;
    assert_eq!(claims["org"], [serde_json::json!("acme")]);
    assert_eq!(claims["verified"], [serde_json::json!(true)]);
}

#[test]
fn pomeriums_oidc_provider_names_are_presets() {
    let with = |lines: &str| {
        format!("insecure_server: true\nidp_client_id: c\nidp_client_secret: s\n{lines}")
    };
    let google = parse_ok(&with("idp_provider: google\n"));
    assert_eq!(
        google.oidc_issuer().as_deref(),
        Some("https://accounts.google.com")
    );
    assert_eq!(google.idp_groups_claim(), "groups");
    let keycloak = parse_ok(&with(
        "idp_provider: keycloak\nidp_provider_url: https://kc.example/realms/acme\n",
    ));
    assert_eq!(
        keycloak.oidc_issuer().as_deref(),
        Some("https://kc.example/realms/acme")
    );
    let cognito = parse_ok(&with(
        "idp_provider: cognito\nidp_provider_url: https://cognito-idp.eu-west-1.amazonaws.com/pool\n",
    ));
    assert_eq!(cognito.idp_groups_claim(), "cognito:groups");
    let own_claim = parse_ok(&with(
        "idp_provider: cognito\nidp_provider_url: https://c.example\nidp_groups_claim: roles\n",
    ));
    assert_eq!(own_claim.idp_groups_claim(), "roles", "the key wins");
    let azure = parse_ok(&with("idp_provider: azure\n"));
    assert_eq!(
        azure.oidc_issuer().as_deref(),
        Some("https://login.microsoftonline.com/common/v2.0"),
        "Pomerium's default: the multi-tenant endpoint"
    );
    let onelogin = parse_ok(&with("idp_provider: onelogin\n"));
    assert_eq!(
        onelogin.oidc_issuer().as_deref(),
        Some("https://openid-connect.onelogin.com/oidc")
    );
    assert_eq!(
        onelogin.idp_scopes(),
        ["openid", "profile", "email", "groups"]
    );
    assert_eq!(azure.idp_scopes(), ["openid", "profile", "email"]);
    let own_scopes = parse_ok(&with(
        "idp_provider: onelogin\nidp_scopes: [openid, email]\n",
    ));
    assert_eq!(own_scopes.idp_scopes(), ["openid", "email"], "the key wins");
    for name in ["okta", "auth0", "cognito", "ping", "keycloak"] {
        let err = parse_err(&with(&format!("idp_provider: {name}\n")));
        assert_eq!(err.path, "idp_provider_url", "{name}");
        assert!(err.message.contains(name), "{err}");
        let url = format!("idp_provider: {name}\nidp_provider_url: https://{name}.example/\n");
        assert!(parse_ok(&with(&url)).oidc_issuer().is_some());
    }
    let github = parse_ok(&with("idp_provider: github\n"));
    assert_eq!(github.github_url().as_deref(), Some("https://github.com"));
    assert_eq!(github.oidc_issuer(), None, "GitHub is not OpenID Connect");
    let enterprise = parse_ok(&with(
        "idp_provider: github\nidp_provider_url: https://ghe.corp.example/\n",
    ));
    assert_eq!(
        enterprise.github_url().as_deref(),
        Some("https://ghe.corp.example")
    );
    for bad in [
        "ghe.corp.example",
        "https://ghe.corp.example/api/v3",
        "ftp://ghe",
    ] {
        let err = parse_err(&with(&format!(
            "idp_provider: github\nidp_provider_url: {bad}\n"
        )));
        assert_eq!(err.path, "idp_provider_url", "{bad}");
        assert!(err.message.contains("GitHub Enterprise Server"), "{err}");
    }
    let no_client = parse_err("insecure_server: true\nidp_provider: github\n");
    assert_eq!(no_client.path, "idp_client_id");
    assert_eq!(parse_ok(&with("")).github_url(), None);
    let unknown = parse_err(&with("idp_provider: myidp\n"));
    assert!(unknown.message.contains("keycloak"), "{unknown}");
    assert_eq!(parse_ok("insecure_server: true\n").oidc_issuer(), None);
}

#[test]
fn route_ids_are_unique() {
    let config = parse_ok(
        "insecure_server: true\nroutes:\n  - {from: http://a, to: http://b, id: one}\n  - {from: http://c, to: http://d, id: two}\n",
    );
    assert_eq!(config.routes[0].id.as_deref(), Some("one"));
    let err = parse_err(
        "insecure_server: true\nroutes:\n  - {from: http://a, to: http://b, id: one}\n  - {from: http://c, to: http://d, id: one}\n",
    );
    assert_eq!(err.path, "routes[1].id");
    assert!(err.message.contains("routes[0]"), "{err}");
}

#[test]
fn upstream_oauth2_needs_a_client_id_only_with_endpoints() {
    parse_ok(
        "insecure_server: true\nroutes:\n  - {from: http://a, to: http://b, mcp: {upstream_oauth2: {scopes: [repo]}}}\n",
    );
    let err = parse_err(
        "insecure_server: true\nroutes:\n  - {from: http://a, to: http://b, mcp: {upstream_oauth2: {endpoint: {auth_url: 'https://p/a', token_url: 'https://p/t'}}}}\n",
    );
    assert_eq!(err.path, "routes[0].mcp.server.upstream_oauth2.client_id");
}

/// A deployment written the way Pomerium's MCP documentation and its MCP acceptance
/// configuration write one (our own file, with every key they use): it loads, Postern says
/// which keys it ignores, and each key it implements has its effect.
#[test]
fn a_configuration_in_pomeriums_mcp_vocabulary_loads() {
    let config = parse_ok(
        "insecure_server: true
authenticate_service_url: https://authenticate.example.test
runtime_flags:
  mcp: true
mcp_allowed_client_id_domains: ['apps.example.test', '*.trusted.example.test']
authorize_log_fields: [request-id, user, email, mcp-method, mcp-tool, mcp-tool-parameters]
jwt_claims_headers: [email]
idp_provider: oidc
idp_provider_url: https://idp.example.test
idp_client_id: gateway
idp_client_secret: s
routes:
  - from: https://db.example.test
    to: http://db:8080/mcp
    name: Database
    description: Read-only SQL
    logo_url: https://db.example.test/logo.png
    mcp:
      server:
        max_request_bytes: 1048576
    policy:
      allow:
        and:
          - domain:
              is: example.test
          - groups:
              has: data-analysts
      deny:
        or:
          - mcp_tool:
              in: [update_data, drop_table]
          - mcp_tool:
              starts_with: admin_
  - from: https://allowlist.example.test
    to: http://db:8080/mcp
    mcp:
      server: {}
    policy:
      allow:
        and:
          - email:
              is: analyst@example.test
      deny:
        and:
          - mcp_tool:
              not_in: [query, list_tables]
  - from: https://github.example.test
    to: http://github-mcp:8080/mcp
    pass_identity_headers: true
    allow_any_authenticated_user: true
    mcp:
      server:
        upstream_oauth2:
          client_id: gh-client
          client_secret: gh-secret
          scopes: ['read:user', 'user:email']
          endpoint:
            auth_url: https://github.com/login/oauth/authorize
            token_url: https://github.com/login/oauth/access_token
            auth_style: params
  - from: https://chat.example.test
    to: http://chat:3000
    allow_any_authenticated_user: true
    mcp:
      client: {}
",
    );
    assert_eq!(config.routes.len(), 4);
    let ignored: Vec<&str> = config
        .warnings
        .iter()
        .map(|w| w.split(':').next().unwrap())
        .collect();
    assert!(ignored.is_empty(), "{ignored:?}");
    assert_eq!(
        config.authenticate_service().unwrap().origin,
        "https://authenticate.example.test"
    );
    assert_eq!(
        config.authorize_log_fields.as_deref(),
        Some(
            &[
                AuthorizeLogField::RequestId,
                AuthorizeLogField::User,
                AuthorizeLogField::Email,
                AuthorizeLogField::McpMethod,
                AuthorizeLogField::McpTool,
                AuthorizeLogField::McpToolParameters
            ][..]
        )
    );
    assert!(config.mcp_dynamic_client_registration());
    assert_eq!(
        config.oidc_issuer().as_deref(),
        Some("https://idp.example.test")
    );
    assert!(matches!(config.routes[3].mcp, Some(Mcp::Client)));
    let Some(Mcp::Server(github)) = &config.routes[2].mcp else {
        panic!("an MCP server route")
    };
    let oauth = github.upstream_oauth2.as_ref().unwrap();
    assert_eq!(
        oauth.endpoint.as_ref().unwrap().auth_style,
        Some(AuthStyle::Params)
    );
    assert_eq!(
        oauth.callback_path(),
        "/.pomerium/mcp/client/oauth/callback",
        "the path current Pomerium registers"
    );
}

const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
const TLS: &str = "certificate_file: cert.pem\ncertificate_key_file: key.pem\n";

#[test]
fn downstream_mtls_and_its_older_names_resolve_to_one_ca() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), CA_PEM).unwrap();
    let load = |yaml: &str| parse(yaml, dir.path(), &env(&[]));

    let config = load(&format!("{TLS}downstream_mtls: {{ca_file: ca.pem, enforcement: reject_connection, max_verify_depth: 0, match_subject_alt_names: [{{email: '.*@example\\.com'}}, {{dns: a.example.com}}]}}\n")).unwrap();
    let mtls = config.downstream_mtls.as_ref().unwrap();
    assert_eq!(
        mtls.ca_pem().unwrap(),
        CA_PEM.as_bytes(),
        "ca_file is relative to the file"
    );
    assert_eq!(mtls.enforcement(), MtlsEnforcement::RejectConnection);
    assert_eq!(mtls.max_verify_depth(), None, "0: no limit");
    assert_eq!(
        mtls.match_subject_alt_names[0],
        SanMatcher::Email(".*@example\\.com".into())
    );
    let san = mtls.match_subject_alt_names[0].regex().unwrap();
    assert!(san.is_match("ada@example.com"));
    assert!(
        !san.is_match("ada@example.com.evil"),
        "the whole SAN must match"
    );

    let inline = base64::engine::general_purpose::STANDARD.encode(CA_PEM);
    for yaml in [
        format!("{TLS}client_ca: {inline}\n"),
        format!("{TLS}client_ca_file: ca.pem\n"),
        format!("{TLS}downstream_mtls: {{ca: {inline}}}\n"),
    ] {
        let config = load(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
        let mtls = config.downstream_mtls.unwrap();
        assert_eq!(mtls.ca_pem().unwrap(), CA_PEM.as_bytes(), "{yaml}");
        assert_eq!(
            mtls.enforcement(),
            MtlsEnforcement::PolicyWithDefaultDeny,
            "Pomerium's default"
        );
        assert_eq!(mtls.max_verify_depth(), Some(1), "Pomerium's default");
    }
}

#[test]
fn downstream_mtls_mistakes_are_refused_with_what_to_do() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), CA_PEM).unwrap();
    std::fs::write(dir.path().join("empty.pem"), "nothing here").unwrap();
    let inline = base64::engine::general_purpose::STANDARD.encode(CA_PEM);
    let refused = |yaml: String| parse(&yaml, dir.path(), &env(&[])).expect_err(&yaml);
    for (yaml, path, says) in [
        (
            "insecure_server: true\ndownstream_mtls: {ca_file: ca.pem}\n".to_owned(),
            "downstream_mtls",
            "needs TLS",
        ),
        (
            "insecure_server: true\nclient_ca_file: ca.pem\n".to_owned(),
            "downstream_mtls",
            "needs TLS",
        ),
        (
            format!("{TLS}downstream_mtls: {{enforcement: policy}}\n"),
            "downstream_mtls.ca",
            "required",
        ),
        (
            format!("{TLS}downstream_mtls: {{ca: {inline}, ca_file: ca.pem}}\n"),
            "downstream_mtls.ca",
            "not both",
        ),
        (
            format!("{TLS}client_ca: {inline}\ndownstream_mtls: {{ca_file: ca.pem}}\n"),
            "client_ca",
            "set twice",
        ),
        (
            format!("{TLS}downstream_mtls: {{ca: '%%%'}}\n"),
            "downstream_mtls.ca",
            "not base64",
        ),
        (
            format!("{TLS}downstream_mtls: {{ca_file: missing.pem}}\n"),
            "downstream_mtls.ca_file",
            "cannot read",
        ),
        (
            format!("{TLS}downstream_mtls: {{ca_file: empty.pem}}\n"),
            "downstream_mtls.ca",
            "no PEM certificate",
        ),
        (
            format!("{TLS}downstream_mtls: {{ca_file: ca.pem, crl_file: ca.pem}}\n"),
            "downstream_mtls.crl",
            "no PEM certificate revocation list",
        ),
        (
            format!("{TLS}downstream_mtls: {{ca_file: ca.pem, enforcement: strict}}\n"),
            "downstream_mtls.enforcement",
            "unknown variant",
        ),
        (
            format!(
                "{TLS}downstream_mtls: {{ca_file: ca.pem, match_subject_alt_names: [{{dns: '(unclosed'}}]}}\n"
            ),
            "downstream_mtls.match_subject_alt_names[0].dns",
            "not a valid regular expression",
        ),
        (
            format!(
                "{TLS}downstream_mtls: {{ca_file: ca.pem, match_subject_alt_names: [{{common_name: x}}]}}\n"
            ),
            "downstream_mtls.match_subject_alt_names[0]",
            "unknown SAN type",
        ),
        (
            format!("{TLS}downstream_mtls: {{ca_file: ca.pem, ocsp: true}}\n"),
            "downstream_mtls",
            "unknown field",
        ),
    ] {
        let err = refused(yaml.clone());
        assert!(
            err.path.starts_with(path) && err.message.contains(says),
            "{yaml}: {err}"
        );
    }
}
#[test]
fn regex_routes_load_and_bad_ones_are_refused_naming_the_route() {
    let config = parse_ok(
        r#"insecure_server: true
routes:
  - from: http://a
    to: http://b
    regex: '^/api/v[0-9]+/.*$'
    regex_priority_order: 5
    regex_rewrite_pattern: '^/api/(v[0-9]+)/(.*)$'
    regex_rewrite_substitution: '/\2?\1'
"#
        .replace("?", "/")
        .as_str(),
    );
    let route = &config.routes[0];
    assert!(route.regex.as_ref().unwrap().is_match("/api/v2/x"));
    assert_eq!(route.regex_priority_order, Some(5));

    for (route, path, says) in [
        (
            "regex: '/('",
            "routes[0].regex",
            "not a valid regular expression",
        ),
        ("regex: '/x{1000}{1000}'", "routes[0].regex", "too large"),
        (
            "{regex: '/a', prefix: /a}",
            "routes[0].regex",
            "one of prefix, path or regex",
        ),
        (
            "{regex: '/a', mcp: {}}",
            "routes[0].regex",
            "MCP server route",
        ),
        (
            "regex_rewrite_pattern: '/a'",
            "routes[0].regex_rewrite_pattern",
            "needs regex_rewrite_substitution",
        ),
        (
            "regex_rewrite_substitution: '/a'",
            "routes[0].regex_rewrite_substitution",
            "needs regex_rewrite_pattern",
        ),
        (
            r"{regex_rewrite_pattern: '/(a)', regex_rewrite_substitution: '/\3'}",
            "routes[0].regex_rewrite_substitution",
            "does not have",
        ),
        (
            "{regex_rewrite_pattern: '/a', regex_rewrite_substitution: '/b', prefix: /a, prefix_rewrite: /c}",
            "routes[0].regex_rewrite_pattern",
            "not both",
        ),
    ] {
        let route = if route.starts_with('{') {
            route.to_owned()
        } else {
            format!("{{{route}}}")
        };
        let yaml = format!(
            "insecure_server: true\nroutes:\n  - {{from: http://a, to: http://b, {}}}\n",
            &route[1..route.len() - 1]
        );
        let err = parse_err(&yaml);
        assert_eq!(err.path, path, "{yaml}: {err}");
        assert!(err.message.contains(says), "{yaml}: {err}");
    }
}

#[test]
fn timeout_write_is_read_and_check_config_warns_next_to_streams() {
    let config = parse_ok("insecure_server: true\ntimeout_write: 30s\n");
    assert_eq!(
        config.write_timeout(),
        Some(std::time::Duration::from_secs(30))
    );
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    let config = parse_ok("insecure_server: true\ntimeout_write: 0s\n");
    assert_eq!(config.write_timeout(), None, "0 is no limit");
    let config = parse_ok(
        "insecure_server: true\ntimeout_write: 30s\nroutes:\n  - {from: http://a, to: http://b, mcp: {}}\n  - {from: http://c, to: http://d, allow_websockets: true}\n",
    );
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    assert!(
        config.warnings[0].starts_with("timeout_write: ")
            && config.warnings[0].contains("routes[0], routes[1]"),
        "{:?}",
        config.warnings
    );
}

#[test]
fn authorize_log_fields_take_pomeriums_names() {
    let config = parse_ok(
        "insecure_server: true
authorize_log_fields: [request-id, check-request-id, email, user, session-id, host, ip, method, path, query, mcp-method, mcp-tool, mcp-tool-parameters, headers, headers.X-Client, id-token-claims, removed-groups-count]
",
    );
    use AuthorizeLogField::*;
    assert_eq!(
        config.authorize_log_fields.unwrap(),
        [
            RequestId,
            RequestId,
            Email,
            User,
            SessionId,
            Host,
            Ip,
            Method,
            Path,
            Query,
            McpMethod,
            McpTool,
            McpToolParameters,
            Headers,
            Header("x-client".into()),
            IdTokenClaims,
            RemovedGroupsCount
        ]
    );
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    let none = parse_ok("insecure_server: true\nauthorize_log_fields: []\n");
    assert_eq!(
        none.authorize_log_fields,
        Some(vec![]),
        "only the essentials"
    );
    assert_eq!(
        parse_ok("insecure_server: true\n").authorize_log_fields,
        None
    );
}

#[test]
fn authorize_log_fields_postern_cannot_provide_load_with_a_warning_each() {
    let config = parse_ok(
        "insecure_server: true
authorize_log_fields: [email, body, id-token, impersonate-email, impersonate-session-id, impersonate-user-id, service-account-id, envoy-route-checksum, envoy-route-id, cluster-stat-name, route-id, route-checksum]
",
    );
    let fields = config.authorize_log_fields.as_deref().unwrap();
    assert_eq!(fields[0], AuthorizeLogField::Email);
    assert_eq!(
        config.warnings.len(),
        fields.len() - 1,
        "{:?}",
        config.warnings
    );
    for (i, warning) in config.warnings.iter().enumerate() {
        let AuthorizeLogField::Unavailable { name, why } = &fields[i + 1] else {
            panic!("{:?} is provided", fields[i + 1])
        };
        assert!(
            warning.starts_with(&format!(
                "authorize_log_fields[{}]: `{name}` is left out of the audit record: ",
                i + 1
            )) && warning.ends_with(why),
            "{warning}"
        );
    }
    let why = |n: usize| config.warnings[n].split(": ").nth(2).unwrap().to_owned();
    assert!(
        why(0).contains("mcp-tool-parameters"),
        "body points to the tool arguments"
    );
    assert!(why(1).contains("keeps no ID token"));
    assert!(why(2).contains("no impersonation"));
    assert!(why(5).contains("no service accounts"));
    assert!(why(6).contains("always names its route"));
}

#[test]
fn an_unknown_authorize_log_field_is_an_error_with_a_suggestion() {
    let err = parse_err("insecure_server: true\nauthorize_log_fields: [email, mcp-tools]\n");
    assert_eq!(err.path, "authorize_log_fields[1]");
    assert_eq!(err.line, Some(2));
    assert!(
        err.message
            .starts_with("`mcp-tools` is not an authorize log field (did you mean `mcp-tool`?); the fields are body, check-request-id,"),
        "{err}"
    );
    let err = parse_err("insecure_server: true\nauthorize_log_fields: [zzz]\n");
    assert!(!err.message.contains("did you mean"), "{err}");
    let err = parse_err("insecure_server: true\nauthorize_log_fields: ['headers.']\n");
    assert!(err.message.contains("is not a header name"), "{err}");
    let err = parse_err("insecure_server: true\nauthorize_log_fields: ['headers.a b']\n");
    assert!(err.message.contains("`a b` is not a header name"), "{err}");
}

#[test]
fn refresh_token_lifetimes_have_defaults_and_must_make_sense() {
    use std::time::Duration;
    let default = parse_ok("insecure_server: true\n");
    assert_eq!(
        default.mcp_refresh_token_idle_ttl(),
        Duration::from_secs(30 * 24 * 3600)
    );
    assert_eq!(
        default.mcp_refresh_token_max_ttl(),
        Duration::from_secs(90 * 24 * 3600)
    );
    let set = parse_ok(
        "insecure_server: true\nmcp_refresh_token_idle_ttl: 1h\nmcp_refresh_token_max_ttl: 48h\n",
    );
    assert_eq!(set.mcp_refresh_token_idle_ttl(), Duration::from_secs(3600));
    assert_eq!(
        set.mcp_refresh_token_max_ttl(),
        Duration::from_secs(48 * 3600)
    );
    let err = parse_err("insecure_server: true\nmcp_refresh_token_idle_ttl: 2400h\n");
    assert_eq!(err.path, "mcp_refresh_token_idle_ttl");
    assert!(err.message.contains("mcp_refresh_token_max_ttl"), "{err}");
    let err = parse_err("insecure_server: true\nmcp_refresh_token_max_ttl: 0s\n");
    assert_eq!(err.path, "mcp_refresh_token_max_ttl");
}

#[test]
fn a_public_route_that_lists_users_is_refused_as_contradictory() {
    let route = |extra: &str| {
        format!(
            "insecure_server: true\nroutes:\n  - from: http://mcp.localhost\n    to: http://127.0.0.1:9\n    allow_public_unauthenticated_access: true\n{extra}"
        )
    };
    let error = parse_err(&route("    allowed_users: [ada@example.com]\n")).to_string();
    assert!(
        error.contains("routes[0].allowed_users")
            && error.contains("contradicts allow_public_unauthenticated_access"),
        "{error}"
    );
    for key in [
        "    allow_any_authenticated_user: true\n",
        "    allowed_domains: [example.com]\n",
        "    allowed_idp_claims: {groups: [admin]}\n",
    ] {
        let error = parse_err(&route(key)).to_string();
        assert!(error.contains("contradicts"), "{key}: {error}");
    }
    // A public route's deny rules still do something: allowed.
    parse_ok(&route(
        "    policy: {deny: {or: [{invalid_client_certificate: true}]}}\n",
    ));
    parse_ok(&route(""));
}

/// Property-based tests (issue 17, hostile input): thousands of generated configuration
/// files per run (`PROPTEST_CASES` raises it).
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Lines of configuration, right and wrong: keys at several depths, YAML's tricky
    /// scalars, anchors and aliases, tags, flow collections, `${ENV}` references.
    const LINES: &[&str] = &[
        "routes:",
        "- from: https://a.example",
        "  to: http://127.0.0.1:1",
        "  mcp: {}",
        "  mcp:",
        "    server: {}",
        "    client: {}",
        "  policy:",
        "    allow:",
        "      or:",
        "        - email: {is: a@b.c}",
        "        - mcp_tool: {in: [a, b]}",
        "  prefix: /x",
        "  path: /x",
        "  regex: '^/(a|b)$'",
        "  regex: '('",
        "address: :0",
        "address: ''",
        "shared_secret: c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==",
        "shared_secret: ${SECRET}",
        "shared_secret: ${",
        "idp_provider: oidc",
        "authenticate_service_url: https://auth.example",
        "authenticate_service_url: ::",
        "cookie_expire: 8h",
        "cookie_expire: -1s",
        "cookie_expire: 99999999999999999999h",
        "timeout: 1e400",
        "databroker_storage_type: postgres",
        "x: &a [*a]",
        "y: *a",
        "z: !!binary AAAA",
        "- ? [a]\n  : b",
        "{",
        "[",
        "'",
        "\"\\u",
        "\t",
        "  ",
        "---",
        "...",
        "~",
        "null",
        "0x10",
        "1_000",
        ".inf",
        "yes",
        "no",
        "<<: *a",
        "%YAML 1.2",
        "\u{feff}",
        "\u{0}",
        "a: \u{10ffff}",
    ];

    #[test]
    fn a_duration_too_long_to_hold_is_refused() {
        // Found by the properties below: it panicked converting to a `Duration`.
        for yaml in [
            "cookie_expire: 99999999999999999999h",
            "cookie_expire: 18446744073709551615s18446744073709551615s",
        ] {
            let error = parse(yaml, Path::new("."), &env(&[]))
                .unwrap_err()
                .to_string();
            assert!(error.contains("too long a duration"), "{yaml}: {error}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(3000)
        ))]

        /// Any text loads or is refused with an error: never a panic.
        #[test]
        fn any_text_loads_or_is_refused(lines in prop::collection::vec(prop::sample::select(LINES), 0..20)) {
            let text = lines.join("\n");
            let _ = parse(&text, Path::new("."), &env(&[("SECRET", SECRET)]));
        }

        /// Arbitrary text, too.
        #[test]
        fn arbitrary_text_loads_or_is_refused(text in "\\PC{0,200}") {
            let _ = parse(&text, Path::new("."), &env(&[]));
        }
    }
}

/// A config with the aggregate `/tools` over `servers` (YAML flow list) and four routes:
/// `sqlite` (by id), `Notion Docs` (by name only), an MCP client app and a web route.
fn aggregate_config(servers: &str) -> String {
    format!(
        "insecure_server: true
routes:
  - from: http://mcp.example.com
    path: /tools
    name: All tools
    id: tools
    allow_any_authenticated_user: true
    mcp:
      aggregate:
        servers: {servers}
  - from: http://mcp.example.com
    prefix: /sqlite
    id: sqlite
    to: http://sqlite:8080
    allow_any_authenticated_user: true
    mcp: {{}}
  - from: http://mcp.example.com
    prefix: /notion
    name: Notion Docs
    to: http://notion:8080
    allow_any_authenticated_user: true
    mcp: {{}}
  - from: http://app.example.com
    id: app
    to: http://app:3000
    allow_any_authenticated_user: true
    mcp: {{client: {{}}}}
  - from: http://web.example.com
    id: web
    to: http://web:3000
    allow_any_authenticated_user: true
"
    )
}

#[test]
fn aggregate_members_resolve_by_id_or_name_with_default_prefixes() {
    let config = parse_ok(&aggregate_config(
        "[sqlite, {route: Notion Docs, timeout: 20s}]",
    ));
    let members = aggregate_members(&config, 0).unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(
        (members[0].route, members[0].prefix.as_str()),
        (1, "sqlite_")
    );
    assert_eq!(members[0].timeout, AGGREGATE_MEMBER_TIMEOUT);
    assert_eq!(
        (members[1].route, members[1].prefix.as_str()),
        (2, "notion_docs_")
    );
    assert_eq!(members[1].timeout, std::time::Duration::from_secs(20));
    // No `to`: an aggregate has no upstream of its own.
    assert!(config.routes[0].to.to_vec().is_empty());
    let config = parse_ok(&aggregate_config("[{route: sqlite, prefix: ''}]"));
    assert_eq!(aggregate_members(&config, 0).unwrap()[0].prefix, "");
}

#[test]
fn aggregate_members_that_cannot_be_federated_are_refused_with_the_reason() {
    let cases = [
        ("[sqlit]", "servers[0]", "did you mean `sqlite`?"),
        ("[app]", "servers[0]", "MCP client app route"),
        ("[web]", "servers[0]", "is not an MCP route"),
        ("[tools]", "servers[0]", "itself an aggregate"),
        ("[sqlite, sqlite]", "servers[1]", "already servers[0]"),
        ("[]", "servers", "lists no member"),
        (
            "[{route: sqlite, prefix: ''}, Notion Docs]",
            "servers[1].prefix",
            "(sqlite, servers[0])",
        ),
        (
            "[{route: sqlite, prefix: x_}, {route: Notion Docs, prefix: x_}]",
            "servers[1].prefix",
            "same name",
        ),
        (
            "[{route: sqlite, prefix: 'a b'}]",
            "servers[0].prefix",
            "A-Z",
        ),
        (
            "[{route: sqlite, timeout: 0s}]",
            "servers[0].timeout",
            "more than 0s",
        ),
    ];
    for (servers, path, message) in cases {
        let err = parse_err(&aggregate_config(servers));
        assert!(
            err.path.ends_with(path) && err.message.contains(message),
            "{servers}: {err}"
        );
    }
    // An aggregate with an upstream, or with server options of its own.
    let with_to = aggregate_config("[sqlite]").replace(
        "    path: /tools\n",
        "    path: /tools\n    to: http://x:1\n",
    );
    assert!(
        parse_err(&with_to)
            .message
            .contains("no upstream of its own")
    );
    let with_server = aggregate_config("[sqlite]")
        .replace("      aggregate:\n", "      server: {}\n      aggregate:\n");
    assert!(
        parse_err(&with_server)
            .to_string()
            .contains("no upstream of its own")
    );
    // Any other route still needs `to`.
    let without_to = aggregate_config("[sqlite]").replace("    to: http://web:3000\n", "");
    assert!(
        parse_err(&without_to)
            .message
            .contains("at least one upstream URL")
    );
}
