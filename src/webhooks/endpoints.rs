//! `/v1/webhook_endpoints`: register, list, read, change, delete an endpoint and rotate its
//! secret (admins and keys with the `webhooks:manage` scope).
//!
//! The signing secret (`whsec_…`) is in the answer of create and rotate only; it is stored
//! sealed under the `sys:webhooks` data key, bound to the endpoint's row. A rotated-out secret
//! keeps signing (a second signature) for `previous_secret_valid_seconds` (24 h by default; 0
//! for a leaked one), so the receiver can switch without dropping a delivery.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::Row;
use utoipa::ToSchema;

use super::outbox::EventType;
use super::{signing, target, SYS_WEBHOOKS};
use crate::api::{cursor_seq, ApiJson, ApiPath, ApiQuery, List, PageQuery};
use crate::auth::{Action, Principal};
use crate::crypto::Field;
use crate::db::{now_us, us_to_rfc3339, Tx};
use crate::error::{ApiError, ApiResult};
use crate::idempotency::{self, IdempotencyKey, MaybeClaim};
use crate::ids::WebhookEndpointId;
use crate::AppState;

const DESCRIPTION_CHARS_MAX: usize = 500;
/// Event types one endpoint may list (there are fewer; the bound stops a huge array).
const ENABLED_EVENTS_MAX: usize = 16;
/// The longest a rotated-out secret may keep signing.
const PREVIOUS_SECRET_VALID_SECONDS_MAX: i64 = 7 * 86_400;
const PREVIOUS_SECRET_VALID_SECONDS_DEFAULT: i64 = 86_400;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/webhook_endpoints",
            post(create_endpoint).get(list_endpoints),
        )
        .route(
            "/v1/webhook_endpoints/{id}",
            get(get_endpoint)
                .post(update_endpoint)
                .delete(delete_endpoint),
        )
        .route(
            "/v1/webhook_endpoints/{id}/rotate_secret",
            post(rotate_secret),
        )
}

/// The column an endpoint's secret is sealed for (bound into the ciphertext with the row id).
pub const SECRET_COLUMN: &str = "webhook_endpoints.secret";

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// `https://` only, no user info, not an internal address (checked again at every delivery).
    pub url: String,
    /// Event types (see `WebhookEventType`), or `["*"]` for all; 1 to 16 entries.
    pub enabled_events: Vec<String>,
    /// At most 500 characters.
    pub description: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEndpoint {
    pub url: Option<String>,
    /// Replaces the list (event types, or `["*"]`).
    pub enabled_events: Option<Vec<String>>,
    pub description: Option<String>,
    /// `true` stops deliveries (they wait); `false` re-enables (also after an automatic disable).
    pub disabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// How long the rotated-out secret keeps signing beside the new one: 0 to 604800
    /// (7 days); default 86400. 0 after a leak.
    pub previous_secret_valid_seconds: Option<i64>,
}

/// A registered endpoint. Its secret is never shown here (only by create and rotate_secret).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookEndpoint {
    /// `we_…`
    pub id: String,
    /// Always `"webhook_endpoint"`.
    pub object: &'static str,
    pub url: String,
    pub description: Option<String>,
    /// Event types, or `*`.
    pub enabled_events: Vec<String>,
    /// `enabled` or `disabled`.
    pub status: String,
    /// `manual` or `failing` (disabled automatically), when disabled.
    pub disabled_reason: Option<String>,
    /// When deliveries started failing without a success since (RFC 3339).
    pub failing_since: Option<String>,
    pub created: String,
    pub updated: String,
}

/// An endpoint with its signing secret: the answer of create and rotate_secret only (a replay
/// of the same request under its `Idempotency-Key` shows the same secret again).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookEndpointWithSecret {
    #[serde(flatten)]
    pub endpoint: WebhookEndpoint,
    /// `whsec_…`: the Standard Webhooks signing secret.
    pub secret: String,
    /// rotate_secret only: until when the previous secret keeps signing (null: it stopped at
    /// once). Absent from create's answer.
    pub previous_secret_expires_at: Option<String>,
}

/// What a deletion answers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeletedWebhookEndpoint {
    pub id: String,
    /// Always `"webhook_endpoint"`.
    pub object: &'static str,
    /// Always `true`.
    pub deleted: bool,
}

const COLUMNS: &str =
    "id, url, description, status, disabled_reason, failing_since_us, created_at_us, updated_at_us";

async fn endpoint_json<'c, E>(executor: E, row: &sqlx::any::AnyRow) -> ApiResult<Value>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let id: String = row.try_get("id")?;
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM webhook_endpoint_events WHERE endpoint_id = $1 ORDER BY event_type",
    )
    .bind(&id)
    .fetch_all(executor)
    .await?;
    let endpoint = WebhookEndpoint {
        id,
        object: "webhook_endpoint",
        url: row.try_get("url")?,
        description: row.try_get("description")?,
        enabled_events: events,
        status: row.try_get("status")?,
        disabled_reason: row.try_get("disabled_reason")?,
        failing_since: row
            .try_get::<Option<i64>, _>("failing_since_us")?
            .map(us_to_rfc3339),
        created: us_to_rfc3339(row.try_get("created_at_us")?),
        updated: us_to_rfc3339(row.try_get("updated_at_us")?),
    };
    serde_json::to_value(endpoint).map_err(|e| ApiError::Internal(e.into()))
}

/// Checks the list of event types: known types or `*`, no duplicates, not empty.
fn enabled_events(values: &[String]) -> ApiResult<Vec<String>> {
    if values.is_empty() || values.len() > ENABLED_EVENTS_MAX {
        return Err(ApiError::invalid(
            "enabled_events",
            "parameter_invalid",
            format!("List between 1 and {ENABLED_EVENTS_MAX} event types, or [\"*\"] for all."),
        ));
    }
    let mut out: Vec<String> = Vec::new();
    for (i, v) in values.iter().enumerate() {
        if v != "*" && EventType::parse(v).is_none() {
            let known = EventType::ALL.map(EventType::as_str).join(", ");
            return Err(ApiError::invalid(
                format!("enabled_events[{i}]"),
                "parameter_invalid",
                format!("Must be one of {known}, or *."),
            ));
        }
        if !out.contains(v) {
            out.push(v.clone());
        }
    }
    Ok(out)
}

/// A URL that passes every rule of [`target`], names resolved.
async fn checked_url(state: &AppState, value: &str) -> ApiResult<String> {
    let s = &state.config.webhooks;
    let url = target::parse_url(value, s.allow_http, s.allow_private)?;
    target::check_resolves(&url, s.allow_private).await?;
    Ok(url.to_string())
}

fn description(value: Option<&str>) -> ApiResult<Option<String>> {
    value
        .map(|d| crate::api::text_field("description", d, DESCRIPTION_CHARS_MAX))
        .transpose()
}

async fn seal_secret(state: &AppState, id: &WebhookEndpointId, secret: &str) -> ApiResult<String> {
    let key = state.keys.system_key(SYS_WEBHOOKS).await?;
    key.seal(Field::new(SECRET_COLUMN, SYS_WEBHOOKS, id.as_str()), secret)
        .map_err(|e| ApiError::Internal(e.into()))
}

async fn set_events(tx: &mut Tx, id: &WebhookEndpointId, events: &[String]) -> ApiResult<()> {
    sqlx::query("DELETE FROM webhook_endpoint_events WHERE endpoint_id = $1")
        .bind(id.as_str())
        .execute(&mut **tx)
        .await?;
    for event in events {
        sqlx::query(
            "INSERT INTO webhook_endpoint_events (endpoint_id, event_type) VALUES ($1, $2)",
        )
        .bind(id.as_str())
        .bind(event)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Register an endpoint. Requires the `admin` role or the `webhooks:manage` scope. The answer
/// is the only place the signing secret is shown (a replay under the same `Idempotency-Key`
/// shows it again).
#[utoipa::path(post, path = "/v1/webhook_endpoints", tag = "webhooks", request_body = CreateEndpoint,
    params(("Idempotency-Key" = Option<String>, Header, description = "A UUID; a retry with the same key and body replays the first answer, another body under it is 422")),
    responses((status = 200, body = WebhookEndpointWithSecret),
              (status = 400, body = crate::openapi::ErrorBody, description = "A parameter is missing or invalid (`url`: not https, internal address; `enabled_events[i]`: unknown type); `param` names it"),
              (status = 401, body = crate::openapi::ErrorBody, description = "No valid credential"),
              (status = 403, body = crate::openapi::ErrorBody, description = "Neither `admin` nor the `webhooks:manage` scope"),
              (status = 409, body = crate::openapi::ErrorBody, description = "idempotency_key_in_use: the same key is still being processed"),
              (status = 422, body = crate::openapi::ErrorBody, description = "idempotency_key_reused: the key was used with another request")),
    security(("api_key" = [])))]
pub async fn create_endpoint(
    State(state): State<AppState>,
    principal: Principal,
    key: IdempotencyKey,
    ApiJson(req): ApiJson<CreateEndpoint>,
) -> ApiResult<Response> {
    principal.authorize(Action::WebhooksManage)?;
    let events = enabled_events(&req.enabled_events)?;
    let description = description(req.description.as_deref())?;
    let url = checked_url(&state, &req.url).await?;
    let st = state.clone();
    let actor = principal.actor_id().to_owned();
    Ok(idempotency::run(&state, &principal, key, "POST /v1/webhook_endpoints", &req, |claim| async move {
        let id = WebhookEndpointId::generate();
        let secret = signing::new_secret();
        let sealed = seal_secret(&st, &id, &secret).await?;
        let out = st
            .db
            .write(|tx| {
                let (claim, id, url, description, sealed, events, actor, secret) = (
                    claim.clone(),
                    id.clone(),
                    url.clone(),
                    description.clone(),
                    sealed.clone(),
                    events.clone(),
                    actor.clone(),
                    secret.clone(),
                );
                Box::pin(async move {
                    idempotency::claim(tx, &claim).await?;
                    let now = now_us();
                    sqlx::query(
                        "INSERT INTO webhook_endpoints (id, url, description, status, secret_sealed, \
                         created_by, created_at_us, updated_at_us) VALUES ($1, $2, $3, 'enabled', $4, $5, $6, $6)",
                    )
                    .bind(id.as_str())
                    .bind(&url)
                    .bind(&description)
                    .bind(&sealed)
                    .bind(&actor)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                    set_events(tx, &id, &events).await?;
                    let row = fetch(tx, &id).await?;
                    let mut out = endpoint_json(&mut **tx, &row).await?;
                    if let Some(map) = out.as_object_mut() {
                        // Shown once (a replay of this request shows it again: the saved
                        // response is sealed like the secret itself).
                        map.insert("secret".into(), json!(secret.as_str()));
                    }
                    idempotency::respond_ok(tx, &claim, &out).await
                })
            })
            .await?;
        tracing::info!(endpoint = %id, "webhook endpoint created");
        Ok(out)
    })
    .await)
}

async fn fetch(tx: &mut Tx, id: &WebhookEndpointId) -> ApiResult<sqlx::any::AnyRow> {
    sqlx::query(&format!(
        "SELECT {COLUMNS} FROM webhook_endpoints WHERE id = $1 AND status <> 'deleted'"
    ))
    .bind(id.as_str())
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| ApiError::not_found("id", "webhook endpoint"))
}

/// List the registered endpoints, oldest first.
#[utoipa::path(get, path = "/v1/webhook_endpoints", tag = "webhooks",
    params(("limit" = Option<i64>, Query, description = "1 to 100"), ("starting_after" = Option<String>, Query, description = "An endpoint id (`we_…`) from the previous page")),
    responses((status = 200, body = List<WebhookEndpoint>),
              (status = 400, body = crate::openapi::ErrorBody, description = "`limit` or `starting_after` invalid"),
              (status = 401, body = crate::openapi::ErrorBody, description = "No valid credential"), (status = 403, body = crate::openapi::ErrorBody, description = "Neither `admin` nor the `webhooks:manage` scope")),
    security(("api_key" = [])))]
pub async fn list_endpoints(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<List<Value>>> {
    principal.authorize(Action::WebhooksManage)?;
    let limit = q.limit()?;
    let after = cursor_seq(
        &state,
        "webhook_endpoints",
        "webhook endpoint",
        q.starting_after.as_deref(),
        0,
    )
    .await?;
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM webhook_endpoints WHERE status <> 'deleted' AND seq > $1 \
         ORDER BY seq LIMIT $2"
    ))
    .bind(after)
    .bind(limit.saturating_add(1))
    .fetch_all(&state.db.pool)
    .await?;
    let mut data = Vec::with_capacity(rows.len());
    for row in &rows {
        data.push(endpoint_json(&state.db.pool, row).await?);
    }
    Ok(Json(List::from_rows(data, limit, "/v1/webhook_endpoints")))
}

/// Retrieve an endpoint (never its secret).
#[utoipa::path(get, path = "/v1/webhook_endpoints/{id}", tag = "webhooks", params(("id" = String, Path, description = "`we_…`")),
    responses((status = 200, body = WebhookEndpoint),
              (status = 400, body = crate::openapi::ErrorBody, description = "`id` is not an endpoint id"),
              (status = 401, body = crate::openapi::ErrorBody, description = "No valid credential"), (status = 403, body = crate::openapi::ErrorBody, description = "Neither `admin` nor the `webhooks:manage` scope"),
              (status = 404, body = crate::openapi::ErrorBody, description = "No such endpoint (or deleted)")),
    security(("api_key" = [])))]
pub async fn get_endpoint(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    principal.authorize(Action::WebhooksManage)?;
    let id = WebhookEndpointId::parse_param(&id, "id")?;
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM webhook_endpoints WHERE id = $1 AND status <> 'deleted'"
    ))
    .bind(id.as_str())
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("id", "webhook endpoint"))?;
    Ok(Json(endpoint_json(&state.db.pool, &row).await?))
}

/// Change an endpoint's URL, event types or description, or disable / re-enable it
/// (`disabled: false` also restarts one disabled for failing, and sends what waited).
#[utoipa::path(post, path = "/v1/webhook_endpoints/{id}", tag = "webhooks", request_body = UpdateEndpoint,
    params(("id" = String, Path, description = "`we_…`"),
           ("Idempotency-Key" = Option<String>, Header, description = "A UUID; a retry with the same key and body replays the first answer, another body under it is 422")),
    responses((status = 200, body = WebhookEndpoint),
              (status = 400, body = crate::openapi::ErrorBody, description = "A parameter is invalid; `param` names it; nothing is changed"),
              (status = 401, body = crate::openapi::ErrorBody, description = "No valid credential"), (status = 403, body = crate::openapi::ErrorBody, description = "Neither `admin` nor the `webhooks:manage` scope"),
              (status = 404, body = crate::openapi::ErrorBody, description = "No such endpoint"),
              (status = 409, body = crate::openapi::ErrorBody, description = "idempotency_key_in_use"),
              (status = 422, body = crate::openapi::ErrorBody, description = "idempotency_key_reused")),
    security(("api_key" = [])))]
pub async fn update_endpoint(
    State(state): State<AppState>,
    principal: Principal,
    key: IdempotencyKey,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateEndpoint>,
) -> ApiResult<Response> {
    principal.authorize(Action::WebhooksManage)?;
    let id = WebhookEndpointId::parse_param(&id, "id")?;
    let events = req
        .enabled_events
        .as_deref()
        .map(enabled_events)
        .transpose()?;
    let description = description(req.description.as_deref())?;
    let url = match req.url.as_deref() {
        Some(u) => Some(checked_url(&state, u).await?),
        None => None,
    };
    let route = format!("POST /v1/webhook_endpoints/{id}");
    let change = Change {
        url,
        description,
        events,
        disabled: req.disabled,
    };
    let st = state.clone();
    Ok(
        idempotency::run(&state, &principal, key, &route, &req, |claim| async move {
            st.db
                .write(|tx| {
                    let (claim, id, change) = (claim.clone(), id.clone(), change.clone());
                    Box::pin(async move { update_tx(tx, &claim, &id, &change).await })
                })
                .await
        })
        .await,
    )
}

/// A checked change of an endpoint (absent fields stay as they are).
#[derive(Debug, Clone)]
struct Change {
    url: Option<String>,
    description: Option<String>,
    events: Option<Vec<String>>,
    disabled: Option<bool>,
}

/// The one transaction of an update: the key's row, the change, the saved response.
async fn update_tx(
    tx: &mut Tx,
    claim: &MaybeClaim,
    id: &WebhookEndpointId,
    change: &Change,
) -> ApiResult<(StatusCode, Value)> {
    idempotency::claim(tx, claim).await?;
    let current = fetch(tx, id).await?;
    let status: String = current.try_get("status")?;
    let now = now_us();
    sqlx::query(
        "UPDATE webhook_endpoints SET url = COALESCE($1, url), \
         description = COALESCE($2, description), updated_at_us = $3 WHERE id = $4",
    )
    .bind(change.url.as_deref())
    .bind(change.description.as_deref())
    .bind(now)
    .bind(id.as_str())
    .execute(&mut **tx)
    .await?;
    match (change.disabled, status.as_str()) {
        (Some(true), "enabled") => {
            sqlx::query(
                "UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = 'manual' WHERE id = $1",
            )
            .bind(id.as_str())
            .execute(&mut **tx)
            .await?;
        }
        (Some(false), "disabled") => {
            // A fresh start: the failure clock restarts, waiting deliveries are due.
            sqlx::query(
                "UPDATE webhook_endpoints SET status = 'enabled', disabled_reason = NULL, \
                 failing_since_us = NULL WHERE id = $1",
            )
            .bind(id.as_str())
            .execute(&mut **tx)
            .await?;
            sqlx::query(
                "UPDATE webhook_deliveries SET next_attempt_at_us = $1 \
                 WHERE endpoint_id = $2 AND status = 'pending' AND next_attempt_at_us > $1",
            )
            .bind(now)
            .bind(id.as_str())
            .execute(&mut **tx)
            .await?;
        }
        _ => {}
    }
    if let Some(events) = &change.events {
        set_events(tx, id, events).await?;
    }
    let row = fetch(tx, id).await?;
    let out = endpoint_json(&mut **tx, &row).await?;
    idempotency::respond_ok(tx, claim, &out).await
}

/// Delete an endpoint: it receives nothing more, and what was still waiting for it is canceled.
#[utoipa::path(delete, path = "/v1/webhook_endpoints/{id}", tag = "webhooks", params(("id" = String, Path, description = "`we_…`")),
    responses((status = 200, body = DeletedWebhookEndpoint),
              (status = 400, body = crate::openapi::ErrorBody, description = "`id` is not an endpoint id"),
              (status = 401, body = crate::openapi::ErrorBody, description = "No valid credential"), (status = 403, body = crate::openapi::ErrorBody, description = "Neither `admin` nor the `webhooks:manage` scope"),
              (status = 404, body = crate::openapi::ErrorBody, description = "No such endpoint (or deleted already)")),
    security(("api_key" = [])))]
pub async fn delete_endpoint(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    principal.authorize(Action::WebhooksManage)?;
    let id = WebhookEndpointId::parse_param(&id, "id")?;
    state
        .db
        .write(|tx| {
            let id = id.clone();
            Box::pin(async move {
                let id = &id;
                fetch(tx, id).await?;
                let now = now_us();
                // Kept as a row (deliveries point at it; the secret stays sealed) but gone from
                // the API; what was still waiting is canceled.
                sqlx::query(
                    "UPDATE webhook_endpoints SET status = 'deleted', disabled_reason = NULL, \
                     updated_at_us = $1 WHERE id = $2",
                )
                .bind(now)
                .bind(id.as_str())
                .execute(&mut **tx)
                .await?;
                sqlx::query(
                    "UPDATE webhook_deliveries SET status = 'canceled', updated_at_us = $1 \
                     WHERE endpoint_id = $2 AND status = 'pending'",
                )
                .bind(now)
                .bind(id.as_str())
                .execute(&mut **tx)
                .await?;
                Ok::<_, ApiError>(())
            })
        })
        .await?;
    Ok(Json(
        json!({"id": id.as_str(), "object": "webhook_endpoint", "deleted": true}),
    ))
}

/// Issue a new signing secret. The previous one keeps signing beside it (a second signature
/// in `webhook-signature`) for `previous_secret_valid_seconds`. The body may be empty.
#[utoipa::path(post, path = "/v1/webhook_endpoints/{id}/rotate_secret", tag = "webhooks", request_body(content = Option<RotateSecret>),
    params(("id" = String, Path, description = "`we_…`"),
           ("Idempotency-Key" = Option<String>, Header, description = "A UUID; a retry with the same key replays the first answer (the same new secret) instead of rotating again")),
    responses((status = 200, body = WebhookEndpointWithSecret),
              (status = 400, body = crate::openapi::ErrorBody, description = "`previous_secret_valid_seconds` out of range"),
              (status = 401, body = crate::openapi::ErrorBody, description = "No valid credential"), (status = 403, body = crate::openapi::ErrorBody, description = "Neither `admin` nor the `webhooks:manage` scope"),
              (status = 404, body = crate::openapi::ErrorBody, description = "No such endpoint"),
              (status = 409, body = crate::openapi::ErrorBody, description = "idempotency_key_in_use"),
              (status = 422, body = crate::openapi::ErrorBody, description = "idempotency_key_reused")),
    security(("api_key" = [])))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    principal: Principal,
    key: IdempotencyKey,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    principal.authorize(Action::WebhooksManage)?;
    let id = WebhookEndpointId::parse_param(&id, "id")?;
    let req: RotateSecret = if body.iter().all(u8::is_ascii_whitespace) {
        RotateSecret::default()
    } else {
        crate::api::parse_json(&body)?
    };
    let valid_seconds = req
        .previous_secret_valid_seconds
        .unwrap_or(PREVIOUS_SECRET_VALID_SECONDS_DEFAULT);
    if !(0..=PREVIOUS_SECRET_VALID_SECONDS_MAX).contains(&valid_seconds) {
        return Err(ApiError::invalid(
            "previous_secret_valid_seconds",
            "parameter_invalid",
            format!("Must be between 0 and {PREVIOUS_SECRET_VALID_SECONDS_MAX}."),
        ));
    }
    let route = format!("POST /v1/webhook_endpoints/{id}/rotate_secret");
    let st = state.clone();
    Ok(
        idempotency::run(&state, &principal, key, &route, &req, |claim| async move {
            // Made only when the work runs: a replayed rotation answers with the secret it issued
            // (the saved response is sealed like the secret) and issues none.
            let secret = signing::new_secret();
            let sealed = seal_secret(&st, &id, &secret).await?;
            let out = st
                .db
                .write(|tx| {
                    let (claim, id, sealed, secret) =
                        (claim.clone(), id.clone(), sealed.clone(), secret.clone());
                    Box::pin(async move {
                        rotate_tx(tx, &claim, &id, &sealed, &secret, valid_seconds).await
                    })
                })
                .await?;
            tracing::info!(endpoint = %id, "webhook endpoint secret rotated");
            Ok(out)
        })
        .await,
    )
}

/// The one transaction of a rotation: the key's row, the new secret (the current one kept as
/// the previous for `valid_seconds`), the saved response showing the new secret.
async fn rotate_tx(
    tx: &mut Tx,
    claim: &MaybeClaim,
    id: &WebhookEndpointId,
    sealed: &str,
    secret: &str,
    valid_seconds: i64,
) -> ApiResult<(StatusCode, Value)> {
    idempotency::claim(tx, claim).await?;
    fetch(tx, id).await?;
    let now = now_us();
    // The current secret becomes the previous one (re-sealed as is: same row binding).
    let (previous, expires) = if valid_seconds == 0 {
        (None, None)
    } else {
        let current: String =
            sqlx::query_scalar("SELECT secret_sealed FROM webhook_endpoints WHERE id = $1")
                .bind(id.as_str())
                .fetch_one(&mut **tx)
                .await?;
        (
            Some(current),
            Some(now.saturating_add(valid_seconds.saturating_mul(1_000_000))),
        )
    };
    sqlx::query(
        "UPDATE webhook_endpoints SET secret_sealed = $1, previous_secret_sealed = $2, \
         previous_secret_expires_at_us = $3, updated_at_us = $4 WHERE id = $5",
    )
    .bind(sealed)
    .bind(previous)
    .bind(expires)
    .bind(now)
    .bind(id.as_str())
    .execute(&mut **tx)
    .await?;
    let row = fetch(tx, id).await?;
    let mut out = endpoint_json(&mut **tx, &row).await?;
    if let Some(map) = out.as_object_mut() {
        map.insert("secret".into(), json!(secret));
        map.insert(
            "previous_secret_expires_at".into(),
            json!(expires.map(us_to_rfc3339)),
        );
    }
    idempotency::respond_ok(tx, claim, &out).await
}
