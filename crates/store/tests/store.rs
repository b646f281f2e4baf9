//! One suite, run against every backend: SQLite (file), PostgreSQL (a real server), and where it
//! makes sense the in-memory store.

#[path = "support/backends.rs"]
mod backends;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use backends::TestStore;
use postern_store::*;

/// Generates one `#[tokio::test]` per case for a backend.
macro_rules! suite {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(test) = super::backends::$backend().await else { return };
                    super::$case(test).await;
                }
            )*
        }
    };
}

suite!(sqlite: sessions, idp_refresh_tokens_are_kept_sealed_for_the_sessions_life, session_end_keeps_grants, user_grants_and_revocation, idle_refresh_tokens_lapse, clients, codes_redeem_once, code_redemption_race,
    refresh_rotation_and_reuse, refresh_rotation_race, upstream_tokens, upstream_refresh_coalesces,
    upstream_refresh_never_uses_a_stale_read, upstream_token_reads_are_recent_and_never_outlive_a_write, upstream_refresh_failures, pending_authorizations, consents_and_keys, secrets_are_not_stored_in_clear,
    expired_rows_are_collected, two_instances_share_state, ids_are_used_once_across_instances,
    upstream_refresh_lease_of_a_crashed_replica);
suite!(postgres: sessions, idp_refresh_tokens_are_kept_sealed_for_the_sessions_life, session_end_keeps_grants, user_grants_and_revocation, idle_refresh_tokens_lapse, clients, codes_redeem_once, code_redemption_race,
    refresh_rotation_and_reuse, refresh_rotation_race, upstream_tokens, upstream_refresh_coalesces,
    upstream_refresh_never_uses_a_stale_read, upstream_token_reads_are_recent_and_never_outlive_a_write, upstream_refresh_failures, pending_authorizations, consents_and_keys, secrets_are_not_stored_in_clear,
    expired_rows_are_collected, two_instances_share_state, ids_are_used_once_across_instances,
    upstream_refresh_lease_of_a_crashed_replica);
suite!(memory: sessions, clients, codes_redeem_once, refresh_rotation_and_reuse, upstream_tokens);

const HOUR: i64 = 3600 * 1000;

fn session(id: &str, user: &str) -> Session {
    Session {
        id: id.into(),
        user_id: user.into(),
        email: format!("{user}@example.com"),
        name: user.into(),
        groups: vec!["staff".into()],
        claims: Default::default(),
        idp: "local".into(),
        created_at: now_ms(),
        expires_at: now_ms() + HOUR,
    }
}

fn family(id: &str, session_id: &str) -> TokenFamily {
    TokenFamily {
        family_id: id.into(),
        client_id: "client-1".into(),
        user_id: "ada".into(),
        session_id: session_id.into(),
        resource: "https://mcp.example.com/notion".into(),
        scope: None,
        created_at: now_ms(),
        expires_at: now_ms() + 24 * HOUR,
        identity: Some(GrantIdentity::of(&session(session_id, "ada"))),
        client_name: Some("Claude".into()),
        redirect_uri: Some("http://127.0.0.1:4444/callback".into()),
    }
}

fn grant() -> CodeGrant {
    CodeGrant {
        client_id: "client-1".into(),
        redirect_uri: "http://127.0.0.1:4444/callback".into(),
        code_challenge: "challenge".into(),
        resource: "https://mcp.example.com/notion".into(),
        scope: None,
        user_id: "ada".into(),
        session_id: "s1".into(),
        expires_at: now_ms() + 60_000,
    }
}

fn ti(access: &str) -> UpstreamToken {
    UpstreamToken {
        access_token: access.into(),
        refresh_token: Some(format!("refresh-of-{access}").into()),
        token_type: Some("Bearer".into()),
        expires_at: Some(now_ms() + HOUR),
        scope: None,
        token_endpoint: None,
        client_id: None,
    }
}

async fn sessions(t: TestStore) {
    let s = &t.store;
    let s1 = session("s1", "ada");
    s.put_session(&s1).await.unwrap();
    s.put_session(&session("s2", "ada")).await.unwrap();
    s.put_session(&session("s3", "grace")).await.unwrap();
    assert_eq!(s.get_session("s1").await.unwrap(), Some(s1));
    assert!(s.end_session("s1").await.unwrap());
    assert!(s.get_session("s1").await.unwrap().is_none());
    assert!(
        !s.end_session("s1").await.unwrap(),
        "ending twice reports nothing ended"
    );
    assert_eq!(s.end_user_sessions("ada").await.unwrap(), 1);
    assert!(s.get_session("s2").await.unwrap().is_none());
    assert!(
        s.get_session("s3").await.unwrap().is_some(),
        "other users keep their sessions"
    );

    let mut expired = session("old", "ada");
    expired.expires_at = now_ms() - 1;
    s.put_session(&expired).await.unwrap();
    assert!(
        s.get_session("old").await.unwrap().is_none(),
        "an expired session is not returned"
    );
}

async fn session_end_keeps_grants(t: TestStore) {
    let s = &t.store;
    s.put_session(&session("s1", "ada")).await.unwrap();
    s.create_family(&family("f1", "s1"), "rt-1", now_ms() + HOUR)
        .await
        .unwrap();
    let before = now_ms() - 1000;
    s.end_session("s1").await.unwrap();
    assert!(
        s.family_is_active("f1").await.unwrap(),
        "signing out of the browser leaves the client grant"
    );
    assert!(s.find_refresh_token("rt-1").await.unwrap().is_some());
    let revocations: Vec<Revocation> = s
        .revocations_since(before)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(revocations, vec![Revocation::Session("s1".into())]);
}

async fn user_grants_and_revocation(t: TestStore) {
    let s = &t.store;
    s.put_session(&session("s1", "ada")).await.unwrap();
    s.put_session(&session("s2", "ada")).await.unwrap();
    s.put_session(&session("g1", "grace")).await.unwrap();
    for (id, rt) in [("f1", "rt-1"), ("f2", "rt-2")] {
        s.create_family(&family(id, "s1"), rt, now_ms() + HOUR)
            .await
            .unwrap();
    }
    let mut graces = family("g-f1", "g1");
    graces.user_id = "grace".into();
    graces.identity = Some(GrantIdentity::of(&session("g1", "grace")));
    s.create_family(&graces, "rt-g", now_ms() + HOUR)
        .await
        .unwrap();
    let listed = s.user_grants("ada").await.unwrap();
    let mut ids: Vec<_> = listed.iter().map(|g| g.family.family_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["f1", "f2"]);
    assert_eq!(listed[0].family.client_name.as_deref(), Some("Claude"));
    let first_use = listed[0].last_used_at;

    // Rotation records the use.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(matches!(
        s.rotate_refresh_token("rt-1", "rt-1b", now_ms() + HOUR, Duration::from_secs(5))
            .await
            .unwrap(),
        Rotation::Rotated(_)
    ));
    let f1 = s
        .user_grants("ada")
        .await
        .unwrap()
        .into_iter()
        .find(|g| g.family.family_id == "f1")
        .unwrap();
    assert!(f1.last_used_at > first_use || listed[0].family.family_id != "f1");

    // Another user's grant is not revoked by naming it.
    assert!(!s.revoke_user_grant("ada", "g-f1").await.unwrap());
    assert!(s.family_is_active("g-f1").await.unwrap());
    let before = now_ms() - 1000;
    assert!(s.revoke_user_grant("ada", "f1").await.unwrap());
    assert!(!s.family_is_active("f1").await.unwrap());
    assert!(s.find_refresh_token("rt-1b").await.unwrap().is_none());
    assert!(
        s.revocations_since(before)
            .await
            .unwrap()
            .iter()
            .any(|(r, _)| *r == Revocation::Family("f1".into()))
    );
    assert_eq!(s.user_grants("ada").await.unwrap().len(), 1);

    assert_eq!(
        s.user_ids_by_email("ADA@example.com").await.unwrap(),
        ["ada"]
    );
    // Everything of the user ends; other users keep theirs.
    assert_eq!(s.revoke_user("ada").await.unwrap(), (2, 1));
    assert!(s.user_grants("ada").await.unwrap().is_empty());
    assert!(s.get_session("s2").await.unwrap().is_none());
    assert!(s.family_is_active("g-f1").await.unwrap());
    assert!(s.get_session("g1").await.unwrap().is_some());
}

async fn idp_refresh_tokens_are_kept_sealed_for_the_sessions_life(t: TestStore) {
    let s = &t.store;
    s.put_idp_refresh_token("s1", "idp-rt-secret", now_ms() + HOUR)
        .await
        .unwrap();
    s.put_idp_refresh_token("s-old", "idp-rt-old", now_ms() - 1)
        .await
        .unwrap();
    assert_eq!(
        s.idp_refresh_token("s1")
            .await
            .unwrap()
            .map(|t| t.expose().to_owned()),
        Some("idp-rt-secret".into())
    );
    assert!(
        s.idp_refresh_token("s-old").await.unwrap().is_none(),
        "expired"
    );
    assert!(s.idp_refresh_token("s2").await.unwrap().is_none());
    assert_eq!(s.collect_expired().await.unwrap(), 1);
}

async fn idle_refresh_tokens_lapse(t: TestStore) {
    let s = &t.store;
    s.create_family(&family("f1", "s1"), "rt-1", now_ms() + 300)
        .await
        .unwrap();
    assert_eq!(s.user_grants("ada").await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(s.find_refresh_token("rt-1").await.unwrap().is_none());
    assert_eq!(
        s.rotate_refresh_token("rt-1", "rt-2", now_ms() + HOUR, Duration::from_secs(5))
            .await
            .unwrap(),
        Rotation::Invalid,
        "an idle grant cannot be refreshed"
    );
    assert!(
        s.user_grants("ada").await.unwrap().is_empty(),
        "an idle grant is not listed"
    );

    // A rotation undone: the old token is current again, the new one gone.
    s.create_family(&family("f2", "s1"), "rt-a", now_ms() + HOUR)
        .await
        .unwrap();
    assert!(matches!(
        s.rotate_refresh_token("rt-a", "rt-b", now_ms() + HOUR, Duration::from_secs(5))
            .await
            .unwrap(),
        Rotation::Rotated(_)
    ));
    assert!(s.undo_rotation("rt-a", "rt-b").await.unwrap());
    assert!(s.find_refresh_token("rt-b").await.unwrap().is_none());
    assert!(s.find_refresh_token("rt-a").await.unwrap().is_some());
    assert!(
        !s.undo_rotation("rt-a", "rt-b").await.unwrap(),
        "nothing to undo twice"
    );
}

async fn clients(t: TestStore) {
    let s = &t.store;
    let client = OAuthClient {
        client_id: "client-1".into(),
        metadata: serde_json::json!({"redirect_uris": ["http://127.0.0.1/cb"], "client_name": "Test"}),
        secret: Some("client-secret-value".into()),
        created_at: now_ms(),
        expires_at: now_ms() + HOUR,
    };
    s.put_client(&client).await.unwrap();
    assert_eq!(
        s.get_client("client-1").await.unwrap(),
        Some(client.clone())
    );
    assert!(s.get_client("nope").await.unwrap().is_none());
    assert!(s.delete_client("client-1").await.unwrap());
    assert!(s.get_client("client-1").await.unwrap().is_none());
}

async fn codes_redeem_once(t: TestStore) {
    let s = &t.store;
    let g = grant();
    s.put_code("code-1", &g).await.unwrap();
    assert_eq!(
        s.code_client("code-1").await.unwrap(),
        Some(g.client_id.clone()),
        "looking at a code does not redeem it"
    );
    assert_eq!(
        s.redeem_code("code-1", "f1").await.unwrap(),
        Redemption::Redeemed(g)
    );
    assert_eq!(
        s.redeem_code("code-1", "f2").await.unwrap(),
        Redemption::Replayed {
            family_id: Some("f1".into())
        },
        "a replay names what the first redemption issued"
    );
    assert_eq!(
        s.redeem_code("unknown", "f3").await.unwrap(),
        Redemption::Invalid
    );
    assert_eq!(s.code_client("code-1").await.unwrap(), None, "redeemed");
    let mut expired = grant();
    expired.expires_at = now_ms() - 1;
    s.put_code("code-2", &expired).await.unwrap();
    assert_eq!(
        s.redeem_code("code-2", "f4").await.unwrap(),
        Redemption::Invalid
    );
}

async fn code_redemption_race(t: TestStore) {
    let other = t.another().await;
    t.store.put_code("raced", &grant()).await.unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let s = if i % 2 == 0 {
                t.store.clone()
            } else {
                other.clone()
            };
            tokio::spawn(async move {
                s.redeem_code("raced", &format!("family-{i}"))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let results = futures::future::join_all(tasks).await;
    let wins = results
        .iter()
        .filter(|r| matches!(r.as_ref().unwrap(), Redemption::Redeemed(_)))
        .count();
    assert_eq!(wins, 1, "exactly one redemption wins: {results:?}");
}

async fn ids_are_used_once_across_instances(t: TestStore) {
    let other = t.another().await;
    let until = now_ms() + HOUR;
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let s = if i % 2 == 0 {
                t.store.clone()
            } else {
                other.clone()
            };
            tokio::spawn(async move { s.use_once("client|jti-1", until).await.unwrap() })
        })
        .collect();
    let wins = futures::future::join_all(tasks)
        .await
        .into_iter()
        .filter(|won| *won.as_ref().unwrap())
        .count();
    assert_eq!(wins, 1, "exactly one use of an id wins");
    assert!(other.use_once("client|jti-2", until).await.unwrap());
    // Once its time is over, an id may be recorded again (the assertion carrying it has expired).
    assert!(t.store.use_once("client|old", now_ms() - 1).await.unwrap());
    assert!(other.use_once("client|old", until).await.unwrap());
    assert!(!t.store.use_once("client|old", until).await.unwrap());
}

async fn refresh_rotation_and_reuse(t: TestStore) {
    let s = &t.store;
    s.create_family(&family("f1", "s1"), "rt-1", now_ms() + HOUR)
        .await
        .unwrap();
    assert_eq!(
        s.find_refresh_token("rt-1")
            .await
            .unwrap()
            .unwrap()
            .family_id,
        "f1"
    );
    let r = s
        .rotate_refresh_token("rt-1", "rt-2", now_ms() + HOUR, Duration::ZERO)
        .await
        .unwrap();
    assert!(
        matches!(r, Rotation::Rotated(ref f) if f.family_id == "f1"),
        "{r:?}"
    );
    assert!(
        s.find_refresh_token("rt-1").await.unwrap().is_none(),
        "spent"
    );
    assert!(s.find_refresh_token("rt-2").await.unwrap().is_some());

    tokio::time::sleep(Duration::from_millis(5)).await;
    // The spent token presented again (an attacker replaying it): the whole family goes.
    let r = s
        .rotate_refresh_token("rt-1", "rt-x", now_ms() + HOUR, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        r,
        Rotation::Reused {
            family_id: "f1".into()
        }
    );
    assert!(!s.family_is_active("f1").await.unwrap());
    let r = s
        .rotate_refresh_token("rt-2", "rt-3", now_ms() + HOUR, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        r,
        Rotation::Invalid,
        "the legitimate holder's token died with the family"
    );
    assert_eq!(
        s.rotate_refresh_token("never-issued", "x", now_ms() + HOUR, Duration::ZERO)
            .await
            .unwrap(),
        Rotation::Invalid
    );

    // A code replayed before its family was created still leaves that family revoked.
    s.put_code("c", &grant()).await.unwrap();
    s.redeem_code("c", "f9").await.unwrap();
    if let Redemption::Replayed { family_id: Some(f) } = s.redeem_code("c", "other").await.unwrap()
    {
        s.revoke_family(&f).await.unwrap();
    }
    s.create_family(&family("f9", "s1"), "rt-9", now_ms() + HOUR)
        .await
        .unwrap();
    assert!(!s.family_is_active("f9").await.unwrap());
    assert!(s.find_refresh_token("rt-9").await.unwrap().is_none());
}

async fn refresh_rotation_race(t: TestStore) {
    let other = t.another().await;
    t.store
        .create_family(&family("f1", "s1"), "rt-1", now_ms() + HOUR)
        .await
        .unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let s = if i % 2 == 0 {
                t.store.clone()
            } else {
                other.clone()
            };
            tokio::spawn(async move {
                s.rotate_refresh_token(
                    "rt-1",
                    &format!("rt-new-{i}"),
                    now_ms() + HOUR,
                    Duration::from_secs(10),
                )
                .await
                .unwrap()
            })
        })
        .collect();
    let results: Vec<Rotation> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let wins = results
        .iter()
        .filter(|r| matches!(r, Rotation::Rotated(_)))
        .count();
    assert_eq!(wins, 1, "exactly one rotation wins: {results:?}");
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Rotation::Rotated(_) | Rotation::Concurrent)),
        "{results:?}"
    );
    assert!(
        t.store.family_is_active("f1").await.unwrap(),
        "concurrent losers within the grace period don't revoke"
    );
}

async fn upstream_tokens(t: TestStore) {
    let s = &t.store;
    assert!(
        s.get_upstream_token("ada", "notion")
            .await
            .unwrap()
            .is_none()
    );
    let v1 = s
        .put_upstream_token("ada", "notion", &ti("at-1"), now_ms() + HOUR)
        .await
        .unwrap();
    let at2 = ti("at-2");
    let v2 = s
        .put_upstream_token("ada", "notion", &at2, now_ms() + HOUR)
        .await
        .unwrap();
    assert!(v2 > v1);
    let got = s
        .get_upstream_token("ada", "notion")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((got.token, got.version), (at2, v2));
    assert!(
        s.get_upstream_token("grace", "notion")
            .await
            .unwrap()
            .is_none(),
        "per user"
    );
    assert!(
        s.get_upstream_token("ada", "github")
            .await
            .unwrap()
            .is_none(),
        "per route"
    );
    assert!(s.delete_upstream_token("ada", "notion").await.unwrap());
    assert!(
        s.get_upstream_token("ada", "notion")
            .await
            .unwrap()
            .is_none()
    );
}

async fn upstream_refresh_coalesces(t: TestStore) {
    let other = t.another().await;
    let mut stale = ti("at-old");
    stale.expires_at = Some(now_ms() - 1);
    t.store
        .put_upstream_token("ada", "notion", &stale, now_ms() + HOUR)
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let s = if i % 2 == 0 {
                t.store.clone()
            } else {
                other.clone()
            };
            let calls = calls.clone();
            tokio::spawn(async move {
                s.refresh_upstream_token(
                    "ada",
                    "notion",
                    |tok| tok.expires_at.is_some_and(|e| e < now_ms() + 60_000),
                    Duration::from_secs(3600),
                    |old| async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        assert_eq!(old.access_token.expose(), "at-old");
                        tokio::time::sleep(Duration::from_millis(100)).await; // a slow provider
                        Ok::<_, String>(RefreshOutcome::Refreshed(ti("at-new")))
                    },
                )
                .await
                .unwrap()
                .unwrap()
            })
        })
        .collect();
    for result in futures::future::join_all(tasks).await {
        assert_eq!(result.unwrap().access_token.expose(), "at-new");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one provider call for 20 concurrent requests on two instances"
    );
}

/// The interleaving behind a lost race: replica B reads the stale token, replica A refreshes
/// it and releases its lease, then B tries to lease. B must see that its read is stale and use
/// A's token, not call the provider with a refresh token A already spent.
async fn upstream_refresh_never_uses_a_stale_read(t: TestStore) {
    let other = t.another().await;
    let mut stale = ti("at-old");
    stale.expires_at = Some(now_ms() - 1);
    t.store
        .put_upstream_token("ada", "notion", &stale, now_ms() + HOUR)
        .await
        .unwrap();
    let expiring = |tok: &UpstreamToken| tok.expires_at.is_some_and(|e| e < now_ms() + 60_000);
    let (b_read, b_has_read) = std::sync::mpsc::channel::<()>();
    let b_read = std::sync::Mutex::new(b_read);
    let (a_finished, a_done) = std::sync::mpsc::channel::<()>();
    let a_done = std::sync::Mutex::new(a_done);
    let b_calls = Arc::new(AtomicUsize::new(0));
    let b = tokio::spawn({
        let b_calls = b_calls.clone();
        async move {
            let first = std::sync::atomic::AtomicBool::new(true);
            other
                .refresh_upstream_token(
                    "ada",
                    "notion",
                    |tok| {
                        // Between B's read and B's lease attempt, A does its whole refresh.
                        if first.swap(false, Ordering::SeqCst) {
                            b_read.lock().unwrap().send(()).unwrap();
                            a_done
                                .lock()
                                .unwrap()
                                .recv_timeout(Duration::from_secs(10))
                                .expect("A finished its refresh");
                        }
                        expiring(tok)
                    },
                    Duration::from_secs(3600),
                    |_old| async move {
                        b_calls.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, String>(RefreshOutcome::Refreshed(ti("at-from-b")))
                    },
                )
                .await
                .unwrap()
                .unwrap()
        }
    });
    tokio::task::spawn_blocking(move || b_has_read.recv_timeout(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("B read the token");
    let from_a = t
        .store
        .refresh_upstream_token(
            "ada",
            "notion",
            expiring,
            Duration::from_secs(3600),
            |_| async { Ok::<_, String>(RefreshOutcome::Refreshed(ti("at-from-a"))) },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from_a.access_token.expose(), "at-from-a");
    a_finished.send(()).unwrap();
    assert_eq!(b.await.unwrap().access_token.expose(), "at-from-a");
    assert_eq!(
        b_calls.load(Ordering::SeqCst),
        0,
        "B never called the provider"
    );
}

/// A replica killed while it refreshes keeps its lease until the lease lapses (30 s). Another
/// replica (or the same one restarted) serves the TI it has while that still works, at once and
/// without calling the provider (the dead replica may have spent the refresh token), instead of
/// stalling the user until the lease lapses.
async fn upstream_refresh_lease_of_a_crashed_replica(t: TestStore) {
    let mut expiring = ti("at-valid-for-30s");
    expiring.expires_at = Some(now_ms() + 30_000);
    t.store
        .put_upstream_token("ada", "notion", &expiring, now_ms() + HOUR)
        .await
        .unwrap();
    let within_skew = |tok: &UpstreamToken| tok.expires_at.is_some_and(|e| e < now_ms() + 60_000);
    // Replica A takes the lease and "dies" during the provider call (its task is dropped: no
    // release, as with kill -9).
    let (called, mut provider_called) = tokio::sync::mpsc::channel::<()>(1);
    let crashed = tokio::spawn({
        let store = t.store.clone();
        async move {
            store
                .refresh_upstream_token(
                    "ada",
                    "notion",
                    within_skew,
                    Duration::from_secs(60),
                    |_| async move {
                        called.send(()).await.unwrap();
                        std::future::pending::<Result<RefreshOutcome, String>>().await
                    },
                )
                .await
        }
    });
    provider_called.recv().await.unwrap();
    crashed.abort();
    let _ = crashed.await;

    let b = t.another().await;
    let started = std::time::Instant::now();
    let got = b
        .refresh_upstream_token(
            "ada",
            "notion",
            within_skew,
            Duration::from_secs(60),
            |_| async {
                Err::<RefreshOutcome, _>("the provider must not be called while A's lease holds")
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.access_token.expose(), "at-valid-for-30s");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "served at once, not after the lease: {:?}",
        started.elapsed()
    );
}

/// TIs read in the last second are used without a store read (`upstream::Recent`): a write
/// through the same store is seen at once (no request after a disconnect gets the old TI), a
/// write by another replica within a second or so, and a read that overlaps a delete never puts
/// the deleted token back.
async fn upstream_token_reads_are_recent_and_never_outlive_a_write(t: TestStore) {
    let other = t.another().await;
    let never = |_: &UpstreamToken| false;
    let current = |store: Store| async move {
        store
            .refresh_upstream_token(
                "ada",
                "notion",
                never,
                Duration::from_secs(3600),
                |_| async { Ok::<_, String>(RefreshOutcome::Revoked) },
            )
            .await
            .unwrap()
            .map(|token| token.access_token.expose().to_owned())
    };
    t.store
        .put_upstream_token("ada", "notion", &ti("at-1"), now_ms() + HOUR)
        .await
        .unwrap();
    assert_eq!(current(t.store.clone()).await.as_deref(), Some("at-1"));
    t.store
        .put_upstream_token("ada", "notion", &ti("at-2"), now_ms() + HOUR)
        .await
        .unwrap();
    assert_eq!(
        current(t.store.clone()).await.as_deref(),
        Some("at-2"),
        "a write here is seen at once"
    );
    assert!(
        t.store
            .delete_upstream_token("ada", "notion")
            .await
            .unwrap()
    );
    assert_eq!(
        current(t.store.clone()).await,
        None,
        "a disconnect here is seen at once"
    );
    // Another replica's disconnect: seen once the recent read lapses (a second), never later.
    t.store
        .put_upstream_token("ada", "notion", &ti("at-3"), now_ms() + HOUR)
        .await
        .unwrap();
    assert_eq!(current(t.store.clone()).await.as_deref(), Some("at-3"));
    assert!(other.delete_upstream_token("ada", "notion").await.unwrap());
    let deleted = std::time::Instant::now();
    while current(t.store.clone()).await.is_some() {
        assert!(
            deleted.elapsed() < Duration::from_secs(10),
            "another replica's disconnect was never seen"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Reads racing deletes: whatever interleaving, once the delete returns no read finds it.
    for round in 0..20 {
        t.store
            .put_upstream_token("ada", "notion", &ti("at-race"), now_ms() + HOUR)
            .await
            .unwrap();
        let readers: Vec<_> = (0..4)
            .map(|_| tokio::spawn(current(t.store.clone())))
            .collect();
        t.store
            .delete_upstream_token("ada", "notion")
            .await
            .unwrap();
        for reader in readers {
            reader.await.unwrap();
        }
        assert_eq!(current(t.store.clone()).await, None, "round {round}");
    }
}

async fn upstream_refresh_failures(t: TestStore) {
    let s = &t.store;
    let mut stale = ti("at-old");
    stale.expires_at = Some(now_ms() - 1);
    s.put_upstream_token("ada", "notion", &stale, now_ms() + HOUR)
        .await
        .unwrap();
    let expiring = |tok: &UpstreamToken| tok.expires_at.is_some_and(|e| e < now_ms());

    // A provider outage leaves the token in place and the lease released.
    let err = s
        .refresh_upstream_token(
            "ada",
            "notion",
            expiring,
            Duration::from_secs(60),
            |_| async { Err::<RefreshOutcome, _>("503") },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RefreshError::Upstream("503")), "{err}");
    assert!(
        s.get_upstream_token("ada", "notion")
            .await
            .unwrap()
            .is_some()
    );
    let again = s
        .refresh_upstream_token(
            "ada",
            "notion",
            expiring,
            Duration::from_secs(60),
            |_| async { Ok::<_, String>(RefreshOutcome::Refreshed(ti("at-2"))) },
        )
        .await
        .unwrap();
    assert_eq!(
        again.unwrap().access_token.expose(),
        "at-2",
        "the lease was released after the failure"
    );

    // The provider refuses the refresh token: the TI is forgotten.
    s.put_upstream_token("ada", "notion", &stale, now_ms() + HOUR)
        .await
        .unwrap();
    let gone = s
        .refresh_upstream_token(
            "ada",
            "notion",
            expiring,
            Duration::from_secs(60),
            |_| async { Ok::<_, String>(RefreshOutcome::Revoked) },
        )
        .await
        .unwrap();
    assert!(gone.is_none());
    assert!(
        s.get_upstream_token("ada", "notion")
            .await
            .unwrap()
            .is_none()
    );

    // Callers queued behind a refresh that fails share its failure: one call to the provider,
    // not one each after the other (with a provider that hangs, N timeouts for the last).
    s.put_upstream_token("ada", "notion", &stale, now_ms() + HOUR)
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let (store, calls) = (s.clone(), calls.clone());
            tokio::spawn(async move {
                store
                    .refresh_upstream_token(
                        "ada",
                        "notion",
                        |tok: &UpstreamToken| tok.expires_at.is_some_and(|e| e < now_ms()),
                        Duration::from_secs(60),
                        |_| async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            Err::<RefreshOutcome, _>("timed out")
                        },
                    )
                    .await
                    .map(|_| ())
            })
        })
        .collect();
    let mut errors = Vec::new();
    for call in waiting {
        errors.push(call.await.unwrap().unwrap_err().to_string());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "{errors:?}");
    assert_eq!(
        errors
            .iter()
            .filter(|e| e.contains("waited for failed"))
            .count(),
        3,
        "{errors:?}"
    );
    assert!(
        s.get_upstream_token("ada", "notion")
            .await
            .unwrap()
            .is_some(),
        "the TI is kept"
    );
}

async fn pending_authorizations(t: TestStore) {
    let s = &t.store;
    let pending = PendingAuthorization {
        user_id: "ada".into(),
        session_id: "s1".into(),
        route_id: "notion".into(),
        pkce_verifier: "verifier-secret".into(),
        resume: serde_json::json!({"client_id": "c"}),
        expires_at: now_ms() + 600_000,
    };
    s.put_pending("state-1", &pending).await.unwrap();
    assert_eq!(s.take_pending("state-1").await.unwrap(), Some(pending));
    assert_eq!(s.take_pending("state-1").await.unwrap(), None, "single use");
    assert_eq!(s.take_pending("other").await.unwrap(), None);
}

async fn consents_and_keys(t: TestStore) {
    let s = &t.store;
    let (db, notes) = ("https://gw/db", "https://gw/notes");
    assert!(s.get_consent("ada", "c1", db).await.unwrap().is_none());
    s.put_consent("ada", "c1", db, "mcp", now_ms() + HOUR)
        .await
        .unwrap();
    assert_eq!(
        s.get_consent("ada", "c1", db).await.unwrap().as_deref(),
        Some("mcp")
    );
    assert!(
        s.get_consent("ada", "c1", notes).await.unwrap().is_none(),
        "a consent for one server is no consent for another"
    );
    assert!(s.get_consent("grace", "c1", db).await.unwrap().is_none());

    let other = t.another().await;
    let (a, b) = tokio::join!(
        s.get_or_insert_key("signing", "-----KEY A-----"),
        other.get_or_insert_key("signing", "-----KEY B-----")
    );
    assert_eq!(
        a.unwrap(),
        b.unwrap(),
        "two replicas starting at once agree on one key"
    );
    assert_eq!(
        s.get_or_insert_key("signing", "-----KEY C-----")
            .await
            .unwrap(),
        other.get_or_insert_key("signing", "x").await.unwrap()
    );

    // Replaceable values (discovered upstream clients): one replica's write, the other's read.
    assert_eq!(s.get_key("discovery|a").await.unwrap(), None);
    s.put_key("discovery|a", "{\"v\":1}").await.unwrap();
    s.put_key("discovery|a", "{\"v\":2}").await.unwrap();
    assert_eq!(
        other.get_key("discovery|a").await.unwrap().as_deref(),
        Some("{\"v\":2}")
    );
    assert!(other.delete_key("discovery|a").await.unwrap());
    assert!(!s.delete_key("discovery|a").await.unwrap());
    assert_eq!(s.get_key("discovery|a").await.unwrap(), None);
}

async fn secrets_are_not_stored_in_clear(t: TestStore) {
    let s = &t.store;
    s.put_client(&OAuthClient {
        client_id: "c".into(),
        metadata: serde_json::json!({}),
        secret: Some("SECRET-client-secret".into()),
        created_at: now_ms(),
        expires_at: now_ms() + HOUR,
    })
    .await
    .unwrap();
    s.put_code("SECRET-code", &grant()).await.unwrap();
    s.create_family(&family("f1", "s1"), "SECRET-refresh", now_ms() + HOUR)
        .await
        .unwrap();
    s.put_upstream_token("ada", "notion", &ti("SECRET-ti"), now_ms() + HOUR)
        .await
        .unwrap();
    s.put_pending(
        "SECRET-state",
        &PendingAuthorization {
            user_id: "ada".into(),
            session_id: "s1".into(),
            route_id: "r".into(),
            pkce_verifier: "SECRET-verifier".into(),
            resume: serde_json::Value::Null,
            expires_at: now_ms() + HOUR,
        },
    )
    .await
    .unwrap();
    s.get_or_insert_key("signing", "SECRET-private-key")
        .await
        .unwrap();
    s.put_idp_refresh_token("s1", "SECRET-idp-refresh", now_ms() + HOUR)
        .await
        .unwrap();
    let dump = backends::dump(&t).await;
    assert!(dump.contains("notion"), "the dump sees the rows");
    assert!(!dump.contains("SECRET"), "a secret is stored in clear");
}

async fn expired_rows_are_collected(t: TestStore) {
    let s = &t.store;
    let mut old = session("old", "ada");
    old.expires_at = now_ms() - 1;
    s.put_session(&old).await.unwrap();
    s.put_session(&session("new", "ada")).await.unwrap();
    s.put_upstream_token("ada", "old", &ti("x"), now_ms() - 1)
        .await
        .unwrap();
    let mut code = grant();
    code.expires_at = now_ms() - 1;
    s.put_code("old-code", &code).await.unwrap();
    assert!(s.use_once("old-id", now_ms() - 1).await.unwrap());
    assert!(s.use_once("live-id", now_ms() + HOUR).await.unwrap());
    assert_eq!(s.collect_expired().await.unwrap(), 4);
    assert!(s.get_session("new").await.unwrap().is_some());
    assert_eq!(s.collect_expired().await.unwrap(), 0);
}

async fn two_instances_share_state(t: TestStore) {
    let other = t.another().await;
    t.store.put_session(&session("s1", "ada")).await.unwrap();
    assert!(
        other.get_session("s1").await.unwrap().is_some(),
        "B sees A's session"
    );
    other
        .put_upstream_token("ada", "notion", &ti("at"), now_ms() + HOUR)
        .await
        .unwrap();
    assert_eq!(
        t.store
            .get_upstream_token("ada", "notion")
            .await
            .unwrap()
            .unwrap()
            .token
            .access_token
            .expose(),
        "at"
    );
    other.end_session("s1").await.unwrap();
    assert!(
        t.store.get_session("s1").await.unwrap().is_none(),
        "sign-out on B ends the session on A"
    );
}

// ---------------------------------------------------------------------------------------------
// Durability and start-up errors

/// Runs in a child process (see `kill_9`): commits writes, says so, then waits to be killed.
#[tokio::test]
#[ignore = "run by the kill -9 tests in a child process"]
async fn child_writer() {
    let Ok(spec) = std::env::var("POSTERN_KILL_TEST_BACKEND") else {
        return;
    };
    let backend = match spec.split_once(':') {
        Some(("sqlite", path)) => Backend::Sqlite(path.into()),
        Some(("postgres", url)) => Backend::Postgres(url.into()),
        _ => panic!("bad POSTERN_KILL_TEST_BACKEND"),
    };
    let store = Store::open(&backend, backends::SECRET, &[]).await.unwrap();
    store
        .put_session(&session("survivor", "ada"))
        .await
        .unwrap();
    store
        .put_upstream_token("ada", "notion", &ti("kept-through-kill"), now_ms() + HOUR)
        .await
        .unwrap();
    println!("COMMITTED");
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    tokio::time::sleep(Duration::from_secs(120)).await;
}

async fn kill_9(spec: String, backend: Backend) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "child_writer",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("POSTERN_KILL_TEST_BACKEND", spec)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let committed = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("COMMITTED"))
    })
    .await
    .unwrap();
    assert!(committed, "the child never reported its commit");
    child.kill().unwrap(); // SIGKILL: no destructor, no flush, no clean close
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child was killed, not finished");

    let store = Store::open(&backend, backends::SECRET, &[]).await.unwrap();
    assert!(
        store.get_session("survivor").await.unwrap().is_some(),
        "the committed session survived kill -9"
    );
    let ti = store
        .get_upstream_token("ada", "notion")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ti.token.access_token.expose(), "kept-through-kill");
}

/// The database and its WAL files hold sessions and sealed secrets: only the gateway's user may
/// read them (issue 11: they were created world-readable, 0644 under the usual umask).
#[cfg(unix)]
#[tokio::test]
async fn the_sqlite_files_are_readable_by_the_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let t = backends::sqlite().await.unwrap();
    t.store.put_session(&session("s1", "u1")).await.unwrap();
    let Backend::Sqlite(path) = &t.backend else {
        unreachable!()
    };
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{}{suffix}", path.display());
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{file}: {mode:o}");
    }
}

#[tokio::test]
async fn sqlite_committed_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("postern.db");
    kill_9(format!("sqlite:{}", path.display()), Backend::Sqlite(path)).await;
}

#[tokio::test]
async fn postgres_committed_writes_survive_kill_9() {
    let Some(url) = backends::postgres_url() else {
        return;
    };
    let schema = backends::fresh_schema(&url).await;
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}options=-c%20search_path%3D{schema}");
    kill_9(format!("postgres:{url}"), Backend::Postgres(url)).await;
}

#[tokio::test]
async fn a_corrupt_sqlite_file_is_a_clear_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("postern.db");
    std::fs::write(&path, vec![b'x'; 8192]).unwrap();
    let err = Store::open(&Backend::Sqlite(path.clone()), backends::SECRET, &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&path.display().to_string()) && err.contains("not a database"),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_postgres_names_the_target_without_the_password() {
    let url = "postgres://postern:hunter2-secret@127.0.0.1:1/postern";
    let err = Store::open(&Backend::Postgres(url.into()), backends::SECRET, &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("127.0.0.1:1") && err.contains("PostgreSQL"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "the password leaked: {err}");
    assert!(!format!("{:?}", Backend::Postgres(url.into())).contains("hunter2"));
}

#[tokio::test]
async fn a_wrong_postgres_password_is_reported_without_the_password() {
    let Some(url) = backends::postgres_url() else {
        return;
    };
    let mut parsed = url::Url::parse(&url).unwrap();
    parsed.set_password(Some("wrong-pass-xyz")).unwrap();
    let err = Store::open(
        &Backend::Postgres(parsed.to_string()),
        backends::SECRET,
        &[],
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(!err.contains("wrong-pass-xyz"), "{err}");
}

#[tokio::test]
async fn a_newer_schema_is_refused_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::Sqlite(dir.path().join("postern.db"));
    Store::open(&backend, backends::SECRET, &[]).await.unwrap();
    Store::open(&backend, backends::SECRET, &[])
        .await
        .expect("reopening applies nothing twice");
    let Backend::Sqlite(path) = &backend else {
        unreachable!()
    };
    rusqlite::Connection::open(path)
        .unwrap()
        .execute("INSERT INTO schema_migrations VALUES (999, 0)", [])
        .unwrap();
    let err = Store::open(&backend, backends::SECRET, &[])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("newer than this Postern"), "{err}");
}

#[tokio::test]
async fn a_rotated_shared_secret_needs_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::Sqlite(dir.path().join("postern.db"));
    let old = Store::open(&backend, backends::SECRET, &[]).await.unwrap();
    old.put_upstream_token("ada", "notion", &ti("at"), now_ms() + HOUR)
        .await
        .unwrap();
    let new_secret = b"a-brand-new-shared-secret-0123456789";
    let rotated = Store::open(&backend, new_secret, &[backends::SECRET.to_vec()])
        .await
        .unwrap();
    assert_eq!(
        rotated
            .get_upstream_token("ada", "notion")
            .await
            .unwrap()
            .unwrap()
            .token
            .access_token
            .expose(),
        "at"
    );
    let forgot = Store::open(&backend, new_secret, &[]).await.unwrap();
    let err = forgot
        .get_upstream_token("ada", "notion")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not configured"), "{err}");
}

/// A database made before migration 3 (grants tied to sessions): its families get their user
/// and keep refreshing.
#[tokio::test]
async fn grants_from_before_migration_3_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::Sqlite(dir.path().join("postern.db"));
    let store = Store::open(&backend, backends::SECRET, &[]).await.unwrap();
    drop(store);
    let Backend::Sqlite(path) = &backend else {
        unreachable!()
    };
    // Back to version 2, with a family as version 2 stored it (no identity, no user column).
    let old_family = serde_json::json!({
        "family_id": "f-old", "client_id": "client-1", "user_id": "ada", "session_id": "s1",
        "resource": "https://mcp.example.com/notion", "created_at": now_ms(), "expires_at": now_ms() + HOUR,
    });
    let db = rusqlite::Connection::open(path).unwrap();
    db.execute_batch(
        "DROP INDEX token_families_by_user;
         DROP TABLE idp_tokens;
         ALTER TABLE token_families DROP COLUMN user_id;
         ALTER TABLE token_families DROP COLUMN last_used_at;
         DELETE FROM schema_migrations WHERE version = 3;",
    )
    .unwrap();
    db.execute(
        "INSERT INTO token_families (family_id, session_id, data, expires_at) VALUES ('f-old', 's1', ?1, ?2)",
        rusqlite::params![old_family.to_string(), now_ms() + HOUR],
    )
    .unwrap();
    db.execute(
        "INSERT INTO refresh_tokens (token_hash, family_id, expires_at) VALUES (?1, 'f-old', ?2)",
        rusqlite::params![hash_secret("rt-old"), now_ms() + HOUR],
    )
    .unwrap();
    drop(db);

    let store = Store::open(&backend, backends::SECRET, &[]).await.unwrap();
    let found = store.find_refresh_token("rt-old").await.unwrap().unwrap();
    assert_eq!(
        found.identity, None,
        "an old grant says it has no identity yet"
    );
    let grants = store.user_grants("ada").await.unwrap();
    assert_eq!(grants.len(), 1, "the old grant is listed under its user");
    assert_eq!(grants[0].last_used_at, grants[0].family.created_at);
    assert!(matches!(
        store
            .rotate_refresh_token("rt-old", "rt-new", now_ms() + HOUR, Duration::from_secs(5))
            .await
            .unwrap(),
        Rotation::Rotated(_)
    ));
    assert_eq!(store.revoke_user("ada").await.unwrap(), (0, 1));
}

/// Property (issue 17, hostile input): a refresh token is found only as issued; one with a bit
/// flipped, a character changed, cut short or extended, or in another case, finds nothing.
#[test]
fn refresh_tokens_are_found_only_as_issued() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let test = runtime.block_on(backends::memory()).unwrap();
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    let mut runner = TestRunner::new(Config::with_cases(cases));
    let issued = AtomicUsize::new(0);
    let strategy = (
        "pst_rt_[A-Za-z0-9_-]{43}",
        0..5u8,
        any::<prop::sample::Index>(),
        0..8u8,
    );
    runner
        .run(&strategy, |(token, how, at, bit)| {
            let n = issued.fetch_add(1, Ordering::Relaxed);
            let s = &test.store;
            let mut bytes = token.clone().into_bytes();
            let i = at.index(bytes.len());
            match how {
                0 => bytes[i] ^= 1 << bit,
                1 => bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' },
                2 => bytes.truncate(i),
                3 => bytes.push(b'A'),
                _ => bytes.make_ascii_uppercase(),
            }
            let altered = String::from_utf8(bytes).ok().filter(|a| *a != token);
            runtime.block_on(async {
                let family_id = format!("f-prop-{n}");
                s.create_family(&family(&family_id, "s1"), &token, now_ms() + HOUR)
                    .await
                    .unwrap();
                let found = s.find_refresh_token(&token).await.unwrap();
                prop_assert_eq!(found.map(|f| f.family_id), Some(family_id));
                if let Some(altered) = altered {
                    prop_assert!(
                        s.find_refresh_token(&altered).await.unwrap().is_none(),
                        "{} found as {}",
                        token,
                        altered
                    );
                }
                Ok(())
            })
        })
        .unwrap();
}

/// A PostgreSQL database that refuses writes (a standby reached after a failover, or a database
/// set read-only) is named as such, with what to do: here at start (the migrations write), and
/// with the same `StoreError::ReadOnly` for a write while serving.
#[tokio::test]
async fn postgres_refusing_writes_is_named_as_such() {
    let Some(t) = backends::postgres().await else {
        return;
    };
    let Backend::Postgres(url) = &t.backend else {
        unreachable!()
    };
    let Err(error) = Store::open(
        &Backend::Postgres(format!("{url}%20-c%20default_transaction_read_only%3Don")),
        backends::SECRET,
        &[],
    )
    .await
    else {
        panic!("a read-only database refuses the migrations");
    };
    let text = error.to_string();
    assert!(
        text.contains("the database refuses writes")
            && text.contains("target_session_attrs=read-write")
            && !text.contains(":postern@"),
        "{text}"
    );
}
