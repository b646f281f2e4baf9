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
