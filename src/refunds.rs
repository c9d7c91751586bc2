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
//!
//! # Dual control
//!
//! A refund above the dual-control threshold (`Config::dual_control_threshold`, 500.00 in the
//! refund's currency by default), or any refund to a payment method other than the one the
//! payment was made with, is recorded in tx A as `pending_approval` instead of `pending`, and the
//! request ends there: no processor call, no ledger entry. It moves money only once a *different*
//! person allowed to create refunds approves it (`POST /v1/refunds/{id}/approve`); the requester
//! is refused with 403 `approval_requires_second_person`, by the code and by a CHECK on the row.
//! `POST /v1/refunds/{id}/reject` (with a reason) ends it without moving money.
//!
//! - **Reservation at request.** A held refund reserves its amount on the payment right away,
//!   exactly as a refund about to be sent does: as in a billing office, money promised back to a
//!   patient is spoken for, so two held requests can never together exceed what the payment can
//!   still give back, and the approver never finds the money gone. The payment's
//!   `amount_refundable` drops at request; a rejection releases the reservation.
//! - **Exactly once.** Approval is tx A of the refund: it locks the payment row (then the
//!   refund), moves `pending_approval` → `pending` with a conditional update, records the
//!   approver and marks the approver's idempotency key `processor_called`. Only that request
//!   calls the processor (with the refund's own derived key) and settles in tx B, which acts only
//!   on a `pending` refund. Concurrent or repeated approvals serialize on the payment row and
//!   find the refund already approved: they answer with it (200) and call nothing.
//! - **Audit.** The refund row names `requested_by`, `approved_by` / `rejected_by` (the
//!   principal's `actor_id`: an API key id today, a user id for signed-in staff), and each step
//!   is logged (`tracing::info!`) with both names; a general audit table is a later issue.
//! - **Another card.** `payment_method` on the request names where the money should go. It is
//!   recorded on the refund and, once approved, passed to the processor as
//!   `RefundRequest::destination_payment_method`; the simulator (like a plain card refund)
//!   returns the money to the original charge.

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
use crate::crypto::{notes, Keys};
use crate::db::{now_us, us_to_rfc3339, Backend, Tx};
use crate::error::{ApiError, ApiResult, ErrorType};
use crate::idempotency::{self, IdempotencyKey, MaybeClaim, Phase};
use crate::ids::{PaymentId, RefundId};
use crate::invoices::{self, amount_field, EmptyBody};
use crate::ledger::accounts::{account_id, ensure_patient_accounts, patient_account_id, Code};
use crate::ledger::posting::{self, EntryKind, NewEntry, References};
use crate::money::{Currency, Money};
use crate::payments::{self, assert_money};
use crate::processor::{ProcessorError, RefundOutcome, RefundRequest};
use crate::webhooks::outbox::{self, EventType};
use crate::AppState;

const NOTE_CHARS_MAX: usize = 500;
const REJECTION_REASON_CHARS_MAX: usize = 500;
const PAYMENT_METHOD_CHARS_MAX: usize = 100;
const STATUSES: [&str; 5] = [
    "pending_approval",
    "pending",
    "succeeded",
    "failed",
    "rejected",
];

/// Why a refund or write-off waits for a second person (`approval_reasons`).
pub(crate) const ABOVE_THRESHOLD: &str = "amount_above_threshold";
const DIFFERENT_PAYMENT_METHOD: &str = "different_payment_method";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/refunds", post(create_refund).get(list_refunds))
        .route("/v1/refunds/{id}", get(get_refund))
        .route("/v1/refunds/{id}/approve", post(approve_refund))
        .route("/v1/refunds/{id}/reject", post(reject_refund))
}

/// 403 for the requester of a refund or write-off trying to approve it.
pub(crate) fn approval_requires_second_person() -> ApiError {
    ApiError::simple(
        StatusCode::FORBIDDEN,
        ErrorType::PermissionError,
        "approval_requires_second_person",
        "Dual control: whoever asked for this cannot approve it; another billing manager must.",
    )
}

/// The stored `approval_reasons` (space-separated) as the API's list.
pub(crate) fn reasons_list(stored: Option<String>) -> Vec<String> {
    stored
        .map(|s| s.split(' ').map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Whether a refund of `amount` to `destination` needs a second person, and why.
fn approval_reasons(
    config: &crate::config::Config,
    amount: Money,
    destination: Option<&str>,
) -> Option<String> {
    let mut reasons = Vec::new();
    if config.needs_second_approver(amount) {
        reasons.push(ABOVE_THRESHOLD);
    }
    if destination.is_some() {
        reasons.push(DIFFERENT_PAYMENT_METHOD);
    }
    (!reasons.is_empty()).then(|| reasons.join(" "))
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
    /// Where the money goes: a processor payment method (`pm_…`) or a card token (`tok_…`).
    /// Omitted (or the payment's own): back to the card the payment was made with. Any other
    /// payment method needs a second billing manager's approval, whatever the amount.
    pub payment_method: Option<String>,
}

/// The body of `POST /v1/refunds/{id}/reject`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectRefund {
    /// Why the refund is refused (kept on the refund).
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Refund {
    pub id: String,
    /// Always `"refund"`.
    pub object: &'static str,
    pub payment: String,
    pub amount: i64,
    pub currency: String,
    /// pending_approval (waiting for a second billing manager; no money has moved), pending,
    /// succeeded, failed or rejected.
    pub status: String,
    pub reason: String,
    pub note: Option<String>,
    /// The payment method the refund was asked to go to, when not the payment's own; null:
    /// the card the payment was made with.
    pub payment_method: Option<String>,
    /// Who asked for the refund (an API key id, or a user id for signed-in staff).
    pub requested_by: String,
    /// Why a second person must approve it: `amount_above_threshold`,
    /// `different_payment_method`. Empty: no approval needed.
    pub approval_reasons: Vec<String>,
    pub approved_by: Option<String>,
    pub approved_at: Option<String>,
    pub rejected_by: Option<String>,
    pub rejected_at: Option<String>,
    pub rejection_reason: Option<String>,
    /// Part taken back from the patient's credit balance (the overpaid part of the payment).
    pub amount_from_credit: i64,
    /// Part that re-opens the invoice.
    pub amount_from_invoice: i64,
    pub failure_code: Option<String>,
    pub journal_entry: Option<String>,
    pub created_at: String,
}

const REFUND_COLUMNS: &str = "seq, id, payment_id, currency, amount_minor, status, reason, note, processor_idempotency_key, \
     processor_refund_id, failure_code, applied_minor, credited_minor, journal_entry_id, payment_method, requested_by, \
     approval_reasons, approved_by, approved_at_us, rejected_by, rejected_at_us, rejection_reason, created_at_us";

fn refund_from_row(r: &AnyRow) -> ApiResult<Refund> {
    let opt_time = |col: &str| -> ApiResult<Option<String>> {
        Ok(r.try_get::<Option<i64>, _>(col)?.map(us_to_rfc3339))
    };
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
        payment_method: r.try_get("payment_method")?,
        requested_by: r.try_get("requested_by")?,
        approval_reasons: reasons_list(r.try_get("approval_reasons")?),
        approved_by: r.try_get("approved_by")?,
        approved_at: opt_time("approved_at_us")?,
        rejected_by: r.try_get("rejected_by")?,
        rejected_at: opt_time("rejected_at_us")?,
        rejection_reason: r.try_get("rejection_reason")?,
        created_at: us_to_rfc3339(r.try_get("created_at_us")?),
    })
}

#[derive(Debug, Clone)]
struct ValidRefund {
    payment: PaymentId,
    amount: Option<i64>,
    reason: RefundReason,
    note: Option<String>,
    payment_method: Option<String>,
    /// The caller's `actor_id`.
    requested_by: String,
}

/// A `payment_method` to refund to: a `pm_…` id or a card token, never echoed back in errors.
fn payment_method_field(value: &str) -> Result<String, ApiError> {
    let pm = value.trim();
    let well_formed = if pm.starts_with("tok_") {
        crate::vault::is_token(pm)
    } else {
        pm.len() > 3
            && pm.starts_with("pm_")
            && pm.len() <= PAYMENT_METHOD_CHARS_MAX
            && pm.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    if well_formed {
        Ok(pm.to_owned())
    } else {
        Err(ApiError::invalid(
            "payment_method",
            "payment_method_invalid",
            "Must be a payment method id (`pm_…`) or a card token (`tok_…`).",
        ))
    }
}

/// Refund all or part of a succeeded payment. Requires an `Idempotency-Key` and the
/// `billing_manager` role. Above the dual-control threshold, or to another payment
/// method, the refund is created `pending_approval` and waits for a second billing manager.
#[utoipa::path(post, path = "/v1/refunds", tag = "refunds", request_body = CreateRefund,
    params(("Idempotency-Key" = String, Header, description = "A UUID; required")),
    responses((status = 200, body = Refund, description = "The refund: succeeded, failed, pending, or pending_approval (no money moved yet)"),
              (status = 400, description = "e.g. amount_exceeds_refundable")),
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
    principal
        .ensure_payment_visible(&state.db, payment.as_str(), "payment")
        .await?;
    let amount = req
        .amount
        .map(|a| amount_field("amount", a).map(|a| a.get()))
        .transpose()?;
    let note = req
        .note
        .as_deref()
        .map(|n| text_field("note", n, NOTE_CHARS_MAX))
        .transpose()?;
    let payment_method = req
        .payment_method
        .as_deref()
        .map(payment_method_field)
        .transpose()?;
    let valid = ValidRefund {
        payment,
        amount,
        reason: req.reason,
        note,
        payment_method,
        requested_by: principal.actor_id().to_owned(),
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
        None => match reserve(state, &claim, &req).await? {
            Reserved::Send(id) => id,
            Reserved::Held(response) => return Ok(response),
        },
    };
    send(state, claim, refund_id).await
}

/// Calls the processor for a refund in `pending` (unless another attempt already settled it)
/// and applies the answer in tx B.
async fn send(
    state: &AppState,
    claim: MaybeClaim,
    refund_id: RefundId,
) -> ApiResult<(StatusCode, serde_json::Value)> {
    let row = sqlx::query(
        "SELECT r.status, r.amount_minor, r.currency, r.processor_idempotency_key, r.payment_method, p.processor_charge_id \
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
            destination_payment_method: row.try_get("payment_method")?,
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
            let (claim, id, outcome, keys) = (
                claim.clone(),
                refund_id.clone(),
                outcome.clone(),
                state.keys.clone(),
            );
            Box::pin(async move { apply_outcome(&keys, tx, backend, &claim, &id, outcome).await })
        })
        .await
}

/// What tx A decided.
enum Reserved {
    /// Recorded `pending`: call the processor.
    Send(RefundId),
    /// Recorded `pending_approval`: the request is finished with this response.
    Held((StatusCode, serde_json::Value)),
}

/// tx A: reserve the amount on the payment and record the refund: `pending` (to be sent now) or,
/// when dual control applies, `pending_approval` (the request ends here, nothing is sent).
async fn reserve(state: &AppState, claim: &MaybeClaim, req: &ValidRefund) -> ApiResult<Reserved> {
    let backend = state.db.backend;
    state
        .db
        .write(|tx| {
            let (claim, req, config, keys) = (claim.clone(), req.clone(), state.config.clone(), state.keys.clone());
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
                // The payment's own card (as sent, or as charged) is no other destination.
                let destination = req
                    .payment_method
                    .clone()
                    .filter(|pm| *pm != payment.payment_method && *pm != payment.processor_payment_method);
                let reasons = approval_reasons(&config, amount, destination.as_deref());
                let status = if reasons.is_some() { "pending_approval" } else { "pending" };
                let id = RefundId::generate();
                let now = now_us();
                let note = notes::seal(&keys, tx, payment.patient.as_str(), NOTE_COLUMN, id.as_str(), req.note.as_deref(), "note").await?;
                sqlx::query(
                    "INSERT INTO refunds (id, payment_id, currency, amount_minor, status, reason, note, processor_idempotency_key, \
                     payment_method, requested_by, approval_reasons, created_at_us, updated_at_us) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)",
                )
                .bind(id.as_str())
                .bind(payment.id.as_str())
                .bind(payment.currency().code())
                .bind(amount.amount_minor())
                .bind(status)
                .bind(req.reason.as_str())
                .bind(note)
                .bind(format!("carebill-{id}"))
                .bind(destination)
                .bind(&req.requested_by)
                .bind(reasons.clone())
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
                if let Some(reasons) = reasons {
                    // Reserved, recorded, and no further: a second billing manager approves it.
                    tracing::info!(
                        refund = %id,
                        payment = %payment.id,
                        amount_minor = amount.amount_minor(),
                        currency = %payment.currency(),
                        requested_by = %req.requested_by,
                        approval_reasons = %reasons,
                        "dual control: refund awaits a second billing manager's approval"
                    );
                    let detail = format!("refund {id}: {reasons}");
                    crate::identity::events::record_in(
                        tx,
                        crate::identity::events::Kind::ApprovalRequested,
                        crate::identity::events::Event {
                            actor: Some(req.requested_by.as_str()),
                            subject: Some(id.as_str()),
                            detail: Some(&detail),
                            ..Default::default()
                        },
                    )
                    .await?;
                    return Ok(Reserved::Held(respond(&keys, tx, &claim, &id).await?));
                }
                idempotency::mark_processor_called(tx, &claim, id.as_str()).await?;
                Ok(Reserved::Send(id))
            })
        })
        .await
}

/// Approve a refund waiting for dual control: it is sent to the processor and settled, once.
/// Requires an `Idempotency-Key` and the right to create refunds; whoever asked for the refund
/// cannot approve it (403 `approval_requires_second_person`). Approving a refund someone has
/// already approved answers with it as it stands and sends nothing again.
#[utoipa::path(post, path = "/v1/refunds/{id}/approve", tag = "refunds",
    params(("id" = String, Path), ("Idempotency-Key" = String, Header, description = "A UUID; required")),
    responses((status = 200, body = Refund),
              (status = 400, description = "refund_rejected, or refund_not_pending_approval (it never needed approval)"),
              (status = 403, description = "approval_requires_second_person: the requester cannot approve"),
              (status = 404, description = "No such refund")),
    security(("api_key" = [])))]
pub async fn approve_refund(
    State(state): State<AppState>,
    principal: Principal,
    key: IdempotencyKey,
    ApiPath(id): ApiPath<String>,
    EmptyBody(req): EmptyBody,
) -> ApiResult<Response> {
    principal.authorize(Action::RefundsCreate)?;
    let key = key.required()?;
    let id = RefundId::parse_param(&id, "id")?;
    principal
        .ensure_refund_visible(&state.db, id.as_str(), "id")
        .await?;
    let approver = principal.actor_id().to_owned();
    let route = format!("POST /v1/refunds/{id}/approve");
    let st = state.clone();
    Ok(
        idempotency::run(&state, &principal, key, &route, &req, |claim| async move {
            // A retry of an approval that committed (and maybe called the processor) resumes
            // at the processor call, like a refund's own retry.
            let resumed = claim
                .as_ref()
                .is_some_and(|c| c.phase == Phase::ProcessorCalled);
            if !resumed {
                if let Some(done) = approve(&st, &claim, &id, &approver).await? {
                    return Ok(done);
                }
            }
            send(&st, claim, id).await
        })
        .await,
    )
}

/// tx A of an approval: `pending_approval` → `pending`, naming the approver. `None`: this
/// request won and sends the refund; `Some`: the finished response (already approved).
async fn approve(
    state: &AppState,
    claim: &MaybeClaim,
    id: &RefundId,
    approver: &str,
) -> ApiResult<Option<(StatusCode, serde_json::Value)>> {
    let backend = state.db.backend;
    state
        .db
        .write(|tx| {
            let (claim, id, approver, keys) = (claim.clone(), id.clone(), approver.to_owned(), state.keys.clone());
            Box::pin(async move {
                idempotency::claim(tx, &claim).await?;
                let (payment, refund) = lock_refund(tx, backend, &id).await?;
                if refund.requested_by == approver {
                    tracing::info!(refund = %id, requested_by = %refund.requested_by, "dual control: the requester may not approve");
                    return Err(approval_requires_second_person());
                }
                match refund.status.as_str() {
                    "pending_approval" => {}
                    "rejected" => {
                        return Err(ApiError::refused("id", "refund_rejected", "The refund was rejected; it cannot be approved."))
                    }
                    // Approved by someone already (in flight or settled): the refund as it stands.
                    _ if refund.approved_by.is_some() => return Ok(Some(respond(&keys, tx, &claim, &id).await?)),
                    _ => {
                        return Err(ApiError::refused(
                            "id",
                            "refund_not_pending_approval",
                            "The refund did not need approval.",
                        ))
                    }
                }
                let now = now_us();
                let updated = sqlx::query(
                    "UPDATE refunds SET status = 'pending', approved_by = $1, approved_at_us = $2, updated_at_us = $2 \
                     WHERE id = $3 AND status = 'pending_approval'",
                )
                .bind(&approver)
                .bind(now)
                .bind(id.as_str())
                .execute(&mut **tx)
                .await?;
                assert_money(updated.rows_affected() == 1, "refund approved twice")?;
                tracing::info!(
                    refund = %id,
                    payment = %payment.id,
                    amount_minor = refund.amount.amount_minor(),
                    currency = %refund.amount.currency(),
                    requested_by = %refund.requested_by,
                    approved_by = %approver,
                    "dual control: refund approved by a second billing manager"
                );
                let detail = format!("requested_by {}", refund.requested_by);
                crate::identity::events::record_in(
                    tx,
                    crate::identity::events::Kind::ApprovalGranted,
                    crate::identity::events::Event {
                        actor: Some(approver.as_str()),
                        subject: Some(id.as_str()),
                        detail: Some(&detail),
                        ..Default::default()
                    },
                )
                .await?;
                idempotency::mark_processor_called(tx, &claim, id.as_str()).await?;
                Ok(None)
            })
        })
        .await
}

/// Reject a refund waiting for dual control: it will never be sent, and the amount it held
/// becomes refundable again. Requires the right to create refunds (the requester may withdraw
/// their own request: a rejection moves no money).
#[utoipa::path(post, path = "/v1/refunds/{id}/reject", tag = "refunds", request_body = RejectRefund,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = Refund),
              (status = 400, description = "refund_not_pending_approval: approved already, or never needed approval"),
              (status = 404, description = "No such refund")),
    security(("api_key" = [])))]
pub async fn reject_refund(
    State(state): State<AppState>,
    principal: Principal,
    key: IdempotencyKey,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<RejectRefund>,
) -> ApiResult<Response> {
    principal.authorize(Action::RefundsCreate)?;
    let id = RefundId::parse_param(&id, "id")?;
    principal
        .ensure_refund_visible(&state.db, id.as_str(), "id")
        .await?;
    let reason = text_field("reason", &req.reason, REJECTION_REASON_CHARS_MAX)?;
    let rejecter = principal.actor_id().to_owned();
    let route = format!("POST /v1/refunds/{id}/reject");
    let st = state.clone();
    Ok(idempotency::run(&state, &principal, key, &route, &req, |claim| async move {
        let backend = st.db.backend;
        st.db
            .write(|tx| {
                let (claim, id, reason, rejecter, keys) = (claim.clone(), id.clone(), reason.clone(), rejecter.clone(), st.keys.clone());
                Box::pin(async move {
                    idempotency::claim(tx, &claim).await?;
                    let (payment, refund) = lock_refund(tx, backend, &id).await?;
                    match refund.status.as_str() {
                        "pending_approval" => {}
                        "rejected" => return respond(&keys, tx, &claim, &id).await,
                        _ => {
                            return Err(ApiError::refused(
                                "id",
                                "refund_not_pending_approval",
                                "Only a refund waiting for approval can be rejected.",
                            ))
                        }
                    }
                    let now = now_us();
                    let reserved = payment.refund_reserved.checked_sub(refund.amount)?;
                    assert_money(reserved.amount_minor() >= 0, "refund reservation below zero")?;
                    sqlx::query("UPDATE payments SET amount_refund_reserved_minor = $1, updated_at_us = $2 WHERE id = $3")
                        .bind(reserved.amount_minor())
                        .bind(now)
                        .bind(payment.id.as_str())
                        .execute(&mut **tx)
                        .await?;
                    let sealed_reason = notes::seal(&keys, tx, payment.patient.as_str(), REJECTION_COLUMN, id.as_str(), Some(reason.as_str()), "reason").await?;
                    sqlx::query(
                        "UPDATE refunds SET status = 'rejected', rejected_by = $1, rejected_at_us = $2, rejection_reason = $3, \
                         updated_at_us = $2 WHERE id = $4 AND status = 'pending_approval'",
                    )
                    .bind(&rejecter)
                    .bind(now)
                    .bind(sealed_reason)
                    .bind(id.as_str())
                    .execute(&mut **tx)
                    .await?;
                    tracing::info!(
                        refund = %id,
                        payment = %payment.id,
                        requested_by = %refund.requested_by,
                        rejected_by = %rejecter,
                        "dual control: refund rejected"
                    );
                    let detail = format!("requested_by {}", refund.requested_by);
                    crate::identity::events::record_in(
                        tx,
                        crate::identity::events::Kind::ApprovalRejected,
                        crate::identity::events::Event {
                            actor: Some(rejecter.as_str()),
                            subject: Some(id.as_str()),
                            detail: Some(&detail),
                            ..Default::default()
                        },
                    )
                    .await?;
                    respond(&keys, tx, &claim, &id).await
                })
            })
            .await
    })
    .await)
}

/// The parts of a refund row the approval steps need.
struct HeldRefund {
    status: String,
    amount: Money,
    requested_by: String,
    approved_by: Option<String>,
}

/// Locks a refund's payment (lock order everywhere: payment first) and reads the refund.
async fn lock_refund(
    tx: &mut Tx,
    backend: Backend,
    id: &RefundId,
) -> ApiResult<(payments::PaymentRow, HeldRefund)> {
    let payment_id: String = sqlx::query("SELECT payment_id FROM refunds WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| ApiError::not_found("id", "refund"))?
        .try_get("payment_id")?;
    let payment = payments::lock(tx, backend, &PaymentId::from_db(payment_id), "id").await?;
    let row = sqlx::query(&format!(
        "SELECT status, amount_minor, requested_by, approved_by FROM refunds WHERE id = $1{}",
        backend.for_update()
    ))
    .bind(id.as_str())
    .fetch_one(&mut **tx)
    .await?;
    let refund = HeldRefund {
        status: row.try_get("status")?,
        amount: Money::new(row.try_get("amount_minor")?, payment.currency()),
        requested_by: row.try_get("requested_by")?,
        approved_by: row.try_get("approved_by")?,
    };
    Ok((payment, refund))
}

/// tx B: apply the processor's answer to the refund, the payment, the invoice and the ledger.
async fn apply_outcome(
    keys: &Keys,
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
        return respond(keys, tx, claim, id).await;
    }
    let amount = Money::new(refund.try_get("amount_minor")?, payment.currency());
    let now = now_us();
    match outcome {
        None => respond(keys, tx, claim, id).await,
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
            respond(keys, tx, claim, id).await
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
            outbox::refund(tx, EventType::RefundFailed, id).await?;
            respond(keys, tx, claim, id).await
        }
        Some(Ok(RefundOutcome::Succeeded { refund_id })) => {
            let entry = settle(tx, backend, &payment, id, amount, &refund_id).await?;
            let response = respond(keys, tx, claim, id).await?;
            posting::post(tx, backend, entry).await?;
            outbox::refund(tx, EventType::RefundSucceeded, id).await?;
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
    keys: &Keys,
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
    let mut refund = refund_from_row(&row)?;
    open_texts(&mut notes::Opener::new(keys), tx, &mut refund).await?;
    idempotency::respond_ok(tx, claim, &refund).await
}

const NOTE_COLUMN: &str = "refunds.note";
const REJECTION_COLUMN: &str = "refunds.rejection_reason";

/// Replaces the sealed note and rejection reason (as read from the row) with their text.
async fn open_texts(
    opener: &mut notes::Opener<'_>,
    conn: &mut sqlx::AnyConnection,
    refund: &mut Refund,
) -> ApiResult<()> {
    if refund.note.is_none() && refund.rejection_reason.is_none() {
        return Ok(());
    }
    let patient: String = sqlx::query_scalar("SELECT patient_id FROM payments WHERE id = $1")
        .bind(&refund.payment)
        .fetch_one(&mut *conn)
        .await?;
    refund.note = opener
        .open(
            &mut *conn,
            &patient,
            NOTE_COLUMN,
            &refund.id,
            refund.note.take(),
        )
        .await?;
    refund.rejection_reason = opener
        .open(
            &mut *conn,
            &patient,
            REJECTION_COLUMN,
            &refund.id,
            refund.rejection_reason.take(),
        )
        .await?;
    Ok(())
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
    principal
        .ensure_refund_visible(&state.db, id.as_str(), "id")
        .await?;
    let row = sqlx::query(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE id = $1"
    ))
    .bind(id.as_str())
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("id", "refund"))?;
    let mut refund = refund_from_row(&row)?;
    let mut conn = state.db.pool.acquire().await?;
    open_texts(&mut notes::Opener::new(&state.keys), &mut conn, &mut refund).await?;
    drop(conn);
    if principal.own_facility().is_some() {
        let patient: Option<String> =
            sqlx::query_scalar("SELECT patient_id FROM payments WHERE id = $1")
                .bind(&refund.payment)
                .fetch_optional(&state.db.pool)
                .await?;
        principal
            .ensure_patient_visible(&state.db, patient.as_deref().unwrap_or(""), "id", "refund")
            .await?;
    }
    Ok(Json(refund))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundListQuery {
    limit: Option<String>,
    starting_after: Option<String>,
    payment: Option<String>,
    status: Option<String>,
}

/// List refunds, newest first, optionally of one payment or in one status
/// (`status=pending_approval`: the refunds waiting for a second billing manager).
#[utoipa::path(get, path = "/v1/refunds", tag = "refunds",
    params(("limit" = Option<i64>, Query), ("starting_after" = Option<String>, Query), ("payment" = Option<String>, Query),
           ("status" = Option<String>, Query)),
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
    if let Some(s) = &q.status {
        if !STATUSES.contains(&s.as_str()) {
            return Err(ApiError::invalid(
                "status",
                "parameter_invalid",
                "Must be one of pending_approval, pending, succeeded, failed, rejected.",
            ));
        }
    }
    let after = RefundId::parse_opt_param(q.starting_after.as_deref(), "starting_after")?;
    let before = crate::api::cursor_seq(
        &state,
        "refunds",
        "refund",
        after.as_ref().map(|i| i.as_str()),
        i64::MAX,
    )
    .await?;
    let (own_patient, own_facility) = principal.list_limits();
    let rows = sqlx::query(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE seq < $1 AND ($2 = '' OR payment_id = $2) \
         AND ($3 = '' OR status = $3) \
         AND ($5 = '' OR payment_id IN (SELECT id FROM payments WHERE patient_id = $5)) \
         AND ($6 = '' OR payment_id IN (SELECT p.id FROM payments p JOIN patients pt ON pt.id = p.patient_id \
                                         WHERE pt.facility_id = $6)) \
         ORDER BY seq DESC LIMIT $4"
    ))
    .bind(before)
    .bind(payment.as_ref().map(|p| p.as_str()).unwrap_or(""))
    .bind(q.status.as_deref().unwrap_or(""))
    .bind(limit.saturating_add(1))
    .bind(own_patient)
    .bind(own_facility)
    .fetch_all(&state.db.pool)
    .await?;
    let mut items = rows
        .iter()
        .map(refund_from_row)
        .collect::<ApiResult<Vec<_>>>()?;
    let mut conn = state.db.pool.acquire().await?;
    let mut opener = notes::Opener::new(&state.keys);
    for refund in &mut items {
        open_texts(&mut opener, &mut conn, refund).await?;
    }
    drop(conn);
    Ok(Json(List::from_rows(items, limit, "/v1/refunds")))
}

/// What a processor update did to one of our refunds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefundUpdate {
    /// Settled (succeeded, entry posted), failed (reservation released) or reversed (a refund
    /// that had succeeded failed afterwards: its entry reversed, the amounts restored).
    Applied,
    /// Our state already said so, or the update is not final yet.
    Nothing,
}

/// Applies the processor's later word on refund `id` (Stripe's `refund.*` webhooks): a pending
/// refund settles or fails; a succeeded one that fails afterwards is reversed in the ledger (the
/// money is back in processor clearing, the patient owes or holds credit again). Everything in
/// `tx`; the entry is posted last.
pub(crate) async fn apply_processor_update(
    tx: &mut Tx,
    backend: Backend,
    id: &RefundId,
    outcome: &RefundOutcome,
) -> ApiResult<RefundUpdate> {
    let (payment, held) = lock_refund(tx, backend, id).await?;
    let row = sqlx::query(
        "SELECT applied_minor, credited_minor, journal_entry_id FROM refunds WHERE id = $1",
    )
    .bind(id.as_str())
    .fetch_one(&mut **tx)
    .await?;
    let now = now_us();
    match (held.status.as_str(), outcome) {
        ("pending", RefundOutcome::Succeeded { refund_id }) => {
            let entry = settle(tx, backend, &payment, id, held.amount, refund_id).await?;
            posting::post(tx, backend, entry).await?;
            // Accounting systems hear of a refund the processor settled later (webhook or
            // reconciler) in the same transaction, as they do of one settled in the request.
            outbox::refund(tx, EventType::RefundSucceeded, id).await?;
            Ok(RefundUpdate::Applied)
        }
        (
            "pending",
            RefundOutcome::Failed {
                refund_id,
                failure_code,
            },
        ) => {
            let reserved = payment.refund_reserved.checked_sub(held.amount)?;
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
            sqlx::query("UPDATE refunds SET status = 'failed', processor_refund_id = COALESCE($1, processor_refund_id), failure_code = $2, updated_at_us = $3 WHERE id = $4")
                .bind(refund_id.clone())
                .bind(failure_code)
                .bind(now)
                .bind(id.as_str())
                .execute(&mut **tx)
                .await?;
            outbox::refund(tx, EventType::RefundFailed, id).await?;
            Ok(RefundUpdate::Applied)
        }
        ("succeeded", RefundOutcome::Failed { failure_code, .. }) => {
            let currency = payment.currency();
            let applied = Money::new(row.try_get("applied_minor")?, currency);
            let credited = Money::new(row.try_get("credited_minor")?, currency);
            let entry: Option<String> = row.try_get("journal_entry_id")?;
            let entry = entry.ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!("succeeded refund {id} has no entry"))
            })?;
            let refunded_applied = payment.refunded_applied.checked_sub(applied)?;
            let refunded_credited = payment.refunded_credited.checked_sub(credited)?;
            assert_money(
                refunded_applied.amount_minor() >= 0 && refunded_credited.amount_minor() >= 0,
                "refund reversal below zero",
            )?;
            if let (Some(inv), false) = (&payment.invoice, applied.is_zero()) {
                let mut invoice = invoices::lock(tx, backend, inv, "payment").await?;
                invoice.refunded = invoice.refunded.checked_sub(applied)?;
                invoice.save_amounts(tx).await?;
            }
            sqlx::query("UPDATE payments SET refunded_applied_minor = $1, refunded_credited_minor = $2, updated_at_us = $3 WHERE id = $4")
                .bind(refunded_applied.amount_minor())
                .bind(refunded_credited.amount_minor())
                .bind(now)
                .bind(payment.id.as_str())
                .execute(&mut **tx)
                .await?;
            // The split moves back onto the payment above; the refund keeps its entry id, which
            // the reversal points at.
            sqlx::query("UPDATE refunds SET status = 'failed', applied_minor = 0, credited_minor = 0, failure_code = $1, updated_at_us = $2 WHERE id = $3")
                .bind(failure_code)
                .bind(now)
                .bind(id.as_str())
                .execute(&mut **tx)
                .await?;
            outbox::refund(tx, EventType::RefundFailed, id).await?;
            posting::reverse(
                tx,
                backend,
                &crate::ids::EntryId::from_db(entry),
                format!("Refund {id} failed at the processor after succeeding"),
                References {
                    patient: Some(payment.patient.clone()),
                    invoice: payment.invoice.clone(),
                    payment: Some(payment.id.clone()),
                    refund: Some(id.clone()),
                    ..Default::default()
                },
            )
            .await?;
            Ok(RefundUpdate::Applied)
        }
        ("pending", RefundOutcome::Pending { refund_id }) => {
            sqlx::query("UPDATE refunds SET processor_refund_id = $1, updated_at_us = $2 WHERE id = $3 AND processor_refund_id IS NULL")
                .bind(refund_id)
                .bind(now)
                .bind(id.as_str())
                .execute(&mut **tx)
                .await?;
            Ok(RefundUpdate::Nothing)
        }
        _ => Ok(RefundUpdate::Nothing),
    }
}
