//! `/token`: client authentication (secret, none, or `private_key_jwt`), the code and refresh
//! grants, and the tokens they issue.

use super::*;
use crate::enforcement::audit::IdentityEvent;
use crate::sign_in::oidc::Vouch;
use crate::sign_in::provider::IdentityProvider;

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
                "code_verifier does not match the code_challenge; the code is spent: start the authorization again",
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
        // The grant is its own thing from here: it outlives the browser session (sign-out,
        // `cookie_expire`) and lives by the refresh-token policy.
        let now = now_ms();
        let family = TokenFamily {
            family_id: family_id.clone(),
            client_id: client.client_id.clone(),
            user_id: session.user_id.clone(),
            session_id: session.id.clone(),
            resource: grant.resource.clone(),
            scope: grant.scope.clone(),
            created_at: now,
            expires_at: now + self.settings.get().refresh_max_ttl.as_millis() as i64,
            identity: Some(self.grant_identity(&session).await?),
            client_name: client
                .metadata
                .get("client_name")
                .and_then(Value::as_str)
                .map(str::to_owned),
            redirect_uri: Some(grant.redirect_uri.clone()),
        };
        // Minted before the family is stored: a failure leaves nothing behind.
        let tokens = self.tokens((ctx, "token_issued"), &family, &refresh)?;
        self.store
            .create_family(&family, &refresh, self.refresh_token_expiry())
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
                // but it says the tokens were revoked only when the store revoked some:
                // if it failed, this replica still refuses them (the cache), other
                // replicas and the refresh token do not, and the operator must know; if
                // the first use issued none (it failed, e.g. its PKCE check), there were
                // none to revoke.
                let mut revoked = false;
                if let Some(family) = family_id {
                    match self.store.revoke_family(&family).await {
                        Ok(found) => revoked = found,
                        Err(error) => {
                            tracing::error!(%error, request_id = %ctx.request_id, client = %client.client_id, family = %family, "authorization code replayed, and its token family could NOT be revoked in the store");
                        }
                    }
                    self.revocations.insert(Revocation::Family(family));
                }
                if !revoked {
                    return Err(OAuthError::new(
                        ErrorCode::InvalidGrant,
                        "the code was already used (codes work once): start the authorization again",
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
            self.grant_still_holds(ctx, family).await?;
        }
        let new = format!("{REFRESH_PREFIX}{}", random_token(keys, 32)?);
        let family = match self
            .store
            .rotate_refresh_token(
                old,
                &new,
                self.refresh_token_expiry(),
                self.settings.get().refresh_reuse_grace,
            )
            .await
            .map_err(store_unavailable)?
        {
            Rotation::Rotated(family) => *family,
            Rotation::Concurrent => {
                return Err(OAuthError::new(
                    ErrorCode::InvalidGrant,
                    "this refresh token was just used by a concurrent request: use the tokens that request got (if its answer was lost, authorize again)",
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
        // Only the rotation's winner asks the identity provider, so concurrent refreshes never
        // present the provider's (rotating) refresh token twice.
        let family = match self.provider_still_vouches(ctx, &family).await {
            Ok(None) => family,
            Ok(Some(rotated)) => {
                let mut family = family;
                if let Some(identity) = family.identity.as_mut() {
                    identity.idp_refresh_token = Some(rotated);
                }
                self.store
                    .update_family(&family)
                    .await
                    .map_err(store_unavailable)?;
                family
            }
            Err(error) => {
                if error.code == ErrorCode::TemporarilyUnavailable {
                    // Nothing was decided: the client keeps its refresh token and tries again.
                    if let Err(undo) = self.store.undo_rotation(old, &new).await {
                        tracing::error!(error = %undo, request_id = %ctx.request_id, "cannot undo a refresh-token rotation");
                    }
                }
                return Err(error);
            }
        };
        self.tokens((ctx, "token_refreshed"), &family, &new)
    }

    /// The identity a new grant carries: the session's, with the identity provider's refresh
    /// token of the sign-in (sealed) when there is one.
    async fn grant_identity(
        &self,
        session: &postern_store::Session,
    ) -> Result<GrantIdentity, OAuthError> {
        let mut identity = GrantIdentity::of(session);
        if let Some(token) = self
            .store
            .idp_refresh_token(&session.id)
            .await
            .map_err(store_unavailable)?
        {
            identity.idp_refresh_token = Some(
                self.store
                    .keyring()
                    .seal(IDP_REFRESH_CONTEXT, token.expose().as_bytes())
                    .map_err(store_unavailable)?,
            );
        }
        Ok(identity)
    }

    /// When a refresh token issued now lapses unused (`mcp_refresh_token_idle_ttl`; the store
    /// caps it at the grant's end).
    fn refresh_token_expiry(&self) -> i64 {
        now_ms() + self.settings.get().refresh_idle_ttl.as_millis() as i64
    }

    /// Checks, before a refresh, that the grant still stands: the user is still who may use the
    /// server (still in `users_file`, still allowed by the route's policy) and the server still
    /// has what it needs. A user who no longer may is refused and the grant revoked, so its TEs
    /// stop too. A grant issued before grants outlived sessions is given its identity from its
    /// session here (and the grant lifetime), or refused when that session is gone.
    async fn grant_still_holds(
        &self,
        ctx: &RequestContext,
        mut family: TokenFamily,
    ) -> Result<(), OAuthError> {
        let mut changed = false;
        if family.identity.is_none() {
            let session = self
                .grant_session(
                    &family.session_id,
                    "the sign-in behind this token has ended; authorize again",
                )
                .await?;
            family.identity = Some(self.grant_identity(&session).await?);
            family.expires_at =
                family.created_at + self.settings.get().refresh_max_ttl.as_millis() as i64;
            changed = true;
        }
        let identity = family.identity.clone().unwrap_or_default();
        if identity.idp == "local" {
            let users = self.users.load();
            let Some(user) = users.find(&identity.email) else {
                return Err(self
                    .end_grant(
                        ctx,
                        &family,
                        &format!(
                            "{} is no longer a user of this gateway (not in users_file): the authorization is revoked",
                            identity.email
                        ),
                    )
                    .await);
            };
            // Name and groups follow the users file (the policy sees them as they are now).
            let current = GrantIdentity {
                email: identity.email.clone(),
                name: user.name.clone(),
                groups: user.groups.clone(),
                claims: user.claims.clone(),
                idp: identity.idp.clone(),
                idp_refresh_token: identity.idp_refresh_token.clone(),
            };
            if current != identity {
                family.identity = Some(current);
                changed = true;
            }
        }
        let Some(route) = oauth_server::route_for_resource(ctx, &family.resource) else {
            return Err(self
                .end_grant(
                    ctx,
                    &family,
                    &format!(
                        "{} is no longer an MCP server of this gateway: the authorization is revoked",
                        family.resource
                    ),
                )
                .await);
        };
        let user = family_user(&family);
        if !crate::broker::routes_api::may_use(
            &route,
            &user,
            ctx.client_addr.ip(),
            ctx.client_certificate.as_deref(),
        ) {
            return Err(self
                .end_grant(
                    ctx,
                    &family,
                    &format!(
                        "{} is no longer allowed to use {} (the route's policy): the authorization is revoked; ask the gateway's operator for access",
                        user.email, family.resource
                    ),
                )
                .await);
        }
        if self.upstream_account_missing(ctx, &family).await {
            return Err(OAuthError::new(
                ErrorCode::InvalidGrant,
                "your account at this MCP server's provider is not connected: authorize again",
            ));
        }
        if changed
            && !self
                .store
                .update_family(&family)
                .await
                .map_err(store_unavailable)?
        {
            return Err(OAuthError::new(
                ErrorCode::InvalidGrant,
                "unknown, expired or revoked refresh token: authorize again",
            ));
        }
        Ok(())
    }

    /// For a user signed in with OpenID Connect whose provider gave a refresh token: asks the
    /// provider (a refresh) whether it still vouches for them. A refusal ends the grant; an
    /// unreachable provider refuses this refresh with `temporarily_unavailable` (the client
    /// keeps its refresh token and tries again). The provider's rotated refresh token, sealed,
    /// when it rotated it.
    async fn provider_still_vouches(
        &self,
        ctx: &RequestContext,
        family: &TokenFamily,
    ) -> Result<Option<String>, OAuthError> {
        let Some(identity) = &family.identity else {
            return Ok(None);
        };
        let (Some(sealed), Some(IdentityProvider::Oidc(oidc))) =
            (identity.idp_refresh_token.as_deref(), self.idp.as_deref())
        else {
            return Ok(None);
        };
        let keys = self.store.keyring();
        let token = keys
            .open(IDP_REFRESH_CONTEXT, sealed)
            .ok()
            .and_then(|t| String::from_utf8(t).ok());
        let Some(token) = token else {
            return Err(self
                .end_grant(
                    ctx,
                    family,
                    "the sign-in behind this token cannot be checked with the identity provider any more: authorize again",
                )
                .await);
        };
        match oidc.vouches(&token).await {
            Ok(Vouch::Yes(None)) => Ok(None),
            Ok(Vouch::Yes(Some(rotated))) => keys
                .seal(IDP_REFRESH_CONTEXT, rotated.as_bytes())
                .map(Some)
                .map_err(|error| {
                    tracing::error!(%error, "cannot seal the identity provider's refresh token");
                    OAuthError::new(
                        ErrorCode::TemporarilyUnavailable,
                        "the gateway cannot keep a token now; try again",
                    )
                }),
            Ok(Vouch::No(_)) => Err(self
                .end_grant(
                    ctx,
                    family,
                    &format!(
                        "the identity provider no longer vouches for {} (account disabled or removed, or its sign-in revoked): the authorization is revoked",
                        identity.email
                    ),
                )
                .await),
            Err(error) => {
                tracing::warn!(%error, request_id = %ctx.request_id, family = %family.family_id, "cannot re-check a grant's user with the identity provider");
                Err(OAuthError::new(
                    ErrorCode::TemporarilyUnavailable,
                    "the identity provider cannot be reached to confirm your account; try again later",
                ))
            }
        }
    }

    /// Revokes a grant whose user no longer may have it; the `invalid_grant` that says why.
    async fn end_grant(&self, ctx: &RequestContext, family: &TokenFamily, why: &str) -> OAuthError {
        self.revocations
            .insert(Revocation::Family(family.family_id.clone()));
        if let Err(error) = self.store.revoke_family(&family.family_id).await {
            tracing::error!(%error, request_id = %ctx.request_id, family = %family.family_id, "cannot revoke a grant whose user no longer may have it");
            return store_unavailable(error);
        }
        tracing::info!(target: "postern::audit", event = "grant_revoked", request_id = %ctx.request_id, user = %family.user_id, client = %family.client_id, family = %family.family_id, reason = why, "client grant ended at refresh");
        OAuthError::new(ErrorCode::InvalidGrant, why)
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

    /// A TE for the grant's user (and the refresh token), bound to the grant: its `sid` is the
    /// grant, not the browser session, so signing out of the browser leaves it working and
    /// revoking the grant stops it. `event`: the audit event (`token_issued`, `token_refreshed`).
    fn tokens(
        &self,
        (ctx, event): (&RequestContext, &'static str),
        family: &TokenFamily,
        refresh: &str,
    ) -> Result<Value, OAuthError> {
        let ttl = self.settings.get().access_token_ttl;
        let Some(identity) = &family.identity else {
            return Err(OAuthError::new(
                ErrorCode::InvalidGrant,
                "the sign-in behind this token has ended; authorize again",
            ));
        };
        let claims = AccessClaims {
            sub: family.user_id.clone(),
            email: identity.email.clone(),
            name: identity.name.clone(),
            groups: identity.groups.clone(),
            sid: family.family_id.clone(),
            fam: family.family_id.clone(),
            cid: family.client_id.clone(),
            aud: family.resource.clone(),
            exp: (now_ms() + ttl.as_millis() as i64).min(family.expires_at),
            clm: identity.claims.clone(),
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
                .user(&identity.email)
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

/// The sealing context of the identity provider's refresh token kept with a grant.
const IDP_REFRESH_CONTEXT: &str = "idp-refresh-grant";

/// The user of a grant as the policy sees them.
fn family_user(family: &TokenFamily) -> postern_policy::User {
    let identity = family.identity.clone().unwrap_or_default();
    postern_policy::User {
        id: family.user_id.clone(),
        email: identity.email,
        groups: identity.groups,
        claims: identity.claims,
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
