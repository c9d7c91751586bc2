//! Whole-ledger invariant checks: what must always be true of the books.
//!
//! The code asserts these per transaction and the database refuses their violation; this
//! module re-derives them from the raw rows, independently of both, so tests (after every step
//! of the property test) and operators (`carebill ledger verify`) can prove they still hold.
//! Every query is a full scan: this is an audit, not a hot path.

use sqlx::Row;

use crate::db::Db;

/// One failed check, with the rows that fail it.
pub type Violation = String;

/// Runs every check and returns the violations (empty when the books are sound).
pub async fn verify(db: &Db) -> anyhow::Result<Vec<Violation>> {
    let mut violations = Vec::new();
    for (name, sql) in CHECKS {
        let rows = sqlx::query(sql).fetch_all(&db.pool).await?;
        for row in rows.iter().take(20) {
            let what: String = row.try_get(0)?;
            violations.push(format!("{name}: {what}"));
        }
    }
    Ok(violations)
}

/// Each check selects one text column describing every offending row; no rows means it holds.
const CHECKS: &[(&str, &str)] = &[
    (
        "the commit sequence numbers every entry 1..head, without gaps",
        "SELECT 'head ' || CAST(h.last_seq AS TEXT) || ', entries ' || CAST(COUNT(e.id) AS TEXT) \
           || ', max ' || CAST(COALESCE(MAX(e.ledger_seq), 0) AS TEXT) \
         FROM ledger_head h LEFT JOIN journal_entries e ON 1 = 1 \
         GROUP BY h.last_seq \
         HAVING COUNT(e.id) <> h.last_seq OR COALESCE(MAX(e.ledger_seq), 0) <> h.last_seq \
            OR COALESCE(MIN(e.ledger_seq), 1) <> 1",
    ),
    (
        "every entry balances per currency",
        "SELECT entry_id || ' ' || currency FROM postings GROUP BY entry_id, currency HAVING SUM(amount_minor) <> 0",
    ),
    (
        "every entry has its declared postings, at least two",
        "SELECT e.id FROM journal_entries e \
         WHERE e.posting_count < 2 OR e.posting_count <> (SELECT COUNT(*) FROM postings p WHERE p.entry_id = e.id)",
    ),
    (
        "no posting without its entry",
        "SELECT p.entry_id FROM postings p LEFT JOIN journal_entries e ON e.id = p.entry_id WHERE e.id IS NULL",
    ),
    (
        "all postings sum to zero per currency",
        "SELECT currency FROM postings GROUP BY currency HAVING SUM(amount_minor) <> 0",
    ),
    (
        "every stored balance equals the sum of its postings",
        "SELECT a.id FROM accounts a LEFT JOIN \
           (SELECT account_id, SUM(amount_minor) AS s, COUNT(*) AS n FROM postings GROUP BY account_id) p \
           ON p.account_id = a.id \
         WHERE a.balance_minor <> COALESCE(p.s, 0) OR a.posting_count <> COALESCE(p.n, 0)",
    ),
    (
        "every running balance equals the sum of the postings up to it",
        "SELECT account_id || ' #' || CAST(account_seq AS TEXT) FROM \
           (SELECT account_id, account_seq, balance_after_minor, \
                   SUM(amount_minor) OVER (PARTITION BY account_id ORDER BY account_seq) AS running \
              FROM postings) t \
         WHERE t.running <> t.balance_after_minor",
    ),
    (
        "every posting is in its account's currency",
        "SELECT CAST(p.seq AS TEXT) FROM postings p JOIN accounts a ON a.id = p.account_id WHERE a.currency <> p.currency",
    ),
    (
        "refunds of a payment never exceed what was captured",
        "SELECT p.id FROM payments p LEFT JOIN \
           (SELECT payment_id, SUM(amount_minor) AS s FROM refunds WHERE status = 'succeeded' GROUP BY payment_id) r \
           ON r.payment_id = p.id \
         WHERE COALESCE(r.s, 0) > CASE WHEN p.status = 'succeeded' THEN p.amount_minor ELSE 0 END \
            OR COALESCE(r.s, 0) <> p.refunded_applied_minor + p.refunded_credited_minor",
    ),
    (
        "an invoice's total is the sum of its lines",
        "SELECT i.id FROM invoices i WHERE i.total_minor <> \
           (SELECT COALESCE(SUM(l.amount_minor), 0) FROM invoice_lines l WHERE l.invoice_id = i.id)",
    ),
    (
        "amount due = charges - adjustments - payments + refunds, each from its own rows",
        "SELECT i.id FROM invoices i WHERE i.status <> 'void' AND ( \
            i.amount_adjusted_minor <> (SELECT COALESCE(SUM(a.amount_minor), 0) FROM adjustments a WHERE a.invoice_id = i.id AND a.status = 'posted') \
         OR i.amount_paid_minor <> (SELECT COALESCE(SUM(p.amount_applied_minor), 0) FROM payments p \
                                    WHERE p.invoice_id = i.id AND p.status = 'succeeded') \
         OR i.amount_refunded_minor <> (SELECT COALESCE(SUM(r.applied_minor), 0) FROM refunds r \
                                        JOIN payments p ON p.id = r.payment_id \
                                        WHERE p.invoice_id = i.id AND r.status = 'succeeded') \
         OR i.amount_due_minor <> i.total_minor - i.amount_adjusted_minor - i.amount_paid_minor + i.amount_refunded_minor)",
    ),
    (
        "an invoice's receivable postings sum to its amount due",
        "SELECT i.id FROM invoices i WHERE i.status <> 'draft' AND i.amount_due_minor <> \
           (SELECT COALESCE(SUM(p.amount_minor), 0) FROM postings p JOIN journal_entries e ON e.id = p.entry_id \
             WHERE e.invoice_id = i.id AND p.account_id LIKE 'acct_1200_%')",
    ),
    (
        "a patient's receivable balance is the sum of their invoices' amounts due",
        "SELECT a.id FROM accounts a WHERE a.code = '1200' AND a.balance_minor <> \
           (SELECT COALESCE(SUM(i.amount_due_minor), 0) FROM invoices i \
             WHERE i.patient_id = a.patient_id AND i.currency = a.currency AND i.status <> 'draft')",
    ),
    (
        "a patient's credit balance is their unrefunded overpayments",
        "SELECT a.id FROM accounts a WHERE a.code = '2100' AND -a.balance_minor <> \
           (SELECT COALESCE(SUM(p.amount_credited_minor - p.refunded_credited_minor), 0) FROM payments p \
             WHERE p.patient_id = a.patient_id AND p.currency = a.currency AND p.status = 'succeeded')",
    ),
    (
        "no receivable is in credit and no credit balance is in debit",
        "SELECT id FROM accounts WHERE (code = '1200' AND balance_minor < 0) OR (code = '2100' AND balance_minor > 0)",
    ),
    (
        "a reversal mirrors its original exactly",
        "SELECT r.id FROM journal_entries r JOIN journal_entries o ON o.id = r.reverses_entry_id WHERE EXISTS ( \
           SELECT account_id, currency FROM postings WHERE entry_id IN (r.id, o.id) \
           GROUP BY account_id, currency HAVING SUM(amount_minor) <> 0)",
    ),
];
