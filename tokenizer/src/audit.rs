//! The vault's audit trail: every operation, who asked, on which token, with what outcome and
//! under which request id. Never a card number, a CVC or a key.
//!
//! Rows are hash-chained: each row's hash is SHA-256 over its fields and the previous row's
//! hash. The database refuses updates and deletes (triggers) and forks (`UNIQUE(prev_hash)`);
//! [`verify`] recomputes the whole chain, so an edit made by someone who bypassed the triggers
//! is found. Appends are serialized (PostgreSQL: a row lock on `audit_head`; SQLite: the
//! `BEGIN IMMEDIATE` write lock every write transaction already holds).

use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::db::{now_us, Backend, Db, Tx};

pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit record before it is chained.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    /// `billing:<client certificate identity>`, `collect:<ip>` or `cli:<command>`.
    pub actor: &'a str,
    /// `tokenize`, `get`, `charge_method`, `delete`, `keys.rotate`, …
    pub action: &'a str,
    pub token: Option<&'a str>,
    /// `created`, `existing`, `ok`, `not_found`, `refused:<code>`, …
    pub outcome: &'a str,
    pub request_id: Option<&'a str>,
}

fn chain_hash(prev_hash: &str, seq: i64, at: i64, e: &Event<'_>) -> String {
    let mut h = Sha256::new();
    let seq = seq.to_be_bytes();
    let at = at.to_be_bytes();
    let parts: [&[u8]; 8] = [
        prev_hash.as_bytes(),
        &seq,
        &at,
        e.actor.as_bytes(),
        e.action.as_bytes(),
        e.token.unwrap_or("").as_bytes(),
        e.outcome.as_bytes(),
        e.request_id.unwrap_or("").as_bytes(),
    ];
    for part in parts {
        h.update(u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
        h.update(part);
    }
    hex::encode(h.finalize())
}

/// Appends `event` inside `tx`: it commits or rolls back with the operation it records.
pub async fn append(tx: &mut Tx, backend: Backend, event: &Event<'_>) -> Result<(), sqlx::Error> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT id FROM audit_head WHERE id = 1 FOR UPDATE")
            .execute(&mut **tx)
            .await?;
    }
    let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await?;
    let (prev_seq, prev_hash) = match last {
        Some(row) => (row.try_get::<i64, _>(0)?, row.try_get::<String, _>(1)?),
        None => (0, GENESIS_HASH.to_owned()),
    };
    let seq = prev_seq.saturating_add(1);
    let at = now_us();
    let hash = chain_hash(&prev_hash, seq, at, event);
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, action, token, outcome, request_id, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(seq)
    .bind(at)
    .bind(event.actor)
    .bind(event.action)
    .bind(event.token)
    .bind(event.outcome)
    .bind(event.request_id)
    .bind(&prev_hash)
    .bind(&hash)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Appends `event` in its own transaction.
pub async fn record(db: &Db, event: &Event<'_>) -> Result<(), sqlx::Error> {
    let backend = db.backend;
    let owned = OwnedEvent::from(event);
    db.write(|tx| {
        let owned = owned.clone();
        Box::pin(async move { append(tx, backend, &owned.as_event()).await })
    })
    .await
}

#[derive(Debug, Clone)]
struct OwnedEvent {
    actor: String,
    action: String,
    token: Option<String>,
    outcome: String,
    request_id: Option<String>,
}

impl From<&Event<'_>> for OwnedEvent {
    fn from(e: &Event<'_>) -> Self {
        OwnedEvent {
            actor: e.actor.to_owned(),
            action: e.action.to_owned(),
            token: e.token.map(str::to_owned),
            outcome: e.outcome.to_owned(),
            request_id: e.request_id.map(str::to_owned),
        }
    }
}

impl OwnedEvent {
    fn as_event(&self) -> Event<'_> {
        Event {
            actor: &self.actor,
            action: &self.action,
            token: self.token.as_deref(),
            outcome: &self.outcome,
            request_id: self.request_id.as_deref(),
        }
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub rows: i64,
    /// The newest row's hash: record it somewhere the vault cannot write, and a later
    /// verification proves nothing before it changed.
    pub head: String,
}

/// Recomputes the chain from the first row. Fails at the first row that does not follow.
pub async fn verify(db: &Db) -> anyhow::Result<Verified> {
    use futures::TryStreamExt;
    let mut rows = sqlx::query(
        "SELECT seq, at, actor, action, token, outcome, request_id, prev_hash, hash \
         FROM audit_log ORDER BY seq",
    )
    .fetch(&db.pool);
    let mut expected_prev = GENESIS_HASH.to_owned();
    let mut expected_seq = 1i64;
    let mut count = 0i64;
    while let Some(row) = rows.try_next().await? {
        let seq: i64 = row.try_get(0)?;
        let at: i64 = row.try_get(1)?;
        let actor: String = row.try_get(2)?;
        let action: String = row.try_get(3)?;
        let token: Option<String> = row.try_get(4)?;
        let outcome: String = row.try_get(5)?;
        let request_id: Option<String> = row.try_get(6)?;
        let prev_hash: String = row.try_get(7)?;
        let hash: String = row.try_get(8)?;
        anyhow::ensure!(
            seq == expected_seq,
            "audit row {seq}: expected row {expected_seq}"
        );
        anyhow::ensure!(
            prev_hash == expected_prev,
            "audit row {seq}: does not follow the previous row"
        );
        let event = Event {
            actor: &actor,
            action: &action,
            token: token.as_deref(),
            outcome: &outcome,
            request_id: request_id.as_deref(),
        };
        anyhow::ensure!(
            chain_hash(&prev_hash, seq, at, &event) == hash,
            "audit row {seq}: its hash does not match its contents"
        );
        expected_prev = hash;
        expected_seq = seq.saturating_add(1);
        count = count.saturating_add(1);
    }
    Ok(Verified {
        rows: count,
        head: expected_prev,
    })
}
