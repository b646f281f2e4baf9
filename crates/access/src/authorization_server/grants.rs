//! Connected apps (`/.pomerium/apps`): the signed-in user's client grants (token families),
//! each with Revoke, and "Sign out everywhere". A grant lives on its own (it outlives the
//! browser session it was authorized from); these forms are how the user ends one, or all.
//!
//! Every form is a POST from a page of this site (`Origin`/`Sec-Fetch-Site`) carrying the
//! session's form token, so another site can neither revoke a user's apps nor sign them out.
//! A revocation is in this replica's cache at once and in every other replica's within
//! [`crate::oauth_server::REVOCATION_POLL`].

use super::*;
use crate::web::forms;
use crate::web::pages::AppEntry;
use postern_store::{Grant, Session};

impl AuthorizationServer {
    /// `GET /.pomerium/apps`, `POST /.pomerium/apps/revoke`,
    /// `POST /.pomerium/apps/sign_out_everywhere`.
    pub(crate) async fn connected_apps(
        &self,
        ctx: &RequestContext,
        request: Request<Body>,
    ) -> Response<Body> {
        let Some(session) =
            session::current(request.headers(), &self.settings.get().cookie, &self.store).await
        else {
            return redirect_to("/.pomerium/sign_in?redirect_uri=%2F.pomerium%2Fapps");
        };
        let path = request.uri().path().to_owned();
        let known = matches!(
            path.as_str(),
            "/.pomerium/apps" | "/.pomerium/apps/revoke" | "/.pomerium/apps/sign_out_everywhere"
        );
        if !known {
            return html(
                StatusCode::NOT_FOUND,
                pages::message("Not found", "Connected apps are at /.pomerium/apps."),
            );
        }
        let mut response = match (path.as_str(), request.method()) {
            ("/.pomerium/apps", &Method::GET | &Method::HEAD) => {
                self.apps_page(ctx, &session).await
            }
            ("/.pomerium/apps/revoke" | "/.pomerium/apps/sign_out_everywhere", &Method::POST) => {
                match self.posted_form(ctx, &session, request).await {
                    Err(refused) => refused,
                    Ok(form) if path.ends_with("/revoke") => {
                        self.revoke_app(ctx, &session, form.get("grant")).await
                    }
                    Ok(_) => self.sign_out_everywhere(ctx, &session).await,
                }
            }
            _ => html(
                StatusCode::METHOD_NOT_ALLOWED,
                pages::message("Wrong method", "Open /.pomerium/apps in a browser."),
            ),
        };
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    async fn apps_page(&self, ctx: &RequestContext, session: &Session) -> Response<Body> {
        let grants = match self.store.user_grants(&session.user_id).await {
            Ok(grants) => grants,
            Err(error) => {
                tracing::error!(%error, request_id = %ctx.request_id, "cannot list client grants");
                return html(
                    StatusCode::SERVICE_UNAVAILABLE,
                    pages::message(
                        "Connected apps",
                        "The gateway's store is unavailable; try again.",
                    ),
                );
            }
        };
        let Some(csrf) = forms::session_form_token(self.store.keyring(), &session.id) else {
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::message(
                    "Connected apps",
                    "The gateway cannot make a form now; try again.",
                ),
            );
        };
        let apps: Vec<AppEntry> = grants.iter().map(|g| app_entry(ctx, g)).collect();
        let name = if session.name.is_empty() {
            &session.email
        } else {
            &session.name
        };
        html(
            StatusCode::OK,
            pages::connected_apps(name, &session.email, &apps, &csrf),
        )
    }

    /// The posted form, if it came from a page of this site with this session's form token.
    async fn posted_form(
        &self,
        ctx: &RequestContext,
        session: &Session,
        request: Request<Body>,
    ) -> Result<HashMap<String, String>, Response<Body>> {
        let refused = |why: &str| {
            tracing::warn!(request_id = %ctx.request_id, user = %session.email, why, "Connected apps form refused");
            html(
                StatusCode::FORBIDDEN,
                pages::message(
                    "Nothing was changed",
                    &format!("{why}. Open /.pomerium/apps on this site and use its buttons."),
                ),
            )
        };
        // Unlike the sign-in form, an `Origin` is required: every browser sends one on a POST,
        // and this form never comes from a script.
        let origin = request
            .headers()
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok());
        if origin != Some(ctx.origin().as_str()) {
            return Err(refused("The form was not sent from a page of this site"));
        }
        if let Err(why) = forms::same_origin_post(request.headers(), &ctx.origin()) {
            return Err(refused(why));
        }
        let body = forms::read_form(request).await.map_err(|error| {
            html(
                error.status(),
                pages::message(
                    "Nothing was changed",
                    &format!("The form could not be read: {error}."),
                ),
            )
        })?;
        let form = oauth_server::form(&body);
        if !forms::session_form_token_matches(
            self.store.keyring(),
            form.get("csrf_token").map(String::as_str),
            &session.id,
        ) {
            return Err(refused("The form is not from this session"));
        }
        Ok(form)
    }

    async fn revoke_app(
        &self,
        ctx: &RequestContext,
        session: &Session,
        grant: Option<&String>,
    ) -> Response<Body> {
        let Some(grant) = grant.filter(|g| !g.is_empty() && g.len() <= 64) else {
            return html(
                StatusCode::BAD_REQUEST,
                pages::message("Nothing was changed", "The form names no app to revoke."),
            );
        };
        match self.store.revoke_user_grant(&session.user_id, grant).await {
            Ok(true) => {
                self.revocations.insert(Revocation::Family(grant.clone()));
                tracing::info!(target: "postern::audit", event = "grant_revoked", request_id = %ctx.request_id, user = %session.email, family = %grant, "client grant revoked by its user");
                redirect_to("/.pomerium/apps")
            }
            // Not this user's, or already gone: nothing to do, and nothing said about others'.
            Ok(false) => redirect_to("/.pomerium/apps"),
            Err(error) => {
                tracing::error!(%error, request_id = %ctx.request_id, "cannot revoke a client grant");
                html(
                    StatusCode::SERVICE_UNAVAILABLE,
                    pages::message(
                        "Not revoked",
                        "The gateway's store is unavailable, so the app still works; try again.",
                    ),
                )
            }
        }
    }

    async fn sign_out_everywhere(&self, ctx: &RequestContext, session: &Session) -> Response<Body> {
        let families = self
            .store
            .user_grants(&session.user_id)
            .await
            .unwrap_or_default();
        match self.store.revoke_user(&session.user_id).await {
            Ok((sessions, grants)) => {
                for grant in families {
                    self.revocations
                        .insert(Revocation::Family(grant.family.family_id));
                }
                tracing::info!(target: "postern::audit", event = "sign_out_everywhere", request_id = %ctx.request_id, user = %session.email, sessions, grants, "signed out everywhere");
                let mut response = html(
                    StatusCode::OK,
                    pages::message(
                        "Signed out everywhere",
                        &format!(
                            "Ended {sessions} browser session{} and revoked {grants} connected app{}.",
                            if sessions == 1 { "" } else { "s" },
                            if grants == 1 { "" } else { "s" },
                        ),
                    ),
                );
                self.settings.get().cookie.spec().clear(&mut response);
                response
            }
            Err(error) => {
                tracing::error!(%error, request_id = %ctx.request_id, "cannot sign a user out everywhere");
                html(
                    StatusCode::SERVICE_UNAVAILABLE,
                    pages::message(
                        "Not signed out",
                        "The gateway's store is unavailable, so nothing was ended; try again.",
                    ),
                )
            }
        }
    }
}

/// How a grant is shown: the client's name (or id), where it sends the user back, whether its
/// identity is vouched for by a client ID metadata document (on an allowed domain: only those
/// are accepted) or only claimed at dynamic registration, and the server.
fn app_entry(ctx: &RequestContext, grant: &Grant) -> AppEntry {
    let family = &grant.family;
    let host_of = |url: &str| {
        url::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
    };
    let verified_by = (family.client_id.starts_with("https://")
        || family.client_id.starts_with("http://"))
    .then(|| host_of(&family.client_id))
    .flatten();
    let server_name = oauth_server::route_for_resource(ctx, &family.resource)
        .and_then(|r| r.config.name.clone())
        .unwrap_or_else(|| family.resource.clone());
    AppEntry {
        id: family.family_id.clone(),
        name: family
            .client_name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| family.client_id.clone()),
        redirect_host: family
            .redirect_uri
            .as_deref()
            .and_then(host_of)
            .unwrap_or_else(|| "unknown".into()),
        verified_by,
        server: (server_name, family.resource.clone()),
        first_used: family.created_at,
        last_used: grant.last_used_at,
    }
}
