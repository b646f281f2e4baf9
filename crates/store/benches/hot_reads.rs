//! The reads the gateway may do per request, on each backend: latency percentiles for one caller,
//! and throughput with 16 concurrent callers. Prints a table; asserts nothing.
//!
//! `cargo bench -p postern-store` (PostgreSQL too when `POSTERN_TEST_POSTGRES_URL` is set).
//! `BENCH_ITERATIONS` sets the samples per operation (default 2000).

use std::time::{Duration, Instant};

use postern_store::{Backend, OAuthClient, Session, Store, TokenFamily, UpstreamToken, now_ms};

const SECRET: &[u8] = b"bench-shared-secret-0123456789abcdef";
const USERS: usize = 1000;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let iterations: usize = std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let dir = tempfile::tempdir().unwrap();
    let mut backends = vec![("sqlite", Backend::Sqlite(dir.path().join("bench.db")))];
    match std::env::var("POSTERN_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => {
            let schema = format!("bench_{}", std::process::id());
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| {
                    panic!("POSTERN_TEST_POSTGRES_URL must be a reachable postgres:// URL: {e}")
                });
            tokio::spawn(conn);
            client
                .batch_execute(&format!("CREATE SCHEMA {schema}"))
                .await
                .unwrap();
            let sep = if url.contains('?') { '&' } else { '?' };
            backends.push((
                "postgres",
                Backend::Postgres(format!("{url}{sep}options=-c%20search_path%3D{schema}")),
            ));
        }
        _ => eprintln!("POSTERN_TEST_POSTGRES_URL not set: PostgreSQL not measured"),
    }

    println!("store hot reads: {iterations} samples per operation, {USERS} users seeded");
    println!(
        "{:<10} {:<28} {:>9} {:>9} {:>9} {:>9} {:>12}",
        "backend", "operation", "p50 µs", "p90 µs", "p99 µs", "mean µs", "16-way op/s"
    );
    for (name, backend) in backends {
        let store = Store::open(&backend, SECRET, &[]).await.unwrap();
        seed(&store).await;
        let ops: Vec<(&str, Op)> = vec![
            (
                "get_session",
                Box::new(|s: Store, i: usize| {
                    Box::pin(async move {
                        s.get_session(&format!("s{}", i % USERS)).await.unwrap();
                    })
                }),
            ),
            (
                "get_client",
                Box::new(|s: Store, i: usize| {
                    Box::pin(async move {
                        s.get_client(&format!("c{}", i % 10)).await.unwrap();
                    })
                }),
            ),
            (
                "get_upstream_token (TI)",
                Box::new(|s: Store, i: usize| {
                    Box::pin(async move {
                        s.get_upstream_token(&format!("u{}", i % USERS), "notion")
                            .await
                            .unwrap();
                    })
                }),
            ),
            (
                "family_is_active",
                Box::new(|s: Store, i: usize| {
                    Box::pin(async move {
                        s.family_is_active(&format!("f{}", i % USERS))
                            .await
                            .unwrap();
                    })
                }),
            ),
            (
                "revocations_since (poll)",
                Box::new(|s: Store, _| {
                    Box::pin(async move {
                        s.revocations_since(now_ms() - 5000).await.unwrap();
                    })
                }),
            ),
        ];
        for (label, op) in &ops {
            let mut samples = Vec::with_capacity(iterations);
            for i in 0..iterations {
                let started = Instant::now();
                op(store.clone(), i).await;
                samples.push(started.elapsed());
            }
            let throughput = concurrent(&store, op, iterations).await;
            let (p50, p90, p99, mean) = stats(&mut samples);
            println!(
                "{name:<10} {label:<28} {p50:>9.1} {p90:>9.1} {p99:>9.1} {mean:>9.1} {throughput:>12.0}"
            );
        }
    }
}

type Op = Box<
    dyn Fn(Store, usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

async fn concurrent(store: &Store, op: &Op, iterations: usize) -> f64 {
    let started = Instant::now();
    let per_task = iterations / 16;
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let futures: Vec<_> = (0..per_task)
                .map(|i| op(store.clone(), t * per_task + i))
                .collect();
            tokio::spawn(async move {
                for f in futures {
                    f.await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (per_task * 16) as f64 / started.elapsed().as_secs_f64()
}

fn stats(samples: &mut [Duration]) -> (f64, f64, f64, f64) {
    samples.sort();
    let at = |q: f64| {
        samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)].as_secs_f64() * 1e6
    };
    let mean = samples.iter().map(Duration::as_secs_f64).sum::<f64>() / samples.len() as f64 * 1e6;
    (at(0.5), at(0.9), at(0.99), mean)
}

async fn seed(store: &Store) {
    let now = now_ms();
    for i in 0..USERS {
        store
            .put_session(&Session {
                id: format!("s{i}"),
                user_id: format!("u{i}"),
                email: format!("u{i}@example.com"),
                name: format!("User {i}"),
                groups: vec!["staff".into()],
                claims: Default::default(),
                idp: "local".into(),
                created_at: now,
                expires_at: now + 3_600_000,
            })
            .await
            .unwrap();
        let token = UpstreamToken {
            access_token: format!("ti-{i}").into(),
            refresh_token: Some(format!("rt-{i}").into()),
            token_type: Some("Bearer".into()),
            expires_at: Some(now + 3_600_000),
            scope: None,
            token_endpoint: None,
            client_id: None,
        };
        store
            .put_upstream_token(&format!("u{i}"), "notion", &token, now + 3_600_000)
            .await
            .unwrap();
        let family = TokenFamily {
            family_id: format!("f{i}"),
            client_id: "c1".into(),
            user_id: format!("u{i}"),
            session_id: format!("s{i}"),
            resource: "https://mcp.example.com/".into(),
            scope: None,
            created_at: now,
            expires_at: now + 3_600_000,
            identity: None,
            client_name: None,
            redirect_uri: None,
        };
        store
            .create_family(&family, &format!("refresh-{i}"), now + 3_600_000)
            .await
            .unwrap();
    }
    for i in 0..10 {
        store
            .put_client(&OAuthClient {
                client_id: format!("c{i}"),
                metadata: serde_json::json!({"redirect_uris": ["http://127.0.0.1/cb"]}),
                secret: Some("s".into()),
                created_at: now,
                expires_at: now + 3_600_000,
            })
            .await
            .unwrap();
    }
}
