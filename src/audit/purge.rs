//! Retention: records older than `audit_retention_days` (default 2192 days, six years — HIPAA's
//! retention for documentation, 45 CFR 164.316(b)(2)) leave the three chained logs, without
//! breaking their chains.
//!
//! A purge removes a *prefix* of each chain: every record and seal up to a boundary `B`, where
//! `B` is sealed and every record at or below it is older than the cut-off (a young record
//! stops the prefix, even if older ones follow it). In one transaction it first inserts a
//! checkpoint (`audit_checkpoints`: the boundary, the seal hash at it, counts, the cut-off,
//! who and when, linked to the chain's previous checkpoint by hash), then deletes the rows —
//! which the database allows only at or below the newest checkpoint (see
//! `migrations/*/0003_audit.sql` for why that is safe) — and records a security event
//! (`audit_purged`). `audit verify` then starts each chain from its newest checkpoint.
//!
//! Work is bounded: at most [`PURGE_BATCH_MAX`] records per transaction (one checkpoint each),
//! at most [`PURGE_BATCHES_MAX`] transactions per chain per run. The server runs a purge
//! every `audit_purge_interval_seconds` (default daily; the first one an hour after start, or
//! after one interval if that is shorter; 0 turns it off); `carebill audit purge` runs one
//! by hand.

use std::time::Duration;

use sqlx::Row;

use super::chain::{self, Chain, Checkpoint, CHAINS, GENESIS};
use crate::db::{now_us, Db, Tx};
use crate::identity::events::{self, Kind};

/// Records removed per transaction (and checkpoint).
pub const PURGE_BATCH_MAX: i64 = 50_000;
/// Transactions per chain per run: a bound on one run's work (500 million records).
const PURGE_BATCHES_MAX: u32 = 10_000;
/// The first automatic purge comes at most this long after start.
const FIRST_PURGE_AFTER: Duration = Duration::from_secs(3600);
const MICROS_PER_DAY: i64 = 86_400_000_000;

/// What a purge removed (or, in a dry run, would remove) from one chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purged {
    pub chain: &'static str,
    pub records: i64,
    pub seals: i64,
    /// The new boundary (records and seals at or below it are gone); none: nothing to purge.
    pub through_seq: Option<i64>,
    pub checkpoints: u32,
}

/// The cut-off for a retention of `days`: records older than this may go.
pub fn cutoff_us(now_us: i64, days: u32) -> i64 {
    now_us.saturating_sub(i64::from(days).saturating_mul(MICROS_PER_DAY))
}

/// Removes, from every chain, the sealed prefix of records older than `before_us`; `actor`
/// (a user id, `cli:…` or `system:retention`) is named in each checkpoint and security event.
/// A dry run reports what would go and changes nothing.
pub async fn purge(
    db: &Db,
    before_us: i64,
    actor: &str,
    dry_run: bool,
) -> anyhow::Result<Vec<Purged>> {
    // Seal first: only sealed records can be purged (the checkpoint names a seal).
    chain::seal_once(db).await?;
    let mut report = Vec::with_capacity(CHAINS.len());
    for chain in CHAINS {
        let mut purged = Purged {
            chain: chain.name,
            records: 0,
            seals: 0,
            through_seq: None,
            checkpoints: 0,
        };
        for _ in 0..PURGE_BATCHES_MAX {
            let mut tx = db.begin_write().await?;
            let limit = if dry_run { i64::MAX } else { PURGE_BATCH_MAX };
            let Some(plan) = plan(&mut tx, chain, before_us, limit).await? else {
                break;
            };
            purged.records += plan.records;
            purged.seals += plan.seals;
            purged.through_seq = Some(plan.through_seq);
            if dry_run {
                break;
            }
            apply(&mut tx, chain, &plan, before_us, actor).await?;
            tx.commit().await?;
            purged.checkpoints += 1;
            tracing::info!(
                chain = chain.name,
                through_seq = plan.through_seq,
                records = plan.records,
                "audit records purged past retention"
            );
        }
        report.push(purged);
    }
    Ok(report)
}

/// One transaction's worth of purge.
struct Plan {
    prev: Option<Checkpoint>,
    through_seq: i64,
    through_hash: String,
    records: i64,
    seals: i64,
}

/// The next prefix of `chain` to purge: sealed, older than `before_us`, at most `limit`
/// sequence numbers long; none when there is nothing to purge.
async fn plan(
    tx: &mut Tx,
    chain: &Chain,
    before_us: i64,
    limit: i64,
) -> anyhow::Result<Option<Plan>> {
    let prev = chain::newest_checkpoint(&mut **tx, chain).await?;
    let from = prev.as_ref().map_or(0, |c| c.through_seq);
    let sealed: Option<i64> = sqlx::query_scalar(&format!("SELECT MAX(seq) FROM {}", chain.seals))
        .fetch_one(&mut **tx)
        .await?;
    let Some(sealed) = sealed else {
        return Ok(None);
    };
    let first_young: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT MIN(seq) FROM {} WHERE seq > $1 AND at_us >= $2",
        chain.table
    ))
    .bind(from)
    .bind(before_us)
    .fetch_one(&mut **tx)
    .await?;
    let mut through = sealed.min(from.saturating_add(limit));
    if let Some(young) = first_young {
        through = through.min(young - 1);
    }
    if through <= from {
        return Ok(None);
    }
    let through_hash: String =
        sqlx::query_scalar(&format!("SELECT hash FROM {} WHERE seq = $1", chain.seals))
            .bind(through)
            .fetch_one(&mut **tx)
            .await?;
    let count = |table: &str| format!("SELECT COUNT(*) FROM {table} WHERE seq > $1 AND seq <= $2");
    let records: i64 = sqlx::query_scalar(&count(chain.table))
        .bind(from)
        .bind(through)
        .fetch_one(&mut **tx)
        .await?;
    let seals: i64 = sqlx::query_scalar(&count(chain.seals))
        .bind(from)
        .bind(through)
        .fetch_one(&mut **tx)
        .await?;
    Ok(Some(Plan {
        prev,
        through_seq: through,
        through_hash,
        records,
        seals,
    }))
}

/// Writes the checkpoint, deletes under it, records the security event; all in `tx`.
async fn apply(
    tx: &mut Tx,
    chain: &Chain,
    plan: &Plan,
    before_us: i64,
    actor: &str,
) -> anyhow::Result<()> {
    let mut cp = Checkpoint {
        id: 0,
        chain: chain.name.to_owned(),
        prev_through_seq: plan.prev.as_ref().map_or(0, |c| c.through_seq),
        through_seq: plan.through_seq,
        through_hash: plan.through_hash.clone(),
        records_purged: plan.records,
        seals_purged: plan.seals,
        purged_before_us: before_us,
        at_us: now_us(),
        actor: actor.to_owned(),
        hash: String::new(),
    };
    cp.hash = cp.compute_hash(plan.prev.as_ref().map_or(GENESIS, |c| c.hash.as_str()));
    let id: i64 = sqlx::query(
        "INSERT INTO audit_checkpoints (chain, prev_through_seq, through_seq, through_hash, \
         records_purged, seals_purged, purged_before_us, at_us, actor, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
    )
    .bind(&cp.chain)
    .bind(cp.prev_through_seq)
    .bind(cp.through_seq)
    .bind(&cp.through_hash)
    .bind(cp.records_purged)
    .bind(cp.seals_purged)
    .bind(cp.purged_before_us)
    .bind(cp.at_us)
    .bind(&cp.actor)
    .bind(&cp.hash)
    .fetch_one(&mut **tx)
    .await?
    .try_get(0)?;
    for table in [chain.table, chain.seals] {
        sqlx::query(&format!("DELETE FROM {table} WHERE seq > $1 AND seq <= $2"))
            .bind(cp.prev_through_seq)
            .bind(cp.through_seq)
            .execute(&mut **tx)
            .await?;
    }
    let detail = format!("ckpt_{id}");
    events::record_in(
        tx,
        Kind::AuditPurged,
        events::Event {
            actor: Some(actor),
            subject: Some(chain.table),
            ip: None,
            detail: Some(&detail),
        },
    )
    .await?;
    Ok(())
}

/// The server's retention job: a purge every `interval` (the first after at most an hour),
/// of what is older than `retention_days`. Failures are logged and retried next time.
pub(crate) async fn job(db: Db, retention_days: u32, interval: Duration) {
    tokio::time::sleep(interval.min(FIRST_PURGE_AFTER)).await;
    loop {
        let before = cutoff_us(now_us(), retention_days);
        match purge(&db, before, "system:retention", false).await {
            Ok(report) => {
                let records: i64 = report.iter().map(|p| p.records).sum();
                tracing::info!(records, retention_days, "audit retention pass done");
            }
            Err(e) => tracing::error!(error = %e, "audit retention pass failed; next pass retries"),
        }
        tokio::time::sleep(interval).await;
    }
}
