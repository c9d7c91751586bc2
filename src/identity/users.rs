//! Users (`usr_…`), statement access codes, and the security event log.
//!
//! - `POST /v1/users` — an admin creates a staff user; front desk and billing staff create a
//!   patient's account (role `patient`, linked to the patient record). The password must pass
//!   the policy (`password.rs`); staff enrol TOTP at their first sign-in.
//! - `GET /v1/users`, `POST /v1/users/{id}` (role, status, facility; every role change is a
//!   security event; disabling signs the user out everywhere).
//! - `POST /v1/users/{id}/require_password_reset` (on suspicion: sessions revoked, sign-in
//!   refused until an admin sets a new password with `POST /v1/users/{id}/password`), and
//!   `POST /v1/users/me/password` for the user's own change.
//! - `POST /v1/patients/{id}/access_code`: the code printed on a statement for guest pay,
//!   shown once.
//! - `GET /v1/security_events` for auditors and admins.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::Row;

use super::events::{self, Event, Kind};
use super::password::{self, Password};
use crate::api::{parse_limit, ApiJson, ApiPath, ApiQuery};
use crate::auth::{sha256_hex, Action, Principal, Role, Subject};
use crate::db::{now_us, us_to_rfc3339};
use crate::error::{ApiError, ApiResult};
use crate::ids::{FacilityId, PatientId, UserId};
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/users", post(create_user).get(list_users))
        .route("/v1/users/me/password", post(change_own_password))
        .route("/v1/users/{id}", post(update_user))
        .route("/v1/users/{id}/password", post(set_password))
        .route("/v1/users/{id}/require_password_reset", post(require_reset))
        .route("/v1/patients/{id}/access_code", post(new_access_code))
        .route("/v1/security_events", get(list_security_events))
        .route("/v1/facilities", post(create_facility).get(list_facilities))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub email: String,
    pub role: String,
    pub password: String,
    pub name: Option<String>,
    pub patient: Option<String>,
    pub facility: Option<String>,
}

impl std::fmt::Debug for CreateUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateUser")
            .field("role", &self.role)
            .finish()
    }
}

fn user_json(r: &sqlx::any::AnyRow) -> Result<Value, sqlx::Error> {
    Ok(json!({
        "id": r.try_get::<String, _>("id")?,
        "object": "user",
        "email": r.try_get::<String, _>("email")?,
        "role": r.try_get::<String, _>("role")?,
        "status": r.try_get::<String, _>("status")?,
        "patient": r.try_get::<Option<String>, _>("patient_id")?,
        "facility": r.try_get::<Option<String>, _>("facility_id")?,
        "mfa_enrolled": r.try_get::<Option<i64>, _>("mfa_enrolled_at_us")?.is_some(),
        "created": us_to_rfc3339(r.try_get("created_at_us")?),
    }))
}

const USER_COLUMNS: &str =
    "id, email, role, status, patient_id, facility_id, mfa_enrolled_at_us, created_at_us";

fn parse_role(s: &str) -> ApiResult<Role> {
    Role::parse(s).ok_or_else(|| {
        ApiError::invalid(
            "role",
            "parameter_invalid",
            "Must be one of patient, front_desk, billing_clerk, billing_manager, accountant, auditor, admin.",
        )
    })
}

async fn create_user(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<CreateUser>,
) -> ApiResult<Json<Value>> {
    let role = parse_role(&req.role)?;
    // Staff accounts are the admin's; a patient's account is made by the staff who see them.
    let patient = if role == Role::Patient {
        principal.authorize(Action::PatientsWrite)?;
        let id = req.patient.as_deref().ok_or_else(|| {
            ApiError::invalid(
                "patient",
                "parameter_missing",
                "A patient account needs `patient`.",
            )
        })?;
        let id = PatientId::parse_param(id, "patient")?;
        let facility: Option<Option<String>> =
            sqlx::query_scalar("SELECT facility_id FROM patients WHERE id = $1")
                .bind(id.as_str())
                .fetch_optional(&state.db.pool)
                .await?;
        let facility = facility.ok_or_else(|| ApiError::not_found("patient", "patient"))?;
        principal.ensure_visible(id.as_str(), facility.as_deref(), "patient", "patient")?;
        Some(id)
    } else {
        principal.authorize(Action::UsersManage)?;
        if req.patient.is_some() {
            return Err(ApiError::invalid(
                "patient",
                "parameter_unexpected",
                "Only a patient account is linked to a patient.",
            ));
        }
        None
    };
    let facility = req
        .facility
        .as_deref()
        .map(|f| FacilityId::parse_param(f, "facility"))
        .transpose()?;
    let email = password::normalize_email(&req.email)
        .map_err(|_| ApiError::invalid("email", "email_invalid", "Not a valid email address."))?;
    let pw = Password::new(req.password)
        .map_err(|e| ApiError::invalid("password", e.code(), e.message()))?;
    let hints: Vec<&str> = req.name.as_deref().map(|n| vec![n]).unwrap_or_default();
    password::check_new_password(&pw, &email, &hints)
        .map_err(|e| ApiError::invalid("password", e.code(), e.message()))?;
    let hash = tokio::task::spawn_blocking(move || password::hash_password(&pw))
        .await
        .map_err(anyhow::Error::new)??;
    let id = UserId::generate();
    let now = now_us();
    let inserted = sqlx::query(
        "INSERT INTO users (id, kind, email, password_hash, role, patient_id, facility_id, status, \
         created_at_us, updated_at_us) VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8, $8)",
    )
    .bind(id.as_str())
    .bind(if role == Role::Patient { "patient" } else { "staff" })
    .bind(&email)
    .bind(hash)
    .bind(role.as_str())
    .bind(patient.as_ref().map(|p| p.as_str().to_owned()))
    .bind(facility.as_ref().map(|f| f.as_str().to_owned()))
    .bind(now)
    .execute(&state.db.pool)
    .await;
    match inserted {
        Err(e) if crate::db::is_unique_violation(&e) => {
            return Err(ApiError::invalid(
                "email",
                "email_taken",
                "A user with this email already exists.",
            ))
        }
        other => {
            other?;
        }
    }
    events::record(
        &state.db,
        Kind::UserCreated,
        Event {
            actor: Some(principal.actor_id()),
            subject: Some(id.as_str()),
            detail: Some(role.as_str()),
            ..Event::default()
        },
    )
    .await?;
    let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
        .bind(id.as_str())
        .fetch_one(&state.db.pool)
        .await?;
    Ok(Json(user_json(&row)?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub limit: Option<String>,
}

async fn list_users(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    principal.authorize(Action::UsersManage)?;
    let limit = parse_limit(q.limit.as_deref())?;
    let rows = sqlx::query(&format!(
        "SELECT {USER_COLUMNS} FROM users ORDER BY seq LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(&state.db.pool)
    .await?;
    let data = rows.iter().map(user_json).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({"object": "list", "data": data})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    pub role: Option<String>,
    pub status: Option<String>,
    pub facility: Option<String>,
}

async fn load_user(state: &AppState, id: &str) -> ApiResult<(UserId, sqlx::any::AnyRow)> {
    let id = UserId::parse_param(id, "id")?;
    let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
        .bind(id.as_str())
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| ApiError::not_found("id", "user"))?;
    Ok((id, row))
}

async fn update_user(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateUser>,
) -> ApiResult<Json<Value>> {
    principal.authorize(Action::UsersManage)?;
    let (id, row) = load_user(&state, &id).await?;
    let old_role = parse_role(&row.try_get::<String, _>("role")?)?;
    if let Some(role) = req.role.as_deref() {
        let role = parse_role(role)?;
        if (role == Role::Patient) != (old_role == Role::Patient) {
            return Err(ApiError::invalid(
                "role",
                "role_kind_change",
                "A staff account cannot become a patient account or the reverse.",
            ));
        }
        if role != old_role {
            sqlx::query("UPDATE users SET role = $1, updated_at_us = $2 WHERE id = $3")
                .bind(role.as_str())
                .bind(now_us())
                .bind(id.as_str())
                .execute(&state.db.pool)
                .await?;
            let detail = format!("{}->{}", old_role.as_str(), role.as_str());
            events::record(
                &state.db,
                Kind::RoleChanged,
                Event {
                    actor: Some(principal.actor_id()),
                    subject: Some(id.as_str()),
                    detail: Some(&detail),
                    ..Event::default()
                },
            )
            .await?;
            // New role, new sessions: nothing keeps acting with the old one.
            super::sessions::revoke_all_of(&state, &id).await?;
        }
    }
    if let Some(status) = req.status.as_deref() {
        if !matches!(status, "active" | "disabled") {
            return Err(ApiError::invalid(
                "status",
                "parameter_invalid",
                "Must be active or disabled.",
            ));
        }
        sqlx::query("UPDATE users SET status = $1, updated_at_us = $2 WHERE id = $3")
            .bind(status)
            .bind(now_us())
            .bind(id.as_str())
            .execute(&state.db.pool)
            .await?;
        if status == "disabled" {
            super::sessions::revoke_all_of(&state, &id).await?;
            events::record(
                &state.db,
                Kind::UserDisabled,
                Event {
                    actor: Some(principal.actor_id()),
                    subject: Some(id.as_str()),
                    ..Event::default()
                },
            )
            .await?;
        }
    }
    if let Some(facility) = req.facility.as_deref() {
        let facility = FacilityId::parse_param(facility, "facility")?;
        sqlx::query("UPDATE users SET facility_id = $1, updated_at_us = $2 WHERE id = $3")
            .bind(facility.as_str())
            .bind(now_us())
            .bind(id.as_str())
            .execute(&state.db.pool)
            .await?;
    }
    let (_, row) = load_user(&state, id.as_str()).await?;
    Ok(Json(user_json(&row)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPassword {
    pub password: String,
    pub current_password: Option<String>,
}

impl std::fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewPassword([redacted])")
    }
}

async fn store_password(
    state: &AppState,
    id: &UserId,
    email: &str,
    password: String,
) -> ApiResult<()> {
    let pw = Password::new(password)
        .map_err(|e| ApiError::invalid("password", e.code(), e.message()))?;
    password::check_new_password(&pw, email, &[])
        .map_err(|e| ApiError::invalid("password", e.code(), e.message()))?;
    let hash = tokio::task::spawn_blocking(move || password::hash_password(&pw))
        .await
        .map_err(anyhow::Error::new)??;
    sqlx::query(
        "UPDATE users SET password_hash = $1, password_reset_required = 0, updated_at_us = $2 WHERE id = $3",
    )
    .bind(hash)
    .bind(now_us())
    .bind(id.as_str())
    .execute(&state.db.pool)
    .await?;
    super::sessions::revoke_all_of(state, id).await?;
    Ok(())
}

async fn set_password(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<NewPassword>,
) -> ApiResult<Json<Value>> {
    principal.authorize(Action::UsersManage)?;
    let (id, row) = load_user(&state, &id).await?;
    // An admin sets staff passwords only: setting a patient's would let the admin sign in as
    // the patient and read their bills, which the admin role must not.
    if row.try_get::<String, _>("role")? == Role::Patient.as_str() {
        return Err(ApiError::invalid(
            "id",
            "patient_account",
            "A patient sets their own password; require a reset instead.",
        ));
    }
    let email: String = row.try_get("email")?;
    store_password(&state, &id, &email, req.password).await?;
    events::record(
        &state.db,
        Kind::PasswordChanged,
        Event {
            actor: Some(principal.actor_id()),
            subject: Some(id.as_str()),
            detail: Some("by_admin"),
            ..Event::default()
        },
    )
    .await?;
    Ok(Json(
        json!({"id": id.as_str(), "object": "user", "password_set": true}),
    ))
}

async fn change_own_password(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<NewPassword>,
) -> ApiResult<Json<Value>> {
    let user = match &principal.subject {
        Subject::Staff { user_id, .. }
        | Subject::Patient {
            user_id: Some(user_id),
            ..
        } => user_id.clone(),
        _ => {
            return Err(ApiError::invalid(
                "session",
                "no_user",
                "Only a signed-in user has a password.",
            ))
        }
    };
    let row = sqlx::query("SELECT email, password_hash FROM users WHERE id = $1")
        .bind(user.as_str())
        .fetch_one(&state.db.pool)
        .await?;
    let email: String = row.try_get(0)?;
    let hash: Option<String> = row.try_get(1)?;
    let current = req.current_password.ok_or_else(|| {
        ApiError::invalid(
            "current_password",
            "parameter_missing",
            "Missing required parameter.",
        )
    })?;
    let current = Password::new(current)
        .map_err(|e| ApiError::invalid("current_password", e.code(), e.message()))?;
    let ok =
        tokio::task::spawn_blocking(move || password::verify_password(hash.as_deref(), &current))
            .await
            .map_err(anyhow::Error::new)?;
    if !ok {
        return Err(ApiError::invalid(
            "current_password",
            "password_incorrect",
            "The current password is incorrect.",
        ));
    }
    store_password(&state, &user, &email, req.password).await?;
    events::record(
        &state.db,
        Kind::PasswordChanged,
        Event {
            actor: Some(user.as_str()),
            subject: Some(user.as_str()),
            detail: Some("by_user"),
            ..Event::default()
        },
    )
    .await?;
    Ok(Json(
        json!({"id": user.as_str(), "object": "user", "password_set": true}),
    ))
}

async fn require_reset(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    principal.authorize(Action::UsersManage)?;
    let (id, _) = load_user(&state, &id).await?;
    sqlx::query("UPDATE users SET password_reset_required = 1, updated_at_us = $1 WHERE id = $2")
        .bind(now_us())
        .bind(id.as_str())
        .execute(&state.db.pool)
        .await?;
    let revoked = super::sessions::revoke_all_of(&state, &id).await?;
    events::record(
        &state.db,
        Kind::PasswordResetRequired,
        Event {
            actor: Some(principal.actor_id()),
            subject: Some(id.as_str()),
            ..Event::default()
        },
    )
    .await?;
    Ok(Json(
        json!({"id": id.as_str(), "object": "user", "password_reset_required": true, "sessions_revoked": revoked}),
    ))
}

/// Access codes: 12 characters from an alphabet without look-alikes (~60 bits), in groups.
const ACCESS_CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";

fn generate_access_code() -> String {
    use rand::Rng;
    let mut rng = rand::rngs::OsRng;
    let chars: Vec<char> = (0..12)
        .map(|_| {
            let i = rng.gen_range(0..ACCESS_CODE_ALPHABET.len());
            char::from(ACCESS_CODE_ALPHABET.get(i).copied().unwrap_or(b'A'))
        })
        .collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// A new statement access code for a patient, shown once (replacing any earlier one).
async fn new_access_code(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let state = &state;
    principal.authorize(Action::PatientsWrite)?;
    let id = PatientId::parse_param(&id, "id")?;
    let facility: Option<Option<String>> =
        sqlx::query_scalar("SELECT facility_id FROM patients WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&state.db.pool)
            .await?;
    let facility = facility.ok_or_else(|| ApiError::not_found("id", "patient"))?;
    principal.ensure_visible(id.as_str(), facility.as_deref(), "id", "patient")?;
    let code = generate_access_code();
    sqlx::query("UPDATE patients SET access_code_sha256 = $1 WHERE id = $2")
        .bind(sha256_hex(&super::normalize_access_code(&code)))
        .bind(id.as_str())
        .execute(&state.db.pool)
        .await?;
    Ok(Json(
        json!({"object": "access_code", "patient": id.as_str(), "access_code": code}),
    ))
}

async fn list_security_events(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    principal.authorize(Action::AuditRead)?;
    let limit = parse_limit(q.limit.as_deref())?;
    let rows = sqlx::query(
        "SELECT seq, at_us, kind, actor, subject, ip, detail, request_id FROM security_events \
         ORDER BY seq DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&state.db.pool)
    .await?;
    let mut data = Vec::with_capacity(rows.len());
    for r in rows {
        data.push(json!({
            "seq": r.try_get::<i64, _>(0)?,
            "at": us_to_rfc3339(r.try_get(1)?),
            "kind": r.try_get::<String, _>(2)?,
            "actor": r.try_get::<Option<String>, _>(3)?,
            "subject": r.try_get::<Option<String>, _>(4)?,
            "ip": r.try_get::<Option<String>, _>(5)?,
            "detail": r.try_get::<Option<String>, _>(6)?,
            "request_id": r.try_get::<Option<String>, _>(7)?,
        }));
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateFacility {
    pub name: String,
}

/// A facility: staff bound to it see only its patients.
async fn create_facility(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<CreateFacility>,
) -> ApiResult<Json<Value>> {
    principal.authorize(Action::UsersManage)?;
    let name = crate::api::text_field("name", &req.name, 200)?;
    let id = FacilityId::generate();
    sqlx::query("INSERT INTO facilities (id, name, created_at_us) VALUES ($1, $2, $3)")
        .bind(id.as_str())
        .bind(&name)
        .bind(now_us())
        .execute(&state.db.pool)
        .await?;
    Ok(Json(
        json!({"id": id.as_str(), "object": "facility", "name": name}),
    ))
}

async fn list_facilities(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<Value>> {
    principal.authorize(Action::UsersManage)?;
    let rows = sqlx::query("SELECT id, name FROM facilities ORDER BY id")
        .fetch_all(&state.db.pool)
        .await?;
    let mut data = Vec::with_capacity(rows.len());
    for r in rows {
        data.push(json!({"id": r.try_get::<String, _>(0)?, "object": "facility", "name": r.try_get::<String, _>(1)?}));
    }
    Ok(Json(json!({"object": "list", "data": data})))
}
