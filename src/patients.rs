//! Patients (`pat_…`): who a bill is for, and their statement.
//!
//! Name, date of birth, contact details and medical record number are health data. They are
//! validated here, never echoed in error messages or logged, and (with the data-protection
//! issue) stored encrypted.

use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa::ToSchema;

use crate::api::{date_field, text_field, ApiJson, ApiPath, ApiQuery, List, PageQuery};
use crate::auth::{Action, Principal};
use crate::db::{now_us, us_to_rfc3339, Tx};
use crate::error::{ApiError, ApiResult};
use crate::idempotency::{self, IdempotencyKey};
use crate::ids::PatientId;
use crate::invoices::{self, Invoice};
use crate::ledger::accounts::{patient_account_id, Code};
use crate::money::Currency;
use crate::AppState;

const NAME_CHARS_MAX: usize = 200;
const EMAIL_CHARS_MAX: usize = 254;
const PHONE_CHARS_MAX: usize = 32;
const MRN_CHARS_MAX: usize = 64;
const ADDRESS_LINE_CHARS_MAX: usize = 200;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/patients", post(create_patient).get(list_patients))
        .route("/v1/patients/{id}", get(get_patient).post(update_patient))
        .route("/v1/patients/{id}/statement", get(statement))
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Address {
    pub line1: Option<String>,
    pub line2: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-2 country code, e.g. "US".
    pub country: Option<String>,
}

impl Address {
    fn validated(self) -> Result<Address, ApiError> {
        let field =
            |name: &str, v: Option<String>, max: usize| -> Result<Option<String>, ApiError> {
                v.map(|s| text_field(&format!("address.{name}"), &s, max))
                    .transpose()
            };
        let country = match self.country {
            Some(c) if c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()) => {
                Some(c.to_ascii_uppercase())
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    "address.country",
                    "parameter_invalid",
                    "Must be a two-letter ISO 3166-1 country code.",
                ))
            }
            None => None,
        };
        Ok(Address {
            line1: field("line1", self.line1, ADDRESS_LINE_CHARS_MAX)?,
            line2: field("line2", self.line2, ADDRESS_LINE_CHARS_MAX)?,
            city: field("city", self.city, 100)?,
            state: field("state", self.state, 100)?,
            postal_code: field("postal_code", self.postal_code, 20)?,
            country,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePatient {
    pub name: String,
    /// YYYY-MM-DD
    pub date_of_birth: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub address: Option<Address>,
    /// Medical record number.
    pub mrn: Option<String>,
    /// The facility (`fac_…`) whose staff see this patient. Staff bound to a facility always
    /// create patients in their own.
    pub facility: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePatient {
    pub email: Option<String>,
    pub phone: Option<String>,
    pub address: Option<Address>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Patient {
    pub id: String,
    /// Always `"patient"`.
    pub object: &'static str,
    pub name: String,
    pub date_of_birth: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub address: Option<Address>,
    pub mrn: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

fn email_field(v: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    let v = text_field("email", &v, EMAIL_CHARS_MAX)?;
    let valid = v.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
    }) && !v.chars().any(char::is_whitespace);
    if !valid {
        return Err(ApiError::invalid(
            "email",
            "parameter_invalid",
            "Must be an email address.",
        ));
    }
    Ok(Some(v))
}

fn phone_field(v: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(v) = v else { return Ok(None) };
    let v = text_field("phone", &v, PHONE_CHARS_MAX)?;
    let digits = v.bytes().filter(u8::is_ascii_digit).count();
    if digits < 5
        || !v
            .bytes()
            .all(|b| b.is_ascii_digit() || b" +-().".contains(&b))
    {
        return Err(ApiError::invalid(
            "phone",
            "parameter_invalid",
            "Must be a phone number (digits, spaces, + - ( ) .).",
        ));
    }
    Ok(Some(v))
}

struct ValidPatient {
    name: String,
    date_of_birth: String,
    email: Option<String>,
    phone: Option<String>,
    address_json: Option<String>,
    mrn: Option<String>,
    facility: Option<String>,
}

impl CreatePatient {
    fn validated(self) -> Result<ValidPatient, ApiError> {
        let name = text_field("name", &self.name, NAME_CHARS_MAX)?;
        let dob = date_field("date_of_birth", &self.date_of_birth)?;
        let today = chrono::Utc::now().date_naive();
        if dob > today || dob < chrono::NaiveDate::from_ymd_opt(1880, 1, 1).unwrap_or(dob) {
            return Err(ApiError::invalid(
                "date_of_birth",
                "parameter_invalid",
                "Must be a date of birth in the past.",
            ));
        }
        let mrn = self
            .mrn
            .map(|m| text_field("mrn", &m, MRN_CHARS_MAX))
            .transpose()?;
        let address = self.address.map(Address::validated).transpose()?;
        Ok(ValidPatient {
            name,
            date_of_birth: dob.format("%Y-%m-%d").to_string(),
            email: email_field(self.email)?,
            phone: phone_field(self.phone)?,
            address_json: address
                .map(|a| serde_json::to_string(&a))
                .transpose()
                .map_err(|e| ApiError::Internal(e.into()))?,
            mrn,
            facility: self
                .facility
                .as_deref()
                .map(|f| crate::ids::FacilityId::parse_param(f, "facility").map(String::from))
                .transpose()?,
        })
    }
}

const PATIENT_COLUMNS: &str =
    "seq, id, name, date_of_birth, email, phone, address_json, mrn, created_at_us, updated_at_us";

fn patient_from_row(row: &AnyRow) -> ApiResult<Patient> {
    let address: Option<String> = row.try_get("address_json")?;
    Ok(Patient {
        id: row.try_get("id")?,
        object: "patient",
        name: row.try_get("name")?,
        date_of_birth: row.try_get("date_of_birth")?,
        email: row.try_get("email")?,
        phone: row.try_get("phone")?,
        address: address
            .map(|a| serde_json::from_str(&a))
            .transpose()
            .map_err(|e| ApiError::Internal(e.into()))?,
        mrn: row.try_get("mrn")?,
        created_at: us_to_rfc3339(row.try_get("created_at_us")?),
        updated_at: us_to_rfc3339(row.try_get("updated_at_us")?),
    })
}

pub(crate) fn path_patient_id(id: &str) -> Result<PatientId, ApiError> {
    PatientId::parse_param(id, "id")
}

/// Loads a patient inside a transaction (for the checks of other resources).
pub(crate) async fn exists(tx: &mut Tx, id: &PatientId) -> Result<bool, ApiError> {
    Ok(sqlx::query("SELECT 1 AS one FROM patients WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(&mut **tx)
        .await?
        .is_some())
}

/// Create a patient.
#[utoipa::path(post, path = "/v1/patients", tag = "patients", request_body = CreatePatient,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = Patient), (status = 400, description = "Invalid parameter")),
    security(("api_key" = [])))]
pub async fn create_patient(
    State(state): State<AppState>,
    principal: Principal,
    key: IdempotencyKey,
    ApiJson(req): ApiJson<CreatePatient>,
) -> ApiResult<Response> {
    principal.authorize(Action::PatientsWrite)?;
    let fingerprint_of = req.clone();
    let mut valid = req.validated()?;
    if let Some(own) = principal.own_facility() {
        if valid.facility.as_deref().is_some_and(|f| f != own.as_str()) {
            return Err(ApiError::invalid(
                "facility",
                "facility_not_yours",
                "Staff of a facility create patients in their own facility.",
            ));
        }
        valid.facility = Some(own.as_str().to_owned());
    }
    if let Some(f) = &valid.facility {
        let known: Option<String> = sqlx::query_scalar("SELECT id FROM facilities WHERE id = $1")
            .bind(f)
            .fetch_optional(&state.db.pool)
            .await?;
        if known.is_none() {
            return Err(ApiError::not_found("facility", "facility"));
        }
    }
    let valid = std::sync::Arc::new(valid);
    let st = state.clone();
    Ok(idempotency::run(&state, &principal, key, "POST /v1/patients", &fingerprint_of, |claim| async move {
        st.db
            .write(|tx| {
                let (claim, p) = (claim.clone(), valid.clone());
                Box::pin(async move {
                    idempotency::claim(tx, &claim).await?;
                    let id = PatientId::generate();
                    let now = now_us();
                    sqlx::query(
                        "INSERT INTO patients (id, name, date_of_birth, email, phone, address_json, mrn, created_at_us, updated_at_us, facility_id) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9)",
                    )
                    .bind(id.as_str())
                    .bind(&p.name)
                    .bind(&p.date_of_birth)
                    .bind(p.email.clone())
                    .bind(p.phone.clone())
                    .bind(p.address_json.clone())
                    .bind(p.mrn.clone())
                    .bind(now)
                    .bind(p.facility.clone())
                    .execute(&mut **tx)
                    .await?;
                    let patient = load(tx, &id).await?;
                    idempotency::respond_ok(tx, &claim, &patient).await
                })
            })
            .await
    })
    .await)
}

async fn load(tx: &mut Tx, id: &PatientId) -> ApiResult<Patient> {
    let row = sqlx::query(&format!(
        "SELECT {PATIENT_COLUMNS} FROM patients WHERE id = $1"
    ))
    .bind(id.as_str())
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| ApiError::not_found("id", "patient"))?;
    patient_from_row(&row)
}

/// Update a patient's contact details (email, phone, address).
#[utoipa::path(post, path = "/v1/patients/{id}", tag = "patients", request_body = UpdatePatient,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = Patient), (status = 404, description = "No such patient")),
    security(("api_key" = [])))]
pub async fn update_patient(
    State(state): State<AppState>,
    principal: Principal,
    key: IdempotencyKey,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<UpdatePatient>,
) -> ApiResult<Response> {
    principal.authorize(Action::PatientsWrite)?;
    let id = path_patient_id(&id)?;
    principal
        .ensure_patient_visible(&state.db, id.as_str(), "id", "patient")
        .await?;
    let email = email_field(req.email.clone())?;
    let phone = phone_field(req.phone.clone())?;
    let address = req
        .address
        .clone()
        .map(Address::validated)
        .transpose()?
        .map(|a| serde_json::to_string(&a))
        .transpose()
        .map_err(|e| ApiError::Internal(e.into()))?;
    let route = format!("POST /v1/patients/{id}");
    let st = state.clone();
    Ok(idempotency::run(&state, &principal, key, &route, &req, |claim| async move {
        st.db
            .write(|tx| {
                let (claim, id, email, phone, address) = (claim.clone(), id.clone(), email.clone(), phone.clone(), address.clone());
                Box::pin(async move {
                    idempotency::claim(tx, &claim).await?;
                    let updated = sqlx::query(
                        "UPDATE patients SET email = COALESCE($1, email), phone = COALESCE($2, phone), \
                         address_json = COALESCE($3, address_json), updated_at_us = $4 WHERE id = $5",
                    )
                    .bind(email)
                    .bind(phone)
                    .bind(address)
                    .bind(now_us())
                    .bind(id.as_str())
                    .execute(&mut **tx)
                    .await?;
                    if updated.rows_affected() == 0 {
                        return Err(ApiError::not_found("id", "patient"));
                    }
                    let patient = load(tx, &id).await?;
                    idempotency::respond_ok(tx, &claim, &patient).await
                })
            })
            .await
    })
    .await)
}

/// Retrieve a patient.
#[utoipa::path(get, path = "/v1/patients/{id}", tag = "patients", params(("id" = String, Path)),
    responses((status = 200, body = Patient), (status = 404, description = "No such patient")),
    security(("api_key" = [])))]
pub async fn get_patient(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Patient>> {
    principal.authorize(Action::PatientsRead)?;
    let id = path_patient_id(&id)?;
    principal
        .ensure_patient_visible(&state.db, id.as_str(), "id", "patient")
        .await?;
    let row = sqlx::query(&format!(
        "SELECT {PATIENT_COLUMNS} FROM patients WHERE id = $1"
    ))
    .bind(id.as_str())
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("id", "patient"))?;
    Ok(Json(patient_from_row(&row)?))
}

/// List patients, newest first.
#[utoipa::path(get, path = "/v1/patients", tag = "patients",
    params(("limit" = Option<i64>, Query), ("starting_after" = Option<String>, Query)),
    responses((status = 200, body = List<Patient>)),
    security(("api_key" = [])))]
pub async fn list_patients(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<List<Patient>>> {
    principal.authorize(Action::PatientsRead)?;
    let limit = q.limit()?;
    let after = PatientId::parse_opt_param(q.starting_after.as_deref(), "starting_after")?;
    let before = crate::api::cursor_seq(
        &state,
        "patients",
        "patient",
        after.as_ref().map(|i| i.as_str()),
        i64::MAX,
    )
    .await?;
    // Record-level rule: a patient lists only themselves, facility-bound staff their facility.
    let (own_patient, own_facility) = principal.list_limits();
    let rows = sqlx::query(&format!(
        "SELECT {PATIENT_COLUMNS} FROM patients WHERE seq < $1 AND ($3 = '' OR id = $3) \
         AND ($4 = '' OR facility_id = $4) ORDER BY seq DESC LIMIT $2"
    ))
    .bind(before)
    .bind(limit.saturating_add(1))
    .bind(own_patient)
    .bind(own_facility)
    .fetch_all(&state.db.pool)
    .await?;
    let patients = rows
        .iter()
        .map(patient_from_row)
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(List::from_rows(patients, limit, "/v1/patients")))
}

/// What a patient owes: open invoices and the balance due in one currency.
#[derive(Debug, Serialize, ToSchema)]
pub struct Statement {
    /// Always `"statement"`.
    pub object: &'static str,
    pub patient: String,
    pub currency: String,
    /// Sum of the open invoices' amounts due (minor units).
    pub balance_due: i64,
    /// Overpayments held for the patient (minor units, positive).
    pub credit_balance: i64,
    pub invoices: Vec<Invoice>,
    pub generated_at: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatementQuery {
    currency: Option<String>,
}

/// A patient's statement: open invoices and the balance due.
#[utoipa::path(get, path = "/v1/patients/{id}/statement", tag = "patients",
    params(("id" = String, Path), ("currency" = Option<String>, Query, description = "Needed only when the patient has bills in several currencies")),
    responses((status = 200, body = Statement), (status = 404, description = "No such patient")),
    security(("api_key" = [])))]
pub async fn statement(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<StatementQuery>,
) -> ApiResult<Json<Statement>> {
    principal.authorize(Action::InvoicesRead)?;
    let id = path_patient_id(&id)?;
    principal
        .ensure_patient_visible(&state.db, id.as_str(), "id", "patient")
        .await?;
    let requested = q
        .currency
        .as_deref()
        .map(|c| {
            c.parse::<Currency>().map_err(|_| {
                ApiError::invalid("currency", "currency_invalid", "Unsupported currency.")
            })
        })
        .transpose()?;
    let pool = &state.db.pool;
    if sqlx::query("SELECT 1 AS one FROM patients WHERE id = $1")
        .bind(id.as_str())
        .fetch_optional(pool)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("id", "patient"));
    }
    let currencies: Vec<String> = sqlx::query("SELECT DISTINCT currency FROM invoices WHERE patient_id = $1 AND status IN ('open', 'partially_paid')")
        .bind(id.as_str())
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| r.try_get("currency"))
        .collect::<Result<_, _>>()?;
    let currency = match (requested, currencies.as_slice()) {
        (Some(c), _) => c,
        (None, []) => Currency::Usd,
        (None, [one]) => one.parse()?,
        (None, _) => {
            return Err(ApiError::invalid(
                "currency",
                "currency_required",
                "The patient has open bills in several currencies; choose one.",
            ))
        }
    };
    let invoices = invoices::open_invoices_of(&state, &id, currency).await?;
    let balance_due = invoices
        .iter()
        .try_fold(0_i64, |acc, i| acc.checked_add(i.amount_due))
        .ok_or_else(|| anyhow::anyhow!("balance overflow"))?;
    let credit_balance: i64 = sqlx::query("SELECT balance_minor FROM accounts WHERE id = $1")
        .bind(patient_account_id(Code::PatientCredit, currency, &id).as_str())
        .fetch_optional(pool)
        .await?
        .map(|r| r.try_get::<i64, _>("balance_minor"))
        .transpose()?
        .unwrap_or(0)
        .checked_neg()
        .ok_or_else(|| anyhow::anyhow!("credit balance overflow"))?;
    Ok(Json(Statement {
        object: "statement",
        patient: id.to_string(),
        currency: currency.code().to_owned(),
        balance_due,
        credit_balance,
        invoices,
        generated_at: us_to_rfc3339(now_us()),
    }))
}
