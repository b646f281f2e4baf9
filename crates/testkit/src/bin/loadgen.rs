//! A small load generator for the benchmark (bench/run.sh), on loopback only.
//!
//! `loadgen post URL CONCURRENCY SECONDS BODY_JSON [HEADER:VALUE]`: each of CONCURRENCY workers keeps one
//! HTTP/1.1 connection and sends POST requests back to back for SECONDS; prints one JSON line
//! with the count, errors, throughput and latency percentiles (µs). A BODY_JSON of `@FILE`
//! sends that file's content (bodies larger than a command-line argument may be).
//!
//! `loadgen refresh TOKEN_URL CLIENT_ID SECONDS REFRESH_TOKEN...`: one worker per refresh
//! token follows its rotation chain (each response's `refresh_token` is the next request's) for
//! SECONDS, sequentially per chain; prints the same JSON line (tokens issued, latencies).
//!
//! `loadgen streams URL COUNT SECONDS`: opens COUNT streaming GETs, holds them SECONDS, prints
//! how many were open at the end. Stops by itself in both modes.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("post") if args.len() == 5 || args.len() == 6 => {
            let header = args
                .get(5)
                .and_then(|h| h.split_once(':'))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()));
            post(
                &args[1],
                args[2].parse().expect("concurrency"),
                args[3].parse().expect("seconds"),
                body_arg(&args[4]),
                header,
            )
            .await
        }
        Some("streams") if args.len() == 4 => {
            streams(
                &args[1],
                args[2].parse().expect("count"),
                args[3].parse().expect("seconds"),
            )
            .await
        }
        Some("refresh") if args.len() >= 5 => {
            refresh(
                &args[1],
                &args[2],
                args[3].parse().expect("seconds"),
                args[4..].to_vec(),
            )
            .await
        }
        _ => {
            eprintln!(
                "usage: loadgen post URL CONCURRENCY SECONDS BODY|@FILE [HEADER:VALUE] | loadgen streams URL COUNT SECONDS | loadgen refresh TOKEN_URL CLIENT_ID SECONDS REFRESH_TOKEN..."
            );
            std::process::exit(2);
        }
    }
}

async fn post(
    url: &str,
    concurrency: usize,
    seconds: u64,
    body: String,
    header: Option<(String, String)>,
) {
    assert!(
        url.starts_with("http://127.0.0.1") || url.starts_with("http://localhost"),
        "loopback only"
    );
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let url: hyper::Uri = url.parse().expect("URL");
            let body = Bytes::from(body.clone());
            let header = header.clone();
            tokio::spawn(async move {
                // One connection per worker, like a client with keep-alive.
                let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
                    .pool_max_idle_per_host(1)
                    .build_http();
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let mut request = hyper::Request::post(url.clone());
                    if let Some((name, value)) = &header {
                        request = request.header(name.as_str(), value.as_str());
                    }
                    let request = request
                        .header("content-type", "application/json")
                        .header("accept", "application/json, text/event-stream")
                        .header("mcp-protocol-version", "2025-06-18")
                        .body(Full::new(body.clone()))
                        .expect("request");
                    let started = Instant::now();
                    match client.request(request).await {
                        Ok(response) => {
                            let ok = response.status().is_success();
                            let _ = response.into_body().collect().await;
                            if ok {
                                latencies.push(started.elapsed().as_micros() as u64);
                            } else {
                                errors += 1;
                            }
                        }
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let started = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (latencies, e) = worker.await.expect("worker");
        all.extend(latencies);
        errors += e;
    }
    report(all, errors, started.elapsed().as_secs_f64());
}

/// `BODY_JSON`, or the content of the file `@FILE` names.
fn body_arg(arg: &str) -> String {
    match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).expect("body file"),
        None => arg.to_owned(),
    }
}

/// Prints one JSON line: count, errors, throughput and latency percentiles (µs).
fn report(mut all: Vec<u64>, errors: u64, elapsed: f64) {
    all.sort_unstable();
    let at = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{{\"requests\":{},\"errors\":{errors},\"rps\":{:.0},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{}}}",
        all.len(),
        all.len() as f64 / elapsed,
        at(0.5),
        at(0.9),
        at(0.99)
    );
}

async fn streams(url: &str, count: usize, seconds: u64) {
    assert!(
        url.starts_with("http://127.0.0.1") || url.starts_with("http://localhost"),
        "loopback only"
    );
    let url: hyper::Uri = url.parse().expect("URL");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bool>(count);
    for _ in 0..count {
        let url = url.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
            let request = hyper::Request::get(url)
                .header("accept", "text/event-stream")
                .body(Full::new(Bytes::new()))
                .expect("request");
            match client.request(request).await {
                Ok(response) if response.status().is_success() => {
                    let mut body = response.into_body();
                    let first = body.frame().await.is_some();
                    let _ = tx.send(first).await;
                    tokio::time::sleep(Duration::from_secs(seconds)).await;
                    drop(body);
                }
                _ => {
                    let _ = tx.send(false).await;
                }
            }
        });
    }
    drop(tx);
    let mut open = 0;
    for _ in 0..count {
        if rx.recv().await == Some(true) {
            open += 1;
        }
    }
    println!("{{\"streams_open\":{open}}}");
    // Hold them for the caller's measurement, then exit (closing them all).
    tokio::time::sleep(Duration::from_secs(seconds)).await;
}

/// Follows one refresh-token rotation chain per token for `seconds`: each request is
/// `grant_type=refresh_token` for the chain's latest token; a chain that fails stops.
async fn refresh(token_url: &str, client_id: &str, seconds: u64, tokens: Vec<String>) {
    assert!(
        token_url.starts_with("http://127.0.0.1") || token_url.starts_with("http://localhost"),
        "loopback only"
    );
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = tokens
        .into_iter()
        .map(|mut token| {
            let url: hyper::Uri = token_url.parse().expect("URL");
            let client_id = client_id.to_owned();
            tokio::spawn(async move {
                let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
                    .pool_max_idle_per_host(1)
                    .build_http();
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let form = format!(
                        "grant_type=refresh_token&refresh_token={token}&client_id={client_id}"
                    );
                    let request = hyper::Request::post(url.clone())
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(Full::new(Bytes::from(form)))
                        .expect("request");
                    let started = Instant::now();
                    let next = match client.request(request).await {
                        Ok(response) if response.status().is_success() => response
                            .into_body()
                            .collect()
                            .await
                            .ok()
                            .and_then(|b| {
                                serde_json::from_slice::<serde_json::Value>(&b.to_bytes()).ok()
                            })
                            .and_then(|v| v["refresh_token"].as_str().map(str::to_owned)),
                        _ => None,
                    };
                    match next {
                        Some(next) => {
                            latencies.push(started.elapsed().as_micros() as u64);
                            token = next;
                        }
                        None => {
                            errors += 1;
                            break;
                        }
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let started = Instant::now();
    let (mut all, mut errors) = (Vec::new(), 0);
    for worker in workers {
        let (latencies, e) = worker.await.expect("worker");
        all.extend(latencies);
        errors += e;
    }
    report(all, errors, started.elapsed().as_secs_f64());
}
