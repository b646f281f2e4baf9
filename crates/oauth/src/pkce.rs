//! PKCE (RFC 7636), S256 only: OAuth 2.1 and the MCP authorization spec require it, and `plain`
//! gives no protection against an intercepted code.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::{ErrorCode, OAuthError};

/// Checks the `code_challenge` / `code_challenge_method` of an authorization request.
pub fn check_challenge(
    challenge: Option<&str>,
    method: Option<&str>,
) -> Result<String, OAuthError> {
    let challenge = challenge.filter(|c| !c.is_empty()).ok_or_else(|| {
        OAuthError::new(
            ErrorCode::InvalidRequest,
            "code_challenge is required: use PKCE with code_challenge_method=S256",
        )
    })?;
    match method {
        Some("S256") => {}
        Some("plain") | None => {
            return Err(OAuthError::new(
                ErrorCode::InvalidRequest,
                "code_challenge_method must be S256 (plain is not accepted)",
            ));
        }
        Some(other) => {
            return Err(OAuthError::new(
                ErrorCode::InvalidRequest,
                format!("unknown code_challenge_method {other:?}; use S256"),
            ));
        }
    }
    // base64url of a SHA-256 digest: 43 characters.
    if challenge.len() != 43 || URL_SAFE_NO_PAD.decode(challenge).is_err() {
        return Err(OAuthError::new(
            ErrorCode::InvalidRequest,
            "code_challenge is not a base64url SHA-256 digest (43 characters)",
        ));
    }
    Ok(challenge.to_owned())
}

/// A PKCE code verifier (RFC 7636 §4.1): a secret, so its `Debug` is redacted, and not `Clone`
/// (one owner: whoever sends or checks it).
pub struct PkceVerifier(String);

impl PkceVerifier {
    /// Wraps a verifier (checked for its form by [`verify`], not here).
    pub fn new(verifier: String) -> Self {
        Self(verifier)
    }

    /// The verifier itself, for the one place that sends it.
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// Its S256 challenge.
    pub fn challenge(&self) -> String {
        challenge_of(&self.0)
    }
}

impl std::fmt::Debug for PkceVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PkceVerifier([redacted])")
    }
}

/// Whether `verifier` matches the S256 `challenge` (RFC 7636 §4.6), in constant time.
pub fn verify(verifier: &PkceVerifier, challenge: &str) -> bool {
    let verifier = verifier.secret();
    // RFC 7636 §4.1: 43 to 128 unreserved characters.
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if !well_formed {
        return false;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    let computed = URL_SAFE_NO_PAD.encode(digest.as_ref());
    subtle::ConstantTimeEq::ct_eq(computed.as_bytes(), challenge.as_bytes()).into()
}

/// The S256 challenge of `verifier`.
pub fn challenge_of(verifier: &str) -> String {
    URL_SAFE_NO_PAD
        .encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7636 Appendix B.
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    #[test]
    fn s256_per_rfc_7636_appendix_b() {
        let verifier = |v: &str| PkceVerifier::new(v.to_owned());
        assert_eq!(challenge_of(VERIFIER), CHALLENGE);
        assert_eq!(verifier(VERIFIER).challenge(), CHALLENGE);
        assert!(verify(&verifier(VERIFIER), CHALLENGE));
        assert!(
            !verify(
                &verifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXj"),
                CHALLENGE
            ),
            "wrong verifier"
        );
        assert!(
            !verify(&verifier(CHALLENGE), CHALLENGE),
            "the challenge itself is not a verifier (plain)"
        );
        assert!(
            !verify(&verifier("short"), &challenge_of("short")),
            "too short to be a verifier"
        );
        assert_eq!(
            format!("{:?}", verifier(VERIFIER)),
            "PkceVerifier([redacted])"
        );
    }

    #[test]
    fn plain_and_missing_challenges_are_refused() {
        assert!(check_challenge(Some(CHALLENGE), Some("S256")).is_ok());
        assert_eq!(
            check_challenge(Some(CHALLENGE), Some("plain"))
                .unwrap_err()
                .code,
            ErrorCode::InvalidRequest
        );
        assert!(
            check_challenge(Some(CHALLENGE), None).is_err(),
            "the default method is plain"
        );
        assert!(check_challenge(None, Some("S256")).is_err());
        assert!(check_challenge(Some("not-a-digest"), Some("S256")).is_err());
    }
}
