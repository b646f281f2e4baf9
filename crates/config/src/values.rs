//! Scalar values checked while parsing, so a bad one is reported with its path and line.

use std::time::Duration;

use serde::{Deserialize, Deserializer, de::Error as _};

/// A route's `from`: `scheme://host[:port]`, nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FromUrl {
    /// `http` or `https`.
    pub scheme: String,
    /// Lower-case host name or address (IPv6 without brackets).
    pub host: String,
    /// The port when given explicitly (a default port is normalised away).
    pub port: Option<u16>,
}

impl FromUrl {
    /// `scheme://host[:port]`, normalised.
    pub fn origin(&self) -> String {
        origin_of(&self.scheme, &self.host, self.port)
    }
}

/// `scheme://host[:port]`: an IPv6 host in brackets, the port left out when it is none or the
/// scheme's default.
pub fn origin_of(scheme: &str, host: &str, port: Option<u16>) -> String {
    let default = if scheme == "https" { 443 } else { 80 };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    match port {
        Some(port) if port != default => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    }
}

impl<'de> Deserialize<'de> for FromUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let url = url::Url::parse(&text).map_err(|e| {
            D::Error::custom(format!(
                "{text:?} is not a URL ({e}); expected e.g. https://mcp.example.com"
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(D::Error::custom(format!(
                "{text:?}: the scheme must be http or https"
            )));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(D::Error::custom(format!(
                "{text:?}: `from` is only scheme://host[:port]; match paths with `prefix` or `path`"
            )));
        }
        let host = url
            .host_str()
            .ok_or_else(|| D::Error::custom(format!("{text:?} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        Ok(FromUrl {
            scheme: url.scheme().to_owned(),
            host,
            port: url.port(),
        })
    }
}

/// An upstream URL (`to`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToUrl(pub url::Url);

impl<'de> Deserialize<'de> for ToUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let url = url::Url::parse(&text).map_err(|e| {
            D::Error::custom(format!(
                "{text:?} is not a URL ({e}); expected e.g. http://my-mcp-server:8080/mcp"
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(D::Error::custom(format!(
                "{text:?}: an upstream must be an http or https URL with a host"
            )));
        }
        Ok(ToUrl(url))
    }
}

/// A route's `policy`, checked when the file is read so a bad criterion is reported with its line.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyDocument(pub serde_json::Value);

impl<'de> Deserialize<'de> for PolicyDocument {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        postern_policy::Policy::compile(Some(&value), &Default::default()).map_err(|e| {
            let inner = e.path.trim_start_matches("policy").trim_start_matches('.');
            D::Error::custom(format!("{inner}: {}", e.message))
        })?;
        Ok(PolicyDocument(value))
    }
}

/// A Go-style duration, as Pomerium writes them: `30s`, `5m`, `1h30m`, `250ms`.
///
/// Written by hand: the usual crates parse other syntaxes (`1h 30min`), and configs written for
/// the reference use Go's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoDuration(pub Duration);

impl GoDuration {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let s = text.trim();
        if s == "0" {
            return Ok(GoDuration(Duration::ZERO));
        }
        let mut total = Duration::ZERO;
        let mut rest = s;
        if rest.is_empty() {
            return Err("empty duration".into());
        }
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            let (number, tail) = rest.split_at(digits);
            let unit_len = tail
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(tail.len());
            let (unit, next) = tail.split_at(unit_len);
            let value: f64 = number.parse().map_err(|_| {
                format!("{text:?} is not a duration (expected e.g. 30s, 5m, 1h30m)")
            })?;
            let seconds = match unit {
                "ms" => value / 1000.0,
                "s" => value,
                "m" => value * 60.0,
                "h" => value * 3600.0,
                "d" => value * 86400.0,
                _ => return Err(format!("{text:?}: unknown unit {unit:?} (use ms, s, m, h)")),
            };
            // A duration too long to hold panicked here (`99999999999999999999h`).
            total = Duration::try_from_secs_f64(seconds)
                .ok()
                .and_then(|d| total.checked_add(d))
                .ok_or_else(|| format!("{text:?} is too long a duration (use e.g. 8h, 30d)"))?;
            rest = next;
        }
        Ok(GoDuration(total))
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Seconds(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(t) => GoDuration::parse(&t).map_err(D::Error::custom),
            Raw::Seconds(s) => Ok(GoDuration(Duration::from_secs(s))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(GoDuration::parse("30s").unwrap().0, Duration::from_secs(30));
        assert_eq!(
            GoDuration::parse("1h30m").unwrap().0,
            Duration::from_secs(5400)
        );
        assert_eq!(
            GoDuration::parse("250ms").unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!(
            GoDuration::parse("14h").unwrap().0,
            Duration::from_secs(14 * 3600)
        );
        assert!(GoDuration::parse("soon").is_err());
        assert!(GoDuration::parse("5 minutes").is_err());
    }
}
