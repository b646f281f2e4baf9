//! Attacks on the authorization server's open doors, through a running gateway: a registration
//! flood, junk in registrations, registrations nobody uses, a client using a grant type it did
//! not register, anonymous requests that would make the gateway fetch client metadata documents,
//! and a client name that forges log lines (issues 11 and 18).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::support::client;
use crate::support::oauth_client::{self, CALLBACK, allow_fields, exchange_at, urlencode};
use postern_access::assertion::Signer;
use postern_access::registration::RegistrationLimits;
use postern_access::users::LocalUsers;
use postern_access::{Access, AccessSettings};
use postern_store::{Store, now_ms};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support;

struct World {
    base: String,
    store: Store,
    stop: CancellationToken,
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A gateway with one MCP server route (never reached) and the user ada@example.com.
async fn world(settings: AccessSettings) -> World {
    let store = support::memory_store().await;
    let access = Access::new(
        store.clone(),
        LocalUsers::new(vec![support::user("ada@example.com", "Ada", &[], "pw")]),
        Signer::from_pem(&Signer::generate_pem()).unwrap(),
        settings,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = CancellationToken::new();
    support::serve(
        listener,
        "insecure_server: true
routes:
  - from: http://localhost
    prefix: /mcp
    to: http://127.0.0.1:9/mcp
    allow_any_authenticated_user: true
    mcp: {}
",
        access,
        &stop,
    );
    World {
        base: format!("http://localhost:{port}"),
        store,
        stop,
    }
}

async fn register(w: &World, request: &Value) -> (u16, Value) {
    let response = client()
        .post(format!("{}/.pomerium/mcp/register", w.base))
        .json(request)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn public_client() -> Value {
    json!({"redirect_uris": [CALLBACK], "client_name": "Test client", "token_endpoint_auth_method": "none"})
}

fn authorize_url(w: &World, client_id: &str) -> String {
    let resource = format!("{}/mcp", w.base);
    oauth_client::authorize_url(&w.base, &urlencode(client_id), CALLBACK, &resource)
}

/// Signs ada in, runs /authorize for `client_id` (allowing on the consent page) and returns the
/// code.
async fn code_for(w: &World, client_id: &str) -> String {
    let browser = support::browser();
    support::sign_in(&browser, &w.base, "ada@example.com", "pw").await;
    let response = browser
        .get(authorize_url(w, client_id))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the consent page");
    let page = response.text().await.unwrap();
    let response = browser
        .post(format!("{}/.pomerium/mcp/authorize", w.base))
        .form(&allow_fields(&page))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let location = url::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
    location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("no code in {location}"))
}

async fn token(w: &World, form: &[(&str, &str)]) -> (u16, Value) {
    let (status, body, _) = oauth_client::token(&w.base, form, None).await;
    (status, body)
}

async fn exchange(w: &World, client_id: &str, code: &str) -> (u16, Value) {
    exchange_at(&w.base, client_id, code).await
}

/// Issue 11 item 8: 300 anonymous registrations in a second were all accepted. Now an address
/// gets its limit (20 a minute), then 429 with `Retry-After` and a message saying why.
#[tokio::test]
async fn a_registration_flood_gets_429_after_the_limit() {
    let w = world(support::settings()).await;
    for n in 0..20 {
        let (status, body) = register(&w, &public_client()).await;
        assert_eq!(status, 201, "registration {n}: {body}");
    }
    let response = client()
        .post(format!("{}/.pomerium/mcp/register", w.base))
        .json(&public_client())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    let message = body["error_description"].as_str().unwrap();
    assert!(
        message.contains("too many client registrations") && message.contains("20 per 60 s"),
        "{message}"
    );
}

/// Issue 11 item 8: a registration with a 60 KB junk field was kept for 180 days. Now only the
/// fields Postern uses are kept, each within its limit; over a limit is refused, naming the
/// field and the limit; an oversized body is refused whole.
#[tokio::test]
async fn junk_in_a_registration_is_not_stored_and_oversized_fields_are_refused() {
    let w = world(support::settings()).await;
    let mut request = public_client();
    request["junk"] = json!("j".repeat(60_000));
    request["contacts"] = json!(["a@example.com"]);
    let (status, body) = register(&w, &request).await;
    let fields = |v: &Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
    assert_eq!(status, 201);
    assert!(
        body.get("junk").is_none() && body.get("contacts").is_none(),
        "{:?}",
        fields(&body)
    );
    let client_id = body["client_id"].as_str().unwrap();
    let stored = w.store.get_client(client_id).await.unwrap().unwrap();
    assert!(
        stored.metadata.get("junk").is_none(),
        "{:?}",
        fields(&stored.metadata)
    );
    assert!(stored.metadata.to_string().len() < 1024);
    assert_eq!(stored.metadata["client_name"], "Test client");

    let mut long_name = public_client();
    long_name["client_name"] = json!("n".repeat(201));
    let (status, body) = register(&w, &long_name).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_client_metadata");
    let message = body["error_description"].as_str().unwrap();
    assert!(
        message.contains("client_name") && message.contains("200"),
        "{message}"
    );

    let mut many = public_client();
    many["redirect_uris"] = json!(
        (0..11)
            .map(|n| format!("http://127.0.0.1:{n}/cb"))
            .collect::<Vec<_>>()
    );
    let (status, body) = register(&w, &many).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_client_metadata")),
        "{body}"
    );

    let mut huge = public_client();
    huge["junk"] = json!("j".repeat(70_000));
    let (status, _) = register(&w, &huge).await;
    assert_eq!(status, 413);
}

/// Issue 11 item 8: a registration nobody uses goes after a short life (a day; here a second);
/// one that an authorization used gets the normal life. Nothing is slept for a day: the life is
/// a setting.
#[tokio::test]
async fn unused_registrations_are_purged_after_their_ttl_and_used_ones_stay() {
    let w = world(AccessSettings {
        registration: RegistrationLimits {
            unused_ttl: Duration::from_secs(1),
            ..Default::default()
        },
        ..support::settings()
    })
    .await;
    let (_, unused) = register(&w, &public_client()).await;
    let unused = unused["client_id"].as_str().unwrap().to_owned();
    let (_, used) = register(&w, &public_client()).await;
    let used = used["client_id"].as_str().unwrap().to_owned();
    let code = code_for(&w, &used).await;
    let renewed = w.store.get_client(&used).await.unwrap().unwrap();
    assert!(
        renewed.expires_at > now_ms() + 100 * 24 * 3600 * 1000,
        "the first use gives the normal lifetime"
    );

    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(w.store.collect_expired().await.unwrap() >= 1, "purged");
    assert!(w.store.get_client(&unused).await.unwrap().is_none());
    let (status, body) = exchange(&w, &used, &code).await;
    assert_eq!(status, 200, "the used client still works: {body}");
}

/// Issue 11 (low): a client registered only for `authorization_code` may not refresh.
#[tokio::test]
async fn a_client_can_use_only_the_grant_types_it_registered() {
    let w = world(support::settings()).await;
    let mut request = public_client();
    request["grant_types"] = json!(["authorization_code"]);
    let (status, body) = register(&w, &request).await;
    assert_eq!(status, 201, "{body}");
    let client_id = body["client_id"].as_str().unwrap().to_owned();
    let code = code_for(&w, &client_id).await;
    let (status, tokens) = exchange(&w, &client_id, &code).await;
    assert_eq!(status, 200, "{tokens}");
    let (status, body) = token(
        &w,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", &client_id),
        ],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "unauthorized_client", "{body}");
}

/// Issue 11 (low): an anonymous request naming a client ID metadata document made the gateway
/// fetch it. Now /authorize sends the browser to sign in first, and /token fetches a document
/// only for a code or refresh token issued to that client.
#[tokio::test]
async fn client_metadata_documents_are_fetched_only_for_signed_in_users() {
    let w = world(support::settings()).await;
    let fetches = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let document_url = format!(
        "http://127.0.0.1:{}/client.json",
        listener.local_addr().unwrap().port()
    );
    let document = json!({"client_id": document_url, "client_name": "Document client",
        "redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"});
    let counter = fetches.clone();
    let app = axum::Router::new().route(
        "/client.json",
        axum::routing::get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let document = document.clone();
            async move { axum::Json(document) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let anonymous = client()
        .get(authorize_url(&w, &document_url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 303);
    assert!(
        anonymous.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/.pomerium/sign_in"),
        "sent to sign in"
    );
    let (status, body) = exchange(&w, &document_url, "made-up-code").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        0,
        "nothing fetched for strangers"
    );

    // The signed-in user's authorization fetches it; the client's own code exchange works.
    let code = code_for(&w, &document_url).await;
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    let (status, body) = exchange(&w, &document_url, &code).await;
    assert_eq!(status, 200, "{body}");
}

/// Everything the gateway logs in this test binary, as text without colours: the first caller
/// installs the global subscriber, so it holds every test's lines from then on (the test below
/// looks only for its own client's line and for bytes no gateway may log).
fn captured_log() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        log
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Issue 18 item 3: a `client_name` with a newline forged an audit line in the text log, and its
/// ESC and BEL bytes reached the terminal. Now the name is logged escaped, on its own line.
#[tokio::test]
async fn a_client_name_cannot_forge_log_lines_or_drive_the_terminal() {
    let log = captured_log();
    let w = world(support::settings()).await;
    let mut request = public_client();
    request["client_name"] = json!(
        "Innocent\nFORGED  INFO postern::audit: event=\"sign_in\" user=admin@corp.example\u{1b}[2K\u{7}"
    );
    let (status, body) = register(&w, &request).await;
    assert_eq!(status, 201, "{body}");
    let client_id = body["client_id"].as_str().unwrap();
    let text = String::from_utf8(log.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("client registered") && l.contains(client_id))
        .unwrap_or_else(|| panic!("no registration line in {text}"));
    assert!(
        line.contains(r#"Innocent\nFORGED  INFO postern::audit: event=\"sign_in\""#),
        "{line}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("FORGED")),
        "a forged line: {text}"
    );
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "terminal control bytes in the log"
    );
}
