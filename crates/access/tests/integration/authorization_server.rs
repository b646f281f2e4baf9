//! The authorization server: an MCP client's flow (discovery, register, authorize, token,
//! refresh, revoke), client metadata documents, private_key_jwt, and the attacks on it.

use postern_access::assertion::Signer;

use serde_json::{Value, json};

use crate::support::client;
use crate::support::oauth_client::{CALLBACK, CHALLENGE, VERIFIER, query_of, token, urlencode};
use crate::support::world::*;

#[tokio::test]
async fn discovery_points_clients_at_the_authorization_server() {
    let w = world().await;
    let response = client()
        .post(format!("{}/sqlite", w.base))
        .json(&call(1, "read_query", json!({"query": "SELECT 1"})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    let prm_url = format!("{}/.well-known/oauth-protected-resource/sqlite", w.base);
    assert_eq!(challenge, format!("Bearer resource_metadata=\"{prm_url}\""));
    let prm: Value = client()
        .get(&prm_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(prm["resource"], json!(format!("{}/sqlite", w.base)));
    assert_eq!(prm["authorization_servers"], json!([w.base]));
    let asm: Value = client()
        .get(format!("{}/.well-known/oauth-authorization-server", w.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(asm["issuer"], json!(w.base));
    assert_eq!(asm["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(
        asm["token_endpoint"],
        json!(format!("{}/.pomerium/mcp/token", w.base))
    );
    let preflight = client()
        .request(reqwest::Method::OPTIONS, format!("{}/sqlite", w.base))
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn an_mcp_client_authorizes_refreshes_and_revokes() {
    let w = world().await;
    let jar = cookie(&w).await;
    let public = register(&w, "none").await;
    let id = public["client_id"].as_str().unwrap().to_owned();
    assert!(public.get("client_secret").is_none());

    // Unauthenticated browsers are sent to sign in first.
    let response = client()
        .get(authorize_url(&w, &id, CALLBACK, ""))
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/.pomerium/sign_in?redirect_uri=%2F.pomerium%2Fmcp%2Fauthorize")
    );

    let code = code_for(&w, &jar, &id).await;
    let (status, body, cache) = token(
        &w.base,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", CALLBACK),
            ("client_id", &id),
            ("code_verifier", VERIFIER),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(cache, "no-store");
    let access = body["access_token"].as_str().unwrap().to_owned();
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    assert!(access.starts_with("pst_at_") && refresh.starts_with("pst_rt_"));
    assert_eq!(body["token_type"], json!("Bearer"));

    let response = bearer_call(&w, "/sqlite", &access).await;
    assert_eq!(response.status(), 200);
    let result: Value = response.json().await.unwrap();
    assert_eq!(result["result"]["structuredContent"]["rows"], json!([[1]]));

    // Consent is remembered: the next authorization goes straight back with a code.
    let location = authorize(
        &w,
        &jar,
        &authorize_url(&w, &id, "http://127.0.0.1:5555/callback", ""),
    )
    .await;
    assert!(
        location.starts_with("http://127.0.0.1:5555/callback?code="),
        "loopback redirect URIs may change port: {location}"
    );

    // Refresh rotates; presenting the old refresh token again revokes everything.
    let (status, rotated, _) = token(
        &w.base,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", &id),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let newest = rotated["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(newest, refresh);
    let new_access = rotated["access_token"].as_str().unwrap().to_owned();
    assert_eq!(bearer_call(&w, "/sqlite", &new_access).await.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    let (status, replay, _) = token(
        &w.base,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", &id),
        ],
        None,
    )
    .await;
    assert_eq!(
        (status, replay["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, _, _) = token(
        &w.base,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &newest),
            ("client_id", &id),
        ],
        None,
    )
    .await;
    assert_eq!(status, 400, "the family died with the replay");
    assert_eq!(
        bearer_call(&w, "/sqlite", &new_access).await.status(),
        401,
        "and its access tokens"
    );

    // Revocation (RFC 7009).
    let code = code_for(&w, &jar, &id).await;
    let (_, fresh) = exchange(&w, &id, &code).await;
    let fresh_access = fresh["access_token"].as_str().unwrap();
    let response = client()
        .post(format!("{}/.pomerium/mcp/revoke", w.base))
        .form(&[
            ("token", fresh["refresh_token"].as_str().unwrap()),
            ("client_id", &id),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let refused = bearer_call(&w, "/sqlite", fresh_access).await;
    assert_eq!(refused.status(), 401);
    assert!(
        refused.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_token\"")
    );
}

#[tokio::test]
async fn the_authorization_server_refuses_each_attack() {
    let w = world().await;
    let jar = cookie(&w).await;
    let a = register(&w, "none").await["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = register(&w, "none").await["client_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // plain PKCE, and no PKCE: back to the client with invalid_request.
    let plain = authorize(
        &w,
        &jar,
        &authorize_url(&w, &a, CALLBACK, "")
            .replace("code_challenge_method=S256", "code_challenge_method=plain"),
    )
    .await;
    assert_eq!(query_of(&plain)["error"], "invalid_request");
    let none = authorize(
        &w,
        &jar,
        &authorize_url(&w, &a, CALLBACK, "").replace(
            &format!("&code_challenge={CHALLENGE}&code_challenge_method=S256"),
            "",
        ),
    )
    .await;
    assert_eq!(query_of(&none)["error"], "invalid_request");

    // A redirect URI that isn't registered is never redirected to.
    for evil in [
        "https://evil.test/callback",
        "http://127.0.0.1:9999/callback/other",
        "http://localhost:9999/callback",
    ] {
        let response = client()
            .get(authorize_url(&w, &a, evil, ""))
            .header("cookie", &jar)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{evil}");
        assert!(response.headers().get("location").is_none());
    }

    // Wrong verifier; the code is then spent.
    let code = code_for(&w, &jar, &a).await;
    let (status, body, _) = token(
        &w.base,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", CALLBACK),
            ("client_id", &a),
            ("code_verifier", "x".repeat(43).as_str()),
        ],
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    // The client's retry (with the right verifier) learns the code is spent, not that tokens
    // were revoked: none were issued.
    let (status, body) = exchange(&w, &a, &code).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let description = body["error_description"].as_str().unwrap_or_default();
    assert!(
        description.contains("already used") && !description.contains("revoked"),
        "{description}"
    );
    // The plain challenge as verifier.
    let code = code_for(&w, &jar, &a).await;
    let (status, _, _) = token(
        &w.base,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", CALLBACK),
            ("client_id", &a),
            ("code_verifier", CHALLENGE),
        ],
        None,
    )
    .await;
    assert_eq!(status, 400);

    // A code for client A presented by client B.
    let code = code_for(&w, &jar, &a).await;
    let (status, body) = exchange(&w, &b, &code).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // Code replay: refused, and the tokens of the first use revoked.
    let code = code_for(&w, &jar, &a).await;
    let (status, first) = exchange(&w, &a, &code).await;
    assert_eq!(status, 200);
    let (status, body) = exchange(&w, &a, &code).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("revoked")),
        "{body}"
    );
    assert_eq!(
        bearer_call(&w, "/sqlite", first["access_token"].as_str().unwrap())
            .await
            .status(),
        401
    );

    // A TE for /sqlite is refused on /whoami; a forged one anywhere.
    let code = code_for(&w, &jar, &a).await;
    let (_, good) = exchange(&w, &a, &code).await;
    let access = good["access_token"].as_str().unwrap();
    assert_eq!(bearer_call(&w, "/sqlite", access).await.status(), 200);
    let wrong_route = client()
        .post(format!("{}/whoami", w.base))
        .bearer_auth(access)
        .json(&call(1, "whoami", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_route.status(), 401);
    assert!(
        wrong_route.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("another MCP server")
    );
    let mut forged = access.to_owned();
    forged.replace_range(20..24, "AAAA");
    assert_eq!(bearer_call(&w, "/sqlite", &forged).await.status(), 401);
    assert_eq!(
        bearer_call(&w, "/sqlite", "pst_at_v1.deadbeef.AAAA")
            .await
            .status(),
        401
    );

    // Confidential clients must present their secret.
    let confidential = register(&w, "client_secret_basic").await;
    let (cid, secret) = (
        confidential["client_id"].as_str().unwrap().to_owned(),
        confidential["client_secret"].as_str().unwrap().to_owned(),
    );
    let code = code_for(&w, &jar, &cid).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", CALLBACK),
        ("code_verifier", VERIFIER),
    ];
    let (status, body, _) = token(&w.base, &form, Some((&cid, "wrong-secret"))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    // A failed client authentication doesn't spend the code: the real client can still use it.
    let (status, body, _) = token(&w.base, &form, Some((&cid, &secret))).await;
    assert_eq!(status, 200, "{body}");
}

/// Signing out of the browser ends the browser's session, not the MCP clients the user
/// authorized from it (they end on Connected apps: see `grants.rs`).
#[tokio::test]
async fn signing_out_leaves_the_users_mcp_clients_working() {
    let w = world().await;
    let jar = cookie(&w).await;
    let id = register(&w, "none").await["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let code = code_for(&w, &jar, &id).await;
    let (_, tokens) = exchange(&w, &id, &code).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    assert_eq!(bearer_call(&w, "/sqlite", &access).await.status(), 200);
    let out = crate::support::sign_out(&client(), &w.base, "", Some(&jar)).await;
    assert_eq!(out.status(), 200);
    // Past the revocation poll, when a revoked TE would be refused everywhere.
    tokio::time::sleep(
        postern_access::oauth_server::REVOCATION_POLL + std::time::Duration::from_millis(300),
    )
    .await;
    assert_eq!(bearer_call(&w, "/sqlite", &access).await.status(), 200);
    let (status, body, _) = token(
        &w.base,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", &id),
        ],
        None,
    )
    .await;
    assert_eq!(
        status, 200,
        "the refresh token outlives the sign-out: {body}"
    );
}

#[tokio::test]
async fn clients_can_identify_with_a_metadata_document_but_not_with_a_lying_one() {
    let w = world().await;
    let jar = cookie(&w).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let docs = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let (good_id, bad_id) = (format!("{docs}/client.json"), format!("{docs}/lying.json"));
    let (good, bad) = (
        json!({"client_id": good_id, "client_name": "Doc client", "redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"}),
        json!({"client_id": "https://claude.ai/someone-else.json", "redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"}),
    );
    let app = axum::Router::new()
        .route(
            "/client.json",
            axum::routing::get(move || {
                let d = good.clone();
                async move { axum::Json(d) }
            }),
        )
        .route(
            "/lying.json",
            axum::routing::get(move || {
                let d = bad.clone();
                async move { axum::Json(d) }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let code = code_for(&w, &jar, &urlencode(&good_id)).await;
    let (status, tokens) = exchange(&w, &good_id, &code).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(
        bearer_call(&w, "/sqlite", tokens["access_token"].as_str().unwrap())
            .await
            .status(),
        200
    );

    let response = client()
        .get(authorize_url(&w, &urlencode(&bad_id), CALLBACK, ""))
        .header("cookie", &jar)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("differs from its URL")
    );
    // A host outside mcp_allowed_client_id_domains.
    let response = client()
        .get(authorize_url(
            &w,
            &urlencode("https://unlisted.example/client.json"),
            CALLBACK,
            "",
        ))
        .header("cookie", &jar)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn private_key_jwt_clients_prove_their_key_once_per_assertion() {
    use jsonwebtoken::jwk::{Jwk, JwkSet, ThumbprintHash};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let w = world().await;
    let jar = cookie(&w).await;
    let new_key = || {
        let encoding = EncodingKey::from_ec_pem(Signer::generate_pem().as_bytes()).unwrap();
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some(jwk.thumbprint(ThumbprintHash::SHA256).unwrap());
        (encoding, jwk)
    };
    let (key, jwk) = new_key();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let docs = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let client_id = format!("{docs}/chatgpt.json");
    let document = json!({"client_id": client_id, "client_name": "Confidential doc client", "redirect_uris": [CALLBACK],
        "token_endpoint_auth_method": "private_key_jwt", "jwks_uri": format!("{docs}/jwks.json")});
    let jwks = serde_json::to_value(JwkSet {
        keys: vec![jwk.clone()],
    })
    .unwrap();
    let app = axum::Router::new()
        .route(
            "/chatgpt.json",
            axum::routing::get(move || {
                let d = document.clone();
                async move { axum::Json(d) }
            }),
        )
        .route(
            "/jwks.json",
            axum::routing::get(move || {
                let d = jwks.clone();
                async move { axum::Json(d) }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let assertion = |key: &EncodingKey, kid: &str, jti: &str| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        let claims = json!({"iss": client_id, "sub": client_id, "aud": format!("{}/.pomerium/mcp/token", w.base), "jti": jti, "iat": now, "exp": now + 60});
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    };
    let exchange_with = |code: String, assertion: Option<String>| {
        let (base, client_id) = (w.base.clone(), client_id.clone());
        async move {
            let mut form = vec![
                ("grant_type", "authorization_code".to_owned()),
                ("code", code),
                ("redirect_uri", CALLBACK.to_owned()),
                ("code_verifier", VERIFIER.to_owned()),
                ("client_id", client_id),
            ];
            if let Some(a) = assertion {
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
                form.push(("client_assertion", a));
            }
            let response = client()
                .post(format!("{base}/.pomerium/mcp/token"))
                .form(&form)
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let kid = jwk.common.key_id.clone().unwrap();
    let code = code_for(&w, &jar, &urlencode(&client_id)).await;
    let (status, body) = exchange_with(code.clone(), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "no assertion, no tokens"
    );
    let (stranger, stranger_jwk) = new_key();
    let (status, _) = exchange_with(
        code.clone(),
        Some(assertion(
            &stranger,
            stranger_jwk.common.key_id.as_deref().unwrap(),
            "j0",
        )),
    )
    .await;
    assert_eq!(status, 401, "signed with a key the client doesn't publish");
    let (status, _) = exchange_with(code.clone(), Some(assertion(&stranger, &kid, "j0"))).await;
    assert_eq!(status, 401, "the client's kid, another key's signature");
    let good = assertion(&key, &kid, "j1");
    let (status, body) = exchange_with(code, Some(good.clone())).await;
    assert_eq!(status, 200, "{body}");
    let code = code_for(&w, &jar, &urlencode(&client_id)).await;
    let (status, body) = exchange_with(code, Some(good)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "an assertion works once"
    );
}

/// A server on the host's root is the resource `https://host`, without a trailing slash, as
/// Pomerium names it; the challenge, the metadata and `/authorize` agree on it.
#[tokio::test]
async fn a_root_server_is_named_without_a_trailing_slash() {
    let yaml = "insecure_server: true
routes:
  - {from: http://localhost, to: 'http://127.0.0.1:9', allow_any_authenticated_user: true, mcp: {}}
";
    let (base, stop) = crate::support::gateway(yaml, vec![], crate::support::settings()).await;
    let response = client()
        .post(format!("{base}/"))
        .json(&call(1, "whoami", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let prm_url = format!("{base}/.well-known/oauth-protected-resource");
    assert_eq!(
        response.headers()["www-authenticate"],
        format!("Bearer resource_metadata=\"{prm_url}\"").as_str()
    );
    let prm: Value = client()
        .get(&prm_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(prm["resource"], json!(base));
    stop.cancel();
}

/// A client names the server by the URL it uses, which may be any URL the route serves (as in
/// Pomerium): the challenge, the metadata, `/authorize` and `/token` all take it, and the TE is
/// bound to the route that serves it.
#[tokio::test]
async fn the_protected_resource_follows_the_url_the_client_uses() {
    let w = world().await;
    let used = format!("{}/sqlite/mcp", w.base);
    let response = client()
        .post(&used)
        .json(&call(1, "read_query", json!({"query": "SELECT 1"})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let prm_url = format!("{}/.well-known/oauth-protected-resource/sqlite/mcp", w.base);
    assert_eq!(
        response.headers()["www-authenticate"],
        format!("Bearer resource_metadata=\"{prm_url}\"").as_str()
    );
    let prm: Value = client()
        .get(&prm_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(prm["resource"], json!(used));

    let jar = cookie(&w).await;
    let client_id = register(&w, "none").await["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = crate::support::oauth_client::authorize_url(&w.base, &client_id, CALLBACK, &used);
    let location = authorize(&w, &jar, &url).await;
    let code = query_of(&location)["code"].clone();
    let (status, body, _) = token(
        &w.base,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", CALLBACK),
            ("client_id", &client_id),
            ("code_verifier", VERIFIER),
            ("resource", &used),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let te = body["access_token"].as_str().unwrap();
    assert_eq!(bearer_call(&w, "/sqlite", te).await.status(), 200);
    // Another server's URL at the token endpoint is still another resource.
    let location = authorize(&w, &jar, &url).await;
    let code = query_of(&location)["code"].clone();
    let whoami = format!("{}/whoami", w.base);
    let (status, body, _) = token(
        &w.base,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", CALLBACK),
            ("client_id", &client_id),
            ("code_verifier", VERIFIER),
            ("resource", &whoami),
        ],
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].clone()),
        (400, json!("invalid_target"))
    );
}
