//! `POST /v1/webhooks/stripe`: Stripe's events, verified, applied once, each effect a balanced
//! ledger entry.
//!
//! 1. The signature is verified on the raw body (see [`super::signature`]); a missing, malformed,
//!    stale or wrong one is answered 400 and recorded as a security event
//!    (`webhook_signature_rejected`). The route needs no credential: the signature is the
//!    credential.
//! 2. The body must be a JSON event (`id` `evt_…`, `type`, `created`, `data.object`), else 400
//!    naming `body`.
//! 3. When the event is older than our state of its object, the object is re-fetched from Stripe
//!    and the re-fetched state decides (an out-of-order `payment_failed` after `succeeded`
//!    changes nothing). This happens before the transaction, so no lock is held over the network.
//! 4. In one transaction: the event id goes into `stripe_events` (a duplicate delivery finds it
//!    and changes nothing) and the effect is applied. A failed effect rolls both back, and Stripe
//!    retries.
//!
//! | event | effect |
//! | --- | --- |
//! | `payment_intent.succeeded` | an in-flight payment is captured (Dr clearing / Cr receivable, credit) |
//! | `payment_intent.payment_failed` | an in-flight payment fails with the decline code |
//! | `payment_intent.requires_action`, `.processing` | the next action is kept for the caller |
//! | `refund.created`, `refund.updated`, `refund.failed`, `charge.refunded` | a pending refund settles or fails; a succeeded one that fails is reversed |
//! | `charge.dispute.created` | Dr 1100 Disputed funds / Cr 1010 clearing |
//! | `charge.dispute.closed` | won: Dr clearing / Cr disputed; lost: Dr 5100 Write-offs / Cr disputed |
//! | `payout.paid` | Dr 1000 Bank / Cr 1010 clearing (once per payout, shared with the reconciler) |
//!
//! Each dispute step and each payout also writes an outbound event into the outbox in the same
//! transaction (`dispute.created`, `dispute.won`, `dispute.lost`, `payout.paid`: ids, amounts,
//! currency, status), so it is emitted exactly when, and as often as, the ledger effect: a
//! duplicate Stripe event changes nothing and emits nothing.
//! | anything else | acknowledged (200) and ignored |
//!
//! An event about an object that is not ours (no payment or refund matches) is acknowledged
//! with `unknown_object`: Stripe stops retrying and nothing is written but the event's id.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use sqlx::Row;

use super::processor::{intent_outcome, is_object_id, refund_outcome};
use super::signature::{self, SignatureError};
use crate::db::{now_us, us_to_rfc3339, Backend, Tx};
use crate::error::{ApiError, ApiResult, ErrorType};
use crate::identity::events::{self as security, Kind};
use crate::ids::{PaymentId, RefundId};
use crate::ledger::accounts::{account_id, Code};
use crate::ledger::posting::{self, EntryKind, NewEntry, References};
use crate::money::{Currency, Money};
use crate::processor::{ChargeOutcome, RefundOutcome};
use crate::webhooks::outbox::{self, EventType};
use crate::AppState;

/// Largest event body read (Stripe's events are a few KiB).
pub const BODY_MAX_BYTES: usize = 256 * 1024;
/// Most refunds read from one `charge.refunded` event.
const REFUNDS_PER_EVENT_MAX: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/webhooks/stripe", post(receive))
}

/// A parsed event: only what we read.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub kind: String,
    pub created_us: i64,
    pub object: Value,
}

fn bad_body(message: &str) -> ApiError {
    ApiError::invalid("body", "event_invalid", message)
}

pub fn parse_event(body: &[u8]) -> ApiResult<Event> {
    let value: Value =
        serde_json::from_slice(body).map_err(|_| bad_body("The body is not a JSON object."))?;
    let id = value
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| id.starts_with("evt_") && is_object_id(id))
        .ok_or_else(|| bad_body("The event has no valid id (evt_…)."))?;
    let kind = value
        .get("type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && t.len() <= 100)
        .ok_or_else(|| bad_body("The event has no type."))?;
    let created = value
        .get("created")
        .and_then(Value::as_i64)
        .filter(|c| *c >= 0)
        .ok_or_else(|| bad_body("The event has no created timestamp."))?;
    let object = value
        .get("data")
        .and_then(|d| d.get("object"))
        .filter(|o| o.is_object())
        .cloned()
        .ok_or_else(|| bad_body("The event has no data.object."))?;
    Ok(Event {
        id: id.to_owned(),
        kind: kind.to_owned(),
        created_us: created.saturating_mul(1_000_000),
        object,
    })
}

/// Receives one Stripe event (public route: authenticated by its `Stripe-Signature`).
#[utoipa::path(post, path = "/v1/webhooks/stripe", tag = "webhooks",
    request_body(content = String, description = "A Stripe event, as Stripe sends it (raw JSON; the signature covers the exact bytes)", content_type = "application/json"),
    params(("Stripe-Signature" = String, Header, description = "t=<unix seconds>,v1=<hex HMAC-SHA256>")),
    responses((status = 200, description = "Received: `outcome` is applied, noop, duplicate, ignored or unknown_object"),
              (status = 400, description = "Signature missing, malformed, stale or wrong (param Stripe-Signature), or not an event (param body)"),
              (status = 503, description = "Stripe could not be asked for the current state of an out-of-order event; Stripe retries")))]
pub async fn receive(State(state): State<AppState>, request: Request) -> ApiResult<Json<Value>> {
    let ip = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let header = request
        .headers()
        .get("stripe-signature")
        .map(|v| v.to_str().unwrap_or("\u{0}invalid").to_owned());
    let body = axum::body::to_bytes(request.into_body(), BODY_MAX_BYTES)
        .await
        .map_err(|_| bad_body("The body is too large or was cut off."))?;
    let settings = &state.config.stripe;
    let now = now_us() / 1_000_000;
    if let Err(e) = signature::verify(
        header.as_deref(),
        &body,
        &settings.webhook_secrets,
        settings.webhook_tolerance_seconds,
        now,
    ) {
        let detail = match e {
            SignatureError::Malformed(why) => why,
            other => other.code(),
        };
        security::record(
            &state.db,
            Kind::WebhookSignatureRejected,
            security::Event {
                subject: Some("stripe"),
                ip: ip.as_deref(),
                detail: Some(detail),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| ApiError::Internal(e.into()))?;
        return Err(ApiError::Client {
            status: StatusCode::BAD_REQUEST,
            kind: ErrorType::InvalidRequestError,
            code: e.code(),
            message: e.message().to_owned(),
            param: Some("Stripe-Signature".to_owned()),
            attach: None,
        });
    }
    let event = parse_event(&body)?;
    let fresh = refetch_if_stale(&state, &event).await?;
    let backend = state.db.backend;
    let outcome = state
        .db
        .write(|tx| {
            let (event, fresh) = (event.clone(), fresh.clone());
            Box::pin(async move { apply(tx, backend, &event, fresh.as_ref()).await })
        })
        .await?;
    tracing::info!(event = %event.id, kind = %event.kind, outcome, "stripe event");
    Ok(Json(
        json!({"received": true, "id": event.id, "outcome": outcome}),
    ))
}

/// The state of the event's object re-read from Stripe, when the event is older than our
/// state (so it may describe a past state).
#[derive(Debug, Clone)]
enum Fresh {
    Charge(ChargeOutcome),
    Refund(RefundOutcome),
}

async fn refetch_if_stale(state: &AppState, event: &Event) -> ApiResult<Option<Fresh>> {
    let object_id = event.object.get("id").and_then(Value::as_str).unwrap_or("");
    let unavailable = |_| crate::processor::unavailable_error();
    if event.kind.starts_with("payment_intent.") {
        let ours: Option<i64> = sqlx::query(
            "SELECT updated_at_us FROM payments WHERE processor_charge_id = $1 OR id = $2",
        )
        .bind(object_id)
        .bind(metadata(&event.object, "carebill_payment").unwrap_or(""))
        .fetch_optional(&state.db.pool)
        .await?
        .map(|r| r.try_get("updated_at_us"))
        .transpose()?;
        if matches!(ours, Some(at) if event.created_us < at) {
            let found = state
                .processor
                .retrieve_charge(object_id)
                .await
                .map_err(unavailable)?;
            return Ok(found.map(Fresh::Charge));
        }
    } else if event.kind.starts_with("refund.") {
        let ours: Option<i64> = sqlx::query(
            "SELECT updated_at_us FROM refunds WHERE processor_refund_id = $1 OR id = $2",
        )
        .bind(object_id)
        .bind(metadata(&event.object, "carebill_refund").unwrap_or(""))
        .fetch_optional(&state.db.pool)
        .await?
        .map(|r| r.try_get("updated_at_us"))
        .transpose()?;
        if matches!(ours, Some(at) if event.created_us < at) {
            let found = state
                .processor
                .retrieve_refund(object_id)
                .await
                .map_err(unavailable)?;
            return Ok(found.map(Fresh::Refund));
        }
    }
    Ok(None)
}

fn metadata<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object.get("metadata")?.get(key)?.as_str()
}

fn str_of<'a>(object: &'a Value, key: &str) -> &'a str {
    object.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Records the event and applies it, in `tx`. Returns the outcome word.
async fn apply(
    tx: &mut Tx,
    backend: Backend,
    event: &Event,
    fresh: Option<&Fresh>,
) -> ApiResult<&'static str> {
    let object_id = event.object.get("id").and_then(Value::as_str);
    let inserted = sqlx::query(
        "INSERT INTO stripe_events (id, type, created_us, outcome, object_id, received_at_us) \
         VALUES ($1, $2, $3, 'noop', $4, $5) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&event.id)
    .bind(&event.kind)
    .bind(event.created_us)
    .bind(object_id.map(|s| s.chars().take(255).collect::<String>()))
    .bind(now_us())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Ok("duplicate");
    }
    let outcome = effect(tx, backend, event, fresh).await?;
    sqlx::query("UPDATE stripe_events SET outcome = $1 WHERE id = $2")
        .bind(outcome)
        .bind(&event.id)
        .execute(&mut **tx)
        .await?;
    Ok(outcome)
}

async fn effect(
    tx: &mut Tx,
    backend: Backend,
    event: &Event,
    fresh: Option<&Fresh>,
) -> ApiResult<&'static str> {
    let o = &event.object;
    match event.kind.as_str() {
        "payment_intent.succeeded"
        | "payment_intent.payment_failed"
        | "payment_intent.requires_action"
        | "payment_intent.processing" => {
            let Some(payment) =
                find_payment(tx, str_of(o, "id"), metadata(o, "carebill_payment")).await?
            else {
                return Ok("unknown_object");
            };
            let outcome = match fresh {
                Some(Fresh::Charge(c)) => c.clone(),
                _ => intent_outcome(o, str_of(o, "id"), None),
            };
            let before = status_of(tx, &payment).await?;
            crate::payments::settle_in_flight(tx, backend, &payment, &outcome).await?;
            let after = status_of(tx, &payment).await?;
            Ok(
                if before != after
                    || matches!(outcome, ChargeOutcome::RequiresAction { .. })
                        && after == "processing"
                {
                    "applied"
                } else {
                    "noop"
                },
            )
        }
        "refund.created" | "refund.updated" | "refund.failed" => {
            refund_event(tx, backend, o, fresh).await
        }
        "charge.refunded" => {
            let Some(list) = o
                .get("refunds")
                .and_then(|r| r.get("data"))
                .and_then(Value::as_array)
            else {
                return Ok("noop"); // the refund.* events carry each refund
            };
            let mut outcome = "unknown_object";
            for refund in list.iter().take(REFUNDS_PER_EVENT_MAX) {
                match refund_event(tx, backend, refund, None).await? {
                    "applied" => outcome = "applied",
                    "noop" if outcome != "applied" => outcome = "noop",
                    _ => {}
                }
            }
            Ok(outcome)
        }
        "charge.dispute.created" | "charge.dispute.closed" => {
            dispute_event(tx, backend, event).await
        }
        "payout.paid" => {
            let (Some(currency), Some(amount)) = (
                str_of(o, "currency").parse::<Currency>().ok(),
                o.get("amount").and_then(Value::as_i64).filter(|a| *a > 0),
            ) else {
                return Ok("unknown_object");
            };
            let posted = post_payout(
                tx,
                backend,
                str_of(o, "id"),
                Money::new(amount, currency),
                o.get("arrival_date").and_then(Value::as_i64),
            )
            .await?;
            Ok(if posted { "applied" } else { "noop" })
        }
        _ => Ok("ignored"),
    }
}

async fn status_of(tx: &mut Tx, payment: &PaymentId) -> ApiResult<String> {
    Ok(sqlx::query("SELECT status FROM payments WHERE id = $1")
        .bind(payment.as_str())
        .fetch_one(&mut **tx)
        .await?
        .try_get("status")?)
}

/// Our payment for a PaymentIntent: by the id in its metadata, else by the intent's id.
async fn find_payment(
    tx: &mut Tx,
    intent_id: &str,
    ours: Option<&str>,
) -> ApiResult<Option<PaymentId>> {
    let row = sqlx::query(
        "SELECT id FROM payments WHERE id = $1 OR (processor_charge_id = $2 AND $2 <> '') ORDER BY seq LIMIT 1",
    )
    .bind(ours.unwrap_or(""))
    .bind(intent_id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(match row {
        Some(r) => Some(PaymentId::from_db(r.try_get("id")?)),
        None => None,
    })
}

async fn refund_event(
    tx: &mut Tx,
    backend: Backend,
    o: &Value,
    fresh: Option<&Fresh>,
) -> ApiResult<&'static str> {
    let processor_id = str_of(o, "id");
    let row = sqlx::query(
        "SELECT id FROM refunds WHERE id = $1 OR (processor_refund_id = $2 AND $2 <> '') ORDER BY seq LIMIT 1",
    )
    .bind(metadata(o, "carebill_refund").unwrap_or(""))
    .bind(processor_id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else {
        return Ok("unknown_object");
    };
    let id = RefundId::from_db(row.try_get("id")?);
    let outcome = match fresh {
        Some(Fresh::Refund(r)) => r.clone(),
        _ => refund_outcome(o),
    };
    Ok(
        match crate::refunds::apply_processor_update(tx, backend, &id, &outcome).await? {
            crate::refunds::RefundUpdate::Applied => "applied",
            crate::refunds::RefundUpdate::Nothing => "noop",
        },
    )
}

/// `charge.dispute.created` / `.closed`. A `closed` that arrives first opens the dispute too, so
/// the ledger always shows both steps.
async fn dispute_event(tx: &mut Tx, backend: Backend, event: &Event) -> ApiResult<&'static str> {
    let o = &event.object;
    let dispute_id = str_of(o, "id");
    let intent = str_of(o, "payment_intent");
    let Some(payment_id) = find_payment(tx, intent, None).await? else {
        return Ok("unknown_object");
    };
    let payment = crate::payments::lock(tx, backend, &payment_id, "payment").await?;
    let currency = payment.currency();
    let amount = match o.get("amount").and_then(Value::as_i64) {
        Some(a)
            if a > 0
                && a <= payment.amount.amount_minor()
                && str_of(o, "currency") == currency.code() =>
        {
            Money::new(a, currency)
        }
        _ => return Ok("unknown_object"),
    };
    if payment.status != "succeeded" {
        return Ok("unknown_object");
    }
    let existing = sqlx::query(&format!(
        "SELECT status FROM disputes WHERE processor_dispute_id = $1{}",
        backend.for_update()
    ))
    .bind(dispute_id)
    .fetch_optional(&mut **tx)
    .await?;
    let mut applied = false;
    let mut status = match existing {
        Some(r) => r.try_get::<String, _>("status")?,
        None => {
            let entry = NewEntry::new(
                EntryKind::DisputeOpened,
                format!("Dispute {dispute_id} opened on payment {payment_id}"),
                refs(&payment),
            )
            .debit(account_id(Code::DisputedFunds, currency), amount)
            .credit(account_id(Code::ProcessorClearing, currency), amount)?;
            sqlx::query(
                "INSERT INTO disputes (processor_dispute_id, payment_id, currency, amount_minor, status, reason, \
                 opened_entry_id, created_at_us, updated_at_us) VALUES ($1, $2, $3, $4, 'open', $5, $6, $7, $7)",
            )
            .bind(dispute_id)
            .bind(payment_id.as_str())
            .bind(currency.code())
            .bind(amount.amount_minor())
            .bind(o.get("reason").and_then(Value::as_str).map(|r| r.chars().take(100).collect::<String>()))
            .bind(entry.id.as_str())
            .bind(now_us())
            .execute(&mut **tx)
            .await?;
            posting::post(tx, backend, entry).await?;
            dispute_outbox(tx, EventType::DisputeCreated, dispute_id).await?; // outbox: same transaction
            applied = true;
            "open".to_owned()
        }
    };
    if event.kind == "charge.dispute.closed" && status == "open" {
        let won = matches!(str_of(o, "status"), "won" | "warning_closed");
        let lost = str_of(o, "status") == "lost";
        if won || lost {
            let (kind, to, word) = if won {
                (EntryKind::DisputeWon, Code::ProcessorClearing, "won")
            } else {
                (EntryKind::DisputeLost, Code::WriteOffs, "lost")
            };
            let entry = NewEntry::new(
                kind,
                format!("Dispute {dispute_id} {word} on payment {payment_id}"),
                refs(&payment),
            )
            .debit(account_id(to, currency), amount)
            .credit(account_id(Code::DisputedFunds, currency), amount)?;
            sqlx::query("UPDATE disputes SET status = $1, closed_entry_id = $2, updated_at_us = $3 WHERE processor_dispute_id = $4")
                .bind(word)
                .bind(entry.id.as_str())
                .bind(now_us())
                .bind(dispute_id)
                .execute(&mut **tx)
                .await?;
            posting::post(tx, backend, entry).await?;
            let kind = if won {
                EventType::DisputeWon
            } else {
                EventType::DisputeLost
            };
            dispute_outbox(tx, kind, dispute_id).await?; // outbox: same transaction
            applied = true;
            status = word.to_owned();
        }
    }
    tracing::debug!(dispute = dispute_id, status, "dispute");
    Ok(if applied { "applied" } else { "noop" })
}

/// `dispute.created` / `dispute.won` / `dispute.lost` for the dispute as `tx` now sees it: ids,
/// amount, currency, status and the entries; never Stripe's free-text evidence or reason.
async fn dispute_outbox(tx: &mut Tx, kind: EventType, dispute_id: &str) -> ApiResult<()> {
    let r = sqlx::query(
        "SELECT d.processor_dispute_id, d.payment_id, d.currency, d.amount_minor, d.status, \
         d.opened_entry_id, d.closed_entry_id, d.created_at_us, p.patient_id, p.invoice_id \
         FROM disputes d JOIN payments p ON p.id = d.payment_id WHERE d.processor_dispute_id = $1",
    )
    .bind(dispute_id)
    .fetch_one(&mut **tx)
    .await?;
    let data = json!({
        "object": "dispute",
        "id": r.try_get::<String, _>("processor_dispute_id")?,
        "payment": r.try_get::<String, _>("payment_id")?,
        "patient": r.try_get::<String, _>("patient_id")?,
        "invoice": r.try_get::<Option<String>, _>("invoice_id")?,
        "amount": r.try_get::<i64, _>("amount_minor")?,
        "currency": r.try_get::<String, _>("currency")?,
        "status": r.try_get::<String, _>("status")?,
        "opened_entry": r.try_get::<String, _>("opened_entry_id")?,
        "closed_entry": r.try_get::<Option<String>, _>("closed_entry_id")?,
        "created": us_to_rfc3339(r.try_get("created_at_us")?),
    });
    outbox::emit(tx, kind, data).await.map(|_| ())
}

fn refs(payment: &crate::payments::PaymentRow) -> References {
    References {
        patient: Some(payment.patient.clone()),
        invoice: payment.invoice.clone(),
        payment: Some(payment.id.clone()),
        ..Default::default()
    }
}

/// Posts a payout (clearing → bank) once per Stripe payout id; `false` when it was already.
pub async fn post_payout(
    tx: &mut Tx,
    backend: Backend,
    payout_id: &str,
    amount: Money,
    arrival_unix: Option<i64>,
) -> ApiResult<bool> {
    if !is_object_id(payout_id) {
        return Ok(false);
    }
    let exists =
        sqlx::query("SELECT 1 AS one FROM processor_payouts WHERE processor_payout_id = $1")
            .bind(payout_id)
            .fetch_optional(&mut **tx)
            .await?;
    if exists.is_some() {
        return Ok(false);
    }
    let currency = amount.currency();
    let entry = NewEntry::new(
        EntryKind::Payout,
        format!("Stripe payout {payout_id}"),
        References::default(),
    )
    .debit(account_id(Code::Bank, currency), amount)
    .credit(account_id(Code::ProcessorClearing, currency), amount)?;
    let arrival = arrival_unix
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map(|d| d.date_naive().to_string());
    sqlx::query(
        "INSERT INTO processor_payouts (processor_payout_id, currency, amount_minor, entry_id, arrival_date, created_at_us) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(payout_id)
    .bind(currency.code())
    .bind(amount.amount_minor())
    .bind(entry.id.as_str())
    .bind(arrival.clone())
    .bind(now_us())
    .execute(&mut **tx)
    .await?;
    let entry_id = entry.id.clone();
    posting::post(tx, backend, entry).await?;
    // Accounting systems hear of it from the same transaction (the outbox), once: a second
    // event or run for this payout returned above.
    let data = json!({
        "object": "payout",
        "id": payout_id,
        "amount": amount.amount_minor(),
        "currency": currency.code(),
        "arrival_date": arrival,
        "journal_entry": entry_id.as_str(),
    });
    outbox::emit(tx, EventType::PayoutPaid, data).await?;
    Ok(true)
}
