//! Secrets at rest: tokens and codes are stored only as SHA-256 hashes (they are high-entropy
//! random strings, so a plain hash is enough to make a stolen database useless for presenting
//! them); values the gateway must read back (upstream tokens, client secrets, PKCE verifiers, the
//! signing key) are sealed with ChaCha20-Poly1305 under a key derived from `shared_secret` with
//! HKDF-SHA256. Each sealed value names its key id, so a rotated `shared_secret` can still open
//! old rows while the previous secret is kept as a fallback.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hkdf};

use crate::StoreError;

/// Sealed values start with this version tag.
const FORMAT: &str = "v1";
const HKDF_SALT: &[u8] = b"postern store v1";
const HKDF_INFO: &[&[u8]] = &[b"store at-rest encryption"];

/// One derived sealing key.
struct SealingKey {
    id: String,
    key: LessSafeKey,
}

/// The current sealing key and older ones that may still open values.
pub struct Keyring {
    current: SealingKey,
    previous: Vec<SealingKey>,
    random: SystemRandom,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current.id)
            .field(
                "previous",
                &self.previous.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Keyring {
    /// Keys derived from `shared_secret` (sealing) and `previous` secrets (opening only).
    pub fn new(shared_secret: &[u8], previous: &[Vec<u8>]) -> Result<Self, StoreError> {
        if shared_secret.len() < 32 {
            return Err(StoreError::Config(
                "shared_secret must be at least 32 bytes (generate one with `head -c32 /dev/urandom | base64`)".into(),
            ));
        }
        Ok(Self {
            current: derive(shared_secret),
            previous: previous.iter().map(|s| derive(s)).collect(),
            random: SystemRandom::new(),
        })
    }

    /// The id of the key that seals new values.
    pub fn current_key_id(&self) -> &str {
        &self.current.id
    }

    /// Seals `plaintext`, bound to `context` (the row it belongs to), as `v1.<kid>.<b64>`.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<String, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| StoreError::Crypto("no randomness available".into()))?;
        let mut buffer = plaintext.to_vec();
        self.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buffer,
            )
            .map_err(|_| StoreError::Crypto("sealing failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buffer);
        Ok(format!(
            "{FORMAT}.{}.{}",
            self.current.id,
            URL_SAFE_NO_PAD.encode(out)
        ))
    }

    /// Opens a value sealed by [`Keyring::seal`] with the same `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, StoreError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some(FORMAT), Some(kid), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(StoreError::Crypto(
                "a sealed value has an unknown format".into(),
            ));
        };
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == kid)
            .ok_or_else(|| {
                StoreError::Crypto(format!(
                    "a value is sealed with key {kid}, which is not configured: keep the old shared_secret among the previous secrets until such rows expire"
                ))
            })?;
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| StoreError::Crypto("a sealed value is not valid base64".into()))?;
        if bytes.len() < NONCE_LEN {
            return Err(StoreError::Crypto("a sealed value is too short".into()));
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| StoreError::Crypto("bad nonce".into()))?;
        let mut buffer = ciphertext.to_vec();
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buffer)
            .map_err(|_| {
                StoreError::Crypto(
                    "a sealed value failed authentication: it was altered or moved to another row"
                        .into(),
                )
            })?;
        Ok(plain.to_vec())
    }

    /// `n` random bytes, URL-safe base64 encoded (ids, tokens).
    pub fn random_token(&self, n: usize) -> Result<String, StoreError> {
        let mut bytes = vec![0u8; n];
        self.random
            .fill(&mut bytes)
            .map_err(|_| StoreError::Crypto("no randomness available".into()))?;
        Ok(URL_SAFE_NO_PAD.encode(bytes))
    }
}

fn derive(secret: &[u8]) -> SealingKey {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, HKDF_SALT).extract(secret);
    let mut bytes = [0u8; 32];
    prk.expand(HKDF_INFO, Len(32))
        .and_then(|okm| okm.fill(&mut bytes))
        .expect("HKDF output of 32 bytes is always valid");
    let id = hex(&digest::digest(&digest::SHA256, &bytes).as_ref()[..4]);
    let key = LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, &bytes).expect("32-byte ChaCha20-Poly1305 key"),
    );
    SealingKey { id, key }
}

/// SHA-256 of a token or code, hex encoded: what the store keeps instead of the secret.
pub fn hash_secret(secret: &str) -> String {
    hex(digest::digest(&digest::SHA256, secret.as_bytes()).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const OTHER: &[u8] = b"fedcba9876543210fedcba9876543210";

    #[test]
    fn seals_and_opens_bound_to_context() {
        let ring = Keyring::new(SECRET, &[]).unwrap();
        let sealed = ring.seal("ti|ada|notion", b"secret-token").unwrap();
        assert!(!sealed.contains("secret-token"));
        assert_eq!(
            ring.open("ti|ada|notion", &sealed).unwrap(),
            b"secret-token"
        );
        // Moved to another row: refused.
        assert!(ring.open("ti|eve|notion", &sealed).is_err());
        // Altered: refused.
        let mut altered = sealed.clone();
        altered.pop();
        altered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(ring.open("ti|ada|notion", &altered).is_err());
    }

    #[test]
    fn a_rotated_secret_still_opens_old_values_through_the_previous_list() {
        let old = Keyring::new(SECRET, &[]).unwrap();
        let sealed = old.seal("c", b"x").unwrap();
        let rotated = Keyring::new(OTHER, &[SECRET.to_vec()]).unwrap();
        assert_ne!(rotated.current_key_id(), old.current_key_id());
        assert_eq!(rotated.open("c", &sealed).unwrap(), b"x");
        let forgotten = Keyring::new(OTHER, &[]).unwrap();
        let err = forgotten.open("c", &sealed).unwrap_err();
        assert!(err.to_string().contains("not configured"), "{err}");
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(Keyring::new(b"short", &[]).is_err());
    }

    #[test]
    fn hashes_are_stable_hex() {
        assert_eq!(hash_secret("abc").len(), 64);
        assert_eq!(hash_secret("abc"), hash_secret("abc"));
        assert_ne!(hash_secret("abc"), hash_secret("abd"));
    }
}

/// Property-based tests (issue 17, hostile input): thousands of generated values and
/// alterations per run (`PROPTEST_CASES` raises it).
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    /// Ways to alter a sealed value: flip one bit of one byte, replace one character, cut it
    /// short, add to it, splice another sealed value in.
    #[derive(Clone, Debug)]
    enum Alteration {
        FlipBit(prop::sample::Index, u8),
        Replace(prop::sample::Index, char),
        Truncate(prop::sample::Index),
        Extend(String),
    }

    fn alteration() -> impl Strategy<Value = Alteration> {
        prop_oneof![
            (any::<prop::sample::Index>(), 0..8u8).prop_map(|(i, b)| Alteration::FlipBit(i, b)),
            (
                any::<prop::sample::Index>(),
                prop::sample::select(&b"AB_-.=+/0v1aZz "[..]).prop_map(char::from)
            )
                .prop_map(|(i, c)| Alteration::Replace(i, c)),
            any::<prop::sample::Index>().prop_map(Alteration::Truncate),
            "[A-Za-z0-9_.=-]{1,8}".prop_map(Alteration::Extend),
        ]
    }

    fn alter(sealed: &str, alteration: &Alteration) -> Option<String> {
        let mut bytes = sealed.as_bytes().to_vec();
        match alteration {
            Alteration::FlipBit(at, bit) => {
                let at = at.index(bytes.len());
                bytes[at] ^= 1 << bit;
            }
            Alteration::Replace(at, c) => {
                let at = at.index(bytes.len());
                bytes[at] = u8::try_from(*c).ok()?;
            }
            Alteration::Truncate(at) => bytes.truncate(at.index(bytes.len())),
            Alteration::Extend(more) => bytes.extend_from_slice(more.as_bytes()),
        }
        String::from_utf8(bytes).ok().filter(|s| s != sealed)
    }

    fn cases() -> ProptestConfig {
        ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(2000),
        )
    }

    proptest! {
        #![proptest_config(cases())]

        /// What is sealed opens to itself, only with its own context; altered in any way, it
        /// never opens.
        #[test]
        fn sealed_values_round_trip_and_resist_alteration(
            plaintext in prop::collection::vec(any::<u8>(), 0..64),
            context in "\\PC{0,16}",
            other_context in "\\PC{0,16}",
            alteration in alteration(),
        ) {
            let ring = Keyring::new(SECRET, &[]).unwrap();
            let sealed = ring.seal(&context, &plaintext).unwrap();
            prop_assert_eq!(ring.open(&context, &sealed).unwrap(), plaintext);
            if other_context != context {
                prop_assert!(ring.open(&other_context, &sealed).is_err());
            }
            if let Some(altered) = alter(&sealed, &alteration) {
                prop_assert!(ring.open(&context, &altered).is_err(), "{:?} opened", altered);
            }
        }

        /// Arbitrary text never panics `open`, and never opens.
        #[test]
        fn arbitrary_text_never_opens(text in "(v1\\.[0-9a-f]{0,16}\\.)?[A-Za-z0-9_=.-]{0,80}") {
            let ring = Keyring::new(SECRET, &[]).unwrap();
            prop_assert!(ring.open("c", &text).is_err());
        }
    }
}
