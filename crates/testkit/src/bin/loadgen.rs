//! A small load generator for the benchmark (bench/run.sh), on loopback only.
//!
//! `loadgen post URL CONCURRENCY SECONDS BODY_JSON [HEADER:VALUE]`: each of CONCURRENCY workers keeps one
//! HTTP/1.1 connection and sends POST requests back to back for SECONDS; prints one JSON line
//! with the count, errors, throughput and latency percentiles (µs).
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
                args[4].clone(),
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
        _ => {
            eprintln!(
                "usage: loadgen post URL CONCURRENCY SECONDS BODY | loadgen streams URL COUNT SECONDS"
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
    let elapsed = started.elapsed().as_secs_f64();
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
