//! `carebill reconcile` and the periodic job: Stripe's balance transactions and payouts against
//! the ledger.
//!
//! One run, in this order (each step idempotent, so a run may be interrupted and repeated):
//! 1. **Payments left `processing`** (an outcome that stayed unknown, 3-D Secure not finished):
//!    with a PaymentIntent id, the intent is re-fetched (`GET /v1/payment_intents/{id}`);
//!    without one (the first answer was lost), the charge is asked again with the payment's own
//!    `Idempotency-Key`, which Stripe answers with the first answer — within its 24 h key
//!    window only ([`IDEMPOTENCY_WINDOW_US`]); past it the payment is reported, never re-sent.
//!    A final state settles the payment as the webhook would (a capture entry, or failed).
//! 2. **Payouts** (`GET /v1/payouts`, every page): each `paid` payout is posted once,
//!    Dr 1000 Bank / Cr 1010 clearing, shared with the `payout.paid` webhook through
//!    `processor_payouts` (keyed on Stripe's payout id).
//! 3. **Balance transactions** (`GET /v1/balance_transactions?expand[]=data.source`, every
//!    page): each fee is posted once, Dr 5200 Processor fees / Cr 1010 clearing, keyed on the
//!    balance transaction's id (`processor_fees`); each charge and refund is matched to our
//!    payment or refund (by the PaymentIntent id or `metadata.carebill_payment`, by the refund
//!    id or `metadata.carebill_refund`).
//! 4. **The ledger's side**: our succeeded Stripe payments and refunds, and our posted payouts,
//!    that Stripe did not list.
//!
//! **A window** (`carebill reconcile --since 2026-01-01`, [`run_since`]): steps 2 and 3 ask
//! Stripe only for objects created at or after `since` (its `created[gte]` list filter), and
//! step 4 looks only at our payments and refunds recorded at or after it (each is recorded
//! before Stripe is called, so Stripe's object is never older than ours). A payout we booked in
//! the window that the windowed list lacks is asked for by id: one Stripe created before the
//! window (booked late) is not a mismatch; one Stripe does not know is `missing_in_stripe`.
//! Step 1 and the default run (no window: every page of both lists) are unchanged.
//!
//! Mismatches are reported, never "fixed": `missing_in_ledger` (Stripe moved money we have no
//! final record of), `missing_in_stripe` (we booked money Stripe does not show) and
//! `amount_differs`. `carebill reconcile` prints them as a table (or `--json`) and exits 1 when
//! there is any.

use serde::Serialize;
use serde_json::Value;
use sqlx::Row;
use std::collections::{HashMap, HashSet};

use super::client::{StripeClient, StripeError};
use super::processor::{is_object_id, StripeProcessor};
use crate::config::Config;
use crate::db::{now_us, Backend, Db, Tx};
use crate::error::ApiResult;
use crate::ids::PaymentId;
use crate::ledger::accounts::{account_id, Code};
use crate::ledger::posting::{self, EntryKind, NewEntry, References};
use crate::money::{Currency, Money};
use crate::processor::{ChargeOutcome, ChargeRequest, PaymentProcessor};
use crate::webhooks::outbox::{self, EventType};

/// Stripe keeps an idempotency key at least 24 hours; a lost charge is re-asked with its key
/// only well inside that.
pub const IDEMPOTENCY_WINDOW_US: i64 = 23 * 3_600 * 1_000_000;
/// Objects per page (Stripe's maximum).
const PAGE: usize = 100;
/// Pages read per list in one run (100 000 objects): a bound, not a window.
const PAGES_MAX: usize = 1_000;
/// In-flight payments looked at per run.
const IN_FLIGHT_MAX: i64 = 1_000;

/// One difference between Stripe and the ledger.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Mismatch {
    /// `missing_in_ledger`, `missing_in_stripe` or `amount_differs`.
    pub kind: &'static str,
    /// What kind of object: `payment`, `refund`, `payout`, `fee`.
    pub object: &'static str,
    /// Stripe's id (`pi_…`, `re_…`, `po_…`, `txn_…`), when there is one.
    pub stripe_id: Option<String>,
    /// Our id (`pay_…`, `re_…`), when there is one.
    pub ours: Option<String>,
    pub currency: String,
    pub stripe_amount: Option<i64>,
    pub ledger_amount: Option<i64>,
    pub detail: String,
}

/// What one run did and found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The window's start (RFC 3339), when the run had one (`--since`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    pub balance_transactions_seen: usize,
    pub payouts_seen: usize,
    pub fees_posted: usize,
    pub payouts_posted: usize,
    pub payments_settled: usize,
    /// Still `processing` after this run (Stripe unreachable, or the card holder has not acted).
    pub payments_still_processing: usize,
    pub mismatches: Vec<Mismatch>,
}

impl Report {
    /// The report as a fixed-width table (mismatches, then the counts).
    pub fn table(&self) -> String {
        let mut out = String::new();
        if self.mismatches.is_empty() {
            out.push_str("no mismatches\n");
        } else {
            out.push_str(&format!(
                "{:<18} {:<8} {:<28} {:<28} {:<4} {:>12} {:>12}  {}\n",
                "MISMATCH", "OBJECT", "STRIPE", "OURS", "CUR", "STRIPE_AMT", "LEDGER_AMT", "DETAIL"
            ));
            let opt = |v: &Option<i64>| v.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
            for m in &self.mismatches {
                out.push_str(&format!(
                    "{:<18} {:<8} {:<28} {:<28} {:<4} {:>12} {:>12}  {}\n",
                    m.kind,
                    m.object,
                    m.stripe_id.as_deref().unwrap_or("-"),
                    m.ours.as_deref().unwrap_or("-"),
                    m.currency,
                    opt(&m.stripe_amount),
                    opt(&m.ledger_amount),
                    m.detail
                ));
            }
        }
        if let Some(since) = &self.since {
            out.push_str(&format!("window: Stripe objects created since {since}\n"));
        }
        out.push_str(&format!(
            "balance transactions {} · payouts {} · fees posted {} · payouts posted {} · \
             payments settled {} · still processing {} · mismatches {}\n",
            self.balance_transactions_seen,
            self.payouts_seen,
            self.fees_posted,
            self.payouts_posted,
            self.payments_settled,
            self.payments_still_processing,
            self.mismatches.len()
        ));
        out
    }
}

/// One run against the Stripe account `config` names, over everything.
pub async fn run(db: &Db, config: &Config) -> anyhow::Result<Report> {
    run_since(db, config, None).await
}

/// One run; with `since_us` (epoch microseconds), only over Stripe's objects created at or
/// after it and our records made at or after it (see the module's *A window*).
pub async fn run_since(db: &Db, config: &Config, since_us: Option<i64>) -> anyhow::Result<Report> {
    let stripe = StripeProcessor::from_config(config)?.ok_or_else(|| {
        anyhow::anyhow!("reconciliation needs Stripe: set STRIPE_API_KEY (and STRIPE_API_BASE)")
    })?;
    reconcile_since(db, &stripe, since_us).await
}

pub async fn reconcile(db: &Db, stripe: &StripeProcessor) -> anyhow::Result<Report> {
    reconcile_since(db, stripe, None).await
}

pub async fn reconcile_since(
    db: &Db,
    stripe: &StripeProcessor,
    since_us: Option<i64>,
) -> anyhow::Result<Report> {
    let mut report = Report {
        since: since_us.map(crate::db::us_to_rfc3339),
        ..Report::default()
    };
    settle_in_flight(db, stripe, &mut report).await?;
    let payouts_seen = payouts(db, stripe.client(), since_us, &mut report).await?;
    let seen = balance_transactions(db, stripe.client(), since_us, &mut report).await?;
    ledger_side(
        db,
        stripe.client(),
        since_us,
        &seen,
        &payouts_seen,
        &mut report,
    )
    .await?;
    Ok(report)
}

/// Parses `--since`: an RFC 3339 timestamp or a date (its midnight UTC), not in the future.
/// The error names the option.
pub fn parse_since(value: &str, now_us: i64) -> anyhow::Result<i64> {
    let since = crate::api::timestamp_field("since", value.trim()).map_err(|_| {
        anyhow::anyhow!(
            "--since: must be an RFC 3339 timestamp (2026-01-31T00:00:00Z) or a date (2026-01-31)"
        )
    })?;
    anyhow::ensure!(since >= 0, "--since: must not be before 1970-01-01");
    anyhow::ensure!(since <= now_us, "--since: must not be in the future");
    Ok(since)
}

/// Stripe's list filter for a window: `created[gte]`, whole seconds (rounded down, so the
/// window's first second is included).
fn created_filter(since_us: Option<i64>) -> Vec<(&'static str, String)> {
    since_us
        .map(|us| ("created[gte]", us.div_euclid(1_000_000).to_string()))
        .into_iter()
        .collect()
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn metadata<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get("metadata")?.get(key)?.as_str()
}

fn stripe_err(e: StripeError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Every object of a Stripe list endpoint, page by page (`starting_after`).
async fn list_all(
    client: &StripeClient,
    path: &str,
    extra: &[(&str, String)],
) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..PAGES_MAX {
        let mut query: Vec<(&str, String)> = vec![("limit", PAGE.to_string())];
        query.extend(extra.iter().cloned());
        if let Some(a) = &after {
            query.push(("starting_after", a.clone()));
        }
        let page = client
            .get(path, &query)
            .await
            .map_err(stripe_err)?
            .ok_or_else(|| anyhow::anyhow!("stripe answered 404 for {path}"))?;
        let data = page
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow::anyhow!("{path}: a list without data"))?;
        out.extend(data.iter().cloned());
        let more = page.get("has_more").and_then(Value::as_bool) == Some(true);
        match data.last().and_then(|o| str_of(o, "id")) {
            Some(last) if more => after = Some(last.to_owned()),
            _ => return Ok(out),
        }
    }
    anyhow::bail!("{path}: more than {} pages", PAGES_MAX)
}

/// Step 1: payments left `processing`.
async fn settle_in_flight(
    db: &Db,
    stripe: &StripeProcessor,
    report: &mut Report,
) -> anyhow::Result<()> {
    let rows = sqlx::query(
        "SELECT id, currency, amount_minor, processor_payment_method, processor_idempotency_key, \
         processor_charge_id, created_at_us FROM payments WHERE status = 'processing' ORDER BY seq LIMIT $1",
    )
    .bind(IN_FLIGHT_MAX)
    .fetch_all(&db.pool)
    .await?;
    let now = now_us();
    for row in rows {
        let id = PaymentId::from_db(row.try_get("id")?);
        let currency: Currency = row.try_get::<String, _>("currency")?.parse()?;
        let amount = Money::new(row.try_get("amount_minor")?, currency);
        let charge_id: Option<String> = row.try_get("processor_charge_id")?;
        let created: i64 = row.try_get("created_at_us")?;
        let outcome = match charge_id.as_deref() {
            Some(intent) => match stripe.retrieve_charge(intent).await {
                Ok(Some(o)) => Some(o),
                Ok(None) => {
                    report.mismatches.push(Mismatch {
                        kind: "missing_in_stripe",
                        object: "payment",
                        stripe_id: Some(intent.to_owned()),
                        ours: Some(id.to_string()),
                        currency: currency.code().to_owned(),
                        stripe_amount: None,
                        ledger_amount: Some(amount.amount_minor()),
                        detail: "processing, but Stripe has no such PaymentIntent".to_owned(),
                    });
                    None
                }
                Err(e) => {
                    tracing::warn!(payment = %id, error = %e, "reconcile: intent not re-fetched");
                    None
                }
            },
            None if now.saturating_sub(created) < IDEMPOTENCY_WINDOW_US => {
                let request = ChargeRequest {
                    idempotency_key: row.try_get("processor_idempotency_key")?,
                    amount,
                    payment_method: row.try_get("processor_payment_method")?,
                    payment_id: id.to_string(),
                };
                match stripe.charge(&request).await {
                    Ok(o) => Some(o),
                    Err(e) => {
                        tracing::warn!(payment = %id, error = %e, "reconcile: charge not re-asked");
                        None
                    }
                }
            }
            None => {
                report.mismatches.push(Mismatch {
                    kind: "missing_in_stripe",
                    object: "payment",
                    stripe_id: None,
                    ours: Some(id.to_string()),
                    currency: currency.code().to_owned(),
                    stripe_amount: None,
                    ledger_amount: Some(amount.amount_minor()),
                    detail:
                        "processing with no PaymentIntent id, past Stripe's idempotency window: \
                             look it up by metadata.carebill_payment"
                            .to_owned(),
                });
                None
            }
        };
        let settled = match outcome {
            Some(o) => {
                // A final state settles it; a live one (3-D Secure waiting, processing) keeps
                // the intent id for the next run.
                let is_final = matches!(
                    o,
                    ChargeOutcome::Succeeded { .. } | ChargeOutcome::Declined { .. }
                );
                let backend = db.backend;
                db.write(|tx| {
                    let (id, o) = (id.clone(), o.clone());
                    Box::pin(async move {
                        crate::payments::settle_in_flight(tx, backend, &id, &o).await?;
                        Ok::<_, crate::error::ApiError>(())
                    })
                })
                .await?;
                is_final
            }
            None => false,
        };
        if settled {
            report.payments_settled += 1;
        } else {
            report.payments_still_processing += 1;
        }
    }
    Ok(())
}

/// Step 2: payouts. Returns the ids Stripe listed.
async fn payouts(
    db: &Db,
    client: &StripeClient,
    since_us: Option<i64>,
    report: &mut Report,
) -> anyhow::Result<HashSet<String>> {
    let list = list_all(client, "/v1/payouts", &created_filter(since_us)).await?;
    report.payouts_seen = list.len();
    let mut seen = HashSet::new();
    for p in list {
        let Some(id) = str_of(&p, "id").filter(|id| is_object_id(id)) else {
            continue;
        };
        seen.insert(id.to_owned());
        let currency = str_of(&p, "currency")
            .unwrap_or("")
            .parse::<Currency>()
            .ok();
        let amount = p.get("amount").and_then(Value::as_i64);
        let status = str_of(&p, "status").unwrap_or("");
        let ours = sqlx::query(
            "SELECT currency, amount_minor FROM processor_payouts WHERE processor_payout_id = $1",
        )
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
        match (ours, currency, amount) {
            (Some(row), _, _) => {
                let our_amount: i64 = row.try_get("amount_minor")?;
                let our_currency: String = row.try_get("currency")?;
                if status != "paid" || Some(our_amount) != amount {
                    report.mismatches.push(Mismatch {
                        kind: "amount_differs",
                        object: "payout",
                        stripe_id: Some(id.to_owned()),
                        ours: None,
                        currency: our_currency,
                        stripe_amount: if status == "paid" { amount } else { Some(0) },
                        ledger_amount: Some(our_amount),
                        detail: format!("payout posted; Stripe says {status}"),
                    });
                }
            }
            (None, Some(currency), Some(amount)) if status == "paid" && amount > 0 => {
                let backend = db.backend;
                let arrival = p.get("arrival_date").and_then(Value::as_i64);
                let posted = db
                    .write(|tx| {
                        let id = id.to_owned();
                        Box::pin(async move {
                            super::webhooks::post_payout(
                                tx,
                                backend,
                                &id,
                                Money::new(amount, currency),
                                arrival,
                            )
                            .await
                        })
                    })
                    .await?;
                if posted {
                    report.payouts_posted += 1;
                }
            }
            _ => {} // pending, in transit, failed or canceled before we booked it: nothing yet
        }
    }
    Ok(seen)
}

/// What the balance transactions named: Stripe's ids of charges' intents and refunds.
#[derive(Default)]
struct Seen {
    intents: HashSet<String>,
    payments: HashSet<String>,
    refunds: HashSet<String>,
}

/// Step 3: fees, and charges and refunds matched to ours.
async fn balance_transactions(
    db: &Db,
    client: &StripeClient,
    since_us: Option<i64>,
    report: &mut Report,
) -> anyhow::Result<Seen> {
    let mut query = vec![("expand[]", "data.source".to_owned())];
    query.extend(created_filter(since_us));
    let list = list_all(client, "/v1/balance_transactions", &query).await?;
    report.balance_transactions_seen = list.len();
    let mut seen = Seen::default();
    // A charge's amount per intent, summed (a retried intent may have several charges).
    for bt in list {
        let Some(id) = str_of(&bt, "id").filter(|id| is_object_id(id)) else {
            continue;
        };
        let Ok(currency) = str_of(&bt, "currency").unwrap_or("").parse::<Currency>() else {
            continue;
        };
        let amount = bt.get("amount").and_then(Value::as_i64).unwrap_or(0);
        let fee = bt.get("fee").and_then(Value::as_i64).unwrap_or(0);
        if fee > 0 {
            fee_once(db, id, Money::new(fee, currency), report).await?;
        }
        let source = bt.get("source").cloned().unwrap_or(Value::Null);
        match str_of(&bt, "type").unwrap_or("") {
            "charge" | "payment" => {
                let intent = str_of(&source, "payment_intent").unwrap_or("");
                let ours = metadata(&source, "carebill_payment").unwrap_or("");
                if !intent.is_empty() {
                    seen.intents.insert(intent.to_owned());
                }
                let row = sqlx::query(
                    "SELECT id, status, amount_minor FROM payments WHERE id = $1 \
                     OR (processor_charge_id = $2 AND $2 <> '') ORDER BY seq LIMIT 1",
                )
                .bind(ours)
                .bind(intent)
                .fetch_optional(&db.pool)
                .await?;
                let stripe_id = Some(if intent.is_empty() {
                    str_of(&source, "id").unwrap_or(id).to_owned()
                } else {
                    intent.to_owned()
                });
                let found = compare(
                    report,
                    Compared {
                        object: "payment",
                        verb: "charged",
                        settled: &["succeeded"],
                        stripe_id,
                        currency,
                        stripe_amount: amount,
                        ours: row.as_ref().map(OurRecord::read).transpose()?,
                        unknown: || {
                            format!("balance transaction {id}: a charge we have no payment for")
                        },
                    },
                );
                if let Some(our_id) = found {
                    seen.payments.insert(our_id);
                }
            }
            "refund" | "payment_refund" => {
                let refund_id = str_of(&source, "id").unwrap_or("");
                let ours = metadata(&source, "carebill_refund").unwrap_or("");
                let row = sqlx::query(
                    "SELECT id, status, amount_minor FROM refunds WHERE id = $1 \
                     OR (processor_refund_id = $2 AND $2 <> '') ORDER BY seq LIMIT 1",
                )
                .bind(ours)
                .bind(refund_id)
                .fetch_optional(&db.pool)
                .await?;
                let stripe_amount = amount.checked_neg().unwrap_or(0);
                let stripe_id = Some(if refund_id.is_empty() { id } else { refund_id }.to_owned());
                let found = compare(
                    report,
                    Compared {
                        object: "refund",
                        verb: "refunded",
                        // A pending refund is one Stripe is still settling: not a mismatch.
                        settled: &["succeeded", "pending"],
                        stripe_id,
                        currency,
                        stripe_amount,
                        ours: row.as_ref().map(OurRecord::read).transpose()?,
                        unknown: || {
                            format!("balance transaction {id}: a refund we have no record of")
                        },
                    },
                );
                if let Some(our_id) = found {
                    seen.refunds.insert(our_id);
                }
            }
            // payouts are step 2's; adjustments, fees and the rest carry only their fee here
            _ => {}
        }
    }
    Ok(seen)
}

/// Posts a fee once per balance transaction; reports a fee booked with another amount.
/// Our payment or refund as the balance-transaction pass reads it.
struct OurRecord {
    id: String,
    status: String,
    amount: i64,
}

impl OurRecord {
    fn read(r: &sqlx::any::AnyRow) -> Result<OurRecord, sqlx::Error> {
        Ok(OurRecord {
            id: r.try_get("id")?,
            status: r.try_get("status")?,
            amount: r.try_get("amount_minor")?,
        })
    }
}

/// One Stripe charge or refund against our record of it.
struct Compared<'a, F> {
    object: &'static str,
    /// What Stripe did, for the detail: `charged`, `refunded`.
    verb: &'static str,
    /// Our statuses that agree with money having moved at Stripe.
    settled: &'a [&'a str],
    stripe_id: Option<String>,
    currency: Currency,
    stripe_amount: i64,
    ours: Option<OurRecord>,
    /// The detail when we have no record at all.
    unknown: F,
}

/// Reports the mismatch, if any, between a Stripe charge or refund and our record (none: missing
/// in the ledger; not settled: missing in the ledger; another amount: amount differs). Returns
/// our id when we have the record.
fn compare<F: FnOnce() -> String>(report: &mut Report, c: Compared<'_, F>) -> Option<String> {
    let mismatch = |kind, ours, ledger_amount, detail| Mismatch {
        kind,
        object: c.object,
        stripe_id: c.stripe_id.clone(),
        ours,
        currency: c.currency.code().to_owned(),
        stripe_amount: Some(c.stripe_amount),
        ledger_amount,
        detail,
    };
    let Some(ours) = c.ours else {
        report
            .mismatches
            .push(mismatch("missing_in_ledger", None, None, (c.unknown)()));
        return None;
    };
    if !c.settled.contains(&ours.status.as_str()) {
        report.mismatches.push(mismatch(
            "missing_in_ledger",
            Some(ours.id.clone()),
            None,
            format!("Stripe {}; our {} is {}", c.verb, c.object, ours.status),
        ));
    } else if ours.amount != c.stripe_amount {
        report.mismatches.push(mismatch(
            "amount_differs",
            Some(ours.id.clone()),
            Some(ours.amount),
            format!("{} amount differs", c.verb),
        ));
    }
    Some(ours.id)
}

async fn fee_once(db: &Db, txn: &str, fee: Money, report: &mut Report) -> anyhow::Result<()> {
    let backend = db.backend;
    let outcome = db
        .write(|tx| {
            let txn = txn.to_owned();
            Box::pin(async move { post_fee(tx, backend, &txn, fee).await })
        })
        .await?;
    match outcome {
        FeeOutcome::Posted => report.fees_posted += 1,
        FeeOutcome::Already => {}
        FeeOutcome::Differs(ours) => report.mismatches.push(Mismatch {
            kind: "amount_differs",
            object: "fee",
            stripe_id: Some(txn.to_owned()),
            ours: None,
            currency: fee.currency().code().to_owned(),
            stripe_amount: Some(fee.amount_minor()),
            ledger_amount: Some(ours),
            detail: "fee booked with another amount".to_owned(),
        }),
    }
    Ok(())
}

enum FeeOutcome {
    Posted,
    Already,
    Differs(i64),
}

async fn post_fee(tx: &mut Tx, backend: Backend, txn: &str, fee: Money) -> ApiResult<FeeOutcome> {
    let existing =
        sqlx::query("SELECT amount_minor FROM processor_fees WHERE balance_transaction_id = $1")
            .bind(txn)
            .fetch_optional(&mut **tx)
            .await?;
    if let Some(row) = existing {
        let ours: i64 = row.try_get("amount_minor")?;
        return Ok(if ours == fee.amount_minor() {
            FeeOutcome::Already
        } else {
            FeeOutcome::Differs(ours)
        });
    }
    let currency = fee.currency();
    let entry = NewEntry::new(
        EntryKind::ProcessorFee,
        format!("Stripe fee on {txn}"),
        References::default(),
    )
    .debit(account_id(Code::ProcessorFees, currency), fee)
    .credit(account_id(Code::ProcessorClearing, currency), fee)?;
    sqlx::query(
        "INSERT INTO processor_fees (balance_transaction_id, currency, amount_minor, entry_id, created_at_us) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(txn)
    .bind(currency.code())
    .bind(fee.amount_minor())
    .bind(entry.id.as_str())
    .bind(now_us())
    .execute(&mut **tx)
    .await?;
    let entry_id = entry.id.clone();
    posting::post(tx, backend, entry).await?;
    // The outbox, in the fee's own transaction: once per balance transaction, like the entry.
    let data = serde_json::json!({
        "object": "processor_fee",
        "balance_transaction": txn,
        "amount": fee.amount_minor(),
        "currency": currency.code(),
        "journal_entry": entry_id.as_str(),
    });
    outbox::emit(tx, EventType::ProcessorFeePosted, data).await?;
    Ok(FeeOutcome::Posted)
}

/// Step 4: what we booked that Stripe did not list. Only Stripe's objects (`pi_…`, `re_…`):
/// payments made with the simulator before Stripe was configured are not Stripe's.
async fn ledger_side(
    db: &Db,
    client: &StripeClient,
    since_us: Option<i64>,
    seen: &Seen,
    payouts: &HashSet<String>,
    report: &mut Report,
) -> anyhow::Result<()> {
    // Without a window every record counts (the bound is below any timestamp).
    let from_us = since_us.unwrap_or(i64::MIN);
    let rows = sqlx::query(
        "SELECT id, currency, amount_minor, processor_charge_id FROM payments \
         WHERE status = 'succeeded' AND processor_charge_id LIKE 'pi\\_%' ESCAPE '\\' \
         AND created_at_us >= $1 ORDER BY seq",
    )
    .bind(from_us)
    .fetch_all(&db.pool)
    .await?;
    for r in rows {
        let id: String = r.try_get("id")?;
        let intent: String = r.try_get("processor_charge_id")?;
        if !seen.payments.contains(&id) && !seen.intents.contains(&intent) {
            report.mismatches.push(Mismatch {
                kind: "missing_in_stripe",
                object: "payment",
                stripe_id: Some(intent),
                ours: Some(id),
                currency: r.try_get("currency")?,
                stripe_amount: None,
                ledger_amount: Some(r.try_get("amount_minor")?),
                detail: "captured in the ledger; no Stripe balance transaction".to_owned(),
            });
        }
    }
    let rows = sqlx::query(
        "SELECT id, currency, amount_minor, processor_refund_id FROM refunds \
         WHERE status = 'succeeded' AND processor_refund_id LIKE 're\\_%' ESCAPE '\\' \
         AND created_at_us >= $1 ORDER BY seq",
    )
    .bind(from_us)
    .fetch_all(&db.pool)
    .await?;
    for r in rows {
        let id: String = r.try_get("id")?;
        if !seen.refunds.contains(&id) {
            report.mismatches.push(Mismatch {
                kind: "missing_in_stripe",
                object: "refund",
                stripe_id: r.try_get("processor_refund_id")?,
                ours: Some(id),
                currency: r.try_get("currency")?,
                stripe_amount: None,
                ledger_amount: Some(r.try_get("amount_minor")?),
                detail: "refunded in the ledger; no Stripe balance transaction".to_owned(),
            });
        }
    }
    let rows = sqlx::query(
        "SELECT processor_payout_id, currency, amount_minor FROM processor_payouts \
         WHERE created_at_us >= $1 ORDER BY processor_payout_id",
    )
    .bind(from_us)
    .fetch_all(&db.pool)
    .await?;
    let mut missing: HashMap<String, (String, i64)> = HashMap::new();
    for r in rows {
        let id: String = r.try_get("processor_payout_id")?;
        if payouts.contains(&id) {
            continue;
        }
        if let Some(since_us) = since_us {
            // Booked in the window, but Stripe may have created it before (a payout is
            // booked when it is paid, days after it is created): ask for it by id.
            let path = format!("/v1/payouts/{id}");
            if let Some(p) = client.get(&path, &[]).await.map_err(stripe_err)? {
                let created = p.get("created").and_then(Value::as_i64);
                if created.is_some_and(|c| c < since_us.div_euclid(1_000_000)) {
                    continue; // outside the window: not this run's to judge
                }
            }
        }
        missing.insert(id, (r.try_get("currency")?, r.try_get("amount_minor")?));
    }
    let mut missing: Vec<_> = missing.into_iter().collect();
    missing.sort();
    for (id, (currency, amount)) in missing {
        report.mismatches.push(Mismatch {
            kind: "missing_in_stripe",
            object: "payout",
            stripe_id: Some(id),
            ours: None,
            currency,
            stripe_amount: None,
            ledger_amount: Some(amount),
            detail: "posted to the bank; Stripe lists no such payout".to_owned(),
        });
    }
    Ok(())
}

/// The periodic job: one run every `interval`, logged; errors are logged and retried next time.
pub fn spawn_periodic(db: Db, config: std::sync::Arc<Config>, interval: std::time::Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate: let the server start first
        loop {
            tick.tick().await;
            match run(&db, &config).await {
                Ok(r) if r.mismatches.is_empty() => tracing::info!(
                    fees_posted = r.fees_posted,
                    payouts_posted = r.payouts_posted,
                    payments_settled = r.payments_settled,
                    "reconcile: no mismatches"
                ),
                Ok(r) => tracing::warn!(
                    mismatches = r.mismatches.len(),
                    fees_posted = r.fees_posted,
                    payouts_posted = r.payouts_posted,
                    payments_settled = r.payments_settled,
                    "reconcile: mismatches found (run `carebill reconcile` for the table)"
                ),
                Err(e) => tracing::warn!(error = %e, "reconcile failed; retried next interval"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn since_takes_a_time_or_a_date_and_names_itself_when_refused() {
        let now = 1_800_000_000_000_000; // 2027-01-15
        assert_eq!(
            parse_since("2026-01-31", now).unwrap(),
            1_769_817_600_000_000
        );
        assert_eq!(
            parse_since("2026-01-31T01:00:00+01:00", now).unwrap(),
            1_769_817_600_000_000
        );
        assert_eq!(
            created_filter(Some(1_769_817_600_999_999)),
            vec![("created[gte]", "1769817600".to_owned())]
        );
        assert!(created_filter(None).is_empty());
        for bad in [
            "",
            "yesterday",
            "2026-02-30",
            "31/01/2026",
            "1969-12-31",
            "2027-02-01",
        ] {
            let e = parse_since(bad, now).unwrap_err().to_string();
            assert!(e.starts_with("--since: "), "{bad}: {e}");
        }
    }
}
