//! Sign-in with GitHub (`idp_provider: github`) through the gateway, against the GitHub fake:
//! the OAuth round trip in a browser, identity from `/user` and `/user/emails`, groups from every
//! page of `/user/teams` driving policy, and each way it is refused.

use base64::Engine as _;
use postern_access::Access;
use postern_access::assertion::Signer;
use postern_access::github::{GitHub, GitHubSettings};
use postern_access::users::LocalUsers;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::support;
use crate::support::github::{FakeGitHub, GitHubUser};

const CLIENT_ID: &str = "Iv1.postern";
const CLIENT_SECRET: &str = "github-client-secret";

/// A gateway signing in with `github` (whose callback it registers): routes `/platform` (team
/// `acme/platform`), `/admins` (a bare slug, `admins`), `/ada` (user `1001`), each answering with
/// the identity assertion it received. Its base URL and the token that stops it.
async fn gateway(
    github: &FakeGitHub,
    client_secret: &str,
    extra: &str,
) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://localhost:{}", listener.local_addr().unwrap().port());
    github.callback(&format!("{base}/.pomerium/callback"));
    let url = github.serve().await;
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = upstream.local_addr().unwrap();
    let app = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        headers
            .get("x-pomerium-jwt-assertion")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    });
    tokio::spawn(async move { axum::serve(upstream, app).await });
    let route = |prefix: &str, criterion: &str| {
        format!(
            "  - {{from: http://localhost, prefix: {prefix}, to: http://{up}, pass_identity_headers: true, policy: {{allow: {{and: [{criterion}]}}}}}}\n"
        )
    };
    // As a user configures a GitHub Enterprise Server.
    let yaml = format!(
        "insecure_server: true\nidp_provider: github\nidp_provider_url: {url}\nidp_client_id: {CLIENT_ID}\nidp_client_secret: {client_secret}\n{extra}routes:\n{}{}{}",
        route("/platform", "{groups: {has: acme/platform}}"),
        route("/admins", "{groups: {has: admins}}"),
        route("/ada", "{user: {is: '1001'}}"),
    );
    let config = postern_config::parse(
        &yaml,
        std::path::Path::new("."),
        &std::collections::HashMap::new(),
    )
    .unwrap();
    let access = Access::new(
        support::memory_store().await,
        LocalUsers::default(),
        Signer::from_pem(&Signer::generate_pem()).unwrap(),
        support::settings(),
    )
    .with_github(GitHub::new(
        GitHubSettings::from_config(&config).expect("idp_provider: github"),
    ));
    let stop = CancellationToken::new();
    support::serve(listener, &yaml, access, &stop);
    (base, stop)
}

fn location(response: &reqwest::Response) -> String {
    response
        .url()
        .join(response.headers()["location"].to_str().unwrap())
        .unwrap()
        .to_string()
}

/// Starts a sign-in in `browser` and follows it through GitHub: the gateway's callback URL
/// GitHub sent the browser to.
async fn through_github(browser: &reqwest::Client, base: &str) -> String {
    let start = browser
        .get(format!("{base}/.pomerium/sign_in?redirect_uri=/platform"))
        .send()
        .await
        .unwrap();
    assert!(start.status().is_redirection(), "{}", start.status());
    let authorize = location(&start);
    assert!(authorize.contains("/login/oauth/authorize?"), "{authorize}");
    let approved = browser.get(&authorize).send().await.unwrap();
    assert!(approved.status().is_redirection(), "{}", approved.status());
    let callback = location(&approved);
    assert!(
        callback.starts_with(&format!("{base}/.pomerium/callback?")),
        "{callback}"
    );
    callback
}

/// The claims of the assertion a route's upstream received.
async fn assertion_at(browser: &reqwest::Client, url: String) -> (u16, Option<Value>) {
    let response = browser.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    let claims = body.split('.').nth(1).and_then(|payload| {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    });
    (status, claims.filter(|_| status == 200))
}

/// Ada, with a verified primary address and 131 teams: 130 elsewhere, then `Acme/platform`,
/// which GitHub lists on the second page.
fn ada() -> GitHubUser {
    let mut ada = GitHubUser::new(1001, "ada")
        .name("Ada Lovelace")
        .email("ada@old.example", false, true)
        .email("Ada@Example.com", true, true);
    for n in 1..=130 {
        ada = ada.team(n, "other-org", &format!("team-{n}"));
    }
    ada.team(4242, "Acme", "platform")
}

#[tokio::test]
async fn github_sign_in_takes_identity_and_every_page_of_teams_into_policy() {
    let github = FakeGitHub::new(CLIENT_ID, CLIENT_SECRET).user(ada());
    let (base, stop) = gateway(&github, CLIENT_SECRET, "").await;
    github.signs_in_as("ada");
    let browser = support::browser();
    let callback = through_github(&browser, &base).await;
    let done = browser.get(&callback).send().await.unwrap();
    assert_eq!(done.status(), 303, "{}", done.text().await.unwrap());
    assert_eq!(location(&done), format!("{base}/platform"));

    assert_eq!(github.scopes(), ["user:email read:org"]);
    let requests = github.api_requests();
    assert!(
        requests.contains(&"GET /api/v3/user/teams?page=2&per_page=100".to_owned()),
        "the second page of teams was read: {requests:?}"
    );

    // The team on page 2 opens the route that needs it; the assertion carries the identity.
    let (status, claims) = assertion_at(&browser, format!("{base}/platform")).await;
    assert_eq!(status, 200);
    let claims = claims.expect("an assertion");
    assert_eq!(claims["sub"], "1001", "the numeric id, not the login");
    assert_eq!(claims["email"], "ada@example.com", "the verified primary");
    assert_eq!(claims["name"], "Ada Lovelace");
    let groups: Vec<&str> = claims["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap())
        .collect();
    assert!(groups.contains(&"acme/platform"), "{groups:?}");
    assert!(groups.contains(&"4242"), "{groups:?}");
    assert!(groups.contains(&"other-org/team-130"), "{groups:?}");
    assert_eq!(groups.len(), 131 * 2, "{groups:?}");
    assert_eq!(
        assertion_at(&browser, format!("{base}/ada")).await.0,
        200,
        "user: is the numeric id"
    );
    assert_ne!(
        assertion_at(&browser, format!("{base}/admins")).await.0,
        200,
        "not in any team called admins"
    );

    // The callback is single use.
    assert_eq!(browser.get(&callback).send().await.unwrap().status(), 400);
    stop.cancel();
}

/// Anyone can create an organization with a team called `admins`: a bare team slug is not a
/// group, only `org/slug` and the team's id are.
#[tokio::test]
async fn a_team_of_the_same_name_in_another_organization_opens_nothing() {
    let mallory = GitHubUser::new(666, "mallory")
        .email("mallory@example.com", true, true)
        .team(9001, "evil-org", "platform")
        .team(9002, "evil-org", "admins")
        .team(9003, "acme-evil", "platform");
    let github = FakeGitHub::new(CLIENT_ID, CLIENT_SECRET).user(mallory);
    let (base, stop) = gateway(&github, CLIENT_SECRET, "").await;
    github.signs_in_as("mallory");
    let browser = support::browser();
    let callback = through_github(&browser, &base).await;
    assert_eq!(browser.get(&callback).send().await.unwrap().status(), 303);
    for route in ["/platform", "/admins", "/ada"] {
        let (status, _) = assertion_at(&browser, format!("{base}{route}")).await;
        assert_eq!(status, 403, "{route}");
    }
    stop.cancel();
}

#[tokio::test]
async fn an_account_without_a_verified_primary_address_is_refused() {
    let unverified = GitHubUser::new(2002, "eve")
        .email("eve@example.com", true, false)
        .email("eve@elsewhere.example", false, false);
    let github = FakeGitHub::new(CLIENT_ID, CLIENT_SECRET).user(unverified);
    let (base, stop) = gateway(&github, CLIENT_SECRET, "").await;
    github.signs_in_as("eve");
    let browser = support::browser();
    let callback = through_github(&browser, &base).await;
    let refused = browser.get(&callback).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(
        refused
            .headers()
            .get("set-cookie")
            .is_none_or(|c| !c.to_str().unwrap().starts_with("_postern="))
    );
    let page = refused.text().await.unwrap();
    assert!(
        page.contains("no verified primary email address for") && page.contains("eve"),
        "{page}"
    );
    assert!(page.contains("github.com/settings/emails"), "{page}");
    assert_ne!(
        assertion_at(&browser, format!("{base}/platform")).await.0,
        200
    );
    stop.cancel();
}

/// A `state` the gateway never issued, one issued to another browser, and one already used are
/// all refused before any code is exchanged.
#[tokio::test]
async fn a_forged_or_replayed_state_is_refused() {
    let github = FakeGitHub::new(CLIENT_ID, CLIENT_SECRET).user(ada());
    let (base, stop) = gateway(&github, CLIENT_SECRET, "").await;
    github.signs_in_as("ada");
    let alice = support::browser();
    let callback = through_github(&alice, &base).await;

    // Forged: a state the gateway never issued, in the browser that has a sign-in going.
    let forged = callback.split("&state=").next().unwrap().to_owned() + "&state=forged-state";
    let response = alice.get(&forged).send().await.unwrap();
    assert_eq!(response.status(), 400);
    // Another browser carrying Alice's callback (login CSRF).
    let mallory = support::browser();
    let response = mallory.get(&callback).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("another browser"));
    assert!(
        !github.api_requests().iter().any(|r| r.contains("/user")),
        "no code was exchanged for a refused state"
    );

    assert_eq!(alice.get(&callback).send().await.unwrap().status(), 303);
    // Replayed: the same state once more (its binding cookie is gone, and so is the state).
    let replay = alice.get(&callback).send().await.unwrap();
    assert_eq!(replay.status(), 400);
    let exchanges = github
        .api_requests()
        .iter()
        .filter(|r| r.ends_with("/user"))
        .count();
    assert_eq!(exchanges, 1, "the replayed code was not exchanged again");
    stop.cancel();
}

/// GitHub's refusals, each shown on a page that says what to do; nothing signs the browser in.
#[tokio::test]
async fn github_refusals_show_a_clear_error_page() {
    let github = FakeGitHub::new(CLIENT_ID, CLIENT_SECRET).user(ada());
    let (base, stop) = gateway(&github, CLIENT_SECRET, "").await;
    github.signs_in_as("ada");
    type Misbehaviour = fn(&FakeGitHub, bool);
    let cases: [(&str, Misbehaviour, &[&str]); 3] = [
        (
            "an expired code",
            FakeGitHub::expire_codes,
            &["bad_verification_code", "sign in again"],
        ),
        (
            "a revoked token",
            FakeGitHub::revoke_tokens,
            &["refused the access token", "Bad credentials"],
        ),
        (
            "the API's rate limit",
            FakeGitHub::rate_limit_api,
            &["rate limit", "try again in 30 minute(s)"],
        ),
    ];
    for (what, misbehave, expected) in cases {
        misbehave(&github, true);
        let browser = support::browser();
        let callback = through_github(&browser, &base).await;
        let refused = browser.get(&callback).send().await.unwrap();
        assert_eq!(refused.status(), 401, "{what}");
        let page = refused.text().await.unwrap();
        for text in expected {
            assert!(page.contains(text), "{what}: {text} in {page}");
        }
        assert_ne!(
            assertion_at(&browser, format!("{base}/platform")).await.0,
            200,
            "{what}"
        );
        misbehave(&github, false);
    }
    stop.cancel();

    // The gateway's client secret is wrong: the page says whom to ask to fix what.
    let github = FakeGitHub::new(CLIENT_ID, CLIENT_SECRET).user(ada());
    let (base, stop) = gateway(&github, "not-the-secret", "").await;
    github.signs_in_as("ada");
    let browser = support::browser();
    let callback = through_github(&browser, &base).await;
    let refused = browser.get(&callback).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let page = refused.text().await.unwrap();
    assert!(
        page.contains("incorrect_client_credentials")
            && page.contains("idp_client_id or idp_client_secret is wrong"),
        "{page}"
    );
    stop.cancel();

    // `idp_scopes` without `user:email`: GitHub hides the addresses (404); the page says why.
    let github = FakeGitHub::new(CLIENT_ID, CLIENT_SECRET).user(ada());
    let (base, stop) = gateway(&github, CLIENT_SECRET, "idp_scopes: [read:org]\n").await;
    github.signs_in_as("ada");
    let browser = support::browser();
    let callback = through_github(&browser, &base).await;
    assert_eq!(
        github.scopes(),
        ["read:org"],
        "idp_scopes is what is asked for"
    );
    let refused = browser.get(&callback).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let page = refused.text().await.unwrap();
    assert!(
        page.contains("404")
            && page.contains("user:email and read:org")
            && page.contains("idp_scopes"),
        "{page}"
    );
    stop.cancel();
}
