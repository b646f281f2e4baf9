//! Upstream tokens (TI) per (user, route), pending upstream authorizations, and the refresh
//! coalescing the gateway relies on: providers such as Notion rotate refresh tokens, so two
//! refreshes with the same refresh token would leave the user disconnected. Within a process a
//! per-(user, route) mutex makes concurrent callers wait for one refresh; across replicas a
//! lease on the row does the same (the holder refreshes, the others wait for the new version, or
//! use the current one while it still works: a holder killed mid-refresh keeps its lease until it
//! lapses).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::db::params;
use crate::{
    PendingAuthorization, Store, StoreError, StoredUpstreamToken, UpstreamToken, hash_secret,
    now_ms,
};

/// How long a refresh lease lasts: longer than a provider call takes, short enough that a
/// crashed replica's lease soon lapses.
const LEASE: Duration = Duration::from_secs(30);

/// While another holder has the refresh lease, the current token is used if it still works for
/// this long (a request's time upstream), rather than waiting for the new one.
const STILL_VALID_FOR: Duration = Duration::from_secs(5);

/// How a refresh attempt ended.
pub enum RefreshOutcome {
    /// The provider issued a new token: store it.
    Refreshed(UpstreamToken),
    /// The provider refused the refresh token (4xx): forget the TI, the user must reconnect.
    Revoked,
}

/// Why [`Store::refresh_upstream_token`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError<E> {
    /// The provider could not be reached or failed (5xx); the stored token is unchanged.
    #[error("upstream refresh failed: {0}")]
    Upstream(E),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another replica held the refresh lease for longer than a lease lasts.
    #[error("timed out waiting for another gateway replica to refresh the upstream token")]
    LeaseTimeout,
    /// The refresh this caller waited for (another request's, in this process) failed: the
    /// failure is shared rather than tried again once per queued caller, which would make the
    /// last of N callers wait N provider timeouts.
    #[error("the upstream token refresh this request waited for failed")]
    SharedFailure,
}

/// One async lock per (user, route) with a refresh in flight; entries go when unused.
type LockMap = HashMap<(String, String), Weak<RefreshSlot>>;

/// The refresh lock of one (user, route), and how many refreshes under it failed: a caller
/// that sees the count change while it waited shares that failure.
#[derive(Default)]
struct RefreshSlot {
    lock: tokio::sync::Mutex<()>,
    failures: AtomicU64,
}

#[derive(Default)]
pub(crate) struct Locks(Mutex<LockMap>);

impl Locks {
    fn get(&self, user: &str, route: &str) -> Arc<RefreshSlot> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, weak| weak.strong_count() > 0);
        let key = (user.to_owned(), route.to_owned());
        if let Some(slot) = map.get(&key).and_then(Weak::upgrade) {
            return slot;
        }
        let slot = Arc::new(RefreshSlot::default());
        map.insert(key, Arc::downgrade(&slot));
        slot
    }
}

/// How long a TI read from the store is used without reading it again. Writes through this
/// process drop it at once; a write by another replica (a disconnect, a refresh) is seen within
/// this time, as a revocation is (`REVOCATION_POLL`). Saves a store read, a decryption and the
/// per-(user, route) lock on every proxied request (profile: the lock serialised one user's
/// concurrent calls behind the read).
const RECENT_FOR: Duration = Duration::from_secs(1);

/// TIs recently read from the store, by user and route.
#[derive(Default)]
pub(crate) struct Recent {
    tokens: Mutex<HashMap<String, HashMap<String, RecentToken>>>,
    /// Bumped by every write: a read that started before a write must not fill the cache
    /// after it (it could hold a token just deleted).
    writes: AtomicU64,
}

struct RecentToken {
    token: UpstreamToken,
    /// The row's `expires_at`: not used past it.
    expires_at: i64,
    read_at: Instant,
}

impl Recent {
    fn get(&self, user: &str, route: &str) -> Option<UpstreamToken> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let recent = tokens.get(user)?.get(route)?;
        (recent.read_at.elapsed() < RECENT_FOR && recent.expires_at > now_ms())
            .then(|| recent.token.clone())
    }

    /// The write count before a store read.
    fn before_read(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Keeps what a read that began at `writes` found, if nothing was written since.
    fn put(&self, writes: u64, user: &str, route: &str, token: &UpstreamToken, expires_at: i64) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if self.writes.load(Ordering::SeqCst) != writes {
            return;
        }
        // Bounded by the users and routes in use; entries of idle pairs go when the map grows.
        if tokens.len() > 10_000 {
            tokens.clear();
        }
        tokens.entry(user.to_owned()).or_default().insert(
            route.to_owned(),
            RecentToken {
                token: token.clone(),
                expires_at,
                read_at: Instant::now(),
            },
        );
    }

    /// Before and after a write of `user`'s TI for `route`: forget it, and stop reads in flight
    /// from putting it back.
    fn forget(&self, user: &str, route: &str) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        self.writes.fetch_add(1, Ordering::SeqCst);
        if let Some(routes) = tokens.get_mut(user) {
            routes.remove(route);
        }
    }
}

/// Drops a (user, route) TI from [`Recent`] now and again when the write is over (dropped),
/// so no read that overlapped the write keeps the old token.
struct Forget<'a>(&'a Store, &'a str, &'a str);

impl<'a> Forget<'a> {
    fn new(store: &'a Store, user: &'a str, route: &'a str) -> Self {
        store.inner.recent_upstream_tokens.forget(user, route);
        Self(store, user, route)
    }
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.inner.recent_upstream_tokens.forget(self.1, self.2);
    }
}

fn context(user: &str, route: &str) -> String {
    format!("upstream_token|{user}|{route}")
}

impl Store {
    /// The TI of `user_id` for `route_id`.
    pub async fn get_upstream_token(
        &self,
        user_id: &str,
        route_id: &str,
    ) -> Result<Option<StoredUpstreamToken>, StoreError> {
        Ok(self
            .read_upstream_token(user_id, route_id)
            .await?
            .map(|(token, _)| token))
    }

    /// The TI row of `user_id` for `route_id` and its `expires_at`.
    async fn read_upstream_token(
        &self,
        user_id: &str,
        route_id: &str,
    ) -> Result<Option<(StoredUpstreamToken, i64)>, StoreError> {
        let rows = self
            .db()
            .conn()
            .await?
            .query(
                "SELECT data, version, expires_at FROM upstream_tokens WHERE user_id = ?1 AND route_id = ?2 AND expires_at > ?3",
                params![user_id, route_id, now_ms()],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        Ok(Some((
            StoredUpstreamToken {
                token: self.unseal(&context(user_id, route_id), &row.text(0)?)?,
                version: row.int(1)?,
            },
            row.int(2)?,
        )))
    }

    /// Stores (replaces) the TI of `user_id` for `route_id`, kept until `expires_at`; returns
    /// the new version.
    pub async fn put_upstream_token(
        &self,
        user_id: &str,
        route_id: &str,
        token: &UpstreamToken,
        expires_at: i64,
    ) -> Result<i64, StoreError> {
        let sealed = self.seal(&context(user_id, route_id), token)?;
        let _forget = Forget::new(self, user_id, route_id);
        let rows = self
            .db()
            .conn()
            .await?
            .query(
                "INSERT INTO upstream_tokens (user_id, route_id, data, version, updated_at, expires_at)
                 VALUES (?1, ?2, ?3, 1, ?4, ?5)
                 ON CONFLICT (user_id, route_id) DO UPDATE SET data = excluded.data,
                    version = upstream_tokens.version + 1, updated_at = excluded.updated_at,
                    expires_at = excluded.expires_at, lease_owner = NULL, lease_until = NULL
                 RETURNING version",
                params![user_id, route_id, sealed, now_ms(), expires_at],
            )
            .await?;
        rows.first()
            .ok_or_else(|| StoreError::Corrupt("upsert returned no row".into()))?
            .int(0)
    }

    /// Forgets the TI of `user_id` for `route_id` (disconnect, or refused refresh).
    pub async fn delete_upstream_token(
        &self,
        user_id: &str,
        route_id: &str,
    ) -> Result<bool, StoreError> {
        let _forget = Forget::new(self, user_id, route_id);
        let n = self
            .db()
            .conn()
            .await?
            .execute(
                "DELETE FROM upstream_tokens WHERE user_id = ?1 AND route_id = ?2",
                params![user_id, route_id],
            )
            .await?;
        Ok(n > 0)
    }

    /// The current TI, refreshed first if `needs_refresh` says so. Concurrent callers for the
    /// same (user, route), in this process or in other replicas, share one call to `refresh`.
    /// `keep_for` is how long a refreshed token is kept. Returns `None` when there is no TI (or
    /// the provider refused the refresh and it was deleted).
    pub async fn refresh_upstream_token<E, F, Fut>(
        &self,
        user_id: &str,
        route_id: &str,
        needs_refresh: impl Fn(&UpstreamToken) -> bool,
        keep_for: Duration,
        refresh: F,
    ) -> Result<Option<UpstreamToken>, RefreshError<E>>
    where
        F: FnOnce(UpstreamToken) -> Fut,
        Fut: Future<Output = Result<RefreshOutcome, E>>,
    {
        let recent = &self.inner.recent_upstream_tokens;
        if let Some(token) = recent.get(user_id, route_id)
            && !needs_refresh(&token)
        {
            return Ok(Some(token));
        }
        let slot = self.inner.refresh_locks.get(user_id, route_id);
        let failures = slot.failures.load(Ordering::Acquire);
        let _local = slot.lock.lock().await;
        if slot.failures.load(Ordering::Acquire) != failures {
            // Unless another replica has refreshed it meanwhile.
            return match self.get_upstream_token(user_id, route_id).await? {
                Some(current) if !needs_refresh(&current.token) => Ok(Some(current.token)),
                _ => Err(RefreshError::SharedFailure),
            };
        }
        let waited_since = tokio::time::Instant::now();
        let mut refresh = Some(refresh);
        loop {
            let writes = recent.before_read();
            let Some((current, expires_at)) = self.read_upstream_token(user_id, route_id).await?
            else {
                return Ok(None);
            };
            if !needs_refresh(&current.token) {
                recent.put(writes, user_id, route_id, &current.token, expires_at);
                return Ok(Some(current.token));
            }
            let owner = self.keyring().random_token(12)?;
            // The lease is taken only on the version just read: if another replica refreshed
            // in between (and released its lease), this read is stale and the loop reads again.
            if self
                .try_lease(user_id, route_id, current.version, &owner)
                .await?
            {
                let refresh = refresh.take().expect("refresh runs at most once");
                return match refresh(current.token).await {
                    Ok(RefreshOutcome::Refreshed(token)) => {
                        self.finish_refresh(
                            user_id,
                            route_id,
                            &owner,
                            Some((&token, now_ms() + keep_for.as_millis() as i64)),
                        )
                        .await?;
                        Ok(Some(token))
                    }
                    Ok(RefreshOutcome::Revoked) => {
                        self.finish_refresh(user_id, route_id, &owner, None).await?;
                        Ok(None)
                    }
                    Err(error) => {
                        slot.failures.fetch_add(1, Ordering::Release);
                        self.release_lease(user_id, route_id, &owner).await?;
                        Err(RefreshError::Upstream(error))
                    }
                };
            }
            // Another replica is refreshing, or crashed while it did (its lease then lapses only
            // after LEASE). A token that still works is used meanwhile: waiting would stall the
            // user up to LEASE after a `kill -9` for nothing, and nothing is refreshed twice.
            if current
                .token
                .expires_at
                .is_some_and(|at| at > now_ms() + STILL_VALID_FOR.as_millis() as i64)
            {
                return Ok(Some(current.token));
            }
            // An expired token: wait for the other replica's result.
            if waited_since.elapsed() > LEASE {
                return Err(RefreshError::LeaseTimeout);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn try_lease(
        &self,
        user_id: &str,
        route_id: &str,
        version: i64,
        owner: &str,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let n = self
            .db()
            .conn()
            .await?
            .execute(
                "UPDATE upstream_tokens SET lease_owner = ?3, lease_until = ?4
                 WHERE user_id = ?1 AND route_id = ?2 AND version = ?6
                    AND (lease_until IS NULL OR lease_until < ?5)",
                params![
                    user_id,
                    route_id,
                    owner,
                    now + LEASE.as_millis() as i64,
                    now,
                    version
                ],
            )
            .await?;
        Ok(n == 1)
    }

    async fn finish_refresh(
        &self,
        user_id: &str,
        route_id: &str,
        owner: &str,
        new: Option<(&UpstreamToken, i64)>,
    ) -> Result<(), StoreError> {
        let _forget = Forget::new(self, user_id, route_id);
        let mut conn = self.db().conn().await?;
        match new {
            Some((token, expires_at)) => {
                let sealed = self.seal(&context(user_id, route_id), token)?;
                conn.execute(
                    "UPDATE upstream_tokens SET data = ?4, version = version + 1, updated_at = ?5, expires_at = ?6,
                        lease_owner = NULL, lease_until = NULL
                     WHERE user_id = ?1 AND route_id = ?2 AND lease_owner = ?3",
                    params![user_id, route_id, owner, sealed, now_ms(), expires_at],
                )
                .await?;
            }
            None => {
                conn.execute(
                    "DELETE FROM upstream_tokens WHERE user_id = ?1 AND route_id = ?2 AND lease_owner = ?3",
                    params![user_id, route_id, owner],
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn release_lease(
        &self,
        user_id: &str,
        route_id: &str,
        owner: &str,
    ) -> Result<(), StoreError> {
        self.db()
            .conn()
            .await?
            .execute(
                "UPDATE upstream_tokens SET lease_owner = NULL, lease_until = NULL
                 WHERE user_id = ?1 AND route_id = ?2 AND lease_owner = ?3",
                params![user_id, route_id, owner],
            )
            .await?;
        Ok(())
    }

    // ---- pending upstream authorizations ---------------------------------------------------------

    /// Stores a pending upstream authorization under its `state` (hashed); sealed.
    pub async fn put_pending(
        &self,
        state: &str,
        pending: &PendingAuthorization,
    ) -> Result<(), StoreError> {
        let hash = hash_secret(state);
        let sealed = self.seal(&format!("pending|{hash}"), pending)?;
        self.db()
            .conn()
            .await?
            .execute(
                "INSERT INTO pending_authorizations (state_hash, data, expires_at) VALUES (?1, ?2, ?3)",
                params![&hash, sealed, pending.expires_at],
            )
            .await?;
        Ok(())
    }

    /// Takes (single use) the pending authorization for `state`.
    pub async fn take_pending(
        &self,
        state: &str,
    ) -> Result<Option<PendingAuthorization>, StoreError> {
        let hash = hash_secret(state);
        let rows = self
            .db()
            .conn()
            .await?
            .query(
                "DELETE FROM pending_authorizations WHERE state_hash = ?1 AND expires_at > ?2 RETURNING data",
                params![&hash, now_ms()],
            )
            .await?;
        rows.first()
            .map(|r| self.unseal(&format!("pending|{hash}"), &r.text(0)?))
            .transpose()
    }
}
