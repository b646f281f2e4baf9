//! Dynamic client registration (RFC 7591), which anyone may call: the endpoint, and its limits:
//! registrations per client address in a window (429 with `Retry-After` beyond), a short life
//! for registrations that are never used (made the normal life on first use), and the grant
//! types a client registered, enforced at the token endpoint. What a registration may contain, and how large,
//! is checked by [`postern_oauth::registration::validate_metadata`].

use std::time::Duration;

use super::*;
use postern_gateway::hooks::RequestContext;
use postern_oauth::{ErrorCode, OAuthError};
use postern_store::{OAuthClient, now_ms};
use serde_json::{Value, json};

/// How long a registration lives once it has been used (each authorization renews it when less
/// than half of this is left).
pub const USED_TTL: Duration = Duration::from_secs(180 * 24 * 3600);

/// Registration limits (the defaults suit any deployment; tests shorten them).
#[derive(Clone, Debug)]
pub struct RegistrationLimits {
    /// Registrations accepted per client address (IPv6: per /64) in `window`.
    pub per_address: u32,
    /// The rate limit's window.
    pub window: Duration,
    /// How long a registration that no authorization has used yet is kept.
    pub unused_ttl: Duration,
}

impl Default for RegistrationLimits {
    fn default() -> Self {
        Self {
            per_address: 20,
            window: Duration::from_secs(60),
            unused_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

impl crate::authorization_server::AuthorizationServer {
    /// Counts a registration from the request's address; `too_many_requests` (429, with when
    /// to try again) when it is over the limit.
    pub(crate) fn admit_registration(&self, ctx: &RequestContext) -> Result<(), OAuthError> {
        let settings = self.settings.get();
        let limits = &settings.registration;
        let Err(retry_after) = self.registration_limiter.admit(
            ctx.client_addr.ip(),
            limits.per_address,
            limits.window,
        ) else {
            return Ok(());
        };
        let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
        tracing::warn!(request_id = %ctx.request_id, client = %ctx.client_addr.ip(), "client registrations rate limited");
        ctx.metrics.rate_limit_hit("registration");
        Err(OAuthError::new(
            ErrorCode::TooManyRequests,
            format!(
                "too many client registrations from your address (at most {} per {} s); try again in {seconds} s",
                limits.per_address,
                limits.window.as_secs()
            ),
        )
        .with_retry_after(Duration::from_secs(seconds)))
    }

    /// When a registration expires that nobody has used yet.
    pub(crate) fn unused_registration_expiry(&self, now: i64) -> i64 {
        now + self.settings.get().registration.unused_ttl.as_millis() as i64
    }

    /// Gives a registered client the normal lifetime when it is used (an authorization issued
    /// a code) and less than half of it is left: a never-used registration goes within a day,
    /// a used one stays. Client ID metadata documents are not stored, so not renewed.
    pub(crate) async fn renew_registration(&self, client: &OAuthClient) {
        let full = USED_TTL.as_millis() as i64;
        let now = now_ms();
        if client.client_id.contains("://") || client.expires_at - now >= full / 2 {
            return;
        }
        let renewed = OAuthClient {
            expires_at: now + full,
            ..client.clone()
        };
        if let Err(error) = self.store.put_client(&renewed).await {
            tracing::warn!(%error, client = %client.client_id, "cannot renew a client registration");
        }
    }

    pub(crate) async fn register(
        &self,
        ctx: &RequestContext,
        request: Request<Body>,
    ) -> Response<Body> {
        self.register_client(ctx, request)
            .await
            .unwrap_or_else(EndpointError::into_response)
    }

    /// RFC 7591 §3: validates the metadata, stores the client, answers with its id (and
    /// secret, for a confidential client).
    async fn register_client(
        &self,
        ctx: &RequestContext,
        request: Request<Body>,
    ) -> Result<Response<Body>, EndpointError> {
        if request.method() != Method::POST {
            return Err(EndpointError::NotPost("register with POST"));
        }
        if !self.settings.get().dynamic_registration {
            return Err(OAuthError::new(
                ErrorCode::AccessDenied,
                "dynamic client registration is turned off (mcp_dynamic_client_registration)",
            )
            .into());
        }
        self.admit_registration(ctx)?;
        let body = read_body(request).await.ok_or(EndpointError::TooLarge(
            "the request is too large (at most 64 KiB)",
        ))?;
        let requested: Value = serde_json::from_slice(&body).map_err(|e| {
            OAuthError::new(ErrorCode::InvalidClientMetadata, format!("not JSON: {e}"))
        })?;
        let mut metadata = postern_oauth::registration::validate_metadata(&requested)?;
        let keys = self.store.keyring();
        let client_id = format!("pst_c_{}", random_token(keys, 16)?);
        let confidential = metadata
            .get("token_endpoint_auth_method")
            .and_then(Value::as_str)
            != Some("none");
        let secret = if confidential {
            Some(random_token(keys, 32)?)
        } else {
            None
        };
        let now = now_ms();
        metadata.insert("client_id".into(), json!(client_id));
        let client = OAuthClient {
            client_id: client_id.clone(),
            metadata: Value::Object(metadata.clone()),
            secret: secret.clone().map(Secret::new),
            created_at: now,
            expires_at: self.unused_registration_expiry(now),
        };
        if let Err(error) = self.store.put_client(&client).await {
            return Err(store_unavailable(error).into());
        }
        let name = metadata
            .get("client_name")
            .and_then(|n| n.as_str())
            .unwrap_or("-")
            .to_owned();
        tracing::info!(target: "postern::audit", event = "client_registered", client = %client_id, request_id = %ctx.request_id, name = %Untrusted(&name), "client registered");
        metadata.insert("client_id_issued_at".into(), json!(now / 1000));
        if let Some(secret) = secret {
            metadata.insert("client_secret".into(), json!(secret));
            metadata.insert("client_secret_expires_at".into(), json!(0));
        }
        let mut response = json_response(StatusCode::CREATED, &Value::Object(metadata));
        no_store(&mut response);
        Ok(response)
    }
}

/// RFC 7591 §2: a client may use only the grant types it registered (`unauthorized_client`,
/// RFC 6749 §5.2, otherwise). Clients stored without `grant_types` have the default
/// (`authorization_code` and `refresh_token`).
pub(crate) fn check_grant_type(client: &OAuthClient, grant_type: &str) -> Result<(), OAuthError> {
    let registered = match client.metadata.get("grant_types").and_then(Value::as_array) {
        Some(grants) => grants.iter().any(|g| g == grant_type),
        None => matches!(grant_type, "authorization_code" | "refresh_token"),
    };
    if registered {
        return Ok(());
    }
    Err(OAuthError::new(
        ErrorCode::UnauthorizedClient,
        format!("this client did not register the {grant_type} grant (grant_types)"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_types_are_those_registered() {
        let client = |grants: Value| OAuthClient {
            client_id: "c".into(),
            metadata: serde_json::json!({ "grant_types": grants }),
            secret: None,
            created_at: 0,
            expires_at: 0,
        };
        let code_only = client(serde_json::json!(["authorization_code"]));
        assert!(check_grant_type(&code_only, "authorization_code").is_ok());
        assert_eq!(
            check_grant_type(&code_only, "refresh_token")
                .unwrap_err()
                .code,
            ErrorCode::UnauthorizedClient
        );
        let refresh_only = client(serde_json::json!(["refresh_token"]));
        assert_eq!(
            check_grant_type(&refresh_only, "authorization_code")
                .unwrap_err()
                .code,
            ErrorCode::UnauthorizedClient
        );
        let legacy = OAuthClient {
            metadata: serde_json::json!({}),
            ..code_only
        };
        assert!(check_grant_type(&legacy, "refresh_token").is_ok());
    }
}
