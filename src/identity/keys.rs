//! API keys for accounting systems and services: created by an admin, shown once, stored as
//! SHA-256, recognisable by their `cbk_` prefix, with scopes (`ledger:read`, `exports:read`,
//! `exports:identified`, `webhooks:manage`) or a staff role (service keys), an optional expiry,
//! a last-used time, and rotation (a new secret for the same grant; the old one is revoked).

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::Row;

use super::events::{self, Event, Kind};
use crate::api::{timestamp_field, ApiJson, ApiPath};
use crate::auth::{new_api_key_secret, sha256_hex, Action, Principal, Role, Scope};
use crate::db::{now_us, us_to_rfc3339};
use crate::error::{ApiError, ApiResult};
use crate::ids::ApiKeyId;
use crate::invoices::EmptyBody;
use crate::AppState;

const NAME_CHARS_MAX: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/api_keys", post(create_key).get(list_keys))
        .route("/v1/api_keys/{id}", get(get_key).delete(revoke_key))
        .route("/v1/api_keys/{id}/rotate", post(rotate_key))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub name: String,
    pub scopes: Option<Vec<String>>,
    pub role: Option<String>,
    /// RFC 3339; none: no expiry.
    pub expires_at: Option<String>,
}

fn key_json(r: &sqlx::any::AnyRow) -> Result<Value, sqlx::Error> {
    let scopes: String = r.try_get("scopes")?;
    Ok(json!({
        "id": r.try_get::<String, _>("id")?,
        "object": "api_key",
        "name": r.try_get::<Option<String>, _>("name")?,
        "role": r.try_get::<Option<String>, _>("role")?,
        "scopes": scopes.split_whitespace().collect::<Vec<_>>(),
        "prefix": "cbk_",
        "created": us_to_rfc3339(r.try_get("created_at_us")?),
        "expires_at": r.try_get::<Option<i64>, _>("expires_at_us")?.map(us_to_rfc3339),
        "last_used_at": r.try_get::<Option<i64>, _>("last_used_at_us")?.map(us_to_rfc3339),
        "revoked": r.try_get::<Option<i64>, _>("revoked_at_us")?.is_some(),
    }))
}

const KEY_COLUMNS: &str =
    "id, name, role, scopes, created_at_us, expires_at_us, last_used_at_us, revoked_at_us";

async fn insert<'c, E>(
    executor: E,
    name: &str,
    role: Option<Role>,
    scopes: &str,
    expires: Option<i64>,
    rotated_from: Option<&str>,
    by: &str,
) -> ApiResult<(ApiKeyId, String)>
where
    E: sqlx::Executor<'c, Database = sqlx::Any>,
{
    let id = ApiKeyId::generate();
    let secret = new_api_key_secret();
    sqlx::query(
        "INSERT INTO api_keys (id, secret_sha256, role, name, scopes, expires_at_us, rotated_from, \
         created_by, created_at_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(id.as_str())
    .bind(sha256_hex(&secret))
    .bind(role.map(Role::as_str))
    .bind(name)
    .bind(scopes)
    .bind(expires)
    .bind(rotated_from)
    .bind(by)
    .bind(now_us())
    .execute(executor)
    .await?;
    Ok((id, secret))
}

async fn create_key(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(req): ApiJson<CreateKey>,
) -> ApiResult<Json<Value>> {
    principal.authorize(Action::ApiKeysManage)?;
    let name = crate::api::text_field("name", &req.name, NAME_CHARS_MAX)?;
    let role = match req.role.as_deref() {
        None => None,
        Some(r) => match Role::parse(r) {
            Some(Role::Patient) | None => {
                return Err(ApiError::invalid(
                    "role",
                    "parameter_invalid",
                    "A key may act as a staff role, never as a patient.",
                ))
            }
            Some(role) => Some(role),
        },
    };
    let scopes = req.scopes.unwrap_or_default();
    let mut parsed = Vec::new();
    for (i, s) in scopes.iter().enumerate() {
        parsed.push(Scope::parse(s).ok_or_else(|| {
            ApiError::invalid(
                format!("scopes[{i}]"),
                "parameter_invalid",
                "Must be ledger:read, exports:read, exports:identified or webhooks:manage.",
            )
        })?);
    }
    // Exactly one of the two: a role (service key) or scopes (accounting system).
    if role.is_some() != parsed.is_empty() {
        return Err(ApiError::invalid(
            "scopes",
            "parameter_invalid",
            "Give a key either `scopes` or a `role`, not both and not neither.",
        ));
    }
    let expires = req
        .expires_at
        .as_deref()
        .map(|t| timestamp_field("expires_at", t))
        .transpose()?;
    if expires.is_some_and(|e| e <= now_us()) {
        return Err(ApiError::invalid(
            "expires_at",
            "parameter_invalid",
            "Must be in the future.",
        ));
    }
    let scope_text = parsed
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let (id, secret) = insert(
        &state.db.pool,
        &name,
        role,
        &scope_text,
        expires,
        None,
        principal.actor_id(),
    )
    .await?;
    events::record(
        &state.db,
        Kind::ApiKeyCreated,
        Event {
            actor: Some(principal.actor_id()),
            subject: Some(id.as_str()),
            detail: Some(role.map(Role::as_str).unwrap_or(&scope_text)),
            ..Event::default()
        },
    )
    .await?;
    let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
        .bind(id.as_str())
        .fetch_one(&state.db.pool)
        .await?;
    let mut out = key_json(&row)?;
    if let Some(map) = out.as_object_mut() {
        // Shown once: only its hash is stored.
        map.insert("secret".into(), json!(secret));
    }
    Ok(Json(out))
}

async fn list_keys(State(state): State<AppState>, principal: Principal) -> ApiResult<Json<Value>> {
    principal.authorize(Action::ApiKeysManage)?;
    let rows = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY seq"))
        .fetch_all(&state.db.pool)
        .await?;
    let data = rows.iter().map(key_json).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({"object": "list", "data": data})))
}

async fn load_live(state: &AppState, id: &str) -> ApiResult<(ApiKeyId, sqlx::any::AnyRow)> {
    let id = ApiKeyId::parse_param(id, "id")?;
    let row = sqlx::query(&format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1 AND revoked_at_us IS NULL"
    ))
    .bind(id.as_str())
    .fetch_optional(&state.db.pool)
    .await?
    .ok_or_else(|| ApiError::not_found("id", "API key"))?;
    Ok((id, row))
}

async fn revoke_key(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    principal.authorize(Action::ApiKeysManage)?;
    let (id, _) = load_live(&state, &id).await?;
    sqlx::query("UPDATE api_keys SET revoked_at_us = $1 WHERE id = $2 AND revoked_at_us IS NULL")
        .bind(now_us())
        .bind(id.as_str())
        .execute(&state.db.pool)
        .await?;
    events::record(
        &state.db,
        Kind::ApiKeyRevoked,
        Event {
            actor: Some(principal.actor_id()),
            subject: Some(id.as_str()),
            ..Event::default()
        },
    )
    .await?;
    Ok(Json(
        json!({"id": id.as_str(), "object": "api_key", "revoked": true}),
    ))
}

/// A new secret for the same grant; the old key stops working at once.
async fn rotate_key(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
    _body: EmptyBody,
) -> ApiResult<Json<Value>> {
    principal.authorize(Action::ApiKeysManage)?;
    let (old, row) = load_live(&state, &id).await?;
    let name: Option<String> = row.try_get("name")?;
    let role: Option<String> = row.try_get("role")?;
    let scopes: String = row.try_get("scopes")?;
    let expires: Option<i64> = row.try_get("expires_at_us")?;
    let role = role.as_deref().and_then(Role::parse);
    let actor = principal.actor_id().to_owned();
    // One transaction: the old key is revoked exactly when the new one exists. Revoking first,
    // and only if still live, makes two concurrent rotations of one key yield one successor
    // (the loser answers 404), never two live keys.
    let (id, secret) = state
        .db
        .write(|tx| {
            let (old, name, scopes, actor) =
                (old.clone(), name.clone(), scopes.clone(), actor.clone());
            Box::pin(async move {
                let revoked = sqlx::query(
                    "UPDATE api_keys SET revoked_at_us = $1 WHERE id = $2 AND revoked_at_us IS NULL",
                )
                .bind(now_us())
                .bind(old.as_str())
                .execute(&mut **tx)
                .await?;
                if revoked.rows_affected() != 1 {
                    return Err(ApiError::not_found("id", "API key"));
                }
                let (id, secret) = insert(
                    &mut **tx,
                    name.as_deref().unwrap_or("rotated key"),
                    role,
                    &scopes,
                    expires,
                    Some(old.as_str()),
                    &actor,
                )
                .await?;
                events::record_in(
                    tx,
                    Kind::ApiKeyRotated,
                    Event {
                        actor: Some(&actor),
                        subject: Some(id.as_str()),
                        detail: Some(old.as_str()),
                        ..Event::default()
                    },
                )
                .await?;
                Ok((id, secret))
            })
        })
        .await?;
    let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = $1"))
        .bind(id.as_str())
        .fetch_one(&state.db.pool)
        .await?;
    let mut out = key_json(&row)?;
    if let Some(map) = out.as_object_mut() {
        map.insert("secret".into(), json!(secret));
        map.insert("replaces".into(), json!(old.as_str()));
    }
    Ok(Json(out))
}

async fn get_key(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    principal.authorize(Action::ApiKeysManage)?;
    let (_, row) = load_live(&state, &id).await?;
    Ok(Json(key_json(&row)?))
}
