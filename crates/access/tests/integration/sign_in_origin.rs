//! `authenticate_service_url`: sign-in, consent, the portal and the authorization server on an
//! origin of their own; route hosts get their session handed back, bound to the browser that
//! asked for it. The sign-in origin here is `http://127.0.0.1:PORT`, the route host
//! `http://localhost:PORT` (one listener, two origins).

use postern_access::Access;
use postern_access::assertion::Signer;
use postern_access::users::LocalUsers;
use postern_config::defaults::AuthenticateService;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::oauth_client::{CALLBACK, allow_fields, authorize_url, exchange_at, query_of};
use crate::support::{self, browser, clicked, client, csrf_field};

struct Split {
    /// The route host.
    host: String,
    /// The sign-in origin.
    auth: String,
    stop: CancellationToken,
}

/// A gateway whose sign-in origin is 127.0.0.1, with a web app at `/app` and an MCP server at
/// `/mcp` on localhost, both echoing who reached them; Ada and Mallory are its users.
async fn split() -> Split {
    split_with(cookie::SameSite::Lax).await
}

/// [`split`] with the session cookie's `SameSite` set to `same_site`.
async fn split_with(same_site: cookie::SameSite) -> Split {
    let echo_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = echo_listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|| async { "upstream reached" });
    tokio::spawn(async move { axum::serve(echo_listener, app).await });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let auth = format!("http://127.0.0.1:{port}");
    let yaml = format!(
        "insecure_server: true
authenticate_service_url: {auth}
routes:
  - {{from: http://localhost, prefix: /app, to: 'http://{echo}', allow_any_authenticated_user: true}}
  - {{from: http://localhost, prefix: /mcp, to: 'http://{echo}', allow_any_authenticated_user: true, mcp: {{}}}}
"
    );
    let mut settings = postern_access::AccessSettings {
        authenticate: Some(AuthenticateService {
            origin: auth.clone(),
            host: "127.0.0.1".into(),
            port,
        }),
        ..support::settings()
    };
    settings.cookie.same_site = same_site;
    let access = Access::new(
        support::memory_store().await,
        LocalUsers::new(vec![
            support::user("ada@example.com", "Ada", &[], "pw"),
            support::user("mallory@example.com", "Mallory", &[], "pw2"),
        ]),
        Signer::from_pem(&Signer::generate_pem()).unwrap(),
        settings,
    );
    let stop = CancellationToken::new();
    support::serve(listener, &yaml, access, &stop);
    Split {
        host: format!("http://localhost:{port}"),
        auth,
        stop,
    }
}

fn location(response: &reqwest::Response) -> String {
    response.headers()["location"].to_str().unwrap().to_owned()
}

async fn get(browser: &reqwest::Client, url: &str) -> reqwest::Response {
    browser.get(url).send().await.unwrap()
}

/// Signs `browser` in at the sign-in origin's form reached at `form_url`; the redirect after.
async fn sign_in_at(
    browser: &reqwest::Client,
    s: &Split,
    form_url: &str,
    email: &str,
    password: &str,
) -> String {
    let page = get(browser, form_url).await;
    assert_eq!(
        page.status(),
        200,
        "the sign-in form is on the sign-in origin"
    );
    let html = page.text().await.unwrap();
    let redirect = support::hidden_fields(&html)
        .into_iter()
        .find(|(name, _)| name == "redirect_uri")
        .map(|(_, value)| value)
        .unwrap();
    let signed_in = clicked(
        browser.post(format!("{}/.pomerium/sign_in", s.auth)),
        &s.auth,
    )
    .form(&[
        ("email", email),
        ("password", password),
        ("redirect_uri", redirect.as_str()),
        ("csrf_token", csrf_field(&html).as_str()),
    ])
    .send()
    .await
    .unwrap();
    assert_eq!(signed_in.status(), 303, "signed in as {email}");
    location(&signed_in)
}

/// The browser trip from a route host's sign-in to the handoff URL the sign-in origin issues.
async fn handoff_url(browser: &reqwest::Client, s: &Split, email: &str, password: &str) -> String {
    let start = get(
        browser,
        &format!("{}/.pomerium/sign_in?redirect_uri=/app", s.host),
    )
    .await;
    assert_eq!(start.status(), 303);
    let to_auth = location(&start);
    assert!(
        to_auth.starts_with(&format!("{}/.pomerium/sign_in?", s.auth)),
        "a route host sends sign-in to the sign-in origin: {to_auth}"
    );
    let back = sign_in_at(browser, s, &to_auth, email, password).await;
    let handoff = get(browser, &format!("{}{back}", s.auth)).await;
    assert_eq!(handoff.status(), 303);
    let url = location(&handoff);
    assert!(
        url.starts_with(&format!("{}/.pomerium/handoff?code=", s.host)),
        "{url}"
    );
    url
}

#[tokio::test]
async fn route_hosts_get_the_session_from_the_sign_in_origin_in_the_browser_that_asked() {
    let s = split().await;
    let ada = browser();
    let handoff = handoff_url(&ada, &s, "ada@example.com", "pw").await;
    let taken = get(&ada, &handoff).await;
    assert_eq!(taken.status(), 303);
    assert_eq!(location(&taken), "/app");
    let app = get(&ada, &format!("{}/app", s.host)).await;
    assert_eq!(app.status(), 200, "signed in on the route host");
    assert_eq!(app.text().await.unwrap(), "upstream reached");

    // A used code is spent.
    assert_eq!(get(&ada, &handoff).await.status(), 400);

    // Login CSRF: Mallory's own handoff link, opened in Ada's browser, does not sign Ada in to
    // Mallory's account (Ada's browser never asked for it).
    let mallory = browser();
    let planted = handoff_url(&mallory, &s, "mallory@example.com", "pw2").await;
    let victim = browser();
    let refused = get(&victim, &planted).await;
    assert_eq!(refused.status(), 400);
    assert!(refused.text().await.unwrap().contains("another browser"));
    let app = get(&victim, &format!("{}/app", s.host)).await;
    assert_ne!(app.status(), 200, "the victim is not signed in as Mallory");
    // The refusal did not spend Mallory's code for her own browser... but it is hers only.
    assert_eq!(get(&mallory, &planted).await.status(), 303);

    // The sign-in origin hands sessions only to route hosts of this gateway, on its port.
    let signed_in_at_auth = ada.clone();
    for target in [
        "http://evil.example:1/x".to_owned(),
        format!("http://localhost:{}/app", 1),
        format!("{}/app", s.auth),
    ] {
        let response = get(
            &signed_in_at_auth,
            &format!(
                "{}/.pomerium/sign_in?handoff=abc&redirect_uri={}",
                s.auth,
                support::oauth_client::urlencode(&target)
            ),
        )
        .await;
        let next = response
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert!(
            !next.contains("/.pomerium/handoff"),
            "no session handed to {target}: {next}"
        );
    }

    // Signing out on the route host ends the one session everywhere.
    let out = crate::support::sign_out(&ada, &s.host, "", None).await;
    assert_eq!(out.status(), 200);
    let portal = get(&ada, &format!("{}/.pomerium/", s.auth)).await;
    assert_eq!(portal.status(), 303, "signed out on the sign-in origin too");
    s.stop.cancel();
}

#[tokio::test]
async fn sign_in_consent_and_the_authorization_server_are_only_on_the_sign_in_origin() {
    let s = split().await;
    // A route host's scripts share its origin: it serves no form, consent or token endpoint.
    let posted = client()
        .post(format!("{}/.pomerium/sign_in", s.host))
        .form(&[("email", "ada@example.com"), ("password", "pw")])
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 404);
    let token = client()
        .post(format!("{}/.pomerium/mcp/token", s.host))
        .form(&[("grant_type", "authorization_code"), ("code", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), 404);
    assert!(token.text().await.unwrap().contains(&s.auth));
    let authorize = client()
        .get(format!("{}/.pomerium/mcp/authorize?client_id=x", s.host))
        .send()
        .await
        .unwrap();
    assert_eq!(authorize.status(), 303);
    assert_eq!(
        location(&authorize),
        format!("{}/.pomerium/mcp/authorize?client_id=x", s.auth)
    );
    let metadata = client()
        .get(format!("{}/.well-known/oauth-authorization-server", s.host))
        .send()
        .await
        .unwrap();
    assert_eq!(metadata.status(), 404);
    // No route's content is served on the sign-in origin, even where loopback names are
    // otherwise aliases of each other (the route is for localhost, the sign-in origin is
    // 127.0.0.1).
    for path in ["/app", "/mcp"] {
        let proxied = client()
            .get(format!("{}{path}", s.auth))
            .send()
            .await
            .unwrap();
        assert_eq!(proxied.status(), 404, "{path} on the sign-in origin");
    }
    // ... and the sign-in origin serves no route host's endpoints.
    let resource = client()
        .get(format!(
            "{}/.well-known/oauth-protected-resource/mcp",
            s.auth
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resource.status(), 404);
    s.stop.cancel();
}

#[tokio::test]
async fn an_mcp_client_authorizes_at_the_sign_in_origin_for_a_route_hosts_server() {
    let s = split().await;
    let server = format!("{}/mcp", s.host);
    let metadata: Value = client()
        .get(format!(
            "{}/.well-known/oauth-protected-resource/mcp",
            s.host
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["resource"], json!(server));
    assert_eq!(metadata["authorization_servers"], json!([s.auth]));
    let server_metadata: Value = client()
        .get(format!("{}/.well-known/oauth-authorization-server", s.auth))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(server_metadata["issuer"], json!(s.auth));
    let registered: Value = client()
        .post(format!("{}/.pomerium/mcp/register", s.auth))
        .json(&json!({"redirect_uris": [CALLBACK], "client_name": "Test client", "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_id = registered["client_id"].as_str().unwrap().to_owned();

    let ada = browser();
    let url = authorize_url(&s.auth, &client_id, CALLBACK, &server);
    // Not signed in: sign in on the sign-in origin's own form, back into the authorization.
    let to_sign_in = get(&ada, &url).await;
    assert_eq!(to_sign_in.status(), 303);
    let form = format!("{}{}", s.auth, location(&to_sign_in));
    let back = sign_in_at(&ada, &s, &form, "ada@example.com", "pw").await;
    let consent = get(&ada, &format!("{}{back}", s.auth)).await;
    assert_eq!(consent.status(), 200);
    let page = consent.text().await.unwrap();
    let allowed = clicked(
        ada.post(format!("{}/.pomerium/mcp/authorize", s.auth)),
        &s.auth,
    )
    .form(&allow_fields(&page))
    .send()
    .await
    .unwrap();
    assert_eq!(allowed.status(), 303);
    let answer = query_of(&location(&allowed));
    assert_eq!(
        answer["iss"], s.auth,
        "RFC 9207: the sign-in origin issued it"
    );
    let (status, tokens) = exchange_at(&s.auth, &client_id, &answer["code"]).await;
    assert_eq!(status, 200, "{tokens}");
    let te = tokens["access_token"].as_str().unwrap();
    let reached = client()
        .post(&server)
        .bearer_auth(te)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reached.status(), 200);
    assert_eq!(reached.text().await.unwrap(), "upstream reached");

    // The authorization server serves several hosts: a request must name its server.
    let unnamed = get(
        &ada,
        &url.replace(
            &format!("&resource={}", support::oauth_client::urlencode(&server)),
            "",
        ),
    )
    .await;
    assert_eq!(unnamed.status(), 303);
    assert_eq!(query_of(&location(&unnamed))["error"], "invalid_target");
    s.stop.cancel();
}

/// `cookie_same_site: strict`: the handoff's redirect back is the sign-in origin's navigation,
/// so a redirect would arrive without the new cookie and send the browser round again; a page
/// of the route host takes it on instead, and the cookie is `Strict`.
#[tokio::test]
async fn with_strict_cookies_the_handoff_continues_with_a_page_of_the_route_host() {
    let s = split_with(cookie::SameSite::Strict).await;
    let ada = browser();
    let handoff = handoff_url(&ada, &s, "ada@example.com", "pw").await;
    let taken = get(&ada, &handoff).await;
    assert_eq!(taken.status(), 200);
    let cookie = taken
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("_postern="))
        .expect("the session cookie");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    let page = taken.text().await.unwrap();
    assert!(
        page.contains("<meta http-equiv=\"refresh\" content=\"0;url=/app\">"),
        "{page}"
    );
    assert_eq!(get(&ada, &format!("{}/app", s.host)).await.status(), 200);
    s.stop.cancel();
}
