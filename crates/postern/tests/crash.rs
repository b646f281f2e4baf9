//! `kill -9` of the gateway in the middle of an authorization-code redemption, a refresh-token
//! rotation and an upstream-token (TI) refresh, many times, on SQLite and on PostgreSQL; the
//! gateway is started again on the same store after each kill and the invariants are checked:
//!
//! - a code never gives two token sets (across the crash and the client's retry);
//! - a refresh-token family is never left half-rotated: the client's token works, or (when the
//!   rotation committed but its answer died with the process) the family stays live with the
//!   new token nobody saw and is not revoked by the client's retry within the reuse grace;
//! - a TI is never lost unless the provider had already rotated its refresh token into an answer
//!   that died with the process (no client can keep a token it never received: see
//!   `ti_refresh`), and a crashed replica's refresh lease does not stall the user.
//!
//! The kill lands at a random time over the operation's window (seeded: the seed is printed;
//! `POSTERN_CRASH_SEED` replays it). `POSTERN_CRASH_ITERATIONS` sets the kills per test (6).

mod support;

use std::time::{Duration, Instant};

use rand::Rng;
use support::{
    Replica, Storage, TokenOutcome, Upstream, authorize, browser, live_grants, ping, redeem,
    refresh, register, sign_in, sign_in_as,
};

/// The gateway's reuse grace (`refresh_reuse_grace`, 5 s): a spent refresh token presented
/// again within it is refused without revoking its family.
const REUSE_GRACE: Duration = Duration::from_secs(5);

fn mcp_route(upstream: &str) -> String {
    format!(
        "  - {{from: http://localhost, prefix: /mcp, to: '{upstream}/open', allow_any_authenticated_user: true, mcp: {{}}}}\n"
    )
}

fn ti_route(upstream: &str) -> String {
    format!(
        "  - from: http://localhost
    prefix: /notion
    to: '{upstream}/mcp'
    allow_any_authenticated_user: true
    mcp:
      upstream_oauth2:
        client_id: notion-client
        client_secret: notion-secret
        endpoint: {{auth_url: '{upstream}/authorize', token_url: '{upstream}/token', auth_style: params}}
"
    )
}

/// Sleeps a random time in `[0, window]`, then kills the gateway.
fn kill_within(gateway: &mut Replica, rng: &mut impl Rng, window: Duration) -> Duration {
    let delay = Duration::from_micros(rng.gen_range(0..=window.as_micros() as u64));
    std::thread::sleep(delay);
    gateway.kill9();
    delay
}

fn sqlite() -> (Storage, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (Storage::Sqlite(dir.path().join("data")), dir)
}

// ---- authorization codes --------------------------------------------------------------------

async fn code_redemption(storage: Storage, test: &str) {
    let mut rng = support::rng(test);
    let upstream = Upstream::default().serve(Duration::ZERO).await;
    let mut gateway = Replica::new(&storage, &mcp_route(&upstream)).await;
    let base = gateway.base();
    let browser = browser();
    assert_eq!(sign_in(&browser, &base).await, 303);
    let client = register(&base).await;
    let resource = format!("{base}/mcp");

    let code = authorize(&browser, &base, &client, &resource).await;
    let started = Instant::now();
    assert!(matches!(
        redeem(&base, &client, &code).await,
        TokenOutcome::Tokens { .. }
    ));
    let window = started.elapsed() * 2;
    let mut live = 1;
    let (mut before_answer, mut retried_ok, mut spent) = (0, 0, 0);
    for i in 0..support::iterations() {
        let code = authorize(&browser, &base, &client, &resource).await;
        let request = tokio::spawn({
            let (base, client, code) = (base.clone(), client.clone(), code.clone());
            async move { redeem(&base, &client, &code).await }
        });
        let delay = kill_within(&mut gateway, &mut rng, window);
        let first = request.await.unwrap();
        gateway.start().await;
        let retry = redeem(&base, &client, &code).await;
        let at = format!("kill {i} after {delay:?}: first {first:?}, retry {retry:?}");
        match (&first, &retry) {
            (TokenOutcome::Tokens { .. }, TokenOutcome::Tokens { .. }) => {
                panic!("a code gave two token sets: {at}")
            }
            // The client got its tokens before the kill: the retry is a replay, which revokes
            // them (RFC 6749 §4.1.2).
            (TokenOutcome::Tokens { refresh: rt, .. }, TokenOutcome::Refused(400, body)) => {
                assert!(body.contains("the tokens it gave were revoked"), "{at}");
                assert!(
                    matches!(
                        refresh(&base, &client, rt).await,
                        TokenOutcome::Refused(400, _)
                    ),
                    "the replayed code's tokens are revoked: {at}"
                );
                before_answer += 1;
            }
            // The first attempt died before it redeemed the code: the retry redeems it.
            (TokenOutcome::NoAnswer(_), TokenOutcome::Tokens { refresh: rt, .. }) => {
                assert!(
                    matches!(
                        refresh(&base, &client, rt).await,
                        TokenOutcome::Tokens { .. }
                    ),
                    "the retry's grant works: {at}"
                );
                live += 1;
                retried_ok += 1;
            }
            // The first attempt spent the code (and perhaps stored its family) before dying:
            // the code works no more, and what it may have issued is revoked.
            (TokenOutcome::NoAnswer(_), TokenOutcome::Refused(400, body)) => {
                assert!(body.contains("already used"), "{at}");
                spent += 1;
            }
            _ => panic!("unexpected: {at}"),
        }
        assert_eq!(
            live_grants(&browser, &base).await.len(),
            live,
            "no grant left behind that the client never got: {at}"
        );
    }
    eprintln!(
        "{test}: {} kills: answered before the kill {before_answer}, retried and redeemed {retried_ok}, spent by the killed attempt {spent}",
        support::iterations()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_code_redemption_never_spends_a_code_twice_sqlite() {
    let (storage, _dir) = sqlite();
    code_redemption(storage, "code_redemption_sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_code_redemption_never_spends_a_code_twice_postgres() {
    let Some(storage) = support::postgres().await else {
        return;
    };
    code_redemption(storage, "code_redemption_postgres").await;
}

// ---- refresh-token rotation -----------------------------------------------------------------

/// A new grant for the client (the client authorizes again): its refresh token.
async fn new_grant(browser: &reqwest::Client, base: &str, client: &str, resource: &str) -> String {
    let code = authorize(browser, base, client, resource).await;
    match redeem(base, client, &code).await {
        TokenOutcome::Tokens { refresh, .. } => refresh,
        other => panic!("a fresh code: {other:?}"),
    }
}

async fn refresh_rotation(storage: Storage, test: &str) {
    let mut rng = support::rng(test);
    let upstream = Upstream::default().serve(Duration::ZERO).await;
    let mut gateway = Replica::new(&storage, &mcp_route(&upstream)).await;
    let base = gateway.base();
    let browser = browser();
    assert_eq!(sign_in(&browser, &base).await, 303);
    let client = register(&base).await;
    let resource = format!("{base}/mcp");

    let mut rt = new_grant(&browser, &base, &client, &resource).await;
    let started = Instant::now();
    rt = match refresh(&base, &client, &rt).await {
        TokenOutcome::Tokens { refresh, .. } => refresh,
        other => panic!("{other:?}"),
    };
    let window = started.elapsed() * 2;
    let mut live = 1;
    let (mut answered, mut not_rotated, mut rotated_unseen) = (0, 0, 0);
    for i in 0..support::iterations() {
        let sent = Instant::now();
        let request = tokio::spawn({
            let (base, client, rt) = (base.clone(), client.clone(), rt.clone());
            async move { refresh(&base, &client, &rt).await }
        });
        let delay = kill_within(&mut gateway, &mut rng, window);
        let first = request.await.unwrap();
        gateway.start().await;
        let at = format!("kill {i} after {delay:?}: first {first:?}");
        match first {
            // The client saw the new token: it works (the rotation is whole).
            TokenOutcome::Tokens { refresh: new, .. } => {
                rt = match refresh(&base, &client, &new).await {
                    TokenOutcome::Tokens { refresh, .. } => refresh,
                    other => panic!("the token the client got works: {at}; then {other:?}"),
                };
                answered += 1;
            }
            TokenOutcome::NoAnswer(_) => {
                let retried = sent.elapsed();
                match refresh(&base, &client, &rt).await {
                    // Killed before the rotation committed: the old token is still current.
                    TokenOutcome::Tokens { refresh, .. } => {
                        rt = refresh;
                        not_rotated += 1;
                    }
                    // Killed after the rotation committed, before the answer: the old token is
                    // spent and the new one nobody saw is in the store, so the family is live
                    // (not half-rotated); within the grace the retry does not revoke it. The
                    // client can only authorize again (a lost answer is indistinguishable from a
                    // stolen token replayed later: RFC 9700 §4.14.2).
                    TokenOutcome::Refused(400, body)
                        if body.contains("just used by a concurrent request") =>
                    {
                        assert!(body.contains("authorize again"), "says what to do: {body}");
                        rotated_unseen += 1;
                        live += 1;
                        rt = new_grant(&browser, &base, &client, &resource).await;
                    }
                    TokenOutcome::Refused(400, body) if body.contains("revoked") => {
                        assert!(
                            retried > REUSE_GRACE,
                            "a retry {retried:?} after the request revoked the family: {at}: {body}"
                        );
                        rotated_unseen += 1;
                        rt = new_grant(&browser, &base, &client, &resource).await;
                    }
                    other => panic!("unexpected retry {other:?}: {at}"),
                }
            }
            other => panic!("unexpected first answer {other:?}: {at}"),
        }
        assert_eq!(
            live_grants(&browser, &base).await.len(),
            live,
            "every family has exactly one current token: {at}"
        );
    }
    eprintln!(
        "{test}: {} kills: answered before the kill {answered}, killed before the rotation {not_rotated}, rotated but unanswered {rotated_unseen}",
        support::iterations()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_refresh_rotation_leaves_no_family_half_rotated_sqlite() {
    let (storage, _dir) = sqlite();
    refresh_rotation(storage, "refresh_rotation_sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_refresh_rotation_leaves_no_family_half_rotated_postgres() {
    let Some(storage) = support::postgres().await else {
        return;
    };
    refresh_rotation(storage, "refresh_rotation_postgres").await;
}

// ---- upstream-token refresh -----------------------------------------------------------------

/// How slow the provider answers a refresh (it rotates as the request arrives, then waits).
const SLOW_PROVIDER: Duration = Duration::from_millis(300);

/// One user per kill (each (user, route) has its own TI and refresh lease). Each user connects
/// the fake provider; a call through the gateway refreshes the TI (its access token expires
/// within the refresh skew), and the gateway is killed during it. After the restart the user's
/// next call must be served at once (the crashed replica's lease must not stall it). Once every
/// lease has lapsed, each user's TI must work (kept or refreshed), unless the provider had
/// rotated that user's refresh token during the killed call: that answer died with the process,
/// so the gateway still holds the retired refresh token, the provider refuses it, and the user
/// is asked to connect again (a 401 that starts the client's flow). That loss is inherent to a
/// provider that retires a refresh token the moment it issues the next one; a provider with a
/// reuse grace longer than the lease lets the next refresh succeed.
async fn ti_refresh(storage: Storage, test: &str) {
    let mut rng = support::rng(test);
    let kills = support::iterations();
    let provider = Upstream::default();
    let upstream = provider.serve(SLOW_PROVIDER).await;
    let mut gateway = Replica::with_users(&storage, &ti_route(&upstream), kills + 1).await;
    let base = gateway.base();
    let resource = format!("{base}/notion");

    // Each user: signed in, connected, with a TE.
    let mut users = Vec::new();
    let client = register(&base).await;
    for i in 0..=kills {
        let browser = browser();
        assert_eq!(sign_in_as(&browser, &base, &support::email(i)).await, 303);
        let code = authorize(&browser, &base, &client, &resource).await;
        let te = match redeem(&base, &client, &code).await {
            TokenOutcome::Tokens { access, .. } => access,
            other => panic!("{other:?}"),
        };
        users.push(te);
    }
    let started = Instant::now();
    let (status, body) = ping(&base, "/notion", &users[kills]).await;
    assert_eq!(status, 200, "{body}");
    let window = SLOW_PROVIDER + started.elapsed().saturating_sub(SLOW_PROVIDER) * 2;

    let mut rotated_in_kill = Vec::new();
    for (i, te) in users.iter().take(kills).enumerate() {
        // A call that refreshes undisturbed first: the TI the gateway holds at the kill is fresh
        // (the provider's access tokens last 30 s, and the kills come minutes after connecting
        // in a long run). A TI whose access token has expired cannot be served while a dead
        // replica's lease holds; that call waits for the lease (30 s) instead.
        let (status, body) = ping(&base, "/notion", te).await;
        assert_eq!(status, 200, "user {i} before the kill: {body}");
        let rotations = provider.state.lock().unwrap().rotations[i];
        let call = tokio::spawn({
            let (base, te) = (base.clone(), te.clone());
            async move { ping(&base, "/notion", &te).await }
        });
        let delay = kill_within(&mut gateway, &mut rng, window);
        let first = call.await.unwrap();
        gateway.start().await;
        rotated_in_kill.push(provider.state.lock().unwrap().rotations[i] > rotations);
        let at = format!("kill {i} after {delay:?}: first {first:?}");
        let served = Instant::now();
        let (status, body) = ping(&base, "/notion", te).await;
        assert_eq!(
            status, 200,
            "the TI still works after the restart: {at}: {body}"
        );
        assert!(
            served.elapsed() < Duration::from_secs(10),
            "a crashed replica's refresh lease stalled the call for {:?}: {at}",
            served.elapsed()
        );
    }

    // Every lease has lapsed (30 s): each TI is refreshed again, with the refresh token the
    // gateway holds.
    let lapse = Instant::now() + Duration::from_secs(31);
    tokio::time::sleep_until(lapse.into()).await;
    let (mut kept, mut lost) = (0, 0);
    for (i, te) in users.iter().take(kills).enumerate() {
        let (status, body) = ping(&base, "/notion", te).await;
        let refused = provider.state.lock().unwrap().refused[i];
        match status {
            200 => kept += 1,
            401 => {
                assert!(
                    rotated_in_kill[i] && refused > 0,
                    "user {i}'s TI was lost though the provider never rotated it during the kill: {body}"
                );
                lost += 1;
            }
            _ => panic!("user {i}: {status} {body}"),
        }
    }
    eprintln!(
        "{test}: {kills} kills: TI kept or refreshed {kept}, refresh token rotated by the provider into an answer the killed gateway never read {lost}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_upstream_token_refresh_keeps_the_ti_sqlite() {
    let (storage, _dir) = sqlite();
    ti_refresh(storage, "ti_refresh_sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_upstream_token_refresh_keeps_the_ti_postgres() {
    let Some(storage) = support::postgres().await else {
        return;
    };
    ti_refresh(storage, "ti_refresh_postgres").await;
}
