//! Client grants live on their own: an MCP client authorized once keeps refreshing after the
//! browser session ends (expiry or sign-out), and stops when the user revokes it on Connected
//! apps (on every replica within the revocation poll), signs out everywhere, leaves
//! `users_file`, or no longer passes the route's policy; the refresh token's idle and maximum
//! lifetimes hold. Cross-site posts and GETs change nothing.

use std::time::{Duration, Instant};

use postern_access::assertion::Signer;
use postern_access::users::{LocalUser, LocalUsers};
use postern_access::{Access, AccessSettings};
use postern_store::{Store, TokenFamily, now_ms};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::support::oauth_client::{self, CALLBACK, allow_fields, exchange_at, query_of, token};
use crate::support::{self, browser, clicked, client, csrf_field, user};

/// The routes of every replica: `/whoami` for anyone signed in, `/staff` for the staff group.
fn yaml(up: &str) -> String {
    format!(
        "insecure_server: true
routes:
  - from: http://localhost
    prefix: /whoami
    to: {up}/whoami
    allow_any_authenticated_user: true
    mcp: {{}}
  - from: http://localhost
    prefix: /staff
    to: {up}/whoami
    policy:
      allow:
        and:
          - groups: {{has: staff}}
    mcp: {{}}
"
    )
}

/// The MCP server behind both routes: answers every request 200 (what is tested is whether
/// the gateway lets the request through).
async fn servers(stop: &CancellationToken) -> String {
    let app = axum::Router::new().fallback(|| async {
        axum::Json(json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}}))
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = format!("http://{}", listener.local_addr().unwrap());
    let stop = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    up
}

/// A gateway replica over `store` (replicas share it, as with PostgreSQL): its base URL.
async fn replica(
    store: &Store,
    yaml: &str,
    users: Vec<LocalUser>,
    settings: AccessSettings,
    stop: &CancellationToken,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://localhost:{}", listener.local_addr().unwrap().port());
    let access = Access::new(
        store.clone(),
        LocalUsers::new(users),
        Signer::from_pem(&Signer::generate_pem()).unwrap(),
        settings,
    );
    support::serve(listener, yaml, access, stop);
    base
}

fn ada() -> LocalUser {
    user("ada@example.com", "Ada", &["staff"], "pw")
}

struct Setup {
    base: String,
    up: String,
    store: Store,
    stop: CancellationToken,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn setup(settings: AccessSettings) -> Setup {
    let stop = CancellationToken::new();
    let up = servers(&stop).await;
    let store = support::memory_store().await;
    let base = replica(&store, &yaml(&up), vec![ada()], settings, &stop).await;
    Setup {
        base,
        up,
        store,
        stop,
    }
}

/// A signed-in browser (cookie jar) for Ada.
async fn signed_in(base: &str) -> reqwest::Client {
    let browser = browser();
    support::sign_in(&browser, base, "ada@example.com", "pw").await;
    browser
}

/// A dynamically registered public client named "Grant test".
async fn register(base: &str) -> String {
    let registered: Value = client()
        .post(format!("{base}/.pomerium/mcp/register"))
        .json(&json!({"redirect_uris": [CALLBACK], "client_name": "Grant test", "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    registered["client_id"].as_str().unwrap().to_owned()
}

/// Authorizes `client_id` for `path` in `browser` (consenting) and exchanges the code: the
/// access and refresh tokens.
async fn authorize(
    base: &str,
    browser: &reqwest::Client,
    client_id: &str,
    path: &str,
) -> (String, String) {
    let url = oauth_client::authorize_url(base, client_id, CALLBACK, &format!("{base}{path}"));
    let response = browser.get(&url).send().await.unwrap();
    let location = if response.status() == 303 {
        response.headers()["location"].to_str().unwrap().to_owned()
    } else {
        let page = response.text().await.unwrap();
        let response = clicked(
            browser.post(format!("{base}/.pomerium/mcp/authorize")),
            base,
        )
        .form(&allow_fields(&page))
        .send()
        .await
        .unwrap();
        assert_eq!(response.status(), 303, "consent");
        response.headers()["location"].to_str().unwrap().to_owned()
    };
    let code = query_of(&location)["code"].clone();
    let (status, body) = exchange_at(base, client_id, &code).await;
    assert_eq!(status, 200, "{body}");
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"].as_str().unwrap().to_owned(),
    )
}

/// A refresh at `base`: status and body (new tokens, or the error).
async fn refresh(base: &str, client_id: &str, refresh_token: &str) -> (u16, Value) {
    let (status, body, _) = token(
        base,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", client_id),
        ],
        None,
    )
    .await;
    (status, body)
}

/// Refreshes and returns the new (access, refresh) pair, asserting success.
async fn refreshed(base: &str, client_id: &str, refresh_token: &str) -> (String, String) {
    let (status, body) = refresh(base, client_id, refresh_token).await;
    assert_eq!(status, 200, "{body}");
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"].as_str().unwrap().to_owned(),
    )
}

/// An MCP request with a TE to `url` (sent with `Host: host` when given: a replica reached
/// behind a load balancer answers for the public host): its status.
async fn mcp_status(url: &str, host: Option<&str>, access: &str) -> u16 {
    let mut request = client()
        .post(url)
        .bearer_auth(access)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}));
    if let Some(host) = host {
        request = request.header("host", host);
    }
    request.send().await.unwrap().status().as_u16()
}

fn assert_invalid_grant(status: u16, body: &Value, says: &str) {
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(
        description.contains(says),
        "{description:?} should say {says:?}"
    );
}

/// The Connected apps page in `browser`.
async fn apps_page(base: &str, browser: &reqwest::Client) -> String {
    let response = browser
        .get(format!("{base}/.pomerium/apps"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The grant ids listed on a Connected apps page.
fn listed_grants(page: &str) -> Vec<String> {
    support::hidden_fields(page)
        .into_iter()
        .filter(|(name, _)| name == "grant")
        .map(|(_, value)| value)
        .collect()
}

/// Posts the sign-out form of `/.pomerium/sign_out` as a click on it would.
async fn sign_out(base: &str, browser: &reqwest::Client) -> reqwest::Response {
    let page = browser
        .get(format!("{base}/.pomerium/sign_out"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    clicked(browser.post(format!("{base}/.pomerium/sign_out")), base)
        .form(&[("csrf_token", csrf_field(&page))])
        .send()
        .await
        .unwrap()
}

async fn portal_status(base: &str, browser: &reqwest::Client) -> u16 {
    browser
        .get(format!("{base}/.pomerium/"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_client_keeps_refreshing_after_the_browser_session_expires_and_after_sign_out() {
    let mut settings = support::settings();
    settings.cookie.expire = Duration::from_secs(2);
    let s = setup(settings).await;
    let id = register(&s.base).await;

    // One browser's session expires (cookie_expire: 2s); another browser signs out.
    let expiring = signed_in(&s.base).await;
    let (access_1, refresh_1) = authorize(&s.base, &expiring, &id, "/whoami").await;
    let leaving = signed_in(&s.base).await;
    let (access_2, refresh_2) = authorize(&s.base, &leaving, &id, "/whoami").await;
    let out = sign_out(&s.base, &leaving).await;
    assert_eq!(out.status(), 200);
    let page = out.text().await.unwrap();
    assert!(
        page.contains("signed out of this browser")
            && page.contains("2 connected apps keep working"),
        "the signed-out page says what it did: {page}"
    );
    assert_eq!(
        portal_status(&s.base, &leaving).await,
        303,
        "this browser is signed out"
    );

    // Past the session's end and the revocation poll.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        portal_status(&s.base, &expiring).await,
        303,
        "the session expired"
    );
    let whoami = format!("{}/whoami", s.base);
    for access in [&access_1, &access_2] {
        assert_eq!(
            mcp_status(&whoami, None, access).await,
            200,
            "the TE still works"
        );
    }
    for refresh_token in [&refresh_1, &refresh_2] {
        let (access, refresh_token) = refreshed(&s.base, &id, refresh_token).await;
        assert_eq!(mcp_status(&whoami, None, &access).await, 200);
        // And again: each refresh extends the grant.
        refreshed(&s.base, &id, &refresh_token).await;
    }
}

#[tokio::test]
async fn revoke_on_connected_apps_stops_the_client_on_every_replica_within_two_seconds() {
    let s = setup(support::settings()).await;
    let other = replica(
        &s.store,
        &yaml(&s.up),
        vec![ada()],
        support::settings(),
        &s.stop,
    )
    .await;
    let host = s.base.trim_start_matches("http://").to_owned();
    let other_url = format!("{other}/whoami");
    let id = register(&s.base).await;
    let browser = signed_in(&s.base).await;
    let (access, refresh_token) = authorize(&s.base, &browser, &id, "/whoami").await;
    let (_, kept_refresh) = authorize(&s.base, &browser, &id, "/staff").await;
    assert_eq!(
        mcp_status(&other_url, Some(&host), &access).await,
        200,
        "the replica serves the TE"
    );

    let page = apps_page(&s.base, &browser).await;
    for shown in [
        "Grant test",
        "unverified",
        "127.0.0.1",
        "/whoami",
        "/staff",
        "Revoke",
        "Sign out everywhere",
    ] {
        assert!(
            page.contains(shown),
            "Connected apps shows {shown:?}: {page}"
        );
    }
    let grants = listed_grants(&page);
    assert_eq!(grants.len(), 2, "{page}");
    // The newest grant (/staff) is listed first; revoke the /whoami one.
    let grant = grants[1].clone();
    let revoked = clicked(
        browser.post(format!("{}/.pomerium/apps/revoke", s.base)),
        &s.base,
    )
    .form(&[("csrf_token", csrf_field(&page)), ("grant", grant.clone())])
    .send()
    .await
    .unwrap();
    assert_eq!(revoked.status(), 303);
    let started = Instant::now();

    let (status, body) = refresh(&s.base, &id, &refresh_token).await;
    assert_invalid_grant(status, &body, "revoked");
    // The other replica learns it from the store's revocation list.
    while mcp_status(&other_url, Some(&host), &access).await == 200 {
        assert!(
            started.elapsed() < Duration::from_millis(2000),
            "the TE still works on the other replica {:?} after Revoke",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "TE refused on the other replica {:?} after Revoke",
        started.elapsed()
    );
    assert_eq!(
        mcp_status(&format!("{}/whoami", s.base), None, &access).await,
        401
    );
    assert_eq!(
        listed_grants(&apps_page(&s.base, &browser).await),
        vec![grants[0].clone()]
    );
    refreshed(&s.base, &id, &kept_refresh).await;
}

#[tokio::test]
async fn cross_site_requests_revoke_nothing_and_sign_out_nobody() {
    let s = setup(support::settings()).await;
    let id = register(&s.base).await;
    let browser = signed_in(&s.base).await;
    let (access, refresh_token) = authorize(&s.base, &browser, &id, "/whoami").await;
    let page = apps_page(&s.base, &browser).await;
    let (csrf, grant) = (csrf_field(&page), listed_grants(&page)[0].clone());
    let revoke = || browser.post(format!("{}/.pomerium/apps/revoke", s.base));
    let form = [("csrf_token", csrf.clone()), ("grant", grant.clone())];

    // A page of another site posting the form (even with a token it somehow had).
    let evil = revoke()
        .header("origin", "http://evil.example")
        .header("sec-fetch-site", "cross-site")
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(evil.status(), 403);
    // A same-site sibling (Origin differs) and a post without any Origin.
    for request in [
        revoke().header("origin", "http://localhost:1").form(&form),
        revoke().form(&form),
    ] {
        assert_eq!(request.send().await.unwrap().status(), 403);
    }
    // From this site, without the session's token, or with a token of another session.
    let other_session = signed_in(&s.base).await;
    let other_csrf = csrf_field(&apps_page(&s.base, &other_session).await);
    for token in ["", "forged", other_csrf.as_str()] {
        let response = clicked(revoke(), &s.base)
            .form(&[("csrf_token", token), ("grant", grant.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "token {token:?}");
    }
    // Another user cannot revoke Ada's grant by naming it.
    let stop = CancellationToken::new();
    let mallory_base = replica(
        &s.store,
        &yaml(&s.up),
        vec![ada(), user("mallory@example.com", "Mallory", &[], "pw")],
        support::settings(),
        &stop,
    )
    .await;
    let mallory = support::browser();
    support::sign_in(&mallory, &mallory_base, "mallory@example.com", "pw").await;
    let mallory_page = apps_page(&mallory_base, &mallory).await;
    assert!(
        !mallory_page.contains(&grant),
        "Mallory does not see Ada's apps"
    );
    let response = clicked(
        mallory.post(format!("{mallory_base}/.pomerium/apps/revoke")),
        &mallory_base,
    )
    .form(&[
        ("csrf_token", csrf_field(&mallory_page)),
        ("grant", grant.clone()),
    ])
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 303);
    stop.cancel();

    // Sign-out: a cross-site GET (a link, an image) and a cross-site POST end nothing.
    let get = browser
        .get(format!("{}/.pomerium/sign_out", s.base))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    assert!(
        get.text()
            .await
            .unwrap()
            .contains("<form method=\"post\" action=\"/.pomerium/sign_out\">")
    );
    let post = browser
        .post(format!("{}/.pomerium/sign_out", s.base))
        .header("origin", "http://evil.example")
        .header("sec-fetch-site", "cross-site")
        .form(&[("csrf_token", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 403);
    let tokenless = clicked(
        browser.post(format!("{}/.pomerium/sign_out", s.base)),
        &s.base,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(tokenless.status(), 403);
    assert_eq!(
        portal_status(&s.base, &browser).await,
        200,
        "still signed in"
    );

    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        mcp_status(&format!("{}/whoami", s.base), None, &access).await,
        200
    );
    refreshed(&s.base, &id, &refresh_token).await;
    assert_eq!(
        listed_grants(&apps_page(&s.base, &browser).await),
        vec![grant]
    );
}

#[tokio::test]
async fn sign_out_everywhere_ends_every_session_and_grant() {
    let s = setup(support::settings()).await;
    let id = register(&s.base).await;
    let browser = signed_in(&s.base).await;
    let elsewhere = signed_in(&s.base).await;
    let (access, refresh_token) = authorize(&s.base, &browser, &id, "/whoami").await;
    let page = apps_page(&s.base, &browser).await;
    let response = clicked(
        browser.post(format!("{}/.pomerium/apps/sign_out_everywhere", s.base)),
        &s.base,
    )
    .form(&[("csrf_token", csrf_field(&page))])
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let said = response.text().await.unwrap();
    assert!(
        said.contains("Ended 2 browser sessions and revoked 1 connected app"),
        "{said}"
    );
    assert_eq!(portal_status(&s.base, &elsewhere).await, 303);
    let (status, body) = refresh(&s.base, &id, &refresh_token).await;
    assert_invalid_grant(status, &body, "revoked");
    assert_eq!(
        mcp_status(&format!("{}/whoami", s.base), None, &access).await,
        401
    );
}

#[tokio::test]
async fn refresh_is_refused_once_the_user_leaves_users_file_or_the_policy() {
    let s = setup(support::settings()).await;
    let id = register(&s.base).await;
    let browser = signed_in(&s.base).await;
    let (_, for_whoami) = authorize(&s.base, &browser, &id, "/whoami").await;
    let (staff_access, for_staff) = authorize(&s.base, &browser, &id, "/staff").await;

    // The gateway restarted with Ada no longer in staff: /staff's policy refuses her.
    let stop = CancellationToken::new();
    let demoted = replica(
        &s.store,
        &yaml(&s.up),
        vec![user("ada@example.com", "Ada", &[], "pw")],
        support::settings(),
        &stop,
    )
    .await;
    let (status, body) = refresh(&demoted, &id, &for_staff).await;
    assert_invalid_grant(status, &body, "no longer allowed to use");
    let (status, body) = refresh(&s.base, &id, &for_staff).await;
    assert_invalid_grant(status, &body, "revoked");
    let deadline = Instant::now() + Duration::from_millis(2500);
    while mcp_status(&format!("{}/staff", s.base), None, &staff_access).await == 200 {
        assert!(Instant::now() < deadline, "the grant's TE is revoked too");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // /whoami still lets her: that grant goes on.
    let (_, for_whoami) = refreshed(&demoted, &id, &for_whoami).await;

    // The gateway restarted without Ada in users_file.
    let removed = replica(&s.store, &yaml(&s.up), vec![], support::settings(), &stop).await;
    let (status, body) = refresh(&removed, &id, &for_whoami).await;
    assert_invalid_grant(status, &body, "not in users_file");
    stop.cancel();
}

#[tokio::test]
async fn refresh_tokens_lapse_when_idle_and_grants_at_their_maximum_age() {
    let mut settings = support::settings();
    settings.refresh_idle_ttl = Duration::from_millis(1500);
    settings.refresh_max_ttl = Duration::from_millis(3500);
    let s = setup(settings).await;
    let id = register(&s.base).await;
    let browser = signed_in(&s.base).await;

    // Idle: unused for longer than the idle lifetime.
    let (_, idle) = authorize(&s.base, &browser, &id, "/whoami").await;
    // Busy: refreshed every second, so never idle, until the grant's maximum age.
    let (_, mut busy) = authorize(&s.base, &browser, &id, "/staff").await;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    busy = refreshed(&s.base, &id, &busy).await.1;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, body) = refresh(&s.base, &id, &idle).await;
    assert_invalid_grant(status, &body, "expired");
    busy = refreshed(&s.base, &id, &busy).await.1;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (access, next) = refreshed(&s.base, &id, &busy).await;
    assert!(started.elapsed() < Duration::from_millis(3500));
    // The TE never outlives the grant.
    tokio::time::sleep(Duration::from_millis(3600).saturating_sub(started.elapsed())).await;
    let (status, body) = refresh(&s.base, &id, &next).await;
    assert_invalid_grant(status, &body, "expired");
    assert_eq!(
        mcp_status(&format!("{}/staff", s.base), None, &access).await,
        401
    );
}

/// A grant stored before grants outlived sessions (no identity of its own, its end the
/// session's): it refreshes while its session lasts, and from then on lives as a grant.
#[tokio::test]
async fn grants_issued_before_the_change_keep_working() {
    let s = setup(support::settings()).await;
    let id = register(&s.base).await;
    let browser = signed_in(&s.base).await;
    // Make a session through sign-in, then a family the old way, over it.
    let (_, refresh_token) = authorize(&s.base, &browser, &id, "/whoami").await;
    let current = s
        .store
        .find_refresh_token(&refresh_token)
        .await
        .unwrap()
        .unwrap();
    let old = TokenFamily {
        family_id: "old-family".into(),
        identity: None,
        client_name: None,
        redirect_uri: None,
        expires_at: now_ms() + 3_600_000,
        ..current.clone()
    };
    s.store
        .create_family(&old, "pst_rt_old-token", now_ms() + 3_600_000)
        .await
        .unwrap();
    let (access, next) = refreshed(&s.base, &id, "pst_rt_old-token").await;
    assert_eq!(
        mcp_status(&format!("{}/whoami", s.base), None, &access).await,
        200
    );
    let upgraded = s.store.find_refresh_token(&next).await.unwrap().unwrap();
    assert!(
        upgraded.identity.is_some(),
        "the old grant now has its identity"
    );
    assert!(
        upgraded.expires_at > now_ms() + 80 * 24 * 3_600_000,
        "and the grant lifetime"
    );
    // Now it survives sign-out like any grant.
    assert_eq!(sign_out(&s.base, &browser).await.status(), 200);
    refreshed(&s.base, &id, &next).await;
}
