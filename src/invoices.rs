//! Invoices (`inv_…`): a patient's bill, its lines, its life cycle and its adjustments.
//!
//! ```text
//! draft ──finalize──► open ──payments──► partially_paid ──► paid
//!   │                  │  ▲                                   │
//!   └──void──► void ◄──┘  └────────── refunds re-open ────────┘
//! ```
//!
//! Ledger effects: finalize posts receivable (Dr 1200 patient) against revenue (Cr 4000);
//! an adjustment posts its contra account (insurance adjustment, discount or write-off)
//! against the receivable; void posts the reversal of each of those entries. The amounts on the
//! invoice row are kept in the same transaction, and both the code and a database CHECK hold
//! `amount_due = total - adjusted - paid + refunded`.
//!
//! Dual control: a write-off above the dual-control threshold (`Config::dual_control_threshold`,
//! 500.00 in the invoice's currency by default) is recorded `pending_approval`: nothing is posted
//! and the invoice's amounts do not move until a *different* person allowed to create refunds
//! approves it (`POST /v1/invoices/{id}/adjustments/{adjustment}/approve`); the requester gets
//! 403 `approval_requires_second_person`. It holds nothing on the invoice meanwhile (a payment
//! may still come in): the approval checks again that the invoice is open and owes at least the
//! amount, and refuses otherwise (the write-off then stays pending until rejected). Approval
//! locks the invoice row and moves `pending_approval` → `posted` with a conditional update, so
//! concurrent approvals post exactly one entry; the others answer with the posted adjustment.
//! The row names `requested_by` and `approved_by` / `rejected_by`, and each step is logged with
//! both names. A void rejects nothing by itself: it reverses only posted adjustments.

use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa::ToSchema;

use crate::api::{date_field, parse_limit, text_field, ApiJson, ApiPath, ApiQuery, List};
use crate::auth::{Action, Principal};
use crate::crypto::{notes, CryptoError, Field, KeyState, Keys};
use crate::db::{now_us, us_to_rfc3339, Backend, Tx};
use crate::error::{ApiError, ApiResult};
use crate::idempotency::{self, IdempotencyKey, MaybeClaim};
use crate::ids::{AdjustmentId, EntryId, InvoiceId, InvoiceLineId, PatientId};
use crate::ledger::accounts::{account_id, ensure_patient_accounts, patient_account_id, Code};
use crate::ledger::posting::{self, EntryKind, NewEntry, References};
use crate::money::{Currency, Money, PositiveAmount, AMOUNT_MINOR_MAX};
use crate::webhooks::outbox::{self, EventType};
use crate::AppState;
use std::collections::HashMap;

/// Lines per invoice, at most.
pub const LINES_MAX: usize = 250;
/// Units of one line, at most.
pub const QUANTITY_MAX: i64 = 10_000;
const DESCRIPTION_CHARS_MAX: usize = 500;
const REASON_CHARS_MAX: usize = 500;
const CODE_CHARS_MAX: usize = 16;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/invoices", post(create_invoice).get(list_invoices))
        .route("/v1/invoices/{id}", get(get_invoice))
        .route("/v1/invoices/{id}/finalize", post(finalize_invoice))
        .route("/v1/invoices/{id}/void", post(void_invoice))
        .route(
            "/v1/invoices/{id}/adjustments",
            post(create_adjustment).get(list_adjustments),
        )
        .route(
            "/v1/invoices/{id}/adjustments/{adjustment}/approve",
            post(approve_adjustment),
        )
        .route(
            "/v1/invoices/{id}/adjustments/{adjustment}/reject",
            post(reject_adjustment),
        )
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLine {
    /// YYYY-MM-DD
    pub service_date: String,
    /// Procedure code (CPT/HCPCS), e.g. "99213".
    pub code: String,
    pub description: String,
    pub quantity: i64,
    /// Price of one unit, in minor units.
    pub unit_amount: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInvoice {
    pub patient: String,
    pub currency: String,
    /// YYYY-MM-DD
    pub due_date: String,
    pub lines: Vec<CreateLine>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Line {
    pub id: String,
    pub service_date: String,
    /// Procedure code; absent for callers who may not see itemized services (front desk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Absent for callers who may not see itemized services (front desk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub quantity: i64,
    pub unit_amount: i64,
    pub amount: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Invoice {
    pub id: String,
    /// Always `"invoice"`.
    pub object: &'static str,
    pub patient: String,
    pub currency: String,
    /// draft, open, partially_paid, paid or void.
    pub status: String,
    pub due_date: String,
    pub lines: Vec<Line>,
    /// Sum of the lines (charges), minor units.
    pub total: i64,
    pub amount_adjusted: i64,
    pub amount_paid: i64,
    pub amount_refunded: i64,
    /// total - adjusted - paid + refunded (0 once void).
    pub amount_due: i64,
    pub finalize_entry: Option<String>,
    pub created_at: String,
    pub finalized_at: Option<String>,
    pub voided_at: Option<String>,
}

const INVOICE_COLUMNS: &str =
    "seq, id, patient_id, currency, status, due_date, total_minor, amount_adjusted_minor, \
     amount_paid_minor, amount_refunded_minor, amount_due_minor, finalize_entry_id, void_entry_id, \
     created_at_us, finalized_at_us, voided_at_us";

/// An invoice row as the money code sees it.
#[derive(Debug, Clone)]
pub struct InvoiceRow {
    pub id: InvoiceId,
    pub patient: PatientId,
    pub currency: Currency,
    pub status: String,
    pub total: Money,
    pub adjusted: Money,
    pub paid: Money,
    pub refunded: Money,
    pub due: Money,
    pub finalize_entry: Option<EntryId>,
}

impl InvoiceRow {
    fn from_row(row: &AnyRow) -> ApiResult<InvoiceRow> {
        let currency: Currency = row.try_get::<String, _>("currency")?.parse()?;
        let m = |col: &str| -> ApiResult<Money> { Ok(Money::new(row.try_get(col)?, currency)) };
        Ok(InvoiceRow {
            id: InvoiceId::from_db(row.try_get("id")?),
            patient: PatientId::from_db(row.try_get("patient_id")?),
            currency,
            status: row.try_get("status")?,
            total: m("total_minor")?,
            adjusted: m("amount_adjusted_minor")?,
            paid: m("amount_paid_minor")?,
            refunded: m("amount_refunded_minor")?,
            due: m("amount_due_minor")?,
            finalize_entry: row
                .try_get::<Option<String>, _>("finalize_entry_id")?
                .map(EntryId::from_db),
        })
    }

    /// Whether payments and adjustments may be applied.
    pub fn is_open(&self) -> bool {
        matches!(self.status.as_str(), "open" | "partially_paid")
    }

    /// The amount due by the invoice's own formula, with checked arithmetic.
    pub fn computed_due(&self) -> Result<Money, ApiError> {
        Ok(self
            .total
            .checked_sub(self.adjusted)?
            .checked_sub(self.paid)?
            .checked_add(self.refunded)?)
    }

    /// Writes the amounts back with the status they imply, after asserting the invariants.
    pub async fn save_amounts(&mut self, tx: &mut Tx) -> Result<(), ApiError> {
        self.due = self.computed_due()?;
        if self.due.amount_minor() < 0 || self.refunded.amount_minor() > self.paid.amount_minor() {
            return Err(anyhow::anyhow!("invoice invariant violated on {}", self.id).into());
        }
        let net_paid = self.paid.checked_sub(self.refunded)?;
        let was_paid = self.status == "paid";
        self.status = if self.due.is_zero() {
            "paid"
        } else if net_paid.amount_minor() > 0 {
            "partially_paid"
        } else {
            "open"
        }
        .to_owned();
        sqlx::query(
            "UPDATE invoices SET status = $1, amount_adjusted_minor = $2, amount_paid_minor = $3, \
             amount_refunded_minor = $4, amount_due_minor = $5 WHERE id = $6",
        )
        .bind(&self.status)
        .bind(self.adjusted.amount_minor())
        .bind(self.paid.amount_minor())
        .bind(self.refunded.amount_minor())
        .bind(self.due.amount_minor())
        .bind(self.id.as_str())
        .execute(&mut **tx)
        .await?;
        if self.status == "paid" && !was_paid {
            outbox::invoice(tx, EventType::InvoicePaid, &self.id).await?;
        }
        Ok(())
    }
}

/// Reads and row-locks an invoice inside a write transaction.
pub async fn lock(
    tx: &mut Tx,
    backend: Backend,
    id: &InvoiceId,
    param: &str,
) -> ApiResult<InvoiceRow> {
    let row = sqlx::query(&format!(
        "SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1{}",
        backend.for_update()
    ))
    .bind(id.as_str())
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| ApiError::not_found(param, "invoice"))?;
    InvoiceRow::from_row(&row)
}

/// The lines of `ids`, decrypted with each patient's data key (opened once per patient). A
/// line whose patient's data was erased, or whose text fails authentication, keeps its amounts
/// and loses its code and description (the latter recorded as a security event).
async fn load_lines(
    keys: &Keys,
    executor: impl sqlx::AnyExecutor<'_>,
    ids: &[String],
) -> ApiResult<Vec<(String, Line)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT l.id, l.invoice_id, l.service_date, l.code_enc, l.description_enc, l.quantity, \
         l.unit_amount_minor, l.amount_minor, i.patient_id, k.kek_version, k.wrapped_key \
         FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id \
         LEFT JOIN data_keys k ON k.owner = i.patient_id \
         WHERE l.invoice_id IN ({}) ORDER BY l.invoice_id, l.position",
        crate::db::placeholders(1, ids.len())
    );
    let mut q = sqlx::query(&sql);
    for id in ids {
        q = q.bind(id.clone());
    }
    let rows = q.fetch_all(executor).await?;
    let mut patient_keys: HashMap<String, KeyState> = HashMap::new();
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let patient: String = r.try_get("patient_id")?;
        if !patient_keys.contains_key(&patient) {
            let state = keys
                .open_joined(
                    &patient,
                    r.try_get("kek_version")?,
                    r.try_get("wrapped_key")?,
                )
                .await;
            patient_keys.insert(patient.clone(), state);
        }
        let line_id: String = r.try_get("id")?;
        let (code, description) = match patient_keys.get(&patient).and_then(KeyState::key) {
            Some(key) => {
                let open = |column: &'static str,
                            name: &str|
                 -> Result<Option<String>, (&'static str, CryptoError)> {
                    let sealed: String = r
                        .try_get(name)
                        .map_err(|_| (column, CryptoError::Decrypt))?;
                    key.open(Field::new(column, &patient, &line_id), &sealed)
                        .map(|p| Some(p.as_str().to_owned()))
                        .map_err(|e| (column, e))
                };
                match open("invoice_lines.code", "code_enc")
                    .and_then(|c| Ok((c, open("invoice_lines.description", "description_enc")?)))
                {
                    Ok(pair) => pair,
                    Err((column, e)) => {
                        keys.report_unreadable(&patient, column, &e).await;
                        (None, None)
                    }
                }
            }
            None => (None, None),
        };
        out.push((
            r.try_get("invoice_id")?,
            Line {
                id: line_id,
                service_date: r.try_get("service_date")?,
                code,
                description,
                quantity: r.try_get("quantity")?,
                unit_amount: r.try_get("unit_amount_minor")?,
                amount: r.try_get("amount_minor")?,
            },
        ));
    }
    Ok(out)
}

fn invoice_from_row(row: &AnyRow, lines: Vec<Line>) -> ApiResult<Invoice> {
    let opt_time = |col: &str| -> ApiResult<Option<String>> {
        Ok(row.try_get::<Option<i64>, _>(col)?.map(us_to_rfc3339))
    };
    Ok(Invoice {
        id: row.try_get("id")?,
        object: "invoice",
        patient: row.try_get("patient_id")?,
        currency: row.try_get("currency")?,
        status: row.try_get("status")?,
        due_date: row.try_get("due_date")?,
        lines,
        total: row.try_get("total_minor")?,
        amount_adjusted: row.try_get("amount_adjusted_minor")?,
        amount_paid: row.try_get("amount_paid_minor")?,
        amount_refunded: row.try_get("amount_refunded_minor")?,
        amount_due: row.try_get("amount_due_minor")?,
        finalize_entry: row.try_get("finalize_entry_id")?,
        created_at: us_to_rfc3339(row.try_get("created_at_us")?),
        finalized_at: opt_time("finalized_at_us")?,
        voided_at: opt_time("voided_at_us")?,
    })
}

/// Assembles API invoices from rows, loading all their lines in one query.
async fn assemble(
    keys: &Keys,
    executor: impl sqlx::AnyExecutor<'_>,
    rows: &[AnyRow],
) -> ApiResult<Vec<Invoice>> {
    let ids: Vec<String> = rows
        .iter()
        .map(|r| r.try_get("id"))
        .collect::<Result<_, _>>()?;
    let mut lines = load_lines(keys, executor, &ids).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let id: String = row.try_get("id")?;
        let (mine, rest): (Vec<_>, Vec<_>) = lines.into_iter().partition(|(inv, _)| *inv == id);
        lines = rest;
        out.push(invoice_from_row(
            row,
            mine.into_iter().map(|(_, l)| l).collect(),
        )?);
    }
    Ok(out)
}

/// The API view of one invoice, read inside `tx` (so a response shows what the tx wrote).
pub async fn view(keys: &Keys, tx: &mut Tx, id: &InvoiceId) -> ApiResult<Invoice> {
    let row = sqlx::query(&format!(
        "SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1"
    ))
    .bind(id.as_str())
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| ApiError::not_found("id", "invoice"))?;
    let mut v = assemble(keys, &mut **tx, std::slice::from_ref(&row)).await?;
    v.pop().ok_or_else(|| ApiError::not_found("id", "invoice"))
}

/// A patient's open invoices in one currency, oldest first (for the statement).
pub async fn open_invoices_of(
    state: &AppState,
    patient: &PatientId,
    currency: Currency,
) -> ApiResult<Vec<Invoice>> {
    let rows = sqlx::query(&format!(
        "SELECT {INVOICE_COLUMNS} FROM invoices WHERE patient_id = $1 AND currency = $2 \
         AND status IN ('open', 'partially_paid') ORDER BY seq LIMIT 1000"
    ))
    .bind(patient.as_str())
    .bind(currency.code())
    .fetch_all(&state.db.pool)
    .await?;
    assemble(&state.keys, &state.db.pool, &rows).await
}

pub(crate) fn currency_field(param: &str, value: &str) -> Result<Currency, ApiError> {
    value.parse().map_err(|_| {
        ApiError::invalid(
            param,
            "currency_invalid",
            "Must be a supported lowercase ISO 4217 currency code such as \"usd\".",
        )
    })
}

pub(crate) fn amount_field(param: &str, value: i64) -> Result<PositiveAmount, ApiError> {
    PositiveAmount::parse(value).map_err(|e| {
        let code = match e {
            crate::money::AmountError::NotPositive => "amount_invalid",
            crate::money::AmountError::TooLarge => "amount_too_large",
        };
        ApiError::invalid(param, code, e.to_string())
    })
}

struct ValidLine {
    service_date: String,
    code: String,
    description: String,
    quantity: i64,
    unit: PositiveAmount,
    amount: Money,
}

struct ValidInvoice {
    patient: PatientId,
    currency: Currency,
    due_date: String,
    lines: Vec<ValidLine>,
    total: Money,
}

impl CreateInvoice {
    fn validated(&self) -> Result<ValidInvoice, ApiError> {
        let patient = PatientId::parse_param(&self.patient, "patient")?;
        let currency = currency_field("currency", &self.currency)?;
        let due_date = date_field("due_date", &self.due_date)?
            .format("%Y-%m-%d")
            .to_string();
        if self.lines.is_empty() || self.lines.len() > LINES_MAX {
            return Err(ApiError::invalid(
                "lines",
                "parameter_invalid",
                format!("An invoice has 1 to {LINES_MAX} lines."),
            ));
        }
        let today = chrono::Utc::now().date_naive();
        let mut total = Money::zero(currency);
        let mut lines = Vec::with_capacity(self.lines.len());
        for (i, l) in self.lines.iter().enumerate() {
            let p = |f: &str| format!("lines[{i}].{f}");
            let service_date = date_field(&p("service_date"), &l.service_date)?;
            if service_date > today {
                return Err(ApiError::invalid(
                    p("service_date"),
                    "parameter_invalid",
                    "A service date cannot be in the future.",
                ));
            }
            let code = l.code.trim().to_ascii_uppercase();
            if code.is_empty()
                || code.len() > CODE_CHARS_MAX
                || !code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return Err(ApiError::invalid(
                    p("code"),
                    "parameter_invalid",
                    "Must be a procedure code such as a CPT or HCPCS code (letters, digits, '-').",
                ));
            }
            let description = text_field(&p("description"), &l.description, DESCRIPTION_CHARS_MAX)?;
            if !(1..=QUANTITY_MAX).contains(&l.quantity) {
                return Err(ApiError::invalid(
                    p("quantity"),
                    "parameter_invalid",
                    format!("Must be an integer from 1 to {QUANTITY_MAX}."),
                ));
            }
            let unit = amount_field(&p("unit_amount"), l.unit_amount)?;
            let amount = unit.of(currency).checked_mul(l.quantity).map_err(|_| {
                ApiError::invalid(
                    p("quantity"),
                    "amount_too_large",
                    "The line amount is too large.",
                )
            })?;
            total = total.checked_add(amount).map_err(|_| {
                ApiError::invalid(
                    "lines",
                    "amount_too_large",
                    "The invoice total is too large.",
                )
            })?;
            if amount.amount_minor() > AMOUNT_MINOR_MAX {
                return Err(ApiError::invalid(
                    p("quantity"),
                    "amount_too_large",
                    "The line amount is too large.",
                ));
            }
            if total.amount_minor() > AMOUNT_MINOR_MAX {
                return Err(ApiError::invalid(
                    "lines",
                    "amount_too_large",
                    "The invoice total is too large.",
                ));
            }
            lines.push(ValidLine {
                service_date: service_date.format("%Y-%m-%d").to_string(),
                code,
                description,
                quantity: l.quantity,
                unit,
                amount,
            });
        }
        Ok(ValidInvoice {
            patient,
            currency,
            due_date,
            lines,
            total,
        })
    }
}

/// Create a draft invoice.
#[utoipa::path(post, path = "/v1/invoices", tag = "invoices", request_body = CreateInvoice,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = Invoice), (status = 400, description = "Invalid parameter")),
    security(("api_key" = [])))]
pub async fn create_invoice(
    State(state): State<AppState>,
    principal: Principal,
    key: IdempotencyKey,
    ApiJson(req): ApiJson<CreateInvoice>,
) -> ApiResult<Response> {
    principal.authorize(Action::InvoicesWrite)?;
    let valid = req.validated()?;
    principal
        .ensure_patient_visible(&state.db, valid.patient.as_str(), "patient", "patient")
        .await?;
    let valid = std::sync::Arc::new(valid);
    let st = state.clone();
    Ok(idempotency::run(&state, &principal, key, "POST /v1/invoices", &req, |claim| async move {
        st.db
            .write(|tx| {
                let (claim, v, keys) = (claim.clone(), valid.clone(), st.keys.clone());
                Box::pin(async move {
                    idempotency::claim(tx, &claim).await?;
                    if !crate::patients::exists(tx, &v.patient).await? {
                        return Err(ApiError::not_found("patient", "patient"));
                    }
                    let data_key = match keys.data_key(&mut **tx, v.patient.as_str()).await? {
                        KeyState::Available(key) => key,
                        KeyState::Erased => return Err(ApiError::simple(
                            axum::http::StatusCode::CONFLICT,
                            crate::error::ErrorType::InvalidRequestError,
                            "personal_data_erased",
                            "This patient's personal data was erased; new bills cannot name their services.",
                        )),
                        KeyState::Unreadable => return Err(ApiError::Internal(anyhow::anyhow!("the patient's data key cannot be opened"))),
                    };
                    let id = InvoiceId::generate();
                    sqlx::query(
                        "INSERT INTO invoices (id, patient_id, currency, status, due_date, total_minor, amount_due_minor, created_at_us) \
                         VALUES ($1, $2, $3, 'draft', $4, $5, $5, $6)",
                    )
                    .bind(id.as_str())
                    .bind(v.patient.as_str())
                    .bind(v.currency.code())
                    .bind(&v.due_date)
                    .bind(v.total.amount_minor())
                    .bind(now_us())
                    .execute(&mut **tx)
                    .await?;
                    for (position, line) in v.lines.iter().enumerate() {
                        let line_id = InvoiceLineId::generate();
                        let seal = |column: &str, text: &str| {
                            data_key
                                .seal(Field::new(column, v.patient.as_str(), line_id.as_str()), text)
                                .map_err(|e| ApiError::Internal(e.into()))
                        };
                        sqlx::query(
                            "INSERT INTO invoice_lines (id, invoice_id, position, service_date, code_enc, description_enc, quantity, unit_amount_minor, amount_minor) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                        )
                        .bind(line_id.as_str())
                        .bind(id.as_str())
                        .bind(i64::try_from(position).map_err(anyhow::Error::new)?)
                        .bind(&line.service_date)
                        .bind(seal("invoice_lines.code", &line.code)?)
                        .bind(seal("invoice_lines.description", &line.description)?)
                        .bind(line.quantity)
                        .bind(line.unit.get())
                        .bind(line.amount.amount_minor())
                        .execute(&mut **tx)
                        .await?;
                    }
                    respond(&keys, tx, &claim, &id).await
                })
            })
            .await
    })
    .await)
}

/// Finishes an invoice request: the invoice as the transaction left it, saved under the key.
async fn respond(
    keys: &Keys,
    tx: &mut Tx,
    claim: &MaybeClaim,
    id: &InvoiceId,
) -> ApiResult<(axum::http::StatusCode, serde_json::Value)> {
    let invoice = view(keys, tx, id).await?;
    idempotency::respond_ok(tx, claim, &invoice).await
}

fn path_invoice_id(id: &str) -> Result<InvoiceId, ApiError> {
    InvoiceId::parse_param(id, "id")
}

/// Retrieve an invoice.
#[utoipa::path(get, path = "/v1/invoices/{id}", tag = "invoices", params(("id" = String, Path)),
    responses((status = 200, body = Invoice), (status = 404, description = "No such invoice")),
    security(("api_key" = [])))]
pub async fn get_invoice(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Invoice>> {
    principal.authorize(Action::InvoicesRead)?;
    let id = path_invoice_id(&id)?;
    let row = sqlx::query(&format!(
        "SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1"
    ))
    .bind(id.as_str())
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("id", "invoice"))?;
    let patient: String = sqlx::Row::try_get(&row, "patient_id")?;
    principal
        .ensure_patient_visible(&state.db, &patient, "id", "invoice")
        .await?;
    let mut v = assemble(&state.keys, &state.db.pool, std::slice::from_ref(&row)).await?;
    v.pop()
        .map(|i| Json(field_rules(&principal, i)))
        .ok_or_else(|| ApiError::not_found("id", "invoice"))
}

/// Field-level rule: itemized procedure codes and descriptions only for those who may see them.
pub fn field_rules(principal: &Principal, mut invoice: Invoice) -> Invoice {
    if !principal.allows(Action::InvoiceDetailsRead) {
        for line in &mut invoice.lines {
            line.code = None;
            line.description = None;
        }
    }
    invoice
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvoiceListQuery {
    limit: Option<String>,
    starting_after: Option<String>,
    patient: Option<String>,
    status: Option<String>,
}

/// List invoices, newest first, optionally for one patient or in one status.
#[utoipa::path(get, path = "/v1/invoices", tag = "invoices",
    params(("limit" = Option<i64>, Query), ("starting_after" = Option<String>, Query),
           ("patient" = Option<String>, Query), ("status" = Option<String>, Query)),
    responses((status = 200, body = List<Invoice>)),
    security(("api_key" = [])))]
pub async fn list_invoices(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<InvoiceListQuery>,
) -> ApiResult<Json<List<Invoice>>> {
    principal.authorize(Action::InvoicesRead)?;
    let limit = parse_limit(q.limit.as_deref())?;
    let patient = PatientId::parse_opt_param(q.patient.as_deref(), "patient")?;
    if let Some(s) = &q.status {
        if !["draft", "open", "partially_paid", "paid", "void"].contains(&s.as_str()) {
            return Err(ApiError::invalid(
                "status",
                "parameter_invalid",
                "Must be one of draft, open, partially_paid, paid, void.",
            ));
        }
    }
    let after = InvoiceId::parse_opt_param(q.starting_after.as_deref(), "starting_after")?;
    let before = crate::api::cursor_seq(
        &state,
        "invoices",
        "invoice",
        after.as_ref().map(|i| i.as_str()),
        i64::MAX,
    )
    .await?;
    // Record-level rule: a patient lists only their own bills, facility-bound staff those of
    // their facility's patients.
    let (own_patient, own_facility) = principal.list_limits();
    let rows = sqlx::query(&format!(
        "SELECT {INVOICE_COLUMNS} FROM invoices WHERE seq < $1 AND ($2 = '' OR patient_id = $2) \
         AND ($3 = '' OR status = $3) AND ($5 = '' OR patient_id = $5) \
         AND ($6 = '' OR patient_id IN (SELECT id FROM patients WHERE facility_id = $6)) \
         ORDER BY seq DESC LIMIT $4"
    ))
    .bind(before)
    .bind(patient.as_ref().map(|p| p.as_str()).unwrap_or(""))
    .bind(q.status.as_deref().unwrap_or(""))
    .bind(limit.saturating_add(1))
    .bind(own_patient)
    .bind(own_facility)
    .fetch_all(&state.db.pool)
    .await?;
    let invoices = assemble(&state.keys, &state.db.pool, &rows)
        .await?
        .into_iter()
        .map(|i| field_rules(&principal, i))
        .collect();
    Ok(Json(List::from_rows(invoices, limit, "/v1/invoices")))
}

/// An empty JSON object: the body of the finalize and void calls (a body is optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// An optional empty JSON body: absent is fine, `{}` is fine, anything else is refused.
pub struct EmptyBody(pub Empty);

impl<S: Send + Sync> axum::extract::FromRequest<S> for EmptyBody {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|rejection| crate::api::body_read_error(rejection.status()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            Ok(EmptyBody(Empty {}))
        } else {
            crate::api::parse_json(&bytes).map(EmptyBody)
        }
    }
}

/// Finalize a draft invoice: it becomes open and its total is posted as a receivable.
#[utoipa::path(post, path = "/v1/invoices/{id}/finalize", tag = "invoices",
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = Invoice), (status = 400, description = "Not a draft"), (status = 404, description = "No such invoice")),
    security(("api_key" = [])))]
pub async fn finalize_invoice(
    State(state): State<AppState>,
    principal: Principal,
    key: IdempotencyKey,
    ApiPath(id): ApiPath<String>,
    EmptyBody(req): EmptyBody,
) -> ApiResult<Response> {
    principal.authorize(Action::InvoicesWrite)?;
    let id = path_invoice_id(&id)?;
    principal
        .ensure_invoice_visible(&state.db, id.as_str(), "id")
        .await?;
    let route = format!("POST /v1/invoices/{id}/finalize");
    let st = state.clone();
    Ok(idempotency::run(&state, &principal, key, &route, &req, |claim| async move {
        let backend = st.db.backend;
        st.db
            .write(|tx| {
                let (claim, id, keys) = (claim.clone(), id.clone(), st.keys.clone());
                Box::pin(async move {
                    idempotency::claim(tx, &claim).await?;
                    let invoice = lock(tx, backend, &id, "id").await?;
                    if invoice.status != "draft" {
                        return Err(ApiError::refused("id", "invoice_not_draft", "Only a draft invoice can be finalized."));
                    }
                    ensure_patient_accounts(tx, &invoice.patient, invoice.currency).await?;
                    let entry = NewEntry::new(
                        EntryKind::InvoiceFinalized,
                        format!("Invoice {id} finalized"),
                        References { patient: Some(invoice.patient.clone()), invoice: Some(id.clone()), ..Default::default() },
                    )
                    .debit(patient_account_id(Code::PatientReceivables, invoice.currency, &invoice.patient), invoice.total)
                    .credit(account_id(Code::Revenue, invoice.currency), invoice.total)?;
                    sqlx::query(
                        "UPDATE invoices SET status = 'open', finalize_entry_id = $1, finalized_at_us = $2 WHERE id = $3 AND status = 'draft'",
                    )
                    .bind(entry.id.as_str())
                    .bind(now_us())
                    .bind(id.as_str())
                    .execute(&mut **tx)
                    .await?;
                    let response = respond(&keys, tx, &claim, &id).await?;
                    posting::post(tx, backend, entry).await?; // last: revenue is a hot account
                    outbox::invoice(tx, EventType::InvoiceFinalized, &id).await?;
                    Ok(response)
                })
            })
            .await
    })
    .await)
}

/// Void an invoice: a draft simply becomes void; an open one with no net payments has its
/// finalize and adjustment entries reversed.
#[utoipa::path(post, path = "/v1/invoices/{id}/void", tag = "invoices",
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = Invoice), (status = 400, description = "Not voidable"), (status = 404, description = "No such invoice")),
    security(("api_key" = [])))]
pub async fn void_invoice(
    State(state): State<AppState>,
    principal: Principal,
    key: IdempotencyKey,
    ApiPath(id): ApiPath<String>,
    EmptyBody(req): EmptyBody,
) -> ApiResult<Response> {
    principal.authorize(Action::InvoicesWrite)?;
    let id = path_invoice_id(&id)?;
    principal
        .ensure_invoice_visible(&state.db, id.as_str(), "id")
        .await?;
    let route = format!("POST /v1/invoices/{id}/void");
    let st = state.clone();
    Ok(idempotency::run(&state, &principal, key, &route, &req, |claim| async move {
        let backend = st.db.backend;
        st.db
            .write(|tx| {
                let (claim, id, keys) = (claim.clone(), id.clone(), st.keys.clone());
                Box::pin(async move {
                    idempotency::claim(tx, &claim).await?;
                    let invoice = lock(tx, backend, &id, "id").await?;
                    if invoice.status == "void" {
                        return Err(ApiError::refused("id", "invoice_already_void", "The invoice is already void."));
                    }
                    if invoice.paid.checked_sub(invoice.refunded)?.amount_minor() > 0 {
                        return Err(ApiError::refused(
                            "id",
                            "invoice_has_payments",
                            "The invoice has payments; refund them before voiding it.",
                        ));
                    }
                    let mut void_entry: Option<EntryId> = None;
                    if let Some(finalize_entry) = &invoice.finalize_entry {
                        let refs = References { patient: Some(invoice.patient.clone()), invoice: Some(id.clone()), ..Default::default() };
                        let adjustment_entries: Vec<(String, String)> =
                            sqlx::query("SELECT id, journal_entry_id FROM adjustments WHERE invoice_id = $1 AND status = 'posted' ORDER BY seq")
                                .bind(id.as_str())
                                .fetch_all(&mut **tx)
                                .await?
                                .iter()
                                .map(|r| Ok((r.try_get("id")?, r.try_get("journal_entry_id")?)))
                                .collect::<Result<_, sqlx::Error>>()?;
                        for (adjustment, entry) in adjustment_entries {
                            let refs = References { adjustment: Some(adjustment), ..refs.clone() };
                            posting::reverse(tx, backend, &EntryId::from_db(entry), format!("Invoice {id} voided: adjustment reversed"), refs).await?;
                        }
                        void_entry = Some(posting::reverse(tx, backend, finalize_entry, format!("Invoice {id} voided"), refs).await?);
                    }
                    sqlx::query(
                        "UPDATE invoices SET status = 'void', amount_due_minor = 0, void_entry_id = $1, voided_at_us = $2 WHERE id = $3",
                    )
                    .bind(void_entry.as_ref().map(|e| e.as_str().to_owned()))
                    .bind(now_us())
                    .bind(id.as_str())
                    .execute(&mut **tx)
                    .await?;
                    outbox::invoice(tx, EventType::InvoiceVoided, &id).await?;
                    respond(&keys, tx, &claim, &id).await
                })
            })
            .await
    })
    .await)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdjustmentKind {
    InsuranceAdjustment,
    Discount,
    WriteOff,
}

impl AdjustmentKind {
    fn as_str(self) -> &'static str {
        match self {
            AdjustmentKind::InsuranceAdjustment => "insurance_adjustment",
            AdjustmentKind::Discount => "discount",
            AdjustmentKind::WriteOff => "write_off",
        }
    }

    fn account(self) -> Code {
        match self {
            AdjustmentKind::InsuranceAdjustment => Code::InsuranceAdjustments,
            AdjustmentKind::Discount => Code::Discounts,
            AdjustmentKind::WriteOff => Code::WriteOffs,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAdjustment {
    pub kind: AdjustmentKind,
    /// Minor units, positive, at most the amount due.
    pub amount: i64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Adjustment {
    pub id: String,
    /// Always `"invoice_adjustment"`.
    pub object: &'static str,
    pub invoice: String,
    pub kind: String,
    pub amount: i64,
    pub currency: String,
    pub reason: String,
    /// posted (on the ledger and the invoice), pending_approval (a write-off above the
    /// dual-control threshold, waiting for a second billing manager; nothing posted) or rejected.
    pub status: String,
    /// The entry that posted it; null until it is posted.
    pub journal_entry: Option<String>,
    /// Who asked for it (an API key id, or a user id for signed-in staff).
    pub requested_by: String,
    /// Why a second person must approve it (`amount_above_threshold`); empty: not needed.
    pub approval_reasons: Vec<String>,
    pub approved_by: Option<String>,
    pub approved_at: Option<String>,
    pub rejected_by: Option<String>,
    pub rejected_at: Option<String>,
    pub rejection_reason: Option<String>,
    pub created_at: String,
}

fn adjustment_from_row(r: &AnyRow) -> ApiResult<Adjustment> {
    let opt_time = |col: &str| -> ApiResult<Option<String>> {
        Ok(r.try_get::<Option<i64>, _>(col)?.map(us_to_rfc3339))
    };
    Ok(Adjustment {
        id: r.try_get("id")?,
        object: "invoice_adjustment",
        invoice: r.try_get("invoice_id")?,
        kind: r.try_get("kind")?,
        amount: r.try_get("amount_minor")?,
        currency: r.try_get("currency")?,
        reason: r.try_get("reason")?,
        status: r.try_get("status")?,
        journal_entry: r.try_get("journal_entry_id")?,
        requested_by: r.try_get("requested_by")?,
        approval_reasons: crate::refunds::reasons_list(r.try_get("approval_reasons")?),
        approved_by: r.try_get("approved_by")?,
        approved_at: opt_time("approved_at_us")?,
        rejected_by: r.try_get("rejected_by")?,
        rejected_at: opt_time("rejected_at_us")?,
        rejection_reason: r.try_get("rejection_reason")?,
        created_at: us_to_rfc3339(r.try_get("created_at_us")?),
    })
}

const ADJUSTMENT_COLUMNS: &str = "seq, id, invoice_id, kind, amount_minor, currency, reason, status, journal_entry_id, \
     requested_by, approval_reasons, approved_by, approved_at_us, rejected_by, rejected_at_us, rejection_reason, created_at_us";

/// Answers with the adjustment as `tx` left it, saved under the key.
async fn respond_adjustment(
    keys: &Keys,
    tx: &mut Tx,
    claim: &MaybeClaim,
    id: &AdjustmentId,
) -> ApiResult<(axum::http::StatusCode, serde_json::Value)> {
    let row = sqlx::query(&format!(
        "SELECT {ADJUSTMENT_COLUMNS} FROM adjustments WHERE id = $1"
    ))
    .bind(id.as_str())
    .fetch_one(&mut **tx)
    .await?;
    let mut adjustment = adjustment_from_row(&row)?;
    open_adjustment_texts(&mut notes::Opener::new(keys), tx, &mut adjustment).await?;
    idempotency::respond_ok(tx, claim, &adjustment).await
}

const ADJUSTMENT_REASON: &str = "adjustments.reason";
const ADJUSTMENT_REJECTION: &str = "adjustments.rejection_reason";

/// Replaces the sealed reason and rejection reason (as read from the row) with their text; an
/// erased patient's adjustment keeps its amount and says `[unavailable]` for its reason.
async fn open_adjustment_texts(
    opener: &mut notes::Opener<'_>,
    conn: &mut sqlx::AnyConnection,
    adjustment: &mut Adjustment,
) -> ApiResult<()> {
    let patient: String = sqlx::query_scalar("SELECT patient_id FROM invoices WHERE id = $1")
        .bind(&adjustment.invoice)
        .fetch_one(&mut *conn)
        .await?;
    let sealed = std::mem::take(&mut adjustment.reason);
    adjustment.reason = opener
        .open(
            &mut *conn,
            &patient,
            ADJUSTMENT_REASON,
            &adjustment.id,
            Some(sealed),
        )
        .await?
        .unwrap_or_else(|| "[unavailable]".to_owned());
    adjustment.rejection_reason = opener
        .open(
            &mut *conn,
            &patient,
            ADJUSTMENT_REJECTION,
            &adjustment.id,
            adjustment.rejection_reason.take(),
        )
        .await?;
    Ok(())
}

/// Checks that an open invoice owes at least `amount`.
fn check_adjustable(invoice: &InvoiceRow, amount: Money) -> Result<(), ApiError> {
    if !invoice.is_open() || invoice.due.is_zero() {
        return Err(ApiError::refused(
            "id",
            "invoice_not_open",
            "Adjustments apply only to an open invoice with an amount due.",
        ));
    }
    if amount.amount_minor() > invoice.due.amount_minor() {
        return Err(ApiError::refused(
            "amount",
            "amount_exceeds_amount_due",
            "The adjustment is larger than the amount due.",
        ));
    }
    Ok(())
}

/// Moves the invoice's amounts for an adjustment (its row already says `posted` with
/// `entry`'s id) and returns the entry to post, last (the contra account is hot).
async fn apply_adjustment(
    tx: &mut Tx,
    invoice: &mut InvoiceRow,
    adjustment: &AdjustmentId,
    kind: AdjustmentKind,
    amount: Money,
    entry: &EntryId,
) -> ApiResult<NewEntry> {
    let mut new_entry = NewEntry::new(
        EntryKind::InvoiceAdjustment,
        format!("Invoice {}: {}", invoice.id, kind.as_str()),
        References {
            patient: Some(invoice.patient.clone()),
            invoice: Some(invoice.id.clone()),
            adjustment: Some(adjustment.to_string()),
            ..Default::default()
        },
    );
    // The id the adjustment row already names.
    new_entry.id = entry.clone();
    let new_entry = new_entry
        .debit(account_id(kind.account(), invoice.currency), amount)
        .credit(
            patient_account_id(Code::PatientReceivables, invoice.currency, &invoice.patient),
            amount,
        )?;
    invoice.adjusted = invoice.adjusted.checked_add(amount)?;
    invoice.save_amounts(tx).await?;
    Ok(new_entry)
}

/// Record an insurance adjustment, discount or write-off on an open invoice. A write-off above
/// the dual-control threshold is recorded `pending_approval` and posted only once a second
/// billing manager approves it.
#[utoipa::path(post, path = "/v1/invoices/{id}/adjustments", tag = "invoices", request_body = CreateAdjustment,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = Adjustment, description = "posted, or pending_approval (nothing posted yet)"),
              (status = 400, description = "Invalid or refused")),
    security(("api_key" = [])))]
pub async fn create_adjustment(
    State(state): State<AppState>,
    principal: Principal,
    key: IdempotencyKey,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<CreateAdjustment>,
) -> ApiResult<Response> {
    principal.authorize(Action::InvoicesWrite)?;
    if req.kind == AdjustmentKind::WriteOff {
        // A write-off forgives debt: the same authority as a refund.
        principal.authorize(Action::RefundsCreate)?;
    }
    let id = path_invoice_id(&id)?;
    principal
        .ensure_invoice_visible(&state.db, id.as_str(), "id")
        .await?;
    let amount = amount_field("amount", req.amount)?;
    let reason = text_field("reason", &req.reason, REASON_CHARS_MAX)?;
    let route = format!("POST /v1/invoices/{id}/adjustments");
    let st = state.clone();
    let kind = req.kind;
    let requested_by = principal.actor_id().to_owned();
    Ok(idempotency::run(&state, &principal, key, &route, &req, |claim| async move {
        let backend = st.db.backend;
        st.db
            .write(|tx| {
                let (claim, id, reason, requested_by, config, keys) =
                    (claim.clone(), id.clone(), reason.clone(), requested_by.clone(), st.config.clone(), st.keys.clone());
                Box::pin(async move {
                    idempotency::claim(tx, &claim).await?;
                    let mut invoice = lock(tx, backend, &id, "id").await?;
                    let amount = amount.of(invoice.currency);
                    check_adjustable(&invoice, amount)?;
                    let adjustment_id = AdjustmentId::generate();
                    let sealed_reason = notes::seal(&keys, tx, invoice.patient.as_str(), ADJUSTMENT_REASON, adjustment_id.as_str(), Some(reason.as_str()), "reason").await?;
                    let held = kind == AdjustmentKind::WriteOff && config.needs_second_approver(amount);
                    let entry_id = EntryId::generate();
                    sqlx::query(
                        "INSERT INTO adjustments (id, invoice_id, kind, amount_minor, currency, reason, status, journal_entry_id, \
                         requested_by, approval_reasons, created_at_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    )
                    .bind(adjustment_id.as_str())
                    .bind(id.as_str())
                    .bind(kind.as_str())
                    .bind(amount.amount_minor())
                    .bind(invoice.currency.code())
                    .bind(sealed_reason)
                    .bind(if held { "pending_approval" } else { "posted" })
                    .bind((!held).then(|| entry_id.as_str().to_owned()))
                    .bind(&requested_by)
                    .bind(held.then(|| crate::refunds::ABOVE_THRESHOLD.to_owned()))
                    .bind(now_us())
                    .execute(&mut **tx)
                    .await?;
                    if held {
                        tracing::info!(
                            adjustment = %adjustment_id,
                            invoice = %id,
                            amount_minor = amount.amount_minor(),
                            currency = %invoice.currency,
                            requested_by = %requested_by,
                            "dual control: write-off awaits a second billing manager's approval"
                        );
                        return respond_adjustment(&keys, tx, &claim, &adjustment_id).await;
                    }
                    let entry = apply_adjustment(tx, &mut invoice, &adjustment_id, kind, amount, &entry_id).await?;
                    let response = respond_adjustment(&keys, tx, &claim, &adjustment_id).await?;
                    posting::post(tx, backend, entry).await?; // last: the contra account is hot
                    Ok(response)
                })
            })
            .await
    })
    .await)
}

/// The body of a write-off's rejection.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectAdjustment {
    /// Why the write-off is refused (kept on the adjustment).
    pub reason: String,
}

/// The parts of an adjustment row the approval steps need.
struct HeldAdjustment {
    id: AdjustmentId,
    kind: AdjustmentKind,
    status: String,
    amount_minor: i64,
    requested_by: String,
    approved_by: Option<String>,
}

/// Locks the invoice (lock order: invoice first), then reads its adjustment `adjustment`.
async fn lock_adjustment(
    tx: &mut Tx,
    backend: Backend,
    invoice: &InvoiceId,
    adjustment: &AdjustmentId,
) -> ApiResult<(InvoiceRow, HeldAdjustment)> {
    let invoice = lock(tx, backend, invoice, "id").await?;
    let row = sqlx::query(&format!(
        "SELECT kind, status, amount_minor, requested_by, approved_by FROM adjustments WHERE id = $1 AND invoice_id = $2{}",
        backend.for_update()
    ))
    .bind(adjustment.as_str())
    .bind(invoice.id.as_str())
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| ApiError::not_found("adjustment", "adjustment"))?;
    let kind: String = row.try_get("kind")?;
    let kind = [
        AdjustmentKind::InsuranceAdjustment,
        AdjustmentKind::Discount,
        AdjustmentKind::WriteOff,
    ]
    .into_iter()
    .find(|k| k.as_str() == kind)
    .ok_or_else(|| anyhow::anyhow!("unknown adjustment kind in the database"))?;
    Ok((
        invoice,
        HeldAdjustment {
            id: adjustment.clone(),
            kind,
            status: row.try_get("status")?,
            amount_minor: row.try_get("amount_minor")?,
            requested_by: row.try_get("requested_by")?,
            approved_by: row.try_get("approved_by")?,
        },
    ))
}

fn path_adjustment_id(id: &str) -> Result<AdjustmentId, ApiError> {
    AdjustmentId::parse_param(id, "adjustment")
}

/// Approve a write-off waiting for dual control: it is posted, once. Requires the right to
/// create refunds; whoever asked for it cannot approve it (403
/// `approval_requires_second_person`). Approving one already approved answers with it.
#[utoipa::path(post, path = "/v1/invoices/{id}/adjustments/{adjustment}/approve", tag = "invoices",
    params(("id" = String, Path), ("adjustment" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = Adjustment),
              (status = 400, description = "adjustment_rejected, adjustment_not_pending_approval, or the invoice no longer open or owing the amount"),
              (status = 403, description = "approval_requires_second_person: the requester cannot approve"),
              (status = 404, description = "No such invoice or adjustment")),
    security(("api_key" = [])))]
pub async fn approve_adjustment(
    State(state): State<AppState>,
    principal: Principal,
    key: IdempotencyKey,
    ApiPath((id, adjustment)): ApiPath<(String, String)>,
    EmptyBody(req): EmptyBody,
) -> ApiResult<Response> {
    principal.authorize(Action::InvoicesWrite)?;
    principal.authorize(Action::RefundsCreate)?;
    let id = path_invoice_id(&id)?;
    principal
        .ensure_invoice_visible(&state.db, id.as_str(), "id")
        .await?;
    let adjustment = path_adjustment_id(&adjustment)?;
    let approver = principal.actor_id().to_owned();
    let route = format!("POST /v1/invoices/{id}/adjustments/{adjustment}/approve");
    let st = state.clone();
    Ok(idempotency::run(&state, &principal, key, &route, &req, |claim| async move {
        let backend = st.db.backend;
        st.db
            .write(|tx| {
                let (claim, id, adjustment, approver, keys) = (claim.clone(), id.clone(), adjustment.clone(), approver.clone(), st.keys.clone());
                Box::pin(async move {
                    idempotency::claim(tx, &claim).await?;
                    let (mut invoice, held) = lock_adjustment(tx, backend, &id, &adjustment).await?;
                    if held.requested_by == approver {
                        tracing::info!(adjustment = %adjustment, requested_by = %held.requested_by, "dual control: the requester may not approve");
                        return Err(crate::refunds::approval_requires_second_person());
                    }
                    match held.status.as_str() {
                        "pending_approval" => {}
                        "rejected" => {
                            return Err(ApiError::refused("adjustment", "adjustment_rejected", "The write-off was rejected; it cannot be approved."))
                        }
                        // Approved by someone already: the posted adjustment as it stands.
                        _ if held.approved_by.is_some() => return respond_adjustment(&keys, tx, &claim, &adjustment).await,
                        _ => {
                            return Err(ApiError::refused(
                                "adjustment",
                                "adjustment_not_pending_approval",
                                "The adjustment did not need approval.",
                            ))
                        }
                    }
                    let amount = Money::new(held.amount_minor, invoice.currency);
                    // Nothing was held on the invoice: it must still owe the amount.
                    check_adjustable(&invoice, amount)?;
                    let entry_id = EntryId::generate();
                    let now = now_us();
                    let updated = sqlx::query(
                        "UPDATE adjustments SET status = 'posted', journal_entry_id = $1, approved_by = $2, approved_at_us = $3 \
                         WHERE id = $4 AND status = 'pending_approval'",
                    )
                    .bind(entry_id.as_str())
                    .bind(&approver)
                    .bind(now)
                    .bind(held.id.as_str())
                    .execute(&mut **tx)
                    .await?;
                    crate::payments::assert_money(updated.rows_affected() == 1, "write-off approved twice")?;
                    let entry = apply_adjustment(tx, &mut invoice, &held.id, held.kind, amount, &entry_id).await?;
                    tracing::info!(
                        adjustment = %held.id,
                        invoice = %id,
                        amount_minor = amount.amount_minor(),
                        currency = %invoice.currency,
                        requested_by = %held.requested_by,
                        approved_by = %approver,
                        "dual control: write-off approved by a second billing manager"
                    );
                    let detail = format!("requested_by {}", held.requested_by);
                    crate::identity::events::record_in(
                        tx,
                        crate::identity::events::Kind::ApprovalGranted,
                        crate::identity::events::Event {
                            actor: Some(approver.as_str()),
                            subject: Some(held.id.as_str()),
                            detail: Some(&detail),
                            ..Default::default()
                        },
                    )
                    .await?;
                    let response = respond_adjustment(&keys, tx, &claim, &held.id).await?;
                    posting::post(tx, backend, entry).await?; // last: the contra account is hot
                    Ok(response)
                })
            })
            .await
    })
    .await)
}

/// Reject a write-off waiting for dual control: it is never posted. Requires the right to
/// create refunds (the requester may withdraw their own request).
#[utoipa::path(post, path = "/v1/invoices/{id}/adjustments/{adjustment}/reject", tag = "invoices", request_body = RejectAdjustment,
    params(("id" = String, Path), ("adjustment" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = Adjustment),
              (status = 400, description = "adjustment_not_pending_approval"),
              (status = 404, description = "No such invoice or adjustment")),
    security(("api_key" = [])))]
pub async fn reject_adjustment(
    State(state): State<AppState>,
    principal: Principal,
    key: IdempotencyKey,
    ApiPath((id, adjustment)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<RejectAdjustment>,
) -> ApiResult<Response> {
    principal.authorize(Action::InvoicesWrite)?;
    principal.authorize(Action::RefundsCreate)?;
    let id = path_invoice_id(&id)?;
    principal
        .ensure_invoice_visible(&state.db, id.as_str(), "id")
        .await?;
    let adjustment = path_adjustment_id(&adjustment)?;
    let reason = text_field("reason", &req.reason, REASON_CHARS_MAX)?;
    let rejecter = principal.actor_id().to_owned();
    let route = format!("POST /v1/invoices/{id}/adjustments/{adjustment}/reject");
    let st = state.clone();
    Ok(idempotency::run(&state, &principal, key, &route, &req, |claim| async move {
        let backend = st.db.backend;
        st.db
            .write(|tx| {
                let (claim, id, adjustment, reason, rejecter, keys) =
                    (claim.clone(), id.clone(), adjustment.clone(), reason.clone(), rejecter.clone(), st.keys.clone());
                Box::pin(async move {
                    idempotency::claim(tx, &claim).await?;
                    let (invoice, held) = lock_adjustment(tx, backend, &id, &adjustment).await?;
                    match held.status.as_str() {
                        "pending_approval" => {}
                        "rejected" => return respond_adjustment(&keys, tx, &claim, &adjustment).await,
                        _ => {
                            return Err(ApiError::refused(
                                "adjustment",
                                "adjustment_not_pending_approval",
                                "Only a write-off waiting for approval can be rejected.",
                            ))
                        }
                    }
                    let now = now_us();
                    let sealed_reason = notes::seal(&keys, tx, invoice.patient.as_str(), ADJUSTMENT_REJECTION, held.id.as_str(), Some(reason.as_str()), "reason").await?;
                    sqlx::query(
                        "UPDATE adjustments SET status = 'rejected', rejected_by = $1, rejected_at_us = $2, rejection_reason = $3 \
                         WHERE id = $4 AND status = 'pending_approval'",
                    )
                    .bind(&rejecter)
                    .bind(now)
                    .bind(sealed_reason)
                    .bind(held.id.as_str())
                    .execute(&mut **tx)
                    .await?;
                    tracing::info!(
                        adjustment = %held.id,
                        invoice = %id,
                        requested_by = %held.requested_by,
                        rejected_by = %rejecter,
                        "dual control: write-off rejected"
                    );
                    let detail = format!("requested_by {}", held.requested_by);
                    crate::identity::events::record_in(
                        tx,
                        crate::identity::events::Kind::ApprovalRejected,
                        crate::identity::events::Event {
                            actor: Some(rejecter.as_str()),
                            subject: Some(held.id.as_str()),
                            detail: Some(&detail),
                            ..Default::default()
                        },
                    )
                    .await?;
                    respond_adjustment(&keys, tx, &claim, &held.id).await
                })
            })
            .await
    })
    .await)
}

/// List the adjustments of an invoice, oldest first.
#[utoipa::path(get, path = "/v1/invoices/{id}/adjustments", tag = "invoices", params(("id" = String, Path)),
    responses((status = 200, body = List<Adjustment>), (status = 404, description = "No such invoice")),
    security(("api_key" = [])))]
pub async fn list_adjustments(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<List<Adjustment>>> {
    principal.authorize(Action::InvoicesRead)?;
    let id = path_invoice_id(&id)?;
    let limit = crate::api::PAGE_SIZE_MAX;
    let patient: String = sqlx::query_scalar("SELECT patient_id FROM invoices WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("id", "invoice"))?;
    // Record-level rule: another patient's invoice (or another facility's) is "no such invoice".
    principal
        .ensure_patient_visible(&state.db, &patient, "id", "invoice")
        .await?;
    let rows = sqlx::query(&format!(
        "SELECT {ADJUSTMENT_COLUMNS} FROM adjustments WHERE invoice_id = $1 ORDER BY seq LIMIT $2"
    ))
    .bind(id.as_str())
    .bind(limit.saturating_add(1))
    .fetch_all(&state.db.pool)
    .await?;
    let mut items = rows
        .iter()
        .map(adjustment_from_row)
        .collect::<ApiResult<Vec<_>>>()?;
    let mut conn = state.db.pool.acquire().await?;
    let mut opener = notes::Opener::new(&state.keys);
    for adjustment in &mut items {
        open_adjustment_texts(&mut opener, &mut conn, adjustment).await?;
    }
    drop(conn);
    Ok(Json(List::from_rows(
        items,
        limit,
        &format!("/v1/invoices/{id}/adjustments"),
    )))
}
