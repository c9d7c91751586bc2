//! The audit trail: who did what to which resource, when, from where, with what outcome —
//! one record per API request, never the data itself.
//!
//! - **Capture**: the request middleware gives each request an [`AuditSlot`]; the principal
//!   extractor fills in the caller. After the handler answers, the middleware queues the record
//!   (action = method and route template, resource = the ids in the path and the `patient` /
//!   `invoice` / `payment` query parameters, outcome = HTTP status).
//! - **Writing**: a background writer inserts queued records in batches (at most every 20 ms),
//!   so a read costs no write transaction of its own. The queue is bounded: when it is full,
//!   requests wait — a record is never dropped.
//! - **Sealing** ([`chain`]): a background sealer chains records into `audit_seals`: each seal
//!   is SHA-256 over the previous seal and the record's canonical content. The security event
//!   log and the export log are chained the same way. No request waits on a chain.
//! - **Verifying**: [`verify`] (`carebill audit verify`) walks the three chains and names the
//!   first record that was edited, deleted, reordered or slipped in under the seals.
//! - **Retention** ([`purge`]): records past `audit_retention_days` are removed a sealed prefix
//!   at a time behind an append-only checkpoint, so the chains stay verifiable.
//! - **Export**: [`export`] (`carebill audit export`) streams the trail for a SIEM.
//!
//! # Layout
//! - `mod.rs`: capture, the batch writer, the auditor's API, the SIEM export, the benchmark;
//! - `chain.rs`: the chains, the sealer and the verifier;
//! - `purge.rs`: retention with sealed checkpoints, and the server's retention job.

pub mod chain;
pub mod purge;

pub use chain::{seal_once, verify, ChainState, Verified, GENESIS};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::Row;
use tokio::sync::mpsc;

use crate::api::{parse_limit, timestamp_field};
use crate::auth::{Action, Principal};
use crate::db::{now_us, us_to_rfc3339, Db};
use crate::error::ApiResult;
use crate::AppState;

/// Records queued for the writer before requests wait.
const QUEUE_MAX: usize = 10_000;
const BATCH_MAX: usize = 500;
const FLUSH_EVERY: Duration = Duration::from_millis(20);

/// One audit record before it is written.
#[derive(Debug, Clone)]
pub struct Record {
    pub at_us: i64,
    pub actor: Option<String>,
    pub action: String,
    pub resource: Option<String>,
    pub ip: Option<String>,
    pub outcome: i64,
    pub request_id: Option<String>,
}

/// Set per request by the middleware; the principal extractor writes the caller into it.
#[derive(Debug, Clone, Default)]
pub struct AuditSlot(pub Arc<Mutex<Option<String>>>);

impl AuditSlot {
    pub fn set_actor(&self, actor: &str) {
        if let Ok(mut a) = self.0.lock() {
            *a = Some(actor.to_owned());
        }
    }

    pub fn actor(&self) -> Option<String> {
        self.0.lock().ok().and_then(|a| a.clone())
    }
}

/// The queue to the writer.
#[derive(Debug, Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Record>,
}

impl AuditSink {
    /// Starts the writer, the sealer and (unless `audit_purge_interval_seconds` is 0) the
    /// retention job for `db`.
    pub fn start(db: Db, config: &crate::config::Config) -> AuditSink {
        let (tx, rx) = mpsc::channel(QUEUE_MAX);
        tokio::spawn(writer(db.clone(), rx));
        tokio::spawn(chain::sealer(db.clone()));
        if config.audit_purge_interval_seconds > 0 {
            tokio::spawn(purge::job(
                db,
                config.audit_retention_days,
                Duration::from_secs(config.audit_purge_interval_seconds),
            ));
        }
        AuditSink { tx }
    }

    /// Queues `record`; waits when the queue is full (never drops).
    pub async fn record(&self, record: Record) {
        if self.tx.send(record).await.is_err() {
            tracing::error!("audit writer stopped; record lost");
        }
    }
}

async fn writer(db: Db, mut rx: mpsc::Receiver<Record>) {
    let mut batch: Vec<Record> = Vec::with_capacity(BATCH_MAX);
    loop {
        let Some(first) = rx.recv().await else { return };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH_MAX {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) => batch.push(r),
                Ok(None) | Err(_) => break,
            }
        }
        let mut wait = Duration::from_millis(50);
        loop {
            match write_records(&db, &batch).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(error = %e, records = batch.len(), "audit batch not written; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
        batch.clear();
    }
}

/// Writes `batch` in one transaction (the writer's batches; tests and the benchmark call it
/// directly).
pub async fn write_records(db: &Db, batch: &[Record]) -> Result<(), sqlx::Error> {
    let values = (0..batch.len())
        .map(|i| {
            let b = i * 7;
            format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6,
                b + 7
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "INSERT INTO audit_events (at_us, actor, action, resource, ip, outcome, request_id) VALUES {values}"
    );
    let mut q = sqlx::query(&sql);
    for r in batch {
        q = q
            .bind(r.at_us)
            .bind(r.actor.clone())
            .bind(r.action.clone())
            .bind(r.resource.clone())
            .bind(r.ip.clone())
            .bind(r.outcome)
            .bind(r.request_id.clone());
    }
    let mut tx = db.begin_write().await?;
    q.execute(&mut *tx).await?;
    tx.commit().await
}

const EVENT_COLUMNS: &str = "seq, at_us, actor, action, resource, ip, outcome, request_id";

/// The ids a request names: path segments and id-valued query parameters. Only ids, checked
/// against the id alphabet, never other values (a name or card number in a query string must
/// not reach the trail).
pub fn resource_of(path: &str, query: Option<&str>) -> Option<String> {
    let looks_like_id = |s: &str| {
        let Some((prefix, rest)) = s.split_once('_') else {
            return false;
        };
        (2..=5).contains(&prefix.len())
            && prefix.bytes().all(|b| b.is_ascii_lowercase())
            && (8..=64).contains(&rest.len())
            && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    let mut ids: Vec<String> = path
        .split('/')
        .filter(|s| looks_like_id(s))
        .map(str::to_owned)
        .collect();
    if let Some(q) = query {
        for (k, v) in form_urlencoded::parse(q.as_bytes()) {
            if matches!(k.as_ref(), "patient" | "invoice" | "payment" | "account")
                && looks_like_id(&v)
            {
                ids.push(v.into_owned());
            }
        }
    }
    (!ids.is_empty()).then(|| ids.join(" "))
}

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/audit_events", get(list_events))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub action: Option<String>,
    /// An id the request named (patient, invoice, payment…).
    pub resource: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub limit: Option<String>,
}

/// The auditor's query: by actor, action, resource (a patient id finds every request that
/// named it) and time range, newest first.
async fn list_events(
    State(state): State<AppState>,
    principal: Principal,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Value>> {
    principal.authorize(Action::AuditRead)?;
    let limit = parse_limit(q.limit.as_deref())?;
    let from = q
        .from
        .as_deref()
        .map(|t| timestamp_field("from", t))
        .transpose()?;
    let to =
        q.to.as_deref()
            .map(|t| timestamp_field("to", t))
            .transpose()?;
    let resource = q.resource.clone().unwrap_or_default();
    let rows = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM audit_events \
         WHERE ($1 = '' OR actor = $1) AND ($2 = '' OR action = $2) \
           AND ($3 = '' OR resource = $3 OR resource LIKE $4 OR resource LIKE $5 OR resource LIKE $6) \
           AND at_us >= $7 AND at_us <= $8 ORDER BY seq DESC LIMIT $9"
    ))
    .bind(q.actor.clone().unwrap_or_default())
    .bind(q.action.clone().unwrap_or_default())
    .bind(&resource)
    .bind(format!("{resource} %"))
    .bind(format!("% {resource}"))
    .bind(format!("% {resource} %"))
    .bind(from.unwrap_or(0))
    .bind(to.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(&state.db.pool)
    .await?;
    let mut data = Vec::with_capacity(rows.len());
    for r in rows {
        data.push(json!({
            "seq": r.try_get::<i64, _>("seq")?,
            "at": us_to_rfc3339(r.try_get("at_us")?),
            "actor": r.try_get::<Option<String>, _>("actor")?,
            "action": r.try_get::<String, _>("action")?,
            "resource": r.try_get::<Option<String>, _>("resource")?,
            "ip": r.try_get::<Option<String>, _>("ip")?,
            "outcome": r.try_get::<i64, _>("outcome")?,
            "request_id": r.try_get::<Option<String>, _>("request_id")?,
        }));
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_are_ids_only() {
        assert_eq!(
            resource_of(
                "/v1/invoices/inv_AbCdEfGh12345678/adjustments",
                Some("limit=5")
            ),
            Some("inv_AbCdEfGh12345678".to_owned())
        );
        assert_eq!(
            resource_of(
                "/v1/payments",
                Some("patient=pat_AbCdEfGh12345678&name=Jane")
            ),
            Some("pat_AbCdEfGh12345678".to_owned())
        );
        assert_eq!(
            resource_of("/v1/patients", Some("patient=4242424242424242")),
            None
        );
        assert_eq!(resource_of("/v1/ledger/trial-balance", None), None);
    }
}

/// `carebill bench-audit`: how fast the writer's batches land and the sealer chains them.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchAuditArgs {
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub admin_url: String,
    /// Records to write and seal.
    #[arg(long, default_value_t = 100_000)]
    pub records: usize,
    #[arg(long, value_enum, default_value = "both")]
    pub backend: crate::bench::BenchBackend,
}

pub async fn bench(args: BenchAuditArgs) -> anyhow::Result<()> {
    let mut targets = Vec::new();
    if matches!(
        args.backend,
        crate::bench::BenchBackend::Postgres | crate::bench::BenchBackend::Both
    ) {
        targets
            .push(crate::bench::fresh_pg_database(&args.admin_url, "carebill_bench_audit").await?);
    }
    let dir = std::env::temp_dir().join(format!(
        "carebill-bench-audit-{}",
        uuid::Uuid::new_v4().simple()
    ));
    if matches!(
        args.backend,
        crate::bench::BenchBackend::Sqlite | crate::bench::BenchBackend::Both
    ) {
        std::fs::create_dir_all(&dir)?;
        targets.push(format!("sqlite://{}/audit.db", dir.display()));
    }
    println!(
        "{:<9} {:>10} {:>12} {:>12} {:>12} {:>12}",
        "backend", "records", "written/s", "sealed/s", "verified/s", "purged/s"
    );
    for url in targets {
        let db = Db::connect(&url).await?;
        crate::db::migrate(&db).await?;
        let record = Record {
            at_us: now_us(),
            actor: Some("key_benchbenchbenchbench".to_owned()),
            action: "GET /v1/patients/{id}".to_owned(),
            resource: Some("pat_benchbenchbenchbench".to_owned()),
            ip: Some("127.0.0.1".to_owned()),
            outcome: 200,
            request_id: Some("req_benchbenchbenchbench".to_owned()),
        };
        let batch = vec![record; BATCH_MAX];
        let started = std::time::Instant::now();
        let mut written = 0;
        while written < args.records {
            write_records(&db, &batch).await?;
            written += BATCH_MAX;
        }
        let write_secs = started.elapsed().as_secs_f64();
        let started = std::time::Instant::now();
        let mut sealed = 0;
        loop {
            let n = seal_once(&db).await?;
            if n == 0 {
                break;
            }
            sealed += n;
        }
        let seal_secs = started.elapsed().as_secs_f64();
        let started = std::time::Instant::now();
        let v = chain::verify_chain(&db, &chain::AUDIT).await?;
        let verify_secs = started.elapsed().as_secs_f64();
        anyhow::ensure!(v.unsealed == 0, "records left unsealed");
        // Everything written so far is older than a cut-off a second from now.
        let started = std::time::Instant::now();
        let purged = purge::purge(&db, now_us() + 1_000_000, "bench", false).await?;
        let purge_secs = started.elapsed().as_secs_f64();
        let purged = purged
            .iter()
            .find(|p| p.chain == "audit")
            .map_or(0, |p| p.records);
        anyhow::ensure!(
            usize::try_from(purged).unwrap_or(0) == written,
            "purged {purged} of {written} records"
        );
        chain::verify_chain(&db, &chain::AUDIT).await?;
        println!(
            "{:<9} {:>10} {:>12.0} {:>12.0} {:>12.0} {:>12.0}",
            db.backend.name(),
            sealed,
            per_second(written, write_secs),
            per_second(sealed, seal_secs),
            per_second(written, verify_secs),
            per_second(written, purge_secs)
        );
        db.pool.close().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[allow(clippy::as_conversions, clippy::cast_precision_loss)] // display only
fn per_second(n: usize, secs: f64) -> f64 {
    n as f64 / secs
}

/// `carebill audit export`: the trail for a SIEM, streamed (flat memory), as JSON Lines or as
/// RFC 5424 syslog lines (facility 13 "log audit", severity 6; the record in structured data).
pub async fn export(
    db: &Db,
    since_us: i64,
    syslog: bool,
    out: &mut (dyn std::io::Write + Send),
) -> anyhow::Result<u64> {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "-".to_owned());
    let mut conn = db.pool.acquire().await?;
    let sql = format!("SELECT {EVENT_COLUMNS} FROM audit_events WHERE at_us >= $1 ORDER BY seq");
    let mut rows = sqlx::query(&sql).bind(since_us).fetch(&mut *conn);
    let mut n = 0u64;
    while let Some(r) = rows.try_next().await? {
        let seq: i64 = r.try_get("seq")?;
        let at = us_to_rfc3339(r.try_get("at_us")?);
        let actor: Option<String> = r.try_get("actor")?;
        let action: String = r.try_get("action")?;
        let resource: Option<String> = r.try_get("resource")?;
        let ip: Option<String> = r.try_get("ip")?;
        let outcome: i64 = r.try_get("outcome")?;
        let request_id: Option<String> = r.try_get("request_id")?;
        if syslog {
            // RFC 5424 §6.3.3: in PARAM-VALUE, '"', '\' and ']' are escaped with '\'.
            let esc = |v: &str| {
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace(']', "\\]")
            };
            let mut sd = format!(
                "[audit@32473 seq=\"{seq}\" action=\"{}\" outcome=\"{outcome}\"",
                esc(&action)
            );
            for (k, v) in [
                ("actor", &actor),
                ("resource", &resource),
                ("ip", &ip),
                ("request_id", &request_id),
            ] {
                if let Some(v) = v {
                    sd.push_str(&format!(" {k}=\"{}\"", esc(v)));
                }
            }
            sd.push(']');
            writeln!(
                out,
                "<110>1 {at} {host} carebill - audit {sd} {action} {outcome}"
            )?;
        } else {
            let line = json!({
                "seq": seq, "at": at, "actor": actor, "action": action, "resource": resource,
                "ip": ip, "outcome": outcome, "request_id": request_id,
            });
            writeln!(out, "{line}")?;
        }
        n += 1;
    }
    Ok(n)
}
