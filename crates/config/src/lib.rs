//! The gateway's configuration: a YAML file in the seed's and Pomerium's vocabulary.
//!
//! [`load`] reads, parses and validates it. Every error names the key's path and, where the
//! parser knows it, the line: `routes[1].mcp.server.upstream_oauth2.endpoint.token_url: required
//! (line 12)`. Unknown keys are errors. Secrets may be given inline, as `${ENV_VAR}`, through a
//! `*_file` key, or (global ones) through the upper-case environment variable of their key
//! (`SHARED_SECRET`); they print as `[redacted]`.
#![forbid(unsafe_code)]

pub mod defaults;
mod mtls;
mod path_regex;
mod pomerium;
mod types;
mod values;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Secrets in the configuration are the protocol core's [`postern_oauth::Secret`]: `Debug`
/// redacted, no `Display`.
pub use path_regex::{PathRegex, PathRewrite, RewritePattern};
pub use postern_oauth::Secret;
pub use types::*;
pub use values::{FromUrl, GoDuration, PolicyDocument, ToUrl, origin_of};

/// A source of environment variables (tests pass a map).
pub trait Env {
    /// The value of `key`, if set.
    fn var(&self, key: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

/// A configuration error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{path}: {message}{}", file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default(), line.map(|l| format!(" (line {l})")).unwrap_or_default())]
pub struct ConfigError {
    /// The file, when loaded from one.
    pub file: Option<PathBuf>,
    /// The key's path, e.g. `routes[1].to`.
    pub path: String,
    /// The line, when known.
    pub line: Option<usize>,
    /// What is wrong and what to do.
    pub message: String,
}

impl ConfigError {
    fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: None,
            path: path.into(),
            line: None,
            message: message.into(),
        }
    }
}

/// Reads and validates the configuration file at `path`. Relative `*_file` paths are relative
/// to the file's directory.
pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: Some(path.to_owned()),
        path: "(file)".into(),
        line: None,
        message: format!("cannot read the configuration: {e}"),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base, env).map_err(|mut e| {
        e.file = Some(path.to_owned());
        e
    })
}

/// Parses and validates configuration text.
///
/// Pomerium keys Postern does not implement are screened first ([`pomerium`]): ignored with a
/// warning in [`Config::warnings`], or refused when ignoring them could widen access. A file
/// without any is parsed from its text, so errors name their line; one with some is parsed from
/// the screened document, and errors name the key's path only.
pub fn parse(text: &str, base_dir: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
    let mut document: yaml_serde::Value = match yaml_serde::from_str(text) {
        Ok(document) => document,
        Err(error) => return Err(yaml_error(&error)),
    };
    let screened = pomerium::screen(&mut document)?;
    let parsed = if screened.warnings.is_empty() {
        serde_path_to_error::deserialize(yaml_serde::Deserializer::from_str(text))
            .map_err(|e| parse_error(e.path(), e.inner()))
    } else {
        serde_path_to_error::deserialize(document).map_err(|e| parse_error(e.path(), e.inner()))
    };
    let mut config: Config = parsed?;
    config.warnings = screened.warnings;
    resolve_secrets(&mut config, base_dir, env)?;
    resolve_route_files(&mut config, base_dir)?;
    mtls::resolve(&mut config, base_dir)?;
    validate(&config)?;
    assertion_headers(&mut config);
    default_upstream_resources(&mut config);
    let advice = advice(&config);
    config.warnings.extend(advice);
    Ok(config)
}

/// `set_request_headers: {X-Pomerium-Jwt-Assertion: ${pomerium.jwt}}`, as Pomerium's own
/// configurations write it: the header the gateway sends with `pass_identity_headers`.
fn passes_assertion(name: &str, value: &str) -> bool {
    name.eq_ignore_ascii_case("x-pomerium-jwt-assertion") && value.trim() == "${pomerium.jwt}"
}

/// Turns each route's `X-Pomerium-Jwt-Assertion: ${pomerium.jwt}` into
/// `pass_identity_headers: true` (validation refused the pair with `false`).
fn assertion_headers(config: &mut Config) {
    for route in &mut config.routes {
        let before = route.set_request_headers.len();
        route
            .set_request_headers
            .retain(|name, value| !passes_assertion(name, value));
        if route.set_request_headers.len() != before {
            route.pass_identity_headers = Some(true);
        }
    }
}

/// A static `upstream_oauth2` without `resource` asks for the TI for the route's upstream (the
/// MCP server's URL; a root URL without its trailing slash); `resource: ""` asks for none.
fn default_upstream_resources(config: &mut Config) {
    for route in &mut config.routes {
        let upstream = route.to.to_vec().into_iter().next();
        let Some(Mcp::Server(server)) = &mut route.mcp else {
            continue;
        };
        let Some(oauth) = server.upstream_oauth2.as_mut() else {
            continue;
        };
        if oauth.endpoint.is_none() {
            continue;
        }
        oauth.resource = match oauth.resource.take() {
            Some(explicit) if explicit.is_empty() => None,
            Some(explicit) => Some(explicit),
            None => upstream.map(|to| {
                let url = to.0.as_str();
                if to.0.path() == "/" && to.0.query().is_none() {
                    url.trim_end_matches('/').to_owned()
                } else {
                    url.to_owned()
                }
            }),
        };
    }
}

/// Values that load but will likely not do what was meant.
fn advice(config: &Config) -> Vec<String> {
    let mut advice = Vec::new();
    if config.cookie_http_only == Some(false) {
        advice.push(
            "cookie_http_only: false is ignored: Postern's cookies are always HttpOnly, so no script can read the session (remove the key)".to_owned(),
        );
    }
    if let Some(limit) = config.write_timeout() {
        let streams: Vec<String> = config
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                matches!(r.mcp, Some(Mcp::Server(_))) || r.allow_websockets || r.allow_spdy
            })
            .map(|(i, _)| format!("routes[{i}]"))
            .collect();
        if !streams.is_empty() {
            advice.push(format!(
                "timeout_write: {limit:?} also ends the long-lived streams of {}: MCP SSE streams and WebSockets are cut after it; leave timeout_write unset (or 0) on a gateway that serves them",
                streams.join(", ")
            ));
        }
    }
    for (i, field) in config.authorize_log_fields.iter().flatten().enumerate() {
        if let AuthorizeLogField::Unavailable { name, why } = field {
            advice.push(format!(
                "authorize_log_fields[{i}]: `{name}` is left out of the audit record: {why}"
            ));
        }
    }
    for (i, route) in config.routes.iter().enumerate() {
        for (key, on) in [
            ("allow_websockets", route.allow_websockets),
            ("allow_spdy", route.allow_spdy),
        ] {
            if on && matches!(route.mcp, Some(Mcp::Server(_))) {
                // Pomerium's MCP examples carry it; refusing the file would break the move.
                advice.push(format!(
                    "routes[{i}].{key}: has no effect on an MCP server route, which speaks Streamable HTTP (POST, GET, DELETE): upgrades to it are refused; remove the key"
                ));
            }
        }
        if route.regex_priority_order.is_some() && route.regex.is_none() {
            advice.push(format!(
                "routes[{i}].regex_priority_order: has no effect without regex (it orders regex routes only)"
            ));
        }
        if let Some(Mcp::Server(server)) = &route.mcp
            && let Some(limit) = server.max_request_bytes
            && limit < SMALL_REQUEST_LIMIT
        {
            advice.push(format!(
                "routes[{i}].mcp.server.max_request_bytes: {limit} bytes will refuse ordinary tool calls larger than that (413): Postern reads the whole request to check which tool it calls and refuses what does not fit (in Pomerium this value was only an inspection buffer); leave it unset for {} KiB",
                defaults::MAX_REQUEST_BYTES / 1024
            ));
        }
    }
    advice
}

/// Below this, `max_request_bytes` refuses tool calls with ordinary arguments.
const SMALL_REQUEST_LIMIT: u64 = 64 * 1024;

/// For serde's "unknown field `x`, expected one of `a`, `b`", a " (did you mean `a`?)" when one
/// of the expected keys is a likely typo of `x`.
fn did_you_mean(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, expected) = rest.split_once('`')?;
    let known = expected.split('`').skip(1).step_by(2);
    pomerium::closest(unknown, known).map(|key| format!(" (did you mean `{key}`?)"))
}

/// A document that is not YAML at all.
fn yaml_error(error: &yaml_serde::Error) -> ConfigError {
    let mut message = error.to_string();
    if let Some(i) = message.find(" at line ") {
        message.truncate(i);
    }
    ConfigError {
        file: None,
        path: "(file)".into(),
        line: error.location().map(|l| l.line()),
        message: format!("not valid YAML: {message}"),
    }
}

fn parse_error(at: &serde_path_to_error::Path, inner: &yaml_serde::Error) -> ConfigError {
    let mut path = at.to_string();
    let line = inner.location().map(|l| l.line());
    let mut message = inner.to_string();
    // yaml_serde appends " at line L column C"; the line is reported on its own.
    if let Some(i) = message.find(" at line ") {
        message.truncate(i);
    }
    // ...and may prefix its own rendering of the path.
    if let Some((prefix, rest)) = message.split_once(": ")
        && !prefix.contains(' ')
        && (prefix.contains('.') || prefix.contains('[') || path.starts_with(prefix))
    {
        message = rest.to_owned();
    }
    if path == "." {
        path = "(top level)".into();
    }
    // serde reports a missing field at its parent: name the field itself.
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|m| m.strip_suffix('`'))
    {
        path = if path == "(top level)" {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        };
        message = "required".into();
    }
    if message.starts_with("data did not match any variant of untagged enum OneOrMany") {
        message = "expected a URL or a list of URLs".into();
    }
    if let Some(hint) = did_you_mean(&message)
        && let Some(end) = message.find("`, expected")
    {
        message.insert_str(end + 1, &hint);
    }
    ConfigError {
        file: None,
        path,
        line,
        message,
    }
}

/// Makes routes' `tls_custom_ca_file` paths absolute and checks that each holds certificates.
fn resolve_route_files(config: &mut Config, base: &Path) -> Result<(), ConfigError> {
    for (i, route) in config.routes.iter_mut().enumerate() {
        let Some(file) = &mut route.tls_custom_ca_file else {
            continue;
        };
        *file = base.join(&*file);
        let at = format!("routes[{i}].tls_custom_ca_file");
        let text = std::fs::read_to_string(&*file)
            .map_err(|e| ConfigError::at(&at, format!("cannot read {}: {e}", file.display())))?;
        if !text.contains("-----BEGIN CERTIFICATE-----") {
            return Err(ConfigError::at(
                &at,
                format!("{} holds no PEM certificate", file.display()),
            ));
        }
    }
    Ok(())
}

/// Fills secrets from `${ENV}`, `*_file` keys and upper-case environment variables.
fn resolve_secrets(config: &mut Config, base: &Path, env: &dyn Env) -> Result<(), ConfigError> {
    let globals = [
        (
            "shared_secret",
            &mut config.shared_secret,
            &config.shared_secret_file,
        ),
        (
            "cookie_secret",
            &mut config.cookie_secret,
            &config.cookie_secret_file,
        ),
        (
            "signing_key",
            &mut config.signing_key,
            &config.signing_key_file,
        ),
        (
            "idp_client_secret",
            &mut config.idp_client_secret,
            &config.idp_client_secret_file,
        ),
        (
            "databroker_storage_connection_string",
            &mut config.databroker_storage_connection_string,
            &config.databroker_storage_connection_string_file,
        ),
    ];
    for (key, inline, file) in globals {
        resolve_secret(key, inline, file, base, env, true)?;
    }
    for (i, route) in config.routes.iter_mut().enumerate() {
        if let Some(Mcp::Server(server)) = &mut route.mcp
            && let Some(oauth) = &mut server.upstream_oauth2
        {
            let key = format!("routes[{i}].mcp.server.upstream_oauth2.client_secret");
            let file = &oauth.client_secret_file;
            resolve_secret(&key, &mut oauth.client_secret, file, base, env, false)?;
        }
    }
    Ok(())
}

/// Fills one secret: from its `*_file` key, from the `${ENV}` it names, or (with
/// `env_fallback`) from the upper-case environment variable of its key.
fn resolve_secret(
    key: &str,
    inline: &mut Option<Secret>,
    file: &Option<PathBuf>,
    base: &Path,
    env: &dyn Env,
    env_fallback: bool,
) -> Result<(), ConfigError> {
    if let (Some(_), Some(_)) = (&inline, file) {
        return Err(ConfigError::at(
            key,
            format!("set either {key} or {key}_file, not both"),
        ));
    }
    if let Some(path) = file {
        let path = base.join(path);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            ConfigError::at(
                format!("{key}_file"),
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        *inline = Some(Secret::new(text.trim_end_matches(['\n', '\r'])));
    } else if let Some(secret) = inline {
        if let Some(var) = secret
            .expose()
            .strip_prefix("${")
            .and_then(|s| s.strip_suffix('}'))
        {
            let value = env_secret(env, var, key)?.ok_or_else(|| {
                ConfigError::at(
                    key,
                    format!("refers to the environment variable {var}, which is not set (nor {var}_FILE)"),
                )
            })?;
            *secret = Secret::new(value);
        }
    } else if env_fallback {
        let var = key.to_ascii_uppercase();
        if let Some(value) = env_secret(env, &var, key)? {
            *inline = Some(Secret::new(value));
        }
    }
    Ok(())
}

/// The environment variable `var`, or else the contents of the file `{var}_FILE` names (the
/// Docker secrets convention: `/run/secrets/...`), without a final newline.
fn env_secret(env: &dyn Env, var: &str, key: &str) -> Result<Option<String>, ConfigError> {
    if let Some(value) = env.var(var).filter(|v| !v.is_empty()) {
        return Ok(Some(value));
    }
    let file_var = format!("{var}_FILE");
    let Some(path) = env.var(&file_var).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        ConfigError::at(
            key,
            format!("{file_var} names {path}, which cannot be read: {e}"),
        )
    })?;
    Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()))
}

/// Checks that need more than one key.
fn validate(config: &Config) -> Result<(), ConfigError> {
    validate_tls(config)?;
    validate_authenticate_service(config)?;
    validate_cookie(config)?;
    validate_storage(config)?;
    validate_shared_secret(config)?;
    validate_idp(config)?;
    validate_logging_and_tokens(config)?;
    validate_claim_headers(config)?;
    if let Some(headers) = &config.set_response_headers {
        validate_response_headers(headers, true, &|key| key.to_owned())?;
    }
    mtls::validate(config)?;
    for (i, route) in config.routes.iter().enumerate() {
        validate_route(config, i, route)?;
    }
    validate_route_ids(config)?;
    for (i, route) in config.routes.iter().enumerate() {
        if matches!(&route.mcp, Some(Mcp::Server(s)) if s.aggregate.is_some()) {
            aggregate_members(config, i)?;
        }
    }
    Ok(())
}

/// One member of an aggregate route, resolved.
#[derive(Clone, Debug)]
pub struct ResolvedMember {
    /// The member route's index in `routes`.
    pub route: usize,
    /// Its tool/prompt-name prefix (and resource-URI prefix).
    pub prefix: String,
    /// How long each call to it may take.
    pub timeout: std::time::Duration,
}

/// The members of the aggregate route `routes[index]`, resolved and checked: each names an MCP
/// server route of this configuration (by `id`, else `name`) that is not itself an aggregate,
/// at most once, and no member's prefix begins another's (else a name could belong to two
/// members: `""` next to `docs_`, or two `sqlite_`).
pub fn aggregate_members(
    config: &Config,
    index: usize,
) -> Result<Vec<ResolvedMember>, ConfigError> {
    let Some(Some(Mcp::Server(McpServer {
        aggregate: Some(aggregate),
        ..
    }))) = config.routes.get(index).map(|r| &r.mcp)
    else {
        return Ok(Vec::new());
    };
    let at = |j: usize, key: &str| format!("routes[{index}].mcp.aggregate.servers[{j}]{key}");
    if aggregate.servers.is_empty() {
        return Err(ConfigError::at(
            format!("routes[{index}].mcp.aggregate.servers"),
            "lists no member: name the MCP server routes (by id or name) this route federates",
        ));
    }
    let mut members: Vec<ResolvedMember> = Vec::new();
    for (j, member) in aggregate.servers.iter().enumerate() {
        let reference = member.route();
        let by_id = config
            .routes
            .iter()
            .position(|r| r.id.as_deref() == Some(reference));
        let by_name: Vec<usize> = config
            .routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.name.as_deref() == Some(reference))
            .map(|(k, _)| k)
            .collect();
        let found = match (by_id, by_name.as_slice()) {
            (Some(k), _) => k,
            (None, [k]) => *k,
            (None, []) => {
                let known = config
                    .routes
                    .iter()
                    .filter(|r| matches!(&r.mcp, Some(Mcp::Server(s)) if s.aggregate.is_none()))
                    .flat_map(|r| r.id.iter().chain(r.name.iter()))
                    .map(String::as_str);
                let hint = pomerium::closest(reference, known)
                    .map(|k| format!(" (did you mean `{k}`?)"))
                    .unwrap_or_default();
                return Err(ConfigError::at(
                    at(j, ""),
                    format!(
                        "no route has the id or name {reference:?}{hint}: name an MCP server route of this file"
                    ),
                ));
            }
            (None, _) => {
                return Err(ConfigError::at(
                    at(j, ""),
                    format!(
                        "{reference:?} is the name of several routes: give the member route an `id` and use it"
                    ),
                ));
            }
        };
        let target = &config.routes[found];
        let server = match &target.mcp {
            Some(Mcp::Server(server)) => server,
            Some(Mcp::Client) => {
                return Err(ConfigError::at(
                    at(j, ""),
                    format!(
                        "routes[{found}] ({reference}) is an MCP client app route; a member must be an MCP server route (mcp: {{server: ...}})"
                    ),
                ));
            }
            None => {
                return Err(ConfigError::at(
                    at(j, ""),
                    format!(
                        "routes[{found}] ({reference}) is not an MCP route; a member must be an MCP server route (mcp: {{server: ...}})"
                    ),
                ));
            }
        };
        if server.aggregate.is_some() {
            return Err(ConfigError::at(
                at(j, ""),
                format!(
                    "routes[{found}] ({reference}) is itself an aggregate; list its members here instead"
                ),
            ));
        }
        if found == index {
            return Err(ConfigError::at(
                at(j, ""),
                "an aggregate cannot list itself",
            ));
        }
        if target.regex.is_some() {
            return Err(ConfigError::at(
                at(j, ""),
                format!(
                    "routes[{found}] ({reference}) matches a regex; a member needs one URL (prefix or path)"
                ),
            ));
        }
        let name = target
            .name
            .as_deref()
            .or(target.id.as_deref())
            .unwrap_or(reference);
        let prefix = member
            .prefix()
            .map_or_else(|| types::aggregate_prefix(name), str::to_owned);
        if let Some(bad) = prefix
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        {
            return Err(ConfigError::at(
                at(j, ".prefix"),
                format!(
                    "{prefix:?} has {bad:?}: a tool name holds only A-Z, a-z, 0-9, _, - and . (MCP 2025-11-25)"
                ),
            ));
        }
        if member.timeout().is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::at(at(j, ".timeout"), "must be more than 0s"));
        }
        for (k, other) in members.iter().enumerate() {
            if other.route == found {
                return Err(ConfigError::at(
                    at(j, ""),
                    format!("{reference:?} is already servers[{k}]"),
                ));
            }
            if other.prefix.starts_with(&prefix) || prefix.starts_with(&other.prefix) {
                let other_name = config.routes[other.route]
                    .id
                    .clone()
                    .or_else(|| config.routes[other.route].name.clone())
                    .unwrap_or_default();
                return Err(ConfigError::at(
                    at(j, ".prefix"),
                    format!(
                        "the prefixes {prefix:?} ({reference}) and {:?} ({other_name}, servers[{k}]) can give two members' tools the same name: give each member a prefix that does not begin the other's",
                        other.prefix
                    ),
                ));
            }
        }
        members.push(ResolvedMember {
            route: found,
            prefix,
            timeout: member.timeout().unwrap_or(types::AGGREGATE_MEMBER_TIMEOUT),
        });
    }
    Ok(members)
}

/// Route `id`s, where given, name one route each.
fn validate_route_ids(config: &Config) -> Result<(), ConfigError> {
    let mut seen = HashMap::new();
    for (i, route) in config.routes.iter().enumerate() {
        if let Some(id) = &route.id {
            if id.is_empty() {
                return Err(ConfigError::at(
                    format!("routes[{i}].id"),
                    "must not be empty",
                ));
            }
            if let Some(first) = seen.insert(id.as_str(), i) {
                return Err(ConfigError::at(
                    format!("routes[{i}].id"),
                    format!("{id:?} is already the id of routes[{first}]"),
                ));
            }
        }
    }
    Ok(())
}

/// `jwt_claims_headers`: valid header names (the `X-Pomerium-Claim-*` ones are the gateway's to
/// set), and claims named.
fn validate_claim_headers(config: &Config) -> Result<(), ConfigError> {
    let Some(headers) = &config.jwt_claims_headers else {
        return Ok(());
    };
    for (header, claim) in headers.pairs() {
        let at = format!("jwt_claims_headers.{header}");
        let lower = header.to_ascii_lowercase();
        if !lower.starts_with("x-pomerium-claim-") {
            check_header_name(&header).map_err(|why| ConfigError::at(&at, why))?;
        } else if !lower
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(ConfigError::at(
                &at,
                format!("{header:?} is not a header name"),
            ));
        }
        if claim.is_empty() {
            return Err(ConfigError::at(&at, "names no claim"));
        }
    }
    Ok(())
}

/// Whether nothing lets the gateway serve HTTPS: no certificates, no autocert, and plain HTTP
/// not asked for.
fn lacks_tls(config: &Config) -> bool {
    let has_certs = config.certificate_file.is_some() || !config.certificates.is_empty();
    !config.insecure_server && !config.autocert && !has_certs
}

/// The certificate pair comes together, and the server has some way to serve TLS.
fn validate_tls(config: &Config) -> Result<(), ConfigError> {
    match (&config.certificate_file, &config.certificate_key_file) {
        (Some(_), None) => {
            return Err(ConfigError::at(
                "certificate_key_file",
                "required with certificate_file",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::at(
                "certificate_file",
                "required with certificate_key_file",
            ));
        }
        _ => {}
    }
    if lacks_tls(config) {
        return Err(ConfigError::at(
            "(top level)",
            "TLS needs certificates: set certificate_file and certificate_key_file (or certificates), autocert: true, or insecure_server: true for plain HTTP",
        ));
    }
    Ok(())
}

/// `authenticate_service_url` is an origin of its own: no path, query or credentials, https
/// unless the gateway serves plain HTTP, and not a route's host (route hosts run upstream
/// content; the point is that none of it shares an origin with sign-in and consent).
fn validate_authenticate_service(config: &Config) -> Result<(), ConfigError> {
    let Some(text) = &config.authenticate_service_url else {
        return Ok(());
    };
    let key = "authenticate_service_url";
    let url = url::Url::parse(text).map_err(|e| {
        ConfigError::at(
            key,
            format!("{text:?} is not a URL ({e}); expected e.g. https://authenticate.example.com"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError::at(
            key,
            format!("{text:?} must be an https URL with a host"),
        ));
    }
    if url.scheme() == "http" && !config.insecure_server {
        return Err(ConfigError::at(
            key,
            format!(
                "{text:?} is plain http: use https (or set insecure_server: true for a plain-HTTP gateway)"
            ),
        ));
    }
    if url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(ConfigError::at(
            key,
            format!(
                "{text:?} must be an origin only (scheme, host and port), e.g. https://authenticate.example.com"
            ),
        ));
    }
    let service = config
        .authenticate_service()
        .ok_or_else(|| ConfigError::at(key, format!("{text:?} has no usable host and port")))?;
    if let Some(i) = config
        .routes
        .iter()
        .position(|r| r.from.host == service.host)
    {
        return Err(ConfigError::at(
            format!("routes[{i}].from"),
            format!(
                "{} is the authenticate_service_url host: give sign-in its own host, which no route proxies (a route's upstream would share an origin with sign-in and consent)",
                service.host
            ),
        ));
    }
    Ok(())
}

/// `cookie_domain` covers every host the session cookie is set on (browsers drop a cookie
/// whose `Domain` does not), and `cookie_same_site: none` goes with https (browsers drop
/// `SameSite=None` cookies that are not `Secure`).
fn validate_cookie(config: &Config) -> Result<(), ConfigError> {
    if let Some(domain) = config.cookie_domain() {
        let hostname = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.';
        if domain.is_empty()
            || !domain.bytes().all(hostname)
            || !domain.contains('.') && domain != "localhost"
            || domain.parse::<std::net::IpAddr>().is_ok()
        {
            return Err(ConfigError::at(
                "cookie_domain",
                format!(
                    "{domain:?} is not a domain name (e.g. example.com); leave it out for host-only cookies"
                ),
            ));
        }
        let covered = |host: &str| host == domain || host.ends_with(&format!(".{domain}"));
        let hosts = config
            .routes
            .iter()
            .map(|r| r.from.host.clone())
            .filter(|h| !h.starts_with("*."))
            .chain(config.authenticate_service().map(|a| a.host));
        for host in hosts {
            if !covered(&host) {
                return Err(ConfigError::at(
                    "cookie_domain",
                    format!(
                        "{domain} does not cover {host}: browsers would drop the session cookie there and sign-in would never stick; use a domain every route host is under, or leave it out"
                    ),
                ));
            }
        }
    }
    if config.cookie_same_site == Some(CookieSameSite::None) && !config.cookie_secure() {
        return Err(ConfigError::at(
            "cookie_same_site",
            "none needs https: browsers drop SameSite=None cookies that are not Secure (use lax, the default, on a plain-HTTP gateway)",
        ));
    }
    Ok(())
}

/// PostgreSQL storage needs somewhere to connect to.
fn validate_storage(config: &Config) -> Result<(), ConfigError> {
    if config.databroker_storage_type == Some(StorageType::Postgres)
        && config.databroker_storage_connection_string.is_none()
    {
        return Err(ConfigError::at(
            "databroker_storage_connection_string",
            "required with databroker_storage_type: postgres (e.g. postgres://user:pass@host:5432/postern)",
        ));
    }
    Ok(())
}

/// The shared secret is long enough to derive the store's sealing keys from.
fn validate_shared_secret(config: &Config) -> Result<(), ConfigError> {
    if let Some(secret) = &config.shared_secret {
        let decoded = decode_base64(secret.expose());
        if decoded.is_none_or(|d| d.len() < 32) {
            return Err(ConfigError::at(
                "shared_secret",
                "must be at least 32 random bytes, base64-encoded (generate one with `head -c32 /dev/urandom | base64`)",
            ));
        }
    }
    Ok(())
}

/// The identity provider is one we support, with the keys it needs.
fn validate_idp(config: &Config) -> Result<(), ConfigError> {
    let Some(provider) = config.idp_provider.as_deref() else {
        return Ok(());
    };
    if provider == "github" {
        return validate_github(config);
    }
    let Some(preset) = defaults::OIDC_PRESETS.iter().find(|p| p.name == provider) else {
        let names: Vec<&str> = defaults::OIDC_PRESETS.iter().map(|p| p.name).collect();
        return Err(ConfigError::at(
            "idp_provider",
            format!(
                "{provider:?} is not supported; use one of {}, github (or leave it out for local users)",
                names.join(", ")
            ),
        ));
    };
    if config.oidc_issuer().is_none() {
        return Err(ConfigError::at(
            "idp_provider_url",
            format!(
                "required with idp_provider: {} (the provider's issuer URL)",
                preset.name
            ),
        ));
    }
    if config.idp_client_id.is_none() {
        return Err(ConfigError::at(
            "idp_client_id",
            format!("required with idp_provider: {}", preset.name),
        ));
    }
    Ok(())
}

/// `idp_provider: github`: a client id, and `idp_provider_url` (a GitHub Enterprise Server)
/// an http(s) URL of the server itself.
fn validate_github(config: &Config) -> Result<(), ConfigError> {
    if let Some(url) = &config.idp_provider_url {
        let ok = url::Url::parse(url).is_ok_and(|u| {
            matches!(u.scheme(), "https" | "http")
                && u.host_str().is_some()
                && u.query().is_none()
                && u.path().trim_end_matches('/').is_empty()
        });
        if !ok {
            return Err(ConfigError::at(
                "idp_provider_url",
                format!(
                    "{url:?} is not a GitHub URL: leave it out for github.com, or give your GitHub Enterprise Server's address (https://github.your-company.com, no path)"
                ),
            ));
        }
    }
    if config.idp_client_id.is_none() {
        return Err(ConfigError::at(
            "idp_client_id",
            "required with idp_provider: github (the OAuth app's Client ID)",
        ));
    }
    Ok(())
}

/// The log level is one `tracing` knows, and the access token lifetime is within bounds.
fn validate_logging_and_tokens(config: &Config) -> Result<(), ConfigError> {
    if let Some(level) = &config.log_level
        && !matches!(
            level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        )
    {
        return Err(ConfigError::at(
            "log_level",
            format!("{level:?}: use error, warn, info, debug or trace"),
        ));
    }
    if let Some(ttl) = config.mcp_access_token_ttl
        && !(defaults::MCP_ACCESS_TOKEN_TTL_MIN..=defaults::MCP_ACCESS_TOKEN_TTL_MAX)
            .contains(&ttl.0)
    {
        return Err(ConfigError::at(
            "mcp_access_token_ttl",
            format!(
                "{}s is out of range: use 1m to 24h (clients refresh with their refresh token; short is safer)",
                ttl.0.as_secs()
            ),
        ));
    }
    validate_refresh_ttls(config)
}

/// `mcp_refresh_token_idle_ttl` and `mcp_refresh_token_max_ttl`: positive, and the idle time no
/// longer than the grant's whole life.
fn validate_refresh_ttls(config: &Config) -> Result<(), ConfigError> {
    for (key, ttl) in [
        (
            "mcp_refresh_token_idle_ttl",
            config.mcp_refresh_token_idle_ttl,
        ),
        (
            "mcp_refresh_token_max_ttl",
            config.mcp_refresh_token_max_ttl,
        ),
    ] {
        if ttl.is_some_and(|t| t.0 < Duration::from_secs(1)) {
            return Err(ConfigError::at(
                key,
                "must be at least 1s (e.g. 720h for 30 days)",
            ));
        }
    }
    let (idle, max) = (
        config.mcp_refresh_token_idle_ttl(),
        config.mcp_refresh_token_max_ttl(),
    );
    if idle > max {
        return Err(ConfigError::at(
            "mcp_refresh_token_idle_ttl",
            format!(
                "{}s is longer than mcp_refresh_token_max_ttl ({}s), the grant's whole life: shorten it or raise mcp_refresh_token_max_ttl",
                idle.as_secs(),
                max.as_secs()
            ),
        ));
    }
    Ok(())
}

/// `routes[i]`: where it goes, how it matches, and its MCP server block.
fn validate_route(config: &Config, i: usize, route: &Route) -> Result<(), ConfigError> {
    let at = |key: &str| format!("routes[{i}].{key}");
    let aggregate = matches!(&route.mcp, Some(Mcp::Server(s)) if s.aggregate.is_some());
    if route.to.to_vec().is_empty() && !aggregate {
        return Err(ConfigError::at(
            at("to"),
            "at least one upstream URL is required",
        ));
    }
    if aggregate && !route.to.to_vec().is_empty() {
        return Err(ConfigError::at(
            at("to"),
            "an aggregate route (mcp.aggregate) has no upstream of its own: remove `to` (its members' routes say where they go)",
        ));
    }
    if route.prefix.is_some() && route.path.is_some() {
        return Err(ConfigError::at(
            at("path"),
            "set either prefix or path, not both",
        ));
    }
    validate_regex_keys(route, &at)?;
    validate_public_route(route, &at)?;
    for (key, value) in [("prefix", &route.prefix), ("path", &route.path)] {
        if let Some(v) = value
            && !v.starts_with('/')
        {
            return Err(ConfigError::at(at(key), format!("{v:?} must start with /")));
        }
    }
    if route.from.scheme == "https" && lacks_tls(config) {
        return Err(ConfigError::at(
            at("from"),
            "an https route needs certificates or autocert",
        ));
    }
    if let Some(Mcp::Server(server)) = &route.mcp {
        validate_mcp_server(server, &at)?;
    }
    validate_request_rewrites(route, &at)
}

/// A public route lists nobody: with `allow_public_unauthenticated_access` everyone is allowed,
/// so `allowed_users` & co. would restrict nothing while the file reads as if they did. An
/// error, not a warning (as Pomerium: "policy route marked as public but contains
/// whitelists"): the author meant one of two opposite things, and guessing "public" opens the
/// route. Deny rules of a `policy` still apply to a public route, so `policy` is allowed.
fn validate_public_route(route: &Route, at: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    if !route.allow_public_unauthenticated_access {
        return Ok(());
    }
    let listed = [
        (
            "allow_any_authenticated_user",
            route.allow_any_authenticated_user,
        ),
        ("allowed_users", !route.allowed_users.is_empty()),
        ("allowed_domains", !route.allowed_domains.is_empty()),
        ("allowed_idp_claims", !route.allowed_idp_claims.is_empty()),
    ];
    match listed.iter().find(|(_, set)| *set) {
        Some((key, _)) => Err(ConfigError::at(
            at(key),
            "contradicts allow_public_unauthenticated_access: true (everyone is allowed, so this restricts nothing); remove allow_public_unauthenticated_access to require sign-in, or remove this key",
        )),
        None => Ok(()),
    }
}

/// `regex`, `regex_rewrite_pattern` and `regex_rewrite_substitution` (the patterns themselves
/// were compiled while parsing).
fn validate_regex_keys(route: &Route, at: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    let is_mcp_server = matches!(route.mcp, Some(Mcp::Server(_)));
    if route.regex.is_some() {
        if route.prefix.is_some() || route.path.is_some() {
            return Err(ConfigError::at(
                at("regex"),
                "set one of prefix, path or regex, not several (Pomerium would silently use only the regex)",
            ));
        }
        if is_mcp_server {
            return Err(ConfigError::at(
                at("regex"),
                "an MCP server route is known to clients by one URL (its resource): match it with prefix or path",
            ));
        }
    }
    match (
        &route.regex_rewrite_pattern,
        &route.regex_rewrite_substitution,
    ) {
        (Some(pattern), Some(substitution)) => {
            PathRewrite::new(pattern, substitution)
                .map_err(|why| ConfigError::at(at("regex_rewrite_substitution"), why))?;
            if route.prefix_rewrite.is_some() {
                return Err(ConfigError::at(
                    at("regex_rewrite_pattern"),
                    "set either prefix_rewrite or regex_rewrite_pattern, not both (Pomerium would silently use only prefix_rewrite)",
                ));
            }
        }
        (Some(_), None) => {
            return Err(ConfigError::at(
                at("regex_rewrite_pattern"),
                "needs regex_rewrite_substitution (what replaces each match)",
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::at(
                at("regex_rewrite_substitution"),
                "needs regex_rewrite_pattern (what to replace)",
            ));
        }
        (None, None) => {}
    }
    Ok(())
}

/// `host_rewrite`, `prefix_rewrite`, `set_request_headers`, `remove_request_headers`.
fn validate_request_rewrites(
    route: &Route,
    at: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    if let Some(host) = &route.host_rewrite
        && url::Url::parse(&format!("http://{host}/")).map_or(true, |u| {
            u[url::Position::BeforeHost..url::Position::AfterPort] != *host.to_ascii_lowercase()
        })
    {
        return Err(ConfigError::at(
            at("host_rewrite"),
            format!("{host:?} is not a host[:port]"),
        ));
    }
    if route.host_rewrite.is_some() && route.preserve_host_header {
        return Err(ConfigError::at(
            at("host_rewrite"),
            "set either host_rewrite or preserve_host_header, not both",
        ));
    }
    if let Some(rewrite) = &route.prefix_rewrite {
        if !rewrite.starts_with('/') {
            return Err(ConfigError::at(
                at("prefix_rewrite"),
                format!("{rewrite:?} must start with /"),
            ));
        }
        if route.prefix.is_none() && route.path.is_none() && route.regex.is_none() {
            return Err(ConfigError::at(
                at("prefix_rewrite"),
                "needs a prefix, path or regex to replace",
            ));
        }
    }
    for (name, value) in &route.set_request_headers {
        let key = format!("set_request_headers.{name}");
        if passes_assertion(name, value) {
            if route.pass_identity_headers == Some(false) {
                return Err(ConfigError::at(
                    at(&key),
                    "sends the identity assertion, which pass_identity_headers: false turns off on this route: remove one of them",
                ));
            }
            continue;
        }
        check_header_name(name).map_err(|why| ConfigError::at(at(&key), why))?;
        check_header_value(value).map_err(|why| ConfigError::at(at(&key), why))?;
        if value.contains("${pomerium.") {
            return Err(ConfigError::at(
                at(&key),
                "Pomerium's token substitutions (${pomerium.*}) are not supported, except `X-Pomerium-Jwt-Assertion: ${pomerium.jwt}` (the same as pass_identity_headers: true): the upstream gets the identity in X-Pomerium-Jwt-Assertion",
            ));
        }
    }
    for (i, name) in route.remove_request_headers.iter().enumerate() {
        check_header_name(name)
            .map_err(|why| ConfigError::at(at(&format!("remove_request_headers[{i}]")), why))?;
    }
    validate_response_headers(&route.set_response_headers, false, at)
}

/// `set_response_headers`, the global one or a route's (`at` gives the key's full path). Only
/// the global map may hold the `disable` key.
fn validate_response_headers(
    headers: &BTreeMap<String, String>,
    global: bool,
    at: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    for (name, value) in headers {
        let key = format!("set_response_headers.{name}");
        if name.eq_ignore_ascii_case(defaults::DISABLE_RESPONSE_HEADERS) {
            if global {
                continue;
            }
            return Err(ConfigError::at(
                at(&key),
                "`disable` turns off the global response headers and only works at the top level: leave the route's set_response_headers out instead",
            ));
        }
        check_header_name(name).map_err(|why| ConfigError::at(at(&key), why))?;
        check_header_value(value).map_err(|why| ConfigError::at(at(&key), why))?;
    }
    Ok(())
}

/// A header value an operator may set: one line of text.
fn check_header_value(value: &str) -> Result<(), &'static str> {
    if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
        return Err("the value has control characters (a header value is one line of text)");
    }
    Ok(())
}

/// A header name an operator may set: a valid name (RFC 9110 token) that is not one the gateway
/// owns (hop-by-hop, framing, `Host`, `X-Forwarded-*`, `X-Request-Id`, `X-Pomerium-*`).
fn check_header_name(name: &str) -> Result<(), String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(format!("{name:?} is not a header name"));
    }
    let lower = name.to_ascii_lowercase();
    const OWNED: [&str; 11] = [
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "x-request-id",
        "proxy-authorization",
    ];
    if OWNED.contains(&lower.as_str())
        || lower.starts_with("x-forwarded-")
        || lower.starts_with("x-pomerium-")
    {
        return Err(format!(
            "{name} is set by the gateway itself (use host_rewrite or preserve_host_header for Host)"
        ));
    }
    Ok(())
}

/// `routes[i].mcp.server`; `at` turns a key into its full path.
fn validate_mcp_server(server: &McpServer, at: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    if let Some(path) = &server.path
        && !path.starts_with('/')
    {
        return Err(ConfigError::at(
            at("mcp.server.path"),
            format!("{path:?} must start with /"),
        ));
    }
    if let Some(url) = &server.authorization_server_url
        && !url.starts_with("https://")
    {
        return Err(ConfigError::at(
            at("mcp.server.authorization_server_url"),
            "must be an https URL",
        ));
    }
    if server.max_request_bytes == Some(0) {
        return Err(ConfigError::at(
            at("mcp.server.max_request_bytes"),
            "must be greater than 0",
        ));
    }
    if let Some(oauth) = &server.upstream_oauth2
        && oauth.client_id.is_empty()
        && oauth.endpoint.is_some()
    {
        return Err(ConfigError::at(
            at("mcp.server.upstream_oauth2.client_id"),
            "required with endpoint (a provider configured by hand needs the client registered there); leave both out to register with the server's discovered authorization server",
        ));
    }
    if let Some(oauth) = &server.upstream_oauth2
        && oauth.endpoint.is_none()
        && oauth.resource.is_some()
    {
        return Err(ConfigError::at(
            at("mcp.server.upstream_oauth2.resource"),
            "only with endpoint: without it the resource comes from the server's own protected resource metadata (discovery); remove it",
        ));
    }
    if let Some(oauth) = &server.upstream_oauth2
        && let Some(resource) = oauth.resource.as_deref().filter(|r| !r.is_empty())
        && url::Url::parse(resource).map_or(true, |u| {
            u.fragment().is_some() || !matches!(u.scheme(), "http" | "https")
        })
    {
        return Err(ConfigError::at(
            at("mcp.server.upstream_oauth2.resource"),
            format!(
                "{resource:?} is not an absolute http(s) URL without a fragment (RFC 8707 §2); use e.g. https://mcp.example.com/mcp, or \"\" to send none"
            ),
        ));
    }
    if let Some(path) = server
        .upstream_oauth2
        .as_ref()
        .and_then(|o| o.callback_path.as_deref())
        && path != defaults::UPSTREAM_CALLBACK_PATH
        && path != defaults::SEED_UPSTREAM_CALLBACK_PATH
    {
        return Err(ConfigError::at(
            at("mcp.server.upstream_oauth2.callback_path"),
            format!(
                "{path:?} is not a path Postern answers: use {} (the default) or {}",
                defaults::UPSTREAM_CALLBACK_PATH,
                defaults::SEED_UPSTREAM_CALLBACK_PATH
            ),
        ));
    }
    Ok(())
}

/// Standard or URL-safe base64, padded or not.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let trimmed = text.trim().trim_end_matches('=');
    STANDARD_NO_PAD
        .decode(trimmed)
        .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed))
        .ok()
}

#[cfg(test)]
mod tests;
