//! Sign-in with a real OpenID Provider (oidc-provider from npm, run with node).

use std::path::Path;

use postern_access::Access;
use postern_access::assertion::Signer;
use postern_access::users::LocalUsers;
use tokio_util::sync::CancellationToken;

use crate::support;

struct Provider {
    child: std::process::Child,
    issuer: String,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts tests/oidc-provider; `None` (loudly) when it is not installed outside CI.
/// `conform`: claims requested by scope only from UserInfo (OpenID Connect Core §5.4).
async fn provider(callback: &str, conform: bool) -> Option<Provider> {
    provider_with(callback, conform, None).await
}

/// [`provider`], with the accounts listed in the file `disabled` refused (`OIDC_DISABLED_ACCOUNTS`).
async fn provider_with(callback: &str, conform: bool, disabled: Option<&Path>) -> Option<Provider> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/oidc-provider");
    if !dir.join("node_modules/oidc-provider").exists() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "tests/oidc-provider is not installed in CI: .ci/tools.sh must run npm ci there"
            );
        }
        eprintln!(
            "\n*** SKIPPED: OIDC test: run `npm ci` in tests/oidc-provider (bash .ci/run does) ***\n"
        );
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new("node")
        .arg(dir.join("provider.mjs"))
        .args([port.to_string(), callback.to_owned()])
        .args(conform.then_some("conform"))
        .envs(disabled.map(|d| ("OIDC_DISABLED_ACCOUNTS", d)))
        .stdout(std::process::Stdio::piped())
        .stderr(
            std::fs::File::create(std::env::temp_dir().join(format!("oidc-provider-{port}.log")))
                .unwrap(),
        )
        .spawn()
        .expect("node runs");
    let stdout = child.stdout.take().unwrap();
    // Keep reading stdout after READY: node dies of EPIPE if its stdout is closed.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("READY") {
                let _ = tx.send(());
            }
        }
    });
    let ready = tokio::task::spawn_blocking(move || {
        rx.recv_timeout(std::time::Duration::from_secs(20)).is_ok()
    })
    .await
    .unwrap();
    assert!(ready, "the OIDC provider did not start");
    Some(Provider {
        child,
        issuer: format!("http://127.0.0.1:{port}"),
    })
}

/// The `action` of the first form in an HTML page, as an absolute URL.
fn form_action(issuer: &str, page: &str) -> String {
    let at = page
        .find("action=\"")
        .unwrap_or_else(|| panic!("a form in {page}"))
        + 8;
    let action = page[at..at + page[at..].find('"').unwrap()].replace("&amp;", "&");
    if action.starts_with("http") {
        action
    } else {
        format!("{issuer}{action}")
    }
}

#[tokio::test]
async fn oidc_sign_in_with_a_real_provider_creates_a_session() {
    oidc_sign_in(false).await;
}

#[tokio::test]
async fn oidc_claims_that_only_userinfo_returns_are_fetched_from_it() {
    oidc_sign_in(true).await;
}

/// Signs in through a real provider, then uses a route that needs the email's domain and a group.
async fn oidc_sign_in(conform: bool) {
    use postern_access::oidc::{Oidc, OidcSettings};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let base = format!("http://localhost:{port}");
    let Some(op) = provider(&format!("{base}/.pomerium/callback"), conform).await else {
        return;
    };

    let stop = CancellationToken::new();
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = upstream.local_addr().unwrap();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "app" }));
    tokio::spawn(async move { axum::serve(upstream, app).await });
    let yaml = format!(
        "insecure_server: true\nroutes:\n  - {{from: http://localhost, to: http://{up}, policy: {{allow: {{and: [{{domain: {{is: example.com}}}}, {{groups: {{has: oidc-users}}}}]}}}}}}\n"
    );
    let store = support::memory_store().await;
    let oidc = Oidc::new(OidcSettings {
        issuer: op.issuer.clone(),
        client_id: "postern".into(),
        client_secret: "postern-test-secret".into(),
        scopes: vec![
            "openid".into(),
            "email".into(),
            "profile".into(),
            "groups".into(),
        ],
        groups_claim: "groups".into(),
    });
    let access = Access::new(
        store.clone(),
        LocalUsers::default(),
        Signer::from_pem(&Signer::generate_pem()).unwrap(),
        support::settings(),
    )
    .with_oidc(oidc);
    support::serve(listener, &yaml, access, &stop);

    let alice = support::browser();
    let callback = sign_in_at_provider(&alice, &base, &op.issuer).await;

    // Another browser presenting Alice's code is refused, and does not burn her sign-in.
    let mallory = support::browser();
    let response = mallory.get(&callback).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("another browser"));

    let done = alice.get(&callback).send().await.unwrap();
    if done.status() != 303 {
        panic!(
            "callback answered {}: {}",
            done.status(),
            done.text().await.unwrap_or_default()
        );
    }
    let set = done
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(set.contains("_postern="), "{set}");
    let app = alice.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(app.status(), 200);
    assert_eq!(
        app.text().await.unwrap(),
        "app",
        "signed in through the provider, allowed by domain and group"
    );

    // The code is single use.
    assert_eq!(alice.get(&callback).send().await.unwrap().status(), 400);
    stop.cancel();
}

/// Follows redirects by hand (GET), up to the gateway's callback.
async fn follow(client: &reqwest::Client, mut response: reqwest::Response) -> reqwest::Response {
    while response.status().is_redirection() {
        let next = response
            .url()
            .join(response.headers()["location"].to_str().unwrap())
            .unwrap();
        if next.path() == "/.pomerium/callback" {
            break;
        }
        response = client.get(next).send().await.unwrap();
    }
    response
}

/// Starts a sign-in at the gateway `base` in `browser`, signs in as `ada` at the provider and
/// consents: the gateway callback URL the provider sends the browser to.
async fn sign_in_at_provider(browser: &reqwest::Client, base: &str, issuer: &str) -> String {
    let login = follow(
        browser,
        browser
            .get(format!("{base}/.pomerium/sign_in?redirect_uri=/"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        login.url().as_str().starts_with(issuer),
        "sent to the provider: {}",
        login.url()
    );
    let page = login.text().await.unwrap();
    let posted = browser
        .post(form_action(issuer, &page))
        .form(&[
            ("prompt", "login"),
            ("login", "ada"),
            ("password", "anything"),
        ])
        .send()
        .await
        .unwrap();
    let consent = follow(browser, posted).await;
    let page = consent.text().await.unwrap();
    let posted = browser
        .post(form_action(issuer, &page))
        .form(&[("prompt", "consent")])
        .send()
        .await
        .unwrap();
    let back = follow(browser, posted).await;
    assert!(
        back.status().is_redirection(),
        "stopped at the redirect to the gateway's callback"
    );
    let callback = back
        .url()
        .join(back.headers()["location"].to_str().unwrap())
        .unwrap()
        .to_string();
    assert!(
        callback.starts_with(&format!("{base}/.pomerium/callback?code=")),
        "{callback}"
    );
    callback
}

/// Every `idp_provider` preset signs in against a real provider at `idp_provider_url`, configured
/// as a user writes it, and takes groups from the claim the preset names (`cognito:groups` for
/// `cognito`, where the provider sends other groups than in `groups`).
#[tokio::test]
async fn every_oidc_preset_signs_in_and_reads_groups_from_its_claim() {
    use postern_access::oidc::{Oidc, OidcSettings};
    use postern_config::defaults::OIDC_PRESETS;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut gateways = Vec::new();
    for preset in OIDC_PRESETS {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://localhost:{}", listener.local_addr().unwrap().port());
        gateways.push((preset, listener, base));
    }
    let callbacks: Vec<String> = gateways
        .iter()
        .map(|(_, _, base)| format!("{base}/.pomerium/callback"))
        .collect();
    let Some(op) = provider(&callbacks.join(","), false).await else {
        return;
    };
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = upstream.local_addr().unwrap();
    let app = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        headers
            .get("x-pomerium-jwt-assertion")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    });
    tokio::spawn(async move { axum::serve(upstream, app).await });

    let stop = CancellationToken::new();
    for (preset, listener, base) in gateways {
        let name = preset.name;
        // What the provider sends in each claim (tests/oidc-provider/provider.mjs).
        let expected = match name {
            "cognito" => ["staff", "cognito-users"],
            _ => ["staff", "oidc-users"],
        };
        // A trailing slash, as users write it (Auth0's issuers end with one).
        let yaml = format!(
            "insecure_server: true\nidp_provider: {name}\nidp_provider_url: {}/\nidp_client_id: postern\nidp_client_secret: postern-test-secret\nidp_scopes: [openid, email, profile, groups]\nroutes:\n  - {{from: http://localhost, to: http://{up}, pass_identity_headers: true, policy: {{allow: {{and: [{{groups: {{has: {}}}}}]}}}}}}\n",
            op.issuer, expected[1]
        );
        let config =
            postern_config::parse(&yaml, Path::new("."), &std::collections::HashMap::new())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        let settings = OidcSettings::from_config(&config).expect("an OIDC provider");
        let access = Access::new(
            support::memory_store().await,
            LocalUsers::default(),
            Signer::from_pem(&Signer::generate_pem()).unwrap(),
            support::settings(),
        )
        .with_oidc(Oidc::new(settings));
        support::serve(listener, &yaml, access, &stop);

        let browser = support::browser();
        let callback = sign_in_at_provider(&browser, &base, &op.issuer).await;
        let done = browser.get(&callback).send().await.unwrap();
        assert_eq!(done.status(), 303, "{name}: {}", done.text().await.unwrap());
        let app = browser.get(format!("{base}/")).send().await.unwrap();
        assert_eq!(
            app.status(),
            200,
            "{name}: allowed by the group in its claim"
        );
        let assertion = app.text().await.unwrap();
        let payload = assertion.split('.').nth(1).expect("an assertion");
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["groups"], serde_json::json!(expected), "{name}");
        assert_eq!(claims["email"], "ada@example.com", "{name}");
    }
    stop.cancel();
}

/// A client grant of a user signed in with OpenID Connect is re-checked with the provider at
/// each refresh (a refresh of the provider's token from the sign-in): it keeps working while
/// the provider vouches for the user, and ends once the provider refuses (account disabled).
#[tokio::test]
async fn a_grant_ends_when_the_identity_provider_no_longer_vouches_for_the_user() {
    use crate::support::oauth_client::{
        self, CALLBACK, allow_fields, exchange_at, query_of, token,
    };
    use postern_access::oidc::{Oidc, OidcSettings};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://localhost:{}", listener.local_addr().unwrap().port());
    let dir = tempfile::tempdir().unwrap();
    let disabled = dir.path().join("disabled");
    let Some(op) = provider_with(
        &format!("{base}/.pomerium/callback"),
        false,
        Some(&disabled),
    )
    .await
    else {
        return;
    };
    let stop = CancellationToken::new();
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = upstream.local_addr().unwrap();
    let app = axum::Router::new().fallback(|| async { "{}" });
    tokio::spawn(async move { axum::serve(upstream, app).await });
    let yaml = format!(
        "insecure_server: true\nroutes:\n  - {{from: http://localhost, prefix: /mcp, to: http://{up}, allow_any_authenticated_user: true, mcp: {{}}}}\n"
    );
    let oidc = Oidc::new(OidcSettings {
        issuer: op.issuer.clone(),
        client_id: "postern".into(),
        client_secret: "postern-test-secret".into(),
        scopes: vec!["openid".into(), "email".into(), "profile".into()],
        groups_claim: "groups".into(),
    });
    let store = support::memory_store().await;
    let access = Access::new(
        store.clone(),
        LocalUsers::default(),
        Signer::from_pem(&Signer::generate_pem()).unwrap(),
        support::settings(),
    )
    .with_oidc(oidc);
    support::serve(listener, &yaml, access, &stop);

    let ada = support::browser();
    let callback = sign_in_at_provider(&ada, &base, &op.issuer).await;
    assert_eq!(ada.get(&callback).send().await.unwrap().status(), 303);

    let registered: serde_json::Value = support::client()
        .post(format!("{base}/.pomerium/mcp/register"))
        .json(
            &serde_json::json!({"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = registered["client_id"].as_str().unwrap().to_owned();
    let url = oauth_client::authorize_url(&base, &id, CALLBACK, &format!("{base}/mcp"));
    let page = ada.get(&url).send().await.unwrap().text().await.unwrap();
    let allowed = support::clicked(ada.post(format!("{base}/.pomerium/mcp/authorize")), &base)
        .form(&allow_fields(&page))
        .send()
        .await
        .unwrap();
    let code = query_of(allowed.headers()["location"].to_str().unwrap())["code"].clone();
    let (status, tokens) = exchange_at(&base, &id, &code).await;
    assert_eq!(status, 200, "{tokens}");
    // A second grant (consent is remembered), for when the provider is down.
    let again = ada.get(&url).send().await.unwrap();
    let code = query_of(again.headers()["location"].to_str().unwrap())["code"].clone();
    let (status, second) = exchange_at(&base, &id, &code).await;
    assert_eq!(status, 200, "{second}");
    let refresh = |rt: String| {
        let (base, id) = (base.clone(), id.clone());
        async move {
            token(
                &base,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", rt.as_str()),
                    ("client_id", id.as_str()),
                ],
                None,
            )
            .await
        }
    };
    let (status, body, _) = refresh(tokens["refresh_token"].as_str().unwrap().to_owned()).await;
    assert_eq!(status, 200, "the provider still vouches for Ada: {body}");
    let (status, body, _) = refresh(body["refresh_token"].as_str().unwrap().to_owned()).await;
    assert_eq!(status, 200, "and again, with its rotated token: {body}");

    std::fs::write(&disabled, "ada\n").unwrap();
    let (status, body, _) = refresh(body["refresh_token"].as_str().unwrap().to_owned()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("no longer vouches for ada@example.com"),
        "{body}"
    );

    // The provider unreachable: the refresh says try again, and the client keeps its token.
    drop(op);
    let kept = second["refresh_token"].as_str().unwrap().to_owned();
    let (status, body, _) = refresh(kept.clone()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("temporarily_unavailable")),
        "{body}"
    );
    assert!(
        store.find_refresh_token(&kept).await.unwrap().is_some(),
        "the refresh token is still current"
    );
    stop.cancel();
}
