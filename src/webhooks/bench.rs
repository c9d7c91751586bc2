//! `carebill bench-webhooks`: outbox delivery throughput to a local receiver, in deliveries per
//! second, against a reference in the same run: the same number of signed POSTs sent straight
//! to the same receiver by a plain client (no database), one sender per endpoint like the
//! worker. The ratio is what the outbox (read the queue, record every attempt durably, keep
//! per-endpoint order) costs over the bare HTTP round trips.
//!
//! The events are seeded first (`outbox::emit`, 500 per transaction, fanned out to every
//! endpoint), then the worker's own pass (`worker::run_once`) runs until the queue is empty.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::bench::BenchBackend;
use crate::config::Config;
use crate::crypto::Field;
use crate::db::now_us;
use crate::ids::WebhookEndpointId;

use super::outbox::{emit, EventType};
use super::{endpoints::SECRET_COLUMN, signing, target, worker, SYS_WEBHOOKS};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchWebhooksArgs {
    /// A PostgreSQL URL with rights to create databases.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub admin_url: String,
    /// Events to seed (each goes to every endpoint).
    #[arg(long, default_value_t = 2_000)]
    pub events: u64,
    /// Endpoints (served concurrently; each in order).
    #[arg(long, default_value_t = 4)]
    pub endpoints: u64,
    #[arg(long, value_enum, default_value = "both")]
    pub backend: BenchBackend,
}

const EVENTS_PER_TX: u64 = 500;

pub async fn run(args: BenchWebhooksArgs) -> anyhow::Result<()> {
    let events = args.events.clamp(1, 1_000_000);
    let endpoints = args.endpoints.clamp(1, 64);
    let (receiver, received) = start_receiver().await?;
    println!(
        "{:<9} {:>9} {:>11} {:>9} {:>13} {:>13} {:>9}",
        "backend", "endpoints", "deliveries", "seconds", "deliveries/s", "direct POST/s", "ratio"
    );
    let mut backends = Vec::new();
    if matches!(args.backend, BenchBackend::Postgres | BenchBackend::Both) {
        backends.push("postgres");
    }
    if matches!(args.backend, BenchBackend::Sqlite | BenchBackend::Both) {
        backends.push("sqlite");
    }
    for backend in backends {
        let dir = std::env::temp_dir().join(format!(
            "carebill-bench-webhooks-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let url = if backend == "postgres" {
            crate::bench::fresh_pg_database(&args.admin_url, "carebill_bench_webhooks").await?
        } else {
            std::fs::create_dir_all(&dir)?;
            format!("sqlite://{}/bench.db", dir.display())
        };
        let mut config = Config {
            database_url: url,
            keyring_inline: Some(Arc::new(crate::crypto::LocalKeyring::generate_text())),
            ..Config::default()
        };
        config.webhooks.poll_interval_ms = 0;
        config.webhooks.allow_http = true;
        config.webhooks.allow_private = true;
        let state = crate::server::prepare(config).await?;
        let mut secrets = Vec::new();
        for _ in 0..endpoints {
            secrets.push(add_endpoint(&state, &format!("http://{receiver}/hook")).await?);
        }
        seed(&state, events).await?;
        let deliveries = events.saturating_mul(endpoints);
        let client = target::delivery_client(&state.config.webhooks)?;
        received.store(0, Ordering::SeqCst);
        let started = Instant::now();
        loop {
            let pending: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending'",
            )
            .fetch_one(&state.db.pool)
            .await?;
            if pending == 0 {
                break;
            }
            worker::run_once(&state, &client).await?;
        }
        let outbox_secs = started.elapsed().as_secs_f64();
        let delivered: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'succeeded'",
        )
        .fetch_one(&state.db.pool)
        .await?;
        anyhow::ensure!(
            u64::try_from(delivered)? == deliveries
                && received.load(Ordering::SeqCst) == deliveries,
            "not every delivery arrived exactly once"
        );
        let direct_secs = direct(&client, &receiver, &secrets, events).await?;
        let per_s = per_second(deliveries, outbox_secs);
        let direct_per_s = per_second(deliveries, direct_secs);
        println!(
            "{:<9} {:>9} {:>11} {:>9.2} {:>13.0} {:>13.0} {:>9.2}",
            backend,
            endpoints,
            deliveries,
            outbox_secs,
            per_s,
            direct_per_s,
            per_s / direct_per_s
        );
        state.db.pool.close().await;
        if backend == "postgres" {
            let admin = crate::db::Db::connect(&args.admin_url).await?;
            sqlx::query("DROP DATABASE IF EXISTS carebill_bench_webhooks WITH (FORCE)")
                .execute(&admin.pool)
                .await?;
            admin.pool.close().await;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

#[allow(clippy::as_conversions, clippy::cast_precision_loss)] // display only
fn per_second(n: u64, secs: f64) -> f64 {
    n as f64 / secs.max(1e-9)
}

async fn start_receiver() -> anyhow::Result<(std::net::SocketAddr, Arc<AtomicU64>)> {
    let count = Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    // A fallback, not a route: this is the bench's receiver, not part of the API.
    let app = axum::Router::new().fallback(move |_body: axum::body::Bytes| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            axum::http::StatusCode::NO_CONTENT
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, count))
}

async fn add_endpoint(state: &crate::AppState, url: &str) -> anyhow::Result<String> {
    let id = WebhookEndpointId::generate();
    let secret = signing::new_secret();
    let key = state
        .keys
        .system_key(SYS_WEBHOOKS)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.client_message()))?;
    let sealed = key.seal(
        Field::new(SECRET_COLUMN, SYS_WEBHOOKS, id.as_str()),
        &secret,
    )?;
    let now = now_us();
    sqlx::query(
        "INSERT INTO webhook_endpoints (id, url, status, secret_sealed, created_by, created_at_us, \
         updated_at_us) VALUES ($1, $2, 'enabled', $3, 'bench', $4, $4)",
    )
    .bind(id.as_str())
    .bind(url)
    .bind(&sealed)
    .bind(now)
    .execute(&state.db.pool)
    .await?;
    sqlx::query("INSERT INTO webhook_endpoint_events (endpoint_id, event_type) VALUES ($1, '*')")
        .bind(id.as_str())
        .execute(&state.db.pool)
        .await?;
    Ok(secret.to_string())
}

async fn seed(state: &crate::AppState, events: u64) -> anyhow::Result<()> {
    let mut done = 0u64;
    while done < events {
        let mut tx = state.db.begin_write().await?;
        let batch = EVENTS_PER_TX.min(events.saturating_sub(done));
        for i in 0..batch {
            let data = serde_json::json!({"object": "invoice", "id": format!("inv_bench{}", done.saturating_add(i)),
                "currency": "usd", "amount_paid": 12_500, "amount_due": 0, "status": "paid"});
            emit(&mut tx, EventType::InvoicePaid, data)
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.client_message()))?;
        }
        tx.commit().await?;
        done = done.saturating_add(batch);
    }
    Ok(())
}

/// The reference: the same signed POSTs, one sequential sender per endpoint, no database.
async fn direct(
    client: &reqwest::Client,
    receiver: &std::net::SocketAddr,
    secrets: &[String],
    events: u64,
) -> anyhow::Result<f64> {
    let body = serde_json::json!({"type": "invoice.paid", "timestamp": "2026-01-01T00:00:00Z",
        "data": {"object": "invoice", "id": "inv_bench", "currency": "usd", "amount_paid": 12_500}})
    .to_string();
    let url = format!("http://{receiver}/hook");
    let started = Instant::now();
    let senders = secrets.iter().map(|secret| {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        async move {
            for i in 0..events {
                let id = format!("evt_direct{i}");
                let ts = chrono::Utc::now().timestamp();
                let sig = signing::sign(secret, &id, ts, body.as_bytes())?;
                let r = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("webhook-id", id)
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", sig)
                    .body(body.clone())
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "receiver answered {}", r.status());
            }
            Ok::<_, anyhow::Error>(())
        }
    });
    for r in futures::future::join_all(senders).await {
        r?;
    }
    Ok(started.elapsed().as_secs_f64())
}
