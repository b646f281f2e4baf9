//! A test signer: mints assertions like the gateway does and serves the matching JWKS on an
//! ephemeral loopback port. Only for tests (feature `testing`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey;
use serde_json::{Value, json};

/// An ES256 key with its `kid` (the RFC 7638 thumbprint, as the gateway uses).
pub struct TestKey {
    encoding: EncodingKey,
    jwk: Jwk,
}

impl TestKey {
    /// A fresh random P-256 key.
    pub fn generate() -> Self {
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let pem = secret
            .to_pkcs8_pem(Default::default())
            .expect("PKCS#8 encoding of a fresh key");
        let encoding = EncodingKey::from_ec_pem(pem.as_bytes()).expect("a valid EC key");
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256).expect("public JWK");
        jwk.common.key_id = Some(jwk.thumbprint(ThumbprintHash::SHA256).expect("thumbprint"));
        Self { encoding, jwk }
    }

    /// The key id.
    pub fn kid(&self) -> String {
        self.jwk.common.key_id.clone().unwrap_or_default()
    }

    /// The public key as a JWK.
    pub fn public_jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// Signs `claims` with this key, `kid` in the header.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signing")
    }

    /// Claims as the gateway sends them for `email`, issued now by `issuer` for `audience`.
    pub fn claims(issuer: &str, audience: &str, email: &str) -> Value {
        let now = now();
        json!({
            "iss": issuer, "aud": audience, "sub": format!("user-{email}"),
            "user": format!("user-{email}"), "email": email, "name": "Test User",
            "groups": ["staff"], "sid": "session-1", "jti": format!("jti-{now}"),
            "iat": now, "exp": now + 300,
        })
    }
}

/// A JWKS endpoint on `http://127.0.0.1:PORT/.well-known/pomerium/jwks.json` whose keys can be
/// swapped (key rotation) and which counts the fetches it served.
pub struct JwksServer {
    /// The JWKS URL.
    pub url: String,
    keys: Arc<Mutex<Vec<Jwk>>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    /// Starts serving `keys`.
    pub async fn start(keys: Vec<Jwk>) -> Self {
        let keys = Arc::new(Mutex::new(keys));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (k, f) = (keys.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/.well-known/pomerium/jwks.json",
            axum::routing::get(move || {
                f.fetch_add(1, Ordering::SeqCst);
                let set = JwkSet {
                    keys: k.lock().expect("keys").clone(),
                };
                async move { axum::Json(set) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr: SocketAddr = listener.local_addr().expect("local addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://{addr}/.well-known/pomerium/jwks.json"),
            keys,
            fetches,
        }
    }

    /// Replaces the published keys.
    pub fn set_keys(&self, keys: Vec<Jwk>) {
        *self.keys.lock().expect("keys") = keys;
    }

    /// How many times the JWKS was fetched.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
