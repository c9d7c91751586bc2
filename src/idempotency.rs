//! Idempotency keys: a retried request never moves money twice.
//!
//! A client sends `Idempotency-Key: <uuid>` (required on payments and refunds, accepted on
//! every POST). Keys are scoped to the caller.
//!
//! ```text
//!  (none) ──tx A: key row + first effects──► processor_called ──tx B: effects + response──► finished
//!  (none) ──the one transaction of a non-money request: key row + effects + response────► finished
//! ```
//!
//! The key row is inserted *inside the request's first write transaction*: a request that fails
//! before that commits leaves no trace, so the client may fix it and retry with the same key,
//! and the common path costs no extra commit. Before the work starts, one read decides:
//!
//! - no row: the work runs; if a concurrent duplicate committed the row first, the insert
//!   finds it and the request answers 409 `idempotency_key_in_use`;
//! - `finished`: the saved status and body are replayed, with `Idempotent-Replayed: true`;
//! - a different request (method, path or canonical body) under the key: 422
//!   `idempotency_key_reused`;
//! - another request holds the key's lease: 409 `idempotency_key_in_use`;
//! - the lease ran out without `finished` (the holder crashed or gave up): this request takes the
//!   key over and *resumes*; a payment in `processor_called` calls the processor again with the
//!   same derived key, which returns the first outcome instead of charging again.
//!
//! The response is saved in the same transaction as the final effects, so there is no window in
//! which money moved but the key does not say so. Each holder carries a random lease token, so
//! releasing a lease can only ever release one's own.

use std::future::Future;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sqlx::Row;

use crate::auth::Principal;
use crate::db::{now_us, Tx};
use crate::error::{ApiError, ErrorType};
use crate::ids::random_base62;
use crate::AppState;

pub const HEADER: &str = "idempotency-key";
/// Rows deleted per statement by the expiry sweep, and statements per sweep.
const SWEEP_BATCH_ROWS: i64 = 500;
const SWEEP_BATCHES_MAX: u32 = 20;

/// The `Idempotency-Key` header, if sent, checked to be a UUID.
#[derive(Debug, Clone)]
pub struct IdempotencyKey(Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(HEADER) else {
            return Ok(IdempotencyKey(None));
        };
        let invalid = || {
            ApiError::invalid(
                "Idempotency-Key",
                "idempotency_key_invalid",
                "Idempotency-Key must be a UUID.",
            )
        };
        let text = value.to_str().map_err(|_| invalid())?;
        let uuid = uuid::Uuid::parse_str(text.trim()).map_err(|_| invalid())?;
        Ok(IdempotencyKey(Some(uuid.hyphenated().to_string())))
    }
}

impl IdempotencyKey {
    /// Refuses a request that moves money without a key.
    pub fn required(self) -> Result<Self, ApiError> {
        if self.0.is_none() {
            return Err(ApiError::invalid(
                "Idempotency-Key",
                "idempotency_key_missing",
                "This request moves money: send an Idempotency-Key header with a fresh UUID.",
            ));
        }
        Ok(self)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Started,
    ProcessorCalled,
}

/// A claimed key: this request owns it until it finishes or its lease runs out.
#[derive(Debug, Clone)]
pub struct Claim {
    scope: String,
    key: String,
    fingerprint: String,
    /// Proves this holder owns the lease (a release never touches another holder's).
    lease_token: String,
    lease_until_us: i64,
    /// No row yet: [`claim`] inserts it in the request's first transaction.
    fresh: bool,
    /// How far an earlier holder of this key got (Started for a fresh key).
    pub phase: Phase,
    /// The payment or refund an earlier holder created, to resume.
    pub resource_id: Option<String>,
    /// Seals the saved response: it may hold health data (a patient, an invoice's lines), which
    /// the billing database stores only encrypted (`sys:idempotency` data key).
    sealer: crate::crypto::DataKey,
}

fn response_field(scope: &str, key: &str) -> String {
    format!("{scope}\0{key}")
}

/// What the key's row says before the work starts.
enum Lookup {
    Run(Claim),
    Replay(StatusCode, String),
}

/// The key of a request, or none (the request is simply executed).
pub type MaybeClaim = Option<Claim>;

/// Inserts a fresh claim's key row; the first statement of the request's first write
/// transaction. A no-op without a key or for a resumed claim (its row exists). When a
/// concurrent duplicate committed the row first, answers 409 `idempotency_key_in_use`.
pub async fn claim(tx: &mut Tx, claim: &MaybeClaim) -> Result<(), ApiError> {
    let Some(c) = claim.as_ref().filter(|c| c.fresh) else {
        return Ok(());
    };
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (principal_id, key, request_hmac, phase, lease_token, locked_until_us, created_at_us) \
         VALUES ($1, $2, $3, 'started', $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(&c.scope)
    .bind(&c.key)
    .bind(&c.fingerprint)
    .bind(&c.lease_token)
    .bind(c.lease_until_us)
    .bind(now_us())
    .execute(&mut **tx)
    .await?;
    if inserted.rows_affected() != 1 {
        return Err(in_use());
    }
    Ok(())
}

/// Answers 200 with `value`, saved as the final response of `claim` in the transaction that
/// made the request's effects.
pub async fn respond_ok<T: Serialize>(
    tx: &mut Tx,
    claim: &MaybeClaim,
    value: &T,
) -> Result<(StatusCode, serde_json::Value), ApiError> {
    let body = serde_json::to_value(value).map_err(|e| ApiError::Internal(e.into()))?;
    finish(tx, claim, StatusCode::OK, &body).await?;
    Ok((StatusCode::OK, body))
}

/// Answers with `error`, saved as the final response of `claim`: for refusals that come after
/// the processor was called (a decline), which a retry must replay, not redo.
pub async fn respond_err(
    tx: &mut Tx,
    claim: &MaybeClaim,
    error: ApiError,
) -> Result<(StatusCode, serde_json::Value), ApiError> {
    let (status, body) = (error.status(), error.body());
    finish(tx, claim, status, &body).await?;
    Ok((status, body))
}

/// Saves `status`/`body` as the final response of `claim`, inside the transaction that made
/// the request's effects. A no-op without a key.
async fn finish(
    tx: &mut Tx,
    claim: &MaybeClaim,
    status: StatusCode,
    body: &serde_json::Value,
) -> Result<(), ApiError> {
    let Some(claim) = claim else { return Ok(()) };
    let body = serde_json::to_string(body).map_err(|e| ApiError::Internal(e.into()))?;
    let row = response_field(&claim.scope, &claim.key);
    let body = claim
        .sealer
        .seal(
            crate::crypto::Field::new(RESPONSE_COLUMN, SYS_IDEMPOTENCY, &row),
            &body,
        )
        .map_err(|e| ApiError::Internal(e.into()))?;
    sqlx::query(
        "UPDATE idempotency_keys SET phase = 'finished', response_status = $1, response_body = $2, \
         locked_until_us = 0 WHERE principal_id = $3 AND key = $4",
    )
    .bind(i64::from(status.as_u16()))
    .bind(body)
    .bind(&claim.scope)
    .bind(&claim.key)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records, inside tx A, that the processor is about to be called for `resource_id`.
pub async fn mark_processor_called(
    tx: &mut Tx,
    claim: &MaybeClaim,
    resource_id: &str,
) -> Result<(), ApiError> {
    let Some(claim) = claim else { return Ok(()) };
    sqlx::query(
        "UPDATE idempotency_keys SET phase = 'processor_called', resource_id = $1 \
         WHERE principal_id = $2 AND key = $3",
    )
    .bind(resource_id)
    .bind(&claim.scope)
    .bind(&claim.key)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Runs `work` under the request's idempotency key and answers with its saved response.
///
/// `route` is the method and path (`POST /v1/payments`); `request` is the parsed body, hashed in
/// canonical form. `work` gets the claim (resume information) and must call [`finish`] in the
/// transaction that commits its effects.
pub async fn run<R, F, Fut>(
    state: &AppState,
    principal: &Principal,
    key: IdempotencyKey,
    route: &str,
    request: &R,
    work: F,
) -> Response
where
    R: Serialize,
    F: FnOnce(MaybeClaim) -> Fut,
    Fut: Future<Output = Result<(StatusCode, serde_json::Value), ApiError>>,
{
    let Some(key) = key.0 else {
        return match work(None).await {
            Ok((status, body)) => (status, axum::Json(body)).into_response(),
            Err(e) => e.into_response(),
        };
    };
    let fingerprint = match fingerprint(state, route, request) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let claim = match lookup(state, principal.idempotency_scope(), &key, &fingerprint).await {
        Ok(Lookup::Run(claim)) => claim,
        Ok(Lookup::Replay(status, body)) => return replay(status, body),
        Err(e) => return e.into_response(),
    };
    let released = claim.clone();
    match work(Some(claim)).await {
        Ok((status, body)) => (status, axum::Json(body)).into_response(),
        Err(e) => {
            if let Err(release_error) = release(state, &released).await {
                tracing::error!(error = ?release_error, "could not release idempotency key");
            }
            e.into_response()
        }
    }
}

fn replay(status: StatusCode, body: String) -> Response {
    let mut response = (
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    response
        .headers_mut()
        .insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

/// A keyed hash (HMAC-SHA256 under the blind-index key) of the route and the canonical JSON of
/// the request (keys sorted by serde_json's map, so the same parameters in another order are the
/// same request). Keyed, because a request may carry health data (a patient's name and date of
/// birth) that an unkeyed hash would let anyone confirm by guessing.
fn fingerprint<R: Serialize>(
    state: &AppState,
    route: &str,
    request: &R,
) -> Result<String, ApiError> {
    let canonical = zeroize::Zeroizing::new(
        serde_json::to_value(request)
            .and_then(|v| serde_json::to_string(&v))
            .map_err(|e| ApiError::Internal(e.into()))?,
    );
    Ok(state.keys.index().keyed(
        "idempotency-request",
        &format!("{route}\n{}", canonical.as_str()),
    ))
}

const SYS_IDEMPOTENCY: &str = crate::crypto::store::SYS_IDEMPOTENCY;
const RESPONSE_COLUMN: &str = "idempotency_keys.response_body";

fn in_use() -> ApiError {
    ApiError::simple(
        StatusCode::CONFLICT,
        ErrorType::IdempotencyError,
        "idempotency_key_in_use",
        "A request with this Idempotency-Key is still in progress; retry after it completes.",
    )
}

async fn lookup(
    state: &AppState,
    scope: &str,
    key: &str,
    fingerprint: &str,
) -> Result<Lookup, ApiError> {
    let pool = &state.db.pool;
    let lease_us = state.config.idempotency_lease_ms.saturating_mul(1000);
    let ttl_us = state
        .config
        .idempotency_ttl_seconds
        .saturating_mul(1_000_000);
    let now = now_us();
    let sealer = state.keys.system_key(SYS_IDEMPOTENCY).await?;
    let mut claim = Claim {
        scope: scope.to_owned(),
        key: key.to_owned(),
        fingerprint: fingerprint.to_owned(),
        lease_token: random_base62(16),
        lease_until_us: now.saturating_add(lease_us),
        fresh: true,
        phase: Phase::Started,
        resource_id: None,
        sealer,
    };
    let Some(row) = sqlx::query(
        "SELECT request_hmac, phase, resource_id, response_status, response_body, locked_until_us, created_at_us \
         FROM idempotency_keys WHERE principal_id = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_optional(pool)
    .await?
    else {
        return Ok(Lookup::Run(claim));
    };
    let phase: String = row.try_get("phase")?;
    let created: i64 = row.try_get("created_at_us")?;
    let locked_until: i64 = row.try_get("locked_until_us")?;
    if phase != "processor_called" && now.saturating_sub(created) > ttl_us && locked_until < now {
        // Expired (the sweep has not reached it yet): the key is free again.
        sqlx::query("DELETE FROM idempotency_keys WHERE principal_id = $1 AND key = $2 AND created_at_us = $3")
            .bind(scope)
            .bind(key)
            .bind(created)
            .execute(pool)
            .await?;
        return Ok(Lookup::Run(claim));
    }
    let stored: String = row.try_get("request_hmac")?;
    if stored != fingerprint {
        return Err(ApiError::simple(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorType::IdempotencyError,
            "idempotency_key_reused",
            "This Idempotency-Key was used with a different request; use a fresh key for a new request.",
        ));
    }
    if phase == "finished" {
        let status: i64 = row.try_get("response_status")?;
        let sealed: String = row.try_get("response_body")?;
        let field_row = response_field(scope, key);
        let field = crate::crypto::Field::new(RESPONSE_COLUMN, SYS_IDEMPOTENCY, &field_row);
        let body = match claim.sealer.open(field, &sealed) {
            Ok(body) => body.as_str().to_owned(),
            Err(e) => {
                state
                    .keys
                    .report_unreadable(SYS_IDEMPOTENCY, RESPONSE_COLUMN, &e)
                    .await;
                return Err(ApiError::Internal(anyhow::anyhow!(
                    "a saved idempotent response failed authentication"
                )));
            }
        };
        let status = u16::try_from(status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or_else(|| anyhow::anyhow!("stored idempotent status out of range"))?;
        return Ok(Lookup::Replay(status, body));
    }
    if locked_until > now {
        return Err(in_use());
    }
    // The holder's lease ran out without finishing: take the key over, atomically.
    let taken = sqlx::query(
        "UPDATE idempotency_keys SET locked_until_us = $1, lease_token = $2 \
         WHERE principal_id = $3 AND key = $4 AND locked_until_us = $5 AND phase <> 'finished'",
    )
    .bind(claim.lease_until_us)
    .bind(&claim.lease_token)
    .bind(scope)
    .bind(key)
    .bind(locked_until)
    .execute(pool)
    .await?;
    if taken.rows_affected() != 1 {
        return Err(in_use());
    }
    tracing::warn!(
        phase,
        "resuming a request whose earlier attempt did not finish"
    );
    claim.fresh = false;
    claim.phase = if phase == "processor_called" {
        Phase::ProcessorCalled
    } else {
        Phase::Started
    };
    claim.resource_id = row.try_get("resource_id")?;
    Ok(Lookup::Run(claim))
}

/// After a failed attempt: a key whose row this attempt committed (phase `processor_called`)
/// keeps its phase and only gives up its lease, so the next retry resumes at once. A fresh
/// claim whose transaction rolled back has no row, and another holder's row is never touched.
async fn release(state: &AppState, claim: &Claim) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE idempotency_keys SET locked_until_us = 0 \
         WHERE principal_id = $1 AND key = $2 AND lease_token = $3 AND phase <> 'finished'",
    )
    .bind(&claim.scope)
    .bind(&claim.key)
    .bind(&claim.lease_token)
    .execute(&state.db.pool)
    .await?;
    Ok(())
}

/// Deletes expired keys in bounded batches. Keys stuck in `processor_called` are kept (their
/// payment still needs settling) and reported.
pub async fn sweep(state: &AppState) -> Result<u64, sqlx::Error> {
    let cutoff = now_us().saturating_sub(
        state
            .config
            .idempotency_ttl_seconds
            .saturating_mul(1_000_000),
    );
    let mut deleted: u64 = 0;
    for _ in 0..SWEEP_BATCHES_MAX {
        let result = sqlx::query(
            "DELETE FROM idempotency_keys WHERE (principal_id, key) IN ( \
               SELECT principal_id, key FROM idempotency_keys \
               WHERE created_at_us < $1 AND phase <> 'processor_called' AND locked_until_us < $2 LIMIT $3)",
        )
        .bind(cutoff)
        .bind(now_us())
        .bind(SWEEP_BATCH_ROWS)
        .execute(&state.db.pool)
        .await?;
        deleted = deleted.saturating_add(result.rows_affected());
        if result.rows_affected() < u64::try_from(SWEEP_BATCH_ROWS).unwrap_or(0) {
            break;
        }
    }
    let stuck: i64 = sqlx::query("SELECT COUNT(*) AS n FROM idempotency_keys WHERE created_at_us < $1 AND phase = 'processor_called'")
        .bind(cutoff)
        .fetch_one(&state.db.pool)
        .await?
        .try_get("n")?;
    if stuck > 0 {
        tracing::warn!(
            stuck,
            "expired idempotency keys left in processor_called; their payments need reconciling"
        );
    }
    Ok(deleted)
}

/// Runs [`sweep`] every `interval` until the process ends.
pub fn spawn_sweeper(state: AppState, interval: std::time::Duration) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        loop {
            ticker.tick().await;
            match sweep(&state).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "expired idempotency keys removed"),
                Err(e) => tracing::warn!(error = ?e, "idempotency sweep failed"),
            }
        }
    });
}
