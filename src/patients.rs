//! Patients (`pat_…`): who a bill is for, and their statement.
//!
//! Name, date of birth, contact details and medical record number are health data. They are
//! validated here, never echoed in error messages or logged, and stored only encrypted under
//! the patient's own data key (src/crypto), with blind indexes for exact-match search
//! (`POST /v1/patients/search`: a search value never travels in a URL, where proxies and access
//! logs would keep it). `DELETE /v1/patients/{id}/personal-data` erases them by destroying the
//! key (crypto-shredding); the patient's ledger stays, under the id.

use axum::extract::State;
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::Row;
use utoipa::ToSchema;

use crate::api::{date_field, text_field, ApiJson, ApiPath, ApiQuery, List, PageQuery};
use crate::auth::{Action, Principal};
use crate::crypto::{CryptoError, DataKey, Field, KeyState, Keys};
use crate::db::{now_us, us_to_rfc3339, Tx};
use crate::error::{ApiError, ApiResult};
use crate::idempotency::{self, IdempotencyKey};
use crate::identity::events::{self, Event, Kind};
use crate::ids::PatientId;
use crate::invoices::{self, Invoice};
use crate::ledger::accounts::{patient_account_id, Code};
use crate::money::Currency;
use crate::AppState;
use zeroize::Zeroizing;

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
        .route("/v1/patients/search", post(search_patients))
        .route(
            "/v1/patients/{id}/personal-data",
            delete(erase_personal_data),
        )
}

/// Health data: `Debug` prints nothing of it.
macro_rules! redacted_debug {
    ($($t:ty),*) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($t), "([redacted])"))
            }
        }
    )*};
}
redacted_debug!(Address, CreatePatient, UpdatePatient, SearchPatients);

#[derive(Clone, Serialize, Deserialize, ToSchema)]
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

#[derive(Clone, Serialize, Deserialize, ToSchema)]
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

#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePatient {
    pub email: Option<String>,
    pub phone: Option<String>,
    pub address: Option<Address>,
}

/// Exact-match search: by `email`, by `mrn`, or by `name` and `date_of_birth` together.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchPatients {
    pub email: Option<String>,
    pub mrn: Option<String>,
    pub name: Option<String>,
    /// YYYY-MM-DD, with `name`.
    pub date_of_birth: Option<String>,
    /// At most 100 (default 10).
    pub limit: Option<i64>,
}

#[derive(Clone, Serialize, ToSchema)]
pub struct Patient {
    pub id: String,
    /// Always `"patient"`.
    pub object: &'static str,
    /// `available`; `erased` (the data key was destroyed: the health and contact fields are
    /// gone for good, the ledger stays); or `unreadable` (a stored value failed authentication;
    /// recorded as a security event).
    pub personal_data: &'static str,
    pub name: Option<String>,
    pub date_of_birth: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub address: Option<Address>,
    pub mrn: Option<String>,
    /// When the personal data was erased.
    pub erased_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl std::fmt::Debug for Patient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Patient")
            .field("id", &self.id)
            .field("personal_data", &self.personal_data)
            .finish_non_exhaustive()
    }
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

/// The columns of a patient and of their data key (`FROM patients p LEFT JOIN data_keys k`).
const PATIENT_SELECT: &str =
    "SELECT p.seq, p.id, p.name_enc, p.date_of_birth_enc, p.email_enc, p.phone_enc, p.address_enc, \
     p.mrn_enc, p.erased_at_us, p.created_at_us, p.updated_at_us, k.kek_version, k.wrapped_key \
     FROM patients p LEFT JOIN data_keys k ON k.owner = p.id";

/// Where each encrypted patient field lives (its column is bound into its ciphertext).
fn field<'a>(column: &'a str, id: &'a str) -> Field<'a> {
    Field::new(column, id, id)
}

/// The clear values of a patient, decrypted.
struct Clear {
    name: String,
    date_of_birth: String,
    email: Option<String>,
    phone: Option<String>,
    address: Option<Address>,
    mrn: Option<String>,
}

fn open_fields(
    key: &DataKey,
    id: &str,
    row: &AnyRow,
) -> Result<Clear, (&'static str, CryptoError)> {
    let get = |column: &'static str,
               name: &'static str|
     -> Result<Option<String>, (&'static str, CryptoError)> {
        let sealed: Option<String> = row
            .try_get(name)
            .map_err(|_| (column, CryptoError::Decrypt))?;
        key.open_opt(field(column, id), sealed.as_deref())
            .map_err(|e| (column, e))
    };
    let required = |column: &'static str, name: &'static str| {
        get(column, name)?.ok_or((column, CryptoError::Decrypt))
    };
    let address = get("patients.address", "address_enc")?
        .map(|a| serde_json::from_str(&a))
        .transpose()
        .map_err(|_| ("patients.address", CryptoError::Decrypt))?;
    Ok(Clear {
        name: required("patients.name", "name_enc")?,
        date_of_birth: required("patients.date_of_birth", "date_of_birth_enc")?,
        email: get("patients.email", "email_enc")?,
        phone: get("patients.phone", "phone_enc")?,
        address,
        mrn: get("patients.mrn", "mrn_enc")?,
    })
}

/// Builds a patient from a `PATIENT_SELECT` row, decrypting with its data key. A value that
/// fails authentication makes this one record `unreadable` (and a security event), nothing more.
async fn patient_from_row(keys: &Keys, row: &AnyRow) -> ApiResult<Patient> {
    let id: String = row.try_get("id")?;
    let erased_at: Option<i64> = row.try_get("erased_at_us")?;
    let state = match erased_at {
        Some(_) => KeyState::Erased,
        None => {
            keys.open_joined(
                &id,
                row.try_get("kek_version")?,
                row.try_get("wrapped_key")?,
            )
            .await
        }
    };
    let (status, clear) = match &state {
        KeyState::Available(key) => match open_fields(key, &id, row) {
            Ok(clear) => ("available", Some(clear)),
            Err((column, e)) => {
                keys.report_unreadable(&id, column, &e).await;
                ("unreadable", None)
            }
        },
        other => (other.status(), None),
    };
    let (name, date_of_birth, email, phone, address, mrn) = match clear {
        Some(c) => (
            Some(c.name),
            Some(c.date_of_birth),
            c.email,
            c.phone,
            c.address,
            c.mrn,
        ),
        None => (None, None, None, None, None, None),
    };
    Ok(Patient {
        id,
        object: "patient",
        personal_data: status,
        name,
        date_of_birth,
        email,
        phone,
        address,
        mrn,
        erased_at: erased_at.map(us_to_rfc3339),
        created_at: us_to_rfc3339(row.try_get("created_at_us")?),
        updated_at: us_to_rfc3339(row.try_get("updated_at_us")?),
    })
}

async fn patients_from_rows(keys: &Keys, rows: &[AnyRow]) -> ApiResult<Vec<Patient>> {
    let mut patients = Vec::with_capacity(rows.len());
    for row in rows {
        patients.push(patient_from_row(keys, row).await?);
    }
    Ok(patients)
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

/// A patient's date of birth, decrypted (guest access checks it). None: no such patient, or
/// their personal data is erased or unreadable.
pub(crate) async fn date_of_birth(
    keys: &Keys,
    db: &crate::db::Db,
    id: &str,
) -> ApiResult<Option<Zeroizing<String>>> {
    let Some(row) = sqlx::query(&format!("{PATIENT_SELECT} WHERE p.id = $1"))
        .bind(id)
        .fetch_optional(&db.pool)
        .await?
    else {
        return Ok(None);
    };
    Ok(patient_from_row(keys, &row)
        .await?
        .date_of_birth
        .map(Zeroizing::new))
}

/// The sealed columns and blind indexes of a new or updated patient.
struct Sealed {
    name: Option<String>,
    date_of_birth: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    address: Option<String>,
    mrn: Option<String>,
    email_bidx: Option<String>,
    mrn_bidx: Option<String>,
    name_dob_bidx: Option<String>,
}

fn seal_patient(keys: &Keys, key: &DataKey, id: &str, p: &ValidPatient) -> ApiResult<Sealed> {
    let seal = |column: &str, value: Option<&str>| {
        key.seal_opt(field(column, id), value)
            .map_err(|e| ApiError::Internal(e.into()))
    };
    let index = keys.index();
    Ok(Sealed {
        name: seal("patients.name", Some(&p.name))?,
        date_of_birth: seal("patients.date_of_birth", Some(&p.date_of_birth))?,
        email: seal("patients.email", p.email.as_deref())?,
        phone: seal("patients.phone", p.phone.as_deref())?,
        address: seal("patients.address", p.address_json.as_deref())?,
        mrn: seal("patients.mrn", p.mrn.as_deref())?,
        email_bidx: p.email.as_deref().map(|e| index.email(e)),
        mrn_bidx: p.mrn.as_deref().map(|m| index.mrn(m)),
        name_dob_bidx: Some(index.name_dob(&p.name, &p.date_of_birth)),
    })
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
                let (claim, p, keys) = (claim.clone(), valid.clone(), st.keys.clone());
                Box::pin(async move {
                    idempotency::claim(tx, &claim).await?;
                    let id = PatientId::generate();
                    let now = now_us();
                    let data_key = keys.new_data_key(tx, id.as_str()).await?;
                    let sealed = seal_patient(&keys, &data_key, id.as_str(), &p)?;
                    sqlx::query(
                        "INSERT INTO patients (id, name_enc, date_of_birth_enc, email_enc, phone_enc, address_enc, mrn_enc, \
                         email_bidx, mrn_bidx, name_dob_bidx, created_at_us, updated_at_us, facility_id) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12)",
                    )
                    .bind(id.as_str())
                    .bind(sealed.name)
                    .bind(sealed.date_of_birth)
                    .bind(sealed.email)
                    .bind(sealed.phone)
                    .bind(sealed.address)
                    .bind(sealed.mrn)
                    .bind(sealed.email_bidx)
                    .bind(sealed.mrn_bidx)
                    .bind(sealed.name_dob_bidx)
                    .bind(now)
                    .bind(p.facility.clone())
                    .execute(&mut **tx)
                    .await?;
                    let patient = load(&keys, tx, &id).await?;
                    idempotency::respond_ok(tx, &claim, &patient).await
                })
            })
            .await
    })
    .await)
}

async fn load(keys: &Keys, tx: &mut Tx, id: &PatientId) -> ApiResult<Patient> {
    let row = sqlx::query(&format!("{PATIENT_SELECT} WHERE p.id = $1"))
        .bind(id.as_str())
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| ApiError::not_found("id", "patient"))?;
    patient_from_row(keys, &row).await
}

/// Update a patient's contact details (email, phone, address).
#[utoipa::path(post, path = "/v1/patients/{id}", tag = "patients", request_body = UpdatePatient,
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = Patient), (status = 404, description = "No such patient"),
        (status = 409, description = "The patient's personal data was erased")),
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
                let (claim, id, email, phone, address, keys) = (claim.clone(), id.clone(), email.clone(), phone.clone(), address.clone(), st.keys.clone());
                Box::pin(async move {
                    idempotency::claim(tx, &claim).await?;
                    let erased: Option<Option<i64>> = sqlx::query_scalar("SELECT erased_at_us FROM patients WHERE id = $1")
                        .bind(id.as_str())
                        .fetch_optional(&mut **tx)
                        .await?;
                    match erased {
                        None => return Err(ApiError::not_found("id", "patient")),
                        Some(Some(_)) => return Err(erased_error()),
                        Some(None) => {}
                    }
                    let KeyState::Available(data_key) = keys.data_key(&mut **tx, id.as_str()).await? else {
                        return Err(ApiError::Internal(anyhow::anyhow!("the patient's data key cannot be opened")));
                    };
                    let seal = |column: &str, value: Option<&str>| {
                        data_key.seal_opt(field(column, id.as_str()), value).map_err(|e| ApiError::Internal(e.into()))
                    };
                    let email_bidx = email.as_deref().map(|e| keys.index().email(e));
                    sqlx::query(
                        "UPDATE patients SET email_enc = COALESCE($1, email_enc), phone_enc = COALESCE($2, phone_enc), \
                         address_enc = COALESCE($3, address_enc), email_bidx = COALESCE($4, email_bidx), updated_at_us = $5 \
                         WHERE id = $6",
                    )
                    .bind(seal("patients.email", email.as_deref())?)
                    .bind(seal("patients.phone", phone.as_deref())?)
                    .bind(seal("patients.address", address.as_deref())?)
                    .bind(email_bidx)
                    .bind(now_us())
                    .bind(id.as_str())
                    .execute(&mut **tx)
                    .await?;
                    let patient = load(&keys, tx, &id).await?;
                    idempotency::respond_ok(tx, &claim, &patient).await
                })
            })
            .await
    })
    .await)
}

fn erased_error() -> ApiError {
    ApiError::simple(
        axum::http::StatusCode::CONFLICT,
        crate::error::ErrorType::InvalidRequestError,
        "personal_data_erased",
        "This patient's personal data was erased; it cannot be changed.",
    )
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
    let row = sqlx::query(&format!("{PATIENT_SELECT} WHERE p.id = $1"))
        .bind(id.as_str())
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("id", "patient"))?;
    Ok(Json(patient_from_row(&state.keys, &row).await?))
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
        "{PATIENT_SELECT} WHERE p.seq < $1 AND ($3 = '' OR p.id = $3) \
         AND ($4 = '' OR p.facility_id = $4) ORDER BY p.seq DESC LIMIT $2"
    ))
    .bind(before)
    .bind(limit.saturating_add(1))
    .bind(own_patient)
    .bind(own_facility)
    .fetch_all(&state.db.pool)
    .await?;
    let patients = patients_from_rows(&state.keys, &rows).await?;
    Ok(Json(List::from_rows(patients, limit, "/v1/patients")))
}

/// Search patients by exact email, medical record number, or name with date of birth, through
/// blind indexes (nothing is decrypted to search). Case and spacing do not matter.
#[utoipa::path(post, path = "/v1/patients/search", tag = "patients", request_body = SearchPatients,
    responses((status = 200, body = List<Patient>), (status = 400, description = "No or several criteria")),
    security(("api_key" = [])))]
pub async fn search_patients(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<SearchPatients>,
) -> ApiResult<Json<List<Patient>>> {
    principal.authorize(Action::PatientsRead)?;
    let limit = match req.limit {
        None => 10,
        Some(l) if (1..=100).contains(&l) => l,
        Some(_) => {
            return Err(ApiError::invalid(
                "limit",
                "parameter_invalid",
                "Must be between 1 and 100.",
            ))
        }
    };
    let index = state.keys.index();
    let (column, value) = match (&req.email, &req.mrn, &req.name, &req.date_of_birth) {
        (Some(email), None, None, None) => (
            "email_bidx",
            index.email(&text_field("email", email, EMAIL_CHARS_MAX)?),
        ),
        (None, Some(mrn), None, None) => (
            "mrn_bidx",
            index.mrn(&text_field("mrn", mrn, MRN_CHARS_MAX)?),
        ),
        (None, None, Some(name), Some(dob)) => (
            "name_dob_bidx",
            index.name_dob(
                &text_field("name", name, NAME_CHARS_MAX)?,
                &date_field("date_of_birth", dob)?
                    .format("%Y-%m-%d")
                    .to_string(),
            ),
        ),
        (None, None, Some(_), None) => {
            return Err(ApiError::invalid(
                "date_of_birth",
                "parameter_missing",
                "Searching by name needs the date of birth too.",
            ))
        }
        (None, None, None, Some(_)) => {
            return Err(ApiError::invalid(
                "name",
                "parameter_missing",
                "Searching by date of birth needs the name too.",
            ))
        }
        (None, None, None, None) => {
            return Err(ApiError::invalid(
                "email",
                "parameter_missing",
                "Give one of: email, mrn, or name with date_of_birth.",
            ))
        }
        _ => {
            return Err(ApiError::invalid(
                "email",
                "parameter_conflict",
                "Give only one of: email, mrn, or name with date_of_birth.",
            ))
        }
    };
    let (own_patient, own_facility) = principal.list_limits();
    let rows = sqlx::query(&format!(
        "{PATIENT_SELECT} WHERE p.{column} = $1 AND ($3 = '' OR p.id = $3) \
         AND ($4 = '' OR p.facility_id = $4) ORDER BY p.seq DESC LIMIT $2"
    ))
    .bind(value)
    .bind(limit.saturating_add(1))
    .bind(own_patient)
    .bind(own_facility)
    .fetch_all(&state.db.pool)
    .await?;
    let patients = patients_from_rows(&state.keys, &rows).await?;
    Ok(Json(List::from_rows(
        patients,
        limit,
        "/v1/patients/search",
    )))
}

/// Erase a patient's personal data (crypto-shredding): their data key is destroyed, so their
/// name, date of birth, contact details, medical record number and invoice line texts become
/// unreadable for good — in backups too, once the KEK versions those backups hold are
/// rotated out. Their invoices, payments and ledger entries stay, amounts intact, under the
/// patient id. The patient's portal accounts are disabled, signed out and lose their email
/// (replaced by `erased+<user id>@invalid`), password, authenticator and federated identity;
/// guest-pay sessions end. Billing managers only; audited, and recorded as a security event.
/// Answering again for an erased patient is not an error.
#[utoipa::path(delete, path = "/v1/patients/{id}/personal-data", tag = "patients", params(("id" = String, Path)),
    responses((status = 200, body = Patient), (status = 404, description = "No such patient")),
    security(("api_key" = [])))]
pub async fn erase_personal_data(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Patient>> {
    principal.authorize(Action::PatientsErase)?;
    let id = path_patient_id(&id)?;
    principal
        .ensure_patient_visible(&state.db, id.as_str(), "id", "patient")
        .await?;
    let actor = principal.actor_id().to_owned();
    let keys = state.keys.clone();
    let patient = state
        .db
        .write(|tx| {
            let (id, keys, actor) = (id.clone(), keys.clone(), actor.clone());
            Box::pin(async move {
                let erased: Option<Option<i64>> =
                    sqlx::query_scalar("SELECT erased_at_us FROM patients WHERE id = $1")
                        .bind(id.as_str())
                        .fetch_optional(&mut **tx)
                        .await?;
                match erased {
                    None => return Err(ApiError::not_found("id", "patient")),
                    Some(Some(_)) => return load(&keys, tx, &id).await,
                    Some(None) => {}
                }
                let now = now_us();
                keys.destroy(tx, id.as_str()).await?;
                // The blind indexes go too (they would still confirm a guessed email or name +
                // date of birth), and the guest access code (it needed the date of birth).
                sqlx::query(
                    "UPDATE patients SET email_bidx = NULL, mrn_bidx = NULL, name_dob_bidx = NULL, \
                     access_code_sha256 = NULL, erased_at_us = $1, updated_at_us = $1 WHERE id = $2",
                )
                .bind(now)
                .bind(id.as_str())
                .execute(&mut **tx)
                .await?;
                // The patient's portal accounts: disabled, signed out everywhere, and stripped
                // of what identifies the person (the sign-in email, the federated identity,
                // the password and the authenticator seed). The rows stay, so the audit trail
                // and security log still resolve the user id. Guest-pay sessions opened with
                // the access code end too.
                let accounts: Vec<String> = sqlx::query_scalar(
                    "SELECT id FROM users WHERE patient_id = $1 ORDER BY id",
                )
                .bind(id.as_str())
                .fetch_all(&mut **tx)
                .await?;
                for user in &accounts {
                    sqlx::query(
                        "UPDATE users SET status = 'disabled', email = $1, password_hash = NULL, \
                         external_issuer = NULL, external_subject = NULL, totp_secret = NULL, \
                         totp_last_step = NULL, mfa_enrolled_at_us = NULL, updated_at_us = $2 \
                         WHERE id = $3",
                    )
                    .bind(format!("erased+{user}@invalid"))
                    .bind(now)
                    .bind(user)
                    .execute(&mut **tx)
                    .await?;
                    events::record_in(
                        tx,
                        Kind::UserDisabled,
                        Event {
                            actor: Some(&actor),
                            subject: Some(user),
                            detail: Some("personal_data_erased"),
                            ..Event::default()
                        },
                    )
                    .await?;
                }
                sqlx::query(
                    "UPDATE sessions SET revoked_at_us = $1 WHERE revoked_at_us IS NULL AND \
                     (guest_patient_id = $2 OR user_id IN (SELECT id FROM users WHERE patient_id = $2))",
                )
                .bind(now)
                .bind(id.as_str())
                .execute(&mut **tx)
                .await?;
                events::record_in(
                    tx,
                    Kind::PersonalDataErased,
                    Event {
                        actor: Some(&actor),
                        subject: Some(id.as_str()),
                        ..Event::default()
                    },
                )
                .await?;
                load(&keys, tx, &id).await
            })
        })
        .await?;
    tracing::info!(patient = %patient.id, "personal data erased (data key destroyed)");
    Ok(Json(patient))
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
