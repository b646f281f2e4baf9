//! The OAuth 2.1 authorization server for MCP clients: metadata, dynamic registration
//! (`registration`), `/authorize` with sign-in and consent, `/token` (codes, refresh tokens,
//! client authentication incl. `private_key_jwt`), `/revoke`; client ID metadata documents in
//! `cimd`, the TE format in `oauth_server`.

pub(crate) mod cimd;
pub mod registration;

use std::collections::HashMap;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use postern_gateway::body::Body;
use postern_gateway::hooks::RequestContext;
use postern_gateway::routes::Route;
use postern_oauth::authorize::{self, AuthorizeError, ClientId, VerifiedRedirect};
use postern_oauth::client_auth::{self, ClientCredentials};
use postern_oauth::pkce::PkceVerifier;
use postern_oauth::{ErrorCode, OAuthError, Secret, metadata, pkce};
use postern_store::{
    CodeGrant, Keyring, OAuthClient, Redemption, Revocation, Rotation, Store, TokenFamily, now_ms,
};
use serde_json::{Value, json};

use crate::broker::UpstreamBroker;
use crate::oauth_server::{self, AccessClaims, CODE_PREFIX, REFRESH_PREFIX, RevocationCache};
use crate::settings::AccessSettings;
use crate::sign_in::session;
use crate::web::pages;
use crate::web::reply::{encode, html, json_response, redirect_to};
use crate::web::untrusted::Untrusted;

/// How long a code is valid.
const CODE_TTL_MS: i64 = 60_000;
/// How long a consent is remembered.
const CONSENT_TTL_MS: i64 = 365 * 24 * 3600 * 1000;

/// The authorization server. Owns the client registrations' limits and the client metadata
/// document cache; asks the broker whether a route needs the user's upstream account.
pub struct AuthorizationServer {
    pub(crate) store: Store,
    pub(crate) settings: AccessSettings,
    pub(crate) revocations: Arc<RevocationCache>,
    pub(crate) cimd: crate::authorization_server::cimd::Cimd,
    pub(crate) registration_limiter: crate::web::limiter::AddressWindows,
    pub(crate) broker: Arc<UpstreamBroker>,
}

impl AuthorizationServer {
    /// The authorization server over `store`.
    pub fn new(
        store: Store,
        settings: AccessSettings,
        revocations: Arc<RevocationCache>,
        broker: Arc<UpstreamBroker>,
    ) -> Self {
        Self {
            cimd: crate::authorization_server::cimd::Cimd::new(
                settings.allowed_client_id_domains.clone(),
            ),
            registration_limiter: Default::default(),
            store,
            settings,
            revocations,
            broker,
        }
    }

    /// RFC 8414 authorization server metadata (also served as OpenID configuration).
    pub(crate) fn metadata(&self, ctx: &RequestContext) -> Response<Body> {
        json_response(
            StatusCode::OK,
            &metadata::authorization_server(
                &ctx.origin(),
                self.settings.dynamic_registration,
                &["mcp"],
            ),
        )
    }

    pub(crate) fn protected_resource(&self, ctx: &RequestContext, suffix: &str) -> Response<Body> {
        let path = if suffix.is_empty() { "/" } else { suffix };
        let route = ctx
            .runtime
            .routes
            .find(&ctx.host, ctx.port, path)
            .filter(|r| r.is_mcp_server());
        let Some(route) = route else {
            return json_response(
                StatusCode::NOT_FOUND,
                &json!({"error": "not_found", "error_description": format!("no MCP server at {path} on this host")}),
            );
        };
        let resource = oauth_server::route_resource(&route, &ctx.origin());
        let mut response = json_response(
            StatusCode::OK,
            &metadata::protected_resource(
                &resource,
                &ctx.origin(),
                route.config.name.as_deref(),
                &["mcp"],
            ),
        );
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300"),
        );
        response
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
        if !self.settings.dynamic_registration {
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
            tracing::error!(%error, "cannot store a client registration");
            return Err(OAuthError::new(ErrorCode::TemporarilyUnavailable, "try again").into());
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

    pub(crate) async fn authorize_endpoint(
        &self,
        ctx: &RequestContext,
        request: Request<Body>,
    ) -> Response<Body> {
        let issuer = ctx.origin();
        // Parameters come in the query (GET) or, from the consent form, the body (POST).
        let headers = request.headers().clone();
        let (query, decision) = if request.method() == Method::POST {
            let Some(body) = read_body(request).await else {
                return html(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    pages::message("Authorization failed", "The form was too large."),
                );
            };
            let mut form = oauth_server::form(&body);
            let decision = form.remove("decision");
            (form, decision)
        } else {
            (
                oauth_server::form(request.uri().query().unwrap_or("").as_bytes()),
                None,
            )
        };
        self.authorize_with(ctx, &issuer, query, decision, &headers)
            .await
    }

    /// An authorization request (first or resumed after sign-in or the upstream provider), in
    /// order: the client and its redirect URI (errors before are pages), the request and its
    /// target route (errors after go back to the client), the signed-in user and the route's
    /// policy, consent, then the code.
    pub(crate) async fn authorize_with(
        &self,
        ctx: &RequestContext,
        issuer: &str,
        query: HashMap<String, String>,
        decision: Option<String>,
        headers: &http::HeaderMap,
    ) -> Response<Body> {
        let (client, client_id, redirect_uri) = match self.authorizing_client(&query, headers).await
        {
            Ok(found) => found,
            Err(response) => return response,
        };
        let back = ToClient {
            redirect_uri: &redirect_uri,
            issuer,
        };
        let request = match authorize::parse(&query, &redirect_uri) {
            Ok(request) => request,
            Err(AuthorizeError::Redirect { error, state, .. }) => {
                return back.error(error, state.as_deref());
            }
            Err(AuthorizeError::Page(message)) => return page_error(&message),
        };
        let state = request.state.as_deref();
        let (route, resource) = match target_route(ctx, issuer, request.resource.as_deref()) {
            Ok(found) => found,
            Err(error) => return back.error(error, state),
        };

        // Who is asking: a browser session (sign in first if needed).
        let Some(session) = session::current(headers, &self.settings.cookie, &self.store).await
        else {
            return sign_in_first(&query);
        };
        if decision.is_some()
            && let Some(response) = self.consent_refusal(ctx, headers, &query, &session)
        {
            return response;
        }
        let user = crate::sign_in::session::user_of(&session);
        if !crate::broker::routes_api::may_use(&route, &user) {
            return back.error(
                OAuthError::new(
                    ErrorCode::AccessDenied,
                    "you are not allowed to use this MCP server",
                ),
                state,
            );
        }

        // Consent, once per user, client and server.
        let asked = ConsentAsked {
            client: &client,
            client_id: &client_id,
            redirect_uri: &redirect_uri,
            route: &route,
            resource: &resource,
        };
        if let Some(response) = self
            .consent(ctx, decision.as_deref(), &asked, &session, &query, state)
            .await
        {
            return response;
        }

        self.issue_or_get_upstream_account(ctx, issuer, &asked, &request, &session, &query)
            .await
    }

    /// The last step of an authorization the user may make and consented to: when the route
    /// needs the user's upstream account (TI) and it is not connected yet, the browser goes
    /// through the provider first and comes back here; otherwise the code goes to the client.
    async fn issue_or_get_upstream_account(
        &self,
        ctx: &RequestContext,
        issuer: &str,
        asked: &ConsentAsked<'_>,
        request: &authorize::AuthorizationRequest,
        session: &postern_store::Session,
        query: &HashMap<String, String>,
    ) -> Response<Body> {
        if self.needs_upstream_account(ctx, asked.route, session).await {
            let mut resume_query = query.clone();
            resume_query.remove("session_binding");
            let resume = crate::web::round_trip::Resume::Authorize {
                query: resume_query,
                origin: ctx.origin(),
            };
            return self
                .broker
                .start_upstream(ctx, asked.route, session, resume)
                .await;
        }
        let grant = CodeGrant {
            client_id: asked.client_id.as_str().to_owned(),
            redirect_uri: asked.redirect_uri.as_str().to_owned(),
            code_challenge: request.code_challenge.clone(),
            resource: asked.resource.to_owned(),
            scope: request.scope.clone(),
            user_id: session.user_id.clone(),
            session_id: session.id.clone(),
            expires_at: now_ms() + CODE_TTL_MS,
        };
        let state = request.state.as_deref();
        match self.issue_code(ctx, asked.client, &grant, session).await {
            Ok(code) => redirect_to(&authorize::code_redirect(
                asked.redirect_uri,
                &code,
                state,
                issuer,
            )),
            Err(error) => ToClient {
                redirect_uri: asked.redirect_uri,
                issuer,
            }
            .error(error, state),
        }
    }

    /// The client of an authorization request and its redirect URI, checked against its
    /// registration (or its metadata document, fetched for signed-in users only).
    async fn authorizing_client(
        &self,
        query: &HashMap<String, String>,
        headers: &http::HeaderMap,
    ) -> Result<(OAuthClient, ClientId, VerifiedRedirect), Response<Body>> {
        let (client_id, redirect_uri) = match authorize::client_and_redirect(query) {
            Ok(pair) => pair,
            Err(AuthorizeError::Page(message)) => return Err(page_error(&message)),
            Err(_) => return Err(page_error("invalid request")),
        };
        let document_client = client_id.is_metadata_document();
        // A client ID metadata document is fetched for signed-in users only: an anonymous
        // request must not make the gateway fetch URLs or fill its cache.
        if document_client
            && session::current(headers, &self.settings.cookie, &self.store)
                .await
                .is_none()
        {
            return Err(sign_in_first(query));
        }
        let client = if document_client {
            self.cimd
                .client(client_id.as_str())
                .await
                .map_err(|error| {
                    page_error(&format!(
                        "This MCP client can't be accepted: {}.",
                        error.description
                    ))
                })?
        } else {
            match self.store.get_client(client_id.as_str()).await {
                Ok(Some(client)) => client,
                Ok(None) => {
                    return Err(page_error(
                        "Unknown client: the MCP client is not registered here (it may have been registered with another gateway or expired). Remove the server in the client and add it again.",
                    ));
                }
                Err(_) => return Err(page_error("The gateway's store is unavailable; try again.")),
            }
        };
        let registered: Vec<&str> = client
            .metadata
            .get("redirect_uris")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let Some(redirect_uri) = VerifiedRedirect::check(registered, &redirect_uri) else {
            return Err(page_error(
                "The redirect URI is not registered for this client, so the authorization can't be returned to it.",
            ));
        };
        Ok((client, client_id, redirect_uri))
    }

    /// Why a consent post is refused, unless it was a click on the consent form shown to this
    /// session: the form carries a token bound to the session, and a script on this origin (any
    /// path-routed app shares it) could read the form and submit it, but not with user
    /// activation.
    fn consent_refusal(
        &self,
        ctx: &RequestContext,
        headers: &http::HeaderMap,
        query: &HashMap<String, String>,
        session: &postern_store::Session,
    ) -> Option<Response<Body>> {
        if let Err(why) = crate::web::forms::user_activated_post(headers, &ctx.origin()) {
            tracing::warn!(request_id = %ctx.request_id, user = %session.email, why, "consent not given by a click refused");
            return Some(page_error(&format!(
                "The consent was refused because {why}. Approve it by clicking Allow on the consent page."
            )));
        }
        let bound = query
            .get("session_binding")
            .and_then(|b| self.store.keyring().open("consent", b).ok())
            .is_some_and(|id| id == session.id.as_bytes());
        if !bound {
            return Some(page_error(
                "The consent form is not valid for your session; start again from your MCP client.",
            ));
        }
        None
    }

    /// Consent for `asked`: remembered when the user allows, the client told when they deny,
    /// the page when they were not asked yet; `None` when the authorization goes on.
    async fn consent(
        &self,
        ctx: &RequestContext,
        decision: Option<&str>,
        asked: &ConsentAsked<'_>,
        session: &postern_store::Session,
        query: &HashMap<String, String>,
        state: Option<&str>,
    ) -> Option<Response<Body>> {
        match decision {
            Some("allow") => {
                // The user just approved: this authorization goes on. A consent not remembered
                // only means the user is asked again next time.
                if let Err(error) = self
                    .store
                    .put_consent(
                        &session.user_id,
                        asked.client_id.as_str(),
                        asked.resource,
                        "mcp",
                        now_ms() + CONSENT_TTL_MS,
                    )
                    .await
                {
                    tracing::error!(%error, request_id = %ctx.request_id, user = %session.email, client = %asked.client_id, "cannot remember a consent; the user will be asked again");
                }
                None
            }
            Some(_) => {
                let back = ToClient {
                    redirect_uri: asked.redirect_uri,
                    issuer: &ctx.origin(),
                };
                Some(back.error(
                    OAuthError::new(ErrorCode::AccessDenied, "you declined the authorization"),
                    state,
                ))
            }
            None => {
                let consented = matches!(
                    self.store
                        .get_consent(&session.user_id, asked.client_id.as_str(), asked.resource)
                        .await,
                    Ok(Some(_))
                );
                (!consented).then(|| self.consent_page(ctx, asked, session, query))
            }
        }
    }

    /// The consent page for `asked`, its form bound to `session`.
    fn consent_page(
        &self,
        ctx: &RequestContext,
        asked: &ConsentAsked<'_>,
        session: &postern_store::Session,
        query: &HashMap<String, String>,
    ) -> Response<Body> {
        let binding = match self.store.keyring().seal("consent", session.id.as_bytes()) {
            Ok(binding) => binding,
            Err(error) => {
                tracing::error!(%error, request_id = %ctx.request_id, "cannot seal the consent form's session binding");
                return html(
                    StatusCode::SERVICE_UNAVAILABLE,
                    pages::message(
                        "Authorization failed",
                        "The gateway cannot prepare the consent form; try again.",
                    ),
                );
            }
        };
        let client_name = asked
            .client
            .metadata
            .get("client_name")
            .and_then(Value::as_str)
            .unwrap_or(asked.client_id.as_str());
        let server = asked
            .route
            .config
            .name
            .clone()
            .unwrap_or_else(|| asked.resource.to_owned());
        // Who the client really is: the host its codes go to, and whether anyone vouches for
        // its name (a metadata document on an allowed domain) or it chose the name itself
        // (dynamic registration).
        let verified = asked.client_id.as_str().starts_with("https://");
        let destination = url::Url::parse(asked.redirect_uri.as_str())
            .ok()
            .map(|u| crate::web::safe_http::host_of(&u))
            .unwrap_or_default();
        let identity = pages::ClientIdentity {
            name: client_name,
            redirect_host: &destination,
            verified_by: verified
                .then(|| url::Url::parse(asked.client_id.as_str()).ok())
                .flatten()
                .map(|u| crate::web::safe_http::host_of(&u)),
        };
        html(
            StatusCode::OK,
            pages::consent(
                &identity,
                &server,
                asked.resource,
                &session.email,
                query,
                &binding,
            ),
        )
    }

    /// Whether `route` needs the user's upstream account (TI) and the user has none yet.
    async fn needs_upstream_account(
        &self,
        ctx: &RequestContext,
        route: &Route,
        session: &postern_store::Session,
    ) -> bool {
        if self
            .broker
            .upstream_oauth(route, &ctx.origin())
            .await
            .is_none()
        {
            return false;
        }
        let key = crate::broker::upstream::route_key(route);
        !matches!(
            self.store.get_upstream_token(&session.user_id, &key).await,
            Ok(Some(_))
        )
    }

    /// Stores a new authorization code for `grant`; the code.
    async fn issue_code(
        &self,
        ctx: &RequestContext,
        client: &OAuthClient,
        grant: &CodeGrant,
        session: &postern_store::Session,
    ) -> Result<String, OAuthError> {
        let code = format!("{CODE_PREFIX}{}", random_token(self.store.keyring(), 32)?);
        self.store
            .put_code(&code, grant)
            .await
            .map_err(store_unavailable)?;
        self.renew_registration(client).await;
        tracing::info!(target: "postern::audit", event = "authorized", client = %grant.client_id, user = %session.email, resource = %grant.resource, request_id = %ctx.request_id, "code issued");
        Ok(code)
    }

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
            Err(error) => EndpointError::OAuth(error).into_response(),
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
            && !metadata::same_resource(resource, &grant.resource)
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
        let tokens = self.tokens(&session, &family, &refresh)?;
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
                self.settings.refresh_reuse_grace,
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
        self.tokens(&session, &family, &new)
    }

    /// Whether the family's server needs the user's upstream account (TI) they no longer (or
    /// not yet) have: a new TE would only get 401 again, so the client must run the
    /// authorization, which takes the user through the provider.
    async fn upstream_account_missing(&self, ctx: &RequestContext, family: &TokenFamily) -> bool {
        let Some(route) = oauth_server::route_for_resource(ctx, &family.resource) else {
            return false;
        };
        self.broker
            .upstream_oauth(&route, &ctx.origin())
            .await
            .is_some()
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
        session: &postern_store::Session,
        family: &TokenFamily,
        refresh: &str,
    ) -> Result<Value, OAuthError> {
        let ttl = self.settings.access_token_ttl;
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
        Ok(oauth_server::token_response(
            &access,
            ttl,
            refresh,
            family.scope.as_deref(),
        ))
    }

    /// RFC 7009: revoking either token of a family revokes the family. 200 whether or not the
    /// token was known (§2.2); 503 `temporarily_unavailable` when the store could not look it
    /// up or record the revocation, so the client keeps the token and tries again (§2.2.1)
    /// instead of believing it is revoked.
    pub(crate) async fn revoke(&self, request: Request<Body>) -> Response<Body> {
        let Some(body) = read_body(request).await else {
            return EndpointError::TooLarge("the request is too large").into_response();
        };
        let form = oauth_server::form(&body);
        let token = form.get("token").map(String::as_str).unwrap_or_default();
        match self.revoke_token(token).await {
            Ok(()) => {
                let mut response = Response::new(postern_gateway::body::full(""));
                no_store(&mut response);
                response
            }
            Err(error) => EndpointError::OAuth(error).into_response(),
        }
    }

    async fn revoke_token(&self, token: &str) -> Result<(), OAuthError> {
        let family = if token.starts_with(REFRESH_PREFIX) {
            self.store
                .find_refresh_token(token)
                .await
                .map_err(store_unavailable)?
                .map(|f| f.family_id)
        } else if let Some(sealed) = token.strip_prefix(oauth_server::ACCESS_PREFIX) {
            self.store
                .keyring()
                .open("access-token", sealed)
                .ok()
                .and_then(|json| serde_json::from_slice::<AccessClaims>(&json).ok())
                .map(|c| c.fam)
        } else {
            None
        };
        if let Some(family) = family {
            // This replica refuses the family's tokens at once, whatever the store says.
            self.revocations.insert(Revocation::Family(family.clone()));
            self.store
                .revoke_family(&family)
                .await
                .map_err(store_unavailable)?;
        }
        Ok(())
    }
}

/// The body of a registration, token, revocation or consent request (64 KiB, 10 s).
async fn read_body(request: Request<Body>) -> Option<bytes::Bytes> {
    crate::web::forms::read_form(request).await.ok()
}

/// Why a registration, token or revocation request failed: answered in one place,
/// [`EndpointError::into_response`].
#[derive(Debug)]
pub(crate) enum EndpointError {
    /// Not a POST: 405 with `invalid_request` saying what to do.
    NotPost(&'static str),
    /// The body is over the limit: 413 with `invalid_request` saying so.
    TooLarge(&'static str),
    /// An OAuth error: the status its code has (RFC 6749 §5.2: 400, `invalid_client` 401, ...).
    OAuth(OAuthError),
}

impl From<OAuthError> for EndpointError {
    fn from(error: OAuthError) -> Self {
        Self::OAuth(error)
    }
}

impl EndpointError {
    /// The RFC 6749 §5.2 JSON error response, never cached; `WWW-Authenticate` on a 401
    /// (§5.2: the client authenticated, or should have, with HTTP Basic); `Retry-After` when
    /// the error says when to try again.
    pub(crate) fn into_response(self) -> Response<Body> {
        let (status, error) = match self {
            Self::NotPost(what) => (
                StatusCode::METHOD_NOT_ALLOWED,
                OAuthError::new(ErrorCode::InvalidRequest, what),
            ),
            Self::TooLarge(what) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                OAuthError::new(ErrorCode::InvalidRequest, what),
            ),
            Self::OAuth(error) => (
                StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_REQUEST),
                error,
            ),
        };
        let mut response = json_response(status, &error.body());
        no_store(&mut response);
        let headers = response.headers_mut();
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"postern\""),
            );
        }
        if let Some(after) = error.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs()));
        }
        response
    }
}

fn no_store(response: &mut Response<Body>) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
        .headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// An error page of `/authorize` (when the client cannot be trusted with a redirect).
fn page_error(message: &str) -> Response<Body> {
    html(
        StatusCode::BAD_REQUEST,
        pages::message("Authorization failed", message),
    )
}

/// Errors sent back to the client at its (checked) redirect URI.
struct ToClient<'a> {
    redirect_uri: &'a VerifiedRedirect,
    issuer: &'a str,
}

impl ToClient<'_> {
    fn error(&self, error: OAuthError, state: Option<&str>) -> Response<Body> {
        redirect_to(&authorize::error_redirect(
            self.redirect_uri,
            &error,
            state,
            self.issuer,
        ))
    }
}

/// What the consent page asks about.
struct ConsentAsked<'a> {
    client: &'a OAuthClient,
    client_id: &'a ClientId,
    redirect_uri: &'a VerifiedRedirect,
    route: &'a Route,
    resource: &'a str,
}

/// The MCP server route an authorization names (or this host's only one), and its resource
/// URL. A resource named on another origin would be served by this origin's route of the same
/// path: the token's audience must be what the client asked for, or nothing.
fn target_route(
    ctx: &RequestContext,
    issuer: &str,
    asked: Option<&str>,
) -> Result<(Arc<Route>, String), OAuthError> {
    let route = match asked {
        Some(resource) => oauth_server::route_for_resource(ctx, resource),
        None => oauth_server::only_mcp_route(ctx),
    };
    let Some(route) = route else {
        let what = asked.unwrap_or("(none given)");
        return Err(OAuthError::new(
            ErrorCode::InvalidTarget,
            format!(
                "resource {what} is not an MCP server on this gateway; pass the server URL as resource"
            ),
        ));
    };
    let resource = oauth_server::route_resource(&route, &ctx.origin());
    if let Some(asked) = asked
        && !postern_oauth::metadata::same_resource(asked, &resource)
    {
        return Err(OAuthError::new(
            ErrorCode::InvalidTarget,
            format!(
                "resource {asked} is not on this authorization server's origin ({issuer}); use {resource}"
            ),
        ));
    }
    Ok((route, resource))
}

/// Sends the browser to sign in, then back to this authorization request.
fn sign_in_first(query: &HashMap<String, String>) -> Response<Body> {
    let mut query = query.clone();
    query.remove("session_binding");
    let back_here = format!("/.pomerium/mcp/authorize?{}", encode_query(&query));
    redirect_to(&format!(
        "/.pomerium/sign_in?redirect_uri={}",
        encode(&back_here)
    ))
}

fn encode_query(query: &HashMap<String, String>) -> String {
    let mut pairs: Vec<_> = query.iter().collect();
    pairs.sort();
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
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

/// `n` random bytes as a token (client id, secret, code, family, refresh token): a failing
/// random source is logged and answered `temporarily_unavailable`, never an empty value.
fn random_token(keys: &Keyring, n: usize) -> Result<String, OAuthError> {
    keys.random_token(n).map_err(|error| {
        tracing::error!(%error, "no randomness at the authorization server");
        OAuthError::new(
            ErrorCode::TemporarilyUnavailable,
            "the gateway cannot make a random value now; try again",
        )
    })
}

/// A store failure at the token or authorization endpoint: logged for the operator, and a
/// retryable OAuth error for the client.
fn store_unavailable(error: postern_store::StoreError) -> OAuthError {
    tracing::error!(%error, "store unavailable at the authorization server");
    OAuthError::new(
        ErrorCode::TemporarilyUnavailable,
        "the gateway's store is unavailable",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_errors_take_their_status_from_the_code_and_are_never_cached() {
        let cases = [
            (
                EndpointError::OAuth(OAuthError::new(ErrorCode::InvalidGrant, "g")),
                400,
                None,
                None,
            ),
            (
                OAuthError::new(ErrorCode::InvalidClient, "c").into(),
                401,
                Some("Basic realm=\"postern\""),
                None,
            ),
            (
                OAuthError::new(ErrorCode::TooManyRequests, "r")
                    .with_retry_after(std::time::Duration::from_secs(9))
                    .into(),
                429,
                None,
                Some("9"),
            ),
            (
                OAuthError::new(ErrorCode::TemporarilyUnavailable, "t").into(),
                503,
                None,
                None,
            ),
            (EndpointError::NotPost("use POST"), 405, None, None),
            (EndpointError::TooLarge("too large"), 413, None, None),
        ];
        for (error, status, challenge, retry_after) in cases {
            let what = format!("{error:?}");
            let response = error.into_response();
            let header = |name| {
                response
                    .headers()
                    .get(name)
                    .map(|v: &HeaderValue| v.to_str().unwrap())
            };
            assert_eq!(response.status().as_u16(), status, "{what}");
            assert_eq!(header(header::CACHE_CONTROL), Some("no-store"), "{what}");
            assert_eq!(header(header::WWW_AUTHENTICATE), challenge, "{what}");
            assert_eq!(header(header::RETRY_AFTER), retry_after, "{what}");
        }
    }
}
