//! `carebill bench`: payments per second over HTTP, reported as a ratio against PostgreSQL's own
//! `pgbench -b tpcb-like` on the same server, in the same run.
//!
//! Timed tests on shared 2-core machines prove nothing; a ratio against a reference measured
//! minutes apart on the same machine does. The workload: `clients` concurrent HTTP clients,
//! each paying its own finalized invoice in small amounts with a fresh `Idempotency-Key` per
//! request, for `seconds`. Every payment is a full production path: key claim, two write
//! transactions, a processor call (the simulator writes its own record), a balanced journal
//! entry with running balances, and the saved response. All of them contend on one hot row,
//! the processor-clearing account, much as pgbench's transactions contend on its branch row.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::auth::{create_api_key, Role};
use crate::client::{id_of, ApiClient};
use crate::config::Config;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// A PostgreSQL URL with rights to create databases; the bench makes its own databases.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub admin_url: String,
    /// Seconds each measured run lasts.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrent clients (and pgbench connections).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Which backends to measure.
    #[arg(long, value_enum, default_value = "both")]
    pub backend: BenchBackend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchBackend {
    Postgres,
    Sqlite,
    Both,
}

/// One measured run.
#[derive(Debug, Clone)]
pub struct Measured {
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub ok: u64,
    pub failed: u64,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let clients = args.clients.clamp(1, 256);
    let duration = Duration::from_secs(args.seconds.clamp(1, 3600));
    let mut results: Vec<(&str, Measured)> = Vec::new();
    if matches!(args.backend, BenchBackend::Postgres | BenchBackend::Both) {
        let url = fresh_pg_database(&args.admin_url, "carebill_bench").await?;
        eprintln!(
            "bench: carebill on PostgreSQL, {clients} clients, {}s",
            duration.as_secs()
        );
        results.push((
            "carebill payments (PostgreSQL)",
            bench_payments(&url, clients, duration).await?,
        ));
    }
    if matches!(args.backend, BenchBackend::Sqlite | BenchBackend::Both) {
        let dir = tempfile_dir()?;
        let url = format!("sqlite://{}/bench.db", dir.display());
        eprintln!(
            "bench: carebill on SQLite, {clients} clients, {}s",
            duration.as_secs()
        );
        let measured = bench_payments(&url, clients, duration).await;
        let _ = std::fs::remove_dir_all(&dir);
        results.push(("carebill payments (SQLite)", measured?));
    }
    let pgbench_url = fresh_pg_database(&args.admin_url, "carebill_pgbench").await?;
    eprintln!(
        "bench: pgbench -b tpcb-like -c {clients}, {}s",
        duration.as_secs()
    );
    let tps = pgbench(&pgbench_url, clients, duration)?;

    println!();
    println!("| run | per second | p50 ms | p99 ms | ok | failed | ratio to pgbench |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, m) in &results {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {} | {} | {:.3} |",
            m.per_second,
            m.p50_ms,
            m.p99_ms,
            m.ok,
            m.failed,
            m.per_second / tps
        );
    }
    println!("| pgbench tpcb-like (reference) | {tps:.1} | | | | | 1.000 |");
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("carebill-bench-{}", crate::ids::random_base62(8)));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Drops and creates database `name` on the server of `admin_url`; returns its URL.
pub async fn fresh_pg_database(admin_url: &str, name: &str) -> anyhow::Result<String> {
    let db = crate::db::Db::connect(admin_url).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&db.pool)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&db.pool)
        .await?;
    db.pool.close().await;
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .unwrap_or(admin_url);
    Ok(format!("{base}/{name}"))
}

/// Runs the payment workload against a server on `database_url` started in this process.
pub async fn bench_payments(
    database_url: &str,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Measured> {
    // Over HTTPS, as production serves: a development certificate for the run.
    let certs_dir = tempfile_dir()?;
    let pki = devcerts::ensure_dev_pki(&certs_dir)?;
    let http = crate::client::https_client(&std::fs::read(&pki.ca_cert)?)?;
    let config = Config {
        database_url: database_url.to_owned(),
        addr: "127.0.0.1:0".to_owned(),
        // A fresh keyring for the benchmark's own database: field encryption is on, as in
        // production.
        keyring_inline: Some(std::sync::Arc::new(
            crate::crypto::LocalKeyring::generate_text(),
        )),
        tls_cert: Some(pki.billing_cert.clone()),
        tls_key: Some(pki.billing_key.clone()),
        ..Config::default()
    };
    let state = crate::server::prepare(config).await?;
    let key = create_api_key(&state.db, Role::BillingManager).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let running = crate::server::spawn(state.clone(), listener)?;
    let client = ApiClient::with_http(format!("https://{}", running.addr), &key.secret, http);

    // One patient and one large open invoice per client, so clients contend only where real
    // payments do: on the shared ledger accounts.
    let today = chrono::Utc::now()
        .date_naive()
        .format("%Y-%m-%d")
        .to_string();
    let mut invoices = Vec::with_capacity(clients);
    for i in 0..clients {
        let patient = client
            .create(
                "/v1/patients",
                &json!({"name": format!("Bench Patient {i}"), "date_of_birth": "1980-01-01"}),
            )
            .await?;
        let invoice = client
            .create("/v1/invoices", &json!({"patient": id_of(&patient)?, "currency": "usd", "due_date": today,
                "lines": [{"service_date": today, "code": "99213", "description": "Bench", "quantity": 10000, "unit_amount": 99_999_999}]}))
            .await?;
        let id = id_of(&invoice)?;
        client
            .create(&format!("/v1/invoices/{id}/finalize"), &json!({}))
            .await?;
        invoices.push(id);
    }

    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for invoice in invoices {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies_us: Vec<u64> = Vec::new();
            let mut failed: u64 = 0;
            while Instant::now() < deadline {
                let t = Instant::now();
                let key = uuid::Uuid::new_v4().to_string();
                let body = json!({"invoice": invoice, "amount": 100, "currency": "usd", "payment_method": "pm_card_visa"});
                match client.post("/v1/payments", &body, Some(&key)).await {
                    Ok(r) if r.status == 200 => latencies_us.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX)),
                    _ => failed = failed.saturating_add(1),
                }
            }
            (latencies_us, failed)
        }));
    }
    let mut all: Vec<u64> = Vec::new();
    let mut failed: u64 = 0;
    for t in tasks {
        let (l, f) = t.await?;
        all.extend(l);
        failed = failed.saturating_add(f);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: usize| -> f64 {
        if all.is_empty() {
            return 0.0;
        }
        let idx = (all.len().saturating_sub(1)).saturating_mul(p) / 100;
        all.get(idx).copied().map(us_to_ms).unwrap_or(0.0)
    };
    let ok = u64::try_from(all.len()).unwrap_or(u64::MAX);
    let violations = crate::ledger::invariants::verify(&state.db).await?;
    anyhow::ensure!(
        violations.is_empty(),
        "ledger invariants failed after the bench: {violations:?}"
    );
    running.handle.abort();
    state.db.pool.close().await;
    let _ = std::fs::remove_dir_all(&certs_dir);
    Ok(Measured {
        per_second: count_f64(ok) / elapsed,
        p50_ms: pct(50),
        p99_ms: pct(99),
        ok,
        failed,
    })
}

#[allow(clippy::as_conversions, clippy::cast_precision_loss)] // display only
fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[allow(clippy::as_conversions, clippy::cast_precision_loss)] // display only
fn count_f64(n: u64) -> f64 {
    n as f64
}

/// Initializes and runs `pgbench -b tpcb-like`; returns its transactions per second.
pub fn pgbench(url: &str, clients: usize, duration: Duration) -> anyhow::Result<f64> {
    let init = std::process::Command::new("pgbench")
        .args(["-i", "-q", "-s", "1", url])
        .output()?;
    anyhow::ensure!(
        init.status.success(),
        "pgbench -i failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let out = std::process::Command::new("pgbench")
        .args([
            "-b",
            "tpcb-like",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &duration.as_secs().to_string(),
            url,
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "pgbench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("tps = ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse::<f64>().ok())
        })
        .ok_or_else(|| anyhow::anyhow!("no tps in pgbench output: {text}"))
}
