//! Local users: a YAML file (`users_file`) listing `{email, name, groups, password_hash}` with
//! argon2id hashes (`postern hash-password` makes one). The embedded default identity source.

use std::path::{Path, PathBuf};

use argon2::password_hash::PasswordVerifier;
use argon2::password_hash::phc::PasswordHash;
use argon2::{Argon2, PasswordHasher};
use serde::Deserialize;

/// One local user.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalUser {
    /// Email address (the sign-in name).
    pub email: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// argon2id PHC string.
    pub password_hash: String,
    /// Other claims the policy can match with `claim/<name>` (`email`, `name` and `groups`
    /// are there already).
    #[serde(default)]
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// Why the users file cannot be used; each names the file. The underlying error is part of the
/// text rather than a `source()`, so a report (`postern serve` failing to start) prints it once.
#[derive(Debug, thiserror::Error)]
pub enum UsersFileError {
    /// The file could not be read.
    #[error("users_file {}: {error}", .path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        error: std::io::Error,
    },
    /// Not a YAML list of users.
    #[error("users_file {}: {error}", .path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Where and why it did not parse.
        error: yaml_serde::Error,
    },
    /// A user's `password_hash` is not an argon2 PHC string.
    #[error(
        "users_file {}: entry {index} ({email}): password_hash is not an argon2 PHC string ({error}); make one with `postern hash-password`",
        .path.display()
    )]
    NotAHash {
        /// The file.
        path: PathBuf,
        /// The entry's position in the list, from 0.
        index: usize,
        /// The entry's email.
        email: String,
        /// Why the hash did not parse.
        error: argon2::password_hash::phc::Error,
    },
}

/// Why a password could not be hashed (argon2 refused it, or no randomness for the salt).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HashError(argon2::password_hash::Error);

/// The local users.
#[derive(Clone, Debug, Default)]
pub struct LocalUsers {
    users: Vec<LocalUser>,
    /// Position in `users` by email in ASCII lower case (the first entry of an email wins, as
    /// a scan in order found it): a sign-in or a refresh costs the same with 100,000 users.
    by_email: std::collections::HashMap<String, usize>,
    /// Verified against when the email is unknown, so both cases cost the same.
    decoy: String,
}

impl LocalUsers {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Self, UsersFileError> {
        let text = std::fs::read_to_string(path).map_err(|error| UsersFileError::Unreadable {
            path: path.to_owned(),
            error,
        })?;
        let users: Vec<LocalUser> =
            yaml_serde::from_str(&text).map_err(|error| UsersFileError::Invalid {
                path: path.to_owned(),
                error,
            })?;
        for (index, user) in users.iter().enumerate() {
            PasswordHash::new(&user.password_hash).map_err(|error| UsersFileError::NotAHash {
                path: path.to_owned(),
                index,
                email: user.email.clone(),
                error,
            })?;
        }
        Ok(Self::new(users))
    }

    /// From a list.
    pub fn new(users: Vec<LocalUser>) -> Self {
        let decoy = hash_password("decoy password for unknown users").unwrap_or_default();
        let mut by_email = std::collections::HashMap::with_capacity(users.len());
        for (position, user) in users.iter().enumerate() {
            by_email
                .entry(user.email.to_ascii_lowercase())
                .or_insert(position);
        }
        Self {
            users,
            by_email,
            decoy,
        }
    }

    /// The user with this email (whether they are still in the file), without a password.
    pub fn find(&self, email: &str) -> Option<&LocalUser> {
        let position = self.by_email.get(&email.trim().to_ascii_lowercase())?;
        self.users.get(*position)
    }

    /// The user with this email and password. A wrong password and an unknown email take the
    /// same time and give the same answer.
    pub fn verify(&self, email: &str, password: &str) -> Option<&LocalUser> {
        let user = self.find(email);
        let hash = user.map_or(self.decoy.as_str(), |u| u.password_hash.as_str());
        let ok = PasswordHash::new(hash).ok().is_some_and(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        });
        user.filter(|_| ok)
    }
}

/// An argon2id PHC hash of `password` with a random salt.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(HashError)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_passwords_and_treats_unknown_users_alike() {
        let users = LocalUsers::new(vec![LocalUser {
            email: "ada@example.com".into(),
            name: "Ada".into(),
            groups: vec!["staff".into()],
            password_hash: hash_password("correct horse").unwrap(),
            claims: Default::default(),
        }]);
        assert!(users.verify("ADA@example.com", "correct horse").is_some());
        assert!(users.verify("ada@example.com", "wrong").is_none());
        assert!(
            users
                .verify("nobody@example.com", "correct horse")
                .is_none()
        );
        assert!(hash_password("x").unwrap().starts_with("$argon2id$"));
    }

    /// The lookup by email is what a scan in order found: case-insensitive (ASCII), the
    /// address trimmed, the first of two entries with one email.
    #[test]
    fn finds_users_by_email_like_a_scan_in_order() {
        let user = |email: &str, name: &str| LocalUser {
            email: email.into(),
            name: name.into(),
            groups: vec![],
            password_hash: String::new(),
            claims: Default::default(),
        };
        let users = LocalUsers::new(vec![
            user("Ada@Example.com", "first"),
            user("bob@example.com", "bob"),
            user("ada@example.com", "second"),
        ]);
        let name = |email: &str| users.find(email).map(|u| u.name.clone());
        assert_eq!(name("ada@example.com").as_deref(), Some("first"));
        assert_eq!(name("  ADA@EXAMPLE.COM ").as_deref(), Some("first"));
        assert_eq!(name("bob@example.com").as_deref(), Some("bob"));
        assert_eq!(name("carol@example.com"), None);
        assert_eq!(name("ada@example.co"), None);
    }
}
