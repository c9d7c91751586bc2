//! Tokenization throughput over HTTPS, against the raw AES-SIV speed of the same build.
//!
//! ```sh
//! cargo run --release -p tokenizer --example bench -- --seconds 10 --backend both
//! ```
//!
//! A real vault (both TLS listeners, its own fresh database) runs in this process on the
//! multi-threaded runtime; the load comes from one OS thread running a single-threaded runtime
//! (one core's worth of client) with `--clients` concurrent keep-alive HTTPS connections.
//! Two phases: new cards (every request a card never seen, so an insert) and repeated cards
//! (a fixed set of 100 already-tokenized cards, so a lookup). The reference is the number of
//! card-number encryptions per second one core does with the vault's own `PanKey`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::as_conversions,
    clippy::cast_precision_loss
)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// sqlite, postgres or both
    #[arg(long, default_value = "both")]
    backend: String,
    #[arg(
        long,
        env = "CAREBILL_TEST_PG_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pg_url: String,
}

/// The `i`-th Luhn-valid 16-digit Mastercard number of the benchmark.
fn valid_card(i: u64) -> String {
    let body = format!("51{:013}", i);
    let digits: Vec<u8> = body.bytes().map(|b| b - b'0').collect();
    let check = (0..10u8)
        .find(|c| {
            let mut all = digits.clone();
            all.push(*c);
            tokenizer::card::luhn_valid(&all)
        })
        .unwrap();
    format!("{body}{check}")
}

struct Phase {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Phase {
    fn per_sec(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let idx = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[idx] as f64 / 1000.0
    }
}

/// Runs `clients` loops for `seconds` on a single-threaded runtime in its own OS thread.
fn load(
    client: reqwest::Client,
    url: String,
    clients: usize,
    seconds: u64,
    numbers: Arc<dyn Fn(u64) -> String + Send + Sync>,
) -> Phase {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let counter = Arc::new(AtomicU64::new(0));
            let errors = Arc::new(AtomicU64::new(0));
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let started = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..clients {
                let (client, url, counter, errors, numbers) = (
                    client.clone(),
                    url.clone(),
                    counter.clone(),
                    errors.clone(),
                    numbers.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    while Instant::now() < deadline {
                        let i = counter.fetch_add(1, Ordering::Relaxed);
                        let body = serde_json::json!({
                            "number": numbers(i), "exp_month": 12, "exp_year": 2031, "cvc": "123"
                        });
                        let t = Instant::now();
                        match client.post(&url).json(&body).send().await {
                            Ok(r) if r.status().is_success() => {
                                let _ = r.bytes().await;
                                lat.push(t.elapsed().as_micros() as u64);
                            }
                            _ => {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    lat
                }));
            }
            let mut latencies_us = Vec::new();
            for t in tasks {
                latencies_us.extend(t.await.unwrap());
            }
            let elapsed = started.elapsed();
            latencies_us.sort_unstable();
            Phase {
                requests: latencies_us.len() as u64,
                errors: errors.load(Ordering::Relaxed),
                elapsed,
                latencies_us,
            }
        })
    })
    .join()
    .unwrap()
}

fn raw_aes_siv_per_sec() -> f64 {
    let key = tokenizer::crypto::PanKey::new(1, tokenizer::crypto::SivKey::generate());
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        for i in 0..1000u64 {
            let pan = valid_card(i);
            let ct = key.encrypt_field("card_number", pan.as_bytes()).unwrap();
            std::hint::black_box(ct);
        }
        n += 1000;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

async fn run_backend(args: &Args, backend: &str) -> (Phase, Phase) {
    let dir = tempfile::tempdir().unwrap();
    let (db_url, pg_db) = if backend == "postgres" {
        let name = format!("cb_bench_vault_{}", uuid::Uuid::new_v4().simple());
        let admin = tokenizer::db::Db::connect(&args.pg_url).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin.pool)
            .await
            .unwrap();
        admin.pool.close().await;
        let base = args.pg_url.rsplit_once('/').unwrap().0.to_owned();
        (format!("{base}/{name}"), Some(name))
    } else {
        (format!("sqlite://{}/vault.db", dir.path().display()), None)
    };
    let ca = devcerts::Ca::new("bench CA").unwrap();
    let server = ca.server_cert(&["localhost"]).unwrap();
    std::fs::write(dir.path().join("vault.pem"), &server.cert_pem).unwrap();
    std::fs::write(dir.path().join("vault.key"), &server.key_pem).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    let db = tokenizer::db::connect(&db_url).await.unwrap();
    let components = tokenizer::keys::init(&db, 2, &dir.path().join("keys"))
        .await
        .unwrap();
    db.pool.close().await;
    let running = tokenizer::start(tokenizer::Config {
        database_url: db_url.clone(),
        collect_addr: "127.0.0.1:0".parse().unwrap(),
        internal_addr: "127.0.0.1:0".parse().unwrap(),
        tls_cert: dir.path().join("vault.pem"),
        tls_key: dir.path().join("vault.key"),
        tls_reload_interval: Duration::from_secs(10),
        client_ca: dir.path().join("ca.pem"),
        client_allowlist: vec!["carebill-billing".to_owned()],
        key_components: components,
        cors_origins: vec![],
        rate_per_address: u32::MAX,
        rate_global: u32::MAX,
        rate_window: Duration::from_secs(1),
        cvc_ttl: Duration::from_secs(600),
    })
    .await
    .unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap())
        .pool_max_idle_per_host(args.clients)
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/v1/cards", running.collect_addr.port());
    let new = load(
        client.clone(),
        url.clone(),
        args.clients,
        args.seconds,
        Arc::new(valid_card),
    );
    let offset = 1_000_000_000u64;
    let repeated = load(
        client,
        url,
        args.clients,
        args.seconds,
        Arc::new(move |i| valid_card(offset + i % 100)),
    );
    running.state.db.pool.close().await;
    running.stop().await;
    if let Some(name) = pg_db {
        let admin = tokenizer::db::Db::connect(&args.pg_url).await.unwrap();
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&admin.pool)
            .await;
    }
    (new, repeated)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let backends: Vec<&str> = match args.backend.as_str() {
        "both" => vec!["sqlite", "postgres"],
        "sqlite" => vec!["sqlite"],
        "postgres" => vec!["postgres"],
        other => panic!("unknown backend {other}"),
    };
    let raw = raw_aes_siv_per_sec();
    println!("raw AES-SIV card-number encryptions, one core: {raw:.0}/s");
    println!(
        "{:<9} {:<9} {:>10} {:>8} {:>8} {:>8} {:>16}",
        "backend", "cards", "tok/s", "p50 ms", "p99 ms", "errors", "ratio to raw"
    );
    for backend in backends {
        let (new, repeated) = run_backend(&args, backend).await;
        for (name, p) in [("new", &new), ("repeated", &repeated)] {
            println!(
                "{:<9} {:<9} {:>10.0} {:>8.2} {:>8.2} {:>8} {:>16.5}",
                backend,
                name,
                p.per_sec(),
                p.pct(0.50),
                p.pct(0.99),
                p.errors,
                p.per_sec() / raw
            );
        }
    }
}
