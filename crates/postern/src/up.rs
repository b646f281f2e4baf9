//! `postern up`: the whole system on localhost in one command. The reference servers run in this
//! process on a loopback port of their own (the gateway's port + 1 when free); the gateway runs
//! in front of them on `http://localhost:PORT` (and `127.0.0.1`, `[::1]`) with path routes,
//! local sign-in for a generated user, and SQLite storage, all kept in the data directory so that
//! a re-run finds the same user, keys and tokens. `users.yaml` and `postern.yaml` are written
//! once and then left to the user: a re-run serves them as edited.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use tokio_util::sync::CancellationToken;

/// The bundled demo database served by `/sqlite`.
const DEMO_DB: &[u8] = include_bytes!("../../../examples/demo.db");
/// The generated user's email.
const EMAIL: &str = "you@postern.localhost";

/// The generated user, as kept in `DIR/credentials.txt`.
struct Credentials {
    email: String,
    password: String,
}

/// Notion's OAuth client, when `NOTION_CLIENT_ID` and `NOTION_CLIENT_SECRET` are set.
struct Notion {
    client_id: String,
    auth_url: String,
    token_url: String,
}

/// `postern up`'s command line.
pub struct Options {
    /// Where state is kept.
    pub data_dir: PathBuf,
    /// The gateway's port; 0 for any free one.
    pub port: u16,
    /// The address to listen on.
    pub address: IpAddr,
    /// The name clients use, if not the loopback names.
    pub host: Option<String>,
}

/// Runs `postern up` until Ctrl-C.
pub async fn up(options: Options) -> anyhow::Result<()> {
    let host = route_host(&options)?;
    // Listen before anything else: a busy port is the first thing a user can get wrong, and a
    // gateway that never ran must not have made (and hidden) a new password.
    let listeners = listen(options.address, options.port).await?;
    let port = listeners[0].local_addr()?.port();
    create_private_dir(&options.data_dir)?;
    let dir = options
        .data_dir
        .canonicalize()
        .with_context(|| format!("data directory {}", options.data_dir.display()))?;
    let (credentials, new_user) = credentials(&dir)?;
    let mut notes = Vec::new();
    if !write_users(&dir, &credentials)? {
        notes.push(format!(
            "kept your {} (delete it to get the generated user back)",
            dir.join("users.yaml").display()
        ));
    }
    let database = demo_database(&dir)?;
    let notion = notion_from_env()?;

    let config_path = dir.join("postern.yaml");
    let servers_listener = if config_path.exists() {
        notes.push(format!(
            "kept your {} (delete it to get a fresh one)",
            config_path.display()
        ));
        let config = load(&config_path)?;
        match reference_servers_port(&config) {
            Some(servers_port) => Some(bind_servers(servers_port, &config_path).await?),
            None => None,
        }
    } else {
        let listener = bind_servers_near(port).await?;
        let servers_port = listener.local_addr()?.port();
        let yaml = gateway_config(&GeneratedConfig {
            dir: &dir,
            host: &host,
            address: std::net::SocketAddr::new(options.address, port),
            servers_port,
            notion: notion.as_ref(),
        });
        write_private(&config_path, &yaml)?;
        Some(listener)
    };
    let config = load(&config_path)?;
    if notion.is_some()
        && !config
            .routes
            .iter()
            .any(|r| r.prefix.as_deref() == Some("/notion"))
    {
        notes.push(format!(
            "NOTION_CLIENT_ID is set but {} has no /notion route: delete the file to get one",
            config_path.display()
        ));
    }
    if options.address.is_unspecified() && options.host.is_none() {
        notes.push(
            "listening on every interface, but the routes answer only localhost names: add --host NAME for the name other machines use".to_owned(),
        );
    }
    let gateway_url = local_url(options.address, port);
    let servers = match servers_listener {
        Some(listener) => Some(
            ReferenceServers::start(listener, &database, &gateway_url, &issuers_of(&config))
                .await?,
        ),
        None => None,
    };

    print!(
        "{}",
        banner(&Banner {
            dir: &dir,
            config: &config,
            port,
            user: &credentials,
            new_user,
            notion: notion.is_some(),
            notes: &notes,
        })
    );
    let extras = crate::serve::Extras {
        sign_in_email: Some(credentials.email.clone()),
    };
    let result = crate::serve::serve_on(listeners, config_path, config, extras).await;
    if let Some(servers) = servers {
        servers.stop().await;
    }
    result
}

fn load(path: &Path) -> anyhow::Result<postern_config::Config> {
    postern_config::load(path, &postern_config::ProcessEnv).with_context(|| {
        format!(
            "{} (fix it, or delete it and run `postern up` again for a fresh one)",
            path.display()
        )
    })
}

/// The host name the routes answer: `--host`, the address when it is one other machines use,
/// else `localhost` (which, as a loopback name, also answers at 127.0.0.1 and [::1]).
fn route_host(options: &Options) -> anyhow::Result<String> {
    if let Some(host) = &options.host {
        let host = host.trim().to_ascii_lowercase();
        let ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
        anyhow::ensure!(
            ok && !host.contains("://"),
            "--host {host:?}: give a host name or address only (e.g. --host mybox.local), no scheme, port or path; the port is --port"
        );
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        return Ok(bare.to_owned());
    }
    Ok(match options.address {
        a if a.is_loopback() || a.is_unspecified() => "localhost".to_owned(),
        a => a.to_string(),
    })
}

/// The issuers the reference servers accept in the gateway's assertion: the host each request
/// came in on (a loopback route answers every loopback name).
fn issuers(host: &str) -> String {
    if postern_gateway::routes::is_loopback_name(host) {
        "localhost,127.0.0.1,::1".to_owned()
    } else {
        host.to_owned()
    }
}

/// The issuers of the assertions the gateway sends for `config`'s routes: their hosts (with
/// every loopback name for a loopback one), as a kept file may name other hosts than `--host`.
fn issuers_of(config: &postern_config::Config) -> String {
    let mut hosts: Vec<String> = Vec::new();
    for route in &config.routes {
        for host in issuers(&route.from.host).split(',') {
            if !hosts.iter().any(|h| h == host) {
                hosts.push(host.to_owned());
            }
        }
    }
    hosts.join(",")
}

/// The gateway's own URL from this machine (for the servers' JWKS).
fn local_url(address: IpAddr, port: u16) -> String {
    match address {
        a if a.is_unspecified() || a.is_loopback() => format!("http://127.0.0.1:{port}"),
        IpAddr::V6(a) => format!("http://[{a}]:{port}"),
        IpAddr::V4(a) => format!("http://{a}:{port}"),
    }
}

/// The gateway's listeners: `address:port`, and on the default loopback address also
/// `[::1]` on the same port when this machine has IPv6 (browsers try `localhost` there first).
async fn listen(address: IpAddr, port: u16) -> anyhow::Result<Vec<tokio::net::TcpListener>> {
    let first = tokio::net::TcpListener::bind((address, port))
        .await
        .map_err(|e| {
            let what = if e.kind() == std::io::ErrorKind::AddrInUse {
                format!("port {port} is in use (another program, or another `postern up`)")
            } else {
                e.to_string()
            };
            anyhow::anyhow!(
                "cannot listen on {}: {what}; pick another port with `postern up --port 8090` (or --port 0 for any free one)",
                std::net::SocketAddr::from((address, port))
            )
        })?;
    let port = first.local_addr()?.port();
    let mut listeners = vec![first];
    if address == IpAddr::from([127, 0, 0, 1]) {
        match tokio::net::TcpListener::bind((std::net::Ipv6Addr::LOCALHOST, port)).await {
            Ok(v6) => listeners.push(v6),
            Err(e) => tracing::debug!("not listening on [::1]:{port}: {e}"),
        }
    }
    Ok(listeners)
}

/// The port the routes of a kept `postern.yaml` send the reference servers' paths to on this
/// machine, if they do.
fn reference_servers_port(config: &postern_config::Config) -> Option<u16> {
    config
        .routes
        .iter()
        .flat_map(|r| r.to.to_vec())
        .find_map(|to| {
            let url = &to.0;
            let local = matches!(url.host_str(), Some("127.0.0.1" | "localhost"));
            let ours = ["/whoami", "/sqlite", "/notion"]
                .iter()
                .any(|p| url.path().starts_with(p));
            (local && ours)
                .then(|| url.port_or_known_default())
                .flatten()
        })
}

/// The reference servers' listener for a kept configuration: the port its routes name.
async fn bind_servers(port: u16, config_path: &Path) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on 127.0.0.1:{port} for the reference servers, where the routes of {} send requests: stop what uses that port, or edit the routes' `to` (or delete the file for a fresh one)",
                config_path.display()
            )
        })
}

/// The reference servers' listener for a new configuration: the port after the gateway's (as
/// `examples/postern.yaml` has it, 8080 and 8081), else any free one.
async fn bind_servers_near(port: u16) -> anyhow::Result<tokio::net::TcpListener> {
    if port != 0
        && let Some(next) = port.checked_add(1)
        && let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", next)).await
    {
        return Ok(listener);
    }
    tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("cannot listen on a loopback port for the reference servers")
}

/// Writes `DIR/users.yaml` with the one generated user, unless the file is there (the user's
/// to edit). Whether it was written.
fn write_users(dir: &Path, credentials: &Credentials) -> anyhow::Result<bool> {
    let path = dir.join("users.yaml");
    if path.exists() {
        return Ok(false);
    }
    let hash = postern_access::users::hash_password(&credentials.password)?;
    write_private(
        &path,
        &format!(
            "# Written once by `postern up` from credentials.txt; edit it freely (`postern hash-password` makes a password_hash).\n- {{email: {}, name: You, groups: [admin], password_hash: \"{hash}\"}}\n",
            credentials.email
        ),
    )?;
    Ok(true)
}

/// `DIR/demo.db`, copied from the bundled one unless it is already there.
fn demo_database(dir: &Path) -> anyhow::Result<PathBuf> {
    let database = dir.join("demo.db");
    if !database.exists() {
        std::fs::write(&database, DEMO_DB)
            .with_context(|| format!("writing {}", database.display()))?;
    }
    Ok(database)
}

/// The reference servers, on a loopback port only the gateway uses.
struct ReferenceServers {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl ReferenceServers {
    /// Starts them on `listener`, serving `database` at `/sqlite` and trusting assertions from
    /// the gateway at `gateway_url` issued by `issuers`.
    async fn start(
        listener: tokio::net::TcpListener,
        database: &Path,
        gateway_url: &str,
        issuers: &str,
    ) -> anyhow::Result<Self> {
        let port = listener.local_addr()?.port();
        let env = servers_env(port, database, gateway_url, issuers);
        let config = postern_servers::ServersConfig::from_env(&env)
            .context("configuring the reference servers")?;
        let shutdown = CancellationToken::new();
        let servers = postern_servers::build(&config, &shutdown)?;
        for (name, mount) in &servers.mounts {
            if let Err(why) = mount {
                tracing::debug!(server = name, "not mounted: {why}");
            }
        }
        let task = tokio::spawn(postern_servers::serve(
            listener,
            servers.router,
            shutdown.clone(),
        ));
        Ok(ReferenceServers { shutdown, task })
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// The reference servers' environment: their port, the demo database, the gateway's
/// assertion to trust, and the Notion API settings passed through from ours. No
/// `ASSERTION_AUDIENCE`: the gateway's `aud` is the host each request came in on, like its
/// `iss`, which `issuers` already limits.
fn servers_env(
    servers_port: u16,
    database: &Path,
    gateway_url: &str,
    issuers: &str,
) -> std::collections::HashMap<String, String> {
    let mut env = std::collections::HashMap::from([
        ("PORT".to_owned(), servers_port.to_string()),
        (
            "SQLITE_DB_FILE".to_owned(),
            database.to_string_lossy().into_owned(),
        ),
        (
            "ASSERTION_JWKS_URL".to_owned(),
            format!("{gateway_url}/.well-known/pomerium/jwks.json"),
        ),
        ("ASSERTION_ISSUER".to_owned(), issuers.to_owned()),
    ]);
    for key in ["NOTION_API_BASE_URL", "NOTION_VERSION"] {
        if let Ok(value) = std::env::var(key) {
            env.insert(key.to_owned(), value);
        }
    }
    env
}

/// The credentials in `DIR/credentials.txt`, or a new user with a random password written there
/// (mode 0600). The flag says whether the user is new.
fn credentials(dir: &Path) -> anyhow::Result<(Credentials, bool)> {
    let path = dir.join("credentials.txt");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let field = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_owned())
                    .filter(|v| !v.is_empty())
            };
            let (Some(email), Some(password)) = (field("email:"), field("password:")) else {
                anyhow::bail!(
                    "{} must hold the lines `email: ...` and `password: ...`; fix it, or delete it to get a new user",
                    path.display()
                );
            };
            Ok((Credentials { email, password }, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes: [u8; 18] = rand::random();
            let credentials = Credentials {
                email: EMAIL.to_owned(),
                password: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
            };
            write_private(
                &path,
                &format!(
                    "email: {}\npassword: {}\n",
                    credentials.email, credentials.password
                ),
            )?;
            Ok((credentials, true))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn notion_from_env() -> anyhow::Result<Option<Notion>> {
    let id = std::env::var("NOTION_CLIENT_ID")
        .ok()
        .filter(|v| !v.is_empty());
    let secret = std::env::var("NOTION_CLIENT_SECRET")
        .ok()
        .filter(|v| !v.is_empty());
    match (id, secret) {
        (Some(client_id), Some(_)) => Ok(Some(Notion {
            client_id,
            auth_url: std::env::var("NOTION_AUTH_URL")
                .unwrap_or_else(|_| "https://api.notion.com/v1/oauth/authorize".into()),
            token_url: std::env::var("NOTION_TOKEN_URL")
                .unwrap_or_else(|_| "https://api.notion.com/v1/oauth/token".into()),
        })),
        (None, None) => Ok(None),
        _ => anyhow::bail!(
            "set both NOTION_CLIENT_ID and NOTION_CLIENT_SECRET for the /notion server, or neither"
        ),
    }
}

/// What goes into a generated `postern.yaml`.
struct GeneratedConfig<'a> {
    dir: &'a Path,
    /// The routes' host (IPv6 without brackets).
    host: &'a str,
    /// Where the gateway listens.
    address: std::net::SocketAddr,
    servers_port: u16,
    notion: Option<&'a Notion>,
}

/// The gateway configuration `up` runs, written once to `DIR/postern.yaml` to be read, edited
/// and copied (the Notion client secret stays in the environment). Its first lines say how to
/// run it without `up`: the reference servers on the port its routes name, then the gateway.
fn gateway_config(generated: &GeneratedConfig<'_>) -> String {
    let GeneratedConfig {
        dir,
        host,
        address,
        servers_port,
        notion,
    } = *generated;
    let gateway_url = local_url(address.ip(), address.port());
    let from = postern_config::origin_of("http", host, None);
    let config_file = dir.join("postern.yaml");
    let database = dir.join("demo.db");
    let secret = if notion.is_some() {
        "NOTION_CLIENT_SECRET=... "
    } else {
        ""
    };
    let mut yaml = format!(
        "# Written once by `postern up`, which keeps your edits (delete this file for a fresh one).\n\
# To run it without `postern up`, start the reference servers, then the gateway:\n\
#   PORT={servers_port} SQLITE_DB_FILE={database} ASSERTION_JWKS_URL={gateway_url}/.well-known/pomerium/jwks.json ASSERTION_ISSUER={issuers} postern servers\n\
#   {secret}postern serve --config {config_file}\n\
insecure_server: true\n\
address: {address}\n\
data_dir: {dir}\n\
users_file: {users}\n\
pass_identity_headers: true\n\
routes:\n",
        database = shell_quote(&database.to_string_lossy()),
        config_file = shell_quote(&config_file.to_string_lossy()),
        address = yaml_string(&address.to_string()),
        issuers = issuers(host),
        dir = yaml_string(&dir.to_string_lossy()),
        users = yaml_string(&dir.join("users.yaml").to_string_lossy()),
    );
    let servers = format!("http://127.0.0.1:{servers_port}");
    let _ = write!(
        yaml,
        "  - from: {from}\n    prefix: /whoami\n    to: {servers}/whoami\n    name: Who am I\n    description: The identity the gateway passes to MCP servers\n    allow_any_authenticated_user: true\n    mcp: {{}}\n"
    );
    let _ = write!(
        yaml,
        "  - from: {from}\n    prefix: /sqlite\n    to: {servers}/sqlite\n    name: Demo database\n    description: Read-only SQL over the bundled demo database\n    allow_any_authenticated_user: true\n    mcp: {{}}\n"
    );
    if let Some(notion) = notion {
        let _ = write!(
            yaml,
            "  - from: {from}\n    prefix: /notion\n    to: {servers}/notion\n    name: Notion\n    description: Search and read your Notion workspace\n    allow_any_authenticated_user: true\n    mcp:\n      server:\n        upstream_oauth2:\n          client_id: {id}\n          client_secret: ${{NOTION_CLIENT_SECRET}}\n          endpoint:\n            auth_url: {auth}\n            token_url: {token}\n            auth_style: header\n          authorization_url_params:\n            owner: user\n",
            id = yaml_string(&notion.client_id),
            auth = yaml_string(&notion.auth_url),
            token = yaml_string(&notion.token_url),
        );
    }
    yaml
}

/// `text` as one shell word.
fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:,".contains(c))
    {
        return text.to_owned();
    }
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// A double-quoted YAML scalar (JSON strings are valid YAML).
fn yaml_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// What the banner says.
struct Banner<'a> {
    dir: &'a Path,
    config: &'a postern_config::Config,
    /// The port the gateway got.
    port: u16,
    user: &'a Credentials,
    new_user: bool,
    notion: bool,
    /// What `up` reused or noticed.
    notes: &'a [String],
}

/// The MCP server URLs of `config`'s routes, on `port`, with a short name for each.
fn server_urls(config: &postern_config::Config, port: u16) -> Vec<(String, String)> {
    config
        .routes
        .iter()
        .filter(|r| r.mcp.is_some())
        .filter_map(|r| {
            let path = r.prefix.as_deref().or(r.path.as_deref())?;
            let origin = postern_config::origin_of(
                &r.from.scheme,
                &r.from.host,
                Some(r.from.port.unwrap_or(port)),
            );
            let name = path.trim_matches('/').replace('/', "-");
            let name = if name == "sqlite" {
                "demo-db".into()
            } else {
                name
            };
            Some((name, format!("{origin}{path}")))
        })
        .collect()
}

fn banner(b: &Banner<'_>) -> String {
    let servers = server_urls(b.config, b.port);
    let base = servers
        .first()
        .and_then(|(_, url)| url.find("://").map(|i| (i, url)))
        .and_then(|(i, url)| url[i + 3..].find('/').map(|j| url[..i + 3 + j].to_owned()))
        .unwrap_or_else(|| format!("http://localhost:{}", b.port));
    let mut text = format!(
        "\nPostern is running on {base}\n\nMCP servers (paste a URL into your MCP client; it signs you in here):\n"
    );
    for (_, url) in &servers {
        let _ = writeln!(text, "  {url}");
    }
    let _ = writeln!(
        text,
        "\nSign in at {base}/.pomerium/ as {email}",
        email = b.user.email
    );
    let credentials = b.dir.join("credentials.txt");
    if b.new_user {
        let _ = writeln!(
            text,
            "  password: {} (shown once; kept in {})",
            b.user.password,
            credentials.display()
        );
    } else {
        let _ = writeln!(text, "  password: in {}", credentials.display());
    }
    text.push_str("\nConnect a client:\n");
    for (name, url) in &servers {
        let _ = writeln!(text, "  claude mcp add --transport http {name} {url}");
    }
    if let Some((_, url)) = servers.iter().find(|(n, _)| n == "demo-db") {
        let _ = writeln!(
            text,
            "  code --add-mcp '{{\"name\":\"postern-sqlite\",\"type\":\"http\",\"url\":\"{url}\"}}'"
        );
    }
    if let Some((_, url)) = servers.first() {
        let _ = writeln!(
            text,
            "  npx @modelcontextprotocol/inspector   (Transport: Streamable HTTP, URL: {url})"
        );
    }
    if !b.notion {
        text.push_str(
            "\n/notion is off: set NOTION_CLIENT_ID and NOTION_CLIENT_SECRET (redirect URI ",
        );
        let _ = writeln!(
            text,
            "{base}{}) to add it.",
            postern_config::defaults::UPSTREAM_CALLBACK_PATH
        );
    }
    for note in b.notes {
        let _ = writeln!(text, "\nNote: {note}.");
    }
    let _ = writeln!(
        text,
        "\nData (users, keys, tokens, demo database, postern.yaml): {}\nStop with Ctrl-C.\n",
        b.dir.display()
    );
    text
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))
}

/// Writes `text` to `path`, readable by this user only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    // An existing file keeps its mode on open: make sure it is private.
    #[cfg(unix)]
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_config_loads_with_and_without_notion() {
        let dir = Path::new("/tmp/postern \"up\"");
        let notion = Notion {
            client_id: "abc".into(),
            auth_url: "https://api.notion.com/v1/oauth/authorize".into(),
            token_url: "https://api.notion.com/v1/oauth/token".into(),
        };
        let env = std::collections::HashMap::from([(
            "NOTION_CLIENT_SECRET".to_owned(),
            "s3cret".to_owned(),
        )]);
        for notion in [None, Some(&notion)] {
            let yaml = gateway_config(&GeneratedConfig {
                dir,
                host: "localhost",
                address: "127.0.0.1:8080".parse().unwrap(),
                servers_port: 8081,
                notion,
            });
            let config =
                postern_config::parse(&yaml, dir, &env).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
            assert_eq!(config.routes.len(), 2 + usize::from(notion.is_some()));
            assert_eq!(config.data_dir(), dir);
            assert_eq!(issuers_of(&config), "localhost,127.0.0.1,::1");
            assert!(
                !yaml.contains("s3cret"),
                "the secret stays in the environment"
            );
        }
    }
    fn options(address: &str, host: Option<&str>) -> Options {
        Options {
            data_dir: PathBuf::from("d"),
            port: 8080,
            address: address.parse().unwrap(),
            host: host.map(str::to_owned),
        }
    }

    #[test]
    fn the_route_host_is_the_given_name_or_localhost() {
        let host = |address: &str, host: Option<&str>| route_host(&options(address, host));
        assert_eq!(host("127.0.0.1", None).unwrap(), "localhost");
        assert_eq!(host("0.0.0.0", None).unwrap(), "localhost");
        assert_eq!(host("192.168.1.5", None).unwrap(), "192.168.1.5");
        assert_eq!(host("0.0.0.0", Some("MyBox.local")).unwrap(), "mybox.local");
        assert_eq!(host("::", Some("[fd00::1]")).unwrap(), "fd00::1");
        for bad in ["http://mybox", "mybox:8080/x", "my box", ""] {
            let error = host("0.0.0.0", Some(bad)).unwrap_err().to_string();
            assert!(
                error.contains("--host") && error.contains("--port"),
                "{error}"
            );
        }
    }

    #[test]
    fn a_config_for_another_host_and_address_loads_and_names_them() {
        let dir = Path::new("/tmp/postern-up");
        for (host, address, from) in [
            ("mybox.local", "0.0.0.0:8080", "from: http://mybox.local\n"),
            ("fd00::1", "[::]:8080", "from: http://[fd00::1]\n"),
        ] {
            let yaml = gateway_config(&GeneratedConfig {
                dir,
                host,
                address: address.parse().unwrap(),
                servers_port: 8081,
                notion: None,
            });
            assert!(yaml.contains(from), "{yaml}");
            assert!(
                yaml.contains(&format!("address: \"{address}\"\n")),
                "{yaml}"
            );
            assert!(
                yaml.contains(&format!("ASSERTION_ISSUER={host} postern servers")),
                "{yaml}"
            );
            let env = std::collections::HashMap::new();
            let config =
                postern_config::parse(&yaml, dir, &env).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
            assert_eq!(reference_servers_port(&config), Some(8081));
            assert_eq!(issuers_of(&config), host);
        }
    }
}
