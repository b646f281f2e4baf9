//! Client authentication at the token endpoint (RFC 6749 §2.3.1): the credentials a client
//! presents, in `Authorization: Basic` or the form (the secret a [`Secret`], kept out of logs).

use std::collections::HashMap;

use base64::Engine as _;

use crate::{ErrorCode, OAuthError, Secret};

/// What a client presented to authenticate.
#[derive(Debug)]
pub struct ClientCredentials {
    /// `client_id`.
    pub client_id: String,
    /// The secret, if one was sent (public clients send none).
    pub secret: Option<Secret>,
}

/// The client's credentials from the `Authorization` header's value (`Basic`, with the id and
/// secret form-urlencoded as §2.3.1 says) or, without it, the form's `client_id` and
/// `client_secret`. `invalid_client` when neither names a client.
pub fn client_credentials(
    authorization: Option<&str>,
    form: &HashMap<String, String>,
) -> Result<ClientCredentials, OAuthError> {
    if let Some(basic) = authorization.and_then(|v| {
        v.strip_prefix("Basic ")
            .or_else(|| v.strip_prefix("basic "))
    }) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                OAuthError::new(
                    ErrorCode::InvalidClient,
                    "the Basic credentials are not valid base64",
                )
            })?;
        let (id, secret) = decoded.split_once(':').ok_or_else(|| {
            OAuthError::new(
                ErrorCode::InvalidClient,
                "the Basic credentials need client_id:client_secret",
            )
        })?;
        let unescape = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        return Ok(ClientCredentials {
            client_id: unescape(id),
            secret: Some(Secret::new(unescape(secret))),
        });
    }
    let client_id = form.get("client_id").cloned().ok_or_else(|| {
        OAuthError::new(
            ErrorCode::InvalidClient,
            "no client authentication: send client_id (and the secret, if registered with one)",
        )
    })?;
    Ok(ClientCredentials {
        client_id,
        secret: form.get("client_secret").cloned().map(Secret::new),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presented(authorization: Option<&str>, form: &[(&str, &str)]) -> (String, Option<String>) {
        let form = form
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let credentials = client_credentials(authorization, &form).unwrap();
        (
            credentials.client_id,
            credentials.secret.map(|s| s.expose().to_owned()),
        )
    }

    #[test]
    fn credentials_from_basic_or_form() {
        // `client%3A1:s3cret`: the id is form-urlencoded inside Basic.
        assert_eq!(
            presented(
                Some("Basic Y2xpZW50JTNBMTpzM2NyZXQ="),
                &[("client_id", "other")]
            ),
            ("client:1".into(), Some("s3cret".into()))
        );
        assert_eq!(presented(None, &[("client_id", "c")]), ("c".into(), None));
        assert_eq!(
            presented(
                Some("Bearer x"),
                &[("client_id", "c"), ("client_secret", "s")]
            ),
            ("c".into(), Some("s".into()))
        );
        for (authorization, why) in [
            (None, "no credentials at all"),
            (Some("Basic !!!"), "not base64"),
            (Some("Basic Y2xpZW50"), "no colon"),
        ] {
            let error = client_credentials(authorization, &HashMap::new()).unwrap_err();
            assert_eq!(error.code, ErrorCode::InvalidClient, "{why}");
        }
    }

    #[test]
    fn secrets_compare_and_never_print() {
        let secret = Secret::new("s3cret");
        assert!(secret.matches("s3cret") && !secret.matches("s3creT") && !secret.matches(""));
        assert_eq!(format!("{secret:?}"), "[redacted]");
        let credentials = ClientCredentials {
            client_id: "c".into(),
            secret: Some(secret),
        };
        assert!(!format!("{credentials:?}").contains("s3cret"));
    }
}
