//! `/authorize`: the client and its redirect URI, the request, the signed-in user and the
//! route's policy, consent, and the code (or a detour through the route's upstream provider
//! first).

use super::*;

impl AuthorizationServer {
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
        let sign_in_origin = self.settings.get().authenticate.is_some();
        let (route, resource) =
            match target_route(ctx, issuer, request.resource.as_deref(), sign_in_origin) {
                Ok(found) => found,
                Err(error) => return back.error(error, state),
            };

        // Who is asking: a browser session (sign in first if needed).
        let Some(session) =
            session::current(headers, &self.settings.get().cookie, &self.store).await
        else {
            return sign_in_first(&query);
        };
        if decision.is_some()
            && let Some(response) = self.consent_refusal(ctx, headers, &query, &session)
        {
            return response;
        }
        let user = crate::sign_in::session::user_of(&session);
        if !crate::broker::routes_api::may_use(
            &route,
            &user,
            ctx.client_addr.ip(),
            ctx.client_certificate.as_deref(),
        ) {
            ctx.metrics.policy_denied("authorize");
            self.audit.event(
                crate::enforcement::audit::IdentityEvent::new("authorize_denied", ctx)
                    .user(&session.email)
                    .client(client_id.as_str())
                    .route(&route.id)
                    .reason("the route's policy does not allow this user"),
            );
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
        // The provider returns to the server's own host (the redirect URI registered there);
        // with a sign-in origin, that host relays the browser back here.
        let origin = oauth_server::origin_of(asked.resource).unwrap_or_else(|| ctx.origin());
        if self
            .needs_upstream_account(asked.route, session, &origin)
            .await
        {
            let mut resume_query = query.clone();
            resume_query.remove("session_binding");
            let resume = crate::web::round_trip::Resume::Authorize {
                query: resume_query,
                origin,
            };
            return self
                .broker
                .start_upstream(asked.route, session, resume)
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
            && session::current(headers, &self.settings.get().cookie, &self.store)
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
                Err(error) => {
                    // A wait, not a refusal: 503 (with Retry-After), so nothing gives up on
                    // the client.
                    tracing::error!(%error, "store unavailable at the authorization endpoint");
                    return Err(html(
                        StatusCode::SERVICE_UNAVAILABLE,
                        pages::message(
                            "Authorization failed",
                            "The gateway's store is unavailable; try again in a few seconds.",
                        ),
                    ));
                }
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

    /// Whether `route` needs the user's upstream account (TI) and the user has none yet (an
    /// upstream with its own OAuth not discovered yet is probed first).
    async fn needs_upstream_account(
        &self,
        route: &Route,
        session: &postern_store::Session,
        origin: &str,
    ) -> bool {
        if self.broker.upstream_oauth(route, origin).await.is_none()
            && !self.broker.probe_upstream(route, origin).await
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
        self.audit.event(
            crate::enforcement::audit::IdentityEvent::new("code_issued", ctx)
                .user(&session.email)
                .client(&grant.client_id)
                .reason(format!("resource={}", grant.resource)),
        );
        Ok(code)
    }
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
    sign_in_origin: bool,
) -> Result<(Arc<Route>, String), OAuthError> {
    if sign_in_origin {
        // The authorization server serves every route host: the client names the server.
        let Some(asked) = asked else {
            return Err(OAuthError::new(
                ErrorCode::InvalidTarget,
                "this authorization server serves several hosts: pass the MCP server's URL as resource",
            ));
        };
        let route = oauth_server::route_for_resource(ctx, asked)
            .filter(|_| oauth_server::origin_port(asked) == Some(ctx.port));
        let (Some(route), Some(origin)) = (route, oauth_server::origin_of(asked)) else {
            return Err(OAuthError::new(
                ErrorCode::InvalidTarget,
                format!(
                    "resource {asked} is not an MCP server on this gateway; pass the server URL as resource"
                ),
            ));
        };
        let resource = oauth_server::route_resource(&route, &origin);
        return Ok((route, resource));
    }
    // A resource named on another origin would be served by this origin's route of the same
    // path: the token's audience must be what the client asked for, or nothing.
    if let Some(asked) = asked
        && !oauth_server::on_this_origin(ctx, asked)
    {
        return Err(OAuthError::new(
            ErrorCode::InvalidTarget,
            format!(
                "resource {asked} is not on this authorization server's origin ({issuer}); use the URL of a server on {issuer}"
            ),
        ));
    }
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
    // Bound to the route that serves the URL the client asked for, by its canonical name.
    let resource = oauth_server::route_resource(&route, &ctx.origin());
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
