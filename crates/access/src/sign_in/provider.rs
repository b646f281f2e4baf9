//! The identity provider users sign in with when there is one: OpenID Connect (`oidc` and the
//! presets) or GitHub's OAuth 2. Both give an [`OidcIdentity`], so sessions, policy and the
//! assertion treat them alike.

use crate::sign_in::github::{GitHub, GitHubError};
use crate::sign_in::oidc::{Oidc, OidcError, OidcIdentity};

/// A configured identity provider.
#[allow(clippy::large_enum_variant)] // one per gateway
pub enum IdentityProvider {
    /// An OpenID Connect provider.
    Oidc(Oidc),
    /// GitHub (or a GitHub Enterprise Server).
    GitHub(GitHub),
}

/// Why the provider's sign-in failed; each message says what went wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// From the OpenID Connect sign-in.
    #[error(transparent)]
    Oidc(#[from] OidcError),
    /// From the GitHub sign-in.
    #[error(transparent)]
    GitHub(#[from] GitHubError),
}

impl IdentityProvider {
    /// The session's `idp`: `oidc` or `github`.
    pub fn name(&self) -> &'static str {
        match self {
            IdentityProvider::Oidc(_) => "oidc",
            IdentityProvider::GitHub(_) => "github",
        }
    }

    /// Where to send the browser to sign in (`nonce` is for OpenID Connect only).
    pub async fn authorization_url(
        &self,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        verifier: &str,
    ) -> Result<String, ProviderError> {
        Ok(match self {
            IdentityProvider::Oidc(oidc) => {
                oidc.authorization_url(redirect_uri, state, nonce, verifier)
                    .await?
            }
            IdentityProvider::GitHub(github) => {
                github.authorization_url(redirect_uri, state, verifier)?
            }
        })
    }

    /// The identity the provider's code stands for.
    pub async fn finish(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
        nonce: &str,
    ) -> Result<OidcIdentity, ProviderError> {
        Ok(match self {
            IdentityProvider::Oidc(oidc) => {
                oidc.finish(code, redirect_uri, verifier, nonce).await?
            }
            IdentityProvider::GitHub(github) => github.finish(code, redirect_uri, verifier).await?,
        })
    }
}
