//! `postern up`: the whole system on localhost in one command. The reference servers run in this
//! process on a loopback port of their own; the gateway runs in front of them on
//! `http://localhost:PORT` with path routes, local sign-in for a generated user, and SQLite
//! storage, all kept in the data directory so that a re-run finds the same user, keys and tokens.

use std::fmt::Write as _;
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

pub async fn up(data_dir: PathBuf, port: u16) -> anyhow::Result<()> {
    create_private_dir(&data_dir)?;
    let dir = data_dir
        .canonicalize()
        .with_context(|| format!("data directory {}", data_dir.display()))?;
    let (credentials, new_user) = credentials(&dir)?;
    write_users(&dir, &credentials)?;
    let database = demo_database(&dir)?;
    let notion = notion_from_env()?;

    let servers = ReferenceServers::start(&database, port).await?;
    let config_path = dir.join("postern.yaml");
    write_private(
        &config_path,
        &gateway_config(&dir, port, servers.port, notion.as_ref()),
    )?;
    let config = postern_config::load(&config_path, &postern_config::ProcessEnv)
        .context("the generated configuration")?;

    print!(
        "{}",
        banner(&dir, port, &credentials, new_user, notion.is_some())
    );
    let result = crate::serve::serve(config_path, config).await;
    servers.stop().await;
    result
}

/// Writes `DIR/users.yaml` with the one generated user.
fn write_users(dir: &Path, credentials: &Credentials) -> anyhow::Result<()> {
    let hash = postern_access::users::hash_password(&credentials.password)?;
    write_private(
        &dir.join("users.yaml"),
        &format!(
            "# Written by `postern up` from credentials.txt.\n- {{email: {}, name: You, groups: [admin], password_hash: \"{hash}\"}}\n",
            credentials.email
        ),
    )
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
    port: u16,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl ReferenceServers {
    /// Starts them for a gateway on `gateway_port`, serving `database` at `/sqlite`.
    async fn start(database: &Path, gateway_port: u16) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("cannot listen on a loopback port for the reference servers")?;
        let port = listener.local_addr()?.port();
        let env = servers_env(port, database, gateway_port);
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
        Ok(ReferenceServers {
            port,
            shutdown,
            task,
        })
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// The reference servers' environment: their port, the demo database, the gateway's
/// assertion to trust, and the Notion API settings passed through from ours.
fn servers_env(
    servers_port: u16,
    database: &Path,
    port: u16,
) -> std::collections::HashMap<String, String> {
    let mut env = std::collections::HashMap::from([
        ("PORT".to_owned(), servers_port.to_string()),
        (
            "SQLITE_DB_FILE".to_owned(),
            database.to_string_lossy().into_owned(),
        ),
        (
            "ASSERTION_JWKS_URL".to_owned(),
            format!("http://localhost:{port}/.well-known/pomerium/jwks.json"),
        ),
        ("ASSERTION_ISSUER".to_owned(), "localhost".to_owned()),
        ("ASSERTION_AUDIENCE".to_owned(), "localhost".to_owned()),
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

/// The gateway configuration `up` runs (written to `DIR/postern.yaml` so it can be read and
/// copied; the Notion client secret stays in the environment).
fn gateway_config(dir: &Path, port: u16, servers_port: u16, notion: Option<&Notion>) -> String {
    let mut yaml = format!(
        "# Written by `postern up` on every start; copy it to make your own configuration.\n\
insecure_server: true\n\
address: 127.0.0.1:{port}\n\
data_dir: {dir}\n\
users_file: {users}\n\
pass_identity_headers: true\n\
routes:\n",
        dir = yaml_string(&dir.to_string_lossy()),
        users = yaml_string(&dir.join("users.yaml").to_string_lossy()),
    );
    let servers = format!("http://127.0.0.1:{servers_port}");
    let _ = write!(
        yaml,
        "  - from: http://localhost\n    prefix: /whoami\n    to: {servers}/whoami\n    name: Who am I\n    description: The identity the gateway passes to MCP servers\n    allow_any_authenticated_user: true\n    mcp: {{}}\n"
    );
    let _ = write!(
        yaml,
        "  - from: http://localhost\n    prefix: /sqlite\n    to: {servers}/sqlite\n    name: Demo database\n    description: Read-only SQL over the bundled demo database\n    allow_any_authenticated_user: true\n    mcp: {{}}\n"
    );
    if let Some(notion) = notion {
        let _ = write!(
            yaml,
            "  - from: http://localhost\n    prefix: /notion\n    to: {servers}/notion\n    name: Notion\n    description: Search and read your Notion workspace\n    allow_any_authenticated_user: true\n    mcp:\n      server:\n        upstream_oauth2:\n          client_id: {id}\n          client_secret: ${{NOTION_CLIENT_SECRET}}\n          endpoint:\n            auth_url: {auth}\n            token_url: {token}\n            auth_style: header\n          authorization_url_params:\n            owner: user\n",
            id = yaml_string(&notion.client_id),
            auth = yaml_string(&notion.auth_url),
            token = yaml_string(&notion.token_url),
        );
    }
    yaml
}

/// A double-quoted YAML scalar (JSON strings are valid YAML).
fn yaml_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

fn banner(dir: &Path, port: u16, user: &Credentials, new_user: bool, notion: bool) -> String {
    let base = format!("http://localhost:{port}");
    let mut text = format!(
        "\nPostern is running on {base}\n\nMCP servers (paste a URL into your MCP client; it signs you in here):\n"
    );
    let mut servers = vec![("whoami", "whoami"), ("sqlite", "demo-db")];
    if notion {
        servers.push(("notion", "notion"));
    }
    for (path, _) in &servers {
        let _ = writeln!(text, "  {base}/{path}");
    }
    let _ = writeln!(
        text,
        "\nSign in at {base}/.pomerium/ as {email}",
        email = user.email
    );
    if new_user {
        let _ = writeln!(
            text,
            "  password: {} (shown once; kept in {})",
            user.password,
            dir.join("credentials.txt").display()
        );
    } else {
        let _ = writeln!(
            text,
            "  password: in {}",
            dir.join("credentials.txt").display()
        );
    }
    text.push_str("\nConnect a client:\n");
    for (path, name) in &servers {
        let _ = writeln!(
            text,
            "  claude mcp add --transport http {name} {base}/{path}"
        );
    }
    let _ = writeln!(
        text,
        "  code --add-mcp '{{\"name\":\"postern-sqlite\",\"type\":\"http\",\"url\":\"{base}/sqlite\"}}'"
    );
    let _ = writeln!(
        text,
        "  npx @modelcontextprotocol/inspector   (Transport: Streamable HTTP, URL: {base}/whoami)"
    );
    if !notion {
        text.push_str(
            "\n/notion is off: set NOTION_CLIENT_ID and NOTION_CLIENT_SECRET (redirect URI ",
        );
        let _ = writeln!(
            text,
            "{base}{}) to add it.",
            postern_config::defaults::UPSTREAM_CALLBACK_PATH
        );
    }
    let _ = writeln!(
        text,
        "\nData (users, keys, tokens, demo database): {}\nStop with Ctrl-C.\n",
        dir.display()
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
            let yaml = gateway_config(dir, 8080, 9999, notion);
            let config =
                postern_config::parse(&yaml, dir, &env).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
            assert_eq!(config.routes.len(), 2 + usize::from(notion.is_some()));
            assert_eq!(config.data_dir(), dir);
            assert!(
                !yaml.contains("s3cret"),
                "the secret stays in the environment"
            );
        }
    }
}
