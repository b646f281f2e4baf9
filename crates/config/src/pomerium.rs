//! Pomerium's configuration keys that Postern does not implement. Pomerium warns on keys it does
//! not know, so its configurations carry many; Postern refuses keys that are nobody's (a typo
//! must not silently do nothing), and for Pomerium's own it says what it does instead:
//!
//! - [`Unsupported::Ignored`]: ignoring the key cannot let more requests through or expose
//!   more (it tunes something Postern does its own way, or turns on something Postern then
//!   refuses): a warning, and the key is dropped;
//! - [`Unsupported::Refused`]: ignoring it could widen access or send traffic somewhere the
//!   operator did not intend (a restriction, a matcher, a client-certificate requirement): an
//!   error that says so.
//!
//! The tables name Pomerium's keys (config/options.go, config/policy.go) that a Postern
//! configuration may meet; keys Postern implements are not listed.

use yaml_serde::{Mapping, Value};

use crate::ConfigError;

/// What Postern does with a Pomerium key it does not implement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsupported {
    /// Dropped with a warning; the text says what Postern does instead.
    Ignored(&'static str),
    /// Refused; the text says what ignoring it could let through.
    Refused(&'static str),
}

use Unsupported::{Ignored, Refused};

const SPLIT_SERVICES: Unsupported =
    Ignored("Postern runs as one process (authenticate, authorize, proxy and the store together)");
const TELEMETRY: Unsupported =
    Ignored("Postern logs to standard output and serves Prometheus metrics at metrics_address");
const ENVOY: Unsupported =
    Ignored("Postern is not built on Envoy; its proxy has its own connection handling");

/// Top-level keys.
pub(crate) const TOP_LEVEL: &[(&str, Unsupported)] = &[
    ("installation_id", TELEMETRY),
    ("pomerium_debug", TELEMETRY),
    ("proxy_log_level", TELEMETRY),
    (
        "access_log_fields",
        Ignored(
            "Postern's access log has fixed fields (method, route, status, bytes, duration, request id)",
        ),
    ),
    ("services", SPLIT_SERVICES),
    ("authenticate_internal_service_url", SPLIT_SERVICES),
    ("authorize_service_url", SPLIT_SERVICES),
    ("authorize_service_urls", SPLIT_SERVICES),
    ("authorize_internal_service_url", SPLIT_SERVICES),
    ("databroker_service_url", SPLIT_SERVICES),
    ("databroker_service_urls", SPLIT_SERVICES),
    ("databroker_internal_service_url", SPLIT_SERVICES),
    ("grpc_address", SPLIT_SERVICES),
    ("grpc_insecure", SPLIT_SERVICES),
    ("grpc_client_timeout", SPLIT_SERVICES),
    ("tls_derive", SPLIT_SERVICES),
    ("override_certificate_name", SPLIT_SERVICES),
    ("certificate_authority", SPLIT_SERVICES),
    ("certificate_authority_file", SPLIT_SERVICES),
    (
        "authenticate_callback_path",
        Ignored(
            "Postern's identity provider callback is /.pomerium/callback on the host the sign-in started from: register that redirect URI at the provider",
        ),
    ),
    (
        "signout_redirect_url",
        Ignored(
            "after sign-out Postern shows its own signed-out page, or goes to the sign-out request's redirect_uri on this host",
        ),
    ),
    ("dns_lookup_family", ENVOY),
    ("codec_type", ENVOY),
    ("skip_xff_append", ENVOY),
    (
        "use_proxy_protocol",
        Ignored(
            "Postern does not read the PROXY protocol: put it behind a load balancer that sends X-Forwarded-For and set xff_num_trusted_hops",
        ),
    ),
    ("tracing_provider", TELEMETRY),
    ("tracing_sample_rate", TELEMETRY),
    ("tracing_otlp_endpoint", TELEMETRY),
    ("tracing_otlp_protocol", TELEMETRY),
    ("tracing_datadog_address", TELEMETRY),
    ("tracing_jaeger_collector_endpoint", TELEMETRY),
    ("tracing_jaeger_agent_endpoint", TELEMETRY),
    ("tracing_zipkin_endpoint", TELEMETRY),
    (
        "autocert_use_staging",
        Ignored("set autocert_ca to the staging directory URL instead"),
    ),
    (
        "autocert_must_staple",
        Ignored("Postern's ACME certificates do not ask for OCSP must-staple"),
    ),
    (
        "autocert_eab_key_id",
        Ignored("Postern's ACME account does not use external account binding"),
    ),
    (
        "autocert_eab_mac_key",
        Ignored("Postern's ACME account does not use external account binding"),
    ),
    (
        "idp_service_account",
        Ignored(
            "Postern reads groups at sign-in from the ID token's groups claim (idp_groups_claim), or with github from the user's teams, not the provider's directory API",
        ),
    ),
    (
        "idp_refresh_directory_interval",
        Ignored("Postern reads groups from the ID token at sign-in"),
    ),
    (
        "idp_refresh_directory_timeout",
        Ignored("Postern reads groups from the ID token at sign-in"),
    ),
    (
        "idp_access_token_allowed_audiences",
        Ignored(
            "Postern does not accept identity provider access tokens as bearer tokens (only its own TEs)",
        ),
    ),
    (
        "bearer_token_format",
        Ignored("Postern accepts only its own TEs as bearer tokens"),
    ),
    (
        "google_cloud_serverless_authentication_service_account",
        Ignored("Postern does not mint Google Cloud serverless identity tokens"),
    ),
    ("envoy_admin_address", ENVOY),
    ("envoy_admin_access_log_path", ENVOY),
    ("envoy_admin_profile_path", ENVOY),
    ("envoy_bind_config_source_address", ENVOY),
    ("envoy_bind_config_freebind", ENVOY),
    (
        "programmatic_redirect_domain_whitelist",
        Ignored("Postern's sign-in returns only to this host or an MCP client app's own host"),
    ),
    (
        "metrics_basic_auth",
        Refused(
            "it protects the metrics listener: Postern's metrics_address has no authentication, so bind it to a private address and remove this key",
        ),
    ),
    (
        "metrics_client_ca",
        Refused(
            "it protects the metrics listener with client certificates, which Postern does not check: bind metrics_address to a private address and remove this key",
        ),
    ),
    (
        "metrics_client_ca_file",
        Refused(
            "it protects the metrics listener with client certificates, which Postern does not check: bind metrics_address to a private address and remove this key",
        ),
    ),
    (
        "metrics_certificate",
        Refused(
            "Postern's metrics listener is plain HTTP: bind metrics_address to a private address and remove this key",
        ),
    ),
    (
        "metrics_certificate_key",
        Refused(
            "Postern's metrics listener is plain HTTP: bind metrics_address to a private address and remove this key",
        ),
    ),
    (
        "metrics_certificate_file",
        Refused(
            "Postern's metrics listener is plain HTTP: bind metrics_address to a private address and remove this key",
        ),
    ),
    (
        "metrics_certificate_key_file",
        Refused(
            "Postern's metrics listener is plain HTTP: bind metrics_address to a private address and remove this key",
        ),
    ),
    (
        "certificate",
        Refused(
            "inline certificates are not read: give the files with certificate_file and certificate_key_file",
        ),
    ),
    (
        "certificate_key",
        Refused(
            "inline certificates are not read: give the files with certificate_file and certificate_key_file",
        ),
    ),
    (
        "idp_request_params",
        Refused(
            "request parameters such as Google's hd restrict who can sign in at the provider: express the restriction in the routes' policy (e.g. email ends_with) and remove this key",
        ),
    ),
    (
        "remove_request_headers",
        Refused("headers it removes would reach the upstreams"),
    ),
    (
        "policy_file",
        Refused("the routes in it would be missing: put them under routes:"),
    ),
];

/// Route keys.
pub(crate) const ROUTE: &[(&str, Unsupported)] = &[
    (
        "tls_downstream_server_name",
        Ignored("the route is matched by the request's host"),
    ),
    (
        "tls_custom_ca",
        Ignored("upstream certificates are checked against the system's trusted CAs"),
    ),
    (
        "tls_client_cert",
        Ignored("Postern presents no client certificate to upstreams"),
    ),
    (
        "tls_client_key",
        Ignored("Postern presents no client certificate to upstreams"),
    ),
    (
        "tls_client_cert_file",
        Ignored("Postern presents no client certificate to upstreams"),
    ),
    (
        "tls_client_key_file",
        Ignored("Postern presents no client certificate to upstreams"),
    ),
    (
        "tls_upstream_allow_renegotiation",
        Ignored("Postern's TLS never renegotiates"),
    ),
    (
        "rewrite_response_headers",
        Ignored("upstream responses pass through as they are"),
    ),
    (
        "bearer_token_format",
        Ignored("Postern accepts only its own TEs as bearer tokens"),
    ),
    (
        "idp_access_token_allowed_audiences",
        Ignored("Postern does not accept identity provider access tokens as bearer tokens"),
    ),
    (
        "kubernetes_service_account_token",
        Ignored("Postern sends no Kubernetes service account token"),
    ),
    (
        "kubernetes_service_account_token_file",
        Ignored("Postern sends no Kubernetes service account token"),
    ),
    (
        "enable_google_cloud_serverless_authentication",
        Ignored("Postern does not mint Google Cloud serverless identity tokens"),
    ),
    (
        "load_balancing_policy",
        Ignored("several to URLs are used round robin, skipping ones that refuse connections"),
    ),
    ("lb_config", Ignored("several to URLs are used round robin")),
    (
        "health_checks",
        Ignored("an upstream that refuses connections is skipped for a while"),
    ),
    (
        "outlier_detection",
        Ignored("an upstream that refuses connections is skipped for a while"),
    ),
    ("circuit_breaker_thresholds", ENVOY),
    ("healthy_panic_threshold", ENVOY),
    ("envoy_opts", ENVOY),
    (
        "show_error_details",
        Ignored("Postern's error responses always say what went wrong"),
    ),
    (
        "depends_on",
        Ignored("Postern does not check other hosts before signing in"),
    ),
    (
        "host_rewrite_header",
        Refused("the upstream would get another Host header than intended"),
    ),
    (
        "host_path_regex_rewrite_pattern",
        Refused("the upstream would get another Host header than intended"),
    ),
    (
        "host_path_regex_rewrite_substitution",
        Refused("the upstream would get another Host header than intended"),
    ),
    (
        "redirect",
        Refused("a redirect route would become a proxy route"),
    ),
    (
        "response",
        Refused("a direct-response route would become a proxy route"),
    ),
    (
        "allowed_groups",
        Refused("it restricts who may use the route: write it as a groups criterion in policy"),
    ),
    (
        "tls_downstream_client_ca",
        Refused(
            "it requires client certificates from its own CA on this route, and Postern has one client CA for the listener: put the CA in downstream_mtls.ca_file and pin this route's certificates with a client_certificate criterion",
        ),
    ),
    (
        "tls_downstream_client_ca_file",
        Refused(
            "it requires client certificates from its own CA on this route, and Postern has one client CA for the listener: put the CA in downstream_mtls.ca_file and pin this route's certificates with a client_certificate criterion",
        ),
    ),
    (
        "idp_client_id",
        Refused(
            "a per-route identity provider decides who can sign in to the route: Postern has one identity provider",
        ),
    ),
    (
        "idp_client_secret",
        Refused(
            "a per-route identity provider decides who can sign in to the route: Postern has one identity provider",
        ),
    ),
    (
        "upstream_tunnel",
        Refused("the route's traffic would go straight to to instead of through the tunnel"),
    ),
];

/// What screening found: warnings to show, or the first refused key.
#[derive(Debug, Default)]
pub(crate) struct Screened {
    /// `path: message` for every ignored key.
    pub warnings: Vec<String>,
}

/// Drops the Pomerium keys Postern ignores from `config` (each with a warning) and refuses the
/// ones it must not ignore. Keys that are nobody's are left for the parser to refuse.
pub(crate) fn screen(config: &mut Value) -> Result<Screened, ConfigError> {
    let mut screened = Screened::default();
    let Some(top) = config.as_mapping_mut() else {
        return Ok(screened);
    };
    screen_map(top, TOP_LEVEL, "", &mut screened)?;
    for list in ["routes", "policy"] {
        let Some(routes) = top.get_mut(list).and_then(Value::as_sequence_mut) else {
            continue;
        };
        for (i, route) in routes.iter_mut().enumerate() {
            if let Some(route) = route.as_mapping_mut() {
                screen_map(route, ROUTE, &format!("{list}[{i}]."), &mut screened)?;
            }
        }
    }
    Ok(screened)
}

fn screen_map(
    map: &mut Mapping,
    table: &[(&str, Unsupported)],
    prefix: &str,
    screened: &mut Screened,
) -> Result<(), ConfigError> {
    for (key, what) in table {
        if !map.contains_key(*key) {
            continue;
        }
        let path = format!("{prefix}{key}");
        match what {
            Ignored(instead) => {
                map.remove(*key);
                screened.warnings.push(format!(
                    "{path}: Pomerium key `{key}` is not supported by Postern and is ignored: {instead}"
                ));
            }
            Refused(why) => {
                return Err(ConfigError::at(
                    path,
                    format!(
                        "Pomerium key `{key}` is not supported by Postern, and it is not ignored because {why}"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The known key closest to `unknown`, if it is a likely typo (at most two edits, and fewer
/// than a third of the key).
pub(crate) fn closest<'a>(
    unknown: &str,
    known: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (edit_distance(unknown, k), k))
        .filter(|(d, k)| *d <= 2 && *d * 3 < k.len().max(unknown.len()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance (keys are short ASCII; no library needed for that).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_key_is_both_ignored_and_refused_or_listed_twice() {
        for table in [TOP_LEVEL, ROUTE] {
            let mut keys: Vec<&str> = table.iter().map(|(k, _)| *k).collect();
            keys.sort_unstable();
            let before = keys.len();
            keys.dedup();
            assert_eq!(keys.len(), before, "a key is listed twice");
        }
    }

    #[test]
    fn typos_are_matched_to_the_closest_key() {
        let keys = ["insecure_server", "address", "routes", "prefix", "path"];
        assert_eq!(closest("insecure_sever", keys), Some("insecure_server"));
        assert_eq!(closest("prefixx", keys), Some("prefix"));
        assert_eq!(closest("adress", keys), Some("address"));
        assert_eq!(closest("pth", keys), Some("path"));
        assert_eq!(closest("completely_else", keys), None);
        assert_eq!(closest("to", keys), None, "short keys need a close match");
    }
}
