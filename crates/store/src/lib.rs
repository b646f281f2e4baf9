//! The gateway's state: browser sessions, registered OAuth clients, authorization codes,
//! refresh-token families, upstream tokens (TI) per user and route, pending upstream
//! authorizations, consents and the signing key.
//!
//! One [`Store`] type over two backends: a SQLite file (the embedded default) and PostgreSQL (for
//! several gateway replicas, which then behave as one). Every operation is written once (see
//! `db.rs`), including the atomic ones the gateway's security rests on:
//!
//! - [`Store::redeem_code`]: an authorization code is redeemed exactly once; a replay is reported
//!   with the family the first redemption created, so the caller can revoke it;
//! - [`Store::rotate_refresh_token`]: exactly one of several concurrent rotations of a refresh
//!   token wins; a spent token presented again revokes its whole family;
//! - [`Store::refresh_upstream_token`]: concurrent refreshes of one user's upstream token
//!   coalesce into one call to the provider, across tasks and across replicas (a lease row).
//!
//! Secrets at rest (see `crypto.rs`): tokens and codes only as hashes; upstream tokens, client
//! secrets, pending authorizations and keys sealed with a key derived from `shared_secret`.
//! Every record kind expires; [`Store::spawn_collector`] deletes expired rows in the background.
#![forbid(unsafe_code)]

mod crypto;
mod db;
mod records;
mod schema;
mod upstream;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

pub use crypto::{Keyring, hash_secret};
pub use db::{Observer, observe_operations};
pub use records::*;
pub use upstream::{RefreshError, RefreshOutcome};

use db::{Db, params};

/// The `consents.client_id` value of a consent: the client and the resource, separated by a
/// space (which neither a client id nor a URL contains). Consents stored before they were per
/// resource (a bare client id) match nothing, so those users are asked again.
fn consent_key(client_id: &str, resource: &str) -> String {
    format!("{client_id} {resource}")
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Which database holds the state.
#[derive(Clone)]
pub enum Backend {
    /// A SQLite file (`databroker_storage_type: sqlite`, the default).
    Sqlite(PathBuf),
    /// PostgreSQL (`databroker_storage_type: postgres` + `databroker_storage_connection_string`).
    Postgres(String),
    /// In memory, gone at exit (`databroker_storage_type: memory`; tests only).
    Memory,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Sqlite(path) => write!(f, "Sqlite({})", path.display()),
            Backend::Postgres(url) => write!(f, "Postgres({})", db::redact_url(url)),
            Backend::Memory => f.write_str("Memory"),
        }
    }
}

impl Backend {
    /// The SQLite file inside a data directory.
    pub fn sqlite_in(data_dir: &std::path::Path) -> Self {
        Backend::Sqlite(db::sqlite_path(data_dir))
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or migrated at start-up.
    #[error("cannot open the store ({target}): {reason}")]
    Open {
        /// What was being opened, without any password.
        target: String,
        /// What went wrong and what to do.
        reason: String,
    },
    /// Bad store configuration.
    #[error("store configuration: {0}")]
    Config(String),
    /// The database failed a statement.
    #[error("store backend error: {0}")]
    Backend(String),
    /// A row could not be read back.
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    /// Sealing or opening a secret failed.
    #[error("store encryption: {0}")]
    Crypto(String),
    /// The disk holding the database is full: writes fail until space is freed (reads go on);
    /// they work again by themselves, without a restart.
    #[error("{0}")]
    DiskFull(String),
    /// The database (its file, directory or filesystem) cannot be written: writes fail until it
    /// is writable again (reads go on); they work again by themselves, without a restart.
    #[error("{0}")]
    ReadOnly(String),
}

impl StoreError {
    /// Why the store failed, as a user or client may be told it (the log has the detail).
    pub fn public_reason(&self) -> &'static str {
        match self {
            StoreError::DiskFull(_) => "the gateway's database disk is full",
            StoreError::ReadOnly(_) => "the gateway's database is read-only",
            _ => "the gateway's store is unavailable",
        }
    }
}

/// The gateway's state. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    keys: Keyring,
    backend: String,
    /// Per-(user, route) locks that coalesce upstream refreshes within this process.
    refresh_locks: upstream::Locks,
    /// TIs read in the last second (see `upstream::Recent`).
    recent_upstream_tokens: upstream::Recent,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.inner.backend)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens `backend`, applies migrations, and seals secrets with keys derived from
    /// `shared_secret` (`previous_secrets` still open old values after a rotation).
    pub async fn open(
        backend: &Backend,
        shared_secret: &[u8],
        previous_secrets: &[Vec<u8>],
    ) -> Result<Self, StoreError> {
        let keys = Keyring::new(shared_secret, previous_secrets)?;
        let db = match backend {
            Backend::Sqlite(path) => Db::open_sqlite(path)?,
            Backend::Postgres(url) => Db::open_postgres(url, 16).await?,
            Backend::Memory => Db::open_memory()?,
        };
        db.migrate().await.map_err(|e| match e {
            StoreError::Open { .. } => e,
            other => StoreError::Open {
                target: format!("{backend:?}"),
                reason: other.to_string(),
            },
        })?;
        let store = Self {
            inner: Arc::new(Inner {
                db,
                keys,
                backend: format!("{backend:?}"),
                refresh_locks: upstream::Locks::default(),
                recent_upstream_tokens: upstream::Recent::default(),
            }),
        };
        store.fill_family_users().await?;
        Ok(store)
    }

    /// Fills `token_families.user_id` (migration 3) for families stored before it, from their
    /// data; a no-op once done.
    async fn fill_family_users(&self) -> Result<(), StoreError> {
        let mut conn = self.db().conn().await?;
        let rows = conn
            .query(
                "SELECT family_id, data FROM token_families WHERE user_id IS NULL",
                &[],
            )
            .await?;
        for row in rows {
            let family: TokenFamily = from_json(&row.text(1)?)?;
            conn.execute(
                "UPDATE token_families SET user_id = ?2, last_used_at = ?3 WHERE family_id = ?1",
                params![&row.text(0)?, &family.user_id, family.created_at],
            )
            .await?;
        }
        Ok(())
    }

    /// The keyring (random tokens, sealing for callers that keep their own secrets).
    pub fn keyring(&self) -> &Keyring {
        &self.inner.keys
    }

    fn db(&self) -> &Db {
        &self.inner.db
    }

    fn seal<T: Serialize>(&self, context: &str, value: &T) -> Result<String, StoreError> {
        let json = serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.inner.keys.seal(context, &json)
    }

    fn unseal<T: DeserializeOwned>(&self, context: &str, sealed: &str) -> Result<T, StoreError> {
        let json = self.inner.keys.open(context, sealed)?;
        serde_json::from_slice(&json).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    // ---- sessions ------------------------------------------------------------------------

    /// Saves (or replaces) a session.
    pub async fn put_session(&self, session: &Session) -> Result<(), StoreError> {
        let data = to_json(session)?;
        self.db()
            .conn()
            .await?
            .execute(
                "INSERT INTO sessions (id, user_id, data, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET user_id = excluded.user_id, data = excluded.data, expires_at = excluded.expires_at",
                params![&session.id, &session.user_id, data, session.expires_at],
            )
            .await?;
        Ok(())
    }

    /// The session with this id, unless it expired or was ended.
    pub async fn get_session(&self, id: &str) -> Result<Option<Session>, StoreError> {
        self.live_data(
            "SELECT data FROM sessions WHERE id = ?1 AND expires_at > ?2",
            id,
        )
        .await?
        .map(|data| from_json(&data))
        .transpose()
    }

    /// The `data` of the row `sql` selects by `key` (`?1`) among those not expired (`?2`, now).
    async fn live_data(&self, sql: &str, key: &str) -> Result<Option<String>, StoreError> {
        let rows = self
            .db()
            .conn()
            .await?
            .query(sql, params![key, now_ms()])
            .await?;
        rows.first().map(|r| r.text(0)).transpose()
    }

    /// Ends a session (sign-out of one browser): deletes it. The client grants authorized from
    /// it keep working (see [`Store::revoke_user`] to end those too).
    pub async fn end_session(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.db().begin().await?;
        let ended = end_sessions(&mut tx, "id", id).await?;
        tx.commit().await?;
        Ok(ended > 0)
    }

    /// Ends every browser session of a user; returns how many. Client grants stay.
    pub async fn end_user_sessions(&self, user_id: &str) -> Result<u64, StoreError> {
        let mut tx = self.db().begin().await?;
        let ended = end_sessions(&mut tx, "user_id", user_id).await?;
        tx.commit().await?;
        Ok(ended)
    }

    /// Keeps the identity provider's refresh token of a session's sign-in (sealed) until
    /// `expires_at` (the session's end).
    pub async fn put_idp_refresh_token(
        &self,
        session_id: &str,
        token: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let sealed = self
            .inner
            .keys
            .seal(&format!("idp-refresh|{session_id}"), token.as_bytes())?;
        self.db()
            .conn()
            .await?
            .execute(
                "INSERT INTO idp_tokens (session_id, data, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (session_id) DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at",
                params![session_id, sealed, expires_at],
            )
            .await?;
        Ok(())
    }

    /// The identity provider's refresh token of a session's sign-in, if it gave one.
    pub async fn idp_refresh_token(&self, session_id: &str) -> Result<Option<Secret>, StoreError> {
        let Some(sealed) = self
            .live_data(
                "SELECT data FROM idp_tokens WHERE session_id = ?1 AND expires_at > ?2",
                session_id,
            )
            .await?
        else {
            return Ok(None);
        };
        let plain = self
            .inner
            .keys
            .open(&format!("idp-refresh|{session_id}"), &sealed)?;
        String::from_utf8(plain)
            .map(|t| Some(Secret::new(t)))
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    // ---- OAuth clients ---------------------------------------------------------------------

    /// Saves (or replaces) a client; its secret is sealed.
    pub async fn put_client(&self, client: &OAuthClient) -> Result<(), StoreError> {
        let mut stored = client.clone();
        stored.secret = client
            .secret
            .as_ref()
            .map(|s| {
                self.inner.keys.seal(
                    &format!("client_secret|{}", client.client_id),
                    s.expose().as_bytes(),
                )
            })
            .transpose()?
            .map(Secret::new);
        self.db()
            .conn()
            .await?
            .execute(
                "INSERT INTO oauth_clients (client_id, data, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (client_id) DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at",
                params![&client.client_id, to_json(&stored)?, client.expires_at],
            )
            .await?;
        Ok(())
    }

    /// The client with this id, its secret opened.
    pub async fn get_client(&self, client_id: &str) -> Result<Option<OAuthClient>, StoreError> {
        let Some(data) = self
            .live_data(
                "SELECT data FROM oauth_clients WHERE client_id = ?1 AND expires_at > ?2",
                client_id,
            )
            .await?
        else {
            return Ok(None);
        };
        let mut client: OAuthClient = from_json(&data)?;
        if let Some(sealed) = &client.secret {
            let plain = self
                .inner
                .keys
                .open(&format!("client_secret|{client_id}"), sealed.expose())?;
            let plain = String::from_utf8(plain).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            client.secret = Some(Secret::new(plain));
        }
        Ok(Some(client))
    }

    /// Deletes a client.
    pub async fn delete_client(&self, client_id: &str) -> Result<bool, StoreError> {
        let n = self
            .db()
            .conn()
            .await?
            .execute(
                "DELETE FROM oauth_clients WHERE client_id = ?1",
                params![client_id],
            )
            .await?;
        Ok(n > 0)
    }

    // ---- authorization codes -----------------------------------------------------------------

    /// Stores an authorization code (by hash only).
    pub async fn put_code(&self, code: &str, grant: &CodeGrant) -> Result<(), StoreError> {
        self.db()
            .conn()
            .await?
            .execute(
                "INSERT INTO authorization_codes (code_hash, data, expires_at) VALUES (?1, ?2, ?3)",
                params![hash_secret(code), to_json(grant)?, grant.expires_at],
            )
            .await?;
        Ok(())
    }

    /// The client an unredeemed, unexpired code was issued to (the code stays unredeemed).
    pub async fn code_client(&self, code: &str) -> Result<Option<String>, StoreError> {
        let rows = self
            .db()
            .conn()
            .await?
            .query(
                "SELECT data FROM authorization_codes
                 WHERE code_hash = ?1 AND redeemed_at IS NULL AND expires_at > ?2",
                params![hash_secret(code), now_ms()],
            )
            .await?;
        rows.first()
            .map(|r| from_json::<CodeGrant>(&r.text(0)?).map(|g| g.client_id))
            .transpose()
    }

    /// Redeems a code exactly once. The first redemption records `family_id` (the token family
    /// it is about to create), so a replay can name what to revoke (RFC 6749 §4.1.2).
    pub async fn redeem_code(&self, code: &str, family_id: &str) -> Result<Redemption, StoreError> {
        let hash = hash_secret(code);
        let now = now_ms();
        let mut conn = self.db().conn().await?;
        // One atomic statement: of several concurrent redemptions, the row lock lets exactly one
        // see `redeemed_at IS NULL`.
        let rows = conn
            .query(
                "UPDATE authorization_codes SET redeemed_at = ?2, family_id = ?3
                 WHERE code_hash = ?1 AND redeemed_at IS NULL AND expires_at > ?2 RETURNING data",
                params![&hash, now, family_id],
            )
            .await?;
        if let Some(row) = rows.first() {
            return Ok(Redemption::Redeemed(from_json(&row.text(0)?)?));
        }
        let rows = conn
            .query(
                "SELECT family_id, redeemed_at FROM authorization_codes WHERE code_hash = ?1",
                params![&hash],
            )
            .await?;
        match rows.first() {
            Some(row) if row.opt_int(1)?.is_some() => Ok(Redemption::Replayed {
                family_id: row.opt_text(0)?,
            }),
            _ => Ok(Redemption::Invalid),
        }
    }

    // ---- refresh-token families ----------------------------------------------------------------

    /// Starts a token family with its first refresh token.
    pub async fn create_family(
        &self,
        family: &TokenFamily,
        refresh_token: &str,
        refresh_expires_at: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.db().begin().await?;
        tx.execute(
            // A code replayed before the family existed already revoked it: keep it revoked.
            "INSERT INTO token_families (family_id, session_id, data, expires_at, user_id, last_used_at, revoked_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, (SELECT revoked_at FROM revocations WHERE kind = 'family' AND id = ?1))",
            params![
                &family.family_id,
                &family.session_id,
                to_json(family)?,
                family.expires_at,
                &family.user_id,
                family.created_at
            ],
        )
        .await?;
        tx.execute(
            "INSERT INTO refresh_tokens (token_hash, family_id, expires_at) VALUES (?1, ?2, ?3)",
            params![
                hash_secret(refresh_token),
                &family.family_id,
                refresh_expires_at.min(family.expires_at)
            ],
        )
        .await?;
        tx.commit().await
    }

    /// Rotates `old` to `new`. Exactly one of several concurrent rotations of `old` gets
    /// [`Rotation::Rotated`]; one arriving within `grace` after the winner gets
    /// [`Rotation::Concurrent`]; a spent token presented later revokes its family.
    pub async fn rotate_refresh_token(
        &self,
        old: &str,
        new: &str,
        new_expires_at: i64,
        grace: Duration,
    ) -> Result<Rotation, StoreError> {
        let old_hash = hash_secret(old);
        let now = now_ms();
        let mut tx = self.db().begin().await?;
        let spent = tx
            .query(
                "UPDATE refresh_tokens SET used_at = ?2
                 WHERE token_hash = ?1 AND used_at IS NULL AND expires_at > ?2 RETURNING family_id",
                params![&old_hash, now],
            )
            .await?;
        if let Some(row) = spent.first() {
            let family_id = row.text(0)?;
            let family = tx
                .query(
                    "SELECT data FROM token_families WHERE family_id = ?1 AND revoked_at IS NULL AND expires_at > ?2",
                    params![&family_id, now],
                )
                .await?;
            let Some(family) = family.first() else {
                tx.commit().await?;
                return Ok(Rotation::Invalid);
            };
            let family: TokenFamily = from_json(&family.text(0)?)?;
            tx.execute(
                "UPDATE token_families SET last_used_at = ?2 WHERE family_id = ?1",
                params![&family_id, now],
            )
            .await?;
            tx.execute(
                "INSERT INTO refresh_tokens (token_hash, family_id, expires_at) VALUES (?1, ?2, ?3)",
                params![hash_secret(new), &family_id, new_expires_at.min(family.expires_at)],
            )
            .await?;
            tx.commit().await?;
            return Ok(Rotation::Rotated(Box::new(family)));
        }
        let rows = tx
            .query(
                "SELECT family_id, used_at FROM refresh_tokens WHERE token_hash = ?1",
                params![&old_hash],
            )
            .await?;
        let outcome = match rows.first() {
            Some(row) => match row.opt_int(1)? {
                Some(used_at) if now - used_at <= grace.as_millis() as i64 => Rotation::Concurrent,
                Some(_) => {
                    let family_id = row.text(0)?;
                    revoke_family(&mut tx, &family_id, now).await?;
                    tracing::warn!(family = %family_id, "refresh token reuse detected: family revoked");
                    Rotation::Reused { family_id }
                }
                None => Rotation::Invalid, // expired
            },
            None => Rotation::Invalid,
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// Undoes this caller's rotation of `old` to `new` (a check after the rotation could not be
    /// made, so the client must keep `old`): `new` is deleted and `old` is current again. False
    /// when `new` is no longer there unspent (nothing is undone then).
    pub async fn undo_rotation(&self, old: &str, new: &str) -> Result<bool, StoreError> {
        let mut tx = self.db().begin().await?;
        let removed = tx
            .execute(
                "DELETE FROM refresh_tokens WHERE token_hash = ?1 AND used_at IS NULL",
                params![hash_secret(new)],
            )
            .await?;
        if removed == 1 {
            tx.execute(
                "UPDATE refresh_tokens SET used_at = NULL WHERE token_hash = ?1",
                params![hash_secret(old)],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(removed == 1)
    }

    /// The family of a refresh token, if it is current (unspent, unexpired, family not revoked).
    pub async fn find_refresh_token(&self, token: &str) -> Result<Option<TokenFamily>, StoreError> {
        let now = now_ms();
        let rows = self
            .db()
            .conn()
            .await?
            .query(
                "SELECT f.data FROM refresh_tokens t JOIN token_families f ON f.family_id = t.family_id
                 WHERE t.token_hash = ?1 AND t.used_at IS NULL AND t.expires_at > ?2
                   AND f.revoked_at IS NULL AND f.expires_at > ?2",
                params![hash_secret(token), now],
            )
            .await?;
        rows.first().map(|r| from_json(&r.text(0)?)).transpose()
    }

    /// Revokes a token family (RFC 7009 revocation, code replay, reuse detection).
    pub async fn revoke_family(&self, family_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.db().begin().await?;
        let revoked = revoke_family(&mut tx, family_id, now_ms()).await?;
        tx.commit().await?;
        Ok(revoked)
    }

    /// Replaces a live family's data and end (a grant issued before grants outlived sessions,
    /// given its identity and the new lifetime at its first refresh since). False when the
    /// family is revoked or gone.
    pub async fn update_family(&self, family: &TokenFamily) -> Result<bool, StoreError> {
        let n = self
            .db()
            .conn()
            .await?
            .execute(
                "UPDATE token_families SET data = ?2, expires_at = ?3, user_id = ?4
                 WHERE family_id = ?1 AND revoked_at IS NULL",
                params![
                    &family.family_id,
                    to_json(family)?,
                    family.expires_at,
                    &family.user_id
                ],
            )
            .await?;
        Ok(n > 0)
    }

    /// The user's live client grants ("Connected apps"): not revoked, not expired, with an
    /// unspent, unexpired refresh token (an idle grant has none). Newest first.
    pub async fn user_grants(&self, user_id: &str) -> Result<Vec<Grant>, StoreError> {
        let now = now_ms();
        let rows = self
            .db()
            .conn()
            .await?
            .query(
                "SELECT f.data, f.last_used_at FROM token_families f
                 WHERE f.user_id = ?1 AND f.revoked_at IS NULL AND f.expires_at > ?2
                   AND EXISTS (SELECT 1 FROM refresh_tokens t WHERE t.family_id = f.family_id
                               AND t.used_at IS NULL AND t.expires_at > ?2)",
                params![user_id, now],
            )
            .await?;
        let mut grants = rows
            .iter()
            .map(|r| {
                let family: TokenFamily = from_json(&r.text(0)?)?;
                let last_used_at = r.opt_int(1)?.unwrap_or(family.created_at);
                Ok(Grant {
                    family,
                    last_used_at,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        grants.sort_by_key(|g| std::cmp::Reverse(g.family.created_at));
        Ok(grants)
    }

    /// Revokes one of the user's grants; false when the user has no such live grant (another
    /// user's family id revokes nothing).
    pub async fn revoke_user_grant(
        &self,
        user_id: &str,
        family_id: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.db().begin().await?;
        let owned = tx
            .query(
                "SELECT 1 FROM token_families WHERE family_id = ?1 AND user_id = ?2 AND revoked_at IS NULL",
                params![family_id, user_id],
            )
            .await?;
        if owned.is_empty() {
            tx.commit().await?;
            return Ok(false);
        }
        revoke_family(&mut tx, family_id, now_ms()).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Ends everything of a user ("sign out everywhere", `postern revoke-user`): every browser
    /// session and every client grant. Returns (sessions ended, grants revoked).
    pub async fn revoke_user(&self, user_id: &str) -> Result<(u64, u64), StoreError> {
        let now = now_ms();
        let mut tx = self.db().begin().await?;
        let sessions = end_sessions(&mut tx, "user_id", user_id).await?;
        let families = tx
            .query(
                "SELECT family_id FROM token_families WHERE user_id = ?1 AND revoked_at IS NULL",
                params![user_id],
            )
            .await?;
        for family in &families {
            revoke_family(&mut tx, &family.text(0)?, now).await?;
        }
        tx.commit().await?;
        Ok((sessions, families.len() as u64))
    }

    /// The user ids with a session or a grant under this email (case-insensitive), for
    /// operators who know users by email (`postern revoke-user`).
    pub async fn user_ids_by_email(&self, email: &str) -> Result<Vec<String>, StoreError> {
        let mut conn = self.db().conn().await?;
        let mut ids = std::collections::BTreeSet::new();
        let wanted = email.trim();
        for row in conn
            .query("SELECT user_id, data FROM sessions", params![])
            .await?
        {
            let session: Session = from_json(&row.text(1)?)?;
            if session.email.eq_ignore_ascii_case(wanted) {
                ids.insert(row.text(0)?);
            }
        }
        for row in conn
            .query(
                "SELECT data FROM token_families WHERE revoked_at IS NULL",
                &[],
            )
            .await?
        {
            let family: TokenFamily = from_json(&row.text(0)?)?;
            let matches = family
                .identity
                .as_ref()
                .is_some_and(|i| i.email.eq_ignore_ascii_case(wanted))
                // Local users' id is their email.
                || family.user_id.eq_ignore_ascii_case(wanted);
            if matches {
                ids.insert(family.user_id);
            }
        }
        Ok(ids.into_iter().collect())
    }

    /// Whether a family is revoked (or unknown, or expired).
    pub async fn family_is_active(&self, family_id: &str) -> Result<bool, StoreError> {
        let rows = self
            .db()
            .conn()
            .await?
            .query(
                "SELECT 1 FROM token_families WHERE family_id = ?1 AND revoked_at IS NULL AND expires_at > ?2",
                params![family_id, now_ms()],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Revocations (ended sessions, revoked families) recorded at or after `since_ms`, for
    /// caches that validate tokens without a store round-trip. Poll with an overlap: rows
    /// committed late may carry a slightly older time.
    pub async fn revocations_since(
        &self,
        since_ms: i64,
    ) -> Result<Vec<(Revocation, i64)>, StoreError> {
        let rows = self
            .db()
            .conn()
            .await?
            .query(
                "SELECT kind, id, revoked_at FROM revocations WHERE revoked_at >= ?1 ORDER BY revoked_at",
                params![since_ms],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let id = r.text(1)?;
                let revocation = match r.text(0)?.as_str() {
                    "session" => Revocation::Session(id),
                    _ => Revocation::Family(id),
                };
                Ok((revocation, r.int(2)?))
            })
            .collect()
    }

    // ---- consents --------------------------------------------------------------------------

    /// Remembers that `user_id` approved `client_id` for the MCP server `resource` (with
    /// `scope`). A consent is per server: allowing a client one server allows it no other.
    pub async fn put_consent(
        &self,
        user_id: &str,
        client_id: &str,
        resource: &str,
        scope: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.db()
            .conn()
            .await?
            .execute(
                "INSERT INTO consents (user_id, client_id, data, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user_id, client_id) DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at",
                params![user_id, consent_key(client_id, resource), scope, expires_at],
            )
            .await?;
        Ok(())
    }

    /// The scope `user_id` approved for `client_id` on `resource`, if they did.
    pub async fn get_consent(
        &self,
        user_id: &str,
        client_id: &str,
        resource: &str,
    ) -> Result<Option<String>, StoreError> {
        let rows = self
            .db()
            .conn()
            .await?
            .query(
                "SELECT data FROM consents WHERE user_id = ?1 AND client_id = ?2 AND expires_at > ?3",
                params![user_id, consent_key(client_id, resource), now_ms()],
            )
            .await?;
        rows.first().map(|r| r.text(0)).transpose()
    }

    // ---- keys ------------------------------------------------------------------------------

    /// The key stored under `name`, or `candidate` after storing it if there was none. Several
    /// replicas starting at once all end up with the same key.
    pub async fn get_or_insert_key(
        &self,
        name: &str,
        candidate: &str,
    ) -> Result<String, StoreError> {
        let context = format!("key|{name}");
        let sealed = self.inner.keys.seal(&context, candidate.as_bytes())?;
        let mut conn = self.db().conn().await?;
        conn.execute(
            "INSERT INTO keys (name, data, created_at) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO NOTHING",
            params![name, sealed, now_ms()],
        )
        .await?;
        let rows = conn
            .query("SELECT data FROM keys WHERE name = ?1", params![name])
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::Corrupt(format!("key {name} vanished")))?;
        let plain = self.inner.keys.open(&context, &row.text(0)?)?;
        String::from_utf8(plain).map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    /// The value stored under `name` (sealed at rest), if any.
    pub async fn get_key(&self, name: &str) -> Result<Option<String>, StoreError> {
        let context = format!("key|{name}");
        let mut conn = self.db().conn().await?;
        let rows = conn
            .query("SELECT data FROM keys WHERE name = ?1", params![name])
            .await?;
        match rows.first() {
            None => Ok(None),
            Some(row) => {
                let plain = self.inner.keys.open(&context, &row.text(0)?)?;
                String::from_utf8(plain)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))
            }
        }
    }

    /// Stores `value` under `name`, replacing what was there.
    pub async fn put_key(&self, name: &str, value: &str) -> Result<(), StoreError> {
        let context = format!("key|{name}");
        let sealed = self.inner.keys.seal(&context, value.as_bytes())?;
        let mut conn = self.db().conn().await?;
        conn.execute(
            "INSERT INTO keys (name, data, created_at) VALUES (?1, ?2, ?3) ON CONFLICT (name) DO UPDATE SET data = excluded.data, created_at = excluded.created_at",
            params![name, sealed, now_ms()],
        )
        .await?;
        Ok(())
    }

    /// Deletes what is stored under `name`; whether there was something.
    pub async fn delete_key(&self, name: &str) -> Result<bool, StoreError> {
        let mut conn = self.db().conn().await?;
        let n = conn
            .execute("DELETE FROM keys WHERE name = ?1", params![name])
            .await?;
        Ok(n > 0)
    }

    // ---- single-use ids ----------------------------------------------------------------------

    /// Marks `id` used until `expires_at` (ms); true for exactly one caller across all replicas
    /// while it is unexpired. The id is stored hashed.
    pub async fn use_once(&self, id: &str, expires_at: i64) -> Result<bool, StoreError> {
        let mut conn = self.db().conn().await?;
        // An expired row left for the collector may be taken over; a live one may not.
        let n = conn
            .execute(
                "INSERT INTO used_ids (id, expires_at) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at WHERE used_ids.expires_at <= ?3",
                params![hash_secret(id), expires_at, now_ms()],
            )
            .await?;
        Ok(n == 1)
    }

    // ---- expiry ----------------------------------------------------------------------------

    /// Deletes every expired row; returns how many.
    pub async fn collect_expired(&self) -> Result<u64, StoreError> {
        let now = now_ms();
        let mut tx = self.db().begin().await?;
        let mut total = 0;
        for table in [
            "sessions",
            "oauth_clients",
            "authorization_codes",
            "refresh_tokens",
            "token_families",
            "revocations",
            "upstream_tokens",
            "pending_authorizations",
            "consents",
            "used_ids",
            "idp_tokens",
        ] {
            total += tx
                .execute(
                    &format!("DELETE FROM {table} WHERE expires_at <= ?1"),
                    params![now],
                )
                .await?;
        }
        tx.commit().await?;
        Ok(total)
    }

    /// Collects expired rows every `interval` until `stop` is cancelled.
    pub fn spawn_collector(
        &self,
        interval: Duration,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(interval) => {}
                }
                match store.collect_expired().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(rows = n, "store: collected expired rows"),
                    Err(error) => tracing::warn!(%error, "store: collecting expired rows failed"),
                }
            }
        })
    }
}

/// How long a revocation row is kept: longer than any access token lives, so every cache sees it.
const REVOCATION_TTL_MS: i64 = 24 * 3600 * 1000;

async fn end_sessions(tx: &mut db::Conn<'_>, column: &str, value: &str) -> Result<u64, StoreError> {
    let now = now_ms();
    let ids = tx
        .query(
            &format!("DELETE FROM sessions WHERE {column} = ?1 RETURNING id"),
            params![value],
        )
        .await?;
    for row in &ids {
        record_revocation(tx, "session", &row.text(0)?, now).await?;
    }
    Ok(ids.len() as u64)
}

async fn revoke_family(
    tx: &mut db::Conn<'_>,
    family_id: &str,
    now: i64,
) -> Result<bool, StoreError> {
    let n = tx
        .execute(
            "UPDATE token_families SET revoked_at = ?2 WHERE family_id = ?1 AND revoked_at IS NULL",
            params![family_id, now],
        )
        .await?;
    tx.execute(
        "DELETE FROM refresh_tokens WHERE family_id = ?1",
        params![family_id],
    )
    .await?;
    record_revocation(tx, "family", family_id, now).await?;
    Ok(n > 0)
}

async fn record_revocation(
    tx: &mut db::Conn<'_>,
    kind: &str,
    id: &str,
    now: i64,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO revocations (kind, id, revoked_at, expires_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (kind, id) DO NOTHING",
        params![kind, id, now, now + REVOCATION_TTL_MS],
    )
    .await?;
    Ok(())
}

fn to_json<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn from_json<T: DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}
