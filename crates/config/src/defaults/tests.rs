use std::collections::HashMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn config(yaml: &str) -> Config {
    crate::parse(yaml, Path::new("."), &HashMap::new()).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

/// For each case, a plain-HTTP configuration with the case's top-level keys (and one route):
/// `get` gives the expected value.
fn check<T: PartialEq + Debug>(get: impl Fn(&Config) -> T, cases: &[(&str, T)]) {
    for (keys, expected) in cases {
        let config = config(&format!(
            "insecure_server: true\n{keys}\nroutes:\n  - {{from: http://localhost, to: http://up:1}}\n"
        ));
        assert_eq!(&get(&config), expected, "with {keys:?}");
    }
}

/// For each case, a plain-HTTP configuration with the case's top-level keys and one route with
/// the case's route keys: `get` gives the expected value.
fn check_route<T: PartialEq + Debug>(
    get: impl Fn(&Route, &Config) -> T,
    cases: &[(&str, &str, T)],
) {
    for (global, keys, expected) in cases {
        let config = config(&format!(
            "insecure_server: true\n{global}\nroutes:\n  - {{from: http://localhost, to: http://up:1, {keys}}}\n"
        ));
        let at = format!("with {global:?} and route {{{keys}}}");
        assert_eq!(&get(&config.routes[0], &config), expected, "{at}");
    }
}

#[test]
fn durations() {
    check(
        Config::cookie_expire,
        &[("", secs(14 * 3600)), ("cookie_expire: 2h", secs(7200))],
    );
    check(
        Config::upstream_timeout,
        &[("", secs(30)), ("default_upstream_timeout: 5s", secs(5))],
    );
    check(
        Config::mcp_access_token_ttl,
        &[
            ("", secs(3600)),
            ("mcp_access_token_ttl: 10m", secs(600)),
            ("mcp_access_token_ttl: 1m", MCP_ACCESS_TOKEN_TTL_MIN),
            ("mcp_access_token_ttl: 24h", MCP_ACCESS_TOKEN_TTL_MAX),
        ],
    );
}

#[test]
fn names_and_addresses() {
    check(
        |c| c.cookie_name().to_owned(),
        &[
            ("", "_postern".into()),
            ("cookie_name: _sso", "_sso".into()),
        ],
    );
    check(
        |c| c.idp_groups_claim().to_owned(),
        &[
            ("", "groups".into()),
            ("idp_groups_claim: roles", "roles".into()),
        ],
    );
    check(
        |c| c.idp_scopes().join(" "),
        &[
            ("", "openid profile email".into()),
            ("idp_scopes: [openid, email]", "openid email".into()),
        ],
    );
    check(
        |c| c.log_level().to_owned(),
        &[("", "info".into()), ("log_level: debug", "debug".into())],
    );
    check(
        |c| c.autocert_ca().to_owned(),
        &[
            ("", "https://acme-v02.api.letsencrypt.org/directory".into()),
            ("autocert_ca: https://ca.test/d", "https://ca.test/d".into()),
        ],
    );
    check(
        Config::listen_address,
        &[
            ("", ":8080".into()),
            ("address: 127.0.0.1:9", "127.0.0.1:9".into()),
        ],
    );
}

#[test]
fn switches_and_numbers() {
    check(
        Config::pass_identity_headers,
        &[("", false), ("pass_identity_headers: true", true)],
    );
    check(
        Config::mcp_dynamic_client_registration,
        &[
            ("", true),
            ("mcp_dynamic_client_registration: false", false),
            (
                "runtime_flags: {mcp_dynamic_client_registration: false}",
                false,
            ),
            (
                "mcp_dynamic_client_registration: true\nruntime_flags: {mcp_dynamic_client_registration: false}",
                true,
            ),
        ],
    );
    check(
        Config::jwt_issuer_format,
        &[
            ("", IssuerFormat::HostOnly),
            ("jwt_issuer_format: uri", IssuerFormat::Uri),
        ],
    );
    check(
        Config::storage_type,
        &[
            ("", StorageType::Sqlite),
            ("databroker_storage_type: memory", StorageType::Memory),
        ],
    );
    check(
        Config::max_connections,
        &[("", 10_000), ("max_connections: 5", 5)],
    );
}

#[test]
fn paths_in_the_data_directory() {
    check(
        Config::data_dir,
        &[
            ("", "postern-data".into()),
            ("data_dir: /d", PathBuf::from("/d")),
        ],
    );
    check(
        Config::autocert_dir,
        &[
            ("", "postern-data/autocert".into()),
            ("data_dir: /d", "/d/autocert".into()),
            (
                "data_dir: /d\nautocert_dir: /certs",
                PathBuf::from("/certs"),
            ),
        ],
    );
    check(
        Config::audit_file,
        &[
            ("", "postern-data/audit.jsonl".into()),
            ("data_dir: /d", PathBuf::from("/d/audit.jsonl")),
        ],
    );
}

#[test]
fn the_redirect_listener_is_on_port_80_with_tls_only() {
    let cases = [
        ("autocert: true", ":443", Some(":80")),
        (
            "autocert: true\nhttp_redirect_address: ':81'",
            ":443",
            Some(":81"),
        ),
        ("autocert: true\nhttp_redirect_address: ''", ":443", None),
        (
            "insecure_server: true\nhttp_redirect_address: ':81'",
            ":8080",
            None,
        ),
    ];
    for (keys, listen, redirect) in cases {
        let config = config(&format!(
            "{keys}\nroutes:\n  - {{from: https://mcp.example.com, to: http://up:1}}\n"
        ));
        assert_eq!(config.listen_address(), listen, "{keys}");
        assert_eq!(config.http_redirect_address(), redirect, "{keys}");
    }
}

#[test]
fn cookies_are_secure_except_on_plain_http_localhost() {
    let cases = [
        ("insecure_server: true", "http://localhost", false),
        ("insecure_server: true", "http://127.0.0.1", false),
        ("insecure_server: true", "http://mcp.example.com", true),
        ("autocert: true", "https://localhost", true),
        ("autocert: true", "https://mcp.example.com", true),
    ];
    for (keys, from, secure) in cases {
        let config = config(&format!(
            "{keys}\nroutes:\n  - {{from: {from}, to: http://up:1}}\n"
        ));
        assert_eq!(config.cookie_secure(), secure, "{keys}, {from}");
    }
}

#[test]
fn route_timeouts() {
    check_route(
        |r, _| r.idle_timeout_in_effect(),
        &[
            ("", "", Some(IDLE_TIMEOUT)),
            ("", "mcp: {}", None),
            ("", "mcp: {client: {}}", Some(secs(300))),
            ("", "idle_timeout: 0", None),
            ("", "idle_timeout: 1m, mcp: {}", Some(secs(60))),
        ],
    );
    check_route(
        Route::timeout_in_effect,
        &[
            ("", "", secs(30)),
            ("default_upstream_timeout: 5s", "", secs(5)),
            ("default_upstream_timeout: 5s", "timeout: 7s", secs(7)),
        ],
    );
}

#[test]
fn route_limits_and_assertion() {
    check_route(
        |r, _| r.max_request_bytes_in_effect(),
        &[
            ("", "", u64::MAX),
            ("", "mcp: {}", 1024 * 1024),
            ("", "mcp: {client: {}}", u64::MAX),
            ("", "mcp: {server: {max_request_bytes: 10}}", 10),
        ],
    );
    check_route(
        Route::pass_identity_headers_in_effect,
        &[
            ("", "", false),
            ("pass_identity_headers: true", "", true),
            (
                "pass_identity_headers: true",
                "pass_identity_headers: false",
                false,
            ),
            ("", "pass_identity_headers: true", true),
        ],
    );
}

#[test]
fn token_endpoint_auth_style() {
    let endpoint = |style: &str| {
        let config = config(&format!(
            "insecure_server: true\nroutes:\n  - from: http://localhost\n    to: http://up:1\n    mcp:\n      upstream_oauth2:\n        client_id: c\n        endpoint: {{auth_url: 'https://as.test/a', token_url: 'https://as.test/t'{style}}}\n"
        ));
        let Some(Mcp::Server(server)) = &config.routes[0].mcp else {
            panic!("an MCP server route")
        };
        server
            .upstream_oauth2
            .as_ref()
            .unwrap()
            .endpoint
            .clone()
            .unwrap()
    };
    assert_eq!(endpoint("").auth_style(), AuthStyle::Header);
    assert_eq!(
        endpoint(", auth_style: params").auth_style(),
        AuthStyle::Params
    );
}
