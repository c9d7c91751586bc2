//! The outbox: an event is written in the transaction of the change that causes it, with one
//! pending delivery per endpoint subscribed at that moment. The transaction commits both or
//! neither, so there is no event without its change and no change without its event; the
//! delivery worker sends them afterwards, and the request never waits for a receiver.
//!
//! Each call site is one line (`outbox::payment(tx, kind, &id)` …): the payload is read back
//! here, inside the same transaction, from the rows the change just wrote.
//!
//! **Payloads carry ids, amounts, currencies, statuses and dates, never health data**: no
//! patient name, date of birth, contact detail, MRN, procedure code, line description, refund
//! note or free-text memo. Patients appear by their random id (`pat_…`), which carries no
//! information. `tests/webhooks_out.rs` checks a whole flow's payloads for the health data it
//! entered.

use serde_json::{json, Value};
use sqlx::Row;

use crate::db::{now_us, us_to_rfc3339, Tx};
use crate::error::ApiResult;
use crate::ids::{
    AccountId, EntryId, InvoiceId, PaymentId, RefundId, WebhookDeliveryId, WebhookEventId,
};
use crate::ledger::posting::References;
use crate::money::Money;

/// The event types. `*` subscribes an endpoint to all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    PaymentSucceeded,
    PaymentFailed,
    RefundSucceeded,
    RefundFailed,
    InvoiceFinalized,
    InvoicePaid,
    InvoiceVoided,
    LedgerEntryPosted,
    DisputeCreated,
    DisputeWon,
    DisputeLost,
    PayoutPaid,
    ProcessorFeePosted,
}

impl EventType {
    pub const ALL: [EventType; 13] = [
        EventType::PaymentSucceeded,
        EventType::PaymentFailed,
        EventType::RefundSucceeded,
        EventType::RefundFailed,
        EventType::InvoiceFinalized,
        EventType::InvoicePaid,
        EventType::InvoiceVoided,
        EventType::LedgerEntryPosted,
        EventType::DisputeCreated,
        EventType::DisputeWon,
        EventType::DisputeLost,
        EventType::PayoutPaid,
        EventType::ProcessorFeePosted,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::PaymentSucceeded => "payment.succeeded",
            EventType::PaymentFailed => "payment.failed",
            EventType::RefundSucceeded => "refund.succeeded",
            EventType::RefundFailed => "refund.failed",
            EventType::InvoiceFinalized => "invoice.finalized",
            EventType::InvoicePaid => "invoice.paid",
            EventType::InvoiceVoided => "invoice.voided",
            EventType::LedgerEntryPosted => "ledger.entry_posted",
            EventType::DisputeCreated => "dispute.created",
            EventType::DisputeWon => "dispute.won",
            EventType::DisputeLost => "dispute.lost",
            EventType::PayoutPaid => "payout.paid",
            EventType::ProcessorFeePosted => "processor_fee.posted",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// Writes the event `kind` with `data` and its deliveries, in `tx`. Returns the event id.
///
/// One statement on PostgreSQL whatever the number of endpoints: the event, and one pending
/// delivery per enabled endpoint subscribed to `kind` (or to `*`) by an `INSERT … SELECT`, in one
/// data-modifying CTE (two statements on SQLite). Every event costs the change that causes it
/// this one round trip and nothing else; `ledger.entry_posted` pays it while the ledger's commit
/// sequence is locked, so nothing here reads back.
///
/// A first delivery's id is derived from its event and endpoint (`whd_<event>e<endpoint seq>`),
/// which the database can make in the same statement; it is unique because (event, endpoint)
/// has exactly one first delivery, and it carries nothing but those two ids. Replays get random
/// ids ([`insert_delivery`]).
pub async fn emit(tx: &mut Tx, kind: EventType, data: Value) -> ApiResult<WebhookEventId> {
    let id = WebhookEventId::generate();
    let now = now_us();
    // The Standard Webhooks payload shape: type, timestamp, data.
    let payload = json!({
        "type": kind.as_str(),
        "timestamp": us_to_rfc3339(now),
        "data": data,
    })
    .to_string();
    let random_part = id
        .as_str()
        .strip_prefix(WebhookEventId::PREFIX)
        .ok_or_else(|| anyhow::anyhow!("webhook event id without its prefix"))?;
    let delivery_prefix = format!("{}{random_part}e", WebhookDeliveryId::PREFIX);
    // PostgreSQL takes both inserts in one statement (a data-modifying CTE; the deliveries'
    // foreign key is checked at the statement's end, when the event exists). SQLite has no
    // INSERT in a CTE and no round trip to save: it runs in-process.
    let postgres = (**tx).backend_name() == "PostgreSQL";
    if !postgres {
        sqlx::query(
            "INSERT INTO webhook_events (id, type, payload, created_at_us) VALUES ($1, $2, $3, $4)",
        )
        .bind(id.as_str())
        .bind(kind.as_str())
        .bind(&payload)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    let event_cte = if postgres {
        "WITH event AS (INSERT INTO webhook_events (id, type, payload, created_at_us) \
         VALUES ($1, $2, $3, $4)) "
    } else {
        ""
    };
    let sql = format!(
        "{event_cte}INSERT INTO webhook_deliveries (id, event_id, endpoint_id, status, attempts, \
         next_attempt_at_us, created_at_us, updated_at_us) \
         SELECT $5 || CAST(e.seq AS TEXT), $1, e.id, 'pending', 0, $4, $4, $4 \
         FROM webhook_endpoints e WHERE e.status = 'enabled' AND EXISTS \
         (SELECT 1 FROM webhook_endpoint_events s WHERE s.endpoint_id = e.id \
          AND s.event_type IN ($2, '*')) ORDER BY e.seq"
    );
    // SQLite: $3 is bound but unused by this statement (numbered parameters may skip).
    sqlx::query(&sql)
        .bind(id.as_str())
        .bind(kind.as_str())
        .bind(&payload)
        .bind(now)
        .bind(&delivery_prefix)
        .execute(&mut **tx)
        .await?;
    Ok(id)
}

/// A pending delivery of `event` to `endpoint`, due now.
pub(crate) async fn insert_delivery(
    tx: &mut Tx,
    event: &WebhookEventId,
    endpoint: &str,
    replay_of: Option<&str>,
    now: i64,
) -> ApiResult<WebhookDeliveryId> {
    let id = WebhookDeliveryId::generate();
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, event_id, endpoint_id, status, attempts, \
         next_attempt_at_us, replay_of, created_at_us, updated_at_us) \
         VALUES ($1, $2, $3, 'pending', 0, $4, $5, $4, $4)",
    )
    .bind(id.as_str())
    .bind(event.as_str())
    .bind(endpoint)
    .bind(now)
    .bind(replay_of)
    .execute(&mut **tx)
    .await?;
    Ok(id)
}

/// `payment.succeeded` / `payment.failed` for the payment as `tx` now sees it.
pub async fn payment(tx: &mut Tx, kind: EventType, id: &PaymentId) -> ApiResult<()> {
    let r = sqlx::query(
        "SELECT id, patient_id, invoice_id, currency, amount_minor, status, amount_applied_minor, \
         amount_credited_minor, failure_code, card_brand, card_last4, journal_entry_id, \
         created_at_us FROM payments WHERE id = $1",
    )
    .bind(id.as_str())
    .fetch_one(&mut **tx)
    .await?;
    let data = json!({
        "object": "payment",
        "id": r.try_get::<String, _>("id")?,
        "patient": r.try_get::<String, _>("patient_id")?,
        "invoice": r.try_get::<Option<String>, _>("invoice_id")?,
        "amount": r.try_get::<i64, _>("amount_minor")?,
        "currency": r.try_get::<String, _>("currency")?,
        "status": r.try_get::<String, _>("status")?,
        "amount_applied": r.try_get::<i64, _>("amount_applied_minor")?,
        "amount_credited": r.try_get::<i64, _>("amount_credited_minor")?,
        "failure_code": r.try_get::<Option<String>, _>("failure_code")?,
        "card": {"brand": r.try_get::<Option<String>, _>("card_brand")?,
                 "last4": r.try_get::<Option<String>, _>("card_last4")?},
        "journal_entry": r.try_get::<Option<String>, _>("journal_entry_id")?,
        "created": us_to_rfc3339(r.try_get("created_at_us")?),
    });
    emit(tx, kind, data).await.map(|_| ())
}

/// `refund.succeeded` / `refund.failed` for the refund as `tx` now sees it (never its note).
pub async fn refund(tx: &mut Tx, kind: EventType, id: &RefundId) -> ApiResult<()> {
    let r = sqlx::query(
        "SELECT id, payment_id, currency, amount_minor, status, reason, failure_code, \
         applied_minor, credited_minor, journal_entry_id, created_at_us FROM refunds WHERE id = $1",
    )
    .bind(id.as_str())
    .fetch_one(&mut **tx)
    .await?;
    let data = json!({
        "object": "refund",
        "id": r.try_get::<String, _>("id")?,
        "payment": r.try_get::<String, _>("payment_id")?,
        "amount": r.try_get::<i64, _>("amount_minor")?,
        "currency": r.try_get::<String, _>("currency")?,
        "status": r.try_get::<String, _>("status")?,
        "reason": r.try_get::<String, _>("reason")?,
        "failure_code": r.try_get::<Option<String>, _>("failure_code")?,
        "amount_applied": r.try_get::<i64, _>("applied_minor")?,
        "amount_credited": r.try_get::<i64, _>("credited_minor")?,
        "journal_entry": r.try_get::<Option<String>, _>("journal_entry_id")?,
        "created": us_to_rfc3339(r.try_get("created_at_us")?),
    });
    emit(tx, kind, data).await.map(|_| ())
}

/// `invoice.finalized` / `invoice.paid` / `invoice.voided`: amounts and status, no lines.
pub async fn invoice(tx: &mut Tx, kind: EventType, id: &InvoiceId) -> ApiResult<()> {
    let r = sqlx::query(
        "SELECT id, patient_id, currency, status, due_date, total_minor, amount_adjusted_minor, \
         amount_paid_minor, amount_refunded_minor, amount_due_minor, created_at_us \
         FROM invoices WHERE id = $1",
    )
    .bind(id.as_str())
    .fetch_one(&mut **tx)
    .await?;
    let data = json!({
        "object": "invoice",
        "id": r.try_get::<String, _>("id")?,
        "patient": r.try_get::<String, _>("patient_id")?,
        "currency": r.try_get::<String, _>("currency")?,
        "status": r.try_get::<String, _>("status")?,
        "due_date": r.try_get::<String, _>("due_date")?,
        "total": r.try_get::<i64, _>("total_minor")?,
        "amount_adjusted": r.try_get::<i64, _>("amount_adjusted_minor")?,
        "amount_paid": r.try_get::<i64, _>("amount_paid_minor")?,
        "amount_refunded": r.try_get::<i64, _>("amount_refunded_minor")?,
        "amount_due": r.try_get::<i64, _>("amount_due_minor")?,
        "created": us_to_rfc3339(r.try_get("created_at_us")?),
    });
    emit(tx, kind, data).await.map(|_| ())
}

/// An entry as [`crate::ledger::posting::post`] has just written it: what
/// `ledger.entry_posted` carries, taken from memory rather than read back, because the event is
/// written while the ledger's commit sequence is locked.
pub struct PostedEntry<'a> {
    pub id: &'a EntryId,
    pub kind: &'static str,
    pub ledger_seq: i64,
    pub posted_at_us: i64,
    pub effective_date: &'a str,
    pub reverses: Option<&'a EntryId>,
    pub references: &'a References,
    /// In the order they were inserted (their `seq` order).
    pub postings: &'a [(&'a AccountId, Money)],
}

/// `ledger.entry_posted`: the entry's postings and references, never its memo.
pub async fn ledger_entry(tx: &mut Tx, e: PostedEntry<'_>) -> ApiResult<()> {
    let postings: Vec<Value> = e
        .postings
        .iter()
        .map(|(account, amount)| {
            json!({
                "account": account.as_str(),
                "amount": amount.amount_minor(),
                "currency": amount.currency().code(),
            })
        })
        .collect();
    let refs = e.references;
    let data = json!({
        "object": "ledger_entry",
        "id": e.id.as_str(),
        "kind": e.kind,
        "ledger_seq": e.ledger_seq,
        "posted_at": us_to_rfc3339(e.posted_at_us),
        "effective_date": e.effective_date,
        "reverses": e.reverses.map(EntryId::as_str),
        "patient": refs.patient.as_ref().map(|p| p.as_str()),
        "invoice": refs.invoice.as_ref().map(|p| p.as_str()),
        "payment": refs.payment.as_ref().map(|p| p.as_str()),
        "refund": refs.refund.as_ref().map(|p| p.as_str()),
        "adjustment": refs.adjustment.as_deref(),
        "postings": postings,
    });
    emit(tx, EventType::LedgerEntryPosted, data)
        .await
        .map(|_| ())
}
