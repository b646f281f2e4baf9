//! What the access services take from the configuration.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use postern_config::defaults::AuthenticateService;
use postern_config::{AuthorizeLogField, Config, IssuerFormat};
use postern_gateway::hooks::RequestContext;

use crate::sign_in::session::CookieSettings;

/// What the hooks need from the configuration.
#[derive(Clone, Debug)]
pub struct AccessSettings {
    /// Cookie settings.
    pub cookie: CookieSettings,
    /// Send the assertion on every route unless the route says otherwise.
    pub pass_identity_headers: bool,
    /// `iss` format.
    pub issuer_format: IssuerFormat,
    /// Where the audit log is appended (JSON lines).
    pub audit_file: Option<PathBuf>,
    /// `authorize_log_fields`: the optional fields of each audit record; `None`: the fixed
    /// record.
    pub authorize_log_fields: Option<Vec<AuthorizeLogField>>,
    /// Accept RFC 7591 dynamic client registration.
    pub dynamic_registration: bool,
    /// Lifetime of access tokens (TE).
    pub access_token_ttl: Duration,
    /// A refresh token presented again within this time after its rotation is refused without
    /// revoking its family (two requests of one client racing); later it is reuse.
    pub refresh_reuse_grace: Duration,
    /// Hosts whose client ID metadata documents are accepted (`mcp_allowed_client_id_domains`).
    pub allowed_client_id_domains: Vec<String>,
    /// Hosts upstream OAuth discovery may contact besides the routes' upstream hosts
    /// (`mcp_allowed_as_metadata_domains`).
    pub allowed_as_metadata_domains: Vec<String>,
    /// Limits on dynamic client registration.
    pub registration: crate::authorization_server::registration::RegistrationLimits,
    /// `jwt_claims_headers`: (header, claim) sent upstream on every proxied request.
    pub claim_headers: Vec<(http::HeaderName, String)>,
    /// `authenticate_service_url`: the origin of sign-in, consent, the portal and the OAuth
    /// endpoints; `None`: every route host serves them.
    pub authenticate: Option<AuthenticateService>,
    /// The email the sign-in form starts with (`postern up`'s generated user); `None`: empty.
    pub sign_in_email: Option<String>,
    /// How long a client grant's refresh token lasts unused; each refresh starts it again
    /// (`mcp_refresh_token_idle_ttl`).
    pub refresh_idle_ttl: Duration,
    /// How long a client grant lasts from its authorization (`mcp_refresh_token_max_ttl`).
    pub refresh_max_ttl: Duration,
}

/// The settings in force, shared by the services: a reload swaps them whole, and each use reads
/// the ones current then (a request may see two versions across its steps, never a mix within
/// one read).
#[derive(Clone, Debug)]
pub struct Live(Arc<ArcSwap<AccessSettings>>);

impl Live {
    /// Starting with `settings`.
    pub fn new(settings: AccessSettings) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(settings)))
    }

    /// The settings in force now.
    pub fn get(&self) -> Arc<AccessSettings> {
        self.0.load_full()
    }

    /// Puts `settings` in force for what happens from now on.
    pub fn set(&self, settings: AccessSettings) {
        self.0.store(Arc::new(settings));
    }
}

impl AccessSettings {
    /// Whether the request is for the dedicated sign-in origin.
    pub(crate) fn on_authenticate(&self, ctx: &RequestContext) -> bool {
        self.authenticate
            .as_ref()
            .is_some_and(|a| a.host == ctx.host)
    }

    /// The authorization server's origin (its issuer): the sign-in origin, or this host.
    pub(crate) fn issuer(&self, ctx: &RequestContext) -> String {
        match &self.authenticate {
            Some(a) => a.origin.clone(),
            None => ctx.origin(),
        }
    }
}

impl AccessSettings {
    /// From the configuration.
    pub fn from_config(config: &Config) -> Self {
        Self {
            cookie: CookieSettings {
                name: config.cookie_name().to_owned(),
                expire: config.cookie_expire(),
                secure: config.cookie_secure(),
                same_site: match config.cookie_same_site {
                    None | Some(postern_config::CookieSameSite::Lax) => cookie::SameSite::Lax,
                    Some(postern_config::CookieSameSite::Strict) => cookie::SameSite::Strict,
                    Some(postern_config::CookieSameSite::None) => cookie::SameSite::None,
                },
                domain: config.cookie_domain(),
            },
            pass_identity_headers: config.pass_identity_headers(),
            issuer_format: config.jwt_issuer_format(),
            audit_file: Some(config.audit_file()),
            authorize_log_fields: config.authorize_log_fields.clone(),
            dynamic_registration: config.mcp_dynamic_client_registration(),
            access_token_ttl: config.mcp_access_token_ttl(),
            refresh_reuse_grace: Duration::from_secs(5),
            allowed_client_id_domains: config.mcp_allowed_client_id_domains.clone(),
            allowed_as_metadata_domains: config.mcp_allowed_as_metadata_domains.clone(),
            registration: Default::default(),
            claim_headers: config
                .jwt_claims_headers
                .as_ref()
                .map(|h| h.pairs())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(header, claim)| {
                    Some((http::HeaderName::from_bytes(header.as_bytes()).ok()?, claim))
                })
                .collect(),
            authenticate: config.authenticate_service(),
            sign_in_email: None,
            refresh_idle_ttl: config.mcp_refresh_token_idle_ttl(),
            refresh_max_ttl: config.mcp_refresh_token_max_ttl(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;
    use std::time::Duration;

    use super::AccessSettings;

    fn settings(yaml: &str) -> AccessSettings {
        let config = postern_config::parse(yaml, Path::new("."), &HashMap::new()).unwrap();
        AccessSettings::from_config(&config)
    }

    #[test]
    fn the_session_cookie_takes_pomeriums_cookie_keys() {
        let default = settings("insecure_server: true\n");
        assert_eq!(default.cookie.same_site, cookie::SameSite::Lax);
        assert_eq!(default.cookie.domain, None);
        let shared = settings(
            "autocert: true\ncookie_domain: .Example.com\ncookie_same_site: strict\nroutes:\n  - {from: https://mcp.example.com, to: http://up:1}\n",
        );
        assert_eq!(shared.cookie.same_site, cookie::SameSite::Strict);
        assert_eq!(shared.cookie.domain.as_deref(), Some("example.com"));
        let spec = shared.cookie.spec();
        let mut response = http::Response::new(postern_gateway::body::empty());
        spec.set(&mut response, "v", Duration::from_secs(60));
        let set = response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            set.contains("Domain=example.com") && set.contains("SameSite=Strict"),
            "{set}"
        );
    }

    #[test]
    fn access_token_lifetime_comes_from_the_config() {
        let default = settings("insecure_server: true\n");
        assert_eq!(default.access_token_ttl, Duration::from_secs(3600));
        let short = settings("insecure_server: true\nmcp_access_token_ttl: 5m\n");
        assert_eq!(short.access_token_ttl, Duration::from_secs(300));
    }

    #[test]
    fn authorize_log_fields_come_from_the_config() {
        assert_eq!(
            settings("insecure_server: true\n").authorize_log_fields,
            None
        );
        let selected = settings("insecure_server: true\nauthorize_log_fields: [email, body]\n");
        assert_eq!(
            selected.authorize_log_fields.as_deref().map(<[_]>::len),
            Some(2),
            "the unavailable ones are left out when the record is made"
        );
    }
}
