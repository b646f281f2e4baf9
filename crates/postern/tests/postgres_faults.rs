//! Two `postern serve` replicas on one PostgreSQL (a private cluster: the machine's shared one is
//! never stopped), under a steady stream of MCP tool calls, while PostgreSQL is stopped for 10 s
//! and started again, and while it fails over to a promoted standby.
//!
//! What an operator is promised: calls with a valid TE keep being served the whole time (a TE is
//! checked without the store); what must write (sign-in, `/token`, consent, registration) answers
//! 503 with `Retry-After` and a message that says what is wrong and what to do, never a 500 and
//! never the connection string; everything recovers on its own, without a restart; nothing
//! issued before is lost.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postern_testkit::postgres::{Cluster, PASSWORD};
use serde_json::{Value, json};
use support::{
    Process, browser_with_timeout, clicked, free_port, hash, hidden_fields, postern, users_yaml,
};

const SHARED_SECRET: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
const CALLBACK: &str = "http://127.0.0.1:9999/callback";
/// How long PostgreSQL stays down.
const OUTAGE: Duration = Duration::from_secs(10);
/// The most a recovery may take once PostgreSQL is back (generous: a loaded 2-core machine);
/// the time it took is printed.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(30);

/// The reference sqlite MCP server (`postern servers`) and `replicas` gateways in front of it,
/// all on the PostgreSQL at `connection_string`. Every request goes out with the first
/// replica's `Host`, as behind a load balancer: the replicas are one site.
struct Site {
    _dir: tempfile::TempDir,
    _servers: Process,
    replicas: Vec<Process>,
    ports: Vec<u16>,
    metrics: Vec<u16>,
}

impl Site {
    fn start(connection_string: &str, replicas: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("people.db"), b"").unwrap();
        let up = free_port();
        let mut servers = postern();
        servers
            .arg("servers")
            .env_remove("RUST_LOG")
            .env("PORT", up.to_string())
            .env("SQLITE_DB_FILE", dir.path().join("people.db"));
        let servers = Process::spawn(servers);
        std::fs::write(
            dir.path().join("users.yaml"),
            users_yaml(&[("ada@example.com", &hash("ada-password"))]),
        )
        .unwrap();
        let (mut ports, mut metrics, mut processes) = (vec![], vec![], vec![]);
        for i in 0..replicas {
            let (port, metrics_port) = (free_port(), free_port());
            let replica = dir.path().join(format!("replica-{i}"));
            std::fs::create_dir(&replica).unwrap();
            std::fs::write(
                replica.join("postern.yaml"),
                format!(
                    "insecure_server: true
address: 127.0.0.1:{port}
metrics_address: 127.0.0.1:{metrics_port}
users_file: ../users.yaml
shared_secret: {SHARED_SECRET}
databroker_storage_type: postgres
databroker_storage_connection_string: \"{connection_string}\"
routes:
  - from: http://localhost
    prefix: /sqlite
    to: http://127.0.0.1:{up}/sqlite
    allow_any_authenticated_user: true
    mcp: {{}}
  - from: http://localhost
    prefix: /app
    to: http://127.0.0.1:{up}/
    allow_any_authenticated_user: true
"
                ),
            )
            .unwrap();
            let mut serve = postern();
            serve
                .args(["serve", "--config"])
                .arg(replica.join("postern.yaml"))
                .env_remove("RUST_LOG");
            processes.push(Process::spawn(serve));
            ports.push(port);
            metrics.push(metrics_port);
        }
        for p in &processes {
            p.wait_for("postern gateway listening", Duration::from_secs(60));
        }
        Self {
            _dir: dir,
            _servers: servers,
            replicas: processes,
            ports,
            metrics,
        }
    }

    /// The site's origin (the first replica's; every replica answers for it).
    fn origin(&self) -> String {
        format!("http://localhost:{}", self.ports[0])
    }

    /// `path` on replica `i`, with the site's `Host`.
    fn at(
        &self,
        client: &reqwest::Client,
        i: usize,
        method: &str,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let url = format!(
            "http://localhost:{}{path}",
            self.ports[i % self.ports.len()]
        );
        client
            .request(method.parse().unwrap(), url)
            .header("host", format!("localhost:{}", self.ports[0]))
    }

    fn logs(&self) -> String {
        self.replicas
            .iter()
            .enumerate()
            .map(|(i, r)| format!("--- replica {i}\n{}", r.log()))
            .collect()
    }

    async fn scrape(&self, i: usize) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics[i]))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A browser whose requests give up after 30 s, as [`client`]'s do.
fn browser() -> reqwest::Client {
    browser_with_timeout(Duration::from_secs(30))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn query_of(location: &str) -> HashMap<String, String> {
    let query = location.split_once('?').map_or("", |(_, q)| q);
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A response as the test looks at it.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    location: String,
    body: String,
}

async fn answer(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (status, retry_after, location) = (
        response.status().as_u16(),
        header("retry-after"),
        header("location").unwrap_or_default(),
    );
    Answer {
        status,
        retry_after,
        location,
        body: response.text().await.unwrap(),
    }
}

/// What an MCP client and its user do on the site, through replica `i`.
struct User<'a> {
    site: &'a Site,
    browser: reqwest::Client,
}

impl User<'_> {
    async fn sign_in(&self, i: usize) -> Answer {
        let page = answer(self.site.at(&self.browser, i, "GET", "/.pomerium/sign_in")).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let csrf = hidden_fields(&page.body)
            .into_iter()
            .find(|(n, _)| n == "csrf_token")
            .unwrap()
            .1;
        answer(
            clicked(
                self.site.at(&self.browser, i, "POST", "/.pomerium/sign_in"),
                &self.site.origin(),
            )
            .form(&[
                ("email", "ada@example.com"),
                ("password", "ada-password"),
                ("redirect_uri", "/"),
                ("csrf_token", csrf.as_str()),
            ]),
        )
        .await
    }

    async fn register(&self, i: usize) -> Answer {
        answer(
            self.site
                .at(&client(), i, "POST", "/.pomerium/mcp/register")
                .json(&json!({"redirect_uris": [CALLBACK], "client_name": "Outage test", "token_endpoint_auth_method": "none"})),
        )
        .await
    }

    fn authorize_path(&self, client_id: &str) -> String {
        format!(
            "/.pomerium/mcp/authorize?response_type=code&client_id={}&redirect_uri={}&state=st4te&code_challenge={CHALLENGE}&code_challenge_method=S256&resource={}",
            urlencode(client_id),
            urlencode(CALLBACK),
            urlencode(&format!("{}/sqlite", self.site.origin())),
        )
    }

    /// `/authorize` for `client_id`: the consent page's fields to post, or the code.
    async fn authorize(&self, i: usize, client_id: &str) -> Result<String, Vec<(String, String)>> {
        let a = answer(
            self.site
                .at(&self.browser, i, "GET", &self.authorize_path(client_id)),
        )
        .await;
        match a.status {
            303 | 302 => Ok(query_of(&a.location)["code"].clone()),
            200 => {
                let mut fields = hidden_fields(&a.body);
                fields.push(("decision".into(), "allow".into()));
                Err(fields)
            }
            other => panic!("/authorize: {other} {}", a.body),
        }
    }

    async fn consent(&self, i: usize, fields: &[(String, String)]) -> Answer {
        answer(
            clicked(
                self.site
                    .at(&self.browser, i, "POST", "/.pomerium/mcp/authorize"),
                &self.site.origin(),
            )
            .form(fields),
        )
        .await
    }

    async fn token(&self, i: usize, form: &[(&str, &str)]) -> Answer {
        answer(
            self.site
                .at(&client(), i, "POST", "/.pomerium/mcp/token")
                .form(form),
        )
        .await
    }

    async fn exchange(&self, i: usize, client_id: &str, code: &str) -> Answer {
        self.token(
            i,
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

    async fn refresh(&self, i: usize, client_id: &str, refresh_token: &str) -> Answer {
        self.token(
            i,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
                ("client_id", client_id),
            ],
        )
        .await
    }
}

/// A tool call with `te` through replica `i`: whether it was served (200 with the tool's
/// result).
async fn call(site: &Site, http: &reqwest::Client, i: usize, te: &str) -> Result<(), String> {
    let response = site
        .at(http, i, "POST", "/sqlite")
        .bearer_auth(te)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "read_query", "arguments": {"query": "SELECT 1"}}}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status == 200 && body["result"]["structuredContent"]["rows"] == json!([[1]]) {
        Ok(())
    } else {
        Err(format!("{status} {body}"))
    }
}

/// Tool calls back to back on every replica until stopped: (served, failures).
struct Traffic {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(site: &Arc<Site>, te: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..2 * site.ports.len())
            .map(|worker| {
                let (site, te, stop, served, failures) = (
                    site.clone(),
                    te.to_owned(),
                    stop.clone(),
                    served.clone(),
                    failures.clone(),
                );
                tokio::spawn(async move {
                    let http = client();
                    while !stop.load(Ordering::Relaxed) {
                        match call(&site, &http, worker, &te).await {
                            Ok(()) => {
                                served.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            served,
            failures,
            tasks,
        }
    }

    fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        (
            self.served.load(Ordering::Relaxed),
            self.failures.lock().unwrap().clone(),
        )
    }
}

/// A 503 that says when to retry, what is wrong and what to do, and nothing of the connection
/// string.
fn unavailable(what: &str, a: &Answer, says: &[&str]) {
    assert_eq!(a.status, 503, "{what}: {}", a.body);
    assert!(
        a.retry_after
            .as_deref()
            .is_some_and(|s| s.parse::<u64>().is_ok_and(|n| (1..=60).contains(&n))),
        "{what}: Retry-After {:?}",
        a.retry_after
    );
    for text in says {
        assert!(a.body.contains(text), "{what}: no {text:?} in {}", a.body);
    }
    for secret in [PASSWORD, "postgres://", "127.0.0.1:"] {
        assert!(
            !a.body.contains(secret),
            "{what} shows {secret:?}: {}",
            a.body
        );
    }
}

/// Polls `attempt` until it returns `Some`; the time that took (fails after the deadline).
async fn recovered<T>(what: &str, mut attempt: impl AsyncFnMut() -> Option<T>) -> (T, Duration) {
    let started = Instant::now();
    loop {
        if let Some(done) = attempt().await {
            return (done, started.elapsed());
        }
        assert!(
            started.elapsed() < RECOVERY_DEADLINE,
            "{what}: not recovered {RECOVERY_DEADLINE:?} after PostgreSQL was back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a user has before the fault: a signed-in browser, a registered client with a TE and a
/// refresh token, a code not yet exchanged, and a second client's consent form not yet posted.
struct Issued {
    client_id: String,
    te: String,
    refresh_token: String,
    pending_code: String,
    second_client: String,
    consent_form: Vec<(String, String)>,
}

async fn issue(user: &User<'_>) -> Issued {
    assert_eq!(user.sign_in(0).await.status, 303);
    let registered: Value = serde_json::from_str(&user.register(1).await.body).unwrap();
    let client_id = registered["client_id"].as_str().unwrap().to_owned();
    let form = user.authorize(0, &client_id).await.unwrap_err();
    let consented = user.consent(1, &form).await;
    assert_eq!(consented.status, 303, "{}", consented.body);
    let code = query_of(&consented.location)["code"].clone();
    let tokens: Value =
        serde_json::from_str(&user.exchange(0, &client_id, &code).await.body).unwrap();
    let te = tokens["access_token"].as_str().unwrap().to_owned();
    let refresh_token = tokens["refresh_token"].as_str().unwrap().to_owned();
    let pending_code = user
        .authorize(1, &client_id)
        .await
        .expect("consent remembered");
    let second: Value = serde_json::from_str(&user.register(0).await.body).unwrap();
    let second_client = second["client_id"].as_str().unwrap().to_owned();
    let consent_form = user.authorize(1, &second_client).await.unwrap_err();
    Issued {
        client_id,
        te,
        refresh_token,
        pending_code,
        second_client,
        consent_form,
    }
}

/// Every path that must write answers 503 the way [`unavailable`] wants, on every replica.
async fn writes_wait(user: &User<'_>, issued: &Issued) {
    for i in 0..user.site.ports.len() {
        let fresh = User {
            site: user.site,
            browser: browser(),
        };
        unavailable("sign-in", &fresh.sign_in(i).await, &["store", "try again"]);
        // A signed-in browser on a route: told to wait, not sent to a sign-in that cannot work.
        let page = answer(
            user.site
                .at(&user.browser, i, "GET", "/app/")
                .header("accept", "text/html"),
        )
        .await;
        unavailable(
            "a signed-in browser on a route",
            &page,
            &["store", "try again", "still signed in"],
        );
        unavailable(
            "refresh",
            &user
                .refresh(i, &issued.client_id, &issued.refresh_token)
                .await,
            &["temporarily_unavailable", "store", "try again"],
        );
        unavailable(
            "code exchange",
            &user
                .exchange(i, &issued.client_id, &issued.pending_code)
                .await,
            &["temporarily_unavailable", "store", "try again"],
        );
        unavailable(
            "consent",
            &user.consent(i, &issued.consent_form).await,
            &["store", "try again"],
        );
        unavailable(
            "registration",
            &user.register(i).await,
            &["temporarily_unavailable", "store", "try again"],
        );
    }
}

/// After the fault: everything issued before works, and new grants can be made.
async fn nothing_lost(user: &User<'_>, issued: &Issued, http: &reqwest::Client) {
    for i in 0..user.site.ports.len() {
        call(user.site, http, i, &issued.te).await.unwrap();
    }
    let refreshed = user
        .refresh(1, &issued.client_id, &issued.refresh_token)
        .await;
    assert_eq!(
        refreshed.status, 200,
        "the refresh token survived: {}",
        refreshed.body
    );
    let exchanged = user
        .exchange(0, &issued.client_id, &issued.pending_code)
        .await;
    assert_eq!(
        exchanged.status, 200,
        "the pending code survived: {}",
        exchanged.body
    );
    let consented = user.consent(1, &issued.consent_form).await;
    assert_eq!(
        consented.status, 303,
        "the consent form survived: {}",
        consented.body
    );
    let code = query_of(&consented.location)["code"].clone();
    let second = user.exchange(0, &issued.second_client, &code).await;
    assert_eq!(second.status, 200, "{}", second.body);
    // The signed-in browser is served again as itself (not sent to sign in).
    let page = answer(
        user.site
            .at(&user.browser, 0, "GET", "/app/")
            .header("accept", "text/html"),
    )
    .await;
    assert!(
        page.status != 503 && !page.location.contains("sign_in"),
        "the browser's session after the outage: {} {} {}",
        page.status,
        page.location,
        page.body
    );
    // The session survived: consent remembered, a code at once.
    user.authorize(1, &issued.client_id)
        .await
        .expect("the session and the consent survived");
}

fn store_errors(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("postern_store_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stopped_for_ten_seconds_under_load() {
    let Some(pg) = Cluster::start() else { return };
    let site = Arc::new(Site::start(&pg.url(), 2));
    let user = User {
        site: &site,
        browser: browser(),
    };
    let issued = issue(&user).await;
    let http = client();
    let traffic = Traffic::start(&site, &issued.te);

    pg.stop();
    let down = Instant::now();
    let served_before = traffic.served();
    writes_wait(&user, &issued).await;
    // What an operator's probes see: the process is alive (/healthz stays 200: restarting it
    // would not help), and the store errors climb, connection failures included.
    let health = reqwest::get(format!("http://127.0.0.1:{}/healthz", site.metrics[0]))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let metrics = site.scrape(0).await;
    let connect_errors = metrics
        .lines()
        .find_map(|l| l.strip_prefix("postern_store_errors_total{op=\"connect\"} "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(connect_errors.is_some_and(|n| n > 0), "{metrics}");
    println!(
        "with PostgreSQL down: /healthz 200, postern_store_errors_total{{op=\"connect\"}} {connect_errors:?}"
    );
    let wait = OUTAGE.saturating_sub(down.elapsed());
    tokio::time::sleep(wait).await;
    // The TE path makes no store round-trip: 200 calls (at the end of the outage, when every
    // cache filled before it has expired) on a replica add (almost) no failed
    // store operations there (connecting included); the few there are come from the
    // once-a-second revocation poll (and the traffic's 10 s discovery cache).
    let errors_before = store_errors(&site.scrape(0).await);
    let burst = Instant::now();
    for _ in 0..200 {
        call(&site, &http, 0, &issued.te).await.unwrap();
    }
    let burst = burst.elapsed();
    let errors = store_errors(&site.scrape(0).await) - errors_before;
    println!(
        "200 TE calls in {burst:?} with PostgreSQL down: {errors} failed store operations on that replica meanwhile"
    );
    assert!(
        errors <= 2 * (burst.as_secs() + 2),
        "200 TE calls in {burst:?} made {errors} failed store operations: the TE path goes to the store"
    );
    let served_down = traffic.served() - served_before;
    pg.start_again();
    let back = Instant::now();

    for i in 0..site.ports.len() {
        let (_, took) = recovered("sign-in", async || {
            let fresh = User {
                site: &site,
                browser: browser(),
            };
            (fresh.sign_in(i).await.status == 303).then_some(())
        })
        .await;
        println!("replica {i}: sign-in worked again {took:?} after PostgreSQL was back");
        let (_, took) = recovered("registration", async || {
            (user.register(i).await.status == 201).then_some(())
        })
        .await;
        println!("replica {i}: registration worked again {took:?} after PostgreSQL was back");
    }
    println!(
        "everything recovered {:?} after PostgreSQL was back",
        back.elapsed()
    );
    nothing_lost(&user, &issued, &http).await;
    let (served, failures) = traffic.stop().await;
    println!(
        "tool calls with a TE: {served} served, {served_down} of them while PostgreSQL was down ({:?}), {} failed",
        OUTAGE.max(down.elapsed().min(back - down)),
        failures.len()
    );
    assert!(failures.is_empty(), "TE calls failed: {failures:?}");
    assert!(served_down > 0, "no calls during the outage");
    let logs = site.logs();
    assert!(
        !logs.contains(PASSWORD),
        "a log shows the password:\n{logs}"
    );
    println!(
        "log lines while PostgreSQL was down (first of each kind):\n{}",
        distinct_warnings(&logs)
    );
    drop(pg);
}

/// The distinct warnings and errors of the logs, one line each (for the test's output).
fn distinct_warnings(logs: &str) -> String {
    let mut seen = std::collections::BTreeSet::new();
    logs.lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .filter(|l| {
            let key: String = l
                .split_whitespace()
                .skip(2)
                .take(6)
                .collect::<Vec<_>>()
                .join(" ");
            seen.insert(key)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `databroker_storage_connection_string` listing a primary and its streaming standby, with
/// `target_session_attrs=read-write`: the primary stops, and until the standby is promoted the
/// gateways do not touch it (writes wait with 503); once it is promoted they use it by
/// themselves, with everything issued before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_fails_over_to_a_promoted_standby_under_load() {
    let Some(a) = Cluster::start() else { return };
    let b = Cluster::replica_of(&a);
    let site = Arc::new(Site::start(
        &format!(
            "postgres://postern:{PASSWORD}@127.0.0.1:{},127.0.0.1:{}/postern?target_session_attrs=read-write",
            a.port(),
            b.port()
        ),
        2,
    ));
    let user = User {
        site: &site,
        browser: browser(),
    };
    let issued = issue(&user).await;
    let http = client();
    // Everything issued is on the standby before the primary goes.
    let written = a.psql("SELECT pg_current_wal_lsn()").trim().to_owned();
    let started = Instant::now();
    while b
        .psql(&format!(
            "SELECT pg_last_wal_replay_lsn() >= '{written}'::pg_lsn"
        ))
        .trim()
        != "t"
    {
        assert!(started.elapsed() < Duration::from_secs(60), "standby lags");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let traffic = Traffic::start(&site, &issued.te);

    a.stop();
    let down = Instant::now();
    let served_before = traffic.served();
    writes_wait(&user, &issued).await;
    // With `target_session_attrs=read-write` a gateway that looks for the primary opens a
    // connection to each host and closes at once the one that is not writable: such a probe
    // may be on the standby at any moment. A connection kept there would live on: none may be
    // a second old, over two seconds of looking.
    for _ in 0..3 {
        assert_eq!(
            b.psql(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'postern' \
                 AND backend_start < now() - interval '1 second'"
            )
            .trim(),
            "0",
            "a gateway kept a connection to the standby before it was promoted"
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    b.promote();
    let promoted = Instant::now();
    for i in 0..site.ports.len() {
        let (_, took) = recovered("sign-in on the promoted standby", async || {
            let fresh = User {
                site: &site,
                browser: browser(),
            };
            (fresh.sign_in(i).await.status == 303).then_some(())
        })
        .await;
        println!(
            "replica {i}: sign-in worked on the promoted standby {took:?} after the promotion"
        );
    }
    nothing_lost(&user, &issued, &http).await;
    let (served, failures) = traffic.stop().await;
    println!(
        "tool calls with a TE: {served} served, {} of them from the primary's stop on (the promotion came {:?} after it), {} failed; everything recovered {:?} after the promotion",
        served - served_before,
        promoted - down,
        failures.len(),
        promoted.elapsed()
    );
    assert!(failures.is_empty(), "TE calls failed: {failures:?}");
    drop((a, b));
}
