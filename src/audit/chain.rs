//! The hash chains over the append-only logs: the audit trail (`audit_events`), the security
//! event log (`security_events`) and the ledger export log (`export_audit`).
//!
//! Each log has a seal table of the same shape. A background sealer (one task for all three)
//! seals the records in `seq` order: seal *n* is SHA-256 over seal *n−1* (or the chain's start)
//! and record *n*'s canonical content. Writers never touch the chain, so no request waits on a
//! chain lock; a record is sealed within [`SEAL_EVERY`] of being committed.
//!
//! A sequence number no committed row uses (a rolled-back insert, or one not committed yet) is
//! sealed as a `gap` only once the record after it is older than the chain's grace period, so
//! a slow transaction's row is not mistaken for a gap.
//!
//! [`verify`] walks each chain from its start — [`GENESIS`], or the newest retention
//! checkpoint (see `purge`) — and names the first record that was edited, deleted, reordered
//! or slipped in under the seals, or a checkpoint that was forged or edited.

use std::time::Duration;

use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::db::{now_us, Backend, Db, Tx};

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// How often the background sealer runs.
pub const SEAL_EVERY: Duration = Duration::from_millis(500);
/// PostgreSQL advisory lock keys of the sealers (one per chain, this plus its index).
const SEAL_LOCK_KEY: i64 = 0x6361_7265_6269_0000;
/// Records sealed per chain in one pass (one transaction).
const SEAL_BATCH_MAX: i64 = 1000;

/// How a column enters the canonical content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Col {
    Int,
    Text,
}

/// One append-only log and its seal table.
#[derive(Debug)]
pub struct Chain {
    /// The name checkpoints use: `audit`, `security`, `export`.
    pub name: &'static str,
    /// How verification names one of its records.
    pub label: &'static str,
    pub table: &'static str,
    pub seals: &'static str,
    /// The columns hashed, in order (after `seq`).
    pub columns: &'static [(&'static str, Col)],
    /// A missing sequence number is sealed as a gap once the record after it is this old.
    pub gap_grace_us: i64,
}

/// One record per API request, written by the audit writer alone in short transactions.
pub const AUDIT: Chain = Chain {
    name: "audit",
    label: "audit record",
    table: "audit_events",
    seals: "audit_seals",
    columns: &[
        ("at_us", Col::Int),
        ("actor", Col::Text),
        ("action", Col::Text),
        ("resource", Col::Text),
        ("ip", Col::Text),
        ("outcome", Col::Int),
        ("request_id", Col::Text),
    ],
    gap_grace_us: 10_000_000,
};

/// Sign-ins, MFA, permission, user and key changes, dual-control decisions. Some are written
/// inside the request's own transaction, so the grace outlasts any request (30 s by default).
pub const SECURITY: Chain = Chain {
    name: "security",
    label: "security event",
    table: "security_events",
    seals: "security_event_seals",
    columns: &[
        ("at_us", Col::Int),
        ("kind", Col::Text),
        ("actor", Col::Text),
        ("subject", Col::Text),
        ("ip", Col::Text),
        ("detail", Col::Text),
        ("request_id", Col::Text),
    ],
    gap_grace_us: 300_000_000,
};

/// Every ledger export, recorded before its first byte is sent.
pub const EXPORT: Chain = Chain {
    name: "export",
    label: "export record",
    table: "export_audit",
    seals: "export_audit_seals",
    columns: &[
        ("at_us", Col::Int),
        ("requested_by", Col::Text),
        ("format", Col::Text),
        ("from_date", Col::Text),
        ("to_date", Col::Text),
        ("after_seq", Col::Int),
        ("cursor", Col::Text),
        ("identified", Col::Int),
        ("entries", Col::Int),
    ],
    gap_grace_us: 300_000_000,
};

pub const CHAINS: [&Chain; 3] = [&AUDIT, &SECURITY, &EXPORT];

impl Chain {
    /// `seq, at_us, …` with an optional table alias.
    fn column_list(&self, alias: &str) -> String {
        std::iter::once("seq")
            .chain(self.columns.iter().map(|(c, _)| *c))
            .map(|c| format!("{alias}{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The canonical content of the record in `r` (selected with [`Chain::column_list`]).
    fn fields(&self, r: &sqlx::any::AnyRow) -> Result<Vec<Option<String>>, sqlx::Error> {
        let mut fields = Vec::with_capacity(self.columns.len());
        for (name, col) in self.columns {
            fields.push(match col {
                Col::Int => r.try_get::<Option<i64>, _>(*name)?.map(|v| v.to_string()),
                Col::Text => r.try_get::<Option<String>, _>(*name)?,
            });
        }
        Ok(fields)
    }
}

/// SHA-256 over the previous hash, the sequence number, the kind and the fields, each
/// length-prefixed (a field cannot bleed into the next).
pub(crate) fn seal_hash(prev: &str, seq: i64, kind: &str, fields: &[Option<String>]) -> String {
    let mut h = Sha256::new();
    let seq = seq.to_be_bytes();
    for part in [prev.as_bytes(), &seq, kind.as_bytes()] {
        h.update(u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
        h.update(part);
    }
    for f in fields {
        match f {
            Some(v) => {
                h.update([1u8]);
                h.update(u64::try_from(v.len()).unwrap_or(u64::MAX).to_be_bytes());
                h.update(v.as_bytes());
            }
            None => h.update([0u8]),
        }
    }
    hex::encode(h.finalize())
}

/// The background sealer: every [`SEAL_EVERY`], seals what can be sealed in every chain.
/// Ends when the pool is closed (the server shutting down, a bench or a test finishing).
pub(crate) async fn sealer(db: Db) {
    loop {
        tokio::time::sleep(SEAL_EVERY).await;
        if db.pool.is_closed() {
            return;
        }
        if let Err(e) = seal_once(&db).await {
            tracing::warn!(error = %e, "audit sealing pass failed; will retry");
        }
    }
}

/// Seals every record of every chain that can be sealed now (at most [`SEAL_BATCH_MAX`] per
/// chain); returns how many seals were written.
pub async fn seal_once(db: &Db) -> anyhow::Result<usize> {
    let mut n = 0;
    for (i, chain) in CHAINS.iter().enumerate() {
        let mut tx = db.begin_write().await?;
        if db.backend == Backend::Postgres {
            // One sealer per chain at a time (the server's and a CLI's `audit verify` or
            // `purge`): the second waits, then continues from the first's head. (SQLite's
            // `BEGIN IMMEDIATE` already serializes writers.)
            sqlx::query("SELECT 1 FROM pg_advisory_xact_lock($1)")
                .bind(SEAL_LOCK_KEY + i64::try_from(i).unwrap_or(0))
                .execute(&mut *tx)
                .await?;
        }
        n += seal_chain(&mut tx, chain).await?;
        tx.commit().await?;
    }
    Ok(n)
}

/// The newest seal of `chain`, or where the chain starts (the newest checkpoint, or genesis).
pub(crate) async fn head(tx: &mut Tx, chain: &Chain) -> Result<(i64, String), sqlx::Error> {
    let last = sqlx::query(&format!(
        "SELECT seq, hash FROM {} ORDER BY seq DESC LIMIT 1",
        chain.seals
    ))
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(r) = last {
        return Ok((r.try_get(0)?, r.try_get(1)?));
    }
    Ok(newest_checkpoint(&mut **tx, chain)
        .await?
        .map(|c| (c.through_seq, c.through_hash))
        .unwrap_or((0, GENESIS.to_owned())))
}

async fn seal_chain(tx: &mut Tx, chain: &Chain) -> anyhow::Result<usize> {
    let (mut last_seq, mut prev) = head(tx, chain).await?;
    let rows = sqlx::query(&format!(
        "SELECT {} FROM {} WHERE seq > $1 ORDER BY seq LIMIT {SEAL_BATCH_MAX}",
        chain.column_list(""),
        chain.table
    ))
    .bind(last_seq)
    .fetch_all(&mut **tx)
    .await?;
    let now = now_us();
    let mut seals: Vec<(i64, &'static str, String)> = Vec::new();
    'records: for r in &rows {
        let seq: i64 = r.try_get("seq")?;
        let at: i64 = r.try_get("at_us")?;
        // Numbers skipped before this one: rolled back, or not yet committed. Seal them as
        // gaps only once the record after them is old enough that they cannot still commit.
        while last_seq + 1 < seq {
            if now - at < chain.gap_grace_us {
                break 'records;
            }
            last_seq += 1;
            prev = seal_hash(&prev, last_seq, "gap", &[]);
            seals.push((last_seq, "gap", prev.clone()));
        }
        prev = seal_hash(&prev, seq, "event", &chain.fields(r)?);
        seals.push((seq, "event", prev.clone()));
        last_seq = seq;
    }
    // Multi-row inserts: one round trip per few hundred seals.
    for chunk in seals.chunks(250) {
        let values = (0..chunk.len())
            .map(|i| {
                format!(
                    "(${}, ${}, ${}, ${})",
                    i * 4 + 1,
                    i * 4 + 2,
                    i * 4 + 3,
                    i * 4 + 4
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO {} (seq, kind, hash, sealed_at_us) VALUES {values}",
            chain.seals
        );
        let mut q = sqlx::query(&sql);
        for (seq, kind, hash) in chunk {
            q = q.bind(*seq).bind(*kind).bind(hash.clone()).bind(now);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(seals.len())
}

/// A retention checkpoint (a row of `audit_checkpoints`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub id: i64,
    pub chain: String,
    pub prev_through_seq: i64,
    pub through_seq: i64,
    pub through_hash: String,
    pub records_purged: i64,
    pub seals_purged: i64,
    pub purged_before_us: i64,
    pub at_us: i64,
    pub actor: String,
    pub hash: String,
}

impl Checkpoint {
    /// The checkpoint's own link: SHA-256 over the previous checkpoint's hash (of the same
    /// chain) and this row's content.
    pub fn compute_hash(&self, prev: &str) -> String {
        seal_hash(
            prev,
            self.through_seq,
            "checkpoint",
            &[
                Some(self.chain.clone()),
                Some(self.prev_through_seq.to_string()),
                Some(self.through_hash.clone()),
                Some(self.records_purged.to_string()),
                Some(self.seals_purged.to_string()),
                Some(self.purged_before_us.to_string()),
                Some(self.at_us.to_string()),
                Some(self.actor.clone()),
            ],
        )
    }

    fn from_row(r: &sqlx::any::AnyRow) -> Result<Checkpoint, sqlx::Error> {
        Ok(Checkpoint {
            id: r.try_get("id")?,
            chain: r.try_get("chain")?,
            prev_through_seq: r.try_get("prev_through_seq")?,
            through_seq: r.try_get("through_seq")?,
            through_hash: r.try_get("through_hash")?,
            records_purged: r.try_get("records_purged")?,
            seals_purged: r.try_get("seals_purged")?,
            purged_before_us: r.try_get("purged_before_us")?,
            at_us: r.try_get("at_us")?,
            actor: r.try_get("actor")?,
            hash: r.try_get("hash")?,
        })
    }
}

const CHECKPOINT_COLUMNS: &str = "id, chain, prev_through_seq, through_seq, through_hash, \
    records_purged, seals_purged, purged_before_us, at_us, actor, hash";

/// The newest checkpoint of `chain`, if it has been purged.
pub(crate) async fn newest_checkpoint<'c, E>(
    executor: E,
    chain: &Chain,
) -> Result<Option<Checkpoint>, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    sqlx::query(&format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE chain = $1 \
         ORDER BY through_seq DESC LIMIT 1"
    ))
    .bind(chain.name)
    .fetch_optional(executor)
    .await?
    .map(|r| Checkpoint::from_row(&r))
    .transpose()
}

/// What [`verify`] found in one chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainState {
    pub chain: &'static str,
    /// Seals checked (records and gaps after the newest checkpoint).
    pub sealed: i64,
    /// Records not sealed yet.
    pub unsealed: i64,
    /// The newest seal's hash (or the start's).
    pub head: String,
    /// Where the walk started: the newest checkpoint's boundary (0: the genesis).
    pub from_seq: i64,
    pub checkpoints: i64,
}

/// What [`verify`] found: one entry per chain, the audit trail first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub chains: Vec<ChainState>,
}

impl Verified {
    /// The state of the chain named `name` (`audit`, `security`, `export`).
    pub fn chain(&self, name: &str) -> Option<&ChainState> {
        self.chains.iter().find(|c| c.chain == name)
    }
}

/// Walks every chain. Fails naming the first record (or checkpoint) that does not match.
pub async fn verify(db: &Db) -> anyhow::Result<Verified> {
    let mut chains = Vec::with_capacity(CHAINS.len());
    for chain in CHAINS {
        chains.push(verify_chain(db, chain).await?);
    }
    Ok(Verified { chains })
}

/// Checks `chain`'s checkpoints (their own hash chain, and that nothing is left under the
/// newest boundary), then walks its seals from there.
pub async fn verify_chain(db: &Db, chain: &'static Chain) -> anyhow::Result<ChainState> {
    let label = chain.label;
    let mut conn = db.pool.acquire().await?;
    let checkpoints = sqlx::query(&format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE chain = $1 ORDER BY id"
    ))
    .bind(chain.name)
    .fetch_all(&mut *conn)
    .await?;
    let mut prev_cp = GENESIS.to_owned();
    let mut boundary = 0i64;
    let mut start_hash = GENESIS.to_owned();
    let mut newest_id = None;
    for r in &checkpoints {
        let cp = Checkpoint::from_row(r)?;
        anyhow::ensure!(
            cp.prev_through_seq == boundary && cp.through_seq > boundary,
            "{} chain checkpoint {}: does not continue the checkpoint before it",
            chain.name,
            cp.id
        );
        anyhow::ensure!(
            cp.compute_hash(&prev_cp) == cp.hash,
            "{} chain checkpoint {}: altered or forged (its hash does not match)",
            chain.name,
            cp.id
        );
        prev_cp = cp.hash;
        boundary = cp.through_seq;
        start_hash = cp.through_hash;
        newest_id = Some(cp.id);
    }
    if let Some(id) = newest_id {
        // The purge deletes everything under its checkpoint in the same transaction.
        for table in [chain.table, chain.seals] {
            let left: Option<i64> =
                sqlx::query_scalar(&format!("SELECT MIN(seq) FROM {table} WHERE seq <= $1"))
                    .bind(boundary)
                    .fetch_one(&mut *conn)
                    .await?;
            if let Some(seq) = left {
                anyhow::bail!(
                    "{label} {seq}: still present under checkpoint {id} (forged checkpoint, or \
                     a record inserted afterwards)"
                );
            }
        }
    }
    let sql = format!(
        "SELECT s.seq AS seal_seq, s.kind AS seal_kind, s.hash AS seal_hash, {} FROM {} s \
         LEFT JOIN {} e ON e.seq = s.seq WHERE s.seq > $1 ORDER BY s.seq",
        chain.column_list("e."),
        chain.seals,
        chain.table
    );
    let mut rows = sqlx::query(&sql).bind(boundary).fetch(&mut *conn);
    let mut prev = start_hash;
    let mut expected = boundary + 1;
    let mut sealed = 0i64;
    while let Some(r) = rows.try_next().await? {
        let seq: i64 = r.try_get("seal_seq")?;
        let kind: String = r.try_get("seal_kind")?;
        let hash: String = r.try_get("seal_hash")?;
        anyhow::ensure!(seq == expected, "{label} {expected}: its seal is missing");
        let present = r.try_get::<Option<i64>, _>("seq")?.is_some();
        let recomputed = match (kind.as_str(), present) {
            ("event", true) => seal_hash(&prev, seq, "event", &chain.fields(&r)?),
            ("event", false) => anyhow::bail!("{label} {seq}: deleted (sealed, now missing)"),
            ("gap", false) => seal_hash(&prev, seq, "gap", &[]),
            _ => {
                anyhow::bail!("{label} {seq}: present where a gap was sealed (inserted afterwards)")
            }
        };
        if recomputed != hash {
            match newest_id {
                Some(id) if seq == boundary + 1 => anyhow::bail!(
                    "{label} {seq}: altered, or checkpoint {id} before it forged (the record \
                     and the checkpoint's hash do not match its seal)"
                ),
                _ => anyhow::bail!(
                    "{label} {seq}: altered (its content or the chain before it does not match \
                     its seal)"
                ),
            }
        }
        prev = hash;
        expected = seq + 1;
        sealed += 1;
    }
    drop(rows);
    let unsealed: i64 = sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM {} WHERE seq >= $1",
        chain.table
    ))
    .bind(expected)
    .fetch_one(&mut *conn)
    .await?;
    Ok(ChainState {
        chain: chain.name,
        sealed,
        unsealed,
        head: prev,
        from_seq: boundary,
        checkpoints: i64::try_from(checkpoints.len()).unwrap_or(i64::MAX),
    })
}
