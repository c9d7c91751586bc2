//! Refunds (`re_…`): returning money of a succeeded payment to the card it came from.
//!
//! The same two-transaction shape as payments (see `payments.rs`):
//!
//! 1. **tx A** locks the payment row, checks the amount against what is still refundable
//!    (captured − refunded − refunds in flight), *reserves* it on the payment and records the
//!    refund (`pending`). Fifty concurrent partial refunds serialize on that row lock, so
//!    exactly those that fit are reserved and the rest get `amount_exceeds_refundable`; the
//!    database CHECK on the payment refuses an over-reservation again.
//! 2. The processor is called with the refund's own derived key (two equal partial refunds are
//!    two refunds, so the key can never be derived from payment and amount).
//! 3. **tx B** applies the outcome: on success Dr patient credit (the overpaid part first) and
//!    Dr patient receivable (the rest, which re-opens that much of the invoice) / Cr processor
//!    clearing; on failure the reservation is released.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa::ToSchema;

use crate::api::{parse_limit, text_field, ApiJson, ApiPath, ApiQuery, List};
use crate::auth::{Action, Principal};
use crate::db::{now_us, us_to_rfc3339, Backend, Tx};
use crate::error::{ApiError, ApiResult};
use crate::idempotency::{self, IdempotencyKey, MaybeClaim, Phase};
use crate::ids::{PaymentId, RefundId};
use crate::invoices::{self, amount_field};
use crate::ledger::accounts::{account_id, ensure_patient_accounts, patient_account_id, Code};
use crate::ledger::posting::{self, EntryKind, NewEntry, References};
use crate::money::{Currency, Money};
use crate::payments::{self, assert_money};
use crate::processor::{ProcessorError, RefundOutcome, RefundRequest};
use crate::AppState;

const NOTE_CHARS_MAX: usize = 500;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/refunds", post(create_refund).get(list_refunds))
        .route("/v1/refunds/{id}", get(get_refund))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefundReason {
    Duplicate,
    RequestedByPatient,
    Overpayment,
    BillingError,
}

impl RefundReason {
    fn as_str(self) -> &'static str {
        match self {
            RefundReason::Duplicate => "duplicate",
            RefundReason::RequestedByPatient => "requested_by_patient",
            RefundReason::Overpayment => "overpayment",
            RefundReason::BillingError => "billing_error",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRefund {
    pub payment: String,
    /// Minor units; defaults to everything still refundable.
    pub amount: Option<i64>,
    pub reason: RefundReason,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Refund {
    pub id: String,
    /// Always `"refund"`.
    pub object: &'static str,
    pub payment: String,
    pub amount: i64,
    pub currency: String,
    /// pending, succeeded or failed.
    pub status: String,
    pub reason: String,
    pub note: Option<String>,
    /// Part taken back from the patient's credit balance (the overpaid part of the payment).
    pub amount_from_credit: i64,
    /// Part that re-opens the invoice.
    pub amount_from_invoice: i64,
    pub failure_code: Option<String>,
    pub journal_entry: Option<String>,
    pub created_at: String,
}

const REFUND_COLUMNS: &str = "seq, id, payment_id, currency, amount_minor, status, reason, note, processor_idempotency_key, \
     processor_refund_id, failure_code, applied_minor, credited_minor, journal_entry_id, created_at_us";

fn refund_from_row(r: &AnyRow) -> ApiResult<Refund> {
    Ok(Refund {
        id: r.try_get("id")?,
        object: "refund",
        payment: r.try_get("payment_id")?,
        amount: r.try_get("amount_minor")?,
        currency: r.try_get("currency")?,
        status: r.try_get("status")?,
        reason: r.try_get("reason")?,
        note: r.try_get("note")?,
        amount_from_credit: r.try_get("credited_minor")?,
        amount_from_invoice: r.try_get("applied_minor")?,
        failure_code: r.try_get("failure_code")?,
        journal_entry: r.try_get("journal_entry_id")?,
        created_at: us_to_rfc3339(r.try_get("created_at_us")?),
    })
}

#[derive(Debug, Clone)]
struct ValidRefund {
    payment: PaymentId,
    amount: Option<i64>,
    reason: RefundReason,
    note: Option<String>,
}

/// Refund all or part of a succeeded payment. Requires an `Idempotency-Key` and the
/// `billing_manager` (or `admin`) role.
#[utoipa::path(post, path = "/v1/refunds", tag = "refunds", request_body = CreateRefund,
    params(("Idempotency-Key" = String, Header, description = "A UUID; required")),
    responses((status = 200, body = Refund), (status = 400, description = "e.g. amount_exceeds_refundable")),
    security(("api_key" = [])))]
pub async fn create_refund(
    State(state): State<AppState>,
    principal: Principal,
    key: IdempotencyKey,
    ApiJson(req): ApiJson<CreateRefund>,
) -> ApiResult<Response> {
    principal.authorize(Action::RefundsCreate)?;
    let key = key.required()?;
    let payment = PaymentId::parse_param(&req.payment, "payment")?;
    let amount = req
        .amount
        .map(|a| amount_field("amount", a).map(|a| a.get()))
        .transpose()?;
    let note = req
        .note
        .as_deref()
        .map(|n| text_field("note", n, NOTE_CHARS_MAX))
        .transpose()?;
    let valid = ValidRefund {
        payment,
        amount,
        reason: req.reason,
        note,
    };
    let st = state.clone();
    Ok(idempotency::run(
        &state,
        &principal,
        key,
        "POST /v1/refunds",
        &req,
        |claim| async move { execute(&st, claim, valid).await },
    )
    .await)
}

async fn execute(
    state: &AppState,
    claim: MaybeClaim,
    req: ValidRefund,
) -> ApiResult<(StatusCode, serde_json::Value)> {
    let resumed = claim
        .as_ref()
        .filter(|c| c.phase == Phase::ProcessorCalled)
        .and_then(|c| c.resource_id.clone());
    let refund_id = match resumed {
        Some(id) => RefundId::from_db(id),
        None => reserve(state, &claim, &req).await?,
    };
    let row = sqlx::query(
        "SELECT r.status, r.amount_minor, r.currency, r.processor_idempotency_key, p.processor_charge_id \
         FROM refunds r JOIN payments p ON p.id = r.payment_id WHERE r.id = $1",
    )
    .bind(refund_id.as_str())
    .fetch_one(&state.db.pool)
    .await?;
    let status: String = row.try_get("status")?;
    let outcome = if status == "pending" {
        let currency: Currency = row.try_get::<String, _>("currency")?.parse()?;
        let charge_id: Option<String> = row.try_get("processor_charge_id")?;
        let request = RefundRequest {
            idempotency_key: row.try_get("processor_idempotency_key")?,
            charge_id: charge_id
                .ok_or_else(|| anyhow::anyhow!("succeeded payment without a charge id"))?,
            amount: Money::new(row.try_get("amount_minor")?, currency),
            refund_id: refund_id.to_string(),
        };
        Some(
            state
                .processor
                .refund(&request)
                .await
                .map_err(|e: ProcessorError| e.to_string()),
        )
    } else {
        None
    };
    crate::failpoint::hit("refund_after_processor");
    let backend = state.db.backend;
    state
        .db
        .write(|tx| {
            let (claim, id, outcome) = (claim.clone(), refund_id.clone(), outcome.clone());
            Box::pin(async move { apply_outcome(tx, backend, &claim, &id, outcome).await })
        })
        .await
}

/// tx A: reserve the amount on the payment and record the pending refund.
async fn reserve(state: &AppState, claim: &MaybeClaim, req: &ValidRefund) -> ApiResult<RefundId> {
    let backend = state.db.backend;
    state
        .db
        .write(|tx| {
            let (claim, req) = (claim.clone(), req.clone());
            Box::pin(async move {
                idempotency::claim(tx, &claim).await?;
                let payment = payments::lock(tx, backend, &req.payment, "payment").await?;
                if payment.status != "succeeded" {
                    return Err(ApiError::refused("payment", "payment_not_refundable", "Only a succeeded payment can be refunded."));
                }
                let refundable = payment.refundable()?;
                let amount = match req.amount {
                    Some(a) => Money::new(a, payment.currency()),
                    None if refundable.is_zero() => {
                        return Err(ApiError::refused("payment", "charge_already_refunded", "The payment has been refunded in full."))
                    }
                    None => refundable,
                };
                if amount.amount_minor() > refundable.amount_minor() {
                    return Err(ApiError::refused(
                        "amount",
                        "amount_exceeds_refundable",
                        format!("The refund is larger than what is still refundable ({} minor units).", refundable.amount_minor()),
                    ));
                }
                let id = RefundId::generate();
                let now = now_us();
                sqlx::query(
                    "INSERT INTO refunds (id, payment_id, currency, amount_minor, status, reason, note, processor_idempotency_key, \
                     created_at_us, updated_at_us) VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7, $8, $8)",
                )
                .bind(id.as_str())
                .bind(payment.id.as_str())
                .bind(payment.currency().code())
                .bind(amount.amount_minor())
                .bind(req.reason.as_str())
                .bind(req.note.clone())
                .bind(format!("carebill-{id}"))
                .bind(now)
                .execute(&mut **tx)
                .await?;
                let reserved = payment.refund_reserved.checked_add(amount)?;
                sqlx::query("UPDATE payments SET amount_refund_reserved_minor = $1, updated_at_us = $2 WHERE id = $3")
                    .bind(reserved.amount_minor())
                    .bind(now)
                    .bind(payment.id.as_str())
                    .execute(&mut **tx)
                    .await?;
                idempotency::mark_processor_called(tx, &claim, id.as_str()).await?;
                Ok(id)
            })
        })
        .await
}

/// tx B: apply the processor's answer to the refund, the payment, the invoice and the ledger.
async fn apply_outcome(
    tx: &mut Tx,
    backend: Backend,
    claim: &MaybeClaim,
    id: &RefundId,
    outcome: Option<Result<RefundOutcome, String>>,
) -> ApiResult<(StatusCode, serde_json::Value)> {
    let payment_id: String = sqlx::query("SELECT payment_id FROM refunds WHERE id = $1")
        .bind(id.as_str())
        .fetch_one(&mut **tx)
        .await?
        .try_get("payment_id")?;
    // Lock order everywhere: payment, then invoice, then accounts.
    let payment = payments::lock(tx, backend, &PaymentId::from_db(payment_id), "payment").await?;
    let refund = sqlx::query(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE id = $1"
    ))
    .bind(id.as_str())
    .fetch_one(&mut **tx)
    .await?;
    let status: String = refund.try_get("status")?;
    if status != "pending" {
        return respond(tx, claim, id).await;
    }
    let amount = Money::new(refund.try_get("amount_minor")?, payment.currency());
    let now = now_us();
    match outcome {
        None => respond(tx, claim, id).await,
        Some(Err(e)) => {
            tracing::warn!(refund = %id, error = %e, "processor outcome unknown for refund");
            Err(crate::processor::unavailable_error())
        }
        Some(Ok(RefundOutcome::Pending { refund_id })) => {
            // The reservation stays until the processor reports the final outcome.
            sqlx::query(
                "UPDATE refunds SET processor_refund_id = $1, updated_at_us = $2 WHERE id = $3",
            )
            .bind(refund_id)
            .bind(now)
            .bind(id.as_str())
            .execute(&mut **tx)
            .await?;
            respond(tx, claim, id).await
        }
        Some(Ok(RefundOutcome::Failed {
            refund_id,
            failure_code,
        })) => {
            let reserved = payment.refund_reserved.checked_sub(amount)?;
            assert_money(
                reserved.amount_minor() >= 0,
                "refund reservation below zero",
            )?;
            sqlx::query("UPDATE payments SET amount_refund_reserved_minor = $1, updated_at_us = $2 WHERE id = $3")
                .bind(reserved.amount_minor())
                .bind(now)
                .bind(payment.id.as_str())
                .execute(&mut **tx)
                .await?;
            sqlx::query("UPDATE refunds SET status = 'failed', processor_refund_id = $1, failure_code = $2, updated_at_us = $3 WHERE id = $4")
                .bind(refund_id)
                .bind(failure_code)
                .bind(now)
                .bind(id.as_str())
                .execute(&mut **tx)
                .await?;
            respond(tx, claim, id).await
        }
        Some(Ok(RefundOutcome::Succeeded { refund_id })) => {
            let entry = settle(tx, backend, &payment, id, amount, &refund_id).await?;
            let response = respond(tx, claim, id).await?;
            posting::post(tx, backend, entry).await?;
            Ok(response)
        }
    }
}

/// Moves the payment's, invoice's and refund's amounts for a succeeded refund and returns the
/// entry to post (last, see `ledger::posting`).
async fn settle(
    tx: &mut Tx,
    backend: Backend,
    payment: &payments::PaymentRow,
    id: &RefundId,
    amount: Money,
    processor_refund_id: &str,
) -> ApiResult<NewEntry> {
    let currency = payment.currency();
    // The overpaid (credited) part goes back first, then the part applied to the invoice.
    let credit_left = payment.credited.checked_sub(payment.refunded_credited)?;
    let from_credit = amount.min(credit_left)?;
    let from_invoice = amount.checked_sub(from_credit)?;
    let applied_left = payment.applied.checked_sub(payment.refunded_applied)?;
    assert_money(
        from_invoice.amount_minor() <= applied_left.amount_minor(),
        "refund exceeds the applied part",
    )?;
    let reserved = payment.refund_reserved.checked_sub(amount)?;
    assert_money(reserved.amount_minor() >= 0, "refund was not reserved")?;

    let mut invoice = match &payment.invoice {
        Some(i) if !from_invoice.is_zero() => {
            Some(invoices::lock(tx, backend, i, "payment").await?)
        }
        _ => None,
    };
    ensure_patient_accounts(tx, &payment.patient, currency).await?;
    let entry = NewEntry::new(
        EntryKind::RefundSucceeded,
        format!("Refund {id} of payment {}", payment.id),
        References {
            patient: Some(payment.patient.clone()),
            invoice: payment.invoice.clone(),
            payment: Some(payment.id.clone()),
            refund: Some(id.clone()),
            ..Default::default()
        },
    )
    .debit_if_nonzero(
        patient_account_id(Code::PatientCredit, currency, &payment.patient),
        from_credit,
    )
    .debit_if_nonzero(
        patient_account_id(Code::PatientReceivables, currency, &payment.patient),
        from_invoice,
    )
    .credit(account_id(Code::ProcessorClearing, currency), amount)?;

    if let Some(inv) = invoice.as_mut() {
        inv.refunded = inv.refunded.checked_add(from_invoice)?;
        inv.save_amounts(tx).await?;
    }
    sqlx::query(
        "UPDATE payments SET amount_refund_reserved_minor = $1, refunded_applied_minor = $2, refunded_credited_minor = $3, \
         updated_at_us = $4 WHERE id = $5",
    )
    .bind(reserved.amount_minor())
    .bind(payment.refunded_applied.checked_add(from_invoice)?.amount_minor())
    .bind(payment.refunded_credited.checked_add(from_credit)?.amount_minor())
    .bind(now_us())
    .bind(payment.id.as_str())
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE refunds SET status = 'succeeded', applied_minor = $1, credited_minor = $2, processor_refund_id = $3, \
         journal_entry_id = $4, updated_at_us = $5 WHERE id = $6",
    )
    .bind(from_invoice.amount_minor())
    .bind(from_credit.amount_minor())
    .bind(processor_refund_id)
    .bind(entry.id.as_str())
    .bind(now_us())
    .bind(id.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(entry)
}

async fn respond(
    tx: &mut Tx,
    claim: &MaybeClaim,
    id: &RefundId,
) -> ApiResult<(StatusCode, serde_json::Value)> {
    let row = sqlx::query(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE id = $1"
    ))
    .bind(id.as_str())
    .fetch_one(&mut **tx)
    .await?;
    idempotency::respond_ok(tx, claim, &refund_from_row(&row)?).await
}

/// Retrieve a refund.
#[utoipa::path(get, path = "/v1/refunds/{id}", tag = "refunds", params(("id" = String, Path)),
    responses((status = 200, body = Refund), (status = 404, description = "No such refund")),
    security(("api_key" = [])))]
pub async fn get_refund(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Refund>> {
    principal.authorize(Action::RefundsRead)?;
    let id = RefundId::parse_param(&id, "id")?;
    let row = sqlx::query(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE id = $1"
    ))
    .bind(id.as_str())
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("id", "refund"))?;
    Ok(Json(refund_from_row(&row)?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundListQuery {
    limit: Option<String>,
    starting_after: Option<String>,
    payment: Option<String>,
}

/// List refunds, newest first, optionally of one payment.
#[utoipa::path(get, path = "/v1/refunds", tag = "refunds",
    params(("limit" = Option<i64>, Query), ("starting_after" = Option<String>, Query), ("payment" = Option<String>, Query)),
    responses((status = 200, body = List<Refund>)),
    security(("api_key" = [])))]
pub async fn list_refunds(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<RefundListQuery>,
) -> ApiResult<Json<List<Refund>>> {
    principal.authorize(Action::RefundsRead)?;
    let limit = parse_limit(q.limit.as_deref())?;
    let payment = PaymentId::parse_opt_param(q.payment.as_deref(), "payment")?;
    let after = RefundId::parse_opt_param(q.starting_after.as_deref(), "starting_after")?;
    let before = crate::api::cursor_seq(
        &state,
        "refunds",
        "refund",
        after.as_ref().map(|i| i.as_str()),
        i64::MAX,
    )
    .await?;
    let rows = sqlx::query(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE seq < $1 AND ($2 = '' OR payment_id = $2) ORDER BY seq DESC LIMIT $3"
    ))
    .bind(before)
    .bind(payment.as_ref().map(|p| p.as_str()).unwrap_or(""))
    .bind(limit.saturating_add(1))
    .fetch_all(&state.db.pool)
    .await?;
    let items = rows
        .iter()
        .map(refund_from_row)
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(List::from_rows(items, limit, "/v1/refunds")))
}
