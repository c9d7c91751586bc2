//! The database itself guards the books: entries and postings are immutable, an unbalanced or
//! unsealed entry is refused, a running balance must continue its chain, and a stored balance
//! cannot be edited by hand. Tried with raw SQL on both backends, bypassing the application.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;
use sqlx::Row;

async fn refused(app: &TestApp, sql: &str) {
    let r = sqlx::query(sql).execute(&app.db.pool).await;
    assert!(r.is_err(), "{:?} accepted: {sql}", app.backend);
}

async fn balance_and_count(app: &TestApp, account: &str) -> (i64, i64) {
    let row = sqlx::query("SELECT balance_minor, posting_count FROM accounts WHERE id = $1")
        .bind(account)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    (
        row.try_get("balance_minor").unwrap(),
        row.try_get("posting_count").unwrap(),
    )
}

both_backends!(ledger_rows_are_immutable, |app: TestApp| async move {
    // Goal: UPDATE and DELETE on entries and postings are refused by triggers.
    let inv = app.open_invoice("usd", 5000).await;
    app.pay(&inv, 5000).await;
    refused(&app, "UPDATE postings SET amount_minor = amount_minor + 1").await;
    refused(&app, "DELETE FROM postings").await;
    refused(&app, "UPDATE journal_entries SET memo = 'edited'").await;
    refused(&app, "DELETE FROM journal_entries").await;
    if app.backend == carebill::db::Backend::Postgres {
        refused(&app, "TRUNCATE postings CASCADE").await;
    }
    refused(
        &app,
        "UPDATE accounts SET balance_minor = balance_minor + 100 WHERE id = 'acct_1010_usd'",
    )
    .await;
    app.assert_ledger_sound().await;
    app
});

/// Inserts postings for a new entry id on `accounts` with `amounts`, continuing each chain
/// correctly, then the entry header with `declared` postings; returns whether it committed.
async fn try_entry(app: &TestApp, lines: &[(&str, i64)], declared: i64) -> Result<(), sqlx::Error> {
    try_entry_at(app, lines, declared, 0).await
}

/// Like `try_entry`, with the entry's commit sequence number off by `seq_offset`.
async fn try_entry_at(
    app: &TestApp,
    lines: &[(&str, i64)],
    declared: i64,
    seq_offset: i64,
) -> Result<(), sqlx::Error> {
    let mut tx = app.db.begin_write().await?;
    let entry = carebill::ids::EntryId::generate();
    let now = carebill::db::now_us();
    for (account, amount) in lines {
        let row = sqlx::query(
            "SELECT balance_minor, posting_count, last_posted_at_us FROM accounts WHERE id = $1",
        )
        .bind(*account)
        .fetch_one(&mut *tx)
        .await?;
        let (bal, n, last): (i64, i64, i64) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        sqlx::query("INSERT INTO postings (entry_id, account_id, amount_minor, currency, account_seq, balance_after_minor, posted_at_us) VALUES ($1, $2, $3, 'usd', $4, $5, $6)")
            .bind(entry.as_str())
            .bind(*account)
            .bind(*amount)
            .bind(n + 1)
            .bind(bal + amount)
            .bind(now.max(last))
            .execute(&mut *tx)
            .await?;
    }
    let seq: i64 = sqlx::query_scalar(
        "UPDATE ledger_head SET last_seq = last_seq + 1 WHERE id = 1 RETURNING last_seq",
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO journal_entries (id, posted_at_us, effective_date, kind, memo, posting_count, ledger_seq) VALUES ($1, $2, '2026-01-01', 'payment_captured', 'raw', $3, $4)")
        .bind(entry.as_str())
        .bind(now)
        .bind(declared)
        .bind(seq + seq_offset)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

both_backends!(
    database_refuses_unbalanced_and_broken_chains,
    |app: TestApp| async move {
        // Goal: raw inserts that bypass the code are still held to the ledger's rules.
        assert!(
            try_entry(&app, &[("acct_1000_usd", 100), ("acct_1010_usd", -50)], 2)
                .await
                .is_err(),
            "unbalanced"
        );
        assert!(
            try_entry(&app, &[("acct_1000_usd", 100)], 1).await.is_err(),
            "single posting"
        );
        assert!(
            try_entry(&app, &[("acct_1000_usd", 100), ("acct_1010_usd", -100)], 3)
                .await
                .is_err(),
            "declared count differs"
        );
        assert!(
            try_entry(&app, &[("acct_1000_usd", 100), ("acct_1000_eur", -100)], 2)
                .await
                .is_err(),
            "currency differs from account"
        );
        // A balanced raw entry is accepted, and moves the stored balances.
        try_entry(&app, &[("acct_1000_usd", 100), ("acct_1010_usd", -100)], 2)
            .await
            .unwrap();
        assert_eq!(balance_and_count(&app, "acct_1000_usd").await, (100, 1));
        // A posting that does not continue the running balance is refused.
        refused(&app, "INSERT INTO postings (entry_id, account_id, amount_minor, currency, account_seq, balance_after_minor, posted_at_us) \
                   VALUES ('je_x', 'acct_1000_usd', 5, 'usd', 2, 999, 9999999999999999)").await;
        refused(&app, "INSERT INTO postings (entry_id, account_id, amount_minor, currency, account_seq, balance_after_minor, posted_at_us) \
                   VALUES ('je_x', 'acct_1000_usd', 5, 'usd', 1, 105, 9999999999999999)").await;
        // A posting added to a sealed entry is refused.
        let entry: String = sqlx::query("SELECT id FROM journal_entries LIMIT 1")
            .fetch_one(&app.db.pool)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        refused(&app, &format!("INSERT INTO postings (entry_id, account_id, amount_minor, currency, account_seq, balance_after_minor, posted_at_us) \
                   VALUES ('{entry}', 'acct_1000_usd', 5, 'usd', 2, 105, 9999999999999999)")).await;
        // The commit sequence: an entry must take the number just allocated, and the head
        // moves forward by exactly one.
        assert!(
            try_entry_at(&app, &[("acct_1000_usd", 7), ("acct_1010_usd", -7)], 2, 1)
                .await
                .is_err(),
            "an entry skipping the commit sequence"
        );
        refused(&app, "UPDATE ledger_head SET last_seq = last_seq + 2").await;
        refused(&app, "UPDATE ledger_head SET last_seq = last_seq - 1").await;
        refused(&app, "DELETE FROM ledger_head").await;
        app.assert_ledger_sound().await;
        app
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_runs_in_wal_with_full_sync_and_foreign_keys() {
    // Goal: an acknowledged payment is on disk: WAL journal, synchronous=FULL, foreign keys on,
    // on every pooled connection.
    let app = TestApp::spawn(carebill::db::Backend::Sqlite).await;
    for _ in 0..3 {
        let mut conn = app.db.pool.acquire().await.unwrap();
        let mode: String = sqlx::query("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        let sync: i64 = sqlx::query("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        let fk: i64 = sqlx::query("PRAGMA foreign_keys")
            .fetch_one(&mut *conn)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();
        assert_eq!((mode.as_str(), sync, fk), ("wal", 2, 1));
    }
    app.finish().await;
}
