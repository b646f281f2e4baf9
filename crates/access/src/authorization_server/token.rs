//! `/token`: client authentication (secret, none, or `private_key_jwt`), the code and refresh
//! grants, and the tokens they issue.

use super::*;
use crate::enforcement::audit::IdentityEvent;

impl AuthorizationServer {
    pub(crate) async fn token(
        &self,
        ctx: &RequestContext,
        request: Request<Body>,
    ) -> Response<Body> {
        if request.method() != Method::POST {
            return EndpointError::NotPost("use POST").into_response();
        }
        let headers = request.headers().clone();
        let Some(body) = read_body(request).await else {
            return EndpointError::TooLarge("the request is too large").into_response();
        };
        let form = oauth_server::form(&body);
        match self.token_grant(ctx, &headers, &form).await {
            Ok(body) => {
                let mut response = json_response(StatusCode::OK, &body);
                no_store(&mut response);
                response
            }
            Err(error) => {
                ctx.metrics.token("refused");
                let mut event = IdentityEvent::new("token_refused", ctx).reason(format!(
                    "{}: {}",
                    error.code.as_str(),
                    error.description
                ));
                if let Some(client) = form.get("client_id") {
                    event = event.client(client.as_str());
                }
                self.audit.event(event);
                EndpointError::OAuth(error).into_response()
            }
        }
    }

    /// Authenticates the client (RFC 6749 §2.3): a registered secret must be presented and match.
    async fn client(
        &self,
        ctx: &RequestContext,
        headers: &http::HeaderMap,
        form: &HashMap<String, String>,
    ) -> Result<OAuthClient, OAuthError> {
        if form.get("client_assertion_type").map(String::as_str) == Some(JWT_BEARER) {
            return self.client_by_assertion(ctx, form).await;
        }
        let ClientCredentials { client_id, secret } = client_auth::client_credentials(
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
            form,
        )?;
        let client = if client_id.starts_with("https://") || client_id.starts_with("http://") {
            self.document_client_at_token(&client_id, form).await?
        } else {
            self.store
                .get_client(&client_id)
                .await
                .map_err(store_unavailable)?
                .ok_or_else(|| OAuthError::new(ErrorCode::InvalidClient, "unknown client_id"))?
        };
        if client
            .metadata
            .get("token_endpoint_auth_method")
            .and_then(Value::as_str)
            == Some("private_key_jwt")
        {
            return Err(OAuthError::new(
                ErrorCode::InvalidClient,
                "this client authenticates with private_key_jwt: send client_assertion",
            ));
        }
        match (&client.secret, secret) {
            (Some(expected), Some(given)) if expected.matches(given.expose()) => Ok(client),
            (Some(_), _) => Err(OAuthError::new(
                ErrorCode::InvalidClient,
                "wrong or missing client secret",
            )),
            (None, _) => Ok(client),
        }
    }

    async fn token_grant(
        &self,
        ctx: &RequestContext,
        headers: &http::HeaderMap,
        form: &HashMap<String, String>,
    ) -> Result<Value, OAuthError> {
        let client = self.client(ctx, headers, form).await?;
        if let Some(grant @ ("authorization_code" | "refresh_token")) =
            form.get("grant_type").map(String::as_str)
        {
            crate::authorization_server::registration::check_grant_type(&client, grant)?;
        }
        match form.get("grant_type").map(String::as_str) {
            Some("authorization_code") => self.code_grant(ctx, &client, form).await,
            Some("refresh_token") => self.refresh_grant(ctx, &client, form).await,
            Some(other) => Err(OAuthError::new(
                ErrorCode::UnsupportedGrantType,
                format!("{other:?} is not supported (authorization_code, refresh_token)"),
            )),
            None => Err(OAuthError::new(
                ErrorCode::InvalidRequest,
                "grant_type is required",
            )),
        }
    }

    /// RFC 6749 §4.1.3: a code, redeemed once, for a new token family.
    async fn code_grant(
        &self,
        ctx: &RequestContext,
        client: &OAuthClient,
        form: &HashMap<String, String>,
    ) -> Result<Value, OAuthError> {
        let keys = self.store.keyring();
        let code = form
            .get("code")
            .ok_or_else(|| OAuthError::new(ErrorCode::InvalidRequest, "code is required"))?;
        // Made before the code is spent: a failing random source must not cost the
        // client its code.
        let family_id = random_token(keys, 16)?;
        let refresh = format!("{REFRESH_PREFIX}{}", random_token(keys, 32)?);
        let grant = self.redeem(ctx, client, code, &family_id).await?;
        if grant.client_id != client.client_id {
            // The code is spent under this family id: revoked, no family can ever be
            // made from it. The answer says nothing about tokens, so a failure here is
            // only the operator's to know.
            if let Err(error) = self.store.revoke_family(&family_id).await {
                tracing::error!(%error, request_id = %ctx.request_id, family = %family_id, "cannot revoke the family of a code presented by another client");
            }
            return Err(OAuthError::new(
                ErrorCode::InvalidGrant,
                "the code was issued to another client",
            ));
        }
        if form.get("redirect_uri") != Some(&grant.redirect_uri) {
            return Err(OAuthError::new(
                ErrorCode::InvalidGrant,
                "redirect_uri differs from the authorization request's",
            ));
        }
        let verifier = form
            .get("code_verifier")
            .cloned()
            .map(PkceVerifier::new)
            .ok_or_else(|| {
                OAuthError::new(ErrorCode::InvalidGrant, "code_verifier is required (PKCE)")
            })?;
        if !pkce::verify(&verifier, &grant.code_challenge) {
            return Err(OAuthError::new(
                ErrorCode::InvalidGrant,
                "code_verifier does not match the code_challenge",
            ));
        }
        if let Some(resource) = form.get("resource")
            && !oauth_server::names_server(ctx, resource, &grant.resource)
        {
            return Err(OAuthError::new(
                ErrorCode::InvalidTarget,
                "resource differs from the authorization request's",
            ));
        }
        let session = self
            .grant_session(
                &grant.session_id,
                "the sign-in this code came from has ended",
            )
            .await?;
        let family = TokenFamily {
            family_id: family_id.clone(),
            client_id: client.client_id.clone(),
            user_id: session.user_id.clone(),
            session_id: session.id.clone(),
            resource: grant.resource.clone(),
            scope: grant.scope.clone(),
            created_at: now_ms(),
            expires_at: session.expires_at,
        };
        // Minted before the family is stored: a failure leaves nothing behind.
        let tokens = self.tokens((ctx, "token_issued"), &session, &family, &refresh)?;
        self.store
            .create_family(&family, &refresh, family.expires_at)
            .await
            .map_err(store_unavailable)?;
        Ok(tokens)
    }

    /// The grant behind `code`, redeemed under `family_id`; a replayed code revokes what its
    /// first use issued (RFC 6749 §4.1.2).
    async fn redeem(
        &self,
        ctx: &RequestContext,
        client: &OAuthClient,
        code: &str,
        family_id: &str,
    ) -> Result<CodeGrant, OAuthError> {
        match self
            .store
            .redeem_code(code, family_id)
            .await
            .map_err(store_unavailable)?
        {
            Redemption::Redeemed(grant) => Ok(grant),
            Redemption::Replayed { family_id } => {
                // RFC 6749 §4.1.2: revoke what the first use issued. The answer is
                // invalid_grant either way (the code is spent; no retry can redeem it),
                // but it says the tokens were revoked only when the store recorded it:
                // if it did not, this replica still refuses them (the cache), other
                // replicas and the refresh token do not, and the operator must know.
                let mut revoked = true;
                if let Some(family) = family_id {
                    if let Err(error) = self.store.revoke_family(&family).await {
                        tracing::error!(%error, request_id = %ctx.request_id, client = %client.client_id, family = %family, "authorization code replayed, and its token family could NOT be revoked in the store");
                        revoked = false;
                    }
                    self.revocations.insert(Revocation::Family(family));
                }
                if !revoked {
                    return Err(OAuthError::new(
                        ErrorCode::InvalidGrant,
                        "the code was already used",
                    ));
                }
                tracing::warn!(request_id = %ctx.request_id, client = %client.client_id, "authorization code replayed: its tokens are revoked");
                self.audit.event(
                    IdentityEvent::new("grant_revoked", ctx)
                        .client(client.client_id.as_str())
                        .reason("authorization code replayed"),
                );
                Err(OAuthError::new(
                    ErrorCode::InvalidGrant,
                    "the code was already used; the tokens it gave were revoked",
                ))
            }
            Redemption::Invalid => Err(OAuthError::new(
                ErrorCode::InvalidGrant,
                "unknown or expired code (codes work once, for 60 s): start the authorization again",
            )),
        }
    }

    /// RFC 6749 §6: a refresh token, rotated, for new tokens of its family.
    async fn refresh_grant(
        &self,
        ctx: &RequestContext,
        client: &OAuthClient,
        form: &HashMap<String, String>,
    ) -> Result<Value, OAuthError> {
        let keys = self.store.keyring();
        let old = form.get("refresh_token").ok_or_else(|| {
            OAuthError::new(ErrorCode::InvalidRequest, "refresh_token is required")
        })?;
        if let Some(family) = self
            .store
            .find_refresh_token(old)
            .await
            .map_err(store_unavailable)?
        {
            if family.client_id != client.client_id {
                return Err(OAuthError::new(
                    ErrorCode::InvalidGrant,
                    "the refresh token belongs to another client",
                ));
            }
            if self.upstream_account_missing(ctx, &family).await {
                return Err(OAuthError::new(
                    ErrorCode::InvalidGrant,
                    "your account at this MCP server's provider is not connected: authorize again",
                ));
            }
        }
        let new = format!("{REFRESH_PREFIX}{}", random_token(keys, 32)?);
        let family = match self
            .store
            .rotate_refresh_token(
                old,
                &new,
                now_ms() + 30 * 24 * 3600 * 1000,
                self.settings.get().refresh_reuse_grace,
            )
            .await
            .map_err(store_unavailable)?
        {
            Rotation::Rotated(family) => family,
            Rotation::Concurrent => {
                return Err(OAuthError::new(
                    ErrorCode::InvalidGrant,
                    "this refresh token was just used by a concurrent request: use the tokens that request got",
                ));
            }
            Rotation::Reused { family_id } => {
                self.revocations.insert(Revocation::Family(family_id));
                tracing::warn!(request_id = %ctx.request_id, client = %client.client_id, "refresh token reuse: the token family is revoked");
                self.audit.event(
                    IdentityEvent::new("grant_revoked", ctx)
                        .client(client.client_id.as_str())
                        .reason(
                            "refresh token reuse: every token of this authorization is revoked",
                        ),
                );
                return Err(OAuthError::new(
                    ErrorCode::InvalidGrant,
                    "the refresh token was already used; all tokens from this authorization are revoked",
                ));
            }
            Rotation::Invalid => {
                return Err(OAuthError::new(
                    ErrorCode::InvalidGrant,
                    "unknown, expired or revoked refresh token: authorize again",
                ));
            }
        };
        if family.client_id != client.client_id {
            return Err(OAuthError::new(
                ErrorCode::InvalidGrant,
                "the refresh token belongs to another client",
            ));
        }
        let session = self
            .grant_session(
                &family.session_id,
                "the sign-in behind this token has ended; authorize again",
            )
            .await?;
        self.tokens((ctx, "token_refreshed"), &session, &family, &new)
    }

    /// Whether the family's server needs the user's upstream account (TI) they no longer (or
    /// not yet) have: a new TE would only get 401 again, so the client must run the
    /// authorization, which takes the user through the provider.
    async fn upstream_account_missing(&self, ctx: &RequestContext, family: &TokenFamily) -> bool {
        let Some(route) = oauth_server::route_for_resource(ctx, &family.resource) else {
            return false;
        };
        let origin = oauth_server::origin_of(&family.resource).unwrap_or_else(|| ctx.origin());
        self.broker.upstream_oauth(&route, &origin).await.is_some()
            && !matches!(
                self.store
                    .get_upstream_token(
                        &family.user_id,
                        &crate::broker::upstream::route_key(&route)
                    )
                    .await,
                Ok(Some(_))
            )
    }

    /// The session a grant rests on; `invalid_grant` saying `ended` when it is gone.
    async fn grant_session(
        &self,
        session_id: &str,
        ended: &str,
    ) -> Result<postern_store::Session, OAuthError> {
        self.store
            .get_session(session_id)
            .await
            .map_err(store_unavailable)?
            .ok_or_else(|| OAuthError::new(ErrorCode::InvalidGrant, ended))
    }

    fn tokens(
        &self,
        (ctx, event): (&RequestContext, &'static str),
        session: &postern_store::Session,
        family: &TokenFamily,
        refresh: &str,
    ) -> Result<Value, OAuthError> {
        let ttl = self.settings.get().access_token_ttl;
        let claims = AccessClaims {
            sub: session.user_id.clone(),
            email: session.email.clone(),
            name: session.name.clone(),
            groups: session.groups.clone(),
            sid: session.id.clone(),
            fam: family.family_id.clone(),
            cid: family.client_id.clone(),
            aud: family.resource.clone(),
            exp: (now_ms() + ttl.as_millis() as i64).min(session.expires_at),
            clm: session.claims.clone(),
        };
        let access =
            oauth_server::mint_access_token(self.store.keyring(), &claims).map_err(|error| {
                tracing::error!(%error, "cannot seal an access token");
                OAuthError::new(
                    ErrorCode::TemporarilyUnavailable,
                    "the gateway cannot issue a token now; try again",
                )
            })?;
        ctx.metrics.token(if event == "token_issued" {
            "issued"
        } else {
            "refreshed"
        });
        self.audit.event(
            IdentityEvent::new(event, ctx)
                .user(&session.email)
                .client(family.client_id.as_str())
                .reason(format!("resource={}", family.resource)),
        );
        Ok(oauth_server::token_response(
            &access,
            ttl,
            refresh,
            family.scope.as_deref(),
        ))
    }
}

/// RFC 7523 client assertions.
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

impl AuthorizationServer {
    /// `private_key_jwt` (RFC 7523 §2.2): a JWT signed with a key from the client's JWKS, `iss`
    /// and `sub` the client id, `aud` this token endpoint (or the issuer), short-lived, its `jti`
    /// never seen before.
    async fn client_by_assertion(
        &self,
        ctx: &RequestContext,
        form: &HashMap<String, String>,
    ) -> Result<OAuthClient, OAuthError> {
        let bad = |m: String| OAuthError::new(ErrorCode::InvalidClient, m);
        let assertion = form
            .get("client_assertion")
            .ok_or_else(|| bad("client_assertion is missing".into()))?;
        let unverified: Value = jsonwebtoken::dangerous::insecure_decode_claims(assertion)
            .map_err(|e| bad(format!("client_assertion is not a JWT: {e}")))?;
        let client_id = form
            .get("client_id")
            .cloned()
            .or_else(|| {
                unverified
                    .get("iss")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .ok_or_else(|| bad("client_assertion has no iss".into()))?;
        let client = if client_id.starts_with("https://") || client_id.starts_with("http://") {
            self.document_client_at_token(&client_id, form).await?
        } else {
            self.store
                .get_client(&client_id)
                .await
                .map_err(store_unavailable)?
                .ok_or_else(|| bad("unknown client_id".into()))?
        };
        if client
            .metadata
            .get("token_endpoint_auth_method")
            .and_then(Value::as_str)
            != Some("private_key_jwt")
        {
            return Err(bad(
                "this client is not registered for private_key_jwt".into()
            ));
        }
        let claims = self
            .verified_assertion(ctx, assertion, &client_id, &client)
            .await?;
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
        if exp * 1000 > now_ms() + 10 * 60 * 1000 {
            return Err(bad(
                "client_assertion lives too long (at most 10 minutes)".into()
            ));
        }
        let jti = claims
            .get("jti")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("client_assertion has no jti".into()))?;
        // Recorded in the store, so a replay is caught by whichever replica it reaches.
        let first_use = self
            .store
            .use_once(&format!("client_assertion|{client_id}|{jti}"), exp * 1000)
            .await
            .map_err(store_unavailable)?;
        if !first_use {
            return Err(bad("client_assertion was already used (jti replay)".into()));
        }
        Ok(client)
    }

    /// The claims of a client assertion whose signature, issuer, subject, audience and expiry
    /// check out against the client's keys (its inline `jwks`, or its `jwks_uri`).
    async fn verified_assertion(
        &self,
        ctx: &RequestContext,
        assertion: &str,
        client_id: &str,
        client: &OAuthClient,
    ) -> Result<Value, OAuthError> {
        let bad = |m: String| OAuthError::new(ErrorCode::InvalidClient, m);
        let keys: jsonwebtoken::jwk::JwkSet = match (
            client.metadata.get("jwks"),
            client.metadata.get("jwks_uri").and_then(Value::as_str),
        ) {
            (Some(inline), _) => serde_json::from_value(inline.clone())
                .map_err(|e| bad(format!("the client's jwks is not a JWKS: {e}")))?,
            (None, Some(uri)) => self.cimd.jwks(uri).await?,
            (None, None) => return Err(bad("the client has no jwks or jwks_uri".into())),
        };
        let header = jsonwebtoken::decode_header(assertion)
            .map_err(|e| bad(format!("client_assertion: {e}")))?;
        use jsonwebtoken::Algorithm::*;
        if !matches!(
            header.alg,
            RS256 | RS384 | RS512 | PS256 | ES256 | ES384 | EdDSA
        ) {
            return Err(bad(format!(
                "client_assertion algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let jwk = match &header.kid {
            Some(kid) => keys.find(kid),
            None if keys.keys.len() == 1 => keys.keys.first(),
            None => None,
        }
        .ok_or_else(|| {
            bad("client_assertion is signed with a key not in the client's JWKS".into())
        })?;
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk)
            .map_err(|e| bad(format!("unusable client key: {e}")))?;
        let token_endpoint = format!("{}/.pomerium/mcp/token", ctx.origin());
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.set_issuer(&[client_id]);
        validation.sub = Some(client_id.to_owned());
        validation.set_audience(&[
            token_endpoint.as_str(),
            ctx.origin().as_str(),
            format!("{}/", ctx.origin()).as_str(),
        ]);
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        validation.leeway = 30;
        jsonwebtoken::decode::<Value>(assertion, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| bad(format!("client_assertion refused: {e}")))
    }
}
