//! Who is calling, and what they may do: the one authorization module.
//!
//! A request's [`Principal`] comes from one of:
//! - `Authorization: Bearer cbk_…`: an API key — a *service key* acting with a staff role, or
//!   an accounting system's key limited to scopes (`ledger:read`, `exports:read`, …);
//! - `Authorization: Bearer cbs_…`: a session token of a signed-in user (API clients);
//! - the `__Host-carebill_session` cookie of a signed-in user (web pages), where every state
//!   change must also carry the session's `X-CSRF-Token`.
//!
//! Every handler names its [`Action`]; [`Principal::authorize`] decides from the role's (or
//! the key's scopes') permissions in [`allowed`], and [`Principal::ensure_visible`] applies the
//! record-level rules (a patient sees only their own records; staff bound to a facility only its
//! patients). A record the caller may not see answers 404, exactly like one that does not exist,
//! so ids cannot be probed. Handlers never compare roles themselves.
//!
//! Secrets (keys, session tokens) are high-entropy random strings; only their SHA-256 is stored.

use std::fmt;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use sha2::{Digest, Sha256};
use sqlx::Row;
use subtle::ConstantTimeEq;

use crate::db::{now_us, Db};
use crate::error::{ApiError, ErrorType};
use crate::ids::{random_base62, ApiKeyId, FacilityId, PatientId, SessionId, UserId};
use crate::AppState;

/// Prefix of every API key secret, so a leaked key is recognisable by secret scanners.
pub const API_KEY_PREFIX: &str = "cbk_";
/// Prefix of every session token.
pub const SESSION_TOKEN_PREFIX: &str = "cbs_";
pub const SESSION_COOKIE: &str = "__Host-carebill_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
const API_KEY_RANDOM_LEN: usize = 32;
/// Secrets longer than this are refused before any lookup.
const SECRET_CHARS_MAX: usize = 128;
/// `last_used_at` / `last_seen_at` are written at most this often, to keep reads read-only.
const LAST_USED_RESOLUTION_US: i64 = 30_000_000;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
#[clap(rename_all = "snake_case")]
pub enum Role {
    Patient,
    FrontDesk,
    BillingClerk,
    BillingManager,
    Accountant,
    Auditor,
    Admin,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Patient,
        Role::FrontDesk,
        Role::BillingClerk,
        Role::BillingManager,
        Role::Accountant,
        Role::Auditor,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Patient => "patient",
            Role::FrontDesk => "front_desk",
            Role::BillingClerk => "billing_clerk",
            Role::BillingManager => "billing_manager",
            Role::Accountant => "accountant",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// What an accounting system's API key may be limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    LedgerRead,
    ExportsRead,
    ExportsIdentified,
    WebhooksManage,
}

impl Scope {
    pub const ALL: [Scope; 4] = [
        Scope::LedgerRead,
        Scope::ExportsRead,
        Scope::ExportsIdentified,
        Scope::WebhooksManage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::LedgerRead => "ledger:read",
            Scope::ExportsRead => "exports:read",
            Scope::ExportsIdentified => "exports:identified",
            Scope::WebhooksManage => "webhooks:manage",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// What a request wants to do. Every handler names its action; [`allowed`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    PatientsRead,
    PatientsWrite,
    /// Erase a patient's personal data (crypto-shredding): irreversible.
    PatientsErase,
    InvoicesRead,
    /// Itemized lines of an invoice: procedure codes and descriptions (field-level rule).
    InvoiceDetailsRead,
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
    /// Create users, change roles, disable accounts, reset passwords.
    UsersManage,
    /// Create, rotate and revoke API keys.
    ApiKeysManage,
    /// Read the security event log and export audit.
    AuditRead,
    WebhooksManage,
}

/// The permission table, in one place. Least privilege: `admin` manages users and keys but
/// reads no health or payment data; `auditor` reads the audit trail and the ledger but moves
/// no money; `front_desk` sees patients' contact details but not itemized procedure codes.
pub fn allowed(role: Role, action: Action) -> bool {
    use Action::*;
    use Role::*;
    match action {
        PatientsRead | PaymentsRead | PaymentsCreate | InvoicesRead => {
            matches!(role, Patient | FrontDesk | BillingClerk | BillingManager)
        }
        PatientsWrite => matches!(role, FrontDesk | BillingClerk | BillingManager),
        InvoiceDetailsRead => matches!(role, Patient | BillingClerk | BillingManager),
        InvoicesWrite | RefundsRead => matches!(role, BillingClerk | BillingManager),
        RefundsCreate | PatientsErase => matches!(role, BillingManager),
        LedgerRead => matches!(role, BillingManager | Accountant | Auditor),
        LedgerExport => matches!(role, BillingManager | Accountant),
        LedgerExportIdentified => matches!(role, BillingManager),
        UsersManage | ApiKeysManage => matches!(role, Admin),
        AuditRead => matches!(role, Auditor | Admin),
        WebhooksManage => matches!(role, Admin),
    }
}

/// What an accounting system's scopes allow.
pub fn allowed_by_scope(scopes: &[Scope], action: Action) -> bool {
    scopes.iter().any(|s| match s {
        Scope::LedgerRead => action == Action::LedgerRead,
        Scope::ExportsRead => action == Action::LedgerExport,
        Scope::ExportsIdentified => {
            matches!(
                action,
                Action::LedgerExport | Action::LedgerExportIdentified
            )
        }
        Scope::WebhooksManage => action == Action::WebhooksManage,
    })
}

/// Who the caller is.
#[derive(Clone, PartialEq, Eq)]
pub enum Subject {
    /// A signed-in staff member.
    Staff {
        user_id: UserId,
        role: Role,
        facility: Option<FacilityId>,
    },
    /// A patient: signed in with an account, or a guest who opened one bill.
    Patient {
        user_id: Option<UserId>,
        patient_id: PatientId,
    },
    /// A service key acting with a staff role.
    ServiceKey { key_id: ApiKeyId, role: Role },
    /// An accounting system's key, limited to its scopes.
    ScopedKey {
        key_id: ApiKeyId,
        scopes: Vec<Scope>,
    },
}

/// The authenticated caller.
#[derive(Clone)]
pub struct Principal {
    pub subject: Subject,
    /// The session the request came with (signed-in users and guests).
    pub session_id: Option<SessionId>,
    actor: String,
    /// Where permission denials are recorded (set for request principals).
    audit: Option<Db>,
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("actor", &self.actor)
            .field("role", &self.role().map(Role::as_str))
            .finish()
    }
}

impl Principal {
    pub fn new(subject: Subject, session_id: Option<SessionId>) -> Principal {
        let actor = match &subject {
            Subject::Staff { user_id, .. } => user_id.as_str().to_owned(),
            Subject::Patient {
                user_id: Some(u), ..
            } => u.as_str().to_owned(),
            Subject::Patient {
                user_id: None,
                patient_id,
            } => format!("guest:{}", patient_id.as_str()),
            Subject::ServiceKey { key_id, .. } | Subject::ScopedKey { key_id, .. } => {
                key_id.as_str().to_owned()
            }
        };
        Principal {
            subject,
            session_id,
            actor,
            audit: None,
        }
    }

    /// Records this principal's permission denials as security events in `db`.
    pub fn audited_in(mut self, db: &Db) -> Principal {
        self.audit = Some(db.clone());
        self
    }

    /// The role the caller acts with (scoped keys have none).
    pub fn role(&self) -> Option<Role> {
        match &self.subject {
            Subject::Staff { role, .. } | Subject::ServiceKey { role, .. } => Some(*role),
            Subject::Patient { .. } => Some(Role::Patient),
            Subject::ScopedKey { .. } => None,
        }
    }

    /// Whether the caller may perform `action` at all (before record-level rules).
    pub fn allows(&self, action: Action) -> bool {
        match &self.subject {
            Subject::ScopedKey { scopes, .. } => allowed_by_scope(scopes, action),
            _ => self.role().is_some_and(|r| allowed(r, action)),
        }
    }

    /// Refuses with 403 unless the caller may perform `action`.
    pub fn authorize(&self, action: Action) -> Result<(), ApiError> {
        if self.allows(action) {
            return Ok(());
        }
        if let Some(db) = self.audit.clone() {
            // Off the request path: the 403 does not wait for the record (which also logs).
            let actor = self.actor.clone();
            let detail = format!("{action:?}");
            tokio::spawn(async move {
                let recorded = crate::identity::events::record(
                    &db,
                    crate::identity::events::Kind::PermissionDenied,
                    crate::identity::events::Event {
                        actor: Some(&actor),
                        detail: Some(&detail),
                        ..Default::default()
                    },
                )
                .await;
                if let Err(e) = recorded {
                    tracing::warn!(error = %e, "permission denial not recorded");
                }
            });
        } else {
            tracing::info!(
                actor = self.actor.as_str(),
                ?action,
                security_event = "permission_denied",
                "permission denied"
            );
        }
        Err(ApiError::simple(
            StatusCode::FORBIDDEN,
            ErrorType::PermissionError,
            "permission_denied",
            "Your role does not permit this request.",
        ))
    }

    /// The patient a patient caller is limited to.
    pub fn own_patient(&self) -> Option<&PatientId> {
        match &self.subject {
            Subject::Patient { patient_id, .. } => Some(patient_id),
            _ => None,
        }
    }

    /// The facility a facility-bound staff member is limited to.
    pub fn own_facility(&self) -> Option<&FacilityId> {
        match &self.subject {
            Subject::Staff { facility, .. } => facility.as_ref(),
            _ => None,
        }
    }

    /// Record-level rule: may this caller see records of `patient` (of `facility`)? When not,
    /// the answer is the same 404 as for a record that does not exist.
    pub fn ensure_visible(
        &self,
        patient: &str,
        facility: Option<&str>,
        param: &str,
        what: &str,
    ) -> Result<(), ApiError> {
        let visible = match (&self.subject, self.own_facility()) {
            (Subject::Patient { patient_id, .. }, _) => patient_id.as_str() == patient,
            (_, Some(own)) => facility == Some(own.as_str()),
            _ => true,
        };
        if visible {
            Ok(())
        } else {
            Err(ApiError::not_found(param, what))
        }
    }

    /// Record-level rule with the facility looked up: 404 unless this caller may see `patient`.
    /// Costs a query only for facility-bound staff.
    pub async fn ensure_patient_visible(
        &self,
        db: &Db,
        patient: &str,
        param: &str,
        what: &str,
    ) -> Result<(), ApiError> {
        match &self.subject {
            Subject::Patient { patient_id, .. } => {
                if patient_id.as_str() == patient {
                    Ok(())
                } else {
                    Err(ApiError::not_found(param, what))
                }
            }
            _ if self.own_facility().is_some() => {
                let facility: Option<Option<String>> =
                    sqlx::query_scalar("SELECT facility_id FROM patients WHERE id = $1")
                        .bind(patient)
                        .fetch_optional(&db.pool)
                        .await?;
                self.ensure_visible(patient, facility.flatten().as_deref(), param, what)
            }
            _ => Ok(()),
        }
    }

    /// Record-level rule for an invoice (by id): a no-op for callers without a patient or
    /// facility limit; otherwise 404 unless the invoice's patient is visible.
    pub async fn ensure_invoice_visible(
        &self,
        db: &Db,
        invoice: &str,
        param: &str,
    ) -> Result<(), ApiError> {
        if self.own_patient().is_none() && self.own_facility().is_none() {
            return Ok(());
        }
        let patient: Option<String> =
            sqlx::query_scalar("SELECT patient_id FROM invoices WHERE id = $1")
                .bind(invoice)
                .fetch_optional(&db.pool)
                .await?;
        match patient {
            Some(p) => self.ensure_patient_visible(db, &p, param, "invoice").await,
            None => Ok(()),
        }
    }

    /// Record-level rule for a payment (by id), like [`Principal::ensure_invoice_visible`].
    pub async fn ensure_payment_visible(
        &self,
        db: &Db,
        payment: &str,
        param: &str,
    ) -> Result<(), ApiError> {
        if self.own_patient().is_none() && self.own_facility().is_none() {
            return Ok(());
        }
        let patient: Option<String> =
            sqlx::query_scalar("SELECT patient_id FROM payments WHERE id = $1")
                .bind(payment)
                .fetch_optional(&db.pool)
                .await?;
        match patient {
            Some(p) => self.ensure_patient_visible(db, &p, param, "payment").await,
            None => Ok(()),
        }
    }

    /// Record-level rule for a refund (by id), through its payment.
    pub async fn ensure_refund_visible(
        &self,
        db: &Db,
        refund: &str,
        param: &str,
    ) -> Result<(), ApiError> {
        if self.own_patient().is_none() && self.own_facility().is_none() {
            return Ok(());
        }
        let payment: Option<String> =
            sqlx::query_scalar("SELECT payment_id FROM refunds WHERE id = $1")
                .bind(refund)
                .fetch_optional(&db.pool)
                .await?;
        match payment {
            Some(p) => self.ensure_payment_visible(db, &p, param).await,
            None => Ok(()),
        }
    }

    /// Filters for list queries: (`patient id` or "", `facility id` or "") this caller is
    /// limited to.
    pub fn list_limits(&self) -> (String, String) {
        (
            self.own_patient()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
            self.own_facility()
                .map(|f| f.as_str().to_owned())
                .unwrap_or_default(),
        )
    }

    /// Who is acting, as audit records and dual control name them: a user id, a key id, or
    /// `guest:<patient>`.
    pub fn actor_id(&self) -> &str {
        &self.actor
    }

    /// The scope of this caller's idempotency keys.
    pub fn idempotency_scope(&self) -> &str {
        &self.actor
    }
}

fn unauthenticated(code: &'static str, message: &str) -> ApiError {
    ApiError::simple(
        StatusCode::UNAUTHORIZED,
        ErrorType::AuthenticationError,
        code,
        message,
    )
}

pub fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Where the caller's credential came from.
enum Credential<'a> {
    ApiKey(&'a str),
    SessionBearer(&'a str),
    SessionCookie(String),
}

fn credential(parts: &Parts) -> Result<Credential<'_>, ApiError> {
    if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
        let secret = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|s| s.len() <= SECRET_CHARS_MAX)
            .ok_or_else(|| {
                unauthenticated("credentials_malformed", "The credential is malformed.")
            })?;
        return if secret.starts_with(API_KEY_PREFIX) {
            Ok(Credential::ApiKey(secret))
        } else if secret.starts_with(SESSION_TOKEN_PREFIX) {
            Ok(Credential::SessionBearer(secret))
        } else {
            Err(unauthenticated(
                "credentials_malformed",
                "The credential is malformed.",
            ))
        };
    }
    for value in parts.headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((name, token)) = pair.trim().split_once('=') {
                if name == SESSION_COOKIE
                    && token.starts_with(SESSION_TOKEN_PREFIX)
                    && token.len() <= SECRET_CHARS_MAX
                {
                    return Ok(Credential::SessionCookie(token.to_owned()));
                }
            }
        }
    }
    Err(unauthenticated(
        "credentials_missing",
        "Sign in, or send an API key as `Authorization: Bearer <key>`.",
    ))
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(p) = parts.extensions.get::<Principal>() {
            return Ok(p.clone());
        }
        let principal = match credential(parts)? {
            Credential::ApiKey(secret) => {
                lookup_key(&state.db, secret).await?.ok_or_else(|| {
                    unauthenticated(
                        "api_key_invalid",
                        "The API key is invalid, expired or revoked.",
                    )
                })?
            }
            Credential::SessionBearer(token) => {
                crate::identity::sessions::authenticate(state, token, None).await?
            }
            Credential::SessionCookie(token) => {
                // A cookie rides along on any request a browser sends, including a forged
                // cross-site one: every state change must also prove it read the CSRF token.
                let changes_state =
                    !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
                let csrf = if changes_state {
                    Some(
                        parts
                            .headers
                            .get(CSRF_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or(""),
                    )
                } else {
                    None
                };
                crate::identity::sessions::authenticate(state, &token, csrf).await?
            }
        };
        let principal = principal.audited_in(&state.db);
        if let Some(slot) = parts.extensions.get::<crate::audit::AuditSlot>() {
            slot.set_actor(&principal.actor);
        }
        // Per-caller rate limit: one key or session cannot starve the others.
        if let Err(not_until) = state.identity.api_rate.check_key(&principal.actor) {
            use governor::clock::Clock;
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            tracing::warn!(
                actor = principal.actor.as_str(),
                security_event = "api_rate_limited",
                "API rate limit reached"
            );
            return Err(ApiError::rate_limited(wait.as_secs().saturating_add(1)));
        }
        parts.extensions.insert(principal.clone());
        Ok(principal)
    }
}

/// Compares two hex digests in constant time.
pub fn digest_eq(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

async fn lookup_key(db: &Db, secret: &str) -> Result<Option<Principal>, ApiError> {
    let digest = sha256_hex(secret);
    let row = sqlx::query(
        "SELECT id, role, scopes, expires_at_us, last_used_at_us FROM api_keys \
         WHERE secret_sha256 = $1 AND revoked_at_us IS NULL",
    )
    .bind(&digest)
    .fetch_optional(&db.pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let id: String = row.try_get("id")?;
    let role: Option<String> = row.try_get("role")?;
    let scopes: String = row.try_get("scopes")?;
    let expires: Option<i64> = row.try_get("expires_at_us")?;
    let last_used: Option<i64> = row.try_get("last_used_at_us")?;
    let now = now_us();
    if expires.is_some_and(|e| e <= now) {
        return Ok(None);
    }
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
    let key_id = ApiKeyId::from_db(id);
    let subject = match role {
        Some(role) => Subject::ServiceKey {
            key_id,
            role: Role::parse(&role).ok_or_else(|| anyhow::anyhow!("unknown role in api_keys"))?,
        },
        None => Subject::ScopedKey {
            key_id,
            scopes: scopes.split_whitespace().filter_map(Scope::parse).collect(),
        },
    };
    Ok(Some(Principal::new(subject, None)))
}

/// A newly created key: the secret exists only here, once.
pub struct NewApiKey {
    pub id: ApiKeyId,
    pub role: Option<Role>,
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

pub fn new_api_key_secret() -> String {
    format!("{API_KEY_PREFIX}{}", random_base62(API_KEY_RANDOM_LEN))
}

/// Creates a service key acting with `role` and stores its hash.
pub async fn create_api_key(db: &Db, role: Role) -> anyhow::Result<NewApiKey> {
    anyhow::ensure!(
        role != Role::Patient,
        "a service key cannot act as a patient"
    );
    let id = ApiKeyId::generate();
    let secret = new_api_key_secret();
    sqlx::query(
        "INSERT INTO api_keys (id, secret_sha256, role, name, created_at_us) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id.as_str())
    .bind(sha256_hex(&secret))
    .bind(role.as_str())
    .bind(format!("{} service key", role.as_str()))
    .bind(now_us())
    .execute(&db.pool)
    .await?;
    Ok(NewApiKey {
        id,
        role: Some(role),
        secret,
    })
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
        // admin manages, but reads no health or payment data
        assert!(allowed(Role::Admin, Action::UsersManage));
        assert!(!allowed(Role::Admin, Action::PatientsRead));
        assert!(!allowed(Role::Admin, Action::PaymentsRead));
        // the auditor reads, and moves no money
        assert!(allowed(Role::Auditor, Action::AuditRead));
        assert!(!allowed(Role::Auditor, Action::RefundsCreate));
        assert!(!allowed(Role::Auditor, Action::PaymentsCreate));
        // front desk: contact details, not procedure codes
        assert!(allowed(Role::FrontDesk, Action::PatientsRead));
        assert!(!allowed(Role::FrontDesk, Action::InvoiceDetailsRead));
    }

    #[test]
    fn scopes_grant_only_their_actions() {
        let ledger = [Scope::LedgerRead];
        assert!(allowed_by_scope(&ledger, Action::LedgerRead));
        assert!(!allowed_by_scope(&ledger, Action::LedgerExport));
        assert!(!allowed_by_scope(&ledger, Action::PatientsRead));
        assert!(allowed_by_scope(
            &[Scope::ExportsIdentified],
            Action::LedgerExportIdentified
        ));
    }
}
