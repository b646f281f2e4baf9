//! Shared by the tests of the `postern` binary: the binary itself ([`postern`], [`hash`],
//! [`Process`]), a browser that signs in and clicks ([`browser`], [`sign_in_with`],
//! [`clicked`], [`hidden_fields`]); and, for the fault tests (`crash.rs`, `disk.rs`), real
//! `postern serve` processes that can be killed with SIGKILL and started again on the same port
//! and store, an MCP client that walks the OAuth flow, and a fake upstream OAuth provider (slow,
//! rotating refresh tokens) with the MCP server that accepts its tokens.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

pub const CALLBACK: &str = "http://127.0.0.1:1/callback";
pub const VERIFIER: &str = "a-code-verifier-of-at-least-forty-three-characters-long";
pub const PASSWORD: &str = "ada-password";

/// A command that runs the `postern` binary built for these tests.
pub fn postern() -> Command {
    Command::new(env!("CARGO_BIN_EXE_postern"))
}

/// `postern hash-password` for `password`.
pub fn hash(password: &str) -> String {
    use std::io::Write as _;
    let mut child = postern()
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(password.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A free port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `users_file` with these `(email, password_hash)` users.
pub fn users_yaml(users: &[(&str, &str)]) -> String {
    users
        .iter()
        .map(|(email, hash)| format!("- {{email: {email}, password_hash: '{hash}'}}\n"))
        .collect()
}

/// Collects the lines `child` writes to its (piped) stderr into `sink`, on a thread of its own.
fn collect_stderr(child: &mut Child, sink: Arc<Mutex<String>>) {
    let stderr = child.stderr.take().expect("stderr is piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
}

/// A child process with its stderr collected; killed on drop.
pub struct Process {
    pub child: Child,
    log: Arc<Mutex<String>>,
}

impl Process {
    /// Spawns `command` (its environment as the caller set it) with stderr collected and stdout
    /// discarded.
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        collect_stderr(&mut child, log.clone());
        Self { child, log }
    }

    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log has `text` (a failure after `within`); the log then.
    pub fn wait_for(&self, text: &str, within: Duration) -> String {
        let started = Instant::now();
        loop {
            let log = self.log();
            if log.contains(text) {
                return log;
            }
            assert!(
                started.elapsed() < within,
                "no {text:?} in the log within {within:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the gateway keeps its state.
#[derive(Clone, Debug)]
pub enum Storage {
    /// SQLite in this data directory.
    Sqlite(PathBuf),
    /// PostgreSQL at this URL (a fresh schema of the shared test cluster).
    Postgres(String),
}

impl Storage {
    fn yaml(&self) -> String {
        match self {
            Storage::Sqlite(dir) => format!(
                "databroker_storage_type: sqlite\ndata_dir: '{}'\n",
                dir.display()
            ),
            Storage::Postgres(url) => format!(
                "databroker_storage_type: postgres\ndatabroker_storage_connection_string: '{url}'\n"
            ),
        }
    }
}

/// The shared test PostgreSQL cluster's URL with a fresh, empty schema; `None` (said loudly)
/// when `POSTERN_TEST_POSTGRES_URL` is unset outside CI; a failure in CI.
pub async fn postgres() -> Option<Storage> {
    let url = match std::env::var("POSTERN_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => url,
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "POSTERN_TEST_POSTGRES_URL is not set in CI: .ci/run must start PostgreSQL and set it"
            )
        }
        _ => {
            eprintln!(
                "\n*** SKIPPED: PostgreSQL fault test: POSTERN_TEST_POSTGRES_URL is not set (bash .ci/postgres.sh prints it) ***\n"
            );
            return None;
        }
    };
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test PostgreSQL");
    tokio::spawn(connection);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let schema = format!("crash_{}_{nanos}", std::process::id());
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    Some(Storage::Postgres(format!(
        "{url}{sep}options=-c%20search_path%3D{schema}"
    )))
}

/// One `postern serve` process on a fixed port; [`Replica::kill9`] and [`Replica::start`] again
/// keep the port, the configuration and the store.
pub struct Replica {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Replica {
    /// Writes the configuration (one local user, Ada; `routes` as given, YAML list items) and
    /// starts the gateway.
    pub async fn new(storage: &Storage, routes: &str) -> Self {
        Self::with_users(storage, routes, 1).await
    }

    /// [`Replica::new`] with `users` local users: `ada@example.com`, then `user1@example.com`,
    /// ... (all with [`PASSWORD`]).
    pub async fn with_users(storage: &Storage, routes: &str, users: usize) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let hash = hash(PASSWORD);
        let emails: Vec<String> = (0..users).map(email).collect();
        let users: Vec<(&str, &str)> = emails.iter().map(|e| (e.as_str(), hash.as_str())).collect();
        std::fs::write(dir.path().join("users.yaml"), users_yaml(&users)).unwrap();
        let secret = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        std::fs::write(
            dir.path().join("postern.yaml"),
            format!(
                "insecure_server: true\naddress: 127.0.0.1:{port}\nusers_file: users.yaml\nshared_secret: {secret}\n{}routes:\n{routes}",
                storage.yaml()
            ),
        )
        .unwrap();
        let mut replica = Self {
            dir,
            port,
            child: None,
            log: Arc::default(),
        };
        replica.start().await;
        replica
    }

    pub fn base(&self) -> String {
        format!("http://localhost:{}", self.port)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Everything the gateway wrote to stderr, across its restarts.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Starts the process and waits until it answers.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut child = postern()
            .args(["serve", "--config"])
            .arg(self.dir.path().join("postern.yaml"))
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        collect_stderr(&mut child, self.log.clone());
        self.child = Some(child);
        let started = Instant::now();
        let url = format!("{}/.well-known/oauth-authorization-server", self.base());
        let http = reqwest::Client::new();
        loop {
            if let Ok(r) = http.get(&url).send().await
                && r.status() == 200
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("postern serve exited ({status}):\n{}", self.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "postern serve did not answer within 30 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no destructor, no flush, no graceful close.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// A browser: keeps cookies, follows no redirect (the test reads each), gives up on a request
/// after 60 s.
pub fn browser() -> reqwest::Client {
    browser_with_timeout(Duration::from_secs(60))
}

/// [`browser`], giving up on a request after `timeout`.
pub fn browser_with_timeout(timeout: Duration) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .build()
        .unwrap()
}

/// The hidden fields of a page's forms, `(name, value)`, unescaped.
pub fn hidden_fields(html: &str) -> Vec<(String, String)> {
    let unescape = |v: &str| {
        v.replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    };
    html.split("<input type=\"hidden\" ")
        .skip(1)
        .filter_map(|tag| {
            let name = tag.split("name=\"").nth(1)?.split('"').next()?;
            let value = tag.split("value=\"").nth(1)?.split('"').next()?;
            Some((unescape(name), unescape(value)))
        })
        .collect()
}

/// A navigation's headers, as a browser sends them.
pub fn navigate(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    request
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .header("sec-fetch-mode", "navigate")
}

/// A form post made by a click on a page of `base` (its origin): the `Origin` and `Sec-Fetch-*`
/// headers a browser sends.
pub fn clicked(request: reqwest::RequestBuilder, base: &str) -> reqwest::RequestBuilder {
    request
        .header("origin", base)
        .header("sec-fetch-site", "same-origin")
        .header("sec-fetch-mode", "navigate")
        .header("sec-fetch-user", "?1")
}

/// The email of local user `i` (0: Ada).
pub fn email(i: usize) -> String {
    if i == 0 {
        "ada@example.com".into()
    } else {
        format!("user{i}@example.com")
    }
}

/// Signs Ada in; the status of the form post (303: signed in).
pub async fn sign_in(browser: &reqwest::Client, base: &str) -> u16 {
    sign_in_as(browser, base, &email(0)).await
}

/// Signs local user `email` in with [`PASSWORD`]; the status of the form post (303: signed in).
pub async fn sign_in_as(browser: &reqwest::Client, base: &str, email: &str) -> u16 {
    sign_in_with(browser, base, email, PASSWORD).await.0
}

/// Signs `email` in with `password` through the sign-in form of `base`, as a browser does (the
/// page, then a click on its button); the status of the form post (303: signed in) and the
/// sign-in page.
pub async fn sign_in_with(
    browser: &reqwest::Client,
    base: &str,
    email: &str,
    password: &str,
) -> (u16, String) {
    let page = navigate(browser.get(format!("{base}/.pomerium/sign_in")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut form = hidden_fields(&page);
    form.retain(|(name, _)| name == "csrf_token");
    assert!(
        form.iter().any(|(name, _)| name == "csrf_token"),
        "no csrf_token in the sign-in page: {page}"
    );
    form.push(("email".into(), email.into()));
    form.push(("password".into(), password.into()));
    form.push(("redirect_uri".into(), "/.pomerium/".into()));
    let status = clicked(browser.post(format!("{base}/.pomerium/sign_in")), base)
        .form(&form)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    (status, page)
}

/// Registers a public MCP client; its id.
pub async fn register(base: &str) -> String {
    let registered: Value = browser()
        .post(format!("{base}/.pomerium/mcp/register"))
        .json(&json!({"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none", "client_name": "crash test"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    registered["client_id"]
        .as_str()
        .unwrap_or_else(|| panic!("registration refused: {registered}"))
        .to_owned()
}

/// An authorization code for `client_id` on `resource`: `/authorize`, the consent (when
/// asked), the upstream provider and Postern's callback (on `upstream_oauth2` routes), back to
/// the client's redirect URI.
pub async fn authorize(
    browser: &reqwest::Client,
    base: &str,
    client_id: &str,
    resource: &str,
) -> String {
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(ring::digest::digest(&ring::digest::SHA256, VERIFIER.as_bytes()).as_ref());
    let mut response = browser
        .get(format!("{base}/.pomerium/mcp/authorize"))
        .header("sec-fetch-mode", "navigate")
        .query(&[
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", CALLBACK),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("resource", resource),
            ("state", "s"),
        ])
        .send()
        .await
        .unwrap();
    for _ in 0..8 {
        if response.status() == 200 {
            let page = response.text().await.unwrap();
            let mut fields = hidden_fields(&page);
            assert!(!fields.is_empty(), "not a consent page: {page}");
            fields.push(("decision".into(), "allow".into()));
            response = clicked(
                browser.post(format!("{base}/.pomerium/mcp/authorize")),
                base,
            )
            .form(&fields)
            .send()
            .await
            .unwrap();
            continue;
        }
        let location = response
            .headers()
            .get("location")
            .unwrap_or_else(|| panic!("no redirect from {}: {}", response.url(), response.status()))
            .to_str()
            .unwrap()
            .to_owned();
        if location.starts_with(CALLBACK) {
            let url = url::Url::parse(&location).unwrap();
            return url
                .query_pairs()
                .find(|(k, _)| k == "code")
                .unwrap_or_else(|| panic!("no code in {location}"))
                .1
                .into_owned();
        }
        let next = if location.starts_with('/') {
            format!("{base}{location}")
        } else {
            location
        };
        response = browser.get(next).send().await.unwrap();
    }
    panic!("too many redirects authorizing {resource}");
}

/// What a `/token` request got.
#[derive(Debug)]
pub enum TokenOutcome {
    /// 200: the access and refresh token.
    Tokens { access: String, refresh: String },
    /// Another status, and the body.
    Refused(u16, String),
    /// No answer (the connection died with the process).
    NoAnswer(String),
}

/// A `/token` request with `form` (a public client: no authentication).
pub async fn token(base: &str, form: &[(&str, &str)]) -> TokenOutcome {
    let response = reqwest::Client::new()
        .post(format!("{base}/.pomerium/mcp/token"))
        .form(form)
        .timeout(Duration::from_secs(60))
        .send()
        .await;
    let response = match response {
        Ok(r) => r,
        Err(error) => return TokenOutcome::NoAnswer(error.to_string()),
    };
    let status = response.status().as_u16();
    let text = match response.text().await {
        Ok(text) => text,
        Err(error) => return TokenOutcome::NoAnswer(error.to_string()),
    };
    if status != 200 {
        return TokenOutcome::Refused(status, text);
    }
    let body: Value = serde_json::from_str(&text).unwrap();
    TokenOutcome::Tokens {
        access: body["access_token"].as_str().unwrap().to_owned(),
        refresh: body["refresh_token"].as_str().unwrap().to_owned(),
    }
}

pub async fn redeem(base: &str, client_id: &str, code: &str) -> TokenOutcome {
    token(
        base,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", CALLBACK),
            ("client_id", client_id),
            ("code_verifier", VERIFIER),
        ],
    )
    .await
}

pub async fn refresh(base: &str, client_id: &str, refresh_token: &str) -> TokenOutcome {
    token(
        base,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", client_id),
        ],
    )
    .await
}

/// The ids of the user's live client grants, from the Connected apps page.
pub async fn live_grants(browser: &reqwest::Client, base: &str) -> HashSet<String> {
    let page = browser
        .get(format!("{base}/.pomerium/apps"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "Connected apps");
    page.text()
        .await
        .unwrap()
        .split("name=\"grant\" value=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next().map(str::to_owned))
        .collect()
}

/// A seeded random source: the seed is `POSTERN_CRASH_SEED` or the clock, printed so a failure
/// can be replayed.
pub fn rng(test: &str) -> rand::rngs::StdRng {
    use rand::SeedableRng;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let seed = std::env::var("POSTERN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: POSTERN_CRASH_SEED={seed}");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// How many kills each crash test makes: `POSTERN_CRASH_ITERATIONS`, else a few (CI).
pub fn iterations() -> usize {
    std::env::var("POSTERN_CRASH_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(6)
}

/// The fake upstream: an OAuth provider that approves at once and rotates refresh tokens on
/// every refresh (the old one stops working the moment the new one is issued, as Notion's do),
/// answering the refresh only after `slow`; and the MCP server it protects, which accepts the
/// access tokens the provider issued. Its access tokens expire in 30 s, inside the gateway's
/// refresh skew, so every call through the gateway refreshes.
#[derive(Clone, Default)]
pub struct Upstream {
    pub state: Arc<Mutex<ProviderState>>,
}

#[derive(Default)]
pub struct ProviderState {
    /// Which chain (one per connected account, in the order they connected) a refresh token
    /// belongs to, and each chain's one working refresh token.
    chain_of: HashMap<String, usize>,
    pub current: Vec<String>,
    /// Per chain: refreshes that rotated, and refreshes refused (a retired refresh token).
    pub rotations: Vec<usize>,
    pub refused: Vec<usize>,
    /// Access tokens issued, all valid (they expire after the test).
    pub access_tokens: HashSet<String>,
    pub slow: Duration,
    n: usize,
}

impl ProviderState {
    fn issue(&mut self, chain: Option<usize>) -> Value {
        self.n += 1;
        let access = format!("ti-at-{}", self.n);
        let refresh = format!("ti-rt-{}", self.n);
        self.access_tokens.insert(access.clone());
        let chain = chain.unwrap_or_else(|| {
            self.current.push(String::new());
            self.rotations.push(0);
            self.refused.push(0);
            self.current.len() - 1
        });
        self.current[chain] = refresh.clone();
        self.chain_of.insert(refresh.clone(), chain);
        json!({"access_token": access, "refresh_token": refresh, "token_type": "bearer", "expires_in": 30})
    }
}

impl Upstream {
    /// Serves the provider and the MCP server; their base URL.
    pub async fn serve(&self, slow: Duration) -> String {
        self.state.lock().unwrap().slow = slow;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let authorize = |axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>| async move {
            let target = format!(
                "{}?code=provider-code&state={}",
                q["redirect_uri"],
                url::form_urlencoded::byte_serialize(q["state"].as_bytes()).collect::<String>()
            );
            (axum::http::StatusCode::FOUND, [("location", target)])
        };
        let state = self.state.clone();
        let token = move |body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                let form: HashMap<String, String> =
                    url::form_urlencoded::parse(&body).into_owned().collect();
                let (answer, slow) = {
                    // Decided (and the old refresh token retired) as the request arrives, before
                    // the slow part: a gateway killed while it waits has lost the new token.
                    let mut s = state.lock().unwrap();
                    match form.get("grant_type").map(String::as_str) {
                        Some("authorization_code") => (Ok(s.issue(None)), Duration::ZERO),
                        Some("refresh_token") => {
                            let presented = form.get("refresh_token").cloned().unwrap_or_default();
                            match s.chain_of.get(&presented).copied() {
                                Some(chain) if s.current[chain] == presented => {
                                    s.rotations[chain] += 1;
                                    (Ok(s.issue(Some(chain))), s.slow)
                                }
                                Some(chain) => {
                                    s.refused[chain] += 1;
                                    (Err(()), Duration::ZERO)
                                }
                                None => (Err(()), Duration::ZERO),
                            }
                        }
                        _ => (Err(()), Duration::ZERO),
                    }
                };
                tokio::time::sleep(slow).await;
                match answer {
                    Ok(body) => (axum::http::StatusCode::OK, axum::Json(body)),
                    Err(()) => (
                        axum::http::StatusCode::BAD_REQUEST,
                        axum::Json(json!({"error": "invalid_grant"})),
                    ),
                }
            }
        };
        let state = self.state.clone();
        let mcp = move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                let bearer = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("")
                    .to_owned();
                if !state.lock().unwrap().access_tokens.contains(&bearer) {
                    return (
                        axum::http::StatusCode::UNAUTHORIZED,
                        axum::Json(json!({"error": "invalid_token"})),
                    );
                }
                let id = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get("id").cloned())
                    .unwrap_or(Value::Null);
                (
                    axum::http::StatusCode::OK,
                    axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": {"ti": bearer}})),
                )
            }
        };
        // The MCP server of routes without upstream OAuth: answers every call.
        let open = |body: axum::body::Bytes| async move {
            let id = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("id").cloned())
                .unwrap_or(Value::Null);
            axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": {}}))
        };
        let app = axum::Router::new()
            .route("/authorize", axum::routing::get(authorize))
            .route("/token", axum::routing::post(token))
            .route("/mcp", axum::routing::post(mcp))
            .route("/open", axum::routing::post(open));
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }
}

/// A JSON-RPC ping through the gateway with `te`: the status and the body.
pub async fn ping(base: &str, path: &str, te: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(te)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .timeout(Duration::from_secs(90))
        .send()
        .await;
    match response {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(error) => (0, error.to_string()),
    }
}

/// Waits until `path` exists (a file the gateway writes).
pub fn wait_for_file(path: &Path) {
    let started = Instant::now();
    while !path.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
