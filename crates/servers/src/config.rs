//! Configuration of the reference servers, read from environment variables (the seed's names).
//!
//! Parsing goes through the [`Env`] trait so tests pass a map and never touch the process
//! environment.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use postern_assertion::VerifierConfig;

/// A source of environment variables.
pub trait Env {
    /// The value of `key`, if set and not empty.
    fn var(&self, key: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.trim().is_empty())
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned().filter(|v| !v.trim().is_empty())
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, key: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
            .filter(|v| !v.trim().is_empty())
    }
}

/// A configuration error: names the variable and says what is expected.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    /// The environment variable.
    pub variable: &'static str,
    /// What is wrong with it and what to do.
    pub problem: String,
}

/// Everything `postern servers` needs.
#[derive(Clone, Debug)]
pub struct ServersConfig {
    /// TCP port of the listener (`PORT`, default 8080).
    pub port: u16,
    /// Address the listener binds (`BIND`, default `127.0.0.1`): the servers trust whatever
    /// reaches them to have passed the gateway, so they listen on loopback unless told
    /// otherwise (`BIND=0.0.0.0` in a container the gateway reaches over a private network).
    pub bind: std::net::IpAddr,
    /// `Host` values accepted besides loopback (`ALLOWED_HOSTS`).
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted besides loopback and the allowed hosts (`ALLOWED_ORIGINS`);
    /// `*` turns Origin checks off.
    pub allowed_origins: Vec<String>,
    /// `whoami`, mounted when `ASSERTION_JWKS_URL` is set.
    pub whoami: Option<VerifierConfig>,
    /// `sqlite`, mounted when `SQLITE_DB_FILE` is set.
    pub sqlite: Option<SqliteConfig>,
    /// `notion`, always mounted (it needs no secret: the caller's bearer token is used).
    pub notion: NotionConfig,
}

/// The `sqlite` server's settings.
#[derive(Clone, Debug)]
pub struct SqliteConfig {
    /// The database file (`SQLITE_DB_FILE`); it must exist.
    pub db_file: PathBuf,
    /// Whether `write_query` is offered (`SQLITE_READ_WRITE=true`).
    pub read_write: bool,
    /// Most rows returned by one query (`SQLITE_MAX_ROWS`, default 1000).
    pub max_rows: usize,
    /// Most bytes of JSON returned by one query (`SQLITE_MAX_BYTES`, default 256 KiB).
    pub max_bytes: usize,
    /// Time limit for one query (`SQLITE_TIMEOUT_MS`, default 5000).
    pub timeout: Duration,
}

/// The `notion` server's settings.
#[derive(Clone, Debug)]
pub struct NotionConfig {
    /// Base URL of the Notion API (`NOTION_API_BASE_URL`, default `https://api.notion.com`).
    pub api_base_url: String,
    /// `Notion-Version` sent (`NOTION_VERSION`, default `2026-03-11`).
    pub version: String,
    /// Most search result pages (of up to 100 hits) read per search (`NOTION_SEARCH_MAX_PAGES`,
    /// default 3).
    pub search_max_pages: usize,
    /// Retries after 429/5xx answers (`NOTION_MAX_RETRIES`, default 4).
    pub max_retries: u32,
    /// Longest total wait for retries within one tool call (`NOTION_MAX_RETRY_WAIT_MS`, default 20000).
    pub max_retry_wait: Duration,
    /// Largest fetched document in characters (`NOTION_FETCH_MAX_CHARS`, default 200000).
    pub fetch_max_chars: usize,
    /// Block requests in flight at once when walking a page (`NOTION_FETCH_CONCURRENCY`, default 3).
    pub fetch_concurrency: usize,
}

/// The pinned Notion API version (needed by the page-markdown endpoint).
pub const NOTION_VERSION: &str = "2026-03-11";

impl Default for NotionConfig {
    fn default() -> Self {
        Self {
            api_base_url: "https://api.notion.com".into(),
            version: NOTION_VERSION.into(),
            search_max_pages: 3,
            max_retries: 4,
            max_retry_wait: Duration::from_secs(20),
            fetch_max_chars: 200_000,
            fetch_concurrency: 3,
        }
    }
}

impl ServersConfig {
    /// Reads the configuration from `env`.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let port = number(env, "PORT", 8080u16)?;
        let bind = match env.var("BIND") {
            None => std::net::IpAddr::from([127, 0, 0, 1]),
            Some(v) => v.trim().parse().map_err(|_| ConfigError {
                variable: "BIND",
                problem: format!(
                    "{v:?} is not an IP address; e.g. 127.0.0.1 (the default), or 0.0.0.0 in a container reached over a private network"
                ),
            })?,
        };
        let whoami = match env.var("ASSERTION_JWKS_URL") {
            None => None,
            Some(url) => {
                let issuers = list(env.var("ASSERTION_ISSUER"));
                if issuers.is_empty() {
                    return Err(ConfigError {
                        variable: "ASSERTION_ISSUER",
                        problem: "required with ASSERTION_JWKS_URL: the gateway's issuer, i.e. the route host (e.g. mcp.example.com); comma-separate several".into(),
                    });
                }
                let url = url::Url::parse(&url).map_err(|e| ConfigError {
                    variable: "ASSERTION_JWKS_URL",
                    problem: format!("not a URL ({e}); expected e.g. https://mcp.example.com/.well-known/pomerium/jwks.json"),
                })?;
                let mut verifier = VerifierConfig::new(url.as_str(), issuers);
                verifier.audience = env.var("ASSERTION_AUDIENCE");
                Some(verifier)
            }
        };
        let sqlite = match env.var("SQLITE_DB_FILE") {
            None => None,
            Some(file) => Some(SqliteConfig {
                db_file: PathBuf::from(file),
                read_write: boolean(env, "SQLITE_READ_WRITE")?,
                max_rows: number(env, "SQLITE_MAX_ROWS", 1000usize)?,
                max_bytes: number(env, "SQLITE_MAX_BYTES", 256 * 1024usize)?,
                timeout: Duration::from_millis(number(env, "SQLITE_TIMEOUT_MS", 5000u64)?),
            }),
        };
        let defaults = NotionConfig::default();
        let notion = NotionConfig {
            api_base_url: env
                .var("NOTION_API_BASE_URL")
                .map(|u| u.trim_end_matches('/').to_owned())
                .unwrap_or(defaults.api_base_url),
            version: env.var("NOTION_VERSION").unwrap_or(defaults.version),
            search_max_pages: number(env, "NOTION_SEARCH_MAX_PAGES", defaults.search_max_pages)?
                .max(1),
            max_retries: number(env, "NOTION_MAX_RETRIES", defaults.max_retries)?,
            max_retry_wait: Duration::from_millis(number(
                env,
                "NOTION_MAX_RETRY_WAIT_MS",
                20_000u64,
            )?),
            fetch_max_chars: number(env, "NOTION_FETCH_MAX_CHARS", defaults.fetch_max_chars)?,
            fetch_concurrency: number(env, "NOTION_FETCH_CONCURRENCY", defaults.fetch_concurrency)?
                .clamp(1, 16),
        };
        Ok(Self {
            port,
            bind,
            allowed_hosts: list(env.var("ALLOWED_HOSTS")),
            allowed_origins: list(env.var("ALLOWED_ORIGINS")),
            whoami,
            sqlite,
            notion,
        })
    }
}

fn list(value: Option<String>) -> Vec<String> {
    value
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn number<T: std::str::FromStr>(
    env: &impl Env,
    variable: &'static str,
    default: T,
) -> Result<T, ConfigError> {
    match env.var(variable) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| ConfigError {
            variable,
            problem: format!("{v:?} is not a valid non-negative number"),
        }),
    }
}

fn boolean(env: &impl Env, variable: &'static str) -> Result<bool, ConfigError> {
    match env.var(variable).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if matches!(v.as_str(), "true" | "1" | "yes") => Ok(true),
        Some(v) if matches!(v.as_str(), "false" | "0" | "no") => Ok(false),
        Some(v) => Err(ConfigError {
            variable,
            problem: format!("{v:?} is not true or false"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_mount_only_notion() {
        let config = ServersConfig::from_env(&[("UNRELATED", "x")]).unwrap();
        assert_eq!(config.port, 8080);
        assert_eq!(config.bind.to_string(), "127.0.0.1", "loopback unless told");
        assert!(config.whoami.is_none() && config.sqlite.is_none());
        assert_eq!(config.notion.api_base_url, "https://api.notion.com");
        assert_eq!(config.notion.version, "2026-03-11");
    }

    #[test]
    fn reads_every_server() {
        let config = ServersConfig::from_env(&[
            ("PORT", "9000"),
            ("BIND", "0.0.0.0"),
            ("SQLITE_DB_FILE", "/data/db.sqlite"),
            ("SQLITE_READ_WRITE", "true"),
            (
                "ASSERTION_JWKS_URL",
                "https://gw.example.com/.well-known/pomerium/jwks.json",
            ),
            (
                "ASSERTION_ISSUER",
                "gw.example.com, https://gw.example.com/",
            ),
            ("ASSERTION_AUDIENCE", "gw.example.com"),
            ("ALLOWED_HOSTS", "mcp-servers:8080,servers.internal"),
            ("NOTION_API_BASE_URL", "http://127.0.0.1:1234/"),
        ])
        .unwrap();
        assert_eq!(config.port, 9000);
        assert_eq!(config.bind.to_string(), "0.0.0.0");
        let sqlite = config.sqlite.unwrap();
        assert!(sqlite.read_write);
        let whoami = config.whoami.unwrap();
        assert_eq!(
            whoami.issuers,
            ["gw.example.com", "https://gw.example.com/"]
        );
        assert_eq!(whoami.audience.as_deref(), Some("gw.example.com"));
        assert_eq!(
            config.allowed_hosts,
            ["mcp-servers:8080", "servers.internal"]
        );
        assert_eq!(config.notion.api_base_url, "http://127.0.0.1:1234");
    }

    #[test]
    fn errors_name_the_variable_and_the_fix() {
        let err =
            ServersConfig::from_env(&[("ASSERTION_JWKS_URL", "https://gw/jwks.json")]).unwrap_err();
        assert_eq!(err.variable, "ASSERTION_ISSUER");
        assert!(err.to_string().contains("route host"), "{err}");

        let err = ServersConfig::from_env(&[("PORT", "eighty")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "PORT: \"eighty\" is not a valid non-negative number"
        );

        let err = ServersConfig::from_env(&[("BIND", "all")]).unwrap_err();
        assert_eq!(err.variable, "BIND");
        assert!(err.to_string().contains("0.0.0.0"), "{err}");

        let err =
            ServersConfig::from_env(&[("SQLITE_DB_FILE", "x"), ("SQLITE_READ_WRITE", "maybe")])
                .unwrap_err();
        assert_eq!(err.variable, "SQLITE_READ_WRITE");
    }
}
