//! [`Secret`]: a credential (client secret, access or refresh token) that must not reach a log.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A secret value: `Debug` prints `[redacted]` (and there is no `Display`, so `to_string()`
/// cannot quietly put `[redacted]` on the wire), comparison with a presented value
/// is in constant time, and the value itself comes out only through [`Secret::expose`], so every
/// use of it is a visible call. Serialized as the plain string (records stored sealed or hashed
/// by their store, never logged).
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value. Call only where it is sent, stored or checked, never to log.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether this is `presented`, in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        subtle::ConstantTimeEq::ct_eq(self.0.as_bytes(), presented.as_bytes()).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print_compare_in_full_and_serialize_as_the_string() {
        let secret = Secret::new("s3cret");
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert!(secret.matches("s3cret"));
        assert!(!secret.matches("s3creT") && !secret.matches("s3cre") && !secret.matches(""));
        assert!(
            !secret.matches("s3cret!"),
            "a longer value is another value"
        );
        let json = serde_json::to_string(&secret).unwrap();
        assert_eq!(json, "\"s3cret\"");
        assert_eq!(serde_json::from_str::<Secret>(&json).unwrap(), secret);
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Record {
            token: Secret,
        }
        let record = Record {
            token: "tok-123".into(),
        };
        assert!(!format!("{record:?}").contains("tok-123"));
    }
}
