use std::time::Duration;

use serde_json::json;

use crate::testing::{JwksServer, TestKey, now};
use crate::{Verifier, VerifierConfig, VerifyError};

const ISS: &str = "mcp.example.com";

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn setup() -> (TestKey, JwksServer, Verifier) {
    install_crypto();
    let key = TestKey::generate();
    let jwks = JwksServer::start(vec![key.public_jwk().clone()]).await;
    let mut config = VerifierConfig::new(&jwks.url, [ISS]).with_audience(ISS);
    config.refetch_cooldown = Duration::ZERO;
    (key, jwks, Verifier::new(config))
}

#[tokio::test]
async fn accepts_a_gateway_assertion_and_exposes_the_identity() {
    let (key, _jwks, verifier) = setup().await;
    let token = key.sign(&TestKey::claims(ISS, ISS, "ada@example.com"));
    let id = verifier.verify(&token).await.expect("valid assertion");
    assert_eq!(id.email, "ada@example.com");
    assert_eq!(id.sub, "user-ada@example.com");
    assert_eq!(id.groups, vec!["staff"]);
    assert_eq!(id.sid, "session-1");
}

#[tokio::test]
async fn refuses_a_tampered_payload() {
    let (key, _jwks, verifier) = setup().await;
    let token = key.sign(&TestKey::claims(ISS, ISS, "ada@example.com"));
    let forged = key.sign(&TestKey::claims(ISS, ISS, "root@example.com"));
    // Payload of one token with the signature of another.
    let mut parts: Vec<&str> = token.split('.').collect();
    parts[1] = forged.split('.').nth(1).unwrap();
    let err = verifier.verify(&parts.join(".")).await.unwrap_err();
    assert!(matches!(err, VerifyError::Signature), "{err}");
}

#[tokio::test]
async fn refuses_a_token_signed_by_an_attackers_key_even_with_a_matching_issuer() {
    let (_key, jwks, verifier) = setup().await;
    let attacker = TestKey::generate();
    let token = attacker.sign(&TestKey::claims(ISS, ISS, "ada@example.com"));
    let err = verifier.verify(&token).await.unwrap_err();
    assert!(matches!(err, VerifyError::UnknownKey { .. }), "{err}");
    assert!(err.to_string().contains(&jwks.url));
}

#[tokio::test]
async fn refuses_expired_future_and_foreign_tokens() {
    let (key, _jwks, verifier) = setup().await;
    let mut expired = TestKey::claims(ISS, ISS, "a@example.com");
    expired["exp"] = json!(now() - 120);
    expired["iat"] = json!(now() - 420);
    let err = verifier.verify(&key.sign(&expired)).await.unwrap_err();
    assert!(matches!(err, VerifyError::Expired), "{err}");

    let mut future = TestKey::claims(ISS, ISS, "a@example.com");
    future["iat"] = json!(now() + 600);
    future["exp"] = json!(now() + 900);
    let err = verifier.verify(&key.sign(&future)).await.unwrap_err();
    assert!(matches!(err, VerifyError::NotYetValid), "{err}");

    let other_iss = TestKey::claims("evil.example.net", ISS, "a@example.com");
    let err = verifier.verify(&key.sign(&other_iss)).await.unwrap_err();
    assert!(
        matches!(err, VerifyError::Issuer { ref got, .. } if got == "evil.example.net"),
        "{err}"
    );

    let other_aud = TestKey::claims(ISS, "other.example.com", "a@example.com");
    let err = verifier.verify(&key.sign(&other_aud)).await.unwrap_err();
    assert!(matches!(err, VerifyError::Audience { .. }), "{err}");
}

#[tokio::test]
async fn tolerates_small_clock_skew() {
    let (key, _jwks, verifier) = setup().await;
    let mut claims = TestKey::claims(ISS, ISS, "a@example.com");
    claims["iat"] = json!(now() + 10);
    claims["exp"] = json!(now() - 10);
    verifier
        .verify(&key.sign(&claims))
        .await
        .expect("within 30 s leeway");
}

#[tokio::test]
async fn refuses_unsigned_and_hmac_tokens() {
    let (_key, _jwks, verifier) = setup().await;
    // alg=none: header {"alg":"none","kid":"x"}.
    let none = "eyJhbGciOiJub25lIiwia2lkIjoieCJ9.eyJpc3MiOiJtY3AuZXhhbXBsZS5jb20ifQ.";
    let err = verifier.verify(none).await.unwrap_err();
    assert!(
        matches!(err, VerifyError::Malformed(_) | VerifyError::Algorithm(_)),
        "{err}"
    );

    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some("x".into());
    let hmac = jsonwebtoken::encode(
        &header,
        &TestKey::claims(ISS, ISS, "a@example.com"),
        &jsonwebtoken::EncodingKey::from_secret(b"guessable"),
    )
    .unwrap();
    let err = verifier.verify(&hmac).await.unwrap_err();
    assert!(matches!(err, VerifyError::Algorithm(_)), "{err}");

    let err = verifier.verify("   ").await.unwrap_err();
    assert!(matches!(err, VerifyError::Missing), "{err}");
    let err = verifier.verify("not-a-jwt").await.unwrap_err();
    assert!(matches!(err, VerifyError::Malformed(_)), "{err}");
}

#[tokio::test]
async fn picks_up_a_rotated_key_and_caches_known_ones() {
    let (key, jwks, verifier) = setup().await;
    let token = key.sign(&TestKey::claims(ISS, ISS, "a@example.com"));
    verifier.verify(&token).await.unwrap();
    verifier.verify(&token).await.unwrap();
    assert_eq!(jwks.fetches(), 1, "a known kid is served from the cache");

    let next = TestKey::generate();
    jwks.set_keys(vec![key.public_jwk().clone(), next.public_jwk().clone()]);
    let rotated = next.sign(&TestKey::claims(ISS, ISS, "a@example.com"));
    verifier
        .verify(&rotated)
        .await
        .expect("refetched on unknown kid");
    assert_eq!(jwks.fetches(), 2);
}

#[tokio::test]
async fn unknown_kids_do_not_flood_the_gateway_with_fetches() {
    install_crypto();
    let key = TestKey::generate();
    let jwks = JwksServer::start(vec![key.public_jwk().clone()]).await;
    let verifier = Verifier::new(VerifierConfig::new(&jwks.url, [ISS])); // 5 s cooldown
    verifier
        .verify(&key.sign(&TestKey::claims(ISS, ISS, "a@example.com")))
        .await
        .unwrap();
    for _ in 0..20 {
        let stranger = TestKey::generate();
        let token = stranger.sign(&TestKey::claims(ISS, ISS, "a@example.com"));
        assert!(verifier.verify(&token).await.is_err());
    }
    assert_eq!(
        jwks.fetches(),
        1,
        "unknown kids within the cooldown make no request"
    );
}

#[tokio::test]
async fn says_where_the_keys_could_not_be_loaded() {
    install_crypto();
    let key = TestKey::generate();
    let verifier = Verifier::new(VerifierConfig::new(
        "http://127.0.0.1:9/.well-known/pomerium/jwks.json",
        [ISS],
    ));
    let err = verifier
        .verify(&key.sign(&TestKey::claims(ISS, ISS, "a@example.com")))
        .await
        .unwrap_err();
    assert!(matches!(err, VerifyError::Jwks { .. }), "{err}");
    assert!(err.to_string().contains("127.0.0.1:9"), "{err}");
}
