//! Sign-in, MFA and sessions.
//!
//! - `POST /v1/sessions` `{email, password, kind?}`: unknown user and wrong password get the same
//!   401, after the same argon2id work (a dummy hash stands in for a missing user). Staff then
//!   need TOTP: `stage = mfa_enrollment` (first sign-in: enrol with a QR code) or `mfa_pending`.
//!   Patients without MFA go straight to `active`.
//! - `POST /v1/sessions/mfa` `{code}` or `{recovery_code}` completes sign-in; the session gets a
//!   new token (the pre-MFA token dies).
//! - `POST /v1/sessions/mfa/enrollment` starts enrolment (otpauth URL and QR PNG);
//!   `POST /v1/sessions/mfa/enrollment/confirm` `{code}` finishes it and shows ten single-use
//!   recovery codes once (stored as SHA-256).
//! - `POST /v1/sessions/guest` `{access_code, date_of_birth}`: guest pay, a one-hour session that
//!   sees one patient's bills.
//! - `DELETE /v1/sessions/current` signs out; `POST /v1/sessions/revoke_all` signs out everywhere.
//!
//! Sessions are `cookie` (web pages: `__Host-` cookie, Secure, HttpOnly, SameSite=Strict, plus a
//! CSRF token for state changes) or `bearer` (API clients). Each has an idle timeout (15 minutes
//! by default) and an absolute lifetime (12 hours); revocation is server-side.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::events::{self, Event, Kind};
use super::password::{self, Password};
use super::totp;
use crate::api::{date_field, ApiJson};
use crate::auth::{
    digest_eq, sha256_hex, Principal, Role, Subject, SESSION_COOKIE, SESSION_TOKEN_PREFIX,
};
use crate::db::{now_us, us_to_rfc3339};
use crate::error::{ApiError, ApiResult, ErrorType};
use crate::ids::{random_base62, FacilityId, PatientId, SessionId, UserId};
use crate::AppState;

const TOKEN_RANDOM_LEN: usize = 43;
const CSRF_RANDOM_LEN: usize = 32;
/// A sign-in waiting for its second factor lasts this long.
const PENDING_LIFETIME: Duration = Duration::from_secs(300);
/// Guest pay sessions: one bill, one hour.
const GUEST_LIFETIME: Duration = Duration::from_secs(3600);
const ACCESS_CODE_CHARS_MAX: usize = 64;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/sessions", post(sign_in))
        .route("/v1/sessions/mfa", post(verify_mfa))
        .route("/v1/sessions/mfa/enrollment", post(start_enrollment))
        .route(
            "/v1/sessions/mfa/enrollment/confirm",
            post(confirm_enrollment),
        )
        .route("/v1/sessions/guest", post(guest))
        .route("/v1/sessions/current", delete(sign_out))
        .route("/v1/sessions/revoke_all", post(sign_out_everywhere))
}

/// Session settings, from configuration.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub idle_timeout: Duration,
    pub lifetime: Duration,
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn client_ip(addr: &SocketAddr) -> String {
    addr.ip().to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    MfaPending,
    MfaEnrollment,
    Active,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::MfaPending => "mfa_pending",
            Stage::MfaEnrollment => "mfa_enrollment",
            Stage::Active => "active",
        }
    }
}

/// A session row joined with its user.
struct SessionRow {
    id: SessionId,
    user_id: Option<UserId>,
    guest_patient: Option<PatientId>,
    kind: String,
    stage: String,
    csrf_sha256: Option<String>,
    last_seen_at_us: i64,
    idle_timeout_us: i64,
    expires_at_us: i64,
    revoked: bool,
    role: Option<String>,
    user_status: Option<String>,
    patient_id: Option<String>,
    facility_id: Option<String>,
    email: Option<String>,
}

fn session_from_row(r: &AnyRow) -> Result<SessionRow, sqlx::Error> {
    Ok(SessionRow {
        id: SessionId::from_db(r.try_get("id")?),
        user_id: r
            .try_get::<Option<String>, _>("user_id")?
            .map(UserId::from_db),
        guest_patient: r
            .try_get::<Option<String>, _>("guest_patient_id")?
            .map(PatientId::from_db),
        kind: r.try_get("kind")?,
        stage: r.try_get("stage")?,
        csrf_sha256: r.try_get("csrf_sha256")?,
        last_seen_at_us: r.try_get("last_seen_at_us")?,
        idle_timeout_us: r.try_get("idle_timeout_us")?,
        expires_at_us: r.try_get("expires_at_us")?,
        revoked: r.try_get::<Option<i64>, _>("revoked_at_us")?.is_some(),
        role: r.try_get("role")?,
        user_status: r.try_get("status")?,
        patient_id: r.try_get("patient_id")?,
        facility_id: r.try_get("facility_id")?,
        email: r.try_get("email")?,
    })
}

fn session_invalid() -> ApiError {
    ApiError::simple(
        StatusCode::UNAUTHORIZED,
        ErrorType::AuthenticationError,
        "session_invalid",
        "The session is invalid, expired or signed out. Sign in again.",
    )
}

/// Finds the live session of `token` (any stage). Expired or idle sessions are refused.
async fn find(state: &AppState, token: &str) -> ApiResult<SessionRow> {
    let row = sqlx::query(
        "SELECT s.id, s.user_id, s.guest_patient_id, s.kind, s.stage, s.csrf_sha256, \
           s.last_seen_at_us, s.idle_timeout_us, s.expires_at_us, s.revoked_at_us, \
           u.role, u.status, u.patient_id, u.facility_id, u.email \
         FROM sessions s LEFT JOIN users u ON u.id = s.user_id WHERE s.token_sha256 = $1",
    )
    .bind(sha256_hex(token))
    .fetch_optional(&state.db.pool)
    .await?;
    let s = row
        .as_ref()
        .map(session_from_row)
        .transpose()?
        .ok_or_else(session_invalid)?;
    let now = now_us();
    let idle = now.saturating_sub(s.last_seen_at_us) > s.idle_timeout_us;
    if s.revoked || now >= s.expires_at_us || idle {
        return Err(session_invalid());
    }
    if s.user_id.is_some() && s.user_status.as_deref() != Some("active") {
        return Err(session_invalid());
    }
    if now.saturating_sub(s.last_seen_at_us) > 30_000_000 {
        sqlx::query("UPDATE sessions SET last_seen_at_us = $1 WHERE id = $2")
            .bind(now)
            .bind(s.id.as_str())
            .execute(&state.db.pool)
            .await?;
    }
    Ok(s)
}

/// The principal of an active session; `csrf` is the header a cookie session's state change
/// carried (`None` for reads and bearer sessions).
pub async fn authenticate(
    state: &AppState,
    token: &str,
    csrf: Option<&str>,
) -> ApiResult<Principal> {
    let s = find(state, token).await?;
    if s.kind == "cookie" {
        if let Some(sent) = csrf {
            let ok = s
                .csrf_sha256
                .as_deref()
                .is_some_and(|expected| digest_eq(&sha256_hex(sent), expected));
            if !ok {
                return Err(ApiError::simple(
                    StatusCode::FORBIDDEN,
                    ErrorType::PermissionError,
                    "csrf_token_invalid",
                    "A state change from the web session needs its X-CSRF-Token header.",
                ));
            }
        }
    }
    if s.stage != Stage::Active.as_str() {
        return Err(ApiError::simple(
            StatusCode::UNAUTHORIZED,
            ErrorType::AuthenticationError,
            "mfa_required",
            "Complete sign-in with your authenticator code first.",
        ));
    }
    principal_of(&s).map(|subject| Principal::new(subject, Some(s.id.clone())))
}

fn principal_of(s: &SessionRow) -> ApiResult<Subject> {
    if let Some(patient) = &s.guest_patient {
        return Ok(Subject::Patient {
            user_id: None,
            patient_id: patient.clone(),
        });
    }
    let user_id = s.user_id.clone().ok_or_else(session_invalid)?;
    let role = s
        .role
        .as_deref()
        .and_then(Role::parse)
        .ok_or_else(|| anyhow::anyhow!("session user without a valid role"))?;
    Ok(match role {
        Role::Patient => Subject::Patient {
            user_id: Some(user_id),
            patient_id: PatientId::from_db(
                s.patient_id
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("patient user without patient"))?,
            ),
        },
        role => Subject::Staff {
            user_id,
            role,
            facility: s.facility_id.clone().map(FacilityId::from_db),
        },
    })
}

/// The session token a request carries (bearer or cookie), for the sign-in steps that work on
/// a session that is not active yet.
fn token_of(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return v
            .strip_prefix("Bearer ")
            .map(str::trim)
            .filter(|t| t.starts_with(SESSION_TOKEN_PREFIX) && t.len() <= 128)
            .map(str::to_owned);
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|p| p.trim().split_once('='))
        .find(|(n, t)| {
            *n == SESSION_COOKIE && t.starts_with(SESSION_TOKEN_PREFIX) && t.len() <= 128
        })
        .map(|(_, t)| t.to_owned())
}

/// A new session; returns its row id, token and (cookie sessions) CSRF token.
struct Created {
    id: SessionId,
    token: String,
    csrf: Option<String>,
    expires_at_us: i64,
}

async fn create(
    state: &AppState,
    user: Option<&UserId>,
    guest: Option<&PatientId>,
    cookie: bool,
    stage: Stage,
    ip: &str,
) -> ApiResult<Created> {
    let settings = &state.identity.sessions;
    let now = now_us();
    let lifetime = match (stage, guest) {
        (Stage::Active, None) => settings.lifetime,
        (Stage::Active, Some(_)) => GUEST_LIFETIME,
        _ => PENDING_LIFETIME,
    };
    let id = SessionId::generate();
    let token = format!("{SESSION_TOKEN_PREFIX}{}", random_base62(TOKEN_RANDOM_LEN));
    let csrf = cookie.then(|| random_base62(CSRF_RANDOM_LEN));
    let expires_at_us = now.saturating_add(micros(lifetime));
    sqlx::query(
        "INSERT INTO sessions (id, token_sha256, user_id, guest_patient_id, kind, stage, csrf_sha256, \
         ip, created_at_us, last_seen_at_us, idle_timeout_us, expires_at_us) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11)",
    )
    .bind(id.as_str())
    .bind(sha256_hex(&token))
    .bind(user.map(|u| u.as_str().to_owned()))
    .bind(guest.map(|p| p.as_str().to_owned()))
    .bind(if cookie { "cookie" } else { "bearer" })
    .bind(stage.as_str())
    .bind(csrf.as_deref().map(sha256_hex))
    .bind(ip)
    .bind(now)
    .bind(micros(settings.idle_timeout.min(lifetime)))
    .bind(expires_at_us)
    .execute(&state.db.pool)
    .await?;
    Ok(Created {
        id,
        token,
        csrf,
        expires_at_us,
    })
}

async fn revoke(state: &AppState, id: &SessionId) -> ApiResult<()> {
    sqlx::query("UPDATE sessions SET revoked_at_us = $1 WHERE id = $2 AND revoked_at_us IS NULL")
        .bind(now_us())
        .bind(id.as_str())
        .execute(&state.db.pool)
        .await?;
    Ok(())
}

/// The answer to a sign-in step: the session, and for cookie sessions the cookie itself.
fn session_response(
    created: &Created,
    stage: Stage,
    cookie: bool,
    extra: serde_json::Value,
) -> Response {
    let mut body = json!({
        "object": "session",
        "id": created.id.as_str(),
        "stage": stage.as_str(),
        "expires_at": us_to_rfc3339(created.expires_at_us),
    });
    if let (Some(map), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            map.insert(k.clone(), v.clone());
        }
    }
    if let Some(map) = body.as_object_mut() {
        if cookie {
            map.insert("csrf_token".into(), json!(created.csrf));
        } else {
            map.insert("token".into(), json!(created.token));
        }
    }
    let mut response = (StatusCode::OK, Json(body)).into_response();
    if cookie {
        let max_age = (created.expires_at_us - now_us()).max(0) / 1_000_000;
        let value = format!(
            "{SESSION_COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}",
            created.token
        );
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(header::SET_COOKIE, v);
        }
    }
    response
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    pub email: String,
    pub password: String,
    /// `bearer` (default, API clients) or `cookie` (web pages).
    pub kind: Option<String>,
}

impl std::fmt::Debug for SignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SignIn([redacted])")
    }
}

fn invalid_credentials() -> ApiError {
    ApiError::simple(
        StatusCode::UNAUTHORIZED,
        ErrorType::AuthenticationError,
        "invalid_credentials",
        "The email or password is incorrect.",
    )
}

fn rate_limited(wait: Duration) -> ApiError {
    ApiError::rate_limited(wait.as_secs().max(1))
}

fn wants_cookie(kind: Option<&str>) -> ApiResult<bool> {
    match kind {
        None | Some("bearer") => Ok(false),
        Some("cookie") => Ok(true),
        Some(_) => Err(ApiError::invalid(
            "kind",
            "parameter_invalid",
            "Must be bearer or cookie.",
        )),
    }
}

async fn sign_in(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    ApiJson(req): ApiJson<SignIn>,
) -> ApiResult<Response> {
    let ip = client_ip(&addr);
    let cookie = wants_cookie(req.kind.as_deref())?;
    // Bounded before anything else: no unbounded argon2 input, no giant email in a log.
    let email = password::normalize_email(&req.email)
        .map_err(|_| ApiError::invalid("email", "email_invalid", "Not a valid email address."))?;
    let candidate = Password::new(req.password)
        .map_err(|e| ApiError::invalid("password", e.code(), e.message()))?;
    if let Err(wait) = state.identity.throttle.check(&email, &ip) {
        events::record(
            &state.db,
            Kind::SigninLocked,
            Event {
                ip: Some(&ip),
                detail: Some("throttled"),
                ..Event::default()
            },
        )
        .await?;
        return Err(rate_limited(wait));
    }
    let user = sqlx::query(
        "SELECT id, kind, role, password_hash, status, mfa_enrolled_at_us, password_reset_required \
         FROM users WHERE email = $1",
    )
    .bind(&email)
    .fetch_optional(&state.db.pool)
    .await?;
    let hash: Option<String> = match &user {
        Some(u) => u.try_get("password_hash")?,
        None => None,
    };
    // The same argon2id work whether or not the user exists (a dummy hash stands in).
    let hash_for_verify = hash.clone();
    let verified = tokio::task::spawn_blocking(move || {
        password::verify_password(hash_for_verify.as_deref(), &candidate)
    })
    .await
    .map_err(anyhow::Error::new)?;
    let active = match &user {
        Some(u) => u.try_get::<String, _>("status")? == "active",
        None => false,
    };
    let Some(user) = user.filter(|_| verified && active) else {
        state.identity.throttle.failed(&email, &ip);
        events::record(
            &state.db,
            Kind::SigninFailed,
            Event {
                subject: None,
                ip: Some(&ip),
                detail: Some("invalid_credentials"),
                ..Event::default()
            },
        )
        .await?;
        return Err(invalid_credentials());
    };
    state.identity.throttle.succeeded(&email);
    let user_id = UserId::from_db(user.try_get("id")?);
    let is_staff = user.try_get::<String, _>("kind")? == "staff";
    let enrolled = user
        .try_get::<Option<i64>, _>("mfa_enrolled_at_us")?
        .is_some();
    if user.try_get::<i64, _>("password_reset_required")? == 1 {
        events::record(
            &state.db,
            Kind::SigninFailed,
            Event {
                subject: Some(user_id.as_str()),
                ip: Some(&ip),
                detail: Some("password_reset_required"),
                ..Event::default()
            },
        )
        .await?;
        return Err(ApiError::simple(
            StatusCode::FORBIDDEN,
            ErrorType::AuthenticationError,
            "password_reset_required",
            "Your password must be reset; ask an administrator for a new one.",
        ));
    }
    let stage = match (is_staff, enrolled) {
        (_, true) => Stage::MfaPending,
        (true, false) => Stage::MfaEnrollment,
        (false, false) => Stage::Active,
    };
    let created = create(&state, Some(&user_id), None, cookie, stage, &ip).await?;
    events::record(
        &state.db,
        if stage == Stage::Active {
            Kind::SigninSucceeded
        } else {
            Kind::PasswordAccepted
        },
        Event {
            actor: Some(user_id.as_str()),
            subject: Some(created.id.as_str()),
            ip: Some(&ip),
            detail: Some(stage.as_str()),
        },
    )
    .await?;
    Ok(session_response(
        &created,
        stage,
        cookie,
        json!({"user": user_id.as_str()}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MfaCode {
    pub code: Option<String>,
    pub recovery_code: Option<String>,
}

impl std::fmt::Debug for MfaCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MfaCode([redacted])")
    }
}

fn mfa_failed() -> ApiError {
    ApiError::simple(
        StatusCode::UNAUTHORIZED,
        ErrorType::AuthenticationError,
        "mfa_code_invalid",
        "The authenticator or recovery code is incorrect or already used.",
    )
}

/// The session of a sign-in step in `stages`.
async fn step_session(
    state: &AppState,
    headers: &HeaderMap,
    stages: &[Stage],
) -> ApiResult<SessionRow> {
    let token = token_of(headers).ok_or_else(session_invalid)?;
    let s = find(state, &token).await?;
    if !stages.iter().any(|st| st.as_str() == s.stage) || s.user_id.is_none() {
        return Err(ApiError::simple(
            StatusCode::CONFLICT,
            ErrorType::InvalidRequestError,
            "session_stage_invalid",
            "This session is not at this step of sign-in.",
        ));
    }
    Ok(s)
}

async fn verify_mfa(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<MfaCode>,
) -> ApiResult<Response> {
    let ip = client_ip(&addr);
    let s = step_session(&state, &headers, &[Stage::MfaPending]).await?;
    let user_id = s.user_id.clone().ok_or_else(session_invalid)?;
    let account = s.email.clone().unwrap_or_default();
    if let Err(wait) = state.identity.throttle.check(&account, &ip) {
        return Err(rate_limited(wait));
    }
    let ok = match (&req.code, &req.recovery_code) {
        (Some(code), None) => check_totp(&state, &user_id, code).await?,
        (None, Some(code)) => use_recovery_code(&state, &user_id, code).await?,
        _ => {
            return Err(ApiError::invalid(
                "code",
                "parameter_missing",
                "Send either `code` or `recovery_code`.",
            ))
        }
    };
    if !ok {
        state.identity.throttle.failed(&account, &ip);
        events::record(
            &state.db,
            Kind::MfaFailed,
            Event {
                actor: Some(user_id.as_str()),
                ip: Some(&ip),
                ..Event::default()
            },
        )
        .await?;
        return Err(mfa_failed());
    }
    state.identity.throttle.succeeded(&account);
    let cookie = s.kind == "cookie";
    revoke(&state, &s.id).await?;
    let created = create(&state, Some(&user_id), None, cookie, Stage::Active, &ip).await?;
    events::record(
        &state.db,
        if req.recovery_code.is_some() {
            Kind::RecoveryCodeUsed
        } else {
            Kind::MfaSucceeded
        },
        Event {
            actor: Some(user_id.as_str()),
            subject: Some(created.id.as_str()),
            ip: Some(&ip),
            ..Event::default()
        },
    )
    .await?;
    Ok(session_response(
        &created,
        Stage::Active,
        cookie,
        json!({"user": user_id.as_str()}),
    ))
}

use crate::crypto::store::SYS_TOTP;
const TOTP_COLUMN: &str = "users.totp_secret";

/// Checks a TOTP code and records its time step, so it can never be used again.
async fn check_totp(state: &AppState, user: &UserId, code: &str) -> ApiResult<bool> {
    let row = sqlx::query("SELECT totp_secret, totp_last_step FROM users WHERE id = $1")
        .bind(user.as_str())
        .fetch_one(&state.db.pool)
        .await?;
    let sealed: Option<String> = row.try_get(0)?;
    let last: Option<i64> = row.try_get(1)?;
    let Some(sealed) = sealed else {
        return Ok(false);
    };
    // The seed is stored sealed under the sys:totp data key (src/crypto).
    let key = state.keys.system_key(SYS_TOTP).await?;
    let field = crate::crypto::Field::new(TOTP_COLUMN, SYS_TOTP, user.as_str());
    let base32 = match key.open(field, &sealed) {
        Ok(b) => b,
        Err(e) => {
            state
                .keys
                .report_unreadable(user.as_str(), TOTP_COLUMN, &e)
                .await;
            return Ok(false);
        }
    };
    let Some(secret) = totp::TotpSecret::from_base32(&base32) else {
        return Ok(false);
    };
    let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
    match totp::verify(&secret, code, now, last) {
        Ok(step) => {
            // Compare-and-set: two requests with the same code cannot both win.
            let updated = sqlx::query(
                "UPDATE users SET totp_last_step = $1 WHERE id = $2 \
                 AND (totp_last_step IS NULL OR totp_last_step < $1)",
            )
            .bind(step)
            .bind(user.as_str())
            .execute(&state.db.pool)
            .await?;
            Ok(updated.rows_affected() == 1)
        }
        Err(totp::TotpError::Malformed) => Err(ApiError::invalid(
            "code",
            "code_malformed",
            "An authenticator code is 6 digits.",
        )),
        Err(_) => Ok(false),
    }
}

async fn use_recovery_code(state: &AppState, user: &UserId, code: &str) -> ApiResult<bool> {
    let Some(normalized) = totp::normalize_recovery_code(code) else {
        return Err(ApiError::invalid(
            "recovery_code",
            "code_malformed",
            "Not a recovery code.",
        ));
    };
    let used = sqlx::query(
        "UPDATE recovery_codes SET used_at_us = $1 WHERE user_id = $2 AND code_sha256 = $3 \
         AND used_at_us IS NULL",
    )
    .bind(now_us())
    .bind(user.as_str())
    .bind(totp::recovery_code_digest(&normalized))
    .execute(&state.db.pool)
    .await?;
    Ok(used.rows_affected() == 1)
}

async fn start_enrollment(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<serde_json::Value>> {
    let s = step_session(&state, &headers, &[Stage::MfaEnrollment, Stage::Active]).await?;
    let user_id = s.user_id.clone().ok_or_else(session_invalid)?;
    let enrolled: Option<i64> =
        sqlx::query_scalar("SELECT mfa_enrolled_at_us FROM users WHERE id = $1")
            .bind(user_id.as_str())
            .fetch_one(&state.db.pool)
            .await?;
    if enrolled.is_some() {
        return Err(ApiError::simple(
            StatusCode::CONFLICT,
            ErrorType::InvalidRequestError,
            "mfa_already_enrolled",
            "An authenticator is already enrolled.",
        ));
    }
    let secret = totp::TotpSecret::generate();
    let enrollment = totp::enrollment(&secret, s.email.as_deref().unwrap_or(""), "carebill")
        .map_err(|e| anyhow::anyhow!("enrollment: {e}"))?;
    let sealed = state
        .keys
        .system_key(SYS_TOTP)
        .await?
        .seal(
            crate::crypto::Field::new(TOTP_COLUMN, SYS_TOTP, user_id.as_str()),
            &secret.to_base32(),
        )
        .map_err(|e| ApiError::Internal(e.into()))?;
    sqlx::query("UPDATE users SET totp_secret = $1, updated_at_us = $2 WHERE id = $3")
        .bind(sealed)
        .bind(now_us())
        .bind(user_id.as_str())
        .execute(&state.db.pool)
        .await?;
    Ok(Json(json!({
        "object": "mfa_enrollment",
        "otpauth_url": enrollment.otpauth_url,
        "qr_png_base64": enrollment.qr_png_base64,
    })))
}

async fn confirm_enrollment(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<MfaCode>,
) -> ApiResult<Response> {
    let ip = client_ip(&addr);
    let s = step_session(&state, &headers, &[Stage::MfaEnrollment, Stage::Active]).await?;
    let user_id = s.user_id.clone().ok_or_else(session_invalid)?;
    let code = req.code.as_deref().ok_or_else(|| {
        ApiError::invalid("code", "parameter_missing", "Missing required parameter.")
    })?;
    if !check_totp(&state, &user_id, code).await? {
        events::record(
            &state.db,
            Kind::MfaFailed,
            Event {
                actor: Some(user_id.as_str()),
                ip: Some(&ip),
                detail: Some("enrollment"),
                ..Event::default()
            },
        )
        .await?;
        return Err(mfa_failed());
    }
    let codes = totp::new_recovery_codes(10);
    let now = now_us();
    let mut tx = state.db.begin_write().await?;
    sqlx::query("UPDATE users SET mfa_enrolled_at_us = $1, updated_at_us = $1 WHERE id = $2")
        .bind(now)
        .bind(user_id.as_str())
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user_id.as_str())
        .execute(&mut *tx)
        .await?;
    for code in &codes {
        let normalized = totp::normalize_recovery_code(code)
            .ok_or_else(|| anyhow::anyhow!("generated recovery code does not normalize"))?;
        sqlx::query(
            "INSERT INTO recovery_codes (user_id, code_sha256, created_at_us) VALUES ($1, $2, $3)",
        )
        .bind(user_id.as_str())
        .bind(totp::recovery_code_digest(&normalized))
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    events::record(
        &state.db,
        Kind::MfaEnrolled,
        Event {
            actor: Some(user_id.as_str()),
            ip: Some(&ip),
            ..Event::default()
        },
    )
    .await?;
    let cookie = s.kind == "cookie";
    revoke(&state, &s.id).await?;
    let created = create(&state, Some(&user_id), None, cookie, Stage::Active, &ip).await?;
    Ok(session_response(
        &created,
        Stage::Active,
        cookie,
        json!({"user": user_id.as_str(), "recovery_codes": codes}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guest {
    pub access_code: String,
    pub date_of_birth: String,
    pub kind: Option<String>,
}

impl std::fmt::Debug for Guest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Guest([redacted])")
    }
}

/// Guest pay: the statement's access code and the patient's date of birth.
async fn guest(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    ApiJson(req): ApiJson<Guest>,
) -> ApiResult<Response> {
    let ip = client_ip(&addr);
    let cookie = wants_cookie(req.kind.as_deref())?;
    if req.access_code.len() > ACCESS_CODE_CHARS_MAX {
        return Err(ApiError::invalid(
            "access_code",
            "parameter_too_long",
            "Not an access code.",
        ));
    }
    let dob = date_field("date_of_birth", &req.date_of_birth)?.to_string();
    let code = super::normalize_access_code(&req.access_code);
    let account = format!("guest:{}", sha256_hex(&code));
    if let Err(wait) = state.identity.throttle.check(&account, &ip) {
        return Err(rate_limited(wait));
    }
    let row = sqlx::query("SELECT id FROM patients WHERE access_code_sha256 = $1")
        .bind(sha256_hex(&code))
        .fetch_optional(&state.db.pool)
        .await?;
    let matched = match &row {
        Some(r) => {
            let id: String = r.try_get(0)?;
            // The date of birth is stored encrypted: open it (an erased or unreadable one never
            // matches).
            match crate::patients::date_of_birth(&state.keys, &state.db, &id).await? {
                Some(stored) => digest_eq(&sha256_hex(stored.as_str()), &sha256_hex(&dob)),
                None => false,
            }
        }
        None => false,
    };
    let Some(row) = row.filter(|_| matched) else {
        state.identity.throttle.failed(&account, &ip);
        events::record(
            &state.db,
            Kind::GuestAccessFailed,
            Event {
                ip: Some(&ip),
                ..Event::default()
            },
        )
        .await?;
        return Err(ApiError::simple(
            StatusCode::UNAUTHORIZED,
            ErrorType::AuthenticationError,
            "guest_access_invalid",
            "The access code or date of birth is incorrect.",
        ));
    };
    let patient = PatientId::from_db(row.try_get(0)?);
    let created = create(&state, None, Some(&patient), cookie, Stage::Active, &ip).await?;
    events::record(
        &state.db,
        Kind::GuestAccessGranted,
        Event {
            subject: Some(patient.as_str()),
            ip: Some(&ip),
            ..Event::default()
        },
    )
    .await?;
    Ok(session_response(
        &created,
        Stage::Active,
        cookie,
        json!({"patient": patient.as_str()}),
    ))
}

async fn sign_out(State(state): State<AppState>, principal: Principal) -> ApiResult<StatusCode> {
    let id = principal.session_id.clone().ok_or_else(|| {
        ApiError::invalid(
            "session",
            "no_session",
            "This request was not made with a session.",
        )
    })?;
    revoke(&state, &id).await?;
    events::record(
        &state.db,
        Kind::SignedOut,
        Event {
            actor: Some(principal.actor_id()),
            subject: Some(id.as_str()),
            ..Event::default()
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn sign_out_everywhere(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<serde_json::Value>> {
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
                "Only a signed-in user can sign out everywhere.",
            ))
        }
    };
    let revoked = revoke_all_of(&state, &user).await?;
    events::record(
        &state.db,
        Kind::SignedOutEverywhere,
        Event {
            actor: Some(principal.actor_id()),
            subject: Some(user.as_str()),
            ..Event::default()
        },
    )
    .await?;
    Ok(Json(
        json!({"object": "sessions_revoked", "revoked": revoked}),
    ))
}

/// Revokes every session of `user`; returns how many.
pub async fn revoke_all_of(state: &AppState, user: &UserId) -> ApiResult<u64> {
    let r = sqlx::query(
        "UPDATE sessions SET revoked_at_us = $1 WHERE user_id = $2 AND revoked_at_us IS NULL",
    )
    .bind(now_us())
    .bind(user.as_str())
    .execute(&state.db.pool)
    .await?;
    Ok(r.rows_affected())
}

/// Lets handlers in other modules get the session token of a request.
pub fn request_token(parts: &Parts) -> Option<String> {
    token_of(&parts.headers)
}
