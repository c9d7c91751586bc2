//! Authentication and authorization of the core: bearer API keys with a role.
//!
//! Keys look like `cbk_` + 32 base62 characters (~190 random bits). Only their SHA-256 is
//! stored; at that entropy a slow password hash would add nothing. The identity issue replaces
//! this with users, MFA and record-level rules; the one place that decides what a role may do,
//! [`authorize`], is where that model will plug in. Handlers never compare roles themselves.

use std::fmt;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::db::{now_us, Db};
use crate::error::{ApiError, ErrorType};
use crate::ids::{random_base62, ApiKeyId};
use crate::AppState;

/// Prefix of every API key secret, so a leaked key is recognisable by secret scanners.
pub const API_KEY_PREFIX: &str = "cbk_";
const API_KEY_RANDOM_LEN: usize = 32;
/// `last_used_at` is written at most this often per key, to keep reads read-only.
const LAST_USED_RESOLUTION_US: i64 = 60_000_000;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
#[clap(rename_all = "snake_case")]
pub enum Role {
    Admin,
    BillingClerk,
    BillingManager,
    Accountant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::BillingClerk => "billing_clerk",
            Role::BillingManager => "billing_manager",
            Role::Accountant => "accountant",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        [
            Role::Admin,
            Role::BillingClerk,
            Role::BillingManager,
            Role::Accountant,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// What a request wants to do. Every handler names its action; [`authorize`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    PatientsRead,
    PatientsWrite,
    InvoicesRead,
    InvoicesWrite,
    PaymentsRead,
    PaymentsCreate,
    RefundsRead,
    RefundsCreate,
    LedgerRead,
    /// Pull ledger exports (pseudonymous).
    LedgerExport,
    /// Exports that name patients and show card brand and last four.
    LedgerExportIdentified,
}

/// The permission table of the core, in one place.
pub fn allowed(role: Role, action: Action) -> bool {
    use Action::*;
    use Role::*;
    match action {
        PatientsRead | PatientsWrite | InvoicesRead | InvoicesWrite | PaymentsRead
        | PaymentsCreate | RefundsRead => matches!(role, Admin | BillingClerk | BillingManager),
        RefundsCreate => matches!(role, Admin | BillingManager),
        LedgerRead | LedgerExport => matches!(role, Admin | BillingManager | Accountant),
        // Until scoped keys (`exports:identified`) land with identity and access: the billing
        // manager only. The accountant's system works with pseudonyms.
        LedgerExportIdentified => matches!(role, BillingManager),
    }
}

/// The authenticated caller.
#[derive(Clone)]
pub struct Principal {
    pub key_id: ApiKeyId,
    pub role: Role,
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("key_id", &self.key_id.as_str())
            .field("role", &self.role)
            .finish()
    }
}

impl Principal {
    /// Refuses with 403 unless the caller's role may perform `action`.
    pub fn authorize(&self, action: Action) -> Result<(), ApiError> {
        authorize(self, action)
    }

    /// The scope of this caller's idempotency keys.
    pub fn idempotency_scope(&self) -> &str {
        self.key_id.as_str()
    }

    /// Who is acting, as the audit trail and dual control name them (an API key id today; a
    /// user id for signed-in staff).
    pub fn actor_id(&self) -> &str {
        self.key_id.as_str()
    }
}

pub fn authorize(principal: &Principal, action: Action) -> Result<(), ApiError> {
    if allowed(principal.role, action) {
        Ok(())
    } else {
        tracing::info!(
            key_id = principal.key_id.as_str(),
            ?action,
            "permission denied"
        );
        Err(ApiError::simple(
            StatusCode::FORBIDDEN,
            ErrorType::PermissionError,
            "permission_denied",
            "The API key's role does not permit this request.",
        ))
    }
}

fn unauthenticated(message: &str) -> ApiError {
    ApiError::simple(
        StatusCode::UNAUTHORIZED,
        ErrorType::AuthenticationError,
        "api_key_invalid",
        message,
    )
}

fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(p) = parts.extensions.get::<Principal>() {
            return Ok(p.clone());
        }
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthenticated("Send an API key as `Authorization: Bearer <key>`."))?;
        let secret = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|s| s.starts_with(API_KEY_PREFIX) && s.len() <= 128)
            .ok_or_else(|| unauthenticated("The API key is malformed."))?;
        let principal = lookup(&state.db, secret)
            .await?
            .ok_or_else(|| unauthenticated("The API key is invalid or revoked."))?;
        parts.extensions.insert(principal.clone());
        Ok(principal)
    }
}

async fn lookup(db: &Db, secret: &str) -> Result<Option<Principal>, ApiError> {
    let digest = sha256_hex(secret);
    let row = sqlx::query(
        "SELECT id, role, last_used_at_us FROM api_keys WHERE secret_sha256 = $1 AND revoked_at_us IS NULL",
    )
    .bind(&digest)
    .fetch_optional(&db.pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let id: String = row.try_get("id")?;
    let role: String = row.try_get("role")?;
    let last_used: Option<i64> = row.try_get("last_used_at_us")?;
    let role = Role::parse(&role).ok_or_else(|| anyhow::anyhow!("unknown role in api_keys"))?;
    let now = now_us();
    if last_used.is_none_or(|t| now.saturating_sub(t) > LAST_USED_RESOLUTION_US) {
        // Best effort and off the request path: a missed update only delays last_used_at.
        let pool = db.pool.clone();
        let key_id = id.clone();
        tokio::spawn(async move {
            let _ = sqlx::query("UPDATE api_keys SET last_used_at_us = $1 WHERE id = $2")
                .bind(now)
                .bind(key_id)
                .execute(&pool)
                .await;
        });
    }
    Ok(Some(Principal {
        key_id: ApiKeyId::from_db(id),
        role,
    }))
}

/// A newly created key: the secret exists only here, once.
pub struct NewApiKey {
    pub id: ApiKeyId,
    pub role: Role,
    pub secret: String,
}

impl fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewApiKey")
            .field("id", &self.id.as_str())
            .field("role", &self.role)
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// Creates an API key with `role` and stores its hash.
pub async fn create_api_key(db: &Db, role: Role) -> anyhow::Result<NewApiKey> {
    let id = ApiKeyId::generate();
    let secret = format!("{API_KEY_PREFIX}{}", random_base62(API_KEY_RANDOM_LEN));
    sqlx::query(
        "INSERT INTO api_keys (id, secret_sha256, role, created_at_us) VALUES ($1, $2, $3, $4)",
    )
    .bind(id.as_str())
    .bind(sha256_hex(&secret))
    .bind(role.as_str())
    .bind(now_us())
    .execute(&db.pool)
    .await?;
    Ok(NewApiKey { id, role, secret })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_privilege_table() {
        assert!(allowed(Role::BillingManager, Action::RefundsCreate));
        assert!(!allowed(Role::BillingClerk, Action::RefundsCreate));
        assert!(!allowed(Role::Accountant, Action::PaymentsCreate));
        assert!(allowed(Role::Accountant, Action::LedgerRead));
        assert!(!allowed(Role::BillingClerk, Action::LedgerRead));
    }
}
