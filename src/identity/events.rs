//! The security event log: sign-ins and their failures, MFA events, permission denials, role,
//! user and key changes, retention purges. Append-only (the database refuses updates, and
//! deletes other than the retention purge's), and hash-chained by the audit sealer
//! (`security_event_seals`, see `audit::chain`); never a password, a code or a token — the
//! `detail` is a fixed word or an id.

use crate::db::{now_us, Db};
use crate::error::current_request_id;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    SigninSucceeded,
    /// The password was right; the second factor is still to come.
    PasswordAccepted,
    SigninFailed,
    SigninLocked,
    MfaEnrolled,
    MfaFailed,
    MfaSucceeded,
    RecoveryCodeUsed,
    SignedOut,
    SignedOutEverywhere,
    PermissionDenied,
    UserCreated,
    RoleChanged,
    UserDisabled,
    PasswordResetRequired,
    PasswordChanged,
    ApiKeyCreated,
    ApiKeyRotated,
    ApiKeyRevoked,
    GuestAccessGranted,
    GuestAccessFailed,
    /// Dual control: a refund or write-off waits for a second billing manager.
    ApprovalRequested,
    ApprovalGranted,
    ApprovalRejected,
    /// A stored ciphertext or wrapped key failed authentication (src/crypto).
    CiphertextRejected,
    /// A patient's personal data was erased (their data key destroyed).
    PersonalDataErased,
    /// Key operations: a KEK version added, data keys re-wrapped, a version retired.
    KekRotated,
    DataKeysRewrapped,
    KekRetired,
    /// Retention removed records past their time from one of the chained logs, behind a
    /// checkpoint (`detail` is its id; `subject` the log's table).
    AuditPurged,
    /// A Stripe webhook whose signature was missing, malformed, stale or wrong (`detail` is the
    /// reason code): someone other than Stripe, or a misconfigured secret.
    WebhookSignatureRejected,
    /// The delivery worker disabled an outbound webhook endpoint that had failed for
    /// `webhooks.disable_after_seconds` (`subject` is the endpoint; `detail` when it began
    /// failing): an accounting system stopped receiving events, which an auditor must see.
    WebhookEndpointDisabled,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::SigninSucceeded => "signin_succeeded",
            Kind::PasswordAccepted => "password_accepted",
            Kind::SigninFailed => "signin_failed",
            Kind::SigninLocked => "signin_locked",
            Kind::MfaEnrolled => "mfa_enrolled",
            Kind::MfaFailed => "mfa_failed",
            Kind::MfaSucceeded => "mfa_succeeded",
            Kind::RecoveryCodeUsed => "recovery_code_used",
            Kind::SignedOut => "signed_out",
            Kind::SignedOutEverywhere => "signed_out_everywhere",
            Kind::PermissionDenied => "permission_denied",
            Kind::UserCreated => "user_created",
            Kind::RoleChanged => "role_changed",
            Kind::UserDisabled => "user_disabled",
            Kind::PasswordResetRequired => "password_reset_required",
            Kind::PasswordChanged => "password_changed",
            Kind::ApiKeyCreated => "api_key_created",
            Kind::ApiKeyRotated => "api_key_rotated",
            Kind::ApiKeyRevoked => "api_key_revoked",
            Kind::GuestAccessGranted => "guest_access_granted",
            Kind::GuestAccessFailed => "guest_access_failed",
            Kind::ApprovalRequested => "approval_requested",
            Kind::ApprovalGranted => "approval_granted",
            Kind::ApprovalRejected => "approval_rejected",
            Kind::CiphertextRejected => "ciphertext_rejected",
            Kind::PersonalDataErased => "personal_data_erased",
            Kind::KekRotated => "kek_rotated",
            Kind::DataKeysRewrapped => "data_keys_rewrapped",
            Kind::KekRetired => "kek_retired",
            Kind::AuditPurged => "audit_purged",
            Kind::WebhookSignatureRejected => "webhook_signature_rejected",
            Kind::WebhookEndpointDisabled => "webhook_endpoint_disabled",
        }
    }
}

/// One event. `actor` did it (a user or key id, when known); `subject` is what it was about.
#[derive(Debug, Clone, Default)]
pub struct Event<'a> {
    pub actor: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub ip: Option<&'a str>,
    pub detail: Option<&'a str>,
}

/// Records `kind`. A failure to record is logged and returned: callers on sign-in paths fail
/// closed.
pub async fn record(db: &Db, kind: Kind, e: Event<'_>) -> Result<(), sqlx::Error> {
    tracing::info!(
        security_event = kind.as_str(),
        actor = e.actor,
        subject = e.subject,
        detail = e.detail,
        "security event"
    );
    insert(&db.pool, kind, &e).await
}

/// The one INSERT of an event, on the pool or inside a transaction.
async fn insert<'c, E>(executor: E, kind: Kind, e: &Event<'_>) -> Result<(), sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO security_events (at_us, kind, actor, subject, ip, detail, request_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(now_us())
    .bind(kind.as_str())
    .bind(e.actor)
    .bind(e.subject)
    .bind(e.ip)
    .bind(e.detail)
    .bind(Some(current_request_id()).filter(|id| !id.is_empty()))
    .execute(executor)
    .await?;
    Ok(())
}

/// Records `kind` inside `tx`: it commits or rolls back with the change it describes (dual
/// control decisions, so both names are in the log exactly when the decision took effect).
pub async fn record_in(
    tx: &mut crate::db::Tx,
    kind: Kind,
    e: Event<'_>,
) -> Result<(), sqlx::Error> {
    insert(&mut **tx, kind, &e).await
}
