//! Posting a journal entry: the only code that writes to the ledger.
//!
//! What must happen, in this order, inside the caller's write transaction:
//! 1. the entry is checked to balance per currency, with at least two postings, one per account;
//! 2. the accounts are locked in ascending id order (a fixed order, so two entries touching
//!    the same accounts never deadlock; SQLite's `BEGIN IMMEDIATE` already serializes writers);
//! 3. each posting gets the account's next sequence number and its running balance after it,
//!    computed with checked arithmetic;
//! 4. the postings are inserted, then the entry header, whose insert trigger checks again that
//!    the postings exist and balance, and seals them.
//!
//! Post last in a transaction. The provider-wide accounts (processor clearing, revenue) are the
//! ledger's hot rows: every payment locks the clearing account. The entry's id is chosen before
//! posting ([`NewEntry::id`]), so the rows that point at it are written first (their foreign
//! keys are checked at commit) and the hot rows stay locked only for the postings and the commit.
//!
//! What must not happen: an unbalanced entry, an overflow, a posting to an account of another
//! currency, a balance that differs from the sum of its postings. Each is asserted here and
//! refused again by the database.

use std::collections::BTreeMap;

use sqlx::Row;

use crate::db::{now_us, placeholders, Backend, Tx};
use crate::error::ApiError;
use crate::ids::{AccountId, EntryId, InvoiceId, PatientId, PaymentId, RefundId};
use crate::money::{Currency, Money};

/// Postings in one entry, at most. Our entries have two to four; the bound keeps a bug from
/// building an unbounded statement.
pub const POSTINGS_PER_ENTRY_MAX: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    InvoiceFinalized,
    InvoiceAdjustment,
    PaymentCaptured,
    RefundSucceeded,
    Reversal,
    /// A chargeback opened: clearing → disputed funds.
    DisputeOpened,
    /// Won: disputed funds → clearing.
    DisputeWon,
    /// Lost: disputed funds → write-offs.
    DisputeLost,
    /// A Stripe payout reached the bank: clearing → bank.
    Payout,
    /// Stripe's fee on a balance transaction: clearing → processor fees.
    ProcessorFee,
}

impl EntryKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            EntryKind::InvoiceFinalized => "invoice_finalized",
            EntryKind::InvoiceAdjustment => "invoice_adjustment",
            EntryKind::PaymentCaptured => "payment_captured",
            EntryKind::RefundSucceeded => "refund_succeeded",
            EntryKind::Reversal => "reversal",
            EntryKind::DisputeOpened => "dispute_opened",
            EntryKind::DisputeWon => "dispute_won",
            EntryKind::DisputeLost => "dispute_lost",
            EntryKind::Payout => "payout",
            EntryKind::ProcessorFee => "processor_fee",
        }
    }
}

/// The business objects an entry belongs to, recorded on the entry for audit and export.
#[derive(Debug, Clone, Default)]
pub struct References {
    pub patient: Option<PatientId>,
    pub invoice: Option<InvoiceId>,
    pub payment: Option<PaymentId>,
    pub refund: Option<RefundId>,
    pub adjustment: Option<String>,
}

/// An entry to post: signed amounts per account (debits positive, credits negative).
#[derive(Debug, Clone)]
pub struct NewEntry {
    /// Chosen up front, so the rows that point at the entry can be written before it is posted.
    pub id: EntryId,
    pub kind: EntryKind,
    pub memo: String,
    pub effective_date: chrono::NaiveDate,
    pub references: References,
    pub reverses: Option<EntryId>,
    lines: Vec<(AccountId, Money)>,
}

impl NewEntry {
    pub fn new(kind: EntryKind, memo: impl Into<String>, references: References) -> Self {
        NewEntry {
            id: EntryId::generate(),
            kind,
            memo: memo.into(),
            effective_date: chrono::Utc::now().date_naive(),
            references,
            reverses: None,
            lines: Vec::new(),
        }
    }

    /// Adds a debit (positive signed amount) of `amount` to `account`.
    pub fn debit(mut self, account: AccountId, amount: Money) -> Self {
        self.lines.push((account, amount));
        self
    }

    /// Adds a credit (negative signed amount) of `amount` to `account`.
    pub fn credit(mut self, account: AccountId, amount: Money) -> Result<Self, ApiError> {
        self.lines.push((account, amount.checked_neg()?));
        Ok(self)
    }

    /// Skips zero amounts (an overpayment of nothing, say) before they reach the ledger.
    pub fn credit_if_nonzero(self, account: AccountId, amount: Money) -> Result<Self, ApiError> {
        if amount.is_zero() {
            Ok(self)
        } else {
            self.credit(account, amount)
        }
    }

    pub fn debit_if_nonzero(self, account: AccountId, amount: Money) -> Self {
        if amount.is_zero() {
            self
        } else {
            self.debit(account, amount)
        }
    }

    /// Merges lines per account, drops zero sums, and checks the entry balances per currency.
    fn into_postings(self) -> Result<(EntryHeader, Vec<(AccountId, Money)>), ApiError> {
        let mut per_account: BTreeMap<AccountId, Money> = BTreeMap::new();
        for (account, amount) in self.lines {
            let merged = match per_account.get(&account) {
                Some(existing) => existing.checked_add(amount)?,
                None => amount,
            };
            per_account.insert(account, merged);
        }
        let postings: Vec<(AccountId, Money)> = per_account
            .into_iter()
            .filter(|(_, m)| !m.is_zero())
            .collect();
        let mut per_currency: BTreeMap<Currency, Money> = BTreeMap::new();
        for (_, amount) in &postings {
            let sum = per_currency
                .get(&amount.currency())
                .copied()
                .unwrap_or(Money::zero(amount.currency()))
                .checked_add(*amount)?;
            per_currency.insert(amount.currency(), sum);
        }
        if postings.len() < 2
            || postings.len() > POSTINGS_PER_ENTRY_MAX
            || per_currency.values().any(|sum| !sum.is_zero())
        {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "ledger invariant: entry of kind {} does not balance or has {} postings",
                self.kind.as_str(),
                postings.len()
            )));
        }
        let header = EntryHeader {
            id: self.id,
            kind: self.kind,
            memo: self.memo,
            effective_date: self.effective_date,
            references: self.references,
            reverses: self.reverses,
        };
        Ok((header, postings))
    }
}

struct EntryHeader {
    id: EntryId,
    kind: EntryKind,
    memo: String,
    effective_date: chrono::NaiveDate,
    references: References,
    reverses: Option<EntryId>,
}

/// A locked account's state.
struct AccountState {
    currency: String,
    balance_minor: i64,
    posting_count: i64,
    last_posted_at_us: i64,
}

/// Posts `entry` in `tx` and returns its id. See the module docs for the steps.
pub async fn post(tx: &mut Tx, backend: Backend, entry: NewEntry) -> Result<EntryId, ApiError> {
    let (header, postings) = entry.into_postings()?;
    // Per-patient accounts first, then the provider-wide ones (clearing, revenue…), each group
    // in id order: one total order for every transaction, so no deadlock, and the hot
    // provider-wide rows are locked last, for the shortest time.
    let accounts = lock_accounts(tx, backend, postings.iter().map(|(a, _)| a)).await?;

    // Time never runs backwards on an account, whatever the clock does.
    let posted_at_us = accounts
        .values()
        .map(|a| a.last_posted_at_us)
        .fold(now_us(), i64::max);
    let entry_id = header.id.clone();

    // One multi-row INSERT for all postings: one round trip while the hot rows are locked.
    let mut rows = Vec::with_capacity(postings.len());
    for (account, amount) in &postings {
        let state = accounts
            .get(account)
            .ok_or_else(|| anyhow::anyhow!("ledger: account {account} does not exist"))?;
        if state.currency != amount.currency().code() {
            return Err(anyhow::anyhow!(
                "ledger invariant: posting to {account} in another currency"
            )
            .into());
        }
        let balance_after =
            Money::new(state.balance_minor, amount.currency()).checked_add(*amount)?;
        let account_seq = state
            .posting_count
            .checked_add(1)
            .ok_or_else(|| anyhow::anyhow!("ledger: posting count overflow"))?;
        rows.push((account, amount, account_seq, balance_after));
    }
    let values = (0..rows.len())
        .map(|i| {
            let b = i.saturating_mul(6);
            format!(
                "($1, ${}, ${}, ${}, ${}, ${}, ${})",
                b.saturating_add(2),
                b.saturating_add(3),
                b.saturating_add(4),
                b.saturating_add(5),
                b.saturating_add(6),
                b.saturating_add(7)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "INSERT INTO postings (entry_id, account_id, amount_minor, currency, account_seq, \
         balance_after_minor, posted_at_us) VALUES {values}"
    );
    let mut insert = sqlx::query(&sql).bind(entry_id.as_str());
    for (account, amount, account_seq, balance_after) in &rows {
        insert = insert
            .bind(account.as_str())
            .bind(amount.amount_minor())
            .bind(amount.currency().code())
            .bind(*account_seq)
            .bind(balance_after.amount_minor())
            .bind(posted_at_us);
    }
    insert.execute(&mut **tx).await?;

    // The commit sequence: the ledger_head row stays locked until this transaction commits,
    // so entries get ledger_seq in commit order (what export cursors rely on). Taken after
    // the accounts, like every other posting transaction: one lock order, no deadlock.
    let ledger_seq: i64 = sqlx::query_scalar(
        "UPDATE ledger_head SET last_seq = last_seq + 1 WHERE id = 1 RETURNING last_seq",
    )
    .fetch_one(&mut **tx)
    .await?;

    let refs = &header.references;
    let effective_date = header.effective_date.format("%Y-%m-%d").to_string();
    sqlx::query(
        "INSERT INTO journal_entries (id, posted_at_us, effective_date, kind, memo, posting_count, \
         reverses_entry_id, patient_id, invoice_id, payment_id, refund_id, adjustment_id, ledger_seq) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(entry_id.as_str())
    .bind(posted_at_us)
    .bind(&effective_date)
    .bind(header.kind.as_str())
    .bind(&header.memo)
    .bind(i64::try_from(postings.len()).map_err(anyhow::Error::new)?)
    .bind(header.reverses.as_ref().map(|e| e.as_str().to_owned()))
    .bind(refs.patient.as_ref().map(|p| p.as_str().to_owned()))
    .bind(refs.invoice.as_ref().map(|p| p.as_str().to_owned()))
    .bind(refs.payment.as_ref().map(|p| p.as_str().to_owned()))
    .bind(refs.refund.as_ref().map(|p| p.as_str().to_owned()))
    .bind(refs.adjustment.clone())
    .bind(ledger_seq)
    .execute(&mut **tx)
    .await?;
    // The outbox, in the same transaction, from what is in hand: no read-back while the
    // commit sequence is locked.
    let inserted: Vec<(&AccountId, Money)> = rows
        .iter()
        .map(|(account, amount, _, _)| (*account, **amount))
        .collect();
    crate::webhooks::outbox::ledger_entry(
        tx,
        crate::webhooks::outbox::PostedEntry {
            id: &entry_id,
            kind: header.kind.as_str(),
            ledger_seq,
            posted_at_us,
            effective_date: &effective_date,
            reverses: header.reverses.as_ref(),
            references: refs,
            postings: &inserted,
        },
    )
    .await?;
    Ok(entry_id)
}

/// Locks the accounts, per-patient ones first and then provider-wide ones, each in id order
/// (PostgreSQL locks the rows of `ORDER BY … FOR UPDATE` in output order), and returns their
/// state.
async fn lock_accounts<'a>(
    tx: &mut Tx,
    backend: Backend,
    ids: impl Iterator<Item = &'a AccountId>,
) -> Result<BTreeMap<AccountId, AccountState>, ApiError> {
    let mut ids: Vec<&AccountId> = ids.collect();
    ids.sort();
    ids.dedup();
    let sql = format!(
        "SELECT id, currency, balance_minor, posting_count, last_posted_at_us FROM accounts \
         WHERE id IN ({}) ORDER BY CASE WHEN patient_id IS NULL THEN 1 ELSE 0 END, id{}",
        placeholders(1, ids.len()),
        backend.for_update()
    );
    let mut query = sqlx::query(&sql);
    for id in &ids {
        query = query.bind(id.as_str());
    }
    let rows = query.fetch_all(&mut **tx).await?;
    let mut out = BTreeMap::new();
    for row in rows {
        out.insert(
            AccountId::from_db(row.try_get("id")?),
            AccountState {
                currency: row.try_get("currency")?,
                balance_minor: row.try_get("balance_minor")?,
                posting_count: row.try_get("posting_count")?,
                last_posted_at_us: row.try_get("last_posted_at_us")?,
            },
        );
    }
    Ok(out)
}

/// Posts the reversal of `original`: the same postings with opposite signs, pointing back at
/// it. The ledger's only way to correct or cancel; a second reversal of one entry is refused
/// by the unique `reverses_entry_id`.
pub async fn reverse(
    tx: &mut Tx,
    backend: Backend,
    original: &EntryId,
    memo: impl Into<String>,
    references: References,
) -> Result<EntryId, ApiError> {
    let rows = sqlx::query(
        "SELECT account_id, amount_minor, currency FROM postings WHERE entry_id = $1 ORDER BY seq",
    )
    .bind(original.as_str())
    .fetch_all(&mut **tx)
    .await?;
    let mut entry = NewEntry::new(EntryKind::Reversal, memo, references);
    entry.reverses = Some(original.clone());
    for row in rows {
        let currency: String = row.try_get("currency")?;
        let currency: Currency = currency.parse()?;
        let amount = Money::new(row.try_get("amount_minor")?, currency).checked_neg()?;
        entry = entry.debit(AccountId::from_db(row.try_get("account_id")?), amount);
    }
    post(tx, backend, entry).await
}
