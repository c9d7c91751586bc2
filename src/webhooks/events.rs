//! `/v1/webhook_events`: the outbox as the API shows it (each event with its deliveries) and
//! manual replay: `POST /v1/webhook_events/{id}/replay` queues a new delivery of the event, to
//! one endpoint (`{"endpoint": "we_…"}`) or to every endpoint it was sent to, with the same
//! `webhook-id` so a receiver that already has it can recognise it.

use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;
use utoipa::ToSchema;

use super::outbox::{insert_delivery, EventType};
use crate::api::{cursor_seq, ApiPath, ApiQuery, List};
use crate::auth::{Action, Principal};
use crate::db::{now_us, us_to_rfc3339, Tx};
use crate::error::{ApiError, ApiResult};
use crate::idempotency::{self, IdempotencyKey};
use crate::ids::{WebhookEndpointId, WebhookEventId};
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/webhook_events", get(list_events))
        .route("/v1/webhook_events/{id}", get(get_event))
        .route("/v1/webhook_events/{id}/replay", post(replay_event))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    pub limit: Option<String>,
    pub starting_after: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Replay {
    /// One endpoint (`we_…`) to send it to; absent: every endpoint it was sent to.
    pub endpoint: Option<String>,
}

/// One attempt-series of an event to one endpoint (a replay is another delivery).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookDelivery {
    /// `whd_…`
    pub id: String,
    /// Always `"webhook_delivery"`.
    pub object: &'static str,
    /// The endpoint (`we_…`).
    pub endpoint: String,
    /// `pending`, `succeeded`, `dead` (retries exhausted) or `canceled` (endpoint deleted).
    pub status: String,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: Option<String>,
    pub attempts: i64,
    /// The receiver's last HTTP status.
    pub last_status: Option<i64>,
    /// The last failure's code (`http_status`, `timeout`, `connect`, `target_refused`, …).
    pub last_error: Option<String>,
    pub last_attempt_at: Option<String>,
    /// The delivery this one replays (`whd_…`), for a manual replay.
    pub replay_of: Option<String>,
}

/// An event in the outbox with its deliveries. `data` is what receivers get as the payload's
/// `data`: ids, amounts, currencies, statuses and dates, never health data.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WebhookEvent {
    /// `evt_…`: the `webhook-id` of every delivery of it.
    pub id: String,
    /// Always `"webhook_event"`.
    pub object: &'static str,
    #[serde(rename = "type")]
    #[schema(value_type = WebhookEventType)]
    pub kind: String,
    pub created: String,
    #[schema(value_type = Object)]
    pub data: Value,
    pub deliveries: Vec<WebhookDelivery>,
}

/// The event types an endpoint may subscribe to (`enabled_events`; `*` for all), from the one
/// catalogue registration validates against ([`EventType::ALL`]).
pub struct WebhookEventType;

impl utoipa::PartialSchema for WebhookEventType {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("An outbound webhook event type."))
            .enum_values(Some(EventType::ALL.map(EventType::as_str)))
            .into()
    }
}

impl ToSchema for WebhookEventType {}

async fn deliveries<'c, E>(executor: E, event: &str) -> ApiResult<Vec<WebhookDelivery>>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let rows = sqlx::query(
        "SELECT id, endpoint_id, status, attempts, next_attempt_at_us, last_status, last_error, \
         last_attempt_at_us, replay_of FROM webhook_deliveries WHERE event_id = $1 ORDER BY seq LIMIT 1000",
    )
    .bind(event)
    .fetch_all(executor)
    .await?;
    rows.iter()
        .map(|r| {
            let status: String = r.try_get("status")?;
            Ok(WebhookDelivery {
                id: r.try_get("id")?,
                object: "webhook_delivery",
                endpoint: r.try_get("endpoint_id")?,
                next_attempt_at: (status == "pending")
                    .then(|| r.try_get::<i64, _>("next_attempt_at_us").map(us_to_rfc3339))
                    .transpose()?,
                status,
                attempts: r.try_get("attempts")?,
                last_status: r.try_get("last_status")?,
                last_error: r.try_get("last_error")?,
                last_attempt_at: r
                    .try_get::<Option<i64>, _>("last_attempt_at_us")?
                    .map(us_to_rfc3339),
                replay_of: r.try_get("replay_of")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(ApiError::from)
}

fn event_json(r: &sqlx::any::AnyRow, deliveries: Vec<WebhookDelivery>) -> ApiResult<WebhookEvent> {
    let payload: String = r.try_get("payload")?;
    let payload: Value =
        serde_json::from_str(&payload).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(WebhookEvent {
        id: r.try_get("id")?,
        object: "webhook_event",
        kind: r.try_get("type")?,
        created: us_to_rfc3339(r.try_get("created_at_us")?),
        data: payload.get("data").cloned().unwrap_or(Value::Null),
        deliveries,
    })
}

/// List the outbox's events, oldest first, each with its deliveries.
#[utoipa::path(get, path = "/v1/webhook_events", tag = "webhooks",
    params(("limit" = Option<i64>, Query, description = "1 to 100"),
           ("starting_after" = Option<String>, Query, description = "An event id (`evt_…`) from the previous page"),
           ("type" = Option<WebhookEventType>, Query, description = "Only events of this type")),
    responses((status = 200, body = List<WebhookEvent>),
              (status = 400, body = crate::openapi::ErrorBody, description = "`limit`, `starting_after` or `type` invalid; `param` names it"),
              (status = 401, body = crate::openapi::ErrorBody, description = "No valid credential"), (status = 403, body = crate::openapi::ErrorBody, description = "Neither `admin` nor the `webhooks:manage` scope")),
    security(("api_key" = [])))]
pub async fn list_events(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> ApiResult<Json<List<WebhookEvent>>> {
    principal.authorize(Action::WebhooksManage)?;
    let limit = crate::api::parse_limit(q.limit.as_deref())?;
    let kind = match q.kind.as_deref() {
        None => String::new(),
        Some(k) if EventType::parse(k).is_some() => k.to_owned(),
        Some(_) => {
            return Err(ApiError::invalid(
                "type",
                "parameter_invalid",
                "Must be an event type such as payment.succeeded.",
            ))
        }
    };
    let after = cursor_seq(
        &state,
        "webhook_events",
        "webhook event",
        q.starting_after.as_deref(),
        0,
    )
    .await?;
    let rows = sqlx::query(
        "SELECT id, type, payload, created_at_us FROM webhook_events \
         WHERE seq > $1 AND ($2 = '' OR type = $2) ORDER BY seq LIMIT $3",
    )
    .bind(after)
    .bind(&kind)
    .bind(limit.saturating_add(1))
    .fetch_all(&state.db.pool)
    .await?;
    let mut data = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: String = r.try_get("id")?;
        data.push(event_json(r, deliveries(&state.db.pool, &id).await?)?);
    }
    Ok(Json(List::from_rows(data, limit, "/v1/webhook_events")))
}

/// Retrieve an event with its deliveries (attempts, last HTTP status, error code).
#[utoipa::path(get, path = "/v1/webhook_events/{id}", tag = "webhooks", params(("id" = String, Path, description = "`evt_…`")),
    responses((status = 200, body = WebhookEvent),
              (status = 400, body = crate::openapi::ErrorBody, description = "`id` is not an event id"),
              (status = 401, body = crate::openapi::ErrorBody, description = "No valid credential"), (status = 403, body = crate::openapi::ErrorBody, description = "Neither `admin` nor the `webhooks:manage` scope"),
              (status = 404, body = crate::openapi::ErrorBody, description = "No such event")),
    security(("api_key" = [])))]
pub async fn get_event(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<WebhookEvent>> {
    principal.authorize(Action::WebhooksManage)?;
    let id = WebhookEventId::parse_param(&id, "id")?;
    let row =
        sqlx::query("SELECT id, type, payload, created_at_us FROM webhook_events WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&state.db.pool)
            .await?
            .ok_or_else(|| ApiError::not_found("id", "webhook event"))?;
    Ok(Json(event_json(
        &row,
        deliveries(&state.db.pool, id.as_str()).await?,
    )?))
}

/// Send an event again: a new delivery, with the same `webhook-id`, to one endpoint
/// (`endpoint`) or to every endpoint it was sent to that still exists. The body may be empty.
#[utoipa::path(post, path = "/v1/webhook_events/{id}/replay", tag = "webhooks", request_body(content = Option<Replay>),
    params(("id" = String, Path, description = "`evt_…`"),
           ("Idempotency-Key" = Option<String>, Header, description = "A UUID; a retry with the same key and body replays the first answer and queues no second delivery; another body under it is 422")),
    responses((status = 200, body = WebhookEvent, description = "The event with its deliveries, the new one last"),
              (status = 400, body = crate::openapi::ErrorBody, description = "`endpoint` invalid, or missing when the event went to no endpoint that still exists"),
              (status = 401, body = crate::openapi::ErrorBody, description = "No valid credential"), (status = 403, body = crate::openapi::ErrorBody, description = "Neither `admin` nor the `webhooks:manage` scope"),
              (status = 404, body = crate::openapi::ErrorBody, description = "No such event (`id`) or endpoint (`endpoint`)"),
              (status = 409, body = crate::openapi::ErrorBody, description = "idempotency_key_in_use"),
              (status = 422, body = crate::openapi::ErrorBody, description = "idempotency_key_reused")),
    security(("api_key" = [])))]
pub async fn replay_event(
    State(state): State<AppState>,
    principal: Principal,
    key: IdempotencyKey,
    ApiPath(id): ApiPath<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    principal.authorize(Action::WebhooksManage)?;
    let id = WebhookEventId::parse_param(&id, "id")?;
    let req: Replay = if body.iter().all(u8::is_ascii_whitespace) {
        Replay::default()
    } else {
        crate::api::parse_json(&body)?
    };
    let endpoint = WebhookEndpointId::parse_opt_param(req.endpoint.as_deref(), "endpoint")?;
    // A retried replay under the same key answers with the first one's response and queues
    // nothing more.
    let route = format!("POST /v1/webhook_events/{id}/replay");
    let st = state.clone();
    Ok(
        idempotency::run(&state, &principal, key, &route, &req, |claim| async move {
            st.db
                .write(|tx| {
                    let (claim, id, endpoint) = (claim.clone(), id.clone(), endpoint.clone());
                    Box::pin(async move {
                        idempotency::claim(tx, &claim).await?;
                        let out = replay(tx, &id, endpoint.as_ref()).await?;
                        idempotency::respond_ok(tx, &claim, &out).await
                    })
                })
                .await
        })
        .await,
    )
}

async fn replay(
    tx: &mut Tx,
    id: &WebhookEventId,
    endpoint: Option<&WebhookEndpointId>,
) -> ApiResult<WebhookEvent> {
    let row =
        sqlx::query("SELECT id, type, payload, created_at_us FROM webhook_events WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| ApiError::not_found("id", "webhook event"))?;
    // Each target with the delivery it replays (the latest to it), if any.
    let targets: Vec<(String, Option<String>)> = match endpoint {
        Some(e) => {
            let live: Option<String> = sqlx::query_scalar(
                "SELECT id FROM webhook_endpoints WHERE id = $1 AND status <> 'deleted'",
            )
            .bind(e.as_str())
            .fetch_optional(&mut **tx)
            .await?;
            if live.is_none() {
                return Err(ApiError::not_found("endpoint", "webhook endpoint"));
            }
            let last: Option<String> = sqlx::query_scalar(
                "SELECT id FROM webhook_deliveries WHERE event_id = $1 AND endpoint_id = $2 \
                 ORDER BY seq DESC LIMIT 1",
            )
            .bind(id.as_str())
            .bind(e.as_str())
            .fetch_optional(&mut **tx)
            .await?;
            vec![(e.as_str().to_owned(), last)]
        }
        None => {
            let rows = sqlx::query(
                "SELECT d.endpoint_id, MAX(d.id) AS last FROM webhook_deliveries d \
                 JOIN webhook_endpoints e ON e.id = d.endpoint_id \
                 WHERE d.event_id = $1 AND e.status <> 'deleted' GROUP BY d.endpoint_id \
                 ORDER BY d.endpoint_id LIMIT 100",
            )
            .bind(id.as_str())
            .fetch_all(&mut **tx)
            .await?;
            rows.iter()
                .map(|r| Ok((r.try_get("endpoint_id")?, r.try_get("last")?)))
                .collect::<Result<_, sqlx::Error>>()?
        }
    };
    if targets.is_empty() {
        return Err(ApiError::invalid(
            "endpoint",
            "parameter_missing",
            "The event was sent to no endpoint that still exists: name one in `endpoint`.",
        ));
    }
    let now = now_us();
    for (endpoint, last) in &targets {
        insert_delivery(tx, id, endpoint, last.as_deref(), now).await?;
    }
    tracing::info!(event = %id, endpoints = targets.len(), "webhook event replayed");
    event_json(&row, deliveries(&mut **tx, id.as_str()).await?)
}
