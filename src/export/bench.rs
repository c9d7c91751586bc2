//! `carebill bench-export`: ledger export throughput and peak memory, against PostgreSQL's own
//! `COPY (SELECT …) TO STDOUT WITH CSV` of the same rows, in the same run.
//!
//! The bench seeds `--postings` postings (two per entry, across 1 000 patients' receivable
//! accounts and revenue, so pseudonyms are computed as in real exports) into a fresh database,
//! then runs `carebill export --format F --out /dev/null` as a child process per format,
//! timing it and reading its peak resident memory (VmHWM). The reference is `psql`'s
//! `\copy` of the same join to `/dev/null`.
//!
//! PostgreSQL seeding is set-based with triggers off, then checked by `ledger verify`; SQLite
//! seeding goes row by row through the ledger's own triggers, in one transaction.

use std::time::Instant;

use crate::db::{Backend, Db};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchExportArgs {
    /// A PostgreSQL URL with rights to create databases.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub admin_url: String,
    /// Postings to seed (two per entry).
    #[arg(long, default_value_t = 1_000_000)]
    pub postings: u64,
    #[arg(long, value_enum, default_value = "both")]
    pub backend: crate::bench::BenchBackend,
}

const PATIENTS: i64 = 1000;
const FORMATS: [&str; 4] = ["csv", "jsonl", "beancount", "hledger"];

/// The rows `COPY` reads: the export's own join and columns.
const EXPORT_SELECT: &str = "SELECT e.ledger_seq, e.id, e.posted_at_us, e.effective_date, e.kind, e.memo, \
    e.patient_id, e.invoice_id, e.payment_id, e.refund_id, e.adjustment_id, e.reverses_entry_id, \
    a.id, a.code, c.name, c.kind, a.currency, a.patient_id, p.amount_minor \
    FROM journal_entries e JOIN postings p ON p.entry_id = e.id JOIN accounts a ON a.id = p.account_id \
    JOIN chart_of_accounts c ON c.code = a.code ORDER BY e.ledger_seq, p.seq";

pub async fn run(args: BenchExportArgs) -> anyhow::Result<()> {
    let entries = i64::try_from(args.postings / 2)?.max(1);
    let mut targets: Vec<(Backend, String, Option<tempfile_dir::Dir>)> = Vec::new();
    if matches!(
        args.backend,
        crate::bench::BenchBackend::Postgres | crate::bench::BenchBackend::Both
    ) {
        let url = crate::bench::fresh_pg_database(&args.admin_url, "carebill_bench_export").await?;
        targets.push((Backend::Postgres, url, None));
    }
    if matches!(
        args.backend,
        crate::bench::BenchBackend::Sqlite | crate::bench::BenchBackend::Both
    ) {
        let dir = tempfile_dir::Dir::new()?;
        let url = format!("sqlite://{}/bench.db", dir.path.display());
        targets.push((Backend::Sqlite, url, Some(dir)));
    }
    let exe = std::env::current_exe()?;
    println!(
        "{:<9} {:<10} {:>12} {:>10} {:>12} {:>14}",
        "backend", "format", "postings/s", "seconds", "peak MiB", "ratio to COPY"
    );
    for (backend, url, _dir) in &targets {
        // The exporting process needs the database's keyring (it opens the pseudonym key).
        let keyring = crate::crypto::LocalKeyring::generate_text();
        let db = Db::connect(url).await?;
        crate::db::migrate(&db).await?;
        let started = Instant::now();
        seed(&db, entries).await?;
        eprintln!(
            "seeded {} postings on {} in {:.1}s",
            entries * 2,
            backend.name(),
            started.elapsed().as_secs_f64()
        );
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM postings")
            .fetch_one(&db.pool)
            .await?;
        db.pool.close().await;
        let rows_f = rows_as_f64(rows);
        let copy_secs = if *backend == Backend::Postgres {
            let t = Instant::now();
            let status = std::process::Command::new("psql")
                .arg(url)
                .arg("-qc")
                .arg(format!("\\copy ({EXPORT_SELECT}) TO '/dev/null' WITH CSV"))
                .status()?;
            anyhow::ensure!(status.success(), "psql \\copy failed");
            let secs = t.elapsed().as_secs_f64();
            println!(
                "{:<9} {:<10} {:>12.0} {:>10.2} {:>12} {:>14}",
                "postgres",
                "COPY csv",
                rows_f / secs,
                secs,
                "-",
                "1.00"
            );
            Some(secs)
        } else {
            None
        };
        for format in FORMATS {
            let t = Instant::now();
            let out = std::process::Command::new(&exe)
                .args([
                    "export",
                    "--format",
                    format,
                    "--out",
                    "/dev/null",
                    "--report-peak-memory",
                ])
                .env("DATABASE_URL", url)
                .env("CAREBILL_KEYRING", keyring.as_str())
                .env_remove("CAREBILL_CONFIG")
                .output()?;
            let secs = t.elapsed().as_secs_f64();
            let stderr = String::from_utf8_lossy(&out.stderr);
            anyhow::ensure!(out.status.success(), "export {format} failed: {stderr}");
            let peak_kb: f64 = stderr
                .lines()
                .find_map(|l| l.strip_prefix("peak memory "))
                .and_then(|v| v.trim_end_matches(" kB").trim().parse().ok())
                .unwrap_or(f64::NAN);
            let ratio = copy_secs
                .map(|c| format!("{:.2}", c / secs))
                .unwrap_or_else(|| "-".to_owned());
            println!(
                "{:<9} {:<10} {:>12.0} {:>10.2} {:>12.1} {:>14}",
                backend.name(),
                format,
                rows_f / secs,
                secs,
                peak_kb / 1024.0,
                ratio
            );
        }
    }
    Ok(())
}

#[allow(clippy::as_conversions, clippy::cast_precision_loss)] // display only
fn rows_as_f64(rows: i64) -> f64 {
    rows as f64
}

/// `entries` entries of two postings each: Dr a patient's receivable, Cr revenue, through the
/// ledger's triggers (chain, balance, commit sequence), like real postings.
async fn seed(db: &Db, entries: i64) -> anyhow::Result<()> {
    let mut tx = db.begin_write().await?;
    for i in 0..PATIENTS {
        let id = format!("pat_bench{i:011}");
        sqlx::query(
            // Stand-in ciphertexts: the benchmark's exports are pseudonymous and never open them.
            "INSERT INTO patients (id, name_enc, date_of_birth_enc, created_at_us, updated_at_us) \
             VALUES ($1, 'v1.bench', 'v1.bench', 0, 0)",
        )
        .bind(&id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO accounts (id, code, currency, patient_id, created_at_us) \
             VALUES ($1, '1200', 'usd', $2, 0)",
        )
        .bind(format!("acct_1200_usd_{id}"))
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    match db.backend {
        Backend::Postgres => {
            // Set-based and with triggers off (session_replication_role = replica needs a
            // superuser, as the bench's admin URL is): the per-row triggers would take minutes
            // for a million rows. The rows are built to satisfy them, and `ledger verify`
            // re-derives every invariant afterwards.
            let mut conn = db.pool.acquire().await?;
            sqlx::query("SET session_replication_role = replica")
                .execute(&mut *conn)
                .await?;
            let statements = [
                format!(
                    "INSERT INTO postings (entry_id, account_id, amount_minor, currency, account_seq, \
                       balance_after_minor, posted_at_us) \
                     SELECT eid, acct, amt, 'usd', n, bal, t FROM ( \
                       SELECT i, 0 AS k, 'je_bench' || lpad(i::text, 16, '0') AS eid, \
                              'acct_1200_usd_pat_bench' || lpad((i % {PATIENTS})::text, 11, '0') AS acct, \
                              100 + (i % 997) AS amt, \
                              row_number() OVER (PARTITION BY i % {PATIENTS} ORDER BY i) AS n, \
                              sum(100 + (i % 997)) OVER (PARTITION BY i % {PATIENTS} ORDER BY i) AS bal, \
                              1700000000000000 + i AS t \
                         FROM generate_series(1, {entries}) i \
                       UNION ALL \
                       SELECT i, 1, 'je_bench' || lpad(i::text, 16, '0'), 'acct_4000_usd', \
                              -(100 + (i % 997)), i, -sum(100 + (i % 997)) OVER (ORDER BY i), \
                              1700000000000000 + i \
                         FROM generate_series(1, {entries}) i) x ORDER BY i, k"
                ),
                format!(
                    "INSERT INTO journal_entries (id, posted_at_us, effective_date, kind, memo, \
                       posting_count, patient_id, invoice_id, ledger_seq) \
                     SELECT 'je_bench' || lpad(i::text, 16, '0'), 1700000000000000 + i, '2026-01-15', \
                            'invoice_finalized', 'Invoice inv_bench finalized', 2, \
                            'pat_bench' || lpad((i % {PATIENTS})::text, 11, '0'), 'inv_bench', i \
                       FROM generate_series(1, {entries}) i"
                ),
                "UPDATE accounts a SET balance_minor = s.bal, posting_count = s.n, last_posted_at_us = s.t \
                   FROM (SELECT account_id, SUM(amount_minor) AS bal, COUNT(*) AS n, MAX(posted_at_us) AS t \
                           FROM postings GROUP BY account_id) s WHERE s.account_id = a.id"
                    .to_owned(),
                format!("UPDATE ledger_head SET last_seq = {entries} WHERE id = 1"),
                "SET session_replication_role = origin".to_owned(),
                "ANALYZE".to_owned(),
            ];
            for sql in statements {
                sqlx::query(&sql).execute(&mut *conn).await?;
            }
        }
        Backend::Sqlite => {
            let mut tx = db.begin_write().await?;
            let mut rev_bal = 0i64;
            let mut balances = vec![(0i64, 0i64); usize::try_from(PATIENTS)?];
            for i in 1..=entries {
                let amt = 100 + (i % 997);
                let eid = format!("je_bench{i:016}");
                let p = i % PATIENTS;
                let pat = format!("pat_bench{p:011}");
                let slot = balances
                    .get_mut(usize::try_from(p)?)
                    .ok_or_else(|| anyhow::anyhow!("patient slot"))?;
                slot.0 += 1;
                slot.1 += amt;
                rev_bal -= amt;
                sqlx::query(
                    "INSERT INTO postings (entry_id, account_id, amount_minor, currency, account_seq, \
                     balance_after_minor, posted_at_us) VALUES ($1, $2, $3, 'usd', $4, $5, $6), \
                     ($1, 'acct_4000_usd', $7, 'usd', $8, $9, $6)",
                )
                .bind(&eid)
                .bind(format!("acct_1200_usd_{pat}"))
                .bind(amt)
                .bind(slot.0)
                .bind(slot.1)
                .bind(1_700_000_000_000_000 + i)
                .bind(-amt)
                .bind(i)
                .bind(rev_bal)
                .execute(&mut *tx)
                .await?;
                let seq: i64 = sqlx::query_scalar(
                    "UPDATE ledger_head SET last_seq = last_seq + 1 WHERE id = 1 RETURNING last_seq",
                )
                .fetch_one(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO journal_entries (id, posted_at_us, effective_date, kind, memo, \
                     posting_count, patient_id, invoice_id, ledger_seq) VALUES ($1, $2, '2026-01-15', \
                     'invoice_finalized', 'Invoice inv_bench finalized', 2, $3, 'inv_bench', $4)",
                )
                .bind(&eid)
                .bind(1_700_000_000_000_000 + i)
                .bind(&pat)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        }
    }
    // Every bookkeeping invariant holds. (The bench's receivables have no invoices behind
    // them, so the billing cross-check between the two does not apply.)
    let violations: Vec<String> = crate::ledger::invariants::verify(db)
        .await?
        .into_iter()
        .filter(|v| !v.starts_with("a patient's receivable balance is the sum of their invoices"))
        .collect();
    anyhow::ensure!(
        violations.is_empty(),
        "seeded ledger unsound: {violations:?}"
    );
    Ok(())
}

/// A temporary directory removed on drop (the bench's SQLite file).
mod tempfile_dir {
    pub struct Dir {
        pub path: std::path::PathBuf,
    }

    impl Dir {
        pub fn new() -> std::io::Result<Dir> {
            let path = std::env::temp_dir().join(format!(
                "carebill-bench-export-{}",
                uuid::Uuid::new_v4().simple()
            ));
            std::fs::create_dir_all(&path)?;
            Ok(Dir { path })
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
