//! The store on a PostgreSQL server that goes away: stopped and started again, or failed over to
//! a promoted standby listed second in the connection string. Each test runs a private cluster
//! (postern_testkit::postgres): the machine's shared one must never be stopped.
//!
//! What must hold: while the server is gone (or frozen) every operation fails promptly with an error that
//! says PostgreSQL is unreachable and never shows the password; the pool recovers by itself
//! (no new `Store`); nothing written before is lost (sessions, clients, codes, refresh-token
//! families, upstream tokens).

use std::future::Future;
use std::time::{Duration, Instant};

use postern_store::*;
use postern_testkit::postgres::{Cluster, PASSWORD};

const SECRET: &[u8] = b"test-shared-secret-0123456789abcdef";
const HOUR: i64 = 3_600_000;

/// Some of everything the gateway keeps, under the suffix `n`.
async fn issue(s: &Store, n: &str) {
    s.put_session(&Session {
        id: format!("s-{n}"),
        user_id: "ada".into(),
        email: "ada@example.com".into(),
        name: "Ada".into(),
        groups: vec![],
        claims: Default::default(),
        idp: "local".into(),
        created_at: now_ms(),
        expires_at: now_ms() + HOUR,
    })
    .await
    .unwrap();
    s.put_client(&OAuthClient {
        client_id: format!("client-{n}"),
        metadata: serde_json::json!({"redirect_uris": ["http://127.0.0.1:4444/cb"]}),
        secret: None,
        created_at: now_ms(),
        expires_at: now_ms() + HOUR,
    })
    .await
    .unwrap();
    s.put_code(
        &format!("code-{n}"),
        &CodeGrant {
            client_id: format!("client-{n}"),
            redirect_uri: "http://127.0.0.1:4444/cb".into(),
            code_challenge: "challenge".into(),
            resource: "https://mcp.example.com/sqlite".into(),
            scope: None,
            user_id: "ada".into(),
            session_id: format!("s-{n}"),
            expires_at: now_ms() + HOUR,
        },
    )
    .await
    .unwrap();
    s.create_family(
        &TokenFamily {
            family_id: format!("family-{n}"),
            client_id: format!("client-{n}"),
            user_id: "ada".into(),
            session_id: format!("s-{n}"),
            resource: "https://mcp.example.com/sqlite".into(),
            scope: None,
            created_at: now_ms(),
            expires_at: now_ms() + HOUR,
            identity: None,
            client_name: None,
            redirect_uri: None,
        },
        &format!("rt-{n}"),
        now_ms() + HOUR,
    )
    .await
    .unwrap();
    s.put_upstream_token(
        "ada",
        &format!("notion-{n}"),
        &UpstreamToken {
            access_token: format!("ti-{n}").into(),
            refresh_token: Some(format!("ti-refresh-{n}").into()),
            token_type: Some("Bearer".into()),
            expires_at: Some(now_ms() + HOUR),
            scope: None,
            token_endpoint: None,
            client_id: None,
        },
        now_ms() + HOUR,
    )
    .await
    .unwrap();
}

/// Everything [`issue`] wrote under `n` is there, and usable once.
async fn still_there(s: &Store, n: &str) {
    assert!(
        s.get_session(&format!("s-{n}")).await.unwrap().is_some(),
        "session {n}"
    );
    assert!(
        s.get_client(&format!("client-{n}"))
            .await
            .unwrap()
            .is_some(),
        "client {n}"
    );
    let ti = s
        .get_upstream_token("ada", &format!("notion-{n}"))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("TI {n}"));
    assert_eq!(ti.token.access_token.expose(), format!("ti-{n}"));
    assert!(
        matches!(
            s.rotate_refresh_token(&format!("rt-{n}"), &format!("rt-{n}-2"), now_ms() + HOUR, Duration::ZERO)
                .await
                .unwrap(),
            Rotation::Rotated(ref f) if f.family_id == format!("family-{n}")
        ),
        "refresh token {n} rotates"
    );
    assert!(
        matches!(
            s.redeem_code(&format!("code-{n}"), &format!("family-{n}-2"))
                .await
                .unwrap(),
            Redemption::Redeemed(_)
        ),
        "code {n} redeems"
    );
}

/// `op` fails (not hangs: 30 s is far beyond any timeout of the pool) with a message that says
/// what is wrong and shows no password.
async fn fails_clearly<T: std::fmt::Debug>(
    what: &str,
    op: impl Future<Output = Result<T, StoreError>>,
) -> String {
    let result = tokio::time::timeout(Duration::from_secs(30), op)
        .await
        .unwrap_or_else(|_| panic!("{what}: hung with PostgreSQL down"));
    let error = result.expect_err(what).to_string();
    assert!(error.contains("PostgreSQL"), "{what}: {error}");
    assert!(
        !error.contains(PASSWORD),
        "{what} shows the password: {error}"
    );
    error
}

/// Polls `op` until it succeeds; how long that took (at most 60 s, or the test fails).
async fn recovers<T>(what: &str, mut op: impl AsyncFnMut() -> Result<T, StoreError>) -> Duration {
    let started = Instant::now();
    loop {
        match op().await {
            Ok(_) => return started.elapsed(),
            Err(_) if started.elapsed() < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what}: not recovered within 60 s: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_recovers_from_a_restart_and_nothing_is_lost() {
    let Some(pg) = Cluster::start() else { return };
    let store = Store::open(&Backend::Postgres(pg.url()), SECRET, &[])
        .await
        .unwrap();
    issue(&store, "before").await;

    pg.stop();
    let error = fails_clearly("a read", store.get_session("s-before")).await;
    fails_clearly("a write", store.put_key("k", "v")).await;
    fails_clearly("a transaction", store.redeem_code("code-before", "f")).await;
    println!("with PostgreSQL stopped the store says: {error}");

    pg.start_again();
    let took = recovers("a write after the restart", async || {
        store.put_key("k", "v").await
    })
    .await;
    println!("the pool took {took:?} to recover after PostgreSQL was back");
    still_there(&store, "before").await;
    issue(&store, "after").await;
    still_there(&store, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_fails_over_to_a_promoted_standby_and_never_writes_to_it_before() {
    let Some(a) = Cluster::start() else { return };
    let b = Cluster::replica_of(&a);
    for url in [
        // The URL form and the key=value form, both with several hosts.
        format!(
            "postgres://postern:{PASSWORD}@127.0.0.1:{},127.0.0.1:{}/postern?target_session_attrs=read-write",
            a.port(),
            b.port()
        ),
        format!(
            "host=127.0.0.1,127.0.0.1 port={},{} user=postern password='{PASSWORD}' dbname=postern target_session_attrs=read-write",
            a.port(),
            b.port()
        ),
    ] {
        let store = Store::open(&Backend::Postgres(url.clone()), SECRET, &[])
            .await
            .unwrap();
        let described = format!("{:?}", Backend::Postgres(url));
        assert!(!described.contains(PASSWORD), "{described}");
        store.put_key("form-checked", "yes").await.unwrap();
    }
    let store = Store::open(
        &Backend::Postgres(format!(
            "postgres://postern:{PASSWORD}@127.0.0.1:{},127.0.0.1:{}/postern?target_session_attrs=read-write",
            a.port(),
            b.port()
        )),
        SECRET,
        &[],
    )
    .await
    .unwrap();
    issue(&store, "before").await;
    // The standby has replayed everything written so far.
    let written = a.psql("SELECT pg_current_wal_lsn()").trim().to_owned();
    let started = Instant::now();
    while b
        .psql(&format!(
            "SELECT pg_last_wal_replay_lsn() >= '{written}'::pg_lsn"
        ))
        .trim()
        != "t"
    {
        assert!(started.elapsed() < Duration::from_secs(60), "standby lags");
        std::thread::sleep(Duration::from_millis(50));
    }

    a.stop();
    // B is up but read-only: the store must not take it for the primary.
    let error = fails_clearly(
        "a write while only a standby is up",
        store.put_key("k", "v"),
    )
    .await;
    println!("with the primary gone and the standby not promoted: {error}");
    fails_clearly("a read too", store.get_session("s-before")).await;
    assert_eq!(
        b.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'postern'")
            .trim(),
        "0",
        "no session of the gateway on the standby"
    );

    b.promote();
    let took = recovers("a write after the promotion", async || {
        store.put_key("k", "v").await
    })
    .await;
    println!("the store used the promoted standby {took:?} after the promotion");
    still_there(&store, "before").await;
    issue(&store, "after").await;
    still_there(&store, "after").await;
    drop(a);
}

/// A server that stops answering without closing anything (SIGSTOP: a paused VM, packets
/// silently dropped): operations fail after the statement time limit instead of hanging, the
/// silent connections are not handed out again, and all is well once it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_times_out_instead_of_hanging() {
    let Some(pg) = Cluster::start() else { return };
    let store = Store::open(&Backend::Postgres(pg.url()), SECRET, &[])
        .await
        .unwrap();
    issue(&store, "before").await;

    pg.freeze();
    let started = Instant::now();
    let error = fails_clearly("a read on a frozen server", store.get_session("s-before")).await;
    println!(
        "a frozen server: failed after {:?}: {error}",
        started.elapsed()
    );
    assert!(error.contains("did not answer"), "{error}");
    fails_clearly(
        "a transaction on a frozen server",
        store.redeem_code("code-before", "f"),
    )
    .await;
    pg.thaw();

    let took = recovers("a write after the thaw", async || {
        store.put_key("k", "v").await
    })
    .await;
    println!("recovered {took:?} after the thaw");
    still_there(&store, "before").await;
}
