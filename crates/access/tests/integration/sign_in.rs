//! Sign-in with local users: the form, wrong passwords, rate limits, sessions and sign-out.

use serde_json::{Value, json};

use crate::support::world::*;
use crate::support::{self, client};

#[tokio::test]
async fn sign_in_accepts_the_right_password_and_rate_limits_guessing() {
    let w = world().await;
    let form = client()
        .get(format!("{}/.pomerium/sign_in?redirect_uri=/web", w.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        form.contains("name=\"email\"")
            && form.contains("name=\"password\"")
            && form.contains("value=\"/web\"")
    );

    let wrong = sign_in(&w, "ada@example.com", "nope").await;
    assert_eq!(wrong.status(), 401);
    let wrong_page = wrong.text().await.unwrap();
    let unknown_page = sign_in(&w, "nobody@example.com", "nope")
        .await
        .text()
        .await
        .unwrap();
    assert!(wrong_page.contains("Wrong email or password."));
    // Each page carries a fresh anti-forgery value; everything else is the same.
    let without_csrf = |page: &str| page.replace(&support::csrf_field(page), "");
    assert_eq!(
        without_csrf(&wrong_page),
        without_csrf(&unknown_page),
        "a wrong password and an unknown user look the same"
    );

    let ok = sign_in(&w, "ada@example.com", "correct horse").await;
    assert_eq!(ok.status(), 303);
    assert_eq!(ok.headers()["location"], "/web");

    for _ in 0..5 {
        sign_in(&w, "mallory@other.test", "guess").await;
    }
    let limited = sign_in(&w, "mallory@other.test", "mallory pw").await;
    assert_eq!(
        limited.status(),
        429,
        "this address may not try this account for a while, even with the right password"
    );
    assert!(limited.headers().contains_key("retry-after"));

    // Sign-in never redirects off this gateway.
    let response = sign_in_to(
        &w,
        "ada@example.com",
        "correct horse",
        "https://evil.test/steal",
    )
    .await;
    assert_eq!(response.headers()["location"], "/.pomerium/");
}

#[tokio::test]
async fn without_a_session_browsers_are_sent_to_sign_in_and_apis_get_401() {
    let w = world().await;
    let browser = client()
        .get(format!("{}/web", w.base))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(browser.status(), 303);
    assert_eq!(
        browser.headers()["location"],
        "/.pomerium/sign_in?redirect_uri=%2Fweb"
    );
    let api = client()
        .get(format!("{}/web", w.base))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    let (status, _) = rpc(&w, "/whoami", None, &call(1, "whoami", json!({}))).await;
    assert_eq!(status, 401);
    // A forged cookie is just no cookie.
    let (status, _) = rpc(
        &w,
        "/whoami",
        Some("_postern=v1.forged.AAAA"),
        &call(1, "whoami", json!({})),
    )
    .await;
    assert_eq!(status, 401);

    // Signed in, but the route's policy doesn't include the user's domain.
    let response = sign_in(&w, "mallory@other.test", "mallory pw").await;
    let mallory = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let forbidden = client()
        .get(format!("{}/web", w.base))
        .header("cookie", &mallory)
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);
    let ada = cookie(&w).await;
    assert_eq!(
        client()
            .get(format!("{}/web", w.base))
            .header("cookie", &ada)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn a_signed_in_user_gets_their_own_identity_from_whoami_and_sign_out_ends_it() {
    let w = world().await;
    let jar = cookie(&w).await;
    let jwks: Value = client()
        .get(format!("{}/.well-known/pomerium/jwks.json", w.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["alg"], json!("ES256"));
    let (status, body) = rpc(&w, "/whoami", Some(&jar), &call(1, "whoami", json!({}))).await;
    assert_eq!(status, 200, "{body}");
    let identity = &body["result"]["structuredContent"];
    assert_eq!(identity["email"], json!("ada@example.com"), "{body}");
    assert_eq!(identity["name"], json!("Ada Lovelace"));
    assert_eq!(identity["groups"], json!(["staff"]));
    assert_eq!(identity["issuer"], json!("localhost"));

    let out = crate::support::sign_out(&client(), &w.base, "", Some(&jar)).await;
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let (status, _) = rpc(&w, "/whoami", Some(&jar), &call(2, "whoami", json!({}))).await;
    assert_eq!(status, 401, "the old cookie no longer works anywhere");
}

#[tokio::test]
async fn verifiers_find_the_keys_from_well_known_pomerium_and_revalidate_them_by_etag() {
    let w = world().await;
    let discovery = client()
        .get(format!("{}/.well-known/pomerium", w.base))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(discovery.status(), 200);
    assert_eq!(discovery.headers()["access-control-allow-origin"], "*");
    let links: Value = discovery.json().await.unwrap();
    assert_eq!(links["issuer"], json!(format!("{}/", w.base)));
    assert_eq!(
        links["jwks_uri"],
        json!(format!("{}/.well-known/pomerium/jwks.json", w.base))
    );
    assert_eq!(
        links["frontchannel_logout_uri"],
        json!(format!("{}/.pomerium/sign_out", w.base))
    );
    assert_eq!(
        links["authentication_callback_endpoint"],
        json!(format!("{}/.pomerium/callback", w.base))
    );

    let jwks_url = links["jwks_uri"].as_str().unwrap().to_owned();
    let first = client().get(&jwks_url).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["access-control-allow-origin"], "*");
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.len() > 10, "{etag}");
    let again = client()
        .get(&jwks_url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert!(again.bytes().await.unwrap().is_empty());
    let other = client()
        .get(&jwks_url)
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200, "another tag gets the keys");
}

#[tokio::test]
async fn a_browser_without_a_session_on_routes_is_sent_to_sign_in_and_an_app_gets_401() {
    let w = world().await;
    let url = format!("{}/.pomerium/mcp/routes", w.base);
    let browser = client()
        .get(&url)
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(browser.status(), 303);
    assert_eq!(
        browser.headers()["location"],
        "/.pomerium/sign_in?redirect_uri=%2F.pomerium%2Fmcp%2Froutes"
    );
    for (accept, bearer) in [
        ("application/json", None),
        ("text/html", Some("Bearer nope")),
    ] {
        let mut request = client().get(&url).header("accept", accept);
        if let Some(bearer) = bearer {
            request = request.header("authorization", bearer);
        }
        let app = request.send().await.unwrap();
        assert_eq!(app.status(), 401, "{accept} {bearer:?}");
    }
}
