//! `downstream_mtls` (and Pomerium's older `client_ca`/`client_ca_file`): resolved once when
//! the file is read, so the gateway gets the PEM bundles and every mistake is a config error.

use std::path::Path;

use base64::Engine;

use crate::{Config, ConfigError, DownstreamMtls, MtlsEnforcement, SanMatcher};

impl DownstreamMtls {
    /// What happens without a valid certificate (default `policy_with_default_deny`).
    pub fn enforcement(&self) -> MtlsEnforcement {
        self.enforcement.unwrap_or_default()
    }

    /// Most certificates in the verified chain below the trust anchor; `None`: no limit.
    /// Default 1, as Pomerium: only certificates issued directly by a trusted CA.
    pub fn max_verify_depth(&self) -> Option<u32> {
        match self.max_verify_depth {
            None => Some(1),
            Some(0) => None,
            Some(depth) => Some(depth),
        }
    }

    /// The trusted CAs, PEM.
    pub fn ca_pem(&self) -> Result<Vec<u8>, ConfigError> {
        pem("downstream_mtls.ca", &self.ca, &self.ca_file)?.ok_or_else(|| {
            ConfigError::at(
                "downstream_mtls.ca",
                "required: the CA that client certificates must chain to (ca: base64 of a PEM bundle, or ca_file: a PEM file)",
            )
        })
    }

    /// The revocation lists, PEM, if any.
    pub fn crl_pem(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        pem("downstream_mtls.crl", &self.crl, &self.crl_file)
    }
}

impl SanMatcher {
    /// The SAN type's key and the pattern.
    pub fn parts(&self) -> (&'static str, &str) {
        match self {
            SanMatcher::Dns(p) => ("dns", p),
            SanMatcher::Email(p) => ("email", p),
            SanMatcher::IpAddress(p) => ("ip_address", p),
            SanMatcher::Uri(p) => ("uri", p),
            SanMatcher::UserPrincipalName(p) => ("user_principal_name", p),
        }
    }

    /// The pattern, anchored: it must match the whole SAN (RE2 syntax, as Pomerium).
    pub fn regex(&self) -> Result<regex_automata::meta::Regex, String> {
        let (_, pattern) = self.parts();
        regex_automata::meta::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| e.to_string())
    }
}

impl TryFrom<std::collections::BTreeMap<String, String>> for SanMatcher {
    type Error = String;

    /// Pomerium's form: a mapping of one SAN type to its pattern (`- email: '.*@example\.com'`).
    fn try_from(map: std::collections::BTreeMap<String, String>) -> Result<Self, String> {
        const TYPES: &str = "dns, email, ip_address, uri or user_principal_name";
        let mut entries = map.into_iter();
        let (Some((kind, pattern)), None) = (entries.next(), entries.next()) else {
            return Err(format!(
                "expected one SAN type ({TYPES}) and its pattern, e.g. `- email: '.*@example\\.com'`"
            ));
        };
        Ok(match kind.to_ascii_lowercase().as_str() {
            "dns" => SanMatcher::Dns(pattern),
            "email" => SanMatcher::Email(pattern),
            "ip_address" => SanMatcher::IpAddress(pattern),
            "uri" => SanMatcher::Uri(pattern),
            "user_principal_name" => SanMatcher::UserPrincipalName(pattern),
            _ => return Err(format!("unknown SAN type `{kind}`; use {TYPES}")),
        })
    }
}

/// Inline (base64 of PEM) or file; not both.
fn pem(
    key: &str,
    inline: &Option<String>,
    file: &Option<std::path::PathBuf>,
) -> Result<Option<Vec<u8>>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(ConfigError::at(
            key,
            format!("set {key} or {key}_file, not both"),
        )),
        (Some(text), None) => base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map(Some)
            .map_err(|e| {
                ConfigError::at(
                    key,
                    format!("not base64 ({e}): give the PEM bundle base64-encoded (`base64 -w0 ca.pem`), or its path in {key}_file"),
                )
            }),
        (None, Some(path)) => std::fs::read(path).map(Some).map_err(|e| {
            ConfigError::at(
                format!("{key}_file"),
                format!("cannot read {}: {e}", path.display()),
            )
        }),
        (None, None) => Ok(None),
    }
}

/// Folds `client_ca`/`client_ca_file` into `downstream_mtls` and makes its file paths absolute.
pub(crate) fn resolve(config: &mut Config, base: &Path) -> Result<(), ConfigError> {
    if config.client_ca.is_some() || config.client_ca_file.is_some() {
        let key = if config.client_ca.is_some() {
            "client_ca"
        } else {
            "client_ca_file"
        };
        let mtls = config.downstream_mtls.get_or_insert_with(Default::default);
        if mtls.ca.is_some() || mtls.ca_file.is_some() {
            return Err(ConfigError::at(
                key,
                "the CA is set twice: client_ca and client_ca_file are Pomerium's older names for downstream_mtls.ca and ca_file; keep one",
            ));
        }
        mtls.ca = config.client_ca.take();
        mtls.ca_file = config.client_ca_file.take();
    }
    if let Some(mtls) = &mut config.downstream_mtls {
        for file in [&mut mtls.ca_file, &mut mtls.crl_file]
            .into_iter()
            .flatten()
        {
            *file = base.join(&*file);
        }
    }
    Ok(())
}

/// Client certificates need TLS here, a CA, readable PEM, and valid SAN patterns.
pub(crate) fn validate(config: &Config) -> Result<(), ConfigError> {
    let Some(mtls) = &config.downstream_mtls else {
        return Ok(());
    };
    if config.insecure_server {
        return Err(ConfigError::at(
            "downstream_mtls",
            "needs TLS: client certificates are sent in the TLS handshake, and insecure_server serves plain HTTP; serve TLS (certificate_file or autocert) or remove downstream_mtls",
        ));
    }
    let ca = mtls.ca_pem()?;
    if !contains(&ca, "-----BEGIN CERTIFICATE-----") {
        return Err(ConfigError::at(
            "downstream_mtls.ca",
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    if let Some(crl) = mtls.crl_pem()?
        && !contains(&crl, "-----BEGIN X509 CRL-----")
    {
        return Err(ConfigError::at(
            "downstream_mtls.crl",
            "holds no PEM certificate revocation list (-----BEGIN X509 CRL-----)",
        ));
    }
    for (i, matcher) in mtls.match_subject_alt_names.iter().enumerate() {
        let (kind, pattern) = matcher.parts();
        matcher.regex().map_err(|e| {
            ConfigError::at(
                format!("downstream_mtls.match_subject_alt_names[{i}].{kind}"),
                format!("{pattern:?} is not a valid regular expression: {e}"),
            )
        })?;
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}
