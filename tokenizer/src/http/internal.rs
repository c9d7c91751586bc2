//! Billing's API, on the mutual-TLS listener. The caller is the allowlisted identity of its
//! client certificate; every operation is audited under that name.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};

use super::error::{current_request_id, VaultError, VaultResult};
use crate::cards::{self, Actor, CardView, ChargeMethod};
use crate::tls::Peer;
use crate::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/cards/{token}", get(get_card).delete(delete_card))
        .route("/v1/cards/{token}/charge-method", post(charge_method))
        .route("/healthz", get(super::healthz))
        .with_state(state)
        .layer(axum::middleware::from_fn(super::request_id_from_billing))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            super::REQUEST_TIMEOUT,
        ))
}

fn actor(peer: &Peer) -> VaultResult<Actor> {
    // The handshake already refused any certificate that is not on the allowlist.
    let identity = peer.identity.as_deref().ok_or(VaultError::Client {
        status: axum::http::StatusCode::FORBIDDEN,
        kind: "authentication_error",
        code: "client_not_allowed",
        message: "This client is not allowed to call the vault.",
        param: None,
    })?;
    Ok(Actor {
        name: format!("billing:{identity}"),
        request_id: current_request_id(),
    })
}

/// Checks the token's shape before it touches the database or the audit trail (a malformed
/// "token" could be anything, a card number included, so it is never recorded).
async fn checked_token(
    state: &AppState,
    actor: &Actor,
    action: &str,
    token: &str,
) -> VaultResult<()> {
    if cards::is_token(token) {
        return Ok(());
    }
    let error = VaultError::invalid(
        "token",
        "invalid_token",
        "A card token is `tok_` followed by 24 letters and digits.",
    );
    cards::audit_refusal(state, actor, action, None, &error).await?;
    Err(error)
}

async fn get_card(
    State(state): State<AppState>,
    Extension(peer): Extension<Peer>,
    Path(token): Path<String>,
) -> VaultResult<Json<CardView>> {
    let actor = actor(&peer)?;
    checked_token(&state, &actor, "get", &token).await?;
    Ok(Json(cards::get(&state, &token, &actor).await?))
}

async fn charge_method(
    State(state): State<AppState>,
    Extension(peer): Extension<Peer>,
    Path(token): Path<String>,
) -> VaultResult<Json<ChargeMethod>> {
    let actor = actor(&peer)?;
    checked_token(&state, &actor, "charge_method", &token).await?;
    Ok(Json(cards::charge_method(&state, &token, &actor).await?))
}

async fn delete_card(
    State(state): State<AppState>,
    Extension(peer): Extension<Peer>,
    Path(token): Path<String>,
) -> VaultResult<Json<serde_json::Value>> {
    let actor = actor(&peer)?;
    checked_token(&state, &actor, "delete", &token).await?;
    let view = cards::delete(&state, &token, &actor).await?;
    Ok(Json(serde_json::json!({
        "id": view.id,
        "object": "card",
        "deleted": true,
    })))
}
