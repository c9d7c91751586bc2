//! Payments (`pay_…`): charging a patient's card for an invoice or on account.
//!
//! The path of a payment, and what survives a crash at each step:
//!
//! 0. A card token (`tok_…`) is exchanged at the card vault for the processor's payment method
//!    and the card's brand and last four, *before anything is written*: an unknown token or a
//!    vault that is down or slow leaves no payment and no idempotency key behind (404
//!    `resource_missing` / 503 `vault_unavailable`), and the same request can simply be sent
//!    again. A `pm_…` id goes to the processor as it is.
//! 1. **tx A** records the payment (`pending`) and moves its idempotency key to
//!    `processor_called`. The payment keeps what the client sent (`payment_method`: the token or
//!    the `pm_…` id), the card's brand and last four from the vault, and the payment method the
//!    processor is to charge (`processor_payment_method`). After a crash here a retry finds the
//!    key and resumes at step 2 with that stored payment method — the vault is not asked again
//!    (the card may have been deleted since), and the processor sees exactly the first request.
//! 2. The processor is called with an idempotency key derived from the payment id
//!    (`carebill-pay_…`), never from invoice and amount. Calling it again after a crash returns
//!    the first charge's outcome: no second charge.
//! 3. **tx B** applies the outcome: on success it posts Dr processor clearing / Cr patient
//!    receivable (the part applied to the invoice) / Cr patient credit (any overpayment), updates
//!    the invoice, and saves the response under the idempotency key, all in one commit.
//!
//! Ledger entries per status: `succeeded` posts the entry above; `processing` and `failed`
//! post nothing (no money has moved). A decline answers 402 `card_error` with the decline code,
//! and the failed payment is recorded and attached to the error.
//!
//! The card a payment shows (`card.brand`, `card.last4`) is the vault's for a token payment (the
//! card that was tokenized, recorded in tx A), else the processor's (recorded in tx B).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa::ToSchema;

use crate::api::{parse_limit, ApiJson, ApiPath, ApiQuery, List};
use crate::auth::{Action, Principal};
use crate::db::{now_us, us_to_rfc3339, Backend, Tx};
use crate::error::{ApiError, ApiResult, ErrorType};
use crate::idempotency::{self, IdempotencyKey, MaybeClaim, Phase};
use crate::ids::{InvoiceId, PatientId, PaymentId};
use crate::invoices::{self, amount_field, currency_field};
use crate::ledger::accounts::{account_id, ensure_patient_accounts, patient_account_id, Code};
use crate::ledger::posting::{self, EntryKind, NewEntry, References};
use crate::money::{Currency, Money, PositiveAmount};
use crate::processor::{CardSummary, ChargeOutcome, ChargeRequest, ProcessorError};
use crate::webhooks::outbox::{self, EventType};
use crate::AppState;

const PAYMENT_METHOD_CHARS_MAX: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/payments", post(create_payment).get(list_payments))
        .route("/v1/payments/{id}", get(get_payment))
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePayment {
    /// The invoice to pay. Either `invoice` or `patient` (a payment on account) is required.
    pub invoice: Option<String>,
    pub patient: Option<String>,
    /// Minor units, positive.
    pub amount: i64,
    pub currency: String,
    /// A processor PaymentMethod id (`pm_card_visa` in test mode) or a card vault token
    /// (`tok_` and 24 letters and digits).
    pub payment_method: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Card {
    pub brand: String,
    pub last4: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Payment {
    pub id: String,
    /// Always `"payment"`.
    pub object: &'static str,
    pub invoice: Option<String>,
    pub patient: String,
    pub amount: i64,
    pub currency: String,
    /// processing, succeeded or failed.
    pub status: String,
    /// Part of the amount applied to the invoice.
    pub amount_applied: i64,
    /// Part of the amount credited to the patient's credit balance (overpayment).
    pub amount_credited: i64,
    pub amount_refunded: i64,
    /// What is still refundable (captured - refunded - refunds in flight).
    pub amount_refundable: i64,
    pub payment_method: String,
    pub card: Option<Card>,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub journal_entry: Option<String>,
    /// While the card holder must act (3-D Secure): what Stripe.js is to do next and the
    /// PaymentIntent's client secret; the payment stays `processing` until Stripe's webhook.
    pub next_action: Option<NextAction>,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NextAction {
    /// Stripe's `next_action.type` (e.g. `use_stripe_sdk`, `redirect_to_url`).
    #[serde(rename = "type")]
    pub kind: String,
    pub client_secret: Option<String>,
}

const PAYMENT_COLUMNS: &str = "seq, id, patient_id, invoice_id, currency, amount_minor, status, payment_method, \
     processor_payment_method, processor_idempotency_key, processor_charge_id, card_brand, card_last4, \
     failure_code, failure_message, amount_applied_minor, amount_credited_minor, refunded_applied_minor, refunded_credited_minor, \
     amount_refund_reserved_minor, journal_entry_id, created_at_us, processor_next_action, processor_client_secret, updated_at_us";

/// A payment row as the money code sees it.
#[derive(Debug, Clone)]
pub struct PaymentRow {
    pub id: PaymentId,
    pub patient: PatientId,
    pub invoice: Option<InvoiceId>,
    pub amount: Money,
    pub status: String,
    /// What the client sent: a `pm_…` id or a card token.
    pub payment_method: String,
    /// What the processor charges: the `pm_…` id, or the one the vault made for the token.
    pub processor_payment_method: String,
    pub processor_key: String,
    pub charge_id: Option<String>,
    pub updated_at_us: i64,
    pub applied: Money,
    pub credited: Money,
    pub refunded_applied: Money,
    pub refunded_credited: Money,
    pub refund_reserved: Money,
}

impl PaymentRow {
    pub fn from_row(row: &AnyRow) -> ApiResult<PaymentRow> {
        let currency: Currency = row.try_get::<String, _>("currency")?.parse()?;
        let m = |c: &str| -> ApiResult<Money> { Ok(Money::new(row.try_get(c)?, currency)) };
        Ok(PaymentRow {
            id: PaymentId::from_db(row.try_get("id")?),
            patient: PatientId::from_db(row.try_get("patient_id")?),
            invoice: row
                .try_get::<Option<String>, _>("invoice_id")?
                .map(InvoiceId::from_db),
            amount: m("amount_minor")?,
            status: row.try_get("status")?,
            payment_method: row.try_get("payment_method")?,
            processor_payment_method: row.try_get("processor_payment_method")?,
            processor_key: row.try_get("processor_idempotency_key")?,
            charge_id: row.try_get("processor_charge_id")?,
            updated_at_us: row.try_get("updated_at_us")?,
            applied: m("amount_applied_minor")?,
            credited: m("amount_credited_minor")?,
            refunded_applied: m("refunded_applied_minor")?,
            refunded_credited: m("refunded_credited_minor")?,
            refund_reserved: m("amount_refund_reserved_minor")?,
        })
    }

    pub fn currency(&self) -> Currency {
        self.amount.currency()
    }

    /// Captured minus refunded minus refunds in flight; zero unless the payment succeeded.
    pub fn refundable(&self) -> Result<Money, ApiError> {
        if self.status != "succeeded" {
            return Ok(Money::zero(self.currency()));
        }
        Ok(self
            .amount
            .checked_sub(self.refunded_applied)?
            .checked_sub(self.refunded_credited)?
            .checked_sub(self.refund_reserved)?)
    }
}

fn payment_from_row(row: &AnyRow) -> ApiResult<Payment> {
    let p = PaymentRow::from_row(row)?;
    let brand: Option<String> = row.try_get("card_brand")?;
    let last4: Option<String> = row.try_get("card_last4")?;
    let status = if p.status == "pending" {
        "processing".to_owned()
    } else {
        p.status.clone()
    };
    Ok(Payment {
        id: p.id.to_string(),
        object: "payment",
        invoice: p.invoice.as_ref().map(|i| i.to_string()),
        patient: p.patient.to_string(),
        amount: p.amount.amount_minor(),
        currency: p.currency().code().to_owned(),
        status,
        amount_applied: p.applied.amount_minor(),
        amount_credited: p.credited.amount_minor(),
        amount_refunded: p
            .refunded_applied
            .checked_add(p.refunded_credited)?
            .amount_minor(),
        amount_refundable: p.refundable()?.amount_minor(),
        payment_method: p.payment_method,
        card: match (brand, last4) {
            (Some(brand), Some(last4)) => Some(Card { brand, last4 }),
            _ => None,
        },
        failure_code: row.try_get("failure_code")?,
        failure_message: row.try_get("failure_message")?,
        journal_entry: row.try_get("journal_entry_id")?,
        next_action: match row.try_get::<Option<String>, _>("processor_next_action")? {
            Some(kind) if p.status == "processing" => Some(NextAction {
                kind,
                client_secret: row.try_get("processor_client_secret")?,
            }),
            _ => None,
        },
        created_at: us_to_rfc3339(row.try_get("created_at_us")?),
    })
}

/// Reads and row-locks a payment inside a write transaction.
pub async fn lock(
    tx: &mut Tx,
    backend: Backend,
    id: &PaymentId,
    param: &str,
) -> ApiResult<PaymentRow> {
    let row = sqlx::query(&format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1{}",
        backend.for_update()
    ))
    .bind(id.as_str())
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| ApiError::not_found(param, "payment"))?;
    PaymentRow::from_row(&row)
}

/// The API view of a payment, read inside `tx`.
pub async fn view(tx: &mut Tx, id: &PaymentId) -> ApiResult<Payment> {
    let row = sqlx::query(&format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1"
    ))
    .bind(id.as_str())
    .fetch_one(&mut **tx)
    .await?;
    payment_from_row(&row)
}

/// A validated payment request.
#[derive(Debug, Clone)]
struct ValidPayment {
    invoice: Option<InvoiceId>,
    patient: Option<PatientId>,
    amount: PositiveAmount,
    currency: Currency,
    payment_method: String,
}

impl CreatePayment {
    fn validated(&self) -> Result<ValidPayment, ApiError> {
        let invoice = InvoiceId::parse_opt_param(self.invoice.as_deref(), "invoice")?;
        let patient = PatientId::parse_opt_param(self.patient.as_deref(), "patient")?;
        if invoice.is_none() && patient.is_none() {
            return Err(ApiError::invalid(
                "invoice",
                "parameter_missing",
                "Send `invoice` to pay a bill, or `patient` for a payment on account.",
            ));
        }
        let amount = amount_field("amount", self.amount)?;
        let currency = currency_field("currency", &self.currency)?;
        let pm = self.payment_method.trim();
        if pm.starts_with("tok_") {
            if !crate::vault::is_token(pm) {
                return Err(ApiError::invalid(
                    "payment_method",
                    "payment_method_invalid",
                    "A card token is `tok_` followed by 24 letters and digits.",
                ));
            }
        } else {
            let well_formed = pm.starts_with("pm_")
                && pm.len() <= PAYMENT_METHOD_CHARS_MAX
                && pm.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !well_formed {
                return Err(ApiError::invalid(
                    "payment_method",
                    "payment_method_invalid",
                    "Must be a payment method id (`pm_…`) or a card token (`tok_…`).",
                ));
            }
        }
        Ok(ValidPayment {
            invoice,
            patient,
            amount,
            currency,
            payment_method: pm.to_owned(),
        })
    }
}

/// Create a payment: charge the payment method and apply the money to the invoice (any excess
/// to the patient's credit balance). Requires an `Idempotency-Key`.
#[utoipa::path(post, path = "/v1/payments", tag = "payments", request_body = CreatePayment,
    params(("Idempotency-Key" = String, Header, description = "A UUID; required")),
    responses((status = 200, body = Payment), (status = 402, description = "Card declined (card_error); the failed payment is attached"),
              (status = 404, description = "No such invoice, patient or card token (resource_missing)"),
              (status = 409, description = "Same key in flight"), (status = 422, description = "Key reused with another request"),
              (status = 503, description = "Card vault (vault_unavailable) or processor unavailable; retry with the same key")),
    security(("api_key" = [])))]
pub async fn create_payment(
    State(state): State<AppState>,
    principal: Principal,
    key: IdempotencyKey,
    ApiJson(req): ApiJson<CreatePayment>,
) -> ApiResult<Response> {
    principal.authorize(Action::PaymentsCreate)?;
    let key = key.required()?;
    let valid = req.validated()?;
    // Record-level rule: a patient pays only their own bills (anything else is "no such
    // invoice"), facility-bound staff only their facility's.
    if let Some(invoice) = valid.invoice.as_ref() {
        let owner: Option<String> =
            sqlx::query_scalar("SELECT patient_id FROM invoices WHERE id = $1")
                .bind(invoice.as_str())
                .fetch_optional(&state.db.pool)
                .await?;
        if let Some(owner) = owner {
            principal
                .ensure_patient_visible(&state.db, &owner, "invoice", "invoice")
                .await?;
        }
    }
    if let Some(patient) = valid.patient.as_ref() {
        principal
            .ensure_patient_visible(&state.db, patient.as_str(), "patient", "patient")
            .await?;
    }
    let st = state.clone();
    Ok(idempotency::run(
        &state,
        &principal,
        key,
        "POST /v1/payments",
        &req,
        |claim| async move { execute(&st, claim, valid).await },
    )
    .await)
}

async fn execute(
    state: &AppState,
    claim: MaybeClaim,
    req: ValidPayment,
) -> ApiResult<(StatusCode, serde_json::Value)> {
    let resumed = claim
        .as_ref()
        .filter(|c| c.phase == Phase::ProcessorCalled)
        .and_then(|c| c.resource_id.clone());
    let payment = match resumed {
        // Resuming after a crash or a timed-out attempt: the payment row has everything, the
        // payment method to charge included; the vault is not asked again.
        Some(id) => {
            let row = sqlx::query(&format!(
                "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1"
            ))
            .bind(id)
            .fetch_one(&state.db.pool)
            .await?;
            PaymentRow::from_row(&row)?
        }
        None => {
            // Before any write: a vault failure leaves nothing behind.
            let method = resolve_method(state, &req.payment_method).await?;
            record(state, &claim, &req, &method).await?
        }
    };
    let payment_id = payment.id.clone();
    let outcome = if payment.status == "pending" {
        let request = ChargeRequest {
            idempotency_key: payment.processor_key.clone(),
            amount: payment.amount,
            payment_method: payment.processor_payment_method.clone(),
            payment_id: payment.id.to_string(),
        };
        Some(state.processor.charge(&request).await)
    } else {
        None // another attempt already applied the outcome; only the response remains
    };
    crate::failpoint::hit("payment_after_processor");
    let backend = state.db.backend;
    state
        .db
        .write(|tx| {
            let (claim, id, outcome) = (claim.clone(), payment_id.clone(), outcome.clone_outcome());
            Box::pin(async move { apply_outcome(tx, backend, &claim, &id, outcome).await })
        })
        .await
}

/// What the processor is to charge for a request's `payment_method`, and the card behind it
/// when the vault told us.
#[derive(Debug, Clone)]
struct ResolvedMethod {
    processor_payment_method: String,
    card: Option<CardSummary>,
}

/// A `pm_…` id is charged as it is; a card token is exchanged at the vault (no vault
/// configured, down or slow: 503 `vault_unavailable`; unknown token: 404 naming
/// `payment_method`).
async fn resolve_method(state: &AppState, payment_method: &str) -> ApiResult<ResolvedMethod> {
    if !payment_method.starts_with("tok_") {
        return Ok(ResolvedMethod {
            processor_payment_method: payment_method.to_owned(),
            card: None,
        });
    }
    let vault = state
        .vault
        .as_ref()
        .ok_or_else(crate::vault::not_configured_error)?;
    let minted = vault
        .charge_method(payment_method, &crate::error::current_request_id())
        .await?;
    Ok(ResolvedMethod {
        processor_payment_method: minted.payment_method,
        card: Some(minted.card),
    })
}

/// tx A: checks the invoice or patient, records the pending payment, marks the key.
async fn record(
    state: &AppState,
    claim: &MaybeClaim,
    req: &ValidPayment,
    method: &ResolvedMethod,
) -> ApiResult<PaymentRow> {
    let backend = state.db.backend;
    state
        .db
        .write(|tx| {
            let (claim, req, method) = (claim.clone(), req.clone(), method.clone());
            Box::pin(async move {
                idempotency::claim(tx, &claim).await?;
                let patient = match &req.invoice {
                    Some(invoice_id) => {
                        let invoice = invoices::lock(tx, backend, invoice_id, "invoice").await?;
                        if let Some(p) = &req.patient {
                            if *p != invoice.patient {
                                return Err(ApiError::invalid("patient", "patient_mismatch", "The invoice belongs to another patient."));
                            }
                        }
                        if invoice.currency != req.currency {
                            return Err(ApiError::invalid("currency", "currency_mismatch", "The currency differs from the invoice's currency."));
                        }
                        if !invoice.is_open() || invoice.due.is_zero() {
                            return Err(ApiError::refused("invoice", "invoice_not_payable", "The invoice is not open for payment (draft, paid or void)."));
                        }
                        invoice.patient
                    }
                    None => {
                        let p = req.patient.clone().ok_or_else(|| ApiError::invalid("patient", "parameter_missing", "Missing required parameter."))?;
                        if !crate::patients::exists(tx, &p).await? {
                            return Err(ApiError::not_found("patient", "patient"));
                        }
                        p
                    }
                };
                let id = PaymentId::generate();
                let now = now_us();
                sqlx::query(
                    "INSERT INTO payments (id, patient_id, invoice_id, currency, amount_minor, status, payment_method, \
                     processor_payment_method, card_brand, card_last4, processor_idempotency_key, created_at_us, updated_at_us) \
                     VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $9, $10, $11, $11)",
                )
                .bind(id.as_str())
                .bind(patient.as_str())
                .bind(req.invoice.as_ref().map(|i| i.as_str().to_owned()))
                .bind(req.currency.code())
                .bind(req.amount.get())
                .bind(&req.payment_method)
                .bind(&method.processor_payment_method)
                .bind(method.card.as_ref().map(|c| c.brand.clone()))
                .bind(method.card.as_ref().map(|c| c.last4.clone()))
                .bind(format!("carebill-{id}"))
                .bind(now)
                .execute(&mut **tx)
                .await?;
                idempotency::mark_processor_called(tx, &claim, id.as_str()).await?;
                let zero = Money::zero(req.currency);
                Ok(PaymentRow {
                    processor_key: format!("carebill-{id}"),
                    id,
                    patient,
                    invoice: req.invoice.clone(),
                    amount: req.amount.of(req.currency),
                    status: "pending".to_owned(),
                    payment_method: req.payment_method.clone(),
                    processor_payment_method: method.processor_payment_method.clone(),
                    charge_id: None,
                    updated_at_us: now,
                    applied: zero,
                    credited: zero,
                    refunded_applied: zero,
                    refunded_credited: zero,
                    refund_reserved: zero,
                })
            })
        })
        .await
}

/// The processor's answer, cloneable so a retried transaction can apply it again.
trait CloneOutcome {
    fn clone_outcome(&self) -> Option<Result<ChargeOutcome, String>>;
}

impl CloneOutcome for Option<Result<ChargeOutcome, ProcessorError>> {
    fn clone_outcome(&self) -> Option<Result<ChargeOutcome, String>> {
        self.as_ref().map(|r| match r {
            Ok(o) => Ok(o.clone()),
            Err(ProcessorError::InvalidPaymentMethod) => Err("invalid_payment_method".to_owned()),
            Err(e) => Err(e.to_string()),
        })
    }
}

/// tx B: applies the processor's outcome to the payment, the invoice and the ledger, and
/// saves the response.
async fn apply_outcome(
    tx: &mut Tx,
    backend: Backend,
    claim: &MaybeClaim,
    id: &PaymentId,
    outcome: Option<Result<ChargeOutcome, String>>,
) -> ApiResult<(StatusCode, serde_json::Value)> {
    let payment = lock(tx, backend, id, "payment").await?;
    if payment.status != "pending" {
        return respond(tx, claim, id).await;
    }
    let now = now_us();
    match outcome {
        None => respond(tx, claim, id).await,
        Some(Err(e)) if e == "invalid_payment_method" => {
            sqlx::query("UPDATE payments SET status = 'failed', failure_code = 'payment_method_invalid', failure_message = $1, updated_at_us = $2 WHERE id = $3")
                .bind("The payment method does not exist.")
                .bind(now)
                .bind(id.as_str())
                .execute(&mut **tx)
                .await?;
            outbox::payment(tx, EventType::PaymentFailed, id).await?;
            let err = failed_payment_error(
                tx,
                id,
                StatusCode::BAD_REQUEST,
                ErrorType::InvalidRequestError,
                "payment_method_invalid",
                "No such payment method.".to_owned(),
            )
            .await?;
            idempotency::respond_err(tx, claim, err).await
        }
        Some(Err(e)) => {
            // Outcome unknown after the processor client's retries. The payment is left
            // `processing`: Stripe's webhook or the reconciler (`carebill reconcile`, which asks
            // again with the same idempotency key) settles it. Nothing is posted.
            tracing::warn!(payment = %id, error = %e, "processor outcome unknown; left processing");
            sqlx::query(
                "UPDATE payments SET status = 'processing', updated_at_us = $1 WHERE id = $2",
            )
            .bind(now)
            .bind(id.as_str())
            .execute(&mut **tx)
            .await?;
            respond(tx, claim, id).await
        }
        Some(Ok(o)) => match apply_charge(tx, backend, &payment, &o).await? {
            Applied::Captured(entry) => {
                let response = respond(tx, claim, id).await?;
                posting::post(tx, backend, entry).await?;
                Ok(response)
            }
            Applied::Declined { code, message } => {
                tracing::info!(payment = %id, code, "card declined");
                let err = failed_payment_error(
                    tx,
                    id,
                    StatusCode::PAYMENT_REQUIRED,
                    ErrorType::CardError,
                    code,
                    message,
                )
                .await?;
                idempotency::respond_err(tx, claim, err).await
            }
            Applied::InFlight | Applied::Nothing => respond(tx, claim, id).await,
        },
    }
}

/// What applying a processor outcome to a payment did.
pub(crate) enum Applied {
    /// Captured: the entry to post, last in the transaction.
    Captured(NewEntry),
    Declined {
        code: &'static str,
        message: String,
    },
    /// Still in flight (`processing`, maybe with a next action for the card holder).
    InFlight,
    /// The payment was already final: nothing changed.
    Nothing,
}

/// Applies `outcome` to a payment that is still in flight (`pending` or `processing`): the API
/// after its processor call, and Stripe's webhooks and the reconciler later. A final payment is
/// left as it is (duplicate and out-of-order events change nothing).
pub(crate) async fn apply_charge(
    tx: &mut Tx,
    backend: Backend,
    payment: &PaymentRow,
    outcome: &ChargeOutcome,
) -> ApiResult<Applied> {
    if payment.status != "pending" && payment.status != "processing" {
        return Ok(Applied::Nothing);
    }
    let now = now_us();
    let id = &payment.id;
    match outcome {
        ChargeOutcome::Succeeded { charge_id, card } => {
            let entry = capture(tx, backend, payment, charge_id, card).await?;
            // The event for accounting systems, in the capture's own transaction (whether the
            // API, a Stripe webhook or the reconciler applied it).
            outbox::payment(tx, EventType::PaymentSucceeded, id).await?;
            Ok(Applied::Captured(entry))
        }
        ChargeOutcome::Processing { charge_id, card }
        | ChargeOutcome::RequiresAction {
            charge_id, card, ..
        } => {
            let (next_action, client_secret) = match outcome {
                ChargeOutcome::RequiresAction {
                    next_action,
                    client_secret,
                    ..
                } => (Some(next_action.clone()), client_secret.clone()),
                _ => (None, None),
            };
            sqlx::query("UPDATE payments SET status = 'processing', processor_charge_id = $1, card_brand = COALESCE(card_brand, $2), \
                 card_last4 = COALESCE(card_last4, $3), processor_next_action = $4, processor_client_secret = $5, updated_at_us = $6 WHERE id = $7")
                .bind(charge_id)
                .bind(card.as_ref().map(|c| c.brand.clone()))
                .bind(card.as_ref().map(|c| c.last4.clone()))
                .bind(next_action)
                .bind(client_secret)
                .bind(now)
                .bind(id.as_str())
                .execute(&mut **tx)
                .await?;
            Ok(Applied::InFlight)
        }
        ChargeOutcome::Declined {
            charge_id,
            decline_code,
            message,
            card,
        } => {
            sqlx::query(
                "UPDATE payments SET status = 'failed', processor_charge_id = COALESCE($1, processor_charge_id), failure_code = $2, failure_message = $3, \
                 card_brand = COALESCE(card_brand, $4), card_last4 = COALESCE(card_last4, $5), processor_next_action = NULL, processor_client_secret = NULL, \
                 updated_at_us = $6 WHERE id = $7",
            )
            .bind(charge_id.clone())
            .bind(decline_code)
            .bind(message)
            .bind(card.as_ref().map(|c| c.brand.clone()))
            .bind(card.as_ref().map(|c| c.last4.clone()))
            .bind(now)
            .bind(id.as_str())
            .execute(&mut **tx)
            .await?;
            outbox::payment(tx, EventType::PaymentFailed, id).await?;
            Ok(Applied::Declined {
                code: decline_code_static(decline_code),
                message: message.clone(),
            })
        }
    }
}

/// Settles an in-flight payment from outside a request (webhooks, the reconciler): applies the
/// outcome and posts the capture entry, in `tx`. Returns the entry id when one was posted.
pub(crate) async fn settle_in_flight(
    tx: &mut Tx,
    backend: Backend,
    id: &PaymentId,
    outcome: &ChargeOutcome,
) -> ApiResult<Option<crate::ids::EntryId>> {
    let payment = lock(tx, backend, id, "payment").await?;
    match apply_charge(tx, backend, &payment, outcome).await? {
        Applied::Captured(entry) => Ok(Some(posting::post(tx, backend, entry).await?)),
        Applied::Declined { .. } | Applied::InFlight | Applied::Nothing => Ok(None),
    }
}

/// The error for a payment the processor refused, naming `payment_method` and carrying the
/// failed payment as recorded in `tx`.
async fn failed_payment_error(
    tx: &mut Tx,
    id: &PaymentId,
    status: StatusCode,
    kind: ErrorType,
    code: &'static str,
    message: String,
) -> ApiResult<ApiError> {
    let payment =
        serde_json::to_value(view(tx, id).await?).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(ApiError::Client {
        status,
        kind,
        code,
        message,
        param: Some("payment_method".to_owned()),
        attach: Some(("payment", payment)),
    })
}

/// Decline codes as static strings for the error body (unknown ones become `card_declined`).
fn decline_code_static(code: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "card_declined",
        "insufficient_funds",
        "expired_card",
        "incorrect_cvc",
        "processing_error",
        "lost_card",
        "stolen_card",
        "do_not_honor",
        "fraudulent",
        "generic_decline",
        "incorrect_number",
        "authentication_required",
    ];
    KNOWN
        .iter()
        .find(|k| **k == code)
        .copied()
        .unwrap_or("card_declined")
}

/// Applies a captured payment to the invoice and the payment row and returns the entry to post
/// (last, see `ledger::posting`): Dr clearing; Cr the patient's receivable for what the invoice
/// still owes, Cr the patient's credit balance for the rest.
async fn capture(
    tx: &mut Tx,
    backend: Backend,
    payment: &PaymentRow,
    charge_id: &str,
    card: &CardSummary,
) -> ApiResult<NewEntry> {
    let currency = payment.currency();
    let mut invoice = match &payment.invoice {
        Some(i) => Some(invoices::lock(tx, backend, i, "invoice").await?),
        None => None,
    };
    // Apply to the invoice at most what it owes *now* (another payment may have landed since
    // tx A); the rest is an overpayment held as the patient's credit.
    let applied = match &invoice {
        Some(inv) if inv.is_open() => payment.amount.min(inv.due)?,
        _ => Money::zero(currency),
    };
    let credited = payment.amount.checked_sub(applied)?;
    assert_money(
        applied.amount_minor() >= 0 && credited.amount_minor() >= 0,
        "payment split is negative",
    )?;
    ensure_patient_accounts(tx, &payment.patient, currency).await?;
    let entry = NewEntry::new(
        EntryKind::PaymentCaptured,
        format!("Payment {} captured", payment.id),
        References {
            patient: Some(payment.patient.clone()),
            invoice: payment.invoice.clone(),
            payment: Some(payment.id.clone()),
            ..Default::default()
        },
    )
    .debit(
        account_id(Code::ProcessorClearing, currency),
        payment.amount,
    )
    .credit_if_nonzero(
        patient_account_id(Code::PatientReceivables, currency, &payment.patient),
        applied,
    )?
    .credit_if_nonzero(
        patient_account_id(Code::PatientCredit, currency, &payment.patient),
        credited,
    )?;
    if let Some(inv) = invoice.as_mut() {
        inv.paid = inv.paid.checked_add(applied)?;
        inv.save_amounts(tx).await?;
    }
    sqlx::query(
        "UPDATE payments SET status = 'succeeded', amount_applied_minor = $1, amount_credited_minor = $2, \
         processor_charge_id = $3, card_brand = COALESCE(card_brand, $4), card_last4 = COALESCE(card_last4, $5), \
         journal_entry_id = $6, processor_next_action = NULL, processor_client_secret = NULL, updated_at_us = $7 WHERE id = $8",
    )
    .bind(applied.amount_minor())
    .bind(credited.amount_minor())
    .bind(charge_id)
    .bind(&card.brand)
    .bind(&card.last4)
    .bind(entry.id.as_str())
    .bind(now_us())
    .bind(payment.id.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(entry)
}

/// Fails the transaction (as an internal error) when a money invariant does not hold.
pub fn assert_money(condition: bool, what: &str) -> Result<(), ApiError> {
    if condition {
        Ok(())
    } else {
        Err(anyhow::anyhow!("money invariant violated: {what}").into())
    }
}

async fn respond(
    tx: &mut Tx,
    claim: &MaybeClaim,
    id: &PaymentId,
) -> ApiResult<(StatusCode, serde_json::Value)> {
    let payment = view(tx, id).await?;
    idempotency::respond_ok(tx, claim, &payment).await
}

/// Retrieve a payment.
#[utoipa::path(get, path = "/v1/payments/{id}", tag = "payments", params(("id" = String, Path)),
    responses((status = 200, body = Payment), (status = 404, description = "No such payment")),
    security(("api_key" = [])))]
pub async fn get_payment(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Payment>> {
    principal.authorize(Action::PaymentsRead)?;
    let id = PaymentId::parse_param(&id, "id")?;
    let row = sqlx::query(&format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1"
    ))
    .bind(id.as_str())
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("id", "payment"))?;
    let payment = payment_from_row(&row)?;
    principal
        .ensure_patient_visible(&state.db, &payment.patient, "id", "payment")
        .await?;
    Ok(Json(payment))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentListQuery {
    limit: Option<String>,
    starting_after: Option<String>,
    invoice: Option<String>,
    patient: Option<String>,
}

/// List payments, newest first, optionally for one invoice or patient.
#[utoipa::path(get, path = "/v1/payments", tag = "payments",
    params(("limit" = Option<i64>, Query), ("starting_after" = Option<String>, Query),
           ("invoice" = Option<String>, Query), ("patient" = Option<String>, Query)),
    responses((status = 200, body = List<Payment>)),
    security(("api_key" = [])))]
pub async fn list_payments(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<PaymentListQuery>,
) -> ApiResult<Json<List<Payment>>> {
    principal.authorize(Action::PaymentsRead)?;
    let limit = parse_limit(q.limit.as_deref())?;
    let invoice = InvoiceId::parse_opt_param(q.invoice.as_deref(), "invoice")?;
    let patient = PatientId::parse_opt_param(q.patient.as_deref(), "patient")?;
    let after = PaymentId::parse_opt_param(q.starting_after.as_deref(), "starting_after")?;
    let before = crate::api::cursor_seq(
        &state,
        "payments",
        "payment",
        after.as_ref().map(|i| i.as_str()),
        i64::MAX,
    )
    .await?;
    // Record-level rule: a patient lists only their own payments, facility-bound staff those
    // of their facility's patients.
    let (own_patient, own_facility) = principal.list_limits();
    let rows = sqlx::query(&format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE seq < $1 AND ($2 = '' OR invoice_id = $2) AND ($3 = '' OR patient_id = $3) \
         AND ($5 = '' OR patient_id = $5) \
         AND ($6 = '' OR patient_id IN (SELECT id FROM patients WHERE facility_id = $6)) \
         ORDER BY seq DESC LIMIT $4"
    ))
    .bind(before)
    .bind(invoice.as_ref().map(|i| i.as_str()).unwrap_or(""))
    .bind(patient.as_ref().map(|p| p.as_str()).unwrap_or(""))
    .bind(limit.saturating_add(1))
    .bind(own_patient)
    .bind(own_facility)
    .fetch_all(&state.db.pool)
    .await?;
    let items = rows
        .iter()
        .map(payment_from_row)
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(List::from_rows(items, limit, "/v1/payments")))
}
