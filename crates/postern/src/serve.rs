//! `postern serve` and `postern check-config`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use postern_access::assertion::Signer;
use postern_access::github::{GitHub, GitHubSettings};
use postern_access::oidc::{Oidc, OidcSettings};
use postern_access::users::LocalUsers;
use postern_access::{Access, AccessSettings};
use postern_config::{Config, ProcessEnv, StorageType};
use postern_gateway::acme::{Autocert, AutocertConfig};
use postern_gateway::tls::{CertMap, CertResolver, load_pair};
use postern_gateway::{Gateway, routes::RouteTable, server};
use postern_store::{Backend, Store};
use tokio_util::sync::CancellationToken;

/// Loads and checks `path` as `serve` would before it starts (see [`preflight`]); prints a
/// summary.
pub fn check_config(path: &Path) -> anyhow::Result<()> {
    let config = postern_config::load(path, &ProcessEnv)?;
    preflight(&config, path)?;
    for warning in &config.warnings {
        println!("warning: {warning}");
    }
    let mcp = config.routes.iter().filter(|r| r.mcp.is_some()).count();
    println!(
        "{}: OK ({} routes, {} of them MCP; listening on {})",
        path.display(),
        config.routes.len(),
        mcp,
        config.listen_address()
    );
    Ok(())
}

/// What `serve` refuses before binding a port or opening the store, beyond what parsing the
/// file checked: listen addresses, `users_file`, certificate and CA files, keys and secrets.
/// `check-config` runs exactly this, so it says OK only for what `serve` starts with. Returns the
/// local users, read once.
pub(crate) fn preflight(config: &Config, path: &Path) -> anyhow::Result<LocalUsers> {
    let base = path.parent().unwrap_or(Path::new("."));
    let addresses = [
        ("address", Some(config.listen_address())),
        ("metrics_address", config.metrics_address.clone()),
        (
            "http_redirect_address",
            config.http_redirect_address().map(str::to_owned),
        ),
    ];
    for (key, address) in addresses {
        if let Some(address) = address {
            check_address(key, &address)?;
        }
    }
    let users = load_users(config, base)?;
    if !config.insecure_server {
        certificates(config, path)?;
        if let Some(mtls) = &config.downstream_mtls {
            postern_gateway::mtls::ClientAuth::new(mtls)?;
        }
    }
    if let Some(ca) = &config.autocert_trusted_ca_file {
        let file = base.join(ca);
        std::fs::read(&file).with_context(|| {
            format!(
                "autocert_trusted_ca_file: cannot read {}; give a readable PEM file",
                file.display()
            )
        })?;
    }
    if let Some(key) = &config.signing_key {
        Signer::from_pem(key.expose()).map_err(|e| anyhow::anyhow!("signing_key: {e}"))?;
    }
    shared_secrets(config)?;
    Ok(users)
}

/// `host:port` with a port from 0 to 65535 (`:port` listens on every address); not resolved.
fn check_address(key: &str, address: &str) -> anyhow::Result<()> {
    let example = "write host:port, e.g. 127.0.0.1:8080, [::1]:8080 or :443";
    let Some((host, port)) = address.rsplit_once(':') else {
        anyhow::bail!("{key}: {address:?} has no port; {example}");
    };
    if port.parse::<u16>().is_err() {
        anyhow::bail!(
            "{key}: {address:?}: the port {port:?} is not a number from 0 to 65535; {example}"
        );
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        anyhow::bail!("{key}: {address:?}: an IPv6 address goes in brackets; {example}");
    }
    Ok(())
}

/// The local users of `users_file` (relative to the configuration file), or none.
fn load_users(config: &Config, base: &Path) -> anyhow::Result<LocalUsers> {
    match &config.users_file {
        Some(file) => Ok(LocalUsers::load(&base.join(file))?),
        None => Ok(LocalUsers::default()),
    }
}

/// The shared secret, if configured, and the previous ones.
type SharedSecrets = (Option<Vec<u8>>, Vec<Vec<u8>>);

/// The shared secret, if configured, and the previous ones, decoded; PostgreSQL storage requires
/// one.
fn shared_secrets(config: &Config) -> anyhow::Result<SharedSecrets> {
    let secret = match &config.shared_secret {
        Some(secret) => Some(
            postern_config::decode_base64(secret.expose())
                .context("shared_secret is not base64")?,
        ),
        None if config.databroker_storage_type == Some(StorageType::Postgres) => anyhow::bail!(
            "shared_secret: required with databroker_storage_type: postgres (every replica needs the same one)"
        ),
        None => None,
    };
    let previous = config
        .previous_shared_secrets
        .iter()
        .map(|s| {
            postern_config::decode_base64(s.expose()).context("previous_shared_secrets: not base64")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((secret, previous))
}

/// The keys whose change in the file a running gateway does not put in force: listeners, TLS,
/// storage, keys and what is built once at start. Everything else (routes, policies, users,
/// token lifetimes, cookie and header settings, `authorize_log_fields`, ...) applies on reload.
fn needs_restart(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    macro_rules! compare {
        ($($key:ident),* $(,)?) => {
            $(if format!("{:?}", running.$key) != format!("{:?}", new.$key) {
                keys.push(stringify!($key));
            })*
        };
    }
    compare!(
        address,
        insecure_server,
        http_redirect_address,
        metrics_address,
        autocert,
        autocert_dir,
        autocert_ca,
        autocert_email,
        autocert_trusted_ca_file,
        downstream_mtls,
        data_dir,
        databroker_storage_type,
        authenticate_service_url,
        idp_provider,
        idp_provider_url,
        idp_client_id,
        idp_scopes,
        idp_groups_claim,
        jwt_assertion_reuse,
        log_level,
        timeout_read,
        timeout_idle,
        max_connections,
        mcp_allowed_client_id_domains,
        mcp_allowed_as_metadata_domains,
    );
    // Secrets print as `[redacted]`: compared by value.
    for (key, changed) in [
        ("shared_secret", running.shared_secret != new.shared_secret),
        (
            "previous_shared_secrets",
            running.previous_shared_secrets != new.previous_shared_secrets,
        ),
        ("signing_key", running.signing_key != new.signing_key),
        (
            "idp_client_secret",
            running.idp_client_secret != new.idp_client_secret,
        ),
        (
            "databroker_storage_connection_string",
            running.databroker_storage_connection_string
                != new.databroker_storage_connection_string,
        ),
    ] {
        if changed {
            keys.push(key);
        }
    }
    keys
}

/// Every key [`needs_restart`] may name, for the gauge's series (present from start, at 0).
const RESTART_KEYS: &[&str] = &[
    "address",
    "insecure_server",
    "http_redirect_address",
    "metrics_address",
    "autocert",
    "autocert_dir",
    "autocert_ca",
    "autocert_email",
    "autocert_trusted_ca_file",
    "downstream_mtls",
    "data_dir",
    "databroker_storage_type",
    "authenticate_service_url",
    "idp_provider",
    "idp_provider_url",
    "idp_client_id",
    "idp_scopes",
    "idp_groups_claim",
    "jwt_assertion_reuse",
    "log_level",
    "timeout_read",
    "timeout_idle",
    "max_connections",
    "mcp_allowed_client_id_domains",
    "mcp_allowed_as_metadata_domains",
    "shared_secret",
    "previous_shared_secrets",
    "signing_key",
    "idp_client_secret",
    "databroker_storage_connection_string",
];

/// Sets the needs-restart gauge: 1 for the `pending` keys, 0 for the others.
fn report_restart(gateway: &Gateway, pending: &[&'static str]) {
    for key in RESTART_KEYS {
        gateway
            .metrics()
            .needs_restart
            .get_or_create(&postern_gateway::metrics::KeyLabel { key })
            .set(i64::from(pending.contains(key)));
    }
}

/// What loading the configuration noticed but did not refuse (Pomerium keys Postern ignores).
fn log_warnings(config: &Config) {
    for warning in &config.warnings {
        tracing::warn!("configuration: {warning}");
    }
}

/// The directory of `databroker_storage_type: file`: the connection string's `file://` URL or
/// path (relative to the configuration file), else the data directory.
fn file_store_dir(config: &Config, base: &Path, data_dir: &Path) -> PathBuf {
    match &config.databroker_storage_connection_string {
        Some(location) => {
            let location = location.expose();
            base.join(location.strip_prefix("file://").unwrap_or(location))
        }
        None => data_dir.to_owned(),
    }
}

/// Opens the configured store; the shared secret comes from the configuration or, on a single
/// gateway, is generated once and kept in the data directory.
async fn open_store(config: &Config, base: &Path) -> anyhow::Result<Store> {
    let data_dir = base.join(config.data_dir());
    let (secret, previous) = shared_secrets(config)?;
    let secret = match secret {
        Some(secret) => secret,
        None => generated_secret(&data_dir.join("shared_secret"))?,
    };
    let backend = match config.storage_type() {
        StorageType::Sqlite => Backend::sqlite_in(&data_dir),
        StorageType::File => Backend::sqlite_in(&file_store_dir(config, base, &data_dir)),
        StorageType::Memory => Backend::Memory,
        StorageType::Postgres => Backend::Postgres(
            config
                .databroker_storage_connection_string
                .as_ref()
                .map(|s| s.expose().to_owned())
                .context("databroker_storage_connection_string is required")?,
        ),
    };
    Ok(Store::open(&backend, &secret, &previous).await?)
}

/// Reads, or creates with 32 random bytes, the generated shared secret.
fn generated_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    if let Ok(text) = std::fs::read_to_string(path) {
        return engine
            .decode(text.trim())
            .with_context(|| format!("{} is not base64", path.display()));
    }
    let bytes: [u8; 32] = rand::random();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    use std::io::Write as _;
    options
        .open(path)
        .and_then(|mut f| f.write_all(engine.encode(bytes).as_bytes()))
        .with_context(|| format!("writing {}", path.display()))?;
    // Only SQLite and memory storage get here (PostgreSQL requires a shared secret): one
    // replica, for which a generated secret is right, so this is news, not a warning.
    tracing::info!(file = %path.display(), "no shared_secret configured: generated one");
    Ok(bytes.to_vec())
}

/// Sign-in, sessions, policy and the identity assertion.
async fn access_hooks(
    config: &Config,
    base: &Path,
    store: &Store,
    users: LocalUsers,
    extras: Extras,
) -> anyhow::Result<Arc<Access>> {
    if config.users_file.is_none() && config.idp_provider.is_none() {
        tracing::warn!(
            "no users_file and no idp_provider: nobody can sign in, only public routes work"
        );
    }
    let pem = match &config.signing_key {
        Some(key) => key.expose().to_owned(),
        None => {
            store
                .get_or_insert_key("assertion_signing_key", &Signer::generate_pem())
                .await?
        }
    };
    let signer = Signer::from_pem(&pem)
        .map_err(|e| anyhow::anyhow!("signing_key: {e}"))?
        .reusing(config.jwt_assertion_reuse);
    let mut settings = AccessSettings::from_config(config);
    settings.audit_file = Some(base.join(config.audit_file()));
    settings.sign_in_email = extras.sign_in_email;
    let mut access = Access::new(store.clone(), users, signer, settings);
    if let Some(settings) = OidcSettings::from_config(config) {
        access = access.with_oidc(Oidc::new(settings));
    }
    if let Some(settings) = GitHubSettings::from_config(config) {
        access = access.with_github(GitHub::new(settings));
    }
    Ok(Arc::new(access))
}

/// Loads the configured certificate files into an SNI map for the route hosts.
fn certificates(config: &Config, config_path: &Path) -> anyhow::Result<CertMap> {
    let base = config_path.parent().unwrap_or(Path::new("."));
    let mut pairs: Vec<(PathBuf, PathBuf)> = Vec::new();
    if let (Some(cert), Some(key)) = (&config.certificate_file, &config.certificate_key_file) {
        pairs.push((base.join(cert), base.join(key)));
    }
    pairs.extend(
        config
            .certificates
            .iter()
            .map(|c| (base.join(&c.cert), base.join(&c.key))),
    );
    let certs = pairs
        .iter()
        .map(|(cert, key)| load_pair(cert, key))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CertMap::new(&certs, &RouteTable::new(config).hosts()))
}

/// What `postern up` adds to the configuration it serves.
#[derive(Default)]
pub struct Extras {
    /// The email the sign-in form starts with (the generated user's).
    pub sign_in_email: Option<String>,
}

/// `postern revoke-user`: ends every browser session and client grant of the user known by
/// `user` (an email, or a user id) in the store `config` names; (sessions, grants) ended.
/// Running gateways see it through the store (refresh at once, access tokens within the
/// revocation poll).
pub async fn revoke_user(path: &Path, config: &Config, user: &str) -> anyhow::Result<(u64, u64)> {
    anyhow::ensure!(
        config.storage_type() != StorageType::Memory,
        "databroker_storage_type is memory: the state lives inside the running gateway, so there is nothing to revoke from here (restart the gateway to end every session and grant)"
    );
    let base = path.parent().unwrap_or(Path::new(".")).to_owned();
    let store = open_store(config, &base).await?;
    let mut ids = store.user_ids_by_email(user).await?;
    if !ids.iter().any(|id| id == user) {
        ids.push(user.to_owned());
    }
    let (mut sessions, mut grants) = (0, 0);
    for id in ids {
        let (s, g) = store.revoke_user(&id).await?;
        sessions += s;
        grants += g;
    }
    tracing::info!(target: "postern::audit", event = "user_revoked", user, sessions, grants, "user revoked by the operator");
    Ok((sessions, grants))
}

/// Runs the gateway on its configured `address` until Ctrl-C or SIGTERM.
pub async fn serve(path: PathBuf, config: Config) -> anyhow::Result<()> {
    let listener = listen(&config.listen_address()).await?;
    serve_on(vec![listener], path, config, Extras::default()).await
}

/// Runs the gateway on `listeners` (bound by the caller, all serving the same thing) until
/// Ctrl-C or SIGTERM.
pub async fn serve_on(
    listeners: Vec<tokio::net::TcpListener>,
    path: PathBuf,
    config: Config,
    extras: Extras,
) -> anyhow::Result<()> {
    log_warnings(&config);
    let users = preflight(&config, &path)?;
    let shutdown = CancellationToken::new();
    let base = path.parent().unwrap_or(Path::new(".")).to_owned();
    let store = open_store(&config, &base).await?;
    store.spawn_collector(std::time::Duration::from_secs(300), shutdown.clone());
    let hooks = access_hooks(&config, &base, &store, users, extras).await?;
    let gateway = Gateway::new(config.clone(), hooks.clone());
    report_restart(&gateway, &[]);
    let metrics = gateway.metrics().clone();
    postern_store::observe_operations(Box::new(move |op, elapsed, ok| {
        metrics.store_operation(op, elapsed, ok)
    }));

    let resolver = Arc::new(CertResolver::default());
    let challenges = Arc::new(server::Challenges::default());
    // Client certificates (downstream_mtls); the config crate refused them without TLS.
    let client_auth = match (&config.downstream_mtls, config.insecure_server) {
        (Some(mtls), false) => Some(Arc::new(postern_gateway::mtls::ClientAuth::new(mtls)?)),
        _ => None,
    };
    let tls = if config.insecure_server {
        None
    } else {
        resolver.set(certificates(&config, &path)?);
        Some(postern_gateway::tls::server_config_with_client_auth(
            resolver.clone(),
            false,
            client_auth.clone(),
        ))
    };
    let autocert = (config.autocert && tls.is_some())
        .then(|| new_autocert(&config, &base, &challenges, &resolver));

    let mut listeners = listeners.into_iter();
    let listener = listeners.next().context("no listener to serve on")?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, tls = tls.is_some(), routes = config.routes.len(), "postern gateway listening");

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(l) = redirect_listener(&config, autocert.is_some()).await? {
        tasks.spawn(server::serve_redirect(
            l,
            local.port(),
            challenges.clone(),
            gateway.clone(),
            shutdown.clone(),
        ));
    }
    if let Some(l) = metrics_listener(&config).await? {
        tasks.spawn(server::serve_metrics(l, gateway.clone(), shutdown.clone()));
    }
    if let Some(autocert) = &autocert {
        tasks.spawn(run_autocert(autocert, &gateway, &shutdown));
    }
    let apply = apply_reload(Reload {
        config_path: path.clone(),
        running: config.clone(),
        gateway: gateway.clone(),
        access: hooks,
        resolver: resolver.clone(),
        autocert: autocert.clone(),
    });
    tasks.spawn(postern_gateway::reload::watch(
        path.clone(),
        Box::new(ProcessEnv),
        gateway.clone(),
        apply,
        shutdown.clone(),
    ));
    tokio::spawn(crate::stop_on_signal(shutdown.clone()));
    let timeouts = server::ConnectionTimeouts {
        first_request: config.read_timeout(),
        body_read: config.read_timeout(),
        idle: config.idle_connection_timeout(),
        ..server::ConnectionTimeouts::default()
    };
    for extra in listeners {
        tracing::info!(address = %extra.local_addr()?, "postern gateway listening");
        tasks.spawn(server::serve_mtls(
            extra,
            tls.clone(),
            client_auth.clone(),
            gateway.clone(),
            shutdown.clone(),
            timeouts,
        ));
    }
    server::serve_mtls(
        listener,
        tls,
        client_auth,
        gateway,
        shutdown.clone(),
        timeouts,
    )
    .await;
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    tracing::info!("postern gateway stopped");
    Ok(())
}

/// ACME certificates for the https route hosts, kept under `autocert_dir`.
fn new_autocert(
    config: &Config,
    base: &Path,
    challenges: &Arc<server::Challenges>,
    resolver: &Arc<CertResolver>,
) -> Arc<Autocert> {
    let mut settings = AutocertConfig::new(
        base.join(config.autocert_dir()),
        Some(config.autocert_ca().to_owned()),
    );
    settings.email = config.autocert_email.clone();
    settings.trusted_ca = config
        .autocert_trusted_ca_file
        .as_ref()
        .map(|f| base.join(f));
    Arc::new(Autocert::new(
        settings,
        challenges.clone(),
        resolver.clone(),
    ))
}

/// `postern healthcheck URL`: exits 0 when `url` answers 2xx within 5 s (for container
/// healthchecks: the image has no curl).
pub async fn healthcheck(url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).with_context(|| {
        format!("{url:?} is not a URL; give e.g. http://127.0.0.1:9090/healthz (the gateway's metrics_address) or http://127.0.0.1:8080/healthz (postern servers)")
    })?;
    anyhow::ensure!(
        matches!(parsed.scheme(), "http" | "https"),
        "{url}: only http and https URLs can be checked"
    );
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("building the HTTP client")?;
    let response = client.get(parsed).send().await.with_context(|| {
        format!("{url}: no answer (is the service running and listening there?)")
    })?;
    let status = response.status();
    anyhow::ensure!(status.is_success(), "{url}: unhealthy, answered {status}");
    println!("{url}: {status}");
    Ok(())
}

/// The main listener, on `address`.
async fn listen(address: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let addrs = server::resolve_address(address)
        .await
        .with_context(|| format!("address {address:?}"))?;
    tokio::net::TcpListener::bind(&addrs[..])
        .await
        .with_context(|| format!("cannot listen on {address} (set `address` to a free port)"))
}

/// The plain-HTTP listener that redirects to HTTPS, if there is one. Failing to bind the
/// default :80 is only a warning; failing to bind one that was asked for is an error.
async fn redirect_listener(
    config: &Config,
    autocert: bool,
) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    // Off with plain HTTP (insecure_server) or an empty http_redirect_address.
    let Some(redirect) = config.http_redirect_address() else {
        return Ok(None);
    };
    // ACME HTTP-01 challenges arrive here: with autocert this listener is required.
    let explicit = config.http_redirect_address.is_some() || autocert;
    match bind(redirect).await {
        Ok(l) => {
            tracing::info!(address = %l.local_addr()?, "redirecting plain HTTP to HTTPS");
            Ok(Some(l))
        }
        Err(e) if explicit => Err(e).context(format!("http_redirect_address {redirect}")),
        Err(e) => {
            tracing::warn!(error = %e, "not redirecting plain HTTP: cannot listen on :80 (set http_redirect_address)");
            Ok(None)
        }
    }
}

/// The metrics and health listener, if `metrics_address` is set.
async fn metrics_listener(config: &Config) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let Some(metrics) = &config.metrics_address else {
        return Ok(None);
    };
    let l = bind(metrics)
        .await
        .with_context(|| format!("metrics_address {metrics}"))?;
    tracing::info!(address = %l.local_addr()?, "metrics on /metrics, health on /healthz");
    Ok(Some(l))
}

/// Loads the cached ACME certificates now and returns the task that obtains and renews the rest.
fn run_autocert(
    autocert: &Arc<Autocert>,
    gateway: &Gateway,
    shutdown: &CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let missing = autocert.load_cached(&acme_hosts(gateway));
    tracing::info!(
        missing = missing.len(),
        "autocert: cached certificates loaded"
    );
    let hosts_gateway = gateway.clone();
    autocert
        .clone()
        .run(move || acme_hosts(&hosts_gateway), shutdown.clone())
}

/// What a reload works on: the configuration the process started with and what it built.
struct Reload {
    config_path: PathBuf,
    /// The configuration the listeners, store and keys were made from.
    running: Config,
    gateway: Gateway,
    access: Arc<Access>,
    resolver: Arc<CertResolver>,
    autocert: Option<Arc<Autocert>>,
}

/// What a configuration reload does once the new file has parsed: read `users_file` and the
/// certificate files again, then put the routes, the users and every per-request setting in
/// force. The keys that need a restart ([`needs_restart`]) are logged and counted in the
/// `postern_config_needs_restart` gauge; switching TLS on or off, or changing the client
/// certificate settings, refuses the whole reload instead.
fn apply_reload(reload: Reload) -> Box<dyn Fn(Config) -> Result<(), String> + Send + Sync> {
    Box::new(move |new: Config| -> Result<(), String> {
        let Reload {
            config_path,
            running,
            gateway,
            access,
            resolver,
            autocert,
        } = &reload;
        let pending = needs_restart(running, &new);
        report_restart(gateway, &pending);
        let tls_on = !running.insecure_server;
        if new.insecure_server == tls_on {
            return Err(
                "insecure_server changed: restart to switch between TLS and plain HTTP".into(),
            );
        }
        // The listener's client-certificate verifier is built once; the routes' policies
        // (default deny) must keep agreeing with it.
        if new.downstream_mtls != running.downstream_mtls {
            return Err(
                "downstream_mtls (or client_ca) changed: restart to put the new client-certificate settings in force".into(),
            );
        }
        let base = config_path.parent().unwrap_or(Path::new("."));
        let users = load_users(&new, base).map_err(|e| e.to_string())?;
        if tls_on {
            resolver.set(certificates(&new, config_path).map_err(|e| e.to_string())?);
        }
        log_warnings(&new);
        if !pending.is_empty() {
            tracing::warn!(
                keys = ?pending.join(","),
                "needs restart: {}: the rest of the configuration is in force",
                pending.join(", ")
            );
        }
        access.reload(AccessSettings::from_config(&new), users);
        gateway.replace(new);
        if let Some(autocert) = &autocert {
            // Certificate files were reloaded: put the ACME ones back and look for new hosts.
            autocert.load_cached(&acme_hosts(gateway));
            autocert.wake();
        }
        Ok(())
    })
}

/// The route hosts that get ACME certificates: https routes, except wildcards (HTTP-01 can't
/// validate them).
fn acme_hosts(gateway: &Gateway) -> Vec<String> {
    let runtime = gateway.runtime();
    let mut hosts: Vec<String> = runtime
        .config
        .routes
        .iter()
        .filter(|r| r.from.scheme == "https" && !r.from.host.starts_with("*."))
        .map(|r| r.from.host.clone())
        .collect();
    // The sign-in origin needs its certificate too.
    hosts.extend(
        runtime
            .config
            .authenticate_service()
            .filter(|a| a.origin.starts_with("https://"))
            .map(|a| a.host),
    );
    hosts.sort();
    hosts.dedup();
    hosts
}

async fn bind(address: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let addrs = server::resolve_address(address).await?;
    Ok(tokio::net::TcpListener::bind(&addrs[..]).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        let env: std::collections::HashMap<String, String> = Default::default();
        postern_config::parse(yaml, Path::new("."), &env).unwrap()
    }

    #[tokio::test]
    async fn revoke_user_ends_the_users_sessions_and_grants_in_the_configured_store() {
        use postern_store::{GrantIdentity, Session, TokenFamily, now_ms};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("postern.yaml");
        let config = config("insecure_server: true\n");
        let store = open_store(&config, dir.path()).await.unwrap();
        let session = |id: &str, user: &str| Session {
            id: id.into(),
            user_id: user.into(),
            email: format!("{user}@example.com"),
            idp: "oidc".into(),
            expires_at: now_ms() + 60_000,
            ..Default::default()
        };
        for (s, f, user) in [("s1", "f1", "sub-ada"), ("s2", "f2", "sub-grace")] {
            let session = session(s, user);
            store.put_session(&session).await.unwrap();
            let family = TokenFamily {
                family_id: f.into(),
                client_id: "c".into(),
                user_id: user.into(),
                session_id: s.into(),
                resource: "http://localhost/sqlite".into(),
                scope: None,
                created_at: now_ms(),
                expires_at: now_ms() + 60_000,
                identity: Some(GrantIdentity::of(&session)),
                client_name: None,
                redirect_uri: None,
            };
            store
                .create_family(&family, &format!("rt-{f}"), now_ms() + 60_000)
                .await
                .unwrap();
        }
        drop(store);
        assert_eq!(
            revoke_user(&path, &config, "SUB-ADA@example.com")
                .await
                .unwrap(),
            (1, 1)
        );
        let store = open_store(&config, dir.path()).await.unwrap();
        assert!(store.find_refresh_token("rt-f1").await.unwrap().is_none());
        assert!(store.get_session("s1").await.unwrap().is_none());
        assert!(
            store.find_refresh_token("rt-f2").await.unwrap().is_some(),
            "other users keep theirs"
        );
        assert_eq!(
            revoke_user(&path, &config, "sub-grace").await.unwrap(),
            (1, 1),
            "a user id works too"
        );
        let memory = self::config("insecure_server: true\ndatabroker_storage_type: memory\n");
        let err = revoke_user(&path, &memory, "x")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("memory"), "{err}");
    }

    #[test]
    fn a_reload_names_the_keys_that_need_a_restart_secrets_included() {
        let running = config("insecure_server: true\naddress: 127.0.0.1:8080\n");
        assert!(needs_restart(&running, &running.clone()).is_empty());
        let changed = config(
            "insecure_server: true\naddress: 127.0.0.1:9090\nshared_secret: MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTIzNDU2Nzg5MDE=\nmcp_access_token_ttl: 5m\n",
        );
        // A secret prints as [redacted] in both, and is compared by value; the token lifetime
        // applies on reload.
        assert_eq!(
            needs_restart(&running, &changed),
            ["address", "shared_secret"]
        );
        for key in needs_restart(&running, &changed) {
            assert!(RESTART_KEYS.contains(&key), "{key} has a gauge series");
        }
    }

    #[test]
    fn addresses_need_a_port_that_fits() {
        for ok in ["127.0.0.1:0", ":443", "[::1]:8080", "localhost:65535"] {
            assert!(check_address("address", ok).is_ok(), "{ok}");
        }
        for (bad, says) in [
            ("127.0.0.1:99999", "0 to 65535"),
            ("127.0.0.1", "no port"),
            ("::1:80", "brackets"),
            ("host:http", "0 to 65535"),
        ] {
            let error = check_address("address", bad).unwrap_err().to_string();
            assert!(
                error.contains(says) && error.starts_with("address:"),
                "{error}"
            );
        }
    }

    #[test]
    fn a_file_store_lives_where_the_connection_string_says() {
        let base = Path::new("/etc/postern");
        let data = Path::new("/etc/postern/postern-data");
        let dir = |yaml: &str| file_store_dir(&config(yaml), base, data);
        let file = "insecure_server: true\ndatabroker_storage_type: file\n";
        assert_eq!(dir(file), data);
        assert_eq!(
            dir(&format!(
                "{file}databroker_storage_connection_string: file:///var/lib/postern\n"
            )),
            Path::new("/var/lib/postern")
        );
        assert_eq!(
            dir(&format!(
                "{file}databroker_storage_connection_string: state\n"
            )),
            Path::new("/etc/postern/state")
        );
    }
}
